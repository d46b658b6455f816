-- Until when a grant's ledger offset is in doubt: after a gateway counts a
-- session afresh (it restarted), the offset takes all that the lost
-- count's grant could have let through as spent; once the doubt is over
-- and the node witnesses the session, it becomes what is known to have
-- passed (see usage_accounting::grants::offset_at).
ALTER TABLE quota_grants ADD COLUMN doubt_until TIMESTAMP;
