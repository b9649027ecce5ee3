//! The blob store: files in transit (uploads, downloads, inline files turned into Uuid FileBoxes),
//! kept on disk under a directory of their own and streamed in and out — never whole in memory.
//!
//! * **Atomic writes.** An upload goes to `<id>.part` and is renamed to `<id>` when complete; a
//!   half-written upload is never served, and an abandoned one is deleted.
//! * **Limits.** A blob larger than `max_file` is refused while it arrives (`TooLarge`). Before a
//!   new blob is added, the least recently used blobs are evicted until the total fits `max_total`.
//! * **TTL.** A blob not read or written for `ttl` is gone (`NotFound`): expiry is checked on every
//!   access, and expired blobs are swept whenever a blob is added.
//! * A blob can be read any number of times until it is evicted. Finished blobs survive a restart
//!   (a restarted pod still serves the ids it handed out); partial uploads do not.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;

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
    last_access: Instant,
}

struct Index {
    blobs: HashMap<String, BlobMeta>,
    total: u64,
}

struct Inner {
    dir: PathBuf,
    limits: BlobLimits,
    index: Mutex<Index>,
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
    /// again now) and deleting the partial uploads it left behind.
    pub fn open(dir: &Path, limits: BlobLimits) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let mut index = Index { blobs: HashMap::new(), total: 0 };
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
            index.total += size;
            index.blobs.insert(name.clone(), BlobMeta { id: name, size, last_access: Instant::now() });
        }
        let store = Self { inner: Arc::new(Inner { dir: dir.to_owned(), limits, index: Mutex::new(index) }) };
        {
            let mut index = store.index();
            // The limits may have shrunk since the last run.
            let _ = store.admit(&mut index, 0);
        }
        Ok(store)
    }

    /// The limits in force.
    pub fn limits(&self) -> BlobLimits {
        self.inner.limits
    }

    fn index(&self) -> MutexGuard<'_, Index> {
        // Index updates are single inserts/removes: a poisoned lock still guards a consistent map.
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

    /// A blob's metadata, refreshing its last access.
    pub fn touch(&self, id: &str) -> Result<BlobMeta, BlobError> {
        let ttl = self.inner.limits.ttl;
        let mut index = self.index();
        let expired = match index.blobs.get_mut(id) {
            None => return Err(BlobError::NotFound(id.to_owned())),
            Some(meta) if meta.last_access.elapsed() > ttl => true,
            Some(meta) => {
                meta.last_access = Instant::now();
                return Ok(meta.clone());
            }
        };
        if expired {
            self.remove_locked(&mut index, id);
        }
        Err(BlobError::NotFound(id.to_owned()))
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

    /// Forgets a blob and deletes its file (a blob written for a call that then failed).
    pub fn remove(&self, id: &str) {
        let mut index = self.index();
        self.remove_locked(&mut index, id);
    }

    fn remove_locked(&self, index: &mut Index, id: &str) {
        if let Some(meta) = index.blobs.remove(id) {
            index.total -= meta.size;
            // Readers holding the file open keep their data (Unix semantics); new opens fail.
            if let Err(e) = std::fs::remove_file(self.path(id))
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(blob = id, error = %e, "could not delete an evicted blob");
            }
        }
    }

    /// Makes room for `size` more bytes: expired blobs first, then least recently used.
    fn admit(&self, index: &mut Index, size: u64) -> Result<(), BlobError> {
        let limits = self.inner.limits;
        if size > limits.max_total {
            return Err(BlobError::TooLarge { limit_mib: limits.max_total >> 20, flag: "--blob-max-total-mib" });
        }
        let expired: Vec<String> =
            index.blobs.values().filter(|m| m.last_access.elapsed() > limits.ttl).map(|m| m.id.clone()).collect();
        for id in expired {
            self.remove_locked(index, &id);
        }
        while index.total + size > limits.max_total {
            let Some(oldest) = index.blobs.values().min_by_key(|m| m.last_access).map(|m| m.id.clone()) else {
                break;
            };
            tracing::debug!(blob = %oldest, "evicting the least recently used blob");
            self.remove_locked(index, &oldest);
        }
        Ok(())
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

    /// Completes the blob and makes it readable.
    pub async fn finish(mut self) -> Result<BlobMeta, BlobError> {
        if self.size == 0 {
            return Err(BlobError::Empty);
        }
        let mut file = self.file.take().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        file.flush().await?;
        drop(file);
        let part = self.part.take().ok_or_else(|| std::io::Error::other("blob writer already finished"))?;
        let store = self.store.clone();
        let meta = BlobMeta { id: self.id.clone(), size: self.size, last_access: Instant::now() };
        let mut index = store.index();
        if let Err(e) = store.admit(&mut index, meta.size) {
            _ = std::fs::remove_file(&part);
            return Err(e);
        }
        // The rename is what makes the blob visible: a reader never sees a partial file.
        if let Err(e) = std::fs::rename(&part, store.path(&meta.id)) {
            _ = std::fs::remove_file(&part);
            return Err(e.into());
        }
        index.total += meta.size;
        index.blobs.insert(meta.id.clone(), meta.clone());
        Ok(meta)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if let Some(part) = self.part.take() {
            _ = std::fs::remove_file(part);
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
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "abandoned uploads leave nothing behind");
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
        std::fs::remove_dir_all(dir).unwrap();
    }
}
