-- The gateway's count of a session has epochs, as the node's has: a
-- gateway that counts a session from zero again (restarted without its
-- spool, or forgot the session and met it again) reports a larger epoch,
-- and its totals then add to what was recorded before the epoch began
-- (the base) instead of having to pass it. Rows of earlier gateways are
-- epoch 0 with no base, which is how they were counted.
ALTER TABLE sessions ADD COLUMN gateway_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN gateway_base_up BIGINT NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN gateway_base_down BIGINT NOT NULL DEFAULT 0;
