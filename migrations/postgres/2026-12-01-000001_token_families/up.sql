-- One row per refresh-token family (one log-in): access tokens name their
-- family, so revoking it (reuse of a refresh token, log-out, password
-- change, a disabled account) invalidates the access tokens issued from it.
CREATE TABLE token_families (
    id         TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    revoked_at TIMESTAMP,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX token_families_user ON token_families (user_id);

INSERT INTO token_families (id, user_id, revoked_at, created_at)
SELECT family_id, MIN(user_id), MAX(revoked_at), MIN(created_at)
FROM refresh_tokens
GROUP BY family_id;
