//! The control plane's HTTP server: health, metrics, GraphQL (HTTP and
//! WebSocket) and GraphiQL.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use async_graphql::dataloader::DataLoader;
use axum::extract::{ConnectInfo, DefaultBodyLimit, Query as QueryParams, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;

use crate::context::{Viewer, bearer_token, viewer_from_token};
use crate::error::AppError;
use crate::graphql::loaders::{BATCH_DELAY, DbLoader};
use crate::graphql::{MAX_ERRORS, check_document};
use crate::listener::HttpLimits;
use crate::metrics;
pub use crate::state::AppState;
use crate::throttle::ClientAddr;

/// Largest request body accepted anywhere (GraphQL and REST), in bytes.
pub const MAX_BODY_BYTES: usize = httvps_wire::MAX_BODY_BYTES;

/// The whole HTTP surface of the control plane.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/graphql", get(graphql_get).post(graphql_post))
        .route("/graphql/ws", get(graphql_ws))
        .merge(
            super::rest::routes().route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                throttle_guessers,
            )),
        );
    app = app.merge(super::console::routes(state.debug));
    app.fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            client_addr,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            crate::refusals::envelope_framework_errors,
        ))
        .layer(axum::middleware::from_fn(crate::refusals::bound_heads))
        .layer(axum::middleware::map_response(no_store))
        .with_state(state)
}

/// Marks an answer that says nothing of caching as not to be stored by
/// any cache: API answers carry tokens (`login`, `refreshToken`,
/// `registerDevice`, the device JWT, an enrollment's machine token) and
/// account data, and refusals (404, 413, 414 …) are no better kept. The
/// console's files say how long they keep, and keep it.
async fn no_store(mut res: Response) -> Response {
    res.headers_mut()
        .entry(axum::http::header::CACHE_CONTROL)
        .or_insert(axum::http::HeaderValue::from_static("no-store"));
    res
}

/// Notes where the request comes from (the socket, or the trusted proxy
/// header when one is configured), for the throttles.
async fn client_addr(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let socket = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let addr = ClientAddr::of(&state.api.throttles.settings, req.headers(), socket);
    req.extensions_mut().insert(addr);
    next.run(req).await
}

/// On `/api/v1`: a source that presented too many unknown or invalid
/// credentials is refused (429) before its credential is looked up, unless
/// the credential it presents was authenticated recently (see
/// [`crate::proven`]); every 401 counts against its allowance, and the
/// credential it answered is proven no more.
async fn throttle_guessers(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let from = req
        .extensions()
        .get::<ClientAddr>()
        .copied()
        .unwrap_or(ClientAddr(None));
    let bearer = crate::context::bearer_token(req.headers())
        .ok()
        .flatten()
        .map(str::to_owned);
    if let Err(e) = state.api.throttles.guesser(from) {
        let proven = bearer
            .as_deref()
            .is_some_and(|t| state.api.proven.is_proven(t, std::time::Instant::now()));
        if !proven {
            return e.into_response();
        }
    }
    let res = next.run(req).await;
    if res.status() == StatusCode::UNAUTHORIZED {
        state.api.throttles.unknown_credential(from);
        if let Some(t) = &bearer {
            state.api.proven.forget(t);
        }
    }
    res
}

/// Serves `router` on an already bound listener with the default limits
/// until `shutdown` completes, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, HttpLimits::default(), None, shutdown).await
}

/// Like [`serve`] within `limits` (deadlines and the connection budget),
/// over HTTPS when `tls` is given.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    limits: HttpLimits,
    tls: Option<crate::https::TlsFront>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let closing = state.closing.clone();
    let mut applier = AbortOnDrop(tokio::spawn({
        let (usage, db) = (state.usage.clone(), state.db.clone());
        let stop = state.closing.subscribe();
        async move { usage.run(db, stop).await }
    }));
    let _signal = AbortOnDrop(tokio::spawn(async move {
        shutdown.await;
        closing.send_replace(true);
    }));
    let stop = state.closing.subscribe();
    let shed = state.metrics.shed.clone();
    let mut app = router(state);
    if let Some(token) = &limits.metrics_token {
        let want = crate::auth::hash_token(token.expose());
        app = app.layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                let want = want.clone();
                async move {
                    if req.uri().path() == "/metrics" {
                        // Compared as hashes: the time taken says nothing
                        // about how much of a guess was right.
                        let given = bearer_token(req.headers())
                            .ok()
                            .flatten()
                            .map(crate::auth::hash_token);
                        if given.as_deref() != Some(want.as_str()) {
                            return AppError::Unauthenticated.into_response();
                        }
                    }
                    next.run(req).await
                }
            },
        ));
    }
    crate::listener::serve(listener, app, limits, tls, stop, shed).await;
    // The applier applies what was stored, then stops; what it cannot apply
    // in time waits in the inbox for the next start.
    if tokio::time::timeout(Duration::from_secs(5), &mut applier.0)
        .await
        .is_err()
    {
        tracing::warn!("usage left in the inbox at shutdown");
    }
    Ok(())
}

/// Aborts a background task when dropped, so it ends with its owner.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[derive(serde::Serialize)]
struct Health {
    status: &'static str,
}

/// Readiness: 200 when the database answers, 503 when it doesn't. Says
/// nothing else.
async fn health(State(state): State<AppState>) -> Response {
    if state.db.ping(Duration::from_secs(2)).await {
        (StatusCode::OK, Json(Health { status: "ok" })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(Health {
                status: "unavailable",
            }),
        )
            .into_response()
    }
}

async fn prometheus(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        state.metrics.render(),
    )
        .into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("route")
}

/// Resolves the caller from `Authorization: Bearer`. No header: anonymous.
/// A bad, expired or outdated token is refused outright rather than treated
/// as anonymous, so a client learns at once that it must sign in again.
pub async fn resolve_viewer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Viewer>, AppError> {
    match bearer_token(headers)? {
        None => Ok(None),
        Some(token) => viewer_from_token(&state.api, token).await.map(Some),
    }
}

/// A refusal of the whole request, before any document is run: a GraphQL
/// response with the one error, without `locations` (it is not at a place
/// in a document), and the error's HTTP status.
fn graphql_error(err: AppError) -> Response {
    let status = err.status();
    let mut error = err.into_graphql().into_server_error(Default::default());
    error.locations.clear();
    let gql = async_graphql::Response::from_errors(vec![error]);
    (status, Json(gql)).into_response()
}

async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    from: ClientAddr,
    request: async_graphql::Request,
) -> Response {
    let doc = match check_document(&request.query) {
        Ok(doc) => doc,
        Err(e) => return graphql_error(e),
    };
    let viewer = match resolve_viewer(state, headers).await {
        Ok(v) => v,
        Err(e) => return graphql_error(e),
    };
    let operation = request.operation_name.clone();
    let loader = DataLoader::new(DbLoader::new(state.db.clone()), tokio::spawn).delay(BATCH_DELAY);
    let mut request = request.data(loader).data(from);
    if let Some(v) = viewer {
        request = request.data(v);
    }
    let mut response = state.schema.execute(request).await;
    if let Some(doc) = &doc {
        crate::graphql::as_asked(doc, operation.as_deref(), &mut response.data);
    }
    // At most MAX_ERRORS errors, the rest counted: an answer stays about
    // the size of its question, however many mistakes the question holds.
    if response.errors.len() > MAX_ERRORS {
        let more = response.errors.len() - MAX_ERRORS;
        response.errors.truncate(MAX_ERRORS);
        response.errors.push(async_graphql::ServerError::new(
            format!("{more} more errors left out"),
            None,
        ));
    }
    // Errors raised by the engine itself (parse, validation, limits, input
    // coercion) carry no code yet: they are all the client's.
    for err in &mut response.errors {
        let ext = err.extensions.get_or_insert_with(Default::default);
        if ext.get("code").is_none() {
            ext.set("code", "BAD_REQUEST");
        }
    }
    Json(response).into_response()
}

/// `POST /graphql`: JSON only; one operation per request (no batching).
async fn graphql_post(
    State(state): State<AppState>,
    from: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Response {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return graphql_error(AppError::bad(
            "GraphQL requests must be POSTed as application/json",
        ));
    }
    if let Err(e) = crate::body::plain_encoding(&headers) {
        return graphql_error(e);
    }
    let body = match crate::body::whole(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(e) => return graphql_error(e),
    };
    // An array is a batch, empty or not (serde would read `[]` as a
    // request with every field left out).
    if body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[') {
        return graphql_error(AppError::bad("batched requests are not supported"));
    }
    // JSON is UTF-8 (RFC 8259), also in members the request ignores
    // (which serde skips unread).
    let Ok(body) = std::str::from_utf8(&body) else {
        return graphql_error(AppError::bad(
            "malformed GraphQL request: the body is not UTF-8",
        ));
    };
    let request: async_graphql::Request = match serde_json::from_str(body) {
        Ok(r) => r,
        Err(e) => return graphql_error(AppError::bad(format!("malformed GraphQL request: {e}"))),
    };
    let from = from.map_or(ClientAddr(None), |Extension(a)| a);
    execute(&state, &headers, from, request).await
}

#[derive(serde::Deserialize)]
struct GetParams {
    query: String,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
}

/// `GET /graphql`: queries only; mutations must be POSTed.
async fn graphql_get(
    State(state): State<AppState>,
    from: Option<Extension<ClientAddr>>,
    headers: HeaderMap,
    params: Result<QueryParams<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let params = match params {
        Ok(QueryParams(params)) => params,
        Err(e) => {
            let text = e.body_text();
            let why = if text.contains("duplicate field") {
                "a GET /graphql parameter is given more than once"
            } else if text.contains("missing field `query`") {
                "GET /graphql needs a query parameter"
            } else {
                "the GET /graphql parameters could not be read"
            };
            return graphql_error(AppError::bad(why));
        }
    };
    // Its shape first: telling a query from a mutation parses the document.
    if let Err(e) = check_document(&params.query) {
        return graphql_error(e);
    }
    if !is_query_only(&params.query, params.operation_name.as_deref()) {
        return graphql_error(AppError::bad(
            "only queries may be sent with GET; POST mutations as JSON",
        ));
    }
    let mut request = async_graphql::Request::new(params.query);
    if let Some(name) = params.operation_name {
        request = request.operation_name(name);
    }
    if let Some(vars) = params.variables {
        // An object, as on POST (`null` or an empty value: none).
        match serde_json::from_str::<serde_json::Value>(&vars) {
            Ok(v @ serde_json::Value::Object(_)) => {
                request = request.variables(async_graphql::Variables::from_json(v));
            }
            Ok(serde_json::Value::Null) => {}
            _ if vars.trim().is_empty() => {}
            Ok(_) => return graphql_error(AppError::bad("variables must be a JSON object")),
            Err(e) => {
                return graphql_error(AppError::bad(format!(
                    "variables must be a JSON object: {e}"
                )));
            }
        }
    }
    let from = from.map_or(ClientAddr(None), |Extension(a)| a);
    execute(&state, &headers, from, request).await
}

/// Whether every operation that could run is a query. Unparseable documents
/// pass here and are rejected by the executor.
fn is_query_only(query: &str, operation_name: Option<&str>) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return true;
    };
    let is_query = |t: OperationType| t == OperationType::Query;
    match &doc.operations {
        DocumentOperations::Single(op) => is_query(op.node.ty),
        DocumentOperations::Multiple(ops) => match operation_name {
            Some(name) => ops.get(name).is_none_or(|op| is_query(op.node.ty)),
            None => ops.values().all(|op| is_query(op.node.ty)),
        },
    }
}

/// Whether `key` is 16 bytes in base64: 22 characters of its alphabet and
/// the padding `==`.
fn websocket_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'+' || *c == b'/')
}

/// `GET /graphql/ws`: the WebSocket for live operations.
/// The sub-protocol is `graphql-transport-ws` unless the client asks for the
/// legacy `graphql-ws`.
async fn graphql_ws(
    State(state): State<AppState>,
    from: Option<Extension<ClientAddr>>,
    idle: Option<Extension<super::graphql::ws::IdleDeadline>>,
    headers: HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    use std::str::FromStr;
    // RFC 6455: the key is 16 random bytes in base64; the framework
    // upgrades with any value.
    if !headers
        .get(header::SEC_WEBSOCKET_KEY)
        .is_some_and(|k| websocket_key(k.as_bytes()))
    {
        return (
            StatusCode::BAD_REQUEST,
            "Sec-WebSocket-Key must be 16 bytes in base64",
        )
            .into_response();
    }
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',')
                .find_map(|p| async_graphql::http::WebSocketProtocols::from_str(p.trim()).ok())
        })
        .unwrap_or(async_graphql::http::WebSocketProtocols::GraphQLWS);
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .max_message_size(MAX_BODY_BYTES)
        .on_upgrade(move |socket| {
            let from = from.map_or(ClientAddr(None), |Extension(a)| a);
            let idle = idle.map_or(super::graphql::ws::IDLE_DEADLINE, |Extension(d)| d.0);
            super::graphql::ws::serve(
                state.schema.clone(),
                state.api.clone(),
                socket,
                protocol,
                from,
                idle,
            )
        })
}
