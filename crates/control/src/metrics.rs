//! Prometheus metrics (prometheus-client, OpenMetrics text): request
//! counts and a latency histogram with fixed label sets (methods outside
//! the usual ones fold into `OTHER`, requests that match no route into
//! `unmatched`), and what the database pool and the usage applier hold,
//! read at each scrape. Recording stays off the database.

use std::fmt::{self, Write as _};
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::db::{Db, DbPool};
use crate::usage_accounting::Applier;

/// The route label of requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// The content type of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// An HTTP method as a label: the usual ones, and `OTHER` for the rest, so
/// a client cannot grow the label set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    /// GET.
    Get,
    /// POST.
    Post,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// DELETE.
    Delete,
    /// HEAD.
    Head,
    /// OPTIONS.
    Options,
    /// Anything else.
    Other,
}

impl Method {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Head => "HEAD",
            Method::Options => "OPTIONS",
            Method::Other => "OTHER",
        }
    }
}

impl From<&axum::http::Method> for Method {
    fn from(m: &axum::http::Method) -> Self {
        use axum::http::Method as M;
        match *m {
            M::GET => Method::Get,
            M::POST => Method::Post,
            M::PUT => Method::Put,
            M::PATCH => Method::Patch,
            M::DELETE => Method::Delete,
            M::HEAD => Method::Head,
            M::OPTIONS => Method::Options,
            _ => Method::Other,
        }
    }
}

impl EncodeLabelValue for Method {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of the request counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    method: Method,
    route: String,
    status: u16,
}

/// Labels of the latency histogram.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RouteLabels {
    route: String,
}

type Latency = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 16 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// The registry and the metrics recorded per request.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Latency,
    /// Connections closed at once because the connection budget was full.
    pub shed: Counter,
}

impl Metrics {
    /// Metrics with `live` read at each scrape besides the request metrics.
    pub fn new(live: impl Collector) -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "httvps_http_requests",
            "HTTP requests served",
            requests.clone(),
        );
        let latency = Latency::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "httvps_http_request_duration",
            "Time spent serving HTTP requests",
            Unit::Seconds,
            latency.clone(),
        );
        let shed = Counter::default();
        registry.register(
            "httvps_http_shed_connections",
            "Connections closed at once because the connection budget was full",
            shed.clone(),
        );
        registry.register_collector(Box::new(live));
        Metrics {
            registry,
            requests,
            latency,
            shed,
        }
    }

    /// Records one finished request under its route template.
    pub fn record(&self, method: Method, route: &str, status: u16, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels {
                method,
                route: route.to_owned(),
                status,
            })
            .inc();
        self.latency
            .get_or_create(&RouteLabels {
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Every metric in the OpenMetrics text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "encoding metrics");
            let _ = writeln!(out, "# EOF");
        }
        out
    }
}

/// What the database pool and the usage applier hold, read at each scrape.
pub struct Live {
    /// The database.
    pub db: Db,
    /// The usage applier.
    pub usage: Arc<Applier>,
}

impl fmt::Debug for Live {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Live")
    }
}

impl Collector for Live {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let (size, available) = match &self.db.pool {
            DbPool::Pg(p) => (p.status().size, p.status().available),
            DbPool::Sqlite(p) => (p.status().size, p.status().available),
        };
        let as_i64 = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        // Gauges, as these names always were (the two totals only grow).
        let gauges = [
            (
                "httvps_db_pool_connections",
                "Open database connections",
                as_i64(size as u64),
            ),
            (
                "httvps_db_pool_idle",
                "Idle database connections",
                as_i64(available as u64),
            ),
            (
                "httvps_db_queries",
                "Queries started since start-up",
                as_i64(self.db.query_count()),
            ),
            (
                "httvps_usage_reports_waiting",
                "Usage reports stored by this replica and not applied yet",
                as_i64(self.usage.waiting() as u64),
            ),
            (
                "httvps_usage_totals_applied",
                "Session totals this replica's applier applied since start-up",
                as_i64(self.usage.applied_totals()),
            ),
        ];
        for (name, help, value) in gauges {
            let gauge = ConstGauge::new(value);
            let metric = encoder.encode_descriptor(name, help, None, gauge.metric_type())?;
            gauge.encode(metric)?;
        }
        Ok(())
    }
}

/// Middleware recording every request under its route template (never the
/// raw path, which may hold tokens).
pub async fn track(State(metrics): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = Method::from(req.method());
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let res = next.run(req).await;
    metrics.record(
        method,
        &route,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Nothing;

    impl Collector for Nothing {
        fn encode(&self, _: DescriptorEncoder) -> Result<(), fmt::Error> {
            Ok(())
        }
    }

    #[test]
    fn requests_and_latency_render_with_fixed_labels() {
        let m = Metrics::new(Nothing);
        m.record(Method::Get, "/api/v1/health", 200, 0.002);
        m.record(Method::Get, "/api/v1/health", 200, 0.003);
        m.record(
            Method::from(&axum::http::Method::from_bytes(b"BREW").expect("method")),
            UNMATCHED,
            404,
            0.0001,
        );
        let text = m.render();
        assert!(
            text.contains(
                "httvps_http_requests_total{method=\"GET\",route=\"/api/v1/health\",status=\"200\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "httvps_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("# TYPE httvps_http_request_duration_seconds histogram"));
        assert!(
            text.contains("httvps_http_request_duration_seconds_count{route=\"/api/v1/health\"} 2")
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }
}
