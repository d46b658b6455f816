ALTER TABLE sessions
    DROP COLUMN gateway_epoch,
    DROP COLUMN gateway_base_up,
    DROP COLUMN gateway_base_down;
