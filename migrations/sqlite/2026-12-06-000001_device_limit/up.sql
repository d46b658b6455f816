-- As the PostgreSQL migration of the same name: the device limit becomes a
-- term of the subscription, a device beyond it is marked, and its sessions
-- end with their own reason. SQLite cannot change a CHECK constraint, so
-- the sessions table is rebuilt the documented way: foreign keys off (the
-- rows that refer to sessions stay as they are), a new table, the rows
-- copied, the old one dropped, the new one renamed, its indexes made again,
-- all in one transaction. diesel records the migration after that commit:
-- if the process dies between the two, the next start finds the column
-- and records the migration instead of running it again
-- (crates/control/src/db/repair.rs).
PRAGMA foreign_keys = OFF;
BEGIN;
ALTER TABLE subscriptions ADD COLUMN device_limit INTEGER NOT NULL DEFAULT 1000
    CHECK (device_limit BETWEEN 1 AND 1000);
UPDATE subscriptions SET device_limit = (SELECT p.device_limit FROM plans p WHERE p.id = subscriptions.plan_id);
ALTER TABLE devices ADD COLUMN over_limit BOOLEAN NOT NULL DEFAULT 0;
UPDATE devices SET over_limit = 1 WHERE id IN (
    SELECT id FROM (
        SELECT d.id,
               row_number() OVER (PARTITION BY d.user_id ORDER BY d.created_at, d.id) AS place,
               s.device_limit
        FROM devices d
        JOIN subscriptions s ON s.user_id = d.user_id AND s.status = 'active'
        WHERE d.status = 'active'
    ) ranked
    WHERE place > device_limit
);
-- The view over sessions is made again around the rebuild.
DROP VIEW usage_hours;
CREATE TABLE sessions_rebuilt (
    id                TEXT PRIMARY KEY,
    device_id         TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    outline_node_id   TEXT REFERENCES outline_nodes (id) ON DELETE SET NULL,
    gateway_node_id   TEXT REFERENCES gateway_nodes (id) ON DELETE SET NULL,
    started_at        TIMESTAMP NOT NULL,
    last_activity_at  TIMESTAMP NOT NULL,
    ended_at          TIMESTAMP,
    bytes_up          BIGINT NOT NULL DEFAULT 0 CHECK (bytes_up >= 0),
    bytes_down        BIGINT NOT NULL DEFAULT 0 CHECK (bytes_down >= 0),
    last_seq          BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    end_reason        TEXT CHECK (end_reason IS NULL OR end_reason IN ('idle', 'device_revoked', 'user_disabled', 'subscription_ended', 'quota_exceeded', 'node_down', 'closed_by_admin', 'gateway_shutdown', 'device_limit')),
    hour_start        TIMESTAMP,
    hour_up           BIGINT NOT NULL DEFAULT 0 CHECK (hour_up >= 0),
    hour_down         BIGINT NOT NULL DEFAULT 0 CHECK (hour_down >= 0),
    witness_epoch     BIGINT NOT NULL DEFAULT 0,
    witness_base_up   BIGINT NOT NULL DEFAULT 0,
    witness_base_down BIGINT NOT NULL DEFAULT 0,
    witness_up        BIGINT NOT NULL DEFAULT 0,
    witness_down      BIGINT NOT NULL DEFAULT 0,
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
INSERT INTO sessions_rebuilt (id, device_id, outline_node_id, gateway_node_id, started_at, last_activity_at, ended_at, bytes_up, bytes_down, last_seq, end_reason, hour_start, hour_up, hour_down, witness_epoch, witness_base_up, witness_base_down, witness_up, witness_down)
    SELECT id, device_id, outline_node_id, gateway_node_id, started_at, last_activity_at, ended_at, bytes_up, bytes_down, last_seq, end_reason, hour_start, hour_up, hour_down, witness_epoch, witness_base_up, witness_base_down, witness_up, witness_down FROM sessions;
DROP TABLE sessions;
ALTER TABLE sessions_rebuilt RENAME TO sessions;
CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_outline_node ON sessions (outline_node_id);
-- At most one open session per device, node and gateway.
CREATE UNIQUE INDEX sessions_one_open ON sessions (device_id, outline_node_id, gateway_node_id) WHERE ended_at IS NULL;
CREATE VIEW usage_hours AS
    SELECT session_id, recorded_at, delta_up, delta_down FROM usage_ledger
    UNION ALL
    SELECT id, hour_start, hour_up, hour_down FROM sessions WHERE hour_start IS NOT NULL;
COMMIT;
PRAGMA foreign_keys = ON;
