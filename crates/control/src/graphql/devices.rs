//! Devices over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, InputObject, Object, SimpleObject};
use uuid::Uuid;

use super::accounts::User;
use super::counts::{Counted, counted_connection};
use super::loaders::{CurrentSubscriptionOf, DbLoader, PlacementOf, loader_error};
use super::placement::DevicePlacement;
use super::subscriptions::Subscription;
use super::{AppContext, GqlResultExt, SignedIn, actor};
use crate::db::models::{self, SecretText};
use crate::devices::{self, AccessLinks, DeviceFilter, DeviceStatus};
use crate::ids::UserId;
use crate::pagination::PageArgs;

/// A user's device.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(complex)]
pub struct Device {
    /// Stable id.
    pub id: Uuid,
    /// Name given by the user.
    pub name: String,
    /// Platform (ios, android, windows, macos, linux, …).
    pub platform: String,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// Last time it opened a tunnel (UTC).
    pub last_seen_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Registration time (UTC).
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// Revocation time (UTC).
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Whether it is active but beyond the device limit of its owner's
    /// subscription (one of the newest of more active devices than the
    /// plan covers): it may not connect until another device is revoked.
    /// Fitted when a subscription is granted, extended or cancelled and
    /// when a device is revoked (one that merely runs out keeps the marks
    /// until then; its devices are refused for that first).
    pub over_limit: bool,
    /// The owner (resolved by `user`).
    #[graphql(skip)]
    pub user_id: UserId,
}

impl From<models::Device> for Device {
    fn from(d: models::Device) -> Self {
        Device {
            id: d.id.uuid(),
            name: d.name,
            platform: d.platform,
            status: d.status,
            last_seen_at: d.last_seen_at.map(|t| t.and_utc()),
            created_at: d.created_at.and_utc(),
            revoked_at: d.revoked_at.map(|t| t.and_utc()),
            over_limit: d.over_limit,
            user_id: d.user_id,
        }
    }
}

#[ComplexObject]
impl Device {
    /// The owner.
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(self.user_id)
            .await
            .map_err(loader_error)?
            .map(User::from))
    }

    /// The owner's current subscription.
    async fn subscription(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Subscription>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(CurrentSubscriptionOf(self.user_id))
            .await
            .map_err(loader_error)?
            .map(Subscription::from))
    }

    /// The open session of this device (owner or admin); null when it has none.
    async fn placement(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<DevicePlacement>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(PlacementOf(self.id.into()))
            .await
            .map_err(loader_error)?
            .map(DevicePlacement::from))
    }
}

/// What `registerDevice` and `rotateDeviceToken` return: the token and links
/// are shown this once.
#[derive(SimpleObject, Debug)]
pub struct DeviceCredentials {
    /// The device.
    pub device: Device,
    /// Opaque access token for tunnel URLs and `Authorization: Bearer`.
    pub access_token: SecretText,
    /// Ready-to-use links; null until a gateway URL is known.
    pub links: Option<AccessLinks>,
}

/// Filters on `devices`.
#[derive(InputObject, Default)]
pub struct DeviceFilterInput {
    /// Only this user's devices: admins, anyone's; users, their own id
    /// (another's is FORBIDDEN).
    pub user_id: Option<Uuid>,
    /// Only this status.
    pub status: Option<DeviceStatus>,
}

/// Device queries.
#[derive(Default)]
pub struct DeviceQuery;

#[Object]
impl DeviceQuery {
    /// Devices: the caller's own, or anyone's for admins.
    #[graphql(guard = "SignedIn")]
    async fn devices(
        &self,
        ctx: &Context<'_>,
        filter: Option<DeviceFilterInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Device, Counted>> {
        let api = ctx.data::<AppContext>()?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let f = filter.unwrap_or_default();
        let filter = DeviceFilter {
            user_id: f.user_id.map(UserId::from),
            status: f.status,
        };
        let rows = devices::list(&api.db, &actor(ctx)?, &filter, &page)
            .await
            .gql()?;
        Ok(counted_connection(
            rows,
            after.is_some(),
            Counted::Devices(filter),
            |d| (d.created_at, d.id),
            Device::from,
        ))
    }
}

/// A device's new token, shown once, with its links. The token is
/// committed already: when the links cannot be built now (the database
/// failed the read), they are left out, not the token with them.
async fn credentials(
    api: &AppContext,
    device: models::Device,
    token: String,
) -> async_graphql::Result<DeviceCredentials> {
    let entry = devices::entry_point(&api.db, api.gateway_url.as_deref())
        .await
        .unwrap_or_else(|e| {
            tracing::warn!(error = %e, "access links left out of a new token's answer");
            None
        });
    let links = entry.and_then(|(url, region)| devices::links::links(&url, &region, &token));
    Ok(DeviceCredentials {
        device: device.into(),
        access_token: token.into(),
        links,
    })
}

/// Device mutations.
#[derive(Default)]
pub struct DeviceMutation;

#[Object]
impl DeviceMutation {
    /// Registers a device within the plan's device limit: the caller's,
    /// or with `userId`, for admins, that user's (an operator issuing a
    /// key for a subscriber; `FORBIDDEN` for anyone else, `NOT_FOUND` for
    /// a user that does not exist).
    #[graphql(guard = "SignedIn")]
    async fn register_device(
        &self,
        ctx: &Context<'_>,
        name: String,
        platform: String,
        user_id: Option<Uuid>,
    ) -> async_graphql::Result<DeviceCredentials> {
        let api = ctx.data::<AppContext>()?;
        let owner = user_id.map(UserId::from);
        let (device, token) = devices::register(&api.db, &actor(ctx)?, owner, &name, &platform)
            .await
            .gql()?;
        credentials(api, device, token).await
    }

    /// Revokes a device (own, or any for admins): its tunnels close. A
    /// device already revoked is answered as it is (its revocation time
    /// stands).
    #[graphql(guard = "SignedIn")]
    async fn revoke_device(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Device> {
        let api = ctx.data::<AppContext>()?;
        devices::revoke(&api.db, &actor(ctx)?, id.into())
            .await
            .map(Device::from)
            .gql()
    }

    /// Renames a device (own, or any for admins); its token, links and
    /// sessions stay as they are.
    #[graphql(guard = "SignedIn")]
    async fn rename_device(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        name: String,
    ) -> async_graphql::Result<Device> {
        let api = ctx.data::<AppContext>()?;
        devices::rename(&api.db, &actor(ctx)?, id.into(), &name)
            .await
            .map(Device::from)
            .gql()
    }

    /// Replaces a device's access token; the old one and the device JWTs
    /// exchanged for it stop working, and their tunnels close on every
    /// gateway within seconds.
    #[graphql(guard = "SignedIn")]
    async fn rotate_device_token(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<DeviceCredentials> {
        let api = ctx.data::<AppContext>()?;
        let (device, token) = devices::rotate_token(&api.db, &actor(ctx)?, id.into())
            .await
            .gql()?;
        credentials(api, device, token).await
    }
}
