//! Lists of nodes and gateways (admins) and loading them by id.

use diesel::prelude::*;
use diesel_async::RunQueryDsl;

use crate::actor::Actor;
use crate::catalogue;
use crate::db::Db;
use crate::db::models::{GatewayNode, OutlineNode};
use crate::db::schema::{gateway_nodes, outline_nodes};
use crate::error::AppResult;
use crate::ids::{GatewayNodeId, OutlineNodeId, RegionId};
use crate::pagination::{Page, PageArgs};
use crate::status::NodeStatus;
use crate::{db_run, paginate};

/// Filters on the node lists.
#[derive(Debug, Default, Clone)]
pub struct NodeFilter {
    /// Only this region (by code).
    pub region: Option<String>,
    /// Only this status.
    pub status: Option<NodeStatus>,
}

/// The region filter: `None` for all regions, `Some(None)` for a region
/// that does not exist (an empty list).
async fn region_filter(db: &Db, filter: &NodeFilter) -> AppResult<Option<Option<RegionId>>> {
    Ok(match &filter.region {
        None => None,
        Some(code) => Some(catalogue::region_by_code(db, code).await?.map(|r| r.id)),
    })
}

/// Admin: a page of Outline nodes.
pub async fn list_outline(
    db: &Db,
    actor: &Actor,
    filter: &NodeFilter,
    page: &PageArgs,
) -> AppResult<Page<OutlineNode>> {
    actor.require_admin()?;
    let region = region_filter(db, filter).await?;
    if let Some(None) = region {
        return Ok(Page {
            rows: vec![],
            has_next: false,
        });
    }
    let rows = db_run!(db, |conn| {
        let mut q = outline_nodes::table
            .select(OutlineNode::as_select())
            .into_boxed();
        if let Some(Some(r)) = region {
            q = q.filter(outline_nodes::region_id.eq(r));
        }
        if let Some(s) = filter.status {
            q = q.filter(outline_nodes::status.eq(s));
        }
        paginate!(q, outline_nodes, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Admin: a page of gateways.
pub async fn list_gateways(
    db: &Db,
    actor: &Actor,
    filter: &NodeFilter,
    page: &PageArgs,
) -> AppResult<Page<GatewayNode>> {
    actor.require_admin()?;
    let region = region_filter(db, filter).await?;
    if let Some(None) = region {
        return Ok(Page {
            rows: vec![],
            has_next: false,
        });
    }
    let rows = db_run!(db, |conn| {
        let mut q = gateway_nodes::table
            .select(GatewayNode::as_select())
            .into_boxed();
        if let Some(Some(r)) = region {
            q = q.filter(gateway_nodes::region_id.eq(r));
        }
        if let Some(s) = filter.status {
            q = q.filter(gateway_nodes::status.eq(s));
        }
        paginate!(q, gateway_nodes, page).load(conn).await?
    });
    Ok(Page::from_fetch(rows, page.first))
}

/// Loads Outline nodes by id.
pub async fn outline_by_ids(db: &Db, ids: &[OutlineNodeId]) -> AppResult<Vec<OutlineNode>> {
    Ok(db_run!(db, |conn| outline_nodes::table
        .filter(outline_nodes::id.eq_any(ids))
        .select(OutlineNode::as_select())
        .load(conn)
        .await?))
}

/// Loads gateways by id.
pub async fn gateways_by_ids(db: &Db, ids: &[GatewayNodeId]) -> AppResult<Vec<GatewayNode>> {
    Ok(db_run!(db, |conn| gateway_nodes::table
        .filter(gateway_nodes::id.eq_any(ids))
        .select(GatewayNode::as_select())
        .load(conn)
        .await?))
}
