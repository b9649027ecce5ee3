//! The account's embedded, crash-safe store: the event log, messages, the payload cache and the
//! backend's own state, in one [redb] file per account (`<data dir>/store.redb`).
//!
//! * **One writer.** Writes are queued ([`Store::submit`]) and committed by one thread the store
//!   owns, in group commits: at once under [`Durability::Always`] (every commit fsynced before the
//!   writes it holds are acknowledged — see [`Store::settled`]), at most every
//!   [`BATCH_INTERVAL`] under [`Durability::Batch`]. Nothing blocks on the disk on the async
//!   runtime, and no lock is held across I/O.
//! * **Reads** go to the file through redb's page cache; callers on the runtime use
//!   [`Store::read`] (a blocking-pool task).
//! * **Limits.** Retention of events and messages by count, age and bytes runs after commits; the
//!   store's own size is capped (`max_bytes`): past it, or when the disk is full, writes fail with
//!   [`StoreError::Full`] (the gRPC layer says `RESOURCE_EXHAUSTED`) and reads keep working.
//! * **Recovery.** redb keeps two commit slots with checksums: a commit torn by a crash is rolled
//!   back to the previous one when the file is opened. A file that cannot be opened at all (lost
//!   pages, not a redb file) is moved aside with one log line and a fresh store is started — never
//!   a crash loop.
//! * [`Durability::Memory`] keeps the same tables in memory (tests, benchmarks): nothing survives
//!   the process.
//!
//! Why redb and not fjall, measured here on 1 M events (see the commit that added it): 12 MB of RSS
//! against 53 MB for fjall with its memtable cut to 4 MiB, 0.4–1 M events/s in 15k-event commits
//! against 0.2–0.24 M/s, range reads at 2–6.7 M/s against 0.6–3.9 M/s; fjall's journal fsync is
//! quicker (p50 0.1–0.4 ms against 0.7–1.9 ms for a one-event commit).

pub mod events;
pub mod kv;
pub mod messages;
#[cfg(test)]
mod torn;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableTable, TableDefinition};
use tokio::sync::watch;

pub use events::StoredEvent;
pub use kv::Kv;
pub use messages::{MessageRecord, Messages};

/// How long a batch may wait before it is committed under [`Durability::Batch`].
pub const BATCH_INTERVAL: Duration = Duration::from_millis(50);

/// When writes are durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// Every write is committed (fsync) before it is acknowledged: an event before it is
    /// delivered, a sent message before its id is returned.
    Always,
    /// Writes are group-committed at most every 50 ms; a crash loses at most that much.
    Batch,
    /// Nothing is written to disk (tests, benchmarks).
    Memory,
}

/// How much of a log is kept: the oldest entries go first once any bound is passed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Most entries.
    pub count: u64,
    /// Oldest entry's age.
    pub age: Duration,
    /// Most bytes (keys and values).
    pub bytes: u64,
}

/// How a store is opened.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// When writes are durable.
    pub durability: Durability,
    /// The event log's retention.
    pub events: Retention,
    /// The messages' retention.
    pub messages: Retention,
    /// The store file's size cap (allocated pages), in bytes.
    pub max_bytes: u64,
    /// The page cache's size, in bytes.
    pub cache_bytes: usize,
}

/// Why a store operation failed.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The size cap or the disk is full: writes are refused until retention makes room.
    #[error("the store is full: {0}")]
    Full(String),
    /// The store failed for another reason.
    #[error("the store failed: {0}")]
    Failed(String),
}

fn failed(e: impl std::fmt::Display) -> StoreError {
    StoreError::Failed(e.to_string())
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        match e {
            redb::Error::Io(io) if is_disk_full(&io) => StoreError::Full(format!("the disk is full ({io})")),
            e => failed(e),
        }
    }
}

fn is_disk_full(e: &std::io::Error) -> bool {
    e.raw_os_error() == Some(28) || e.kind() == std::io::ErrorKind::StorageFull
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                redb::Error::from(e).into()
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError
);

/// One queued write.
#[derive(Debug)]
pub(crate) enum Op {
    Event(StoredEvent),
    Message(MessageRecord),
    KvPut { ns: String, key: String, value: Vec<u8> },
    KvDelete { ns: String, key: String },
    CachePut { kind: u8, id: String, value: Vec<u8> },
    CacheDrop { kind: u8, id: String },
}

impl Op {
    fn cost(&self) -> usize {
        64 + match self {
            Op::Event(e) => e.payload.len(),
            Op::Message(m) => m.body.len() + m.id.len() + m.conversation.len(),
            Op::KvPut { ns, key, value } => ns.len() + key.len() + value.len(),
            Op::KvDelete { ns, key } => ns.len() + key.len(),
            Op::CachePut { id, value, .. } => id.len() + value.len(),
            Op::CacheDrop { id, .. } => id.len(),
        }
    }
}

pub(crate) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// What the queue holds between commits.
struct Pending {
    ops: Vec<Op>,
    bytes: usize,
    /// Ticket of the last op queued.
    last_ticket: u64,
    stopping: bool,
}

/// Queued but uncommitted bytes past which writes are refused: the disk cannot keep up.
const MAX_PENDING_BYTES: usize = 64 << 20;
/// How often retention runs (after commits, and when idle).
const RETENTION_EVERY: Duration = Duration::from_secs(1);
/// Most bytes of writes one transaction takes.
const MAX_COMMIT_BYTES: usize = 4 << 20;
/// Backlog at which producers that can wait do (see [`Store::wait_backlog_below`]); a batch-mode
/// commit gathers no longer than it takes the backlog to reach this, since past it nothing more
/// would come.
pub const BACKLOG_SOFT_BYTES: usize = 2 << 20;
/// Measuring the pages in use walks the file's trees: done once per retention pass, and between
/// passes only when the estimate says the size cap may be reached.
const PAGE_OVERHEAD_ESTIMATE: u64 = 2;

struct Shared {
    db: Database,
    path: Option<PathBuf>,
    options: StoreOptions,
    log_id: String,
    pending: Mutex<Pending>,
    wake: Condvar,
    /// The last ticket committed (or given up on), for [`Store::settled`].
    committed: watch::Sender<u64>,
    /// Rings whenever the writer has taken a batch (the backlog shrank).
    drained: watch::Sender<()>,
    /// Why writes are refused now, if they are.
    refusing: Mutex<Option<StoreError>>,
    full: AtomicBool,
    /// The event sequence the next commit's reservation covers (see [`events`]).
    reserved_seq: AtomicU64,
    /// The highest event sequence committed.
    committed_seq: watch::Sender<u64>,
    /// The oldest event sequence on disk (0: none).
    first_event: AtomicU64,
    /// The newest event sequence retention deleted (0: none).
    floor: AtomicU64,
    /// Writes dropped because the store refused them.
    dropped: AtomicU64,
    /// The newest sequence given to an event the store dropped (refused, or its commit failed).
    dropped_seq: AtomicU64,
    /// Set while recording [`Shared::dropped_seq`] fails (logged once per failure spell).
    reservation_failing: AtomicBool,
    stats: StatsCounters,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Written but not yet committed: read back from here (tagged with their tickets).
    overlay: Mutex<Overlay>,
    /// Last field: dropped after the database, so it tells when the file is released.
    released: Released,
}

/// Sends `true` when dropped.
struct Released(watch::Sender<bool>);

impl Drop for Released {
    fn drop(&mut self) {
        self.0.send_replace(true);
    }
}

type KvKey = (String, String);
/// An entry written and not yet committed: the ticket to commit, the value (`None`: removed).
type Remembered = (Ticket, Option<Vec<u8>>);

#[derive(Default)]
struct Overlay {
    /// id → (the ticket that must commit before it is forgotten, the first ticket — its place in
    /// its conversation's order —, the message).
    messages: std::collections::HashMap<String, (Ticket, Ticket, MessageRecord)>,
    /// (namespace, key) → (the ticket to commit, the value; `None` for a delete).
    kv: std::collections::HashMap<KvKey, Remembered>,
    /// (payload type, id) → (the ticket to commit, the payload; `None` for a drop).
    cache: std::collections::HashMap<(u8, String), Remembered>,
}

#[derive(Default)]
struct StatsCounters {
    commits: AtomicU64,
    /// Commits of the retention pass (only when it deleted something).
    retention_commits: AtomicU64,
    used_bytes: AtomicU64,
    /// Bytes committed since `used_bytes` was measured, times [`PAGE_OVERHEAD_ESTIMATE`].
    grown_bytes: AtomicU64,
    file_bytes: AtomicU64,
    /// Recent commit latencies, microseconds (a bounded ring for the metrics' quantiles).
    latencies: Mutex<std::collections::VecDeque<u64>>,
}

/// Figures for monitoring.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StoreStats {
    /// Bytes the store's pages take.
    pub used_bytes: u64,
    /// The file's size on disk (0 in memory).
    pub file_bytes: u64,
    /// Commits since start.
    pub commits: u64,
    /// Median commit latency of the last commits, in seconds.
    pub commit_p50: f64,
    /// 99th percentile of the same.
    pub commit_p99: f64,
    /// True while writes are refused.
    pub full: bool,
}

/// A handle to a ticket: see [`Store::settled`].
pub type Ticket = u64;

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.shared.path).field("log_id", &self.shared.log_id).finish()
    }
}

/// A fresh random id for a new log (hex of 16 bytes from the OS).
pub fn new_log_id() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: still unique enough per data dir and start.
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or_default();
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or_default()
}

impl Store {
    /// Opens (or creates) the store in `dir`, or in memory under [`Durability::Memory`]. A file
    /// that cannot be opened is moved aside (one log line) and a fresh store started. Blocking:
    /// call it at start-up or from the blocking pool.
    pub fn open(dir: &Path, options: StoreOptions) -> Result<Self, StoreError> {
        let (db, path) = match options.durability {
            Durability::Memory => {
                let db = Database::builder()
                    .create_with_backend(redb::backends::InMemoryBackend::new())
                    .map_err(StoreError::from)?;
                (db, None)
            }
            _ => {
                std::fs::create_dir_all(dir).map_err(failed)?;
                let path = dir.join("store.redb");
                (open_or_set_aside(&path, options.cache_bytes)?, Some(path))
            }
        };
        let (log_id, next_seq, clean) = events::open_log(&db, options.durability)?;
        let shared = Arc::new(Shared {
            db,
            path,
            options,
            log_id,
            pending: Mutex::new(Pending { ops: Vec::new(), bytes: 0, last_ticket: 0, stopping: false }),
            wake: Condvar::new(),
            committed: watch::Sender::new(0),
            drained: watch::Sender::new(()),
            refusing: Mutex::new(None),
            full: AtomicBool::new(false),
            reserved_seq: AtomicU64::new(next_seq),
            committed_seq: watch::Sender::new(next_seq.saturating_sub(1)),
            first_event: AtomicU64::new(0),
            floor: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            dropped_seq: AtomicU64::new(0),
            reservation_failing: AtomicBool::new(false),
            stats: StatsCounters::default(),
            writer: Mutex::new(None),
            overlay: Mutex::new(Overlay::default()),
            released: Released(watch::Sender::new(false)),
        });
        if !clean {
            tracing::warn!(
                next_seq,
                "the store was not closed cleanly; event numbering continues past what a crash may have lost"
            );
        }
        let store = Self { shared };
        store.refresh_sizes();
        store.refresh_first_event()?;
        let writer = store.clone();
        let handle = std::thread::Builder::new()
            .name("puppet-store".into())
            .spawn(move || writer.write_loop())
            .map_err(failed)?;
        *store.shared.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        Ok(store)
    }

    /// The log's id: new when the data dir's store is created (or in memory, at every start).
    pub fn log_id(&self) -> &str {
        &self.shared.log_id
    }

    /// Resolves once the last handle of this store is gone and its file is released (another
    /// [`Store::open`] of the same directory can then succeed). Holds no handle itself.
    pub fn on_release(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut released = self.shared.released.0.subscribe();
        async move {
            _ = released.wait_for(|r| *r).await;
        }
    }

    /// The durability policy in force.
    pub fn durability(&self) -> Durability {
        self.shared.options.durability
    }

    /// The first event sequence this run may use (numbering never repeats).
    pub fn next_seq(&self) -> u64 {
        self.shared.reserved_seq.load(Ordering::Acquire)
    }

    /// The oldest event sequence on disk, if any.
    pub fn first_event_seq(&self) -> Option<u64> {
        Some(self.shared.first_event.load(Ordering::Acquire)).filter(|s| *s != 0)
    }

    /// The newest event sequence retention has deleted (0: none): see [`events::floor`].
    pub fn retention_floor(&self) -> u64 {
        self.shared.floor.load(Ordering::Acquire)
    }

    fn refresh_first_event(&self) -> Result<(), StoreError> {
        let first = events::range(self)?.map_or(0, |(first, _)| first);
        self.shared.first_event.store(first, Ordering::Release);
        self.shared.floor.fetch_max(events::floor(self)?, Ordering::AcqRel);
        Ok(())
    }

    /// Follows the highest event sequence committed.
    pub fn committed_seq(&self) -> watch::Receiver<u64> {
        self.shared.committed_seq.subscribe()
    }

    /// The retention settings.
    pub fn options(&self) -> StoreOptions {
        self.shared.options
    }

    fn pending(&self) -> MutexGuard<'_, Pending> {
        self.shared.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` while writes are refused (size cap, full disk, a failed commit), with the reason.
    pub fn writable(&self) -> Result<(), StoreError> {
        if !self.shared.full.load(Ordering::Acquire) {
            return Ok(());
        }
        Err(self
            .shared
            .refusing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_else(|| StoreError::Full("writes are refused".into())))
    }

    /// Queues writes for the next commit; the ticket to wait on with [`Store::settled`].
    pub(crate) fn submit(&self, ops: impl IntoIterator<Item = Op>) -> Ticket {
        self.submit_remembering(ops, |_| {})
    }

    fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.shared.overlay.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A message written and not yet committed.
    pub(crate) fn remembered(&self, id: &str) -> Option<MessageRecord> {
        self.overlay().messages.get(id).map(|(_, _, m)| m.clone())
    }

    /// The uncommitted messages of a conversation, oldest first.
    pub(crate) fn remembered_in(&self, conversation: &str) -> Vec<MessageRecord> {
        let overlay = self.overlay();
        let mut out: Vec<(Ticket, MessageRecord)> = overlay
            .messages
            .values()
            .filter(|(_, _, m)| m.conversation == conversation)
            .map(|(_, first, m)| (*first, m.clone()))
            .collect();
        out.sort_by_key(|(t, _)| *t);
        out.into_iter().map(|(_, m)| m).collect()
    }

    /// Queues a message, remembering it until committed.
    pub(crate) fn remember(&self, message: MessageRecord) -> Ticket {
        let op = Op::Message(message.clone());
        self.submit_remembering([op], |t| {
            let mut overlay = self.overlay();
            let first = overlay.messages.get(&message.id).map_or(t, |(_, first, _)| *first);
            overlay.messages.insert(message.id.clone(), (t, first, message));
        })
    }

    /// Queues a key-value write (or with `None` a delete), remembering it until committed.
    pub(crate) fn submit_kv(&self, ns: &str, key: &str, value: Option<Vec<u8>>) -> Ticket {
        let op = match &value {
            Some(v) => Op::KvPut { ns: ns.to_owned(), key: key.to_owned(), value: v.clone() },
            None => Op::KvDelete { ns: ns.to_owned(), key: key.to_owned() },
        };
        self.submit_remembering([op], |t| {
            self.overlay().kv.insert((ns.to_owned(), key.to_owned()), (t, value));
        })
    }

    /// Queues a cached payload (or with `None` its drop), remembering it until committed.
    pub(crate) fn submit_cache(&self, kind: u8, id: &str, value: Option<Vec<u8>>) -> Ticket {
        let op = match &value {
            Some(v) => Op::CachePut { kind, id: id.to_owned(), value: v.clone() },
            None => Op::CacheDrop { kind, id: id.to_owned() },
        };
        self.submit_remembering([op], |t| {
            self.overlay().cache.insert((kind, id.to_owned()), (t, value));
        })
    }

    /// A cached payload written or dropped and not yet committed: `Some(None)` for a drop.
    pub(crate) fn remembered_cache(&self, kind: u8, id: &str) -> Option<Option<Vec<u8>>> {
        self.overlay().cache.get(&(kind, id.to_owned())).map(|(_, v)| v.clone())
    }

    /// A key-value entry written and not yet committed: `Some(None)` for a delete.
    pub(crate) fn remembered_kv(&self, ns: &str, key: &str) -> Option<Option<Vec<u8>>> {
        self.overlay().kv.get(&(ns.to_owned(), key.to_owned())).map(|(_, v)| v.clone())
    }

    /// The uncommitted key-value entries of a namespace.
    pub(crate) fn remembered_kv_ns(&self, ns: &str) -> Vec<(String, Option<Vec<u8>>)> {
        let overlay = self.overlay();
        overlay.kv.iter().filter(|((n, _), _)| n == ns).map(|((_, k), (_, v))| (k.clone(), v.clone())).collect()
    }

    fn forget_committed(&self, ticket: Ticket) {
        let mut overlay = self.overlay();
        overlay.messages.retain(|_, (t, _, _)| *t > ticket);
        overlay.kv.retain(|_, (t, _)| *t > ticket);
        overlay.cache.retain(|_, (t, _)| *t > ticket);
    }

    fn submit_remembering(&self, ops: impl IntoIterator<Item = Op>, remember: impl FnOnce(Ticket)) -> Ticket {
        let mut p = self.pending();
        if self.shared.full.load(Ordering::Acquire) {
            // Refused: dropped, not queued (memory stays bounded). An event is still delivered,
            // without being kept, once the writer has recorded that its sequence was given out
            // (see `reserve_dropped`).
            for op in ops {
                if let Op::Event(e) = op {
                    self.shared.dropped_seq.fetch_max(e.seq, Ordering::AcqRel);
                }
                if self.shared.dropped.fetch_add(1, Ordering::Relaxed).is_multiple_of(10_000) {
                    tracing::warn!(
                        "the store refuses writes: dropping them ({} so far)",
                        self.shared.dropped.load(Ordering::Relaxed)
                    );
                }
            }
            p.last_ticket += 1;
            let ticket = p.last_ticket;
            drop(p);
            // Nothing to commit, but the writer settles the ticket (`settled` waits for it).
            self.shared.wake.notify_one();
            return ticket;
        }
        for op in ops {
            p.bytes += op.cost();
            p.ops.push(op);
        }
        p.last_ticket += 1;
        let ticket = p.last_ticket;
        // Under the queue's lock, so the overlay's tickets follow the queue's order.
        remember(ticket);
        if p.bytes > MAX_PENDING_BYTES {
            self.refuse(StoreError::Full(format!(
                "more than {} MiB of writes wait for the disk",
                MAX_PENDING_BYTES >> 20
            )));
        }
        drop(p);
        self.shared.wake.notify_one();
        ticket
    }

    /// Bytes of writes waiting for the writer.
    pub fn backlog(&self) -> usize {
        self.pending().bytes
    }

    /// Waits while more than `bytes` of writes wait for the disk: a producer that can wait (a
    /// flood, a bulk import) keeps the backlog — and memory — small.
    pub async fn wait_backlog_below(&self, bytes: usize) {
        let mut drained = self.shared.drained.subscribe();
        while self.backlog() > bytes {
            if drained.changed().await.is_err() {
                return;
            }
        }
    }

    /// The last ticket handed out.
    pub fn last_ticket(&self) -> Ticket {
        self.pending().last_ticket
    }

    /// Waits until every write queued so far is committed — at once under
    /// [`Durability::Batch`] and [`Durability::Memory`], where acknowledging does not wait for the
    /// disk. `Err` when the commit failed (the writes are lost; the reason says why).
    pub async fn settled(&self) -> Result<(), StoreError> {
        if self.durability() != Durability::Always {
            return self.writable();
        }
        self.flushed().await
    }

    /// Waits until every write queued so far is committed, whatever the durability policy: for
    /// the rare write that must be on disk before something else happens (an imported file is
    /// renamed only once what it held is committed). `Err` as for [`Store::settled`].
    pub async fn flushed(&self) -> Result<(), StoreError> {
        let ticket = self.last_ticket();
        let mut committed = self.shared.committed.subscribe();
        if committed.wait_for(|c| *c >= ticket).await.is_err() {
            return Err(failed("the store was closed"));
        }
        self.writable()
    }

    /// Runs a read on the blocking pool.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store)).await.map_err(failed)?
    }

    /// The database, for this module's readers.
    pub(crate) fn db(&self) -> &Database {
        &self.shared.db
    }

    /// The account's messages.
    pub fn messages(&self) -> Messages {
        Messages::new(self.clone())
    }

    /// The backend's state and the payload cache.
    pub fn kv(&self) -> Kv {
        Kv::new(self.clone())
    }

    fn refuse(&self, why: StoreError) {
        let mut refusing = self.shared.refusing.lock().unwrap_or_else(|p| p.into_inner());
        if !self.shared.full.swap(true, Ordering::AcqRel) {
            tracing::error!(reason = %why, "the store refuses writes");
        }
        *refusing = Some(why);
    }

    fn accept_again(&self) {
        if self.shared.full.swap(false, Ordering::AcqRel) {
            tracing::info!("the store takes writes again");
        }
        *self.shared.refusing.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Writes dropped since start because the store refused them.
    pub fn dropped_writes(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Figures for monitoring.
    pub fn stats(&self) -> StoreStats {
        let s = &self.shared.stats;
        let mut recent: Vec<u64> = s.latencies.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        recent.sort_unstable();
        let quantile = |q: f64| {
            if recent.is_empty() { 0.0 } else { recent[((recent.len() - 1) as f64 * q) as usize] as f64 / 1e6 }
        };
        StoreStats {
            used_bytes: s.used_bytes.load(Ordering::Relaxed),
            file_bytes: s.file_bytes.load(Ordering::Relaxed),
            commits: s.commits.load(Ordering::Relaxed),
            commit_p50: quantile(0.5),
            commit_p99: quantile(0.99),
            full: self.shared.full.load(Ordering::Relaxed),
        }
    }

    /// The file's length: one `stat`, after every commit.
    fn refresh_file_bytes(&self) {
        let file = self.shared.path.as_ref().and_then(|p| std::fs::metadata(p).ok()).map_or(0, |m| m.len());
        self.shared.stats.file_bytes.store(file, Ordering::Relaxed);
    }

    /// The pages in use (a walk of every tree: see [`PAGE_OVERHEAD_ESTIMATE`]) and the file's length.
    fn refresh_sizes(&self) {
        let used = self
            .shared
            .db
            .begin_write()
            .ok()
            .and_then(|tx| {
                let stats = tx.stats().ok();
                tx.abort().ok();
                stats
            })
            .map(|st| st.allocated_pages() * st.page_size() as u64);
        if let Some(used) = used {
            self.shared.stats.used_bytes.store(used, Ordering::Relaxed);
            self.shared.stats.grown_bytes.store(0, Ordering::Relaxed);
        }
        self.refresh_file_bytes();
    }

    /// The writer thread: group commits until [`Store::close`].
    fn write_loop(self) {
        let mut since_retention = Instant::now();
        loop {
            let (ops, ticket, stopping) = {
                let mut p = self.pending();
                loop {
                    // Idle, the writer still wakes now and then: retention by age needs no writes; tickets
                    // of dropped writes are settled too, with nothing to commit.
                    if p.stopping
                        || !p.ops.is_empty()
                        || p.last_ticket > *self.shared.committed.borrow()
                        || since_retention.elapsed() >= RETENTION_EVERY
                    {
                        break;
                    }
                    p = self.shared.wake.wait_timeout(p, RETENTION_EVERY).unwrap_or_else(|e| e.into_inner()).0;
                }
                if self.durability() == Durability::Batch && !p.stopping {
                    // Group commit: let a batch gather for up to the interval.
                    let deadline = Instant::now() + BATCH_INTERVAL;
                    while !p.stopping && p.bytes < BACKLOG_SOFT_BYTES {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break;
                        }
                        p = self.shared.wake.wait_timeout(p, left).unwrap_or_else(|e| e.into_inner()).0;
                    }
                }
                // One transaction takes at most MAX_COMMIT_BYTES: memory stays flat however far
                // the writer is behind; the rest waits for the next round.
                let mut taken = 0;
                let cut = p
                    .ops
                    .iter()
                    .position(|op| {
                        taken += op.cost();
                        taken > MAX_COMMIT_BYTES
                    })
                    .map_or(p.ops.len(), |i| i.max(1));
                let rest = p.ops.split_off(cut);
                let ops = std::mem::replace(&mut p.ops, rest);
                p.bytes = p.ops.iter().map(Op::cost).sum();
                self.shared.drained.send_replace(());
                // The ticket is settled only once nothing of it waits.
                let ticket = if p.ops.is_empty() { p.last_ticket } else { self.shared.committed.borrow().to_owned() };
                (ops, ticket, p.stopping && p.ops.is_empty())
            };
            if !ops.is_empty() {
                self.commit(ops);
            }
            if since_retention.elapsed() >= RETENTION_EVERY || stopping {
                since_retention = Instant::now();
                if let Err(e) = self.enforce_retention() {
                    tracing::warn!(error = %e, "store retention failed");
                }
            }
            self.reserve_dropped();
            self.forget_committed(ticket);
            self.shared.committed.send_replace(ticket);
            if stopping && self.pending().ops.is_empty() {
                // The watermark also passed the events a full store dropped.
                let last_given =
                    (*self.shared.committed_seq.borrow()).max(self.shared.dropped_seq.load(Ordering::Acquire));
                if let Err(e) = events::mark_clean(&self.shared.db, last_given) {
                    tracing::warn!(error = %e, "could not mark the store closed cleanly");
                }
                return;
            }
        }
    }

    /// Events a refusing store dropped were given sequences: before they are delivered under
    /// `always` (the watermark passes them), and so that no later run gives those sequences again
    /// after a crash, the newest is recorded with a commit of its own (a few bytes: a size cap
    /// leaves room for it). Retried on every round of the writer while it fails (a full disk).
    fn reserve_dropped(&self) {
        let dropped = self.shared.dropped_seq.load(Ordering::Acquire);
        if dropped <= *self.shared.committed_seq.borrow() {
            return;
        }
        let recorded = (|| -> Result<(), StoreError> {
            let tx = self.shared.db.begin_write()?;
            events::reserve_at_least(&mut tx.open_table(META)?, dropped, self.durability())?;
            tx.commit()?;
            Ok(())
        })();
        match recorded {
            Ok(()) => {
                self.shared.reserved_seq.fetch_max(dropped + 1, Ordering::AcqRel);
                self.shared.committed_seq.send_modify(|s| *s = (*s).max(dropped));
                if self.shared.reservation_failing.swap(false, Ordering::AcqRel) {
                    tracing::info!("the sequences of dropped events are recorded again");
                }
            }
            Err(e) => {
                if !self.shared.reservation_failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(
                        error = %e,
                        "cannot record the sequences of events the store dropped; under `always` they wait"
                    );
                }
            }
        }
    }

    fn commit(&self, ops: Vec<Op>) {
        if let Some(StoreError::Full(_)) = self.writable().err() {
            // Refused writes are dropped here too, unless retention has made room since.
            self.refresh_sizes();
            if self.shared.stats.used_bytes.load(Ordering::Relaxed) < self.shared.options.max_bytes {
                self.accept_again();
            }
        }
        let started = Instant::now();
        let bytes: u64 = ops.iter().map(|op| op.cost() as u64).sum();
        let newest_event = ops.iter().rev().find_map(|op| if let Op::Event(e) = op { Some(e.seq) } else { None });
        let result = self.apply(ops);
        let micros = started.elapsed().as_micros() as u64;
        self.shared.stats.commits.fetch_add(1, Ordering::Relaxed);
        {
            let mut lat = self.shared.stats.latencies.lock().unwrap_or_else(|p| p.into_inner());
            if lat.len() == 1024 {
                lat.pop_front();
            }
            lat.push_back(micros);
        }
        let stats = &self.shared.stats;
        let grown = stats.grown_bytes.fetch_add(bytes * PAGE_OVERHEAD_ESTIMATE, Ordering::Relaxed)
            + bytes * PAGE_OVERHEAD_ESTIMATE;
        if stats.used_bytes.load(Ordering::Relaxed) + grown >= self.shared.options.max_bytes {
            self.refresh_sizes();
        } else {
            self.refresh_file_bytes();
        }
        match result {
            Ok(last_event) => {
                if let Some(seq) = last_event {
                    self.shared.committed_seq.send_modify(|s| *s = (*s).max(seq));
                    if self.shared.first_event.load(Ordering::Acquire) == 0
                        && let Err(e) = self.refresh_first_event()
                    {
                        tracing::warn!(error = %e, "reading the event log's range failed");
                    }
                }
                if self.shared.stats.used_bytes.load(Ordering::Relaxed) >= self.shared.options.max_bytes {
                    self.refuse(StoreError::Full(format!(
                        "it reached its size cap of {} MiB (--store-max-mib); older events and messages must \
                         leave first",
                        self.shared.options.max_bytes >> 20
                    )));
                } else if self.pending().bytes <= MAX_PENDING_BYTES {
                    self.accept_again();
                }
            }
            Err(e) => {
                if let Some(seq) = newest_event {
                    self.shared.dropped_seq.fetch_max(seq, Ordering::AcqRel);
                }
                self.refuse(e)
            }
        }
    }

    /// One write transaction for `ops`; the last event sequence it holds.
    fn apply(&self, ops: Vec<Op>) -> Result<Option<u64>, StoreError> {
        let mut tx = self.shared.db.begin_write()?;
        let durability =
            if self.durability() == Durability::Memory { redb::Durability::None } else { redb::Durability::Immediate };
        tx.set_durability(durability)?;
        let last = {
            let mut w = Writes::open(&tx)?;
            let mut last_event = None;
            for op in ops {
                if let Op::Event(e) = &op {
                    last_event = Some(e.seq);
                }
                w.apply(op)?;
            }
            if let Some(seq) = last_event {
                events::reserve(&mut w.meta, seq, self.durability())?;
                self.shared.reserved_seq.fetch_max(seq + 1, Ordering::AcqRel);
            }
            w.finish()?;
            last_event
        };
        tx.commit()?;
        Ok(last)
    }

    fn enforce_retention(&self) -> Result<(), StoreError> {
        let mut tx = self.shared.db.begin_write()?;
        if self.durability() == Durability::Memory {
            tx.set_durability(redb::Durability::None)?;
        }
        let changed = {
            let mut w = Writes::open(&tx)?;
            let messages_before = w.counters;
            let floor = events::retain(&mut w, self.shared.options.events)?;
            messages::retain(&mut w, self.shared.options.messages)?;
            let cache_cleared = kv::retain_cache(&mut w)?;
            let changed = floor.is_some() || w.counters != messages_before || cache_cleared;
            if changed {
                w.finish()?;
            }
            // Announced before the commit: a reader that finds the events gone after reading
            // them also finds the floor past them, and is cut instead of skipping them.
            if let Some(floor) = floor {
                self.shared.floor.fetch_max(floor, Ordering::AcqRel);
            }
            changed
        };
        if !changed {
            // Nothing left: an idle account neither commits nor syncs (a thousand of them would
            // otherwise write to disk every second).
            tx.abort()?;
            return Ok(());
        }
        tx.commit()?;
        self.shared.stats.retention_commits.fetch_add(1, Ordering::Relaxed);
        self.refresh_sizes();
        self.refresh_first_event()
    }

    /// Commits what is queued, marks the store closed cleanly and stops the writer. The file is
    /// closed when the last handle is dropped. Blocking.
    pub fn close(self) {
        self.pending().stopping = true;
        self.shared.wake.notify_all();
        let handle = self.shared.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle
            && h.join().is_err()
        {
            tracing::error!("the store writer panicked");
        }
    }
}

/// Every table a commit may touch, open for one transaction.
pub(crate) struct Writes<'t> {
    pub(crate) meta: redb::Table<'t, &'static str, &'static [u8]>,
    pub(crate) events: redb::Table<'t, u64, &'static [u8]>,
    pub(crate) messages: redb::Table<'t, &'static str, &'static [u8]>,
    pub(crate) message_order: redb::Table<'t, u64, &'static str>,
    pub(crate) conversations: redb::Table<'t, (&'static str, u64), &'static str>,
    pub(crate) kv: redb::Table<'t, (&'static str, &'static str), &'static [u8]>,
    pub(crate) cache: redb::Table<'t, (u8, &'static str), &'static [u8]>,
    pub(crate) counters: messages::Counters,
    pub(crate) event_counters: events::Counters,
}

impl<'t> Writes<'t> {
    fn open(tx: &'t redb::WriteTransaction) -> Result<Self, StoreError> {
        let meta = tx.open_table(META)?;
        let counters = messages::Counters::read(&meta)?;
        let event_counters = events::Counters::read(&meta)?;
        Ok(Self {
            events: tx.open_table(events::EVENTS)?,
            messages: tx.open_table(messages::MESSAGES)?,
            message_order: tx.open_table(messages::ORDER)?,
            conversations: tx.open_table(messages::CONVERSATIONS)?,
            kv: tx.open_table(kv::KV)?,
            cache: tx.open_table(kv::CACHE)?,
            meta,
            counters,
            event_counters,
        })
    }

    fn apply(&mut self, op: Op) -> Result<(), StoreError> {
        match op {
            Op::Event(e) => events::insert(self, &e),
            Op::Message(m) => messages::insert(self, &m),
            Op::KvPut { ns, key, value } => {
                self.kv.insert((ns.as_str(), key.as_str()), value.as_slice())?;
                Ok(())
            }
            Op::KvDelete { ns, key } => {
                self.kv.remove((ns.as_str(), key.as_str()))?;
                Ok(())
            }
            Op::CachePut { kind, id, value } => {
                self.cache.insert((kind, id.as_str()), value.as_slice())?;
                Ok(())
            }
            Op::CacheDrop { kind, id } => {
                self.cache.remove((kind, id.as_str()))?;
                Ok(())
            }
        }
    }

    fn finish(mut self) -> Result<(), StoreError> {
        self.counters.write(&mut self.meta)?;
        self.event_counters.write(&mut self.meta)
    }
}

/// Reads a meta value as a u64 (0 when absent).
pub(crate) fn meta_u64(meta: &impl ReadableTable<&'static str, &'static [u8]>, key: &str) -> Result<u64, StoreError> {
    Ok(meta.get(key)?.and_then(|v| <[u8; 8]>::try_from(v.value()).ok()).map(u64::from_le_bytes).unwrap_or(0))
}

/// Opens the file; when it cannot be opened, tries [`repair_lost_growth`], and failing that moves
/// it aside and starts fresh.
fn open_or_set_aside(path: &Path, cache_bytes: usize) -> Result<Database, StoreError> {
    let e = match Database::builder().set_cache_size(cache_bytes).create(path) {
        Ok(db) => return Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            return Err(failed(format!("{} is in use by another puppet-server", path.display())));
        }
        Err(e) => e,
    };
    match repair_lost_growth(path, cache_bytes) {
        Ok(Some((db, len))) => {
            tracing::warn!(
                "{} could not be opened ({e}): its end was lost in a crash; extended with zeros to {len} bytes, it \
                 opened at its last whole commit",
                path.display()
            );
            return Ok(db);
        }
        Ok(None) => {}
        Err(re) => tracing::warn!("repairing {} failed: {re}", path.display()),
    }
    let stamp = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default();
    let aside = path.with_extension(format!("redb.unusable-{stamp}"));
    std::fs::rename(path, &aside)
        .map_err(|re| failed(format!("{} cannot be opened ({e}) nor moved aside ({re})", path.display())))?;
    tracing::error!(
        "{} could not be opened ({e}); moved to {} and started a fresh store",
        path.display(),
        aside.display()
    );
    Database::builder().set_cache_size(cache_bytes).create(path).map_err(StoreError::from)
}

/// The page size redb writes with; file lengths of a valid layout are multiples of it.
const REDB_PAGE: u64 = 4096;

/// A crash while a commit grew the file can leave the new length unwritten while the commit's
/// header made it (a file system that persisted one and not the other): redb then reads past the
/// end — or finds a length no layout has — and refuses the file instead of rolling back to the
/// previous commit, which is whole. Zero-filling the lost end lets it roll back (`store::torn`
/// shows it). Tried on a copy, at growing lengths; the copy replaces the file only once it opened
/// and passed redb's full integrity check. `Ok(None)`: no length helped.
fn repair_lost_growth(path: &Path, cache_bytes: usize) -> std::io::Result<Option<(Database, u64)>> {
    let len = std::fs::metadata(path)?.len();
    let copy = path.with_extension("redb.repairing");
    std::fs::copy(path, &copy)?;
    let file = std::fs::OpenOptions::new().write(true).open(&copy)?;
    let page_aligned = len.div_ceil(REDB_PAGE) * REDB_PAGE;
    // Growth a commit may have lost: one commit takes at most MAX_COMMIT_BYTES, plus the pages
    // that copy-on-write and redb's region headers add; redb grows its file by up to doubling.
    let mut lengths: Vec<u64> = (0..=4).map(|i| page_aligned + (REDB_PAGE << (4 * i))).collect();
    lengths.insert(0, page_aligned);
    lengths.push(page_aligned.saturating_mul(2).max(page_aligned + (64 << 20)));
    lengths.dedup();
    for target in lengths {
        file.set_len(target)?;
        let Ok(mut db) = Database::builder().set_cache_size(cache_bytes).create(&copy) else { continue };
        if db.check_integrity().is_err() {
            continue;
        }
        drop(db);
        drop(file);
        std::fs::rename(&copy, path)?;
        let db = Database::builder().set_cache_size(cache_bytes).create(path).map_err(std::io::Error::other)?;
        return Ok(Some((db, target)));
    }
    drop(file);
    std::fs::remove_file(&copy)?;
    Ok(None)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn options(durability: Durability) -> StoreOptions {
        let r = Retention { count: 1_000_000, age: Duration::from_secs(3600), bytes: 1 << 30 };
        StoreOptions { durability, events: r, messages: r, max_bytes: 1 << 30, cache_bytes: 4 << 20 }
    }

    pub(crate) fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("puppet-store-{}", uuid::Uuid::new_v4()))
    }

    #[tokio::test]
    async fn the_retention_pass_commits_only_when_it_deletes_something() {
        let dir = temp_dir();
        let mut opts = options(Durability::Batch);
        opts.events.count = 3;
        let store = Store::open(&dir, opts).unwrap();
        let event = |seq| events::StoredEvent { seq, time_ms: now_ms(), kind: 3, payload: "{}".into() };
        for seq in 1..=3 {
            store.append_event(event(seq));
        }
        store.flushed().await.unwrap();
        let retention_commits = || store.shared.stats.retention_commits.load(Ordering::Relaxed);
        let before = retention_commits();
        store.enforce_retention().unwrap();
        store.enforce_retention().unwrap();
        assert_eq!(retention_commits(), before, "nothing to delete: an idle store does not commit");
        store.append_event(event(4));
        store.flushed().await.unwrap();
        store.enforce_retention().unwrap();
        assert_eq!(retention_commits(), before + 1);
        assert_eq!(store.retention_floor(), 1);
        store.clone().close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn writes_settle_and_survive_a_reopen_with_the_same_log_id() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Always)).unwrap();
        let log_id = store.log_id().to_owned();
        store.kv().put("mock", "session", &"logged in").unwrap();
        store.settled().await.unwrap();
        store.close();
        let again = Store::open(&dir, options(Durability::Always)).unwrap();
        assert_eq!(again.log_id(), log_id);
        assert_eq!(again.kv().get::<String>("mock", "session").unwrap().as_deref(), Some("logged in"));
        again.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_file_that_cannot_be_opened_is_moved_aside() {
        let dir = temp_dir();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("store.redb"), b"not a redb file at all, just text").unwrap();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        store.close();
        let names: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        assert!(names.iter().any(|n| n.starts_with("store.redb.unusable-")), "{names:?}");
        assert!(!names.iter().any(|n| n.contains("repairing")), "the repair's copy is removed: {names:?}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn under_always_a_write_the_full_store_dropped_settles_with_the_reason() {
        let dir = temp_dir();
        let mut opts = options(Durability::Always);
        opts.max_bytes = 1 << 20;
        let store = Store::open(&dir, opts).unwrap();
        let event = |seq| StoredEvent { seq, time_ms: now_ms(), kind: 3, payload: "x".repeat(1000) };
        let mut seq = 0;
        while store.writable().is_ok() {
            assert!(seq < 100_000, "1 MiB never filled");
            seq += 1;
            store.append_event(event(seq));
            _ = store.settled().await;
        }
        // Dropped, not queued: nothing to commit, yet its ticket must settle.
        store.append_event(event(seq + 1));
        let settled = tokio::time::timeout(Duration::from_secs(10), store.settled()).await;
        assert!(matches!(settled, Ok(Err(StoreError::Full(_)))), "{settled:?}");
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn memory_stores_start_with_a_new_log_each_time() {
        let a = Store::open(Path::new("/nonexistent"), options(Durability::Memory)).unwrap();
        let b = Store::open(Path::new("/nonexistent"), options(Durability::Memory)).unwrap();
        assert_ne!(a.log_id(), b.log_id());
        a.close();
        b.close();
    }
}
