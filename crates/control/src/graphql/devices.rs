//! Devices over GraphQL.

use async_graphql::connection::Connection;
use async_graphql::dataloader::DataLoader;
use async_graphql::{ComplexObject, Context, Enum, InputObject, Object, SimpleObject};
use uuid::Uuid;

use super::accounts::User;
use super::loaders::{CurrentSubscriptionOf, DbLoader, UserId, loader_error};
use super::subscriptions::Subscription;
use super::{AppContext, GqlResultExt, SignedIn, connection, viewer};
use crate::db::models;
use crate::devices::{self, AccessLinks, Actor, DeviceFilter};
use crate::events::AccessEvent;
use crate::pagination::PageArgs;

/// Whether a device may connect.
#[derive(Enum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeviceStatus {
    /// Its token works.
    Active,
    /// Its token was revoked.
    Revoked,
}

/// A user's device.
#[derive(SimpleObject, Clone)]
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
    #[graphql(skip)]
    pub user_id: String,
}

impl From<models::Device> for Device {
    fn from(d: models::Device) -> Self {
        Device {
            id: super::uuid(&d.id),
            name: d.name,
            platform: d.platform,
            status: if d.status == "active" {
                DeviceStatus::Active
            } else {
                DeviceStatus::Revoked
            },
            last_seen_at: d.last_seen_at.map(|t| t.and_utc()),
            created_at: d.created_at.and_utc(),
            revoked_at: d.revoked_at.map(|t| t.and_utc()),
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
            .load_one(UserId(self.user_id.clone()))
            .await
            .map_err(loader_error)?
            .map(User::from))
    }

    /// The owner's current subscription.
    async fn subscription(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Subscription>> {
        let loader = ctx.data::<DataLoader<DbLoader>>()?;
        Ok(loader
            .load_one(CurrentSubscriptionOf(self.user_id.clone()))
            .await
            .map_err(loader_error)?
            .map(Subscription::from))
    }
}

/// What `registerDevice` and `rotateDeviceToken` return: the token and links
/// are shown this once.
#[derive(SimpleObject)]
pub struct DeviceCredentials {
    /// The device.
    pub device: Device,
    /// Opaque access token for tunnel URLs and `Authorization: Bearer`.
    pub access_token: String,
    /// Ready-to-use links; null until a gateway URL is known.
    pub links: Option<AccessLinks>,
}

/// Filters on `devices`.
#[derive(InputObject, Default)]
pub struct DeviceFilterInput {
    /// Admins: only this user's devices.
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
    ) -> async_graphql::Result<Connection<String, Device>> {
        let api = ctx.data::<AppContext>()?;
        let v = viewer(ctx)?;
        let page = PageArgs::new(first, after.as_deref()).gql()?;
        let f = filter.unwrap_or_default();
        let user_id = if v.is_admin() {
            f.user_id.map(|i| i.to_string())
        } else {
            Some(v.user_id.clone())
        };
        let status = f.status.map(|s| {
            if s == DeviceStatus::Active {
                "active"
            } else {
                "revoked"
            }
            .to_owned()
        });
        let rows = devices::list(&api.db, &DeviceFilter { user_id, status }, &page)
            .await
            .gql()?;
        Ok(connection(
            rows,
            after.is_some(),
            |d| (d.created_at, d.id.clone()),
            Device::from,
        ))
    }
}

async fn credentials(
    api: &AppContext,
    device: models::Device,
    token: String,
) -> async_graphql::Result<DeviceCredentials> {
    let entry = devices::entry_point(&api.db, api.gateway_url.as_deref())
        .await
        .gql()?;
    let links = entry.map(|(url, region)| devices::links(&url, &region, &token));
    Ok(DeviceCredentials {
        device: device.into(),
        access_token: token,
        links,
    })
}

/// Device mutations.
#[derive(Default)]
pub struct DeviceMutation;

#[Object]
impl DeviceMutation {
    /// Registers a device of the caller within the plan's device limit.
    #[graphql(guard = "SignedIn")]
    async fn register_device(
        &self,
        ctx: &Context<'_>,
        name: String,
        platform: String,
    ) -> async_graphql::Result<DeviceCredentials> {
        let api = ctx.data::<AppContext>()?;
        let (device, token) = devices::register(&api.db, &viewer(ctx)?.user_id, &name, &platform)
            .await
            .gql()?;
        credentials(api, device, token).await
    }

    /// Revokes a device (own, or any for admins): its tunnels close.
    #[graphql(guard = "SignedIn")]
    async fn revoke_device(&self, ctx: &Context<'_>, id: Uuid) -> async_graphql::Result<Device> {
        let api = ctx.data::<AppContext>()?;
        let v = viewer(ctx)?;
        let device = devices::revoke(
            &api.db,
            Actor {
                user_id: &v.user_id,
                admin: v.is_admin(),
            },
            &id.to_string(),
        )
        .await
        .gql()?;
        api.events
            .access_changed(AccessEvent::new("device_revoked", Some(&device.user_id)))
            .await;
        Ok(Device::from(device))
    }

    /// Replaces a device's access token; the old one stops working.
    #[graphql(guard = "SignedIn")]
    async fn rotate_device_token(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> async_graphql::Result<DeviceCredentials> {
        let api = ctx.data::<AppContext>()?;
        let v = viewer(ctx)?;
        let (device, token) = devices::rotate_token(
            &api.db,
            Actor {
                user_id: &v.user_id,
                admin: v.is_admin(),
            },
            &id.to_string(),
        )
        .await
        .gql()?;
        api.events
            .access_changed(AccessEvent::new(
                "device_token_rotated",
                Some(&device.user_id),
            ))
            .await;
        credentials(api, device, token).await
    }
}
