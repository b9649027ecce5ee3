//! The account's life: a session from the store, the given token or a QR login; then online
//! (`notifystart`, LOGIN, READY) and the long-poll until stopped (`notifystop`) or the token goes
//! stale (LOGOUT with the reason, the session forgotten, a fresh QR).

use std::time::Duration;

use puppet_proto::event::{DataPayload, LoginEvent, LogoutEvent, PuppetEvent, ScanEvent};
use puppet_proto::ids::ContactId;
use puppet_proto::model::ScanStatus;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

use super::api::{ApiError, enc};
use super::sync::Ended;
use super::{Ilink, KV, Session};

/// The client-side bound of one QR status long-poll (the server holds it ~35 s).
const QR_POLL_TIMEOUT: Duration = Duration::from_secs(40);
/// The pause between two QR status polls, as Tencent's client makes.
const QR_POLL_PAUSE: Duration = Duration::from_secs(1);
/// The pause after a failed QR fetch before the next try.
const QR_RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Why a QR login ended without a session.
enum LoginEnd {
    Cancelled,
    GaveUp(String),
}

fn token_hash(token: &str) -> String {
    super::cdn::hex(&Sha256::digest(token.as_bytes()))
}

/// The bot id inside a token (`<bot id>:<secret>`), else a fixed name.
fn bot_id_of(token: &str) -> String {
    match token.split_once(':') {
        Some((id, _)) if id.ends_with("@im.bot") && id.len() <= 64 => id.to_owned(),
        _ => "ilink-bot@im.bot".to_owned(),
    }
}

/// Sleeps unless cancelled first; false when cancelled.
pub(super) async fn pause(cancel: &CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => false,
        _ = tokio::time::sleep(d) => true,
    }
}

impl Ilink {
    fn scan(&self, status: ScanStatus, qrcode: Option<String>, data: &str) {
        self.emit(PuppetEvent::Scan(ScanEvent { status: status.wire(), qrcode, data: Some(data.to_owned()) }));
    }

    /// The stored session, else one from `PUPPET_ILINK_BOT_TOKEN` unless that token is known stale.
    async fn saved_session(&self) -> Option<Session> {
        let store = self.inner.store.clone();
        let read =
            store.read(|s| Ok((s.kv().get::<Session>(KV, "session")?, s.kv().get::<String>(KV, "stale_given")?))).await;
        let (stored, stale_given) = match read {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "the iLink session could not be read from the store");
                (None, None)
            }
        };
        if stored.is_some() {
            return stored;
        }
        let token = self.inner.settings.bot_token.clone()?;
        if stale_given.as_deref() == Some(token_hash(&token).as_str()) {
            tracing::info!("PUPPET_ILINK_BOT_TOKEN went stale before: showing a login QR instead");
            return None;
        }
        Some(Session { bot_id: bot_id_of(&token), token, base: self.inner.settings.api_base.clone(), owner: None })
    }

    /// Forgets a session whose token no longer works (the cursor belongs to it too).
    pub(super) fn forget_session(&self, session: &Session) {
        let kv = self.inner.store.kv();
        kv.delete(KV, "session");
        kv.delete(KV, "buf");
        if self.inner.settings.bot_token.as_deref() == Some(session.token.as_str())
            && let Err(e) = kv.put(KV, "stale_given", &token_hash(&session.token))
        {
            tracing::warn!(error = %e, "could not record that the given bot token is stale");
        }
    }

    /// Runs the account until `cancel` (Stop, Logout or shutdown).
    pub(super) async fn run(self, cancel: CancellationToken, generation: u64) {
        loop {
            let session = match self.saved_session().await {
                Some(s) => s,
                None => match self.qr_login(&cancel).await {
                    Ok(s) => s,
                    Err(LoginEnd::Cancelled) => return,
                    Err(LoginEnd::GaveUp(reason)) => {
                        tracing::warn!(%reason, "iLink login gave up");
                        self.emit(PuppetEvent::Error(puppet_proto::event::ErrorEvent::new(
                            tonic::Code::FailedPrecondition as i32,
                            format!("iLink login stopped: {reason}; Start tries again"),
                        )));
                        let mut s = self.state();
                        if s.generation == generation {
                            s.running = None;
                        }
                        return;
                    }
                },
            };
            // Stored whichever way it came (a given token too): a restart resumes without a scan.
            if let Err(e) = self.inner.store.kv().put(KV, "session", &session) {
                tracing::error!(error = %e, "the iLink session could not be stored");
            }
            let api = self.inner.api.with_base(&session.base);
            match api.post("notifystart", "msg/notifystart", Some(&session.token), json!({}), None).await {
                Ok(_) => {}
                Err(ApiError::Stale(code)) => {
                    self.went_stale(&session, code);
                    continue;
                }
                Err(e) => tracing::warn!(error = %e, "iLink notifystart failed; polling anyway"),
            }
            self.state().session = Some(session.clone());
            tracing::info!(bot = %session.bot_id, "iLink bot online");
            self.emit(PuppetEvent::Login(LoginEvent { contact_id: ContactId(session.bot_id.clone()) }));
            self.emit(PuppetEvent::Ready(DataPayload { data: "iLink: users appear as they write".into() }));
            match self.monitor(&api, &session, &cancel).await {
                Ended::Cancelled => {
                    // A short, independent bound: notifystop must not hold up a shutdown.
                    let stop = api.post(
                        "notifystop",
                        "msg/notifystop",
                        Some(&session.token),
                        json!({}),
                        Some(Duration::from_secs(3)),
                    );
                    if let Err(e) = stop.await {
                        tracing::debug!(error = %e, "iLink notifystop failed");
                    }
                    return;
                }
                Ended::Stale(code) => self.went_stale(&session, code),
            }
        }
    }

    fn went_stale(&self, session: &Session, code: i64) {
        tracing::warn!(bot = %session.bot_id, "iLink bot token is stale; logging out");
        self.forget_session(session);
        let was_online = self.state().session.take().is_some();
        if was_online {
            self.emit(PuppetEvent::Logout(LogoutEvent {
                contact_id: ContactId(session.bot_id.clone()),
                data: format!(
                    "iLink says the bot token is stale (errcode {code}): scan the new login QR to log in again"
                ),
            }));
        }
    }

    /// The QR login: QR codes until one is confirmed, at most `--ilink-qr-refreshes` replacements.
    async fn qr_login(&self, cancel: &CancellationToken) -> Result<Session, LoginEnd> {
        let settings = &self.inner.settings;
        let mut refreshes = 0u32;
        let mut failures = 0u32;
        let qr_endpoint = format!("get_bot_qrcode?bot_type={}", enc(&settings.bot_type));
        loop {
            let fetched = tokio::select! {
                _ = cancel.cancelled() => return Err(LoginEnd::Cancelled),
                r = self.inner.api.post(
                    "get_bot_qrcode",
                    &qr_endpoint,
                    None,
                    json!({"local_token_list": []}),
                    None,
                ) => r,
            };
            let (qrcode, content) = match fetched.map(|v| {
                (
                    v.get("qrcode").and_then(Value::as_str).unwrap_or("").to_owned(),
                    v.get("qrcode_img_content").and_then(Value::as_str).unwrap_or("").to_owned(),
                )
            }) {
                Ok((q, c)) if !q.is_empty() && !c.is_empty() && q.len() <= 512 && c.len() <= 2048 => (q, c),
                Ok(_) => return Err(LoginEnd::GaveUp("get_bot_qrcode answered without a usable QR".into())),
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "fetching the iLink login QR failed");
                    if failures > settings.qr_refreshes {
                        return Err(LoginEnd::GaveUp(format!("fetching a login QR failed {failures} times: {e}")));
                    }
                    if !pause(cancel, QR_RETRY_PAUSE).await {
                        return Err(LoginEnd::Cancelled);
                    }
                    continue;
                }
            };
            if self.inner.print_qr {
                print_qr(&content);
            }
            self.scan(ScanStatus::Waiting, Some(content.clone()), "wait");
            let mut poll = self.inner.api.clone();
            let mut last = "wait".to_owned();
            let status_endpoint = format!("get_qrcode_status?qrcode={}", enc(&qrcode));
            let next = loop {
                let answer = tokio::select! {
                    _ = cancel.cancelled() => return Err(LoginEnd::Cancelled),
                    r = poll.get("get_qrcode_status", &status_endpoint, QR_POLL_TIMEOUT) => r,
                };
                let v = match answer {
                    Ok(v) => v,
                    // As Tencent's client: a timeout or a gateway error is another `wait`.
                    Err(e) => {
                        tracing::debug!(error = %e, "QR status poll failed; polling again");
                        json!({"status": "wait"})
                    }
                };
                let status = v.get("status").and_then(Value::as_str).unwrap_or("wait").to_owned();
                let changed = status != last;
                last.clone_from(&status);
                match status.as_str() {
                    "confirmed" => {
                        let token = v.get("bot_token").and_then(Value::as_str).unwrap_or("");
                        let bot_id = v.get("ilink_bot_id").and_then(Value::as_str).unwrap_or("");
                        if token.is_empty() || bot_id.is_empty() || bot_id.len() > 128 {
                            return Err(LoginEnd::GaveUp(
                                "the login was confirmed without a bot token or ilink_bot_id".into(),
                            ));
                        }
                        let base = v
                            .get("baseurl")
                            .and_then(Value::as_str)
                            .map(|b| b.trim_end_matches('/'))
                            .filter(|b| b.starts_with("https://") || b.starts_with("http://"))
                            .map_or_else(|| poll.base().to_owned(), String::from);
                        self.scan(ScanStatus::Confirmed, None, "confirmed");
                        let owner = v.get("ilink_user_id").and_then(Value::as_str).map(String::from);
                        return Ok(Session { token: token.to_owned(), bot_id: bot_id.to_owned(), base, owner });
                    }
                    "scaned" if changed => self.scan(ScanStatus::Scanned, None, "scaned"),
                    "scaned_but_redirect" => {
                        if let Some(host) = v.get("redirect_host").and_then(Value::as_str).filter(|h| valid_host(h)) {
                            // The scheme stays the configured one's (https in production).
                            let scheme = if self.inner.api.base().starts_with("http://") { "http" } else { "https" };
                            poll = self.inner.api.with_base(&format!("{scheme}://{host}"));
                        }
                        if changed {
                            self.scan(ScanStatus::Scanned, None, "scaned_but_redirect");
                        }
                    }
                    "need_verifycode" if changed => self.scan(
                        ScanStatus::Scanned,
                        None,
                        "need_verifycode: the phone shows a number to type in; this server cannot take it, \
                         so the QR will expire and a new one follows",
                    ),
                    "expired" | "verify_code_blocked" => break status,
                    "binded_redirect" => {
                        self.scan(ScanStatus::Cancel, None, "binded_redirect");
                        return Err(LoginEnd::GaveUp(
                            "binded_redirect: this WeChat account's bot is bound already and iLink issues no new \
                             token; give the earlier token with PUPPET_ILINK_BOT_TOKEN"
                                .into(),
                        ));
                    }
                    _ => {}
                }
                if !pause(cancel, QR_POLL_PAUSE).await {
                    return Err(LoginEnd::Cancelled);
                }
            };
            refreshes += 1;
            self.scan(ScanStatus::Timeout, None, &next);
            if refreshes > settings.qr_refreshes {
                return Err(LoginEnd::GaveUp(format!(
                    "the login QR ended `{next}` {refreshes} times (PUPPET_ILINK_QR_REFRESHES={})",
                    settings.qr_refreshes
                )));
            }
        }
    }
}

fn valid_host(h: &str) -> bool {
    !h.is_empty() && h.len() <= 255 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

fn print_qr(text: &str) {
    use std::io::Write;
    let art = qrcode::QrCode::new(text.as_bytes())
        .map(|q| q.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    _ = writeln!(out, "scan with WeChat to log in (iLink): {text}\n{art}");
    _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bot_id_comes_from_the_token_prefix_only() {
        assert_eq!(bot_id_of("44b9b8ec@im.bot:0600secret"), "44b9b8ec@im.bot");
        assert_eq!(bot_id_of("opaque-token"), "ilink-bot@im.bot");
        assert!(valid_host("sz.ilinkai.weixin.qq.com"));
        assert!(!valid_host("evil.com/path"));
    }
}
