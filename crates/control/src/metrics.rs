//! Prometheus metrics in the text exposition format, kept in atomics and one
//! small map so recording stays off the database and out of the way.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// Request counters by (method, route, status) and latency sums by route.
#[derive(Debug, Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, (f64, u64)>>,
}

impl Metrics {
    /// Records one finished request.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Ok(mut m) = self.requests.lock() {
            *m.entry((method.to_owned(), route.to_owned(), status))
                .or_default() += 1;
        }
        if let Ok(mut m) = self.latency.lock() {
            let e = m.entry(route.to_owned()).or_default();
            e.0 += seconds;
            e.1 += 1;
        }
    }

    /// Renders every metric, plus the given gauges, as Prometheus text.
    pub fn render(&self, gauges: &[(&str, &str, f64)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP httvps_http_requests_total HTTP requests served.\n");
        out.push_str("# TYPE httvps_http_requests_total counter\n");
        if let Ok(m) = self.requests.lock() {
            for ((method, route, status), n) in m.iter() {
                let _ = writeln!(
                    out,
                    "httvps_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str(
            "# HELP httvps_http_request_duration_seconds Time spent serving HTTP requests.\n",
        );
        out.push_str("# TYPE httvps_http_request_duration_seconds summary\n");
        if let Ok(m) = self.latency.lock() {
            for (route, (sum, count)) in m.iter() {
                let _ = writeln!(
                    out,
                    "httvps_http_request_duration_seconds_sum{{route=\"{route}\"}} {sum}"
                );
                let _ = writeln!(
                    out,
                    "httvps_http_request_duration_seconds_count{{route=\"{route}\"}} {count}"
                );
            }
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        out
    }
}

/// Middleware recording every request under its route template (never the
/// raw path, which may hold tokens).
pub async fn track(
    State(metrics): State<std::sync::Arc<Metrics>>,
    req: Request,
    next: Next,
) -> Response {
    let start = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let res = next.run(req).await;
    metrics.record(
        &method,
        &route,
        res.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    res
}
