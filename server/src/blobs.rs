//! The blob store: files in transit (uploads, downloads, inline files turned into Uuid FileBoxes),
//! kept on disk under a directory of their own and streamed in and out — never whole in memory.
//!
//! * **Atomic writes.** An upload goes to `<id>.part` and is renamed to `<id>` when complete; a
//!   half-written upload is never served, and an abandoned one is deleted.
//! * **Limits.** A blob larger than `max_file` is refused while it arrives (`TooLarge`). Before a
//!   new blob is added, the least recently used blobs are evicted until the total fits `max_total`.
//!   The new blob's bytes are reserved while it is moved into place, so concurrent finishers never
//!   overshoot `max_total` together: one that finds the room taken by others' reservations waits
//!   for them to settle.
//! * **TTL.** A blob not read or written for `ttl` is gone (`NotFound`): expiry is checked on every
//!   access, and expired blobs are swept whenever a blob is added.
//! * A blob can be read any number of times until it is evicted. Finished blobs survive a restart
//!   (a restarted pod still serves the ids it handed out); partial uploads do not.
//!
//! The index is an in-memory map beside an access-ordered `BTreeMap`, so the least recently used
//! blob (also the first to expire) is found in O(log n). Its lock guards only memory: victims are
//! picked under it, and files are renamed and deleted outside it, on tokio's blocking pool.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::sync::Notify;

/// Size and age limits.
#[derive(Clone, Copy, Debug)]
pub struct BlobLimits {
    /// Largest single blob, in bytes.
    pub max_file: u64,
    /// Most bytes kept at once.
    pub max_total: u64,
    /// How long an unused blob is kept.
    pub ttl: Duration,
}

/// Why a blob operation failed.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// Unknown, expired or evicted.
    #[error("blob `{0}` not found (unknown, expired or evicted)")]
    NotFound(String),
    /// Over the per-file (or total) limit.
    #[error("the file is larger than the {limit_mib} MiB limit ({flag})")]
    TooLarge {
        /// The limit in MiB.
        limit_mib: u64,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// Zero bytes: WeChat cannot send an empty file.
    #[error("the file is empty; WeChat cannot send empty files")]
    Empty,
    /// The disk failed.
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

/// What the store knows about one blob.
#[derive(Clone, Debug)]
pub struct BlobMeta {
    /// Its id (a UUID).
    pub id: String,
    /// Its size in bytes.
    pub size: u64,
}

/// One indexed blob.
struct Entry {
    size: u64,
    last_access: Instant,
    /// Its key in [`Index::lru`].
    seq: u64,
}

/// What [`Index::touch`] found.
enum Touched {
    Fresh(BlobMeta),
    Expired,
    Unknown,
}

/// Whether a new blob fits, after evicting `victims` (removed from the index, files still on disk).
enum Room {
    /// It fits and its bytes are reserved.
    Reserved,
    /// Other finishers' reservations leave no room yet: wait for them to settle.
    Wait,
}

/// The blobs in memory. Only memory: no file is touched while this is locked.
#[derive(Default)]
struct Index {
    blobs: HashMap<String, Entry>,
    /// Access order, oldest first: a sequence number taken under the lock on every insert and touch,
    /// so its order is `last_access` order and the first entry is both the least recently used
    /// blob and the first to expire.
    lru: BTreeMap<u64, String>,
    next_seq: u64,
    /// Bytes of the indexed blobs.
    total: u64,
    /// Bytes of finished blobs being moved into place: counted against `max_total`, not yet indexed.
    reserved: u64,
}

impl Index {
    fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    fn insert(&mut self, id: String, size: u64, now: Instant) -> BlobMeta {
        self.remove(&id);
        let seq = self.next_seq();
        self.lru.insert(seq, id.clone());
        self.blobs.insert(id.clone(), Entry { size, last_access: now, seq });
        self.total += size;
        BlobMeta { id, size }
    }

    fn remove(&mut self, id: &str) -> Option<u64> {
        let entry = self.blobs.remove(id)?;
        self.lru.remove(&entry.seq);
        self.total -= entry.size;
        Some(entry.size)
    }

    /// Refreshes a blob's last access, or removes it when it has expired.
    fn touch(&mut self, id: &str, now: Instant, ttl: Duration) -> Touched {
        let seq = self.next_seq + 1;
        let Some(entry) = self.blobs.get_mut(id) else { return Touched::Unknown };
        if now.saturating_duration_since(entry.last_access) > ttl {
            self.remove(id);
            return Touched::Expired;
        }
        let old = std::mem::replace(&mut entry.seq, seq);
        entry.last_access = now;
        let meta = BlobMeta { id: id.to_owned(), size: entry.size };
        self.next_seq = seq;
        self.lru.remove(&old);
        self.lru.insert(seq, meta.id.clone());
        Touched::Fresh(meta)
    }

    /// Removes the least recently used blob.
    fn pop_oldest(&mut self) -> Option<String> {
        let (_, id) = self.lru.pop_first()?;
        if let Some(entry) = self.blobs.remove(&id) {
            self.total -= entry.size;
        }
        Some(id)
    }

    /// Removes the expired blobs (a prefix of the access order) into `victims`.
    fn sweep(&mut self, now: Instant, ttl: Duration, victims: &mut Vec<String>) {
        while let Some((_, id)) = self.lru.first_key_value() {
            let expired = self.blobs.get(id).is_none_or(|e| now.saturating_duration_since(e.last_access) > ttl);
            if !expired {
                break;
            }
            victims.extend(self.pop_oldest());
        }
    }

    /// Makes room for `size` more bytes — expired blobs first, then the least recently used — and
    /// reserves it. The caller has checked `size <= max_total`.
    fn make_room(&mut self, size: u64, limits: BlobLimits, now: Instant, victims: &mut Vec<String>) -> Room {
        self.sweep(now, limits.ttl, victims);
        while self.total + self.reserved + size > limits.max_total {
            // With nothing left to evict, only other finishers' reservations are in the way.
            let Some(victim) = self.pop_oldest() else { return Room::Wait };
            victims.push(victim);
        }
        self.reserved += size;
        Room::Reserved
    }
}

struct Inner {
    dir: PathBuf,
    limits: BlobLimits,
    index: Mutex<Index>,
    /// Signalled whenever a reservation settles.
    settled: Notify,
}

/// The store. Cheap to clone.
#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<Inner>,
}

/// Chunk size for reading blobs back (within Wechaty's 64–256 KiB range).
pub const READ_CHUNK: usize = 256 * 1024;

impl BlobStore {
    /// Opens the store directory, keeping the blobs a previous run finished (their idle time starts
    /// again now) and deleting the partial uploads it left behind. Blocking: call it at start-up.
    pub fn open(dir: &Path, limits: BlobLimits) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index::default();
        let now = Instant::now();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if !path.is_file() {
                continue;
            }
            if uuid::Uuid::parse_str(&name).is_err() {
                // A partial upload (`<id>.part`) or something that is not ours to serve.
                if name.ends_with(".part") {
                    std::fs::remove_file(&path)?;
                }
                continue;
            }
            let size = entry.metadata()?.len();
            index.insert(name, size, now);
        }
        // The limits may have shrunk since the last run.
        let mut victims = Vec::new();
        while index.total > limits.max_total
            && let Some(victim) = index.pop_oldest()
        {
            victims.push(victim);
        }
        delete_files(dir, &victims);
        Ok(Self {
            inner: Arc::new(Inner { dir: dir.to_owned(), limits, index: Mutex::new(index), settled: Notify::new() }),
        })
    }

    /// The limits in force.
    pub fn limits(&self) -> BlobLimits {
        self.inner.limits
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Index updates complete without panicking points in between: a poisoned lock still guards
        // a consistent index.
        self.inner.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path(&self, id: &str) -> PathBuf {
        self.inner.dir.join(id)
    }

    /// Bytes currently stored.
    pub fn total_bytes(&self) -> u64 {
        self.index().total
    }

    /// Starts a new blob.
    pub async fn writer(&self) -> Result<BlobWriter, BlobError> {
        let id = uuid::Uuid::new_v4().to_string();
        let part = self.inner.dir.join(format!("{id}.part"));
        let file = tokio::fs::File::create(&part).await?;
        Ok(BlobWriter { store: self.clone(), id, part: Some(part), file: Some(file), size: 0 })
    }

    /// Stores `bytes` as a new blob.
    pub async fn put(&self, bytes: &[u8]) -> Result<BlobMeta, BlobError> {
        let mut w = self.writer().await?;
        w.write(bytes).await?;
        w.finish().await
    }

    /// A blob's metadata, refreshing its last access. An expired blob is dropped from the index
    /// here and its file deleted on the blocking pool.
    pub fn touch(&self, id: &str) -> Result<BlobMeta, BlobError> {
        let touched = self.index().touch(id, Instant::now(), self.inner.limits.ttl);
        match touched {
            Touched::Fresh(meta) => Ok(meta),
            Touched::Unknown => Err(BlobError::NotFound(id.to_owned())),
            Touched::Expired => {
                self.delete_later(vec![id.to_owned()]);
                Err(BlobError::NotFound(id.to_owned()))
            }
        }
    }

    /// Deletes a blob now (for example one written for a call that then failed). Readers that have
    /// it open keep reading; new opens fail with `NotFound`.
    pub async fn remove(&self, id: &str) -> Result<(), BlobError> {
        if self.index().remove(id).is_none() {
            return Err(BlobError::NotFound(id.to_owned()));
        }
        match tokio::fs::remove_file(self.path(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }

    /// Opens a blob for reading. The open file stays readable even if the blob is evicted meanwhile.
    pub async fn open_blob(&self, id: &str) -> Result<(BlobMeta, tokio::fs::File), BlobError> {
        let meta = self.touch(id)?;
        match tokio::fs::File::open(self.path(id)).await {
            Ok(f) => Ok((meta, f)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads a whole blob (for clients that can only take files inline; bounded by `max_file`).
    pub async fn read_all(&self, id: &str) -> Result<Vec<u8>, BlobError> {
        self.touch(id)?;
        match tokio::fs::read(self.path(id)).await {
            Ok(b) => Ok(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(BlobError::NotFound(id.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes files of blobs already dropped from the index, without blocking the caller.
    fn delete_later(&self, ids: Vec<String>) {
        drop(Doomed { dir: self.inner.dir.clone(), ids });
    }
}

/// Files of blobs already dropped from the index. [`Doomed::delete_now`] deletes them (blocking);
/// whatever is left when this is dropped is deleted on the blocking pool (or inline off a runtime),
/// so a cancelled finish leaves no orphans.
struct Doomed {
    dir: PathBuf,
    ids: Vec<String>,
}

impl Doomed {
    fn delete_now(&mut self) {
        delete_files(&self.dir, &std::mem::take(&mut self.ids));
    }
}

impl Drop for Doomed {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        let (dir, ids) = (self.dir.clone(), std::mem::take(&mut self.ids));
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(move || delete_files(&dir, &ids))),
            Err(_) => delete_files(&dir, &ids),
        }
    }
}

/// Deletes evicted blobs' files (blocking).
fn delete_files(dir: &Path, ids: &[String]) {
    for id in ids {
        tracing::debug!(blob = %id, "deleting an evicted or expired blob");
        // Readers holding the file open keep their data (Unix semantics); new opens fail.
        if let Err(e) = std::fs::remove_file(dir.join(id))
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(blob = %id, error = %e, "could not delete an evicted blob");
        }
    }
}

/// Bytes reserved for a finished blob on its way into the index. Released when dropped, so a
/// finish that never completes (its task cancelled at shutdown) does not keep the room forever.
struct Reservation {
    store: BlobStore,
    size: u64,
    settled: bool,
}

impl Reservation {
    /// Turns the reservation into an indexed blob, under one lock so no one sees it counted twice.
    fn commit(mut self, id: String) -> BlobMeta {
        let meta = {
            let mut index = self.store.index();
            index.reserved -= self.size;
            index.insert(id, self.size, Instant::now())
        };
        self.settled = true;
        self.store.inner.settled.notify_waiters();
        meta
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.settled {
            self.store.index().reserved -= self.size;
            self.store.inner.settled.notify_waiters();
        }
    }
}

/// A blob being written. Dropped without [`BlobWriter::finish`], its partial file is deleted.
pub struct BlobWriter {
    store: BlobStore,
    id: String,
    part: Option<PathBuf>,
    file: Option<tokio::fs::File>,
    size: u64,
}

impl BlobWriter {
    /// Appends bytes; refuses to grow past the per-file limit.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), BlobError> {
        let limit = self.store.inner.limits.max_file;
        if self.size + bytes.len() as u64 > limit {
            return Err(BlobError::TooLarge { limit_mib: limit >> 20, flag: "--blob-max-file-mib" });
        }
        let file = self.file.as_mut().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        file.write_all(bytes).await?;
        self.size += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Completes the blob and makes it readable, evicting what it must to fit `max_total`.
    pub async fn finish(mut self) -> Result<BlobMeta, BlobError> {
        if self.size == 0 {
            return Err(BlobError::Empty);
        }
        let limits = self.store.inner.limits;
        if self.size > limits.max_total {
            return Err(BlobError::TooLarge { limit_mib: limits.max_total >> 20, flag: "--blob-max-total-mib" });
        }
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        file.flush().await?;
        drop(file);
        let part = self.part.clone().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        let store = self.store.clone();
        let mut victims = Doomed { dir: store.inner.dir.clone(), ids: Vec::new() };
        loop {
            // Created before looking, so a reservation settling after the look still wakes us.
            let settled = store.inner.settled.notified();
            let room = store.index().make_room(self.size, limits, Instant::now(), &mut victims.ids);
            if let Room::Reserved = room {
                break;
            }
            settled.await;
        }
        // No await between reserving and handing the reservation to the blocking task: a cancelled
        // finish cannot leak it. From here on the blocking task owns the partial file.
        let reservation = Reservation { store: store.clone(), size: self.size, settled: false };
        self.part = None;
        let id = self.id.clone();
        let committed = tokio::task::spawn_blocking(move || {
            victims.delete_now();
            // The rename is what makes the blob visible: a reader never sees a partial file.
            match std::fs::rename(&part, store.path(&id)) {
                Ok(()) => Ok(reservation.commit(id)),
                Err(e) => {
                    drop(reservation);
                    _ = std::fs::remove_file(&part);
                    Err(BlobError::Io(e))
                }
            }
        });
        committed.await.map_err(|e| BlobError::Io(std::io::Error::other(e)))?
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(part) = self.part.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || std::fs::remove_file(part))),
                Err(_) => _ = std::fs::remove_file(part),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_file: u64, max_total: u64, ttl: Duration) -> (BlobStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("puppet-blobs-{}", uuid::Uuid::new_v4()));
        (BlobStore::open(&dir, BlobLimits { max_file, max_total, ttl }).unwrap(), dir)
    }

    #[tokio::test]
    async fn blobs_round_trip_and_are_readable_many_times() {
        let (s, dir) = store(1 << 20, 1 << 20, Duration::from_secs(60));
        let meta = s.put(b"hello").await.unwrap();
        assert_eq!(meta.size, 5);
        assert_eq!(s.read_all(&meta.id).await.unwrap(), b"hello");
        assert_eq!(s.read_all(&meta.id).await.unwrap(), b"hello");
        assert!(matches!(s.read_all("nope").await, Err(BlobError::NotFound(_))));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn limits_and_empty_files_are_refused_and_partials_never_served() {
        let (s, dir) = store(8, 16, Duration::from_secs(60));
        assert!(matches!(s.put(b"123456789").await, Err(BlobError::TooLarge { flag: "--blob-max-file-mib", .. })));
        assert!(matches!(s.put(b"").await, Err(BlobError::Empty)));
        let mut w = s.writer().await.unwrap();
        w.write(b"part").await.unwrap();
        drop(w);
        eventually("abandoned uploads leave nothing behind", || files(&dir).is_empty()).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn least_recently_used_blobs_make_room() {
        let (s, dir) = store(8, 16, Duration::from_secs(60));
        let a = s.put(b"aaaaaaa").await.unwrap();
        let b = s.put(b"bbbbbbb").await.unwrap();
        s.touch(&a.id).unwrap(); // a is now more recent than b
        let c = s.put(b"ccccccc").await.unwrap();
        assert!(matches!(s.touch(&b.id), Err(BlobError::NotFound(_))), "b was least recently used");
        assert!(s.touch(&a.id).is_ok() && s.touch(&c.id).is_ok());
        assert_eq!(s.total_bytes(), 14);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn finished_blobs_survive_a_reopen_and_partial_ones_do_not() {
        let (s, dir) = store(1 << 20, 1 << 20, Duration::from_secs(60));
        let kept = s.put(b"kept").await.unwrap();
        let mut partial = s.writer().await.unwrap();
        partial.write(b"half").await.unwrap();
        std::mem::forget(partial); // as if the process died mid-upload
        let s = BlobStore::open(&dir, s.limits()).unwrap();
        assert_eq!(s.read_all(&kept.id).await.unwrap(), b"kept");
        assert_eq!(s.total_bytes(), 4);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "the partial upload is gone");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn idle_blobs_expire() {
        let (s, dir) = store(8, 64, Duration::from_millis(0));
        let a = s.put(b"a").await.unwrap();
        std::thread::sleep(Duration::from_millis(2)); // let the zero TTL pass
        assert!(matches!(s.touch(&a.id), Err(BlobError::NotFound(_))));
        assert_eq!(s.total_bytes(), 0);
        eventually("the expired blob's file is deleted", || files(&dir).is_empty()).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The file names in `dir`.
    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        names.sort();
        names
    }

    /// Waits (bounded) for work handed to the blocking pool.
    async fn eventually(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() {
            assert!(Instant::now() < deadline, "not within 10 s: {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn lru_order_is_kept_across_touches_with_many_blobs() {
        const N: usize = 400;
        let (s, dir) = store(8, N as u64, Duration::from_secs(600));
        let mut ids = Vec::new();
        for i in 0..N {
            ids.push(s.put(&[i as u8]).await.unwrap().id);
        }
        // Touch every blob once, in a scrambled order: that order is now the LRU order.
        let order: Vec<usize> = (0..N).map(|i| (i * 7919) % N).collect();
        for &i in &order {
            s.touch(&ids[i]).unwrap();
        }
        // A quarter more blobs evict exactly the first quarter of the touch order.
        for i in 0..N / 4 {
            s.put(&[i as u8]).await.unwrap();
        }
        let (gone, kept) = order.split_at(N / 4);
        for &i in gone {
            assert!(matches!(s.touch(&ids[i]), Err(BlobError::NotFound(_))), "blob {i} was least recently used");
        }
        for &i in kept {
            assert!(s.touch(&ids[i]).is_ok(), "blob {i} was used more recently");
        }
        assert_eq!(s.total_bytes(), N as u64);
        assert_eq!(files(&dir).len(), N, "evicted blobs' files are deleted before their evictor finishes");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_finishes_never_exceed_the_total() {
        const MAX: u64 = 16;
        let (s, dir) = store(8, MAX, Duration::from_secs(600));
        for _ in 0..20 {
            let mut writers = Vec::new();
            for i in 0..16u8 {
                let mut w = s.writer().await.unwrap();
                w.write(&[i; 5]).await.unwrap();
                writers.push(w);
            }
            let start = Arc::new(tokio::sync::Barrier::new(writers.len()));
            let finishing: Vec<_> = writers
                .into_iter()
                .map(|w| {
                    let (s, start) = (s.clone(), start.clone());
                    tokio::spawn(async move {
                        start.wait().await;
                        w.finish().await.unwrap();
                        assert!(s.total_bytes() <= MAX, "{} bytes stored", s.total_bytes());
                    })
                })
                .collect();
            for f in finishing {
                f.await.unwrap();
            }
            assert!(s.total_bytes() <= MAX);
            let on_disk: u64 = files(&dir).iter().map(|f| std::fs::metadata(dir.join(f)).unwrap().len()).sum();
            assert_eq!(on_disk, s.total_bytes(), "the disk holds exactly the indexed blobs");
        }
        assert_eq!(s.index().reserved, 0, "every reservation settled");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn expired_blobs_are_swept_when_a_blob_is_added() {
        let (s, dir) = store(8, 64, Duration::from_millis(20));
        s.put(b"old1").await.unwrap();
        s.put(b"old2").await.unwrap();
        std::thread::sleep(Duration::from_millis(40)); // let the TTL pass
        let new = s.put(b"new").await.unwrap();
        assert_eq!(files(&dir), vec![new.id.clone()], "expired files are deleted before the add completes");
        assert_eq!(s.total_bytes(), 3);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn removed_blobs_are_gone_at_once() {
        let (s, dir) = store(8, 64, Duration::from_secs(60));
        let a = s.put(b"a").await.unwrap();
        let b = s.put(b"bb").await.unwrap();
        s.remove(&a.id).await.unwrap();
        assert!(matches!(s.read_all(&a.id).await, Err(BlobError::NotFound(_))));
        assert!(matches!(s.remove(&a.id).await, Err(BlobError::NotFound(_))));
        assert!(matches!(s.remove("../escape").await, Err(BlobError::NotFound(_))));
        assert_eq!((files(&dir), s.total_bytes()), (vec![b.id], 2));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_index_expires_a_prefix_of_the_access_order_and_waits_for_reservations() {
        let limits = BlobLimits { max_file: 8, max_total: 10, ttl: Duration::from_secs(10) };
        let t0 = Instant::now();
        let mut index = Index::default();
        index.insert("a".into(), 2, t0);
        index.insert("b".into(), 2, t0 + Duration::from_secs(1));
        index.insert("c".into(), 2, t0 + Duration::from_secs(2));
        assert!(matches!(index.touch("a", t0 + Duration::from_secs(3), limits.ttl), Touched::Fresh(_)));
        // b (last used at 1 s) expires at 11 s; c (2 s) is still fresh; a was touched at 3 s.
        let mut victims = Vec::new();
        index.sweep(t0 + Duration::from_millis(11_500), limits.ttl, &mut victims);
        assert_eq!((victims.as_slice(), index.total), (&["b".to_owned()][..], 4));
        assert!(matches!(index.touch("c", t0 + Duration::from_secs(13), limits.ttl), Touched::Expired));
        assert!(matches!(index.touch("zz", t0, limits.ttl), Touched::Unknown));

        // Room for 6 more evicts nothing (2 + 6 <= 10) and reserves it; 6 more again must wait,
        // after evicting a: the reservation, not stored blobs, is in the way.
        let now = t0 + Duration::from_secs(4);
        victims.clear();
        assert!(matches!(index.make_room(6, limits, now, &mut victims), Room::Reserved));
        assert_eq!((victims.len(), index.reserved), (0, 6));
        assert!(matches!(index.make_room(6, limits, now, &mut victims), Room::Wait));
        assert_eq!((victims.as_slice(), index.total, index.reserved), (&["a".to_owned()][..], 0, 6));
    }
}
