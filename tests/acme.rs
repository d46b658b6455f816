//! The gateway's certificate by ACME, against Pebble (a real ACME server,
//! real TLS-ALPN-01 validation on the gateway's own port): obtained on
//! first start, served to clients that trust only Pebble's root, cached
//! (a restart orders nothing), renewed at two thirds of its lifetime and
//! swapped in while a tunnel opened before keeps running.

mod common;
#[path = "common/pebble.rs"]
mod pebble;
#[path = "common/plane.rs"]
mod plane;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use plane::{GatewayWs, Plane};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};

/// The gateway's name; Pebble's DNS resolves every name to 127.0.0.1.
const DOMAIN: &str = "gw1.example.com";
/// Lifetime of Pebble's certificates here: renewal comes after 30 s.
const VALIDITY_SECS: u64 = 45;

/// `httvps-relay gateway` with ACME; killed by PID on drop.
struct Gateway {
    child: tokio::process::Child,
    log: PathBuf,
}

impl Gateway {
    fn spawn(plane: &Plane, pebble: &pebble::Pebble, dir: &Path, run: usize) -> Gateway {
        let port = plane.gateway_addr.port();
        let log = dir.join(format!("gateway-{run}.log"));
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_httvps-relay"))
            .args(["gateway", "--backend", &plane.server.base])
            .args(["--token", &plane.gateway_token])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--public-url", &format!("https://{DOMAIN}:{port}")])
            .arg("--data-dir")
            .arg(dir)
            .args(["--acme-domain", DOMAIN])
            .args(["--acme-directory", &pebble.directory])
            .args(["--acme-contact", "mailto:ops@example.com"])
            .arg("--acme-directory-ca")
            .arg(&pebble.ca)
            .env("RUST_LOG", "info")
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(
                std::fs::File::create(&log)
                    .map(std::process::Stdio::from)
                    .expect("log"),
            )
            .spawn()
            .expect("httvps-relay gateway");
        Gateway { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn stop(mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// A TLS client trusting only `root`, offering `alpn`.
fn connector(root: &Path, alpn: &[&[u8]]) -> tokio_rustls::TlsConnector {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    let pem = std::fs::read(root).expect("root");
    for c in rustls_pki(&pem) {
        roots.add(c).expect("root certificate");
    }
    let mut cfg = tokio_rustls::rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
}

fn rustls_pki(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM")
}

/// A verified TLS connection to the gateway as `DOMAIN`.
async fn tls_to(
    port: u16,
    root: &Path,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
    let name = ServerName::try_from(DOMAIN).expect("name");
    connector(root, &[b"http/1.1"]).connect(name, tcp).await
}

/// The leaf certificate the gateway serves (verified against `root`).
async fn served(port: u16, root: &Path) -> Option<Vec<u8>> {
    let tls = tls_to(port, root).await.ok()?;
    tls.get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.to_vec())
}

/// Waits (bounded by `within`) until the gateway serves a verified
/// certificate other than `not`.
async fn wait_served(
    gw: &Gateway,
    port: u16,
    root: &Path,
    not: Option<&[u8]>,
    within: Duration,
) -> Vec<u8> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(leaf) = served(port, root).await
            && Some(leaf.as_slice()) != not
        {
            return leaf;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "no (new) certificate served within {within:?}:\n{}",
        gw.log()
    );
}

/// A tunnel through the gateway, over TLS verified against Pebble's root.
async fn tunnel(plane: &Plane, root: &Path) -> GatewayWs {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tls = tls_to(plane.gateway_addr.port(), root).await.expect("tls");
    let req = format!("wss://{DOMAIN}/ws/{}/tcp", plane.device_token)
        .into_client_request()
        .expect("request");
    tokio_tungstenite::client_async(req, tls)
        .await
        .expect("tunnel")
        .0
}

fn cached_leaf(cache: &Path) -> Vec<u8> {
    let pem = std::fs::read(cache.join("cert.pem")).expect("cached certificate");
    rustls_pki(&pem).first().expect("leaf").to_vec()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_gateway_obtains_caches_and_renews_its_certificate_by_acme() {
    let (plane, listener) = Plane::prepare(1).await;
    let port = plane.gateway_addr.port();
    drop(listener);
    let pebble = pebble::Pebble::start(pebble::PebbleOptions {
        listen: std::net::Ipv4Addr::LOCALHOST,
        answer: std::net::Ipv4Addr::LOCALHOST,
        tls_port: port,
        validity_secs: VALIDITY_SECS,
        exec_prefix: Vec::new(),
    })
    .await;
    let dir = common::tempdir::TempDir::new();
    let root = dir.path().join("pebble-root.pem");
    std::fs::write(&root, pebble.root().await).expect("root");
    let cache = dir.path().join("acme");

    // First start: an account, an order validated on the gateway's port,
    // the certificate served; clients trusting Pebble's root verify it.
    let gw = Gateway::spawn(&plane, &pebble, dir.path(), 1);
    let first = wait_served(&gw, port, &root, None, Duration::from_secs(60)).await;
    assert_eq!(
        first,
        cached_leaf(&cache),
        "the served certificate is the cached one"
    );
    let held = httvps_dataplane::acme::plan::held_of_der(&first).expect("certificate");
    assert_eq!(held.names, vec![DOMAIN.to_owned()]);
    assert!(held.not_after - held.not_before <= i64::try_from(VALIDITY_SECS).expect("secs"));
    assert!(cache.join("account.json").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for f in ["account.json", "key.pem", "cert.pem"] {
            let mode = std::fs::metadata(cache.join(f))
                .expect(f)
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "{f} is readable by others: {mode:o}");
        }
    }
    // A validator's handshake (ALPN acme-tls/1) with no challenge pending
    // gets no certificate at all, never the real one.
    let tcp = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = ServerName::try_from(DOMAIN).expect("name");
    assert!(
        connector(&root, &[b"acme-tls/1"])
            .connect(name, tcp)
            .await
            .is_err(),
        "an acme-tls/1 handshake without a challenge was answered"
    );

    // A restart serves the cached certificate at once and orders nothing.
    gw.stop().await;
    let gw = Gateway::spawn(&plane, &pebble, dir.path(), 2);
    let again = wait_served(&gw, port, &root, None, Duration::from_secs(30)).await;
    assert_eq!(
        again, first,
        "the restart did not serve the cached certificate"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(cached_leaf(&cache), first, "the restart ordered again");
    assert!(!gw.log().contains("ordering a certificate"), "{}", gw.log());

    // A tunnel over the ACME certificate.
    let echo = plane::echo_server().await;
    let cipher = plane.cipher().await;
    let mut open = plane::ss_over(tunnel(&plane, &root).await, &cipher, echo);
    assert!(plane::round_trip(&mut open, b"before the renewal").await);

    // Renewal at two thirds of the lifetime: a new certificate, served
    // to new handshakes, while the open tunnel keeps running.
    let renewed = wait_served(
        &gw,
        port,
        &root,
        Some(&first),
        Duration::from_secs(VALIDITY_SECS * 2),
    )
    .await;
    let held2 = httvps_dataplane::acme::plan::held_of_der(&renewed).expect("certificate");
    assert!(
        held2.not_before >= held.not_before,
        "{held:?} then {held2:?}"
    );
    assert!(
        held2.not_before < held.not_after,
        "renewed only after expiry: {held:?} then {held2:?}"
    );
    assert_eq!(cached_leaf(&cache), renewed);
    assert!(
        plane::round_trip(&mut open, b"after the renewal").await,
        "{}",
        gw.log()
    );
    let mut fresh = plane::ss_over(tunnel(&plane, &root).await, &cipher, echo);
    assert!(plane::round_trip(&mut fresh, b"a new tunnel").await);

    gw.stop().await;
    pebble.stop().await;
}
