//! The OneBot v11 front door: NoneBot, Koishi, aiocqhttp and the rest of the OneBot world drive an
//! account (the `botuniverse/onebot-11` specification).
//!
//! Per account, each transport optional ([`settings`]): the HTTP API and forward WebSocket on a
//! listener of their own ([`transport`]), reverse WebSocket clients and HTTP POST reporting. One
//! task per account (the hub) reads the account's event bus, translates each event once
//! ([`Core::translate`]) and hands the JSON to every connection through a bounded broadcast; a
//! connection that falls further behind than `PUPPET_ONEBOT_QUEUE` is closed, never buffered for.
//! Actions ([`actions`]) call the backend; OneBot's integer ids map to WeChat's string ids through
//! the persistent [`ids::IdMap`].

pub mod actions;
pub mod ids;
pub mod message;
pub mod settings;
pub mod transport;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use puppet_proto::event::PuppetEvent;
use puppet_proto::ids::{ContactId, MessageId, RoomId};
use puppet_proto::model::{ContactGender, FriendshipType, Message, MessageType, PayloadType};
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::blobs::BlobStore;
use crate::events::{EventBus, StartAt};
use crate::store::Store;
use crate::tasks::Tasks;
use ids::{IdMap, Kind};
use message::Segment;
use settings::{MessageFormat, Settings};

/// The protocol version reported by `get_version_info`.
pub const PROTOCOL: &str = "v11";

/// One account's OneBot state, shared by its transports.
pub struct Core {
    backend: Arc<dyn Backend>,
    bus: EventBus,
    blobs: BlobStore,
    ids: IdMap,
    settings: Settings,
    events: broadcast::Sender<Arc<str>>,
    self_id: AtomicI64,
    /// Base URL of `/download` and the key its links are signed with.
    download: Option<String>,
    download_key: [u8; 32],
    backlog: Arc<tokio::sync::Semaphore>,
    rate_limited: tokio::sync::mpsc::Sender<(String, Value)>,
    tasks: Tasks,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Starts the account's OneBot front door when `settings` configure one: binds its listeners
/// (an error stops the account's start), then runs its tasks in `tasks` until they stop.
pub async fn start(
    settings: Settings,
    backend: Arc<dyn Backend>,
    bus: EventBus,
    store: Store,
    blobs: BlobStore,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let ids = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || IdMap::open(store)).await??
    };
    let download_key = {
        let kv = store.kv();
        let existing: Option<String> = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.kv().get("onebot.meta", "download_key")).await??
        };
        match existing.and_then(|h| decode_hex32(&h)) {
            Some(k) => k,
            None => {
                let mut k = [0u8; 32];
                getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("the OS random generator failed: {e}"))?;
                kv.put("onebot.meta", "download_key", &hex(&k))?;
                k
            }
        }
    };
    let listeners = transport::bind(&settings).await?;
    let download = listeners.first().map(|(addr, _)| {
        let host = if addr.ip().is_unspecified() { "127.0.0.1".to_owned() } else { addr.ip().to_string() };
        let host = if host.contains(':') { format!("[{host}]") } else { host };
        format!("http://{host}:{}", addr.port())
    });
    let (events, _) = broadcast::channel(settings.queue);
    let (rate_tx, rate_rx) = tokio::sync::mpsc::channel(settings.backlog);
    let core = Arc::new(Core {
        backend,
        bus,
        blobs,
        ids,
        backlog: Arc::new(tokio::sync::Semaphore::new(settings.backlog)),
        settings,
        events,
        self_id: AtomicI64::new(0),
        download,
        download_key,
        rate_limited: rate_tx,
        tasks: tasks.clone(),
    });
    {
        let core = core.clone();
        tasks.spawn("onebot-hub", |stop| async move { core.hub(stop).await });
    }
    {
        let core = core.clone();
        tasks.spawn("onebot-rate-limited", |stop| async move { core.run_rate_limited(rate_rx, stop).await });
    }
    for (addr, listener) in listeners {
        let core = core.clone();
        tracing::info!(%addr, http = core.settings.http == Some(addr), ws = core.settings.ws == Some(addr), "OneBot listening");
        tasks.spawn("onebot-listener", move |stop| async move { transport::serve(core, listener, addr, stop).await });
    }
    for r in core.settings.reverse.clone() {
        let core = core.clone();
        tasks.spawn("onebot-ws-reverse", move |stop| async move { transport::reverse(core, r, stop).await });
    }
    for url in core.settings.post.clone() {
        let core = core.clone();
        tasks.spawn("onebot-http-post", move |stop| async move { transport::post(core, url, stop).await });
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex32(h: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if h.len() != 64 {
        return None;
    }
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(h.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl Core {
    /// The bot's own `user_id` (0 before the first login).
    pub fn self_id(&self) -> i64 {
        self.self_id.load(Ordering::Relaxed)
    }

    /// The bot's contact id, when logged in.
    fn me(&self) -> Option<ContactId> {
        self.bus.login_view().contact_id.map(ContactId::from)
    }

    /// Waits until the account is logged in and its `self_id` known; `None` when `stop` comes first.
    pub async fn logged_in(&self, stop: &CancellationToken) -> Option<i64> {
        let mut login = self.bus.login_state();
        loop {
            if let Some(me) = self.me()
                && let Ok(n) = self.ids.num(Kind::User, me.as_str()).await
            {
                self.self_id.store(n, Ordering::Relaxed);
                return Some(n);
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                changed = login.changed() => if changed.is_err() { return None },
            }
        }
    }

    /// A receiver of every translated event.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.events.subscribe()
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn base(&self, post_type: &str) -> serde_json::Map<String, Value> {
        let mut m = serde_json::Map::new();
        m.insert("time".into(), json!(now()));
        m.insert("self_id".into(), json!(self.self_id()));
        m.insert("post_type".into(), json!(post_type));
        m
    }

    /// A `meta_event` of type `lifecycle`.
    pub fn lifecycle(&self, sub_type: &str) -> Value {
        let mut m = self.base("meta_event");
        m.insert("meta_event_type".into(), json!("lifecycle"));
        m.insert("sub_type".into(), json!(sub_type));
        Value::Object(m)
    }

    fn heartbeat(&self, interval: u64) -> Value {
        let mut m = self.base("meta_event");
        m.insert("meta_event_type".into(), json!("heartbeat"));
        m.insert("status".into(), self.status());
        m.insert("interval".into(), json!(interval));
        Value::Object(m)
    }

    /// `get_status`'s answer.
    pub fn status(&self) -> Value {
        let online = self.bus.logged_in();
        json!({"online": online, "good": online, "app_initialized": true, "app_enabled": true, "app_good": true})
    }

    fn publish(&self, v: &Value) {
        // No receiver is fine: nobody is connected.
        _ = self.events.send(v.to_string().into());
    }

    /// Reads the bus, translates and publishes, and beats the heartbeat, until `stop`.
    async fn hub(self: Arc<Self>, stop: CancellationToken) {
        let mut heartbeat = self.settings.heartbeat.map(|d| {
            let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
            t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            t
        });
        let interval_ms = self.settings.heartbeat.map(|d| d.as_millis() as u64).unwrap_or(0);
        if self.me().is_some() {
            _ = self.logged_in(&stop).await;
        }
        'subscribe: loop {
            let mut sub = match self.bus.subscribe(StartAt::Live { replay_state: false }) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "OneBot cannot read the event bus");
                    return;
                }
            };
            let mut batch = Vec::new();
            loop {
                batch.clear();
                tokio::select! {
                    _ = stop.cancelled() => {
                        self.publish(&self.lifecycle("disable"));
                        return;
                    }
                    _ = async { heartbeat.as_mut().unwrap().tick().await }, if heartbeat.is_some() => {
                        self.publish(&self.heartbeat(interval_ms));
                        continue;
                    }
                    got = sub.next_batch(&mut batch) => match got {
                        Ok(true) => {}
                        Ok(false) => return,
                        Err(lagged) => {
                            tracing::warn!(behind = lagged.behind, "OneBot fell behind the event bus; going on from live events");
                            continue 'subscribe;
                        }
                    },
                }
                for env in &batch {
                    let Ok(event) = PuppetEvent::from_wire(env.kind.wire(), &env.payload) else { continue };
                    for v in self.translate(event).await {
                        self.publish(&v);
                    }
                }
            }
        }
    }

    /// The OneBot events for one puppet event (none, one, or one per member joining or leaving).
    pub async fn translate(&self, event: PuppetEvent) -> Vec<Value> {
        match self.translate_inner(event).await {
            Ok(v) => v,
            Err(e) => {
                tracing::debug!(error = %e, "a puppet event had no OneBot translation");
                vec![]
            }
        }
    }

    async fn translate_inner(&self, event: PuppetEvent) -> anyhow::Result<Vec<Value>> {
        Ok(match event {
            PuppetEvent::Login(_) => {
                if let Some(me) = self.me() {
                    self.self_id.store(self.ids.num(Kind::User, me.as_str()).await?, Ordering::Relaxed);
                }
                vec![self.lifecycle("enable")]
            }
            PuppetEvent::Logout(_) => vec![self.lifecycle("disable")],
            PuppetEvent::Message(m) => {
                let msg = self.backend.message(&m.message_id).await?;
                if Some(&msg.talker_id) == self.me().as_ref() || msg.kind == MessageType::Recalled {
                    return Ok(vec![]);
                }
                vec![self.message_event(&msg).await?]
            }
            PuppetEvent::Dirty(d) if d.payload_type == PayloadType::Message.wire() => {
                let id = MessageId::from(d.payload_id);
                let msg = self.backend.message(&id).await?;
                if msg.kind != MessageType::Recalled {
                    return Ok(vec![]);
                }
                let user = self.user(&msg.talker_id).await?;
                let message_id = self.ids.num(Kind::Message, id.as_str()).await?;
                let mut m = self.base("notice");
                if msg.room_id.as_str().is_empty() {
                    m.insert("notice_type".into(), json!("friend_recall"));
                } else {
                    m.insert("notice_type".into(), json!("group_recall"));
                    m.insert("group_id".into(), json!(self.group(&msg.room_id).await?));
                    m.insert("operator_id".into(), json!(user));
                }
                m.insert("user_id".into(), json!(user));
                m.insert("message_id".into(), json!(message_id));
                vec![Value::Object(m)]
            }
            PuppetEvent::Friendship(f) => {
                let f = self.backend.friendship(&f.friendship_id).await?;
                let user = self.user(&f.contact_id).await?;
                match f.kind {
                    FriendshipType::Receive => {
                        let mut m = self.base("request");
                        m.insert("request_type".into(), json!("friend"));
                        m.insert("user_id".into(), json!(user));
                        m.insert("comment".into(), json!(f.hello));
                        m.insert("flag".into(), json!(f.id.as_str()));
                        vec![Value::Object(m)]
                    }
                    FriendshipType::Confirm => {
                        let mut m = self.base("notice");
                        m.insert("notice_type".into(), json!("friend_add"));
                        m.insert("user_id".into(), json!(user));
                        vec![Value::Object(m)]
                    }
                    _ => vec![],
                }
            }
            PuppetEvent::RoomInvite(i) => {
                let inv = self.backend.room_invitation(&i.room_invitation_id).await?;
                let mut m = self.base("request");
                m.insert("request_type".into(), json!("group"));
                m.insert("sub_type".into(), json!("invite"));
                // WeChat names the room only once the bot has joined it.
                m.insert("group_id".into(), json!(0));
                m.insert("group_name".into(), json!(inv.topic));
                m.insert("user_id".into(), json!(self.user(&inv.inviter_id).await?));
                m.insert("comment".into(), json!(inv.invitation));
                m.insert("flag".into(), json!(inv.id.as_str()));
                vec![Value::Object(m)]
            }
            PuppetEvent::RoomJoin(j) => {
                let group = self.group(&j.room_id).await?;
                let operator = self.user(&j.inviter_id).await?;
                let mut out = Vec::new();
                for c in &j.invitee_id_list {
                    let mut m = self.base("notice");
                    m.insert("notice_type".into(), json!("group_increase"));
                    m.insert(
                        "sub_type".into(),
                        json!(if j.inviter_id.as_str().is_empty() { "approve" } else { "invite" }),
                    );
                    m.insert("group_id".into(), json!(group));
                    m.insert("user_id".into(), json!(self.user(c).await?));
                    m.insert("operator_id".into(), json!(operator));
                    out.push(Value::Object(m));
                }
                out
            }
            PuppetEvent::RoomLeave(l) => {
                let group = self.group(&l.room_id).await?;
                let me = self.me();
                let mut out = Vec::new();
                for c in &l.removee_id_list {
                    let user = self.user(c).await?;
                    let by_self = l.remover_id.as_str().is_empty() || &l.remover_id == c;
                    let sub_type = match () {
                        _ if by_self => "leave",
                        _ if Some(c) == me.as_ref() => "kick_me",
                        _ => "kick",
                    };
                    let mut m = self.base("notice");
                    m.insert("notice_type".into(), json!("group_decrease"));
                    m.insert("sub_type".into(), json!(sub_type));
                    m.insert("group_id".into(), json!(group));
                    m.insert("user_id".into(), json!(user));
                    m.insert("operator_id".into(), json!(if by_self { user } else { self.user(&l.remover_id).await? }));
                    out.push(Value::Object(m));
                }
                out
            }
            _ => vec![],
        })
    }

    async fn user(&self, c: &ContactId) -> anyhow::Result<i64> {
        Ok(self.ids.num(Kind::User, c.as_str()).await?)
    }

    async fn group(&self, r: &RoomId) -> anyhow::Result<i64> {
        Ok(self.ids.num(Kind::Group, r.as_str()).await?)
    }

    /// A `message` event for `msg`.
    async fn message_event(&self, msg: &Message) -> anyhow::Result<Value> {
        let message_id = self.ids.num(Kind::Message, msg.id.as_str()).await?;
        let segments = self.segments_of(msg, message_id).await?;
        let user = self.user(&msg.talker_id).await?;
        let mut m = self.base("message");
        let contact = self.backend.contact(&msg.talker_id).await.ok();
        let nickname = contact.as_ref().map(|c| c.name.clone()).unwrap_or_default();
        let sex = match contact.as_ref().map(|c| c.gender) {
            Some(ContactGender::Male) => "male",
            Some(ContactGender::Female) => "female",
            _ => "unknown",
        };
        let mut sender = json!({"user_id": user, "nickname": nickname, "sex": sex, "age": 0});
        if msg.room_id.as_str().is_empty() {
            m.insert("message_type".into(), json!("private"));
            let friend = contact.as_ref().is_some_and(|c| c.friend);
            m.insert("sub_type".into(), json!(if friend { "friend" } else { "other" }));
        } else {
            m.insert("message_type".into(), json!("group"));
            m.insert("sub_type".into(), json!("normal"));
            m.insert("group_id".into(), json!(self.group(&msg.room_id).await?));
            m.insert("anonymous".into(), Value::Null);
            let card =
                self.backend.room_member(&msg.room_id, &msg.talker_id).await.map(|r| r.room_alias).unwrap_or_default();
            sender["card"] = json!(card);
            sender["role"] = json!(self.role(&msg.room_id, &msg.talker_id).await);
        }
        m.insert("message_id".into(), json!(message_id));
        m.insert("user_id".into(), json!(user));
        m.insert("message".into(), self.format(&segments));
        m.insert("raw_message".into(), json!(message::raw(&segments)));
        m.insert("font".into(), json!(0));
        m.insert("sender".into(), sender);
        m.insert("time".into(), json!((msg.timestamp_ms / 1000) as i64));
        Ok(Value::Object(m))
    }

    /// `owner`, `admin` or `member`.
    async fn role(&self, room: &RoomId, who: &ContactId) -> &'static str {
        match self.backend.room(room).await {
            Ok(r) if &r.owner_id == who => "owner",
            Ok(r) if r.admin_ids.contains(who) => "admin",
            _ => "member",
        }
    }

    /// Segments as the configured format writes them.
    pub fn format(&self, segments: &[Segment]) -> Value {
        match self.settings.format {
            MessageFormat::Array => Value::Array(segments.iter().map(Segment::to_json).collect()),
            MessageFormat::String => json!(message::to_cq(segments)),
        }
    }

    /// A message as segments: `at` for every mention (the `@name` text taken out), media as
    /// segments with a `url` that `/download` serves.
    pub async fn segments_of(&self, msg: &Message, message_id: i64) -> anyhow::Result<Vec<Segment>> {
        let mut out = Vec::new();
        // `file` is what `get_image` takes back: the message id and the name's extension.
        let media = |kind: &str, name: &str| {
            let ext = name.rsplit_once('.').map(|(_, e)| e).filter(|e| !e.is_empty() && e.len() <= 8).unwrap_or(kind);
            let mut data = vec![("file", json!(format!("{message_id}.{ext}")))];
            if !name.is_empty() {
                data.push(("name", json!(name)));
            }
            if let Some(url) = self.download_url(message_id) {
                data.push(("url", json!(url)));
            }
            Segment::new(kind, data)
        };
        match msg.kind {
            MessageType::Text => {
                let mut text = msg.text.clone();
                for c in &msg.mention_ids {
                    out.push(Segment::new("at", [("qq", json!(self.user(c).await?.to_string()))]));
                    for name in self.names_in_room(&msg.room_id, c).await {
                        for sep in ['\u{2005}', ' ', '\u{a0}'] {
                            text = text.replacen(&format!("@{name}{sep}"), "", 1);
                        }
                        if text.ends_with(&format!("@{name}")) {
                            text.truncate(text.len() - name.len() - 1);
                        }
                    }
                }
                let text = if out.is_empty() { text } else { text.trim_start().to_owned() };
                if !text.is_empty() || out.is_empty() {
                    out.push(Segment::text(text));
                }
            }
            MessageType::Image => out.push(media("image", &msg.filename)),
            MessageType::Audio => out.push(media("record", &msg.filename)),
            MessageType::Video => out.push(media("video", &msg.filename)),
            MessageType::Attachment | MessageType::Emoticon => out.push(media("file", &msg.filename)),
            MessageType::Url => match self.backend.message_url(&msg.id).await {
                Ok(u) => out.push(Segment::new(
                    "share",
                    [
                        ("url", json!(u.url)),
                        ("title", json!(u.title)),
                        ("content", json!(u.description)),
                        ("image", json!(u.thumbnail_url)),
                    ],
                )),
                Err(_) => out.push(Segment::text(msg.text.clone())),
            },
            _ => out.push(Segment::text(msg.text.clone())),
        }
        Ok(out)
    }

    async fn names_in_room(&self, room: &RoomId, c: &ContactId) -> Vec<String> {
        let mut names = Vec::new();
        if !room.as_str().is_empty()
            && let Ok(m) = self.backend.room_member(room, c).await
        {
            names.extend([m.room_alias, m.name]);
        }
        if let Ok(contact) = self.backend.contact(c).await {
            names.push(contact.name);
        }
        names.retain(|n| !n.is_empty());
        names
    }

    fn signature(&self, message_id: i64) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.download_key).expect("any key length");
        mac.update(&message_id.to_be_bytes());
        hex(&mac.finalize().into_bytes()[..16])
    }

    /// The link `/download` serves a message's file at, when a listener serves it.
    pub fn download_url(&self, message_id: i64) -> Option<String> {
        let base = self.download.as_ref()?;
        Some(format!("{base}/download/{message_id}?sig={}", self.signature(message_id)))
    }

    /// Whether `sig` is the signature of `message_id`'s link (constant time).
    pub fn download_signed(&self, message_id: i64, sig: &str) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(self.signature(message_id).as_bytes(), sig.as_bytes()))
    }

    /// Runs `_rate_limited` actions one at a time, `PUPPET_ONEBOT_RATE_LIMIT_MS` apart.
    async fn run_rate_limited(
        self: Arc<Self>,
        mut rx: tokio::sync::mpsc::Receiver<(String, Value)>,
        stop: CancellationToken,
    ) {
        loop {
            let (action, params) = tokio::select! {
                _ = stop.cancelled() => return,
                next = rx.recv() => match next { Some(n) => n, None => return },
            };
            if let Err(f) = self.call(&action, &params).await {
                tracing::info!(action = %puppet_proto::ids::Shown(&action), wording = %f.wording, "a rate-limited OneBot action failed");
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.settings.rate_limit) => {}
            }
        }
    }
}
