//! Run-time settings: read by anyone, changed by admins.

use async_graphql::{Context, InputObject, MaybeUndefined, Object, SimpleObject};

use super::inputs::kept;
use super::{AdminOnly, AppContext, GqlResultExt, actor};
use crate::site_settings::{self, SettingsChanges, SiteSettings};

/// Settings an admin changes at run time.
#[derive(SimpleObject, Debug, Clone, Copy)]
#[graphql(name = "Settings")]
pub struct SettingsObject {
    /// Whether signUp accepts new accounts. When false, signUp answers FORBIDDEN.
    pub sign_up_enabled: bool,
}

impl From<SiteSettings> for SettingsObject {
    fn from(s: SiteSettings) -> Self {
        SettingsObject {
            sign_up_enabled: s.sign_up_enabled,
        }
    }
}

/// Changes to the settings; omitted fields stay as they are (null is
/// refused).
#[derive(InputObject, Debug, Clone, Copy)]
pub struct UpdateSettingsInput {
    /// Open or close self-service sign-up.
    pub sign_up_enabled: MaybeUndefined<bool>,
}

/// Settings queries.
#[derive(Default)]
pub struct SettingsQuery;

#[Object]
impl SettingsQuery {
    /// Public settings (anonymous callers too: the sign-in page needs them).
    async fn settings(&self, ctx: &Context<'_>) -> async_graphql::Result<SettingsObject> {
        let api = ctx.data::<AppContext>()?;
        site_settings::get(&api.db)
            .await
            .map(SettingsObject::from)
            .gql()
    }
}

/// Settings mutations.
#[derive(Default)]
pub struct SettingsMutation;

#[Object]
impl SettingsMutation {
    /// Admin: changes settings (audited as update_settings).
    #[graphql(guard = "AdminOnly")]
    async fn update_settings(
        &self,
        ctx: &Context<'_>,
        input: UpdateSettingsInput,
    ) -> async_graphql::Result<SettingsObject> {
        let api = ctx.data::<AppContext>()?;
        let changes = SettingsChanges {
            sign_up_enabled: kept("signUpEnabled", input.sign_up_enabled)?,
        };
        site_settings::update(&api.db, &actor(ctx)?, changes)
            .await
            .map(SettingsObject::from)
            .gql()
    }
}
