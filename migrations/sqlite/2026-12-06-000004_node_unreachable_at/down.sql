ALTER TABLE outline_nodes DROP COLUMN unreachable_at;
