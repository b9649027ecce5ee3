//! A faithful local fake of Tencent's iLink bot API (the personal-WeChat "ClawBot" channel), as
//! Tencent's own client `@tencent-weixin/openclaw-weixin` 2.4.9 speaks it — its fidelity is checked
//! by running that client's compiled modules against it (`tests/compat/node/ilink_official.mjs`).
//!
//! - Login: `get_bot_qrcode` issues a QR; `get_qrcode_status` is a held long-poll answering the
//!   QR's status (`wait`, `scaned`, `confirmed`, `expired`, `scaned_but_redirect`,
//!   `need_verifycode`, `verify_code_blocked`, `binded_redirect`) as the test moves it.
//! - Updates: `getupdates` holds the request until a message is queued for that bot token or the
//!   long-poll timeout passes; `get_updates_buf` is an opaque cursor (base64 of the last seq).
//!   An expired token answers `ret`/`errcode` `-14`.
//! - Sending: `sendmessage` records every message and enforces the platform's rule of at most
//!   [`REPLIES_PER_MESSAGE`] bot messages per inbound message (`ret: -2` beyond it).
//! - Media: `getuploadurl` + `POST {cdn}/upload` (AES-128-ECB ciphertext, checked against the
//!   declared sizes and MD5 and stored decrypted), `GET {cdn}/download` serves ciphertext.
//! - `getconfig` / `sendtyping` / `msg/notifystart` / `msg/notifystop`, all recorded.
//! - A control surface under `/_fake/…` (JSON) for scripts, and the same as methods for Rust tests.
//!
//! It binds 127.0.0.1 only and never forwards anything anywhere.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aes::Aes128;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, block_padding::Pkcs7};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use md5::{Digest, Md5};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The platform's limit of bot messages per inbound message (community-measured; Tencent's issue
/// tracker confirms "10 条"): the 11th answers `ret: -2`.
pub const REPLIES_PER_MESSAGE: u32 = 10;
/// The error code of a stale bot token (`STALE_TOKEN_ERRCODE` in the official client).
pub const STALE_TOKEN: i64 = -14;
/// The WeChat user who scans the QR code (and so owns the bot).
pub const OWNER: &str = "o9cq80owner0000@im.wechat";
/// The `ilink_app_id` Tencent's client sends (`package.json`'s `ilink_appid`).
pub const APP_ID: &str = "bot";

/// AES-128-ECB with PKCS#7, as the CDN stores media.
pub fn ecb_encrypt(key: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    ecb::Encryptor::<Aes128>::new(key.into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// The inverse of [`ecb_encrypt`]; `None` for a bad length or padding.
pub fn ecb_decrypt(key: &[u8; 16], cipher: &[u8]) -> Option<Vec<u8>> {
    ecb::Decryptor::<Aes128>::new(key.into()).decrypt_padded_vec_mut::<Pkcs7>(cipher).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// One recorded API call.
#[derive(Clone, Debug)]
pub struct Call {
    /// `ilink/bot/sendmessage`, `c2c/upload`, ….
    pub path: String,
    /// The bearer token, if any.
    pub token: Option<String>,
    /// The headers the official client sends on every call (`AuthorizationType`, `X-WECHAT-UIN`,
    /// `iLink-App-Id`, `iLink-App-ClientVersion`), and `Host`; lowercased names.
    pub headers: BTreeMap<String, String>,
    /// The JSON body (`null` for GETs and the CDN).
    pub body: Value,
    /// When it arrived.
    pub at: std::time::Instant,
    /// Whether the fake answered this `getupdates` with HTTP 500 on purpose (`fail_polls`).
    pub failed: bool,
}

/// A file that arrived through the CDN, decrypted.
#[derive(Clone, Debug)]
pub struct Upload {
    /// The `media_type` declared in `getuploadurl` (1 image, 2 video, 3 file, 4 voice).
    pub media_type: i64,
    /// The recipient declared.
    pub to_user_id: String,
    /// The plaintext.
    pub plain: Vec<u8>,
    /// The download parameter the CDN answered with.
    pub download_param: String,
}

#[derive(Clone, Debug)]
struct Qr {
    status: String,
    /// Whether the poller has been told the current status.
    delivered: bool,
    token: Option<String>,
    redirect_host: Option<String>,
}

#[derive(Default)]
struct Bot {
    bot_id: String,
    valid: bool,
    /// Every inbound message ever queued, by seq (1-based, dense).
    inbound: Vec<Value>,
    sent: Vec<Value>,
    /// user → (latest context token, bot messages sent since that user's last message).
    users: HashMap<String, (String, u32)>,
}

struct PendingUpload {
    media_type: i64,
    to_user_id: String,
    aeskey: [u8; 16],
    rawsize: usize,
    rawfilemd5: String,
    filesize: usize,
}

#[derive(Default)]
struct FakeState {
    next: u64,
    qrs: HashMap<String, Qr>,
    qr_order: Vec<String>,
    bots: HashMap<String, Bot>,
    calls: Vec<Call>,
    pending_uploads: HashMap<String, PendingUpload>,
    /// download param → ciphertext.
    cdn: HashMap<String, Vec<u8>>,
    uploads: Vec<Upload>,
    poll_timeout_ms: u64,
    /// Held `getupdates` requests right now, per token.
    polling: HashMap<String, u32>,
    /// `getupdates` calls still to be answered with HTTP 500.
    fail_polls: u32,
}

impl FakeState {
    fn id(&mut self, prefix: &str) -> String {
        self.next += 1;
        let mut rnd = [0u8; 6];
        getrandom_fill(&mut rnd, self.next);
        format!("{prefix}{}{}", self.next, hex(&rnd))
    }
}

/// Unpredictable enough for a fake (ids must not collide across fake restarts within one test).
fn getrandom_fill(buf: &mut [u8], salt: u64) {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
    let mut h = Md5::new();
    h.update(nanos.to_le_bytes());
    h.update(salt.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    let d = h.finalize();
    for (i, b) in buf.iter_mut().enumerate() {
        *b = d[i % 16];
    }
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    changed: Arc<watch::Sender<u64>>,
    base: Arc<str>,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap());
        self.changed.send_modify(|n| *n += 1);
        out
    }
}

/// The running fake. Dropping it stops the server.
pub struct FakeIlink {
    /// `http://127.0.0.1:port` — the API base (`PUPPET_ILINK_API_BASE`).
    pub base: String,
    /// `{base}/c2c` — the CDN base (`PUPPET_ILINK_CDN_BASE`).
    pub cdn: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeIlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeIlink {
    /// Starts on a free loopback port; `getupdates` holds a request at most `poll_timeout_ms`.
    pub async fn start(poll_timeout_ms: u64) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let state = FakeState { poll_timeout_ms, ..Default::default() };
        let (tx, _) = watch::channel(0);
        let shared =
            Shared { state: Arc::new(Mutex::new(state)), changed: Arc::new(tx), base: Arc::from(base.as_str()) };
        let app = Router::new()
            .route("/ilink/bot/get_bot_qrcode", get(get_bot_qrcode).post(get_bot_qrcode))
            .route("/ilink/bot/get_qrcode_status", get(get_qrcode_status))
            .route("/ilink/bot/getupdates", post(getupdates))
            .route("/ilink/bot/sendmessage", post(sendmessage))
            .route("/ilink/bot/getuploadurl", post(getuploadurl))
            .route("/ilink/bot/getconfig", post(getconfig))
            .route("/ilink/bot/sendtyping", post(sendtyping))
            .route("/ilink/bot/msg/notifystart", post(notify))
            .route("/ilink/bot/msg/notifystop", post(notify))
            .route("/c2c/upload", post(cdn_upload))
            .route("/c2c/download", get(cdn_download))
            .route("/_fake/qr", post(ctl_qr))
            .route("/_fake/inject", post(ctl_inject))
            .route("/_fake/state", get(ctl_state))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            _ = axum::serve(listener, app).await;
        });
        Self { cdn: format!("{base}/c2c"), base, shared, task }
    }

    /// The environment pointing a server's `ilink` backend at this fake.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        vec![("PUPPET_ILINK_API_BASE", self.base.clone()), ("PUPPET_ILINK_CDN_BASE", self.cdn.clone())]
    }

    /// Waits (bounded) until `pred` holds over the fake's state.
    async fn wait<T>(&self, what: &str, mut pred: impl FnMut(&FakeState) -> Option<T>) -> T {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(v) = pred(&self.shared.state.lock().unwrap()) {
                return v;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => panic!("fake iLink: timed out waiting for {what}"),
            }
        }
    }

    /// The `n`-th QR code issued (0-based), once it has been.
    pub async fn qr(&self, n: usize) -> String {
        self.wait(&format!("QR #{n}"), |s| s.qr_order.get(n).cloned()).await
    }

    /// How many QR codes have been issued.
    pub fn qr_count(&self) -> usize {
        self.shared.state.lock().unwrap().qr_order.len()
    }

    /// Moves a QR to `status`; `confirmed` mints a bot token (returned).
    pub fn set_qr(&self, qrcode: &str, status: &str) -> Option<String> {
        set_qr(&self.shared, qrcode, status, None)
    }

    /// `scaned_but_redirect` towards `host` (the poller should continue there).
    pub fn redirect_qr(&self, qrcode: &str, host: &str) {
        set_qr(&self.shared, qrcode, "scaned_but_redirect", Some(host.to_string()));
    }

    /// A bot token minted without a QR (as if obtained earlier).
    pub fn mint_token(&self) -> String {
        self.shared.with(|s| {
            let token_id = s.id("");
            let bot_id = format!("{}@im.bot", &token_id[..8.min(token_id.len())]);
            let token = format!("{bot_id}:{}", s.id("tok"));
            s.bots.insert(token.clone(), Bot { bot_id, valid: true, ..Default::default() });
            token
        })
    }

    /// Makes a token stale: every call with it answers `-14`.
    pub fn expire_token(&self, token: &str) {
        self.shared.with(|s| {
            if let Some(b) = s.bots.get_mut(token) {
                b.valid = false;
            }
        });
    }

    /// Queues an inbound text from `from` to the bot holding `token`; its context token.
    pub fn inject_text(&self, token: &str, from: &str, text: &str) -> String {
        inject(&self.shared, token, from, vec![json!({"type": 1, "text_item": {"text": text}})])
    }

    /// Queues an inbound text that quotes another message (`ref_msg` with `svr_id`, `title` and,
    /// when given, the quoted text as its item); its context token.
    pub fn inject_quote(
        &self,
        token: &str,
        from: &str,
        text: &str,
        svr_id: &str,
        title: &str,
        quoted: Option<&str>,
    ) -> String {
        let mut r = json!({"svr_id": svr_id, "title": title});
        if let Some(q) = quoted {
            r["message_item"] = json!({"type": 1, "text_item": {"text": q}});
        }
        inject(&self.shared, token, from, vec![json!({"type": 1, "text_item": {"text": text}, "ref_msg": r})])
    }

    /// Queues an inbound image (encrypted into the CDN with a fresh key); its context token.
    pub fn inject_image(&self, token: &str, from: &str, plain: &[u8]) -> String {
        let item = self.shared.with(|s| {
            let mut key = [0u8; 16];
            getrandom_fill(&mut key, s.next);
            let param = s.id("dl-img-");
            let cipher = ecb_encrypt(&key, plain);
            let size = cipher.len();
            s.cdn.insert(param.clone(), cipher);
            json!({"type": 2, "image_item": {
                "media": {"encrypt_query_param": param, "aes_key": B64.encode(key), "encrypt_type": 1,
                          "full_url": format!("{}/c2c/download?encrypted_query_param={param}", self.base)},
                "aeskey": hex(&key), "mid_size": size,
            }})
        });
        inject(&self.shared, token, from, vec![item])
    }

    /// Queues an inbound file attachment (key given as base64 of its hex, as files are).
    pub fn inject_file(&self, token: &str, from: &str, name: &str, plain: &[u8]) -> String {
        let item = self.shared.with(|s| {
            let mut key = [0u8; 16];
            getrandom_fill(&mut key, s.next);
            let param = s.id("dl-file-");
            s.cdn.insert(param.clone(), ecb_encrypt(&key, plain));
            json!({"type": 4, "file_item": {
                "media": {"encrypt_query_param": param, "aes_key": B64.encode(hex(&key)), "encrypt_type": 1},
                "file_name": name, "len": plain.len().to_string(),
            }})
        });
        inject(&self.shared, token, from, vec![item])
    }

    /// Every message sent with `token`, in order.
    pub fn sent(&self, token: &str) -> Vec<Value> {
        self.shared.state.lock().unwrap().bots.get(token).map(|b| b.sent.clone()).unwrap_or_default()
    }

    /// Waits until at least `n` messages were sent with `token`; all of them.
    pub async fn wait_sent(&self, token: &str, n: usize) -> Vec<Value> {
        self.wait(&format!("{n} sent messages"), |s| {
            s.bots.get(token).filter(|b| b.sent.len() >= n).map(|b| b.sent.clone())
        })
        .await
    }

    /// Every recorded call.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.state.lock().unwrap().calls.clone()
    }

    /// Waits until a call to `path` has been recorded; all such calls.
    pub async fn wait_call(&self, path: &str) -> Vec<Call> {
        self.wait(path, |s| {
            let v: Vec<Call> = s.calls.iter().filter(|c| c.path == path).cloned().collect();
            (!v.is_empty()).then_some(v)
        })
        .await
    }

    /// Waits until a `getupdates` with `token` is being held (the poller is caught up).
    pub async fn wait_polling(&self, token: &str) {
        self.wait("a held getupdates", |s| s.polling.get(token).is_some_and(|n| *n > 0).then_some(())).await
    }

    /// Answers the next `n` `getupdates` calls with HTTP 500.
    pub fn fail_polls(&self, n: u32) {
        self.shared.with(|s| s.fail_polls = n);
    }

    /// Every file that arrived through the CDN, decrypted.
    pub fn uploads(&self) -> Vec<Upload> {
        self.shared.state.lock().unwrap().uploads.clone()
    }
}

fn set_qr(shared: &Shared, qrcode: &str, status: &str, redirect: Option<String>) -> Option<String> {
    shared.with(|s| {
        let token = if status == "confirmed" {
            let token_id = s.id("");
            let bot_id = format!("{}@im.bot", &token_id[..8.min(token_id.len())]);
            let token = format!("{bot_id}:{}", s.id("tok"));
            s.bots.insert(token.clone(), Bot { bot_id, valid: true, ..Default::default() });
            Some(token)
        } else {
            None
        };
        let qr = s.qrs.get_mut(qrcode)?;
        qr.status = status.to_string();
        qr.delivered = false;
        qr.redirect_host = redirect;
        if token.is_some() {
            qr.token = token.clone();
        }
        token
    })
}

fn inject(shared: &Shared, token: &str, from: &str, items: Vec<Value>) -> String {
    shared.with(|s| {
        let ctx = s.id("ctx-");
        let msg_id = 7_000_000_000_000_000_000u64 + s.next; // beyond 2^53: must be parsed losslessly
        let now =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as u64;
        let bot = s.bots.get_mut(token).expect("inject: unknown bot token");
        let seq = bot.inbound.len() as u64 + 1;
        let msg = json!({
            "seq": seq, "message_id": msg_id, "from_user_id": from, "to_user_id": bot.bot_id,
            "create_time_ms": now, "session_id": format!("s-{from}"), "message_type": 1, "message_state": 2,
            "item_list": items, "context_token": ctx,
        });
        // message_id goes out as a bare uint64, like the real server's.
        bot.inbound.push(msg);
        bot.users.insert(from.to_string(), (ctx.clone(), 0));
        ctx
    })
}

fn reply(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn record(shared: &Shared, path: &str, headers: &HeaderMap, body: &Value) -> Option<String> {
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(String::from);
    let mut hs = BTreeMap::new();
    for name in ["authorizationtype", "x-wechat-uin", "ilink-app-id", "ilink-app-clientversion", "content-type", "host"]
    {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            hs.insert(name.to_string(), v.to_string());
        }
    }
    shared.with(|s| {
        s.calls.push(Call {
            path: path.into(),
            token: token.clone(),
            headers: hs,
            body: body.clone(),
            at: std::time::Instant::now(),
            failed: false,
        })
    });
    token
}

/// Checks the bot-API headers and the token; the bot's token or the error answer.
fn authorize(shared: &Shared, path: &str, headers: &HeaderMap, body: &Bytes) -> Result<(String, Value), Box<Response>> {
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new((StatusCode::BAD_REQUEST, "body is not JSON").into_response()));
    };
    let token = record(shared, path, headers, &json);
    if headers.get("authorizationtype").and_then(|v| v.to_str().ok()) != Some("ilink_bot_token") {
        return Err(Box::new((StatusCode::UNAUTHORIZED, "AuthorizationType must be ilink_bot_token").into_response()));
    }
    let uin_ok = headers
        .get("x-wechat-uin")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| B64.decode(v).ok())
        .and_then(|d| String::from_utf8(d).ok())
        .is_some_and(|d| d.parse::<u32>().is_ok());
    if !uin_ok {
        return Err(Box::new(
            (StatusCode::BAD_REQUEST, "X-WECHAT-UIN must be base64 of a decimal uint32").into_response(),
        ));
    }
    if json.get("base_info").and_then(|b| b.get("channel_version")).is_none() {
        return Err(Box::new(reply(json!({"ret": -1, "errmsg": "base_info.channel_version missing"}))));
    }
    let Some(token) = token else {
        return Err(Box::new(reply(json!({"ret": STALE_TOKEN, "errcode": STALE_TOKEN, "errmsg": "no bot token"}))));
    };
    let valid = shared.state.lock().unwrap().bots.get(&token).is_some_and(|b| b.valid);
    if !valid {
        return Err(Box::new(reply(json!({"ret": STALE_TOKEN, "errcode": STALE_TOKEN, "errmsg": "session timeout"}))));
    }
    Ok((token, json))
}

async fn get_bot_qrcode(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let json = serde_json::from_slice::<Value>(&body).unwrap_or(Value::Null);
    record(&shared, "ilink/bot/get_bot_qrcode", &headers, &json);
    if !q.get("bot_type").is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())) {
        return (StatusCode::BAD_REQUEST, "bot_type must be a number").into_response();
    }
    let qrcode = shared.with(|s| {
        let qrcode = s.id("qr");
        s.qrs.insert(qrcode.clone(), Qr { status: "wait".into(), delivered: false, token: None, redirect_host: None });
        s.qr_order.push(qrcode.clone());
        qrcode
    });
    reply(json!({
        "qrcode": qrcode,
        "qrcode_img_content": format!("https://liteapp.weixin.qq.com/q/{qrcode}?qrcode={qrcode}&bot_type=3"),
    }))
}

async fn get_qrcode_status(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    record(&shared, "ilink/bot/get_qrcode_status", &headers, &Value::Null);
    let Some(qrcode) = q.get("qrcode").cloned() else {
        return (StatusCode::BAD_REQUEST, "qrcode missing").into_response();
    };
    let mut rx = shared.changed.subscribe();
    // Held like the real one (~35 s there); a changed status answers at once.
    let deadline = tokio::time::Instant::now() + Duration::from_millis(shared.state.lock().unwrap().poll_timeout_ms);
    loop {
        let answer = {
            let mut s = shared.state.lock().unwrap();
            let Some(qr) = s.qrs.get_mut(&qrcode) else {
                return reply(json!({"status": "expired"}));
            };
            if !qr.delivered || tokio::time::Instant::now() >= deadline {
                qr.delivered = true;
                let mut v = json!({"status": qr.status});
                if qr.status == "confirmed" {
                    let token = qr.token.clone().unwrap_or_default();
                    let bot_id = s.bots.get(&token).map(|b| b.bot_id.clone()).unwrap_or_default();
                    v = json!({"status": "confirmed", "bot_token": token, "ilink_bot_id": bot_id,
                               "baseurl": &*shared.base, "ilink_user_id": OWNER});
                } else if let Some(host) = &qr.redirect_host {
                    v["redirect_host"] = json!(host);
                }
                Some(v)
            } else {
                None
            }
        };
        if let Some(v) = answer {
            return reply(v);
        }
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    }
}

fn cursor_of(buf: &str) -> u64 {
    B64.decode(buf)
        .ok()
        .and_then(|d| String::from_utf8(d).ok())
        .and_then(|s| s.strip_prefix("fake-cursor:").and_then(|n| n.parse().ok()))
        .unwrap_or(0)
}

async fn getupdates(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (token, req) = match authorize(&shared, "ilink/bot/getupdates", &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let fail = shared.with(|s| {
        let fail = s.fail_polls > 0;
        if fail {
            s.fail_polls -= 1;
            if let Some(c) = s.calls.iter_mut().rev().find(|c| c.path == "ilink/bot/getupdates") {
                c.failed = true;
            }
        }
        fail
    });
    if fail {
        return (StatusCode::INTERNAL_SERVER_ERROR, "failing on purpose").into_response();
    }
    let from = cursor_of(req.get("get_updates_buf").and_then(Value::as_str).unwrap_or(""));
    let mut rx = shared.changed.subscribe();
    let timeout = shared.state.lock().unwrap().poll_timeout_ms;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout);
    let mut held = false;
    let out = loop {
        {
            let s = shared.state.lock().unwrap();
            let bot = &s.bots[&token];
            if !bot.valid {
                break json!({"ret": STALE_TOKEN, "errcode": STALE_TOKEN, "errmsg": "session timeout"});
            }
            let msgs: Vec<Value> = bot.inbound.iter().skip(from as usize).cloned().collect();
            if !msgs.is_empty() || tokio::time::Instant::now() >= deadline {
                let upto = bot.inbound.len() as u64;
                break json!({
                    "ret": 0, "msgs": msgs,
                    "get_updates_buf": B64.encode(format!("fake-cursor:{upto}")),
                    "longpolling_timeout_ms": timeout,
                });
            }
        }
        if !held {
            held = true;
            shared.with(|s| *s.polling.entry(token.clone()).or_default() += 1);
        }
        let _ = tokio::time::timeout_at(deadline, rx.changed()).await;
    };
    if held {
        shared.with(|s| *s.polling.entry(token.clone()).or_default() -= 1);
    }
    // The real server sends message ids as bare uint64 numbers.
    reply(out)
}

async fn sendmessage(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (token, req) = match authorize(&shared, "ilink/bot/sendmessage", &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let Some(msg) = req.get("msg").cloned() else {
        return reply(json!({"ret": -1, "errmsg": "msg missing"}));
    };
    let to = msg.get("to_user_id").and_then(Value::as_str).unwrap_or("").to_string();
    let items = msg.get("item_list").and_then(Value::as_array).map(Vec::len).unwrap_or(0);
    if to.is_empty() || items != 1 || msg.get("message_type") != Some(&json!(2)) {
        return reply(json!({"ret": -1, "errmsg": "bad msg: need to_user_id, message_type 2, one item"}));
    }
    shared.with(|s| {
        let id = 8_000_000_000_000_000_000u64 + s.next;
        s.next += 1;
        let bot = s.bots.get_mut(&token).expect("authorized");
        let Some(entry) = bot.users.get_mut(&to) else {
            return reply(json!({"ret": -2, "errmsg": "prepare failed"}));
        };
        if entry.1 >= REPLIES_PER_MESSAGE {
            return reply(json!({"ret": -2, "errmsg": "prepare failed"}));
        }
        entry.1 += 1;
        bot.sent.push(msg);
        reply(json!({"ret": 0, "message_id": id.to_string()}))
    })
}

async fn getuploadurl(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let (_token, req) = match authorize(&shared, "ilink/bot/getuploadurl", &headers, &body) {
        Ok(v) => v,
        Err(r) => return *r,
    };
    let s = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let n = |k: &str| req.get(k).and_then(Value::as_u64).unwrap_or(0) as usize;
    let Some(aeskey) = unhex16(&s("aeskey")) else {
        return reply(json!({"ret": -1, "errmsg": "aeskey must be 32 hex digits"}));
    };
    if s("filekey").is_empty() || s("to_user_id").is_empty() || n("rawsize") == 0 {
        return reply(json!({"ret": -1, "errmsg": "filekey, to_user_id and rawsize are required"}));
    }
    if n("filesize") != (n("rawsize") / 16 + 1) * 16 {
        return reply(json!({"ret": -1, "errmsg": "filesize is not the padded ciphertext size"}));
    }
    let pending = PendingUpload {
        media_type: req.get("media_type").and_then(Value::as_i64).unwrap_or(0),
        to_user_id: s("to_user_id"),
        aeskey,
        rawsize: n("rawsize"),
        rawfilemd5: s("rawfilemd5"),
        filesize: n("filesize"),
    };
    let param = shared.with(|st| {
        let param = st.id("up-");
        st.pending_uploads.insert(param.clone(), pending);
        param
    });
    reply(json!({
        "upload_param": param,
        "upload_full_url": format!("{}/c2c/upload?encrypted_query_param={param}&filekey={}", shared.base, s("filekey")),
    }))
}

async fn cdn_upload(
    State(shared): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    record(&shared, "c2c/upload", &headers, &Value::Null);
    let bad = |msg: &str| (StatusCode::BAD_REQUEST, [("x-error-message", msg.to_string())], msg.to_string());
    let Some(param) = q.get("encrypted_query_param") else {
        return bad("encrypted_query_param missing").into_response();
    };
    let Some(p) = shared.state.lock().unwrap().pending_uploads.remove(param) else {
        return bad("unknown upload param").into_response();
    };
    if body.len() != p.filesize {
        return bad("ciphertext size differs from filesize").into_response();
    }
    let Some(plain) = ecb_decrypt(&p.aeskey, &body) else {
        return bad("ciphertext does not decrypt with the declared aeskey").into_response();
    };
    if plain.len() != p.rawsize || hex(&Md5::digest(&plain)) != p.rawfilemd5 {
        return bad("plaintext differs from rawsize/rawfilemd5").into_response();
    }
    let download = shared.with(|s| {
        let download = s.id("dl-");
        s.cdn.insert(download.clone(), body.to_vec());
        s.uploads.push(Upload {
            media_type: p.media_type,
            to_user_id: p.to_user_id,
            plain,
            download_param: download.clone(),
        });
        download
    });
    (StatusCode::OK, [("x-encrypted-param", download)]).into_response()
}

async fn cdn_download(State(shared): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    record(&shared, "c2c/download", &HeaderMap::new(), &Value::Null);
    let found = q.get("encrypted_query_param").and_then(|p| shared.state.lock().unwrap().cdn.get(p).cloned());
    match found {
        Some(bytes) => (StatusCode::OK, [("content-type", "application/octet-stream")], bytes).into_response(),
        None => (StatusCode::NOT_FOUND, "no such media").into_response(),
    }
}

async fn getconfig(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match authorize(&shared, "ilink/bot/getconfig", &headers, &body) {
        Ok((_, req)) if req.get("ilink_user_id").and_then(Value::as_str).is_some_and(|u| !u.is_empty()) => {
            reply(json!({"ret": 0, "typing_ticket": B64.encode("fake-typing-ticket")}))
        }
        Ok(_) => reply(json!({"ret": -1, "errmsg": "ilink_user_id missing"})),
        Err(r) => *r,
    }
}

async fn sendtyping(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    match authorize(&shared, "ilink/bot/sendtyping", &headers, &body) {
        Ok((_, req)) if req.get("typing_ticket").and_then(Value::as_str) == Some(&B64.encode("fake-typing-ticket")) => {
            reply(json!({"ret": 0}))
        }
        Ok(_) => reply(json!({"ret": -1, "errmsg": "bad typing_ticket"})),
        Err(r) => *r,
    }
}

async fn notify(State(shared): State<Shared>, uri: axum::http::Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().trim_start_matches('/').to_string();
    match authorize(&shared, &path, &headers, &body) {
        Ok(_) => reply(json!({"ret": 0})),
        Err(r) => *r,
    }
}

// ---- control surface (for scripts) ---------------------------------------------------------

async fn ctl_qr(State(shared): State<Shared>, axum::Json(v): axum::Json<Value>) -> Response {
    let qrcode = match v.get("qrcode").and_then(Value::as_str) {
        Some(q) => q.to_string(),
        None => match shared.state.lock().unwrap().qr_order.last() {
            Some(q) => q.clone(),
            None => return (StatusCode::NOT_FOUND, "no QR issued").into_response(),
        },
    };
    let status = v.get("status").and_then(Value::as_str).unwrap_or("confirmed");
    let token = set_qr(&shared, &qrcode, status, None);
    reply(json!({"qrcode": qrcode, "bot_token": token}))
}

async fn ctl_inject(State(shared): State<Shared>, axum::Json(v): axum::Json<Value>) -> Response {
    let (Some(token), Some(from), Some(text)) = (
        v.get("token").and_then(Value::as_str),
        v.get("from").and_then(Value::as_str),
        v.get("text").and_then(Value::as_str),
    ) else {
        return (StatusCode::BAD_REQUEST, "token, from, text required").into_response();
    };
    if !shared.state.lock().unwrap().bots.contains_key(token) {
        return (StatusCode::NOT_FOUND, "unknown token").into_response();
    }
    let ctx = inject(&shared, token, from, vec![json!({"type": 1, "text_item": {"text": text}})]);
    reply(json!({"context_token": ctx}))
}

async fn ctl_state(State(shared): State<Shared>) -> Response {
    let s = shared.state.lock().unwrap();
    let bots: BTreeMap<&String, Value> = s.bots.iter().map(|(t, b)| (t, json!({"sent": b.sent}))).collect();
    let uploads: Vec<Value> = s
        .uploads
        .iter()
        .map(|u| json!({"media_type": u.media_type, "to": u.to_user_id, "md5": hex(&Md5::digest(&u.plain))}))
        .collect();
    reply(json!({"bots": bots, "uploads": uploads}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecb_round_trips_and_pads_like_node() {
        let key = [7u8; 16];
        for len in [0usize, 1, 15, 16, 17, 1000] {
            let plain: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let c = ecb_encrypt(&key, &plain);
            assert_eq!(c.len(), (len / 16 + 1) * 16);
            assert_eq!(ecb_decrypt(&key, &c).unwrap(), plain);
        }
    }
}
