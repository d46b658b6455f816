//! Request bodies read whole into one buffer of their own. The frames a
//! body arrives in are slices of the connection's read buffer; kept until
//! the body is complete (as a list of frames is), each one holds that
//! whole buffer, and a body sent a byte at a time held kilobytes of memory
//! per byte sent (hundreds of megabytes for a few hundred slow clients,
//! much of it never given back). Here each frame is copied in and dropped
//! at once: a body costs at most its own bound.

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::{BodyExt, LengthLimitError};

use crate::error::AppError;

/// Reads `body` whole, at most `limit` bytes: PAYLOAD_TOO_LARGE past it
/// (or past the router's own bound), BAD_REQUEST when it cannot be read
/// (cut off, or not complete by its deadline).
pub async fn whole(mut body: Body, limit: usize) -> Result<Bytes, AppError> {
    let announced = usize::try_from(body.size_hint().lower()).unwrap_or(usize::MAX);
    if announced > limit {
        return Err(AppError::TooLarge);
    }
    // Grown as bytes come: a header alone does not reserve the bound.
    let mut buf = BytesMut::with_capacity(announced.min(16 * 1024));
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| {
            if caused_by::<LengthLimitError>(&e) {
                AppError::TooLarge
            } else if caused_by::<crate::listener::BodyTimeout>(&e) {
                AppError::BodyTimeout
            } else {
                AppError::bad(format!("unreadable body: {e}"))
            }
        })?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(AppError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// Whether the body failed for going past a length limit.
/// Refuses a body sent with a `Content-Encoding` other than `identity`:
/// the server decodes none, and a compressed body read as plain JSON
/// would be answered as if it were malformed.
pub fn plain_encoding(headers: &axum::http::HeaderMap) -> Result<(), AppError> {
    match headers
        .get(axum::http::header::CONTENT_ENCODING)
        .map(|v| v.to_str().map(str::trim))
    {
        None => Ok(()),
        Some(Ok(v)) if v.eq_ignore_ascii_case("identity") => Ok(()),
        Some(_) => Err(AppError::bad(
            "Content-Encoding is not supported: send the body uncompressed",
        )),
    }
}

/// Whether `e` was caused by an error of type `T` (a size limit, the
/// listener's body deadline).
fn caused_by<T: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if c.is::<T>() {
            return true;
        }
        cause = c.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A body of `chunks` frames, each a slice of one large shared buffer
    /// (as a connection's read buffer is).
    fn trickled(chunks: usize) -> (Body, Bytes) {
        let shared = Bytes::from(vec![7u8; 64 * 1024]);
        let frames: Vec<Result<Bytes, std::io::Error>> =
            (0..chunks).map(|i| Ok(shared.slice(i..=i))).collect();
        let body = Body::from_stream(futures_util::stream::iter(frames));
        (body, shared)
    }

    #[tokio::test]
    async fn a_body_is_read_whole_and_its_frames_let_go() {
        let (body, shared) = trickled(100);
        let read = whole(body, 1000).await.expect("read");
        assert_eq!(read.len(), 100);
        assert!(read.iter().all(|b| *b == 7));
        // No frame is kept: the shared buffer is ours alone again.
        assert!(shared.is_unique(), "a frame still holds the buffer");
    }

    #[tokio::test]
    async fn a_body_past_its_bound_is_too_large() {
        let (body, _) = trickled(100);
        assert!(matches!(whole(body, 99).await, Err(AppError::TooLarge)));
        let limited = Body::new(http_body_util::Limited::new(Body::from(vec![1u8; 100]), 10));
        assert!(matches!(
            whole(limited, 1000).await,
            Err(AppError::TooLarge)
        ));
    }
}
