//! The checks of a WebSocket upgrade request (RFC 6455 §4.2.1), made before
//! anything is asked of the control plane or a node: HTTP/1.1 GET, the
//! `Upgrade` and `Connection` headers, exactly one version (13) and exactly
//! one `Sec-WebSocket-Key` that is the base64 of exactly 16 bytes, and no
//! body (a `Transfer-Encoding`, or a `Content-Length` other than 0: where
//! the body would end and the frames begin is then a matter of which side
//! a proxy in front believes). Over
//! HTTP/2 (RFC 8441 §4–5): CONNECT with `:protocol` `websocket` and
//! exactly one version (13); no key (the stream is the handshake). Then
//! the answer that opens the tunnel: 101 over HTTP/1.1, 200 over HTTP/2.

use axum::extract::Request;
use axum::http::header::{
    CONTENT_LENGTH, HeaderName, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TRANSFER_ENCODING,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Version};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Length of the base64 of 16 bytes (padded).
const KEY_LEN: usize = 24;

/// Whether `key` is the canonical base64 of exactly 16 bytes.
pub(crate) fn valid_key(key: &[u8]) -> bool {
    let mut decoded = [0u8; KEY_LEN * 3 / 4];
    key.len() == KEY_LEN && matches!(STANDARD.decode_slice(key, &mut decoded), Ok(16))
}

/// The one value of header `name`, if it appears exactly once.
fn single<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    let mut all = headers.get_all(name).iter();
    let first = all.next()?;
    all.next().is_none().then_some(first)
}

/// Whether `req` is a complete and valid WebSocket upgrade request, over
/// HTTP/1.1 or over HTTP/2.
pub(crate) fn valid(req: &Request) -> bool {
    valid_h1(req) || valid_h2(req)
}

/// Whether `req` is a valid HTTP/1.1 upgrade (RFC 6455).
fn valid_h1(req: &Request) -> bool {
    let h = req.headers();
    req.method() == Method::GET
        && req.version() == Version::HTTP_11
        && fastwebsockets::upgrade::is_upgrade_request(req)
        && single(h, &SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13")
        && single(h, &SEC_WEBSOCKET_KEY).is_some_and(|k| valid_key(k.as_bytes()))
        && !h.contains_key(TRANSFER_ENCODING)
        && h.get_all(CONTENT_LENGTH)
            .iter()
            .all(|v| v.as_bytes() == b"0")
}

/// Whether `req` is a valid extended CONNECT for a WebSocket (RFC 8441).
fn valid_h2(req: &Request) -> bool {
    req.method() == Method::CONNECT
        && req.version() == Version::HTTP_2
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str() == "websocket")
        && single(req.headers(), &SEC_WEBSOCKET_VERSION).is_some_and(|v| v.as_bytes() == b"13")
}

/// The answer that opens a tunnel on a valid request, and the upgrade to
/// await once it is sent; `None` when the request cannot be upgraded.
pub(crate) fn accept(req: &mut Request) -> Option<(Response, Opening)> {
    if req.version() == Version::HTTP_2 {
        let on = hyper::upgrade::on(&mut *req);
        return Some((StatusCode::OK.into_response(), Opening::H2(on)));
    }
    let (resp, fut) = fastwebsockets::upgrade::upgrade(req).ok()?;
    Some((resp.into_response(), Opening::H1(fut)))
}

/// An accepted upgrade, not yet complete.
pub(crate) enum Opening {
    /// HTTP/1.1: the connection itself, after the 101.
    H1(fastwebsockets::upgrade::UpgradeFut),
    /// HTTP/2: the request's stream, after the 200.
    H2(hyper::upgrade::OnUpgrade),
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    #[test]
    fn keys_are_the_base64_of_16_bytes() {
        assert!(valid_key(KEY.as_bytes()));
        assert!(valid_key(b"AAAAAAAAAAAAAAAAAAAAAA=="));
        for bad in [
            "",
            "dGhlIHNhbXBsZSBub25jZQ",     // no padding
            "dGhlIHNhbXBsZSBub25jZR==",   // bits past the 16th byte
            "AAAAAAAAAAAAAAAAAAAA",       // 15 bytes
            "AAAAAAAAAAAAAAAAAAAAAAA=",   // 17 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAA",   // 18 bytes
            "dGhlIHNhbXBsZSBub25jZQ==AA", // too long
            "dGhlIHNhbXBsZSBub25j-Q==",   // URL-safe alphabet
            "dGhlIHNhbXBsZSBub25j ZQ==",
            "dGhlIHNhbXBsZSBub25jZQ=\0",
            "========================",
        ] {
            assert!(!valid_key(bad.as_bytes()), "{bad:?} accepted");
        }
    }

    fn request(
        f: impl FnOnce(axum::http::request::Builder) -> axum::http::request::Builder,
    ) -> Request {
        f(Request::builder()
            .uri("/ws/t/tcp")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", KEY))
        .body(Body::empty())
        .expect("request")
    }

    #[test]
    fn only_complete_http11_get_upgrades_pass() {
        assert!(valid(&request(|b| b)));
        assert!(!valid(&request(|b| b.method("POST"))));
        assert!(!valid(&request(|b| b.method("HEAD"))));
        assert!(!valid(&request(|b| b.version(Version::HTTP_10))));
        assert!(
            !valid(&request(|b| b.header("sec-websocket-key", KEY))),
            "two keys"
        );
        assert!(
            !valid(&request(|b| b.header("sec-websocket-version", "8"))),
            "two versions"
        );
        let without = |name: &'static str| {
            let mut r = request(|b| b);
            r.headers_mut().remove(name);
            valid(&r)
        };
        for name in [
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
        ] {
            assert!(!without(name), "without {name}");
        }
        let with = |name: &'static str, value: &'static str| {
            let mut r = request(|b| b);
            r.headers_mut()
                .insert(name, HeaderValue::from_static(value));
            valid(&r)
        };
        assert!(!with("sec-websocket-version", "8"));
        assert!(!with("sec-websocket-version", "13, 8"));
        assert!(!with("sec-websocket-key", "short"));
        assert!(!with("upgrade", "h2c"));
        assert!(!with("connection", "keep-alive"));
        assert!(!with("content-length", "5"), "a body");
        assert!(!with("transfer-encoding", "chunked"), "a body");
        assert!(with("content-length", "0"), "an empty body");
    }

    fn h2_request(
        protocol: Option<&'static str>,
        f: impl FnOnce(axum::http::request::Builder) -> axum::http::request::Builder,
    ) -> Request {
        let mut b = Request::builder()
            .method("CONNECT")
            .version(Version::HTTP_2)
            .uri("https://localhost/ws/t/tcp")
            .header("sec-websocket-version", "13");
        if let Some(p) = protocol {
            b = b.extension(hyper::ext::Protocol::from_static(p));
        }
        f(b).body(Body::empty()).expect("request")
    }

    #[test]
    fn only_extended_connects_for_websocket_version_13_pass_over_http2() {
        assert!(valid(&h2_request(Some("websocket"), |b| b)));
        assert!(!valid(&h2_request(None, |b| b)), "plain CONNECT");
        assert!(!valid(&h2_request(Some("webtransport"), |b| b)));
        assert!(!valid(&h2_request(Some("WebSocket "), |b| b)));
        assert!(!valid(&h2_request(Some("websocket"), |b| b.method("GET"))));
        assert!(!valid(&h2_request(Some("websocket"), |b| b.method("POST"))));
        assert!(
            !valid(&h2_request(Some("websocket"), |b| b.version(Version::HTTP_11))),
            "CONNECT over HTTP/1.1"
        );
        assert!(
            !valid(&h2_request(Some("websocket"), |b| b
                .header("sec-websocket-version", "13"))),
            "two versions"
        );
        let mut r = h2_request(Some("websocket"), |b| b);
        r.headers_mut().remove("sec-websocket-version");
        assert!(!valid(&r), "no version");
        let mut r = h2_request(Some("websocket"), |b| b);
        r.headers_mut()
            .insert("sec-websocket-version", HeaderValue::from_static("8"));
        assert!(!valid(&r), "version 8");
        // An HTTP/1.1-style GET upgrade sent over HTTP/2 is no upgrade.
        let r = request(|b| b.version(Version::HTTP_2));
        assert!(!valid(&r));
    }

    #[test]
    fn http2_tunnels_are_answered_200_and_http11_ones_101() {
        let mut r = h2_request(Some("websocket"), |b| b);
        let (resp, opening) = accept(&mut r).expect("accepted");
        assert_eq!(resp.status(), StatusCode::OK);
        assert!(matches!(opening, Opening::H2(_)));
        let mut r = request(|b| b);
        let (resp, opening) = accept(&mut r).expect("accepted");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        assert!(matches!(opening, Opening::H1(_)));
    }
}
