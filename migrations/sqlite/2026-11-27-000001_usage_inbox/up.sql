-- Usage inbox: each accepted report, stored as it came (one row per report)
-- until the applier has merged it into sessions, ledger and subscriptions.
-- Totals are cumulative, so applying a row twice changes nothing.
CREATE TABLE usage_inbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    gateway_node_id TEXT NOT NULL,
    totals          TEXT NOT NULL,
    received_at     TIMESTAMP NOT NULL
);
