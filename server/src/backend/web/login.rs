//! Login (spec §1): a stored session re-validated with `synccheck`, else a push login (the phone
//! confirms; `webwxpushloginurl` with the old session's cookies), else the QR flow — `jslogin`,
//! the long-polled `login` (408 wait, 201 scanned, 200 redirect, 400 expired → a new QR, bounded),
//! the ticket exchange (XML; `ret` ≠ 0 such as 1203 ends in LOGOUT with the platform's words), then
//! `webwxinit`, `webwxstatusnotify` and the contacts (`webwxgetcontact` pages, rooms through
//! `webwxbatchgetcontact` in fifties).

use std::collections::BTreeMap;
use std::time::Duration;

use puppet_proto::event::{ErrorEvent, LoginEvent, PuppetEvent, ScanEvent};
use puppet_proto::ids::ContactId;
use puppet_proto::model::ScanStatus;
use serde_json::{Value, json};

use super::session::{self, APP_ID, Endpoints, Session, WireError, now_ms};
use super::{NS, Phase, WebBackend};

/// Pages of `webwxgetcontact` read at most (the platform pages by a few hundred).
const MAX_CONTACT_PAGES: usize = 200;

/// How a login attempt ended without a session.
enum Failed {
    /// The platform refused the account (ticket exchange `ret` ≠ 0): LOGOUT with this text.
    Refused(String),
    /// Something else: an ERROR event, the account stays offline until the next Start.
    Error(String),
}

impl From<WireError> for Failed {
    fn from(e: WireError) -> Self {
        Failed::Error(e.to_string())
    }
}

impl WebBackend {
    /// The account's whole life for one Start: log in (or resume), then keep the session until it
    /// ends. Dropped at shutdown or when Logout cancels it.
    pub(super) async fn run(self, generation: u64) {
        let stored = self.stored_session().await;
        let resumed = match stored.clone() {
            Some(s) => self.resume(s).await,
            None => None,
        };
        let session = match resumed {
            Some(s) => s,
            None => match self.qr_login(self.push_uuid(stored.as_ref()).await).await {
                Ok(s) => s,
                Err(Failed::Refused(reason)) => {
                    self.logged_out(reason);
                    return;
                }
                Err(Failed::Error(reason)) => {
                    tracing::warn!("web WeChat login failed: {reason}");
                    self.emit(PuppetEvent::Error(ErrorEvent { data: reason.clone(), gerror: reason }));
                    let mut st = self.state();
                    if st.generation == generation {
                        st.phase = Phase::Offline;
                        st.cancel = None;
                    }
                    return;
                }
            },
        };
        let session = match self.bootstrap(session).await {
            Ok(s) => s,
            Err(WireError::Ret { ret, msg, .. }) if (1100..=1102).contains(&ret) => {
                self.logged_out(format!("web WeChat ended the session at init (Ret {ret}{msg})"));
                return;
            }
            Err(e @ WireError::Transport { .. }) => {
                // Unreachable, not refused: the session (if stored) stays for the next Start.
                let reason = format!("web WeChat login could not finish: {e}");
                tracing::warn!("{reason}");
                self.emit(PuppetEvent::Error(ErrorEvent { data: reason.clone(), gerror: reason }));
                let mut st = self.state();
                if st.generation == generation {
                    st.phase = Phase::Offline;
                    st.cancel = None;
                }
                return;
            }
            Err(e) => {
                self.logged_out(format!("web WeChat login could not finish: {e}"));
                return;
            }
        };
        let me = {
            let mut st = self.state();
            if st.generation != generation {
                return;
            }
            st.phase = Phase::Online;
            st.session = Some(session.clone());
            let un = st.me["UserName"].as_str().unwrap_or_default().to_owned();
            Self::id_for(&mut st, &un)
        };
        self.persist(&session);
        tracing::info!(contact_id = %me, "web WeChat account logged in");
        self.emit(PuppetEvent::Login(LoginEvent { contact_id: ContactId(me) }));
        self.emit(PuppetEvent::ready());
        self.sync_loop().await;
    }

    async fn stored_session(&self) -> Option<Session> {
        let store = self.inner.store.clone();
        match store.read(|s| s.kv().get::<Session>(NS, "session")).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "the stored web session is unreadable; a scan is needed");
                None
            }
        }
    }

    /// A stored session, if `synccheck` says it is alive (retcode 0).
    async fn resume(&self, s: Session) -> Option<Session> {
        match self.synccheck(&s).await {
            Ok((0, _)) => {
                tracing::info!("web WeChat session resumed without a scan");
                Some(s)
            }
            Ok((retcode, _)) => {
                tracing::info!(retcode, "the stored web session is no longer valid; a scan is needed");
                self.forget_session();
                None
            }
            Err(e) => {
                // Kept: WeChat may just be unreachable now; the next Start checks it again.
                tracing::warn!("the stored web session could not be checked ({e}); showing a QR code");
                None
            }
        }
    }

    /// Push login (spec §1.2): with the long-lived cookies of an expired session, WeChat asks the
    /// phone to confirm instead of showing a QR code. The uuid to poll, if WeChat agreed.
    async fn push_uuid(&self, old: Option<&Session>) -> Option<String> {
        let old = old?;
        if !old.cookies.contains_key("webwx_auth_ticket") {
            return None;
        }
        let settings = &self.inner.wire.settings;
        let url = format!("{}/cgi-bin/mmwebwx-bin/webwxpushloginurl", settings.login_base);
        let mut q = vec![("uin", old.uin.clone())];
        if settings.uos {
            q.push(("mod", "desktop".into()));
        }
        let a = self
            .inner
            .wire
            .get("webwxpushloginurl", &url, &q, Some(&old.cookie_header()), &[], Duration::from_secs(30))
            .await
            .ok()?;
        let v: Value = serde_json::from_str(&a.text).ok()?;
        let ok = v["ret"].as_str() == Some("0") || v["ret"].as_i64() == Some(0);
        let uuid = v["uuid"].as_str().filter(|u| ok && !u.is_empty() && u.len() <= 64)?;
        tracing::info!("web WeChat asked the phone to confirm the login (push login)");
        Some(uuid.to_owned())
    }

    /// The QR flow up to a session (before `webwxinit`), starting with a push login's uuid if any.
    async fn qr_login(&self, mut push: Option<String>) -> Result<Session, Failed> {
        let settings = self.inner.wire.settings.clone();
        let mut jar = BTreeMap::new();
        for _ in 0..settings.qr_codes {
            let (uuid, tip) = match push.take() {
                Some(u) => (u, "1"),
                None => (self.new_uuid().await?, "0"),
            };
            let qrcode = format!("https://login.weixin.qq.com/l/{uuid}");
            if settings.print_qr {
                print_qr(&qrcode);
            }
            self.emit(PuppetEvent::scan(ScanStatus::Waiting, Some(qrcode)));
            let mut scanned = false;
            let redirect = loop {
                let url = format!("{}/cgi-bin/mmwebwx-bin/login", settings.login_base);
                let ms = now_ms();
                let q = [
                    ("loginicon", "true".to_owned()),
                    ("uuid", uuid.clone()),
                    ("tip", tip.into()),
                    ("r", format!("{}", -((ms / 1579) as i64))),
                    ("_", ms.to_string()),
                ];
                let a = self.inner.wire.get("login", &url, &q, None, &[], settings.poll_timeout).await?;
                match js_number(&a.text, "window.code=") {
                    Some(408) => continue,
                    Some(201) => {
                        if !scanned {
                            scanned = true;
                            // The phone's avatar (a `data:` URL) rides in the scan payload's `data`, as
                            // puppet-wechat4u and puppet-wechat do.
                            let avatar =
                                js_single_quoted(&a.text, "window.userAvatar = ").filter(|v| v.starts_with("data:"));
                            self.emit(PuppetEvent::Scan(ScanEvent {
                                status: ScanStatus::Scanned.wire(),
                                qrcode: None,
                                data: avatar,
                            }));
                        }
                    }
                    Some(200) => {
                        let r = js_string(&a.text, "window.redirect_uri=").ok_or_else(|| {
                            Failed::Error("the login poll answered 200 without a redirect_uri".into())
                        })?;
                        break Some(r);
                    }
                    // 400 (expired) and anything else: a new QR code.
                    _ => break None,
                }
            };
            let Some(redirect) = redirect else {
                self.emit(PuppetEvent::scan(ScanStatus::Timeout, None));
                continue;
            };
            self.emit(PuppetEvent::scan(ScanStatus::Confirmed, None));
            return self.exchange_ticket(&redirect, &mut jar).await;
        }
        Err(Failed::Error(format!(
            "no QR code was confirmed; {} shown (PUPPET_WEB_QR_CODES). Call Start to try again",
            settings.qr_codes
        )))
    }

    async fn new_uuid(&self) -> Result<String, Failed> {
        let settings = &self.inner.wire.settings;
        let redirect = if settings.uos {
            "https://wx.qq.com/cgi-bin/mmwebwx-bin/webwxnewloginpage?mod=desktop"
        } else {
            "https://wx.qq.com/cgi-bin/mmwebwx-bin/webwxnewloginpage"
        };
        let q = [
            ("appid", APP_ID.to_owned()),
            ("fun", "new".into()),
            ("lang", "zh_CN".into()),
            ("redirect_uri", redirect.into()),
            ("_", now_ms().to_string()),
        ];
        let url = format!("{}/jslogin", settings.login_base);
        let a = self.inner.wire.get("jslogin", &url, &q, None, &[], Duration::from_secs(30)).await?;
        match (js_number(&a.text, "window.QRLogin.code = "), js_string(&a.text, "window.QRLogin.uuid = ")) {
            (Some(200), Some(uuid)) if !uuid.is_empty() && uuid.len() <= 64 => Ok(uuid),
            _ => Err(Failed::Error(format!(
                "jslogin gave no QR code (HTTP {}): {}",
                a.status,
                puppet_proto::ids::Shown(&a.text)
            ))),
        }
    }

    /// `webwxnewloginpage`: the tickets (XML) and cookies of a confirmed login.
    async fn exchange_ticket(&self, redirect: &str, jar: &mut BTreeMap<String, String>) -> Result<Session, Failed> {
        let settings = &self.inner.wire.settings;
        let url: reqwest::Url = redirect.parse().map_err(|_| {
            Failed::Error(format!("the login redirect is not a URL: {}", puppet_proto::ids::Shown(redirect)))
        })?;
        let endpoints = Endpoints::from_redirect(&url);
        let mut extra = Vec::new();
        if settings.uos {
            extra.push(("client-version", "2.0.0".to_owned()));
            extra.push(("extspam", settings.extspam.clone()));
            extra.push(("referer", "https://wx.qq.com/?&lang=zh_CN&target=t".to_owned()));
        }
        let q = [("fun", "new".to_owned()), ("version", "v2".into())];
        let a = self.inner.wire.get("webwxnewloginpage", redirect, &q, None, &extra, Duration::from_secs(30)).await?;
        session::absorb_cookies(jar, &a.headers);
        let tag = |t: &str| session::xml_tag(&a.text, t).map(str::to_owned);
        let ret = tag("ret").and_then(|r| r.trim().parse::<i64>().ok());
        match ret {
            Some(0) => {}
            Some(code) => {
                let message = tag("message").unwrap_or_default();
                return Err(Failed::Refused(format!(
                    "web WeChat refused this account (ret {code}): {}",
                    if message.is_empty() { "no reason given".to_owned() } else { message }
                )));
            }
            None => {
                return Err(Failed::Error(format!(
                    "the ticket exchange answered HTTP {} without a <ret>: {}",
                    a.status,
                    puppet_proto::ids::Shown(&a.text)
                )));
            }
        }
        let cookie = |k: &str| jar.get(k).cloned();
        let (Some(skey), Some(sid), Some(uin), Some(pass_ticket)) = (
            tag("skey"),
            tag("wxsid").or_else(|| cookie("wxsid")),
            tag("wxuin").or_else(|| cookie("wxuin")),
            tag("pass_ticket"),
        ) else {
            return Err(Failed::Refused(
                "web WeChat gave no session (no skey, wxsid, wxuin or pass_ticket): the account may be barred from web login"
                    .into(),
            ));
        };
        Ok(Session {
            endpoints,
            cookies: jar.clone(),
            uin,
            sid,
            skey,
            pass_ticket,
            device_id: session::device_id(),
            sync_key: Value::Null,
            sync_check_key: Value::Null,
            self_user_name: String::new(),
        })
    }

    /// `webwxinit`, `webwxstatusnotify`, the contacts. A resumed session keeps its sync keys (what
    /// arrived meanwhile is still to be synced).
    async fn bootstrap(&self, mut s: Session) -> Result<Session, WireError> {
        let wire = &self.inner.wire;
        let url = format!("{}/webwxinit", s.endpoints.base);
        let ms = now_ms();
        let q = [("r", format!("{}", -((ms / 1579) as i64))), ("pass_ticket", s.pass_ticket.clone())];
        let (init, headers) =
            wire.post_json("webwxinit", &s, &url, &q, &json!({"BaseRequest": s.base_request()})).await?;
        s.absorb(&headers);
        if let Some(k) = init["SKey"].as_str().filter(|k| !k.is_empty()) {
            s.skey = k.to_owned();
        }
        if s.sync_key.is_null() {
            s.sync_key = init["SyncKey"].clone();
            s.sync_check_key = init["SyncKey"].clone();
        }
        let me = init["User"].clone();
        s.self_user_name = me["UserName"].as_str().unwrap_or_default().to_owned();
        if s.self_user_name.is_empty() {
            return Err(WireError::Malformed { what: "webwxinit", detail: "no User.UserName".into() });
        }
        {
            let mut st = self.state();
            st.ids.clear();
            st.contacts.clear();
            st.me = me;
            for c in init["ContactList"].as_array().into_iter().flatten() {
                if let Some(u) = c["UserName"].as_str() {
                    st.contacts.insert(u.to_owned(), c.clone());
                }
            }
        }
        let url = format!("{}/webwxstatusnotify", s.endpoints.base);
        let body = json!({"BaseRequest": s.base_request(), "Code": 3, "FromUserName": s.self_user_name,
            "ToUserName": s.self_user_name, "ClientMsgId": now_ms()});
        let q = [("lang", "zh_CN".to_owned()), ("pass_ticket", s.pass_ticket.clone())];
        if let Err(e) = wire.post_json("webwxstatusnotify", &s, &url, &q, &body).await {
            tracing::warn!("webwxstatusnotify failed ({e}); going on");
        }
        // Contacts, page by page until Seq is 0 (or repeats).
        let mut seq: u64 = 0;
        let mut all = Vec::new();
        for _ in 0..MAX_CONTACT_PAGES {
            let url = format!("{}/webwxgetcontact", s.endpoints.base);
            let q = [("r", now_ms().to_string()), ("seq", seq.to_string()), ("skey", s.skey.clone())];
            let a = wire
                .get("webwxgetcontact", &url, &q, Some(&s.cookie_header()), &[], wire.settings.poll_timeout)
                .await?;
            let v: Value = serde_json::from_str(&a.text)
                .map_err(|e| WireError::Malformed { what: "webwxgetcontact", detail: format!("not JSON ({e})") })?;
            session::check_ret("webwxgetcontact", &v)?;
            all.extend(v["MemberList"].as_array().cloned().unwrap_or_default());
            let next = v["Seq"].as_u64().unwrap_or(0);
            if next == 0 || next == seq {
                break;
            }
            seq = next;
        }
        let rooms: Vec<String> = {
            let mut st = self.state();
            for c in all {
                if let Some(u) = c["UserName"].as_str() {
                    st.contacts.insert(u.to_owned(), c.clone());
                }
            }
            st.contacts
                .iter()
                .filter(|(u, c)| super::ids::is_room(u) && c["MemberList"].as_array().is_none_or(Vec::is_empty))
                .map(|(u, _)| u.clone())
                .collect()
        };
        let fetched = self.batch_get(&s, &rooms).await?;
        let mut st = self.state();
        for c in fetched {
            if let Some(u) = c["UserName"].as_str() {
                st.contacts.insert(u.to_owned(), c.clone());
            }
        }
        // Ids of everyone known now, contacts first (so room members map to them). A key two
        // contacts share gives neither of them a stable id (which one would get it is arbitrary).
        let me_un = s.self_user_name.clone();
        Self::id_for(&mut st, &me_un);
        let mut keyed: Vec<(String, Option<String>)> = st
            .contacts
            .iter()
            .filter(|(u, _)| **u != me_un)
            .map(|(u, c)| (u.clone(), super::ids::stable_key(c, None)))
            .collect();
        keyed.sort_by(|a, b| (super::ids::is_room(&a.0), &a.0).cmp(&(super::ids::is_room(&b.0), &b.0)));
        let mut uses: std::collections::HashMap<String, usize> = std::collections::HashMap::new();
        for k in keyed.iter().filter_map(|(_, k)| k.clone()) {
            *uses.entry(k).or_default() += 1;
        }
        for (u, k) in keyed {
            let k = k.filter(|k| uses.get(k) == Some(&1));
            st.ids.assign(&u, k);
        }
        Ok(s)
    }
}

/// The number after `prefix` in a JS assignment body (`window.code=200;`).
fn js_number(text: &str, prefix: &str) -> Option<u32> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// The quoted string after `prefix` (`window.QRLogin.uuid = "…";`).
fn js_string(text: &str, prefix: &str) -> Option<String> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

/// The single-quoted string after `prefix` (`window.userAvatar = 'data:img/jpg;base64,…';`).
fn js_single_quoted(text: &str, prefix: &str) -> Option<String> {
    let rest = &text[text.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('\'')?;
    Some(rest[..rest.find('\'')?].to_owned())
}

fn print_qr(text: &str) {
    use std::io::Write;
    let art = qrcode::QrCode::new(text.as_bytes())
        .map(|q| q.render::<qrcode::render::unicode::Dense1x2>().quiet_zone(true).build())
        .unwrap_or_default();
    let mut out = std::io::stdout().lock();
    _ = writeln!(out, "scan with WeChat to log in (web): {text}\n{art}");
    _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Login poll bodies are outside input: any body gets an answer, never a panic.
        #[test]
        fn any_js_body_is_parsed_without_panicking(body in "(window\\.code=|window\\.userAvatar = |'|\"|;|[0-9a-zé😀 ]){0,40}") {
            let _ = js_number(&body, "window.code=");
            let _ = js_string(&body, "window.code=");
            let _ = js_single_quoted(&body, "window.userAvatar = ");
        }
    }

    #[test]
    fn js_bodies_parse_as_the_clients_parse_them() {
        let t = "window.QRLogin.code = 200; window.QRLogin.uuid = \"4dcaWx3uBw==\";";
        assert_eq!(js_number(t, "window.QRLogin.code = "), Some(200));
        assert_eq!(js_string(t, "window.QRLogin.uuid = ").as_deref(), Some("4dcaWx3uBw=="));
        let t = "window.code=200;\nwindow.redirect_uri=\"https://wx2.qq.com/cgi-bin/mmwebwx-bin/webwxnewloginpage?ticket=x&uuid=y\";";
        assert_eq!(js_number(t, "window.code="), Some(200));
        assert!(js_string(t, "window.redirect_uri=").unwrap().starts_with("https://wx2.qq.com/"));
        assert_eq!(js_number("garbage", "window.code="), None);
        assert_eq!(js_string("window.redirect_uri=\"unterminated", "window.redirect_uri="), None);
        let t = "window.code=201;window.userAvatar = 'data:img/jpg;base64,AAAA';";
        assert_eq!(js_single_quoted(t, "window.userAvatar = ").as_deref(), Some("data:img/jpg;base64,AAAA"));
        assert_eq!(js_single_quoted("window.code=201;", "window.userAvatar = "), None);
    }
}
