//! The payload cache in front of the upstream: contacts, rooms and room members, kept in the
//! account's store (so they survive restarts) until the upstream says DIRTY — the bus drops the
//! entry for every DIRTY it publishes. A room's members live in one entry under the room's id,
//! the id Wechaty's `roomMemberPayloadDirty(roomId)` names.
//!
//! A payload fetched while a DIRTY arrived is not cached: every DIRTY (and every reconnection)
//! bumps a generation, and a put whose fetch began in an older generation is skipped.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use puppet_proto::model::{PayloadType, RoomMember};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::Upstream;

/// Members kept per room entry; a bigger room's further members are fetched every time.
pub const MEMBERS_KEPT: usize = 5_000;

/// One room's members as cached.
#[derive(Default, Serialize, Deserialize)]
pub(super) struct RoomMembers {
    /// The member list, once fetched.
    #[serde(default)]
    pub list: Option<Vec<String>>,
    /// Members' payloads, by contact id.
    #[serde(default)]
    pub members: BTreeMap<String, RoomMember>,
}

impl Upstream {
    /// The generation a fetch begins in.
    pub(super) fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    /// Marks every payload fetched so far as possibly stale (a DIRTY, a reconnection).
    pub(super) fn bump_generation(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The cached payload, if caching is on and one is there.
    pub(super) async fn cache_get<T: DeserializeOwned + Send + 'static>(
        &self,
        kind: PayloadType,
        id: &str,
    ) -> Option<T> {
        if !self.inner.settings.cache {
            return None;
        }
        let (k, key) = (kind.wire() as u8, id.to_owned());
        match self.inner.store.read(move |s| s.kv().cache_get(k, &key)).await {
            Ok(Some(bytes)) => match serde_json::from_slice(&bytes) {
                Ok(v) => {
                    self.inner.cache_hits.fetch_add(1, Ordering::Relaxed);
                    Some(v)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a cached upstream payload is unreadable; asking the upstream");
                    None
                }
            },
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "the payload cache could not be read; asking the upstream");
                None
            }
        }
    }

    /// Caches a payload fetched in generation `since`, unless a DIRTY came meanwhile.
    pub(super) fn cache_put<T: Serialize>(&self, kind: PayloadType, id: &str, value: &T, since: u64) {
        if !self.inner.settings.cache || self.generation() != since {
            return;
        }
        match serde_json::to_vec(value) {
            Ok(bytes) => _ = self.inner.store.kv().cache_put(kind.wire() as u8, id, bytes),
            Err(e) => tracing::error!(error = %e, "an upstream payload could not be encoded for the cache"),
        }
    }

    /// Calls answered from the cache so far (for the bench and tests).
    pub fn cache_hits(&self) -> u64 {
        self.inner.cache_hits.load(Ordering::Relaxed)
    }
}
