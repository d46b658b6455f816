DROP VIEW usage_hours;
ALTER TABLE sessions DROP COLUMN hour_start;
ALTER TABLE sessions DROP COLUMN hour_up;
ALTER TABLE sessions DROP COLUMN hour_down;
CREATE TABLE usage_ledger_report (
    id              TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq >= 0),
    total_up        BIGINT NOT NULL CHECK (total_up >= 0),
    total_down      BIGINT NOT NULL CHECK (total_down >= 0),
    delta_up        BIGINT NOT NULL CHECK (delta_up >= 0),
    delta_down      BIGINT NOT NULL CHECK (delta_down >= 0),
    recorded_at     TIMESTAMP NOT NULL,
    UNIQUE (session_id, seq)
);
INSERT OR IGNORE INTO usage_ledger_report SELECT * FROM usage_ledger;
DROP TABLE usage_ledger;
ALTER TABLE usage_ledger_report RENAME TO usage_ledger;
CREATE INDEX usage_ledger_recorded ON usage_ledger (recorded_at);
