DROP TABLE token_families;
