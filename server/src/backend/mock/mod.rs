//! The mock backend: a simulated WeChat account in a simulated world. It behaves like a real account
//! (login flow, messages with ids and payloads, rooms that change and say so, DIRTY after every data
//! change) so that clients, tests and benchmarks exercise real behaviour, not canned answers.
//!
//! Bounds: the message store keeps the newest [`MESSAGE_CAPACITY`] messages and at most
//! [`MESSAGE_BYTES`] of them; older ones answer `NOT_FOUND`. Everything else grows only with what the world or the bot creates.

pub mod control;
pub mod state;
pub mod world;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

use super::{Backend, BackendError, BackendResult, Outgoing, Referrer};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::tasks::Tasks;
use base64::Engine;
use puppet_proto::filebox::BASE64;
use world::{RoomSpec, WorldSpec};

/// How many messages the mock remembers.
pub const MESSAGE_CAPACITY: usize = 100_000;
/// How many bytes of messages (texts, names, inline files) the mock remembers.
pub const MESSAGE_BYTES: usize = 64 << 20;
/// How long after sending a message the bot may still recall it (WeChat's rule).
const RECALL_WINDOW_MS: u64 = 2 * 60 * 1000;

/// Mock settings.
#[derive(Clone, Debug)]
pub struct MockOptions {
    /// The world to simulate.
    pub world: WorldSpec,
    /// Delay between login steps.
    pub login_step: Duration,
    /// Print the login QR code on stdout.
    pub print_qr: bool,
    /// Where the world's state is kept across restarts (none: nothing is kept).
    pub state_file: Option<std::path::PathBuf>,
}

/// What a stored message carries besides its payload.
#[derive(Clone, Debug, PartialEq)]
enum Attachment {
    None,
    Contact(ContactId),
    File(FileBox),
    Url(UrlLink),
    MiniProgram(MiniProgram),
    Location(Location),
}

#[derive(Clone, Debug)]
struct StoredMessage {
    message: Message,
    attachment: Attachment,
}

impl StoredMessage {
    /// Roughly what keeping it costs, in bytes: its texts and an inline file's data.
    fn cost(&self) -> usize {
        let m = &self.message;
        let texts = m.text.len() + m.filename.len() + m.id.as_str().len() + 64 * (1 + m.mention_ids.len());
        let attachment = match &self.attachment {
            Attachment::File(fb) => {
                let data = match &fb.source {
                    FileBoxSource::Base64(b) => b.len(),
                    FileBoxSource::Url { url, .. } => url.len(),
                    FileBoxSource::Uuid(id) | FileBoxSource::QrCode(id) => id.len(),
                };
                data + fb.name.len()
            }
            Attachment::Url(u) => u.url.len() + u.title.len() + u.description.len() + u.thumbnail_url.len(),
            Attachment::MiniProgram(p) => p.title.len() + p.description.len() + p.page_path.len() + p.thumb_url.len(),
            Attachment::Location(l) => l.name.len() + l.address.len(),
            Attachment::Contact(_) | Attachment::None => 0,
        };
        std::mem::size_of::<Self>() + texts + attachment
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Session {
    Offline,
    LoggingIn,
    Online,
}

struct RoomState {
    room: Room,
    aliases: BTreeMap<ContactId, String>,
    inviters: BTreeMap<ContactId, ContactId>,
    announce: String,
}

struct World {
    me: ContactId,
    contacts: BTreeMap<ContactId, Contact>,
    rooms: BTreeMap<RoomId, RoomState>,
    tags: BTreeMap<TagId, BTreeSet<ContactId>>,
    messages: HashMap<MessageId, StoredMessage>,
    message_order: VecDeque<MessageId>,
    /// What the remembered messages cost ([`StoredMessage::cost`]).
    message_bytes: usize,
    friendships: HashMap<FriendshipId, Friendship>,
    invitations: HashMap<RoomInvitationId, RoomInvitation>,
    read: HashMap<ConversationId, bool>,
    session: Session,
    /// Bumped on every login attempt and logout, so a superseded login flow stops.
    login_generation: u64,
    next_id: u64,
    /// Restored from a state file that was written while logged in: `start` logs in without a scan.
    resume_login: bool,
}

struct Inner {
    world: Mutex<World>,
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
    fn new(spec: WorldSpec) -> Self {
        let me = spec.me.id.clone();
        let mut contacts: BTreeMap<ContactId, Contact> = spec.contacts.into_iter().map(|c| (c.id.clone(), c)).collect();
        contacts.insert(me.clone(), spec.me);
        let rooms = spec
            .rooms
            .into_iter()
            .map(|RoomSpec { room, member_aliases, inviters, announce }| {
                (room.id.clone(), RoomState { room, aliases: member_aliases, inviters, announce })
            })
            .collect();
        let tags = spec.tags.into_iter().map(|(t, ids)| (t, ids.into_iter().collect())).collect();
        Self {
            me,
            contacts,
            rooms,
            tags,
            messages: HashMap::new(),
            message_order: VecDeque::new(),
            message_bytes: 0,
            friendships: HashMap::new(),
            invitations: HashMap::new(),
            read: HashMap::new(),
            session: Session::Offline,
            login_generation: 0,
            next_id: 1,
            resume_login: false,
        }
    }

    fn from_snapshot(s: state::Snapshot) -> Self {
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
        let mut w = Self::new(spec);
        w.friendships = s.friendships.into_iter().map(|f| (f.id.clone(), f)).collect();
        w.invitations = s.invitations.into_iter().map(|i| (i.id.clone(), i)).collect();
        w.next_id = s.next_id.max(1);
        w.resume_login = s.logged_in;
        w
    }

    fn snapshot(&self) -> state::Snapshot {
        let mut friendships: Vec<Friendship> = self.friendships.values().cloned().collect();
        friendships.sort_by(|a, b| a.id.cmp(&b.id));
        let mut invitations: Vec<RoomInvitation> = self.invitations.values().cloned().collect();
        invitations.sort_by(|a, b| a.id.cmp(&b.id));
        state::Snapshot {
            version: 0,
            me: self.me.clone(),
            contacts: self.contacts.values().cloned().collect(),
            rooms: self
                .rooms
                .values()
                .map(|r| RoomSpec {
                    room: r.room.clone(),
                    member_aliases: r.aliases.clone(),
                    inviters: r.inviters.clone(),
                    announce: r.announce.clone(),
                })
                .collect(),
            tags: self.tags.iter().map(|(t, ids)| (t.clone(), ids.iter().cloned().collect())).collect(),
            friendships,
            invitations,
            logged_in: self.session == Session::Online,
            next_id: self.next_id,
        }
        .versioned()
    }

    fn fresh_id(&mut self, prefix: &str) -> String {
        let n = self.next_id;
        self.next_id += 1;
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

    fn room(&self, id: &RoomId) -> BackendResult<&RoomState> {
        self.rooms.get(id).ok_or_else(|| BackendError::not_found("room", id))
    }

    /// A room the bot is in (for anything but reading it).
    fn joined_room_mut(&mut self, id: &RoomId) -> BackendResult<&mut RoomState> {
        let me = self.me.clone();
        let room = self.rooms.get_mut(id).ok_or_else(|| BackendError::not_found("room", id))?;
        if !room.room.member_ids.contains(&me) {
            return Err(BackendError::FailedPrecondition(format!("the bot is not a member of room `{id}`")));
        }
        Ok(room)
    }

    fn message(&self, id: &MessageId) -> BackendResult<&StoredMessage> {
        self.messages.get(id).ok_or_else(|| BackendError::not_found("message", id))
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

    fn store(&mut self, message: Message, attachment: Attachment) {
        let stored = StoredMessage { message, attachment };
        self.message_bytes += stored.cost();
        self.message_order.push_back(stored.message.id.clone());
        self.messages.insert(stored.message.id.clone(), stored);
        while self.message_order.len() > 1
            && (self.message_order.len() > MESSAGE_CAPACITY || self.message_bytes > MESSAGE_BYTES)
        {
            let Some(old) = self.message_order.pop_front() else { break };
            if let Some(gone) = self.messages.remove(&old) {
                self.message_bytes -= gone.cost();
            }
        }
    }
}

impl MockBackend {
    /// A mock account in the given world, publishing into `sink`.
    /// Its loops (the state writer, login flows) belong to `tasks`.
    pub fn new(options: MockOptions, sink: EventSink, blobs: BlobStore, tasks: Tasks) -> anyhow::Result<Self> {
        options.world.validate().map_err(|e| anyhow::anyhow!("mock world: {e}"))?;
        let restored = match &options.state_file {
            Some(path) => state::load(path).unwrap_or_else(|why| {
                tracing::error!("{why}; starting from the world description");
                None
            }),
            None => None,
        };
        let world = match restored {
            Some(snapshot) => {
                tracing::info!(logged_in = snapshot.logged_in, "mock world restored from the data dir");
                World::from_snapshot(snapshot)
            }
            None => World::new(options.world.clone()),
        };
        let backend = Self { inner: Arc::new(Inner { world: Mutex::new(world), sink, blobs, options, tasks }) };
        if let Some(path) = backend.inner.options.state_file.clone() {
            let this = backend.clone();
            backend.inner.tasks.spawn("mock-state-writer", |stop| this.keep_state(path, stop));
        }
        Ok(backend)
    }

    fn world(&self) -> MutexGuard<'_, World> {
        // Every mutation below validates before it changes anything, so a poisoned lock still
        // guards a consistent world.
        self.inner.world.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the state file whenever the world changed, checking once a second, until `stop`.
    /// It stops between two writes, never during one: the final save at shutdown comes after it and
    /// is the last writer of the file.
    async fn keep_state(self, path: std::path::PathBuf, stop: tokio_util::sync::CancellationToken) {
        let mut written = Vec::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            self.save_if_changed(&path, &mut written).await;
        }
    }

    /// The world serialized now.
    fn snapshot_bytes(&self) -> BackendResult<Vec<u8>> {
        serde_json::to_vec_pretty(&self.world().snapshot())
            .map_err(|e| BackendError::Internal(format!("serializing the mock world: {e}")))
    }

    async fn save_if_changed(&self, path: &std::path::Path, written: &mut Vec<u8>) {
        let Ok(bytes) = self.snapshot_bytes() else { return };
        if bytes == *written {
            return;
        }
        let (target, data) = (path.to_owned(), bytes.clone());
        match tokio::task::spawn_blocking(move || state::write(&target, &data)).await {
            Ok(Ok(())) => *written = bytes,
            Ok(Err(e)) => tracing::warn!(path = %path.display(), error = %e, "could not save the mock world"),
            Err(e) => tracing::warn!(error = %e, "the mock world writer failed"),
        }
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
    fn attachment<T>(
        &self,
        id: &MessageId,
        what: &str,
        pick: impl FnOnce(&Attachment) -> Option<T>,
    ) -> BackendResult<T> {
        let w = self.world();
        pick(&w.message(id)?.attachment)
            .ok_or_else(|| BackendError::FailedPrecondition(format!("message `{id}` is not {what}")))
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

    async fn shutdown(&self) -> BackendResult<()> {
        if let Some(path) = self.inner.options.state_file.clone() {
            let bytes = self.snapshot_bytes()?;
            let shown = path.display().to_string();
            tokio::task::spawn_blocking(move || state::write(&path, &bytes))
                .await
                .map_err(|e| BackendError::Internal(format!("saving the mock world: {e}")))?
                .map_err(|e| BackendError::Internal(format!("{shown}: {e}")))?;
        }
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        let mut w = self.world();
        w.resume_login = false;
        let was = w.session;
        w.session = Session::Offline;
        w.login_generation += 1;
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
        self.dirty(PayloadType::Contact, me.as_str());
        Ok(())
    }

    async fn set_self_signature(&self, signature: String) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        w.contact_mut(&me)?.signature = signature;
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
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_phones(&self, id: &ContactId, phones: Vec<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.phones = phones;
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_corporation_remark(&self, id: &ContactId, remark: Option<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.corporation = remark.unwrap_or_default();
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn set_contact_description(&self, id: &ContactId, description: Option<String>) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact_mut(id)?.description = description.unwrap_or_default();
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
        w.friendships.insert(id, f);
        Ok(())
    }

    async fn friendship_accept(&self, id: &FriendshipId) -> BackendResult<()> {
        self.confirm_friendship(id, FriendshipType::Receive, "a received request awaiting acceptance")
    }

    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        Ok(self.world().message(id)?.message.clone())
    }

    async fn message_contact(&self, id: &MessageId) -> BackendResult<ContactId> {
        self.attachment(id, "a contact card", |a| match a {
            Attachment::Contact(x) => Some(x.clone()),
            _ => None,
        })
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        self.attachment(id, "a file message (it carries no file)", |a| match a {
            Attachment::File(x) => Some(x.clone()),
            _ => None,
        })
    }

    async fn message_image(&self, id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        let w = self.world();
        let m = w.message(id)?;
        match (&m.attachment, m.message.kind) {
            // The mock keeps one rendition; thumbnail, HD and artwork are the same bytes.
            (Attachment::File(f), MessageType::Image) => Ok(f.clone()),
            _ => Err(BackendError::FailedPrecondition(format!("message `{id}` is not an image"))),
        }
    }

    async fn message_mini_program(&self, id: &MessageId) -> BackendResult<MiniProgram> {
        self.attachment(id, "a mini-program card", |a| match a {
            Attachment::MiniProgram(x) => Some(x.clone()),
            _ => None,
        })
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        self.attachment(id, "a link card", |a| match a {
            Attachment::Url(x) => Some(x.clone()),
            _ => None,
        })
    }

    async fn message_location(&self, id: &MessageId) -> BackendResult<Location> {
        self.attachment(id, "a location", |a| match a {
            Attachment::Location(x) => Some(x.clone()),
            _ => None,
        })
    }

    async fn message_recall(&self, id: &MessageId) -> BackendResult<bool> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let stored = w.messages.get_mut(id).ok_or_else(|| BackendError::not_found("message", id))?;
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
        self.dirty(PayloadType::Message, id.as_str());
        Ok(true)
    }

    async fn message_forward(&self, to: &ConversationId, id: &MessageId) -> BackendResult<Option<MessageId>> {
        let (original, attachment) = {
            let w = self.world();
            let m = w.message(id)?;
            if m.message.kind == MessageType::Recalled {
                return Err(BackendError::FailedPrecondition(format!("message `{id}` was recalled")));
            }
            (m.message.clone(), m.attachment.clone())
        };
        let mut w = self.world();
        w.require_online()?;
        let target = w.resolve(to)?;
        if let Target::Room(r) = &target {
            w.joined_room_mut(r)?;
        }
        let me = w.me.clone();
        let mut m = Self::new_message(&mut w, original.kind, me, &target, original.text);
        m.filename = original.filename;
        let new_id = m.id.clone();
        w.store(m, attachment);
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
        let id = m.id.clone();
        w.store(m, attachment);
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
            r.aliases.remove(c);
        }
        self.emit(PuppetEvent::RoomLeave(RoomLeaveEvent {
            removee_id_list: contacts,
            remover_id: me,
            room_id: room.clone(),
            timestamp: now_ms() / 1000,
        }));
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
        w.rooms.insert(id.clone(), RoomState { room, aliases: BTreeMap::new(), inviters, announce: String::new() });
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
            room_alias: r.aliases.get(member).cloned().unwrap_or_default(),
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
        self.dirty(PayloadType::Room, room_id.as_str());
        Ok(())
    }

    async fn tag_contact_add(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        w.contact(contact)?;
        w.tags.entry(tag.clone()).or_default().insert(contact.clone());
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
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    async fn tag_delete(&self, tag: &TagId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let members = w.tags.remove(tag).ok_or_else(|| BackendError::not_found("tag", tag))?;
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
mod tests {
    use super::*;

    #[test]
    fn files_become_the_right_message_type() {
        assert_eq!(file_message_type("a.PNG"), MessageType::Image);
        assert_eq!(file_message_type("clip.mp4"), MessageType::Video);
        assert_eq!(file_message_type("voice.silk"), MessageType::Audio);
        assert_eq!(file_message_type("report.pdf"), MessageType::Attachment);
    }
}
