//! The event bus: one sequenced, bounded log of everything the backend emits, read by any number of
//! subscribers through their own cursors.
//!
//! * With a durable [`Store`], every event is also appended to the account's on-disk log: the
//!   numbering continues across restarts, and a subscriber resuming from an event that has left
//!   the in-memory tail reads it back from disk. Under `--durability always` an event is delivered
//!   only once it is committed. Without one (`--durability memory`), the in-memory window is the
//!   whole log.
//!
//! * Every event gets a sequence number (1, 2, …) and a timestamp, and is kept in a retention window
//!   of at most `capacity` events and `max_bytes` bytes; older ones are dropped from the front.
//! * Publishing never waits for readers: there is no per-subscriber buffer to fill. A subscriber is a
//!   cursor into the log plus a doorbell (`watch`) that rings on every publish.
//! * A subscriber more than `max_lag` events behind the newest one, or whose next event has already
//!   left the window, is ended with [`Lagged`] — memory stays bounded and fast subscribers never
//!   slow down because of a slow one. The check runs when events are published, not only when the
//!   subscriber reads, so a client that never reads is ended as promptly as one that reads slowly.
//!   A subscriber that resumes from further back (`after_seq`) is exempt until it has first come
//!   within `max_lag` of the newest event: it reads the retained log at its own pace (from disk,
//!   with a store) and holds nothing but its cursor meanwhile; it is still ended if retention
//!   overtakes it.
//! * The bus also remembers the login state (pending SCAN, LOGIN, READY) so a late subscriber can be
//!   told where the account stands, as the official server does.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use puppet_proto::event::{EventKind, PuppetEvent};
use tokio::sync::{Notify, watch};

use crate::store::{Durability, Store, StoredEvent};

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
    /// The client resumes a log this server does not hold (its data dir was wiped or replaced,
    /// or it runs in memory and restarted).
    #[error(
        "cannot resume log `{requested}`: this server's event log is `{current}` (the log was replaced; \
         start again without after_seq)"
    )]
    OtherLog {
        /// The log the client named.
        requested: String,
        /// This server's log.
        current: String,
    },
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
    /// Resuming from further back than `max_lag`, and not yet caught up: not cut for lagging.
    catching_up: AtomicBool,
    wake: Notify,
}

impl Reader {
    /// Whether `behind` is too far: clears `catching_up` once the reader has come within `max_lag`.
    fn lags(&self, behind: u64, max_lag: u64) -> bool {
        if behind <= max_lag {
            self.catching_up.store(false, Ordering::Relaxed);
            return false;
        }
        !self.catching_up.load(Ordering::Relaxed)
    }
}

struct Shared {
    log: Mutex<Log>,
    doorbell: watch::Sender<u64>,
    /// Events the in-memory tail holds at most.
    capacity: usize,
    /// Bytes the in-memory tail holds at most.
    max_bytes: usize,
    /// Events the log retains (the tail in memory, the store's count retention with one).
    retention: u64,
    max_lag: u64,
    /// The first sequence this run gives: from it on, sequences are contiguous.
    run_first: u64,
    /// The account's store when it is durable.
    store: Option<Store>,
    log_id: String,
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

    /// For producers that can wait (a flood, a bulk import): waits while the store's writer is
    /// behind, so the queue of events on their way to disk — and memory — stays small.
    pub async fn backpressure(&self) {
        if let Some(store) = &self.bus.shared.store {
            store.wait_backlog_below(crate::store::BACKLOG_SOFT_BYTES).await;
        }
    }
}

/// Retention figures for monitoring and for clients planning a resume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Oldest retained sequence (0 when nothing has been published).
    pub first_seq: u64,
    /// Newest sequence (0 when nothing has been published).
    pub last_seq: u64,
    /// Window size.
    pub capacity: u64,
    /// The log's id (see [`SubscribeError::OtherLog`]).
    pub log_id: String,
}

/// The bus's limits with a store.
#[derive(Clone, Copy, Debug)]
pub struct BusLimits {
    /// Events retained (the store deletes the rest; resuming before them is `OUT_OF_RANGE`).
    pub retention: u64,
    /// Events the in-memory tail for live subscribers holds at most.
    pub tail_events: usize,
    /// Bytes the tail holds at most.
    pub tail_bytes: usize,
    /// How far a subscriber may fall behind.
    pub max_lag: usize,
}

/// Publishes between two scans for lagging readers (at least; more with many readers, so the
/// scans cost O(1) per publish).
const SCAN_EVERY: u64 = 64;

impl EventBus {
    /// A bus in memory only, retaining at most `capacity` events and `max_bytes` bytes, whose
    /// subscribers may fall at most `max_lag` events behind.
    pub fn new(capacity: usize, max_bytes: usize, max_lag: usize) -> Self {
        Self::build(capacity, max_bytes, capacity as u64, max_lag, None, 1, crate::store::new_log_id())
    }

    /// A bus over the account's store: a durable store keeps the log (this run numbers on from it);
    /// a memory store leaves the tail as the whole log.
    pub fn with_store(store: &Store, limits: BusLimits) -> Self {
        let log_id = store.log_id().to_owned();
        if store.durability() == Durability::Memory {
            let count = (limits.retention as usize).min(limits.tail_events.max(limits.retention as usize));
            return Self::build(count, limits.tail_bytes, limits.retention, limits.max_lag, None, 1, log_id);
        }
        let next = store.next_seq();
        Self::build(
            limits.tail_events,
            limits.tail_bytes,
            limits.retention,
            limits.max_lag,
            Some(store.clone()),
            next,
            log_id,
        )
    }

    fn build(
        capacity: usize,
        max_bytes: usize,
        retention: u64,
        max_lag: usize,
        store: Option<Store>,
        next_seq: u64,
        log_id: String,
    ) -> Self {
        let capacity = capacity.max(1);
        let retention = retention.max(1);
        let log = Log {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            bytes: 0,
            next_seq,
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
                retention,
                // A lag beyond the window is caught as "left the window" anyway.
                max_lag: (max_lag.max(1) as u64).min(retention),
                run_first: next_seq,
                store,
                log_id,
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
            if let Some(store) = &self.shared.store {
                // Under the log's lock: the store receives events in sequence order.
                let time_ms = env.time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                store.append_event(StoredEvent { seq, time_ms, kind: kind.wire(), payload: env.payload.clone() });
                if kind == EventKind::Dirty
                    && let Some((payload_type, id)) = dirty_target(&env.payload)
                {
                    store.kv().cache_drop(payload_type, &id);
                }
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

    /// The oldest sequence still retained: in the tail, or with a durable store, the first after
    /// what the store's retention deleted (it counts the events it holds, once a second) and, once
    /// this run has given more than the retention count, no older than the newest that many (so
    /// the count holds at once, not a second later). Sequences the log never kept — skipped by an
    /// unclean batch-mode stop, dropped by a full store — are no reason to refuse a resume, nor to
    /// count against the retention: this run's sequences have no gap of the first kind.
    fn first_retained(&self, log: &Log) -> u64 {
        match &self.shared.store {
            None => log.first_seq(),
            Some(store) => {
                let after_floor = store.retention_floor() + 1;
                let next = log.last_seq() + 1;
                if next.saturating_sub(self.shared.run_first) >= self.shared.retention {
                    after_floor.max(next - self.shared.retention)
                } else {
                    after_floor
                }
            }
        }
    }

    /// The store's durability, when the bus has a durable store.
    fn durability(&self) -> Option<Durability> {
        self.shared.store.as_ref().map(Store::durability)
    }

    /// Ends every reader that is more than `max_lag` behind or whose next event left the window.
    fn cut_laggards(&self) {
        let (first, last) = {
            let log = self.lock();
            (self.first_retained(&log), log.last_seq())
        };
        let readers = self.shared.readers.lock().unwrap_or_else(|p| p.into_inner());
        for reader in readers.values() {
            let cursor = reader.cursor.load(Ordering::Acquire);
            let behind = (last + 1).saturating_sub(cursor);
            if (cursor < first || reader.lags(behind, self.shared.max_lag)) && !reader.cut.swap(true, Ordering::AcqRel)
            {
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
        let empty = log.last_seq() == 0;
        Retention {
            first_seq: if empty { 0 } else { self.first_retained(&log) },
            last_seq: log.last_seq(),
            capacity: self.shared.retention,
            log_id: self.shared.log_id.clone(),
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

    /// The log's id.
    pub fn log_id(&self) -> &str {
        &self.shared.log_id
    }

    /// Starts a subscription; `log_id`, when given, must be this bus's (a resume names the log it
    /// resumes).
    pub fn subscribe_to(&self, start: StartAt, log_id: Option<&str>) -> Result<Subscription, SubscribeError> {
        match log_id {
            Some(id) if !id.is_empty() && id != self.shared.log_id => Err(SubscribeError::OtherLog {
                requested: puppet_proto::ids::Shown(id).to_string(),
                current: self.shared.log_id.clone(),
            }),
            _ => self.subscribe(start),
        }
    }

    /// Starts a subscription.
    pub fn subscribe(&self, start: StartAt) -> Result<Subscription, SubscribeError> {
        // Subscribe to the doorbell before reading the log, so no publish can slip between the two.
        let doorbell = self.shared.doorbell.subscribe();
        let committed = self.shared.store.as_ref().map(Store::committed_seq);
        let log = self.lock();
        let (cursor, replay) = match start {
            StartAt::Live { replay_state } => {
                (log.next_seq, if replay_state { log.state_snapshot() } else { Vec::new() })
            }
            StartAt::After(seq) => {
                let (first, last) = (self.first_retained(&log), log.last_seq());
                if seq > last || seq + 1 < first {
                    return Err(SubscribeError::OutOfRange { requested: seq, first, last });
                }
                (seq + 1, Vec::new())
            }
        };
        let last_delivered = replay.iter().map(|e| e.seq).max().unwrap_or(cursor - 1);
        let catching_up = (log.last_seq() + 1).saturating_sub(cursor) > self.shared.max_lag;
        let reader = Arc::new(Reader {
            cursor: AtomicU64::new(cursor),
            catching_up: AtomicBool::new(catching_up),
            ..Default::default()
        });
        let id = self.shared.next_reader.fetch_add(1, Ordering::Relaxed);
        self.shared.readers.lock().unwrap_or_else(|p| p.into_inner()).insert(id, reader.clone());
        drop(log);
        self.shared.subscribers.fetch_add(1, Ordering::Relaxed);
        Ok(Subscription {
            bus: self.clone(),
            id,
            reader,
            cursor,
            doorbell,
            committed,
            replay: replay.into(),
            last_delivered,
        })
    }
}

/// `(payloadType, payloadId)` of a DIRTY payload.
fn dirty_target(payload: &str) -> Option<(u8, String)> {
    let v: serde_json::Value = serde_json::from_str(payload).ok()?;
    let kind = u8::try_from(v.get("payloadType")?.as_u64()?).ok()?;
    Some((kind, v.get("payloadId")?.as_str()?.to_owned()))
}

/// One reader of the bus. Not `Clone`: each subscriber has its own cursor.
pub struct Subscription {
    bus: EventBus,
    id: u64,
    reader: Arc<Reader>,
    /// The next sequence to deliver from the log.
    cursor: u64,
    doorbell: watch::Receiver<u64>,
    /// The store's committed sequence, under `--durability always` (deliver nothing past it).
    committed: Option<watch::Receiver<u64>>,
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

/// What a read of the store gave a subscriber.
enum FromDisk {
    /// Events.
    Delivered,
    /// Nothing yet: wait for the writer.
    Wait,
    /// A range the log never kept: look again from after it.
    Skipped,
}

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
            let committed = self.committed.as_mut().map(|c| *c.borrow_and_update());
            let from_disk = {
                let log = self.bus.lock();
                let last = log.last_seq();
                let behind = (last + 1).saturating_sub(self.cursor);
                if self.cursor < self.bus.first_retained(&log) || self.reader.lags(behind, self.bus.shared.max_lag) {
                    return Err(self.cut(behind));
                }
                // Under `always`, nothing is delivered before it is committed.
                let deliverable = match (committed, self.bus.durability()) {
                    (Some(c), Some(Durability::Always)) => last.min(c),
                    _ => last,
                };
                let tail_first = log.first_seq();
                if self.cursor > deliverable {
                    if log.closed && self.cursor > last {
                        return Ok(false);
                    }
                    false
                } else if self.cursor >= tail_first {
                    let start = (self.cursor - tail_first) as usize;
                    let n = ((deliverable + 1 - self.cursor) as usize).min(BATCH);
                    out.extend(log.events.range(start..start + n).cloned());
                    drop(log);
                    self.advance(n as u64);
                    // Caught up now? Then the publisher holds it to the limit from here on.
                    self.reader.lags((last + 1).saturating_sub(self.cursor), self.bus.shared.max_lag);
                    return Ok(true);
                } else {
                    true
                }
            };
            if from_disk {
                match self.read_disk(out).await {
                    Ok(FromDisk::Delivered) => return Ok(true),
                    Ok(FromDisk::Skipped) => continue,
                    Ok(FromDisk::Wait) => {}
                    Err(behind) => return Err(self.cut(behind)),
                }
            }
            let committed_changed = async {
                match self.committed.as_mut() {
                    Some(c) => c.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                rang = self.doorbell.changed() => if rang.is_err() { return Ok(false) },
                _ = committed_changed => {}
            }
        }
    }

    fn advance(&mut self, n: u64) {
        self.cursor += n;
        self.reader.cursor.store(self.cursor, Ordering::Release);
        self.last_delivered = self.cursor - 1;
    }

    fn cut(&self, behind: u64) -> Lagged {
        if !self.reader.cut.swap(true, Ordering::AcqRel) {
            self.bus.shared.cut_off.fetch_add(1, Ordering::Relaxed);
        }
        Lagged { behind, limit: self.bus.shared.max_lag, last_delivered: self.last_delivered }
    }

    /// Events that left the in-memory tail, read back from the store; `Err(behind)` when they are
    /// gone.
    async fn read_disk(&mut self, out: &mut Vec<Arc<Envelope>>) -> Result<FromDisk, u64> {
        let Some(store) = self.bus.shared.store.clone() else { return Err(0) };
        // Before the read: everything committed up to here is visible to it.
        let committed = *store.committed_seq().borrow();
        let after = self.cursor - 1;
        let read = store.read(move |s| crate::store::events::read_after(s, after, BATCH)).await;
        let events = match read {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "reading events back from the store failed");
                return Err(0);
            }
        };
        let tail_first = {
            let log = self.bus.lock();
            // Retention may have taken them meanwhile.
            if self.cursor < self.bus.first_retained(&log) {
                return Err(log.last_seq() + 1 - self.cursor);
            }
            log.first_seq()
        };
        let Some(last) = events.last().map(|e| e.seq) else {
            if self.cursor > committed {
                // Evicted from the tail before its commit (a slow disk): wait for the writer.
                return Ok(FromDisk::Wait);
            }
            // Nothing on disk from the cursor through `committed`, and nothing will come (commits
            // come in sequence order): sequences an unclean batch-mode stop skipped, or events a
            // full store dropped. Go on after them, in the tail if they are there.
            self.skip_to((committed + 1).min(tail_first));
            return Ok(FromDisk::Skipped);
        };
        // A sequence missing between the events read is missing for good, for the same reason.
        out.extend(events.into_iter().filter_map(|e| {
            Some(Arc::new(Envelope {
                seq: e.seq,
                time: std::time::UNIX_EPOCH + std::time::Duration::from_millis(e.time_ms),
                kind: EventKind::from_wire(e.kind)?,
                payload: e.payload,
            }))
        }));
        self.skip_to(last + 1);
        self.last_delivered = last;
        Ok(FromDisk::Delivered)
    }

    /// Moves the cursor to `next` without delivering what lies before it.
    fn skip_to(&mut self, next: u64) {
        self.cursor = next;
        self.reader.cursor.store(next, Ordering::Release);
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
        let log_id = bus.log_id().to_owned();
        assert_eq!(bus.retention(), Retention { first_seq: 4, last_seq: 8, capacity: 5, log_id });
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
    async fn a_resume_from_further_back_than_the_lag_limit_reads_at_its_own_pace_until_it_catches_up() {
        let bus = EventBus::new(1000, 1 << 20, 10);
        for i in 0..100 {
            bus.publish(dong(i));
        }
        let mut resumed = bus.subscribe(StartAt::After(0)).expect("retained");
        // Publishing while it reads does not cut it: it is catching up.
        bus.publish(dong(100));
        assert_eq!(drain(&mut resumed, 101).await, (1..=101).collect::<Vec<_>>());
        assert_eq!(bus.stats().cut_off, 0);
        // Caught up: from here on it is held to the limit like any subscriber.
        for i in 0..20 {
            bus.publish(dong(i));
        }
        let lag = resumed.next_batch(&mut Vec::new()).await.unwrap_err();
        assert_eq!(lag, Lagged { behind: 20, limit: 10, last_delivered: 101 });
        // A resume from a point retention has passed is still refused.
        let small = EventBus::new(5, 1 << 20, 2);
        for i in 0..10 {
            small.publish(dong(i));
        }
        assert!(small.subscribe(StartAt::After(1)).is_err());
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
    async fn a_resume_reads_across_sequences_the_log_never_kept() {
        use crate::store::{Durability, StoredEvent};
        let dir = crate::store::tests::temp_dir();
        let store = Store::open(&dir, crate::store::tests::options(Durability::Always)).unwrap();
        // 1..=5, then a range an unclean stop skipped, then 100..=104.
        for seq in (1..=5).chain(100..=104) {
            store.append_event(StoredEvent { seq, time_ms: 0, kind: EventKind::Dong.wire(), payload: "{}".into() });
        }
        store.settled().await.unwrap();
        let limits = BusLimits { retention: 1000, tail_events: 10, tail_bytes: 1 << 20, max_lag: 1000 };
        let bus = EventBus::with_store(&store, limits);
        assert_eq!(bus.publish(dong(0)), 105);
        let mut all = bus.subscribe(StartAt::After(0)).unwrap();
        let expected: Vec<u64> = (1..=5).chain(100..=105).collect();
        assert_eq!(drain(&mut all, expected.len()).await, expected, "read across the gap, not cut off");
        // Resuming after a sequence inside the gap (given out, then lost in a crash).
        let mut resumed = bus.subscribe(StartAt::After(50)).expect("nothing retained lies before it");
        assert_eq!(drain(&mut resumed, 6).await, (100..=105).collect::<Vec<_>>());
        drop((all, resumed, bus));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn with_a_store_the_retention_count_holds_at_once_not_a_second_later() {
        use crate::store::Durability;
        let dir = crate::store::tests::temp_dir();
        let store = Store::open(&dir, crate::store::tests::options(Durability::Batch)).unwrap();
        let limits = BusLimits { retention: 100, tail_events: 10, tail_bytes: 1 << 20, max_lag: 1000 };
        let bus = EventBus::with_store(&store, limits);
        for i in 0..250 {
            bus.publish(dong(i));
        }
        // The store deletes the older ones on its next retention pass; the window is exact now.
        let r = bus.retention();
        assert_eq!((r.first_seq, r.last_seq, r.capacity), (151, 250, 100));
        assert!(matches!(bus.subscribe(StartAt::After(149)), Err(SubscribeError::OutOfRange { .. })));
        let mut resumed = bus.subscribe(StartAt::After(150)).unwrap();
        assert_eq!(drain(&mut resumed, 100).await, (151..=250).collect::<Vec<_>>());
        drop((resumed, bus));
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
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
