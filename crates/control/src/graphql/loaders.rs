//! Dataloaders: every relation is loaded in one query per request batch,
//! keyed by newtype ids so one kind of id can't be used for another.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::db::Db;
use crate::db::models;
use crate::error::AppError;
use crate::{accounts, catalogue, devices, nodes, subscriptions};

/// How long a loader waits to gather keys into one batch: long enough for
/// every row of a page to ask, short enough not to matter to a person.
pub const BATCH_DELAY: std::time::Duration = std::time::Duration::from_millis(5);

/// Loads rows by id for one request.
pub struct DbLoader {
    db: Db,
}

impl DbLoader {
    /// A loader over `db`.
    pub fn new(db: Db) -> Self {
        DbLoader { db }
    }
}

macro_rules! id_type {
    ($name:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        pub struct $name(pub String);
    };
}

id_type!(UserId, "A user's id.");
id_type!(PlanId, "A plan's id.");
id_type!(RegionId, "A region's id.");
id_type!(DeviceId, "A device's id.");
id_type!(OutlineNodeId, "An Outline node's id.");
id_type!(GatewayNodeId, "A gateway's id.");
id_type!(
    CurrentSubscriptionOf,
    "A user id, for the user's current subscription."
);

type Shared = Arc<AppError>;

macro_rules! loader {
    ($key:ident, $row:ty, $fetch:path, |$r:ident| $id:expr) => {
        impl Loader<$key> for DbLoader {
            type Value = $row;
            type Error = Shared;

            async fn load(&self, keys: &[$key]) -> Result<HashMap<$key, Self::Value>, Self::Error> {
                let ids: Vec<String> = keys.iter().map(|k| k.0.clone()).collect();
                let rows = $fetch(&self.db, &ids).await.map_err(Arc::new)?;
                Ok(rows.into_iter().map(|$r| ($key($id), $r)).collect())
            }
        }
    };
}

loader!(UserId, models::User, accounts::by_ids, |r| r.id.clone());
loader!(PlanId, models::Plan, catalogue::plans_by_ids, |r| r
    .id
    .clone());
loader!(RegionId, models::Region, catalogue::regions_by_ids, |r| r
    .id
    .clone());
loader!(DeviceId, models::Device, devices::by_ids, |r| r.id.clone());
loader!(
    OutlineNodeId,
    models::OutlineNode,
    nodes::outline_by_ids,
    |r| r.id.clone()
);
loader!(
    GatewayNodeId,
    models::GatewayNode,
    nodes::gateways_by_ids,
    |r| r.id.clone()
);
loader!(
    CurrentSubscriptionOf,
    models::Subscription,
    subscriptions::current_for_users,
    |r| r.user_id.clone()
);

/// Turns a loader error into a GraphQL error with its code.
pub fn loader_error(e: Shared) -> async_graphql::Error {
    Arc::unwrap_or_clone(e).into_graphql()
}
