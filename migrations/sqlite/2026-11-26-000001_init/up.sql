-- httvps data model (DESIGN §2). Ids are UUID strings, timestamps are UTC
-- without zone, byte counters are BIGINT: the same column types as SQLite.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE CHECK (length(email) BETWEEN 3 AND 254 AND email = lower(email)),
    password_hash TEXT NOT NULL,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'user')),
    status        TEXT NOT NULL CHECK (status IN ('active', 'disabled')),
    token_version BIGINT NOT NULL DEFAULT 0 CHECK (token_version >= 0),
    created_at    TIMESTAMP NOT NULL,
    updated_at    TIMESTAMP NOT NULL
);

CREATE TABLE plans (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    price_cents         BIGINT NOT NULL CHECK (price_cents >= 0),
    currency            TEXT NOT NULL CHECK (length(currency) = 3),
    duration_days       INTEGER NOT NULL CHECK (duration_days BETWEEN 1 AND 3660),
    traffic_limit_bytes BIGINT CHECK (traffic_limit_bytes IS NULL OR traffic_limit_bytes >= 0),
    device_limit        INTEGER NOT NULL CHECK (device_limit BETWEEN 1 AND 1000),
    reset_period        TEXT NOT NULL CHECK (reset_period IN ('none', 'monthly')),
    archived            BOOLEAN NOT NULL DEFAULT 0,
    created_at          TIMESTAMP NOT NULL,
    updated_at          TIMESTAMP NOT NULL
);

CREATE TABLE regions (
    id          TEXT PRIMARY KEY,
    code        TEXT NOT NULL UNIQUE CHECK (length(code) BETWEEN 1 AND 32),
    name        TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    pool_method TEXT NOT NULL CHECK (pool_method IN ('chacha20-ietf-poly1305', 'aes-128-gcm', 'aes-256-gcm')),
    pool_secret TEXT NOT NULL CHECK (length(pool_secret) >= 16),
    created_at  TIMESTAMP NOT NULL
);

CREATE TABLE subscriptions (
    id                  TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    plan_id             TEXT NOT NULL REFERENCES plans (id) ON DELETE RESTRICT,
    status              TEXT NOT NULL CHECK (status IN ('active', 'cancelled', 'expired')),
    starts_at           TIMESTAMP NOT NULL,
    expires_at          TIMESTAMP NOT NULL,
    traffic_limit_bytes BIGINT CHECK (traffic_limit_bytes IS NULL OR traffic_limit_bytes >= 0),
    traffic_used_bytes  BIGINT NOT NULL DEFAULT 0 CHECK (traffic_used_bytes >= 0),
    period_start        TIMESTAMP NOT NULL,
    created_at          TIMESTAMP NOT NULL,
    updated_at          TIMESTAMP NOT NULL,
    CHECK (expires_at > starts_at)
);
-- One active subscription per user.
CREATE UNIQUE INDEX subscriptions_one_active_per_user ON subscriptions (user_id) WHERE status = 'active';
CREATE INDEX subscriptions_user ON subscriptions (user_id);

CREATE TABLE devices (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    platform     TEXT NOT NULL CHECK (length(platform) BETWEEN 1 AND 32),
    status       TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    token_hash   TEXT NOT NULL UNIQUE,
    last_seen_at TIMESTAMP,
    created_at   TIMESTAMP NOT NULL,
    revoked_at   TIMESTAMP
);
CREATE INDEX devices_user ON devices (user_id);

CREATE TABLE outline_nodes (
    id                TEXT PRIMARY KEY,
    region_id         TEXT NOT NULL REFERENCES regions (id) ON DELETE RESTRICT,
    name              TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    host              TEXT NOT NULL CHECK (length(host) BETWEEN 1 AND 253),
    port              INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    method            TEXT NOT NULL CHECK (method IN ('chacha20-ietf-poly1305', 'aes-128-gcm', 'aes-256-gcm')),
    secret            TEXT NOT NULL CHECK (length(secret) >= 1),
    uses_pool_key     BOOLEAN NOT NULL,
    status            TEXT NOT NULL CHECK (status IN ('active', 'draining', 'disabled')),
    health            TEXT NOT NULL CHECK (health IN ('unknown', 'up', 'down')),
    capacity          INTEGER NOT NULL CHECK (capacity BETWEEN 1 AND 10000000),
    token_hash        TEXT NOT NULL UNIQUE,
    last_heartbeat_at TIMESTAMP,
    load              INTEGER NOT NULL DEFAULT 0 CHECK (load >= 0),
    bytes_in          BIGINT NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
    bytes_out         BIGINT NOT NULL DEFAULT 0 CHECK (bytes_out >= 0),
    version           TEXT,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL
);
CREATE INDEX outline_nodes_region ON outline_nodes (region_id);

CREATE TABLE gateway_nodes (
    id                TEXT PRIMARY KEY,
    region_id         TEXT NOT NULL REFERENCES regions (id) ON DELETE RESTRICT,
    name              TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    public_url        TEXT NOT NULL CHECK (length(public_url) BETWEEN 1 AND 2048),
    token_hash        TEXT NOT NULL UNIQUE,
    status            TEXT NOT NULL CHECK (status IN ('active', 'draining', 'disabled')),
    health            TEXT NOT NULL CHECK (health IN ('unknown', 'up', 'down')),
    last_heartbeat_at TIMESTAMP,
    open_tunnels      INTEGER NOT NULL DEFAULT 0 CHECK (open_tunnels >= 0),
    version           TEXT,
    created_at        TIMESTAMP NOT NULL,
    updated_at        TIMESTAMP NOT NULL
);

CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    device_id        TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    outline_node_id  TEXT REFERENCES outline_nodes (id) ON DELETE SET NULL,
    gateway_node_id  TEXT REFERENCES gateway_nodes (id) ON DELETE SET NULL,
    started_at       TIMESTAMP NOT NULL,
    last_activity_at TIMESTAMP NOT NULL,
    ended_at         TIMESTAMP,
    bytes_up         BIGINT NOT NULL DEFAULT 0 CHECK (bytes_up >= 0),
    bytes_down       BIGINT NOT NULL DEFAULT 0 CHECK (bytes_down >= 0),
    last_seq         BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    end_reason       TEXT CHECK (end_reason IS NULL OR end_reason IN ('idle', 'device_revoked', 'user_disabled', 'subscription_ended', 'quota_exceeded', 'node_down', 'closed_by_admin', 'gateway_shutdown')),
    CHECK (ended_at IS NULL OR ended_at >= started_at),
    CHECK ((ended_at IS NULL) = (end_reason IS NULL))
);
CREATE INDEX sessions_device ON sessions (device_id);
CREATE INDEX sessions_outline_node ON sessions (outline_node_id);
-- At most one open session per device, node and gateway.
CREATE UNIQUE INDEX sessions_one_open ON sessions (device_id, outline_node_id, gateway_node_id) WHERE ended_at IS NULL;

-- Usage ledger: one row per applied report, for idempotency and reports by day.
CREATE TABLE usage_ledger (
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
CREATE INDEX usage_ledger_recorded ON usage_ledger (recorded_at);

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TIMESTAMP NOT NULL,
    used_at    TIMESTAMP,
    revoked_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE audit_log (
    id            TEXT PRIMARY KEY,
    actor_user_id TEXT REFERENCES users (id) ON DELETE SET NULL,
    action        TEXT NOT NULL CHECK (length(action) BETWEEN 1 AND 64),
    target_type   TEXT NOT NULL,
    target_id     TEXT,
    details       TEXT NOT NULL,
    created_at    TIMESTAMP NOT NULL
);
CREATE INDEX audit_log_created ON audit_log (created_at);
