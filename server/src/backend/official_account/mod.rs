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
//! What is kept where: messages (inbound pushes with their [`InboundKind`], what the bot sent with
//! its file or link card, a fetched media file) in the account's store, as JSON bodies in the
//! follower's conversation — they survive restarts and leave by the store's message retention;
//! follow requests and template results in the store's key-value space, the newest
//! [`FRIENDSHIPS_KEPT`] and [`TEMPLATE_RESULTS_KEPT`] ([`Ring`]); follower payloads in the store's
//! payload cache until a DIRTY. Only what belongs to requests in flight stays in memory, bounded:
//! the retry cache ([`SEEN_KEPT`] pushes for [`SEEN_TTL`]), at most [`MAX_WAITING`] pushes held open
//! for a passive reply, [`DIRTY_KEPT`] recent invalidations, the follower list (fetched again after
//! a restart: who followed meanwhile is unknown), and a 1024-push broadcast for the Events stream
//! (a subscriber further behind is ended).

pub mod api;
pub mod crypto;
pub mod extension;
pub mod settings;
pub mod webhook;
pub mod xml;

use std::collections::HashMap;
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
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
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
use crate::store::{MessageRecord, Store, StoreError};
use crate::tasks::Tasks;
use puppet_proto::filebox::BASE64;

/// Follow requests (one per `subscribe`) kept in the store, the newest first.
pub const FRIENDSHIPS_KEPT: u64 = 10_000;
/// Followers whose payload was invalidated lately, remembered to tell a stale cached payload.
pub const DIRTY_KEPT: usize = 50_000;
/// Pushes remembered to recognise WeChat's retries.
pub const SEEN_KEPT: usize = 10_000;
/// How long a push is remembered (WeChat retries within ~15 s).
pub const SEEN_TTL: Duration = Duration::from_secs(60);
/// Template delivery results kept in the store, the newest first.
pub const TEMPLATE_RESULTS_KEPT: u64 = 10_000;
/// Pushes buffered per `Events` subscriber.
pub const PUSH_BUFFER: usize = 1024;
/// Pushes held open at once waiting for a passive reply; beyond, a push is answered `success` at
/// once (the bot's answer then goes through the customer-service API).
pub const MAX_WAITING: usize = 4096;

const NO_ROOMS: &str = "Official Accounts have no group chats: followers talk to the account one to one";
const NO_FRIEND_REQUESTS: &str = "people follow an Official Account themselves (a `subscribe` arrives as a confirmed FRIENDSHIP); \
     the account cannot add or accept anyone";
const NO_RECALL: &str = "the Official Account API cannot recall a message once sent";

/// A message and what is needed to answer questions about it later: the body of its record in
/// the store (JSON).
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    message: Message,
    /// The push it came from (inbound messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    inbound: Option<InboundKind>,
    /// Its file in the blob store, once fetched (or the file the bot sent).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "filebox_json")]
    file: Option<FileBox>,
    /// The link card the bot sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<UrlLink>,
}

/// A FileBox inside a stored message: its own JSON form, as a string.
mod filebox_json {
    use puppet_proto::filebox::FileBox;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(fb: &Option<FileBox>, s: S) -> Result<S::Ok, S::Error> {
        fb.as_ref().map(FileBox::to_json).serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<FileBox>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|text| FileBox::from_json(&text).map_err(serde::de::Error::custom))
            .transpose()
    }
}

/// A follower's payload as the payload cache holds it: with the moment its fetch began, so that
/// one fetched before the follower's last DIRTY is known stale ([`State::dirtied`]).
#[derive(Serialize, Deserialize)]
struct CachedContact {
    fetched: u64,
    contact: Contact,
}

/// Records in the store's key-value space of which the newest `cap` are kept: record number `n`
/// also takes slot `n % cap`, and the record that held the slot before — `cap` records older —
/// is deleted then. The numbering continues across restarts (read back from the slots once).
struct Ring {
    /// The records' namespace (key: the record's own key).
    ns: &'static str,
    /// The slots' namespace (key: the slot number).
    slots: &'static str,
    cap: u64,
    next: tokio::sync::OnceCell<AtomicU64>,
}

/// A record of a [`Ring`], with its number.
#[derive(Serialize, Deserialize)]
struct Numbered<T> {
    n: u64,
    value: T,
}

/// A slot of a [`Ring`]: which record (number and key) holds it.
#[derive(Serialize, Deserialize)]
struct Slot {
    n: u64,
    key: String,
}

impl Ring {
    fn new(ns: &'static str, slots: &'static str, cap: u64) -> Self {
        Self { ns, slots, cap, next: tokio::sync::OnceCell::new() }
    }

    /// Keeps `value` under `key` (readable at once), forgetting the record `cap` places older.
    async fn put<T: Serialize + Send + 'static>(&self, store: &Store, key: String, value: T) -> Result<(), StoreError> {
        let next = self
            .next
            .get_or_try_init(|| {
                let slots = self.slots;
                store.read(move |s| {
                    let taken = s.kv().scan::<Slot>(slots)?;
                    Ok(AtomicU64::new(taken.iter().map(|(_, slot)| slot.n + 1).max().unwrap_or(0)))
                })
            })
            .await?;
        let n = next.fetch_add(1, Ordering::Relaxed);
        let (ns, slots, slot) = (self.ns, self.slots, (n % self.cap).to_string());
        store
            .read(move |s| {
                let kv = s.kv();
                // The slot's previous record goes, unless its key was written again since.
                if let Some(old) = kv.get::<Slot>(slots, &slot)?
                    && old.key != key
                    && kv.get::<Numbered<serde::de::IgnoredAny>>(ns, &old.key)?.is_some_and(|r| r.n == old.n)
                {
                    kv.delete(ns, &old.key);
                }
                kv.put(ns, &key, &Numbered { n, value })?;
                kv.put(slots, &slot, &Slot { n, key })?;
                Ok(())
            })
            .await
    }

    /// The record under `key`, if it is still kept.
    async fn get<T: DeserializeOwned + Send + 'static>(
        &self,
        store: &Store,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let ns = self.ns;
        Ok(store.read(move |s| s.kv().get::<Numbered<T>>(ns, &key)).await?.map(|r| r.value))
    }
}

/// A push being answered, or answered lately: WeChat's retries get the same answer.
struct Seen {
    at: Instant,
    answer: watch::Receiver<Option<PushAnswer>>,
}

/// How a push was answered, for WeChat's retries of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushAnswer {
    /// `200` with this body: `success`, or the passive reply.
    Body(String),
    /// `503` for this reason: the push was not kept (the store refused it), WeChat delivers it again.
    RetryLater(String),
}

/// What [`OfficialAccount::begin_push`] found.
pub enum PushTurn {
    /// A new push: handle it, then publish the answer.
    New(watch::Sender<Option<PushAnswer>>),
    /// A retry of a push still being handled or answered lately.
    Retry(watch::Receiver<Option<PushAnswer>>),
}

/// A delivered template message's result.
#[derive(Clone, Serialize, Deserialize)]
struct TemplateResult {
    status: String,
    to_user: String,
}

struct State {
    logged_in: bool,
    /// Followers (openid) whose payload was invalidated, and when ([`OfficialAccount::stamp`], µs):
    /// the DIRTY's drop from the payload cache may not be committed yet, and a fetch that began
    /// before may still put what it got. At most [`DIRTY_KEPT`].
    dirtied: HashMap<String, u64>,
    followers: Option<Vec<ContactId>>,
    /// Pushes waiting for a passive reply (follower openid, answer slot), oldest first; at most
    /// [`MAX_WAITING`].
    waiting: Vec<(String, oneshot::Sender<Reply>)>,
    seen: HashMap<String, Seen>,
}

impl State {
    /// Forgets the follower list (someone came or went).
    fn forget_followers(&mut self) {
        self.followers = None;
    }

    /// Marks a follower's cached payload stale as of `at`.
    fn dirty_contact(&mut self, openid: &str, at: u64) {
        if self.dirtied.len() >= DIRTY_KEPT && !self.dirtied.contains_key(openid) {
            // Long committed: a drop older than a minute is on disk whatever the durability.
            let horizon = at.saturating_sub(60_000_000);
            self.dirtied.retain(|_, t| *t > horizon);
            if self.dirtied.len() >= DIRTY_KEPT
                && let Some(oldest) = self.dirtied.iter().min_by_key(|(_, t)| **t).map(|(k, _)| k.clone())
            {
                self.dirtied.remove(&oldest);
            }
        }
        self.dirtied.insert(openid.to_owned(), at);
    }
}

/// True when a cached payload fetched at `fetched` may be served: no DIRTY since its fetch began.
fn fresh(fetched: u64, dirtied: Option<u64>) -> bool {
    dirtied.is_none_or(|d| fetched > d)
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
    /// The account's store: messages, follow requests, template results, the payload cache.
    store: Store,
    friendships: Ring,
    templates: Ring,
    /// The last [`OfficialAccount::stamp`].
    clock: AtomicU64,
    me: ContactId,
    state: Mutex<State>,
    pushes: broadcast::Sender<Arc<PushRecord>>,
    refresher: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The refresher belongs to the server's background tasks.
    tasks: Tasks,
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
    /// through `outbound`; messages, follow requests, template results and follower payloads are
    /// kept in `store`.
    pub fn new(
        settings: OaSettings,
        outbound: OutboundFetcher,
        sink: EventSink,
        blobs: BlobStore,
        metrics: OaMetrics,
        tasks: Tasks,
        store: Store,
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
            dirtied: HashMap::new(),
            followers: None,
            waiting: Vec::new(),
            seen: HashMap::new(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                api,
                sink,
                blobs,
                store,
                friendships: Ring::new("oa.friendships", "oa.friendships.slots", FRIENDSHIPS_KEPT),
                templates: Ring::new("oa.templates", "oa.templates.slots", TEMPLATE_RESULTS_KEPT),
                clock: AtomicU64::new(0),
                me,
                state: Mutex::new(state),
                pushes: broadcast::channel(PUSH_BUFFER).0,
                refresher: Mutex::new(None),
                tasks,
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

    /// The account's store (the webhook waits on it before answering).
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// A template message's delivery result, once reported: (status, openid).
    pub async fn template_result(&self, msg_id: u64) -> BackendResult<Option<(String, String)>> {
        let result: Option<TemplateResult> =
            self.inner.templates.get(&self.inner.store, msg_id.to_string()).await.map_err(BackendError::from)?;
        Ok(result.map(|r| (r.status, r.to_user)))
    }

    fn emit(&self, event: PuppetEvent) {
        self.inner.sink.emit(event);
    }

    fn dirty(&self, kind: PayloadType, id: &str) {
        if kind == PayloadType::Contact {
            // Before the event: whoever hears of it finds the cached payload stale.
            let at = self.stamp();
            self.state().dirty_contact(id, at);
        }
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

    /// Microseconds since the epoch, strictly increasing within a run: when a fetch began or a
    /// payload was invalidated, and what makes an id unique across restarts too.
    fn stamp(&self) -> u64 {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let prev = self.inner.clock.fetch_update(Ordering::AcqRel, Ordering::Acquire, |last| Some(now.max(last + 1)));
        // fetch_update with a closure that always answers `Some` cannot fail.
        let last = prev.unwrap_or_else(|last| last);
        now.max(last + 1)
    }

    fn fresh_id(&self, prefix: &str) -> String {
        format!("{prefix}{}", self.stamp())
    }

    /// Keeps a message (readable at once; durable per the store's policy) in the follower's
    /// conversation.
    fn keep(&self, openid: &str, stored: &Stored) {
        match serde_json::to_vec(stored) {
            Ok(body) => {
                let time_ms = now_secs().saturating_mul(1000);
                let (id, conversation) = (stored.message.id.to_string(), openid.to_owned());
                self.inner.store.messages().put(MessageRecord { id, conversation, time_ms, body });
            }
            // Plain data: cannot fail, but never a panic on the webhook's path.
            Err(e) => tracing::error!(error = %e, "a message could not be encoded for the store"),
        }
    }

    /// A stored message, read off the runtime.
    async fn stored(&self, id: &MessageId) -> BackendResult<Stored> {
        let record = crate::backend::stored_message(&self.inner.store, id).await?;
        serde_json::from_slice(&record.body).map_err(|e| {
            BackendError::Internal(format!(
                "stored message `{}` is unreadable: {e}",
                puppet_proto::ids::Shown(id.as_str())
            ))
        })
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

    /// True when the message a push with `msg_id` became is in the store (0: no id, never known).
    pub async fn message_kept(&self, msg_id: u64) -> bool {
        msg_id != 0 && matches!(self.inner.store.messages().get_async(&msg_id.to_string()).await, Ok(Some(_)))
    }

    /// Forgets a push that could not be kept: WeChat's next delivery of it is handled afresh.
    pub fn forget_push(&self, key: &str) {
        self.state().seen.remove(key);
    }

    /// Handles a new push: kept in the store, events to clients, then (for pushes a bot may answer)
    /// waits up to the reply window for a passive reply. A message already in the store (WeChat
    /// delivering again what an earlier run kept before it could answer) is not handled twice.
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
                    if let Err(e) = self.inner.friendships.put(&self.inner.store, id.to_string(), friendship).await {
                        tracing::warn!(error = %e, "a follow request could not be kept");
                    }
                    self.state().forget_followers();
                    waiter = self.wait_for_reply(&openid);
                    self.emit(PuppetEvent::Friendship(FriendshipEvent { friendship_id: id }));
                    self.dirty(PayloadType::Contact, &openid);
                }
                "unsubscribe" => {
                    self.state().forget_followers();
                    self.dirty(PayloadType::Contact, &openid);
                    answerable = false;
                }
                "TEMPLATESENDJOBFINISH" => {
                    let status = inbound.fields.get("Status").cloned().unwrap_or_default();
                    let result = TemplateResult { status, to_user: openid.clone() };
                    if let Err(e) =
                        self.inner.templates.put(&self.inner.store, inbound.msg_id.to_string(), result).await
                    {
                        tracing::warn!(error = %e, "a template result could not be kept");
                    }
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
                    let id = MessageId(inbound.msg_id.to_string());
                    // The retry cache is in memory; the store remembers across restarts.
                    if let Ok(Some(_)) = self.inner.store.messages().get_async(id.as_str()).await {
                        tracing::debug!(msg_id = inbound.msg_id, "a message kept already was delivered again");
                        return None;
                    }
                    id
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
                self.keep(&openid, &Stored { message, inbound: Some(inbound.kind.clone()), file: None, url: None });
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

    /// Uploads a client's file as temporary media; the reply, its message type and the file to keep
    /// with the sent message (in the blob store: a stored message stays small).
    async fn upload(&self, fb: &FileBox) -> BackendResult<(Reply, MessageType, FileBox)> {
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
        // Inline bytes and a URL's (whose headers may carry a client's credentials) go to the blob
        // store; a blob the client uploaded is kept as it is.
        let copy = matches!(fb.source, FileBoxSource::Base64(_) | FileBoxSource::Url { .. }).then(|| bytes.clone());
        let media_id =
            self.inner.api.upload_media(kind, &name, bytes).await.map_err(|e| e.into_backend("media/upload"))?;
        let out = match kind {
            "image" => Reply::Image { media_id },
            "voice" => Reply::Voice { media_id },
            _ => Reply::Video { media_id, title: Some(name), description: None },
        };
        let kept = match copy {
            Some(bytes) => match self.inner.blobs.put(&bytes).await {
                Ok(meta) => {
                    let mut kept = FileBox::new(fb.name.clone(), FileBoxSource::Uuid(meta.id));
                    kept.size = Some(meta.size);
                    kept
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a sent file could not be kept in the blob store; kept as sent");
                    let mut kept = fb.clone();
                    if let FileBoxSource::Url { headers, .. } = &mut kept.source {
                        *headers = None;
                    }
                    kept
                }
            },
            None => fb.clone(),
        };
        Ok((out, message_type, kept))
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

    /// The file of an inbound media message, fetched from WeChat into the blob store once (the
    /// stored message then names the blob).
    async fn media_file(&self, id: &MessageId, mut stored: Stored) -> BackendResult<FileBox> {
        if let Some(fb) = &stored.file {
            match &fb.source {
                FileBoxSource::Uuid(blob) if self.inner.blobs.touch(blob).is_err() => {}
                _ => return Ok(fb.clone()),
            }
        }
        let (media_id, pic_url) = match stored.inbound.clone() {
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
        let mut fb = FileBox::new(
            media.filename.unwrap_or_else(|| stored.message.filename.clone()),
            FileBoxSource::Uuid(meta.id),
        );
        fb.size = Some(meta.size);
        stored.file = Some(fb.clone());
        match serde_json::to_vec(&stored) {
            Ok(body) => {
                if let Err(e) = self.inner.store.messages().update(id.as_str(), body).await {
                    tracing::warn!(error = %e, "the fetched file could not be recorded with its message");
                }
            }
            Err(e) => tracing::error!(error = %e, "a message could not be encoded for the store"),
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
            self.state().forget_followers();
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
        if id.is_empty() || id.as_str().ends_with("@chatroom") {
            return Err(BackendError::not_found("contact", id));
        }
        let kind = PayloadType::Contact.wire() as u8;
        let key = id.to_string();
        match self.inner.store.read(move |s| s.kv().cache_get(kind, &key)).await {
            Ok(Some(bytes)) => match serde_json::from_slice::<CachedContact>(&bytes) {
                // The DIRTY after which it is stale is looked up after the read.
                Ok(c) if fresh(c.fetched, self.state().dirtied.get(id.as_str()).copied()) => return Ok(c.contact),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "a cached follower payload is unreadable; fetching it again"),
            },
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "the payload cache could not be read; fetching from WeChat"),
        }
        let fetched = self.stamp();
        let v = self.inner.api.get("/cgi-bin/user/info", &[("openid", id.as_str()), ("lang", "zh_CN")]).await.map_err(
            |e| match e {
                ApiError::WeChat { errcode: 40003 | 46004 | 49003, .. } => BackendError::not_found("contact", id),
                e => e.into_backend("user/info"),
            },
        )?;
        let contact = self.contact_from(id.as_str(), &v);
        match serde_json::to_vec(&CachedContact { fetched, contact: contact.clone() }) {
            Ok(bytes) => _ = self.inner.store.kv().cache_put(kind, id.as_str(), bytes),
            Err(e) => tracing::error!(error = %e, "a follower payload could not be encoded for the cache"),
        }
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
        let kept: Option<Friendship> =
            self.inner.friendships.get(&self.inner.store, id.to_string()).await.map_err(BackendError::from)?;
        kept.ok_or_else(|| BackendError::not_found("friendship", id))
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
        Ok(self.stored(id).await?.message)
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        let stored = self.stored(id).await?;
        if stored.inbound.is_none()
            && let Some(fb) = stored.file
        {
            return Ok(fb);
        }
        self.media_file(id, stored).await
    }

    async fn message_image(&self, id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        let stored = self.stored(id).await?;
        if stored.message.kind != MessageType::Image {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not an image")));
        }
        // WeChat keeps one rendition: thumbnail, HD and artwork are the same bytes.
        match (&stored.inbound, &stored.file) {
            (None, Some(fb)) => Ok(fb.clone()),
            _ => self.media_file(id, stored).await,
        }
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        let stored = self.stored(id).await?;
        match (stored.inbound, stored.url) {
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
        match self.stored(id).await?.inbound {
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
                let (reply, kind, kept) = self.upload(&fb).await?;
                let name = fb.name.clone();
                sent_file = Some(kept);
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
        let listener = message.listener_id.to_string();
        self.keep(&listener, &Stored { message, inbound: None, file: sent_file, url: sent_url });
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
pub(crate) mod tests {
    use super::*;

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

    use crate::store::tests::{options, temp_dir};
    use crate::store::{Durability, Store};

    /// An account on `store`, its blobs in `blobs`, whose API nobody answers.
    pub(crate) fn account(store: &Store, blobs: &std::path::Path) -> OfficialAccount {
        let settings = OaSettings::from_flags(&settings::OaFlags {
            app_id: Some("wx0123456789abcdef".into()),
            app_secret: Some("s3cret".into()),
            token: Some("pamtest".into()),
            original_id: Some("gh_test".into()),
            // Nothing here is fetched: an address nobody answers.
            api_base: "http://127.0.0.1:9/".into(),
            reply_window_ms: 100,
            ..settings::OaFlags::default()
        })
        .unwrap();
        let limits = crate::blobs::BlobLimits { max_file: 1 << 20, max_total: 1 << 24, ttl: Duration::from_secs(60) };
        OfficialAccount::new(
            settings,
            OutboundFetcher::new(crate::fetch::FetchLimits::default()).unwrap(),
            crate::events::EventBus::new(1024, 1 << 20, 1024).sink(),
            BlobStore::open(blobs, limits).unwrap(),
            OaMetrics::default(),
            Tasks::new(),
            store.clone(),
        )
        .unwrap()
    }

    /// A push from `from` with `body` (`MsgType` and its fields).
    pub(crate) fn push(from: &str, body: &str, msg_id: Option<u64>) -> Inbound {
        let id = msg_id.map(|i| format!("<MsgId>{i}</MsgId>")).unwrap_or_default();
        xml::parse_inbound(&format!(
            "<xml><ToUserName>gh_test</ToUserName><FromUserName>{from}</FromUserName>\
             <CreateTime>1700000000</CreateTime>{body}{id}</xml>"
        ))
        .unwrap()
    }

    #[tokio::test]
    async fn messages_follow_requests_and_template_results_survive_a_restart() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let oa = account(&store, &dir.join("blobs"));
        let text = "<MsgType>text</MsgType><Content>你好</Content>";
        assert_eq!(oa.handle_push(push("oAlice", text, Some(42))).await, None, "nobody answered");
        let image = "<MsgType>image</MsgType><PicUrl>http://x/p</PicUrl><MediaId>M1</MediaId>";
        oa.handle_push(push("oAlice", image, Some(43))).await;
        let link = "<MsgType>link</MsgType><Title>T</Title><Description>D</Description><Url>http://u</Url>";
        oa.handle_push(push("oBob", link, Some(44))).await;
        let subscribe = "<MsgType>event</MsgType><Event>subscribe</Event><EventKey>qrscene_7</EventKey>";
        oa.handle_push(push("oCarol", subscribe, None)).await;
        let job = "<MsgType>event</MsgType><Event>TEMPLATESENDJOBFINISH</Event><Status>success</Status>";
        oa.handle_push(push("oBob", job, Some(900))).await;
        drop(oa);
        store.close();

        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let oa = account(&store, &dir.join("blobs"));
        let m = oa.message(&MessageId("42".into())).await.unwrap();
        assert_eq!((m.text.as_str(), m.talker_id.as_str(), m.listener_id.as_str()), ("你好", "oAlice", "gh_test"));
        assert_eq!(oa.message(&MessageId("43".into())).await.unwrap().kind, MessageType::Image);
        let url = oa.message_url(&MessageId("44".into())).await.unwrap();
        assert_eq!((url.title.as_str(), url.url.as_str()), ("T", "http://u"));
        let err = oa.message_location(&MessageId("44".into())).await.unwrap_err();
        assert!(matches!(err, BackendError::FailedPrecondition(_)), "{err}");
        let f = oa.friendship(&FriendshipId("fs_oCarol_1700000000".into())).await.unwrap();
        assert_eq!(
            (f.contact_id.as_str(), f.hello.as_str(), f.scene),
            ("oCarol", "qrscene_7", FriendshipScene::QrCode)
        );
        assert_eq!(oa.template_result(900).await.unwrap(), Some(("success".into(), "oBob".into())));
        assert_eq!(oa.template_result(901).await.unwrap(), None);
        let err = oa.message(&MessageId("45".into())).await.unwrap_err();
        assert!(matches!(err, BackendError::NotFound { .. }), "{err}");
        assert_eq!(store.messages().list("oAlice", 10).unwrap().len(), 2, "the follower's conversation");

        // WeChat delivering again what the last run kept: not a second message.
        let mut pushes = oa.subscribe_pushes();
        assert_eq!(oa.handle_push(push("oAlice", text, Some(42))).await, None);
        assert!(pushes.try_recv().is_err(), "a message kept already is not handled again");
        oa.handle_push(push("oAlice", text, Some(46))).await;
        assert!(pushes.try_recv().is_ok(), "a new one is");
        drop(oa);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_cached_follower_is_served_until_a_dirty_even_one_whose_drop_is_not_committed() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Always)).unwrap();
        let oa = account(&store, &dir.join("blobs"));
        let kind = PayloadType::Contact.wire() as u8;
        let bob = Contact { id: ContactId("oBob".into()), name: "Bob".into(), ..Default::default() };
        let cached = serde_json::to_vec(&CachedContact { fetched: oa.stamp(), contact: bob.clone() }).unwrap();
        store.kv().cache_put(kind, "oBob", cached);
        store.settled().await.unwrap();
        assert_eq!(oa.contact(&ContactId("oBob".into())).await.unwrap(), bob, "from the cache: nothing is fetched");
        // This bus has no store: the DIRTY's drop never reaches the cache, as if not committed yet.
        oa.dirty_payload(PayloadType::Contact, "oBob".into()).await.unwrap();
        assert!(store.kv().cache_get(kind, "oBob").unwrap().is_some());
        let err = oa.contact(&ContactId("oBob".into())).await.unwrap_err();
        assert!(!matches!(err, BackendError::NotFound { .. }), "fetched from WeChat (unreachable here): {err}");
        drop(oa);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_ring_keeps_the_newest_records_and_numbers_on_after_a_reopen() {
        let dir = temp_dir();
        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let ring = Ring::new("t.records", "t.slots", 3);
        for i in 0..5 {
            ring.put(&store, format!("k{i}"), i).await.unwrap();
        }
        // Written again while still kept: its old slot must not delete it when reused.
        ring.put(&store, "k3".into(), 33).await.unwrap();
        let get = async |ring: &Ring, store: &Store, k: &str| ring.get::<i32>(store, k.into()).await.unwrap();
        assert_eq!(get(&ring, &store, "k1").await, None);
        assert_eq!(get(&ring, &store, "k2").await, None);
        assert_eq!(get(&ring, &store, "k3").await, Some(33));
        assert_eq!(get(&ring, &store, "k4").await, Some(4));
        store.close();

        let store = Store::open(&dir, options(Durability::Batch)).unwrap();
        let ring = Ring::new("t.records", "t.slots", 3);
        ring.put(&store, "k6".into(), 6).await.unwrap();
        ring.put(&store, "k7".into(), 7).await.unwrap();
        assert_eq!(get(&ring, &store, "k3").await, Some(33), "k3 (number 5) is among the newest three");
        assert_eq!(get(&ring, &store, "k4").await, None, "number 4 gave its slot to number 7");
        assert_eq!(store.kv().scan::<serde_json::Value>("t.records").unwrap().len(), 3);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn stored_messages_round_trip_through_json() {
        let mut file = FileBox::new("a.jpg", FileBoxSource::Uuid("0b8e8a55-7f6f-4a39-9a64-8c5c1f1a2b3c".into()));
        file.size = Some(12);
        let stored = Stored {
            message: Message { id: MessageId("1".into()), kind: MessageType::Image, ..Default::default() },
            inbound: Some(InboundKind::Location {
                latitude: 23.1,
                longitude: 113.3,
                scale: 20,
                label: Some("x".into()),
            }),
            file: Some(file.clone()),
            url: Some(UrlLink { title: "t".into(), url: "http://u".into(), ..Default::default() }),
        };
        let back: Stored = serde_json::from_slice(&serde_json::to_vec(&stored).unwrap()).unwrap();
        assert_eq!((back.message, back.inbound, back.url), (stored.message, stored.inbound, stored.url));
        let kept = back.file.unwrap();
        assert_eq!((kept.name, kept.source, kept.size), (file.name, file.source, file.size));
        let bare: Stored = serde_json::from_str(r#"{"message":{"id":"2"}}"#).unwrap();
        assert!(bare.inbound.is_none() && bare.file.is_none() && bare.url.is_none());
    }

    #[test]
    fn a_cached_payload_fetched_before_a_dirty_is_stale() {
        assert!(fresh(10, None));
        assert!(fresh(11, Some(10)));
        assert!(!fresh(10, Some(10)) && !fresh(9, Some(10)));
        let mut s = State {
            logged_in: false,
            dirtied: HashMap::new(),
            followers: None,
            waiting: Vec::new(),
            seen: HashMap::new(),
        };
        for i in 0..(DIRTY_KEPT as u64 + 10) {
            s.dirty_contact(&format!("o{i}"), 1_000_000_000 + i);
        }
        assert_eq!(s.dirtied.len(), DIRTY_KEPT, "bounded");
        assert!(s.dirtied.contains_key(&format!("o{}", DIRTY_KEPT + 9)) && !s.dirtied.contains_key("o0"));
    }
}
