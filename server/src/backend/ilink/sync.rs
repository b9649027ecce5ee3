//! The long-poll loop (`getupdates`, as Tencent's `monitor.ts` runs it) and the mapping of inbound
//! messages to Wechaty MESSAGE events.

use std::time::Duration;

use puppet_proto::event::{MessageEvent, PuppetEvent};
use puppet_proto::ids::{ContactId, MessageId};
use puppet_proto::model::{Message, MessageType};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use super::api::{Api, ApiError, id_text};
use super::login::pause;
use super::{Ilink, KV, Session, Stored, User, cdn, now_ms};

/// The long-poll timeout until the server suggests one.
const DEFAULT_POLL: Duration = Duration::from_secs(35);
/// Bounds on a server-suggested timeout.
const MIN_POLL: Duration = Duration::from_secs(1);
const MAX_POLL: Duration = Duration::from_secs(120);
/// Consecutive failures before the long pause.
const MAX_FAILURES: u32 = 3;
const RETRY_PAUSE: Duration = Duration::from_secs(2);
const BACKOFF_PAUSE: Duration = Duration::from_secs(30);
/// Messages taken from one `getupdates` answer at most (the rest come with the next poll, as the
/// cursor is only moved past what was handled).
const MAX_BATCH: usize = 1000;
/// The longest cursor kept.
const MAX_BUF: usize = 64 << 10;

/// How the loop ended.
pub(super) enum Ended {
    Cancelled,
    Stale(i64),
}

impl Ilink {
    /// Polls until cancelled or the token is stale.
    pub(super) async fn monitor(&self, api: &Api, session: &Session, cancel: &CancellationToken) -> Ended {
        let store = self.inner.store.clone();
        let mut buf = match store.read(|s| s.kv().get::<String>(KV, "buf")).await {
            Ok(b) => b.unwrap_or_default(),
            Err(e) => {
                tracing::error!(error = %e, "the iLink cursor could not be read; starting from the server's");
                String::new()
            }
        };
        let mut timeout = DEFAULT_POLL;
        let mut failures = 0u32;
        loop {
            let answer = tokio::select! {
                _ = cancel.cancelled() => return Ended::Cancelled,
                r = api.post("getupdates", "getupdates", Some(&session.token), json!({"get_updates_buf": buf}),
                             Some(timeout + Duration::from_secs(5))) => r,
            };
            let v = match answer {
                Ok(v) => v,
                Err(ApiError::Stale(code)) => return Ended::Stale(code),
                Err(ApiError::Timeout(_)) => continue,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, failures, "iLink getupdates failed");
                    let wait = if failures >= MAX_FAILURES {
                        failures = 0;
                        BACKOFF_PAUSE
                    } else {
                        RETRY_PAUSE
                    };
                    if !pause(cancel, wait).await {
                        return Ended::Cancelled;
                    }
                    continue;
                }
            };
            failures = 0;
            if let Some(ms) = v.get("longpolling_timeout_ms").and_then(Value::as_u64).filter(|ms| *ms > 0) {
                timeout = Duration::from_millis(ms).clamp(MIN_POLL, MAX_POLL);
            }
            let msgs = v.get("msgs").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            for m in msgs.iter().take(MAX_BATCH) {
                self.inbound(session, m).await;
            }
            if let Some(next) = v.get("get_updates_buf").and_then(Value::as_str).filter(|b| !b.is_empty()) {
                if next.len() > MAX_BUF {
                    tracing::warn!(len = next.len(), "iLink sent an oversized cursor; keeping the previous one");
                } else if msgs.len() <= MAX_BATCH {
                    buf = next.to_owned();
                    // Queued after the messages' records: the store commits in order, so after a
                    // crash the cursor never points past a message that was not kept.
                    if let Err(e) = self.inner.store.kv().put(KV, "buf", &buf) {
                        tracing::error!(error = %e, "the iLink cursor could not be stored");
                    }
                }
            }
        }
    }

    /// One inbound message: kept in the store, the user's context recorded, MESSAGE emitted — once.
    async fn inbound(&self, session: &Session, m: &Value) {
        let Some(from) = m.get("from_user_id").and_then(Value::as_str).filter(|f| !f.is_empty() && f.len() <= 128)
        else {
            return;
        };
        // The bot's own messages (message_type 2) are not news.
        if m.get("message_type").and_then(Value::as_i64) == Some(2) || from == session.bot_id {
            return;
        }
        let Some(base_id) = id_text(m.get("message_id")).or_else(|| id_text(m.get("seq")).map(|s| format!("seq{s}")))
        else {
            tracing::warn!("an iLink message without message_id or seq was skipped");
            return;
        };
        let now = now_ms();
        let time = m.get("create_time_ms").and_then(Value::as_u64).filter(|t| *t > 0 && *t <= now).unwrap_or(now);
        let items = m.get("item_list").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        let mut first = true;
        let mut emitted = Vec::new();
        let mut seen_before = false;
        for (i, item) in items.iter().enumerate().take(16) {
            let Some(mut stored) = map_item(item) else { continue };
            let id = if first { format!("ilink-{base_id}") } else { format!("ilink-{base_id}.{i}") };
            first = false;
            let mid = MessageId(id.clone());
            match self.inner.store.messages().get_async(&id).await {
                Ok(Some(_)) => {
                    // Delivered again after a restart: not news.
                    seen_before = true;
                    continue;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "could not check an iLink message against the store"),
            }
            if let Some(q) = stored.quote.as_ref().filter(|_| stored.message.kind == MessageType::Text) {
                let quoted = match quote_ref(q) {
                    Some(r) => self.stored(&MessageId(format!("ilink-{r}"))).await.ok(),
                    None => None,
                };
                let prefix = quote_prefix(q, quoted.as_ref().map(|s| &s.message));
                stored.message.text.insert_str(0, &prefix);
            }
            stored.message.id = mid.clone();
            stored.message.talker_id = ContactId(from.to_owned());
            stored.message.listener_id = ContactId(session.bot_id.clone());
            stored.message.timestamp_ms = time;
            if stored.message.filename.is_empty() && stored.media.is_some() {
                stored.message.filename = default_name(stored.message.kind, &base_id);
            }
            if let Err(e) = self.keep(from, &stored) {
                tracing::error!(error = %e, "an iLink message could not be kept");
                continue;
            }
            emitted.push(mid);
        }
        if seen_before && emitted.is_empty() {
            return;
        }
        // The conversation's context: even a message with nothing to show opens the window.
        let mut user = match self.user(from).await {
            Ok(u) => u.unwrap_or(User { first_seen_ms: now, ..Default::default() }),
            Err(e) => {
                tracing::warn!(error = %e, "could not read an iLink user");
                User { first_seen_ms: now, ..Default::default() }
            }
        };
        if let Some(ctx) = m.get("context_token").and_then(Value::as_str).filter(|c| !c.is_empty() && c.len() <= 4096) {
            user.context_token = Some(ctx.to_owned());
        }
        user.last_inbound_ms = user.last_inbound_ms.max(time);
        user.sent_since = 0;
        if let Err(e) = self.put_user(from, &user) {
            tracing::warn!(error = %e, "could not keep an iLink user");
        }
        for id in emitted {
            self.emit(PuppetEvent::Message(MessageEvent { message_id: id }));
        }
    }
}

/// The quoted message's id as iLink names it (`svr_id`, else the quoted item's `msg_id`).
fn quote_ref(q: &Value) -> Option<String> {
    let r = q.get("svr_id").or_else(|| q.get("message_item").and_then(|i| i.get("msg_id")));
    id_text(r).map(|r| r.trim().to_owned()).filter(|r| !r.is_empty() && r.len() <= 64)
}

/// The longest quoted text kept in a quote's prefix, in characters.
const MAX_QUOTE: usize = 512;

/// The text WeChat shows above a reply that quotes another message, as Wechaty's puppets put it in a
/// text message (`「who: quoted」` and a dashed line): Wechaty's MessagePayload has no quote field.
/// The quoted text is what iLink sent (`title`, and the quoted item's text or kind, joined as the
/// reference client joins them), else the text of the quoted message kept here; `who` is its sender's
/// name when that message is kept here.
fn quote_prefix(q: &Value, kept: Option<&Message>) -> String {
    let mut parts = Vec::new();
    if let Some(t) = q.get("title").and_then(Value::as_str).map(str::trim).filter(|t| !t.is_empty()) {
        parts.push(t.to_owned());
    }
    if let Some(item) = q.get("message_item").filter(|i| i.is_object()) {
        let body = match item.get("type").and_then(Value::as_i64) {
            Some(1) => item.pointer("/text_item/text").and_then(Value::as_str).unwrap_or("").to_owned(),
            Some(3) => item.pointer("/voice_item/text").and_then(Value::as_str).map_or("[voice]", |t| t).to_owned(),
            Some(2) => "[image]".to_owned(),
            Some(4) => "[file]".to_owned(),
            Some(5) => "[video]".to_owned(),
            _ => String::new(),
        };
        if !body.is_empty() && !parts.contains(&body) {
            parts.push(body);
        }
    }
    if parts.is_empty() {
        parts.push(kept.map(|m| m.text.clone()).filter(|t| !t.is_empty()).unwrap_or_else(|| "[message]".to_owned()));
    }
    let body: String = parts.join(" | ").chars().take(MAX_QUOTE).collect();
    let who = kept.map(|m| m.talker_id.as_str().split('@').next().unwrap_or("").to_owned()).unwrap_or_default();
    if who.is_empty() {
        format!("「{body}」\n- - - - - - - - - - - - - - -\n")
    } else {
        format!("「{who}: {body}」\n- - - - - - - - - - - - - - -\n")
    }
}

fn default_name(kind: MessageType, id: &str) -> String {
    match kind {
        MessageType::Image => format!("image-{id}.jpg"),
        MessageType::Audio => format!("voice-{id}.silk"),
        MessageType::Video => format!("video-{id}.mp4"),
        _ => format!("file-{id}"),
    }
}

/// One `MessageItem` as a message (id, talker, time are filled in by the caller).
fn map_item(item: &Value) -> Option<Stored> {
    let kind = item.get("type").and_then(Value::as_i64)?;
    let mut message = Message::default();
    let mut media = None;
    let sub = |k: &str| item.get(k).cloned().unwrap_or(Value::Null);
    match kind {
        1 => {
            message.kind = MessageType::Text;
            message.text = sub("text_item").get("text").and_then(Value::as_str).unwrap_or("").to_owned();
        }
        2 => {
            message.kind = MessageType::Image;
            media = cdn::media_ref(&sub("image_item"));
        }
        3 => {
            let v = sub("voice_item");
            message.kind = MessageType::Audio;
            // The platform's transcript, when it made one.
            message.text = v.get("text").and_then(Value::as_str).unwrap_or("").to_owned();
            media = cdn::media_ref(&v);
        }
        4 => {
            let v = sub("file_item");
            message.kind = MessageType::Attachment;
            message.filename = v
                .get("file_name")
                .and_then(Value::as_str)
                .map(|n| n.chars().filter(|c| !c.is_control() && *c != '/' && *c != '\\').take(255).collect())
                .unwrap_or_default();
            media = cdn::media_ref(&v);
        }
        5 => {
            message.kind = MessageType::Video;
            media = cdn::media_ref(&sub("video_item"));
        }
        _ => return None,
    }
    let quote = item.get("ref_msg").filter(|r| r.is_object()).cloned();
    Some(Stored { message, media, quote, file: None })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_map_to_wechaty_kinds() {
        let text = map_item(&json!({"type": 1, "text_item": {"text": "hi"}, "ref_msg": {"title": "q"}})).unwrap();
        assert_eq!(text.message.kind, MessageType::Text);
        assert_eq!(text.message.text, "hi");
        assert_eq!(text.quote.unwrap()["title"], "q");
        let voice = map_item(&json!({"type": 3, "voice_item": {"text": "transcript",
            "media": {"encrypt_query_param": "p", "aes_key": "MDEyMzQ1Njc4OWFiY2RlZg=="}}}))
        .unwrap();
        assert_eq!(voice.message.kind, MessageType::Audio);
        assert_eq!(voice.message.text, "transcript");
        assert!(voice.media.is_some());
        let file = map_item(&json!({"type": 4, "file_item": {"file_name": "../a\u{1}.pdf"}})).unwrap();
        assert_eq!(file.message.filename, "..a.pdf");
        assert!(map_item(&json!({"type": 11})).is_none());
    }

    #[test]
    fn quotes_become_the_prefix_wechat_shows() {
        let q = json!({"title": "t", "message_item": {"type": 1, "text_item": {"text": "quoted"}}});
        assert_eq!(quote_prefix(&q, None), "「t | quoted」\n- - - - - - - - - - - - - - -\n");
        let kept =
            Message { talker_id: ContactId("o9alice@im.wechat".into()), text: "earlier".into(), ..Default::default() };
        let q = json!({"svr_id": "42"});
        assert_eq!(quote_ref(&q).as_deref(), Some("42"));
        assert_eq!(quote_prefix(&q, Some(&kept)), "「o9alice: earlier」\n- - - - - - - - - - - - - - -\n");
        assert_eq!(quote_ref(&json!({"message_item": {"msg_id": 7}})).as_deref(), Some("7"));
    }
}
