//! The link from the data plane to the control plane: which URLs are
//! allowed (https://, or http:// to a loopback host or over a link the
//! operator declares private) and how the control plane's certificate is
//! trusted (the system's roots, an extra CA file, and an optional SHA-256
//! pin of a certificate in its chain, as Outline Manager pins its servers).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use sha2::{Digest, Sha256};
use tokio_rustls::rustls::client::WebPkiServerVerifier;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::{
    CryptoProvider, verify_tls12_signature, verify_tls13_signature,
};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::rustls::{
    self, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};

/// A SHA-256 fingerprint of a DER certificate.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Pin(pub [u8; 32]);

impl Pin {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Pin {
        Pin(Sha256::digest(der).into())
    }

    /// Parses `sha256:` followed by 64 hex digits (colons allowed, any case;
    /// the prefix may be left out).
    pub fn parse(raw: &str) -> Result<Pin, String> {
        let pin = httvps_wire::enroll::canonical_pin(raw)?;
        let hex = &pin["sha256:".len()..];
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).unwrap_or("zz"), 16)
                .map_err(|_| "must be sha256: and 64 hex digits".to_owned())?;
        }
        Ok(Pin(out))
    }

    /// The fingerprint of the last certificate of the PEM chain `path`
    /// (the CA when the chain ends with it, the certificate itself when it
    /// is alone).
    pub fn of_chain_end(path: &std::path::Path) -> anyhow::Result<Pin> {
        use tokio_rustls::rustls::pki_types::pem::PemObject;
        let (mut last, mut count) = (None, 0);
        for c in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("reading {}", path.display()))?
        {
            last = Some(c.with_context(|| format!("parsing {}", path.display()))?);
            count += 1;
        }
        let cert = last.with_context(|| format!("{} holds no certificate", path.display()))?;
        if count == 1 {
            tracing::warn!(
                cert = %path.display(),
                "the file holds one certificate, which is pinned: renewing it will cut off every machine that pins it; put the CA that signed it after it"
            );
        }
        Ok(Pin::of(&cert))
    }
}

/// `url` as it may be shown: the part between its scheme and its last
/// `@` (credentials) left out.
fn shown(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}…{}", &url[..s + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

impl std::fmt::Display for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Pin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for Pin {
    type Err = String;
    fn from_str(s: &str) -> Result<Pin, String> {
        Pin::parse(s)
    }
}

/// How the control plane is reached and trusted.
#[derive(Debug, Clone, Default)]
pub struct Link {
    /// An extra trusted CA (PEM), for a control plane with a private CA.
    pub ca_file: Option<PathBuf>,
    /// When set, the control plane's chain must hold a certificate with this
    /// fingerprint, and the chain is verified with that certificate as its
    /// only root (a private CA, or a self-signed certificate).
    pub pin: Option<Pin>,
    /// Allow `http://` to a host that is not loopback: the operator says the
    /// network between the planes is private (a VPN, a host-only network).
    pub private_link: bool,
}

/// Whether `host` (from a URL) is a loopback name or address.
fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(d) => d.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(a) => IpAddr::V4(*a).is_loopback(),
        url::Host::Ipv6(a) => IpAddr::V6(*a).is_loopback(),
    }
}

impl Link {
    /// Checks `base` against the link's rules: https://, or http:// to a
    /// loopback host, or http:// anywhere over a private link; no pin on
    /// plain HTTP.
    pub fn check_url(&self, given: &str) -> anyhow::Result<url::Url> {
        // Said without what stands before an `@`: a password, maybe.
        let base = &shown(given);
        let url =
            url::Url::parse(given).map_err(|e| anyhow::anyhow!("{base:?} is not a URL ({e})"))?;
        let host = url
            .host()
            .with_context(|| format!("{base:?} has no host"))?;
        // Requests are made below the base URL: a query or fragment would
        // be lost or misplaced, and credentials would be sent as Basic
        // authentication in place of the machine's token.
        if !url.username().is_empty() || url.password().is_some() {
            anyhow::bail!(
                "{base:?} holds credentials: the control plane's URL is https://HOST[:PORT]"
            );
        }
        if url.query().is_some() || url.fragment().is_some() {
            anyhow::bail!(
                "{base:?} holds a query or a fragment: the control plane's URL is https://HOST[:PORT]"
            );
        }
        match url.scheme() {
            "https" => Ok(url),
            "http" if self.pin.is_some() || self.ca_file.is_some() => Err(anyhow::anyhow!(
                "{base} is plain HTTP but a certificate pin or CA file is set: use https://"
            )),
            "http" if is_loopback(&host) || self.private_link => Ok(url),
            "http" => Err(anyhow::anyhow!(
                "{base} is plain HTTP to a host that is not loopback: tokens and device \
                 checks would cross the network in clear. Use https://, or declare the \
                 network private with --private-link"
            )),
            other => Err(anyhow::anyhow!(
                "{base}: scheme {other:?} is not http or https"
            )),
        }
    }

    /// The TLS client configuration for the control plane. It keeps the
    /// sessions it is given (rustls' default in-memory store), so a caller
    /// that keeps one config (a [`crate::backend::Backend`]'s reqwest client,
    /// the client's events connector) resumes when it reconnects.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        crate::tls::install_provider();
        let provider = crate::tls::provider();
        let roots = Arc::new(crate::tls::roots(self.ca_file.as_deref())?);
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("TLS versions")?;
        let cfg = match self.pin {
            None => builder.with_root_certificates(roots).with_no_client_auth(),
            Some(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier { pin, provider }))
                .with_no_client_auth(),
        };
        Ok(cfg)
    }
}

/// Trusts a chain only when it holds the pinned certificate and verifies
/// (names, dates, signatures) with that certificate as the only root.
#[derive(Debug)]
struct PinnedVerifier {
    pin: Pin,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let anchor = std::iter::once(end_entity)
            .chain(intermediates)
            .find(|c| Pin::of(c) == self.pin)
            .ok_or_else(|| {
                rustls::Error::General(format!(
                    "no certificate of the control plane's chain matches the pin {}",
                    self.pin
                ))
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(anchor.clone().into_owned())?;
        let verifier =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        verifier.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_parse_and_print_alike() {
        let pin = Pin::of(b"certificate");
        assert_eq!(Pin::parse(&pin.to_string()), Ok(pin));
        let bare = pin.to_string().trim_start_matches("sha256:").to_uppercase();
        assert_eq!(Pin::parse(&bare), Ok(pin));
        assert!(Pin::parse("sha256:abcd").is_err());
        assert!(Pin::parse(&format!("sha256:{}", "zz".repeat(32))).is_err());
    }

    #[test]
    fn plain_http_only_to_loopback_or_over_a_private_link() {
        let open = Link::default();
        for ok in [
            "https://cp.example.com",
            "https://10.0.0.1:8000",
            "http://127.0.0.1:8000",
            "http://127.9.9.9",
            "http://[::1]:8000",
            "http://localhost:8000",
        ] {
            assert!(open.check_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://10.0.0.1:8000",
            "http://cp.example.com",
            "http://[2001:db8::1]",
            "ftp://127.0.0.1",
            "127.0.0.1:8000",
            "",
            "https://cp.example.com?x=1",
            "https://cp.example.com:8443#frag",
            "https://ops:secret@cp.example.com",
            "https://ops@cp.example.com",
            "https://ops:se/cret@cp.example.com",
            "http://ops:secret@10.0.0.1",
        ] {
            assert!(open.check_url(bad).is_err(), "{bad}");
            let said = format!(
                "{:#}",
                open.check_url(bad)
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_default()
            );
            assert!(!said.contains("secret"), "{said}");
        }
        let private = Link {
            private_link: true,
            ..Link::default()
        };
        assert!(private.check_url("http://10.0.0.1:8000").is_ok());
        let pinned = Link {
            pin: Some(Pin::of(b"x")),
            ..Link::default()
        };
        assert!(pinned.check_url("http://127.0.0.1:8000").is_err());
    }
}
