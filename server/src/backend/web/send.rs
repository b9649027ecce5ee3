//! Sending (spec §3): text (`webwxsendmsg`, room @mentions as `@Name` + U+2005), and files through
//! `webwxuploadmedia` in 512 KiB chunks, then `webwxsendmsgimg` (images), `webwxsendvideomsg`
//! (mp4), `webwxsendemoticon` (gif) or `webwxsendappmsg` (anything else, as a file). `Ret 1205`
//! ("too frequent") is retried after a pause, twice, then answered RESOURCE_EXHAUSTED.

use std::time::Duration;

use base64::Engine;
use md5::{Digest, Md5};
use puppet_proto::filebox::{BASE64, FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, MessageId, RoomId};
use puppet_proto::model::{Message, MessageType};
use serde_json::{Value, json};

use super::session::{CHUNK, Session, WireError, client_msg_id, now_ms};
use super::{Stored, WebBackend};
use crate::backend::{BackendError, BackendResult};

/// Pauses before retrying a send WeChat called too frequent (Ret 1205).
const BACKOFF: [Duration; 2] = [Duration::from_secs(1), Duration::from_secs(3)];

impl WebBackend {
    /// Posts a send, retrying on 1205; the answer's `MsgID`.
    async fn post_send(
        &self,
        what: &'static str,
        url: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> BackendResult<String> {
        let mut attempt = 0;
        loop {
            let session = self.session()?;
            match self.inner.wire.post_json(what, &session, url, query, body).await {
                Ok((v, _)) => {
                    let id = match &v["MsgID"] {
                        Value::String(s) if !s.is_empty() => s.clone(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(BackendError::Internal(format!("{what} answered no MsgID"))),
                    };
                    return Ok(id);
                }
                Err(WireError::Ret { ret: 1205, .. }) if attempt < BACKOFF.len() => {
                    tracing::info!(what, "WeChat says sending is too frequent (1205); waiting");
                    tokio::time::sleep(BACKOFF[attempt]).await;
                    attempt += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Records a sent message so Message, recall and forward know it: `sent` carries its kind, text,
    /// file name, `MsgType` and `ClientMsgId`; the rest is filled in here.
    fn keep_sent(&self, to_un: &str, to: &ConversationId, id: &str, sent: Stored) -> MessageId {
        let (me, session_user) = {
            let st = self.state();
            let un = st.me["UserName"].as_str().unwrap_or_default().to_owned();
            (st.ids.id_of(&un).unwrap_or_default().to_owned(), un)
        };
        let (listener, room, conversation) = if super::ids::is_room(to_un) {
            (ContactId::default(), RoomId(to.0.clone()), to.0.clone())
        } else {
            (ContactId(to.0.clone()), RoomId::default(), to.0.clone())
        };
        let stored = Stored {
            message: Message {
                id: MessageId(id.to_owned()),
                talker_id: ContactId(me),
                listener_id: listener,
                room_id: room,
                mention_ids: Vec::new(),
                timestamp_ms: now_ms(),
                ..sent.message
            },
            from: session_user,
            to: to_un.to_owned(),
            ..sent
        };
        self.keep(&stored, &conversation);
        MessageId(id.to_owned())
    }

    /// Text, with room members mentioned as `@Name\u{2005}` in front.
    pub(super) async fn send_text(
        &self,
        to_un: &str,
        to: &ConversationId,
        text: String,
        mentions: Vec<ContactId>,
    ) -> BackendResult<MessageId> {
        if text.is_empty() && mentions.is_empty() {
            return Err(BackendError::InvalidArgument("the text is empty".into()));
        }
        let mut prefix = String::new();
        if !mentions.is_empty() {
            if !super::ids::is_room(to_un) {
                return Err(BackendError::InvalidArgument("@mentions are for rooms only".into()));
            }
            let st = self.state();
            let room = st.contacts.get(to_un).cloned().unwrap_or(Value::Null);
            for m in &mentions {
                let un = st.ids.user_name_of(m.as_str()).ok_or_else(|| BackendError::not_found("contact", m))?;
                let member = room["MemberList"]
                    .as_array()
                    .and_then(|l| l.iter().find(|x| x["UserName"] == un))
                    .ok_or_else(|| BackendError::InvalidArgument(format!("`{m}` is not a member of this room")))?;
                let name = [member["DisplayName"].as_str(), member["NickName"].as_str()]
                    .into_iter()
                    .flatten()
                    .find(|n| !n.is_empty())
                    .unwrap_or_default();
                prefix.push_str(&format!("@{}\u{2005}", super::session::plain_text(name)));
            }
        }
        let content = format!("{prefix}{text}");
        let session = self.session()?;
        let client = client_msg_id();
        let body = json!({"BaseRequest": session.base_request(), "Msg": {"Type": 1, "Content": content,
            "FromUserName": session.self_user_name, "ToUserName": to_un, "LocalID": client, "ClientMsgId": client},
            "Scene": 0});
        let url = format!("{}/webwxsendmsg", session.endpoints.base);
        let q = [("lang", "zh_CN".to_owned()), ("pass_ticket", session.pass_ticket.clone())];
        let id = self.post_send("webwxsendmsg", &url, &q, &body).await?;
        Ok(self.keep_sent(to_un, to, &id, sent(MessageType::Text, content, String::new(), client, 1)))
    }

    /// A client's FileBox as bytes.
    async fn file_bytes(&self, fb: &FileBox) -> BackendResult<Vec<u8>> {
        match &fb.source {
            FileBoxSource::Base64(b) => BASE64.decode(b.trim()).map_err(|_| {
                BackendError::InvalidArgument(format!(
                    "FileBox `{}`: `base64` is not base64",
                    puppet_proto::ids::Shown(&fb.name)
                ))
            }),
            FileBoxSource::Uuid(id) => self.inner.blobs.read_all(id).await.map_err(BackendError::from),
            FileBoxSource::Url { url, .. } => Ok(self.inner.outbound.get(url).await?.bytes),
            FileBoxSource::QrCode(_) => Err(BackendError::InvalidArgument(
                "a QR-code FileBox has no bytes to send: render it to an image first".into(),
            )),
        }
    }

    /// Uploads `bytes` in chunks; the `MediaId`.
    async fn upload(
        &self,
        session: &Session,
        to_un: &str,
        name: &str,
        mediatype: &str,
        mime: &str,
        bytes: &[u8],
    ) -> BackendResult<String> {
        let total = bytes.len();
        let md5: String = Md5::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
        let request = json!({"UploadType": 2, "BaseRequest": session.base_request(), "ClientMediaId": client_msg_id(),
            "TotalLen": total, "StartPos": 0, "DataLen": total, "MediaType": 4,
            "FromUserName": session.self_user_name, "ToUserName": to_un, "FileMd5": md5})
        .to_string();
        let chunks = total.div_ceil(CHUNK).max(1);
        let ticket = session.cookies.get("webwx_data_ticket").cloned().unwrap_or_default();
        let url = format!("{}/webwxuploadmedia", session.endpoints.file);
        let mut media_id = String::new();
        for (i, part) in bytes.chunks(CHUNK).enumerate() {
            let mut form = reqwest::multipart::Form::new()
                .text("id", "WU_FILE_0")
                .text("name", name.to_owned())
                .text("type", mime.to_owned())
                .text("lastModifiedDate", "Thu Jan 01 2026 00:00:00 GMT+0800 (CST)")
                .text("size", total.to_string());
            if chunks > 1 {
                form = form.text("chunks", chunks.to_string()).text("chunk", i.to_string());
            }
            let file = reqwest::multipart::Part::bytes(part.to_vec())
                .file_name(name.to_owned())
                .mime_str("application/octet-stream")
                .map_err(|e| BackendError::Internal(e.to_string()))?;
            form = form
                .text("mediatype", mediatype.to_owned())
                .text("uploadmediarequest", request.clone())
                .text("webwx_data_ticket", ticket.clone())
                .text("pass_ticket", session.pass_ticket.clone())
                .part("filename", file);
            let v = self.inner.wire.post_form("webwxuploadmedia", session, &url, form).await?;
            media_id = v["MediaId"].as_str().unwrap_or_default().to_owned();
        }
        if media_id.is_empty() {
            return Err(BackendError::Internal("webwxuploadmedia gave no MediaId for the last chunk".into()));
        }
        Ok(media_id)
    }

    /// An image, video, gif or any file.
    pub(super) async fn send_file(&self, to_un: &str, to: &ConversationId, fb: FileBox) -> BackendResult<MessageId> {
        let bytes = self.file_bytes(&fb).await?;
        if bytes.is_empty() {
            return Err(BackendError::InvalidArgument(format!("`{}` is empty", puppet_proto::ids::Shown(&fb.name))));
        }
        let limit = self.inner.wire.settings.max_media;
        if bytes.len() > limit {
            return Err(BackendError::ResourceExhausted(format!(
                "`{}` is {} bytes, more than the {limit}-byte limit (PUPPET_WEB_MAX_MEDIA_MIB)",
                puppet_proto::ids::Shown(&fb.name),
                bytes.len()
            )));
        }
        let name = if fb.name.is_empty() { "file.bin".to_owned() } else { fb.name.clone() };
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        let (mediatype, mime, kind) = match ext.as_str() {
            "jpg" | "jpeg" => ("pic", "image/jpeg", MessageType::Image),
            "png" => ("pic", "image/png", MessageType::Image),
            "bmp" => ("pic", "image/bmp", MessageType::Image),
            "gif" => ("doc", "image/gif", MessageType::Emoticon),
            "mp4" => ("video", "video/mp4", MessageType::Video),
            _ => ("doc", "application/octet-stream", MessageType::Attachment),
        };
        let session = self.session()?;
        let media_id = self.upload(&session, to_un, &name, mediatype, mime, &bytes).await?;
        self.send_media(to_un, to, kind, &media_id, (name, bytes.len()), 0).await
    }

    /// Sends media already on the server by its `MediaId` (`kind` picks the endpoint, `file` is the
    /// name and size a file card shows); `scene` is
    /// 0 for a fresh upload, 2 for a forward (wechat4u's forwardMsg).
    pub(super) async fn send_media(
        &self,
        to_un: &str,
        to: &ConversationId,
        kind: MessageType,
        media_id: &str,
        (name, size): (String, usize),
        scene: u32,
    ) -> BackendResult<MessageId> {
        let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
        let session = self.session()?;
        let client = client_msg_id();
        let base = &session.endpoints.base;
        let pt = session.pass_ticket.clone();
        let common = |ty: u32| {
            json!({"Type": ty, "MediaId": media_id, "FromUserName": session.self_user_name, "ToUserName": to_un,
                "LocalID": client, "ClientMsgId": client})
        };
        let (what, url, query, msg, msg_type): (&'static str, String, Vec<(&str, String)>, Value, u32) = match kind {
            MessageType::Image => {
                let mut m = common(3);
                m["Content"] = json!("");
                (
                    "webwxsendmsgimg",
                    format!("{base}/webwxsendmsgimg"),
                    vec![("fun", "async".into()), ("f", "json".into()), ("lang", "zh_CN".into()), ("pass_ticket", pt)],
                    m,
                    3,
                )
            }
            MessageType::Video => {
                let mut m = common(43);
                m["Content"] = json!("");
                (
                    "webwxsendvideomsg",
                    format!("{base}/webwxsendvideomsg"),
                    vec![("fun", "async".into()), ("f", "json".into()), ("pass_ticket", pt)],
                    m,
                    43,
                )
            }
            MessageType::Emoticon => {
                let mut m = common(47);
                m["EmojiFlag"] = json!(2);
                (
                    "webwxsendemoticon",
                    format!("{base}/webwxsendemoticon"),
                    vec![("fun", "sys".into()), ("pass_ticket", pt)],
                    m,
                    47,
                )
            }
            _ => {
                let mut m = common(6);
                m.as_object_mut().map(|o| o.remove("MediaId"));
                m["Content"] = json!(format!(
                    "<appmsg appid='wxeb7ec651dd0aefa9' sdkver=''><title>{}</title><des></des><action></action><type>6</type><content></content><url></url><lowurl></lowurl><appattach><totallen>{}</totallen><attachid>{media_id}</attachid><fileext>{ext}</fileext></appattach><extinfo></extinfo></appmsg>",
                    xml_escape(&name),
                    size
                ));
                (
                    "webwxsendappmsg",
                    format!("{base}/webwxsendappmsg"),
                    vec![("fun", "async".into()), ("f", "json".into())],
                    m,
                    49,
                )
            }
        };
        let body = json!({"BaseRequest": session.base_request(), "Msg": msg, "Scene": scene});
        let id = self.post_send(what, &url, &query, &body).await?;
        let filename = if kind == MessageType::Attachment { name } else { String::new() };
        let mut kept = sent(kind, String::new(), filename, client, msg_type);
        kept.media_id = media_id.to_owned();
        kept.size = size as u64;
        Ok(self.keep_sent(to_un, to, &id, kept))
    }
}

fn sent(kind: MessageType, text: String, filename: String, client_msg_id: String, msg_type: u32) -> Stored {
    Stored {
        message: Message { kind, text, filename, ..Default::default() },
        msg_type,
        client_msg_id,
        ..Default::default()
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\'', "&apos;").replace('"', "&quot;")
}
