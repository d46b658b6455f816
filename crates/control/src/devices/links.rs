//! Ready-to-use access links for a device token: the Outline dynamic
//! access key (`ssconf://`) and a SIP002 `ss://` link for v2ray-plugin
//! clients, through the gateway devices connect to.

use base64::Engine;
use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::db::Db;
use crate::db::models::{Region, SecretText, now};
use crate::db::schema::{gateway_nodes, regions};
use crate::db_run;
use crate::error::AppResult;
use crate::ids::RegionId;
use crate::status::{Health, NodeStatus, lease};

/// Ready-to-use access links for a device token.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct AccessLinks {
    /// `ssconf://` dynamic access key for Outline apps (1.15+).
    pub ssconf: SecretText,
    /// SIP002 `ss://` link for clients with v2ray-plugin (WebSocket over
    /// TLS). TCP only: v2ray-plugin carries no UDP, so a client started
    /// from it must run TCP-only; the `ssconf` key carries UDP.
    pub sip002: SecretText,
}

/// A registered gateway as the entry point sees it: its public URL, its
/// region and whether it is active, best first (see [`known_gateways`]).
type Known = (String, RegionId, NodeStatus);

/// How sure the control plane is that a gateway takes tunnels, best
/// first: it reported within its lease; it never reported (not started
/// yet, or a front that does not report); it reported once and has been
/// silent past its lease, or said it is down.
fn liveness(health: Health, last_heartbeat_at: Option<NaiveDateTime>, at: NaiveDateTime) -> u8 {
    match last_heartbeat_at {
        Some(t) if t > at - lease() && health != Health::Down => 0,
        None => 1,
        Some(_) => 2,
    }
}

/// Every registered gateway (see [`Known`]), best first: by
/// [`liveness`], then in the order of registration. Links and clients go
/// to the first that fits, so a gateway registered but never started, or
/// one that died, is passed over while a live one is there.
async fn known_gateways(db: &Db) -> AppResult<Vec<Known>> {
    let rows: Vec<(String, RegionId, NodeStatus, Health, Option<NaiveDateTime>)> =
        db_run!(db, |conn| gateway_nodes::table
            .order((gateway_nodes::created_at.asc(), gateway_nodes::id.asc()))
            .select((
                gateway_nodes::public_url,
                gateway_nodes::region_id,
                gateway_nodes::status,
                gateway_nodes::health,
                gateway_nodes::last_heartbeat_at,
            ))
            .load(conn)
            .await?);
    let at = now();
    let mut ranked: Vec<(u8, Known)> = rows
        .into_iter()
        .map(|(url, region, status, health, beat)| {
            (liveness(health, beat, at), (url, region, status))
        })
        .collect();
    // Stable: registration order within a rank.
    ranked.sort_by_key(|(rank, _)| *rank);
    Ok(ranked.into_iter().map(|(_, k)| k).collect())
}

/// Whether two gateway URLs name the same place.
pub(crate) fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// Where devices connect and the region whose key they get (`gateways`
/// best first): the configured URL, in the region of the gateway
/// registered at it (or, when none is, of the best active gateway: a
/// front for the gateways); a configured URL whose registered gateway is
/// not active is passed over for an active gateway, if there is one.
/// Otherwise the best active gateway. `None` for the region: no gateway
/// is active yet.
fn entry(configured: Option<&str>, gateways: &[Known]) -> Option<(String, Option<RegionId>)> {
    let first_active = gateways.iter().find(|g| g.2 == NodeStatus::Active);
    if let Some(url) = configured {
        match gateways.iter().find(|g| same_url(&g.0, url)) {
            // Passed over for an active one; with none, it still is where
            // devices are meant to go (links are given only with a new
            // token: none at all would need another rotation later).
            Some(g) if g.2 == NodeStatus::Active || first_active.is_none() => {
                return Some((url.to_owned(), Some(g.1)));
            }
            Some(_) => {}
            None => return Some((url.to_owned(), first_active.map(|g| g.1))),
        }
    }
    first_active.map(|g| (g.0.clone(), Some(g.1)))
}

/// The gateway that devices of `region` connect through (its key is the
/// region's): the configured URL unless a gateway registered at it is of
/// another region or not active; else the best active gateway of the
/// region (`gateways` best first); else none (no gateway of another region can take the key).
fn url_for(configured: Option<&str>, gateways: &[Known], region: RegionId) -> Option<String> {
    if let Some(url) = configured {
        let registered = gateways.iter().find(|g| same_url(&g.0, url));
        if registered.is_none_or(|g| g.1 == region && g.2 == NodeStatus::Active) {
            return Some(url.to_owned());
        }
    }
    gateways
        .iter()
        .find(|g| g.1 == region && g.2 == NodeStatus::Active)
        .map(|g| g.0.clone())
}

/// The first region created, if any.
async fn first_region(db: &Db) -> AppResult<Option<Region>> {
    Ok(db_run!(db, |conn| regions::table
        .order(regions::created_at.asc())
        .select(Region::as_select())
        .first(conn)
        .await
        .optional()?))
}

/// Where devices connect: the gateway's public URL and the pool key of its
/// region (see [`entry`]); with no active gateway, the configured URL in
/// the first region.
pub async fn entry_point(
    db: &Db,
    configured_url: Option<&str>,
) -> AppResult<Option<(String, Region)>> {
    let Some((url, region)) = entry(configured_url, &known_gateways(db).await?) else {
        return Ok(None);
    };
    let region = match region {
        Some(id) => db_run!(db, |conn| regions::table
            .find(id)
            .select(Region::as_select())
            .first(conn)
            .await
            .optional()?),
        None => first_region(db).await?,
    };
    Ok(region.map(|r| (url, r)))
}

/// The default region: the region [`entry_point`] sends devices to, or
/// the first region when there is no gateway yet. A device that asks for
/// a node without naming a region and has no placement gets one here.
pub async fn default_region(db: &Db, configured_url: Option<&str>) -> AppResult<Option<RegionId>> {
    match entry(configured_url, &known_gateways(db).await?) {
        Some((_, Some(region))) => Ok(Some(region)),
        _ => Ok(first_region(db).await?.map(|r| r.id)),
    }
}

/// The gateway a device should tunnel through to reach `region`'s nodes
/// (see [`url_for`]).
pub async fn gateway_url_for(
    db: &Db,
    configured_url: Option<&str>,
    region: RegionId,
) -> AppResult<Option<String>> {
    Ok(url_for(configured_url, &known_gateways(db).await?, region))
}

/// What a URL component may hold unencoded: RFC 3986's unreserved set.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Port of the links when the gateway URL names none: v2ray-plugin speaks
/// TLS whatever the URL's scheme.
const DEFAULT_PORT: u16 = 443;

/// Builds the links for `token` through the gateway at `gateway_url`
/// (`None` when it is not a URL with a host).
pub fn links(gateway_url: &str, region: &Region, token: &str) -> Option<AccessLinks> {
    let url = url::Url::parse(gateway_url).ok()?;
    let host = url.host_str().filter(|h| !h.is_empty())?;
    let authority = match url.port() {
        Some(p) => format!("{host}:{p}"),
        None => host.to_owned(),
    };
    let port = url.port().unwrap_or(DEFAULT_PORT);
    let userinfo = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}:{}",
        region.pool_method,
        region.pool_secret.expose()
    ));
    let plugin = format!("v2ray-plugin;tls;host={host};path=/ws/{token}/tcp;mux=0");
    Some(AccessLinks {
        ssconf: format!("ssconf://{authority}/c/{token}").into(),
        sip002: format!(
            "ss://{userinfo}@{host}:{port}/?plugin={}#httvps",
            utf8_percent_encode(&plugin, UNRESERVED)
        )
        .into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gw(url: &str, region: RegionId, status: NodeStatus) -> Known {
        (url.to_owned(), region, status)
    }

    #[test]
    fn a_configured_gateway_carries_its_own_region_only() {
        let (eu, us) = (RegionId::random(), RegionId::random());
        let known = [
            gw("https://eu.example", eu, NodeStatus::Active),
            gw("https://us.example", us, NodeStatus::Active),
        ];
        let us_url = Some("https://us.example/");
        assert_eq!(
            entry(us_url, &known),
            Some(("https://us.example/".to_owned(), Some(us)))
        );
        assert_eq!(
            url_for(us_url, &known, eu).as_deref(),
            Some("https://eu.example")
        );
        assert_eq!(
            url_for(us_url, &known, us).as_deref(),
            Some("https://us.example/")
        );
        // A front no gateway is registered at: always used, in the first
        // active gateway's region for the links.
        let front = Some("https://vpn.example");
        assert_eq!(
            entry(front, &known),
            Some(("https://vpn.example".to_owned(), Some(eu)))
        );
        assert_eq!(
            url_for(front, &known, us).as_deref(),
            Some("https://vpn.example")
        );
        // Its gateway disabled: passed over; a region with no active
        // gateway has none to name.
        let known = [
            gw("https://eu.example", eu, NodeStatus::Active),
            gw("https://us.example", us, NodeStatus::Disabled),
        ];
        assert_eq!(
            entry(us_url, &known),
            Some(("https://eu.example".to_owned(), Some(eu)))
        );
        assert_eq!(url_for(us_url, &known, us), None);
        assert_eq!(url_for(None, &known, us), None);
        let alone = [gw("https://us.example", us, NodeStatus::Draining)];
        assert_eq!(
            entry(us_url, &alone),
            Some(("https://us.example/".to_owned(), Some(us))),
            "no other gateway: still the configured one"
        );
        assert_eq!(entry(None, &[]), None);
    }

    fn region() -> Region {
        Region {
            id: RegionId::random(),
            code: "eu".into(),
            name: "EU".into(),
            pool_method: "aes-128-gcm".into(),
            pool_secret: "s3cret".into(),
            created_at: crate::db::models::now(),
        }
    }

    #[test]
    fn links_name_the_gateway_and_encode_the_plugin_options() {
        let l = links("https://gw.example.com/", &region(), "tok-en_1").expect("links");
        assert_eq!(l.ssconf.expose(), "ssconf://gw.example.com/c/tok-en_1");
        let userinfo =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("aes-128-gcm:s3cret");
        assert_eq!(
            l.sip002.expose(),
            format!(
                "ss://{userinfo}@gw.example.com:443/?plugin=v2ray-plugin%3Btls%3Bhost%3Dgw.example.com%3Bpath%3D%2Fws%2Ftok-en_1%2Ftcp%3Bmux%3D0#httvps"
            )
        );
    }

    #[test]
    fn an_explicit_port_is_kept_and_ipv6_hosts_keep_their_brackets() {
        let l = links("https://localhost:8443", &region(), "t").expect("links");
        assert_eq!(l.ssconf.expose(), "ssconf://localhost:8443/c/t");
        assert!(
            l.sip002.expose().contains("@localhost:8443/?plugin="),
            "{}",
            l.sip002.expose()
        );
        let l = links("https://[::1]:9000/x", &region(), "t").expect("links");
        assert_eq!(l.ssconf.expose(), "ssconf://[::1]:9000/c/t");
        assert!(
            l.sip002.expose().contains("@[::1]:9000/"),
            "{}",
            l.sip002.expose()
        );
        // Plain HTTP still gets TLS links on 443: the plugin speaks TLS.
        let l = links("http://gw.example.com", &region(), "t").expect("links");
        assert!(
            l.sip002.expose().contains("@gw.example.com:443/"),
            "{}",
            l.sip002.expose()
        );
        assert!(links("not a url", &region(), "t").is_none());
    }
}
