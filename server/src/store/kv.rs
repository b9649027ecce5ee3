//! A small typed key-value API for what a backend must keep across restarts (a login session,
//! sync cursors, id maps, its world), and the payload cache (contacts, rooms, members) that DIRTY
//! events invalidate. Values are JSON; what was written is read back at once, committed or not.

use redb::{ReadableDatabase, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{Store, StoreError, Ticket, Writes};

/// Payloads the cache holds at most; past it the cache starts over (it is only a cache).
pub const CACHE_MAX: u64 = 100_000;

/// Empties the payload cache once it holds more than [`CACHE_MAX`] payloads; whether it did.
pub(crate) fn retain_cache(w: &mut Writes<'_>) -> Result<bool, StoreError> {
    use redb::ReadableTableMetadata;
    if w.cache.len()? > CACHE_MAX {
        w.cache.retain(|_, _| false)?;
        tracing::info!(limit = CACHE_MAX, "the payload cache was full and starts over");
        return Ok(true);
    }
    Ok(false)
}

pub(crate) const KV: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("kv");
pub(crate) const CACHE: TableDefinition<(u8, &str), &[u8]> = TableDefinition::new("payload_cache");

/// See the module docs.
#[derive(Clone, Debug)]
pub struct Kv {
    store: Store,
}

fn decode<T: DeserializeOwned>(ns: &str, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Failed(format!("stored value {ns}/{key} is unreadable: {e}")))
}

impl Kv {
    pub(crate) fn new(store: Store) -> Self {
        Self { store }
    }

    /// Stores `value` under `ns`/`key`.
    pub fn put<T: Serialize + ?Sized>(&self, ns: &str, key: &str, value: &T) -> Result<Ticket, StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|e| StoreError::Failed(format!("{ns}/{key}: {e}")))?;
        Ok(self.store.submit_kv(ns, key, Some(bytes)))
    }

    /// Removes `ns`/`key`.
    pub fn delete(&self, ns: &str, key: &str) -> Ticket {
        self.store.submit_kv(ns, key, None)
    }

    /// The value under `ns`/`key`. Blocking when it has to go to the file.
    pub fn get<T: DeserializeOwned>(&self, ns: &str, key: &str) -> Result<Option<T>, StoreError> {
        if let Some(remembered) = self.store.remembered_kv(ns, key) {
            return remembered.map(|b| decode(ns, key, &b)).transpose();
        }
        let tx = self.store.db().begin_read()?;
        let t = tx.open_table(KV)?;
        t.get((ns, key))?.map(|v| decode(ns, key, v.value())).transpose()
    }

    /// Every entry of `ns`, by key. Blocking.
    pub fn scan<T: DeserializeOwned>(&self, ns: &str) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.store.db().begin_read()?;
        let t = tx.open_table(KV)?;
        let mut raw: std::collections::BTreeMap<String, Vec<u8>> = std::collections::BTreeMap::new();
        for item in t.range((ns, "")..)? {
            let (k, v) = item?;
            let (kns, key) = k.value();
            if kns != ns {
                break;
            }
            raw.insert(key.to_owned(), v.value().to_vec());
        }
        for (key, value) in self.store.remembered_kv_ns(ns) {
            match value {
                Some(v) => raw.insert(key, v),
                None => raw.remove(&key),
            };
        }
        raw.into_iter().map(|(k, v)| decode(ns, &k, &v).map(|t| (k, t))).collect()
    }

    /// Caches a payload (`kind` is the wire `PayloadType`).
    pub fn cache_put(&self, kind: u8, id: &str, value: Vec<u8>) -> Ticket {
        self.store.submit_cache(kind, id, Some(value))
    }

    /// Drops a cached payload (DIRTY).
    pub fn cache_drop(&self, kind: u8, id: &str) -> Ticket {
        self.store.submit_cache(kind, id, None)
    }

    /// A cached payload; what was put or dropped is seen at once. Blocking when it has to go to
    /// the file.
    pub fn cache_get(&self, kind: u8, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(remembered) = self.store.remembered_cache(kind, id) {
            return Ok(remembered);
        }
        let tx = self.store.db().begin_read()?;
        let t = tx.open_table(CACHE)?;
        Ok(t.get((kind, id))?.map(|v| v.value().to_vec()))
    }
}

#[cfg(test)]
mod tests {
    use crate::store::Durability;
    use crate::store::tests::{options, temp_dir};

    #[tokio::test]
    async fn values_are_read_back_at_once_and_after_a_reopen() {
        let dir = temp_dir();
        let store = super::Store::open(&dir, options(Durability::Batch)).unwrap();
        let kv = store.kv();
        kv.put("mock.contacts", "wxid_alice", &serde_json::json!({"name": "Alice"})).unwrap();
        kv.put("mock.contacts", "wxid_bob", &serde_json::json!({"name": "Bob"})).unwrap();
        kv.put("mock.rooms", "r1", &1).unwrap();
        kv.delete("mock.contacts", "wxid_bob");
        let scanned: Vec<(String, serde_json::Value)> = kv.scan("mock.contacts").unwrap();
        assert_eq!(scanned.len(), 1, "deleted before the commit: {scanned:?}");
        kv.cache_put(2, "wxid_alice", b"{}".to_vec());
        assert_eq!(kv.cache_get(2, "wxid_alice").unwrap().as_deref(), Some(&b"{}"[..]), "seen at once");
        kv.cache_drop(2, "wxid_bob");
        assert_eq!(kv.cache_get(2, "wxid_bob").unwrap(), None);
        drop(kv);
        store.close();
        let store = super::Store::open(&dir, options(Durability::Batch)).unwrap();
        let kv = store.kv();
        assert_eq!(kv.get::<serde_json::Value>("mock.contacts", "wxid_alice").unwrap().unwrap()["name"], "Alice");
        assert!(kv.get::<serde_json::Value>("mock.contacts", "wxid_bob").unwrap().is_none());
        assert_eq!(kv.scan::<u32>("mock.rooms").unwrap(), vec![("r1".to_owned(), 1)]);
        assert_eq!(kv.cache_get(2, "wxid_alice").unwrap().as_deref(), Some(&b"{}"[..]));
        kv.cache_drop(2, "wxid_alice");
        assert_eq!(kv.cache_get(2, "wxid_alice").unwrap(), None, "a drop is seen at once");
        drop(kv);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
