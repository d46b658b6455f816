ALTER TABLE sessions DROP COLUMN gateway_base_down;
ALTER TABLE sessions DROP COLUMN gateway_base_up;
ALTER TABLE sessions DROP COLUMN gateway_epoch;
