ALTER TABLE outline_nodes DROP COLUMN enroll_expires_at;
ALTER TABLE gateway_nodes DROP COLUMN enroll_expires_at;
