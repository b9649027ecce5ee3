//! The WeChat Official Account (公众号) backend: WeChat pushes followers' messages and events to
//! the webhook ([`webhook`]) on the side port, and the bot answers through the REST API ([`api`]) —
//! or, while a follower's push is still waiting for its HTTP response, in that response (the
//! *passive reply*, the only way to answer without the customer-service API).
//!
//! Mapping to the puppet model (spec `official-account.md` §7): the bot is the account itself
//! (`PUPPET_OA_ORIGINAL_ID`, else the AppID), contacts are followers (openids), the alias is the
//! follower's remark, tags are the account's tags (numeric ids as strings). Messages become MESSAGE
//! events; `subscribe` a FRIENDSHIP (confirmed) plus a contact DIRTY; `unsubscribe` a DIRTY. Every
//! push, events included, also goes to the `OfficialAccount.Events` stream. Rooms, friend requests,
//! recall, contact cards and locations do not exist on the platform and answer `UNIMPLEMENTED` with
//! the reason.
//!
//! Bounded state: the last [`MESSAGES_KEPT`] messages and [`MESSAGE_BYTES`] of them (older ids
//! answer NOT_FOUND), follow requests and template results by count and [`SMALL_RECORD_BYTES`], follower
//! payloads until a DIRTY or [`CONTACTS_KEPT`], the retry cache ([`SEEN_KEPT`] pushes for
//! [`SEEN_TTL`]), [`TEMPLATE_RESULTS_KEPT`] template results, at most [`MAX_WAITING`] pushes held
//! open for a passive reply, and a 1024-push broadcast for the Events stream (a subscriber further
//! behind is ended).

pub mod api;
pub mod crypto;
pub mod extension;
pub mod settings;
pub mod webhook;
pub mod xml;

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use base64::Engine;
use puppet_proto::event::{
    DataPayload, DirtyEvent, ErrorEvent, FriendshipEvent, LoginEvent, LogoutEvent, MessageEvent, PuppetEvent,
};
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{
    Contact, ContactGender, ContactType, Friendship, FriendshipScene, FriendshipType, ImageType, Location, Message,
    MessageType, PayloadType, Room, RoomInvitation, RoomMember, UrlLink,
};
use serde_json::{Value, json};
use tokio::sync::{broadcast, oneshot, watch};

use self::api::{Api, ApiError};
use self::settings::OaSettings;
use self::xml::{Inbound, InboundKind, Reply};
use super::{Backend, BackendError, BackendResult, Outgoing, Referrer};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::fetch::OutboundFetcher;
use crate::metrics::{OaMetrics, PushOutcome, ReplyPath};
use crate::tasks::Tasks;
use puppet_proto::filebox::BASE64;

/// Messages kept for `MessagePayload` and media downloads.
pub const MESSAGES_KEPT: usize = 10_000;
/// At most this many bytes of them.
pub const MESSAGE_BYTES: usize = 32 << 20;
/// Follow requests and template results kept, in bytes (each list also by count).
pub const SMALL_RECORD_BYTES: usize = 4 << 20;
/// Follower payloads cached (the cache is emptied when it would grow beyond).
pub const CONTACTS_KEPT: usize = 50_000;
/// Pushes remembered to recognise WeChat's retries.
pub const SEEN_KEPT: usize = 10_000;
/// How long a push is remembered (WeChat retries within ~15 s).
pub const SEEN_TTL: Duration = Duration::from_secs(60);
/// Template delivery results kept.
pub const TEMPLATE_RESULTS_KEPT: usize = 10_000;
/// Pushes buffered per `Events` subscriber.
pub const PUSH_BUFFER: usize = 1024;
/// Pushes held open at once waiting for a passive reply; beyond, a push is answered `success` at
/// once (the bot's answer then goes through the customer-service API).
pub const MAX_WAITING: usize = 4096;

const NO_ROOMS: &str = "Official Accounts have no group chats: followers talk to the account one to one";
const NO_FRIEND_REQUESTS: &str = "people follow an Official Account themselves (a `subscribe` arrives as a confirmed FRIENDSHIP); \
     the account cannot add or accept anyone";
const NO_RECALL: &str = "the Official Account API cannot recall a message once sent";

/// What keeping a value costs, in bytes (roughly: its texts plus a fixed overhead).
trait Cost {
    fn cost(&self) -> usize;
}

/// A map that forgets its oldest entries beyond a count and a byte budget.
struct Bounded<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    cap: usize,
    bytes: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq + Clone, V: Cost> Bounded<K, V> {
    fn new(cap: usize, max_bytes: usize) -> Self {
        Self { map: HashMap::new(), order: VecDeque::new(), cap, bytes: 0, max_bytes }
    }
    fn insert(&mut self, k: K, v: V) {
        let cost = v.cost();
        self.bytes += cost;
        match self.map.insert(k.clone(), (v, cost)) {
            Some((_, old)) => self.bytes -= old,
            None => self.order.push_back(k),
        }
        while self.order.len() > 1 && (self.order.len() > self.cap || self.bytes > self.max_bytes) {
            if let Some(old) = self.order.pop_front()
                && let Some((_, cost)) = self.map.remove(&old)
            {
                self.bytes -= cost;
            }
        }
    }
    fn get(&self, k: &K) -> Option<&V> {
        self.map.get(k).map(|(v, _)| v)
    }
    fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        self.map.get_mut(k).map(|(v, _)| v)
    }
}

impl Cost for Friendship {
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>() + self.hello.len() + self.id.as_str().len() + self.contact_id.as_str().len()
    }
}

impl Cost for TemplateResult {
    fn cost(&self) -> usize {
        std::mem::size_of::<Self>() + self.status.len() + self.to_user.len()
    }
}

impl Cost for Stored {
    fn cost(&self) -> usize {
        let m = &self.message;
        // An inbound push's kind repeats its text (and a link's fields): count it again.
        let inbound = if self.inbound.is_some() { m.text.len() + 256 } else { 0 };
        let url = self.url.as_ref().map_or(0, |u| u.url.len() + u.title.len() + u.description.len());
        std::mem::size_of::<Self>() + m.text.len() + m.filename.len() + m.id.as_str().len() + inbound + url
    }
}

/// A message and what is needed to answer questions about it later.
struct Stored {
    message: Message,
    /// The push it came from (inbound messages).
    inbound: Option<InboundKind>,
    /// Its file in the blob store, once fetched (or the file the bot sent).
    file: Option<FileBox>,
    /// The link card the bot sent.
    url: Option<UrlLink>,
}

/// A push being answered, or answered lately: WeChat's retries get the same answer.
struct Seen {
    at: Instant,
    answer: watch::Receiver<Option<String>>,
}

/// What [`OfficialAccount::begin_push`] found.
pub enum PushTurn {
    /// A new push: handle it, then publish the answer.
    New(watch::Sender<Option<String>>),
    /// A retry of a push still being handled or answered lately.
    Retry(watch::Receiver<Option<String>>),
}

/// A delivered template message's result.
#[derive(Clone)]
struct TemplateResult {
    status: String,
    to_user: String,
}

struct State {
    logged_in: bool,
    messages: Bounded<MessageId, Stored>,
    friendships: Bounded<FriendshipId, Friendship>,
    contacts: HashMap<ContactId, Contact>,
    followers: Option<Vec<ContactId>>,
    /// Pushes waiting for a passive reply (follower openid, answer slot), oldest first; at most
    /// [`MAX_WAITING`].
    waiting: Vec<(String, oneshot::Sender<Reply>)>,
    seen: HashMap<String, Seen>,
    templates: Bounded<u64, TemplateResult>,
}

impl State {
    /// Drops what is cached about a follower, and the follower list (they came or went).
    fn forget_follower(&mut self, openid: &str) {
        self.contacts.remove(openid);
        self.followers = None;
    }
}

/// One push as the `Events` stream carries it.
#[derive(Clone, Debug)]
pub struct PushRecord {
    /// The parsed push.
    pub inbound: Inbound,
    /// The message id it became (messages only).
    pub message_id: Option<MessageId>,
}

struct Inner {
    settings: OaSettings,
    api: Api,
    sink: EventSink,
    blobs: BlobStore,
    me: ContactId,
    state: Mutex<State>,
    pushes: broadcast::Sender<Arc<PushRecord>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The refresher belongs to the server's background tasks.
    tasks: Tasks,
    next_id: AtomicU64,
    metrics: OaMetrics,
}

/// The backend. Cheap to clone.
#[derive(Clone)]
pub struct OfficialAccount {
    inner: Arc<Inner>,
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

/// What goes to a follower: anything WeChat can also give as a passive reply, or a mini-program
/// card (customer-service API only).
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Outbound {
    /// A reply, passive when a push waits.
    Reply(Reply),
    /// A mini-program card.
    MiniProgram { title: String, appid: String, pagepath: String, thumb_media_id: String },
}

/// The customer-service API body for `out`, when the API can send it.
fn custom_body(openid: &str, out: &Outbound) -> BackendResult<Value> {
    let reply = match out {
        Outbound::MiniProgram { title, appid, pagepath, thumb_media_id } => {
            let body =
                json!({ "title": title, "appid": appid, "pagepath": pagepath, "thumb_media_id": thumb_media_id });
            return Ok(json!({ "touser": openid, "msgtype": "miniprogrampage", "miniprogrampage": body }));
        }
        Outbound::Reply(reply) => reply,
    };
    let (kind, body) = match reply {
        Reply::Text(t) => ("text", json!({ "content": t })),
        Reply::Image { media_id } => ("image", json!({ "media_id": media_id })),
        Reply::Voice { media_id } => ("voice", json!({ "media_id": media_id })),
        Reply::Video { media_id, title, description } => (
            "video",
            json!({ "media_id": media_id, "thumb_media_id": media_id, "title": title.clone().unwrap_or_default(),
                    "description": description.clone().unwrap_or_default() }),
        ),
        Reply::Music { title, description, url, hq_url, thumb_media_id } => (
            "music",
            json!({ "title": title, "description": description, "musicurl": url,
                    "hqmusicurl": hq_url.as_deref().unwrap_or(url), "thumb_media_id": thumb_media_id.clone().unwrap_or_default() }),
        ),
        Reply::News(articles) => {
            if articles.len() != 1 {
                return Err(BackendError::InvalidArgument(format!(
                    "the customer-service API sends exactly one article, not {} (no push from `{openid}` is waiting \
                     for a passive reply)",
                    articles.len()
                )));
            }
            let [title, description, picurl, url] = &articles[0];
            (
                "news",
                json!({ "articles": [{ "title": title, "description": description, "url": url, "picurl": picurl }] }),
            )
        }
        Reply::TransferCustomerService { .. } => {
            return Err(BackendError::FailedPrecondition(format!(
                "no push from `{openid}` is waiting for its answer: handing over to customer service is a passive \
                 reply only, given while the follower's message is being answered"
            )));
        }
    };
    Ok(json!({ "touser": openid, "msgtype": kind, kind: body }))
}

/// What kind of media a file is, for WeChat: (`type` for media/upload, byte limit, message type).
fn media_kind(name: &str, bytes: &[u8]) -> BackendResult<(&'static str, usize, MessageType)> {
    const IMAGE: (&str, usize, MessageType) = ("image", 10 << 20, MessageType::Image);
    const VOICE: (&str, usize, MessageType) = ("voice", 2 << 20, MessageType::Audio);
    const VIDEO: (&str, usize, MessageType) = ("video", 10 << 20, MessageType::Video);
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    let kind = match ext.as_str() {
        "jpg" | "jpeg" | "png" | "gif" | "bmp" => IMAGE,
        "amr" | "mp3" => VOICE,
        "mp4" => VIDEO,
        _ if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) || bytes.starts_with(b"\x89PNG") || bytes.starts_with(b"GIF8") => {
            IMAGE
        }
        _ if bytes.starts_with(b"#!AMR") || bytes.starts_with(b"ID3") => VOICE,
        _ if bytes.get(4..8) == Some(b"ftyp") => VIDEO,
        _ => {
            return Err(BackendError::InvalidArgument(format!(
                "`{name}` cannot be sent by an Official Account: it sends images (jpg, png, gif, bmp; ≤ 10 MB), \
                 voice (amr, mp3; ≤ 2 MB) and video (mp4; ≤ 10 MB)"
            )));
        }
    };
    if bytes.len() > kind.1 {
        return Err(BackendError::InvalidArgument(format!(
            "`{name}` is {} bytes; WeChat takes {} files up to {} MB",
            bytes.len(),
            kind.0,
            kind.1 >> 20
        )));
    }
    Ok(kind)
}

impl OfficialAccount {
    /// Builds the backend; nothing is fetched until `start`. URLs from clients and pushes are fetched
    /// through `outbound`.
    pub fn new(
        settings: OaSettings,
        outbound: OutboundFetcher,
        sink: EventSink,
        blobs: BlobStore,
        metrics: OaMetrics,
        tasks: Tasks,
    ) -> anyhow::Result<Self> {
        let api = Api::new(
            &settings.api_base,
            &settings.app_id,
            &settings.app_secret,
            metrics.token_fetches.clone(),
            outbound,
        )?;
        let me = ContactId(settings.original_id.clone().unwrap_or_else(|| settings.app_id.clone()));
        let state = State {
            logged_in: false,
            messages: Bounded::new(MESSAGES_KEPT, MESSAGE_BYTES),
            friendships: Bounded::new(MESSAGES_KEPT, SMALL_RECORD_BYTES),
            contacts: HashMap::new(),
            followers: None,
            waiting: Vec::new(),
            seen: HashMap::new(),
            templates: Bounded::new(TEMPLATE_RESULTS_KEPT, SMALL_RECORD_BYTES),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                api,
                sink,
                blobs,
                me,
                state: Mutex::new(state),
                pushes: broadcast::channel(PUSH_BUFFER).0,
                refresher: Mutex::new(None),
                tasks,
                next_id: AtomicU64::new(1),
                metrics,
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not take the webhook down with it.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The settings it runs with.
    pub fn settings(&self) -> &OaSettings {
        &self.inner.settings
    }

    /// The REST client (for the extension service).
    pub fn api(&self) -> &Api {
        &self.inner.api
    }

    /// Follows every push from now on.
    pub fn subscribe_pushes(&self) -> broadcast::Receiver<Arc<PushRecord>> {
        self.inner.pushes.subscribe()
    }

    /// A template message's delivery result, once reported: (status, openid).
    pub fn template_result(&self, msg_id: u64) -> Option<(String, String)> {
        self.state().templates.get(&msg_id).map(|r| (r.status.clone(), r.to_user.clone()))
    }

    fn emit(&self, event: PuppetEvent) {
        self.inner.sink.emit(event);
    }

    fn dirty(&self, kind: PayloadType, id: &str) {
        self.emit(PuppetEvent::Dirty(DirtyEvent { payload_type: kind.wire(), payload_id: id.to_owned() }));
    }

    /// Counts a push's outcome.
    pub fn count_push(&self, outcome: PushOutcome) {
        self.inner.metrics.push(outcome);
    }

    /// Reports a webhook problem to clients (they cannot see HTTP answers WeChat got).
    pub fn report(&self, code: tonic::Code, message: String) {
        tracing::warn!(%message, "official account webhook refused a push");
        self.emit(PuppetEvent::Error(ErrorEvent::new(code as i32, message)));
    }

    fn fresh_id(&self, prefix: &str) -> String {
        format!("{prefix}{}_{}", now_secs(), self.inner.next_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Checks WeChat's retry cache for `key`, registering the push when it is new.
    pub fn begin_push(&self, key: String) -> PushTurn {
        let mut s = self.state();
        let now = Instant::now();
        if let Some(seen) = s.seen.get(&key)
            && now.duration_since(seen.at) < SEEN_TTL
        {
            return PushTurn::Retry(seen.answer.clone());
        }
        if s.seen.len() >= SEEN_KEPT {
            s.seen.retain(|_, v| now.duration_since(v.at) < SEEN_TTL);
            if s.seen.len() >= SEEN_KEPT
                && let Some(oldest) = s.seen.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| k.clone())
            {
                s.seen.remove(&oldest);
            }
        }
        let (tx, rx) = watch::channel(None);
        s.seen.insert(key, Seen { at: now, answer: rx });
        PushTurn::New(tx)
    }

    /// Handles a new push: events to clients, then (for pushes a bot may answer) waits up to the
    /// reply window for a passive reply.
    pub async fn handle_push(&self, inbound: Inbound) -> Option<Reply> {
        tracing::debug!(kind = %inbound.type_key(), msg_id = inbound.msg_id, "push from a follower");
        let openid = inbound.from.clone();
        let timestamp_ms = inbound.create_time.saturating_mul(1000);
        let mut message_id = None;
        let mut answerable = true;
        let mut waiter = None;
        match &inbound.kind {
            InboundKind::Event { event, key, .. } => match event.as_str() {
                "subscribe" => {
                    let id = FriendshipId(format!("fs_{openid}_{}", inbound.create_time));
                    let scene = match key {
                        Some(k) if k.starts_with("qrscene_") => FriendshipScene::QrCode,
                        _ => FriendshipScene::Unknown,
                    };
                    let friendship = Friendship {
                        id: id.clone(),
                        contact_id: ContactId(openid.clone()),
                        hello: key.clone().unwrap_or_default(),
                        kind: FriendshipType::Confirm,
                        scene,
                        timestamp_ms,
                        ..Default::default()
                    };
                    {
                        let mut s = self.state();
                        s.friendships.insert(id.clone(), friendship);
                        s.forget_follower(&openid);
                    }
                    waiter = self.wait_for_reply(&openid);
                    self.emit(PuppetEvent::Friendship(FriendshipEvent { friendship_id: id }));
                    self.dirty(PayloadType::Contact, &openid);
                }
                "unsubscribe" => {
                    self.state().forget_follower(&openid);
                    self.dirty(PayloadType::Contact, &openid);
                    answerable = false;
                }
                "TEMPLATESENDJOBFINISH" => {
                    let status = inbound.fields.get("Status").cloned().unwrap_or_default();
                    self.state().templates.insert(inbound.msg_id, TemplateResult { status, to_user: openid.clone() });
                    answerable = false;
                }
                // Reports and job results: nobody is waiting for an answer on the phone.
                "LOCATION" | "MASSSENDJOBFINISH" | "VIEW" | "view_miniprogram" | "kf_create_session"
                | "kf_close_session" | "kf_switch_session" => answerable = false,
                _ => {}
            },
            kind => {
                let (kind, text, filename) = match kind {
                    InboundKind::Text { content } => (MessageType::Text, content.clone(), String::new()),
                    InboundKind::Image { .. } => (MessageType::Image, String::new(), format!("{}.jpg", inbound.msg_id)),
                    InboundKind::Voice { format, recognition, .. } => (
                        MessageType::Audio,
                        recognition.clone().unwrap_or_default(),
                        format!("{}.{}", inbound.msg_id, format.as_deref().unwrap_or("amr").to_ascii_lowercase()),
                    ),
                    InboundKind::Video { .. } => (MessageType::Video, String::new(), format!("{}.mp4", inbound.msg_id)),
                    InboundKind::Location { label, .. } => {
                        (MessageType::Location, label.clone().unwrap_or_default(), String::new())
                    }
                    InboundKind::Link { title, .. } => {
                        (MessageType::Url, title.clone().unwrap_or_default(), String::new())
                    }
                    _ => (MessageType::Unknown, inbound.raw.clone(), String::new()),
                };
                let id = if inbound.msg_id != 0 {
                    MessageId(inbound.msg_id.to_string())
                } else {
                    MessageId(self.fresh_id("oa_in_"))
                };
                let message = Message {
                    id: id.clone(),
                    kind,
                    talker_id: ContactId(openid.clone()),
                    listener_id: self.inner.me.clone(),
                    text,
                    filename,
                    timestamp_ms,
                    ..Default::default()
                };
                self.state()
                    .messages
                    .insert(id.clone(), Stored { message, inbound: Some(inbound.kind.clone()), file: None, url: None });
                // Registered before the event goes out, so the quickest answer still finds it.
                waiter = self.wait_for_reply(&openid);
                self.emit(PuppetEvent::Message(MessageEvent { message_id: id.clone() }));
                message_id = Some(id);
            }
        }
        if answerable && waiter.is_none() {
            waiter = self.wait_for_reply(&openid);
        }
        let record = PushRecord { inbound, message_id };
        // No subscriber is fine: the push went to the wechaty events already.
        _ = self.inner.pushes.send(Arc::new(record));
        let rx = waiter?;
        let reply = tokio::time::timeout(self.inner.settings.reply_window, rx).await.ok().and_then(Result::ok);
        if reply.is_none() {
            self.state().waiting.retain(|(_, tx)| !tx.is_closed());
        }
        reply
    }

    fn wait_for_reply(&self, openid: &str) -> Option<oneshot::Receiver<Reply>> {
        let mut s = self.state();
        if s.waiting.len() >= MAX_WAITING {
            s.waiting.retain(|(_, tx)| !tx.is_closed());
            if s.waiting.len() >= MAX_WAITING {
                tracing::warn!(limit = MAX_WAITING, "too many pushes waiting for a passive reply; answering at once");
                return None;
            }
        }
        let (tx, rx) = oneshot::channel();
        s.waiting.push((openid.to_owned(), tx));
        Some(rx)
    }

    /// Hands `reply` to the oldest push from `openid` still waiting for its answer; false when none is.
    fn offer_passive(&self, openid: &str, mut reply: Reply) -> bool {
        let mut s = self.state();
        while let Some(i) = s.waiting.iter().position(|(o, _)| o == openid) {
            match s.waiting.remove(i).1.send(reply) {
                Ok(()) => return true,
                // That push timed out already; try the next.
                Err(back) => reply = back,
            }
        }
        false
    }

    /// Sends `out` to a follower: as the passive reply when a push of theirs waits, else through the
    /// customer-service API. True when it went passively.
    pub(crate) async fn deliver(&self, openid: &str, out: Outbound) -> BackendResult<bool> {
        // Rendered first: `offer_passive` takes the reply.
        let body = custom_body(openid, &out);
        let passive = match out {
            Outbound::Reply(reply) => self.offer_passive(openid, reply),
            Outbound::MiniProgram { .. } => false,
        };
        if !passive {
            self.inner
                .api
                .post("/cgi-bin/message/custom/send", &body?)
                .await
                .map_err(|e| e.into_backend("message/custom/send"))?;
        }
        self.inner.metrics.reply(if passive { ReplyPath::passive } else { ReplyPath::api });
        Ok(passive)
    }

    pub(crate) fn follower(&self, to: &str, what: &str) -> BackendResult<String> {
        if to.ends_with("@chatroom") {
            return Err(BackendError::PlatformLimit { op: "room messages", reason: NO_ROOMS });
        }
        if to.is_empty() {
            return Err(BackendError::InvalidArgument(format!("{what}: the follower's openid is empty")));
        }
        if to == self.inner.me.as_str() {
            return Err(BackendError::InvalidArgument(format!("{what}: the account cannot message itself")));
        }
        Ok(to.to_owned())
    }

    /// The bytes of a FileBox a client sent.
    async fn file_bytes(&self, fb: &FileBox) -> BackendResult<Vec<u8>> {
        match &fb.source {
            FileBoxSource::Base64(b) => BASE64
                .decode(b.trim())
                .map_err(|_| BackendError::InvalidArgument(format!("FileBox `{}`: `base64` is not base64", fb.name))),
            FileBoxSource::Uuid(id) => self.inner.blobs.read_all(id).await.map_err(BackendError::from),
            FileBoxSource::Url { url, .. } => Ok(self.inner.api.fetch_public(url).await?.bytes),
            FileBoxSource::QrCode(_) => Err(BackendError::InvalidArgument(
                "a QR-code FileBox has no bytes to send: render it to an image first".into(),
            )),
        }
    }

    /// Uploads a client's file as temporary media.
    async fn upload(&self, fb: &FileBox) -> BackendResult<(Reply, MessageType)> {
        let bytes = self.file_bytes(fb).await?;
        if bytes.is_empty() {
            return Err(BackendError::InvalidArgument(format!("`{}` is empty", fb.name)));
        }
        let (kind, _, message_type) = media_kind(&fb.name, &bytes)?;
        let name = if fb.name.is_empty() {
            format!("file.{}", if kind == "voice" { "amr" } else { "bin" })
        } else {
            fb.name.clone()
        };
        let media_id =
            self.inner.api.upload_media(kind, &name, bytes).await.map_err(|e| e.into_backend("media/upload"))?;
        let out = match kind {
            "image" => Reply::Image { media_id },
            "voice" => Reply::Voice { media_id },
            _ => Reply::Video { media_id, title: Some(name), description: None },
        };
        Ok((out, message_type))
    }

    /// A follower's payload from `user/info` (name: nickname where WeChat still sends it, else the
    /// remark, else the openid).
    fn contact_from(&self, openid: &str, v: &Value) -> Contact {
        let text = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned();
        let remark = text("remark");
        let name = [text("nickname"), remark.clone()].into_iter().find(|n| !n.is_empty()).unwrap_or(openid.into());
        Contact {
            id: ContactId(openid.to_owned()),
            kind: ContactType::Individual,
            name,
            alias: remark,
            avatar: text("headimgurl"),
            city: text("city"),
            province: text("province"),
            gender: match v.get("sex").and_then(Value::as_i64) {
                Some(1) => ContactGender::Male,
                Some(2) => ContactGender::Female,
                _ => ContactGender::Unknown,
            },
            friend: v.get("subscribe").and_then(Value::as_i64) == Some(1),
            handle: text("unionid"),
            ..Default::default()
        }
    }

    fn self_contact(&self) -> Contact {
        let s = &self.inner.settings;
        Contact {
            id: self.inner.me.clone(),
            kind: ContactType::Official,
            name: s.original_id.clone().unwrap_or_else(|| format!("Official Account {}", s.app_id)),
            handle: s.original_id.clone().unwrap_or_default(),
            ..Default::default()
        }
    }

    async fn tags(&self) -> BackendResult<Vec<(i64, String, u64)>> {
        let v = self.inner.api.get("/cgi-bin/tags/get", &[]).await.map_err(|e| e.into_backend("tags/get"))?;
        Ok(v.get("tags")
            .and_then(Value::as_array)
            .map(|tags| {
                tags.iter()
                    .filter_map(|t| {
                        Some((
                            t.get("id")?.as_i64()?,
                            t.get("name")?.as_str()?.to_owned(),
                            t.get("count").and_then(Value::as_u64).unwrap_or(0),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// A tag's numeric id: the id itself, or a tag's name (created when missing when `create`).
    async fn tag_id(&self, tag: &TagId, create: bool) -> BackendResult<i64> {
        if let Ok(id) = tag.as_str().parse::<i64>() {
            return Ok(id);
        }
        if tag.is_empty() {
            return Err(BackendError::InvalidArgument("the tag id is empty".into()));
        }
        if let Some((id, _, _)) = self.tags().await?.into_iter().find(|(_, name, _)| name == tag.as_str()) {
            return Ok(id);
        }
        if !create {
            return Err(BackendError::not_found("tag", tag));
        }
        let v = self
            .inner
            .api
            .post("/cgi-bin/tags/create", &json!({ "tag": { "name": tag.as_str() } }))
            .await
            .map_err(|e| e.into_backend("tags/create"))?;
        v.pointer("/tag/id")
            .and_then(Value::as_i64)
            .ok_or_else(|| BackendError::Internal("tags/create answered without `tag.id`".into()))
    }

    fn stored<T>(&self, id: &MessageId, pick: impl FnOnce(&Stored) -> T) -> BackendResult<T> {
        self.state().messages.get(id).map(pick).ok_or_else(|| BackendError::not_found("message", id))
    }

    /// The file of an inbound media message, fetched from WeChat into the blob store once.
    async fn media_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        let (cached, inbound, filename) =
            self.stored(id, |s| (s.file.clone(), s.inbound.clone(), s.message.filename.clone()))?;
        if let Some(fb) = cached {
            match &fb.source {
                FileBoxSource::Uuid(blob) if self.inner.blobs.touch(blob).is_err() => {}
                _ => return Ok(fb),
            }
        }
        let (media_id, pic_url) = match inbound {
            Some(InboundKind::Image { media_id, pic_url }) => (media_id, pic_url),
            Some(InboundKind::Voice { media_id, .. }) | Some(InboundKind::Video { media_id, .. }) => (media_id, None),
            _ => return Err(BackendError::FailedPrecondition(format!("message `{id}` carries no file"))),
        };
        let media = match (media_id, pic_url) {
            (Some(m), _) => self.inner.api.download_media(&m).await.map_err(|e| e.into_backend("media/get"))?,
            (None, Some(url)) => self.inner.api.fetch_public(&url).await?,
            (None, None) => return Err(BackendError::FailedPrecondition(format!("message `{id}` has no MediaId"))),
        };
        let meta = self.inner.blobs.put(&media.bytes).await.map_err(BackendError::from)?;
        let mut fb = FileBox::new(media.filename.unwrap_or(filename), FileBoxSource::Uuid(meta.id));
        fb.size = Some(meta.size);
        if let Some(s) = self.state().messages.get_mut(id) {
            s.file = Some(fb.clone());
        }
        Ok(fb)
    }

    async fn login(&self) -> BackendResult<()> {
        self.inner.api.access_token().await.map_err(|e| {
            let err = e.into_backend("the access_token request (cgi-bin/token)");
            self.emit(PuppetEvent::Error(ErrorEvent::new(tonic::Code::FailedPrecondition as i32, err.to_string())));
            err
        })?;
        {
            let mut s = self.state();
            if s.logged_in {
                return Ok(());
            }
            s.logged_in = true;
        }
        let mut refresher = self.inner.refresher.lock().unwrap_or_else(|p| p.into_inner());
        if refresher.as_ref().is_none_or(|h| h.is_finished()) {
            let (this, stop) = (self.clone(), self.inner.tasks.stop_signal());
            // Owned by the background group (stopped at shutdown), and aborted on logout.
            *refresher = Some(self.inner.tasks.tracker().spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = this.inner.api.refresh_loop(Duration::from_secs(60)) => {}
                }
            }));
        }
        tracing::info!(account = %self.inner.me, "official account online");
        self.emit(PuppetEvent::Login(LoginEvent { contact_id: self.inner.me.clone() }));
        self.emit(PuppetEvent::Ready(DataPayload { data: "followers are loaded on demand".into() }));
        Ok(())
    }
}

#[async_trait]
impl Backend for OfficialAccount {
    fn name(&self) -> &'static str {
        "official-account"
    }

    async fn start(&self) -> BackendResult<()> {
        self.login().await
    }

    async fn stop(&self) -> BackendResult<()> {
        Ok(())
    }

    async fn shutdown(&self) -> BackendResult<()> {
        if let Some(h) = self.inner.refresher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        let was = std::mem::replace(&mut self.state().logged_in, false);
        if let Some(h) = self.inner.refresher.lock().unwrap_or_else(|p| p.into_inner()).take() {
            h.abort();
        }
        if was {
            self.emit(PuppetEvent::Logout(LogoutEvent {
                contact_id: self.inner.me.clone(),
                data: "logged out by a client; Start goes online again".into(),
            }));
        }
        Ok(())
    }

    async fn ding(&self, data: String) -> BackendResult<()> {
        self.emit(PuppetEvent::Dong(DataPayload { data }));
        Ok(())
    }

    async fn dirty_payload(&self, kind: PayloadType, id: String) -> BackendResult<()> {
        if kind == PayloadType::Contact {
            self.state().forget_follower(&id);
        }
        self.dirty(kind, &id);
        Ok(())
    }

    async fn self_qrcode(&self) -> BackendResult<String> {
        let v = self
            .inner
            .api
            .post(
                "/cgi-bin/qrcode/create",
                &json!({"action_name": "QR_LIMIT_STR_SCENE", "action_info": {"scene": {"scene_str": "puppet-rs"}}}),
            )
            .await
            .map_err(|e| e.into_backend("qrcode/create"))?;
        v.get("url")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| BackendError::Internal("qrcode/create answered without `url`".into()))
    }

    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        if let Some(list) = self.state().followers.clone() {
            return Ok(list);
        }
        let mut all = vec![self.inner.me.clone()];
        let mut next = String::new();
        loop {
            let v = self
                .inner
                .api
                .get("/cgi-bin/user/get", &[("next_openid", &next)])
                .await
                .map_err(|e| e.into_backend("user/get"))?;
            let page: Vec<ContactId> = v
                .pointer("/data/openid")
                .and_then(Value::as_array)
                .map(|ids| ids.iter().filter_map(Value::as_str).map(ContactId::from).collect())
                .unwrap_or_default();
            let got = page.len();
            all.extend(page);
            next = v.get("next_openid").and_then(Value::as_str).unwrap_or_default().to_owned();
            if got == 0 || next.is_empty() {
                break;
            }
        }
        self.state().followers = Some(all.clone());
        Ok(all)
    }

    async fn contact(&self, id: &ContactId) -> BackendResult<Contact> {
        if *id == self.inner.me {
            return Ok(self.self_contact());
        }
        if let Some(c) = self.state().contacts.get(id) {
            return Ok(c.clone());
        }
        if id.is_empty() || id.as_str().ends_with("@chatroom") {
            return Err(BackendError::not_found("contact", id));
        }
        let v = self.inner.api.get("/cgi-bin/user/info", &[("openid", id.as_str()), ("lang", "zh_CN")]).await.map_err(
            |e| match e {
                ApiError::WeChat { errcode: 40003 | 46004 | 49003, .. } => BackendError::not_found("contact", id),
                e => e.into_backend("user/info"),
            },
        )?;
        let contact = self.contact_from(id.as_str(), &v);
        let mut s = self.state();
        if s.contacts.len() >= CONTACTS_KEPT {
            s.contacts.clear();
        }
        s.contacts.insert(id.clone(), contact.clone());
        Ok(contact)
    }

    async fn set_contact_alias(&self, id: &ContactId, alias: String) -> BackendResult<()> {
        let openid = self.follower(id.as_str(), "alias")?;
        if alias.chars().count() > 30 {
            return Err(BackendError::InvalidArgument("WeChat takes remarks of at most 30 characters".into()));
        }
        self.inner
            .api
            .post("/cgi-bin/user/info/updateremark", &json!({ "openid": openid, "remark": alias }))
            .await
            .map_err(|e| e.into_backend("user/info/updateremark"))?;
        self.state().contacts.remove(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    async fn contact_avatar(&self, id: &ContactId) -> BackendResult<FileBox> {
        let c = self.contact(id).await?;
        if c.avatar.is_empty() {
            return Err(BackendError::FailedPrecondition(format!(
                "WeChat no longer tells Official Accounts the avatar of `{id}` (removed in December 2021)"
            )));
        }
        Ok(FileBox::new(format!("{id}.jpg"), FileBoxSource::Url { url: c.avatar, headers: None }))
    }

    async fn friendship(&self, id: &FriendshipId) -> BackendResult<Friendship> {
        self.state().friendships.get(id).cloned().ok_or_else(|| BackendError::not_found("friendship", id))
    }

    async fn friendship_search_phone(&self, _phone: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::PlatformLimit { op: "friendship_search_phone", reason: NO_FRIEND_REQUESTS })
    }

    async fn friendship_search_handle(&self, _handle: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::PlatformLimit { op: "friendship_search_handle", reason: NO_FRIEND_REQUESTS })
    }

    async fn friendship_add(&self, _contact: &ContactId, _hello: String, _referrer: Referrer) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "friendship_add", reason: NO_FRIEND_REQUESTS })
    }

    async fn friendship_accept(&self, _id: &FriendshipId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "friendship_accept", reason: NO_FRIEND_REQUESTS })
    }

    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        self.stored(id, |s| s.message.clone())
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        if let Some(fb) = self.stored(id, |s| (s.inbound.is_none()).then(|| s.file.clone()).flatten())? {
            return Ok(fb);
        }
        self.media_file(id).await
    }

    async fn message_image(&self, id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        let kind = self.stored(id, |s| s.message.kind)?;
        if kind != MessageType::Image {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not an image")));
        }
        // WeChat keeps one rendition: thumbnail, HD and artwork are the same bytes.
        self.message_file(id).await
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        let (inbound, url) = self.stored(id, |s| (s.inbound.clone(), s.url.clone()))?;
        match (inbound, url) {
            (_, Some(u)) => Ok(u),
            (Some(InboundKind::Link { title, description, url }), _) => Ok(UrlLink {
                title: title.unwrap_or_default(),
                description: description.unwrap_or_default(),
                url: url.unwrap_or_default(),
                thumbnail_url: String::new(),
            }),
            _ => Err(BackendError::FailedPrecondition(format!("message `{id}` is not a link"))),
        }
    }

    async fn message_location(&self, id: &MessageId) -> BackendResult<Location> {
        match self.stored(id, |s| s.inbound.clone())? {
            Some(InboundKind::Location { latitude, longitude, scale, label }) => Ok(Location {
                latitude,
                longitude,
                accuracy: scale as f32,
                address: label.clone().unwrap_or_default(),
                name: label.unwrap_or_default(),
            }),
            _ => Err(BackendError::FailedPrecondition(format!("message `{id}` is not a location"))),
        }
    }

    async fn message_recall(&self, _id: &MessageId) -> BackendResult<bool> {
        Err(BackendError::PlatformLimit { op: "message_recall", reason: NO_RECALL })
    }

    async fn send(&self, to: &ConversationId, content: Outgoing) -> BackendResult<Option<MessageId>> {
        let openid = self.follower(to.as_str(), "send")?;
        let mut sent_file = None;
        let mut sent_url = None;
        let (out, kind, text, filename) = match content {
            Outgoing::Text { text, mentions } => {
                if !mentions.is_empty() {
                    return Err(BackendError::PlatformLimit { op: "mentions", reason: NO_ROOMS });
                }
                if text.trim().is_empty() {
                    return Err(BackendError::InvalidArgument("`text` is empty".into()));
                }
                (Outbound::Reply(Reply::Text(text.clone())), MessageType::Text, text, String::new())
            }
            Outgoing::File(fb) => {
                let (reply, kind) = self.upload(&fb).await?;
                let name = fb.name.clone();
                sent_file = Some(fb);
                (Outbound::Reply(reply), kind, String::new(), name)
            }
            Outgoing::Url(u) => {
                if u.url.is_empty() {
                    return Err(BackendError::InvalidArgument("a link card needs a `url`".into()));
                }
                let out = Outbound::Reply(Reply::News(vec![[
                    u.title.clone(),
                    u.description.clone(),
                    u.thumbnail_url.clone(),
                    u.url.clone(),
                ]]));
                let title = u.title.clone();
                sent_url = Some(u);
                (out, MessageType::Url, title, String::new())
            }
            Outgoing::MiniProgram(m) => {
                if m.thumb_key.is_empty() {
                    return Err(BackendError::InvalidArgument(
                        "an Official Account mini-program card needs `thumb_key`: the media_id of an uploaded \
                         thumbnail image"
                            .into(),
                    ));
                }
                let out = Outbound::MiniProgram {
                    title: m.title.clone(),
                    appid: m.appid.clone(),
                    pagepath: m.page_path.clone(),
                    thumb_media_id: m.thumb_key.clone(),
                };
                (out, MessageType::MiniProgram, m.title, String::new())
            }
            Outgoing::Contact(_) => {
                return Err(BackendError::PlatformLimit {
                    op: "contact cards",
                    reason: "the Official Account API has no contact-card message",
                });
            }
            Outgoing::Location(_) => {
                return Err(BackendError::PlatformLimit {
                    op: "locations",
                    reason: "the Official Account API has no location message",
                });
            }
        };
        let passive = self.deliver(&openid, out).await?;
        tracing::debug!(passive, "message sent to a follower");
        let id = MessageId(self.fresh_id("oa_out_"));
        let message = Message {
            id: id.clone(),
            kind,
            talker_id: self.inner.me.clone(),
            listener_id: ContactId(openid),
            text,
            filename,
            timestamp_ms: now_secs() * 1000,
            ..Default::default()
        };
        self.state().messages.insert(id.clone(), Stored { message, inbound: None, file: sent_file, url: sent_url });
        // A real account sees its own messages too.
        self.emit(PuppetEvent::Message(MessageEvent { message_id: id.clone() }));
        Ok(Some(id))
    }

    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        // Wechaty clients list rooms at login; an empty list is the truthful answer.
        Ok(vec![])
    }

    async fn room(&self, _id: &RoomId) -> BackendResult<Room> {
        Err(BackendError::PlatformLimit { op: "room", reason: NO_ROOMS })
    }

    async fn room_add(&self, _room: &RoomId, _contacts: Vec<ContactId>, _invite_only: bool) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "room_add", reason: NO_ROOMS })
    }

    async fn room_create(&self, _contacts: Vec<ContactId>, _topic: String) -> BackendResult<RoomId> {
        Err(BackendError::PlatformLimit { op: "room_create", reason: NO_ROOMS })
    }

    async fn room_members(&self, _room: &RoomId) -> BackendResult<Vec<ContactId>> {
        Err(BackendError::PlatformLimit { op: "room_members", reason: NO_ROOMS })
    }

    async fn room_member(&self, _room: &RoomId, _member: &ContactId) -> BackendResult<RoomMember> {
        Err(BackendError::PlatformLimit { op: "room_member", reason: NO_ROOMS })
    }

    async fn room_invitation(&self, _id: &RoomInvitationId) -> BackendResult<RoomInvitation> {
        Err(BackendError::PlatformLimit { op: "room_invitation", reason: NO_ROOMS })
    }

    async fn tag_contact_add(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let openid = self.follower(contact.as_str(), "tag")?;
        let tagid = self.tag_id(tag, true).await?;
        self.inner
            .api
            .post("/cgi-bin/tags/members/batchtagging", &json!({ "openid_list": [openid], "tagid": tagid }))
            .await
            .map_err(|e| e.into_backend("tags/members/batchtagging"))?;
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    async fn tag_contact_remove(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let openid = self.follower(contact.as_str(), "untag")?;
        let tagid = self.tag_id(tag, false).await?;
        self.inner
            .api
            .post("/cgi-bin/tags/members/batchuntagging", &json!({ "openid_list": [openid], "tagid": tagid }))
            .await
            .map_err(|e| e.into_backend("tags/members/batchuntagging"))?;
        self.dirty(PayloadType::Contact, contact.as_str());
        Ok(())
    }

    async fn tag_delete(&self, tag: &TagId) -> BackendResult<()> {
        let tagid = self.tag_id(tag, false).await?;
        self.inner
            .api
            .post("/cgi-bin/tags/delete", &json!({ "tag": { "id": tagid } }))
            .await
            .map_err(|e| e.into_backend("tags/delete"))?;
        Ok(())
    }

    async fn tag_list(&self, contact: Option<&ContactId>) -> BackendResult<Vec<TagId>> {
        match contact {
            None => Ok(self.tags().await?.into_iter().map(|(id, _, _)| TagId(id.to_string())).collect()),
            Some(c) => {
                let v = self
                    .inner
                    .api
                    .post("/cgi-bin/tags/getidlist", &json!({ "openid": c.as_str() }))
                    .await
                    .map_err(|e| e.into_backend("tags/getidlist"))?;
                Ok(v.get("tagid_list")
                    .and_then(Value::as_array)
                    .map(|ids| ids.iter().filter_map(Value::as_i64).map(|id| TagId(id.to_string())).collect())
                    .unwrap_or_default())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Cost for &str {
        fn cost(&self) -> usize {
            self.len()
        }
    }

    impl Cost for String {
        fn cost(&self) -> usize {
            self.len()
        }
    }

    #[test]
    fn files_are_classified_by_name_then_content() {
        assert_eq!(media_kind("a.JPG", b"x").unwrap().0, "image");
        assert_eq!(media_kind("v.amr", b"x").unwrap().0, "voice");
        assert_eq!(media_kind("m.mp4", b"x").unwrap().0, "video");
        assert_eq!(media_kind("noext", b"\x89PNG\r\n").unwrap().0, "image");
        assert_eq!(media_kind("noext", b"\0\0\0\x18ftypmp42").unwrap().0, "video");
        let e = media_kind("report.pdf", b"%PDF").unwrap_err().to_string();
        assert!(e.contains("report.pdf") && e.contains("mp4"), "{e}");
        let big = vec![0u8; (2 << 20) + 1];
        assert!(media_kind("long.amr", &big).unwrap_err().to_string().contains("up to 2 MB"));
    }

    #[test]
    fn customer_service_bodies_follow_the_api() {
        let news = Outbound::Reply(Reply::News(vec![["t".into(), "d".into(), "p".into(), "u".into()]]));
        assert_eq!(
            custom_body("o1", &news).unwrap(),
            json!({"touser": "o1", "msgtype": "news", "news": {"articles": [{"title": "t", "description": "d", "url": "u", "picurl": "p"}]}})
        );
        let text = Outbound::Reply(Reply::Text("你好".into()));
        assert_eq!(
            custom_body("o1", &text).unwrap(),
            json!({"touser": "o1", "msgtype": "text", "text": {"content": "你好"}})
        );
        let mini = Outbound::MiniProgram {
            title: "t".into(),
            appid: "wxa".into(),
            pagepath: "p".into(),
            thumb_media_id: "m".into(),
        };
        assert_eq!(custom_body("o", &mini).unwrap()["miniprogrampage"]["thumb_media_id"], "m");
        let two = Outbound::Reply(Reply::News(vec![["t".into(), "d".into(), "p".into(), "u".into()]; 2]));
        assert!(matches!(custom_body("o", &two), Err(BackendError::InvalidArgument(_))));
        let transfer = Outbound::Reply(Reply::TransferCustomerService { kf_account: None });
        assert!(matches!(custom_body("o", &transfer), Err(BackendError::FailedPrecondition(_))));
    }

    #[test]
    fn the_bounded_map_forgets_the_oldest() {
        let mut m = Bounded::new(2, 1 << 20);
        m.insert(1, "a");
        m.insert(2, "b");
        m.insert(1, "a2");
        m.insert(3, "c");
        assert_eq!((m.get(&1), m.get(&2), m.get(&3)), (None, Some(&"b"), Some(&"c")));
    }

    #[test]
    fn the_bounded_map_keeps_to_its_byte_budget() {
        let mut m = Bounded::new(1000, 10_000);
        for i in 0..100 {
            m.insert(i, "x".repeat(1000));
        }
        assert!(m.bytes <= 10_000, "{} bytes kept", m.bytes);
        assert!(m.get(&99).is_some() && m.get(&0).is_none());
        m.insert(1000, "y".repeat(50_000));
        assert_eq!(m.order.len(), 1, "one entry over the budget is still kept, alone");
    }
}
