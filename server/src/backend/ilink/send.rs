//! Sending, with the platform's rules checked first: a bot writes only to a user who wrote to it,
//! within the session window after that user's latest message (24 h), and at most the quota of
//! bot messages per user message (10) — beyond either iLink drops or refuses (`ret -2`) the message,
//! so a send outside them fails here, fast, with the rule and when it reopens.

use base64::Engine;
use puppet_proto::filebox::{BASE64, FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, MessageId};
use puppet_proto::model::{Message, MessageType};
use serde_json::{Value, json};

use super::api::id_text;
use super::cdn::{self, MediaType};
use super::{Ilink, NO_ROOMS, Stored, User, now_ms};
use crate::backend::{BackendError, BackendResult, Outgoing};
use crate::metrics::IlinkSendOutcome;

/// How long a typing ticket is reused (Tencent's client refreshes its config within a day).
pub const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);
/// Typing tickets cached at most.
pub const TICKETS_KEPT: usize = 10_000;

/// The platform's text limit, in UTF-8 bytes.
pub const MAX_TEXT_BYTES: usize = 16 * 1024;

fn when(ms: u64) -> String {
    let secs = ms / 1000;
    let (d, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since the epoch (Howard Hinnant's algorithm).
    let z = d as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Checks the session window and quota for a send to `user` now.
pub fn check_rules(
    to: &str,
    user: Option<&User>,
    now: u64,
    window_ms: u64,
    quota: u32,
) -> Result<(), (IlinkSendOutcome, BackendError)> {
    let refuse = |outcome, why: String| Err((outcome, BackendError::FailedPrecondition(why)));
    let shown = puppet_proto::ids::Shown(to);
    let Some(user) = user else {
        return refuse(
            IlinkSendOutcome::no_conversation,
            format!(
                "`{shown}` has not written to this bot: iLink bots can only answer, and a conversation opens when \
                 the user writes"
            ),
        );
    };
    let closes = user.last_inbound_ms.saturating_add(window_ms);
    if now >= closes {
        return refuse(
            IlinkSendOutcome::window_closed,
            format!(
                "the iLink session window with `{shown}` closed at {} ({} h after their last message); it reopens \
                 when they write again",
                when(closes),
                window_ms / 3_600_000
            ),
        );
    }
    if user.sent_since >= quota {
        return refuse(
            IlinkSendOutcome::quota_used,
            format!(
                "the iLink quota of {quota} bot messages per user message is used up for `{shown}`; it reopens \
                 when they write again (the window closes at {})",
                when(closes)
            ),
        );
    }
    Ok(())
}

fn media_type_of(name: &str) -> MediaType {
    let ext = name.rsplit_once('.').map(|(_, e)| e.to_ascii_lowercase()).unwrap_or_default();
    match ext.as_str() {
        "png" | "jpg" | "jpeg" | "gif" | "webp" | "bmp" => MediaType::Image,
        "mp4" | "mov" | "m4v" | "webm" => MediaType::Video,
        _ => MediaType::File,
    }
}

impl Ilink {
    async fn file_bytes(&self, fb: &FileBox) -> BackendResult<Vec<u8>> {
        let bytes = match &fb.source {
            FileBoxSource::Base64(b) => BASE64.decode(b.trim()).map_err(|_| {
                BackendError::InvalidArgument(format!(
                    "FileBox `{}`: `base64` is not base64",
                    puppet_proto::ids::Shown(&fb.name)
                ))
            })?,
            FileBoxSource::Uuid(id) => self.inner.blobs.read_all(id).await?,
            FileBoxSource::Url { .. } => {
                return Err(BackendError::InvalidArgument(
                    "the ilink backend sends files given inline or uploaded (a URL FileBox: fetch it first)".into(),
                ));
            }
            FileBoxSource::QrCode(_) => {
                return Err(BackendError::InvalidArgument(
                    "a QR-code FileBox has no bytes to send: render it to an image first".into(),
                ));
            }
        };
        if bytes.is_empty() {
            return Err(BackendError::InvalidArgument("the file is empty".into()));
        }
        if bytes.len() as u64 > self.inner.settings.max_media_bytes {
            return Err(BackendError::ResourceExhausted(format!(
                "the file is larger than PUPPET_ILINK_MAX_MEDIA_MIB ({} MiB)",
                self.inner.settings.max_media_bytes >> 20
            )));
        }
        Ok(bytes)
    }

    /// Shows (or stops showing) "typing…" to user `to`: a typing ticket from `getconfig` (cached
    /// per user for [`TICKET_TTL`]), then `sendtyping`. Inside the session window only; it uses
    /// none of the quota.
    pub async fn typing(&self, to: &str, typing: bool) -> BackendResult<()> {
        let session = self.online("typing")?;
        let user = self.user(to).await?;
        let window_ms = self.inner.settings.session_window.as_millis() as u64;
        check_rules(to, user.as_ref(), now_ms(), window_ms, u32::MAX).map_err(|(_, e)| e)?;
        let api = self.inner.api.with_base(&session.base);
        let cached = {
            let tickets = self.inner.typing_tickets.lock().unwrap_or_else(|p| p.into_inner());
            tickets.get(to).filter(|(_, at)| at.elapsed() < TICKET_TTL).map(|(t, _)| t.clone())
        };
        let ticket = match cached {
            Some(t) => t,
            None => {
                let context = user.and_then(|u| u.context_token);
                let v = api
                    .post(
                        "getconfig",
                        "getconfig",
                        Some(&session.token),
                        json!({"ilink_user_id": to, "context_token": context}),
                        Some(std::time::Duration::from_secs(10)),
                    )
                    .await
                    .map_err(super::api::ApiError::into_backend)?;
                let ticket = v
                    .get("typing_ticket")
                    .and_then(Value::as_str)
                    .filter(|t| !t.is_empty() && t.len() <= 4096)
                    .ok_or_else(|| {
                        BackendError::Unavailable("iLink getconfig answered without a typing_ticket".into())
                    })?
                    .to_owned();
                let mut tickets = self.inner.typing_tickets.lock().unwrap_or_else(|p| p.into_inner());
                if tickets.len() >= TICKETS_KEPT {
                    tickets.retain(|_, (_, at)| at.elapsed() < TICKET_TTL);
                    if tickets.len() >= TICKETS_KEPT {
                        tickets.clear();
                    }
                }
                tickets.insert(to.to_owned(), (ticket.clone(), std::time::Instant::now()));
                ticket
            }
        };
        let body = json!({"ilink_user_id": to, "typing_ticket": ticket, "status": if typing { 1 } else { 2 }});
        api.post("sendtyping", "sendtyping", Some(&session.token), body, Some(std::time::Duration::from_secs(10)))
            .await
            .map_err(super::api::ApiError::into_backend)?;
        Ok(())
    }

    /// Sends `content` to user `to`; `outcome` says how it went, for the metrics.
    pub(super) async fn send_to(
        &self,
        to: &ConversationId,
        content: Outgoing,
        outcome: &mut IlinkSendOutcome,
    ) -> BackendResult<Option<MessageId>> {
        *outcome = IlinkSendOutcome::failed;
        let to = to.as_str();
        if to.ends_with("@chatroom") {
            return Err(BackendError::PlatformLimit { op: "send", reason: NO_ROOMS });
        }
        let session = self.online("send")?;
        // One send at a time per account: the quota is counted exactly.
        let _turn = self.inner.sending.lock().await;
        let user = self.user(to).await?;
        let settings = &self.inner.settings;
        let window_ms = settings.session_window.as_millis() as u64;
        if let Err((refusal, e)) = check_rules(to, user.as_ref(), now_ms(), window_ms, settings.replies_per_message) {
            *outcome = refusal;
            return Err(e);
        }
        let mut user = user.unwrap_or_default();
        let api = self.inner.api.with_base(&session.base);
        let mut message = Message {
            talker_id: ContactId(session.bot_id.clone()),
            listener_id: ContactId(to.into()),
            ..Default::default()
        };
        let mut kept_file = None;
        let item = match content {
            Outgoing::Text { text, mentions } => {
                if !mentions.is_empty() {
                    return Err(BackendError::PlatformLimit { op: "mentions", reason: NO_ROOMS });
                }
                if text.trim().is_empty() {
                    return Err(BackendError::InvalidArgument("`text` is empty".into()));
                }
                if text.len() > MAX_TEXT_BYTES {
                    return Err(BackendError::InvalidArgument(format!(
                        "the text is {} bytes of UTF-8; iLink takes at most {MAX_TEXT_BYTES}",
                        text.len()
                    )));
                }
                message.kind = MessageType::Text;
                message.text.clone_from(&text);
                json!({"type": 1, "text_item": {"text": text}})
            }
            Outgoing::File(fb) => {
                let bytes = self.file_bytes(&fb).await?;
                let kind = media_type_of(&fb.name);
                let up = cdn::upload(&api, &settings.cdn_base, &session.token, to, kind, &bytes)
                    .await
                    .map_err(super::api::ApiError::into_backend)?;
                let media = json!({
                    "encrypt_query_param": up.param,
                    // As Tencent's client sends it: base64 of the key's hex digits.
                    "aes_key": base64::engine::general_purpose::STANDARD.encode(cdn::hex(&up.key)),
                    "encrypt_type": 1,
                });
                message.filename.clone_from(&fb.name);
                let meta = self.inner.blobs.put(&bytes).await?;
                let mut kept = FileBox::new(fb.name.clone(), FileBoxSource::Uuid(meta.id));
                kept.size = Some(meta.size);
                kept_file = Some(kept.to_json());
                match kind {
                    MediaType::Image => {
                        message.kind = MessageType::Image;
                        json!({"type": 2, "image_item": {"media": media, "mid_size": up.cipher_size}})
                    }
                    MediaType::Video => {
                        message.kind = MessageType::Video;
                        json!({"type": 5, "video_item": {"media": media, "video_size": up.cipher_size}})
                    }
                    MediaType::File => {
                        message.kind = MessageType::Attachment;
                        json!({"type": 4, "file_item": {"media": media, "file_name": fb.name, "len": up.size.to_string()}})
                    }
                }
            }
            _ => {
                return Err(BackendError::PlatformLimit {
                    op: "send",
                    reason: "iLink bots send text, images, videos and files only",
                });
            }
        };
        let mut client_id = [0u8; 12];
        getrandom::fill(&mut client_id).map_err(|e| BackendError::Internal(format!("no randomness: {e}")))?;
        let client_id = format!("puppet-rs-{}", cdn::hex(&client_id));
        let body = json!({"msg": {
            "from_user_id": "", "to_user_id": to, "client_id": client_id,
            "message_type": 2, "message_state": 2, "item_list": [item],
            "context_token": user.context_token,
        }});
        let answer = api.post("sendmessage", "sendmessage", Some(&session.token), body, None).await;
        let v: Value = match answer {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, super::api::ApiError::Ret { .. }) {
                    *outcome = IlinkSendOutcome::platform_refused;
                }
                tracing::info!(error = %e, "an iLink send failed");
                return Err(e.into_backend());
            }
        };
        *outcome = IlinkSendOutcome::sent;
        user.sent_since += 1;
        self.put_user(to, &user)?;
        let id = id_text(v.get("message_id")).map_or_else(|| format!("ilink-{client_id}"), |m| format!("ilink-{m}"));
        message.id = MessageId(id);
        message.timestamp_ms = now_ms();
        let stored = Stored { message, media: None, quote: None, file: kept_file };
        self.keep(to, &stored)?;
        Ok(Some(stored.message.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: u64 = 3_600_000;

    #[test]
    fn rules_name_the_rule_and_when_it_reopens() {
        let user = User { context_token: Some("c".into()), last_inbound_ms: 10 * H, sent_since: 0, first_seen_ms: 0 };
        assert!(check_rules("u", Some(&user), 11 * H, 24 * H, 10).is_ok());
        let (o, e) = check_rules("u", None, 0, 24 * H, 10).unwrap_err();
        assert_eq!(o, IlinkSendOutcome::no_conversation);
        assert!(e.to_string().contains("has not written"), "{e}");
        let (o, e) = check_rules("u", Some(&user), 34 * H, 24 * H, 10).unwrap_err();
        assert_eq!(o, IlinkSendOutcome::window_closed);
        assert!(e.to_string().contains("window") && e.to_string().contains("1970-01-02T10:00:00Z"), "{e}");
        let full = User { sent_since: 10, ..user };
        let (o, e) = check_rules("u", Some(&full), 11 * H, 24 * H, 10).unwrap_err();
        assert_eq!(o, IlinkSendOutcome::quota_used);
        assert!(e.to_string().contains("quota of 10") && e.to_string().contains("reopens when they write"), "{e}");
    }

    #[test]
    fn dates_are_civil() {
        assert_eq!(when(0), "1970-01-01T00:00:00Z");
        assert_eq!(when(1_700_000_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(media_type_of("a.PNG"), MediaType::Image);
        assert_eq!(media_type_of("clip.mp4"), MediaType::Video);
        assert_eq!(media_type_of("doc"), MediaType::File);
        // Voice goes out as a file, as the reference client sends audio (README).
        assert_eq!(media_type_of("voice.silk"), MediaType::File);
        assert_eq!(media_type_of("note.mp3"), MediaType::File);
    }
}
