//! WeChatRemote commands, answered through the backend.

use std::sync::Arc;

use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, MessageId, RoomId};
use puppet_proto::model::{Contact, MiniProgram, Room, UrlLink};
use serde_json::{Value, json};

use crate::backend::{Backend, BackendError, Outgoing};
use crate::events::EventBus;
use crate::mqtt::envelope::{clip_quoted, quote};

/// What a command needs.
pub struct Ctx {
    /// The account.
    pub backend: Arc<dyn Backend>,
    /// For the login state.
    pub bus: EventBus,
}

fn err(e: BackendError) -> String {
    e.to_string()
}

fn param<'a>(params: &'a Value, key: &str) -> Result<&'a Value, String> {
    params.get(key).filter(|v| !v.is_null()).ok_or_else(|| format!("missing param `{key}`"))
}

fn param_str<'a>(params: &'a Value, key: &str) -> Result<&'a str, String> {
    param(params, key)?.as_str().ok_or_else(|| format!("param `{key}` must be a string"))
}

fn param_list(params: &Value, key: &str) -> Result<Vec<String>, String> {
    match param(params, key)? {
        Value::Array(items) => items
            .iter()
            .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| format!("`{key}` must list strings")))
            .collect(),
        Value::String(s) => Ok(vec![s.clone()]),
        _ => Err(format!("param `{key}` must be a list")),
    }
}

/// A contact as WeChatRemote shows it: `{id, payload}` with Wechaty's field names and numbers.
pub fn contact_json(c: &Contact) -> Value {
    json!({
        "id": c.id,
        "payload": {
            "id": c.id, "name": c.name, "alias": c.alias, "avatar": c.avatar, "gender": c.gender.wire(),
            "friend": c.friend, "phone": c.phones, "type": c.kind.wire(), "city": c.city,
            "province": c.province, "signature": c.signature, "weixin": c.handle, "star": c.star,
        }
    })
}

/// A room as WeChatRemote shows it.
pub fn room_json(r: &Room) -> Value {
    json!({
        "id": r.id,
        "payload": {
            "id": r.id, "topic": r.topic, "avatar": r.avatar, "ownerId": r.owner_id,
            "adminIdList": r.admin_ids, "memberIdList": r.member_ids,
        }
    })
}

impl Ctx {
    fn me(&self) -> Result<ContactId, String> {
        self.bus.login_view().contact_id.map(ContactId).ok_or_else(|| "the bot is not logged in".to_owned())
    }

    async fn contacts(&self) -> Result<Vec<Contact>, String> {
        let mut out = Vec::new();
        for id in self.backend.contact_list().await.map_err(err)? {
            out.push(self.backend.contact(&id).await.map_err(err)?);
        }
        Ok(out)
    }

    async fn rooms(&self) -> Result<Vec<Room>, String> {
        let mut out = Vec::new();
        for id in self.backend.room_list().await.map_err(err)? {
            out.push(self.backend.room(&id).await.map_err(err)?);
        }
        Ok(out)
    }

    /// An id, or else an alias or name.
    async fn find_contact(&self, key: &str) -> Result<Option<Contact>, String> {
        if let Ok(c) = self.backend.contact(&key.into()).await {
            return Ok(Some(c));
        }
        Ok(self.contacts().await?.into_iter().find(|c| c.alias == key || c.name == key))
    }

    /// An id, or else a topic.
    async fn find_room(&self, key: &str) -> Result<Option<Room>, String> {
        if let Ok(r) = self.backend.room(&key.into()).await {
            return Ok(Some(r));
        }
        Ok(self.rooms().await?.into_iter().find(|r| r.topic == key))
    }

    async fn send(&self, to: &str, content: &Outgoing) -> Result<Option<MessageId>, String> {
        self.backend.send(&ConversationId(to.to_owned()), content.clone()).await.map_err(err)
    }

    /// Answers one command; `Err` carries the reason for a non-200 response.
    pub async fn handle(&self, name: &str, params: &Value) -> Result<Value, String> {
        match name {
            "wechatyLogonoff" => Ok(json!({ "logonoff": self.bus.logged_in() })),
            "wechatyUserSelf" => {
                let me = self.me()?;
                Ok(contact_json(&self.backend.contact(&me).await.map_err(err)?))
            }
            "contactFindAll" => {
                let all = self.contacts().await?;
                page(params, all.iter().map(contact_json).collect())
            }
            "contactFind" => {
                let key = ["id", "alias", "name"]
                    .iter()
                    .find_map(|k| params.get(*k).and_then(Value::as_str))
                    .ok_or("missing param `id`, `alias` or `name`")?;
                match self.find_contact(key).await? {
                    Some(c) => Ok(contact_json(&c)),
                    None => Err(format!("联系人不存在: no contact with id, alias or name `{}`", quote(key))),
                }
            }
            "contactSay" => {
                let content = outgoing(params)?;
                let mut result = json!({ "success": [], "fail": [] });
                for key in param_list(params, "contacts")? {
                    let outcome = match self.find_contact(&key).await? {
                        Some(c) => self.send(c.id.as_str(), &content).await.map(|_| ()),
                        None => Err("联系人不存在".to_owned()),
                    };
                    push_outcome(&mut result, &key, outcome);
                }
                Ok(result)
            }
            "roomFindAll" => {
                let all = self.rooms().await?;
                page(params, all.iter().map(room_json).collect())
            }
            "roomFind" => {
                let key = ["id", "topic"]
                    .iter()
                    .find_map(|k| params.get(*k).and_then(Value::as_str))
                    .ok_or("missing param `id` or `topic`")?;
                match self.find_room(key).await? {
                    Some(r) => Ok(room_json(&r)),
                    None => Err(format!("群不存在: no room with id or topic `{}`", quote(key))),
                }
            }
            "roomMemberAllGet" => {
                let key = ["room", "id", "topic"]
                    .iter()
                    .find_map(|k| params.get(*k).and_then(Value::as_str))
                    .ok_or("missing param `room`")?;
                let room = self.find_room(key).await?.ok_or_else(|| format!("群不存在: `{}`", quote(key)))?;
                let mut members = Vec::new();
                for id in self.backend.room_members(&room.id).await.map_err(err)? {
                    members.push(contact_json(&self.backend.contact(&id).await.map_err(err)?));
                }
                Ok(Value::Array(members))
            }
            "roomSay" => {
                let content = outgoing(params)?;
                let mut result = json!({ "success": [], "fail": [] });
                for key in param_list(params, "rooms")? {
                    let outcome = match self.find_room(&key).await? {
                        Some(r) => self.send(r.id.as_str(), &content).await.map(|_| ()),
                        None => Err("群不存在".to_owned()),
                    };
                    push_outcome(&mut result, &key, outcome);
                }
                Ok(result)
            }
            "roomSayAt" => {
                let key = param_str(params, "room")?;
                let room = self.find_room(key).await?.ok_or_else(|| format!("群不存在: `{}`", quote(key)))?;
                let text = params
                    .get("text")
                    .or_else(|| params.get("messagePayload"))
                    .and_then(Value::as_str)
                    .ok_or("missing param `text`")?;
                let mut mentions = Vec::new();
                let mut prefix = String::new();
                for who in param_list(params, "contacts")? {
                    let c = self.find_contact(&who).await?.ok_or_else(|| format!("联系人不存在: `{}`", quote(&who)))?;
                    prefix.push_str(&format!("@{} ", c.name));
                    mentions.push(c.id);
                }
                let out = Outgoing::Text { text: format!("{prefix}{text}"), mentions };
                let id = self.backend.send(&ConversationId(room.id.0.clone()), out).await.map_err(err)?;
                Ok(json!({ "messageId": id }))
            }
            "messageSay" => {
                let id = param_str(params, "id")?;
                let msg = self.backend.message(&MessageId::from(id)).await.map_err(|_| "消息不存在".to_owned())?;
                let to = if msg.room_id.is_empty() {
                    if Some(&msg.talker_id) == self.me().ok().as_ref() { msg.listener_id.0 } else { msg.talker_id.0 }
                } else {
                    msg.room_id.0
                };
                let id = self.send(&to, &outgoing(params)?).await?;
                Ok(json!({ "messageId": id }))
            }
            other => Err(format!("unknown command `{}`", quote(other))),
        }
    }
}

fn push_outcome(result: &mut Value, key: &str, outcome: Result<(), String>) {
    let (list, item) = match outcome {
        Ok(()) => ("success", json!(key)),
        Err(reason) => ("fail", json!({ "id": key, "reason": reason })),
    };
    if let Some(a) = result[list].as_array_mut() {
        a.push(item);
    }
}

fn page(params: &Value, items: Vec<Value>) -> Result<Value, String> {
    let num = |k: &str, default: u64| -> Result<u64, String> {
        match params.get(k) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v.as_u64().filter(|n| *n > 0).ok_or_else(|| format!("param `{k}` must be a positive integer")),
        }
    };
    let (page, size) = (num("page", 1)?, num("size", 100)?);
    let total = items.len();
    // Client numbers: a huge page or size must not overflow.
    let start = usize::try_from((page - 1).saturating_mul(size)).unwrap_or(usize::MAX);
    let items: Vec<Value> = items.into_iter().skip(start).take(usize::try_from(size).unwrap_or(usize::MAX)).collect();
    Ok(json!({ "page": page, "size": size, "total": total, "items": items }))
}

/// `messageType` + `messagePayload` as something to send.
fn outgoing(params: &Value) -> Result<Outgoing, String> {
    let kind = params.get("messageType").and_then(Value::as_str).unwrap_or("Text");
    let payload = param(params, "messagePayload")?;
    // Object payloads may also arrive as JSON text.
    let object = match payload {
        Value::String(s) if kind != "Text" => serde_json::from_str(s).unwrap_or(Value::String(s.clone())),
        v => v.clone(),
    };
    match kind {
        "Text" => {
            let text = payload
                .as_str()
                .map(str::to_owned)
                .or_else(|| payload.get("text").and_then(Value::as_str).map(str::to_owned));
            let text = text.ok_or("a Text messagePayload is a string")?;
            Ok(Outgoing::Text { text, mentions: vec![] })
        }
        "Image" | "File" => {
            if object.get("type").is_some() || object.get("boxType").is_some() {
                return FileBox::from_json(&object.to_string()).map(Outgoing::File).map_err(|e| e.to_string());
            }
            let name = object.get("name").and_then(Value::as_str).unwrap_or(if kind == "Image" {
                "image.jpg"
            } else {
                "file"
            });
            let source = if let Some(url) = object.get("url").and_then(Value::as_str) {
                FileBoxSource::Url { url: url.to_owned(), headers: None }
            } else if let Some(b) = object.get("base64").and_then(Value::as_str) {
                FileBoxSource::Base64(b.to_owned())
            } else if let Some(url) = object.as_str() {
                FileBoxSource::Url { url: url.to_owned(), headers: None }
            } else {
                return Err(format!("a {kind} messagePayload needs `url` or `base64` (and `name`)"));
            };
            Ok(Outgoing::File(FileBox::new(name, source)))
        }
        "Url" => serde_json::from_value::<UrlLink>(object)
            .map(Outgoing::Url)
            .map_err(|e| format!("Url messagePayload: {}", clip_quoted(&e.to_string()))),
        "MiniProgram" => serde_json::from_value::<MiniProgram>(object)
            .map(Outgoing::MiniProgram)
            .map_err(|e| format!("MiniProgram messagePayload: {}", clip_quoted(&e.to_string()))),
        other => Err(format!("unsupported messageType `{}` (Text, Image, File, Url, MiniProgram)", quote(other))),
    }
}

/// The parameters of a `message` event, expanded with talker and room as WeChatRemote does.
pub async fn message_event(backend: &Arc<dyn Backend>, id: &MessageId) -> Value {
    let Ok(m) = backend.message(id).await else { return json!({ "id": id }) };
    let talker = backend.contact(&m.talker_id).await.ok().map(|c| contact_json(&c));
    let room = if m.room_id.is_empty() {
        None
    } else {
        backend.room(&RoomId(m.room_id.0.clone())).await.ok().map(|r| room_json(&r))
    };
    json!({
        "id": m.id, "type": m.kind.wire(), "text": m.text, "timestamp": m.timestamp_ms,
        "talker": talker, "room": room, "listenerId": m.listener_id, "mentionIdList": m.mention_ids,
        "filename": m.filename,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_kinds_map_to_outgoing_content() {
        let text = outgoing(&json!({"messageType": "Text", "messagePayload": "hi"})).unwrap();
        assert_eq!(text, Outgoing::Text { text: "hi".into(), mentions: vec![] });
        let img =
            outgoing(&json!({"messageType": "Image", "messagePayload": {"url": "https://x/a.png", "name": "a.png"}}));
        assert!(matches!(img.unwrap(), Outgoing::File(f) if f.name == "a.png"));
        let url = outgoing(&json!({"messageType": "Url", "messagePayload": "{\"url\":\"https://x\",\"title\":\"t\"}"}));
        assert!(matches!(url.unwrap(), Outgoing::Url(u) if u.title == "t"));
        assert!(outgoing(&json!({"messageType": "Voice", "messagePayload": "x"})).unwrap_err().contains("unsupported"));
        assert!(outgoing(&json!({"messageType": "Text"})).unwrap_err().contains("messagePayload"));
    }

    #[test]
    fn pages_count_from_one() {
        let items: Vec<Value> = (0..5).map(|i| json!(i)).collect();
        assert_eq!(page(&json!({"page": 2, "size": 2}), items.clone()).unwrap()["items"], json!([2, 3]));
        assert_eq!(page(&json!({}), items.clone()).unwrap()["total"], 5);
        assert!(page(&json!({"size": 0}), items.clone()).is_err());
        let huge = page(&json!({"page": u64::MAX, "size": u64::MAX}), items.clone()).unwrap();
        assert_eq!(huge["items"], json!([]), "client numbers cannot overflow");
        assert_eq!(page(&json!({"page": u64::MAX}), items).unwrap()["items"], json!([]));
    }
}
