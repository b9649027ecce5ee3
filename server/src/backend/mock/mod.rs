//! The mock backend: a simulated WeChat account in a simulated world. It behaves like a real account
//! (login flow, messages with ids and payloads, rooms that change and say so, DIRTY after every data
//! change) so that clients, tests and benchmarks exercise real behaviour, not canned answers.
//!
//! State: the world (contacts, rooms, tags, friend requests, invitations, read marks, the login) is
//! held in memory and written through to the account's store the moment it changes ([`state`]).
//! Messages live only in the store (one record each: the payload and what it carries) and are read
//! back from it, so memory does not grow with them; how many are kept is the store's retention
//! (`--message-retention*`), and older ids answer `NOT_FOUND`. Everything else grows only with what
//! the world or the bot creates.

pub mod control;
pub mod state;
pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use puppet_proto::event::{
    DataPayload, FriendshipEvent, LoginEvent, LogoutEvent, MessageEvent, PuppetEvent, RoomJoinEvent, RoomLeaveEvent,
    RoomTopicEvent,
};
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{
    Contact, Friendship, FriendshipType, ImageType, Location, Message, MessageType, MiniProgram, PayloadType, Room,
    RoomInvitation, RoomMember, ScanStatus, UrlLink, now_ms,
};
use serde::{Deserialize, Serialize};

use super::{Backend, BackendError, BackendResult, Outgoing, Referrer};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::store::{Durability, Kv, MessageRecord, Store};
use crate::tasks::Tasks;
use base64::Engine;
use puppet_proto::filebox::BASE64;
use world::{RoomSpec, WorldSpec};

/// The most messages `MockWorld/ListMessages` returns: a conversation's newest.
pub const LIST_MESSAGES_MAX: usize = 1_000;
/// How long after sending a message the bot may still recall it (WeChat's rule).
const RECALL_WINDOW_MS: u64 = 2 * 60 * 1000;

/// Mock settings.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// The world to simulate when the store holds none yet.
    pub world: WorldSpec,
    /// Delay between login steps.
    pub login_step: Duration,
    /// Print the login QR code on stdout.
    pub print_qr: bool,
    /// The state file of servers before the store (`<data dir>/mock-world.json`): imported once
    /// when the store holds no world yet, then renamed to `….imported`.
    pub import_file: Option<PathBuf>,
}

/// What a stored message carries besides its payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
enum Attachment {
    None,
    Contact(ContactId),
    File(#[serde(with = "filebox_json")] FileBox),
    Url(UrlLink),
    MiniProgram(MiniProgram),
    Location(Location),
}

/// A FileBox kept as its wire JSON text.
mod filebox_json {
    use puppet_proto::filebox::FileBox;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(fb: &FileBox, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&fb.to_json())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<FileBox, D::Error> {
        let text = String::deserialize(d)?;
        let mut fb = FileBox::from_json(&text).map_err(serde::de::Error::custom)?;
        // The JSON text carries `{}` for no metadata; both travel the same way.
        if fb.metadata.as_ref().is_some_and(|m| m.as_object().is_some_and(|o| o.is_empty())) {
            fb.metadata = None;
        }
        Ok(fb)
    }
}

/// One message as kept in the store (the record's body is its JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct StoredMessage {
    message: Message,
    attachment: Attachment,
}

impl StoredMessage {
    fn encode(&self) -> BackendResult<Vec<u8>> {
        serde_json::to_vec(self).map_err(|e| BackendError::Internal(format!("encoding a message: {e}")))
    }

    fn decode(record: &MessageRecord) -> BackendResult<Self> {
        serde_json::from_slice(&record.body).map_err(|e| {
            BackendError::Internal(format!(
                "stored message `{}` is unreadable: {e}",
                puppet_proto::ids::Shown(&record.id)
            ))
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    Offline,
    LoggingIn,
    Online,
}

struct World {
    me: ContactId,
    contacts: BTreeMap<ContactId, Contact>,
    rooms: BTreeMap<RoomId, RoomSpec>,
    tags: BTreeMap<TagId, BTreeSet<ContactId>>,
    friendships: HashMap<FriendshipId, Friendship>,
    invitations: HashMap<RoomInvitationId, RoomInvitation>,
    read: BTreeMap<ConversationId, bool>,
    session: Session,
    /// Bumped on every login attempt and logout, so a superseded login flow stops.
    login_generation: u64,
    next_id: u64,
    /// Restored logged in: `start` logs in without a scan.
    resume_login: bool,
    /// Where every change is written through ([`state`]).
    kv: Kv,
}

struct Inner {
    world: Mutex<World>,
    store: Store,
    sink: EventSink,
    blobs: BlobStore,
    options: MockOptions,
    tasks: Tasks,
}

/// The mock backend. Cheap to clone.
#[derive(Clone)]
pub struct MockBackend {
    inner: Arc<Inner>,
}

/// A conversation resolved against the world.
enum Target {
    Contact(ContactId),
    Room(RoomId),
}

fn not_logged_in() -> BackendError {
    BackendError::FailedPrecondition("the bot is not logged in; call Start and wait for the LOGIN event".into())
}

impl World {
    fn new(spec: WorldSpec, kv: Kv) -> Self {
        let me = spec.me.id.clone();
        let mut contacts: BTreeMap<ContactId, Contact> = spec.contacts.into_iter().map(|c| (c.id.clone(), c)).collect();
        contacts.insert(me.clone(), spec.me);
        let rooms = spec.rooms.into_iter().map(|r| (r.room.id.clone(), r)).collect();
        let tags = spec.tags.into_iter().map(|(t, ids)| (t, ids.into_iter().collect())).collect();
        Self {
            me,
            contacts,
            rooms,
            tags,
            friendships: HashMap::new(),
            invitations: HashMap::new(),
            read: BTreeMap::new(),
            session: Session::Offline,
            login_generation: 0,
            next_id: 1,
            resume_login: false,
            kv,
        }
    }

    fn from_snapshot(s: state::Snapshot, kv: Kv) -> Self {
        let spec = WorldSpec {
            me: s
                .contacts
                .iter()
                .find(|c| c.id == s.me)
                .cloned()
                .unwrap_or_else(|| Contact { id: s.me.clone(), ..Default::default() }),
            contacts: s.contacts.into_iter().filter(|c| c.id != s.me).collect(),
            rooms: s.rooms,
            tags: s.tags,
        };
        let mut w = Self::new(spec, kv);
        w.friendships = s.friendships.into_iter().map(|f| (f.id.clone(), f)).collect();
        w.invitations = s.invitations.into_iter().map(|i| (i.id.clone(), i)).collect();
        w.read = s.read;
        w.next_id = s.next_id.max(1);
        w.resume_login = s.logged_in;
        w
    }

    #[cfg(test)]
    fn snapshot(&self) -> state::Snapshot {
        let mut friendships: Vec<Friendship> = self.friendships.values().cloned().collect();
        friendships.sort_by(|a, b| a.id.cmp(&b.id));
        let mut invitations: Vec<RoomInvitation> = self.invitations.values().cloned().collect();
        invitations.sort_by(|a, b| a.id.cmp(&b.id));
        state::Snapshot {
            version: state::VERSION,
            me: self.me.clone(),
            contacts: self.contacts.values().cloned().collect(),
            rooms: self.rooms.values().cloned().collect(),
            tags: self.tags.iter().map(|(t, ids)| (t.clone(), ids.iter().cloned().collect())).collect(),
            friendships,
            invitations,
            logged_in: self.session == Session::Online || self.resume_login,
            next_id: self.next_id,
            read: self.read.clone(),
        }
    }

    /// Writes one entry through to the store.
    fn put<T: Serialize + ?Sized>(&self, ns: &str, key: &str, value: &T) {
        if let Err(e) = self.kv.put(ns, key, value) {
            tracing::error!(namespace = ns, error = %e, "could not store a change of the mock world");
        }
    }

    /// Writes the whole world (a first start, an import), the layout marker last: a world whose
    /// marker is committed is complete.
    fn save_all(&self) {
        for id in self.contacts.keys() {
            self.save_contact(id);
        }
        for id in self.rooms.keys() {
            self.save_room(id);
        }
        for tag in self.tags.keys() {
            self.save_tag(tag);
        }
        for id in self.friendships.keys() {
            self.save_friendship(id);
        }
        for id in self.invitations.keys() {
            self.save_invitation(id);
        }
        for id in self.read.keys() {
            self.save_read(id);
        }
        self.put(state::META, state::META_ME, &self.me);
        self.save_logged_in(self.session == Session::Online || self.resume_login);
        self.put(state::META, state::META_NEXT_ID, &self.next_id);
        self.put(state::META, state::META_VERSION, &state::VERSION);
    }

    fn save_contact(&self, id: &ContactId) {
        match self.contacts.get(id) {
            Some(c) => self.put(state::CONTACTS, id.as_str(), c),
            None => _ = self.kv.delete(state::CONTACTS, id.as_str()),
        }
    }

    fn save_room(&self, id: &RoomId) {
        match self.rooms.get(id) {
            Some(r) => self.put(state::ROOMS, id.as_str(), r),
            None => _ = self.kv.delete(state::ROOMS, id.as_str()),
        }
    }

    fn save_tag(&self, tag: &TagId) {
        match self.tags.get(tag) {
            Some(ids) => self.put(state::TAGS, tag.as_str(), ids),
            None => _ = self.kv.delete(state::TAGS, tag.as_str()),
        }
    }

    fn save_friendship(&self, id: &FriendshipId) {
        if let Some(f) = self.friendships.get(id) {
            self.put(state::FRIENDSHIPS, id.as_str(), f);
        }
    }

    fn save_invitation(&self, id: &RoomInvitationId) {
        if let Some(i) = self.invitations.get(id) {
            self.put(state::INVITATIONS, id.as_str(), i);
        }
    }

    fn save_read(&self, id: &ConversationId) {
        if let Some(read) = self.read.get(id) {
            self.put(state::READ, id.as_str(), read);
        }
    }

    fn save_logged_in(&self, logged_in: bool) {
        self.put(state::META, state::META_LOGGED_IN, &logged_in);
    }

    /// A new id; the next one is stored before the id is used, so no id is ever handed out twice.
    fn fresh_id(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
        self.put(state::META, state::META_NEXT_ID, &self.next_id);
        format!("{prefix}{n:06}")
    }

    fn require_online(&self) -> BackendResult<()> {
        if self.session == Session::Online { Ok(()) } else { Err(not_logged_in()) }
    }

    fn contact(&self, id: &ContactId) -> BackendResult<&Contact> {
        self.contacts.get(id).ok_or_else(|| BackendError::not_found("contact", id))
    }

    fn contact_mut(&mut self, id: &ContactId) -> BackendResult<&mut Contact> {
        self.contacts.get_mut(id).ok_or_else(|| BackendError::not_found("contact", id))
    }

    fn room(&self, id: &RoomId) -> BackendResult<&RoomSpec> {
        self.rooms.get(id).ok_or_else(|| BackendError::not_found("room", id))
    }

    /// A room the bot is in (for anything but reading it).
    fn joined_room_mut(&mut self, id: &RoomId) -> BackendResult<&mut RoomSpec> {
        let me = self.me.clone();
        let room = self.rooms.get_mut(id).ok_or_else(|| BackendError::not_found("room", id))?;
        if !room.room.member_ids.contains(&me) {
            return Err(BackendError::FailedPrecondition(format!("the bot is not a member of room `{id}`")));
        }
        Ok(room)
    }

    fn resolve(&self, to: &ConversationId) -> BackendResult<Target> {
        let id = to.as_str();
        if self.rooms.contains_key(id) {
            Ok(Target::Room(RoomId::from(id)))
        } else if self.contacts.contains_key(id) {
            Ok(Target::Contact(ContactId::from(id)))
        } else {
            Err(BackendError::not_found("conversation (contact or room)", id))
        }
    }

    /// The conversation a message is listed under: its room, else the party that is not the bot.
    fn conversation_of(&self, m: &Message) -> String {
        if !m.room_id.is_empty() {
            m.room_id.0.clone()
        } else if m.talker_id == self.me {
            m.listener_id.0.clone()
        } else {
            m.talker_id.0.clone()
        }
    }
}

impl MockBackend {
    /// A mock account in the world `store` holds — else the one of an old state file (imported
    /// once), else `options.world` —, publishing into `sink`. Its loops (login flows, renaming an
    /// imported file) belong to `tasks`. Reads the store: call it at start-up.
    pub fn new(
        options: MockOptions,
        store: Store,
        sink: EventSink,
        blobs: BlobStore,
        tasks: Tasks,
    ) -> anyhow::Result<Self> {
        options.world.validate().map_err(|e| anyhow::anyhow!("mock world: {e}"))?;
        let (world, imported) = Self::restore(&options, &store);
        let backend = Self {
            inner: Arc::new(Inner { world: Mutex::new(world), store: store.clone(), sink, blobs, options, tasks }),
        };
        if let Some(path) = imported {
            backend.inner.tasks.spawn("mock-import", |stop| async move {
                tokio::select! {
                    // Not renamed: the next start finds the world in the store and renames it then.
                    _ = stop.cancelled() => {}
                    committed = store.flushed() => match committed {
                        Ok(()) => retire_imported(path).await,
                        Err(e) => tracing::error!(
                            path = %path.display(),
                            error = %e,
                            "the imported mock world could not be stored; the file stays for the next start"
                        ),
                    },
                }
            });
        }
        Ok(backend)
    }

    /// The world to start with, and an old state file to rename once its import is committed.
    fn restore(options: &MockOptions, store: &Store) -> (World, Option<PathBuf>) {
        let kv = store.kv();
        // In memory nothing outlives the process: an old file is read, never renamed.
        let on_disk = store.durability() != Durability::Memory;
        let import_file = options.import_file.as_deref();
        match state::load_kv(&kv) {
            Ok(Some(snapshot)) => {
                tracing::info!(logged_in = snapshot.logged_in, "mock world restored from the store");
                // Imported by a start that stopped before it could rename the file.
                let stale = import_file.filter(|p| on_disk && p.exists()).map(|p| p.to_owned());
                return (World::from_snapshot(snapshot, kv), stale);
            }
            Ok(None) => {}
            Err(why) => {
                tracing::error!("{why}; starting afresh");
                if let Err(e) = state::clear_kv(&kv) {
                    tracing::error!(error = %e, "could not clear the stored mock world");
                }
            }
        }
        let from_file = import_file.and_then(|path| match state::load_file(path) {
            Ok(snapshot) => snapshot.map(|s| (s, path.to_owned())),
            Err(why) => {
                tracing::error!("{why}; starting from the world description");
                None
            }
        });
        let (world, imported) = match from_file {
            Some((snapshot, path)) => (World::from_snapshot(snapshot, kv), on_disk.then_some(path)),
            None => (World::new(options.world.clone(), kv), None),
        };
        world.save_all();
        (world, imported)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // Every mutation below validates before it changes anything, so a poisoned lock still
        // guards a consistent world.
        self.inner.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores a new message (under the world's lock, so messages are kept in the order of their
    /// ids); readable at once.
    fn keep(&self, w: &World, message: Message, attachment: Attachment) -> BackendResult<MessageId> {
        let id = message.id.clone();
        let record = MessageRecord {
            id: id.0.clone(),
            conversation: w.conversation_of(&message),
            time_ms: message.timestamp_ms,
            body: StoredMessage { message, attachment }.encode()?,
        };
        self.inner.store.messages().put(record);
        Ok(id)
    }

    /// A stored message and its record, read without holding the world's lock.
    async fn stored(&self, id: &MessageId) -> BackendResult<(MessageRecord, StoredMessage)> {
        let record = crate::backend::stored_message(&self.inner.store, id).await?;
        let stored = StoredMessage::decode(&record)?;
        Ok((record, stored))
    }

    fn emit(&self, event: PuppetEvent) {
        self.inner.sink.emit(event);
    }

    fn dirty(&self, kind: PayloadType, id: &str) {
        self.emit(PuppetEvent::dirty(kind, id));
    }

    /// Runs the simulated login: QR shown, scanned, confirmed, LOGIN, READY.
    async fn login_flow(self, generation: u64) {
        let step = self.inner.options.login_step;
        let qrcode = format!("https://login.weixin.qq.com/l/mock-{generation}");
        let still_current = |b: &Self| b.world().login_generation == generation;
        if self.inner.options.print_qr {
            print_qr(&qrcode);
        }
        let steps =
            [(ScanStatus::Waiting, Some(qrcode.clone())), (ScanStatus::Scanned, None), (ScanStatus::Confirmed, None)];
        for (status, qr) in steps {
            {
                let w = self.world();
                if w.login_generation != generation {
                    return;
                }
                self.emit(PuppetEvent::scan(status, qr));
            }
            tokio::time::sleep(step).await;
        }
        let me = {
            let mut w = self.world();
            if w.login_generation != generation {
                return;
            }
            w.session = Session::Online;
            w.save_logged_in(true);
            self.emit(PuppetEvent::Login(LoginEvent { contact_id: w.me.clone() }));
            w.me.clone()
        };
        tracing::info!(contact_id = %me, "mock account logged in");
        tokio::time::sleep(step).await;
        if still_current(&self) && self.world().session == Session::Online {
            self.emit(PuppetEvent::ready());
        }
    }

    /// A message's attachment, picked by `pick`; FAILED_PRECONDITION naming `what` it is not.
    async fn attachment<T>(
        &self,
        id: &MessageId,
        what: &str,
        pick: impl FnOnce(Attachment) -> Option<T>,
    ) -> BackendResult<T> {
        let (_, stored) = self.stored(id).await?;
        pick(stored.attachment).ok_or_else(|| BackendError::FailedPrecondition(format!("message `{id}` is not {what}")))
    }

    /// Turns a pending request of kind `pending` into a friendship: the contact becomes a friend,
    /// FRIENDSHIP and DIRTY are emitted.
    fn confirm_friendship(&self, id: &FriendshipId, pending: FriendshipType, describe: &str) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let f = w.friendships.get(id).ok_or_else(|| BackendError::not_found("friendship", id))?;
        if f.kind != pending {
            return Err(BackendError::FailedPrecondition(format!(
                "friendship `{id}` is not {describe} (it is {:?})",
                f.kind
            )));
        }
        let contact = f.contact_id.clone();
        w.contact_mut(&contact)?.friend = true;
        if let Some(f) = w.friendships.get_mut(id) {
            f.kind = FriendshipType::Confirm;
        }
        w.save_contact(&contact);
        w.save_friendship(id);
        self.emit(PuppetEvent::Friendship(FriendshipEvent { friendship_id: id.clone() }));
        self.dirty(PayloadType::Friendship, id.as_str());
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    fn new_message(w: &mut World, kind: MessageType, talker: ContactId, target: &Target, text: String) -> Message {
        let (listener_id, room_id) = match target {
            Target::Contact(c) => (c.clone(), RoomId::default()),
            Target::Room(r) => (ContactId::default(), r.clone()),
        };
        Message {
            id: MessageId(w.fresh_id("msg_")),
            kind,
            talker_id: talker,
            listener_id,
            room_id,
            text,
            timestamp_ms: now_ms(),
            ..Default::default()
        }
    }
}

/// Renames an imported state file to `….imported` once the store holds what it held (one log
/// line), so it is neither imported again nor mistaken for the live state.
async fn retire_imported(path: PathBuf) {
    let target = state::imported_path(&path);
    let (from, to) = (path.clone(), target.clone());
    match tokio::task::spawn_blocking(move || std::fs::rename(from, to)).await {
        Ok(Ok(())) => tracing::info!(
            "the mock world of {} is in the store now; the file was renamed to {}",
            path.display(),
            target.display()
        ),
        Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "could not rename the imported mock world"),
        Err(e) => tracing::warn!(error = %e, "renaming the imported mock world failed"),
    }
}

fn print_qr(text: &str) {
    use std::io::Write;
    let art = qrcode::QrCode::new(text.as_bytes())
        .map(|q| q.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    _ = writeln!(out, "scan to log in (mock): {text}\n{art}");
    _ = out.flush();
}

/// A small generated avatar (SVG with the first letter of the name), inline as Base64.
fn avatar(name: &str, id: &str) -> FileBox {
    let initial: String = name.chars().next().map(|c| c.to_string()).unwrap_or_else(|| "?".into());
    let hue = id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % 360;
    let svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"64\" height=\"64\"><rect width=\"64\" height=\"64\" \
         fill=\"hsl({hue},60%,55%)\"/><text x=\"32\" y=\"42\" font-size=\"32\" text-anchor=\"middle\" \
         fill=\"white\">{initial}</text></svg>"
    );
    let mut fb = FileBox::new(format!("{}.svg", id), FileBoxSource::Base64(BASE64.encode(svg.as_bytes())));
    fb.size = Some(svg.len() as u64);
    fb
}

#[async_trait]
impl Backend for MockBackend {
    fn name(&self) -> &'static str {
        "mock"
    }

    async fn start(&self) -> BackendResult<()> {
        let generation = {
            let mut w = self.world();
            if w.session != Session::Offline {
                return Ok(());
            }
            if std::mem::take(&mut w.resume_login) {
                // Logged in when the server last stopped: come back without a scan.
                w.session = Session::Online;
                self.emit(PuppetEvent::Login(LoginEvent { contact_id: w.me.clone() }));
                self.emit(PuppetEvent::ready());
                return Ok(());
            }
            w.session = Session::LoggingIn;
            w.login_generation += 1;
            w.login_generation
        };
        let this = self.clone();
        // A login flow stops at its next step once superseded; at shutdown it is simply dropped.
        self.inner.tasks.spawn_cancellable("mock-login", this.login_flow(generation));
        Ok(())
    }

    async fn stop(&self) -> BackendResult<()> {
        // Clients call Stop on every bot.stop(); the account stays logged in (puppet-service#204).
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        let mut w = self.world();
        w.resume_login = false;
        let was = w.session;
        w.session = Session::Offline;
        w.login_generation += 1;
        w.save_logged_in(false);
        if was == Session::Online {
            self.emit(PuppetEvent::Logout(LogoutEvent {
                contact_id: w.me.clone(),
                data: "logged out by request".into(),
            }));
        }
        // Already offline (e.g. the Node client's echo after a LOGOUT event): nothing to do.
        Ok(())
    }

    async fn ding(&self, data: String) -> BackendResult<()> {
        self.emit(PuppetEvent::Dong(DataPayload { data }));
        Ok(())
    }

    async fn dirty_payload(&self, kind: PayloadType, id: String) -> BackendResult<()> {
        // The mock has no cache to drop; the event is what clients wait for.
        self.dirty(kind, &id);
        Ok(())
    }

    async fn self_qrcode(&self) -> BackendResult<String> {
        let w = self.world();
        w.require_online()?;
        Ok(format!("https://u.wechat.com/mock/{}", w.me))
    }

    async fn set_self_name(&self, name: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        w.contact_mut(&me)?.name = name;
        w.save_contact(&me);
        self.dirty(PayloadType::Contact, me.as_str());
        Ok(())
    }

    async fn set_self_signature(&self, signature: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        w.contact_mut(&me)?.signature = signature;
        w.save_contact(&me);
        self.dirty(PayloadType::Contact, me.as_str());
        Ok(())
    }

    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        let w = self.world();
        Ok(w.contacts.values().filter(|c| c.friend || c.id == w.me).map(|c| c.id.clone()).collect())
    }

    async fn contact(&self, id: &ContactId) -> BackendResult<Contact> {
        self.world().contact(id).cloned()
    }

    async fn set_contact_alias(&self, id: &ContactId, alias: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.alias = alias;
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn contact_avatar(&self, id: &ContactId) -> BackendResult<FileBox> {
        let w = self.world();
        let c = w.contact(id)?;
        Ok(if c.avatar.is_empty() {
            avatar(&c.name, c.id.as_str())
        } else {
            FileBox::new(format!("{}.jpg", id.as_str()), FileBoxSource::Url { url: c.avatar.clone(), headers: None })
        })
    }

    async fn set_contact_avatar(&self, id: &ContactId, file: FileBox) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        if *id != w.me {
            return Err(BackendError::FailedPrecondition("only the bot's own avatar can be changed".into()));
        }
        let url = match file.source {
            FileBoxSource::Url { url, .. } => url,
            FileBoxSource::Base64(b) => format!("data:image/*;base64,{b}"),
            FileBoxSource::QrCode(_) | FileBoxSource::Uuid(_) => {
                return Err(BackendError::InvalidArgument(
                    "an avatar must be an image given as a Url or Base64 FileBox".into(),
                ));
            }
        };
        w.contact_mut(id)?.avatar = url;
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_phones(&self, id: &ContactId, phones: Vec<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.phones = phones;
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_corporation_remark(&self, id: &ContactId, remark: Option<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.corporation = remark.unwrap_or_default();
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_description(&self, id: &ContactId, description: Option<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.description = description.unwrap_or_default();
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn friendship(&self, id: &FriendshipId) -> BackendResult<Friendship> {
        self.world().friendships.get(id).cloned().ok_or_else(|| BackendError::not_found("friendship", id))
    }

    async fn friendship_search_phone(&self, phone: &str) -> BackendResult<Option<ContactId>> {
        let w = self.world();
        w.require_online()?;
        Ok(w.contacts.values().find(|c| c.phones.iter().any(|p| p == phone) && c.id != w.me).map(|c| c.id.clone()))
    }

    async fn friendship_search_handle(&self, handle: &str) -> BackendResult<Option<ContactId>> {
        let w = self.world();
        w.require_online()?;
        Ok(w.contacts.values().find(|c| c.handle == handle && c.id != w.me).map(|c| c.id.clone()))
    }

    async fn friendship_add(&self, contact: &ContactId, hello: String, _referrer: Referrer) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let c = w.contact(contact)?;
        if c.id == w.me {
            return Err(BackendError::InvalidArgument("the bot cannot befriend itself".into()));
        }
        if c.friend {
            return Err(BackendError::FailedPrecondition(format!("`{contact}` is already a friend")));
        }
        let id = FriendshipId(w.fresh_id("friendship_"));
        let f = Friendship {
            id: id.clone(),
            contact_id: contact.clone(),
            hello,
            kind: FriendshipType::Verify,
            timestamp_ms: now_ms(),
            ..Default::default()
        };
        w.friendships.insert(id.clone(), f);
        w.save_friendship(&id);
        Ok(())
    }

    async fn friendship_accept(&self, id: &FriendshipId) -> BackendResult<()> {
        self.confirm_friendship(id, FriendshipType::Receive, "a received request awaiting acceptance")
    }

    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        Ok(self.stored(id).await?.1.message)
    }

    async fn message_contact(&self, id: &MessageId) -> BackendResult<ContactId> {
        self.attachment(id, "a contact card", |a| match a {
            Attachment::Contact(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        self.attachment(id, "a file message (it carries no file)", |a| match a {
            Attachment::File(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn message_image(&self, id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        let (_, m) = self.stored(id).await?;
        match (m.attachment, m.message.kind) {
            // The mock keeps one rendition; thumbnail, HD and artwork are the same bytes.
            (Attachment::File(f), MessageType::Image) => Ok(f),
            _ => Err(BackendError::FailedPrecondition(format!("message `{id}` is not an image"))),
        }
    }

    async fn message_mini_program(&self, id: &MessageId) -> BackendResult<MiniProgram> {
        self.attachment(id, "a mini-program card", |a| match a {
            Attachment::MiniProgram(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        self.attachment(id, "a link card", |a| match a {
            Attachment::Url(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn message_location(&self, id: &MessageId) -> BackendResult<Location> {
        self.attachment(id, "a location", |a| match a {
            Attachment::Location(x) => Some(x),
            _ => None,
        })
        .await
    }

    async fn message_recall(&self, id: &MessageId) -> BackendResult<bool> {
        let me = {
            let w = self.world();
            w.require_online()?;
            w.me.clone()
        };
        let (record, mut stored) = self.stored(id).await?;
        if stored.message.talker_id != me {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` was not sent by the bot")));
        }
        if stored.message.kind == MessageType::Recalled {
            return Ok(true);
        }
        if now_ms().saturating_sub(stored.message.timestamp_ms) > RECALL_WINDOW_MS {
            return Ok(false);
        }
        stored.message.kind = MessageType::Recalled;
        stored.attachment = Attachment::None;
        // The whole record again (same id, same place in its conversation): `Messages::update`
        // would read the file under the store's queue lock when the message is committed already.
        self.inner.store.messages().put(MessageRecord { body: stored.encode()?, ..record });
        self.dirty(PayloadType::Message, id.as_str());
        Ok(true)
    }

    async fn message_forward(&self, to: &ConversationId, id: &MessageId) -> BackendResult<Option<MessageId>> {
        let (_, original) = self.stored(id).await?;
        if original.message.kind == MessageType::Recalled {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` was recalled")));
        }
        let mut w = self.world();
        w.require_online()?;
        let target = w.resolve(to)?;
        if let Target::Room(r) = &target {
            w.joined_room_mut(r)?;
        }
        let me = w.me.clone();
        let mut m = Self::new_message(&mut w, original.message.kind, me, &target, original.message.text);
        m.filename = original.message.filename;
        let new_id = self.keep(&w, m, original.attachment)?;
        self.emit(PuppetEvent::Message(MessageEvent { message_id: new_id.clone() }));
        Ok(Some(new_id))
    }

    async fn send(&self, to: &ConversationId, content: Outgoing) -> BackendResult<Option<MessageId>> {
        let mut w = self.world();
        w.require_online()?;
        let target = w.resolve(to)?;
        if let Target::Room(r) = &target {
            w.joined_room_mut(r)?;
        }
        let (kind, text, filename, mentions, attachment) = match content {
            Outgoing::Text { text, mentions } => {
                if text.trim().is_empty() {
                    return Err(BackendError::InvalidArgument("`text` is empty".into()));
                }
                if !mentions.is_empty() {
                    let Target::Room(r) = &target else {
                        return Err(BackendError::InvalidArgument("mentions are only possible in a room".into()));
                    };
                    let members = &w.room(r)?.room.member_ids;
                    if let Some(m) = mentions.iter().find(|m| !members.contains(m)) {
                        return Err(BackendError::InvalidArgument(format!("`{m}` is not a member of room `{r}`")));
                    }
                }
                (MessageType::Text, text, String::new(), mentions, Attachment::None)
            }
            Outgoing::Contact(c) => {
                let name = w.contact(&c)?.name.clone();
                (MessageType::Contact, name, String::new(), vec![], Attachment::Contact(c))
            }
            Outgoing::File(fb) => {
                let kind = file_message_type(&fb.name);
                (kind, String::new(), fb.name.clone(), vec![], Attachment::File(fb))
            }
            Outgoing::MiniProgram(m) => {
                (MessageType::MiniProgram, m.title.clone(), String::new(), vec![], Attachment::MiniProgram(m))
            }
            Outgoing::Url(u) => {
                if u.url.is_empty() {
                    return Err(BackendError::InvalidArgument("a link card needs a `url`".into()));
                }
                (MessageType::Url, u.title.clone(), String::new(), vec![], Attachment::Url(u))
            }
            Outgoing::Location(l) => {
                (MessageType::Location, l.name.clone(), String::new(), vec![], Attachment::Location(l))
            }
        };
        let me = w.me.clone();
        let mut m = Self::new_message(&mut w, kind, me, &target, text);
        m.filename = filename;
        m.mention_ids = mentions;
        let id = self.keep(&w, m, attachment)?;
        // A real account sees its own messages too.
        self.emit(PuppetEvent::Message(MessageEvent { message_id: id.clone() }));
        Ok(Some(id))
    }

    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        let w = self.world();
        Ok(w.rooms.values().filter(|r| r.room.member_ids.contains(&w.me)).map(|r| r.room.id.clone()).collect())
    }

    async fn room(&self, id: &RoomId) -> BackendResult<Room> {
        Ok(self.world().room(id)?.room.clone())
    }

    async fn room_add(&self, room: &RoomId, contacts: Vec<ContactId>, _invite_only: bool) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        for c in &contacts {
            w.contact(c)?;
        }
        let me = w.me.clone();
        let r = w.joined_room_mut(room)?;
        let new: Vec<ContactId> = contacts.into_iter().filter(|c| !r.room.member_ids.contains(c)).collect();
        if new.is_empty() {
            return Err(BackendError::FailedPrecondition(format!("everyone named is already in room `{room}`")));
        }
        for c in &new {
            r.room.member_ids.push(c.clone());
            r.inviters.insert(c.clone(), me.clone());
        }
        self.emit(PuppetEvent::RoomJoin(RoomJoinEvent {
            invitee_id_list: new,
            inviter_id: me,
            room_id: room.clone(),
            timestamp: now_ms() / 1000,
        }));
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    async fn room_del(&self, room: &RoomId, contacts: Vec<ContactId>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.joined_room_mut(room)?;
        if r.room.owner_id != me && !r.room.admin_ids.contains(&me) {
            return Err(BackendError::FailedPrecondition(format!(
                "only the owner or an admin can remove members from room `{room}`"
            )));
        }
        if let Some(c) = contacts.iter().find(|c| !r.room.member_ids.contains(c)) {
            return Err(BackendError::FailedPrecondition(format!("`{c}` is not a member of room `{room}`")));
        }
        if contacts.contains(&me) {
            return Err(BackendError::InvalidArgument("use RoomQuit to make the bot leave".into()));
        }
        r.room.member_ids.retain(|m| !contacts.contains(m));
        r.room.admin_ids.retain(|m| !contacts.contains(m));
        for c in &contacts {
            r.member_aliases.remove(c);
        }
        self.emit(PuppetEvent::RoomLeave(RoomLeaveEvent {
            removee_id_list: contacts,
            remover_id: me,
            room_id: room.clone(),
            timestamp: now_ms() / 1000,
        }));
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    async fn room_avatar(&self, room: &RoomId) -> BackendResult<FileBox> {
        let w = self.world();
        let r = &w.room(room)?.room;
        Ok(if r.avatar.is_empty() {
            avatar(&r.topic, r.id.as_str())
        } else {
            FileBox::new(format!("{}.jpg", room.as_str()), FileBoxSource::Url { url: r.avatar.clone(), headers: None })
        })
    }

    async fn room_create(&self, contacts: Vec<ContactId>, topic: String) -> BackendResult<RoomId> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let mut members = vec![me.clone()];
        for c in contacts {
            w.contact(&c)?;
            if !members.contains(&c) {
                members.push(c);
            }
        }
        if members.len() < 3 {
            return Err(BackendError::InvalidArgument("a room needs at least two other contacts".into()));
        }
        let id = RoomId(format!("{}@chatroom", w.fresh_id("2")));
        let invitees = members[1..].to_vec();
        let inviters = invitees.iter().map(|c| (c.clone(), me.clone())).collect();
        let room = Room { id: id.clone(), topic, owner_id: me.clone(), member_ids: members, ..Default::default() };
        w.rooms
            .insert(id.clone(), RoomSpec { room, member_aliases: BTreeMap::new(), inviters, announce: String::new() });
        w.save_room(&id);
        self.emit(PuppetEvent::RoomJoin(RoomJoinEvent {
            invitee_id_list: invitees,
            inviter_id: me,
            room_id: id.clone(),
            timestamp: now_ms() / 1000,
        }));
        Ok(id)
    }

    async fn room_quit(&self, room: &RoomId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.joined_room_mut(room)?;
        r.room.member_ids.retain(|m| *m != me);
        r.room.admin_ids.retain(|m| *m != me);
        if r.room.owner_id == me {
            // WeChat hands ownership to the longest-standing member.
            r.room.owner_id = r.room.member_ids.first().cloned().unwrap_or_default();
        }
        self.emit(PuppetEvent::RoomLeave(RoomLeaveEvent {
            removee_id_list: vec![me.clone()],
            remover_id: me,
            room_id: room.clone(),
            timestamp: now_ms() / 1000,
        }));
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    async fn set_room_topic(&self, room: &RoomId, topic: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.joined_room_mut(room)?;
        if topic.trim().is_empty() {
            return Err(BackendError::InvalidArgument("a room topic cannot be empty".into()));
        }
        let old_topic = std::mem::replace(&mut r.room.topic, topic.clone());
        self.emit(PuppetEvent::RoomTopic(RoomTopicEvent {
            changer_id: me,
            new_topic: topic,
            old_topic,
            room_id: room.clone(),
            timestamp: now_ms() / 1000,
        }));
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    async fn room_qrcode(&self, room: &RoomId) -> BackendResult<String> {
        let w = self.world();
        w.require_online()?;
        w.room(room)?;
        Ok(format!("https://weixin.qq.com/g/mock/{room}"))
    }

    async fn room_announce(&self, room: &RoomId) -> BackendResult<String> {
        Ok(self.world().room(room)?.announce.clone())
    }

    async fn set_room_announce(&self, room: &RoomId, text: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.joined_room_mut(room)?;
        if r.room.owner_id != me && !r.room.admin_ids.contains(&me) {
            return Err(BackendError::FailedPrecondition(format!(
                "only the owner or an admin can change the announcement of room `{room}`"
            )));
        }
        r.announce = text;
        // No ROOM_ANNOUNCE event: published clients throw or warn on event type 32.
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    async fn room_member(&self, room: &RoomId, member: &ContactId) -> BackendResult<RoomMember> {
        let w = self.world();
        let r = w.room(room)?;
        if !r.room.member_ids.contains(member) {
            return Err(BackendError::NotFound { kind: "room member", id: format!("{member} in {room}") });
        }
        let c = w.contact(member)?;
        Ok(RoomMember {
            id: member.clone(),
            room_alias: r.member_aliases.get(member).cloned().unwrap_or_default(),
            inviter_id: r.inviters.get(member).cloned().unwrap_or_default(),
            avatar: c.avatar.clone(),
            name: c.name.clone(),
        })
    }

    async fn room_members(&self, room: &RoomId) -> BackendResult<Vec<ContactId>> {
        Ok(self.world().room(room)?.room.member_ids.clone())
    }

    async fn room_invitation(&self, id: &RoomInvitationId) -> BackendResult<RoomInvitation> {
        self.world().invitations.get(id).cloned().ok_or_else(|| BackendError::not_found("room invitation", id))
    }

    async fn room_invitation_accept(&self, id: &RoomInvitationId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let inv = w.invitations.get(id).cloned().ok_or_else(|| BackendError::not_found("room invitation", id))?;
        let room_id = RoomId(inv.invitation.clone());
        let me = w.me.clone();
        let r = w.rooms.get_mut(&room_id).ok_or_else(|| BackendError::not_found("room", &room_id))?;
        if r.room.member_ids.contains(&me) {
            return Ok(());
        }
        r.room.member_ids.push(me.clone());
        r.inviters.insert(me.clone(), inv.inviter_id.clone());
        self.emit(PuppetEvent::RoomJoin(RoomJoinEvent {
            invitee_id_list: vec![me],
            inviter_id: inv.inviter_id,
            room_id: room_id.clone(),
            timestamp: now_ms() / 1000,
        }));
        w.save_room(&room_id);
        self.dirty(PayloadType::Room, room_id.as_str());
        Ok(())
    }

    async fn tag_contact_add(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact(contact)?;
        w.tags.entry(tag.clone()).or_default().insert(contact.clone());
        w.save_tag(tag);
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    async fn tag_contact_remove(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let members = w.tags.get_mut(tag).ok_or_else(|| BackendError::not_found("tag", tag))?;
        if !members.remove(contact) {
            return Err(BackendError::FailedPrecondition(format!("`{contact}` does not have tag `{tag}`")));
        }
        w.save_tag(tag);
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    async fn tag_delete(&self, tag: &TagId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let members = w.tags.remove(tag).ok_or_else(|| BackendError::not_found("tag", tag))?;
        w.save_tag(tag);
        for c in members {
            self.dirty(PayloadType::Contact, c.as_str());
        }
        Ok(())
    }

    async fn tag_list(&self, contact: Option<&ContactId>) -> BackendResult<Vec<TagId>> {
        let w = self.world();
        match contact {
            None => Ok(w.tags.keys().cloned().collect()),
            Some(c) => {
                w.contact(c)?;
                Ok(w.tags.iter().filter(|(_, m)| m.contains(c)).map(|(t, _)| t.clone()).collect())
            }
        }
    }

    async fn conversation_read(&self, id: &ConversationId, has_read: bool) -> BackendResult<bool> {
        let mut w = self.world();
        w.require_online()?;
        w.resolve(id)?;
        w.read.insert(id.clone(), has_read);
        w.save_read(id);
        Ok(has_read)
    }
}

/// The Wechaty message type a file becomes, by its extension.
fn file_message_type(name: &str) -> MessageType {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "jpg" | "jpeg" | "png" | "gif" | "webp" | "bmp" => MessageType::Image,
        "mp4" | "mov" | "avi" | "mkv" => MessageType::Video,
        "mp3" | "silk" | "amr" | "wav" | "ogg" | "m4a" => MessageType::Audio,
        _ => MessageType::Attachment,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::events::EventBus;
    use crate::store::tests::{options, temp_dir};

    /// A store in memory, for tests that need a mock and keep nothing.
    pub(crate) fn memory_store() -> Store {
        Store::open(std::path::Path::new("/nonexistent"), options(Durability::Memory)).unwrap()
    }

    fn mock_options(import_file: Option<PathBuf>) -> MockOptions {
        MockOptions { world: WorldSpec::builtin(), login_step: Duration::ZERO, print_qr: false, import_file }
    }

    fn mock(store: &Store, import_file: Option<PathBuf>) -> MockBackend {
        let blobs_dir = temp_dir();
        let limits = crate::blobs::BlobLimits { max_file: 1 << 20, max_total: 1 << 20, ttl: Duration::from_secs(60) };
        let blobs = BlobStore::open(&blobs_dir, limits).unwrap();
        let bus = EventBus::new(1024, 1 << 20, 1024);
        MockBackend::new(mock_options(import_file), store.clone(), bus.sink(), blobs, Tasks::new()).unwrap()
    }

    /// Starts the account and waits (bounded) until it is logged in.
    async fn logged_in(backend: &MockBackend) {
        backend.start().await.unwrap();
        let login = async {
            while backend.world().session != Session::Online {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), login).await.expect("the mock account logs in");
    }

    /// Stops the backend's tasks, drops it and closes its store, so the file can be opened again.
    async fn close(backend: MockBackend, store: Store) {
        assert!(backend.inner.tasks.stop(Duration::from_secs(10)).await, "the mock's tasks stop");
        drop(backend);
        store.close();
    }

    #[test]
    fn files_become_the_right_message_type() {
        assert_eq!(file_message_type("a.PNG"), MessageType::Image);
        assert_eq!(file_message_type("clip.mp4"), MessageType::Video);
        assert_eq!(file_message_type("voice.silk"), MessageType::Audio);
        assert_eq!(file_message_type("report.pdf"), MessageType::Attachment);
    }

    #[test]
    fn stored_messages_round_trip_with_every_attachment() {
        let mut fb = FileBox::new("a.png", FileBoxSource::Base64("aGVsbG8=".into()));
        fb.size = Some(5);
        fb.md5 = Some("5d41402abc4b2a76b9719d911017c592".into());
        fb.metadata = Some(serde_json::json!({"k": "v"}));
        let attachments = [
            Attachment::None,
            Attachment::Contact(ContactId::from("wxid_alice")),
            Attachment::File(fb),
            Attachment::File(FileBox::new(
                "b.pdf",
                FileBoxSource::Url { url: "https://example.com/b".into(), headers: Some(serde_json::json!({"a": 1})) },
            )),
            Attachment::Url(UrlLink { url: "https://example.com".into(), title: "t".into(), ..Default::default() }),
            Attachment::MiniProgram(MiniProgram { title: "m".into(), ..Default::default() }),
            Attachment::Location(Location { name: "here".into(), latitude: 1.5, ..Default::default() }),
        ];
        for attachment in attachments {
            let stored = StoredMessage {
                message: Message {
                    id: MessageId::from("msg_000001"),
                    kind: MessageType::Image,
                    text: "张伟 \u{0} \"quoted\"".into(),
                    mention_ids: vec![ContactId::from("wxid_bob")],
                    timestamp_ms: 1_700_000_000_000,
                    ..Default::default()
                },
                attachment,
            };
            let record = MessageRecord {
                id: "msg_000001".into(),
                conversation: "wxid_alice".into(),
                time_ms: 0,
                body: stored.encode().unwrap(),
            };
            assert_eq!(StoredMessage::decode(&record).unwrap(), stored);
        }
        let broken = MessageRecord { id: "msg_x".into(), conversation: String::new(), time_ms: 0, body: b"{".to_vec() };
        let e = StoredMessage::decode(&broken).unwrap_err();
        assert!(matches!(e, BackendError::Internal(ref m) if m.contains("msg_x")), "{e:?}");
    }

    #[tokio::test]
    async fn every_change_to_the_world_and_every_message_survive_a_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let backend = mock(&store, None);
        logged_in(&backend).await;
        let (alice, bob, room) =
            (ContactId::from("wxid_alice"), ContactId::from("wxid_bob"), RoomId::from("10002@chatroom"));
        backend.set_contact_alias(&bob, "Bobby".into()).await.unwrap();
        backend.set_room_topic(&room, "Persisted".into()).await.unwrap();
        backend.set_room_announce(&room, "Be kind".into()).await.unwrap();
        let created = backend.room_create(vec![alice.clone(), bob.clone()], "New room".into()).await.unwrap();
        backend.tag_contact_add(&TagId::from("vip"), &alice).await.unwrap();
        backend.tag_contact_add(&TagId::from("gone"), &bob).await.unwrap();
        backend.tag_delete(&TagId::from("gone")).await.unwrap();
        let stranger = backend.request_friendship(&ContactId::from("wxid_zoe"), "Zoe".into(), "hi".into()).unwrap();
        let invitation = backend.invite_bot(&RoomId::from("10006@chatroom"), &ContactId::from("wxid_victor")).unwrap();
        backend.conversation_read(&ConversationId::from("wxid_alice"), true).await.unwrap();
        let said = backend.say(&alice, None, "ding".into(), vec![]).unwrap();
        let url = UrlLink { url: "https://example.com".into(), title: "Example".into(), ..Default::default() };
        let sent =
            backend.send(&ConversationId::from("wxid_alice"), Outgoing::Url(url.clone())).await.unwrap().unwrap();
        let recalled = backend
            .send(&ConversationId::from(room.as_str()), Outgoing::Text { text: "oops".into(), mentions: vec![] })
            .await
            .unwrap()
            .unwrap();
        assert!(backend.message_recall(&recalled).await.unwrap());
        let before = backend.world().snapshot();
        close(backend, store).await;

        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let backend = mock(&store, None);
        assert_eq!(backend.world().snapshot(), before);
        assert!(backend.world().resume_login, "logged in when it stopped: back without a scan");
        let w = backend.world().snapshot();
        assert_eq!(w.contacts.iter().find(|c| c.id == bob).unwrap().alias, "Bobby");
        assert!(w.rooms.iter().any(|r| r.room.id.as_str() == created.as_str()));
        assert!(w.tags["vip"].contains(&alice) && !w.tags.contains_key("gone"), "{:?}", w.tags);
        assert!(w.friendships.iter().any(|f| f.id == stranger));
        assert!(w.invitations.iter().any(|i| i.id == invitation));
        assert_eq!(w.read.get("wxid_alice"), Some(&true));
        assert_eq!(backend.message(&said).await.unwrap().text, "ding");
        assert_eq!(backend.message_url(&sent).await.unwrap(), url);
        assert_eq!(backend.message(&recalled).await.unwrap().kind, MessageType::Recalled);
        let listed = backend.list_messages(&ConversationId::from("wxid_alice")).await.unwrap();
        assert_eq!(listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), [said.clone(), sent.clone()]);
        // Ids are never handed out twice: a new message does not overwrite an old one.
        logged_in(&backend).await;
        let next = backend.say(&alice, None, "dong".into(), vec![]).unwrap();
        assert!(next > sent && next > recalled, "{next} after {sent} and {recalled}");
        assert_eq!(backend.message(&said).await.unwrap().text, "ding");
        close(backend, store).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn messages_are_not_found_once_retention_drops_them() {
        let dir = temp_dir();
        let mut opts = options(Durability::Always);
        opts.messages.count = 3;
        let store = Store::open(&dir, opts).unwrap();
        let backend = mock(&store, None);
        logged_in(&backend).await;
        let alice = ContactId::from("wxid_alice");
        let ids: Vec<MessageId> =
            (0..10).map(|i| backend.say(&alice, None, format!("m{i}"), vec![]).unwrap()).collect();
        store.settled().await.unwrap();
        close(backend, store).await;
        // Retention runs after commits and at close.
        let store = Store::open(&dir, opts).unwrap();
        let backend = mock(&store, None);
        let e = backend.message(&ids[0]).await.unwrap_err();
        assert!(matches!(e, BackendError::NotFound { kind: "message", .. }), "{e:?}");
        assert_eq!(backend.message(&ids[9]).await.unwrap().text, "m9");
        assert_eq!(backend.list_messages(&ConversationId::from("wxid_alice")).await.unwrap().len(), 3);
        close(backend, store).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// An old state file as servers before the store wrote it: the built-in world, Bob renamed,
    /// logged in.
    fn old_state_file(dir: &std::path::Path) -> PathBuf {
        let kv = memory_store().kv();
        let mut w = World::new(WorldSpec::builtin(), kv);
        w.contacts.get_mut("wxid_bob").unwrap().alias = "Imported".into();
        w.resume_login = true;
        w.next_id = 500;
        let mut snapshot = serde_json::to_value(w.snapshot()).unwrap();
        // Files of old servers have no read marks.
        snapshot.as_object_mut().unwrap().remove("read");
        std::fs::create_dir_all(dir).unwrap();
        let path = dir.join("mock-world.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&snapshot).unwrap()).unwrap();
        path
    }

    #[tokio::test]
    async fn an_old_state_file_is_imported_once_then_renamed() {
        let dir = temp_dir();
        let path = old_state_file(&dir);
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let backend = mock(&store, Some(path.clone()));
        assert_eq!(backend.world().contacts["wxid_bob"].alias, "Imported");
        assert!(backend.world().resume_login);
        assert_eq!(backend.world().next_id, 500);
        let imported = state::imported_path(&path);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !imported.exists() {
            assert!(std::time::Instant::now() < deadline, "renamed within 10 s of the import's commit");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!path.exists());
        logged_in(&backend).await;
        backend.set_contact_alias(&ContactId::from("wxid_bob"), "Changed".into()).await.unwrap();
        close(backend, store).await;

        // The store's world from now on; the renamed file is not read again.
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let backend = mock(&store, Some(path.clone()));
        assert_eq!(backend.world().contacts["wxid_bob"].alias, "Changed");
        assert!(backend.world().resume_login);
        assert!(imported.exists() && !path.exists());
        close(backend, store).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn in_memory_an_old_state_file_is_read_and_left_alone() {
        let dir = temp_dir();
        let path = old_state_file(&dir);
        let store = memory_store();
        let backend = mock(&store, Some(path.clone()));
        assert_eq!(backend.world().contacts["wxid_bob"].alias, "Imported");
        store.flushed().await.unwrap();
        assert!(path.exists() && !state::imported_path(&path).exists());
        close(backend, store).await;
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn an_unreadable_stored_world_is_replaced_by_the_description() {
        let store = memory_store();
        let kv = store.kv();
        kv.put(state::META, state::META_VERSION, &99u32).unwrap();
        kv.put(state::CONTACTS, "wxid_ghost", &"not a contact").unwrap();
        let backend = mock(&store, None);
        assert_eq!(
            backend.world().snapshot().contacts,
            World::new(WorldSpec::builtin(), kv.clone()).snapshot().contacts
        );
        assert_eq!(kv.get::<u32>(state::META, state::META_VERSION).unwrap(), Some(state::VERSION));
        assert!(kv.get::<serde_json::Value>(state::CONTACTS, "wxid_ghost").unwrap().is_none());
        assert!(state::load_kv(&kv).unwrap().is_some());
        close(backend, store).await;
    }
}
