ALTER TABLE sessions DROP COLUMN witness_epoch;
ALTER TABLE sessions DROP COLUMN witness_base_up;
ALTER TABLE sessions DROP COLUMN witness_base_down;
ALTER TABLE sessions DROP COLUMN witness_up;
ALTER TABLE sessions DROP COLUMN witness_down;
CREATE TABLE node_witness (
    outline_node_id TEXT NOT NULL REFERENCES outline_nodes (id) ON DELETE CASCADE,
    conn            BIGINT NOT NULL,
    peer            TEXT NOT NULL,
    session_id      TEXT REFERENCES sessions (id) ON DELETE CASCADE,
    bytes_up        BIGINT NOT NULL,
    bytes_down      BIGINT NOT NULL,
    updated_at      TIMESTAMP NOT NULL,
    PRIMARY KEY (outline_node_id, conn)
);
CREATE INDEX node_witness_session ON node_witness (session_id);
CREATE INDEX node_witness_unlinked ON node_witness (outline_node_id, peer) WHERE session_id IS NULL;
DROP INDEX witness_links_age;
