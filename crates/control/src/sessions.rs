//! Sessions (a device's stay on one node through one gateway) and usage
//! reports aggregated from the usage ledger.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text, Timestamp};
use diesel_async::RunQueryDsl;

use super::pagination::{Page, PageArgs};
use crate::actor::Actor;
use crate::db::models::Session;
use crate::db::schema::{devices, sessions};
use crate::db::{Db, Statement};
use crate::db_run;
use crate::error::{AppError, AppResult};
use crate::ids::{DeviceId, OutlineNodeId, UserId};

/// Filters on the session list.
#[derive(Debug, Default, Clone)]
pub struct SessionFilter {
    /// Only this device's sessions.
    pub device_id: Option<DeviceId>,
    /// Only sessions of this user's devices.
    pub user_id: Option<UserId>,
    /// Only sessions on this Outline node.
    pub outline_node_id: Option<OutlineNodeId>,
    /// Only open (true) or ended (false) sessions.
    pub open: Option<bool>,
}

/// Applies a [`SessionFilter`] to a boxed query on `sessions`.
macro_rules! filter_sessions {
    ($q:expr, $filter:expr) => {{
        let (mut q, filter) = ($q, $filter);
        if let Some(d) = filter.device_id {
            q = q.filter(sessions::device_id.eq(d));
        }
        if let Some(u) = filter.user_id {
            q = q.filter(
                sessions::device_id.eq_any(
                    devices::table
                        .filter(devices::user_id.eq(u))
                        .select(devices::id),
                ),
            );
        }
        if let Some(n) = filter.outline_node_id {
            q = q.filter(sessions::outline_node_id.eq(n));
        }
        match filter.open {
            Some(true) => q = q.filter(sessions::ended_at.is_null()),
            Some(false) => q = q.filter(sessions::ended_at.is_not_null()),
            None => {}
        }
        q
    }};
}

/// Admin: a page of sessions, in `page.order` of their start.
pub async fn list(
    db: &Db,
    actor: &Actor,
    filter: &SessionFilter,
    page: &PageArgs,
) -> AppResult<Page<Session>> {
    actor.require_admin()?;
    // Sessions have no created_at column: page on their start.
    let rows = db_run!(db, |conn| {
        let q = filter_sessions!(
            sessions::table.select(Session::as_select()).into_boxed(),
            filter
        );
        crate::paginate!(q, sessions::started_at, sessions::id, page)
            .load(conn)
            .await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Admin: how many sessions match `filter`.
pub async fn count(db: &Db, actor: &Actor, filter: &SessionFilter) -> AppResult<i64> {
    actor.require_admin()?;
    Ok(db_run!(db, |conn| filter_sessions!(
        sessions::table.into_boxed(),
        filter
    )
    .count()
    .get_result::<i64>(conn)
    .await?))
}

/// Width of a usage bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, async_graphql::Enum)]
pub enum Granularity {
    /// One bucket per hour.
    Hour,
    /// One bucket per day.
    Day,
}

/// Bytes moved in one bucket.
#[derive(Debug, Clone, QueryableByName)]
pub struct UsageBucket {
    /// Start of the bucket (UTC).
    #[diesel(sql_type = Timestamp)]
    pub bucket: NaiveDateTime,
    /// Bytes from clients to the internet.
    #[diesel(sql_type = BigInt)]
    pub bytes_up: i64,
    /// Bytes from the internet to clients.
    #[diesel(sql_type = BigInt)]
    pub bytes_down: i64,
}

/// Most buckets one report may hold.
pub const MAX_BUCKETS: i64 = 24 * 400;

/// Usage per bucket in `[from, to)` (the hour `from` falls in counted
/// whole: the ledger keeps hours): the actor's own, or for admins any
/// user's (everyone's when `user_id` is `None`), optionally one node's
/// (for anyone: a user sees only its own usage, on that node).
/// Another user's usage is forbidden to non-admins.
pub async fn usage(
    db: &Db,
    actor: &Actor,
    user_id: Option<UserId>,
    node_id: Option<OutlineNodeId>,
    from: NaiveDateTime,
    to: NaiveDateTime,
    granularity: Granularity,
) -> AppResult<Vec<UsageBucket>> {
    if user_id.is_some_and(|u| !actor.may_act_for(u)) {
        return Err(AppError::Forbidden);
    }
    let user_id = actor.scope(user_id)?;
    let from = crate::validate::time("from", from)?;
    let to = crate::validate::time("to", to)?;
    if to <= from {
        return Err(AppError::bad("to must be after from"));
    }
    // The ledger keeps hours: the hour `from` falls in overlaps the range
    // and is counted whole (a range from 19:30 used to leave out the
    // 19:00 hour, and with it the traffic of 19:42).
    let from = hour_of(from);
    let span_hours = (to - from).num_hours();
    let buckets = match granularity {
        Granularity::Hour => span_hours,
        Granularity::Day => span_hours / 24,
    };
    if buckets > MAX_BUCKETS {
        return Err(AppError::bad(format!(
            "the range holds more than {MAX_BUCKETS} buckets"
        )));
    }
    let statement = match granularity {
        Granularity::Hour => &USAGE_BY_HOUR,
        Granularity::Day => &USAGE_BY_DAY,
    };
    let user = user_id.map(|u| u.to_string());
    let node = node_id.map(|n| n.to_string());
    Ok(db_run!(db, |conn| diesel::sql_query(statement.text(conn))
        .bind::<Timestamp, _>(from)
        .bind::<Timestamp, _>(to)
        .bind::<Nullable<Text>, _>(user)
        .bind::<Nullable<Text>, _>(node)
        .load(conn)
        .await?))
}

/// The start of the hour `t` falls in.
fn hour_of(t: NaiveDateTime) -> NaiveDateTime {
    use chrono::DurationRound;
    t.duration_trunc(chrono::TimeDelta::hours(1)).unwrap_or(t)
}

/// The usage report: closed hours from the ledger and each session's
/// current hour (the `usage_hours` view), summed per bucket, for an
/// optional user (third parameter) and node (fourth). Each sum saturates
/// at the largest BIGINT: totals reported near it (which the report
/// accepts) must not make the report fail.
macro_rules! usage_sql {
    ($bucket:literal, $up:literal, $down:literal, $from:literal, $to:literal, $user:literal, $node:literal, $null_user:literal, $null_node:literal) => {
        concat!(
            "SELECT ",
            $bucket,
            " AS bucket, ",
            $up,
            " AS bytes_up, ",
            $down,
            " AS bytes_down \
             FROM usage_hours l JOIN sessions s ON s.id = l.session_id \
             JOIN devices d ON d.id = s.device_id \
             WHERE l.recorded_at >= ",
            $from,
            " AND l.recorded_at < ",
            $to,
            " AND (",
            $null_user,
            " IS NULL OR d.user_id = ",
            $user,
            ") AND (",
            $null_node,
            " IS NULL OR s.outline_node_id = ",
            $node,
            ") GROUP BY 1 ORDER BY 1"
        )
    };
}

/// Usage per hour.
const USAGE_BY_HOUR: Statement = Statement {
    pg: usage_sql!(
        "date_trunc('hour', l.recorded_at)",
        "CAST(LEAST(COALESCE(SUM(l.delta_up), 0), 9223372036854775807) AS BIGINT)",
        "CAST(LEAST(COALESCE(SUM(l.delta_down), 0), 9223372036854775807) AS BIGINT)",
        "$1",
        "$2",
        "$3",
        "$4",
        "$3::text",
        "$4::text"
    ),
    sqlite: usage_sql!(
        "strftime('%Y-%m-%d %H:00:00', l.recorded_at)",
        "CAST(MIN(TOTAL(l.delta_up), 9223372036854775807.0) AS INTEGER)",
        "CAST(MIN(TOTAL(l.delta_down), 9223372036854775807.0) AS INTEGER)",
        "?1",
        "?2",
        "?3",
        "?4",
        "?3",
        "?4"
    ),
};

/// Usage per day.
const USAGE_BY_DAY: Statement = Statement {
    pg: usage_sql!(
        "date_trunc('day', l.recorded_at)",
        "CAST(LEAST(COALESCE(SUM(l.delta_up), 0), 9223372036854775807) AS BIGINT)",
        "CAST(LEAST(COALESCE(SUM(l.delta_down), 0), 9223372036854775807) AS BIGINT)",
        "$1",
        "$2",
        "$3",
        "$4",
        "$3::text",
        "$4::text"
    ),
    sqlite: usage_sql!(
        "strftime('%Y-%m-%d 00:00:00', l.recorded_at)",
        "CAST(MIN(TOTAL(l.delta_up), 9223372036854775807.0) AS INTEGER)",
        "CAST(MIN(TOTAL(l.delta_down), 9223372036854775807.0) AS INTEGER)",
        "?1",
        "?2",
        "?3",
        "?4",
        "?3",
        "?4"
    ),
};

/// Where a device's open session is: the node and region it runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The open session.
    pub session_id: crate::ids::SessionId,
    /// Its device.
    pub device_id: DeviceId,
    /// When it opened.
    pub since: NaiveDateTime,
    /// The node carrying it.
    pub node_id: OutlineNodeId,
    /// The node's name.
    pub node_name: String,
    /// The node's health.
    pub node_health: crate::status::Health,
    /// The node's region code.
    pub region: String,
    /// The region's display name.
    pub region_name: String,
}

/// The placements of `devices`: for each, its most recently opened session
/// that is still open and assigned to a node, one through a gateway first. Callers have already scoped
/// the devices to what the viewer may see.
pub async fn placements_of(db: &Db, ids: &[DeviceId]) -> AppResult<Vec<Placement>> {
    use crate::db::schema::{outline_nodes, regions};
    type Row = (
        crate::ids::SessionId,
        DeviceId,
        NaiveDateTime,
        OutlineNodeId,
        String,
        crate::status::Health,
        String,
        String,
    );
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let rows: Vec<Row> = db_run!(db, |conn| {
        sessions::table
            .inner_join(
                outline_nodes::table.on(sessions::outline_node_id.eq(outline_nodes::id.nullable())),
            )
            .inner_join(regions::table.on(regions::id.eq(outline_nodes::region_id)))
            .filter(sessions::device_id.eq_any(ids))
            .filter(sessions::ended_at.is_null())
            // A session through a gateway (what carries tunnels) before
            // the one the device's own question opened (our client's, at
            // each start: no gateway, no bytes).
            .order((
                sessions::device_id,
                sessions::gateway_node_id.is_null(),
                sessions::started_at.desc(),
            ))
            .select((
                sessions::id,
                sessions::device_id,
                sessions::started_at,
                outline_nodes::id,
                outline_nodes::name,
                outline_nodes::health,
                regions::code,
                regions::name,
            ))
            .load(conn)
            .await?
    });
    let mut out: Vec<Placement> = Vec::new();
    for (session_id, device_id, since, node_id, node_name, node_health, region, region_name) in rows
    {
        // Rows come newest first per device: keep the first of each.
        if out.last().is_some_and(|p| p.device_id == device_id) {
            continue;
        }
        out.push(Placement {
            session_id,
            device_id,
            since,
            node_id,
            node_name,
            node_health,
            region,
            region_name,
        });
    }
    Ok(out)
}

/// Reads, on `$conn` (inside the transaction that changed them), what the
/// session events of the sessions `$ids` say: a `Vec<SessionRow>`.
#[macro_export]
macro_rules! session_rows {
    ($conn:expr, $ids:expr) => {{
        use $crate::db::schema::{devices, outline_nodes, regions, sessions, users};
        sessions::table
            .inner_join(devices::table.inner_join(users::table))
            .left_join(
                outline_nodes::table.on(sessions::outline_node_id.eq(outline_nodes::id.nullable())),
            )
            .left_join(regions::table.on(regions::id.eq(outline_nodes::region_id)))
            .filter(sessions::id.eq_any($ids))
            .select((
                sessions::id,
                sessions::device_id,
                devices::user_id,
                users::email,
                regions::code.nullable(),
                sessions::outline_node_id,
                sessions::gateway_node_id,
                sessions::end_reason,
                sessions::bytes_up,
                sessions::bytes_down,
            ))
            .load::<$crate::feed::SessionRow>($conn)
            .await?
    }};
}

/// Ends, on `$conn` inside the transaction of the change that implies it,
/// the open sessions of the devices `$devices` selects (an expression
/// `sessions::device_id.eq_any(..)` accepts: a list of ids or a subquery)
/// with `$reason` at `$ts`, and puts their CLOSED events in `$outbox`, so
/// the session rows end with the change instead of when a gateway next
/// reports. Usage reported later for those sessions is still charged (the
/// ledger applies reports of ended sessions). Expands to the ids ended.
#[macro_export]
macro_rules! end_open_sessions {
    ($conn:expr, $outbox:expr, $devices:expr, $reason:expr, $ts:expr) => {
        $crate::end_sessions_where!(
            $conn,
            $outbox,
            $crate::db::schema::sessions::device_id.eq_any($devices),
            $reason,
            $ts
        )
    };
}

/// [`end_open_sessions!`] for the open sessions `$filter` selects (a
/// filter on `sessions`: by device, by id).
#[macro_export]
macro_rules! end_sessions_where {
    ($conn:expr, $outbox:expr, $filter:expr, $reason:expr, $ts:expr) => {{
        use $crate::db::schema::sessions;
        let ended: Vec<$crate::ids::SessionId> = diesel::update(sessions::table)
            .filter($filter)
            .filter(sessions::ended_at.is_null())
            .set((sessions::ended_at.eq($ts), sessions::end_reason.eq($reason)))
            .returning(sessions::id)
            .get_results($conn)
            .await?;
        if !ended.is_empty() {
            let rows = $crate::session_rows!($conn, &ended);
            $outbox.sessions($crate::feed::session_events(
                $crate::feed::SessionEventKind::Closed,
                rows,
                $ts,
            ));
        }
        ended
    }};
}
