//! The GraphQL API: one file per domain, merged into the root types. Guards
//! declare who may call a field; errors carry stable `extensions.code`s.

pub mod accounts;
pub mod scalars;

use async_graphql::{Context, EmptySubscription, Guard, MergedObject, Schema};

use crate::auth::jwt::JwtKeys;
use crate::control::accounts::Role;
use crate::db::Db;
use crate::error::AppError;

/// Root query type.
#[derive(MergedObject, Default)]
pub struct Query(accounts::AccountQuery);

/// Root mutation type.
#[derive(MergedObject, Default)]
pub struct Mutation(accounts::AccountMutation);

/// The executable schema.
pub type ApiSchema = Schema<Query, Mutation, EmptySubscription>;

/// Most nesting a query may have.
pub const MAX_DEPTH: usize = 12;
/// Most complexity (fields, weighted by list sizes) a query may have.
pub const MAX_COMPLEXITY: usize = 1000;

/// Who is calling: resolved once per request from the access token.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user's id.
    pub user_id: String,
    /// The user's role.
    pub role: Role,
}

/// Builds the schema. `debug` turns on introspection and field suggestions.
pub fn build_schema(db: Db, jwt: JwtKeys, debug: bool) -> ApiSchema {
    let mut builder = Schema::build(Query::default(), Mutation::default(), EmptySubscription)
        .data(db)
        .data(jwt)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .limit_recursive_depth(32)
        .limit_directives(8);
    if !debug {
        builder = builder.disable_introspection().disable_suggestions();
    }
    builder.finish()
}

/// The schema in SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    Schema::build(Query::default(), Mutation::default(), EmptySubscription)
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
        match viewer(ctx)?.role {
            Role::Admin => Ok(()),
            Role::User => Err(AppError::Forbidden.into_graphql()),
        }
    }
}

/// The caller, or an `UNAUTHENTICATED` error.
pub fn viewer<'a>(ctx: &'a Context<'_>) -> async_graphql::Result<&'a Viewer> {
    ctx.data_opt::<Viewer>()
        .ok_or_else(|| AppError::Unauthenticated.into_graphql())
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
