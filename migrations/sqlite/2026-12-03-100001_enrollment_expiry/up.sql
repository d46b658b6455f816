-- When the one-time token of a machine's enrollment string stops working
-- unless redeemed or used before (NULL: redeemed or used).
ALTER TABLE gateway_nodes ADD COLUMN enroll_expires_at TIMESTAMP;
ALTER TABLE outline_nodes ADD COLUMN enroll_expires_at TIMESTAMP;
-- Machines never heard from hold strings printed before strings expired:
-- those expire a day from now, like a string printed now.
UPDATE gateway_nodes SET enroll_expires_at = datetime('now', '+24 hours')
    WHERE last_heartbeat_at IS NULL;
UPDATE outline_nodes SET enroll_expires_at = datetime('now', '+24 hours')
    WHERE last_heartbeat_at IS NULL;
