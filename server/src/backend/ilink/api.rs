//! The iLink HTTP/JSON API as Tencent's client (`@tencent-weixin/openclaw-weixin` 2.4.9,
//! `src/api/api.ts`) speaks it: every bot call is a POST of JSON carrying `base_info`, with the
//! headers `AuthorizationType: ilink_bot_token`, `Authorization: Bearer <token>`, a fresh random
//! `X-WECHAT-UIN` (base64 of a decimal uint32), `iLink-App-Id` and `iLink-App-ClientVersion`.
//! Answers carry `ret` (and sometimes `errcode`); `-14` means the bot token is stale.

use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};

use super::super::BackendError;

/// The error code of a stale bot token.
pub const STALE_TOKEN: i64 = -14;
/// The app id the channel's client declares (its `package.json` `ilink_appid`).
pub const APP_ID: &str = "bot";
/// The client version it declares: 2.4.9 as `0x00MMNNPP`.
pub const CLIENT_VERSION: u32 = (2 << 16) | (4 << 8) | 9;
/// `base_info.channel_version`.
pub const CHANNEL_VERSION: &str = "2.4.9";
/// The longest a regular call may take.
const API_TIMEOUT: Duration = Duration::from_secs(15);
/// The longest an answer body may be (long-poll batches included).
const MAX_BODY: usize = 8 << 20;

/// What went wrong talking to iLink.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The bot token is stale (`-14`): log in again.
    #[error("the bot token is stale (iLink answered {0})")]
    Stale(i64),
    /// iLink answered with an error code.
    #[error("iLink {call} answered ret {ret}: {msg}")]
    Ret {
        /// The call.
        call: &'static str,
        /// `ret` / `errcode`.
        ret: i64,
        /// `errmsg`.
        msg: String,
    },
    /// The request failed (network, HTTP status, unreadable answer).
    #[error("iLink {call}: {msg}")]
    Transport {
        /// The call.
        call: &'static str,
        /// What happened.
        msg: String,
    },
    /// The client-side timeout passed (normal for a long-poll).
    #[error("iLink {0} timed out")]
    Timeout(&'static str),
}

impl ApiError {
    /// The backend error a client sees.
    pub fn into_backend(self) -> BackendError {
        match self {
            ApiError::Stale(_) => BackendError::FailedPrecondition(
                "the iLink bot token is stale: the account logged out and shows a new login QR".into(),
            ),
            ApiError::Ret { call: "sendmessage", ret: -2, msg } => BackendError::FailedPrecondition(format!(
                "iLink refused the message (ret -2, {}): the conversation's context token expired or its quota of \
                 bot messages is used up; it reopens when the user writes again",
                puppet_proto::ids::Shown(&msg)
            )),
            e @ ApiError::Ret { .. } => BackendError::Internal(e.to_string()),
            e @ (ApiError::Transport { .. } | ApiError::Timeout(_)) => BackendError::Unavailable(e.to_string()),
        }
    }
}

/// An iLink client for one API base.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
    bot_agent: String,
}

impl Api {
    /// A client for `base` (no trailing `/`).
    pub fn new(base: &str, bot_agent: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("puppet-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { http, base: base.to_owned(), bot_agent: bot_agent.to_owned() })
    }

    /// The same client for another base (a login redirect).
    pub fn with_base(&self, base: &str) -> Self {
        Self { http: self.http.clone(), base: base.to_owned(), bot_agent: self.bot_agent.clone() }
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client (for the CDN).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    fn random_uin() -> String {
        let mut b = [0u8; 4];
        // The OS CSPRNG; on the impossible failure a fixed value still forms a valid header.
        _ = getrandom::fill(&mut b);
        base64::engine::general_purpose::STANDARD.encode(u32::from_be_bytes(b).to_string())
    }

    fn common(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        rb.header("iLink-App-Id", APP_ID).header("iLink-App-ClientVersion", CLIENT_VERSION.to_string())
    }

    async fn read(call: &'static str, res: Result<reqwest::Response, reqwest::Error>) -> Result<Value, ApiError> {
        let res = res.map_err(|e| {
            if e.is_timeout() {
                ApiError::Timeout(call)
            } else {
                ApiError::Transport { call, msg: e.without_url().to_string() }
            }
        })?;
        let status = res.status();
        if res.content_length().is_some_and(|n| n as usize > MAX_BODY) {
            return Err(ApiError::Transport { call, msg: format!("answer larger than {MAX_BODY} bytes") });
        }
        let bytes = res.bytes().await.map_err(|e| {
            if e.is_timeout() {
                ApiError::Timeout(call)
            } else {
                ApiError::Transport { call, msg: e.without_url().to_string() }
            }
        })?;
        if bytes.len() > MAX_BODY {
            return Err(ApiError::Transport { call, msg: format!("answer larger than {MAX_BODY} bytes") });
        }
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes);
            return Err(ApiError::Transport {
                call,
                msg: format!("HTTP {status}: {}", puppet_proto::ids::Shown(text.trim())),
            });
        }
        let v: Value = serde_json::from_slice(&bytes)
            .map_err(|e| ApiError::Transport { call, msg: format!("answer is not JSON: {e}") })?;
        let ret = v.get("ret").and_then(Value::as_i64).unwrap_or(0);
        let errcode = v.get("errcode").and_then(Value::as_i64).unwrap_or(0);
        if ret == STALE_TOKEN || errcode == STALE_TOKEN {
            return Err(ApiError::Stale(STALE_TOKEN));
        }
        if ret != 0 || errcode != 0 {
            let msg = v.get("errmsg").and_then(Value::as_str).unwrap_or("").to_owned();
            return Err(ApiError::Ret { call, ret: if ret != 0 { ret } else { errcode }, msg });
        }
        Ok(v)
    }

    /// POSTs `body` (plus `base_info`) to `ilink/bot/{endpoint}` with the bot token.
    pub async fn post(
        &self,
        call: &'static str,
        endpoint: &str,
        token: Option<&str>,
        mut body: Value,
        timeout: Option<Duration>,
    ) -> Result<Value, ApiError> {
        if let Some(o) = body.as_object_mut() {
            o.insert("base_info".into(), json!({"channel_version": CHANNEL_VERSION, "bot_agent": self.bot_agent}));
        }
        let mut rb = self
            .common(self.http.post(format!("{}/ilink/bot/{endpoint}", self.base)))
            .header("Content-Type", "application/json")
            .header("AuthorizationType", "ilink_bot_token")
            .header("X-WECHAT-UIN", Self::random_uin())
            .timeout(timeout.unwrap_or(API_TIMEOUT))
            .body(body.to_string());
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        Self::read(call, rb.send().await).await
    }

    /// GETs `ilink/bot/{endpoint}` (the QR status long-poll).
    pub async fn get(&self, call: &'static str, endpoint: &str, timeout: Duration) -> Result<Value, ApiError> {
        let rb = self.common(self.http.get(format!("{}/ilink/bot/{endpoint}", self.base))).timeout(timeout);
        Self::read(call, rb.send().await).await
    }
}

/// A `uint64` id as iLink sends it (a bare number, sometimes a string), as text.
pub fn id_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Number(n) => n.as_u64().map(|n| n.to_string()),
        Value::String(s) if !s.is_empty() && s.len() <= 32 => Some(s.clone()),
        _ => None,
    }
}

/// Percent-encodes a query value.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_version_is_2_4_9() {
        assert_eq!(CLIENT_VERSION, 132105);
    }

    #[test]
    fn uin_is_base64_of_a_decimal_u32() {
        let uin = Api::random_uin();
        let d = base64::engine::general_purpose::STANDARD.decode(uin).unwrap();
        assert!(String::from_utf8(d).unwrap().parse::<u32>().is_ok());
    }

    #[test]
    fn ids_keep_every_digit() {
        let v: Value = serde_json::from_str(r#"{"a": 7000000000000000123, "b": "42", "c": 1.5}"#).unwrap();
        assert_eq!(id_text(v.get("a")).unwrap(), "7000000000000000123");
        assert_eq!(id_text(v.get("b")).unwrap(), "42");
        assert_eq!(id_text(v.get("c")), None);
        assert_eq!(enc("a b/=&"), "a%20b%2F%3D%26");
    }
}
