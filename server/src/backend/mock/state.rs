//! The mock account's state on disk: the world as it has become (contacts, rooms, tags, friend
//! requests, invitations) and whether the account is logged in — so a restarted server comes back
//! with the same world and, like Wechaty's memory card or itchat's hot reload, without a new scan.
//! Messages are not kept: after a restart, old message ids answer NOT_FOUND.
//!
//! The file is rewritten (atomically: write, then rename) within a second of a change and on
//! shutdown. A file that cannot be read is moved aside and the server starts from the world
//! description, saying so in one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use puppet_proto::ids::{ContactId, TagId};
use puppet_proto::model::{Contact, Friendship, RoomInvitation};
use serde::{Deserialize, Serialize};

use super::world::RoomSpec;

/// Bumped when the layout changes incompatibly.
const VERSION: u32 = 1;

/// What is kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Snapshot {
    /// Layout version.
    pub version: u32,
    /// The bot's id.
    pub me: ContactId,
    /// Everyone, the bot included.
    pub contacts: Vec<Contact>,
    /// Every room.
    pub rooms: Vec<RoomSpec>,
    /// Tag id → contacts.
    pub tags: BTreeMap<TagId, Vec<ContactId>>,
    /// Friend requests.
    pub friendships: Vec<Friendship>,
    /// Room invitations.
    pub invitations: Vec<RoomInvitation>,
    /// Logged in when written.
    pub logged_in: bool,
    /// The next id to hand out (ids are never reused).
    pub next_id: u64,
}

impl Snapshot {
    /// Wraps the fields with the current layout version.
    pub fn versioned(mut self) -> Self {
        self.version = VERSION;
        self
    }
}

/// Reads the state file: `Ok(None)` when there is none; `Err` with a one-line reason when it is
/// unreadable, after moving it aside so the next start is clean.
pub fn load(path: &Path) -> Result<Option<Snapshot>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let parsed: Result<Snapshot, String> =
        serde_json::from_str(&text).map_err(|e| e.to_string()).and_then(|s: Snapshot| {
            if s.version == VERSION {
                Ok(s)
            } else {
                Err(format!("layout version {} (this server reads {VERSION})", s.version))
            }
        });
    parsed.map(Some).map_err(|why| {
        let aside = aside_path(path);
        let moved = std::fs::rename(path, &aside).map(|_| format!("moved to {}", aside.display()));
        format!(
            "{} is unusable ({why}); {}",
            path.display(),
            moved.unwrap_or_else(|e| format!("could not move it aside: {e}"))
        )
    })
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    path.with_extension(format!("corrupt-{stamp}.json"))
}

/// Writes `bytes` to `path` atomically: to a temporary file of its own (no two writers ever share
/// one), then renamed over the target. Blocking: call it from `spawn_blocking`.
pub fn write(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension(format!("tmp-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    let written = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        _ = std::fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_moved_aside_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("puppet-state-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mock-world.json");
        assert_eq!(load(&path), Ok(None));
        std::fs::write(&path, "{ not json").unwrap();
        let err = load(&path).unwrap_err();
        assert!(err.contains("unusable") && err.contains("moved to"), "{err}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "kept aside for a person to look at");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
