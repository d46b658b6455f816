-- The plan's device limit is a term of the subscription, copied when it is
-- granted, like its traffic allowance: a later change of the plan leaves
-- existing subscriptions as they are. The default (the largest limit a
-- plan can have) is for rows written by code that predates the column,
-- as on SQLite.
ALTER TABLE subscriptions ADD COLUMN device_limit INTEGER NOT NULL DEFAULT 1000
    CHECK (device_limit BETWEEN 1 AND 1000);
UPDATE subscriptions s SET device_limit = p.device_limit FROM plans p WHERE p.id = s.plan_id;

-- A device beyond its owner's device limit (the account has more active
-- devices than the subscription allows, after a smaller plan was granted)
-- may not connect until the owner revokes another one. The oldest devices
-- keep their places. Kept on the row so the access check reads no more
-- than before.
ALTER TABLE devices ADD COLUMN over_limit BOOLEAN NOT NULL DEFAULT FALSE;
UPDATE devices SET over_limit = TRUE WHERE id IN (
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

-- Sessions of such a device end with their own reason.
ALTER TABLE sessions DROP CONSTRAINT sessions_end_reason_check;
ALTER TABLE sessions ADD CONSTRAINT sessions_end_reason_check CHECK (end_reason IS NULL OR end_reason IN ('idle', 'device_revoked', 'user_disabled', 'subscription_ended', 'quota_exceeded', 'node_down', 'closed_by_admin', 'gateway_shutdown', 'device_limit')) NOT VALID;
ALTER TABLE sessions VALIDATE CONSTRAINT sessions_end_reason_check;
