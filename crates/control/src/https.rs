//! The control plane serving HTTPS itself: a certificate and key from PEM
//! files, reloaded when either file changes or on SIGHUP (the old pair
//! stays in use when the new one does not load).
//!
//! [`TlsFront::accept`] wraps one accepted `TcpStream`: the control plane's
//! accept loop ([`crate::listener`]) calls it inside the connection's place
//! in the budget, held to the header deadline.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// Deadline for a client's TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the certificate files are looked at for changes.
pub const WATCH_EVERY: Duration = Duration::from_secs(5);

/// The certificate and key files of the control plane's HTTPS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain (PEM): the server's certificate first, then the
    /// intermediates (and the private CA when clients pin it).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads and checks a certificate chain and its key.
fn load(files: &TlsFiles) -> anyhow::Result<Arc<CertifiedKey>> {
    let certs = CertificateDer::pem_file_iter(&files.cert)
        .with_context(|| format!("reading {}", files.cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", files.cert.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{} holds no certificate",
        files.cert.display()
    );
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => anyhow::anyhow!(
            "{} holds no private key (-----BEGIN PRIVATE KEY-----)",
            files.key.display()
        ),
        e => anyhow::Error::new(e).context(format!("reading {}", files.key.display())),
    })?;
    let signing = provider()
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("loading {}", files.key.display()))?;
    let ck = CertifiedKey::new(certs, signing);
    ck.keys_match()
        .context("the key does not belong to the certificate")?;
    Ok(Arc::new(ck))
}

/// The certificate in use, swapped whole on reload.
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

/// TLS in front of the control plane, with a reloadable certificate.
#[derive(Clone)]
pub struct TlsFront {
    files: TlsFiles,
    current: Arc<Current>,
    acceptor: TlsAcceptor,
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

impl TlsFront {
    /// Loads `files`; fails when they do not load (start-up refuses).
    pub fn load(files: TlsFiles) -> anyhow::Result<TlsFront> {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let current = Arc::new(Current(RwLock::new(load(&files)?)));
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsFront {
            files,
            current,
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }

    /// Loads the files again; on failure the pair in use stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = load(&self.files)?;
        *self
            .current
            .0
            .write()
            .unwrap_or_else(PoisonError::into_inner) = fresh;
        tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
        Ok(())
    }

    /// Reloads when a file's modification time changes (looked at every
    /// `every`) and on SIGHUP, until the task is aborted.
    pub fn spawn_watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let front = self.clone();
        tokio::spawn(async move {
            let stamp = |f: &TlsFiles| (modified(&f.cert), modified(&f.key));
            let mut seen = stamp(&front.files);
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
                let now = stamp(&front.files);
                if forced || now != seen {
                    seen = now;
                    if let Err(e) = front.reload() {
                        tracing::warn!(
                            error = format!("{e:#}"),
                            "TLS certificate not reloaded; the previous one stays"
                        );
                    }
                }
            }
        })
    }

    /// The TLS handshake on an accepted connection, within
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn accept(&self, tcp: TcpStream) -> std::io::Result<TlsStream<TcpStream>> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(tcp)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        }
    }
}
