//! The `ilink` backend: a personal WeChat account through Tencent's official iLink bot API (the
//! "ClawBot" channel; reference client `@tencent-weixin/openclaw-weixin` 2.4.9, MIT).
//!
//! - Login ([`login`]): a QR through SCAN events (terminal and `/qrcode`), every platform status
//!   mapped to a Wechaty scan status with the platform's word in `data`; an expired QR is replaced
//!   at most `--ilink-qr-refreshes` times; a redirect is followed. A token given with
//!   `PUPPET_ILINK_BOT_TOKEN` skips the QR.
//! - Updates ([`sync`]): one long-poll loop per account with the server's suggested timeout,
//!   back-off after failures, stopped by `Stop` and shutdown. The bot token and `get_updates_buf`
//!   live in the store; a message is stored before the cursor moves past it and a message already
//!   stored is not emitted again, so a restart neither loses nor repeats one. A stale token (`-14`)
//!   is a `LOGOUT` with the reason, then a fresh QR.
//! - Sending ([`send`]): text and files (image, video, file) through the encrypted CDN ([`cdn`]),
//!   each carrying the conversation's latest `context_token`; the platform's session window and
//!   quota are tracked per conversation and a send outside them fails fast (`FAILED_PRECONDITION`).
//! - The platform has no rooms, friend requests, recall or contact details beyond the user id: those
//!   calls answer `UNIMPLEMENTED` with the reason.
//!
//! What is kept where (the account's store): `ilink/session` (token, bot id, API base),
//! `ilink/buf` (the cursor), `ilink.users/<user>` (context token, last message time, bot messages
//! since), messages as JSON records in the user's conversation.

pub mod api;
pub mod cdn;
pub mod login;
pub mod send;
pub mod settings;
pub mod sync;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use puppet_proto::event::{DataPayload, PuppetEvent};
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, MessageId, RoomId};
use puppet_proto::model::{Contact, ContactType, ImageType, Message, PayloadType, Room, RoomMember};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use self::api::Api;
use self::cdn::MediaRef;
use self::settings::IlinkSettings;
use super::{Backend, BackendError, BackendResult, Outgoing};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::metrics::IlinkMetrics;
use crate::store::{MessageRecord, Store};
use crate::tasks::Tasks;

const NO_ROOMS: &str = "iLink bots receive direct messages only";
const KV: &str = "ilink";
const USERS: &str = "ilink.users";

/// A logged-in session as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Session {
    /// The bot token (a secret: never logged).
    pub token: String,
    /// `ilink_bot_id` (`…@im.bot`).
    pub bot_id: String,
    /// The API base this session talks to (the login may name another).
    pub base: String,
    /// Who scanned the QR, when known.
    #[serde(default)]
    pub owner: Option<String>,
}

/// What the bot knows of a user who wrote to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct User {
    /// The latest `context_token`.
    pub context_token: Option<String>,
    /// When their latest message arrived, ms since the epoch.
    pub last_inbound_ms: u64,
    /// Bot messages sent to them since.
    pub sent_since: u32,
    /// When they first wrote.
    pub first_seen_ms: u64,
}

/// A message as its store record holds it.
#[derive(Debug, Serialize, Deserialize)]
struct Stored {
    message: Message,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    media: Option<MediaRef>,
    /// A quoted message's reference (`ref_msg`: `svr_id`, `title`, the quoted item), as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    quote: Option<serde_json::Value>,
    /// The file, once downloaded (or the one sent), as FileBox JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    file: Option<String>,
}

#[derive(Default)]
struct State {
    session: Option<Session>,
    /// The running login/poll task's cancel handle.
    running: Option<CancellationToken>,
    /// Counts session tasks started, so an ending task clears only its own handle.
    generation: u64,
}

struct Inner {
    settings: IlinkSettings,
    api: Api,
    sink: EventSink,
    blobs: BlobStore,
    metrics: IlinkMetrics,
    store: Store,
    tasks: Tasks,
    print_qr: bool,
    state: Mutex<State>,
    /// Sends one at a time, so the quota is counted exactly.
    sending: tokio::sync::Mutex<()>,
    /// user → (typing ticket, when fetched); bounded by [`send::TICKETS_KEPT`].
    typing_tickets: Mutex<std::collections::HashMap<String, (String, std::time::Instant)>>,
}

/// The backend. Cheap to clone.
#[derive(Clone)]
pub struct Ilink {
    inner: Arc<Inner>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Ilink {
    /// Builds the backend; nothing is contacted until `start`. `print_qr` draws login QRs on stdout.
    pub fn new(
        settings: IlinkSettings,
        sink: EventSink,
        blobs: BlobStore,
        metrics: IlinkMetrics,
        tasks: Tasks,
        store: Store,
        print_qr: bool,
    ) -> anyhow::Result<Self> {
        let api = Api::new(&settings.api_base, &settings.bot_agent)?;
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                api,
                sink,
                blobs,
                metrics,
                store,
                tasks,
                print_qr,
                state: Mutex::new(State::default()),
                sending: tokio::sync::Mutex::new(()),
                typing_tickets: Mutex::new(std::collections::HashMap::new()),
            }),
        })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn emit(&self, event: PuppetEvent) {
        self.inner.sink.emit(event);
    }

    fn session(&self) -> Option<Session> {
        self.state().session.clone()
    }

    fn online(&self, op: &str) -> BackendResult<Session> {
        self.session().ok_or_else(|| {
            BackendError::FailedPrecondition(format!("`{op}` needs the iLink bot logged in: scan the login QR first"))
        })
    }

    async fn user(&self, id: &str) -> BackendResult<Option<User>> {
        let id = id.to_owned();
        Ok(self.inner.store.read(move |s| s.kv().get::<User>(USERS, &id)).await?)
    }

    fn put_user(&self, id: &str, user: &User) -> BackendResult<()> {
        self.inner.store.kv().put(USERS, id, user)?;
        Ok(())
    }

    fn keep(&self, conversation: &str, stored: &Stored) -> BackendResult<()> {
        let body =
            serde_json::to_vec(stored).map_err(|e| BackendError::Internal(format!("encoding a message: {e}")))?;
        self.inner.store.messages().put(MessageRecord {
            id: stored.message.id.to_string(),
            conversation: conversation.to_owned(),
            time_ms: stored.message.timestamp_ms,
            body,
        });
        Ok(())
    }

    async fn stored(&self, id: &MessageId) -> BackendResult<Stored> {
        let record = crate::backend::stored_message(&self.inner.store, id).await?;
        serde_json::from_slice(&record.body).map_err(|e| {
            BackendError::Internal(format!(
                "stored message `{}` is unreadable: {e}",
                puppet_proto::ids::Shown(id.as_str())
            ))
        })
    }

    /// The file of a media message: from the blob store when fetched before, else downloaded from
    /// the CDN, decrypted and kept.
    async fn media_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        let mut stored = self.stored(id).await?;
        if let Some(fb) = stored.file.as_deref().and_then(|t| FileBox::from_json(t).ok()) {
            match &fb.source {
                FileBoxSource::Uuid(blob) if self.inner.blobs.touch(blob).is_err() => {}
                _ => return Ok(fb),
            }
        }
        let Some(media) = stored.media.clone() else {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` carries no file")));
        };
        let session = self.online("download")?;
        let api = self.inner.api.with_base(&session.base);
        let bytes = cdn::download(&api, &self.inner.settings.cdn_base, &media, self.inner.settings.max_media_bytes)
            .await
            .map_err(api::ApiError::into_backend)?;
        let meta = self.inner.blobs.put(&bytes).await?;
        let mut fb = FileBox::new(stored.message.filename.clone(), FileBoxSource::Uuid(meta.id));
        fb.size = Some(meta.size);
        stored.file = Some(fb.to_json());
        if let Ok(body) = serde_json::to_vec(&stored)
            && let Err(e) = self.inner.store.messages().update(id.as_str(), body).await
        {
            tracing::warn!(error = %e, "the downloaded file could not be recorded with its message");
        }
        Ok(fb)
    }

    fn spawn_session(&self) {
        let mut s = self.state();
        if s.running.as_ref().is_some_and(|c| !c.is_cancelled()) {
            return;
        }
        let cancel = self.inner.tasks.stop_signal().child_token();
        s.running = Some(cancel.clone());
        s.generation += 1;
        let generation = s.generation;
        drop(s);
        let this = self.clone();
        self.inner.tasks.spawn("ilink session", move |_| async move {
            this.run(cancel, generation).await;
        });
    }
}

#[async_trait]
impl Backend for Ilink {
    fn name(&self) -> &'static str {
        "ilink"
    }

    async fn start(&self) -> BackendResult<()> {
        self.spawn_session();
        Ok(())
    }

    async fn stop(&self) -> BackendResult<()> {
        // The login is kept (token and cursor stay in the store); polling stops until Start.
        let running = self.state().running.take();
        if let Some(c) = running {
            c.cancel();
        }
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        let (running, session) = {
            let mut s = self.state();
            (s.running.take(), s.session.take())
        };
        if let Some(c) = running {
            c.cancel();
        }
        if let Some(session) = session {
            self.forget_session(&session);
            self.emit(PuppetEvent::Logout(puppet_proto::event::LogoutEvent {
                contact_id: ContactId(session.bot_id),
                data: "logged out by a client; Start shows a new login QR".into(),
            }));
        }
        Ok(())
    }

    async fn ding(&self, data: String) -> BackendResult<()> {
        self.emit(PuppetEvent::Dong(DataPayload { data }));
        Ok(())
    }

    async fn dirty_payload(&self, kind: PayloadType, id: String) -> BackendResult<()> {
        self.emit(PuppetEvent::dirty(kind, id));
        Ok(())
    }

    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        let mut ids: Vec<ContactId> = self
            .inner
            .store
            .read(|s| s.kv().scan::<User>(USERS))
            .await?
            .into_iter()
            .map(|(k, _)| ContactId(k))
            .collect();
        if let Some(s) = self.session() {
            ids.insert(0, ContactId(s.bot_id));
        }
        Ok(ids)
    }

    async fn contact(&self, id: &ContactId) -> BackendResult<Contact> {
        if self.session().is_some_and(|s| s.bot_id == id.as_str()) {
            return Ok(Contact {
                id: id.clone(),
                kind: ContactType::Individual,
                name: "iLink bot".into(),
                friend: false,
                ..Default::default()
            });
        }
        if self.user(id.as_str()).await?.is_none() {
            return Err(BackendError::not_found("contact", id));
        }
        // The platform tells the user id only; the name is its first part.
        let name = id.as_str().split('@').next().unwrap_or(id.as_str()).to_owned();
        Ok(Contact { id: id.clone(), kind: ContactType::Individual, name, friend: true, ..Default::default() })
    }

    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        Ok(self.stored(id).await?.message)
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        self.media_file(id).await
    }

    async fn message_image(&self, id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        self.media_file(id).await
    }

    async fn message_recall(&self, _id: &MessageId) -> BackendResult<bool> {
        Err(BackendError::PlatformLimit { op: "message_recall", reason: "the iLink bot API cannot recall a message" })
    }

    async fn send(&self, to: &ConversationId, content: Outgoing) -> BackendResult<Option<MessageId>> {
        let mut outcome = crate::metrics::IlinkSendOutcome::failed;
        let result = self.send_to(to, content, &mut outcome).await;
        self.inner.metrics.send(outcome);
        result
    }

    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        Err(BackendError::PlatformLimit { op: "room_list", reason: NO_ROOMS })
    }

    async fn room(&self, _id: &RoomId) -> BackendResult<Room> {
        Err(BackendError::PlatformLimit { op: "room", reason: NO_ROOMS })
    }

    async fn room_add(&self, _room: &RoomId, _contacts: Vec<ContactId>, _invite_only: bool) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "room_add", reason: NO_ROOMS })
    }

    async fn room_del(&self, _room: &RoomId, _contacts: Vec<ContactId>) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "room_del", reason: NO_ROOMS })
    }

    async fn room_avatar(&self, _room: &RoomId) -> BackendResult<FileBox> {
        Err(BackendError::PlatformLimit { op: "room_avatar", reason: NO_ROOMS })
    }

    async fn room_create(&self, _contacts: Vec<ContactId>, _topic: String) -> BackendResult<RoomId> {
        Err(BackendError::PlatformLimit { op: "room_create", reason: NO_ROOMS })
    }

    async fn room_quit(&self, _room: &RoomId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "room_quit", reason: NO_ROOMS })
    }

    async fn set_room_topic(&self, _room: &RoomId, _topic: String) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "set_room_topic", reason: NO_ROOMS })
    }

    async fn room_qrcode(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::PlatformLimit { op: "room_qrcode", reason: NO_ROOMS })
    }

    async fn room_announce(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::PlatformLimit { op: "room_announce", reason: NO_ROOMS })
    }

    async fn set_room_announce(&self, _room: &RoomId, _text: String) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "set_room_announce", reason: NO_ROOMS })
    }

    async fn room_member(&self, _room: &RoomId, _member: &ContactId) -> BackendResult<RoomMember> {
        Err(BackendError::PlatformLimit { op: "room_member", reason: NO_ROOMS })
    }

    async fn room_members(&self, _room: &RoomId) -> BackendResult<Vec<ContactId>> {
        Err(BackendError::PlatformLimit { op: "room_members", reason: NO_ROOMS })
    }
}
