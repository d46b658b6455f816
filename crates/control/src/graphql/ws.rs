//! `/graphql/ws`: live operations over graphql-transport-ws and the legacy
//! graphql-ws protocol, with what the stock handler lacks: authentication in
//! `connection_init`, a deadline for it, and a cap on subscriptions per socket.

use std::collections::HashSet;
use std::time::Duration;

use async_graphql::Data;
use async_graphql::dataloader::DataLoader;
use async_graphql::http::{WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::loaders::{BATCH_DELAY, DbLoader};
use super::{ApiSchema, AppContext, DeviceViewer};
use crate::context::viewer_from_token;
use crate::throttle::ClientAddr;

/// Time a client has to send `connection_init`.
pub const INIT_DEADLINE: Duration = Duration::from_secs(10);
/// Most subscriptions one socket may hold.
pub const MAX_SUBSCRIPTIONS: usize = 20;

fn bearer(payload: &serde_json::Value) -> Option<String> {
    let obj = payload.as_object()?;
    for key in ["Authorization", "authorization"] {
        if let Some(v) = obj.get(key).and_then(|v| v.as_str()) {
            return Some(
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .unwrap_or(v)
                    .trim()
                    .to_owned(),
            );
        }
    }
    obj.get("token").and_then(|v| v.as_str()).map(str::to_owned)
}

async fn init_data(
    api: AppContext,
    from: ClientAddr,
    payload: serde_json::Value,
) -> async_graphql::Result<Data> {
    let mut data = Data::default();
    data.insert(from);
    data.insert(DataLoader::new(DbLoader::new(api.db.clone()), tokio::spawn).delay(BATCH_DELAY));
    if let Some(token) = payload.get("deviceToken").and_then(|v| v.as_str()) {
        // The access rule decides, as for a tunnel: a device that may not
        // connect may not follow the nodes either.
        let device = crate::access::check_token(&api.db, token)
            .await
            .map_err(|e| e.into_graphql())?
            .admitted()
            .map_err(|_| crate::error::AppError::Unauthenticated.into_graphql())?;
        data.insert(DeviceViewer {
            device_id: device.id,
        });
    } else if let Some(token) = bearer(&payload) {
        let viewer = viewer_from_token(&api, &token)
            .await
            .map_err(|e| e.into_graphql())?;
        data.insert(viewer);
    }
    Ok(data)
}

fn error_message(protocol: WebSocketProtocols, id: &str, message: &str) -> String {
    let payload = match protocol {
        WebSocketProtocols::GraphQLWS => {
            serde_json::json!([{ "message": message, "extensions": {"code": "LIMIT_EXCEEDED"} }])
        }
        _ => serde_json::json!({ "message": message, "extensions": {"code": "LIMIT_EXCEEDED"} }),
    };
    serde_json::json!({"type": "error", "id": id, "payload": payload}).to_string()
}

/// Serves one upgraded socket until either side closes.
pub async fn serve(
    schema: ApiSchema,
    api: AppContext,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    from: ClientAddr,
) {
    let (mut sink, mut source) = socket.split();
    let (to_gql, gql_input) = mpsc::channel::<Vec<u8>>(16);
    let init_api = api.clone();
    let gql = async_graphql::http::WebSocket::new(schema, ReceiverStream::new(gql_input), protocol)
        .on_connection_init(move |payload| init_data(init_api, from, payload));
    let mut gql = std::pin::pin!(gql);
    let mut active: HashSet<String> = HashSet::new();
    let mut initialised = false;
    let deadline = tokio::time::sleep(INIT_DEADLINE);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        tokio::select! {
            () = &mut deadline, if !initialised => {
                let _ = sink.send(Message::Close(Some(CloseFrame { code: 4408, reason: "Connection initialisation timeout".into() }))).await;
                break;
            }
            msg = source.next() => {
                let bytes = match msg {
                    Some(Ok(Message::Text(t))) => t.as_bytes().to_vec(),
                    Some(Ok(Message::Binary(b))) => b.to_vec(),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                let parsed: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
                let kind = parsed.get("type").and_then(|v| v.as_str()).unwrap_or_default();
                let id = parsed.get("id").and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                match kind {
                    "connection_init" => initialised = true,
                    "subscribe" | "start" => {
                        if !active.contains(&id.to_string()) && active.len() >= MAX_SUBSCRIPTIONS {
                            let text = error_message(protocol, &id.to_string(), &format!("at most {MAX_SUBSCRIPTIONS} subscriptions per connection"));
                            if sink.send(Message::Text(text.into())).await.is_err() { break; }
                            continue;
                        }
                        active.insert(id);
                    }
                    "complete" | "stop" => { active.remove(&id.to_string()); }
                    _ => {}
                }
                if to_gql.send(bytes).await.is_err() { break; }
            }
            out = gql.next() => {
                match out {
                    Some(WsMessage::Text(text)) => {
                        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                            && matches!(v.get("type").and_then(|t| t.as_str()), Some("complete" | "error"))
                            && let Some(id) = v.get("id").and_then(|i| i.as_str())
                        {
                            active.remove(id);
                        }
                        if sink.send(Message::Text(text.into())).await.is_err() { break; }
                    }
                    Some(WsMessage::Close(code, reason)) => {
                        let _ = sink.send(Message::Close(Some(CloseFrame { code, reason: reason.into() }))).await;
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}
