//! OneBot actions: parameters checked and translated into backend calls.
//!
//! Answers: `{"status": "ok", "retcode": 0, "data": …}`; `{"status": "async", "retcode": 1}` for
//! `_async` and `_rate_limited` actions; otherwise `{"status": "failed", "retcode": …, "wording": …}`
//! with retcode **1400** for a malformed request (the wording names the parameter), **1404** for an
//! unknown action or something this account's backend (or WeChat) cannot do, **1403** when the
//! platform refuses, **1500** for anything else. Every answer echoes the request's `echo`.

use std::sync::Arc;

use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, Shown};
use puppet_proto::model::{ContactGender, UrlLink};
use serde_json::{Map, Value, json};

use super::Core;
use super::ids::Kind;
use super::message::{self, Segment, type_name};
use crate::backend::{BackendError, Outgoing};

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// OneBot's `retcode`.
    pub retcode: i64,
    /// What a person reads.
    pub wording: String,
}

impl Failure {
    /// A malformed request (1400).
    pub fn bad(wording: impl Into<String>) -> Self {
        Self { retcode: 1400, wording: wording.into() }
    }
    /// Not possible here (1404).
    pub fn unsupported(wording: impl Into<String>) -> Self {
        Self { retcode: 1404, wording: wording.into() }
    }
}

impl From<crate::store::StoreError> for Failure {
    fn from(e: crate::store::StoreError) -> Self {
        Self { retcode: 1500, wording: e.to_string() }
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        let retcode = match &e {
            BackendError::Unsupported(_) | BackendError::PlatformLimit { .. } => 1404,
            BackendError::InvalidArgument(_) | BackendError::NotFound { .. } | BackendError::Absent(_) => 1400,
            BackendError::PermissionDenied(_) | BackendError::Unauthenticated(_) => 1403,
            _ => 1500,
        };
        let wording = match &e {
            BackendError::Unsupported(op) => format!("this account's backend cannot do `{op}`"),
            other => other.to_string(),
        };
        Self { retcode, wording }
    }
}

/// An action's result.
pub type ActionResult = Result<Value, Failure>;

/// The reply JSON for `result`, with `echo` when given.
pub fn reply(result: &ActionResult, echo: Option<&Value>) -> Value {
    let mut v = match result {
        Ok(data) => json!({"status": "ok", "retcode": 0, "data": data, "msg": "", "wording": ""}),
        Err(f) if f.retcode == 1 => json!({"status": "async", "retcode": 1, "data": null}),
        Err(f) => {
            json!({"status": "failed", "retcode": f.retcode, "data": null, "msg": msg(f.retcode), "wording": f.wording})
        }
    };
    if let Some(e) = echo {
        v["echo"] = e.clone();
    }
    v
}

fn msg(retcode: i64) -> &'static str {
    match retcode {
        1400 => "BAD_REQUEST",
        1403 => "FORBIDDEN",
        1404 => "NOT_SUPPORTED",
        _ => "FAILED",
    }
}

/// The "accepted, running in the background" answer of `_async` and `_rate_limited` actions.
pub fn accepted() -> Failure {
    Failure { retcode: 1, wording: String::new() }
}

/// Every action this front door knows (the HTTP API answers 404 for others).
pub const ACTIONS: &[&str] = &[
    "send_private_msg",
    "send_group_msg",
    "send_msg",
    "delete_msg",
    "get_msg",
    "get_login_info",
    "get_stranger_info",
    "get_friend_list",
    "get_group_info",
    "get_group_list",
    "get_group_member_info",
    "get_group_member_list",
    "set_group_kick",
    "set_group_name",
    "set_group_leave",
    "set_friend_add_request",
    "set_group_add_request",
    "get_image",
    "can_send_image",
    "can_send_record",
    "get_status",
    "get_version_info",
    ".handle_quick_operation",
];

/// Whether `action` (with an `_async` or `_rate_limited` suffix or not) is known.
pub fn known(action: &str) -> bool {
    ACTIONS.contains(&base_action(action).0)
}

/// The action without its suffix, and the suffix.
pub fn base_action(action: &str) -> (&str, &str) {
    for suffix in ["_async", "_rate_limited"] {
        if let Some(b) = action.strip_suffix(suffix)
            && ACTIONS.contains(&b)
        {
            return (b, suffix);
        }
    }
    (action, "")
}

/// Parameters, read with the checks every action shares.
pub struct Params<'a>(pub &'a Map<String, Value>);

impl Params<'_> {
    fn get(&self, k: &str) -> Option<&Value> {
        self.0.get(k).filter(|v| !v.is_null())
    }

    /// An integer (a JSON number, or a string of digits as form parameters are).
    pub fn opt_int(&self, k: &str) -> Result<Option<i64>, Failure> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) => {
                n.as_i64().map(Some).ok_or_else(|| Failure::bad(format!("`{k}` must be an integer, not {n}")))
            }
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Failure::bad(format!("`{k}` must be an integer, not \"{}\"", Shown(s)))),
            Some(other) => Err(Failure::bad(format!("`{k}` must be an integer, not {}", type_name(other)))),
        }
    }

    /// A required integer.
    pub fn int(&self, k: &str) -> Result<i64, Failure> {
        self.opt_int(k)?.ok_or_else(|| Failure::bad(format!("`{k}` is required")))
    }

    /// A string (numbers are written out).
    pub fn opt_str(&self, k: &str) -> Result<Option<String>, Failure> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(Value::Number(n)) => Ok(Some(n.to_string())),
            Some(other) => Err(Failure::bad(format!("`{k}` must be a string, not {}", type_name(other)))),
        }
    }

    /// A required string.
    pub fn str(&self, k: &str) -> Result<String, Failure> {
        self.opt_str(k)?.filter(|s| !s.is_empty()).ok_or_else(|| Failure::bad(format!("`{k}` is required")))
    }

    /// A boolean (`true`/`false`, `1`/`0`, or those as strings).
    pub fn bool_or(&self, k: &str, default: bool) -> Result<bool, Failure> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(Value::Number(n)) if n.as_i64() == Some(0) => Ok(false),
            Some(Value::Number(n)) if n.as_i64() == Some(1) => Ok(true),
            Some(Value::String(s)) if matches!(s.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(Value::String(s)) if matches!(s.as_str(), "false" | "0" | "no") => Ok(false),
            Some(other) => Err(Failure::bad(format!("`{k}` must be a boolean, not {}", shown_value(other)))),
        }
    }
}

fn shown_value(v: &Value) -> String {
    match v {
        Value::String(s) => format!("\"{}\"", Shown(s)),
        Value::Number(n) => n.to_string(),
        other => type_name(other).to_owned(),
    }
}

fn gender(g: ContactGender) -> &'static str {
    match g {
        ContactGender::Male => "male",
        ContactGender::Female => "female",
        _ => "unknown",
    }
}

impl Core {
    /// Runs `action` with `params`: the entry point of every transport. `_async` and
    /// `_rate_limited` actions are checked to be known, queued (bounded by `PUPPET_ONEBOT_BACKLOG`)
    /// and answered with `async` at once.
    pub async fn dispatch(self: &Arc<Self>, action: &str, params: &Value) -> ActionResult {
        let (base, suffix) = base_action(action);
        if !ACTIONS.contains(&base) {
            return Err(Failure::unsupported(format!("unknown action `{}`", Shown(action))));
        }
        if !params.is_object() && !params.is_null() {
            return Err(Failure::bad(format!("`params` must be an object, not {}", type_name(params))));
        }
        match suffix {
            "_async" => {
                let Ok(permit) = self.backlog.clone().try_acquire_owned() else {
                    return Err(Failure { retcode: 1500, wording: "too many actions are queued; retry later".into() });
                };
                let (core, base, params) = (self.clone(), base.to_owned(), params.clone());
                self.tasks.spawn_cancellable("onebot-async-action", async move {
                    if let Err(f) = core.call(&base, &params).await {
                        tracing::info!(action = %base, wording = %f.wording, "an async OneBot action failed");
                    }
                    drop(permit);
                });
                Err(accepted())
            }
            "_rate_limited" => match self.rate_limited.try_send((base.to_owned(), params.clone())) {
                Ok(()) => Err(accepted()),
                Err(_) => Err(Failure {
                    retcode: 1500,
                    wording: "too many rate-limited actions are queued; retry later".into(),
                }),
            },
            _ => self.call(base, params).await,
        }
    }

    /// Runs a known action now.
    pub async fn call(&self, action: &str, params: &Value) -> ActionResult {
        let empty = Map::new();
        let p = Params(params.as_object().unwrap_or(&empty));
        match action {
            "send_private_msg" => {
                let user = self.contact_param(&p, "user_id").await?;
                let segs = self.message_param(&p)?;
                self.send(ConversationId::from(user.as_str()), None, segs).await
            }
            "send_group_msg" => {
                let room = self.room_param(&p, "group_id").await?;
                let segs = self.message_param(&p)?;
                self.send(ConversationId::from(room.as_str()), Some(room), segs).await
            }
            "send_msg" => {
                let kind = p.opt_str("message_type")?;
                let group = match kind.as_deref() {
                    Some("group") => true,
                    Some("private") => false,
                    None => p.opt_int("group_id")?.is_some(),
                    Some(other) => {
                        return Err(Failure::bad(format!(
                            "`message_type` must be private or group, not \"{}\"",
                            Shown(other)
                        )));
                    }
                };
                let segs = self.message_param(&p)?;
                if group {
                    let room = self.room_param(&p, "group_id").await?;
                    self.send(ConversationId::from(room.as_str()), Some(room), segs).await
                } else {
                    let user = self.contact_param(&p, "user_id").await?;
                    self.send(ConversationId::from(user.as_str()), None, segs).await
                }
            }
            "delete_msg" => {
                let id = self.message_id_param(&p, "message_id").await?;
                match self.backend.message_recall(&id).await? {
                    true => Ok(Value::Null),
                    false => Err(Failure::unsupported("WeChat refused to recall the message (too old to recall)")),
                }
            }
            "get_msg" => {
                let n = p.int("message_id")?;
                let id = self.message_id_param(&p, "message_id").await?;
                let msg = self.backend.message(&id).await?;
                let segs =
                    self.segments_of(&msg, n).await.map_err(|e| Failure { retcode: 1500, wording: e.to_string() })?;
                let user = self.ids.num(Kind::User, msg.talker_id.as_str()).await?;
                let nickname = self.backend.contact(&msg.talker_id).await.map(|c| c.name).unwrap_or_default();
                let mut v = json!({
                    "time": (msg.timestamp_ms / 1000) as i64,
                    "message_type": if msg.room_id.as_str().is_empty() { "private" } else { "group" },
                    "message_id": n,
                    "real_id": n,
                    "sender": {"user_id": user, "nickname": nickname},
                    "message": self.format(&segs),
                    "raw_message": message::raw(&segs),
                    "recalled": msg.kind == puppet_proto::model::MessageType::Recalled,
                });
                if !msg.room_id.as_str().is_empty() {
                    v["group_id"] = json!(self.ids.num(Kind::Group, msg.room_id.as_str()).await?);
                }
                Ok(v)
            }
            "get_login_info" => {
                let me = self
                    .me()
                    .ok_or_else(|| Failure { retcode: 1500, wording: "the account is not logged in".into() })?;
                let user = self.ids.num(Kind::User, me.as_str()).await?;
                let nickname = self.backend.contact(&me).await.map(|c| c.name).unwrap_or_default();
                Ok(json!({"user_id": user, "nickname": nickname}))
            }
            "get_stranger_info" => {
                let n = p.int("user_id")?;
                let c = self.contact_param(&p, "user_id").await?;
                let c = self.backend.contact(&c).await?;
                Ok(json!({"user_id": n, "nickname": c.name, "sex": gender(c.gender), "age": 0}))
            }
            "get_friend_list" => {
                let mut out = Vec::new();
                for id in self.backend.contact_list().await? {
                    let Ok(c) = self.backend.contact(&id).await else { continue };
                    if !c.friend || Some(&id) == self.me().as_ref() {
                        continue;
                    }
                    let user = self.ids.num(Kind::User, id.as_str()).await?;
                    out.push(json!({"user_id": user, "nickname": c.name, "remark": c.alias}));
                }
                Ok(Value::Array(out))
            }
            "get_group_info" => {
                let room = self.room_param(&p, "group_id").await?;
                self.group_info(&room).await
            }
            "get_group_list" => {
                let mut out = Vec::new();
                for r in self.backend.room_list().await? {
                    out.push(self.group_info(&r).await?);
                }
                Ok(Value::Array(out))
            }
            "get_group_member_info" => {
                let room = self.room_param(&p, "group_id").await?;
                let user = self.contact_param(&p, "user_id").await?;
                self.member_info(&room, &user).await
            }
            "get_group_member_list" => {
                let room = self.room_param(&p, "group_id").await?;
                let mut out = Vec::new();
                for m in self.backend.room_members(&room).await? {
                    out.push(self.member_info(&room, &m).await?);
                }
                Ok(Value::Array(out))
            }
            "set_group_kick" => {
                let room = self.room_param(&p, "group_id").await?;
                let user = self.contact_param(&p, "user_id").await?;
                self.backend.room_del(&room, vec![user]).await?;
                Ok(Value::Null)
            }
            "set_group_name" => {
                let room = self.room_param(&p, "group_id").await?;
                let name = p.str("group_name")?;
                self.backend.set_room_topic(&room, name).await?;
                Ok(Value::Null)
            }
            "set_group_leave" => {
                let room = self.room_param(&p, "group_id").await?;
                if p.bool_or("is_dismiss", false)? {
                    return Err(Failure::unsupported(
                        "WeChat rooms cannot be dismissed by a bot; leave with is_dismiss false",
                    ));
                }
                self.backend.room_quit(&room).await?;
                Ok(Value::Null)
            }
            "set_friend_add_request" => {
                let flag = p.str("flag")?;
                if !p.bool_or("approve", true)? {
                    return Err(Failure::unsupported(
                        "WeChat has no way to decline a friend request: leave it unanswered instead",
                    ));
                }
                let remark = p.opt_str("remark")?.unwrap_or_default();
                let id = FriendshipId::from(flag);
                let f = self.backend.friendship(&id).await?;
                self.backend.friendship_accept(&id).await?;
                if !remark.is_empty() {
                    self.backend.set_contact_alias(&f.contact_id, remark).await?;
                }
                Ok(Value::Null)
            }
            "set_group_add_request" => {
                let flag = p.str("flag")?;
                let sub_type = p.opt_str("sub_type")?.or(p.opt_str("type")?).unwrap_or_else(|| "invite".into());
                if sub_type != "invite" {
                    return Err(Failure::unsupported(format!(
                        "WeChat has no requests to join a room (`sub_type` \"{}\"); only invitations (invite)",
                        Shown(&sub_type)
                    )));
                }
                if !p.bool_or("approve", true)? {
                    return Err(Failure::unsupported(
                        "WeChat has no way to decline a room invitation: leave it unanswered instead",
                    ));
                }
                self.backend.room_invitation_accept(&RoomInvitationId::from(flag)).await?;
                Ok(Value::Null)
            }
            "get_image" => {
                let file = p.str("file")?;
                let n: i64 = file.split('.').next().and_then(|n| n.parse().ok()).ok_or_else(|| {
                    Failure::bad(format!("`file` \"{}\" is not a file this account gave out", Shown(&file)))
                })?;
                let id = self.message_of(n, "file").await?;
                let msg = self.backend.message(&id).await?;
                let url = self.download_url(n).ok_or_else(|| {
                    Failure::unsupported("no listener serves /download: set PUPPET_ONEBOT_HTTP or PUPPET_ONEBOT_WS")
                })?;
                Ok(json!({"file": url, "url": url, "filename": msg.filename}))
            }
            "can_send_image" | "can_send_record" => Ok(json!({"yes": true})),
            "get_status" => Ok(self.status()),
            "get_version_info" => Ok(json!({
                "app_name": "puppet-rs",
                "app_version": env!("CARGO_PKG_VERSION"),
                "protocol_version": super::PROTOCOL,
                "backend": self.backend.name(),
            })),
            ".handle_quick_operation" => self.quick_operation(&p).await,
            _ => Err(Failure::unsupported(format!("unknown action `{}`", Shown(action)))),
        }
    }

    fn message_param(&self, p: &Params<'_>) -> Result<Vec<Segment>, Failure> {
        let Some(m) = p.get("message") else { return Err(Failure::bad("`message` is required")) };
        let auto_escape = p.bool_or("auto_escape", false)?;
        message::parse_param(m, auto_escape).map_err(|e| Failure::bad(format!("`message` {e}")))
    }

    async fn lookup(&self, n: i64, name: &str, want: Kind) -> Result<String, Failure> {
        match self.ids.lookup(n).await? {
            Some((k, id)) if k == want => Ok(id),
            Some((k, _)) => Err(Failure::bad(format!("`{name}` {n} is {}, not {}", k.noun(), want.noun()))),
            None => Err(Failure::bad(format!("`{name}` {n} is not an id this account gave out"))),
        }
    }

    async fn contact_param(&self, p: &Params<'_>, name: &str) -> Result<ContactId, Failure> {
        let n = p.int(name)?;
        Ok(ContactId::from(self.lookup(n, name, Kind::User).await?))
    }

    async fn room_param(&self, p: &Params<'_>, name: &str) -> Result<RoomId, Failure> {
        let n = p.int(name)?;
        Ok(RoomId::from(self.lookup(n, name, Kind::Group).await?))
    }

    async fn message_id_param(&self, p: &Params<'_>, name: &str) -> Result<MessageId, Failure> {
        let n = p.int(name)?;
        self.message_of(n, name).await
    }

    async fn message_of(&self, n: i64, name: &str) -> Result<MessageId, Failure> {
        Ok(MessageId::from(self.lookup(n, name, Kind::Message).await?))
    }

    async fn group_info(&self, room: &RoomId) -> ActionResult {
        let r = self.backend.room(room).await?;
        let n = self.ids.num(Kind::Group, room.as_str()).await?;
        Ok(json!({"group_id": n, "group_name": r.topic, "member_count": r.member_ids.len(), "max_member_count": 500}))
    }

    async fn member_info(&self, room: &RoomId, user: &ContactId) -> ActionResult {
        let m = self.backend.room_member(room, user).await?;
        let contact = self.backend.contact(user).await.ok();
        let n = self.ids.num(Kind::User, user.as_str()).await?;
        Ok(json!({
            "group_id": self.ids.num(Kind::Group, room.as_str()).await?,
            "user_id": n,
            "nickname": if m.name.is_empty() { contact.as_ref().map(|c| c.name.clone()).unwrap_or_default() } else { m.name },
            "card": m.room_alias,
            "sex": contact.as_ref().map(|c| gender(c.gender)).unwrap_or("unknown"),
            "age": 0,
            "area": contact.as_ref().map(|c| c.city.clone()).unwrap_or_default(),
            "join_time": 0,
            "last_sent_time": 0,
            "level": "",
            "role": self.role(room, user).await,
            "unfriendly": false,
            "title": "",
            "title_expire_time": 0,
            "card_changeable": false,
        }))
    }

    /// Sends `segments` into a conversation (`room` when it is a room): text and `at` go together
    /// as one text message with mentions, every media segment as a message of its own. The answer
    /// carries the last message's id (0 when the platform does not tell it).
    async fn send(&self, to: ConversationId, room: Option<RoomId>, segments: Vec<Segment>) -> ActionResult {
        let mut outgoing = Vec::new();
        let (mut text, mut mentions) = (String::new(), Vec::new());
        for (i, s) in segments.iter().enumerate() {
            let field = |k: &str| format!("`message` segment {i} ({}): `{k}`", s.kind);
            match s.kind.as_str() {
                "text" => text.push_str(&s.get("text").unwrap_or_default()),
                "at" => {
                    let qq = s.get("qq").ok_or_else(|| Failure::bad(format!("{} is required", field("qq"))))?;
                    if qq == "all" {
                        return Err(Failure::unsupported("a WeChat bot cannot @ everyone in a room"));
                    }
                    let n: i64 = qq.parse().map_err(|_| Failure::bad(format!("{} must be a user id", field("qq"))))?;
                    let c = ContactId::from(self.lookup(n, "qq", Kind::User).await?);
                    let name = match &room {
                        Some(r) => self
                            .backend
                            .room_member(r, &c)
                            .await
                            .ok()
                            .map(|m| if m.room_alias.is_empty() { m.name } else { m.room_alias }),
                        None => None,
                    };
                    let name = match name.filter(|n| !n.is_empty()) {
                        Some(n) => n,
                        None => self.backend.contact(&c).await.map(|c| c.name).unwrap_or_default(),
                    };
                    text.push_str(&format!("@{name}\u{2005}"));
                    if room.is_some() {
                        mentions.push(c);
                    }
                }
                "reply" => {
                    let n: i64 = s
                        .get("id")
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| Failure::bad(format!("{} must be a message id", field("id"))))?;
                    let id = self.message_of(n, "id").await?;
                    let quoted = self.backend.message(&id).await?;
                    let who = self.backend.contact(&quoted.talker_id).await.map(|c| c.name).unwrap_or_default();
                    // How WeChat itself shows a quote in text.
                    text.insert_str(0, &format!("「{who}: {}」\n- - - - - - - - - - - - - - -\n", quoted.text));
                }
                "image" | "record" | "video" | "file" => {
                    flush(&mut outgoing, &mut text, &mut mentions);
                    outgoing.push(Outgoing::File(file_box(s, &field)?));
                }
                "share" => {
                    flush(&mut outgoing, &mut text, &mut mentions);
                    let url = s.get("url").ok_or_else(|| Failure::bad(format!("{} is required", field("url"))))?;
                    outgoing.push(Outgoing::Url(UrlLink {
                        url,
                        title: s.get("title").unwrap_or_default(),
                        description: s.get("content").unwrap_or_default(),
                        thumbnail_url: s.get("image").unwrap_or_default(),
                    }));
                }
                other => {
                    return Err(Failure::unsupported(format!(
                        "`message` segment {i}: WeChat has no `{}` segment (text, at, image, record, video, file, reply, share)",
                        Shown(other)
                    )));
                }
            }
        }
        flush(&mut outgoing, &mut text, &mut mentions);
        if outgoing.is_empty() {
            return Err(Failure::bad("`message` has nothing to send"));
        }
        let mut last = None;
        for o in outgoing {
            last = self.backend.send(&to, o).await?;
        }
        let n = match last {
            Some(id) => self.ids.num(Kind::Message, id.as_str()).await?,
            None => 0,
        };
        Ok(json!({"message_id": n}))
    }

    /// `.handle_quick_operation`: `context` is the event, `operation` what to do about it.
    async fn quick_operation(&self, p: &Params<'_>) -> ActionResult {
        let Some(Value::Object(ctx)) = p.get("context") else {
            return Err(Failure::bad("`context` must be the event object"));
        };
        let op = match p.get("operation") {
            Some(Value::Object(o)) => o.clone(),
            None => Map::new(),
            Some(other) => {
                return Err(Failure::bad(format!("`operation` must be an object, not {}", type_name(other))));
            }
        };
        let (ctx, op) = (Params(ctx), Params(&op));
        match ctx.opt_str("post_type")?.as_deref() {
            Some("message") => {
                let group = ctx.opt_str("message_type")?.as_deref() == Some("group");
                if let Some(reply) = op.get("reply") {
                    let mut segs = message::parse_param(reply, op.bool_or("auto_escape", false)?)
                        .map_err(|e| Failure::bad(format!("`operation.reply` {e}")))?;
                    if group && op.bool_or("at_sender", true)? {
                        let user = ctx.int("user_id")?;
                        segs.insert(0, Segment::new("at", [("qq", json!(user.to_string()))]));
                    }
                    if group {
                        let room = self.room_param(&ctx, "group_id").await?;
                        self.send(ConversationId::from(room.as_str()), Some(room), segs).await?;
                    } else {
                        let user = self.contact_param(&ctx, "user_id").await?;
                        self.send(ConversationId::from(user.as_str()), None, segs).await?;
                    }
                }
                if op.bool_or("delete", false)? {
                    let id = self.message_id_param(&ctx, "message_id").await?;
                    self.backend.message_recall(&id).await?;
                }
                if group && op.bool_or("kick", false)? {
                    let room = self.room_param(&ctx, "group_id").await?;
                    let user = self.contact_param(&ctx, "user_id").await?;
                    self.backend.room_del(&room, vec![user]).await?;
                }
                if op.bool_or("ban", false)? {
                    return Err(Failure::unsupported("WeChat rooms have no ban"));
                }
                Ok(Value::Null)
            }
            Some("request") => {
                if let Some(approve) = op.get("approve") {
                    let approve =
                        Params(&Map::from_iter([("approve".to_owned(), approve.clone())])).bool_or("approve", true)?;
                    let mut params = Map::new();
                    params.insert("flag".into(), json!(ctx.str("flag")?));
                    params.insert("approve".into(), json!(approve));
                    if let Some(r) = op.opt_str("remark")? {
                        params.insert("remark".into(), json!(r));
                    }
                    let action = match ctx.opt_str("request_type")?.as_deref() {
                        Some("friend") => "set_friend_add_request",
                        _ => {
                            params.insert("sub_type".into(), json!(ctx.opt_str("sub_type")?.unwrap_or_default()));
                            "set_group_add_request"
                        }
                    };
                    Box::pin(self.call(action, &Value::Object(params))).await?;
                }
                Ok(Value::Null)
            }
            _ => Ok(Value::Null),
        }
    }
}

fn flush(outgoing: &mut Vec<Outgoing>, text: &mut String, mentions: &mut Vec<ContactId>) {
    if !text.trim().is_empty() {
        outgoing.push(Outgoing::Text { text: std::mem::take(text), mentions: std::mem::take(mentions) });
    }
    text.clear();
    mentions.clear();
}

/// The file of a media segment: `base64://…` or an http(s) URL (`file` or `url`). Local paths
/// are refused: the server does not read its own disk for a client.
fn file_box(s: &Segment, field: &dyn Fn(&str) -> String) -> Result<FileBox, Failure> {
    let file =
        s.get("file").or_else(|| s.get("url")).ok_or_else(|| Failure::bad(format!("{} is required", field("file"))))?;
    let default_name = match s.kind.as_str() {
        "image" => "image.jpg",
        "record" => "voice.mp3",
        "video" => "video.mp4",
        _ => "file",
    };
    let given = s.get("name").filter(|n| !n.is_empty());
    if let Some(b64) = file.strip_prefix("base64://") {
        use base64::Engine;
        let bytes = puppet_proto::filebox::BASE64
            .decode(b64.trim())
            .map_err(|e| Failure::bad(format!("{} is not base64: {e}", field("file"))))?;
        let mut fb =
            FileBox::new(given.unwrap_or_else(|| default_name.into()), FileBoxSource::Base64(b64.trim().to_owned()));
        fb.size = Some(bytes.len() as u64);
        return Ok(fb);
    }
    let lower = file.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        let from_url = file
            .split(['?', '#'])
            .next()
            .and_then(|u| u.rsplit('/').next())
            .filter(|n| n.contains('.') && n.len() <= 128)
            .map(str::to_owned);
        let name = given.or(from_url).unwrap_or_else(|| default_name.into());
        return Ok(FileBox::new(name, FileBoxSource::Url { url: file, headers: None }));
    }
    Err(Failure::bad(format!(
        "{} \"{}\" is neither base64://… nor an http(s) URL (local files are not read)",
        field("file"),
        Shown(&file)
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_name_what_is_wrong() {
        let m = json!({"user_id": "12", "bad": [1], "s": "x1", "b": "maybe"});
        let p = Params(m.as_object().unwrap());
        assert_eq!(p.int("user_id").unwrap(), 12);
        assert_eq!(p.int("bad").unwrap_err(), Failure::bad("`bad` must be an integer, not an array"));
        assert_eq!(p.int("s").unwrap_err().wording, "`s` must be an integer, not \"x1\"");
        assert_eq!(p.int("gone").unwrap_err().wording, "`gone` is required");
        assert_eq!(p.bool_or("b", true).unwrap_err().retcode, 1400);
        assert!(p.bool_or("gone", true).unwrap());
    }

    #[test]
    fn suffixes_and_unknown_actions() {
        assert_eq!(base_action("send_msg_async"), ("send_msg", "_async"));
        assert_eq!(base_action("get_status_rate_limited"), ("get_status", "_rate_limited"));
        assert!(known(".handle_quick_operation_async"));
        assert!(!known("no_such_action"));
        assert!(!known("_async"));
    }

    #[test]
    fn replies_echo_and_say_why() {
        let r = reply(&Err(Failure::bad("`x` is required")), Some(&json!({"n": 1})));
        assert_eq!(
            r,
            json!({"status": "failed", "retcode": 1400, "data": null, "msg": "BAD_REQUEST", "wording": "`x` is required", "echo": {"n": 1}})
        );
        assert_eq!(reply(&Err(accepted()), None)["status"], "async");
        assert_eq!(reply(&Ok(json!(1)), None)["retcode"], 0);
    }

    #[test]
    fn media_files_are_base64_or_urls_never_paths() {
        let field = |k: &str| format!("`{k}`");
        let s = Segment::new("image", [("file", json!("base64://aGk="))]);
        assert_eq!(file_box(&s, &field).unwrap().name, "image.jpg");
        let s = Segment::new("file", [("file", json!("https://h/a/report.pdf?x=1"))]);
        assert_eq!(file_box(&s, &field).unwrap().name, "report.pdf");
        let s = Segment::new("image", [("file", json!("file:///etc/passwd"))]);
        assert_eq!(file_box(&s, &field).unwrap_err().retcode, 1400);
        let s = Segment::new("image", [("file", json!("base64://!!"))]);
        assert!(file_box(&s, &field).unwrap_err().wording.contains("not base64"));
    }
}
