//! Refusals the HTTP framework would otherwise make in its own words
//! (plain text, or no body at all), given the error shape of every other
//! refusal: GraphQL's `{"errors": [...]}` with `extensions.code` on
//! `/graphql`, our `{"error": …}` envelope elsewhere. Request heads past
//! their bounds, and bodies in a transfer coding the server does not
//! decode, are refused here too, before any route reads them; an answer
//! given before its request's body was read says the connection closes.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use axum::Json;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use httvps_wire::head::{MAX_HEAD_BYTES, head_len, target_len};

/// The longest request target (path and query) accepted: 8 KiB, as most
/// servers and proxies allow. Past it: 414.
pub const MAX_URI_BYTES: usize = 8 * 1024;

/// The most header fields a request may carry. Past it: 431.
pub const MAX_HEADER_FIELDS: usize = 100;

/// What hyper itself reads of a head before it gives up with its own bare
/// 431 (about 400 KB by default): four times the bound, so a head up to
/// 128 KiB gets [`bound_heads`]'s answer, in our shape, and a connection
/// holds at most this much of a head.
pub const HEAD_READ_BYTES: usize = 4 * MAX_HEAD_BYTES;

/// The header fields hyper parses before it gives up with its own bare
/// 431 (100 by default, which would leave no room for [`bound_heads`]).
pub const HEADER_FIELDS_READ: usize = 512;

/// Whether `path` is one of GraphQL's.
fn is_graphql(path: &str) -> bool {
    path == "/graphql" || path.starts_with("/graphql/")
}

/// A refusal with `status`, `code` and `message`, in GraphQL's shape when
/// `graphql`, in our envelope otherwise.
fn shaped(graphql: bool, status: StatusCode, code: &str, message: String) -> Response {
    if graphql {
        let error = serde_json::json!({"message": message, "extensions": {"code": code}});
        (status, Json(serde_json::json!({ "errors": [error] }))).into_response()
    } else {
        let body = httvps_wire::ErrorBody {
            error: httvps_wire::ErrorDetail {
                code: code.to_owned(),
                message,
                reason: None,
                request_id: None,
            },
        };
        (status, Json(body)).into_response()
    }
}

/// Refuses a request whose head is past its bounds before anything reads
/// it: a target over [`MAX_URI_BYTES`] with 414 `URI_TOO_LONG`, more than
/// [`MAX_HEADER_FIELDS`] header fields or a head over
/// [`httvps_wire::head::MAX_HEAD_BYTES`] with 431
/// `REQUEST_HEADER_FIELDS_TOO_LARGE`. The body is left unread, so the
/// connection closes after the answer.
pub(crate) async fn bound_heads(req: Request, next: Next) -> Response {
    let refusal = if target_len(req.uri()) > MAX_URI_BYTES {
        Some((
            StatusCode::URI_TOO_LONG,
            "URI_TOO_LONG",
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        ))
    } else if req.headers().len() > MAX_HEADER_FIELDS {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "REQUEST_HEADER_FIELDS_TOO_LARGE",
            format!("the request has more than {MAX_HEADER_FIELDS} header fields"),
        ))
    } else if head_len(&req) > MAX_HEAD_BYTES {
        Some((
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "REQUEST_HEADER_FIELDS_TOO_LARGE",
            format!("the request's header fields take more than {MAX_HEAD_BYTES} bytes"),
        ))
    } else if !plain_transfer(req.headers()) {
        Some((
            StatusCode::NOT_IMPLEMENTED,
            "NOT_IMPLEMENTED",
            "Transfer-Encoding other than chunked is not supported".to_owned(),
        ))
    } else {
        None
    };
    let Some((status, code, message)) = refusal else {
        return answered_after_body(req, next).await;
    };
    let mut res = shaped(is_graphql(req.uri().path()), status, code, message);
    res.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    res
}

/// Whether a request's `Transfer-Encoding` is one the server decodes:
/// none, or `chunked` alone (hyper takes any list that ends in `chunked`,
/// and would read `gzip, chunked` as if it were plain).
fn plain_transfer(headers: &axum::http::HeaderMap) -> bool {
    headers.get_all(header::TRANSFER_ENCODING).iter().all(|v| {
        v.to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("chunked"))
    })
}

/// Runs the request, its body noting whether it was read to its end; an
/// answer given before that (a refusal before the body was needed: an
/// unknown token, a throttle) says `Connection: close`, since the server
/// cannot take another request from a connection whose last body it did
/// not read, and a pooling client would otherwise send its next one down
/// a connection that is closing.
async fn answered_after_body(req: Request, next: Next) -> Response {
    // Nothing to read (a GET, an upgrade): nothing to note.
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let read = Arc::new(AtomicBool::new(false));
    let body = Body::new(Tracked {
        inner: body,
        read: Arc::clone(&read),
    });
    let mut res = next.run(Request::from_parts(parts, body)).await;
    if !read.load(Ordering::Acquire) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}

/// A request body that notes when it has been read to its end.
struct Tracked {
    inner: Body,
    read: Arc<AtomicBool>,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None)) || self.inner.is_end_stream() {
            self.read.store(true, Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Answers the framework writes itself (405 with an empty body, 413 as
/// text, and on `/graphql` and `/api/` any other client error in plain
/// text: a body that could not be read, a WebSocket upgrade without its
/// headers) get the error shape of every other refusal there: GraphQL's
/// `{"errors": [...]}` with `extensions.code` on `/graphql`, our
/// `{"error": …}` envelope elsewhere. A 413 also leaves the request body
/// unread, so the connection cannot carry another request: say so, or
/// pooling clients reuse a connection the server is about to close.
pub(crate) async fn envelope_framework_errors(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let graphql = is_graphql(path);
    let api = path.starts_with("/api/");
    let res = next.run(req).await;
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let framework = status == StatusCode::METHOD_NOT_ALLOWED
        || status == StatusCode::PAYLOAD_TOO_LARGE
        || ((graphql || api) && status.is_client_error());
    let mut res = if framework && !is_json {
        let (code, fixed) = match status {
            StatusCode::METHOD_NOT_ALLOWED => {
                ("METHOD_NOT_ALLOWED", "this method is not allowed here")
            }
            StatusCode::PAYLOAD_TOO_LARGE => ("PAYLOAD_TOO_LARGE", "the request body is too large"),
            _ => ("BAD_REQUEST", "the request could not be read"),
        };
        let (mut parts, body) = res.into_parts();
        // The framework's own words, when it gave some (short text).
        let said = axum::body::to_bytes(body, 1024)
            .await
            .ok()
            .and_then(|b| String::from_utf8(b.to_vec()).ok())
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty() && status == StatusCode::BAD_REQUEST);
        let message = said.unwrap_or_else(|| fixed.to_owned());
        parts.headers.remove(header::CONTENT_LENGTH);
        let mut fresh = shaped(graphql, status, code, message);
        for (k, v) in &parts.headers {
            if k != header::CONTENT_TYPE {
                fresh.headers_mut().append(k, v.clone());
            }
        }
        fresh
    } else {
        res
    };
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    res
}
