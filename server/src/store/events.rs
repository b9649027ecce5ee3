//! The event log on disk: `seq → (time, kind, payload)`, numbered without ever repeating a
//! sequence across restarts, with the log's id.
//!
//! Numbering. Under [`Durability::Always`] an event is delivered only once committed, so the next
//! run continues after the last committed sequence. Under [`Durability::Batch`] an event may be
//! delivered before its commit, and a crash can lose it: each commit — and the opening of a run,
//! before it delivers anything — therefore also records a *reservation* ([`RESERVE`] sequences past
//! what it holds), the bus delivers nothing beyond it, and
//! a run after an unclean stop starts at the reservation — a gap in the numbering, never a sequence
//! given twice.

use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Durability, META, Retention, Store, StoreError, Writes, meta_u64, now_ms};

pub(crate) const EVENTS: TableDefinition<u64, &[u8]> = TableDefinition::new("events");

/// Sequences reserved past the last committed one under [`Durability::Batch`].
pub const RESERVE: u64 = 1 << 20;

const LOG_ID: &str = "log_id";
const LAST_SEQ: &str = "events.last_seq";
const RESERVED: &str = "events.reserved";
const CLEAN: &str = "clean";
const COUNT: &str = "events.count";
/// The newest sequence retention deleted.
const FLOOR: &str = "events.floor";
const BYTES: &str = "events.bytes";

/// One event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredEvent {
    /// Its sequence number.
    pub seq: u64,
    /// When it was published, ms since the epoch.
    pub time_ms: u64,
    /// Its wire kind (`EventType`).
    pub kind: i32,
    /// Its JSON payload.
    pub payload: String,
}

fn encode(e: &StoredEvent) -> Vec<u8> {
    let mut v = Vec::with_capacity(12 + e.payload.len());
    v.extend_from_slice(&e.time_ms.to_le_bytes());
    v.extend_from_slice(&e.kind.to_le_bytes());
    v.extend_from_slice(e.payload.as_bytes());
    v
}

fn decode(seq: u64, v: &[u8]) -> Option<StoredEvent> {
    let time_ms = u64::from_le_bytes(v.get(..8)?.try_into().ok()?);
    let kind = i32::from_le_bytes(v.get(8..12)?.try_into().ok()?);
    let payload = String::from_utf8_lossy(v.get(12..)?).into_owned();
    Some(StoredEvent { seq, time_ms, kind, payload })
}

/// How many events the log holds and what they weigh.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counters {
    count: u64,
    bytes: u64,
}

impl Counters {
    pub(crate) fn read(meta: &impl ReadableTable<&'static str, &'static [u8]>) -> Result<Self, StoreError> {
        Ok(Self { count: meta_u64(meta, COUNT)?, bytes: meta_u64(meta, BYTES)? })
    }
    pub(crate) fn write(&self, meta: &mut redb::Table<'_, &'static str, &'static [u8]>) -> Result<(), StoreError> {
        meta.insert(COUNT, self.count.to_le_bytes().as_slice())?;
        meta.insert(BYTES, self.bytes.to_le_bytes().as_slice())?;
        Ok(())
    }
}

fn cost(value_len: usize) -> u64 {
    (value_len + 8) as u64
}

pub(crate) fn insert(w: &mut Writes<'_>, e: &StoredEvent) -> Result<(), StoreError> {
    let v = encode(e);
    if w.events.insert(e.seq, v.as_slice())?.is_none() {
        w.event_counters.count += 1;
        w.event_counters.bytes += cost(v.len());
    }
    Ok(())
}

/// Records the last sequence a commit holds and, under [`Durability::Batch`], the reservation.
pub(crate) fn reserve(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    last: u64,
    durability: Durability,
) -> Result<(), StoreError> {
    meta.insert(LAST_SEQ, last.to_le_bytes().as_slice())?;
    if durability == Durability::Batch {
        meta.insert(RESERVED, (last + RESERVE).to_le_bytes().as_slice())?;
    }
    Ok(())
}

/// As [`reserve`], unless the log already records `last` or later.
pub(crate) fn reserve_at_least(
    meta: &mut redb::Table<'_, &'static str, &'static [u8]>,
    last: u64,
    durability: Durability,
) -> Result<(), StoreError> {
    if meta_u64(meta, LAST_SEQ)? >= last {
        return Ok(());
    }
    reserve(meta, last, durability)
}

/// Opens the log: its id (created when new), the first sequence this run uses, and whether the
/// last run closed it cleanly. Marks it open (unclean) until [`mark_clean`].
pub(crate) fn open_log(db: &redb::Database, durability: Durability) -> Result<(String, u64, bool), StoreError> {
    let tx = db.begin_write()?;
    let result = {
        let mut meta = tx.open_table(META)?;
        // Every table exists from the first open on, so readers never meet a missing one.
        tx.open_table(EVENTS)?;
        tx.open_table(super::messages::MESSAGES)?;
        tx.open_table(super::messages::ORDER)?;
        tx.open_table(super::messages::CONVERSATIONS)?;
        tx.open_table(super::kv::KV)?;
        tx.open_table(super::kv::CACHE)?;
        let existing = meta.get(LOG_ID)?.map(|v| String::from_utf8_lossy(v.value()).into_owned());
        let log_id = match existing {
            Some(id) if durability != Durability::Memory => id,
            _ => {
                let id = super::new_log_id();
                meta.insert(LOG_ID, id.as_bytes())?;
                meta.insert(CLEAN, [1u8].as_slice())?;
                id
            }
        };
        let clean = meta.get(CLEAN)?.is_some_and(|v| v.value() == [1u8]);
        let last = meta_u64(&meta, LAST_SEQ)?;
        let reserved = meta_u64(&meta, RESERVED)?;
        let next = if !clean && durability == Durability::Batch { reserved.max(last) + 1 } else { last + 1 };
        meta.insert(CLEAN, [0u8].as_slice())?;
        // The new run's numbering starts here even if it commits nothing.
        meta.insert(LAST_SEQ, (next - 1).to_le_bytes().as_slice())?;
        if durability == Durability::Batch {
            // Events are delivered before their commit: the run's first ones, before its first
            // commit, need a reservation too.
            meta.insert(RESERVED, (next - 1 + RESERVE).to_le_bytes().as_slice())?;
        }
        (log_id, next, clean)
    };
    tx.commit()?;
    Ok(result)
}

/// Records a clean close: the next run continues the numbering without a gap, after `last_given`
/// — the newest sequence this run gave an event, kept or not (a full store drops events but they
/// were delivered with their sequences).
pub(crate) fn mark_clean(db: &redb::Database, last_given: u64) -> Result<(), StoreError> {
    let tx = db.begin_write()?;
    {
        let mut meta = tx.open_table(META)?;
        if last_given > meta_u64(&meta, LAST_SEQ)? {
            meta.insert(LAST_SEQ, last_given.to_le_bytes().as_slice())?;
        }
        meta.insert(CLEAN, [1u8].as_slice())?;
    }
    tx.commit()?;
    Ok(())
}

/// Drops the oldest events past the retention's count, bytes or age; the newest sequence dropped.
pub(crate) fn retain(w: &mut Writes<'_>, r: Retention) -> Result<Option<u64>, StoreError> {
    let oldest_allowed = now_ms().saturating_sub(r.age.as_millis() as u64);
    let mut removed = None;
    loop {
        let c = w.event_counters;
        let too_many = c.count > r.count || c.bytes > r.bytes;
        let Some((seq, time, len)) = w.events.first()?.map(|(k, v)| {
            let v = v.value();
            (k.value(), decode(0, v).map_or(0, |e| e.time_ms), v.len())
        }) else {
            break;
        };
        if !too_many && time >= oldest_allowed {
            break;
        }
        w.events.remove(seq)?;
        removed = Some(seq);
        w.event_counters.count = c.count.saturating_sub(1);
        w.event_counters.bytes = c.bytes.saturating_sub(cost(len));
    }
    if let Some(seq) = removed {
        w.meta.insert(FLOOR, seq.to_le_bytes().as_slice())?;
    }
    Ok(removed)
}

/// The newest sequence retention has deleted (0: none). Sequences after it that the log does
/// not hold were never kept (a range an unclean batch-mode stop skipped, events dropped while the
/// store was full): a resume after them loses nothing that was retained.
pub fn floor(store: &Store) -> Result<u64, StoreError> {
    let tx = store.db().begin_read()?;
    meta_u64(&tx.open_table(META)?, FLOOR)
}

/// The retained range: `(first, last)` sequences, `None` when the log holds nothing.
pub fn range(store: &Store) -> Result<Option<(u64, u64)>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(EVENTS)?;
    let first = t.first()?.map(|(k, _)| k.value());
    let last = t.last()?.map(|(k, _)| k.value());
    Ok(first.zip(last))
}

/// Up to `limit` events with a sequence greater than `after`, in order.
pub fn read_after(store: &Store, after: u64, limit: usize) -> Result<Vec<StoredEvent>, StoreError> {
    let tx = store.db().begin_read()?;
    let t = tx.open_table(EVENTS)?;
    let mut out = Vec::with_capacity(limit.min(4096));
    for item in t.range(after.saturating_add(1)..)?.take(limit) {
        let (k, v) = item?;
        if let Some(e) = decode(k.value(), v.value()) {
            out.push(e);
        }
    }
    Ok(out)
}

/// How many events are retained.
pub fn count(store: &Store) -> Result<u64, StoreError> {
    let tx = store.db().begin_read()?;
    Ok(tx.open_table(EVENTS)?.len()?)
}

impl Store {
    /// Queues an event for the log.
    pub fn append_event(&self, event: StoredEvent) -> super::Ticket {
        self.submit([super::Op::Event(event)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::{options, temp_dir};

    fn event(seq: u64) -> StoredEvent {
        StoredEvent { seq, time_ms: now_ms(), kind: 3, payload: format!("{{\"data\":\"{seq}\"}}") }
    }

    #[tokio::test]
    async fn events_are_read_back_in_order_after_a_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Always)).unwrap();
        let first = store.next_seq();
        assert_eq!(first, 1);
        for seq in 1..=1000 {
            store.append_event(event(seq));
        }
        store.settled().await.unwrap();
        store.close();
        let store = Store::open(&dir, options(Durability::Always)).unwrap();
        assert_eq!(store.next_seq(), 1001, "a clean close continues the numbering");
        assert_eq!(range(&store).unwrap(), Some((1, 1000)));
        let got = read_after(&store, 500, 10).unwrap();
        assert_eq!(got.iter().map(|e| e.seq).collect::<Vec<_>>(), (501..=510).collect::<Vec<_>>());
        assert_eq!(got[0], StoredEvent { time_ms: got[0].time_ms, ..event(501) });
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unclean_stop_in_batch_mode_skips_the_reservation() {
        // Two "runs" over one database, the first never marked clean (a crash).
        let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
        let (id, next, clean) = open_log(&db, Durability::Batch).unwrap();
        assert_eq!((next, clean), (1, true), "a new log starts at 1");
        let tx = db.begin_write().unwrap();
        reserve(&mut tx.open_table(META).unwrap(), 10, Durability::Batch).unwrap();
        tx.commit().unwrap();
        let (again, next, clean) = open_log(&db, Durability::Batch).unwrap();
        assert_eq!(again, id, "the same log");
        assert!(!clean);
        assert_eq!(next, 10 + RESERVE + 1, "past everything the crashed run may have delivered");
        mark_clean(&db, 0).unwrap();
        let (_, next, clean) = open_log(&db, Durability::Batch).unwrap();
        assert!(clean);
        assert_eq!(next, 10 + RESERVE + 1, "a clean restart continues where the last run's numbering stood");
    }

    #[test]
    fn a_crash_before_a_runs_first_commit_in_batch_mode_skips_the_reservation() {
        let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
        let (_, next, _) = open_log(&db, Durability::Batch).unwrap();
        assert_eq!(next, 1);
        // The run delivers events 1, 2, … and is killed before it commits any of them.
        let (_, next, clean) = open_log(&db, Durability::Batch).unwrap();
        assert!(!clean);
        assert_eq!(next, RESERVE + 1, "past every event the first run may have delivered");
        let (_, again, _) = open_log(&db, Durability::Batch).unwrap();
        assert_eq!(again, next + RESERVE, "and so on for every run that crashes before committing");
    }

    #[test]
    fn a_clean_close_numbers_on_after_sequences_given_to_events_that_were_not_kept() {
        let db = redb::Database::builder().create_with_backend(redb::backends::InMemoryBackend::new()).unwrap();
        let (_, next, _) = open_log(&db, Durability::Always).unwrap();
        let tx = db.begin_write().unwrap();
        reserve(&mut tx.open_table(META).unwrap(), 100, Durability::Always).unwrap();
        tx.commit().unwrap();
        // 101..=150 were delivered while the store was full, and dropped.
        mark_clean(&db, 150).unwrap();
        let (_, again, clean) = open_log(&db, Durability::Always).unwrap();
        assert!(clean && next == 1);
        assert_eq!(again, 151);
    }

    #[tokio::test]
    async fn retention_drops_the_oldest_by_count_and_bytes() {
        let dir = temp_dir();
        let mut opts = options(Durability::Always);
        opts.events = Retention { count: 100, age: std::time::Duration::from_secs(3600), bytes: 1 << 30 };
        let store = Store::open(&dir, opts).unwrap();
        for seq in 1..=1000 {
            store.append_event(event(seq));
        }
        store.settled().await.unwrap();
        store.close();
        let store = Store::open(&dir, opts).unwrap();
        assert_eq!(range(&store).unwrap(), Some((901, 1000)));
        assert_eq!(count(&store).unwrap(), 100);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
