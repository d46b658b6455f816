//! The gateway's certificate files are reloaded when they change (as an
//! ACME client or certbot renews them): new handshakes get the new
//! certificate and a tunnel opened before the change keeps running. TLS
//! sessions resume through the gateway, across a renewal, and start over
//! (one full handshake) after a restart.

mod common;
#[path = "common/plane.rs"]
mod plane;

use std::time::Duration;

use httvps_dataplane::backend::Backend;
use httvps_dataplane::certs::CertFiles;
use httvps_dataplane::{gateway, tls};
use plane::Plane;
use tokio_rustls::rustls::HandshakeKind;

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

/// Starts a gateway of `plane` with `acceptor` on `listener`.
fn spawn_gateway(
    plane: &Plane,
    acceptor: tls::TlsAcceptor,
    listener: tokio::net::TcpListener,
) -> tokio::task::JoinHandle<()> {
    let opts = gateway::GatewayOptions {
        public_url: format!("https://localhost:{}", plane.gateway_addr.port()),
        ..Default::default()
    };
    let backend = Backend::new(&plane.server.base, &plane.gateway_token).expect("backend");
    tokio::spawn(async move {
        let _ = gateway::run(
            opts,
            backend,
            acceptor,
            listener,
            None,
            std::future::pending::<()>(),
        )
        .await;
    })
}

/// Opens a tunnel through the gateway with `connector` (as our client
/// does), checks it carries bytes, and says how the TLS handshake went.
async fn tunnel_with(
    plane: &Plane,
    connector: &tokio_rustls::TlsConnector,
    echo: std::net::SocketAddr,
) -> HandshakeKind {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let tcp = tokio::net::TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let tls = connector.connect(name, tcp).await.expect("TLS");
    let req = format!("wss://localhost/ws/{}/tcp", plane.device_token)
        .into_client_request()
        .expect("request");
    let (ws, _) = tokio_tungstenite::client_async(req, tls)
        .await
        .expect("WebSocket");
    let kind = ws
        .get_ref()
        .get_ref()
        .1
        .handshake_kind()
        .expect("handshake done");
    let mut s = plane::ss_over(ws, &plane.cipher().await, echo);
    assert!(plane::round_trip(&mut s, b"through a resumed session?").await);
    kind
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_sessions_resume_across_a_renewal_and_start_over_after_a_restart() {
    let (mut plane, listener) = Plane::prepare(1).await;
    // A second handle on the same socket, for the restarted gateway.
    let std_listener = listener.into_std().expect("std listener");
    let again = std_listener.try_clone().expect("clone");
    let listener = tokio::net::TcpListener::from_std(std_listener).expect("listener");
    let again = tokio::net::TcpListener::from_std(again).expect("listener");
    let (files, acceptor) = CertFiles::acceptor(&plane.cert, &plane.key).expect("certificate");
    plane.gateway = Some(spawn_gateway(&plane, acceptor, listener));
    tokio::time::sleep(Duration::from_millis(700)).await;
    let echo = plane::echo_server().await;

    // The client trusts the certificate now served and the one that will
    // replace it (a private CA would do the same).
    let dir = common::tempdir::TempDir::new();
    let (c, k) = (dir.path().join("new.crt"), dir.path().join("new.key"));
    tls::ensure_self_signed(&c, &k, &["localhost", "127.0.0.1"]).expect("new pair");
    let trust = dir.path().join("trust.pem");
    let mut both = std::fs::read(&plane.cert).expect("cert");
    both.extend(std::fs::read(&c).expect("new cert"));
    std::fs::write(&trust, both).expect("trust");
    let client = tls::connector(Some(&trust)).expect("connector");

    assert_eq!(
        tunnel_with(&plane, &client, echo).await,
        HandshakeKind::Full
    );
    for _ in 0..3 {
        assert_eq!(
            tunnel_with(&plane, &client, echo).await,
            HandshakeKind::Resumed
        );
    }

    // A renewal (SIGHUP or changed files): the new certificate is served
    // to new clients, and tickets issued before it still resume.
    std::fs::rename(&k, &plane.key).expect("key");
    std::fs::rename(&c, &plane.cert).expect("cert");
    files.reload().expect("reload");
    let tcp = tokio::net::TcpStream::connect(plane.gateway_addr)
        .await
        .expect("connect");
    assert!(
        plane.tls_over(tcp).await.is_ok(),
        "a new client should get the renewed certificate"
    );
    for _ in 0..2 {
        assert_eq!(
            tunnel_with(&plane, &client, echo).await,
            HandshakeKind::Resumed,
            "the ticket keys should survive the renewal"
        );
    }

    // A restart: new ticket keys. The client's tickets are refused, it
    // falls back to a full handshake and works, then resumes again.
    if let Some(old) = plane.gateway.take() {
        old.abort();
        let _ = old.await;
    }
    let (_files, acceptor) = CertFiles::acceptor(&plane.cert, &plane.key).expect("certificate");
    plane.gateway = Some(spawn_gateway(&plane, acceptor, again));
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        tunnel_with(&plane, &client, echo).await,
        HandshakeKind::Full
    );
    assert_eq!(
        tunnel_with(&plane, &client, echo).await,
        HandshakeKind::Resumed
    );
}
