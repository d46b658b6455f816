//! The gateway's certificate from files, reloaded when they change (a
//! renewal by certbot or any ACME client) or on SIGHUP, without a restart:
//! new handshakes get the new certificate, open tunnels keep the session
//! they have. A pair that does not load leaves the one in use.
//!
//! The same acceptor answers ACME TLS-ALPN-01 validations (RFC 8737) when
//! [`crate::acme`] runs: a handshake offering ALPN `acme-tls/1` for a name
//! with a pending challenge gets that challenge's certificate.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;

/// How often the files are looked at.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

fn load(cert: &Path, key: &Path) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("reading {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{} holds no certificate", cert.display());
    let key = crate::tls::private_key(key)?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .context("TLS key")?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .context("the key does not belong to the certificate")?;
    Ok(Arc::new(ck))
}

/// The ALPN protocol of ACME TLS-ALPN-01 validations (RFC 8737).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

#[derive(Debug, Default)]
struct Current {
    /// The pair served; none yet while ACME obtains the first one.
    pair: RwLock<Option<Arc<CertifiedKey>>>,
    /// TLS-ALPN-01 challenge certificates by lower-case name.
    challenges: RwLock<HashMap<String, Arc<CertifiedKey>>>,
}

impl ResolvesServerCert for Current {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let validation = hello
            .alpn()
            .is_some_and(|mut offered| offered.any(|p| p == ACME_TLS_ALPN));
        if validation {
            // Only the challenge's certificate, never the real one.
            let name = hello.server_name()?.to_ascii_lowercase();
            return self
                .challenges
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&name)
                .cloned();
        }
        self.pair
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Certificate files behind an acceptor, reloadable.
#[derive(Clone)]
pub struct CertFiles {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Current>,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl CertFiles {
    /// Loads `cert` and `key`; returns them with an acceptor (HTTP/1.1)
    /// that always presents the pair loaded last.
    pub fn acceptor(cert: &Path, key: &Path) -> anyhow::Result<(CertFiles, TlsAcceptor)> {
        let files = CertFiles::new(cert, key);
        *files
            .current
            .pair
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(load(cert, key)?);
        let acceptor = files.tls_acceptor(false)?;
        Ok((files, acceptor))
    }

    /// An acceptor for the pair an ACME client keeps at `cert` and `key`:
    /// it serves them when they load (none yet on a first start: handshakes
    /// fail until [`CertFiles::reload`] succeeds), and answers TLS-ALPN-01
    /// validations with the challenges of [`CertFiles::set_challenge`].
    pub fn acme_acceptor(cert: &Path, key: &Path) -> anyhow::Result<(CertFiles, TlsAcceptor)> {
        let files = CertFiles::new(cert, key);
        if cert.exists() || key.exists() {
            match load(cert, key) {
                Ok(pair) => {
                    *files
                        .current
                        .pair
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = Some(pair);
                }
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "cached ACME certificate not usable; a new one will be ordered"
                ),
            }
        }
        let acceptor = files.tls_acceptor(true)?;
        Ok((files, acceptor))
    }

    fn new(cert: &Path, key: &Path) -> CertFiles {
        crate::tls::install_provider();
        CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: Arc::new(Current::default()),
        }
    }

    fn tls_acceptor(&self, acme: bool) -> anyhow::Result<TlsAcceptor> {
        let mut cfg = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.current.clone());
        // The server's order decides: clients offering h2 get it, those
        // offering only http/1.1 get that; an ACME validator offers
        // acme-tls/1 alone.
        cfg.alpn_protocols = crate::tls::gateway_alpn();
        if acme {
            cfg.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
        }
        // Session resumption (see tls.rs): the ticket keys belong to this
        // config, which reloads keep, so tickets outlive a renewal.
        crate::tls::enable_resumption(&mut cfg)?;
        Ok(TlsAcceptor::from(Arc::new(cfg)))
    }

    /// Whether a pair is being served.
    pub fn has_pair(&self) -> bool {
        self.current
            .pair
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .is_some()
    }

    /// Serves `challenge` to TLS-ALPN-01 validations of `name` (none: the
    /// challenge is over).
    pub fn set_challenge(&self, name: &str, challenge: Option<Arc<CertifiedKey>>) {
        let mut map = self
            .current
            .challenges
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let name = name.to_ascii_lowercase();
        match challenge {
            Some(c) => map.insert(name, c),
            None => map.remove(&name),
        };
    }

    /// The certificate chain file.
    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The private key file.
    pub fn key_path(&self) -> &Path {
        &self.key
    }

    /// Loads the files again; on failure the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load(&self.cert, &self.key)?;
        *self
            .current
            .pair
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(fresh);
        tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads when a file's modification time changes (looked at every
    /// `every`) and on SIGHUP, until the task is aborted.
    pub fn spawn_watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let files = self.clone();
        tokio::spawn(async move {
            let stamp = |f: &CertFiles| (modified(&f.cert), modified(&f.key));
            let mut seen = stamp(&files);
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            loop {
                #[cfg(unix)]
                let signalled = async {
                    match hup.as_mut() {
                        Some(h) => h.recv().await.is_some(),
                        None => std::future::pending().await,
                    }
                };
                #[cfg(not(unix))]
                let signalled = std::future::pending::<bool>();
                let forced = tokio::select! {
                    _ = tokio::time::sleep(every) => false,
                    s = signalled => s,
                };
                let now = stamp(&files);
                if forced || now != seen {
                    seen = now;
                    if let Err(e) = files.reload() {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "TLS certificate not reloaded; the previous one stays"
                        );
                    }
                }
            }
        })
    }
}
