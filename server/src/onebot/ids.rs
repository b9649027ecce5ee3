//! OneBot's integer ids for WeChat's string ids: a persistent bijection kept in the account's store.
//!
//! Every string id (a contact, a room, a message), tagged with its kind, gets a positive `i64` the
//! first time OneBot needs it: the next number of one counter that only grows, so a number is never
//! given to two things and plugins may keep numbers across restarts. Both directions are stored in
//! the kv namespaces `onebot.num` (`u:wxid_alice` → 10001) and `onebot.str` (10001 → `u:wxid_alice`).
//!
//! Numbers are handed out from blocks of [`BLOCK`]: the end of the block is committed to disk
//! (whatever the durability policy) before any number of it is given out, so even a crash that
//! loses the newest mappings cannot hand one of their numbers out again — at worst such a number
//! is unknown after the restart. Numbers start at [`FIRST`] and stay far below 2^53, so JavaScript
//! clients (Koishi) read them exactly.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::store::{Store, StoreError};

/// The first number handed out.
pub const FIRST: i64 = 10_001;
/// Numbers reserved on disk at a time.
pub const BLOCK: i64 = 256;
/// Mappings kept in memory; past it the memory map starts over (the store has them all).
pub const CACHE: usize = 100_000;

const NUM: &str = "onebot.num";
const STR: &str = "onebot.str";
const META: &str = "onebot.meta";

/// What a number stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// A contact (`user_id`).
    User,
    /// A room (`group_id`).
    Group,
    /// A message (`message_id`).
    Message,
}

impl Kind {
    fn tag(self) -> char {
        match self {
            Kind::User => 'u',
            Kind::Group => 'g',
            Kind::Message => 'm',
        }
    }

    fn from_tag(c: char) -> Option<Self> {
        match c {
            'u' => Some(Kind::User),
            'g' => Some(Kind::Group),
            'm' => Some(Kind::Message),
            _ => None,
        }
    }

    /// What a person calls it.
    pub fn noun(self) -> &'static str {
        match self {
            Kind::User => "a user",
            Kind::Group => "a group",
            Kind::Message => "a message",
        }
    }
}

#[derive(Default)]
struct Cache {
    num: HashMap<String, i64>,
    str: HashMap<i64, String>,
}

struct Alloc {
    next: i64,
    /// The first number not reserved on disk.
    high: i64,
}

/// See the module docs. Cheap lookups from memory; the store on a miss (off the runtime).
pub struct IdMap {
    store: Store,
    cache: Mutex<Cache>,
    alloc: tokio::sync::Mutex<Alloc>,
}

fn key(kind: Kind, id: &str) -> String {
    format!("{}:{id}", kind.tag())
}

fn num_key(n: i64) -> String {
    format!("{n:020}")
}

impl IdMap {
    /// The map of `store`. Blocking (reads the reserved block's end).
    pub fn open(store: Store) -> Result<Self, StoreError> {
        let high: i64 = store.kv().get(META, "high")?.unwrap_or(FIRST).max(FIRST);
        // Whatever was reserved before may have been handed out: start after it.
        Ok(Self { store, cache: Mutex::default(), alloc: tokio::sync::Mutex::new(Alloc { next: high, high }) })
    }

    fn cached(&self, k: &str) -> Option<i64> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).num.get(k).copied()
    }

    fn remember(&self, k: String, n: i64) {
        let mut c = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if c.num.len() >= CACHE {
            *c = Cache::default();
        }
        c.str.insert(n, k.clone());
        c.num.insert(k, n);
    }

    /// The number of `id`, given out now if it has none.
    pub async fn num(&self, kind: Kind, id: &str) -> Result<i64, StoreError> {
        let k = key(kind, id);
        if let Some(n) = self.cached(&k) {
            return Ok(n);
        }
        let lookup = k.clone();
        if let Some(n) = self.store.read(move |s| s.kv().get::<i64>(NUM, &lookup)).await? {
            self.remember(k, n);
            return Ok(n);
        }
        let mut alloc = self.alloc.lock().await;
        // Another caller may have given it a number while this one waited.
        let lookup = k.clone();
        if let Some(n) = self.store.read(move |s| s.kv().get::<i64>(NUM, &lookup)).await? {
            self.remember(k, n);
            return Ok(n);
        }
        if alloc.next >= alloc.high {
            let high = alloc.next + BLOCK;
            self.store.kv().put(META, "high", &high)?;
            self.store.flushed().await?;
            alloc.high = high;
        }
        let n = alloc.next;
        alloc.next += 1;
        self.store.kv().put(NUM, &k, &n)?;
        self.store.kv().put(STR, &num_key(n), &k)?;
        self.remember(k, n);
        Ok(n)
    }

    /// What `n` stands for, when anything.
    pub async fn lookup(&self, n: i64) -> Result<Option<(Kind, String)>, StoreError> {
        let cached = self.cache.lock().unwrap_or_else(|p| p.into_inner()).str.get(&n).cloned();
        let k = match cached {
            Some(k) => Some(k),
            None if n < FIRST => None,
            None => {
                let k = self.store.read(move |s| s.kv().get::<String>(STR, &num_key(n))).await?;
                if let Some(k) = &k {
                    self.remember(k.clone(), n);
                }
                k
            }
        };
        Ok(k.and_then(|k| {
            let mut chars = k.chars();
            let kind = Kind::from_tag(chars.next()?)?;
            Some((kind, k.get(2..)?.to_owned()))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Durability;
    use crate::store::tests::{options, temp_dir};
    use std::collections::HashSet;

    async fn reopen(dir: &std::path::Path, old: Option<(IdMap, Store)>) -> (IdMap, Store) {
        if let Some((map, store)) = old {
            drop(map);
            store.close();
        }
        let store = Store::open(dir, options(Durability::Batch)).unwrap();
        (IdMap::open(store.clone()).unwrap(), store)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Any sequence of lookups and restarts: one number per (kind, id), one (kind, id) per
        /// number, every number positive and never given twice, all of it kept across restarts.
        #[test]
        fn the_map_is_a_bijection_that_survives_restarts(
            steps in proptest::collection::vec((0u8..3, "[a-z@_]{0,6}", proptest::bool::weighted(0.05)), 1..120),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let dir = temp_dir();
                let mut open = Some(reopen(&dir, None).await);
                let mut seen: HashMap<(u8, String), i64> = HashMap::new();
                let mut numbers = HashSet::new();
                for (kind, id, restart) in steps {
                    if restart {
                        open = Some(reopen(&dir, open.take()).await);
                    }
                    let (map, _) = open.as_ref().unwrap();
                    let k = [Kind::User, Kind::Group, Kind::Message][kind as usize];
                    let n = map.num(k, &id).await.unwrap();
                    assert!(n >= FIRST);
                    match seen.get(&(kind, id.clone())) {
                        Some(old) => assert_eq!(*old, n, "{k:?} {id} changed its number"),
                        None => {
                            assert!(numbers.insert(n), "{n} given twice");
                            seen.insert((kind, id.clone()), n);
                        }
                    }
                    assert_eq!(map.lookup(n).await.unwrap(), Some((k, id.clone())));
                }
                let (map, store) = reopen(&dir, open.take()).await;
                for ((kind, id), n) in &seen {
                    let k = [Kind::User, Kind::Group, Kind::Message][*kind as usize];
                    assert_eq!(map.lookup(*n).await.unwrap(), Some((k, id.clone())));
                }
                assert_eq!(map.lookup(FIRST - 1).await.unwrap(), None);
                drop(map);
                store.close();
                std::fs::remove_dir_all(dir).unwrap();
            });
        }
    }

    #[tokio::test]
    async fn a_restart_skips_the_reserved_block() {
        let dir = temp_dir();
        let (map, store) = reopen(&dir, None).await;
        assert_eq!(map.num(Kind::User, "a").await.unwrap(), FIRST);
        let (map, store) = reopen(&dir, Some((map, store))).await;
        assert_eq!(map.num(Kind::User, "a").await.unwrap(), FIRST, "kept");
        assert_eq!(map.num(Kind::User, "b").await.unwrap(), FIRST + BLOCK, "numbers of the old block are not reused");
        drop(map);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
