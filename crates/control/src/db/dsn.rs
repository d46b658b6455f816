//! `BACKEND_DB_DSN`, read and checked before anything connects.

/// Where the data lives, parsed from `BACKEND_DB_DSN`.
#[derive(Clone, PartialEq, Eq)]
pub enum Dsn {
    /// A `postgres://` or `postgresql://` URL.
    Postgres(String),
    /// A path to an SQLite file (from `sqlite://path` or `sqlite:path`).
    Sqlite(String),
}

impl std::fmt::Debug for Dsn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A PostgreSQL URL may carry a password: never print it.
        match self {
            Dsn::Postgres(_) => f.write_str("Postgres(..)"),
            Dsn::Sqlite(path) => write!(f, "Sqlite({path:?})"),
        }
    }
}

impl Dsn {
    /// Parses a DSN, naming what is wrong with it.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            // Read as a URL first: a password with an unencoded `/`, `@`
            // or `#`, or a port that is no number, is otherwise found only
            // at the first connection, as "invalid connection string".
            let how = "postgres://USER:PASSWORD@HOST:PORT/DB, with special characters of the \
                       user and password percent-encoded (/ as %2F, @ as %40, # as %23, ? as \
                       %3F, : as %3A, + as %2B)";
            match url::Url::parse(raw) {
                Err(e) => return Err(format!("is not a valid URL ({e}): {how}")),
                // An `@` past the host: a password holding `@` and then
                // `/`, `?` or `#` ("pw@x/y" made "x" the host), unencoded.
                Ok(u)
                    if u.path().contains('@')
                        || u.query().is_some_and(|q| q.contains('@'))
                        || u.fragment().is_some() =>
                {
                    return Err(format!("holds an `@` or `#` past its host: {how}"));
                }
                // Two `@` before the host: a password holding `@`. The URL
                // reads the host after the last, the driver after the
                // first ("p@ss@host" connected to "ss@host").
                Ok(_) if authority(raw).matches('@').count() > 1 => {
                    return Err(format!("holds an `@` in its user or password: {how}"));
                }
                Ok(u)
                    if u.host_str().is_none_or(str::is_empty)
                        && !u.query_pairs().any(|(k, _)| k == "host") =>
                {
                    return Err(format!("names no host: {how}"));
                }
                Ok(_) => {}
            }
            // Its TLS settings too: a mode mistyped or a root file that
            // cannot be read is named before the first connection.
            crate::pg_tls::Settings::of(raw)?.connector()?;
            return Ok(Dsn::Postgres(raw.to_owned()));
        }
        if let Some(rest) = raw.strip_prefix("sqlite:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err("sqlite DSN has no file path (use sqlite://data/httvps.db)".into());
            }
            return Ok(Dsn::Sqlite(path.to_owned()));
        }
        Err("must start with postgres://, postgresql:// or sqlite://".into())
    }

    /// The backend's name, for logs.
    pub fn backend(&self) -> &'static str {
        match self {
            Dsn::Postgres(_) => "postgres",
            Dsn::Sqlite(_) => "sqlite",
        }
    }
}

/// The authority of URL `raw` (between `://` and the path, query or
/// fragment).
fn authority(raw: &str) -> &str {
    let rest = raw.split_once("://").map_or(raw, |(_, r)| r);
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}
