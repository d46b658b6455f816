//! The admin listener: `/health` and `/metrics` (Prometheus text: open
//! tunnels, payload bytes each way since start, refusals), for operators
//! on a private address.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use super::Gateway;

/// The gateway's own counters (the rest is read from its state at scrape).
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    refused: Counter,
    /// Connections closed at once because the connection budget was spent.
    pub shed: Counter,
    /// Connections taken within the budget (before TLS).
    pub accepted: Counter,
    /// Requests answered 429 because their source guessed too many tokens.
    throttled: Counter,
    /// Requests refused before a control-plane call: too many calls about
    /// credentials never accepted were in flight (in all or from their
    /// source), or too many requests waited on theirs.
    checks_shed: Counter,
}

impl Metrics {
    /// Counts a request of a source shut out for guessing.
    pub fn throttled(&self) {
        self.throttled.inc();
    }

    /// Counts a request refused before its check (see `checks_shed`).
    pub fn check_shed(&self) {
        self.checks_shed.inc();
    }

    /// Counts a refused request or tunnel.
    pub fn refused(&self) {
        self.refused.inc();
    }
}

/// Reads the live figures at each scrape.
struct Live(Arc<Gateway>);

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Live")
    }
}

/// A value under its bare name, typed `untyped`: the byte totals were
/// published as `httvps_gateway_bytes_{up,down}` before the `_total`
/// counters existed, and dashboards may still read them.
#[derive(Debug)]
struct Untyped(u64);

impl EncodeMetric for Untyped {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_gauge(&self.0)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Unknown
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let open = ConstGauge::new(i64::try_from(self.0.open_tunnels()).unwrap_or(i64::MAX));
        open.encode(encoder.encode_descriptor(
            "httvps_gateway_open_tunnels",
            "Open tunnels.",
            None,
            open.metric_type(),
        )?)?;
        let age = ConstGauge::new(
            self.0
                .beats
                .since_taken()
                .map_or(-1, |s| i64::try_from(s.as_secs()).unwrap_or(i64::MAX)),
        );
        age.encode(encoder.encode_descriptor(
            "httvps_gateway_heartbeat_age_seconds",
            "Seconds since the control plane last took a heartbeat (-1: none since the start).",
            None,
            age.metric_type(),
        )?)?;
        let (up, down) = self.0.sessions.totals();
        for (name, help, value) in [
            (
                "httvps_gateway_bytes_up",
                "Payload bytes from clients to nodes.",
                up,
            ),
            (
                "httvps_gateway_bytes_down",
                "Payload bytes from nodes to clients.",
                down,
            ),
        ] {
            let total = ConstCounter::new(value);
            total.encode(encoder.encode_descriptor(name, help, None, total.metric_type())?)?;
            let legacy = Untyped(value);
            legacy.encode(encoder.encode_descriptor(
                name,
                "Same as the _total counter (the name earlier gateways published).",
                None,
                legacy.metric_type(),
            )?)?;
        }
        Ok(())
    }
}

/// The admin routes.
pub(crate) fn router(gw: Arc<Gateway>) -> Router {
    let mut registry = Registry::default();
    registry.register(
        "httvps_gateway_refused",
        "Requests and tunnels refused.",
        gw.metrics.refused.clone(),
    );
    registry.register(
        "httvps_gateway_shed_connections",
        "Connections closed before TLS because the connection budget was spent.",
        gw.metrics.shed.clone(),
    );
    registry.register(
        "httvps_gateway_accepted_connections",
        "Client connections taken within the budget (an HTTP/2 connection counts once, whatever its streams).",
        gw.metrics.accepted.clone(),
    );
    registry.register(
        "httvps_gateway_throttled",
        "Requests answered 429 because their source presented too many unknown tokens.",
        gw.metrics.throttled.clone(),
    );
    registry.register(
        "httvps_gateway_checks_shed",
        "Requests refused at once (503) because too many control-plane calls about credentials never accepted were in flight (in all or from their source), or too many requests waited on theirs.",
        gw.metrics.checks_shed.clone(),
    );
    let live = gw.clone();
    registry.register_collector(Box::new(Live(gw)));
    Router::new()
        .route("/health", get(move || health(live.clone())))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(registry))
}

/// `ok` (200) while the control plane takes this gateway's heartbeats;
/// `degraded` (503) once it has taken none for the outage window (60 s by
/// default), when new tunnels are refused (those open run on), or none
/// since the start. It said `ok` through a whole outage, so neither a
/// load balancer nor a monitor could tell.
async fn health(gw: Arc<Gateway>) -> Response {
    let since = gw.beats.since_taken();
    let reachable = since.is_some_and(|s| s <= gw.opts.outage_ttl);
    let body = serde_json::json!({
        "status": if reachable { "ok" } else { "degraded" },
        "control_plane": if reachable { "reachable" } else { "unreachable" },
        "last_heartbeat_secs": since.map(|s| s.as_secs()),
    });
    let status = if reachable {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn metrics(State(registry): State<Arc<Registry>>) -> Response {
    let mut body = String::new();
    if prometheus_client::encoding::prometheus_text::encode(&mut body, &registry).is_err() {
        return axum::http::StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
        )],
        body,
    )
        .into_response()
}
