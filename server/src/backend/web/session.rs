//! The web session (hosts, cookies, tickets, sync keys) and the HTTP calls that carry it.
//!
//! Cookies are the real credential of web WeChat; this module keeps them itself (a name → value map,
//! host-agnostic, as every host of one login shares them) so that the whole session can be written
//! to the store and a restart can resume without a scan.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, HeaderValue};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::settings::WebSettings;

/// The app id every web client sends to `jslogin`.
pub const APP_ID: &str = "wx782c26e4c19acffb";
/// The browser the requests claim to come from (the UOS client is Chromium inside).
pub const USER_AGENT: &str =
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/111.0.0.0 Safari/537.36";
/// Bytes per upload chunk (all clients use 512 KiB).
pub const CHUNK: usize = 524_288;

/// The hosts of one login, derived from the redirect (spec §1.1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoints {
    /// `…/cgi-bin/mmwebwx-bin` on the main host.
    pub base: String,
    /// `…/cgi-bin/mmwebwx-bin` on the push host (synccheck).
    pub push: String,
    /// `…/cgi-bin/mmwebwx-bin` on the file host (upload, webwxgetmedia).
    pub file: String,
}

impl Endpoints {
    /// The hosts for a redirect URL: the known WeChat hosts by the table, anything else its own origin.
    pub fn from_redirect(redirect: &reqwest::Url) -> Self {
        let host = redirect.host_str().unwrap_or_default();
        let known = ["wx.qq.com", "wx2.qq.com", "wx8.qq.com", "web.wechat.com", "web2.wechat.com"];
        let path = "/cgi-bin/mmwebwx-bin";
        if known.contains(&host) {
            Self {
                base: format!("https://{host}{path}"),
                push: format!("https://webpush.{host}{path}"),
                file: format!("https://file.{host}{path}"),
            }
        } else {
            let origin = redirect.origin().ascii_serialization();
            let base = format!("{origin}{path}");
            Self { base: base.clone(), push: base.clone(), file: base }
        }
    }
}

/// Everything a logged-in web session is; persisted for hot reload. Its `Debug` shows no secret.
#[derive(Clone, Serialize, Deserialize)]
pub struct Session {
    /// The hosts.
    pub endpoints: Endpoints,
    /// Every cookie the platform set, by name.
    pub cookies: BTreeMap<String, String>,
    /// `wxuin`.
    pub uin: String,
    /// `wxsid`.
    pub sid: String,
    /// `skey`.
    pub skey: String,
    /// `pass_ticket`, as received (URL-encoded).
    pub pass_ticket: String,
    /// `e` + 15 digits, one per login.
    pub device_id: String,
    /// The last `SyncKey` object (for webwxsync).
    pub sync_key: Value,
    /// The last `SyncCheckKey` object (for synccheck).
    pub sync_check_key: Value,
    /// The bot's own `UserName` in this session.
    pub self_user_name: String,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("endpoints", &self.endpoints).field("uin", &self.uin).finish_non_exhaustive()
    }
}

impl Session {
    /// `BaseRequest` of every JSON call.
    pub fn base_request(&self) -> Value {
        let uin: Value = self.uin.parse::<u64>().map(Value::from).unwrap_or_else(|_| Value::from(self.uin.clone()));
        json!({"Uin": uin, "Sid": self.sid, "Skey": self.skey, "DeviceID": self.device_id})
    }

    /// The synccheck `synckey` parameter (`k_v|k_v…`), from SyncCheckKey, else SyncKey.
    pub fn synccheck_key(&self) -> String {
        let from = if self.sync_check_key["List"].as_array().is_some_and(|l| !l.is_empty()) {
            &self.sync_check_key
        } else {
            &self.sync_key
        };
        from["List"]
            .as_array()
            .map(|l| l.iter().map(|k| format!("{}_{}", k["Key"], k["Val"])).collect::<Vec<_>>().join("|"))
            .unwrap_or_default()
    }

    /// The `Cookie` header.
    pub fn cookie_header(&self) -> String {
        self.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("; ")
    }

    /// Takes the `Set-Cookie`s of a response.
    pub fn absorb(&mut self, headers: &HeaderMap) {
        absorb_cookies(&mut self.cookies, headers);
    }
}

/// Adds the cookies of `Set-Cookie` headers to `jar` (name and value only; a deleted cookie goes).
pub fn absorb_cookies(jar: &mut BTreeMap<String, String>, headers: &HeaderMap) {
    for v in headers.get_all(reqwest::header::SET_COOKIE) {
        let Ok(text) = v.to_str() else { continue };
        let pair = text.split(';').next().unwrap_or_default();
        if let Some((k, v)) = pair.split_once('=') {
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() {
                continue;
            }
            if v.is_empty() || v.eq_ignore_ascii_case("deleted") {
                jar.remove(k);
            } else {
                jar.insert(k.to_owned(), v.to_owned());
            }
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// No answer (connection, timeout).
    #[error("web WeChat did not answer {what}: {reason}")]
    Transport {
        /// The endpoint.
        what: &'static str,
        /// What happened.
        reason: String,
    },
    /// An answer that is not what the protocol says.
    #[error("web WeChat answered {what} with something unexpected: {detail}")]
    Malformed {
        /// The endpoint.
        what: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// `BaseResponse.Ret` ≠ 0.
    #[error("web WeChat refused {what}: Ret {ret}{}", if .msg.is_empty() { String::new() } else { format!(" ({})", puppet_proto::ids::Shown(.msg)) })]
    Ret {
        /// The endpoint.
        what: &'static str,
        /// The code.
        ret: i64,
        /// `ErrMsg`.
        msg: String,
    },
    /// A file larger than the limit.
    #[error("{what}: {size} bytes is more than the {limit}-byte limit (PUPPET_WEB_MAX_MEDIA_MIB)")]
    TooLarge {
        /// The endpoint.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
}

/// An HTTP answer as text.
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Headers.
    pub headers: HeaderMap,
    /// Body (lossy UTF-8).
    pub text: String,
}

/// The HTTP client of one account.
#[derive(Clone)]
pub struct Wire {
    http: reqwest::Client,
    /// The settings.
    pub settings: WebSettings,
}

/// Milliseconds since the epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_millis() as u64
}

impl Wire {
    /// A client that follows no redirects (the ticket exchange must see its 301).
    pub fn new(settings: WebSettings) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .user_agent(USER_AGENT)
            .build()?;
        Ok(Self { http, settings })
    }

    fn transport(what: &'static str, e: reqwest::Error) -> WireError {
        let reason = if e.is_timeout() { "timed out".to_owned() } else { e.without_url().to_string() };
        WireError::Transport { what, reason }
    }

    /// `GET url?query` with the given cookies and extra headers; the body as text.
    pub async fn get(
        &self,
        what: &'static str,
        url: &str,
        query: &[(&str, String)],
        cookies: Option<&str>,
        extra: &[(&'static str, String)],
        timeout: Duration,
    ) -> Result<Answer, WireError> {
        let mut req = self.http.get(url).query(query).timeout(timeout);
        if let Some(c) = cookies.filter(|c| !c.is_empty()) {
            req = req.header(reqwest::header::COOKIE, c);
        }
        for (k, v) in extra {
            if let Ok(v) = HeaderValue::from_str(v) {
                req = req.header(*k, v);
            }
        }
        let resp = req.send().await.map_err(|e| Self::transport(what, e))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = self.body(what, resp).await?;
        Ok(Answer { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() })
    }

    /// A response's body, at most `PUPPET_WEB_MAX_MEDIA_MIB` of it (contact lists of big accounts
    /// are several MiB of JSON; nothing WeChat answers is read without a bound).
    async fn body(&self, what: &'static str, mut resp: reqwest::Response) -> Result<Vec<u8>, WireError> {
        let limit = self.settings.max_media;
        let mut out = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| Self::transport(what, e))? {
            if out.len() + chunk.len() > limit {
                return Err(WireError::TooLarge { what, size: out.len() + chunk.len(), limit });
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// `GET` bytes (media), at most `PUPPET_WEB_MAX_MEDIA_MIB` of them.
    pub async fn get_bytes(
        &self,
        what: &'static str,
        url: &str,
        query: &[(&str, String)],
        session: &Session,
        range: bool,
    ) -> Result<(HeaderMap, Vec<u8>), WireError> {
        let mut req = self
            .http
            .get(url)
            .query(query)
            .timeout(Duration::from_secs(120))
            .header(reqwest::header::COOKIE, session.cookie_header());
        if range {
            req = req.header(reqwest::header::RANGE, "bytes=0-");
        }
        let resp = req.send().await.map_err(|e| Self::transport(what, e))?;
        let headers = resp.headers().clone();
        let limit = self.settings.max_media;
        if let Some(len) = resp.content_length()
            && len as usize > limit
        {
            return Err(WireError::TooLarge { what, size: len as usize, limit });
        }
        Ok((headers, self.body(what, resp).await?))
    }

    /// `POST` JSON to `<base>/<endpoint>?query` with the session's cookies; the answer's JSON, its
    /// `BaseResponse.Ret` checked. Cookies the answer sets are returned for the caller to keep.
    pub async fn post_json(
        &self,
        what: &'static str,
        session: &Session,
        url: &str,
        query: &[(&str, String)],
        body: &Value,
    ) -> Result<(Value, HeaderMap), WireError> {
        let resp = self
            .http
            .post(url)
            .query(query)
            .timeout(self.settings.poll_timeout)
            .header(reqwest::header::COOKIE, session.cookie_header())
            .header(reqwest::header::CONTENT_TYPE, "application/json;charset=UTF-8")
            .body(body.to_string())
            .send()
            .await
            .map_err(|e| Self::transport(what, e))?;
        let headers = resp.headers().clone();
        let bytes = self.body(what, resp).await?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| WireError::Malformed { what, detail: format!("not JSON ({e})") })?;
        check_ret(what, &v)?;
        Ok((v, headers))
    }

    /// `POST` a multipart form (uploads).
    pub async fn post_form(
        &self,
        what: &'static str,
        session: &Session,
        url: &str,
        form: reqwest::multipart::Form,
    ) -> Result<Value, WireError> {
        let resp = self
            .http
            .post(url)
            .query(&[("f", "json")])
            .timeout(Duration::from_secs(120))
            .header(reqwest::header::COOKIE, session.cookie_header())
            .multipart(form)
            .send()
            .await
            .map_err(|e| Self::transport(what, e))?;
        let bytes = self.body(what, resp).await?;
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| WireError::Malformed { what, detail: format!("not JSON ({e})") })?;
        check_ret(what, &v)?;
        Ok(v)
    }
}

/// `BaseResponse.Ret` must be 0.
pub fn check_ret(what: &'static str, v: &Value) -> Result<(), WireError> {
    let ret = &v["BaseResponse"]["Ret"];
    let code = ret.as_i64().or_else(|| ret.as_str().and_then(|s| s.parse().ok()));
    match code {
        Some(0) => Ok(()),
        Some(ret) => {
            Err(WireError::Ret { what, ret, msg: v["BaseResponse"]["ErrMsg"].as_str().unwrap_or_default().to_owned() })
        }
        None => Err(WireError::Malformed { what, detail: "no BaseResponse.Ret".into() }),
    }
}

/// `e` + 15 random digits (CSPRNG, as the device id is part of the session's identity).
pub fn device_id() -> String {
    let mut bytes = [0u8; 15];
    _ = getrandom::fill(&mut bytes);
    let digits: String = bytes.iter().map(|b| char::from(b'0' + b % 10)).collect();
    format!("e{digits}")
}

/// A `ClientMsgId`/`LocalID`: 13-digit ms + 4 random digits, as the official web client makes them.
pub fn client_msg_id() -> String {
    let mut bytes = [0u8; 4];
    _ = getrandom::fill(&mut bytes);
    let digits: String = bytes.iter().map(|b| char::from(b'0' + b % 10)).collect();
    format!("{}{digits}", now_ms())
}

/// Web WeChat's HTML-ish text to plain text: `<br/>` to newlines, entities decoded, emoji spans to
/// the characters they stand for.
pub fn plain_text(html: &str) -> String {
    let mut s = html.replace("<br/>", "\n");
    // Emoji: <span class="emoji emoji1f604"></span> (8 or 10 hex digits are two code points).
    while let Some(start) = s.find("<span class=\"emoji emoji") {
        let rest = &s[start + 24..];
        let Some(end) = rest.find("\"></span>") else { break };
        let hex = &rest[..end];
        // Only ASCII hex is split by length: anything else (a crafted text) would split inside a
        // multi-byte character.
        let chars: String = match hex.len() {
            _ if !hex.bytes().all(|b| b.is_ascii_hexdigit()) => String::new(),
            8 | 10 => {
                let (a, b) = hex.split_at(hex.len() / 2);
                [a, b].iter().filter_map(|h| u32::from_str_radix(h, 16).ok().and_then(char::from_u32)).collect()
            }
            _ => u32::from_str_radix(hex, 16).ok().and_then(char::from_u32).map(String::from).unwrap_or_default(),
        };
        s.replace_range(start..start + 24 + end + 9, &chars);
    }
    s.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&#39;", "'").replace("&amp;", "&")
}

/// The value of `<tag>…</tag>` in a small XML text (no nesting of the same tag).
pub fn xml_tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&close)? + start;
    let v = &xml[start..end];
    Some(v.strip_prefix("<![CDATA[").and_then(|v| v.strip_suffix("]]>")).unwrap_or(v))
}

/// The value of attribute `name="…"` in a small XML text.
pub fn xml_attr<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let key = format!(" {name}=\"");
    let start = xml.find(&key)? + key.len();
    let end = xml[start..].find('"')? + start;
    Some(&xml[start..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_follow_the_table_and_unknown_hosts_stay_on_their_origin() {
        let e =
            Endpoints::from_redirect(&"https://wx2.qq.com/cgi-bin/mmwebwx-bin/webwxnewloginpage?x=1".parse().unwrap());
        assert_eq!(e.push, "https://webpush.wx2.qq.com/cgi-bin/mmwebwx-bin");
        assert_eq!(e.file, "https://file.wx2.qq.com/cgi-bin/mmwebwx-bin");
        let e =
            Endpoints::from_redirect(&"http://127.0.0.1:4567/cgi-bin/mmwebwx-bin/webwxnewloginpage".parse().unwrap());
        assert_eq!(e.base, "http://127.0.0.1:4567/cgi-bin/mmwebwx-bin");
        assert_eq!(e.push, e.base);
        assert_eq!(e.file, e.base);
    }

    proptest::proptest! {
        /// WeChat's texts, XML and emoji spans are outside input: any text gets an answer, never a
        /// panic, and a value between its tags comes back as it was.
        #[test]
        fn any_text_is_parsed_without_panicking(text in "(<span class=\"emoji emoji|\"></span>|<br/>|&amp;|<a>|</a>| x=\"|\"|[0-9a-fé€😀]){0,40}") {
            let _ = plain_text(&text);
            let _ = xml_tag(&text, "a");
            let _ = xml_attr(&text, "x");
        }

        #[test]
        fn a_tag_value_comes_back(v in "[^<]{0,40}") {
            let xml = format!("<r><a>{v}</a></r>");
            proptest::prop_assert_eq!(xml_tag(&xml, "a"), Some(v.as_str()));
        }
    }

    #[test]
    fn an_emoji_span_of_other_bytes_is_dropped_not_split() {
        assert_eq!(plain_text("a<span class=\"emoji emojiaaa\u{e9}aaa\"></span>b"), "ab");
    }

    #[test]
    fn text_is_unescaped_with_emoji() {
        assert_eq!(plain_text("a &lt;b&gt; &amp; c<br/>d"), "a <b> & c\nd");
        assert_eq!(plain_text("x<span class=\"emoji emoji1f604\"></span>y"), "x\u{1f604}y");
        assert_eq!(plain_text("<span class=\"emoji emoji1f1e81f1f3\"></span>"), "\u{1f1e8}\u{1f1f3}");
        assert_eq!(plain_text("<span class=\"emoji emoji"), "<span class=\"emoji emoji");
    }

    #[test]
    fn cookies_are_absorbed_and_deleted() {
        let mut jar = BTreeMap::new();
        let mut h = HeaderMap::new();
        h.append(reqwest::header::SET_COOKIE, "wxuin=1; Path=/".parse().unwrap());
        h.append(reqwest::header::SET_COOKIE, "wxsid=abc; Domain=wx.qq.com".parse().unwrap());
        absorb_cookies(&mut jar, &h);
        assert_eq!(jar.get("wxsid").map(String::as_str), Some("abc"));
        let mut h = HeaderMap::new();
        h.append(reqwest::header::SET_COOKIE, "wxsid=; Path=/".parse().unwrap());
        absorb_cookies(&mut jar, &h);
        assert!(!jar.contains_key("wxsid"));
    }

    #[test]
    fn ids_are_well_formed() {
        let d = device_id();
        assert_eq!(d.len(), 16);
        assert!(d.starts_with('e') && d[1..].bytes().all(|b| b.is_ascii_digit()));
        assert!(client_msg_id().len() >= 17);
    }
}
