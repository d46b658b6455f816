//! The state every HTTP handler gets: the application context, the GraphQL
//! schema built on it, request metrics and the usage applier.

use std::sync::Arc;

use crate::auth::jwt::JwtKeys;
use crate::context::{AppContext, ContextParts};
use crate::db::Db;
use crate::graphql::{ApiSchema, build_schema};
use crate::metrics::{Live, Metrics};
use crate::nodes::enrollment::EnrollTarget;
use crate::throttle::{ThrottleSettings, Throttles};
use crate::usage_accounting::Applier;

/// Everything a request handler needs, built once at start-up. Cheap to
/// clone (one reference count: axum clones the state for every extractor
/// and middleware of every request); its parts are read through `Deref`.
#[derive(Clone)]
pub struct AppState(Arc<StateParts>);

impl std::ops::Deref for AppState {
    type Target = StateParts;

    fn deref(&self) -> &StateParts {
        &self.0
    }
}

/// What an [`AppState`] holds.
pub struct StateParts {
    /// The database (and its events).
    pub db: Db,
    /// What use cases need (database, keys, caches).
    pub api: AppContext,
    /// The GraphQL schema.
    pub schema: ApiSchema,
    /// Request metrics.
    pub metrics: Arc<Metrics>,
    /// Development mode (GraphiQL served).
    pub debug: bool,
    /// Turns true when the server starts shutting down: long-lived
    /// responses (event streams) end then.
    pub closing: Arc<tokio::sync::watch::Sender<bool>>,
    /// Applies stored usage reports (runs while [`serve`](crate::http::serve) does).
    pub usage: Arc<Applier>,
}

impl AppState {
    /// Builds the state from its parts.
    pub fn new(
        db: Db,
        jwt: JwtKeys,
        gateway_url: Option<String>,
        enroll: Option<EnrollTarget>,
        debug: bool,
        throttle: ThrottleSettings,
    ) -> Self {
        let api = AppContext::new(ContextParts {
            db: db.clone(),
            jwt,
            gateway_url,
            machines: Default::default(),
            enroll,
            throttles: Arc::new(Throttles::new(throttle)),
            proven: Default::default(),
            opener: Default::default(),
            tokens: Default::default(),
        });
        let schema = build_schema(api.clone(), debug);
        let usage = Arc::new(Applier::default());
        let metrics = Arc::new(Metrics::new(Live {
            db: db.clone(),
            usage: usage.clone(),
        }));
        AppState(Arc::new(StateParts {
            db,
            api,
            schema,
            metrics,
            debug,
            closing: Arc::new(tokio::sync::watch::channel(false).0),
            usage,
        }))
    }
}
