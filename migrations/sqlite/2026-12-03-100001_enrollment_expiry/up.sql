-- When the one-time token of a machine's enrollment string stops working
-- unless redeemed or used before (NULL: redeemed, used, or issued before
-- strings expired).
ALTER TABLE gateway_nodes ADD COLUMN enroll_expires_at TIMESTAMP;
ALTER TABLE outline_nodes ADD COLUMN enroll_expires_at TIMESTAMP;
