//! `/graphql/ws`: live operations over graphql-transport-ws and the legacy
//! graphql-ws protocol, with what the stock handler lacks: authentication in
//! `connection_init` (refused: close 4403), a deadline for it, the limits
//! HTTP applies (the schema's depth and complexity, the alias count, the
//! 64 KiB document), a cap on subscriptions per socket, ids of at most
//! [`MAX_ID_BYTES`] that cannot be reused while in use (close 4409); graphql-transport-ws's codes for a
//! message it cannot read (4400) and a `subscribe` before `connection_init`
//! (4401). A socket lives no longer than its
//! credential: when the account's or the device's access changes (the
//! events the use cases publish) the credential is checked again, and a
//! user's token ends at its expiry; either way the socket closes 4403. A
//! socket that runs no operation for its idle deadline ([`IDLE_DEADLINE`]
//! by default) closes (1000).
//! Nothing the loop awaits waits on the database or on the client: the
//! check runs in a task beside the engine (`credential::Recheck`), and
//! what the socket sends goes through a bounded queue to a writer task
//! (`outbox`). An engine left unpolled while it waits for a database
//! connection would keep the one the pool hands it (on SQLite, the only
//! one) unused.

use std::collections::HashMap;
use std::sync::PoisonError;
use std::time::Duration;

use async_graphql::http::{WebSocketProtocols, WsMessage};
use async_graphql::parser::types::ExecutableDocument;
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::StreamExt;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;

mod answers;
mod credential;
mod outbox;

use answers::{Asked, answer};
use credential::{Credential, CredentialSlot, Recheck, ThrottledSlot, init_data};
use outbox::Outbox;

use super::{ApiSchema, AppContext, check_document};
use crate::error::AppError;
use crate::throttle::ClientAddr;

/// Time a client has to send `connection_init`.
pub const INIT_DEADLINE: Duration = Duration::from_secs(10);
/// Most subscriptions one socket may hold.
pub const MAX_SUBSCRIPTIONS: usize = 20;
/// Longest operation id, in bytes: more than a UUID or a counter needs,
/// and short enough that a close that names the id fits the 123 bytes a
/// close frame's reason may hold.
pub const MAX_ID_BYTES: usize = 64;
/// How long an acknowledged socket may run no operation before it is
/// closed (1000), unless the server was given another
/// ([`IdleDeadline`], `BACKEND_WS_IDLE_SECS`): a socket is for live
/// operations, and one that runs none holds a place in the connection
/// budget for nothing. Lazy clients (the console's) close theirs within
/// seconds of their last operation and open a new one with the next.
pub const IDLE_DEADLINE: Duration = Duration::from_secs(60);

/// The idle deadline of a server's sockets (see [`IDLE_DEADLINE`]), as
/// the accept loop hands it to requests.
#[derive(Debug, Clone, Copy)]
pub struct IdleDeadline(pub Duration);

/// When a token that expires at `epoch_secs` stops being valid, on the
/// runtime's clock.
fn instant_of(epoch_secs: i64) -> tokio::time::Instant {
    let left = epoch_secs.saturating_sub(chrono::Utc::now().timestamp());
    tokio::time::Instant::now() + Duration::from_secs(u64::try_from(left).unwrap_or(0))
}

/// Far enough away to mean never (no credential to expire).
const NEVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

fn error_message(protocol: WebSocketProtocols, id: &str, err: &AppError) -> String {
    let error =
        serde_json::json!({ "message": err.to_string(), "extensions": {"code": err.code()} });
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => serde_json::json!([error]),
        _ => error,
    };
    serde_json::json!({"type": "error", "id": id, "payload": payload}).to_string()
}

/// What to do with a client's `subscribe` (or legacy `start`) before the
/// engine sees it: the limits HTTP applies, applied here too.
enum Admission {
    /// Hand it to the engine (its document, parsed when it parses).
    Run(Option<ExecutableDocument>),
    /// Answer this error for the id and drop the operation.
    Refuse(AppError),
    /// Close the socket (graphql-transport-ws: an id already in use).
    Close(u16, String),
}

fn admit(
    protocol: WebSocketProtocols,
    active: &HashMap<String, Asked>,
    id: &str,
    payload: Option<&serde_json::Value>,
) -> Admission {
    if id.len() > MAX_ID_BYTES {
        let why = format!("operation ids are limited to {MAX_ID_BYTES} bytes");
        return match protocol {
            WebSocketProtocols::GraphQLWS => Admission::Close(4400, why),
            _ => Admission::Refuse(AppError::bad(why)),
        };
    }
    if active.contains_key(id) {
        return match protocol {
            WebSocketProtocols::GraphQLWS => {
                Admission::Close(4409, format!("Subscriber for {id} already exists"))
            }
            _ => Admission::Refuse(AppError::bad(format!("operation id {id} is in use"))),
        };
    }
    if active.len() >= MAX_SUBSCRIPTIONS {
        return Admission::Refuse(AppError::LimitExceeded(format!(
            "at most {MAX_SUBSCRIPTIONS} subscriptions per connection"
        )));
    }
    let query = payload
        .and_then(|p| p.get("query"))
        .and_then(|q| q.as_str())
        .unwrap_or_default();
    match check_document(query) {
        Ok(doc) => Admission::Run(doc),
        Err(e) => Admission::Refuse(e),
    }
}

/// graphql-transport-ws's answer to a client message of type `kind` that
/// breaks the protocol, as a close code and reason: a `subscribe` before
/// `connection_init` closes 4401; a message that is not one of its types,
/// not JSON, or not `readable` as its type (a `complete` without an id, a
/// `subscribe` without a payload) 4400. The engine would close those
/// 1002, which before its ack cannot be told from a refused
/// `connection_init` (4403).
fn out_of_protocol(kind: &str, initialised: bool, readable: bool) -> Option<(u16, &'static str)> {
    match kind {
        "subscribe" if !initialised => Some((4401, "Unauthorized")),
        "connection_init" | "ping" | "pong" | "subscribe" | "complete" if readable => None,
        _ => Some((4400, "Invalid message received")),
    }
}

/// The close that ends a socket whose credential no longer stands.
fn forbidden() -> Message {
    close(4403, "Forbidden")
}

/// Longest Close reason: a control frame's payload is at most 125 bytes
/// (RFC 6455 5.5), two of them the code.
const MAX_REASON: usize = 123;

/// A Close of `code` with `reason` cut to [`MAX_REASON`] bytes (at a
/// character's edge). The engine's reasons quote what the client sent
/// (the legacy protocol's unknown message type drew a 161-byte reason,
/// which clients refuse as a protocol error and never read).
fn close(code: u16, reason: &str) -> Message {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: reason[..end].into(),
    }))
}

/// Serves one upgraded socket until either side closes.
pub async fn serve(
    schema: ApiSchema,
    api: AppContext,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    from: ClientAddr,
    idle_deadline: Duration,
) {
    let (sink, mut source) = socket.split();
    let (mut sink, writer) = Outbox::start(sink);
    let (to_gql, gql_input) = mpsc::channel::<Vec<u8>>(16);
    let init_api = api.clone();
    let slot = CredentialSlot::default();
    let init_slot = slot.clone();
    let throttled = ThrottledSlot::default();
    let init_throttled = throttled.clone();
    let gql = async_graphql::http::WebSocket::new(schema, ReceiverStream::new(gql_input), protocol)
        // In a task of its own, for the reason given at [`Recheck`]: the
        // engine is not polled while the loop runs a branch.
        .on_connection_init(move |payload| async move {
            tokio::spawn(init_data(
                init_api,
                from,
                init_slot,
                init_throttled,
                payload,
            ))
            .await
            .unwrap_or_else(|e| {
                Err(AppError::Internal(format!("connection_init: {e}")).into_graphql())
            })
        });
    // Subscribed before anything runs, so no change is missed.
    let mut accounts = api.db.events().subscribe_accounts();
    let mut access = api.db.events().subscribe_access();
    let mut credential: Option<Credential> = None;
    let expiry = tokio::time::sleep(NEVER);
    let mut expiry = std::pin::pin!(expiry);
    // Boxed, to be dropped before the last messages are flushed.
    let mut gql = Box::pin(gql);
    let mut active: HashMap<String, Asked> = HashMap::new();
    let mut initialised = false;
    let mut acked = false;
    let deadline = tokio::time::sleep(INIT_DEADLINE);
    let mut deadline = std::pin::pin!(deadline);
    // Restarted when the ack is sent and whenever an operation ends.
    let idle = tokio::time::sleep(idle_deadline);
    let mut idle = std::pin::pin!(idle);
    // A message the engine's full input queue could not take yet: the
    // socket is not read again until it is handed over, while the engine
    // keeps running (and draining its queue) in the other branches. Waiting
    // for room inside the read branch would stop the engine that makes it.
    let mut waiting: Option<Vec<u8>> = None;
    let mut recheck = Recheck::default();
    // Refusals of operations sent before the ack, sent right behind it: a
    // client's first message from the server is the ack (strict clients
    // close 4400 otherwise).
    let mut held: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            room = to_gql.reserve(), if waiting.is_some() => {
                let Ok(permit) = room else { break };
                if let Some(bytes) = waiting.take() {
                    permit.send(bytes);
                }
            }
            () = &mut expiry, if credential.is_some() => {
                let _ = sink.send(forbidden()).await;
                break;
            }
            changed = accounts.recv(), if credential.is_some() => {
                let concerned = match &changed {
                    Ok(ev) => credential.as_ref().is_some_and(|c| c.user_id().to_string() == ev.user_id),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if concerned {
                    recheck.ask(&api, credential.as_ref());
                }
            }
            changed = access.recv(), if credential.is_some() => {
                let concerned = match &changed {
                    // A node's withdrawal changes no one's credentials.
                    Ok(ev) if ev.node_id.is_some() => false,
                    Ok(ev) => ev.user_id.as_ref().is_none_or(|u| credential.as_ref().is_some_and(|c| c.user_id().to_string() == *u)),
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => false,
                };
                if concerned {
                    recheck.ask(&api, credential.as_ref());
                }
            }
            valid = recheck.answer(), if recheck.running() => {
                if !valid {
                    let _ = sink.send(forbidden()).await;
                    break;
                }
                if recheck.again {
                    recheck.again = false;
                    recheck.ask(&api, credential.as_ref());
                }
            }
            () = &mut idle, if acked && active.is_empty() => {
                let _ = sink.send(close(1000, "idle: no operation running")).await;
                break;
            }
            () = &mut deadline, if !initialised => {
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            msg = source.next(), if waiting.is_none() => {
                let bytes = match msg {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    // A text frame that is not UTF-8 gets the close RFC 6455
                    // names for it (1007) rather than a dropped connection.
                    Some(Err(e)) if e.to_string().contains("UTF-8") => {
                        let _ = sink.send(close(1007, "text frames must be UTF-8")).await;
                        break;
                    }
                    // A message over the limit HTTP puts on bodies: the
                    // close RFC 6455 names for it (1009), as HTTP's 413.
                    Some(Err(e)) if e.to_string().contains("Message too long") => {
                        let _ = sink.send(close(1009, "messages are limited to 64 KiB")).await;
                        break;
                    }
                    _ => break,
                };
                let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let kind = parsed.get("type").and_then(|v| v.as_str()).unwrap_or_default();
                // A connection_init's payload, when there is one, is an
                // object (the protocol's `Record<string, unknown>`).
                let payload_ok = kind != "connection_init"
                    || parsed.get("payload").is_none_or(|p| p.is_null() || p.is_object());
                if protocol == WebSocketProtocols::GraphQLWS
                    && let Some((code, reason)) = out_of_protocol(
                        kind,
                        initialised,
                        payload_ok && serde_json::from_slice::<async_graphql::http::ClientMessage>(&bytes).is_ok(),
                    )
                {
                    let _ = sink.send(close(code, reason)).await;
                    break;
                }
                // The legacy protocol: a `start` before `connection_init`
                // is the client's mistake, a protocol error (the engine
                // closed 1011, an internal error).
                if protocol == WebSocketProtocols::SubscriptionsTransportWS
                    && kind == "start"
                    && !initialised
                {
                    let _ = sink.send(close(1002, "start before connection_init")).await;
                    break;
                }
                let id = parsed.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                match kind {
                    "connection_init" => initialised = true,
                    "subscribe" | "start" => match admit(protocol, &active, &id, parsed.get("payload")) {
                        Admission::Run(doc) => {
                            let operation = parsed.get("payload").and_then(|p| p.get("operationName")).and_then(|n| n.as_str());
                            active.insert(id, Asked::of(doc, operation));
                        }
                        Admission::Refuse(err) => {
                            let text = error_message(protocol, &id, &err);
                            if !acked {
                                // Bounded as the operations it refuses are.
                                if held.len() >= MAX_SUBSCRIPTIONS {
                                    let _ = sink.send(close(1008, "too many refused operations before connection_ack")).await;
                                    break;
                                }
                                held.push(text);
                                continue;
                            }
                            if sink.send(Message::Text(text.into())).await.is_err() { break; }
                            continue;
                        }
                        Admission::Close(code, reason) => {
                            let _ = sink.send(close(code, &reason)).await;
                            break;
                        }
                    },
                    "complete" | "stop" if active.remove(&id).is_some() => {
                        idle.as_mut().reset(tokio::time::Instant::now() + idle_deadline);
                    }
                    _ => {}
                }
                match to_gql.try_send(bytes) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(bytes)) => waiting = Some(bytes),
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                }
            }
            out = gql.next() => {
                match out {
                    Some(WsMessage::Text(text)) => {
                        let mut ack = false;
                        let a = answer(text, &active);
                        let kind = a.kind.as_deref();
                        if kind == Some("connection_ack") {
                            ack = true;
                            acked = true;
                            idle.as_mut().reset(tokio::time::Instant::now() + idle_deadline);
                            credential = slot.lock().unwrap_or_else(PoisonError::into_inner).take();
                            if let Some(Credential::User { expires_at, .. }) = &credential {
                                expiry.as_mut().reset(instant_of(*expires_at));
                            }
                        }
                        if matches!(kind, Some("complete" | "error"))
                            && let Some(id) = a.id.as_deref()
                            && active.remove(id).is_some()
                        {
                            idle.as_mut().reset(tokio::time::Instant::now() + idle_deadline);
                        }
                        let text = a.text;
                        if sink.send(Message::Text(text.into())).await.is_err() { break; }
                        if ack {
                            let mut gone = false;
                            for text in held.drain(..) {
                                if sink.send(Message::Text(text.into())).await.is_err() {
                                    gone = true;
                                    break;
                                }
                            }
                            if gone { break; }
                        }
                    }
                    // graphql-transport-ws: a refused connection_init closes
                    // 4403, or 4429 when its source is shut out for a while.
                    Some(WsMessage::Close(1002, _)) if !acked && protocol == WebSocketProtocols::GraphQLWS => {
                        let why = throttled.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
                        let closing = match why {
                            Some(why) => close(4429, &format!("Too many initialisation requests: {why}")),
                            None => close(4403, "Forbidden"),
                        };
                        let _ = sink.send(closing).await;
                        break;
                    }
                    // graphql-transport-ws: a message it cannot read closes 4400.
                    Some(WsMessage::Close(1002, reason)) if protocol == WebSocketProtocols::GraphQLWS => {
                        let _ = sink.send(close(4400, &reason)).await;
                        break;
                    }
                    Some(WsMessage::Close(code, reason)) => {
                        let _ = sink.send(close(code, &reason)).await;
                        break;
                    }
                    None => break,
                }
            }
        }
    }
    // The engine first: an operation of it holding a database connection
    // must not keep it while the client is given time to read.
    drop(gql);
    drop(recheck);
    writer.finish(sink).await;
}
