DROP INDEX sessions_one_open;
ALTER TABLE sessions DROP COLUMN supersedes;
-- At most one open session per device, node and gateway.
CREATE UNIQUE INDEX sessions_one_open ON sessions (device_id, outline_node_id, gateway_node_id) WHERE ended_at IS NULL;
