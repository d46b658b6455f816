-- Settings an admin changes at run time (one row).
CREATE TABLE site_settings (
    id              INTEGER PRIMARY KEY CHECK (id = 1),
    sign_up_enabled BOOLEAN NOT NULL DEFAULT 1,
    updated_at      TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
);
INSERT INTO site_settings (id) VALUES (1);
