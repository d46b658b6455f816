//! The gateway's certificate from files, reloaded when they change (a
//! renewal by certbot or any ACME client) or on SIGHUP, without a restart:
//! new handshakes get the new certificate, open tunnels keep the session
//! they have. A pair that does not load leaves the one in use.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
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
    let key =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("reading {}", key.display()))?;
    let signing = crate::tls::provider()
        .key_provider
        .load_private_key(key)
        .context("TLS key")?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .context("the key does not belong to the certificate")?;
    Ok(Arc::new(ck))
}

#[derive(Debug)]
struct Current(RwLock<Arc<CertifiedKey>>);

impl ResolvesServerCert for Current {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
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
        crate::tls::install_provider();
        let current = Arc::new(Current(RwLock::new(load(cert, key)?)));
        let mut cfg = ServerConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // Session resumption: stateless tickets, keys rotated (see tls.rs).
        cfg.ticketer =
            tokio_rustls::rustls::crypto::aws_lc_rs::Ticketer::new().context("TLS ticket keys")?;
        let files = CertFiles {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current,
        };
        Ok((files, TlsAcceptor::from(Arc::new(cfg))))
    }

    /// Loads the files again; on failure the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load(&self.cert, &self.key)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
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
