//! What tunnels need (the gateway and the Shadowsocks key), fetched from
//! the control plane as a device, and the follower of `nodeEvents` that
//! fetches them again when a node of the region goes away.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::{SinkExt, StreamExt};
use shadowsocks_service::shadowsocks::config::ServerConfig;
use shadowsocks_service::shadowsocks::relay::Address;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::{ClientOptions, Shared};
use crate::backend::Backend;
use crate::node::parse_method;

/// Where tunnels go and the Shadowsocks key.
#[derive(Clone)]
pub(super) struct Params {
    pub(super) gateway_host: String,
    pub(super) gateway_port: u16,
    pub(super) config: ServerConfig,
    pub(super) region: String,
}

impl Params {
    /// The gateway as logs name it: `host:port` (an IPv6 host in
    /// brackets).
    pub(super) fn gateway(&self) -> String {
        if self.gateway_host.contains(':') {
            format!("[{}]:{}", self.gateway_host, self.gateway_port)
        } else {
            format!("{}:{}", self.gateway_host, self.gateway_port)
        }
    }
}

/// Parses a `host:port` destination (IPv6 hosts in brackets).
pub fn parse_destination(s: &str) -> anyhow::Result<Address> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(Address::SocketAddress(addr));
    }
    let (host, port) = s.rsplit_once(':').context("a destination is host:port")?;
    let port: u16 = port.parse().context("destination port")?;
    anyhow::ensure!(
        !host.is_empty() && host.len() <= 255 && !host.contains(['/', ' ', '[', ']']),
        "destination host"
    );
    Ok(Address::DomainNameAddress(host.to_owned(), port))
}

/// Splits a gateway URL (`https://host[:port][/...]`) into host (IPv6
/// without brackets) and port.
pub fn split_url(url: &str) -> anyhow::Result<(String, u16)> {
    let parsed = url::Url::parse(url).context("the gateway URL")?;
    anyhow::ensure!(
        parsed.scheme() == "https",
        "the gateway URL must start with https://"
    );
    let host = match parsed.host().context("the gateway URL has no host")? {
        url::Host::Domain(d) => d.to_owned(),
        url::Host::Ipv4(a) => a.to_string(),
        url::Host::Ipv6(a) => a.to_string(),
    };
    Ok((host, parsed.port_or_known_default().unwrap_or(443)))
}

/// [`split_url`] for the URL a gateway hands out as its own (its public
/// URL): `https://HOST[:PORT]` and nothing else. Credentials would be
/// served to every client in its access keys, and a path, query or
/// fragment dropped from them without a word.
pub fn split_public_url(url: &str) -> anyhow::Result<(String, u16)> {
    let parsed = url::Url::parse(url).context("the gateway URL")?;
    anyhow::ensure!(
        parsed.username().is_empty()
            && parsed.password().is_none()
            && parsed.path() == "/"
            && parsed.query().is_none()
            && parsed.fragment().is_none(),
        "the gateway URL must be https://HOST[:PORT] and nothing else (no credentials, path, \
         query or fragment)"
    );
    split_url(url)
}

/// Asks the control plane, as the device, for a node and its key, through
/// `backend` (one per client: its connections, and the TLS sessions that
/// let a new one resume, are kept between calls).
pub(super) async fn fetch(opts: &ClientOptions, backend: &Backend) -> anyhow::Result<Params> {
    let jwt = backend
        .device_jwt()
        .await
        .context("exchanging the device token (CLIENT_DEVICE_TOKEN)")?;
    let a = backend
        .assign_as_device(jwt.token.expose(), opts.region.as_deref())
        .await
        .with_context(|| match opts.region.as_deref() {
            Some(r) => format!("asking for a node of region {r} (CLIENT_REGION)"),
            None => "asking for a node".to_owned(),
        })?;
    let url = opts
        .gateway
        .clone()
        .or(a.gateway_url)
        .context("no gateway URL known: pass --gateway")?;
    let (gateway_host, gateway_port) = split_public_url(&url)?;
    let method = parse_method(&a.method).context("unsupported cipher")?;
    let config = ServerConfig::new(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        a.password.expose(),
        method,
    )
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(Params {
        gateway_host,
        gateway_port,
        config,
        region: a.region,
    })
}

/// The longest pause between the first asks for parameters.
const FIRST_WAIT_MAX: Duration = Duration::from_secs(30);

/// The parameters a client starts with: asked for until they come while
/// the control plane is down or no node of the region can take the device
/// (a client started by a service manager with the rest of the system, or
/// while the region's nodes restart), again after 1, 2, 4 … 30 s; a
/// refusal, a wrong token or a control plane that is not trusted ends the
/// start at once. Meanwhile a connection to `listener` is reset at once:
/// an application learns there is no tunnel yet, where its request sat
/// unanswered in the listen queue until the client was ready. `None` when
/// `shutdown` came first.
pub(super) async fn first(
    opts: &ClientOptions,
    backend: &Backend,
    listener: &tokio::net::TcpListener,
    shutdown: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> anyhow::Result<Option<Params>> {
    let mut wait = Duration::from_secs(1);
    loop {
        let e = match fetch(opts, backend).await {
            Ok(p) => return Ok(Some(p)),
            Err(e) => e,
        };
        let passing = e.chain().any(|c| {
            c.downcast_ref::<crate::backend::BackendError>()
                .is_some_and(crate::backend::BackendError::is_passing)
        });
        if !passing {
            return Err(e);
        }
        tracing::warn!(error = %format!("{e:#}"), retry_in_secs = wait.as_secs(), "asking for a node: trying again");
        let again = tokio::time::sleep(wait);
        tokio::pin!(again);
        loop {
            tokio::select! {
                () = &mut again => break,
                () = &mut *shutdown => return Ok(None),
                accepted = listener.accept() => {
                    if let Ok((early, _)) = accepted {
                        let _ = early.set_zero_linger();
                    }
                }
            }
        }
        wait = (wait * 2).min(FIRST_WAIT_MAX);
    }
}

/// Whether a `nodeEvents` kind means the node no longer takes tunnels (a
/// pool-of-one node's key goes with it), or is reached elsewhere now
/// (`UPDATED`: a gateway's URL, a node's address): parameters are fetched
/// again.
fn node_gone(kind: &str) -> bool {
    matches!(
        kind,
        "DOWN" | "DRAINING" | "DISABLED" | "DELETED" | "UPDATED"
    )
}

/// The connection under the events WebSocket: TLS through `tls` (trusted
/// as the link says, one connector per client so a reconnect resumes) for
/// `wss://`, plain TCP for `ws://`.
async fn events_stream(
    ws_url: &str,
    tls: &tokio_rustls::TlsConnector,
) -> anyhow::Result<Box<dyn super::Io>> {
    let url = url::Url::parse(ws_url).context("the control plane's URL")?;
    let host = url
        .host_str()
        .context("the control plane's URL has no host")?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = url.port_or_known_default().unwrap_or(443);
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    if url.scheme() != "wss" {
        return Ok(Box::new(tcp));
    }
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host)?;
    Ok(Box::new(tls.connect(name, tcp).await?))
}

/// Follows `nodeEvents` of the client's region; when a node goes down,
/// drains, disappears or is reached elsewhere, fetches parameters again.
/// Reconnects after failures, until the task is dropped, and fetches them
/// again on each reconnection: events sent while it was away are gone (a
/// control plane restarted with its gateway on another port says so only
/// then).
pub(super) async fn follow_events(s: Arc<Shared>) {
    let ws_url = s.opts.backend.replacen("http", "ws", 1) + "/graphql/ws";
    let mut again = false;
    let mut refused: Option<String> = None;
    let mut wait = RECONNECT_WAIT;
    loop {
        let region = s.params().region;
        let attempt = async {
            let mut req = ws_url.as_str().into_client_request()?;
            req.headers_mut()
                .insert("sec-websocket-protocol", "graphql-transport-ws".parse()?);
            let stream = events_stream(&ws_url, &s.link_tls).await?;
            let (mut ws, _) = tokio_tungstenite::client_async(req, stream).await?;
            let init = serde_json::json!({"type": "connection_init", "payload": {"deviceToken": s.opts.device_token.expose()}});
            ws.send(Message::Text(init.to_string().into())).await?;
            let sub = serde_json::json!({"id": "1", "type": "subscribe", "payload": {
                "query": "subscription($r:String){nodeEvents(region:$r){nodeId kind}}", "variables": {"r": region}}});
            ws.send(Message::Text(sub.to_string().into())).await?;
            if std::mem::replace(&mut again, true) {
                refresh(&s, &mut refused).await;
            }
            while let Some(msg) = ws.next().await {
                let Message::Text(t) = msg? else { continue };
                let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
                let kind = v["payload"]["data"]["nodeEvents"]["kind"]
                    .as_str()
                    .unwrap_or_default();
                if node_gone(kind) {
                    refresh(&s, &mut refused).await;
                }
            }
            anyhow::Ok(())
        };
        if let Err(e) = attempt.await {
            tracing::debug!(error = %e, "node events");
        }
        // Refused (revoked, over its allowance, disabled): asked again
        // less and less often, up to once a minute, until it is let in.
        wait = if refused.is_some() {
            (wait * 2).min(REFUSED_WAIT_MAX)
        } else {
            RECONNECT_WAIT
        };
        tokio::time::sleep(wait).await;
    }
}

/// Pause before the events socket is opened again.
const RECONNECT_WAIT: Duration = Duration::from_secs(2);

/// The longest pause while the device is refused.
const REFUSED_WAIT_MAX: Duration = Duration::from_secs(60);

/// Fetches the parameters again. A failure is logged with its cause (the
/// control plane's reason: `device refused: quota_exceeded`), as a
/// warning when it differs from the last one, and remembered in `refused`
/// when the device itself was refused (a refusal, or 401/403).
async fn refresh(s: &Shared, refused: &mut Option<String>) {
    match fetch(&s.opts, &s.backend).await {
        Ok(p) => {
            if refused.take().is_some() {
                tracing::info!("the control plane lets the device in again");
            }
            s.set_params(p);
        }
        Err(e) => {
            let why = format!("{e:#}");
            let is_refusal = e.chain().any(|c| {
                matches!(
                    c.downcast_ref::<crate::backend::BackendError>(),
                    Some(
                        crate::backend::BackendError::Refused(_)
                            | crate::backend::BackendError::Status {
                                status: 401 | 403,
                                ..
                            }
                    )
                )
            });
            if refused.as_deref() == Some(why.as_str()) {
                tracing::debug!(error = %why, "refreshing parameters");
            } else {
                tracing::warn!(error = %why, "refreshing parameters");
            }
            *refused = is_refusal.then_some(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_urls_split_into_host_and_port() {
        let split = |u: &str| split_url(u).ok();
        assert_eq!(
            split("https://gw.example"),
            Some(("gw.example".into(), 443))
        );
        assert_eq!(
            split("https://gw.example/"),
            Some(("gw.example".into(), 443))
        );
        assert_eq!(
            split("https://gw.example:8443/a/b?c#d"),
            Some(("gw.example".into(), 8443))
        );
        assert_eq!(split("https://127.0.0.1:9"), Some(("127.0.0.1".into(), 9)));
        assert_eq!(split("https://[::1]:8443"), Some(("::1".into(), 8443)));
        assert_eq!(
            split("https://[2001:db8::1]"),
            Some(("2001:db8::1".into(), 443))
        );
        assert_eq!(
            split("https://gw.example:443"),
            Some(("gw.example".into(), 443))
        );
    }

    #[test]
    fn gateway_urls_that_are_not_https_with_a_host_are_refused() {
        for bad in [
            "",
            "gw.example",
            "gw.example:443",
            "http://gw.example",
            "wss://gw.example",
            "https://",
            "https://gw.example:99999",
            "https://gw.example:port",
            "https://[::1",
        ] {
            assert!(split_url(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn destinations_parse_names_and_addresses() {
        assert_eq!(
            parse_destination("example.com:443").ok(),
            Some(Address::DomainNameAddress("example.com".into(), 443))
        );
        assert_eq!(
            parse_destination("[::1]:80").ok(),
            Some(Address::SocketAddress("[::1]:80".parse().expect("addr")))
        );
        for bad in [
            "example.com",
            ":80",
            "a b:1",
            "[x]:1",
            "host:70000",
            "host:",
        ] {
            assert!(parse_destination(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn only_nodes_that_stop_taking_tunnels_refresh_parameters() {
        for kind in ["DOWN", "DRAINING", "DISABLED", "DELETED", "UPDATED"] {
            assert!(node_gone(kind), "{kind}");
        }
        for kind in ["UP", "LOAD", "CREATED", ""] {
            assert!(!node_gone(kind), "{kind}");
        }
    }
}
