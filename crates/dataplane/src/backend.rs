//! The data plane's client of the control plane's `/api/v1` routes.

use std::sync::Arc;
use std::time::Duration;

use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use httvps_wire::device::{AssignResponse, DeviceRequest, DeviceTokenResponse};
use httvps_wire::enroll::EnrollResponse;
use httvps_wire::grant::{GrantRequest, GrantResponse};
use httvps_wire::heartbeat::{GatewayBeat, HeartbeatResponse, OutlineBeat, OutlineConfig};
use httvps_wire::usage::{UsageReport, UsageReportResponse};
use httvps_wire::witness::{SessionLinks, SessionLinksResponse, WitnessReport, WitnessResponse};
use httvps_wire::{ErrorBody, Reason, Secret, Unavailable};

use crate::link::Link;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The device may not connect (a stable reason).
    #[error("device refused: {}", .0.as_str())]
    Refused(Reason),
    /// The control plane answered with an error.
    #[error("control plane answered {status}: {code}{}", if message.is_empty() { String::new() } else { format!(" ({message})") })]
    Status {
        /// HTTP status.
        status: u16,
        /// Error code from the envelope.
        code: String,
        /// Its message (empty when the answer had none).
        message: String,
    },
    /// The control plane could not be reached, or was reached but not
    /// trusted (see [`BackendError::is_untrusted`]), which its text says.
    #[error("{}", unreachable_text(.0))]
    Unreachable(String),
    /// The control plane cannot answer now (503), and says why: its
    /// database is down (an outage), or no node of the region can take
    /// the device now (a decision).
    #[error("{}", match .0 {
        Unavailable::NoNodeAvailable => "no node of the region can take the device now (no_node_available)",
        Unavailable::DatabaseUnavailable => "control plane unavailable: database_unavailable",
    })]
    Unavailable(Unavailable),
}

/// How a failure to reach the control plane reads: a certificate that
/// did not verify or match the pin is a setting to change, not an outage
/// to wait out, and says so.
fn unreachable_text(why: &str) -> String {
    if untrusted(why) {
        format!(
            "control plane not trusted (its certificate was refused; check the \
             control plane's URL, --backend-ca and --backend-pin): {why}"
        )
    } else {
        format!("control plane unreachable: {why}")
    }
}

/// Whether a failure's text is a certificate refused (see
/// [`BackendError::is_untrusted`]).
fn untrusted(why: &str) -> bool {
    why.contains("certificate") || why.contains("matches the pin")
}

impl BackendError {
    /// Whether the control plane was reached but not trusted: its
    /// certificate did not verify, or none of its chain matched the pin.
    /// Asking again does not help; the settings must change.
    pub fn is_untrusted(&self) -> bool {
        matches!(self, BackendError::Unreachable(why) if untrusted(why))
    }

    /// Whether asking again later may succeed with the same settings: an
    /// outage (not an untrusted control plane) or no node available now.
    /// A refusal, a 4xx or an untrusted certificate needs a change first.
    pub fn is_passing(&self) -> bool {
        (self.is_outage() && !self.is_untrusted())
            || matches!(
                self,
                BackendError::Unavailable(Unavailable::NoNodeAvailable)
            )
    }

    /// Whether the control plane or its database is down (as opposed to
    /// the control plane deciding: a refusal, or no node available). A 503
    /// without our reason comes from something in front of the control
    /// plane, so it is an outage too.
    pub fn is_outage(&self) -> bool {
        match self {
            BackendError::Unreachable(_) => true,
            BackendError::Unavailable(u) => *u == Unavailable::DatabaseUnavailable,
            BackendError::Status { status, .. } => *status >= 500,
            BackendError::Refused(_) => false,
        }
    }
}

/// Credential checks (`assign-outline` as a gateway) one client has in
/// flight at once by default: as many as a gateway's checks of credentials
/// it does not know may be (their own bound).
pub const MAX_CHECKS_IN_FLIGHT: usize = 512;

/// Other calls (grants, usage reports, links) one client has in flight at
/// once by default, apart from the checks, so a burst of checks never
/// holds them up. Heartbeats (one at a time) wait for no turn.
pub const MAX_OTHERS_IN_FLIGHT: usize = 256;

/// Longest wait of a call for its turn, and for its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// A client of one control plane with one bearer credential (a machine or
/// device token, which its `Debug` does not show). Its clones share its
/// connections and its bounds on calls in flight: a call waits for its
/// turn (at most the call timeout) rather than open one more connection,
/// so a gateway whose sessions all ask at once (after an outage, say)
/// holds at most [`MAX_CHECKS_IN_FLIGHT`] + [`MAX_OTHERS_IN_FLIGHT`]
/// connections to the control plane for them, plus its heartbeat's and
/// its access-event stream's, within the control plane's share for one
/// source. Checks and the other calls take turns apart.
#[derive(Debug, Clone)]
pub struct Backend {
    http: reqwest::Client,
    base: String,
    token: Secret,
    checks: Arc<Semaphore>,
    others: Arc<Semaphore>,
}

impl Backend {
    /// A client for `base` (e.g. `https://cp.example.com`, or
    /// `http://127.0.0.1:8080`) sending `token`, trusting the system's roots.
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Self::connect(base, token, &Link::default())
    }

    /// A client for `base` sending `token` over `link`; refuses a URL the
    /// link's rules do not allow (plain HTTP to a host that is not loopback
    /// unless the link is private).
    pub fn connect(base: &str, token: &str, link: &Link) -> anyhow::Result<Self> {
        link.check_url(base)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(link.client_config()?)
            .timeout(CALL_TIMEOUT)
            .connect_timeout(Duration::from_secs(2))
            .pool_max_idle_per_host(32)
            .build()?;
        Ok(Backend {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: Secret::from(token),
            checks: Arc::new(Semaphore::new(MAX_CHECKS_IN_FLIGHT)),
            others: Arc::new(Semaphore::new(MAX_OTHERS_IN_FLIGHT)),
        })
    }

    /// The same client with at most `n` checks and `n` other calls in
    /// flight (at least one each) instead of the defaults, for it and the
    /// clones made after.
    #[must_use]
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.checks = Arc::new(Semaphore::new(n.max(1)));
        self.others = Arc::new(Semaphore::new(n.max(1)));
        self
    }

    /// The control plane's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends `req` with our token, among the other calls.
    async fn call<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T, BackendError> {
        self.call_as(req, self.token.expose()).await
    }

    /// Sends `req` with `bearer`, among the other calls.
    async fn call_as<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        bearer: &str,
    ) -> Result<T, BackendError> {
        self.send(Some(&self.others), req, bearer).await
    }

    /// Sends `req` with `bearer` once `turns` gives it a turn (none: at
    /// once), mapping the error envelope.
    async fn send<T: DeserializeOwned>(
        &self,
        turns: Option<&Semaphore>,
        req: reqwest::RequestBuilder,
        bearer: &str,
    ) -> Result<T, BackendError> {
        // The turn is held until the answer is read: its connection is
        // busy until then.
        let _turn = match turns {
            Some(turns) => Some(
                tokio::time::timeout(CALL_TIMEOUT, turns.acquire())
                    .await
                    .map_err(|_| BackendError::Unreachable("too many calls in flight".into()))?
                    .map_err(|_| BackendError::Unreachable("client closed".into()))?,
            ),
            None => None,
        };
        let res = req
            .bearer_auth(bearer)
            .send()
            .await
            .map_err(|e| BackendError::Unreachable(error_chain(&e)))?;
        let status = res.status();
        if status.is_success() {
            return res
                .json::<T>()
                .await
                .map_err(|e| BackendError::Unreachable(e.to_string()));
        }
        let body: Option<ErrorBody> = res.json().await.ok();
        if status == StatusCode::FORBIDDEN
            && let Some(reason) = body
                .as_ref()
                .and_then(|b| b.error.reason.as_deref())
                .and_then(Reason::parse)
        {
            return Err(BackendError::Refused(reason));
        }
        if status == StatusCode::SERVICE_UNAVAILABLE
            && let Some(why) = body
                .as_ref()
                .and_then(|b| b.error.reason.as_deref())
                .and_then(Unavailable::parse)
        {
            return Err(BackendError::Unavailable(why));
        }
        let (code, message) = body.map_or_else(
            || ("UNKNOWN".to_owned(), String::new()),
            |b| (b.error.code, b.error.message),
        );
        Err(BackendError::Status {
            status: status.as_u16(),
            code,
            message,
        })
    }

    /// `POST /nodes/assign-outline` for a device (as a gateway).
    /// The credential is a device access token, or a device JWT (it has dots).
    pub async fn assign(&self, credential: &str) -> Result<AssignResponse, BackendError> {
        let jwt = credential.contains('.');
        let body = DeviceRequest {
            device_token: (!jwt).then(|| credential.to_owned()),
            device_jwt: jwt.then(|| credential.to_owned()),
            region: None,
        };
        let req = self
            .http
            .post(format!("{}/api/v1/nodes/assign-outline", self.base))
            .json(&body);
        self.send(Some(&self.checks), req, self.token.expose())
            .await
    }

    /// `POST /nodes/assign-outline` as a device (our token is a device JWT).
    pub async fn assign_as_device(
        &self,
        device_jwt: &str,
        region: Option<&str>,
    ) -> Result<AssignResponse, BackendError> {
        let body = DeviceRequest {
            device_token: None,
            device_jwt: None,
            region: region.map(str::to_owned),
        };
        let req = self
            .http
            .post(format!("{}/api/v1/nodes/assign-outline", self.base))
            .json(&body);
        self.call_as(req, device_jwt).await
    }

    /// `POST /auth/device-token`: our token is the device access token.
    pub async fn device_jwt(&self) -> Result<DeviceTokenResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/auth/device-token", self.base)),
        )
        .await
    }

    /// `POST /usage/report`.
    pub async fn report(&self, report: &UsageReport) -> Result<UsageReportResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/usage/report", self.base))
                .json(report),
        )
        .await
    }

    /// `POST /quota/grant`.
    pub async fn grant(&self, req: &GrantRequest) -> Result<GrantResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/quota/grant", self.base))
                .json(req),
        )
        .await
    }

    /// `POST /gateway/heartbeat`.
    pub async fn gateway_heartbeat(
        &self,
        beat: &GatewayBeat,
    ) -> Result<HeartbeatResponse, BackendError> {
        // One at a time (the follower's loop), and never behind other
        // calls: a late beat would mark the machine down.
        let req = self
            .http
            .post(format!("{}/api/v1/gateway/heartbeat", self.base))
            .json(beat);
        self.send(None, req, self.token.expose()).await
    }

    /// `POST /usage/links` (a gateway): which node connection carries which
    /// session.
    pub async fn session_links(
        &self,
        links: &SessionLinks,
    ) -> Result<SessionLinksResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/usage/links", self.base))
                .json(links),
        )
        .await
    }

    /// `POST /outline/witness` (a node): its connections' cumulative totals.
    pub async fn witness_report(
        &self,
        report: &WitnessReport,
    ) -> Result<WitnessResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/outline/witness", self.base))
                .json(report),
        )
        .await
    }

    /// `POST /outline/heartbeat`.
    pub async fn outline_heartbeat(
        &self,
        beat: &OutlineBeat,
    ) -> Result<HeartbeatResponse, BackendError> {
        // One at a time (the follower's loop), and never behind other
        // calls: a late beat would mark the machine down.
        let req = self
            .http
            .post(format!("{}/api/v1/outline/heartbeat", self.base))
            .json(beat);
        self.send(None, req, self.token.expose()).await
    }

    /// `GET /gateway/access-events`: the open stream (newline-delimited
    /// JSON), read with [`reqwest::Response::chunk`].
    pub async fn access_events(&self) -> Result<reqwest::Response, BackendError> {
        let res = self
            .http
            .get(format!("{}/api/v1/gateway/access-events", self.base))
            .bearer_auth(self.token.expose())
            // The stream lives long; its keepalives say it is alive.
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .map_err(|e| BackendError::Unreachable(error_chain(&e)))?;
        if res.status().is_success() {
            Ok(res)
        } else {
            Err(BackendError::Status {
                status: res.status().as_u16(),
                code: "ACCESS_EVENTS".into(),
                message: String::new(),
            })
        }
    }

    /// `POST /enroll`: our token is the one-time enrollment token.
    pub async fn enroll(&self) -> Result<EnrollResponse, BackendError> {
        self.call(self.http.post(format!("{}/api/v1/enroll", self.base)))
            .await
    }

    /// `POST /enroll?kind=`: as [`Backend::enroll`], for a machine of
    /// `kind` (`gateway` or `node`): a string issued for the other kind is
    /// refused (403) and stays unspent.
    pub async fn enroll_as(&self, kind: &str) -> Result<EnrollResponse, BackendError> {
        self.call(
            self.http
                .post(format!("{}/api/v1/enroll?kind={kind}", self.base)),
        )
        .await
    }

    /// `GET /outline/config`.
    pub async fn outline_config(&self) -> Result<OutlineConfig, BackendError> {
        self.call(
            self.http
                .get(format!("{}/api/v1/outline/config", self.base)),
        )
        .await
    }
}

/// An error with its causes (a refused certificate is a cause of a
/// connection error), for logs and start-up messages.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        out.push_str(": ");
        out.push_str(&c.to_string());
        cause = c.source();
    }
    out.push_str(scheme_hint(&out));
    out
}

/// What a failure that comes of a URL with the wrong scheme means: the
/// libraries' words name neither the URL nor the scheme, and the call is
/// retried for ever as if the control plane were down.
fn scheme_hint(chain: &str) -> &'static str {
    if chain.contains("invalid HTTP version parsed") {
        " (the control plane did not answer in HTTP: does it speak https:// where its URL says http://?)"
    } else if chain.contains("InvalidContentType") {
        " (the control plane answered without TLS: its URL says https://, does it speak plain http://?)"
    } else {
        ""
    }
}

#[cfg(test)]
#[path = "backend_tests.rs"]
mod tests;
