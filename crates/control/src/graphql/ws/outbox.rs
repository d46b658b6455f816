//! What a WebSocket sends goes through a queue to a writer task of its
//! own, so the connection's loop never waits on a client that does not
//! read. While the loop waits, the engine is not polled, and an operation
//! in it that holds a database connection, or is next in line for one,
//! keeps it unused for as long: with a pool of one (SQLite) the whole
//! control plane waits on that socket. A client that lets [`QUEUE`]
//! messages or [`QUEUE_BYTES`] pile up is not reading; the socket is
//! dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::ws::{Message, WebSocket};
use futures_util::SinkExt;
use futures_util::stream::SplitSink;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Messages waiting for the client at most: room for a burst of several
/// live views at once (an event feed lags, skipping events, past 1,024 of
/// them), so a client that reads at network speed is not dropped for one.
pub const QUEUE: usize = 4096;

/// Bytes waiting for the client at most (large answers fill this first).
pub const QUEUE_BYTES: usize = 8 << 20;

/// How long the writer gets to deliver what was queued, a closing frame
/// included, once the connection's loop ended.
const FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

/// The sending half: queues without waiting.
pub(super) struct Outbox {
    queue: mpsc::Sender<Message>,
    /// Bytes queued and not yet written.
    queued: Arc<AtomicUsize>,
    /// A message found the queue full.
    overflowed: bool,
}

/// The writer task, to be ended with [`Writer::finish`].
pub(super) struct Writer(JoinHandle<()>);

/// The client does not read (or is gone): the socket is to be dropped.
#[derive(Debug)]
pub(super) struct NotReading;

impl Outbox {
    /// Starts the writer over `sink`.
    pub(super) fn start(sink: SplitSink<WebSocket, Message>) -> (Outbox, Writer) {
        let (queue, rx) = mpsc::channel(QUEUE);
        let queued = Arc::new(AtomicUsize::new(0));
        let writer = Writer(tokio::spawn(write(sink, rx, queued.clone())));
        let outbox = Outbox {
            queue,
            queued,
            overflowed: false,
        };
        (outbox, writer)
    }

    /// Queues `message`. `async` so it reads like a sink's send, but it
    /// never waits: a full queue is an error.
    pub(super) async fn send(&mut self, message: Message) -> Result<(), NotReading> {
        let len = size(&message);
        if self.queued.load(Ordering::Relaxed).saturating_add(len) > QUEUE_BYTES {
            self.overflowed = true;
            return Err(NotReading);
        }
        match self.queue.try_send(message) {
            Ok(()) => {
                self.queued.fetch_add(len, Ordering::Relaxed);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !self.overflowed {
                    tracing::debug!(
                        queued = QUEUE,
                        "a WebSocket client that does not read is dropped"
                    );
                }
                self.overflowed = true;
                Err(NotReading)
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(NotReading),
        }
    }
}

impl Writer {
    /// Lets the writer deliver what is queued (at most [`FLUSH`]) unless
    /// the client stopped reading, then drops the socket.
    pub(super) async fn finish(self, outbox: Outbox) {
        let reading = !outbox.overflowed;
        drop(outbox);
        let Writer(mut task) = self;
        if !reading || tokio::time::timeout(FLUSH, &mut task).await.is_err() {
            task.abort();
        }
    }
}

/// What a message weighs in the queue.
fn size(message: &Message) -> usize {
    match message {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }
}

async fn write(
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Message>,
    queued: Arc<AtomicUsize>,
) {
    while let Some(message) = rx.recv().await {
        queued.fetch_sub(size(&message), Ordering::Relaxed);
        let closing = matches!(message, Message::Close(_));
        if sink.send(message).await.is_err() || closing {
            break;
        }
    }
    let _ = sink.close().await;
}
