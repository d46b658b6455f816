//! The gateway's certificate files are reloaded when they change (as an
//! ACME client or certbot renews them): new handshakes get the new
//! certificate and a tunnel opened before the change keeps running.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::time::Duration;

use httvps_dataplane::backend::Backend;
use httvps_dataplane::certs::CertFiles;
use httvps_dataplane::{gateway, tls};
use plane::Plane;

#[tokio::test(flavor = "multi_thread")]
async fn a_renewed_certificate_is_served_without_dropping_tunnels() {
    let (mut plane, listener) = Plane::prepare(1).await;
    let (files, acceptor) = CertFiles::acceptor(&plane.cert, &plane.key).expect("certificate");
    let watch = files.spawn_watch(Duration::from_millis(100));
    let opts = gateway::GatewayOptions {
        public_url: format!("https://localhost:{}", plane.gateway_addr.port()),
        ..Default::default()
    };
    let backend = Backend::new(&plane.server.base, &plane.gateway_token).expect("backend");
    plane.gateway = Some(tokio::spawn(async move {
        let _ = gateway::run(
            opts,
            backend,
            acceptor,
            listener,
            None,
            std::future::pending::<()>(),
        )
        .await;
    }));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let echo = plane::echo_server().await;
    let cipher = plane.cipher().await;
    let token = plane.device_token.clone();
    let ws = plane
        .ws_from(None, &format!("/ws/{token}/tcp"), None)
        .await
        .expect("tunnel");
    let mut open = plane::ss_over(ws, &cipher, echo);
    assert!(plane::round_trip(&mut open, b"before the renewal").await);

    // A renewal: a new pair written aside and moved over the old one.
    let before = std::fs::read(&plane.cert).expect("cert");
    let dir = common::tempdir::TempDir::new();
    let (c, k) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    tls::ensure_self_signed(&c, &k, &["localhost", "127.0.0.1"]).expect("new pair");
    std::fs::rename(&k, &plane.key).expect("key");
    std::fs::rename(&c, &plane.cert).expect("cert");
    assert_ne!(before, std::fs::read(&plane.cert).expect("cert"));
    // New handshakes get the new certificate (trusted alone here).
    let mut renewed = false;
    for _ in 0..50 {
        let tcp = tokio::net::TcpStream::connect(plane.gateway_addr)
            .await
            .expect("connect");
        if plane.tls_over(tcp).await.is_ok() {
            renewed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(renewed, "the new certificate was not served");
    // The tunnel opened before carries on, and new tunnels open.
    assert!(plane::round_trip(&mut open, b"after the renewal").await);
    let ws = plane
        .ws_from(None, &format!("/ws/{token}/tcp"), None)
        .await
        .expect("tunnel after the renewal");
    let mut fresh = plane::ss_over(ws, &cipher, echo);
    assert!(plane::round_trip(&mut fresh, b"new tunnel").await);
    // A damaged pair is not taken: the renewed one stays.
    let renewed_copy = dir.path().join("renewed.crt");
    std::fs::copy(&plane.cert, &renewed_copy).expect("copy");
    std::fs::write(&plane.cert, b"not a certificate").expect("damage");
    tokio::time::sleep(Duration::from_millis(400)).await;
    let tcp = tokio::net::TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let connector = tls::connector(Some(&renewed_copy)).expect("connector");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    assert!(
        connector.connect(name, tcp).await.is_ok(),
        "the renewed certificate should stay in use"
    );
    assert!(plane::round_trip(&mut open, b"still open").await);
    watch.abort();
}
