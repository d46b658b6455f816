-- The node as a second witness of usage. A gateway links each of its
-- connections to a node (its local address and port, the peer the node
-- sees) to the session it carries; a node reports cumulative byte totals
-- per connection. A connection's totals count for the session its peer was
-- linked to when the connection was first seen (or when the link came).
CREATE TABLE witness_links (
    outline_node_id TEXT NOT NULL REFERENCES outline_nodes (id) ON DELETE CASCADE,
    peer            TEXT NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    linked_at       TIMESTAMP NOT NULL,
    PRIMARY KEY (outline_node_id, peer)
);
CREATE INDEX witness_links_session ON witness_links (session_id);

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
