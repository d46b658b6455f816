DROP TABLE usage_inbox;
