-- The node witnesses per session instead of per connection: it learns the
-- session of each connection (from the gateway's links) and reports
-- cumulative totals per session and epoch, kept on the session's row, so a
-- witness report costs what a gateway report costs (one update per session
-- per pass of the applier, merged with the gateway's) instead of one
-- upsert per connection. The node's count of a session is
-- witness_base + the totals of its current epoch, and witness_up/down hold
-- that sum; a new epoch (a node restarted, or a session met again) moves
-- the sum into the base.
DROP TABLE node_witness;
ALTER TABLE sessions
    ADD COLUMN witness_epoch     BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN witness_base_up   BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN witness_base_down BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN witness_up        BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN witness_down      BIGINT NOT NULL DEFAULT 0;
-- Links are kept for an hour (a node asks for a connection's session
-- within seconds), so they are pruned by age.
CREATE INDEX witness_links_age ON witness_links (linked_at);
