ALTER TABLE sessions DROP COLUMN token_generation;
