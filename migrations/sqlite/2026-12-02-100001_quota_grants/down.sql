DROP TABLE quota_grants;
