//! Ready-to-use access links for a device token: the Outline dynamic
//! access key (`ssconf://`) and a SIP002 `ss://` link for v2ray-plugin
//! clients, through the gateway devices connect to.

use base64::Engine;
use diesel::prelude::*;
use diesel_async::RunQueryDsl;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use crate::db::Db;
use crate::db::models::{GatewayNode, Region, SecretText};
use crate::db::schema::{gateway_nodes, regions};
use crate::db_run;
use crate::error::AppResult;
use crate::ids::RegionId;
use crate::status::NodeStatus;

/// Ready-to-use access links for a device token.
#[derive(Debug, Clone, async_graphql::SimpleObject)]
pub struct AccessLinks {
    /// `ssconf://` dynamic access key for Outline apps (1.15+).
    pub ssconf: SecretText,
    /// SIP002 `ss://` link for clients with v2ray-plugin (WebSocket over TLS).
    pub sip002: SecretText,
}

/// Where devices connect: the gateway's public URL and the pool key of its
/// region. The configured URL wins; otherwise the first active gateway.
pub async fn entry_point(
    db: &Db,
    configured_url: Option<&str>,
) -> AppResult<Option<(String, Region)>> {
    let (gateways, first_region): (Vec<(GatewayNode, Region)>, Option<Region>) =
        db_run!(db, |conn| {
            let g = gateway_nodes::table
                .inner_join(regions::table)
                .filter(gateway_nodes::status.eq(NodeStatus::Active))
                .order(gateway_nodes::created_at.asc())
                .limit(1)
                .select((GatewayNode::as_select(), Region::as_select()))
                .load(conn)
                .await?;
            let r = regions::table
                .order(regions::created_at.asc())
                .select(Region::as_select())
                .first(conn)
                .await
                .optional()?;
            (g, r)
        });
    let from_gateway = gateways.into_iter().next();
    Ok(match (configured_url, from_gateway, first_region) {
        (Some(url), Some((_, region)), _) => Some((url.to_owned(), region)),
        (Some(url), None, Some(region)) => Some((url.to_owned(), region)),
        (None, Some((g, region)), _) => Some((g.public_url, region)),
        _ => None,
    })
}

/// The default region: the region of the first active gateway (where
/// [`entry_point`] sends devices), or the first region when there is no
/// gateway yet. A device that asks for a node without naming a region and
/// has no placement gets one here.
pub async fn default_region(db: &Db) -> AppResult<Option<RegionId>> {
    Ok(db_run!(db, |conn| {
        let g: Option<RegionId> = gateway_nodes::table
            .filter(gateway_nodes::status.eq(NodeStatus::Active))
            .order(gateway_nodes::created_at.asc())
            .select(gateway_nodes::region_id)
            .first(conn)
            .await
            .optional()?;
        match g {
            Some(r) => Some(r),
            None => regions::table
                .order(regions::created_at.asc())
                .select(regions::id)
                .first(conn)
                .await
                .optional()?,
        }
    }))
}

/// The gateway a device should tunnel through to reach `region`'s nodes:
/// the configured URL when there is one (a single gateway), else the first
/// active gateway of that region, else the first active gateway at all.
pub async fn gateway_url_for(
    db: &Db,
    configured_url: Option<&str>,
    region: RegionId,
) -> AppResult<Option<String>> {
    if let Some(url) = configured_url {
        return Ok(Some(url.to_owned()));
    }
    let found: Vec<(String, bool)> = db_run!(db, |conn| gateway_nodes::table
        .filter(gateway_nodes::status.eq(NodeStatus::Active))
        .order(gateway_nodes::created_at.asc())
        .select((
            gateway_nodes::public_url,
            gateway_nodes::region_id.eq(region),
        ))
        .load(conn)
        .await?);
    let first = <[_]>::first(&found).map(|(u, _): &(String, bool)| u.clone());
    Ok(found
        .into_iter()
        .find_map(|(u, ours)| ours.then_some(u))
        .or(first))
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
