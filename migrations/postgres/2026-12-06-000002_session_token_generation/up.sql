-- The generation of the access token a session was opened with (the
-- generation device JWTs carry: 60 bits of the token's hash). A session
-- whose device's token has been replaced since is closed when its gateway
-- next reports it, even one an assignment committed just after the
-- replacement ended the device's sessions. 0: opened before this column.
ALTER TABLE sessions ADD COLUMN token_generation BIGINT NOT NULL DEFAULT 0;
