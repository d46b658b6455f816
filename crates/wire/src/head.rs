//! How large an HTTP/1.1 request head is, counted the same way by every
//! server of ours that bounds it (hyper stops reading a head at its buffer's
//! size only between reads, so a head that arrived whole in one read past
//! the bound still reaches the service, which counts it here).

/// The most a request head may take on the control plane and the gateway:
/// request line and header lines. Past it: 431.
pub const MAX_HEAD_BYTES: usize = 32 * 1024;

/// The size of `req`'s head as it was sent: the request line (method,
/// target, version) and every header line with its `: ` and CRLF.
pub fn head_len<B>(req: &http::Request<B>) -> usize {
    let uri = req.uri();
    let line = req.method().as_str().len() + target_len(uri) + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .fold(line, usize::saturating_add)
}

/// The size of the request target `uri` as it was sent.
pub fn target_len(uri: &http::Uri) -> usize {
    uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(1, |p| p.as_str().len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_counts_its_request_line_and_every_header_line() {
        let req = http::Request::get("/a?b=c")
            .header("host", "x")
            .header("x-long", "v".repeat(100))
            .body(())
            .expect("request");
        // "GET /a?b=c HTTP/1.1\r\n" + "host: x\r\n" + "x-long: v…\r\n"
        let want = "GET /a?b=c HTTP/1.1\r\n".len() + "host: x\r\n".len() + 8 + 100 + 2;
        assert_eq!(head_len(&req), want);
        assert_eq!(target_len(req.uri()), 6);
    }
}
