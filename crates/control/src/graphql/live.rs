//! The streaming root (`Live`): node events for clients and dashboards.

use async_graphql::{Context, Subscription};
use futures_util::Stream;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::BroadcastStream;

use super::{AppContext, LiveViewer};
use crate::events::NodeEvent;

/// Live operations.
#[derive(Default)]
pub struct Live;

#[Subscription]
impl Live {
    /// Node status and load changes, optionally of one region. Users and
    /// device clients see Outline nodes' health without their addresses.
    #[graphql(guard = "LiveViewer")]
    async fn node_events(
        &self,
        ctx: &Context<'_>,
        region: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = NodeEvent>> {
        let api = ctx.data::<AppContext>()?;
        let region = region.map(|r| r.trim().to_lowercase());
        let rx = api.db.events().subscribe();
        Ok(BroadcastStream::new(rx).filter_map(move |ev| match ev {
            Ok(ev) if region.as_ref().is_none_or(|r| *r == ev.region) => Some(ev),
            _ => None,
        }))
    }
}
