//! A bot API in the spirit of Wechaty: register handlers, then [`Bot::run`].
//!
//! ```no_run
//! use puppet_client::bot::Bot;
//!
//! # async fn demo() -> Result<(), puppet_client::Error> {
//! Bot::from_env()?
//!     .on_login(|me| async move { println!("logged in as {}", me.id()); Ok(()) })
//!     .on_text("ding", |msg| async move { msg.say("dong").await.map(drop) })
//!     .on_regex(r"^weather in (\w+)$", |msg, caps| async move {
//!         msg.reply(&format!("sunny in {}", caps[1])).await.map(drop)
//!     })
//!     .run()
//!     .await
//! # }
//! ```
//!
//! * Every `on_message` observer sees every message (the bot's own included). Then the routes —
//!   [`Bot::on_text`], [`Bot::on_regex`], [`Bot::on_kind`] — are tried in the order they were
//!   registered, skipping the bot's own messages; the first that matches handles the message.
//! * Events come from the sequenced feed. When the stream or the connection drops, the bot
//!   reconnects with backoff and resumes after the last event it handled, so every event is handled
//!   exactly once and in order. If the server no longer has the events since then, the gap is
//!   reported to the error handler ([`Error::Gap`]) and the bot carries on with live events.
//! * Contact and room payloads are fetched when first needed and cached until a DIRTY event for
//!   them arrives.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::Engine;
use puppet_proto::event::PuppetEvent;
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId};
use puppet_proto::model::{self, MessageType, PayloadType, ScanStatus};
use tokio_stream::StreamExt;

use crate::{Client, ConnectOptions, Error};

type BoxFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;
type Handler<A> = Box<dyn Fn(A) -> BoxFuture + Send + Sync>;

/// What a handler may return: nothing, or a `Result` whose error goes to the error handlers.
pub trait HandlerOutput: Send + 'static {
    /// As a result.
    fn into_result(self) -> Result<(), Error>;
}

impl HandlerOutput for () {
    fn into_result(self) -> Result<(), Error> {
        Ok(())
    }
}

impl HandlerOutput for Result<(), Error> {
    fn into_result(self) -> Result<(), Error> {
        self
    }
}

fn boxed<A, F, Fut>(f: F) -> Handler<A>
where
    F: Fn(A) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: HandlerOutput,
{
    Box::new(move |a| {
        let fut = f(a);
        Box::pin(async move { fut.await.into_result() })
    })
}

enum Matcher {
    Text(String),
    Kind(MessageType),
}

enum Route {
    Plain(Matcher, Handler<Message>),
    Captures(regex::Regex, Handler<(Message, Vec<String>)>),
}

#[derive(Default)]
struct Handlers {
    scan: Vec<Handler<(String, ScanStatus)>>,
    login: Vec<Handler<Contact>>,
    logout: Vec<Handler<(Contact, String)>>,
    message: Vec<Handler<Message>>,
    routes: Vec<Route>,
    friendship: Vec<Handler<Friendship>>,
    room_join: Vec<Handler<RoomJoin>>,
    room_leave: Vec<Handler<RoomLeave>>,
    room_topic: Vec<Handler<RoomTopic>>,
    room_invite: Vec<Handler<RoomInvitation>>,
    error: Vec<Handler<Arc<Error>>>,
}

#[derive(Default)]
struct Cache {
    contacts: HashMap<ContactId, model::Contact>,
    rooms: HashMap<RoomId, model::Room>,
}

struct Inner {
    client: Client,
    cache: Mutex<Cache>,
    me: Mutex<Option<ContactId>>,
}

/// What every handle carries: the connection and the payload cache.
#[derive(Clone)]
pub struct Ctx {
    inner: Arc<Inner>,
}

impl Ctx {
    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The typed client underneath.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The bot's own contact id, once logged in.
    pub fn me(&self) -> Option<ContactId> {
        self.inner.me.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// A contact by id (payload fetched when first needed).
    pub fn contact(&self, id: impl Into<ContactId>) -> Contact {
        Contact { ctx: self.clone(), id: id.into() }
    }

    /// A room by id.
    pub fn room(&self, id: impl Into<RoomId>) -> Room {
        Room { ctx: self.clone(), id: id.into() }
    }

    /// The first contact whose name or alias is exactly `name`.
    pub async fn find_contact(&self, name: &str) -> Result<Option<Contact>, Error> {
        for id in self.client().contact_list().await? {
            let c = self.contact(id);
            let p = c.payload().await?;
            if p.name == name || p.alias == name {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// The first room the bot is in whose topic is exactly `topic`.
    pub async fn find_room(&self, topic: &str) -> Result<Option<Room>, Error> {
        for id in self.client().room_list().await? {
            let r = self.room(id);
            if r.payload().await?.topic == topic {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    fn forget(&self, kind: i32, id: &str) {
        let mut cache = self.cache();
        match PayloadType::from_wire(kind) {
            Some(PayloadType::Contact) => {
                cache.contacts.remove(id);
            }
            Some(PayloadType::Room | PayloadType::RoomMember) => {
                cache.rooms.remove(id);
            }
            _ => {}
        }
    }
}

/// A contact.
#[derive(Clone)]
pub struct Contact {
    ctx: Ctx,
    id: ContactId,
}

impl Contact {
    /// The bot context this handle belongs to (finders, the client).
    pub fn ctx(&self) -> &Ctx {
        &self.ctx
    }
    /// Its id.
    pub fn id(&self) -> &ContactId {
        &self.id
    }
    /// Its payload (cached until DIRTY).
    pub async fn payload(&self) -> Result<model::Contact, Error> {
        if let Some(c) = self.ctx.cache().contacts.get(&self.id) {
            return Ok(c.clone());
        }
        let c = self.ctx.client().contact(&self.id).await?;
        self.ctx.cache().contacts.insert(self.id.clone(), c.clone());
        Ok(c)
    }
    /// Its display name.
    pub async fn name(&self) -> Result<String, Error> {
        Ok(self.payload().await?.name)
    }
    /// The alias the bot gave it ("" for none).
    pub async fn alias(&self) -> Result<String, Error> {
        Ok(self.payload().await?.alias)
    }
    /// Sets (or with `""` clears) its alias.
    pub async fn set_alias(&self, alias: &str) -> Result<(), Error> {
        self.ctx.client().set_contact_alias(&self.id, alias).await?;
        self.ctx.cache().contacts.remove(&self.id);
        Ok(())
    }
    /// Sends it a text.
    pub async fn say(&self, text: &str) -> Result<Option<MessageId>, Error> {
        self.ctx.client().send_text(&ConversationId(self.id.0.clone()), text, &[]).await
    }
    /// Sends it a file from disk (uploaded first, so any size works).
    pub async fn say_file(&self, path: impl AsRef<std::path::Path>) -> Result<Option<MessageId>, Error> {
        send_file(&self.ctx, ConversationId(self.id.0.clone()), path.as_ref()).await
    }
}

async fn send_file(ctx: &Ctx, to: ConversationId, path: &std::path::Path) -> Result<Option<MessageId>, Error> {
    let file =
        tokio::fs::File::open(path).await.map_err(|e| Error::Config(format!("cannot open {}: {e}", path.display())))?;
    let size = file.metadata().await.map(|m| m.len()).ok();
    let id = ctx.client().upload(file, |_| {}).await?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let mut fb = FileBox::new(name, FileBoxSource::Uuid(id));
    fb.size = size;
    ctx.client().send_file(&to, &fb).await
}

/// A room.
#[derive(Clone)]
pub struct Room {
    ctx: Ctx,
    id: RoomId,
}

impl Room {
    /// Its id.
    pub fn id(&self) -> &RoomId {
        &self.id
    }
    /// Its payload (cached until DIRTY).
    pub async fn payload(&self) -> Result<model::Room, Error> {
        if let Some(r) = self.ctx.cache().rooms.get(&self.id) {
            return Ok(r.clone());
        }
        let r = self.ctx.client().room(&self.id).await?;
        self.ctx.cache().rooms.insert(self.id.clone(), r.clone());
        Ok(r)
    }
    /// Its topic.
    pub async fn topic(&self) -> Result<String, Error> {
        Ok(self.payload().await?.topic)
    }
    /// Changes its topic.
    pub async fn set_topic(&self, topic: &str) -> Result<(), Error> {
        self.ctx.client().set_room_topic(&self.id, topic).await?;
        self.ctx.cache().rooms.remove(&self.id);
        Ok(())
    }
    /// Its members.
    pub async fn members(&self) -> Result<Vec<Contact>, Error> {
        Ok(self.payload().await?.member_ids.into_iter().map(|id| self.ctx.contact(id)).collect())
    }
    /// Says something, @-mentioning `mentions`.
    pub async fn say(&self, text: &str, mentions: &[ContactId]) -> Result<Option<MessageId>, Error> {
        self.ctx.client().send_text(&ConversationId(self.id.0.clone()), text, mentions).await
    }
    /// Sends a file from disk.
    pub async fn say_file(&self, path: impl AsRef<std::path::Path>) -> Result<Option<MessageId>, Error> {
        send_file(&self.ctx, ConversationId(self.id.0.clone()), path.as_ref()).await
    }
    /// Adds a contact.
    pub async fn add(&self, contact: &ContactId) -> Result<(), Error> {
        self.ctx.client().room_add(&self.id, std::slice::from_ref(contact)).await
    }
    /// Removes a member.
    pub async fn del(&self, contact: &ContactId) -> Result<(), Error> {
        self.ctx.client().room_del(&self.id, std::slice::from_ref(contact)).await
    }
}

/// A message.
#[derive(Clone)]
pub struct Message {
    ctx: Ctx,
    payload: model::Message,
}

impl Message {
    /// Its id.
    pub fn id(&self) -> &MessageId {
        &self.payload.id
    }
    /// Its full payload.
    pub fn payload(&self) -> &model::Message {
        &self.payload
    }
    /// Its text.
    pub fn text(&self) -> &str {
        &self.payload.text
    }
    /// Its kind.
    pub fn kind(&self) -> MessageType {
        self.payload.kind
    }
    /// Who sent it.
    pub fn talker(&self) -> Contact {
        self.ctx.contact(self.payload.talker_id.clone())
    }
    /// Who sent it, by id.
    pub fn talker_id(&self) -> &ContactId {
        &self.payload.talker_id
    }
    /// The room it was said in, if any.
    pub fn room(&self) -> Option<Room> {
        Some(&self.payload.room_id).filter(|r| !r.is_empty()).map(|r| self.ctx.room(r.clone()))
    }
    /// Who it @-mentions.
    pub fn mentions(&self) -> &[ContactId] {
        &self.payload.mention_ids
    }
    /// True when the bot itself sent it.
    pub fn is_self(&self) -> bool {
        self.ctx.me().is_some_and(|me| me == self.payload.talker_id)
    }
    /// Where an answer goes: the room, or the talker (the listener when the bot spoke).
    pub fn conversation(&self) -> ConversationId {
        if !self.payload.room_id.is_empty() {
            ConversationId(self.payload.room_id.0.clone())
        } else if self.is_self() {
            ConversationId(self.payload.listener_id.0.clone())
        } else {
            ConversationId(self.payload.talker_id.0.clone())
        }
    }
    /// Says something in the same conversation.
    pub async fn say(&self, text: &str) -> Result<Option<MessageId>, Error> {
        self.ctx.client().send_text(&self.conversation(), text, &[]).await
    }
    /// Answers the talker: in a room, with an @-mention of them.
    pub async fn reply(&self, text: &str) -> Result<Option<MessageId>, Error> {
        match self.room() {
            Some(_) => {
                let name = self.talker().payload().await.map(|c| c.name).unwrap_or_default();
                let text = format!("@{name} {text}");
                self.ctx.client().send_text(&self.conversation(), &text, std::slice::from_ref(self.talker_id())).await
            }
            None => self.say(text).await,
        }
    }
    /// The file it carries, as the server describes it.
    pub async fn file(&self) -> Result<FileBox, Error> {
        self.ctx.client().message_file(self.id()).await
    }
    /// The bytes of the file it carries (downloaded or decoded).
    pub async fn file_bytes(&self) -> Result<Vec<u8>, Error> {
        let fb = self.file().await?;
        match &fb.source {
            FileBoxSource::Base64(b) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::Protocol(format!("FileBox base64: {e}"))),
            FileBoxSource::Uuid(id) => {
                let mut out = Vec::new();
                self.ctx.client().download(id, &mut out, |_| {}).await?;
                Ok(out)
            }
            FileBoxSource::Url { url, .. } => Err(Error::Protocol(format!("the file is at a URL: {url}"))),
            FileBoxSource::QrCode(_) => Err(Error::Protocol("the FileBox is a QR code, not a file".into())),
        }
    }
}

impl std::fmt::Display for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.room() {
            Some(r) => write!(f, "[{}] {}: {}", r.id(), self.talker_id(), self.text()),
            None => write!(f, "{}: {}", self.talker_id(), self.text()),
        }
    }
}

/// A friend request.
#[derive(Clone)]
pub struct Friendship {
    ctx: Ctx,
    id: FriendshipId,
}

impl Friendship {
    /// Its id.
    pub fn id(&self) -> &FriendshipId {
        &self.id
    }
    /// Its payload.
    pub async fn payload(&self) -> Result<model::Friendship, Error> {
        self.ctx.client().friendship(&self.id).await
    }
    /// The other side.
    pub async fn contact(&self) -> Result<Contact, Error> {
        Ok(self.ctx.contact(self.payload().await?.contact_id))
    }
    /// Accepts it.
    pub async fn accept(&self) -> Result<(), Error> {
        self.ctx.client().friendship_accept(&self.id).await
    }
}

/// An invitation for the bot to join a room.
#[derive(Clone)]
pub struct RoomInvitation {
    ctx: Ctx,
    id: RoomInvitationId,
}

impl RoomInvitation {
    /// Its id.
    pub fn id(&self) -> &RoomInvitationId {
        &self.id
    }
    /// Its payload.
    pub async fn payload(&self) -> Result<model::RoomInvitation, Error> {
        self.ctx.client().room_invitation(&self.id).await
    }
    /// Accepts it.
    pub async fn accept(&self) -> Result<(), Error> {
        self.ctx.client().room_invitation_accept(&self.id).await
    }
}

/// Members joined a room.
#[derive(Clone)]
pub struct RoomJoin {
    /// The room.
    pub room: Room,
    /// Who joined.
    pub invitees: Vec<Contact>,
    /// Who invited them.
    pub inviter: Contact,
}

/// Members left a room.
#[derive(Clone)]
pub struct RoomLeave {
    /// The room.
    pub room: Room,
    /// Who left.
    pub removees: Vec<Contact>,
    /// Who removed them (themselves when they left).
    pub remover: Contact,
}

/// A room's topic changed.
#[derive(Clone)]
pub struct RoomTopic {
    /// The room.
    pub room: Room,
    /// The new topic.
    pub new_topic: String,
    /// The previous topic.
    pub old_topic: String,
    /// Who changed it.
    pub changer: Contact,
}

/// A bot being configured; [`Bot::run`] starts it.
pub struct Bot {
    options: ConnectOptions,
    handlers: Handlers,
}

macro_rules! registrar {
    ($(#[$doc:meta])* $name:ident, $field:ident, $arg:ty) => {
        $(#[$doc])*
        pub fn $name<F, Fut>(mut self, f: F) -> Self
        where
            F: Fn($arg) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: HandlerOutput,
        {
            self.handlers.$field.push(boxed(f));
            self
        }
    };
}

impl Bot {
    /// A bot for the server `options` describe.
    pub fn new(options: ConnectOptions) -> Self {
        Self { options, handlers: Handlers::default() }
    }

    /// A bot configured from the Wechaty environment variables ([`ConnectOptions::from_env`]).
    pub fn from_env() -> Result<Self, Error> {
        Ok(Self::new(ConnectOptions::from_env()?))
    }

    /// Called with the QR text and status while logging in.
    pub fn on_scan<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(String, ScanStatus) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.handlers.scan.push(boxed(move |(qr, status)| f(qr, status)));
        self
    }

    registrar!(
        /// Called with the bot's own contact when it logs in.
        on_login, login, Contact
    );
    registrar!(
        /// Called with every message (the bot's own included).
        on_message, message, Message
    );
    registrar!(
        /// Called with every friend request or confirmation.
        on_friendship, friendship, Friendship
    );
    registrar!(
        /// Called when members join a room.
        on_room_join, room_join, RoomJoin
    );
    registrar!(
        /// Called when members leave a room.
        on_room_leave, room_leave, RoomLeave
    );
    registrar!(
        /// Called when a room's topic changes.
        on_room_topic, room_topic, RoomTopic
    );
    registrar!(
        /// Called when the bot is invited into a room.
        on_room_invite, room_invite, RoomInvitation
    );
    registrar!(
        /// Called with whatever failed: a handler, the connection, a gap in the events. Without an
        /// error handler, errors are printed on stderr.
        on_error, error, Arc<Error>
    );

    /// Called with the bot's contact and the reason when it logs out.
    pub fn on_logout<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(Contact, String) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.handlers.logout.push(boxed(move |(c, reason)| f(c, reason)));
        self
    }

    /// Route: a message whose text is exactly `text`.
    pub fn on_text<F, Fut>(mut self, text: &str, f: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.handlers.routes.push(Route::Plain(Matcher::Text(text.to_owned()), boxed(f)));
        self
    }

    /// Route: a message of this kind.
    pub fn on_kind<F, Fut>(mut self, kind: MessageType, f: F) -> Self
    where
        F: Fn(Message) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        self.handlers.routes.push(Route::Plain(Matcher::Kind(kind), boxed(f)));
        self
    }

    /// Route: a message whose text matches `pattern`; the handler gets the captures (`caps[0]` is
    /// the whole match, missing groups are ""). Panics on an invalid pattern, like `Regex::new`
    /// would at the first message: a programming error, caught at start-up.
    pub fn on_regex<F, Fut>(mut self, pattern: &str, f: F) -> Self
    where
        F: Fn(Message, Vec<String>) -> Fut + Send + Sync + 'static,
        Fut: Future + Send + 'static,
        Fut::Output: HandlerOutput,
    {
        let re = regex::Regex::new(pattern).unwrap_or_else(|e| panic!("on_regex: invalid pattern {pattern:?}: {e}"));
        self.handlers.routes.push(Route::Captures(re, boxed(move |(m, caps)| f(m, caps))));
        self
    }

    /// Connects, starts the account and handles events until Ctrl-C.
    pub async fn run(self) -> Result<(), Error> {
        self.run_until(async {
            _ = tokio::signal::ctrl_c().await;
        })
        .await
    }

    /// As [`Bot::run`], stopping when `shutdown` completes.
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) -> Result<(), Error> {
        let client = Client::connect_with(self.options).await?;
        let ctx = Ctx { inner: Arc::new(Inner { client, cache: Mutex::default(), me: Mutex::default() }) };
        let handlers = self.handlers;
        tokio::select! {
            r = event_loop(&ctx, &handlers) => r,
            _ = shutdown => Ok(()),
        }
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// True for failures a reconnect can cure.
fn transient(e: &Error) -> bool {
    match e {
        Error::Connect(_) => true,
        Error::Status(s) => {
            matches!(s.code(), tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled)
        }
        _ => false,
    }
}

async fn report(handlers: &Handlers, e: Error) {
    let e = Arc::new(e);
    if handlers.error.is_empty() {
        eprintln!("bot: {e}");
    }
    for h in &handlers.error {
        _ = h(e.clone()).await;
    }
}

async fn event_loop(ctx: &Ctx, handlers: &Handlers) -> Result<(), Error> {
    let mut last: Option<u64> = None;
    let mut started = false;
    let mut backoff = BACKOFF_MIN;
    loop {
        let stream = match ctx.client().events(last).await {
            Ok(s) => s,
            Err(Error::Status(s)) if s.code() == tonic::Code::OutOfRange => {
                report(handlers, Error::Gap(s.message().to_owned())).await;
                last = None;
                continue;
            }
            Err(e) if transient(&e) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            Err(e) => return Err(e),
        };
        if !started {
            ctx.client().start().await?;
            started = true;
        }
        tokio::pin!(stream);
        while let Some(item) = stream.next().await {
            match item {
                Ok((seq, event)) => {
                    backoff = BACKOFF_MIN;
                    dispatch(ctx, handlers, event).await;
                    last = Some(seq);
                }
                Err(e) if transient(&e) => break,
                Err(e) => {
                    report(handlers, e).await;
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Fetches a message payload, retrying while the connection is down: the event is only counted as
/// handled once its handlers ran.
async fn fetch_message(ctx: &Ctx, id: &MessageId) -> Result<model::Message, Error> {
    let mut backoff = BACKOFF_MIN;
    loop {
        match ctx.client().message(id).await {
            Err(e) if transient(&e) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
            other => return other,
        }
    }
}

async fn run_all<A: Clone>(handlers: &Handlers, list: &[Handler<A>], arg: A) {
    for h in list {
        if let Err(e) = h(arg.clone()).await {
            report(handlers, e).await;
        }
    }
}

async fn dispatch(ctx: &Ctx, handlers: &Handlers, event: PuppetEvent) {
    let contacts = |ids: Vec<ContactId>| ids.into_iter().map(|id| ctx.contact(id)).collect::<Vec<_>>();
    match event {
        PuppetEvent::Scan(s) => {
            let status = ScanStatus::from_wire(s.status).unwrap_or_default();
            run_all(handlers, &handlers.scan, (s.qrcode.unwrap_or_default(), status)).await;
        }
        PuppetEvent::Login(l) => {
            *ctx.inner.me.lock().unwrap_or_else(|p| p.into_inner()) = Some(l.contact_id.clone());
            run_all(handlers, &handlers.login, ctx.contact(l.contact_id)).await;
        }
        PuppetEvent::Logout(l) => {
            *ctx.inner.me.lock().unwrap_or_else(|p| p.into_inner()) = None;
            run_all(handlers, &handlers.logout, (ctx.contact(l.contact_id), l.data)).await;
        }
        PuppetEvent::Dirty(d) => ctx.forget(d.payload_type, &d.payload_id),
        PuppetEvent::Message(m) => match fetch_message(ctx, &m.message_id).await {
            Ok(payload) => route(handlers, Message { ctx: ctx.clone(), payload }).await,
            Err(e) => report(handlers, e).await,
        },
        PuppetEvent::Friendship(f) => {
            run_all(handlers, &handlers.friendship, Friendship { ctx: ctx.clone(), id: f.friendship_id }).await;
        }
        PuppetEvent::RoomInvite(i) => {
            let invitation = RoomInvitation { ctx: ctx.clone(), id: i.room_invitation_id };
            run_all(handlers, &handlers.room_invite, invitation).await;
        }
        PuppetEvent::RoomJoin(j) => {
            ctx.cache().rooms.remove(&j.room_id);
            let ev = RoomJoin {
                room: ctx.room(j.room_id),
                invitees: contacts(j.invitee_id_list),
                inviter: ctx.contact(j.inviter_id),
            };
            run_all(handlers, &handlers.room_join, ev).await;
        }
        PuppetEvent::RoomLeave(l) => {
            ctx.cache().rooms.remove(&l.room_id);
            let ev = RoomLeave {
                room: ctx.room(l.room_id),
                removees: contacts(l.removee_id_list),
                remover: ctx.contact(l.remover_id),
            };
            run_all(handlers, &handlers.room_leave, ev).await;
        }
        PuppetEvent::RoomTopic(t) => {
            ctx.cache().rooms.remove(&t.room_id);
            let ev = RoomTopic {
                room: ctx.room(t.room_id),
                new_topic: t.new_topic,
                old_topic: t.old_topic,
                changer: ctx.contact(t.changer_id),
            };
            run_all(handlers, &handlers.room_topic, ev).await;
        }
        PuppetEvent::Error(e) => report(handlers, Error::Handler(format!("server error event: {}", e.data))).await,
        PuppetEvent::Heartbeat(_) | PuppetEvent::Dong(_) | PuppetEvent::Ready(_) | PuppetEvent::RoomAnnounce(_) => {}
    }
}

async fn route(handlers: &Handlers, msg: Message) {
    run_all(handlers, &handlers.message, msg.clone()).await;
    if msg.is_self() {
        return;
    }
    for r in &handlers.routes {
        let result = match r {
            Route::Plain(Matcher::Text(t), h) if msg.text() == t => h(msg.clone()).await,
            Route::Plain(Matcher::Kind(k), h) if msg.kind() == *k => h(msg.clone()).await,
            Route::Captures(re, h) => match re.captures(msg.text()) {
                Some(c) => {
                    let caps = c.iter().map(|m| m.map(|m| m.as_str().to_owned()).unwrap_or_default()).collect();
                    h((msg.clone(), caps)).await
                }
                None => continue,
            },
            _ => continue,
        };
        if let Err(e) = result {
            report(handlers, e).await;
        }
        return;
    }
}
