ALTER TABLE quota_grants DROP COLUMN doubt_until;
