DROP VIEW usage_hours;
ALTER TABLE sessions DROP COLUMN hour_start, DROP COLUMN hour_up, DROP COLUMN hour_down;
ALTER TABLE sessions RESET (fillfactor);
ALTER TABLE subscriptions RESET (fillfactor);
ALTER TABLE usage_ledger DROP CONSTRAINT usage_ledger_session_id_recorded_at_key;
ALTER TABLE usage_ledger ADD CONSTRAINT usage_ledger_session_id_seq_key UNIQUE (session_id, seq);
ALTER TABLE usage_ledger RESET (fillfactor);
