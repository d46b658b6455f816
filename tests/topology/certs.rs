//! The certificates of the topology: a private CA that signs the control
//! plane's certificate (gateways and nodes pin it), and the gateway's
//! certificate, obtained by ACME from Pebble on a host of the lab, with
//! what a client trusts it by (Pebble's root).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use httvps_dataplane::link::Pin;
use httvps_netlab::Lab;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

use crate::pebble::{Pebble, PebbleOptions};

/// A private CA: its PEM file, its pin, and what signs leaves.
pub struct Ca {
    /// The CA certificate (PEM).
    pub pem: PathBuf,
    /// `sha256:` of the CA certificate: what enrollment strings carry.
    pub pin: Pin,
    issuer: Issuer<'static, KeyPair>,
}

/// Makes a CA called `name`, its certificate written to `dir/ca.pem`.
pub fn ca(name: &str, dir: &Path) -> Ca {
    let key = KeyPair::generate().expect("key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let cert = params.self_signed(&key).expect("CA");
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, cert.pem()).expect("writing the CA");
    Ca {
        pem,
        pin: Pin::of(cert.der()),
        issuer: Issuer::new(params, key),
    }
}

/// A certificate chain (leaf, then the CA) and its key, as files.
pub struct Leaf {
    /// The chain (PEM).
    pub cert: PathBuf,
    /// The private key (PEM).
    pub key: PathBuf,
}

/// Issues a leaf for `addrs` signed by `ca`, written as `dir/<stem>.crt`
/// (the leaf, then the CA: the chain's end is what `httvps gateway add`
/// pins by default) and `dir/<stem>.key`.
pub fn leaf(ca: &Ca, addrs: &[Ipv4Addr], dir: &Path, stem: &str) -> Leaf {
    let key = KeyPair::generate().expect("key");
    let names = addrs.iter().map(ToString::to_string).collect::<Vec<_>>();
    let params = CertificateParams::new(names).expect("params");
    let cert = params.signed_by(&key, &ca.issuer).expect("leaf");
    let ca_pem = std::fs::read_to_string(&ca.pem).expect("CA file");
    let out = Leaf {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&out.cert, format!("{}{ca_pem}", cert.pem())).expect("chain");
    std::fs::write(&out.key, key.serialize_pem()).expect("key");
    out
}

/// The gateway's name. Pebble's DNS resolves it (every name) to the
/// gateway's public address, and so does the client host's `/etc/hosts`.
pub const GATEWAY_DOMAIN: &str = "gw1.example.com";
/// Lifetime of Pebble's certificates here: far beyond the test's, so the
/// gateway renews nothing while it runs.
const VALIDITY_SECS: u64 = 86_400;

/// Pebble (with its DNS) running on a host of the lab, and its root.
pub struct AcmeServer {
    /// Pebble; killed (by PID) on drop, before its runtime goes.
    pub pebble: Pebble,
    /// The root Pebble's certificates chain to (PEM).
    pub root: String,
    rt: tokio::runtime::Runtime,
}

impl AcmeServer {
    /// Starts Pebble on `host` (through `ip netns exec`), listening on
    /// the host's address `listen`, resolving every name to `answer` and
    /// validating TLS-ALPN-01 on port 443 there; waits for its directory
    /// and fetches its root (both from inside `host`).
    pub fn start(lab: &Lab, host: &str, listen: Ipv4Addr, answer: Ipv4Addr) -> AcmeServer {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let ns = lab.netns(host).expect("host");
        let options = PebbleOptions {
            listen,
            answer,
            tls_port: 443,
            validity_secs: VALIDITY_SECS,
            exec_prefix: vec!["ip".into(), "netns".into(), "exec".into(), ns],
        };
        let (pebble, root) = lab
            .run_in(host, || {
                rt.block_on(async {
                    let pebble = Pebble::start(options).await;
                    let root = pebble.root().await;
                    (pebble, root)
                })
            })
            .expect("host");
        AcmeServer { pebble, root, rt }
    }

    /// Kills Pebble and its DNS (by PID) and reaps them.
    pub fn stop(self) {
        let AcmeServer { pebble, rt, .. } = self;
        rt.block_on(pebble.stop());
    }
}

/// How the gateway gets its certificate, and how clients trust it.
pub struct GatewayTls {
    /// The `httvps-relay gateway` flags that give it its certificate.
    pub args: Vec<String>,
    /// The certificate a client adds to its trusted roots for the gateway
    /// (`--ca-cert` of our client, `cert=` of v2ray-plugin).
    pub trust: PathBuf,
}

/// The gateway's certificate, as the README's "Production" steps get it:
/// the gateway obtains it itself from the ACME server (Pebble) for
/// [`GATEWAY_DOMAIN`], validated by TLS-ALPN-01 on its own port 443, and
/// caches it under `dir`; clients trust the ACME server's root.
pub fn gateway_tls(acme: &AcmeServer, dir: &Path) -> GatewayTls {
    let trust = dir.join("pebble-root.pem");
    std::fs::write(&trust, &acme.root).expect("writing Pebble's root");
    let path = |p: &Path| p.display().to_string();
    GatewayTls {
        args: vec![
            "--acme-domain".into(),
            GATEWAY_DOMAIN.into(),
            "--acme-directory".into(),
            acme.pebble.directory.clone(),
            "--acme-directory-ca".into(),
            path(&acme.pebble.ca),
            "--acme-contact".into(),
            "mailto:ops@example.com".into(),
            "--acme-cache".into(),
            path(&dir.join("gw-acme")),
        ],
        trust,
    }
}

/// Waits (up to `within`) until the gateway at `addr` completes a TLS
/// handshake as [`GATEWAY_DOMAIN`] verified against `trust` alone: it has
/// its certificate. Run it on a host that reaches `addr`.
pub async fn wait_certificate(
    addr: SocketAddr,
    trust: &Path,
    within: Duration,
) -> Result<(), String> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(trust).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let config = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = ServerName::try_from(GATEWAY_DOMAIN).map_err(|e| e.to_string())?;
    let deadline = Instant::now() + within;
    let mut last = String::new();
    while Instant::now() < deadline {
        let attempt = async {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            connector.connect(name.clone(), tcp).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(_)) => return Ok(()),
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".into(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!(
        "the gateway had no certificate for {GATEWAY_DOMAIN} within {within:?}: {last}"
    ))
}
