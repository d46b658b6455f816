-- Quota grants: the cumulative bytes (up plus down) a gateway may let a
-- session move, until valid_until. What a grant holds back from its
-- subscription is granted less the session's recorded bytes.
CREATE TABLE quota_grants (
    session_id      TEXT PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    subscription_id TEXT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    granted         BIGINT NOT NULL,
    valid_until     TIMESTAMP NOT NULL
);
CREATE INDEX quota_grants_subscription ON quota_grants (subscription_id, valid_until);
