use shadowsocks_service::shadowsocks::config::{ServerConfig, ServerType};
use shadowsocks_service::shadowsocks::context::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::node::{NodeOptions, parse_method, start};
use crate::test_sockets::{pair, pattern, read_in_bursts, small_window_listener, trickle};

const PASSWORD: &str = "a-test-password";

#[tokio::test]
async fn a_trickled_upload_to_a_destination_reading_in_bursts_arrives_whole_and_in_order() {
    // Short reads from the application while the tunnel holds our
    // client's writes back: where its copy retries a write with more than
    // it first offered (the Shadowsocks stream alone counted the
    // difference as sent; `sswrites`' tests make that happen every time).
    let method = parse_method("chacha20-ietf-poly1305").expect("method");
    let node = start(&NodeOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        method,
        password: PASSWORD.into(),
        allow_private: true,
        idle_timeout: crate::node::DEFAULT_IDLE_TIMEOUT,
    })
    .await
    .expect("node");
    let sink = small_window_listener();
    let target = sink.local_addr().expect("addr");
    let received = tokio::spawn(async move {
        let (mut s, _) = sink.accept().await.expect("accept");
        let got = read_in_bursts(&mut s).await;
        s.write_all(b"ok").await.expect("reply");
        let _ = s.shutdown().await;
        got
    });
    let cfg = ServerConfig::new(node.addr, PASSWORD, method).expect("cfg");
    let tunnel: Box<dyn Io> = Box::new(TcpStream::connect(node.addr).await.expect("connect"));
    let mut proxied = super::silent::around(tunnel, |heard| {
        ShadowWrites::first_capped(
            ProxyClientStream::from_stream(
                Context::new_shared(ServerType::Local),
                heard,
                &cfg,
                Address::SocketAddress(target),
            ),
            FIRST_WRITE_MAX,
        )
    });
    let (mut app, mut local) = pair().await;
    let piped = tokio::spawn(async move { pipe(&mut local, &mut proxied).await });
    let sent = pattern(2 << 20);
    trickle(&mut app, &sent, 12_000).await;
    app.shutdown().await.expect("shutdown");
    let mut back = Vec::new();
    app.read_to_end(&mut back).await.expect("the end");
    assert_eq!(back, b"ok");
    piped.await.expect("pipe").expect("piped");
    let got = received.await.expect("sink");
    assert_eq!(got.len(), sent.len(), "every byte, once");
    assert!(got == sent, "in order");
}
