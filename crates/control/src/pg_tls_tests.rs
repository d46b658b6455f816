use super::{Mode, Settings};

#[test]
fn sslmode_reads_as_libpq_reads_it_and_is_not_passed_on() {
    let plain = "postgres://u:p@db.example:5432/httvps";
    let s = Settings::of(plain).expect("settings");
    // libpq's default, and the DSN passed on untouched.
    assert_eq!(
        (s.mode, s.roots, s.rest.as_str()),
        (Mode::Prefer, None, plain)
    );
    for (mode, want) in [
        ("disable", Mode::Disable),
        ("allow", Mode::Allow),
        ("prefer", Mode::Prefer),
        ("require", Mode::Require),
        ("verify-ca", Mode::VerifyCa),
        ("verify-full", Mode::VerifyFull),
    ] {
        let s = Settings::of(&format!("{plain}?sslmode={mode}")).expect(mode);
        assert_eq!(s.mode, want);
        assert_eq!(s.rest, plain, "{mode}: the mode is not passed on");
    }
    let s = Settings::of(&format!(
        "{plain}?application_name=cp&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5"
    ))
    .expect("settings");
    assert_eq!(s.mode, Mode::VerifyFull);
    assert_eq!(
        s.roots.as_deref(),
        Some(std::path::Path::new("/etc/ca.pem"))
    );
    assert_eq!(
        s.rest,
        format!("{plain}?application_name=cp&connect_timeout=5")
    );
    let system =
        Settings::of(&format!("{plain}?sslmode=verify-full&sslrootcert=system")).expect("system");
    assert_eq!(system.roots, None);
    // As libpq: a root file makes the modes below verify-ca check the
    // chain; `system` makes verify-full the default.
    for mode in ["", "sslmode=allow&", "sslmode=prefer&", "sslmode=require&"] {
        let s = Settings::of(&format!("{plain}?{mode}sslrootcert=%2Fetc%2Fca.pem")).expect(mode);
        assert_eq!(s.mode, Mode::VerifyCa, "{mode}");
    }
    let s = Settings::of(&format!("{plain}?sslrootcert=system")).expect("system");
    assert_eq!(s.mode, Mode::VerifyFull);
    // The rest goes on as it was written: `%20` stays (re-encoded, it was
    // `+`, which PostgreSQL took literally).
    let s = Settings::of(&format!(
        "{plain}?options=-c%20statement_timeout%3D5000&sslmode=require&application_name=a%20b"
    ))
    .expect("settings");
    assert_eq!(
        s.rest,
        format!("{plain}?options=-c%20statement_timeout%3D5000&application_name=a%20b")
    );
}

#[test]
fn tls_settings_that_cannot_work_are_named() {
    let plain = "postgres://u:p@db.example:5432/httvps";
    for (query, says) in [
        ("sslmode=verify_full", "sslmode=verify_full: one of disable"),
        ("sslmode=", "sslmode=: one of"),
        (
            "sslcert=/c.pem&sslkey=/k.pem",
            "client certificates are not supported",
        ),
        ("sslrootcert=", "empty sslrootcert"),
        ("sslmode=disable&sslrootcert=/ca.pem", "TLS is off"),
        (
            "sslmode=require&sslrootcert=system",
            "weaker sslmode than verify-full",
        ),
        (
            "sslmode=verify-ca&sslrootcert=system",
            "weaker sslmode than verify-full",
        ),
    ] {
        let why = Settings::of(&format!("{plain}?{query}")).expect_err(query);
        assert!(why.contains(says), "{query}: {why}");
    }
    let missing = Settings::of(&format!(
        "{plain}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem"
    ))
    .expect("parsed")
    .connector()
    .err()
    .expect("no such file");
    assert!(
        missing.contains("sslrootcert=/nonexistent/ca.pem cannot be read"),
        "{missing}"
    );
}
