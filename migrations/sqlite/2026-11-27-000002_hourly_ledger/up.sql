-- The usage ledger becomes one row per session and hour: the bytes the
-- session gained in that hour (deltas add up) and its latest cumulative
-- totals. Hours are the finest grain usage is reported in, and a row per
-- applied report grew with every report of every session. Idempotency
-- comes from the sessions' cumulative totals, applied by one writer.
CREATE TABLE usage_ledger_hourly (
    id              TEXT PRIMARY KEY,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    seq             BIGINT NOT NULL CHECK (seq >= 0),
    total_up        BIGINT NOT NULL CHECK (total_up >= 0),
    total_down      BIGINT NOT NULL CHECK (total_down >= 0),
    delta_up        BIGINT NOT NULL CHECK (delta_up >= 0),
    delta_down      BIGINT NOT NULL CHECK (delta_down >= 0),
    recorded_at     TIMESTAMP NOT NULL,
    UNIQUE (session_id, recorded_at)
);
INSERT INTO usage_ledger_hourly
    SELECT min(id), session_id, max(seq), max(total_up), max(total_down),
           sum(delta_up), sum(delta_down), strftime('%Y-%m-%d %H:00:00', recorded_at)
    FROM usage_ledger GROUP BY session_id, strftime('%Y-%m-%d %H:00:00', recorded_at);
DROP TABLE usage_ledger;
ALTER TABLE usage_ledger_hourly RENAME TO usage_ledger;
CREATE INDEX usage_ledger_recorded ON usage_ledger (recorded_at);

-- The current hour of each session lives on the session itself (updated in
-- place with its totals); it moves to the ledger when the session's next
-- hour begins. `usage_hours` is the whole picture: closed hours from the
-- ledger plus each session's current one.
ALTER TABLE sessions ADD COLUMN hour_start TIMESTAMP;
ALTER TABLE sessions ADD COLUMN hour_up BIGINT NOT NULL DEFAULT 0 CHECK (hour_up >= 0);
ALTER TABLE sessions ADD COLUMN hour_down BIGINT NOT NULL DEFAULT 0 CHECK (hour_down >= 0);
CREATE VIEW usage_hours AS
    SELECT session_id, recorded_at, delta_up, delta_down FROM usage_ledger
    UNION ALL
    SELECT id, hour_start, hour_up, hour_down FROM sessions WHERE hour_start IS NOT NULL;
