//! `totalCount` on the connections a console pages through: counted with
//! the list's own filter, and only when a client asks for it.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, Object, OutputType};
use chrono::NaiveDateTime;

use super::{AppContext, GqlResultExt, actor};
use crate::accounts::UserFilter;
use crate::audit::AuditFilter;
use crate::devices::DeviceFilter;
use crate::pagination::{self, Page};
use crate::sessions::SessionFilter;
use crate::subscriptions::SubscriptionFilter;

/// The list a connection's `totalCount` counts (its filter, as asked).
#[derive(Debug, Clone)]
pub enum Counted {
    /// `users`.
    Users(UserFilter),
    /// `devices`.
    Devices(DeviceFilter),
    /// `subscriptions`.
    Subscriptions(SubscriptionFilter),
    /// `sessions`.
    Sessions(SessionFilter),
    /// `auditLog`.
    Audit(AuditFilter),
}

#[Object]
impl Counted {
    /// How many items the list has with its filter, over all pages.
    async fn total_count(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        let api = ctx.data::<AppContext>()?;
        let (db, who) = (&api.db, actor(ctx)?);
        let n = match self {
            Counted::Users(f) => crate::accounts::count(db, &who, f).await,
            Counted::Devices(f) => crate::devices::count(db, &who, f).await,
            Counted::Subscriptions(f) => crate::subscriptions::count(db, &who, f).await,
            Counted::Sessions(f) => crate::sessions::count(db, &who, f).await,
            Counted::Audit(f) => crate::audit::count(db, &who, f).await,
        };
        n.gql()
    }
}

/// A page as a connection with `totalCount` (see
/// [`connection`](super::connection)).
pub fn counted_connection<R, K: std::fmt::Display, N: OutputType>(
    page: Page<R>,
    had_cursor: bool,
    counted: Counted,
    key: impl Fn(&R) -> (NaiveDateTime, K),
    node: impl Fn(R) -> N,
) -> Connection<String, N, Counted> {
    let mut c = Connection::with_additional_fields(had_cursor, page.has_next, counted);
    c.edges.extend(page.rows.into_iter().map(|r| {
        let (ts, id) = key(&r);
        Edge::new(pagination::encode(ts, &id.to_string()), node(r))
    }));
    c
}
