//! Row structs, one per table, shared by both backends.

use chrono::NaiveDateTime;
use diesel::prelude::*;

use super::schema::*;

/// A row of `users`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = users)]
pub struct User {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub role: String,
    pub status: String,
    pub token_version: i64,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A row of `plans`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = plans)]
pub struct Plan {
    pub id: String,
    pub name: String,
    pub price_cents: i64,
    pub currency: String,
    pub duration_days: i32,
    pub traffic_limit_bytes: Option<i64>,
    pub device_limit: i32,
    pub reset_period: String,
    pub archived: bool,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A row of `regions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = regions)]
pub struct Region {
    pub id: String,
    pub code: String,
    pub name: String,
    pub pool_method: String,
    pub pool_secret: String,
    pub created_at: NaiveDateTime,
}

/// A row of `subscriptions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = subscriptions)]
pub struct Subscription {
    pub id: String,
    pub user_id: String,
    pub plan_id: String,
    pub status: String,
    pub starts_at: NaiveDateTime,
    pub expires_at: NaiveDateTime,
    pub traffic_limit_bytes: Option<i64>,
    pub traffic_used_bytes: i64,
    pub period_start: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A row of `devices`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = devices)]
pub struct Device {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub platform: String,
    pub status: String,
    pub token_hash: String,
    pub last_seen_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
    pub revoked_at: Option<NaiveDateTime>,
}

/// A row of `outline_nodes`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = outline_nodes)]
pub struct OutlineNode {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub method: String,
    pub secret: String,
    pub uses_pool_key: bool,
    pub status: String,
    pub health: String,
    pub capacity: i32,
    pub token_hash: String,
    pub last_heartbeat_at: Option<NaiveDateTime>,
    pub load: i32,
    pub bytes_in: i64,
    pub bytes_out: i64,
    pub version: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A row of `gateway_nodes`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = gateway_nodes)]
pub struct GatewayNode {
    pub id: String,
    pub region_id: String,
    pub name: String,
    pub public_url: String,
    pub token_hash: String,
    pub status: String,
    pub health: String,
    pub last_heartbeat_at: Option<NaiveDateTime>,
    pub open_tunnels: i32,
    pub version: Option<String>,
    pub created_at: NaiveDateTime,
    pub updated_at: NaiveDateTime,
}

/// A row of `sessions`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = sessions)]
pub struct Session {
    pub id: String,
    pub device_id: String,
    pub outline_node_id: Option<String>,
    pub gateway_node_id: Option<String>,
    pub started_at: NaiveDateTime,
    pub last_activity_at: NaiveDateTime,
    pub ended_at: Option<NaiveDateTime>,
    pub bytes_up: i64,
    pub bytes_down: i64,
    pub last_seq: i64,
    pub end_reason: Option<String>,
}

/// A row of `usage_ledger`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = usage_ledger)]
pub struct UsageEntry {
    pub id: String,
    pub session_id: String,
    pub seq: i64,
    pub total_up: i64,
    pub total_down: i64,
    pub delta_up: i64,
    pub delta_down: i64,
    pub recorded_at: NaiveDateTime,
}

/// A row of `refresh_tokens`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = refresh_tokens)]
pub struct RefreshToken {
    pub id: String,
    pub user_id: String,
    pub family_id: String,
    pub token_hash: String,
    pub expires_at: NaiveDateTime,
    pub used_at: Option<NaiveDateTime>,
    pub revoked_at: Option<NaiveDateTime>,
    pub created_at: NaiveDateTime,
}

/// A row of `audit_log`.
#[derive(Debug, Clone, Queryable, Selectable, Insertable, Identifiable)]
#[diesel(table_name = audit_log)]
pub struct AuditEntry {
    pub id: String,
    pub actor_user_id: Option<String>,
    pub action: String,
    pub target_type: String,
    pub target_id: Option<String>,
    pub details: String,
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

/// A new random id.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().to_string()
}
