//! The GraphQL API: one file per domain, merged into the root types. Guards
//! declare who may call a field; errors carry stable `extensions.code`s;
//! dataloaders batch every relation.

pub mod accounts;
pub mod activity;
pub mod catalogue;
pub mod counts;
pub mod devices;
pub mod enrollments;
pub mod inputs;
pub mod live;
pub mod loaders;
pub mod nodes;
pub mod order;
pub mod placement;
pub mod scalars;
pub mod settings;
pub mod shape;
pub mod subscriptions;
pub mod ws;

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Guard, MergedObject, OutputType, Schema};
use chrono::NaiveDateTime;

use crate::actor::Actor;
pub use crate::context::{AppContext, DeviceViewer, Viewer};
use crate::error::AppError;
use crate::pagination::{self, Page};

/// Root query type.
#[derive(MergedObject, Default)]
pub struct Query(
    accounts::AccountQuery,
    catalogue::CatalogueQuery,
    subscriptions::SubscriptionQuery,
    devices::DeviceQuery,
    nodes::NodeQuery,
    activity::ActivityQuery,
    settings::SettingsQuery,
);

/// Root mutation type.
#[derive(MergedObject, Default)]
pub struct Mutation(
    accounts::AccountMutation,
    catalogue::CatalogueMutation,
    subscriptions::SubscriptionMutation,
    devices::DeviceMutation,
    nodes::NodeMutation,
    enrollments::EnrollmentMutation,
    activity::ActivityMutation,
    settings::SettingsMutation,
);

/// The executable schema; the streaming root is `Live` (the word
/// "subscription" means the billing record here).
pub type ApiSchema = Schema<Query, Mutation, live::Live>;

/// Most nesting a query may have.
pub const MAX_DEPTH: usize = 12;
/// Most complexity (fields, weighted by list sizes) a query may have.
pub const MAX_COMPLEXITY: usize = 1000;
/// Most aliases a document may use.
pub const MAX_ALIASES: usize = 30;
pub use order::as_asked;
pub use shape::{MAX_ERRORS, MAX_SELECTIONS, check_document};

/// Builds the schema. `debug` turns on introspection and field suggestions.
pub fn build_schema(api: AppContext, debug: bool) -> ApiSchema {
    let mut builder = Schema::build(Query::default(), Mutation::default(), live::Live)
        .data(api)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32)
        .limit_directives(8)
        .extension(inputs::InputCheck {
            introspection: debug,
        });
    if !debug {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), live::Live)
        .finish()
        .sdl()
}

/// Allows signed-in users (any role).
pub struct SignedIn;

impl Guard for SignedIn {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        viewer(ctx).map(|_| ())
    }
}

/// Allows admins only.
pub struct AdminOnly;

impl Guard for AdminOnly {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        if viewer(ctx)?.is_admin() {
            Ok(())
        } else {
            Err(AppError::Forbidden.into_graphql())
        }
    }
}

/// Allows signed-in users and device clients (live node events).
pub struct LiveViewer;

impl Guard for LiveViewer {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        if ctx.data_opt::<DeviceViewer>().is_some() {
            Ok(())
        } else {
            viewer(ctx).map(|_| ())
        }
    }
}

/// The caller, or an `UNAUTHENTICATED` error (`FORBIDDEN` for a device's
/// socket: its credential is not a user's).
pub fn viewer<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Viewer> {
    ctx.data_opt::<Viewer>().ok_or_else(|| {
        // A device's socket holds a credential, just not a user's.
        if ctx.data_opt::<DeviceViewer>().is_some() {
            AppError::Forbidden.into_graphql()
        } else {
            AppError::Unauthenticated.into_graphql()
        }
    })
}

/// The caller as the actor of a use case, or an `UNAUTHENTICATED` error.
pub fn actor(ctx: &Context<'_>) -> async_graphql::Result<Actor> {
    viewer(ctx).map(Viewer::actor)
}

/// Converts use-case results into GraphQL results with typed error codes.
pub trait GqlResultExt<T> {
    /// Maps the error with [`AppError::into_graphql`].
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResultExt<T> for Result<T, AppError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(AppError::into_graphql)
    }
}

/// Builds a connection from a page of rows, with keyset cursors.
pub fn connection<R, K: std::fmt::Display, N: OutputType>(
    page: Page<R>,
    had_cursor: bool,
    key: impl Fn(&R) -> (NaiveDateTime, K),
    node: impl Fn(R) -> N,
) -> Connection<String, N> {
    let mut c = Connection::new(had_cursor, page.has_next);
    c.edges.extend(page.rows.into_iter().map(|r| {
        let (ts, id) = key(&r);
        Edge::new(pagination::encode(ts, &id.to_string()), node(r))
    }));
    c
}

/// The UUID of an id stored as free text (audit targets); every id we
/// write is one.
pub fn uuid(id: &str) -> uuid::Uuid {
    uuid::Uuid::parse_str(id).unwrap_or_default()
}
