//! The REST compatibility routes under `/api/v1/` that gateways, nodes and
//! clients call. Thin handlers over the use-case modules, by caller:
//! [`devices`] (validate, device token, assign), [`gateways`] (usage,
//! links, access events, heartbeats), [`grants`] (quota grants), [`nodes`] (heartbeats, witness, config), `enroll`
//! (a new machine redeems its one-time token), with
//! [`caller`] resolving who calls. One JSON error envelope; the OpenAPI
//! document is generated from these types.

mod caller;
mod devices;
mod enroll;
mod gateways;
mod grants;
mod nodes;
mod openapi;
use openapi::Contract;

use axum::Router;
use axum::extract::{FromRequest, Request};
use axum::routing::{get, post};
use httvps_wire::HealthBody;
use utoipa::OpenApi;

use crate::error::AppError;
use crate::state::AppState;
use devices::{
    __path_assign_outline, __path_device_token, __path_validate_device, assign_outline,
    device_token, validate_device,
};
use enroll::{__path_enroll, enroll};
use gateways::{
    __path_access_events, __path_gateway_heartbeat, __path_usage_links, __path_usage_report,
    access_events, gateway_heartbeat, usage_links, usage_report,
};
use grants::{__path_quota_grant, quota_grant};
use nodes::{
    __path_outline_config, __path_outline_heartbeat, __path_outline_witness, outline_config,
    outline_heartbeat, outline_witness,
};

/// Lifetime of device JWTs, in seconds.
pub const DEVICE_JWT_TTL_SECS: i64 = 15 * 60;

/// The `/api/v1` routes (health is served by the HTTP module).
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/v1/auth/validate-device", post(validate_device))
        .route("/api/v1/auth/device-token", post(device_token))
        .route("/api/v1/nodes/assign-outline", post(assign_outline))
        .route("/api/v1/usage/report", post(usage_report))
        .route("/api/v1/quota/grant", post(quota_grant))
        .route("/api/v1/usage/links", post(usage_links))
        .route("/api/v1/gateway/heartbeat", post(gateway_heartbeat))
        .route("/api/v1/gateway/access-events", get(access_events))
        .route("/api/v1/outline/heartbeat", post(outline_heartbeat))
        .route("/api/v1/outline/witness", post(outline_witness))
        .route("/api/v1/outline/config", get(outline_config))
        .route("/api/v1/enroll", post(enroll))
        .route("/api/v1/openapi.json", get(openapi_json))
}

/// A JSON body whose every rejection (malformed, not an object, wrong
/// types, unknown fields, wrong content type, a string no column holds) is
/// a 400 in our error envelope. It is not read until [`ApiJson::read`],
/// which handlers call after they have authenticated the caller: an
/// anonymous caller gets 401 at once, without a `100 Continue` and
/// without the server waiting for its body, and learns nothing of what is
/// wrong with it.
pub struct ApiJson<T> {
    req: Request,
    body: std::marker::PhantomData<fn() -> T>,
}

impl<T: serde::de::DeserializeOwned> ApiJson<T> {
    /// Reads the body now, or says why it is refused.
    pub async fn read(self) -> Result<T, AppError> {
        parse_body(self.req).await
    }
}

impl<S: Send + Sync, T> FromRequest<S> for ApiJson<T> {
    type Rejection = std::convert::Infallible;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(ApiJson {
            req,
            body: std::marker::PhantomData,
        })
    }
}

async fn parse_body<T: serde::de::DeserializeOwned>(req: Request) -> Result<T, AppError> {
    if !json_content_type(req.headers()) {
        return Err(AppError::bad("the body must be application/json"));
    }
    crate::body::plain_encoding(req.headers())?;
    let bytes = crate::body::whole(req.into_body(), httvps_wire::MAX_BODY_BYTES).await?;
    // Straight into the typed body: no tree of values first (a usage
    // report carries hundreds of entries).
    let parsed = serde_json::from_slice::<T>(&bytes);
    if parsed.is_err() && serde_json::from_slice::<serde::de::IgnoredAny>(&bytes).is_err() {
        return Err(AppError::bad("the body is not valid JSON"));
    }
    // serde reads a struct from an array too: refuse it here.
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(AppError::bad("the body must be a JSON object"));
    }
    storable_json(&bytes).map_err(AppError::BadRequest)?;
    parsed.map_err(|e| AppError::bad(format!("invalid body: {e}")))
}

/// `application/json` or an `application/*+json` type, as axum's `Json`
/// accepts.
fn json_content_type(headers: &axum::http::HeaderMap) -> bool {
    let Some(ct) = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.split_once('/') {
        Some((ty, sub)) => ty == "application" && (sub == "json" || sub.ends_with("+json")),
        None => false,
    }
}

/// Checks every string of a syntactically valid JSON document (keys
/// included) can be stored: none holds a NUL character. A JSON string
/// spells NUL only as the escape `\u0000` (a raw control character is
/// invalid JSON), so the check reads escapes and skips the rest.
fn storable_json(json: &[u8]) -> Result<(), String> {
    let mut i = 0;
    while i < json.len() {
        if json[i] == b'\\' {
            if json.get(i + 1) == Some(&b'u') && json.get(i + 2..i + 6) == Some(b"0000") {
                return crate::validate::storable("\0");
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    Ok(())
}

/// Readiness of the control plane and its database.
#[utoipa::path(get, path = "/api/v1/health",
    responses((status = 200, body = HealthBody), (status = 503, body = HealthBody)))]
#[expect(dead_code, reason = "documents the route served by the HTTP module")]
fn health_doc() {}

/// The OpenAPI document of the `/api/v1` routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "httvps control plane: gateway and node API",
        description = "Machine callers send `Authorization: Bearer <node token>`; devices send `Authorization: Bearer <device JWT>` (from /api/v1/auth/device-token). Every error, including 405 and 413, is `{\"error\": {\"code\", \"message\"}}`; the credential is checked before the body."
    ),
    paths(
        health_doc,
        validate_device,
        device_token,
        assign_outline,
        usage_report,
        quota_grant,
        usage_links,
        gateway_heartbeat,
        access_events,
        outline_heartbeat,
        outline_witness,
        outline_config,
        enroll
    ),
    modifiers(&Contract)
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (served, and committed as `docs/openapi.json`).
pub fn openapi_json_text() -> String {
    ApiDoc::openapi().to_pretty_json().unwrap_or_default()
}

async fn openapi_json() -> impl axum::response::IntoResponse {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        openapi_json_text(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nul_escape_is_found_and_an_escaped_backslash_is_not_one() {
        assert!(storable_json(br#"{"a":"x\u0000y"}"#).is_err());
        assert!(storable_json(br#"{"a\u0000":1}"#).is_err());
        assert!(
            storable_json(br#"{"a":"x\\u0000y"}"#).is_ok(),
            "a backslash, then u0000"
        );
        assert!(storable_json(br#"{"a":"x\\\u0000"}"#).is_err());
        assert!(storable_json(br#"{"a":"\u00001"}"#).is_err());
        assert!(storable_json(br#"{"a":"\u0001\"\\"}"#).is_ok());
    }

    #[test]
    fn json_types_are_those_axum_accepts() {
        let with = |ct: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(
                axum::http::header::CONTENT_TYPE,
                ct.parse().expect("a header value"),
            );
            json_content_type(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(with("application/problem+json"));
        assert!(!with("text/json"));
        assert!(!with("application/jsonx"));
        assert!(!json_content_type(&axum::http::HeaderMap::new()));
    }
}
