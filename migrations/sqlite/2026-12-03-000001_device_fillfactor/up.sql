-- PostgreSQL leaves room on device pages for in-place `last_seen_at`
-- updates; SQLite has no such setting. Kept so both backends share one
-- migration history.
SELECT 1;
