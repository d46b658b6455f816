-- A grant's limit in the ledger's terms. The gateway counts a session from
-- zero again when it restarts without its counts, so its count and the
-- ledger's can drift apart: `ledger_offset` is what the ledger had recorded
-- for the session when the gateway's count was zero, `gateway_used` the
-- gateway's count at its last ask (a smaller one tells of a restart), and
-- `granted` is stored as ledger_offset + the limit the gateway was given.
ALTER TABLE quota_grants ADD COLUMN gateway_used BIGINT NOT NULL DEFAULT 0;
ALTER TABLE quota_grants ADD COLUMN ledger_offset BIGINT NOT NULL DEFAULT 0;
