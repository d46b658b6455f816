-- The usage sweeper looks every 10 s for active subscriptions that are
-- due to expire or to start a new monthly period. Without these indexes
-- each look read every subscription. Status first, so the look reads only
-- active ones (the status is a bound parameter, which a partial index
-- could not be matched against). Charging usage changes none of these
-- columns, so charges keep their in-place updates.
CREATE INDEX subscriptions_status_expiry ON subscriptions (status, expires_at);
CREATE INDEX subscriptions_status_period ON subscriptions (status, period_start);
