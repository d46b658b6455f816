//! The web console and GraphiQL, served from files embedded in the binary.
//!
//! The sources are in `console/` (TypeScript, built by Vite); the build is
//! committed in `console/dist/`, so `cargo build` needs no Node, and
//! `scripts/console-drift.sh` fails when it differs from a fresh build (as
//! `schema.graphql` does for the schema). `console/dist/assets.rs`, written
//! by the build, lists every file with its content type, ETag and gzip and
//! brotli variants, all taken in with `include_bytes!`.
//!
//! Routes: `/console/` and below (the files, and `index.html` for any other
//! path so the console's own routes survive a reload), `/` and `/console`
//! (redirects), `/graphiql` (debug mode and `up` only; the files only
//! GraphiQL uses are not served otherwise). Every answer carries a
//! Content-Security-Policy that allows this origin only, and no inline
//! script.

use axum::Router;
use axum::extract::Path;
use axum::extract::rejection::PathRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// One embedded file of the console's build.
struct Asset {
    /// Path under `/console/`.
    path: &'static str,
    content_type: &'static str,
    /// Strong ETag of the raw bytes, quoted.
    etag: &'static str,
    /// Named after its content hash: cacheable for ever.
    immutable: bool,
    /// Used by GraphiQL only: served in debug mode only.
    debug_only: bool,
    raw: &'static [u8],
    gzip: Option<&'static [u8]>,
    brotli: Option<&'static [u8]>,
}

include!("../../../console/dist/assets.rs");

/// Where the console lives.
pub const PREFIX: &str = "/console/";

/// The console: scripts, styles and connections from this origin only; no
/// inline script, style, frame or plugin.
const CSP_CONSOLE: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self'; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// GraphiQL: the same, plus the `data:` fonts of its stylesheet and inline
/// styles, which its editors set on elements when a query runs (blocked,
/// each run logged a violation). Scripts stay this origin's only; the page
/// is served in debug mode and by `up` alone.
const CSP_GRAPHIQL: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// The console's routes; GraphiQL's only when `debug` (debug mode, `up`).
pub fn routes<S: Clone + Send + Sync + 'static>(debug: bool) -> Router<S> {
    let router = Router::new()
        .route(
            "/",
            get(|| async { redirect(StatusCode::TEMPORARY_REDIRECT) }),
        )
        .route(
            "/console",
            get(|| async { redirect(StatusCode::PERMANENT_REDIRECT) }),
        )
        .route(
            "/console/",
            get(move |headers: HeaderMap| async move { serve(&headers, "", debug) }),
        )
        .route(
            "/console/{*path}",
            get(
                move |path: Result<Path<String>, PathRejection>,
                      uri: axum::http::Uri,
                      headers: HeaderMap| async move {
                    match path {
                        Ok(Path(path)) => serve(&headers, &path, debug),
                        // A path that is not UTF-8 once decoded names no
                        // asset; one of the page's routes (`users/%FF`)
                        // still gets the page, whose router says it is
                        // not found, as for any other unknown route.
                        Err(_) => {
                            let raw = uri.path().strip_prefix("/console/").unwrap_or_default();
                            match lookup(raw, debug) {
                                Lookup::App => serve(&headers, "", debug),
                                Lookup::File(_) | Lookup::Missing => not_found(),
                            }
                        }
                    }
                },
            ),
        );
    if debug {
        router.route(
            "/graphiql",
            get(|headers: HeaderMap| async move {
                match find("graphiql.html", true) {
                    Some(asset) => respond(&headers, asset, CSP_GRAPHIQL),
                    None => not_found(),
                }
            }),
        )
    } else {
        router
    }
}

/// What a path under `/console/` gets.
#[derive(Debug, PartialEq, Eq)]
enum Lookup {
    /// This file.
    File(&'static str),
    /// The console's page: the path is one of its routes.
    App,
    /// Nothing: a missing file must not turn into the page.
    Missing,
}

fn lookup(path: &str, debug: bool) -> Lookup {
    if let Some(asset) = find(path, debug) {
        return Lookup::File(asset.path);
    }
    let last = path.rsplit('/').next().unwrap_or(path);
    if path.starts_with("assets/") || last.contains('.') || path == "graphiql.html" {
        Lookup::Missing
    } else {
        Lookup::App
    }
}

fn find(path: &str, debug: bool) -> Option<&'static Asset> {
    ASSETS
        .iter()
        .find(|a| a.path == path && (debug || !a.debug_only))
}

fn serve(headers: &HeaderMap, path: &str, debug: bool) -> Response {
    let found = match lookup(path, debug) {
        Lookup::File(p) => find(p, debug),
        Lookup::App => find("index.html", debug),
        Lookup::Missing => None,
    };
    match found {
        Some(asset) => respond(headers, asset, CSP_CONSOLE),
        None => not_found(),
    }
}

/// Content codings, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coding {
    Brotli,
    Gzip,
    Identity,
}

/// Whether `Accept-Encoding` accepts `name` (listed, or `*`, with q > 0).
fn accepts(accept_encoding: &str, name: &str) -> bool {
    let mut verdict = None;
    for item in accept_encoding.split(',') {
        let mut parts = item.split(';');
        let coding = parts.next().unwrap_or_default().trim();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|v| v.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        if coding.eq_ignore_ascii_case(name) {
            return q > 0.0;
        }
        if coding == "*" {
            verdict = Some(q > 0.0);
        }
    }
    verdict.unwrap_or(false)
}

fn choose(headers: &HeaderMap, asset: &Asset) -> Coding {
    let accept = headers
        .get(header::ACCEPT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if asset.brotli.is_some() && accepts(accept, "br") {
        Coding::Brotli
    } else if asset.gzip.is_some() && accepts(accept, "gzip") {
        Coding::Gzip
    } else {
        Coding::Identity
    }
}

/// Whether `If-None-Match` names `etag` (or is `*`).
fn matches_etag(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t == etag)
}

/// Headers every console answer carries.
fn security_headers(h: &mut HeaderMap, csp: &'static str) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

fn respond(headers: &HeaderMap, asset: &'static Asset, csp: &'static str) -> Response {
    let coding = choose(headers, asset);
    let (body, suffix, encoding) = match (coding, asset.brotli, asset.gzip) {
        (Coding::Brotli, Some(b), _) => (b, "-br", Some("br")),
        (Coding::Gzip, _, Some(g)) => (g, "-gz", Some("gzip")),
        _ => (asset.raw, "", None),
    };
    // Each variant has its own tag, so caches never mix them up.
    let etag = format!("{}{}\"", asset.etag.trim_end_matches('"'), suffix);
    let mut res = if matches_etag(headers, &etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(asset.content_type),
        );
        if let Some(e) = encoding {
            r.headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static(e));
        }
        r
    };
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if asset.immutable {
            "public, max-age=31536000, immutable"
        } else {
            "no-cache"
        }),
    );
    if asset.gzip.is_some() || asset.brotli.is_some() {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    security_headers(h, csp);
    res
}

fn redirect(status: StatusCode) -> Response {
    let mut res = status.into_response();
    let h = res.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static(PREFIX));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h, CSP_CONSOLE);
    res
}

fn not_found() -> Response {
    let mut res = crate::error::AppError::NotFound("asset").into_response();
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    security_headers(h, CSP_CONSOLE);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: header::HeaderName, value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn the_build_has_both_pages_and_graphiql_is_debug_only() {
        let index = find("index.html", false).expect("index.html is embedded");
        assert!(!index.immutable && !index.debug_only);
        assert!(find("graphiql.html", false).is_none());
        assert!(find("graphiql.html", true).is_some());
        assert!(
            ASSETS
                .iter()
                .any(|a| a.debug_only && a.path.starts_with("assets/"))
        );
        for a in ASSETS {
            assert!(!a.content_type.is_empty(), "{}", a.path);
            assert_eq!(a.immutable, a.path.starts_with("assets/"), "{}", a.path);
            assert!(
                a.etag.starts_with('"') && a.etag.ends_with('"'),
                "{}",
                a.path
            );
        }
    }

    #[test]
    fn console_routes_fall_back_to_the_page_and_missing_files_do_not() {
        assert_eq!(lookup("", false), Lookup::App);
        assert_eq!(lookup("users/0b7c", false), Lookup::App);
        assert_eq!(lookup("my/devices", false), Lookup::App);
        assert_eq!(lookup("index.html", false), Lookup::File("index.html"));
        assert_eq!(lookup("assets/nope-123.js", false), Lookup::Missing);
        assert_eq!(lookup("robots.txt", false), Lookup::Missing);
        assert_eq!(lookup("graphiql.html", false), Lookup::Missing);
        let gql_only = ASSETS
            .iter()
            .find(|a| a.debug_only && a.path.starts_with("assets/"))
            .expect("a GraphiQL asset");
        assert_eq!(lookup(gql_only.path, false), Lookup::Missing);
        assert_eq!(lookup(gql_only.path, true), Lookup::File(gql_only.path));
    }

    #[test]
    fn accept_encoding_is_honoured_with_its_weights() {
        assert!(accepts("gzip, deflate, br, zstd", "br"));
        assert!(accepts("gzip;q=0.5, br;q=1.0", "gzip"));
        assert!(!accepts("gzip, br;q=0", "br"));
        assert!(accepts("*", "br"));
        assert!(!accepts("*;q=0, gzip", "br"));
        assert!(!accepts("", "gzip"));
        assert!(!accepts("identity", "gzip"));
    }

    #[test]
    fn answers_pick_a_variant_and_revalidate_by_etag() {
        let asset = ASSETS
            .iter()
            .find(|a| a.brotli.is_some() && a.gzip.is_some() && !a.debug_only)
            .expect("a compressed asset");
        let br = respond(
            &with(header::ACCEPT_ENCODING, "gzip, br"),
            asset,
            CSP_CONSOLE,
        );
        assert_eq!(br.status(), StatusCode::OK);
        assert_eq!(br.headers()[header::CONTENT_ENCODING], "br");
        let gz = respond(&with(header::ACCEPT_ENCODING, "gzip"), asset, CSP_CONSOLE);
        assert_eq!(gz.headers()[header::CONTENT_ENCODING], "gzip");
        let plain = respond(&HeaderMap::new(), asset, CSP_CONSOLE);
        assert!(plain.headers().get(header::CONTENT_ENCODING).is_none());
        assert!(
            plain.headers()[header::CONTENT_SECURITY_POLICY]
                .to_str()
                .is_ok_and(|v| v.starts_with("default-src 'self'"))
        );
        let etag = plain.headers()[header::ETAG].clone();
        assert_ne!(etag, br.headers()[header::ETAG]);
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, etag);
        assert_eq!(
            respond(&again, asset, CSP_CONSOLE).status(),
            StatusCode::NOT_MODIFIED
        );
    }
}
