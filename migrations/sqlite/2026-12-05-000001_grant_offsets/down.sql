ALTER TABLE quota_grants DROP COLUMN ledger_offset;
ALTER TABLE quota_grants DROP COLUMN gateway_used;
