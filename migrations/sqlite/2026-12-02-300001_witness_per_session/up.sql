-- The node witnesses per session instead of per connection (see the
-- PostgreSQL migration of the same name).
DROP TABLE node_witness;
ALTER TABLE sessions ADD COLUMN witness_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN witness_base_up BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN witness_base_down BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN witness_up BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN witness_down BIGINT NOT NULL DEFAULT 0;
-- Links are kept for an hour (a node asks for a connection's session
-- within seconds), so they are pruned by age.
CREATE INDEX witness_links_age ON witness_links (linked_at);
