//! Dataloaders: every relation is loaded in one query per request batch,
//! keyed by the newtype ids, so one kind of id can't be used for another.

use std::collections::HashMap;
use std::sync::Arc;

use async_graphql::dataloader::Loader;

use crate::db::Db;
use crate::db::models;
use crate::error::AppError;
use crate::ids::{DeviceId, GatewayNodeId, OutlineNodeId, PlanId, RegionId, UserId};
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

/// A user id, for the user's current subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CurrentSubscriptionOf(pub UserId);

type Shared = Arc<AppError>;

macro_rules! loader {
    ($key:ty, $row:ty, $fetch:path, |$r:ident| $id:expr) => {
        impl Loader<$key> for DbLoader {
            type Value = $row;
            type Error = Shared;

            async fn load(&self, keys: &[$key]) -> Result<HashMap<$key, Self::Value>, Self::Error> {
                let rows = $fetch(&self.db, keys).await.map_err(Arc::new)?;
                Ok(rows.into_iter().map(|$r| ($id, $r)).collect())
            }
        }
    };
}

loader!(UserId, models::User, accounts::by_ids, |r| r.id);
loader!(PlanId, models::Plan, catalogue::plans_by_ids, |r| r.id);
loader!(RegionId, models::Region, catalogue::regions_by_ids, |r| r
    .id);
loader!(DeviceId, models::Device, devices::by_ids, |r| r.id);
loader!(
    OutlineNodeId,
    models::OutlineNode,
    nodes::outline_by_ids,
    |r| r.id
);
loader!(
    GatewayNodeId,
    models::GatewayNode,
    nodes::gateways_by_ids,
    |r| r.id
);

impl Loader<CurrentSubscriptionOf> for DbLoader {
    type Value = models::Subscription;
    type Error = Shared;

    async fn load(
        &self,
        keys: &[CurrentSubscriptionOf],
    ) -> Result<HashMap<CurrentSubscriptionOf, Self::Value>, Self::Error> {
        let users: Vec<UserId> = keys.iter().map(|k| k.0).collect();
        let rows = subscriptions::current_for_users(&self.db, &users)
            .await
            .map_err(Arc::new)?;
        Ok(rows
            .into_iter()
            .map(|r| (CurrentSubscriptionOf(r.user_id), r))
            .collect())
    }
}

/// Turns a loader error into a GraphQL error with its code.
pub fn loader_error(e: Shared) -> async_graphql::Error {
    Arc::unwrap_or_clone(e).into_graphql()
}

/// A device id, for where the device's open session runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlacementOf(pub DeviceId);

impl Loader<PlacementOf> for DbLoader {
    type Value = crate::sessions::Placement;
    type Error = Shared;

    async fn load(
        &self,
        keys: &[PlacementOf],
    ) -> Result<HashMap<PlacementOf, Self::Value>, Self::Error> {
        let ids: Vec<DeviceId> = keys.iter().map(|k| k.0).collect();
        let rows = crate::sessions::placements_of(&self.db, &ids)
            .await
            .map_err(Arc::new)?;
        Ok(rows
            .into_iter()
            .map(|p| (PlacementOf(p.device_id), p))
            .collect())
    }
}
