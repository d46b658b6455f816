//! The streaming root (`Live`): node events for clients and dashboards,
//! and the admin feed (sessions, allowances).

use async_graphql::{Context, SimpleObject, Subscription};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;
use uuid::Uuid;

use super::placement::DevicePlacement;
use super::scalars::BigInt;
use super::{AdminOnly, AppContext, GqlResultExt, LiveViewer, SignedIn, viewer};
use crate::error::AppError;
use crate::events::NodeEvent;
use crate::feed::{self, DeviceEventKind, QuotaEventKind, SessionEventKind};
use crate::ids::DeviceId;

/// Live operations.
#[derive(Default)]
pub struct Live;

/// A session opened or closed (admin feed).
#[derive(SimpleObject, Debug, Clone)]
pub struct SessionEvent {
    /// Opened or closed.
    pub kind: SessionEventKind,
    /// The session.
    pub session_id: Uuid,
    /// Its device.
    pub device_id: Uuid,
    /// The device's owner.
    pub user_id: Uuid,
    /// Owner's email, so a feed can name who without one more query.
    pub user_email: String,
    /// Region code of the Outline node.
    pub region: String,
    /// The Outline node.
    pub outline_node_id: Option<Uuid>,
    /// The gateway.
    pub gateway_node_id: Option<Uuid>,
    /// Why it closed (same values as Session.endReason); null when OPENED.
    pub end_reason: Option<String>,
    /// Upload total at the event (0 when OPENED).
    pub bytes_up: BigInt,
    /// Download total at the event (0 when OPENED).
    pub bytes_down: BigInt,
    /// When (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

impl From<feed::SessionEvent> for SessionEvent {
    fn from(e: feed::SessionEvent) -> Self {
        SessionEvent {
            kind: e.kind,
            session_id: e.session_id,
            device_id: e.device_id,
            user_id: e.user_id,
            user_email: e.user_email,
            region: e.region,
            outline_node_id: e.outline_node_id,
            gateway_node_id: e.gateway_node_id,
            end_reason: e.end_reason,
            bytes_up: BigInt(e.bytes_up),
            bytes_down: BigInt(e.bytes_down),
            at: e.at,
        }
    }
}

/// A subscription reached its allowance, started a new period or expired
/// (admin feed).
#[derive(SimpleObject, Debug, Clone)]
pub struct QuotaEvent {
    /// What happened.
    pub kind: QuotaEventKind,
    /// The subscription.
    pub subscription_id: Uuid,
    /// Its account.
    pub user_id: Uuid,
    /// The account's email.
    pub user_email: String,
    /// The allowance (null: unlimited).
    pub traffic_limit_bytes: Option<BigInt>,
    /// Used in the period after the event.
    pub traffic_used_bytes: BigInt,
    /// When (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

impl From<feed::QuotaEvent> for QuotaEvent {
    fn from(e: feed::QuotaEvent) -> Self {
        QuotaEvent {
            kind: e.kind,
            subscription_id: e.subscription_id,
            user_id: e.user_id,
            user_email: e.user_email,
            traffic_limit_bytes: e.traffic_limit_bytes.map(BigInt),
            traffic_used_bytes: BigInt(e.traffic_used_bytes),
            at: e.at,
        }
    }
}

/// Something happened to one of the caller's devices.
#[derive(SimpleObject, Debug, Clone)]
pub struct DeviceEvent {
    /// What happened.
    pub kind: DeviceEventKind,
    /// The device.
    pub device_id: Uuid,
    /// After the event: null when the device has no open session.
    pub placement: Option<DevicePlacement>,
    /// When (UTC).
    pub at: chrono::DateTime<chrono::Utc>,
}

/// A subscription's region filter, checked as a region's code is (a code
/// no region has yet is a filter that matches nothing until one does).
/// Events may have been missed: this subscriber fell behind the fan-out,
/// or this process's listener lost its database connection and made it
/// again (events published meanwhile never came).
#[derive(Debug, Clone, Copy)]
struct Missed;

/// What the live operations answer once events may have been missed.
const MISSED: &str = "events may have been missed: read again what is shown, and subscribe again";

/// `rx`'s events, each slot lost to a slow subscriber said as [`Missed`].
fn received<E: Clone + Send + 'static>(
    rx: tokio::sync::broadcast::Receiver<E>,
) -> impl Stream<Item = Result<E, Missed>> {
    BroadcastStream::new(rx).map(|ev| ev.map_err(|_| Missed))
}

/// `events`, ended with an `UNAVAILABLE` error once events may have been
/// missed (a [`Missed`] among them, or a change of `gaps`): the operation's
/// client then reads again and subscribes afresh. A stream that went on
/// showed a stale state without a word.
fn until_missed<T: Send + 'static>(
    events: impl Stream<Item = Result<T, Missed>> + Send + 'static,
    gaps: tokio::sync::watch::Receiver<u64>,
) -> impl Stream<Item = async_graphql::Result<T>> {
    let gaps = tokio_stream::wrappers::WatchStream::from_changes(gaps).map(|_| Err(Missed));
    let merged = Box::pin(events.merge(gaps));
    // Ends right after the error, not at the next item.
    futures_util::stream::unfold((merged, false), |(mut merged, over)| async move {
        if over {
            return None;
        }
        let item = merged.next().await?;
        let over = item.is_err();
        let item = item.map_err(|Missed| AppError::Unavailable(MISSED.into()).into_graphql());
        Some((item, (merged, over)))
    })
}

fn region_code(region: Option<String>) -> async_graphql::Result<Option<String>> {
    region
        .map(|r| crate::validate::code("region", &r))
        .transpose()
        .gql()
}

#[Subscription]
impl Live {
    /// Node status and load changes, optionally of one region (its code;
    /// BAD_REQUEST for what cannot be one). Users and device clients see
    /// Outline nodes' health without their addresses.
    #[graphql(guard = "LiveViewer")]
    async fn node_events(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<NodeEvent>>> {
        let api = ctx.data::<AppContext>()?;
        let region = region_code(region)?;
        let events = api.db.events();
        let kept = received(events.subscribe()).filter_map(move |ev| match ev {
            Ok(ev) if region.as_ref().is_none_or(|r| *r == ev.region) => Some(Ok(ev)),
            Ok(_) => None,
            Err(missed) => Some(Err(missed)),
        });
        Ok(until_missed(kept, events.gaps()))
    }

    /// Admin: sessions opening and closing, optionally of one region (its
    /// code, checked as for nodeEvents).
    /// Delivered to every replica (LISTEN/NOTIFY), like nodeEvents.
    #[graphql(guard = "AdminOnly")]
    async fn session_events(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<SessionEvent>>> {
        let api = ctx.data::<AppContext>()?;
        let region = region_code(region)?;
        let events = api.db.events();
        let kept = received(events.subscribe_sessions()).filter_map(move |ev| match ev {
            Ok(ev) if region.as_ref().is_none_or(|r| *r == ev.region) => Some(Ok(ev.into())),
            Ok(_) => None,
            Err(missed) => Some(Err(missed)),
        });
        Ok(until_missed(kept, events.gaps()))
    }

    /// The caller's own devices: revoked, rotated, renamed, placed on or
    /// moved off a node, marked beyond the device limit or back within it.
    #[graphql(guard = "SignedIn")]
    async fn my_device_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<DeviceEvent>>> {
        let api = ctx.data::<AppContext>()?;
        let me = viewer(ctx)?.user_id.uuid();
        let events = api.db.events();
        let sessions = received(events.subscribe_sessions()).filter_map(move |ev| match ev {
            Ok(ev) if ev.user_id == me => {
                let kind = match ev.kind {
                    SessionEventKind::Opened => DeviceEventKind::SessionOpened,
                    SessionEventKind::Closed => DeviceEventKind::SessionClosed,
                };
                Some(Ok((kind, ev.device_id, ev.at)))
            }
            Ok(_) => None,
            Err(missed) => Some(Err(missed)),
        });
        let changes = received(events.subscribe_devices()).filter_map(move |ev| match ev {
            Ok(ev) if ev.user_id == me => Some(Ok((ev.kind, ev.device_id, ev.at))),
            Ok(_) => None,
            Err(missed) => Some(Err(missed)),
        });
        let db = api.db.clone();
        let placed = futures_util::StreamExt::then(sessions.merge(changes), move |ev| {
            let db = db.clone();
            async move {
                let (kind, device, at) = ev?;
                {
                    // Where the device is after the event, as `placement`
                    // says; looked up in a task of its own, which the
                    // socket's loop cannot leave unpolled halfway (see
                    // `ws::Recheck`).
                    let lookup = tokio::spawn(async move {
                        crate::sessions::placements_of(&db, &[DeviceId::from(device)]).await
                    });
                    let placement = lookup
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .and_then(|p| p.into_iter().next())
                        .map(DevicePlacement::from);
                    Ok(DeviceEvent {
                        kind,
                        device_id: device,
                        placement,
                        at,
                    })
                }
            }
        });
        Ok(until_missed(placed, events.gaps()))
    }

    /// Admin: subscriptions that used up their traffic allowance, started
    /// a new traffic period or reached their expiry.
    #[graphql(guard = "AdminOnly")]
    async fn quota_events(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<QuotaEvent>>> {
        let api = ctx.data::<AppContext>()?;
        let events = api.db.events();
        let kept = received(events.subscribe_quota()).map(|ev| ev.map(QuotaEvent::from));
        Ok(until_missed(kept, events.gaps()))
    }
}
