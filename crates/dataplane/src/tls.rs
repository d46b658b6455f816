//! TLS material: certificate files, a self-signed certificate for
//! development, and client configs that trust the system's roots plus an
//! extra certificate.
//!
//! Session resumption ([`enable_resumption`]): the acceptor issues
//! stateless TLS 1.3 tickets (rustls' `Ticketer`: AEAD-sealed, keys rotated
//! every 6 hours, the old key still accepted for one more period), so every
//! worker of a gateway resumes every ticket the gateway issued, with
//! nothing stored per client; TLS 1.2 clients without tickets resume from a
//! bounded in-memory session cache. The ticket keys live in the one
//! `ServerConfig`, which a certificate reload or an ACME renewal does not
//! replace (the certificate is resolved per handshake, see
//! [`crate::certs`]), so tickets survive renewals; a restarted gateway has
//! new keys and its clients do one full handshake. A connector keeps the
//! tickets it receives ([`TicketStore`]: up to [`TICKETS_PER_SERVER`] per
//! gateway, newest used first), so a client that reconnects through the same
//! connector skips the certificate and key exchange, also when it opens
//! many tunnels at once (each takes a ticket; rustls' own store keeps 8). 0-RTT (early data) stays off: early data can be replayed by
//! anyone who captured it, and the first bytes a client sends are its
//! device token and the opening of a tunnel.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
pub use tokio_rustls::TlsAcceptor;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore, ServerConfig};

/// Installs aws-lc-rs as the process's crypto provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// Seeds the process's random generator: aws-lc collects CPU-jitter
/// entropy for its root seed on the first use in a process, about 40 ms of
/// one core. Run at start (on a blocking thread, beside the first network
/// round trips), so that a client's first TLS handshake does not stop for
/// it between its TCP connection and its ClientHello.
pub fn seed_random() {
    let mut bytes = [0u8; 16];
    if provider().secure_random.fill(&mut bytes).is_err() {
        tracing::warn!("the random generator failed to seed");
    }
}

/// aws-lc-rs with TLS_AES_128_GCM_SHA256 preferred: its handshake hashes
/// with SHA-256, which CPUs accelerate (SHA-384 is computed in software),
/// and AES-128 is the cheapest bulk cipher where AES instructions exist.
pub(crate) fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::aws_lc_rs::default_provider();
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Writes a self-signed certificate for `names` to `cert` and `key` (PEM),
/// unless both already exist.
pub fn ensure_self_signed(cert: &Path, key: &Path, names: &[&str]) -> anyhow::Result<()> {
    anyhow::ensure!(
        cert != key,
        "the certificate and the key are both {}: give each its own file",
        cert.display()
    );
    match (cert.exists(), key.exists()) {
        (true, true) => return Ok(()),
        (false, false) => {}
        // One without the other is a path mistyped, or an operator's own
        // certificate or key: neither is replaced.
        (true, false) | (false, true) => {
            let (there, missing) = if cert.exists() {
                (cert, key)
            } else {
                (key, cert)
            };
            anyhow::bail!(
                "{} exists but {} does not: give the pair's paths, or remove {} to have a \
                 self-signed pair generated",
                there.display(),
                missing.display(),
                there.display()
            );
        }
    }
    let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    let ck = rcgen::generate_simple_self_signed(names)
        .context("generating a self-signed certificate")?;
    std::fs::write(cert, ck.cert.pem()).with_context(|| format!("writing {}", cert.display()))?;
    let _ = std::fs::remove_file(key);
    crate::files::write_private(key, ck.signing_key.serialize_pem().as_bytes())
        .with_context(|| format!("writing {}", key.display()))?;
    Ok(())
}

/// The application protocols a gateway offers, in its order of preference
/// (the server's order decides): a client offering `h2` gets HTTP/2 (and
/// WebSockets over extended CONNECT); one offering only `http/1.1`, or no
/// ALPN at all, gets HTTP/1.1 as before.
pub(crate) fn gateway_alpn() -> Vec<Vec<u8>> {
    vec![b"h2".to_vec(), b"http/1.1".to_vec()]
}

/// The private key of a PEM file; a file that holds none (a certificate
/// given for the key, say) says so.
pub fn private_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        tokio_rustls::rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "{} holds no private key (-----BEGIN PRIVATE KEY-----)",
            path.display()
        ),
        e => anyhow::Error::new(e).context(format!("reading {}", path.display())),
    })
}

/// A TLS acceptor from PEM certificate and key files (HTTP/2 and HTTP/1.1).
pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<TlsAcceptor> {
    install_provider();
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    let key = private_key(key)?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("TLS certificate")?;
    cfg.alpn_protocols = gateway_alpn();
    enable_resumption(&mut cfg)?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// How many TLS 1.2 sessions a gateway remembers for clients that resume
/// by session id (about 100 bytes each; the oldest go first).
pub const SESSION_CACHE: usize = 4096;

/// Turns session resumption on for a server config (see the module's
/// notes): rotating ticket keys shared by every connection the config
/// accepts, a bounded session cache for TLS 1.2, no early data, and what
/// the server queues before the handshake sent with its Finished.
pub fn enable_resumption(cfg: &mut ServerConfig) -> anyhow::Result<()> {
    cfg.ticketer = rustls::crypto::aws_lc_rs::Ticketer::new().context("TLS ticket keys")?;
    cfg.session_storage = rustls::server::ServerSessionMemoryCache::new(SESSION_CACHE);
    // No 0-RTT: early data is replayable.
    cfg.max_early_data_size = 0;
    // What the server queues before the handshake ends (the gateway's
    // HTTP/2 SETTINGS, the same for every client) leaves with its Finished
    // instead of waiting for the client's: one round trip less for a new
    // HTTP/2 client.
    cfg.send_half_rtt_data = true;
    Ok(())
}

/// The web PKI roots the system provides, plus `extra_ca` when given (a
/// self-signed gateway certificate, or a private CA).
pub fn roots(extra_ca: Option<&Path>) -> anyhow::Result<RootCertStore> {
    let mut roots = RootCertStore::empty();
    if let Some(path) = extra_ca {
        for c in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            roots
                .add(c.with_context(|| format!("parsing {}", path.display()))?)
                .context("adding the CA")?;
        }
        // A file holding no certificate (a key, a text file given by
        // mistake) would trust nothing more, and every handshake would
        // then fail with "UnknownIssuer", far from its cause.
        anyhow::ensure!(
            !roots.is_empty(),
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    // The system's trust store wherever this system keeps it (and
    // SSL_CERT_FILE / SSL_CERT_DIR when set), as the stock clients trust it.
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %e, "a system root certificate was skipped");
    }
    let (_added, _ignored) = roots.add_parsable_certificates(native.certs);
    Ok(roots)
}

/// A TLS connector trusting the web PKI roots the system provides, plus
/// `extra_ca` when given (a self-signed gateway certificate).
pub fn connector(extra_ca: Option<&Path>) -> anyhow::Result<TlsConnector> {
    connector_with_alpn(extra_ca, Vec::new())
}

/// [`connector`] offering the application protocols `alpn` (in order).
pub fn connector_with_alpn(
    extra_ca: Option<&Path>,
    alpn: Vec<Vec<u8>>,
) -> anyhow::Result<TlsConnector> {
    install_provider();
    let roots = roots(extra_ca)?;
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.resumption = rustls::client::Resumption::store(Arc::new(TicketStore::default()));
    cfg.alpn_protocols = alpn;
    Ok(TlsConnector::from(Arc::new(cfg)))
}

/// TLS 1.3 tickets a connector keeps per server. A ticket is used once, and
/// each handshake brings two new ones, so a client opening this many
/// tunnels at once still resumes every one.
pub const TICKETS_PER_SERVER: usize = 64;

/// Servers a connector keeps tickets for (the oldest is forgotten first).
pub const TICKET_SERVERS: usize = 16;

/// What a connector remembers of one server.
#[derive(Default)]
struct Remembered {
    kx_hint: Option<rustls::NamedGroup>,
    tls12: Option<rustls::client::Tls12ClientSessionValue>,
    /// Oldest first.
    tls13: std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
}

/// A client's session store: rustls' in-memory store with room for
/// [`TICKETS_PER_SERVER`] tickets per server instead of 8, handing out the
/// newest first (the freshest, furthest from expiry).
#[derive(Default)]
pub struct TicketStore {
    servers: std::sync::Mutex<Vec<(rustls::pki_types::ServerName<'static>, Remembered)>>,
}

impl std::fmt::Debug for TicketStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketStore").finish_non_exhaustive()
    }
}

impl TicketStore {
    fn edit<R>(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
        insert: bool,
        f: impl FnOnce(&mut Remembered) -> R,
    ) -> Option<R> {
        let mut servers = self
            .servers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, r)) = servers.iter_mut().find(|(n, _)| n == name) {
            return Some(f(r));
        }
        if !insert {
            return None;
        }
        if servers.len() >= TICKET_SERVERS {
            servers.remove(0);
        }
        servers.push((name.to_owned(), Remembered::default()));
        servers.last_mut().map(|(_, r)| f(r))
    }

    /// Tickets kept for `name`.
    pub fn tickets(&self, name: &rustls::pki_types::ServerName<'_>) -> usize {
        self.edit(name, false, |r| r.tls13.len()).unwrap_or(0)
    }
}

impl rustls::client::ClientSessionStore for TicketStore {
    fn set_kx_hint(&self, name: rustls::pki_types::ServerName<'static>, group: rustls::NamedGroup) {
        self.edit(&name, true, |r| r.kx_hint = Some(group));
    }

    fn kx_hint(&self, name: &rustls::pki_types::ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.edit(name, false, |r| r.kx_hint).flatten()
    }

    fn set_tls12_session(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.edit(&name, true, |r| r.tls12 = Some(value));
    }

    fn tls12_session(
        &self,
        name: &rustls::pki_types::ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.edit(name, false, |r| r.tls12.clone()).flatten()
    }

    fn remove_tls12_session(&self, name: &rustls::pki_types::ServerName<'static>) {
        self.edit(name, false, |r| r.tls12 = None);
    }

    fn insert_tls13_ticket(
        &self,
        name: rustls::pki_types::ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.edit(&name, true, |r| {
            if r.tls13.len() >= TICKETS_PER_SERVER {
                r.tls13.pop_front();
            }
            r.tls13.push_back(value);
        });
    }

    fn take_tls13_ticket(
        &self,
        name: &rustls::pki_types::ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.edit(name, false, |r| r.tls13.pop_back()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::HandshakeKind;

    /// A CA file with no certificate in it (a key given by mistake, a
    /// text file) is refused with its name, not taken as trusting
    /// nothing more; a real one is taken.
    #[test]
    fn a_ca_file_without_a_certificate_is_refused() {
        let dir = std::env::temp_dir().join(format!("httvps-roots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
        let (cert, key, text) = (
            dir.join("ca.crt"),
            dir.join("ca.key"),
            dir.join("notes.txt"),
        );
        std::fs::write(&cert, ck.cert.pem()).expect("write");
        std::fs::write(&key, ck.signing_key.serialize_pem()).expect("write");
        std::fs::write(&text, "not a certificate\n").expect("write");
        assert!(roots(Some(&cert)).is_ok());
        for wrong in [&key, &text] {
            let e = roots(Some(wrong)).expect_err("no certificate").to_string();
            assert!(e.contains("holds no PEM certificate"), "{e}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::ServerName;

    /// A gateway-like server: answers each connection with one line and
    /// keeps reading until the peer closes.
    async fn server(acceptor: TlsAcceptor) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = tls.write_all(b"hello\n").await;
                    let mut sink = [0u8; 64];
                    while matches!(tls.read(&mut sink).await, Ok(n) if n > 0) {}
                });
            }
        });
        addr
    }

    /// Connects, reads the greeting (the tickets arrive with it) and says
    /// how the handshake went.
    async fn visit(connector: &TlsConnector, addr: std::net::SocketAddr) -> HandshakeKind {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let name = ServerName::try_from("localhost").expect("name");
        let mut tls = connector.connect(name, tcp).await.expect("handshake");
        let mut line = [0u8; 6];
        tls.read_exact(&mut line).await.expect("greeting");
        assert_eq!(&line, b"hello\n");
        let kind = tls.get_ref().1.handshake_kind().expect("handshake done");
        let _ = tls.shutdown().await;
        kind
    }

    #[test]
    fn half_a_pair_is_refused_and_left_as_it_is() {
        let dir = std::env::temp_dir().join(format!("httvps-tls-half-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("gw.crt"), dir.join("gw.key"));
        for (there, missing) in [(&cert, &key), (&key, &cert)] {
            std::fs::write(there, b"an operator's own").expect("write");
            let e = ensure_self_signed(&cert, &key, &["localhost"]).expect_err("refused");
            assert!(e.to_string().contains("does not"), "{e}");
            assert_eq!(std::fs::read(there).expect("kept"), b"an operator's own");
            assert!(!missing.exists());
            std::fs::remove_file(there).expect("remove");
        }
        let e = ensure_self_signed(&cert, &cert, &["localhost"]).expect_err("one file for both");
        assert!(e.to_string().contains("both"), "{e}");
        assert!(!cert.exists());
        ensure_self_signed(&cert, &key, &["localhost"]).expect("a new pair");
        assert!(cert.exists() && key.exists());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_that_reconnects_resumes_its_session() {
        let dir = std::env::temp_dir().join(format!("httvps-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("gw.crt"), dir.join("gw.key"));
        ensure_self_signed(&cert, &key, &["localhost"]).expect("certificate");
        let addr = server(acceptor(&cert, &key).expect("acceptor")).await;
        let client = connector(Some(&cert)).expect("connector");
        assert_eq!(visit(&client, addr).await, HandshakeKind::Full);
        // Every later connection resumes, whichever worker accepts it.
        for _ in 0..4 {
            assert_eq!(visit(&client, addr).await, HandshakeKind::Resumed);
        }
        // A client without the gateway's ticket does a full handshake.
        let stranger = connector(Some(&cert)).expect("connector");
        assert_eq!(visit(&stranger, addr).await, HandshakeKind::Full);
        // Another gateway (other ticket keys) cannot open this client's
        // tickets: a full handshake there, no error.
        let other = server(acceptor(&cert, &key).expect("acceptor")).await;
        assert_eq!(visit(&client, other).await, HandshakeKind::Full);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_client_opening_many_connections_at_once_resumes_every_one() {
        let dir = std::env::temp_dir().join(format!("httvps-tls-many-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let (cert, key) = (dir.join("gw.crt"), dir.join("gw.key"));
        ensure_self_signed(&cert, &key, &["localhost"]).expect("certificate");
        let addr = server(acceptor(&cert, &key).expect("acceptor")).await;
        let client = connector(Some(&cert)).expect("connector");
        // Each handshake brings two tickets and uses one: 40 in a row
        // leave 40 kept (rustls' own store would hold 8).
        for _ in 0..40 {
            visit(&client, addr).await;
        }
        let opened: Vec<_> = (0..32)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { visit(&client, addr).await })
            })
            .collect();
        let mut full = 0;
        for o in opened {
            if o.await.expect("visit") == HandshakeKind::Full {
                full += 1;
            }
        }
        assert_eq!(full, 0, "32 at once, all resumed");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn the_store_keeps_a_bounded_number_of_servers() {
        use rustls::client::ClientSessionStore;
        let store = TicketStore::default();
        for i in 0..(TICKET_SERVERS + 3) {
            let name = ServerName::try_from(format!("gw{i}.example")).expect("name");
            store.set_kx_hint(name, rustls::NamedGroup::X25519);
        }
        let first = ServerName::try_from("gw0.example").expect("name");
        let last = ServerName::try_from(format!("gw{}.example", TICKET_SERVERS + 2)).expect("name");
        assert_eq!(store.kx_hint(&first), None, "the oldest forgotten");
        assert_eq!(store.kx_hint(&last), Some(rustls::NamedGroup::X25519));
        assert_eq!(store.tickets(&last), 0);
    }
}
