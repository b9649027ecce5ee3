//! The event bus: one sequenced, bounded log of everything the backend emits, read by any number of
//! subscribers through their own cursors.
//!
//! * Every event gets a sequence number (1, 2, …) and a timestamp, and is kept in a retention window
//!   of at most `capacity` events and `max_bytes` bytes; older ones are dropped from the front.
//! * Publishing never waits for readers: there is no per-subscriber buffer to fill. A subscriber is a
//!   cursor into the log plus a doorbell (`watch`) that rings on every publish.
//! * A subscriber more than `max_lag` events behind the newest one, or whose next event has already
//!   left the window, is ended with [`Lagged`] — memory stays bounded and fast subscribers never
//!   slow down because of a slow one. The check runs when events are published, not only when the
//!   subscriber reads, so a client that never reads is ended as promptly as one that reads slowly.
//! * The bus also remembers the login state (pending SCAN, LOGIN, READY) so a late subscriber can be
//!   told where the account stands, as the official server does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use puppet_proto::event::{EventKind, PuppetEvent};
use tokio::sync::{Notify, watch};

/// One event as stored and delivered.
#[derive(Debug)]
pub struct Envelope {
    /// Sequence number, from 1.
    pub seq: u64,
    /// When it was published.
    pub time: SystemTime,
    /// Its kind.
    pub kind: EventKind,
    /// Its JSON payload.
    pub payload: String,
}

impl Envelope {
    /// What it costs to retain, in bytes (the payload plus the envelope around it).
    fn cost(&self) -> usize {
        self.payload.len() + std::mem::size_of::<Self>() + 32
    }
}

/// Where a new subscription starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    /// With the next event published; optionally preceded by the current login state.
    Live {
        /// Deliver the retained LOGIN/READY or pending SCAN first.
        replay_state: bool,
    },
    /// With the first retained event whose sequence is greater than this.
    After(u64),
}

/// Why a subscription could not start.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SubscribeError {
    /// The requested position has left the retention window (or was never reached).
    #[error(
        "cannot resume after sequence {requested}: the server retains sequences {first}..={last}{hint}",
        hint = if *requested > *last { " (a sequence from the future: did the server restart?)" } else { "" }
    )]
    OutOfRange {
        /// What the client asked for.
        requested: u64,
        /// The oldest retained sequence.
        first: u64,
        /// The newest sequence.
        last: u64,
    },
}

/// Why a subscription ended early.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "event subscriber fell {behind} events behind (limit {limit}); its stream was ended to protect the \
     server. Resume with puppet_rs.v1.EventFeed/Subscribe after_seq={last_delivered}"
)]
pub struct Lagged {
    /// How far behind it was.
    pub behind: u64,
    /// The limit it crossed.
    pub limit: u64,
    /// The last sequence it was given (0 for none).
    pub last_delivered: u64,
}

struct Log {
    events: VecDeque<Arc<Envelope>>,
    /// What the retained events cost ([`Envelope::cost`]).
    bytes: usize,
    next_seq: u64,
    pending_scan: Option<Arc<Envelope>>,
    login: Option<Arc<Envelope>>,
    ready: Option<Arc<Envelope>>,
    closed: bool,
}

impl Log {
    fn first_seq(&self) -> u64 {
        self.events.front().map_or(self.next_seq, |e| e.seq)
    }
    fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }
    fn state_snapshot(&self) -> Vec<Arc<Envelope>> {
        match &self.login {
            Some(login) => std::iter::once(login.clone()).chain(self.ready.clone()).collect(),
            None => self.pending_scan.iter().cloned().collect(),
        }
    }
}

/// A subscriber as the publisher sees it.
#[derive(Default)]
struct Reader {
    /// The next sequence it will be given.
    cursor: AtomicU64,
    /// Set (once) when the publisher ends it for lagging.
    cut: AtomicBool,
    /// How far behind it was when it was cut.
    behind: AtomicU64,
    wake: Notify,
}

struct Shared {
    log: Mutex<Log>,
    doorbell: watch::Sender<u64>,
    capacity: usize,
    max_bytes: usize,
    max_lag: u64,
    readers: Mutex<HashMap<u64, Arc<Reader>>>,
    next_reader: AtomicU64,
    subscribers: AtomicU64,
    cut_off: AtomicU64,
    logged_in: watch::Sender<bool>,
}

/// See [`EventBus::login_view`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoginView {
    /// The QR text of the pending scan, if one is pending and still has a QR.
    pub qrcode: Option<String>,
    /// The logged-in account.
    pub contact_id: Option<String>,
}

/// Counters for monitoring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusStats {
    /// Events published since start.
    pub emitted: u64,
    /// Subscriptions alive now.
    pub subscribers: u64,
    /// Subscriptions ended because they fell behind.
    pub cut_off: u64,
}

/// The bus. Cheap to clone; all clones share one log.
#[derive(Clone)]
pub struct EventBus {
    shared: Arc<Shared>,
}

/// What a backend holds to publish events.
#[derive(Clone)]
pub struct EventSink {
    bus: EventBus,
}

impl EventSink {
    /// Publishes one event; returns its sequence number.
    pub fn emit(&self, event: PuppetEvent) -> u64 {
        self.bus.publish(event)
    }
}

/// Retention figures for monitoring and for clients planning a resume.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Oldest retained sequence (0 when nothing has been published).
    pub first_seq: u64,
    /// Newest sequence (0 when nothing has been published).
    pub last_seq: u64,
    /// Window size.
    pub capacity: u64,
}

/// Publishes between two scans for lagging readers (at least; more with many readers, so the
/// scans cost O(1) per publish).
const SCAN_EVERY: u64 = 64;

impl EventBus {
    /// A bus retaining at most `capacity` events and `max_bytes` bytes, whose subscribers may
    /// fall at most `max_lag` events behind.
    pub fn new(capacity: usize, max_bytes: usize, max_lag: usize) -> Self {
        let capacity = capacity.max(1);
        let log = Log {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            bytes: 0,
            next_seq: 1,
            pending_scan: None,
            login: None,
            ready: None,
            closed: false,
        };
        Self {
            shared: Arc::new(Shared {
                log: Mutex::new(log),
                doorbell: watch::Sender::new(0),
                capacity,
                max_bytes: max_bytes.max(1),
                // A lag beyond the window is caught as "left the window" anyway.
                max_lag: max_lag.clamp(1, capacity) as u64,
                readers: Mutex::new(HashMap::new()),
                next_reader: AtomicU64::new(1),
                subscribers: AtomicU64::new(0),
                cut_off: AtomicU64::new(0),
                logged_in: watch::Sender::new(false),
            }),
        }
    }

    /// A sink for a backend.
    pub fn sink(&self) -> EventSink {
        EventSink { bus: self.clone() }
    }

    fn lock(&self) -> MutexGuard<'_, Log> {
        // A panic while holding this lock cannot leave the log inconsistent (every update is a
        // single push/pop), so a poisoned lock is still usable.
        self.shared.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Publishes one event; returns its sequence number.
    pub fn publish(&self, event: PuppetEvent) -> u64 {
        let kind = event.kind();
        let payload = event.payload_json();
        let seq = {
            let mut log = self.lock();
            let seq = log.next_seq;
            log.next_seq += 1;
            let env = Arc::new(Envelope { seq, time: SystemTime::now(), kind, payload });
            match kind {
                EventKind::Scan => log.pending_scan = Some(env.clone()),
                EventKind::Login => {
                    log.pending_scan = None;
                    log.login = Some(env.clone());
                    log.ready = None;
                }
                EventKind::Ready => log.ready = Some(env.clone()),
                EventKind::Logout => {
                    log.login = None;
                    log.ready = None;
                }
                _ => {}
            }
            log.bytes += env.cost();
            log.events.push_back(env);
            // The newest event is kept whatever it costs: its payload was bounded by the caller.
            while log.events.len() > 1 && (log.events.len() > self.shared.capacity || log.bytes > self.shared.max_bytes)
            {
                if let Some(old) = log.events.pop_front() {
                    log.bytes -= old.cost();
                }
            }
            seq
        };
        if seq % SCAN_EVERY.max(self.shared.subscribers.load(Ordering::Relaxed)) == 0 {
            self.cut_laggards();
        }
        self.shared.doorbell.send_replace(seq);
        match kind {
            EventKind::Login => _ = self.shared.logged_in.send_replace(true),
            EventKind::Logout => _ = self.shared.logged_in.send_replace(false),
            _ => {}
        }
        seq
    }

    /// Ends every reader that is more than `max_lag` behind or whose next event left the window.
    fn cut_laggards(&self) {
        let (first, last) = {
            let log = self.lock();
            (log.first_seq(), log.last_seq())
        };
        let readers = self.shared.readers.lock().unwrap_or_else(|p| p.into_inner());
        for reader in readers.values() {
            let cursor = reader.cursor.load(Ordering::Acquire);
            let behind = (last + 1).saturating_sub(cursor);
            if (cursor < first || behind > self.shared.max_lag) && !reader.cut.swap(true, Ordering::AcqRel) {
                reader.behind.store(behind, Ordering::Release);
                self.shared.cut_off.fetch_add(1, Ordering::Relaxed);
                reader.wake.notify_one();
            }
        }
    }

    /// Bytes retained now.
    pub fn retained_bytes(&self) -> usize {
        self.lock().bytes
    }

    /// Where the login stands: the pending QR text while scanning, the bot's id once logged in.
    pub fn login_view(&self) -> LoginView {
        let log = self.lock();
        let field = |env: &Option<Arc<Envelope>>, key: &str| {
            env.as_ref()
                .and_then(|e| serde_json::from_str::<serde_json::Value>(&e.payload).ok())
                .and_then(|v| v.get(key).and_then(|x| x.as_str()).map(str::to_owned))
        };
        LoginView { qrcode: field(&log.pending_scan, "qrcode"), contact_id: field(&log.login, "contactId") }
    }

    /// Follows the login state (true from a LOGIN until a LOGOUT).
    pub fn login_state(&self) -> watch::Receiver<bool> {
        self.shared.logged_in.subscribe()
    }

    /// Current retention figures.
    pub fn retention(&self) -> Retention {
        let log = self.lock();
        let empty = log.events.is_empty();
        Retention {
            first_seq: if empty { 0 } else { log.first_seq() },
            last_seq: log.last_seq(),
            capacity: self.shared.capacity as u64,
        }
    }

    /// Counters for monitoring.
    pub fn stats(&self) -> BusStats {
        BusStats {
            emitted: self.lock().last_seq(),
            subscribers: self.shared.subscribers.load(Ordering::Relaxed),
            cut_off: self.shared.cut_off.load(Ordering::Relaxed),
        }
    }

    /// True while the account is logged in (a LOGIN with no LOGOUT after it).
    pub fn logged_in(&self) -> bool {
        self.lock().login.is_some()
    }

    /// Ends every subscription once it has delivered what was published before this call.
    pub fn close(&self) {
        self.lock().closed = true;
        self.shared.doorbell.send_modify(|_| {});
    }

    /// Starts a subscription.
    pub fn subscribe(&self, start: StartAt) -> Result<Subscription, SubscribeError> {
        // Subscribe to the doorbell before reading the log, so no publish can slip between the two.
        let doorbell = self.shared.doorbell.subscribe();
        let log = self.lock();
        let (cursor, replay) = match start {
            StartAt::Live { replay_state } => {
                (log.next_seq, if replay_state { log.state_snapshot() } else { Vec::new() })
            }
            StartAt::After(seq) => {
                let (first, last) = (log.first_seq(), log.last_seq());
                if seq > last || seq + 1 < first {
                    return Err(SubscribeError::OutOfRange { requested: seq, first, last });
                }
                (seq + 1, Vec::new())
            }
        };
        let last_delivered = replay.iter().map(|e| e.seq).max().unwrap_or(cursor - 1);
        let reader = Arc::new(Reader { cursor: AtomicU64::new(cursor), ..Default::default() });
        let id = self.shared.next_reader.fetch_add(1, Ordering::Relaxed);
        self.shared.readers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, reader.clone());
        drop(log);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription { bus: self.clone(), id, reader, cursor, doorbell, replay: replay.into(), last_delivered })
    }
}

/// One reader of the bus. Not `Clone`: each subscriber has its own cursor.
pub struct Subscription {
    bus: EventBus,
    id: u64,
    reader: Arc<Reader>,
    /// The next sequence to deliver from the log.
    cursor: u64,
    doorbell: watch::Receiver<u64>,
    replay: VecDeque<Arc<Envelope>>,
    last_delivered: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.bus.shared.readers.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.id);
        self.bus.shared.subscribers.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How many events one lock acquisition hands a subscriber.
const BATCH: usize = 256;

impl Subscription {
    /// Appends the next events to `out` (at least one), waiting for them if needed. `Ok(false)`
    /// means the bus was closed and everything was delivered. Cancel-safe: dropping the future loses
    /// nothing, since the cursor moves only when events are handed over.
    pub async fn next_batch(&mut self, out: &mut Vec<Arc<Envelope>>) -> Result<bool, Lagged> {
        if let Some(lagged) = self.was_cut() {
            return Err(lagged);
        }
        if !self.replay.is_empty() {
            out.extend(self.replay.drain(..));
            return Ok(true);
        }
        loop {
            self.doorbell.borrow_and_update();
            {
                let log = self.bus.lock();
                let last = log.last_seq();
                let first = log.first_seq();
                let behind = (last + 1).saturating_sub(self.cursor);
                if self.cursor < first || behind > self.bus.shared.max_lag {
                    if !self.reader.cut.swap(true, Ordering::AcqRel) {
                        self.bus.shared.cut_off.fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(Lagged { behind, limit: self.bus.shared.max_lag, last_delivered: self.last_delivered });
                }
                if behind > 0 {
                    let start = (self.cursor - first) as usize;
                    let n = (behind as usize).min(BATCH);
                    out.extend(log.events.range(start..start + n).cloned());
                    self.cursor += n as u64;
                    self.reader.cursor.store(self.cursor, Ordering::Release);
                    self.last_delivered = self.cursor - 1;
                    return Ok(true);
                }
                if log.closed {
                    return Ok(false);
                }
            }
            if self.doorbell.changed().await.is_err() {
                return Ok(false);
            }
        }
    }
}

impl Subscription {
    /// `Some` once the publisher ended this subscription for lagging.
    fn was_cut(&self) -> Option<Lagged> {
        self.reader.cut.load(Ordering::Acquire).then(|| Lagged {
            behind: self.reader.behind.load(Ordering::Acquire),
            limit: self.bus.shared.max_lag,
            last_delivered: self.last_delivered,
        })
    }

    /// Completes when the publisher ends this subscription for lagging: a stream whose client
    /// does not read waits on this beside its blocked send. Cancel-safe.
    pub async fn cut_off(&self) -> Lagged {
        loop {
            let woken = self.reader.wake.notified();
            if let Some(lagged) = self.was_cut() {
                return lagged;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use puppet_proto::event::{DataPayload, LoginEvent};
    use puppet_proto::model::ScanStatus;

    fn dong(i: u64) -> PuppetEvent {
        PuppetEvent::Dong(DataPayload { data: i.to_string() })
    }

    async fn drain(sub: &mut Subscription, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            sub.next_batch(&mut out).await.unwrap();
        }
        out.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn subscribers_see_the_same_ordered_stream() {
        let bus = EventBus::new(100, 1 << 20, 100);
        let mut a = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        let mut b = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        for i in 0..10 {
            bus.publish(dong(i));
        }
        assert_eq!(drain(&mut a, 10).await, (1..=10).collect::<Vec<_>>());
        assert_eq!(drain(&mut b, 10).await, (1..=10).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn resume_after_a_sequence_and_refuse_what_left_the_window() {
        let bus = EventBus::new(5, 1 << 20, 5);
        for i in 0..8 {
            bus.publish(dong(i));
        }
        assert_eq!(bus.retention(), Retention { first_seq: 4, last_seq: 8, capacity: 5 });
        let mut sub = bus.subscribe(StartAt::After(5)).unwrap();
        assert_eq!(drain(&mut sub, 3).await, vec![6, 7, 8]);
        assert!(bus.subscribe(StartAt::After(3)).is_ok(), "after 3 starts at 4, still retained");
        let err = bus.subscribe(StartAt::After(2)).err().unwrap();
        assert_eq!(err, SubscribeError::OutOfRange { requested: 2, first: 4, last: 8 });
        assert!(bus.subscribe(StartAt::After(9)).is_err(), "a sequence from the future");
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_cut_off_without_affecting_others() {
        let bus = EventBus::new(1000, 1 << 20, 10);
        let mut slow = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        let mut fast = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        let mut got = Vec::new();
        for i in 0..50 {
            bus.publish(dong(i));
            fast.next_batch(&mut got).await.unwrap();
        }
        assert_eq!(got.len(), 50);
        let lag = slow.next_batch(&mut Vec::new()).await.unwrap_err();
        assert_eq!(lag, Lagged { behind: 50, limit: 10, last_delivered: 0 });
    }

    #[tokio::test]
    async fn late_subscribers_get_the_login_state() {
        let bus = EventBus::new(100, 1 << 20, 100);
        bus.publish(PuppetEvent::scan(ScanStatus::Waiting, Some("qr".into())));
        let mut sub = bus.subscribe(StartAt::Live { replay_state: true }).unwrap();
        let mut out = Vec::new();
        sub.next_batch(&mut out).await.unwrap();
        assert_eq!(out.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Scan]);

        bus.publish(PuppetEvent::Login(LoginEvent { contact_id: "me".into() }));
        bus.publish(PuppetEvent::ready());
        bus.publish(dong(1));
        let mut sub = bus.subscribe(StartAt::Live { replay_state: true }).unwrap();
        let mut out = Vec::new();
        sub.next_batch(&mut out).await.unwrap();
        assert_eq!(out.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EventKind::Login, EventKind::Ready]);
        bus.publish(dong(2));
        out.clear();
        sub.next_batch(&mut out).await.unwrap();
        assert_eq!(out[0].seq, 5, "live events follow the replay without gap or duplicate");
    }

    #[tokio::test]
    async fn close_ends_subscriptions_after_pending_events() {
        let bus = EventBus::new(10, 1 << 20, 10);
        let mut sub = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        bus.publish(dong(0));
        bus.close();
        let mut out = Vec::new();
        assert!(sub.next_batch(&mut out).await.unwrap());
        assert!(!sub.next_batch(&mut out).await.unwrap());
    }

    #[tokio::test]
    async fn retention_is_bounded_in_bytes_too() {
        let bus = EventBus::new(1000, 10_000, 1000);
        let big = |i: u64| PuppetEvent::Dong(DataPayload { data: format!("{i}:{}", "x".repeat(1000)) });
        for i in 0..100 {
            bus.publish(big(i));
        }
        let r = bus.retention();
        assert!(bus.retained_bytes() <= 10_000, "{} bytes retained", bus.retained_bytes());
        assert_eq!(r.last_seq, 100);
        assert!(r.last_seq - r.first_seq + 1 < 10, "only a few 1 KB events fit in 10 KB: {r:?}");
        assert!(matches!(bus.subscribe(StartAt::After(50)), Err(SubscribeError::OutOfRange { .. })));
    }

    #[tokio::test]
    async fn a_subscriber_that_never_reads_is_cut_off_by_publishing() {
        let bus = EventBus::new(100_000, 1 << 30, 100);
        let stuck = bus.subscribe(StartAt::Live { replay_state: false }).unwrap();
        assert_eq!(bus.stats().subscribers, 1);
        for i in 0..1000 {
            bus.publish(dong(i));
        }
        // Nobody called next_batch: the publisher noticed.
        let lagged = tokio::time::timeout(std::time::Duration::from_secs(5), stuck.cut_off()).await.unwrap();
        assert!(lagged.behind > 100, "{lagged:?}");
        assert_eq!(bus.stats().cut_off, 1);
        drop(stuck);
        assert_eq!(bus.stats().subscribers, 0);
    }
}
