//! The WeChat Official Account REST API (spec `official-account.md` §4): the `access_token`, JSON
//! calls, media upload and download, and the mapping of `errcode`s to [`BackendError`]s.
//!
//! Token policy: one token at a time behind an async mutex, so two callers never fetch at once;
//! it is refreshed ahead of expiry by [`Api::refresh_loop`], and a call answered with 40001, 40014
//! or 42001 drops the token it used, fetches a new one and is retried once. The token and the
//! AppSecret never appear in logs or errors (reqwest errors are stripped of their URL).
//!
//! URLs that come from outside (a `PicUrl`, a `video_url`, a client's URL FileBox) are not fetched
//! with the API's client but with the [`OutboundFetcher`] handed in, which refuses non-public
//! addresses; the API base itself is the operator's and is not fenced.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::backend::BackendError;
use crate::fetch::{FetchError, OutboundFetcher};

/// Largest media body accepted from WeChat (its own limits stop at 10 MB; video URLs may be larger).
const MAX_DOWNLOAD: usize = 64 << 20;

/// Errcodes that mean "this access_token is not good": refresh and retry once.
const TOKEN_ERRCODES: [i64; 3] = [40001, 40014, 42001];

/// What a call to WeChat ended with, before it becomes a [`BackendError`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// WeChat answered with an error code.
    #[error("WeChat errcode {errcode}: {errmsg}")]
    WeChat {
        /// `errcode`.
        errcode: i64,
        /// `errmsg` (carries Tencent's `rid:` for support requests).
        errmsg: String,
    },
    /// The API could not be reached.
    #[error("the WeChat API is unreachable: {0}")]
    Transport(String),
    /// The API answered something that is not what the protocol says.
    #[error("the WeChat API answered unexpectedly: {0}")]
    Protocol(String),
    /// A URL from outside (a `video_url`, …) could not be fetched.
    #[error("{0}")]
    Fetch(FetchError),
}

fn hint(errcode: i64) -> &'static str {
    match errcode {
        45015 => {
            " — the follower has not written to the account in the last 48 hours (or unsubscribed); \
             answer when they write again, or use a template message"
        }
        45047 => " — the customer-service quota for this follower is used up until they write again",
        43004 => " — this user does not follow the account",
        40013 | 40125 | 41002 | 41004 => " — check PUPPET_OA_APP_ID and PUPPET_OA_APP_SECRET",
        40164 | 89503 => " — add this server's public IP to the account's IP whitelist (基本配置 → IP白名单)",
        40001 | 40014 | 42001 | 41001 => " — the access_token was refused even after fetching a new one",
        48001 => " — the account is not authorised for this API (unverified accounts lack most of them)",
        _ => "",
    }
}

impl ApiError {
    /// The backend error a client sees for a failed call named `what` (spec §4.9).
    pub fn into_backend(self, what: &str) -> BackendError {
        let (errcode, errmsg) = match self {
            ApiError::Transport(m) => return BackendError::Unavailable(format!("{what}: {m}")),
            ApiError::Protocol(m) => return BackendError::Internal(format!("{what}: {m}")),
            ApiError::Fetch(e) => return e.into(),
            ApiError::WeChat { errcode, errmsg } => (errcode, errmsg),
        };
        let text = format!("WeChat refused {what}: errcode {errcode}: {errmsg}{}", hint(errcode));
        match errcode {
            -1 => BackendError::Unavailable(text),
            40001 | 40014 | 42001 | 41001 => BackendError::Unauthenticated(text),
            40013 | 40125 | 41002 | 41004 | 45015 | 43004 | 43101 | 45058 => BackendError::FailedPrecondition(text),
            40164 | 89503 | 48001 | 48004 | 50001 | 50002 => BackendError::PermissionDenied(text),
            45009 | 45011 | 45047 | 45056 | 45059 => BackendError::ResourceExhausted(text),
            40003 | 46004 | 49003 | 40007 | 46001 | 40037 | 46002 | 46003 => BackendError::Absent(text),
            45157 | 45065 => BackendError::AlreadyExists(text),
            40004..=40006
            | 40008
            | 40009
            | 40032
            | 40033
            | 40035
            | 44001..=44004
            | 45001
            | 45002
            | 45007
            | 45008
            | 45158
            | 47001 => BackendError::InvalidArgument(text),
            _ => BackendError::Internal(text),
        }
    }
}

/// Checks a JSON answer: `errcode` absent or 0 is success.
fn check(v: Value) -> Result<Value, ApiError> {
    match v.get("errcode").and_then(Value::as_i64) {
        None | Some(0) => Ok(v),
        Some(errcode) => Err(ApiError::WeChat {
            errcode,
            errmsg: v.get("errmsg").and_then(Value::as_str).unwrap_or_default().to_owned(),
        }),
    }
}

fn transport(e: reqwest::Error) -> ApiError {
    // The URL carries the access_token or the AppSecret.
    ApiError::Transport(e.without_url().to_string())
}

/// A token and when to stop using it.
struct AccessToken {
    value: String,
    /// Stop handing it out (a little before WeChat's expiry).
    usable_until: Instant,
    /// Fetch the next one in the background.
    refresh_at: Instant,
}

/// Media bytes fetched from WeChat.
#[derive(Debug)]
pub struct Media {
    /// The bytes.
    pub bytes: Vec<u8>,
    /// The file name from `Content-Disposition`, when given.
    pub filename: Option<String>,
    /// The content type, when given.
    pub content_type: Option<String>,
}

/// What an authorised exchange returned.
enum Body {
    Json(Value),
    Bytes(Media),
}

/// The REST client.
pub struct Api {
    http: reqwest::Client,
    base: String,
    app_id: String,
    secret: String,
    token: tokio::sync::Mutex<Option<AccessToken>>,
    fetches: prometheus_client::metrics::counter::Counter,
    outbound: OutboundFetcher,
}

impl Api {
    /// A client for `base` (no trailing `/`); URLs from outside go through `outbound`.
    pub fn new(
        base: &str,
        app_id: &str,
        secret: &str,
        fetches: prometheus_client::metrics::counter::Counter,
        outbound: OutboundFetcher,
    ) -> anyhow::Result<Self> {
        // reqwest is built without a rustls provider of its own; ring is the process's one.
        _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("puppet-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
            app_id: app_id.to_owned(),
            secret: secret.to_owned(),
            token: tokio::sync::Mutex::new(None),
            fetches,
            outbound,
        })
    }

    /// `base` + `path`.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// How many tokens have been fetched since start.
    pub fn token_fetches(&self) -> u64 {
        self.fetches.get()
    }

    async fn fetch_token(&self) -> Result<AccessToken, ApiError> {
        let response = self
            .http
            .get(self.url("/cgi-bin/token"))
            .query(&[("grant_type", "client_credential"), ("appid", &self.app_id), ("secret", &self.secret)])
            .send()
            .await
            .map_err(transport)?;
        let v: Value = response.json().await.map_err(|e| ApiError::Protocol(e.without_url().to_string()))?;
        let v = check(v)?;
        let value = v
            .get("access_token")
            .and_then(Value::as_str)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::Protocol("the token answer has no `access_token`".into()))?
            .to_owned();
        let expires_in = Duration::from_secs(v.get("expires_in").and_then(Value::as_u64).unwrap_or(7200).max(1));
        self.fetches.inc();
        let now = Instant::now();
        tracing::info!(expires_in_secs = expires_in.as_secs(), "fetched a WeChat access_token");
        // WeRoBot stops using a token in its last minute, puppet-oa refreshes 5 minutes early;
        // short test lifetimes scale down so a fake API can make tokens expire in a second.
        Ok(AccessToken {
            value,
            usable_until: now + expires_in - (expires_in / 10).min(Duration::from_secs(60)),
            refresh_at: now + expires_in - (expires_in / 4).min(Duration::from_secs(300)),
        })
    }

    /// The current token, fetching one when there is none or it is about to expire.
    pub async fn access_token(&self) -> Result<String, ApiError> {
        let mut slot = self.token.lock().await;
        if let Some(t) = slot.as_ref()
            && Instant::now() < t.usable_until
        {
            return Ok(t.value.clone());
        }
        let fresh = self.fetch_token().await?;
        let value = fresh.value.clone();
        *slot = Some(fresh);
        Ok(value)
    }

    /// Drops `used` if it is still the current token (another caller may have replaced it already).
    async fn invalidate(&self, used: &str) {
        let mut slot = self.token.lock().await;
        if slot.as_ref().is_some_and(|t| t.value == used) {
            *slot = None;
        }
    }

    /// Keeps the token fresh: fetches a new one before the current one expires, retrying a failed
    /// fetch every `retry` (capped by the token's own lifetime). Runs until dropped.
    pub async fn refresh_loop(&self, retry: Duration) {
        loop {
            let next = self.token.lock().await.as_ref().map(|t| t.refresh_at);
            if let Some(at) = next {
                tokio::time::sleep_until(at.into()).await;
            }
            // Held across the fetch: a caller needing a token meanwhile waits for this one.
            let mut slot = self.token.lock().await;
            if slot.as_ref().is_some_and(|t| Instant::now() < t.refresh_at) {
                // A reactive refresh got there first.
                continue;
            }
            match self.fetch_token().await {
                Ok(t) => *slot = Some(t),
                Err(e) => {
                    drop(slot);
                    tracing::warn!(error = %e, retry_secs = retry.as_secs(), "refreshing the access_token failed");
                    tokio::time::sleep(retry).await;
                }
            }
        }
    }

    /// Sends the request `build` makes for a token; on a token error, once more with a new token.
    async fn exchange(&self, build: impl Fn(&str) -> reqwest::RequestBuilder) -> Result<Body, ApiError> {
        let mut retried = false;
        loop {
            let token = self.access_token().await?;
            let response = build(&token).send().await.map_err(transport)?;
            let status = response.status();
            let Media { bytes, filename, content_type } = read_media(response).await?;
            let looks_json = content_type.as_deref().is_some_and(|c| c.contains("json") || c.starts_with("text/plain"))
                || bytes.first() == Some(&b'{');
            if !looks_json {
                if !status.is_success() {
                    return Err(ApiError::Transport(format!("HTTP {status}")));
                }
                return Ok(Body::Bytes(Media { bytes, filename, content_type }));
            }
            let v: Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::Protocol(format!("HTTP {status}, not JSON where JSON was expected ({e})")))?;
            match check(v) {
                Err(ApiError::WeChat { errcode, .. }) if TOKEN_ERRCODES.contains(&errcode) && !retried => {
                    tracing::info!(errcode, "WeChat refused the access_token; fetching a new one and retrying once");
                    self.invalidate(&token).await;
                    retried = true;
                }
                other => return other.map(Body::Json),
            }
        }
    }

    /// `GET path?access_token=…&query`, a JSON answer.
    pub async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ApiError> {
        let url = self.url(path);
        self.json(self.exchange(|t| self.http.get(&url).query(&[("access_token", t)]).query(query)).await?)
    }

    /// `POST path?access_token=…` with a JSON body (non-ASCII sent raw, as WeChat requires), a JSON answer.
    pub async fn post(&self, path: &str, body: &Value) -> Result<Value, ApiError> {
        let url = self.url(path);
        let text = serde_json::to_vec(body).map_err(|e| ApiError::Protocol(e.to_string()))?;
        self.json(
            self.exchange(|t| {
                self.http
                    .post(&url)
                    .query(&[("access_token", t)])
                    .header(reqwest::header::CONTENT_TYPE, "application/json; charset=utf-8")
                    .body(text.clone())
            })
            .await?,
        )
    }

    fn json(&self, body: Body) -> Result<Value, ApiError> {
        match body {
            Body::Json(v) => Ok(v),
            Body::Bytes(_) => Err(ApiError::Protocol("a binary body where JSON was expected".into())),
        }
    }

    /// Uploads temporary media (`image`, `voice`, `video`, `thumb`); its `media_id`.
    pub async fn upload_media(&self, kind: &str, filename: &str, bytes: Vec<u8>) -> Result<String, ApiError> {
        let url = self.url("/cgi-bin/media/upload");
        let bytes = bytes::Bytes::from(bytes);
        let body = self
            .exchange(|t| {
                let part = reqwest::multipart::Part::stream(bytes.clone()).file_name(filename.to_owned());
                self.http
                    .post(&url)
                    .query(&[("access_token", t), ("type", kind)])
                    .multipart(reqwest::multipart::Form::new().part("media", part))
            })
            .await?;
        let v = self.json(body)?;
        v.get("media_id")
            .or_else(|| v.get("thumb_media_id"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| ApiError::Protocol("the upload answer has no `media_id`".into()))
    }

    /// Downloads temporary media; a video's `video_url` is followed (it carries no token).
    pub async fn download_media(&self, media_id: &str) -> Result<Media, ApiError> {
        let url = self.url("/cgi-bin/media/get");
        match self.exchange(|t| self.http.get(&url).query(&[("access_token", t), ("media_id", media_id)])).await? {
            Body::Bytes(m) => Ok(m),
            Body::Json(v) => match v.get("video_url").and_then(Value::as_str) {
                Some(video) => self.fetch_public(video).await.map_err(ApiError::Fetch),
                None => Err(ApiError::Protocol("media/get answered JSON without a `video_url`".into())),
            },
        }
    }

    /// Fetches a URL from outside that needs no token (a `PicUrl`, a `video_url`, a file a client
    /// named by URL), through the outbound fence.
    pub async fn fetch_public(&self, url: &str) -> Result<Media, FetchError> {
        let fetched = self.outbound.get(url).await?;
        let (content_type, filename) = media_headers(&fetched.headers);
        Ok(Media { bytes: fetched.bytes, filename, content_type })
    }
}

/// The content type and `Content-Disposition` file name of a response.
fn media_headers(headers: &reqwest::header::HeaderMap) -> (Option<String>, Option<String>) {
    let header = |name| headers.get(name).and_then(|v: &reqwest::header::HeaderValue| v.to_str().ok());
    let content_type = header(reqwest::header::CONTENT_TYPE).map(str::to_owned);
    (content_type, header(reqwest::header::CONTENT_DISPOSITION).and_then(disposition_filename))
}

/// A response's body (capped), content type and `Content-Disposition` file name.
async fn read_media(response: reqwest::Response) -> Result<Media, ApiError> {
    let (content_type, filename) = media_headers(response.headers());
    Ok(Media { bytes: read_capped(response).await?, filename, content_type })
}

async fn read_capped(mut response: reqwest::Response) -> Result<Vec<u8>, ApiError> {
    if response.content_length().is_some_and(|n| n > MAX_DOWNLOAD as u64) {
        return Err(ApiError::Protocol(format!("a body larger than {} MiB", MAX_DOWNLOAD >> 20)));
    }
    let mut out = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if out.len() + chunk.len() > MAX_DOWNLOAD {
            return Err(ApiError::Protocol(format!("a body larger than {} MiB", MAX_DOWNLOAD >> 20)));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

/// `attachment; filename="a.jpg"` → `a.jpg`.
fn disposition_filename(header: &str) -> Option<String> {
    header
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("filename="))
        .map(|f| f.trim_matches('"').to_owned())
        .find(|f| !f.is_empty() && !f.contains(['/', '\\']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wechat(errcode: i64) -> BackendError {
        ApiError::WeChat { errcode, errmsg: "msg rid: 1".into() }.into_backend("message/custom/send")
    }

    #[test]
    fn errcodes_map_to_the_statuses_of_the_spec() {
        assert!(
            matches!(wechat(45015), BackendError::FailedPrecondition(m) if m.contains("45015") && m.contains("48 hours") && m.contains("rid: 1"))
        );
        assert!(matches!(wechat(45047), BackendError::ResourceExhausted(_)));
        assert!(matches!(wechat(-1), BackendError::Unavailable(_)));
        assert!(matches!(wechat(42001), BackendError::Unauthenticated(_)));
        assert!(matches!(wechat(40125), BackendError::FailedPrecondition(m) if m.contains("PUPPET_OA_APP_SECRET")));
        assert!(matches!(wechat(40164), BackendError::PermissionDenied(_)));
        assert!(matches!(wechat(40003), BackendError::Absent(_)));
        assert!(matches!(wechat(45157), BackendError::AlreadyExists(_)));
        assert!(matches!(wechat(45008), BackendError::InvalidArgument(_)));
        assert!(matches!(wechat(99999), BackendError::Internal(_)));
        assert!(matches!(
            ApiError::Transport("refused".into()).into_backend("x"),
            BackendError::Unavailable(m) if m == "x: refused"
        ));
    }

    #[test]
    fn success_is_errcode_zero_or_absent() {
        assert!(check(serde_json::json!({"errcode": 0, "errmsg": "ok"})).is_ok());
        assert!(check(serde_json::json!({"media_id": "m"})).is_ok());
        assert_eq!(
            check(serde_json::json!({"errcode": 1, "errmsg": "test"})),
            Err(ApiError::WeChat { errcode: 1, errmsg: "test".into() })
        );
    }

    #[tokio::test]
    async fn transport_errors_never_carry_the_secret() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let outbound = OutboundFetcher::new(Default::default()).unwrap();
        let api =
            Api::new(&format!("http://127.0.0.1:{port}"), "wxapp", "TOPSECRET", Default::default(), outbound).unwrap();
        let e = api.access_token().await.unwrap_err();
        assert!(matches!(e, ApiError::Transport(_)), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("TOPSECRET"), "{e:?}");
    }

    #[test]
    fn disposition_names_are_read_and_paths_refused() {
        assert_eq!(disposition_filename("attachment; filename=\"a.jpg\"").as_deref(), Some("a.jpg"));
        assert_eq!(disposition_filename("attachment; filename=b.amr").as_deref(), Some("b.amr"));
        assert_eq!(disposition_filename("attachment; filename=\"../x\""), None);
    }
}
