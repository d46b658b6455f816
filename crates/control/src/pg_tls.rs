//! TLS to PostgreSQL, as libpq's `sslmode` asks for it.
//!
//! tokio-postgres knows `disable`, `prefer` and `require` and brings no TLS
//! of its own; diesel-async connects without any. This module reads the
//! DSN's `sslmode` (libpq's six values, `prefer` when absent, as libpq) and
//! `sslrootcert` (a PEM file, or `system` for the system's roots), hands
//! tokio-postgres the rest and a rustls connector that checks what the
//! mode asks: nothing for `allow`/`prefer`/`require` (encryption only,
//! as libpq without a root certificate), the chain for `verify-ca`, the
//! chain and the host name for `verify-full`.

use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// What `sslmode` asks of the connection (libpq's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// No TLS.
    Disable,
    /// TLS when the server offers it, unchecked (libpq tries plain first;
    /// here TLS is tried first, as `prefer`).
    Allow,
    /// TLS when the server offers it, unchecked; libpq's default.
    Prefer,
    /// TLS or no connection, its certificate unchecked.
    Require,
    /// TLS with a certificate that chains to a trusted root.
    VerifyCa,
    /// As `VerifyCa`, and the certificate names the host connected to.
    VerifyFull,
}

impl Mode {
    /// Whether a failed TLS handshake is followed by a connection without
    /// TLS (libpq's `allow` and `prefer`).
    pub(crate) fn falls_back_to_plain(self) -> bool {
        matches!(self, Mode::Allow | Mode::Prefer)
    }
}

/// The TLS settings of a DSN and the DSN tokio-postgres is given (without
/// the parameters read here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `sslmode`, as libpq reads it with `sslrootcert` (see
    /// [`Settings::of`]).
    pub mode: Mode,
    /// `sslrootcert`: `None` for the system's roots.
    pub roots: Option<PathBuf>,
    /// The DSN for tokio-postgres.
    pub rest: String,
}

/// Parameters of libpq's that are not supported: named rather than
/// passed on, where tokio-postgres would call them unknown.
const UNSUPPORTED: [&str; 5] = ["sslcert", "sslkey", "sslpassword", "sslcrl", "sslcrldir"];

/// `sslrootcert` as given.
enum Roots {
    /// Not given: the system's roots where a mode checks the chain.
    Unset,
    /// `system`.
    System,
    /// A PEM file.
    File(PathBuf),
}

impl Settings {
    /// Reads the TLS parameters of `url` (a `postgres://` URL), naming
    /// what is wrong, as libpq reads them: a root file given makes
    /// `allow`, `prefer` and `require` check the chain (`verify-ca`);
    /// `sslrootcert=system` makes the default `verify-full` and refuses a
    /// weaker mode. The other parameters go on as they were written.
    pub(crate) fn of(url: &str) -> Result<Self, String> {
        let mut u = url::Url::parse(url).map_err(|e| format!("is not a valid URL ({e})"))?;
        let mut mode = None;
        let mut roots = Roots::Unset;
        let mut rest = Vec::new();
        // Pair by pair, each kept as it was written (re-encoding turned a
        // `%20` in `options` into a `+`, which PostgreSQL took literally).
        for raw in u
            .query()
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            let Some((k, v)) = url::form_urlencoded::parse(raw.as_bytes()).next() else {
                continue;
            };
            match k.as_ref() {
                "sslmode" => {
                    mode = Some(match v.as_ref() {
                        "disable" => Mode::Disable,
                        "allow" => Mode::Allow,
                        "prefer" => Mode::Prefer,
                        "require" => Mode::Require,
                        "verify-ca" => Mode::VerifyCa,
                        "verify-full" => Mode::VerifyFull,
                        _ => {
                            return Err(format!(
                                "has sslmode={v}: one of disable, allow, prefer, require, \
                                 verify-ca, verify-full"
                            ));
                        }
                    });
                }
                "sslrootcert" => {
                    roots = match v.as_ref() {
                        "" => return Err("has an empty sslrootcert: a PEM file, or system".into()),
                        "system" => Roots::System,
                        path => Roots::File(PathBuf::from(path)),
                    };
                }
                k if UNSUPPORTED.contains(&k) => {
                    return Err(format!(
                        "has {k}: client certificates are not supported (use a password, \
                         with sslmode=verify-full)"
                    ));
                }
                _ => rest.push(raw),
            }
        }
        let taken = mode.is_some() || !matches!(roots, Roots::Unset);
        let mode = match (mode, &roots) {
            (Some(Mode::Disable), Roots::File(_) | Roots::System) => {
                return Err("has sslrootcert with sslmode=disable: TLS is off".into());
            }
            (None, Roots::System) => Mode::VerifyFull,
            (Some(m), Roots::System) if m != Mode::VerifyFull => {
                return Err(
                    "has sslrootcert=system with a weaker sslmode than verify-full (libpq \
                     refuses it too): sslmode=verify-full"
                        .into(),
                );
            }
            (None | Some(Mode::Allow | Mode::Prefer | Mode::Require), Roots::File(_)) => {
                Mode::VerifyCa
            }
            (m, _) => m.unwrap_or(Mode::Prefer),
        };
        let rest = if taken {
            u.set_query((!rest.is_empty()).then(|| rest.join("&")).as_deref());
            u.to_string()
        } else {
            url.to_owned()
        };
        let roots = match roots {
            Roots::File(path) => Some(path),
            Roots::Unset | Roots::System => None,
        };
        Ok(Settings { mode, roots, rest })
    }

    /// tokio-postgres' mode for this one.
    pub(crate) fn ssl_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode;
        match self.mode {
            Mode::Disable => SslMode::Disable,
            Mode::Allow | Mode::Prefer => SslMode::Prefer,
            Mode::Require | Mode::VerifyCa | Mode::VerifyFull => SslMode::Require,
        }
    }

    /// The connector these settings ask for (`None` without TLS).
    pub(crate) fn connector(&self) -> Result<Option<MakeRustls>, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let verifier: Arc<dyn ServerCertVerifier> = match self.mode {
            Mode::Disable => return Ok(None),
            Mode::Allow | Mode::Prefer | Mode::Require => Arc::new(Unchecked(provider.clone())),
            Mode::VerifyCa | Mode::VerifyFull => {
                let webpki = WebPkiServerVerifier::builder_with_provider(
                    Arc::new(self.root_store()?),
                    provider.clone(),
                )
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?;
                match self.mode {
                    Mode::VerifyCa => Arc::new(ChainOnly(webpki)),
                    _ => webpki,
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS versions: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Some(MakeRustls(Arc::new(config))))
    }

    /// The roots `sslrootcert` names, or the system's.
    fn root_store(&self) -> Result<RootCertStore, String> {
        let mut store = RootCertStore::empty();
        match &self.roots {
            Some(path) => {
                let at = path.display();
                for c in CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("sslrootcert={at} cannot be read: {e}"))?
                {
                    let c = c.map_err(|e| format!("sslrootcert={at}: {e}"))?;
                    store.add(c).map_err(|e| format!("sslrootcert={at}: {e}"))?;
                }
                if store.is_empty() {
                    return Err(format!(
                        "sslrootcert={at} holds no PEM certificate (-----BEGIN CERTIFICATE-----)"
                    ));
                }
            }
            None => {
                let native = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(native.certs);
                if store.is_empty() {
                    return Err(
                        "this system has no root certificates: give sslrootcert=<PEM file>".into(),
                    );
                }
            }
        }
        Ok(store)
    }
}

/// Accepts any certificate (`require` and below: encryption, no check),
/// while the handshake's signatures are still verified.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is checked, the name is not (webpki checks the
/// name after the chain, so a name error means the chain held).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// tokio-postgres' TLS connector over rustls.
#[derive(Clone)]
pub(crate) struct MakeRustls(Arc<ClientConfig>);

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTls<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connect> {
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connect(self.0.clone(), name))
    }
}

/// One TLS handshake with one server.
pub(crate) struct Connect(Arc<ClientConfig>, ServerName<'static>);

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTls<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<PgTls<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let Connect(config, name) = self;
        Box::pin(async move {
            tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await
                .map(PgTls)
        })
    }
}

/// A TLS session with PostgreSQL. It offers no channel binding, so SCRAM
/// runs without (`channel_binding=require` is refused).
pub(crate) struct PgTls<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTls<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTls<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTls<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}

#[cfg(test)]
#[path = "pg_tls_tests.rs"]
mod tests;
