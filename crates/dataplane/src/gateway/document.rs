//! The Outline dynamic access key document served at `/c/{token}`: the
//! transport for stock Outline apps (client 1.15+), or the error they show.

use httvps_wire::{Reason, Unavailable};

/// A YAML double-quoted scalar.
fn yaml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The WebSocket URL of `token`'s tunnels of `kind` (`tcp` or `udp`)
/// through the gateway whose public URL is `public_url`
/// (`https://host[:port][/]`; a bare `host[:port]` is read as https).
fn tunnel_url(public_url: &str, token: &str, kind: &str) -> String {
    let parsed = url::Url::parse(public_url)
        .ok()
        .filter(|u| u.has_host() && matches!(u.scheme(), "https" | "wss"))
        .or_else(|| url::Url::parse(&format!("https://{public_url}")).ok());
    let Some(mut url) = parsed else {
        // Not a URL: used as it was given, as the authority.
        return format!(
            "wss://{}/ws/{token}/{kind}",
            public_url.trim_end_matches('/')
        );
    };
    // https and wss share the default port, so it stays elided.
    let _ = url.set_scheme("wss");
    url.set_query(None);
    url.set_fragment(None);
    url.set_path("");
    if let Ok(mut path) = url.path_segments_mut() {
        path.clear().extend(["ws", token, kind]);
    }
    url.into()
}

/// The dynamic access key document for `token` through `public_url`.
pub fn access_yaml(public_url: &str, token: &str, method: &str, password: &str) -> String {
    let part = |kind: &str| {
        format!(
            "    $type: shadowsocks\n    endpoint:\n      $type: websocket\n      url: {}\n    cipher: {}\n    secret: {}\n",
            yaml_string(&tunnel_url(public_url, token, kind)),
            yaml_string(method),
            yaml_string(password)
        )
    };
    format!(
        "transport:\n  $type: tcpudp\n  tcp:\n{}  udp:\n{}",
        part("tcp"),
        part("udp")
    )
}

/// The document an app shows when the device may not connect.
pub(crate) fn refusal_yaml(reason: Reason) -> String {
    error_yaml(reason.message(), reason.as_str())
}

/// The document an app shows when no node can take the device now.
pub(crate) fn unavailable_yaml(why: Unavailable) -> String {
    error_yaml(why.message(), why.as_str())
}

fn error_yaml(message: &str, details: &str) -> String {
    format!(
        "error:\n  message: {}\n  details: {}\n",
        yaml_string(message),
        yaml_string(details)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tunnel_urls_keep_the_public_authority() {
        let cases = [
            ("https://gw.example", "wss://gw.example/ws/T/tcp"),
            ("https://gw.example/", "wss://gw.example/ws/T/tcp"),
            ("https://gw.example:8443", "wss://gw.example:8443/ws/T/tcp"),
            ("https://gw.example:443/", "wss://gw.example/ws/T/tcp"),
            (
                "https://gw.example/some/prefix?q#f",
                "wss://gw.example/ws/T/tcp",
            ),
            (
                "https://[2001:db8::1]:8443",
                "wss://[2001:db8::1]:8443/ws/T/tcp",
            ),
            ("https://127.0.0.1:8443", "wss://127.0.0.1:8443/ws/T/tcp"),
            ("gw.example:8443", "wss://gw.example:8443/ws/T/tcp"),
            ("gw.example", "wss://gw.example/ws/T/tcp"),
        ];
        for (public, want) in cases {
            assert_eq!(tunnel_url(public, "T", "tcp"), want, "{public}");
        }
    }

    #[test]
    fn the_document_is_outline_yaml_with_quoted_values() {
        let doc = access_yaml("https://gw.example:8443", "tok", "aes-128-gcm", "p\"w:d");
        assert_eq!(
            doc,
            "transport:\n  $type: tcpudp\n  tcp:\n    $type: shadowsocks\n    endpoint:\n      $type: websocket\n      url: \"wss://gw.example:8443/ws/tok/tcp\"\n    cipher: \"aes-128-gcm\"\n    secret: \"p\\\"w:d\"\n  udp:\n    $type: shadowsocks\n    endpoint:\n      $type: websocket\n      url: \"wss://gw.example:8443/ws/tok/udp\"\n    cipher: \"aes-128-gcm\"\n    secret: \"p\\\"w:d\"\n"
        );
    }

    #[test]
    fn refusals_carry_the_message_and_the_stable_code() {
        let doc = refusal_yaml(Reason::DeviceRevoked);
        assert!(doc.starts_with("error:\n  message: \""), "{doc}");
        assert!(doc.ends_with("  details: \"device_revoked\"\n"), "{doc}");
    }
}
