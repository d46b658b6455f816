//! Opening a PostgreSQL connection with an error an operator can act on.
//!
//! tokio-postgres reports a server that asks for a password the DSN does not
//! carry as a configuration error whose cause ("password missing") is lost
//! on the way up through diesel-async: all that reaches the log is "invalid
//! configuration". [`connect`] names what is missing instead. Likewise a
//! server that cannot be reached is reported as "error connecting to
//! server", its cause (refused, unresolvable, timed out) dropped:
//! [`connect`] then asks the network itself and says which.

use diesel::ConnectionError;
use diesel_async::AsyncPgConnection;

/// What an operator is told when the server wants a password the DSN lacks.
pub(crate) const NO_PASSWORD: &str = "the server asks for a password and BACKEND_DB_DSN has \
     none: postgres://USER:PASSWORD@HOST:PORT/DB (percent-encode special characters)";

/// Opens one PostgreSQL connection to `url`.
pub(crate) async fn connect(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    // A peer that takes the connection and then says nothing would hold
    // the start for good (tokio-postgres' connect_timeout covers the TCP
    // connect only).
    let Ok(established) = tokio::time::timeout(CONNECT_WAIT, establish(url)).await else {
        return Err(ConnectionError::BadConnection(format!(
            "{} did not answer the start of a session within {CONNECT_WAIT:?}: is it PostgreSQL?",
            server_of(url)
        )));
    };
    match established {
        Ok(conn) => Ok(conn),
        // However diesel-async wrapped it.
        Err(e) if e.to_string().starts_with("error connecting to server") => {
            Err(ConnectionError::BadConnection(
                unreachable(url)
                    .await
                    .unwrap_or_else(|| format!("cannot connect to {}: {e}", server_of(url))),
            ))
        }
        Err(e) => Err(explain(e, url)),
    }
}

/// Connects as `url`'s `sslmode` asks (see [`crate::pg_tls`]), naming the
/// cause of a failure (tokio-postgres' own text is its kind alone: "error
/// performing TLS handshake").
async fn establish(url: &str) -> Result<AsyncPgConnection, ConnectionError> {
    let settings = crate::pg_tls::Settings::of(url)
        .map_err(|e| ConnectionError::InvalidConnectionUrl(format!("BACKEND_DB_DSN {e}")))?;
    let mut config: tokio_postgres::Config = settings
        .rest
        .parse()
        .map_err(|e| ConnectionError::InvalidConnectionUrl(with_causes(&e)))?;
    config.ssl_mode(settings.ssl_mode());
    let failed = |e: tokio_postgres::Error| match e.as_db_error() {
        // The server's own refusal (no such database, a wrong password),
        // as diesel-async words it.
        Some(db) => ConnectionError::BadConnection(db.message().to_owned()),
        None if is_tls_failure(&e) => ConnectionError::BadConnection(format!(
            "TLS with {} failed ({}): {}",
            server_of(url),
            mode_of(&settings),
            with_causes(&e)
        )),
        None => ConnectionError::BadConnection(with_causes(&e)),
    };
    match settings
        .connector()
        .map_err(|e| ConnectionError::InvalidConnectionUrl(format!("BACKEND_DB_DSN {e}")))?
    {
        None => {
            let (client, conn) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(failed)?;
            AsyncPgConnection::try_from_client_and_connection(client, conn).await
        }
        Some(tls) => match config.connect(tls).await {
            Ok((client, conn)) => {
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            // libpq's `prefer` (and `allow`) take a server whose TLS fails
            // (one that offers only TLS 1.0, say) without it.
            Err(e) if settings.mode.falls_back_to_plain() && is_tls_failure(&e) => {
                tracing::warn!(
                    server = %server_of(url),
                    cause = %with_causes(&e),
                    "TLS with PostgreSQL failed under sslmode=prefer: connected without TLS, \
                     as libpq does (sslmode=require refuses instead)"
                );
                let (client, conn) = config
                    .connect(tokio_postgres::NoTls)
                    .await
                    .map_err(failed)?;
                AsyncPgConnection::try_from_client_and_connection(client, conn).await
            }
            Err(e) => Err(failed(e)),
        },
    }
}

/// Whether `e` is a failed TLS handshake (tokio-postgres' own wording of
/// the kind).
fn is_tls_failure(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && e.to_string() == "error performing TLS handshake"
}

/// What a failed handshake was asked to check, and what to change.
fn mode_of(s: &crate::pg_tls::Settings) -> &'static str {
    use crate::pg_tls::Mode;
    match s.mode {
        Mode::VerifyFull => {
            "sslmode=verify-full: the server must have ssl = on and a certificate that chains \
             to sslrootcert (or a system root) and names the DSN's host"
        }
        Mode::VerifyCa => {
            "sslmode=verify-ca (or a root file given): the server must have ssl = on and a \
             certificate that chains to sslrootcert (or a system root)"
        }
        Mode::Require => "sslmode=require: does the server have ssl = on?",
        _ => "sslmode=prefer, the default; sslmode=disable connects without TLS",
    }
}

/// `e` and its causes, one after the other.
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out
}

/// How long a server may take to accept a session.
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The server `url` names: its host (IPv6 without brackets) and port
/// (5432 unless given); `None` when it names no host (a Unix socket).
fn host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    let host = u.host_str().filter(|h| !h.is_empty())?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    Some((host.to_owned(), u.port().unwrap_or(5432)))
}

/// "PostgreSQL at host:port (BACKEND_DB_DSN)", or without the address
/// when `url` names no host.
fn server_of(url: &str) -> String {
    match host_port(url) {
        Some((host, port)) => format!("PostgreSQL at {host}:{port} (BACKEND_DB_DSN)"),
        None => "PostgreSQL (BACKEND_DB_DSN)".to_owned(),
    }
}

/// How long each step of [`unreachable`] may take.
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Why the server of `url` cannot be reached, asked of the network: its
/// name does not resolve, or no address of it takes a TCP connection.
/// `None` when it does (the failure was another) or `url` names no host.
async fn unreachable(url: &str) -> Option<String> {
    let (host, port) = host_port(url)?;
    let at = server_of(url);
    let addrs: Vec<std::net::SocketAddr> = match tokio::time::timeout(
        PROBE_WAIT,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(addrs)) => addrs.collect(),
        Ok(Err(e)) => return Some(format!("cannot reach {at}: its name does not resolve: {e}")),
        Err(_) => {
            return Some(format!(
                "cannot reach {at}: its name did not resolve in {PROBE_WAIT:?}"
            ));
        }
    };
    let mut why = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(PROBE_WAIT, tokio::net::TcpStream::connect(addr)).await {
            Ok(Ok(_)) => return None,
            Ok(Err(e)) => why.push(format!("{addr}: {e}")),
            Err(_) => why.push(format!("{addr}: no answer in {PROBE_WAIT:?}")),
        }
    }
    Some(format!("cannot reach {at}: {}", why.join("; ")))
}

/// `e`, with "invalid configuration" explained when `url` has no password
/// (the only configuration error left once a URL has parsed and a server
/// answered).
fn explain(e: ConnectionError, url: &str) -> ConnectionError {
    let bare = match &e {
        ConnectionError::CouldntSetupConfiguration(diesel::result::Error::DatabaseError(
            _,
            info,
        )) => info.message() == "invalid configuration",
        ConnectionError::BadConnection(m) => {
            m == "invalid configuration" || m == "invalid configuration: password missing"
        }
        _ => false,
    };
    // A URL without a host reaches no server: that is another
    // configuration error tokio-postgres words the same way.
    let no_password = url::Url::parse(url)
        .is_ok_and(|u| u.password().is_none() && u.host_str().is_some_and(|h| !h.is_empty()));
    if bare && no_password {
        ConnectionError::BadConnection(NO_PASSWORD.to_owned())
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A server on 127.0.0.1 without TLS that asks every client for a
    /// cleartext password, as a `password` line of pg_hba.conf makes
    /// PostgreSQL do.
    async fn asking_for_a_password() -> std::net::SocketAddr {
        asking_for_a_password_after(false).await
    }

    /// As [`asking_for_a_password`]; with `broken_tls`, a connection that
    /// asks for TLS is told yes and then hung up on, as a server whose TLS
    /// the client cannot speak.
    async fn asking_for_a_password_after(broken_tls: bool) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            'accept: for _ in 0..8 {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                // The startup message: a length (itself included), then the
                // rest; an SSLRequest (code 80877103) before it is answered
                // 'N', as by a server with ssl = off (sslmode=prefer asks).
                loop {
                    let len = s.read_u32().await.unwrap_or(8);
                    let mut rest = vec![0; len.saturating_sub(4) as usize];
                    let _ = s.read_exact(&mut rest).await;
                    if rest[..] != 80_877_103u32.to_be_bytes() {
                        break;
                    }
                    if broken_tls {
                        // Yes, then a ClientHello answered with what is
                        // not TLS.
                        let _ = s.write_all(b"S").await;
                        let _ = s.read(&mut [0; 1024]).await;
                        let _ = s.write_all(b"no TLS here\r\n").await;
                        continue 'accept;
                    }
                    let _ = s.write_all(b"N").await;
                }
                // AuthenticationCleartextPassword: 'R', length 8, code 3.
                let _ = s.write_all(&[b'R', 0, 0, 0, 8, 0, 0, 0, 3]).await;
                let _ = s.read(&mut [0; 64]).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_dsn_without_the_password_the_server_asks_for_is_named() {
        let addr = asking_for_a_password().await;
        let Err(e) = super::connect(&format!("postgres://httvps@{addr}/httvps")).await else {
            panic!("connected without a password")
        };
        assert_eq!(e.to_string(), super::NO_PASSWORD);
        // With a password in the DSN the server's own answer stands (here
        // it hangs up after asking).
        let Err(e) = super::connect(&format!("postgres://httvps:pw@{addr}/httvps")).await else {
            panic!("connected")
        };
        assert_ne!(e.to_string(), super::NO_PASSWORD);
        // No host: no server was asked, and no password is blamed.
        let Err(e) = super::connect("postgres:///httvps").await else {
            panic!("connected without a host")
        };
        assert_ne!(e.to_string(), super::NO_PASSWORD);
    }

    #[tokio::test]
    async fn prefer_takes_a_server_whose_tls_fails_without_it_as_libpq_does() {
        let addr = asking_for_a_password_after(true).await;
        // Reaching the password question means the session started
        // without TLS after the failed handshake.
        let Err(e) = super::connect(&format!("postgres://httvps@{addr}/httvps")).await else {
            panic!("connected without a password")
        };
        assert_eq!(e.to_string(), super::NO_PASSWORD);
        let Err(e) =
            super::connect(&format!("postgres://httvps@{addr}/httvps?sslmode=allow")).await
        else {
            panic!("connected without a password")
        };
        assert_eq!(e.to_string(), super::NO_PASSWORD);
        // `require` does not.
        let Err(e) =
            super::connect(&format!("postgres://httvps@{addr}/httvps?sslmode=require")).await
        else {
            panic!("connected")
        };
        let said = e.to_string();
        assert!(
            said.contains(&format!(
                "TLS with PostgreSQL at {addr} (BACKEND_DB_DSN) failed"
            )) && said.contains("sslmode=require"),
            "{said}"
        );
    }

    #[tokio::test]
    async fn a_server_that_is_not_there_is_named_with_the_cause() {
        // A port nothing listens on (bound, then let go).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("port")
            .port();
        let Err(e) = super::connect(&format!("postgres://httvps:pw@127.0.0.1:{port}/httvps")).await
        else {
            panic!("connected to nothing")
        };
        let said = e.to_string();
        assert!(
            said.contains(&format!(
                "cannot reach PostgreSQL at 127.0.0.1:{port} (BACKEND_DB_DSN)"
            )) && said.contains("refused"),
            "{said}"
        );
    }
}
