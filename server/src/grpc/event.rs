//! Event streams: the wechaty `Event` RPC and our resumable `puppet_rs.v1.EventFeed`.
//!
//! Each open stream is one task that reads its bus [`Subscription`] and writes into a bounded
//! channel (`STREAM_BUFFER` messages) that tonic drains into HTTP/2. When the client does not read,
//! the channel fills, the task stops reading the bus, and the bus cuts the subscription off once it
//! is `max_lag` events behind: the stream then ends with `RESOURCE_EXHAUSTED`. A heartbeat goes out
//! first and then every `heartbeat` period. Closing the bus (graceful shutdown) ends streams with OK.

use std::sync::Arc;
use std::time::Duration;

use puppet_proto::event::{DataPayload, EventKind, PuppetEvent};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::events::{Envelope, Lagged, Subscription};

/// Messages buffered between a stream's task and its HTTP/2 stream.
const STREAM_BUFFER: usize = 256;

/// The stream type both event RPCs return.
pub type EventStream<T> = ReceiverStream<Result<T, Status>>;

/// Converts bus envelopes into one RPC's message type.
pub trait StreamMessage: Send + 'static {
    /// One retained event.
    fn event(env: &Envelope) -> Self;
    /// A heartbeat (not part of the log).
    fn heartbeat() -> Self;
}

fn heartbeat_json() -> String {
    PuppetEvent::Heartbeat(DataPayload { data: "puppet-rs heartbeat".into() }).payload_json()
}

impl StreamMessage for pb::EventResponse {
    fn event(env: &Envelope) -> Self {
        // Juzi's field is an int32: a sequence past it is sent as 0 (unknown) rather than wrapped.
        let seq = i32::try_from(env.seq).unwrap_or(0);
        Self { r#type: env.kind.wire(), payload: env.payload.clone(), seq }
    }
    fn heartbeat() -> Self {
        Self { r#type: EventKind::Heartbeat.wire(), payload: heartbeat_json(), seq: 0 }
    }
}

impl StreamMessage for ext::SequencedEvent {
    fn event(env: &Envelope) -> Self {
        Self { seq: env.seq, time: Some(env.time.into()), r#type: env.kind.wire(), payload: env.payload.clone() }
    }
    fn heartbeat() -> Self {
        Self {
            seq: 0,
            time: Some(std::time::SystemTime::now().into()),
            r#type: EventKind::Heartbeat.wire(),
            payload: heartbeat_json(),
        }
    }
}

/// Why a stream's task stops.
enum End {
    /// The client went away.
    Closed,
    /// The bus ended the subscription for lagging.
    Cut(Lagged),
}

/// Sends one message, unless the client is gone or the subscription is cut off while waiting for
/// room (a client that does not read is ended all the same).
async fn deliver<T>(tx: &mpsc::Sender<Result<T, Status>>, sub: &Subscription, msg: T) -> Result<(), End> {
    tokio::select! {
        biased;
        lagged = sub.cut_off() => Err(End::Cut(lagged)),
        sent = tx.send(Ok(msg)) => sent.map_err(|_| End::Closed),
    }
}

/// Starts the task that feeds one stream; returns the stream. The task is owned by the stream: it
/// ends when the client goes, the subscription is cut off, or the bus closes.
pub fn pump<T: StreamMessage>(mut sub: Subscription, heartbeat: Duration) -> EventStream<T> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER + 1);
    tokio::spawn(async move {
        // One slot is kept for the final status: a client whose buffer is full still learns why its
        // stream ended, and never mistakes the end for an OK.
        let Ok(last_word) = tx.clone().reserve_owned().await else { return };
        let end = async {
            // Every stream opens with a heartbeat: the Node client waits up to 5 s for a first message.
            deliver(&tx, &sub, T::heartbeat()).await?;
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + heartbeat, heartbeat);
            ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
            let mut batch: Vec<Arc<Envelope>> = Vec::with_capacity(256);
            loop {
                tokio::select! {
                    biased;
                    _ = tx.closed() => return Err(End::Closed),
                    _ = ticker.tick() => deliver(&tx, &sub, T::heartbeat()).await?,
                    next = sub.next_batch(&mut batch) => match next {
                        Ok(true) => {
                            for env in batch.drain(..) {
                                deliver(&tx, &sub, T::event(&env)).await?;
                            }
                        }
                        Ok(false) => return Ok(()),
                        Err(lagged) => return Err(End::Cut(lagged)),
                    }
                }
            }
        }
        .await;
        if let Err(End::Cut(lagged)) = end {
            tracing::warn!(behind = lagged.behind, limit = lagged.limit, "cutting off a slow event subscriber");
            last_word.send(Err(Status::resource_exhausted(lagged.to_string())));
        }
    });
    ReceiverStream::new(rx)
}
