//! The data plane's test bed on 127.0.0.1: the control plane (PostgreSQL,
//! in process), pool nodes of region `eu` (real Shadowsocks servers), a
//! gateway (real TLS and WebSocket) and a device with a subscription.
//! Included by path by the data-plane test files only.
#![allow(dead_code, reason = "each test file uses a different part")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use httvps_control::accounts::{self, Role};
use httvps_dataplane::backend::Backend;
use httvps_dataplane::{client, gateway, node, tls};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

use super::common::{self, TestDb, TestServer, gql};

/// Every test user's password.
pub const PASSWORD: &str = "correct horse battery staple";

/// The test bed.
pub struct Plane {
    pub server: TestServer,
    pub admin: String,
    pub gateway_addr: SocketAddr,
    pub cert: std::path::PathBuf,
    pub device_token: String,
    pub device_id: String,
    pub nodes: Vec<(String, Arc<node::RunningNode>, tokio::task::JoinHandle<()>)>,
    pub gateway: Option<tokio::task::JoinHandle<()>>,
    pub gateway_stop: Option<tokio::sync::oneshot::Sender<()>>,
    pub gateway_token: String,
    pub admin_addr: Option<SocketAddr>,
    pub key: std::path::PathBuf,
    _dir: common::tempdir::TempDir,
    /// The control plane's database.
    pub _db: TestDb,
}

/// An access JWT of `email`.
pub async fn login(base: &str, email: &str) -> String {
    let r = gql(
        base,
        None,
        "mutation($e:String!,$p:String!){login(email:$e,password:$p){accessToken}}",
        json!({"e": email, "p": PASSWORD}),
    )
    .await;
    r["data"]["login"]["accessToken"]
        .as_str()
        .unwrap_or_else(|| panic!("{r}"))
        .to_owned()
}

impl Plane {
    /// Control plane, `nodes` pool nodes in region `eu`, a gateway, and a
    /// device with a subscription.
    pub async fn start(nodes: usize) -> Plane {
        Self::start_with(nodes, |_| {}).await
    }

    /// [`Plane::start`] with gateway settings changed by `customize`.
    pub async fn start_with(
        nodes: usize,
        customize: impl Fn(&mut gateway::GatewayOptions),
    ) -> Plane {
        let (mut plane, listener) = Self::prepare(nodes).await;
        plane.spawn_gateway(listener, &customize);
        // Wait for the nodes' first heartbeats.
        tokio::time::sleep(Duration::from_millis(700)).await;
        plane
    }

    /// Ends the gateway as SIGKILL would (no flush, no drain) and starts it
    /// again on the same port, with `customize`.
    pub async fn kill_and_restart_gateway(
        &mut self,
        customize: &dyn Fn(&mut gateway::GatewayOptions),
    ) {
        self.gateway.take().expect("task").abort();
        self.gateway_stop = None;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let listener = TcpListener::bind(self.gateway_addr)
            .await
            .expect("same port");
        self.spawn_gateway(listener, customize);
    }

    /// Starts (or restarts) the gateway on `listener` with test timings.
    pub fn spawn_gateway(
        &mut self,
        listener: TcpListener,
        customize: &dyn Fn(&mut gateway::GatewayOptions),
    ) {
        let base = self.server.base.clone();
        self.spawn_gateway_via(listener, &base, customize);
    }

    /// [`Plane::spawn_gateway`], the gateway calling the control plane at
    /// `backend` (a proxy of the test's, say).
    pub fn spawn_gateway_via(
        &mut self,
        listener: TcpListener,
        backend: &str,
        customize: &dyn Fn(&mut gateway::GatewayOptions),
    ) {
        let backend = Backend::new(backend, &self.gateway_token).expect("backend");
        self.spawn_gateway_with(listener, backend, customize);
    }

    /// [`Plane::spawn_gateway`] with the gateway's control-plane client
    /// given (another link, say).
    pub fn spawn_gateway_with(
        &mut self,
        listener: TcpListener,
        backend: Backend,
        customize: &dyn Fn(&mut gateway::GatewayOptions),
    ) {
        let mut opts = gateway::GatewayOptions {
            public_url: format!("https://localhost:{}", self.gateway_addr.port()),
            report_every: Duration::from_millis(500),
            heartbeat_every: Duration::from_secs(1),
            cache_ttl: Duration::from_millis(500),
            max_frame: 64 * 1024,
            ..Default::default()
        };
        customize(&mut opts);
        let acceptor = tls::acceptor(&self.cert, &self.key).expect("acceptor");
        self.spawn_gateway_on(listener, backend, acceptor, opts);
    }

    /// Starts the gateway with `acceptor` (other TLS settings) and `opts`.
    pub fn spawn_gateway_on(
        &mut self,
        listener: TcpListener,
        backend: Backend,
        acceptor: tls::TlsAcceptor,
        opts: gateway::GatewayOptions,
    ) {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        self.gateway_stop = Some(stop);
        let admin = std::net::TcpListener::bind("127.0.0.1:0").expect("admin bind");
        admin.set_nonblocking(true).expect("nonblocking");
        self.admin_addr = admin.local_addr().ok();
        let admin = TcpListener::from_std(admin).expect("admin listener");
        self.gateway = Some(tokio::spawn(async move {
            let _ = gateway::run(opts, backend, acceptor, listener, Some(admin), async {
                let _ = stopped.await;
            })
            .await;
        }));
    }

    /// Another gateway of region `eu` named `name` on a free port of
    /// 127.0.0.1, with the test timings changed by `customize` and the
    /// certificate of the first; it runs until the test ends. Returns its
    /// address.
    pub async fn start_another_gateway(
        &self,
        name: &str,
        customize: &dyn Fn(&mut gateway::GatewayOptions),
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let public_url = format!("https://localhost:{}", addr.port());
        let r = self
            .gql(
                "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token}}",
                json!({"n": name, "u": public_url}),
            )
            .await;
        let token = r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let backend = Backend::new(&self.server.base, &token).expect("backend");
        let mut opts = gateway::GatewayOptions {
            public_url,
            report_every: Duration::from_millis(500),
            heartbeat_every: Duration::from_secs(1),
            cache_ttl: Duration::from_millis(500),
            max_frame: 64 * 1024,
            ..Default::default()
        };
        customize(&mut opts);
        let acceptor = tls::acceptor(&self.cert, &self.key).expect("acceptor");
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
        });
        addr
    }

    /// Everything but the gateway, whose listener (already registered as
    /// the gateway's public URL) is returned for [`Plane::spawn_gateway`].
    pub async fn prepare(nodes: usize) -> (Plane, TcpListener) {
        Self::prepare_fronted(nodes, true).await
    }

    /// [`Plane::start`] with no `BACKEND_GATEWAY_URL` on the control
    /// plane: devices are sent to the registered gateway's own URL.
    pub async fn start_unfronted(nodes: usize) -> Plane {
        let (mut plane, listener) = Self::prepare_fronted(nodes, false).await;
        plane.spawn_gateway(listener, &|_| {});
        tokio::time::sleep(Duration::from_millis(700)).await;
        plane
    }

    /// [`Plane::prepare`], the control plane given the test front
    /// (`https://gw.test.example`) as `BACKEND_GATEWAY_URL` when `fronted`.
    async fn prepare_fronted(nodes: usize, fronted: bool) -> (Plane, TcpListener) {
        tls::install_provider();
        let db = TestDb::pg().await;
        let mut settings = common::settings(db.dsn.clone(), false);
        if !fronted {
            settings.gateway_url = None;
        }
        let server = TestServer::start_with(settings, SocketAddr::from(([127, 0, 0, 1], 0))).await;
        let base = server.base.clone();
        let root =
            accounts::create_user(&server.state.db, "root@example.com", PASSWORD, Role::Admin)
                .await
                .expect("admin");
        let admin = login(&base, "root@example.com").await;
        let r = gql(&base, Some(&admin), "mutation{createRegion(code:\"eu\",name:\"EU\"){id} createPlan(input:{name:\"p\",priceCents:\"0\",durationDays:30,trafficLimitBytes:\"100000000\",deviceLimit:3}){id}}", json!({})).await;
        let plan = r["data"]["createPlan"]["id"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let me = root.id;
        gql(
            &base,
            Some(&admin),
            "mutation($u:UUID!,$p:UUID!){grantSubscription(userId:$u,planId:$p){id}}",
            json!({"u": me, "p": plan}),
        )
        .await;
        let r = gql(
            &base,
            Some(&admin),
            "mutation{registerDevice(name:\"laptop\",platform:\"linux\"){accessToken device{id}}}",
            json!({}),
        )
        .await;
        let device_token = r["data"]["registerDevice"]["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let device_id = r["data"]["registerDevice"]["device"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let dir = common::tempdir::TempDir::new();
        let cert = dir.path().join("gw.crt");
        let key = dir.path().join("gw.key");
        tls::ensure_self_signed(&cert, &key, &["localhost", "127.0.0.1"]).expect("cert");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let gateway_addr = listener.local_addr().expect("addr");
        let r = gql(&base, Some(&admin), "mutation($u:String!){registerGatewayNode(input:{region:\"eu\",name:\"gw\",publicUrl:$u}){token}}", json!({"u": format!("https://localhost:{}", gateway_addr.port())})).await;
        let gw_token = r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let mut plane = Plane {
            server,
            admin,
            gateway_addr,
            cert,
            device_token,
            device_id,
            nodes: Vec::new(),
            gateway: None,
            gateway_stop: None,
            gateway_token: gw_token,
            admin_addr: None,
            key,
            _dir: dir,
            _db: db,
        };
        for i in 0..nodes {
            let running = plane.start_node().await;
            let port = running.addr.port();
            plane
                .register_node(&format!("node{i}"), port, running)
                .await;
        }
        (plane, listener)
    }

    /// A Shadowsocks node with region `eu`'s pool key on a free port, not
    /// registered yet.
    pub async fn start_node(&self) -> node::RunningNode {
        // The pool key: what a node registered without a key gets.
        let region = self.gql("mutation{registerOutlineNode(input:{region:\"eu\",name:\"probe\",host:\"127.0.0.1\",port:1}){node{id method secret}}}", json!({})).await;
        let probe = &region["data"]["registerOutlineNode"]["node"];
        let (method, secret) = (
            probe["method"].as_str().expect("m").to_owned(),
            probe["secret"].as_str().expect("s").to_owned(),
        );
        self.gql(
            "mutation($id:UUID!){deleteNode(id:$id)}",
            json!({"id": probe["id"]}),
        )
        .await;
        node::start(&node::NodeOptions {
            listen: "127.0.0.1:0".parse().expect("addr"),
            method: node::parse_method(&method).expect("method"),
            password: secret.into(),
            allow_private: true,
            idle_timeout: node::DEFAULT_IDLE_TIMEOUT,
        })
        .await
        .expect("node")
    }

    /// Registers `running` in region `eu` as `name` at 127.0.0.1:`port`
    /// (its own port, or a port in front of it) and heartbeats it.
    pub async fn register_node(&mut self, name: &str, port: u16, running: node::RunningNode) {
        let r = self
            .gql(
                "mutation($n:String!,$p:Int!){registerOutlineNode(input:{region:\"eu\",name:$n,host:\"127.0.0.1\",port:$p}){token node{id}}}",
                json!({"n": name, "p": port}),
            )
            .await;
        let token = r["data"]["registerOutlineNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned();
        let id = r["data"]["registerOutlineNode"]["node"]["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let running = Arc::new(running);
        let beats = node::spawn_heartbeats(
            Backend::new(&self.server.base, &token).expect("backend"),
            running.clone(),
            Duration::from_millis(500),
        );
        self.nodes.push((id, running, beats));
    }

    /// A TLS connection to the gateway, trusting its certificate.
    pub async fn tls(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(self.gateway_addr)
            .await
            .expect("connect");
        self.tls_over(tcp).await.expect("tls")
    }

    /// TLS with the gateway over `tcp`.
    pub async fn tls_over(
        &self,
        tcp: TcpStream,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let connector = tls::connector(Some(&self.cert)).expect("connector");
        let name =
            tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").expect("name");
        connector.connect(name, tcp).await
    }

    /// Our client on a free local port; returns the SOCKS address.
    pub async fn client(&self) -> SocketAddr {
        self.client_with_mux(false).await
    }

    /// [`Plane::client`], multiplexing its tunnels over one HTTP/2
    /// connection when `mux`.
    pub async fn client_with_mux(&self, mux: bool) -> SocketAddr {
        self.client_with_mux_connections(mux, 1).await
    }

    /// [`Plane::client`], multiplexing its tunnels over `connections` warm
    /// HTTP/2 connections when `mux`.
    pub async fn client_with_mux_connections(&self, mux: bool, connections: usize) -> SocketAddr {
        let gateway = format!("https://localhost:{}", self.gateway_addr.port());
        self.client_to(Some(gateway), mux, connections, None).await
    }

    /// Our client forwarding a free local port to `target` through the
    /// plane's gateway, one tunnel per connection (`--forward`).
    pub async fn forwarding_client(&self, target: SocketAddr) -> SocketAddr {
        let gateway = format!("https://localhost:{}", self.gateway_addr.port());
        self.client_to(Some(gateway), false, 1, Some(target)).await
    }

    /// [`Plane::client_with_mux`] without `--gateway`: it goes where the
    /// control plane's answers send it, and follows them.
    pub async fn following_client(&self, mux: bool) -> SocketAddr {
        self.client_to(None, mux, 1, None).await
    }

    /// Our client on a free local port, through `gateway` when given,
    /// forwarding to `forward` when given (else a SOCKS5 proxy).
    async fn client_to(
        &self,
        gateway: Option<String>,
        mux: bool,
        connections: usize,
        forward: Option<SocketAddr>,
    ) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let opts = client::ClientOptions {
            backend: self.server.base.clone(),
            device_token: self.device_token.as_str().into(),
            gateway,
            ca_cert: Some(self.cert.clone()),
            region: None,
            forward: forward.map(|f| f.to_string()),
            link: Default::default(),
            mux,
            mux_connections: connections,
        };
        tokio::spawn(async move {
            // Some tests end the client on purpose (a revoked device);
            // one that ends otherwise fails its test's own checks.
            let _ = client::run(opts, listener, std::future::pending::<()>()).await;
        });
        // Bound already: connections wait in the backlog until it accepts.
        addr
    }

    /// A GraphQL call as the admin.
    pub async fn gql(&self, q: &str, vars: Value) -> Value {
        gql(&self.server.base, Some(&self.admin), q, vars).await
    }

    /// Registers another gateway of region `eu`; returns its token.
    pub async fn register_gateway(&self, name: &str) -> String {
        let r = self
            .gql(
                "mutation($n:String!,$u:String!){registerGatewayNode(input:{region:\"eu\",name:$n,publicUrl:$u}){token}}",
                json!({"n": name, "u": format!("https://{name}.localhost")}),
            )
            .await;
        r["data"]["registerGatewayNode"]["token"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_owned()
    }

    /// Grant requests the control plane has answered so far (its metrics).
    pub async fn grant_requests(&self) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.server.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body");
        text.lines()
            .filter(|l| {
                l.starts_with("httvps_http_requests_total")
                    && l.contains("route=\"/api/v1/quota/grant\"")
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }

    /// One BIGINT (`n`) from the control plane's database.
    pub async fn scalar(&self, q: &str) -> i64 {
        common::scalar(&self.server.state.db, q).await
    }

    /// Runs a statement on the control plane's database.
    pub async fn sql(&self, q: &str) {
        use diesel_async::RunQueryDsl;
        let httvps_control::db::DbPool::Pg(pool) = &self.server.state.db.pool else {
            panic!("pg")
        };
        let mut conn = pool.get().await.expect("conn");
        diesel::sql_query(q).execute(&mut *conn).await.expect("sql");
    }
}

/// A TCP echo server.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.into_split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// A WebSocket through the gateway over TLS.
pub type GatewayWs = tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>;

impl Plane {
    /// A WebSocket upgrade at `path` from the local address `from` (any
    /// when `None`), with `Authorization: Bearer <bearer>` when given; the
    /// status of a refusal otherwise (0 when there was no answer).
    pub async fn ws_from(
        &self,
        from: Option<std::net::IpAddr>,
        path: &str,
        bearer: Option<&str>,
    ) -> Result<GatewayWs, u16> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let tcp = connect_from(from, self.gateway_addr).await;
        let s = self.tls_over(tcp).await.map_err(|_| 0u16)?;
        let mut req = format!("wss://localhost{path}")
            .into_client_request()
            .expect("request");
        if let Some(b) = bearer {
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {b}").parse().expect("header"),
            );
        }
        match tokio_tungstenite::client_async(req, s).await {
            Ok((w, _)) => Ok(w),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
            Err(_) => Err(0),
        }
    }

    /// The pool key's Shadowsocks settings (as a client holds them).
    pub async fn cipher(&self) -> shadowsocks_service::shadowsocks::config::ServerConfig {
        let r = self
            .gql("{outlineNodes{edges{node{method secret}}}}", json!({}))
            .await;
        let n = &r["data"]["outlineNodes"]["edges"][0]["node"];
        shadowsocks_service::shadowsocks::config::ServerConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            n["secret"].as_str().unwrap_or_else(|| panic!("{r}")),
            node::parse_method(n["method"].as_str().expect("method")).expect("cipher"),
        )
        .expect("cipher settings")
    }
}

/// A TCP connection to `to` from the local address `from` (any when `None`).
pub async fn connect_from(from: Option<std::net::IpAddr>, to: SocketAddr) -> TcpStream {
    let Some(ip) = from else {
        return TcpStream::connect(to).await.expect("connect");
    };
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(ip, 0))
        .expect("bind the source");
    socket.connect(to).await.expect("connect")
}

/// A Shadowsocks stream (as a stock client makes it) over tunnel `w`.
pub type SsStream = shadowsocks_service::shadowsocks::ProxyClientStream<
    httvps_dataplane::wsio::WsIo<tokio_rustls::client::TlsStream<TcpStream>>,
>;

/// A Shadowsocks stream to `target` over tunnel `w` with the key `cfg`.
pub fn ss_over(
    w: GatewayWs,
    cfg: &shadowsocks_service::shadowsocks::config::ServerConfig,
    target: SocketAddr,
) -> SsStream {
    use shadowsocks_service::shadowsocks::config::ServerType;
    use shadowsocks_service::shadowsocks::context::Context;
    let ctx = Context::new_shared(ServerType::Local);
    SsStream::from_stream(ctx, httvps_dataplane::wsio::WsIo::new(w), cfg, target)
}

/// Whether `payload` comes back through `s` (to an echo server) within 5 s.
pub async fn round_trip(s: &mut SsStream, payload: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        s.write_all(payload).await?;
        s.flush().await?;
        let mut back = vec![0u8; payload.len()];
        s.read_exact(&mut back).await?;
        std::io::Result::Ok(back)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), exchange).await,
        Ok(Ok(back)) if back == payload
    )
}
