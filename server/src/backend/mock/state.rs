//! The mock account's state in the account's store: the world as it has become (contacts, rooms,
//! tags, friend requests, invitations, read marks) and whether the account is logged in — so a
//! restarted server comes back with the same world and, like Wechaty's memory card or itchat's hot
//! reload, without a new scan.
//!
//! Every entity is one key-value entry, written the moment it changes (see the namespaces below):
//! under `--durability always` a change is committed before the call that made it is answered,
//! under `batch` a crash loses at most the last group commit. The world description is written
//! once, when the store holds no world yet, with the [`VERSION`] marker last: the writer commits in
//! order, so a world whose marker is there is complete.
//!
//! Servers before the store kept the world in `<data dir>/mock-world.json` ([`Snapshot`]); such a
//! file is imported once and renamed to `mock-world.json.imported`. A file that cannot be read is
//! moved aside and the server starts from the world description, saying so in one line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use puppet_proto::ids::{ContactId, ConversationId, TagId};
use puppet_proto::model::{Contact, Friendship, RoomInvitation};
use serde::{Deserialize, Serialize};

use super::world::RoomSpec;
use crate::store::{Kv, StoreError};

/// Bumped when the layout changes incompatibly (the old file's and the store's alike).
pub const VERSION: u32 = 1;

/// Contact id → [`Contact`] (the bot included).
pub const CONTACTS: &str = "mock.contacts";
/// Room id → [`RoomSpec`] (the room, its aliases, inviters and announcement).
pub const ROOMS: &str = "mock.rooms";
/// Tag id → the tagged contact ids.
pub const TAGS: &str = "mock.tags";
/// Friendship id → [`Friendship`].
pub const FRIENDSHIPS: &str = "mock.friendships";
/// Room invitation id → [`RoomInvitation`].
pub const INVITATIONS: &str = "mock.invitations";
/// Conversation id → read (true) or unread.
pub const READ: &str = "mock.read";
/// [`META_VERSION`], [`META_ME`], [`META_LOGGED_IN`], [`META_NEXT_ID`].
pub const META: &str = "mock.meta";
/// The layout version; written last when a world is first stored.
pub const META_VERSION: &str = "version";
/// The bot's contact id.
pub const META_ME: &str = "me";
/// Whether the account is logged in (a restart then logs in without a scan).
pub const META_LOGGED_IN: &str = "loggedIn";
/// The next id to hand out (ids are never reused, messages' included).
pub const META_NEXT_ID: &str = "nextId";

const NAMESPACES: [&str; 7] = [CONTACTS, ROOMS, TAGS, FRIENDSHIPS, INVITATIONS, READ, META];

/// The world as kept: the layout of the old state file, and what is read back from the store.
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
    /// Conversation id → read or not (not in the old file).
    #[serde(default)]
    pub read: BTreeMap<ConversationId, bool>,
}

/// Reads the world from the store: `Ok(None)` when it holds none (or only part of one: a first
/// start that stopped before its marker was committed). Blocking.
pub fn load_kv(kv: &Kv) -> Result<Option<Snapshot>, String> {
    let why = |e: StoreError| e.to_string();
    match kv.get::<u32>(META, META_VERSION).map_err(why)? {
        None => return Ok(None),
        Some(VERSION) => {}
        Some(v) => return Err(format!("the stored mock world has layout version {v} (this server reads {VERSION})")),
    }
    let me: ContactId =
        kv.get(META, META_ME).map_err(why)?.ok_or_else(|| "the stored mock world does not name the bot".to_owned())?;
    fn values<T: serde::de::DeserializeOwned>(kv: &Kv, ns: &str) -> Result<Vec<T>, String> {
        Ok(kv.scan(ns).map_err(|e| e.to_string())?.into_iter().map(|(_, v)| v).collect())
    }
    Ok(Some(Snapshot {
        version: VERSION,
        contacts: values(kv, CONTACTS)?,
        rooms: values(kv, ROOMS)?,
        tags: kv.scan(TAGS).map_err(why)?.into_iter().map(|(k, v)| (TagId(k), v)).collect(),
        friendships: values(kv, FRIENDSHIPS)?,
        invitations: values(kv, INVITATIONS)?,
        read: kv.scan(READ).map_err(why)?.into_iter().map(|(k, v)| (ConversationId(k), v)).collect(),
        logged_in: kv.get(META, META_LOGGED_IN).map_err(why)?.unwrap_or(false),
        next_id: kv.get(META, META_NEXT_ID).map_err(why)?.unwrap_or(1),
        me,
    }))
}

/// Deletes every stored entry of the mock's world (before a fresh world replaces an unreadable
/// one). Blocking.
pub fn clear_kv(kv: &Kv) -> Result<(), StoreError> {
    for ns in NAMESPACES {
        for (key, _) in kv.scan::<serde_json::Value>(ns)? {
            kv.delete(ns, &key);
        }
    }
    Ok(())
}

/// Reads the old state file: `Ok(None)` when there is none; `Err` with a one-line reason when it is
/// unreadable, after moving it aside so the next start is clean. Blocking.
pub fn load_file(path: &Path) -> Result<Option<Snapshot>, String> {
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

/// Where an imported state file goes.
pub fn imported_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".imported");
    path.with_file_name(name)
}

fn aside_path(path: &Path) -> PathBuf {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    path.with_extension(format!("corrupt-{stamp}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_file_is_moved_aside_with_a_reason() {
        let dir = std::env::temp_dir().join(format!("puppet-state-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mock-world.json");
        assert_eq!(load_file(&path), Ok(None));
        std::fs::write(&path, "{ not json").unwrap();
        let err = load_file(&path).unwrap_err();
        assert!(err.contains("unusable") && err.contains("moved to"), "{err}");
        assert!(!path.exists());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "kept aside for a person to look at");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_imported_file_keeps_its_name_with_a_suffix() {
        assert_eq!(imported_path(Path::new("/d/mock-world.json")), Path::new("/d/mock-world.json.imported"));
    }
}
