UPDATE sessions SET end_reason = 'subscription_ended' WHERE end_reason = 'device_limit';
ALTER TABLE sessions DROP CONSTRAINT sessions_end_reason_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_end_reason_check CHECK (end_reason IS NULL OR end_reason IN ('idle', 'device_revoked', 'user_disabled', 'subscription_ended', 'quota_exceeded', 'node_down', 'closed_by_admin', 'gateway_shutdown'));
ALTER TABLE devices DROP COLUMN over_limit;
ALTER TABLE subscriptions DROP COLUMN device_limit;
