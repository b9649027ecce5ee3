//! The message loop (spec §2): `synccheck` long polls on the push host, `webwxsync` when it says
//! something is new, and what arrives turned into events — messages, friend requests, room
//! join/leave/topic (from the system texts and the member lists of `ModContactList`), DIRTY.
//!
//! retcode 1100 (logged out on the phone), 1101 (kicked, logged in elsewhere) and 1102 (cookies
//! refused) end the session with LOGOUT naming the reason; other failures are retried with back-off
//! a bounded number of times, then end it too.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use puppet_proto::event::{FriendshipEvent, MessageEvent, PuppetEvent, RoomJoinEvent, RoomLeaveEvent, RoomTopicEvent};
use puppet_proto::ids::{ContactId, FriendshipId, MessageId, RoomId};
use puppet_proto::model::{Friendship, FriendshipScene, FriendshipType, Message, MessageType, PayloadType};
use serde_json::{Value, json};

use super::session::{Session, WireError, now_ms, plain_text, xml_tag};
use super::{NS_FRIENDSHIP, Stored, StoredFriendship, WebBackend, ids};

/// Failed polls in a row before the session is given up.
const MAX_FAILURES: u32 = 6;

/// The words of a synccheck retcode.
fn retcode_reason(retcode: u32) -> String {
    let why = match retcode {
        1100 => "logged out on the phone",
        1101 => "the session was ended by WeChat (logged in elsewhere, kicked, or expired)",
        1102 => "WeChat refused the session's cookies",
        _ => "unknown reason",
    };
    format!("web WeChat ended the session: retcode {retcode} ({why})")
}

/// Hints from the system texts of one sync, by room `UserName`.
#[derive(Default)]
struct RoomHints {
    /// The inviter's name (or "你" for the bot) of joins.
    inviter: HashMap<String, String>,
    /// Who changed the topic.
    topic_by: HashMap<String, String>,
    /// Rooms whose system texts say members left or were removed (by the bot: "你").
    remover: HashMap<String, String>,
}

impl WebBackend {
    /// One synccheck: (retcode, selector).
    pub(super) async fn synccheck(&self, s: &Session) -> Result<(u32, u32), WireError> {
        let wire = &self.inner.wire;
        let url = format!("{}/synccheck", s.endpoints.push);
        let ms = now_ms();
        let q = [
            ("r", ms.to_string()),
            ("skey", s.skey.clone()),
            ("sid", s.sid.clone()),
            ("uin", s.uin.clone()),
            ("deviceid", s.device_id.clone()),
            ("synckey", s.synccheck_key()),
            ("_", ms.to_string()),
        ];
        let a = wire.get("synccheck", &url, &q, Some(&s.cookie_header()), &[], wire.settings.poll_timeout).await?;
        let field = |name: &str| {
            let key = format!("{name}:\"");
            let start = a.text.find(&key)? + key.len();
            a.text[start..].split('"').next()?.parse::<u32>().ok()
        };
        match (field("retcode"), field("selector")) {
            (Some(r), Some(sel)) => Ok((r, sel)),
            _ => Err(WireError::Malformed {
                what: "synccheck",
                detail: format!("{}", puppet_proto::ids::Shown(&a.text)),
            }),
        }
    }

    /// Keeps the session until it ends.
    pub(super) async fn sync_loop(&self) {
        let mut failures = 0u32;
        let mut idle_syncs = 0u32;
        loop {
            let Ok(s) = self.session() else { return };
            let step = match self.synccheck(&s).await {
                Ok((0, 0)) => Ok(()),
                Ok((0, _)) => match self.sync_once().await {
                    // synccheck keeps saying "new" while webwxsync brings nothing: a stale key or a
                    // selector no client understands (spec §2.1). Slow down instead of spinning.
                    Ok(false) => {
                        idle_syncs += 1;
                        if idle_syncs >= 3 {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Ok(())
                    }
                    Ok(true) => {
                        idle_syncs = 0;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
                Ok((retcode @ 1100..=1102, _)) => {
                    self.logged_out(retcode_reason(retcode));
                    return;
                }
                Ok((retcode, _)) => {
                    Err(WireError::Malformed { what: "synccheck", detail: format!("retcode {retcode}") })
                }
                Err(e) => Err(e),
            };
            match step {
                Ok(()) => failures = 0,
                Err(WireError::Ret { ret: ret @ 1100..=1102, .. }) => {
                    self.logged_out(retcode_reason(ret as u32));
                    return;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(failures, "web WeChat sync failed: {e}");
                    if failures >= MAX_FAILURES {
                        self.logged_out(format!(
                            "web WeChat stopped answering ({failures} failures in a row; last: {e})"
                        ));
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500 << failures.min(5))).await;
                }
            }
        }
    }

    /// One `webwxsync` and what it brought; whether it brought anything.
    async fn sync_once(&self) -> Result<bool, WireError> {
        let Ok(mut s) = self.session() else { return Ok(true) };
        let url = format!("{}/webwxsync", s.endpoints.base);
        let q = [
            ("sid", s.sid.clone()),
            ("skey", s.skey.clone()),
            ("pass_ticket", s.pass_ticket.clone()),
            ("lang", "zh_CN".into()),
        ];
        let body = json!({"BaseRequest": s.base_request(), "SyncKey": s.sync_key, "rr": -((now_ms() / 1000) as i64)});
        let (v, headers) = self.inner.wire.post_json("webwxsync", &s, &url, &q, &body).await?;
        s.absorb(&headers);
        if v["SyncKey"]["List"].as_array().is_some_and(|l| !l.is_empty()) {
            s.sync_key = v["SyncKey"].clone();
        }
        s.sync_check_key = if v["SyncCheckKey"]["List"].as_array().is_some_and(|l| !l.is_empty()) {
            v["SyncCheckKey"].clone()
        } else {
            s.sync_key.clone()
        };
        if let Some(k) = v["SKey"].as_str().filter(|k| !k.is_empty()) {
            s.skey = k.to_owned();
        }
        {
            let mut st = self.state();
            if st.session.is_none() {
                return Ok(true);
            }
            st.session = Some(s.clone());
        }
        self.persist(&s);
        let brought = ["AddMsgList", "ModContactList", "DelContactList"]
            .iter()
            .any(|k| v[*k].as_array().is_some_and(|l| !l.is_empty()));
        self.absorb_sync(&s, &v).await;
        Ok(brought)
    }

    async fn absorb_sync(&self, s: &Session, v: &Value) {
        let msgs = v["AddMsgList"].as_array().cloned().unwrap_or_default();
        let mut hints = RoomHints::default();
        for m in &msgs {
            if m["MsgType"].as_u64() == Some(10000) {
                let room = [m["FromUserName"].as_str(), m["ToUserName"].as_str()]
                    .into_iter()
                    .flatten()
                    .find(|u| ids::is_room(u));
                if let Some(room) = room {
                    room_hint(&mut hints, room, &plain_text(m["Content"].as_str().unwrap_or_default()));
                }
            }
        }
        // Room changes: ModContactList, plus rooms the system texts name (refetched).
        let mut changed: Vec<Value> = v["ModContactList"].as_array().cloned().unwrap_or_default();
        let listed: HashSet<String> =
            changed.iter().filter_map(|c| c["UserName"].as_str().map(str::to_owned)).collect();
        let hinted: Vec<String> = hints
            .inviter
            .keys()
            .chain(hints.topic_by.keys())
            .chain(hints.remover.keys())
            .filter(|r| !listed.contains(*r))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        if !hinted.is_empty() {
            match self.batch_get(s, &hinted).await {
                Ok(fresh) => changed.extend(fresh),
                Err(e) => tracing::warn!("could not refresh rooms named by system messages: {e}"),
            }
        }
        for c in changed {
            self.contact_changed(c, &hints);
        }
        for m in msgs {
            self.message_arrived(s, m).await;
        }
    }

    /// A contact or room changed: cache it, emit the room events its member diff means, DIRTY.
    fn contact_changed(&self, c: Value, hints: &RoomHints) {
        let Some(un) = c["UserName"].as_str().map(str::to_owned) else { return };
        let now = now_ms() / 1000;
        let mut events = Vec::new();
        {
            let mut st = self.state();
            let old = st.contacts.get(&un).cloned();
            // A room entry without members (some syncs) keeps the members known.
            let mut c = c;
            if ids::is_room(&un)
                && c["MemberList"].as_array().is_none_or(Vec::is_empty)
                && let Some(o) = &old
            {
                c["MemberList"] = o["MemberList"].clone();
            }
            st.contacts.insert(un.clone(), c.clone());
            let id = Self::id_for(&mut st, &un);
            if ids::is_room(&un) {
                let members = |v: &Value| -> Vec<String> {
                    v["MemberList"]
                        .as_array()
                        .map(|l| l.iter().filter_map(|m| m["UserName"].as_str().map(str::to_owned)).collect())
                        .unwrap_or_default()
                };
                if let Some(old) = &old {
                    let before: HashSet<String> = members(old).into_iter().collect();
                    let after = members(&c);
                    let joined: Vec<String> = after.iter().filter(|m| !before.contains(*m)).cloned().collect();
                    let after_set: HashSet<&String> = after.iter().collect();
                    let left: Vec<String> = before.iter().filter(|m| !after_set.contains(m)).cloned().collect();
                    let room_id = RoomId(id.clone());
                    if !joined.is_empty() {
                        let invitees = joined.iter().map(|m| ContactId(Self::member_id(&mut st, &un, m))).collect();
                        let inviter = hints
                            .inviter
                            .get(&un)
                            .and_then(|n| Self::find_by_name(&mut st, &un, n))
                            .unwrap_or_default();
                        events.push(PuppetEvent::RoomJoin(RoomJoinEvent {
                            invitee_id_list: invitees,
                            inviter_id: inviter,
                            room_id: room_id.clone(),
                            timestamp: now,
                        }));
                    }
                    if !left.is_empty() {
                        // The old entry still names them.
                        let removees = left
                            .iter()
                            .map(|m| {
                                st.ids.id_of(m).map(str::to_owned).unwrap_or_else(|| {
                                    let key = old["MemberList"]
                                        .as_array()
                                        .and_then(|l| l.iter().find(|x| x["UserName"] == m.as_str()))
                                        .and_then(|x| ids::stable_key(x, None));
                                    st.ids.assign(m, key)
                                })
                            })
                            .map(ContactId)
                            .collect();
                        let remover = hints
                            .remover
                            .get(&un)
                            .and_then(|n| Self::find_by_name(&mut st, &un, n))
                            .unwrap_or_default();
                        events.push(PuppetEvent::RoomLeave(RoomLeaveEvent {
                            removee_id_list: removees,
                            remover_id: remover,
                            room_id: room_id.clone(),
                            timestamp: now,
                        }));
                    }
                    let (t_old, t_new) = (
                        plain_text(old["NickName"].as_str().unwrap_or_default()),
                        plain_text(c["NickName"].as_str().unwrap_or_default()),
                    );
                    if t_old != t_new {
                        let changer = hints
                            .topic_by
                            .get(&un)
                            .and_then(|n| Self::find_by_name(&mut st, &un, n))
                            .unwrap_or_default();
                        events.push(PuppetEvent::RoomTopic(RoomTopicEvent {
                            changer_id: changer,
                            new_topic: t_new,
                            old_topic: t_old,
                            room_id,
                            timestamp: now,
                        }));
                    }
                }
                events.push(PuppetEvent::dirty(PayloadType::Room, id));
            } else {
                events.push(PuppetEvent::dirty(PayloadType::Contact, id));
            }
        }
        for e in events {
            self.emit(e);
        }
    }

    /// A member of `room` by the name a system text uses ("你" is the bot).
    fn find_by_name(st: &mut super::State, room: &str, name: &str) -> Option<ContactId> {
        if name == "你" || name.eq_ignore_ascii_case("you") {
            let me = st.me["UserName"].as_str()?.to_owned();
            return Some(ContactId(Self::id_for(st, &me)));
        }
        let member = st.contacts.get(room).and_then(|r| {
            r["MemberList"].as_array().and_then(|l| {
                l.iter()
                    .find(|m| {
                        plain_text(m["DisplayName"].as_str().unwrap_or_default()) == name
                            || plain_text(m["NickName"].as_str().unwrap_or_default()) == name
                    })
                    .and_then(|m| m["UserName"].as_str().map(str::to_owned))
            })
        })?;
        Some(ContactId(Self::member_id(st, room, &member)))
    }

    /// One AddMsgList entry.
    async fn message_arrived(&self, s: &Session, m: Value) {
        let Some(msg_id) = m["MsgId"].as_str().filter(|i| !i.is_empty()).map(str::to_owned) else { return };
        let msg_type = m["MsgType"].as_u64().unwrap_or(0) as u32;
        match msg_type {
            // Status notifications, VoIP, possible friends, system notices: nothing for a bot.
            51 | 40 | 50 | 52 | 53 | 9999 => return,
            _ => {}
        }
        if msg_type == 37 {
            self.friend_request(&msg_id, &m).await;
            return;
        }
        // Echoes of the bot's own sends and repeated syncs: the store has them already.
        match self.inner.store.messages().get_async(&msg_id).await {
            Ok(Some(_)) => return,
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "message lookup failed; handling it as new"),
        }
        let from = m["FromUserName"].as_str().unwrap_or_default().to_owned();
        let to = m["ToUserName"].as_str().unwrap_or_default().to_owned();
        let raw = m["Content"].as_str().unwrap_or_default().to_owned();
        let room_un = [&from, &to].into_iter().find(|u| ids::is_room(u)).cloned();
        // Room messages from others start with "@sender:<br/>".
        let (talker_un, content) = match &room_un {
            Some(r) if &from == r => match raw.split_once(":<br/>") {
                Some((p, rest)) if p.starts_with('@') && !p.contains(' ') => (p.to_owned(), rest.to_owned()),
                _ => (String::new(), raw.clone()),
            },
            _ => (from.clone(), raw.clone()),
        };
        if msg_type == 10000 {
            if let Some(r) = &room_un {
                let t = plain_text(&content);
                let mut h = RoomHints::default();
                room_hint(&mut h, r, &t);
                if !h.inviter.is_empty() || !h.topic_by.is_empty() || !h.remover.is_empty() {
                    return; // told by the room events
                }
            } else if plain_text(&content).starts_with("你已添加了") {
                self.friend_confirmed(&msg_id, &from, &m).await;
                return;
            }
        }
        // A sender the room does not list yet: refresh the room first.
        if let Some(r) = &room_un
            && !talker_un.is_empty()
        {
            let known = self.state().contacts.get(r).is_some_and(|c| {
                c["MemberList"].as_array().is_some_and(|l| l.iter().any(|x| x["UserName"] == talker_un.as_str()))
            });
            if !known && let Ok(fresh) = self.batch_get(s, std::slice::from_ref(r)).await {
                let mut st = self.state();
                for c in fresh {
                    if let Some(u) = c["UserName"].as_str() {
                        st.contacts.insert(u.to_owned(), c.clone());
                    }
                }
            }
        }
        if msg_type == 42
            && let Some(u) = m["RecommendInfo"]["UserName"].as_str().filter(|u| u.starts_with('@'))
        {
            let mut st = self.state();
            if !st.contacts.contains_key(u) {
                let mut card = m["RecommendInfo"].clone();
                card["ContactFlag"] = json!(0);
                st.contacts.insert(u.to_owned(), card);
            }
        }
        let app = m["AppMsgType"].as_u64().unwrap_or(0) as u32;
        let kind = match msg_type {
            1 if m["SubMsgType"].as_u64() == Some(48) => MessageType::Location,
            1 => MessageType::Text,
            3 => MessageType::Image,
            34 => MessageType::Audio,
            42 => MessageType::Contact,
            43 | 62 => MessageType::Video,
            47 => MessageType::Emoticon,
            48 => MessageType::Location,
            49 => match app {
                1 | 57 => MessageType::Text,
                5 => MessageType::Url,
                6 => MessageType::Attachment,
                8 => MessageType::Emoticon,
                17 => MessageType::Location,
                19 => MessageType::ChatHistory,
                33 | 36 => MessageType::MiniProgram,
                2000 => MessageType::Transfer,
                2001 => MessageType::RedEnvelope,
                _ => MessageType::Unknown,
            },
            10002 => MessageType::Recalled,
            _ => MessageType::Unknown,
        };
        let plain = plain_text(&content);
        let text = match kind {
            MessageType::Text if msg_type == 49 => xml_tag(&plain, "title").unwrap_or_default().to_owned(),
            MessageType::Recalled => xml_tag(&plain, "msgid").unwrap_or_default().to_owned(),
            // "<label>:\n/cgi-bin/…webwxgetpubliclinkimg…": the label is the text.
            MessageType::Location if msg_type == 1 => {
                plain.split_once(":\n").map_or(plain.clone(), |(l, _)| l.to_owned())
            }
            MessageType::Text | MessageType::Unknown | MessageType::Location => plain.clone(),
            _ => plain.clone(),
        };
        let (message, conversation) = {
            let mut st = self.state();
            let self_un = st.me["UserName"].as_str().unwrap_or_default().to_owned();
            let talker = if talker_un.is_empty() {
                String::new()
            } else if let Some(r) = &room_un {
                Self::member_id(&mut st, r, &talker_un)
            } else {
                Self::id_for(&mut st, &talker_un)
            };
            let talker = if from == self_un { Self::id_for(&mut st, &self_un) } else { talker };
            let mut mention_ids = Vec::new();
            if let (Some(r), MessageType::Text) = (&room_un, kind) {
                mention_ids = Self::mentions(&mut st, r, &text);
            }
            let (room_id, listener, conversation) = match &room_un {
                Some(r) => {
                    let rid = Self::id_for(&mut st, r);
                    (rid.clone(), String::new(), rid)
                }
                None => {
                    let l = Self::id_for(&mut st, &to);
                    let conv = if from == self_un { l.clone() } else { talker.clone() };
                    (String::new(), l, conv)
                }
            };
            let message = Message {
                id: MessageId(msg_id.clone()),
                kind,
                talker_id: ContactId(talker),
                listener_id: ContactId(listener),
                room_id: RoomId(room_id),
                text,
                filename: if kind == MessageType::Attachment {
                    plain_text(m["FileName"].as_str().unwrap_or_default())
                } else {
                    String::new()
                },
                mention_ids,
                timestamp_ms: m["CreateTime"].as_u64().map(|t| t * 1000).unwrap_or_else(now_ms),
            };
            (message, conversation)
        };
        let stored = Stored {
            message,
            msg_type,
            app_msg_type: app,
            from: from.clone(),
            to,
            // A card's shared contact rides where a media id would.
            media_id: if msg_type == 42 {
                m["RecommendInfo"]["UserName"].as_str().unwrap_or_default().to_owned()
            } else {
                m["MediaId"].as_str().unwrap_or_default().to_owned()
            },
            encry_file_name: m["EncryFileName"].as_str().unwrap_or_default().to_owned(),
            size: m["FileSize"].as_str().and_then(|n| n.parse().ok()).unwrap_or_default(),
            client_msg_id: String::new(),
            xml: match kind {
                MessageType::Location => plain_text(m["OriContent"].as_str().unwrap_or_default()),
                _ if msg_type == 49 => plain,
                _ => String::new(),
            },
        };
        self.keep(&stored, &conversation);
        self.emit(PuppetEvent::Message(MessageEvent { message_id: MessageId(msg_id) }));
    }

    /// Members @-mentioned in a room text: `@Name` followed by U+2005, a space or the end, where
    /// Name is a member's in-room name or nickname (web WeChat has no structured mention list).
    fn mentions(st: &mut super::State, room: &str, text: &str) -> Vec<ContactId> {
        let members: Vec<(String, Vec<String>)> = st
            .contacts
            .get(room)
            .and_then(|r| r["MemberList"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| {
                let un = m["UserName"].as_str()?.to_owned();
                let names = ["DisplayName", "NickName"]
                    .iter()
                    .map(|k| plain_text(m[k].as_str().unwrap_or_default()))
                    .filter(|n| !n.is_empty())
                    .collect();
                Some((un, names))
            })
            .collect();
        let mut out: Vec<ContactId> = Vec::new();
        for (un, names) in members {
            let hit = names.iter().any(|n| {
                let at = format!("@{n}");
                text.match_indices(&at).any(|(i, _)| {
                    let after = &text[i + at.len()..];
                    after.is_empty() || after.starts_with('\u{2005}') || after.starts_with(' ')
                })
            });
            if hit {
                let id = ContactId(Self::member_id(st, room, &un));
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    /// Whether a friendship record exists already (a repeated sync).
    async fn friendship_known(&self, id: &str) -> bool {
        let store = self.inner.store.clone();
        let key = id.to_owned();
        matches!(store.read(move |s| s.kv().get::<StoredFriendship>(NS_FRIENDSHIP, &key)).await, Ok(Some(_)))
    }

    fn keep_friendship(&self, rec: &StoredFriendship) {
        let id = rec.friendship.id.clone();
        if let Err(e) = self.inner.store.kv().put(NS_FRIENDSHIP, id.as_str(), rec) {
            tracing::warn!(error = %e, "a friendship could not be stored");
        }
        self.emit(PuppetEvent::Friendship(FriendshipEvent { friendship_id: id }));
    }

    /// "你已添加了X，现在可以开始聊天了。": a FRIENDSHIP (confirm) with the new friend.
    async fn friend_confirmed(&self, msg_id: &str, from: &str, m: &Value) {
        if self.friendship_known(msg_id).await {
            return;
        }
        let contact_id = {
            let mut st = self.state();
            Self::id_for(&mut st, from)
        };
        let friendship = Friendship {
            id: FriendshipId(msg_id.to_owned()),
            contact_id: ContactId(contact_id),
            kind: FriendshipType::Confirm,
            timestamp_ms: m["CreateTime"].as_u64().map(|t| t * 1000).unwrap_or_else(now_ms),
            ..Default::default()
        };
        self.keep_friendship(&StoredFriendship { friendship, user_name: from.to_owned() });
    }

    /// MsgType 37: a FRIENDSHIP (receive), kept in the store.
    async fn friend_request(&self, msg_id: &str, m: &Value) {
        if self.friendship_known(msg_id).await {
            return;
        }
        let info = &m["RecommendInfo"];
        let Some(un) = info["UserName"].as_str().filter(|u| !u.is_empty()).map(str::to_owned) else { return };
        let contact_id = {
            let mut st = self.state();
            let mut stranger = info.clone();
            stranger["ContactFlag"] = json!(0);
            st.contacts.entry(un.clone()).or_insert(stranger);
            Self::id_for(&mut st, &un)
        };
        let ticket = info["Ticket"].as_str().filter(|t| !t.is_empty()).or(m["Ticket"].as_str()).unwrap_or_default();
        let friendship = Friendship {
            id: FriendshipId(msg_id.to_owned()),
            contact_id: ContactId(contact_id),
            hello: plain_text(info["Content"].as_str().unwrap_or_default()),
            kind: FriendshipType::Receive,
            ticket: ticket.to_owned(),
            scene: FriendshipScene::from_wire(info["Scene"].as_i64().unwrap_or(0) as i32).unwrap_or_default(),
            timestamp_ms: m["CreateTime"].as_u64().map(|t| t * 1000).unwrap_or_else(now_ms),
            ..Default::default()
        };
        self.keep_friendship(&StoredFriendship { friendship, user_name: un });
    }
}

/// Reads a room system text (zh and en): who invited, who changed the topic, who removed.
fn room_hint(h: &mut RoomHints, room: &str, text: &str) {
    let quoted = |t: &str| -> Vec<String> {
        t.split('"').enumerate().filter(|(i, _)| i % 2 == 1).map(|(_, s)| s.to_owned()).collect()
    };
    if text.contains("加入了群聊") || text.contains("加入群聊") {
        let q = quoted(text);
        let inviter = if text.starts_with("你邀请") { Some("你".to_owned()) } else { q.first().cloned() };
        if text.contains("通过扫描") {
            // "B"通过扫描"A"分享的二维码加入群聊
            if let Some(a) = q.get(1) {
                h.inviter.insert(room.to_owned(), a.clone());
            }
        } else if let Some(i) = inviter {
            h.inviter.insert(room.to_owned(), i);
        }
    } else if let Some(pos) = text.find("修改群名为") {
        let who = text[..pos].trim_matches('"').to_owned();
        h.topic_by.insert(room.to_owned(), who);
    } else if text.contains("移出了群聊") {
        let who =
            if text.starts_with('你') { "你".to_owned() } else { quoted(text).first().cloned().unwrap_or_default() };
        h.remover.insert(room.to_owned(), who);
    } else if let Some((who, _)) = text.split_once(" invited ") {
        h.inviter.insert(room.to_owned(), who.trim_matches('"').to_owned());
    } else if let Some((who, _)) = text.split_once(" changed the group name to ") {
        h.topic_by.insert(room.to_owned(), who.trim_matches('"').to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_texts_name_who_did_it() {
        let mut h = RoomHints::default();
        room_hint(&mut h, "@@r", "\"Alice\"邀请\"Frank\"加入了群聊");
        assert_eq!(h.inviter["@@r"], "Alice");
        room_hint(&mut h, "@@s", "你邀请\"Frank\"加入了群聊");
        assert_eq!(h.inviter["@@s"], "你");
        room_hint(&mut h, "@@t", "\"Bob\"修改群名为“New”");
        assert_eq!(h.topic_by["@@t"], "Bob");
        room_hint(&mut h, "@@u", "你将\"Erin\"移出了群聊");
        assert_eq!(h.remover["@@u"], "你");
        room_hint(&mut h, "@@v", "\"Bob\"通过扫描\"Alice\"分享的二维码加入群聊");
        assert_eq!(h.inviter["@@v"], "Alice");
    }

    #[test]
    fn mentions_end_at_u2005_a_space_or_the_end() {
        let room = json!({"UserName": "@@room", "NickName": "R", "MemberList": [
            {"UserName": "@me", "NickName": "PuppetBot", "DisplayName": ""},
            {"UserName": "@al", "NickName": "Alice", "DisplayName": "Ali"},
            {"UserName": "@bo", "NickName": "Bob", "DisplayName": ""},
        ]});
        let mut st = super::super::State {
            phase: super::super::Phase::Online,
            session: None,
            me: json!({"UserName": "@me", "NickName": "PuppetBot", "Uin": 1}),
            contacts: [("@@room".to_owned(), room)].into_iter().collect(),
            ids: Default::default(),
            cancel: None,
            generation: 0,
        };
        let me = WebBackend::id_for(&mut st, "@me");
        let al = WebBackend::member_id(&mut st, "@@room", "@al");
        let bo = WebBackend::member_id(&mut st, "@@room", "@bo");
        assert_eq!(WebBackend::mentions(&mut st, "@@room", "@PuppetBot\u{2005}hi"), vec![ContactId(me.clone())]);
        assert_eq!(WebBackend::mentions(&mut st, "@@room", "hi @Ali how"), vec![ContactId(al.clone())]);
        assert_eq!(WebBackend::mentions(&mut st, "@@room", "ping @Bob"), vec![ContactId(bo)]);
        assert!(WebBackend::mentions(&mut st, "@@room", "@Bobby hi and a@Alicex").is_empty());
        let both = WebBackend::mentions(&mut st, "@@room", "@Alice @PuppetBot");
        assert!(both.contains(&ContactId(me)) && both.contains(&ContactId(al)));
    }

    #[test]
    fn retcodes_are_explained() {
        assert!(retcode_reason(1101).contains("1101"));
        assert!(retcode_reason(1100).contains("phone"));
    }
}
