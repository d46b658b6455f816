//! The gateway's certificate from files (`--cert`, `--key`), made first
//! with `--self-signed` when they are missing.

use std::path::PathBuf;

use anyhow::Context as _;
use httvps_dataplane::certs::CertFiles;
use httvps_dataplane::tls;

use crate::cli::required;

/// The certificate from files (--cert, --key), generated first with
/// --self-signed when they are missing (for `localhost`, 127.0.0.1 and
/// `public_host`, the host of --public-url clients check it against).
/// With `check` nothing is written: a certificate --self-signed would make
/// is made in a scratch directory, loaded from there and removed.
pub(crate) fn file_certs(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    self_signed: bool,
    public_host: &str,
    check: bool,
) -> anyhow::Result<(CertFiles, tls::TlsAcceptor)> {
    // With --self-signed the two are where the certificate it makes goes.
    let made = if self_signed {
        "where --self-signed writes "
    } else {
        ""
    };
    let cert_is = format!("{made}the certificate chain (PEM), or GATEWAY_ACME_DOMAIN");
    let cert = required(cert, "GATEWAY_TLS_CERT", "cert", &cert_is)?;
    let key = required(
        key,
        "GATEWAY_TLS_KEY",
        "key",
        &format!("{made}the private key (PEM)"),
    )?;
    if self_signed {
        let mut names = vec!["localhost", "127.0.0.1"];
        if !names.contains(&public_host) {
            names.push(public_host);
        }
        if check && !(cert.exists() && key.exists()) {
            // A new directory of a random name, the owner's only: nothing
            // planted there beforehand is read or written through.
            let scratch =
                std::env::temp_dir().join(format!("httvps-check-{}", uuid::Uuid::new_v4()));
            {
                use std::os::unix::fs::DirBuilderExt;
                std::fs::DirBuilder::new()
                    .mode(0o700)
                    .create(&scratch)
                    .with_context(|| format!("creating {}", scratch.display()))?;
            }
            let (c, k) = (scratch.join("cert.pem"), scratch.join("key.pem"));
            let made = tls::ensure_self_signed(&c, &k, &names)
                .context("GATEWAY_SELF_SIGNED")
                .and_then(|()| CertFiles::acceptor(&c, &k).context("GATEWAY_SELF_SIGNED"));
            let _ = std::fs::remove_dir_all(&scratch);
            return made;
        }
        tls::ensure_self_signed(&cert, &key, &names).context("GATEWAY_SELF_SIGNED")?;
    }
    CertFiles::acceptor(&cert, &key).context(
        "GATEWAY_TLS_CERT / GATEWAY_TLS_KEY (set GATEWAY_SELF_SIGNED=true to generate them, \
         or GATEWAY_ACME_DOMAIN to obtain one by ACME)",
    )
}

/// Whether one of the ACME `domains` is `host` (a certificate for them
/// names it; wildcards are refused by the ACME settings' check).
pub(crate) fn acme_covers(domains: &[String], host: &str) -> bool {
    let name = |d: &str| d.trim().trim_end_matches('.').to_ascii_lowercase();
    domains.iter().any(|d| name(d) == name(host))
}
