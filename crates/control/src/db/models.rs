//! Row structs, one per table, shared by both backends. Ids are newtypes
//! and closed sets of values are enums, so a row says what it holds. A
//! secret or a hash of one is a [`SecretText`], which formats as
//! `[redacted]`: a row in a log line or a panic message leaks nothing.

use chrono::NaiveDateTime;
use diesel::prelude::*;

pub use super::redacted::SecretText;
use super::schema::*;
use crate::ids::{
    DeviceId, GatewayNodeId, OutlineNodeId, PlanId, RegionId, SessionId, SubscriptionId, UserId,
};
use crate::status::{
    DeviceStatus, EndReason, Health, NodeStatus, ResetPeriod, Role, SubscriptionStatus, UserStatus,
};

/// A row of `users`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = users)]
pub struct User {
    /// Its id.
    pub id: UserId,
    /// Email address, lower case.
    pub email: String,
    /// argon2id hash of the password.
    pub password_hash: SecretText,
    /// Admin or user.
    pub role: Role,
    /// Active or disabled.
    pub status: UserStatus,
    /// Bumped to invalidate every access token issued before.
    pub token_version: i64,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

/// A row of `plans`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = plans)]
pub struct Plan {
    /// Its id.
    pub id: PlanId,
    /// Unique name.
    pub name: String,
    /// Price in cents of `currency`.
    pub price_cents: i64,
    /// ISO currency code.
    pub currency: String,
    /// Length of a subscription, in days.
    pub duration_days: i32,
    /// Traffic allowance per period in bytes; `None` is unlimited.
    pub traffic_limit_bytes: Option<i64>,
    /// Most active devices.
    pub device_limit: i32,
    /// When the allowance starts over.
    pub reset_period: ResetPeriod,
    /// No new grants when archived.
    pub archived: bool,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
}

/// A row of `regions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = regions)]
pub struct Region {
    /// Its id.
    pub id: RegionId,
    /// Short unique code, e.g. `eu-west`.
    pub code: String,
    /// Display name.
    pub name: String,
    /// Cipher of the pool key.
    pub pool_method: String,
    /// The pool key every pool-key node of the region shares.
    pub pool_secret: SecretText,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
}

/// A row of `subscriptions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = subscriptions)]
pub struct Subscription {
    /// Its id.
    pub id: SubscriptionId,
    /// The subscriber.
    pub user_id: UserId,
    /// The plan it was granted from.
    pub plan_id: PlanId,
    /// Stored status (at most one `active` per user).
    pub status: SubscriptionStatus,
    /// Start of the paid time (UTC).
    pub starts_at: NaiveDateTime,
    /// End of the paid time (UTC), exclusive.
    pub expires_at: NaiveDateTime,
    /// Traffic allowance per period in bytes; `None` is unlimited.
    pub traffic_limit_bytes: Option<i64>,
    /// Traffic used in the current period.
    pub traffic_used_bytes: i64,
    /// Start of the current traffic period (UTC).
    pub period_start: NaiveDateTime,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
    /// How many active devices it covers (the plan's limit when it was
    /// granted).
    pub device_limit: i32,
}

/// A row of `devices`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = devices)]
pub struct Device {
    /// Its id.
    pub id: DeviceId,
    /// The owner.
    pub user_id: UserId,
    /// Name given by the owner.
    pub name: String,
    /// Platform, lower case.
    pub platform: String,
    /// Active or revoked.
    pub status: DeviceStatus,
    /// Hash of its access token.
    pub token_hash: SecretText,
    /// Last time it was assigned a node (UTC).
    pub last_seen_at: Option<NaiveDateTime>,
    /// Registration time (UTC).
    pub created_at: NaiveDateTime,
    /// Revocation time (UTC).
    pub revoked_at: Option<NaiveDateTime>,
    /// Whether it is beyond its owner's device limit: active, but one of
    /// more active devices than the subscription covers (the newest ones
    /// are), so it may not connect until another is revoked.
    pub over_limit: bool,
}

/// A row of `outline_nodes`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = outline_nodes)]
pub struct OutlineNode {
    /// Its id.
    pub id: OutlineNodeId,
    /// Its region.
    pub region_id: RegionId,
    /// Unique name.
    pub name: String,
    /// Address gateways reach it at.
    pub host: String,
    /// Port.
    pub port: i32,
    /// Cipher.
    pub method: String,
    /// Shadowsocks password.
    pub secret: SecretText,
    /// Whether its key is its region's pool key.
    pub uses_pool_key: bool,
    /// Admin status.
    pub status: NodeStatus,
    /// Whether it answers.
    pub health: Health,
    /// Most concurrent sessions it should carry.
    pub capacity: i32,
    /// Hash of its machine token.
    pub token_hash: SecretText,
    /// Last heartbeat (UTC).
    pub last_heartbeat_at: Option<NaiveDateTime>,
    /// Open connections at the last heartbeat.
    pub load: i32,
    /// Bytes received, at the last heartbeat.
    pub bytes_in: i64,
    /// Bytes sent, at the last heartbeat.
    pub bytes_out: i64,
    /// Software version it reported.
    pub version: Option<String>,
    /// Registration time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
    /// Until when the one-time token of its enrollment string works if
    /// neither redeemed nor used (`None`: redeemed or used).
    pub enroll_expires_at: Option<NaiveDateTime>,
}

/// A row of `gateway_nodes`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = gateway_nodes)]
pub struct GatewayNode {
    /// Its id.
    pub id: GatewayNodeId,
    /// Its region.
    pub region_id: RegionId,
    /// Unique name.
    pub name: String,
    /// URL clients connect to.
    pub public_url: String,
    /// Hash of its machine token.
    pub token_hash: SecretText,
    /// Admin status.
    pub status: NodeStatus,
    /// Whether it heartbeats.
    pub health: Health,
    /// Last heartbeat (UTC).
    pub last_heartbeat_at: Option<NaiveDateTime>,
    /// Open tunnels at the last heartbeat.
    pub open_tunnels: i32,
    /// Software version it reported.
    pub version: Option<String>,
    /// Registration time (UTC).
    pub created_at: NaiveDateTime,
    /// Last change (UTC).
    pub updated_at: NaiveDateTime,
    /// Until when the one-time token of its enrollment string works if
    /// neither redeemed nor used (`None`: redeemed or used).
    pub enroll_expires_at: Option<NaiveDateTime>,
}

/// A row of `sessions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = sessions)]
pub struct Session {
    /// Its id.
    pub id: SessionId,
    /// The device.
    pub device_id: DeviceId,
    /// The node (null once deleted).
    pub outline_node_id: Option<OutlineNodeId>,
    /// The gateway (null for direct clients, or once deleted).
    pub gateway_node_id: Option<GatewayNodeId>,
    /// Start (UTC).
    pub started_at: NaiveDateTime,
    /// Last traffic or tunnel (UTC).
    pub last_activity_at: NaiveDateTime,
    /// End (UTC); `None` while open.
    pub ended_at: Option<NaiveDateTime>,
    /// Bytes from the client (cumulative).
    pub bytes_up: i64,
    /// Bytes to the client (cumulative).
    pub bytes_down: i64,
    /// Sequence number of the report that set the totals.
    pub last_seq: i64,
    /// Why it ended.
    pub end_reason: Option<EndReason>,
    /// The generation of the device's access token it was opened with
    /// ([`crate::auth::token_generation`]; 0: not recorded).
    pub token_generation: i64,
    /// The device's open session through the same gateway this one was
    /// opened beside (the newest, on a node that no longer took new
    /// tunnels), if any: at most one session is open per device, gateway
    /// and predecessor (`sessions_one_open`).
    pub supersedes: Option<SessionId>,
}

/// A row of `usage_ledger`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = usage_ledger)]
pub struct UsageEntry {
    /// Its id.
    pub id: String,
    /// The session.
    pub session_id: SessionId,
    /// Sequence number of the latest report counted.
    pub seq: i64,
    /// Cumulative bytes up at that report.
    pub total_up: i64,
    /// Cumulative bytes down at that report.
    pub total_down: i64,
    /// Bytes up gained in the hour.
    pub delta_up: i64,
    /// Bytes down gained in the hour.
    pub delta_down: i64,
    /// The hour's start (UTC).
    pub recorded_at: NaiveDateTime,
}

/// A row of `refresh_tokens`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshToken {
    /// Its id.
    pub id: String,
    /// Whose.
    pub user_id: UserId,
    /// The family it rotates in (revoked together on reuse).
    pub family_id: String,
    /// Hash of the token.
    pub token_hash: SecretText,
    /// End of validity (UTC).
    pub expires_at: NaiveDateTime,
    /// When it was exchanged (single use).
    pub used_at: Option<NaiveDateTime>,
    /// When it was revoked.
    pub revoked_at: Option<NaiveDateTime>,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
}

/// A row of `token_families`: one log-in and the tokens rotated from it.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = token_families)]
pub struct TokenFamily {
    /// Its id (carried in access tokens as `fam`).
    pub id: String,
    /// Whose.
    pub user_id: UserId,
    /// When it was revoked: its access and refresh tokens stop working.
    pub revoked_at: Option<NaiveDateTime>,
    /// Creation time (UTC).
    pub created_at: NaiveDateTime,
}

/// A row of `audit_log`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    /// Its id.
    pub id: String,
    /// The admin who acted (`None`: the operator at the command line, or a
    /// deleted account).
    pub actor_user_id: Option<UserId>,
    /// What was done, e.g. `grant_subscription`.
    pub action: String,
    /// Kind of thing changed.
    pub target_type: String,
    /// Id of the thing changed.
    pub target_id: Option<String>,
    /// Details as JSON (never secrets).
    pub details: String,
    /// When (UTC).
    pub created_at: NaiveDateTime,
}

/// Now, in UTC without zone, truncated to microseconds so values round-trip
/// identically through PostgreSQL and SQLite.
pub fn now() -> NaiveDateTime {
    let n = chrono::Utc::now().naive_utc();
    let micros = n.and_utc().timestamp_micros();
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|d| d.naive_utc())
        .unwrap_or(n)
}

/// A new random id for rows whose id nothing refers to by type (ledger,
/// audit, refresh tokens).
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
