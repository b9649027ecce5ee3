//! Live events over HTTP: `GET /events` as Server-Sent Events and `GET /events/ws` as a WebSocket,
//! both carrying each event as the proto3 JSON of `puppet_rs.v1.SequencedEvent`.
//!
//! They are the resumable event feed's streams ([`crate::grpc::event::pump`], the same task and
//! limits as `EventFeed/Subscribe`): SSE sends each event with `id:` = its sequence number and
//! heartbeats as comments, and resumes after `Last-Event-ID` (what a browser's `EventSource` sends
//! when it reconnects) or `?after_seq=`, from the store. A reader too slow to keep up is ended with
//! an `error` event whose `resumeAfterSeq` is the last sequence it was sent.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::ws::{Message as WsMessage, WebSocket};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use prost_reflect::{DescriptorPool, DynamicMessage};
use puppet_proto::ids::Shown;
use puppet_proto::pb::puppet_rs::v1 as ext;
use tokio_stream::StreamExt;
use tonic::Status;

use super::rest::RestError;
use crate::account::Account;
use crate::events::StartAt;
use crate::grpc::event::{EventStream, pump};

/// Where a reader starts: after `Last-Event-ID` / `?after_seq=`, else live with the login state.
pub fn start_at(last_event_id: Option<&str>, query: Option<&str>, allowed: &[&str]) -> Result<StartAt, RestError> {
    let mut after = None;
    if let Some(q) = query {
        for (key, value) in form_urlencoded::parse(q.as_bytes()) {
            match key.as_ref() {
                "after_seq" | "afterSeq" => after = Some(seq_of("after_seq", &value)?),
                k if allowed.contains(&k) => {}
                k => {
                    return Err(RestError::bad(format!(
                        "unknown query parameter `{}` (the event stream takes after_seq)",
                        Shown(k)
                    )));
                }
            }
        }
    }
    if let Some(id) = last_event_id.filter(|id| !id.trim().is_empty()) {
        after = Some(seq_of("Last-Event-ID", id.trim())?);
    }
    Ok(match after {
        Some(seq) => StartAt::After(seq),
        None => StartAt::Live { replay_state: true },
    })
}

fn seq_of(name: &str, text: &str) -> Result<u64, RestError> {
    text.parse().map_err(|_| RestError::bad(format!("`{name}` \"{}\" is not a sequence number", Shown(text))))
}

/// The feed's stream of `account` from `start`.
fn feed(account: &Account, start: StartAt) -> Result<EventStream<ext::SequencedEvent>, RestError> {
    let sub = account.bus.subscribe(start).map_err(|e| RestError::from(Status::out_of_range(e.to_string())))?;
    Ok(pump(sub, Duration::from_secs(account.config.heartbeat_secs)))
}

/// The proto3 JSON of one event.
fn event_json(pool: &DescriptorPool, event: &ext::SequencedEvent) -> String {
    let Some(desc) = pool.get_message_by_name("puppet_rs.v1.SequencedEvent") else { return "{}".into() };
    let mut msg = DynamicMessage::new(desc);
    if msg.transcode_from(event).is_err() {
        return "{}".into();
    }
    super::rest::to_json(&msg).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_else(|_| "{}".into())
}

/// The JSON of the status a stream ended with, and where to resume.
fn error_json(status: &Status, last: u64) -> String {
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "resumeAfterSeq": last.to_string(),
    })
    .to_string()
}

/// `GET /events`.
pub fn sse(account: &Account, pool: DescriptorPool, start: StartAt) -> Response {
    let stream = match feed(account, start) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let mut last = match start {
        StartAt::After(seq) => seq,
        StartAt::Live { .. } => account.bus.retention().last_seq,
    };
    let events = stream.map(move |item| -> Result<SseEvent, Infallible> {
        Ok(match item {
            Ok(e) if e.seq == 0 => SseEvent::default().comment("heartbeat"),
            Ok(e) => {
                last = last.max(e.seq);
                SseEvent::default().id(e.seq.to_string()).data(event_json(&pool, &e))
            }
            Err(status) => SseEvent::default().event("error").data(error_json(&status, last)),
        })
    });
    let mut response = Sse::new(events).into_response();
    // Proxies (nginx) would otherwise hold the stream back.
    response.headers_mut().insert("x-accel-buffering", http::HeaderValue::from_static("no"));
    response.headers_mut().insert(http::header::CACHE_CONTROL, http::HeaderValue::from_static("no-cache"));
    response
}

/// `GET /events/ws`: the same events, one text message each; heartbeats are pings. The socket is
/// closed after an error message when the stream ends.
pub fn websocket(
    account: &Account,
    pool: DescriptorPool,
    start: StartAt,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    let stream = match feed(account, start) {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let first = match start {
        StartAt::After(seq) => seq,
        StartAt::Live { .. } => account.bus.retention().last_seq,
    };
    upgrade.on_upgrade(move |socket| forward(socket, stream, pool, first))
}

async fn forward(
    mut socket: WebSocket,
    mut stream: EventStream<ext::SequencedEvent>,
    pool: DescriptorPool,
    mut last: u64,
) {
    loop {
        tokio::select! {
            incoming = socket.recv() => match incoming {
                // What the client sends is not read; a close or an error ends the stream.
                Some(Ok(WsMessage::Close(_))) | Some(Err(_)) | None => return,
                Some(Ok(_)) => {}
            },
            item = stream.next() => {
                let sent = match item {
                    Some(Ok(e)) if e.seq == 0 => socket.send(WsMessage::Ping(bytes::Bytes::new())).await,
                    Some(Ok(e)) => {
                        last = last.max(e.seq);
                        socket.send(WsMessage::Text(event_json(&pool, &e).into())).await
                    }
                    Some(Err(status)) => {
                        let text = serde_json::json!({ "error": serde_json::from_str::<serde_json::Value>(&error_json(&status, last)).unwrap_or_default() });
                        _ = socket.send(WsMessage::Text(text.to_string().into())).await;
                        _ = socket.send(WsMessage::Close(None)).await;
                        return;
                    }
                    None => {
                        _ = socket.send(WsMessage::Close(None)).await;
                        return;
                    }
                };
                if sent.is_err() {
                    return;
                }
            }
        }
    }
}
