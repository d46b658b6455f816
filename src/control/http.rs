//! The control plane's HTTP server: health, metrics, GraphQL and GraphiQL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_graphql::http::GraphiQLSource;
use axum::extract::{DefaultBodyLimit, Query as QueryParams, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use bytes::Bytes;
use tokio::net::TcpListener;
use tower_http::limit::RequestBodyLimitLayer;

use super::accounts::{self, Role};
use super::graphql::{ApiSchema, Viewer, build_schema};
use super::metrics::{self, Metrics};
use crate::auth::jwt::{Audience, JwtKeys};
use crate::db::Db;
use crate::error::AppError;

/// Largest request body accepted anywhere (GraphQL and REST), in bytes.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Everything a request handler needs, built once at start-up.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// Token keys.
    pub jwt: JwtKeys,
    /// The GraphQL schema.
    pub schema: ApiSchema,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Development mode (GraphiQL served).
    pub debug: bool,
}

impl AppState {
    /// Builds the state from its parts.
    pub fn new(db: Db, jwt: JwtKeys, debug: bool) -> Self {
        let schema = build_schema(db.clone(), jwt.clone(), debug);
        AppState {
            db,
            jwt,
            schema,
            metrics: Arc::new(Metrics::default()),
            debug,
        }
    }
}

/// The whole HTTP surface of the control plane.
pub fn router(state: AppState) -> Router {
    let mut app = Router::new()
        .route("/api/v1/health", get(health))
        .route("/metrics", get(prometheus))
        .route("/graphql", get(graphql_get).post(graphql_post));
    if state.debug {
        app = app.route("/graphiql", get(graphiql));
    }
    app.fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            metrics::track,
        ))
        .layer(RequestBodyLimitLayer::new(MAX_BODY_BYTES))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves `router` on an already bound listener until `shutdown` completes,
/// then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
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
    let (size, available) = match &state.db {
        Db::Pg(p) => (p.status().size, p.status().available),
        Db::Sqlite(p) => (p.status().size, p.status().available),
    };
    let body = state.metrics.render(&[
        (
            "httvps_db_pool_connections",
            "Open database connections.",
            size as f64,
        ),
        (
            "httvps_db_pool_idle",
            "Idle database connections.",
            available as f64,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn not_found() -> AppError {
    AppError::NotFound("route")
}

async fn graphiql() -> Html<String> {
    Html(
        GraphiQLSource::build()
            .endpoint("/graphql")
            .subscription_endpoint("/graphql/ws")
            .finish(),
    )
}

/// Resolves the caller from `Authorization: Bearer`. No header: anonymous.
/// A bad, expired or outdated token is refused outright rather than treated
/// as anonymous, so a client learns at once that it must sign in again.
pub async fn resolve_viewer(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Viewer>, AppError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let token = value
        .to_str()
        .ok()
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .ok_or(AppError::Unauthenticated)?;
    let claims = state.jwt.verify(Audience::Access, token)?;
    let user = accounts::find_user(&state.db, &claims.sub)
        .await?
        .ok_or(AppError::Unauthenticated)?;
    if user.status != "active" || user.token_version != claims.ver {
        return Err(AppError::Unauthenticated);
    }
    Ok(Some(Viewer {
        user_id: user.id,
        role: Role::parse(&user.role),
    }))
}

fn graphql_error(err: AppError) -> Response {
    let status = err.status();
    let gql = async_graphql::Response::from_errors(vec![
        err.into_graphql().into_server_error(Default::default()),
    ]);
    (status, Json(gql)).into_response()
}

async fn execute(
    state: &AppState,
    headers: &HeaderMap,
    request: async_graphql::Request,
) -> Response {
    let viewer = match resolve_viewer(state, headers).await {
        Ok(v) => v,
        Err(e) => return graphql_error(e),
    };
    let mut request = request;
    if let Some(v) = viewer {
        request = request.data(v);
    }
    Json(state.schema.execute(request).await).into_response()
}

/// `POST /graphql`: JSON only; one operation per request (no batching).
async fn graphql_post(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
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
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) if body.first() == Some(&b'[') => {
            return graphql_error(AppError::bad("batched requests are not supported"));
        }
        Err(e) => return graphql_error(AppError::bad(format!("malformed GraphQL request: {e}"))),
    };
    execute(&state, &headers, request).await
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
    headers: HeaderMap,
    params: Result<QueryParams<GetParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Ok(QueryParams(params)) = params else {
        return graphql_error(AppError::bad("GET /graphql needs a query parameter"));
    };
    if is_mutation(&params.query, params.operation_name.as_deref()) {
        return graphql_error(AppError::bad("mutations must be sent with POST"));
    }
    let mut request = async_graphql::Request::new(params.query);
    if let Some(name) = params.operation_name {
        request = request.operation_name(name);
    }
    if let Some(vars) = params.variables {
        match serde_json::from_str::<serde_json::Value>(&vars) {
            Ok(v) => request = request.variables(async_graphql::Variables::from_json(v)),
            Err(_) => return graphql_error(AppError::bad("variables must be a JSON object")),
        }
    }
    execute(&state, &headers, request).await
}

/// Whether the operation that would run is a mutation or a subscription.
/// Unparseable documents are left to the executor, which rejects them.
fn is_mutation(query: &str, operation_name: Option<&str>) -> bool {
    use async_graphql::parser::types::{DocumentOperations, OperationType};
    let Ok(doc) = async_graphql::parser::parse_query(query) else {
        return false;
    };
    let not_query = |t: OperationType| t != OperationType::Query;
    match &doc.operations {
        DocumentOperations::Single(op) => not_query(op.node.ty),
        DocumentOperations::Multiple(ops) => match operation_name {
            Some(name) => ops.get(name).is_some_and(|op| not_query(op.node.ty)),
            None => ops.values().any(|op| not_query(op.node.ty)),
        },
    }
}
