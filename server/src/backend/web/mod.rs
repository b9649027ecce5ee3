//! The `web` backend: personal WeChat through the web-WeChat protocol (wx.qq.com, and the UOS
//! desktop variant of it) that itchat, wechat4u and openwechat speak. Spec: `web-wechat.md`.
//!
//! One account, one session: [`login`] gets it (QR scan, or a hot reload of the session kept in the
//! store, re-validated with `synccheck`), [`sync`] keeps it (`synccheck` long polls and `webwxsync`,
//! turning what arrives into events), [`send`] and [`media`] act in it. Ids are mapped by [`ids`] so
//! that the `@…` names, new on every login, do not leak into a bot's stored references where
//! something stabler exists.
//!
//! What is kept where: the session (hosts, cookies, tickets, sync keys) in the store's key-value
//! space (`web`/`session`), rewritten after every sync; messages in the store (with what is needed
//! to fetch their media or recall them); friend requests in the key-value space (`web.friendship`).
//! Contacts and rooms live in memory: they are fetched again at every login anyway, because their
//! `UserName`s change.

pub mod ids;
pub mod login;
pub mod media;
pub mod send;
pub mod session;
pub mod settings;
pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use puppet_proto::event::{DataPayload, LogoutEvent, PuppetEvent};
use puppet_proto::filebox::FileBox;
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId};
use puppet_proto::model::{
    Contact, ContactGender, ContactType, Friendship, ImageType, Location, Message, MiniProgram, PayloadType, Room,
    RoomMember, UrlLink,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use self::ids::IdMap;
use self::session::{Session, Wire, WireError, plain_text};
use self::settings::WebSettings;
use super::{Backend, BackendError, BackendResult, Outgoing};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::fetch::OutboundFetcher;
use crate::store::{MessageRecord, Store};
use crate::tasks::Tasks;

/// Key-value namespace of the session.
const NS: &str = "web";
/// Key-value namespace of friend requests.
const NS_FRIENDSHIP: &str = "web.friendship";

const NO_TAGS: &str = "web WeChat has no contact tags";
const NO_QUIT: &str = "web WeChat cannot leave a room (only the phone can)";
const NO_ANNOUNCE: &str = "web WeChat cannot read or set room announcements";
const NO_QRCODE: &str = "web WeChat cannot produce contact or room QR codes";
const NO_SEND_KIND: &str = "web WeChat sends text, images, videos and files only (no contact cards, links, \
     mini programs or locations)";
const NO_SEARCH: &str = "web WeChat cannot search strangers by phone or handle";

/// Where the account stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Offline,
    LoggingIn,
    Online,
}

/// The state of one account.
struct State {
    phase: Phase,
    session: Option<Session>,
    /// `User` of `webwxinit`.
    me: Value,
    /// Contacts and rooms by `UserName`.
    contacts: HashMap<String, Value>,
    ids: IdMap,
    /// Stops the running login/sync task.
    cancel: Option<CancellationToken>,
    generation: u64,
}

struct Inner {
    wire: Wire,
    sink: EventSink,
    store: Store,
    blobs: BlobStore,
    outbound: OutboundFetcher,
    tasks: Tasks,
    state: Mutex<State>,
}

/// The web backend. Cheap to clone.
#[derive(Clone)]
pub struct WebBackend {
    inner: Arc<Inner>,
}

/// What the store keeps of a message.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    message: Message,
    /// `MsgType`.
    msg_type: u32,
    #[serde(default)]
    app_msg_type: u32,
    /// The sender's `UserName` (media downloads name it).
    #[serde(default)]
    from: String,
    /// The receiver's `UserName` (recall names it).
    #[serde(default)]
    to: String,
    #[serde(default)]
    media_id: String,
    #[serde(default)]
    encry_file_name: String,
    /// A file's `FileSize` (forwarding a file names it).
    #[serde(default)]
    size: u64,
    /// The `ClientMsgId` of a message the bot sent (recall needs it).
    #[serde(default)]
    client_msg_id: String,
    /// The message's XML (links, mini programs), unescaped.
    #[serde(default)]
    xml: String,
}

/// A friend request as kept.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredFriendship {
    friendship: Friendship,
    /// The stranger's `UserName` in the session it came in.
    user_name: String,
}

impl WebBackend {
    /// A backend that logs in when started.
    pub fn new(
        settings: WebSettings,
        outbound: OutboundFetcher,
        store: Store,
        sink: EventSink,
        blobs: BlobStore,
        tasks: Tasks,
    ) -> anyhow::Result<Self> {
        let wire = Wire::new(settings)?;
        let state = State {
            phase: Phase::Offline,
            session: None,
            me: Value::Null,
            contacts: HashMap::new(),
            ids: IdMap::default(),
            cancel: None,
            generation: 0,
        };
        Ok(Self { inner: Arc::new(Inner { wire, sink, store, blobs, outbound, tasks, state: Mutex::new(state) }) })
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn emit(&self, event: PuppetEvent) {
        self.inner.sink.emit(event);
    }

    /// The live session, or FAILED_PRECONDITION.
    fn session(&self) -> BackendResult<Session> {
        let st = self.state();
        match (&st.session, st.phase) {
            (Some(s), Phase::Online) => Ok(s.clone()),
            _ => Err(BackendError::FailedPrecondition(
                "the web account is not logged in: call Start and scan the QR code".into(),
            )),
        }
    }

    /// Assigns (or finds) the puppet id of a `UserName`, using the contact's data when known.
    fn id_for(st: &mut State, user_name: &str) -> String {
        if let Some(id) = st.ids.id_of(user_name) {
            return id.to_owned();
        }
        let self_un = st.me["UserName"].as_str().unwrap_or_default().to_owned();
        let key = if user_name == self_un {
            st.me["Uin"].as_u64().map(|u| format!("uin:{u}"))
        } else {
            st.contacts.get(user_name).and_then(|c| ids::stable_key(c, None))
        };
        st.ids.assign(user_name, key)
    }

    /// The `UserName` behind a puppet id, or NOT_FOUND.
    fn user_name(&self, id: &str) -> BackendResult<String> {
        let st = self.state();
        st.ids.user_name_of(id).map(str::to_owned).ok_or_else(|| BackendError::not_found("contact or room", id))
    }

    /// Saves the session for a hot reload.
    fn persist(&self, session: &Session) {
        if let Err(e) = self.inner.store.kv().put(NS, "session", session) {
            tracing::warn!(error = %e, "the web session could not be saved; a restart will need a scan");
        }
    }

    fn forget_session(&self) {
        self.inner.store.kv().delete(NS, "session");
    }

    /// Ends the session: LOGOUT with `reason`, the stored session dropped (a restart shows a QR).
    fn logged_out(&self, reason: String) {
        let (was_online, me) = {
            let mut st = self.state();
            let was = st.phase == Phase::Online;
            st.phase = Phase::Offline;
            st.session = None;
            if let Some(c) = st.cancel.take() {
                c.cancel();
            }
            let un = st.me["UserName"].as_str().unwrap_or_default().to_owned();
            (was, st.ids.id_of(&un).unwrap_or_default().to_owned())
        };
        self.forget_session();
        tracing::warn!(was_online, "web WeChat session ended: {reason}");
        self.emit(PuppetEvent::Logout(LogoutEvent { contact_id: ContactId(me), data: reason }));
    }

    fn contact_payload(st: &mut State, user_name: &str) -> Option<Contact> {
        let c = st
            .contacts
            .get(user_name)
            .cloned()
            .or_else(|| (st.me["UserName"].as_str() == Some(user_name)).then(|| st.me.clone()))?;
        let id = Self::id_for(st, user_name);
        let s = |k: &str| plain_text(c[k].as_str().unwrap_or_default());
        let verify = c["VerifyFlag"].as_u64().unwrap_or(0);
        Some(Contact {
            id: ContactId(id),
            gender: match c["Sex"].as_u64() {
                Some(1) => ContactGender::Male,
                Some(2) => ContactGender::Female,
                _ => ContactGender::Unknown,
            },
            kind: if verify & 8 != 0 { ContactType::Official } else { ContactType::Individual },
            name: s("NickName"),
            alias: s("RemarkName"),
            handle: s("Alias"),
            province: s("Province"),
            city: s("City"),
            signature: s("Signature"),
            friend: c["ContactFlag"].as_u64().unwrap_or(0) & 1 == 1,
            star: c["StarFriend"].as_u64().unwrap_or(0) == 1,
            ..Default::default()
        })
    }

    fn room_payload(st: &mut State, user_name: &str) -> Option<Room> {
        let c = st.contacts.get(user_name).cloned()?;
        let id = Self::id_for(st, user_name);
        let members: Vec<String> = c["MemberList"]
            .as_array()
            .map(|l| l.iter().filter_map(|m| m["UserName"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let member_ids = members.iter().map(|m| ContactId(Self::member_id(st, user_name, m))).collect();
        let owner = c["ChatRoomOwner"].as_str().filter(|o| !o.is_empty()).map(str::to_owned).or_else(|| {
            // OwnerUin names the owner only when it is the bot.
            let own = c["IsOwner"].as_u64() == Some(1);
            own.then(|| st.me["UserName"].as_str().unwrap_or_default().to_owned())
        });
        let owner_id = owner.map(|o| ContactId(Self::member_id(st, user_name, &o))).unwrap_or_default();
        Some(Room {
            id: RoomId(id),
            topic: plain_text(c["NickName"].as_str().unwrap_or_default()),
            owner_id,
            member_ids,
            ..Default::default()
        })
    }

    /// The puppet id of a room member: as a contact if known, else by the nickname the room shows.
    fn member_id(st: &mut State, room: &str, member: &str) -> String {
        if st.ids.id_of(member).is_some() || st.contacts.contains_key(member) || st.me["UserName"] == member {
            return Self::id_for(st, member);
        }
        let m = st
            .contacts
            .get(room)
            .and_then(|r| r["MemberList"].as_array().and_then(|l| l.iter().find(|m| m["UserName"] == member).cloned()));
        let key = m.as_ref().and_then(|m| ids::stable_key(m, None));
        st.ids.assign(member, key)
    }

    /// Keeps a message in the store.
    fn keep(&self, stored: &Stored, conversation: &str) {
        match serde_json::to_vec(stored) {
            Ok(body) => {
                self.inner.store.messages().put(MessageRecord {
                    id: stored.message.id.0.clone(),
                    conversation: conversation.to_owned(),
                    time_ms: stored.message.timestamp_ms,
                    body,
                });
            }
            Err(e) => tracing::error!(error = %e, "a web message could not be encoded for the store"),
        }
    }

    async fn stored(&self, id: &MessageId) -> BackendResult<Stored> {
        let record = crate::backend::stored_message(&self.inner.store, id).await?;
        serde_json::from_slice(&record.body)
            .map_err(|e| BackendError::Internal(format!("stored message `{id}` is unreadable: {e}")))
    }

    /// A `UserName` to send to: a contact or room id of this session.
    fn target(&self, to: &ConversationId) -> BackendResult<String> {
        self.user_name(to.as_str())
    }

    /// Refreshes contacts/rooms through `webwxbatchgetcontact`, 50 per call.
    async fn batch_get(&self, session: &Session, user_names: &[String]) -> Result<Vec<Value>, WireError> {
        let mut out = Vec::new();
        for chunk in user_names.chunks(50) {
            let list: Vec<Value> = chunk.iter().map(|u| json!({"UserName": u, "EncryChatRoomId": ""})).collect();
            let body = json!({"BaseRequest": session.base_request(), "Count": list.len(), "List": list});
            let url = format!("{}/webwxbatchgetcontact", session.endpoints.base);
            let q = [
                ("type", "ex".to_owned()),
                ("r", session::now_ms().to_string()),
                ("lang", "zh_CN".into()),
                ("pass_ticket", session.pass_ticket.clone()),
            ];
            let (v, _) = self.inner.wire.post_json("webwxbatchgetcontact", session, &url, &q, &body).await?;
            out.extend(v["ContactList"].as_array().cloned().unwrap_or_default());
        }
        Ok(out)
    }

    async fn friendship_record(&self, id: &FriendshipId) -> BackendResult<StoredFriendship> {
        let kv = self.inner.store.clone();
        let key = id.as_str().to_owned();
        kv.read(move |s| s.kv().get::<StoredFriendship>(NS_FRIENDSHIP, &key))
            .await
            .map_err(BackendError::from)?
            .ok_or_else(|| BackendError::not_found("friendship", id))
    }
}

/// A wire error as a backend error: `Ret` codes that mean a dead session or "too often" get theirs.
impl From<WireError> for BackendError {
    fn from(e: WireError) -> Self {
        match &e {
            WireError::Transport { .. } => BackendError::Unavailable(e.to_string()),
            WireError::Malformed { .. } => BackendError::Internal(e.to_string()),
            WireError::Ret { ret: 1100..=1102, .. } => {
                BackendError::FailedPrecondition(format!("{e}: the web session has ended; log in again"))
            }
            WireError::Ret { ret: 1205, .. } => {
                BackendError::ResourceExhausted(format!("{e}: WeChat says this is too frequent; slow down"))
            }
            WireError::Ret { ret: 1204, .. } => {
                BackendError::InvalidArgument(format!("{e}: web WeChat cannot send to the bot itself (use filehelper)"))
            }
            WireError::Ret { .. } => BackendError::FailedPrecondition(e.to_string()),
            WireError::TooLarge { .. } => BackendError::ResourceExhausted(e.to_string()),
        }
    }
}

#[async_trait]
impl Backend for WebBackend {
    fn name(&self) -> &'static str {
        "web"
    }

    async fn start(&self) -> BackendResult<()> {
        let (token, generation) = {
            let mut st = self.state();
            if st.phase != Phase::Offline {
                return Ok(());
            }
            st.phase = Phase::LoggingIn;
            st.generation += 1;
            let token = self.inner.tasks.stop_signal().child_token();
            st.cancel = Some(token.clone());
            (token, st.generation)
        };
        let this = self.clone();
        self.inner.tasks.spawn_cancellable("web-session", async move {
            tokio::select! {
                _ = token.cancelled() => {}
                _ = this.clone().run(generation) => {}
            }
        });
        Ok(())
    }

    async fn stop(&self) -> BackendResult<()> {
        // Clients call Stop on every bot.stop(); the session stays (puppet-service#204).
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        let session = {
            let st = self.state();
            if st.phase == Phase::Offline {
                return Ok(());
            }
            st.session.clone()
        };
        if let Some(s) = session {
            let url = format!("{}/webwxlogout", s.endpoints.base);
            let q = [("redirect", "1".to_owned()), ("type", "1".into()), ("skey", s.skey.clone())];
            // The platform answers a redirect or nothing; either way the session is over for us.
            _ = self
                .inner
                .wire
                .get("webwxlogout", &url, &q, Some(&s.cookie_header()), &[], self.inner.wire.settings.poll_timeout)
                .await;
        }
        self.logged_out("logged out by request".into());
        Ok(())
    }

    async fn ding(&self, data: String) -> BackendResult<()> {
        self.emit(PuppetEvent::Dong(DataPayload { data }));
        Ok(())
    }

    async fn dirty_payload(&self, kind: PayloadType, id: String) -> BackendResult<()> {
        if matches!(kind, PayloadType::Contact | PayloadType::Room | PayloadType::RoomMember)
            && let Ok(un) = self.user_name(&id)
            && let Ok(session) = self.session()
        {
            let fresh = self.batch_get(&session, std::slice::from_ref(&un)).await?;
            let mut st = self.state();
            for c in fresh {
                if let Some(u) = c["UserName"].as_str() {
                    st.contacts.insert(u.to_owned(), c.clone());
                }
            }
        }
        self.emit(PuppetEvent::dirty(kind, id));
        Ok(())
    }

    async fn self_qrcode(&self) -> BackendResult<String> {
        Err(BackendError::PlatformLimit { op: "self_qrcode", reason: NO_QRCODE })
    }

    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        self.session()?;
        let mut st = self.state();
        let mut names: Vec<String> = st.contacts.keys().filter(|u| !ids::is_room(u)).cloned().collect();
        if let Some(me) = st.me["UserName"].as_str() {
            names.push(me.to_owned());
        }
        names.sort();
        Ok(names.iter().map(|u| ContactId(Self::id_for(&mut st, u))).collect())
    }

    async fn contact(&self, id: &ContactId) -> BackendResult<Contact> {
        let un = self.user_name(id.as_str())?;
        let mut st = self.state();
        if let Some(c) = Self::contact_payload(&mut st, &un) {
            return Ok(c);
        }
        // A room member who is no contact: what the room knows of them.
        let member = st.contacts.values().find_map(|r| {
            r["MemberList"].as_array().and_then(|l| l.iter().find(|m| m["UserName"] == un.as_str()).cloned())
        });
        match member {
            Some(m) => Ok(Contact {
                id: id.clone(),
                name: plain_text(m["NickName"].as_str().unwrap_or_default()),
                kind: ContactType::Individual,
                ..Default::default()
            }),
            None => Err(BackendError::not_found("contact", id)),
        }
    }

    async fn set_contact_alias(&self, id: &ContactId, alias: String) -> BackendResult<()> {
        let un = self.user_name(id.as_str())?;
        let session = self.session()?;
        let url = format!("{}/webwxoplog", session.endpoints.base);
        let body = json!({"BaseRequest": session.base_request(), "CmdId": 2, "RemarkName": alias, "UserName": un});
        let q = [("lang", "zh_CN".to_owned()), ("pass_ticket", session.pass_ticket.clone())];
        self.inner.wire.post_json("webwxoplog", &session, &url, &q, &body).await?;
        {
            let mut st = self.state();
            if let Some(c) = st.contacts.get_mut(&un) {
                c["RemarkName"] = Value::from(alias);
            }
        }
        self.emit(PuppetEvent::dirty(PayloadType::Contact, id.as_str()));
        Ok(())
    }

    async fn contact_avatar(&self, id: &ContactId) -> BackendResult<FileBox> {
        let un = self.user_name(id.as_str())?;
        self.avatar(&un, id.as_str()).await
    }

    async fn friendship_search_phone(&self, _phone: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::PlatformLimit { op: "friendship_search_phone", reason: NO_SEARCH })
    }

    async fn friendship_search_handle(&self, _handle: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::PlatformLimit { op: "friendship_search_handle", reason: NO_SEARCH })
    }

    async fn friendship(&self, id: &FriendshipId) -> BackendResult<Friendship> {
        Ok(self.friendship_record(id).await?.friendship)
    }

    async fn friendship_accept(&self, id: &FriendshipId) -> BackendResult<()> {
        let rec = self.friendship_record(id).await?;
        let session = self.session()?;
        let url = format!("{}/webwxverifyuser", session.endpoints.base);
        let body = json!({
            "BaseRequest": session.base_request(), "Opcode": 3, "VerifyUserListSize": 1,
            "VerifyUserList": [{"Value": rec.user_name, "VerifyUserTicket": rec.friendship.ticket}],
            "VerifyContent": "", "SceneListCount": 1, "SceneList": [33], "skey": session.skey
        });
        let q = [
            ("r", session::now_ms().to_string()),
            ("lang", "zh_CN".into()),
            ("pass_ticket", session.pass_ticket.clone()),
        ];
        self.inner.wire.post_json("webwxverifyuser", &session, &url, &q, &body).await?;
        Ok(())
    }

    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        Ok(self.stored(id).await?.message)
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        self.download_file(id).await
    }

    async fn message_image(&self, id: &MessageId, kind: ImageType) -> BackendResult<FileBox> {
        self.download_image(id, kind).await
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        let s = self.stored(id).await?;
        if s.msg_type != 49 || s.app_msg_type != 5 {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not a link")));
        }
        let t = |tag: &str| session::xml_tag(&s.xml, tag).unwrap_or_default().to_owned();
        Ok(UrlLink { title: t("title"), description: t("des"), url: t("url"), thumbnail_url: t("thumburl") })
    }

    async fn message_mini_program(&self, id: &MessageId) -> BackendResult<MiniProgram> {
        let s = self.stored(id).await?;
        if s.msg_type != 49 || !matches!(s.app_msg_type, 33 | 36) {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not a mini program")));
        }
        let t = |tag: &str| session::xml_tag(&s.xml, tag).unwrap_or_default().to_owned();
        Ok(MiniProgram {
            appid: t("appid"),
            title: t("title"),
            page_path: t("pagepath"),
            username: t("username"),
            description: t("des"),
            ..Default::default()
        })
    }

    async fn message_contact(&self, id: &MessageId) -> BackendResult<ContactId> {
        let s = self.stored(id).await?;
        if s.msg_type != 42 || s.media_id.is_empty() {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not a contact card")));
        }
        // The card's UserName (kept in `media_id`) is of the session the card came in.
        let mut st = self.state();
        Ok(ContactId(Self::id_for(&mut st, &s.media_id)))
    }

    async fn message_location(&self, id: &MessageId) -> BackendResult<Location> {
        let s = self.stored(id).await?;
        let a = |name: &str| session::xml_attr(&s.xml, name).unwrap_or_default().to_owned();
        if s.message.kind != puppet_proto::model::MessageType::Location || a("x").is_empty() {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not a location")));
        }
        Ok(Location {
            latitude: a("x").parse().unwrap_or_default(),
            longitude: a("y").parse().unwrap_or_default(),
            address: a("label"),
            name: a("poiname"),
            accuracy: 0.0,
        })
    }

    async fn message_recall(&self, id: &MessageId) -> BackendResult<bool> {
        let s = self.stored(id).await?;
        if s.client_msg_id.is_empty() {
            return Err(BackendError::FailedPrecondition(format!(
                "message `{id}` was not sent by this bot through web WeChat: only those can be recalled"
            )));
        }
        let session = self.session()?;
        let url = format!("{}/webwxrevokemsg", session.endpoints.base);
        let body = json!({"BaseRequest": session.base_request(), "ClientMsgId": s.client_msg_id,
            "SvrMsgId": id.as_str(), "ToUserName": s.to});
        match self.inner.wire.post_json("webwxrevokemsg", &session, &url, &[], &body).await {
            Ok(_) => Ok(true),
            // Too old (about two minutes) or already gone: the platform says no.
            Err(WireError::Ret { ret, .. }) if !(1100..=1102).contains(&ret) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    async fn message_forward(&self, to: &ConversationId, id: &MessageId) -> BackendResult<Option<MessageId>> {
        let s = self.stored(id).await?;
        match s.msg_type {
            1 => {
                let target = self.target(to)?;
                self.send_text(&target, to, s.message.text.clone(), Vec::new()).await.map(Some)
            }
            // Media already on WeChat's server is resent by its MediaId with Scene 2 (wechat4u's
            // forwardMsg): files, and images, videos and gifs whose MediaId is known (those the bot sent;
            // received ones carry none on the web protocol).
            3 | 43 | 47 | 49
                if !s.media_id.is_empty() && (s.msg_type != 49 || s.app_msg_type == 6 || s.app_msg_type == 0) =>
            {
                let target = self.target(to)?;
                use puppet_proto::model::MessageType as K;
                let kind = match s.msg_type {
                    3 => K::Image,
                    43 => K::Video,
                    47 => K::Emoticon,
                    _ => K::Attachment,
                };
                let file = (s.message.filename.clone(), s.size as usize);
                self.send_media(&target, to, kind, &s.media_id, file, 2).await.map(Some)
            }
            _ => Err(BackendError::Unsupported(
                "message_forward of this message (only text and media with a known MediaId: files, and images/videos the bot sent)",
            )),
        }
    }

    async fn send(&self, to: &ConversationId, content: Outgoing) -> BackendResult<Option<MessageId>> {
        let target = self.target(to)?;
        match content {
            Outgoing::Text { text, mentions } => self.send_text(&target, to, text, mentions).await.map(Some),
            Outgoing::File(fb) => self.send_file(&target, to, fb).await.map(Some),
            Outgoing::Contact(_) | Outgoing::MiniProgram(_) | Outgoing::Url(_) | Outgoing::Location(_) => {
                Err(BackendError::PlatformLimit { op: "send", reason: NO_SEND_KIND })
            }
        }
    }

    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        self.session()?;
        let mut st = self.state();
        let mut rooms: Vec<String> = st.contacts.keys().filter(|u| ids::is_room(u)).cloned().collect();
        rooms.sort();
        Ok(rooms.iter().map(|u| RoomId(Self::id_for(&mut st, u))).collect())
    }

    async fn room(&self, id: &RoomId) -> BackendResult<Room> {
        let un = self.user_name(id.as_str())?;
        let mut st = self.state();
        Self::room_payload(&mut st, &un).ok_or_else(|| BackendError::not_found("room", id))
    }

    async fn room_members(&self, id: &RoomId) -> BackendResult<Vec<ContactId>> {
        Ok(self.room(id).await?.member_ids)
    }

    async fn room_member(&self, room: &RoomId, member: &ContactId) -> BackendResult<RoomMember> {
        let room_un = self.user_name(room.as_str())?;
        let member_un = self.user_name(member.as_str())?;
        let st = self.state();
        let m = st
            .contacts
            .get(&room_un)
            .and_then(|r| {
                r["MemberList"].as_array().and_then(|l| l.iter().find(|m| m["UserName"] == member_un.as_str()).cloned())
            })
            .ok_or_else(|| BackendError::not_found("room member", member))?;
        Ok(RoomMember {
            id: member.clone(),
            name: plain_text(m["NickName"].as_str().unwrap_or_default()),
            room_alias: plain_text(m["DisplayName"].as_str().unwrap_or_default()),
            ..Default::default()
        })
    }

    async fn room_avatar(&self, room: &RoomId) -> BackendResult<FileBox> {
        let un = self.user_name(room.as_str())?;
        self.avatar(&un, room.as_str()).await
    }

    async fn room_add(&self, room: &RoomId, contacts: Vec<ContactId>, invite_only: bool) -> BackendResult<()> {
        let room_un = self.user_name(room.as_str())?;
        let list = contacts.iter().map(|c| self.user_name(c.as_str())).collect::<BackendResult<Vec<_>>>()?.join(",");
        let count =
            self.state().contacts.get(&room_un).and_then(|r| r["MemberList"].as_array().map(Vec::len)).unwrap_or(0);
        // Rooms above InviteStartCount (40) take invitations only.
        let (fun, field) = if invite_only || count > 40 {
            ("invitemember", "InviteMemberList")
        } else {
            ("addmember", "AddMemberList")
        };
        let session = self.session()?;
        let body = json!({"BaseRequest": session.base_request(), "ChatRoomName": room_un, field: list});
        self.update_room(&session, fun, body).await
    }

    async fn room_del(&self, room: &RoomId, contacts: Vec<ContactId>) -> BackendResult<()> {
        let room_un = self.user_name(room.as_str())?;
        let list = contacts.iter().map(|c| self.user_name(c.as_str())).collect::<BackendResult<Vec<_>>>()?.join(",");
        let session = self.session()?;
        let body = json!({"BaseRequest": session.base_request(), "ChatRoomName": room_un, "DelMemberList": list});
        self.update_room(&session, "delmember", body).await
    }

    async fn set_room_topic(&self, room: &RoomId, topic: String) -> BackendResult<()> {
        let room_un = self.user_name(room.as_str())?;
        let session = self.session()?;
        let body = json!({"BaseRequest": session.base_request(), "ChatRoomName": room_un, "NewTopic": topic});
        self.update_room(&session, "modtopic", body).await
    }

    async fn room_create(&self, contacts: Vec<ContactId>, topic: String) -> BackendResult<RoomId> {
        let members = contacts
            .iter()
            .map(|c| self.user_name(c.as_str()).map(|u| json!({"UserName": u})))
            .collect::<BackendResult<Vec<_>>>()?;
        let session = self.session()?;
        let url = format!("{}/webwxcreatechatroom", session.endpoints.base);
        let body = json!({"BaseRequest": session.base_request(), "MemberCount": members.len(), "MemberList": members, "Topic": topic});
        let q = [
            ("r", session::now_ms().to_string()),
            ("lang", "zh_CN".into()),
            ("pass_ticket", session.pass_ticket.clone()),
        ];
        let (v, _) = self.inner.wire.post_json("webwxcreatechatroom", &session, &url, &q, &body).await?;
        let room_un = v["ChatRoomName"]
            .as_str()
            .filter(|r| ids::is_room(r))
            .map(str::to_owned)
            .ok_or(BackendError::Internal("webwxcreatechatroom answered no ChatRoomName".into()))?;
        let fresh = self.batch_get(&session, std::slice::from_ref(&room_un)).await?;
        let mut st = self.state();
        for c in fresh {
            if let Some(u) = c["UserName"].as_str() {
                st.contacts.insert(u.to_owned(), c.clone());
            }
        }
        Ok(RoomId(Self::id_for(&mut st, &room_un)))
    }

    async fn room_quit(&self, _room: &RoomId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "room_quit", reason: NO_QUIT })
    }

    async fn room_qrcode(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::PlatformLimit { op: "room_qrcode", reason: NO_QRCODE })
    }

    async fn room_announce(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::PlatformLimit { op: "room_announce", reason: NO_ANNOUNCE })
    }

    async fn set_room_announce(&self, _room: &RoomId, _text: String) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "set_room_announce", reason: NO_ANNOUNCE })
    }

    async fn tag_contact_add(&self, _tag: &puppet_proto::ids::TagId, _contact: &ContactId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "tag_contact_add", reason: NO_TAGS })
    }

    async fn tag_contact_remove(&self, _tag: &puppet_proto::ids::TagId, _contact: &ContactId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "tag_contact_remove", reason: NO_TAGS })
    }

    async fn tag_delete(&self, _tag: &puppet_proto::ids::TagId) -> BackendResult<()> {
        Err(BackendError::PlatformLimit { op: "tag_delete", reason: NO_TAGS })
    }

    async fn tag_list(&self, _contact: Option<&ContactId>) -> BackendResult<Vec<puppet_proto::ids::TagId>> {
        Err(BackendError::PlatformLimit { op: "tag_list", reason: NO_TAGS })
    }

    async fn conversation_read(&self, id: &ConversationId, has_read: bool) -> BackendResult<bool> {
        if !has_read {
            return Err(BackendError::PlatformLimit {
                op: "conversation_read",
                reason: "web WeChat can mark a conversation read, not unread",
            });
        }
        let target = self.target(id)?;
        let session = self.session()?;
        let url = format!("{}/webwxstatusnotify", session.endpoints.base);
        let body = json!({"BaseRequest": session.base_request(), "Code": 1, "FromUserName": session.self_user_name,
            "ToUserName": target, "ClientMsgId": session::now_ms()});
        let q = [("lang", "zh_CN".to_owned()), ("pass_ticket", session.pass_ticket.clone())];
        self.inner.wire.post_json("webwxstatusnotify", &session, &url, &q, &body).await?;
        Ok(true)
    }
}

impl WebBackend {
    async fn update_room(&self, session: &Session, fun: &'static str, body: Value) -> BackendResult<()> {
        let url = format!("{}/webwxupdatechatroom", session.endpoints.base);
        let q = [("fun", fun.to_owned()), ("lang", "zh_CN".into()), ("pass_ticket", session.pass_ticket.clone())];
        self.inner.wire.post_json("webwxupdatechatroom", session, &url, &q, &body).await?;
        Ok(())
    }
}
