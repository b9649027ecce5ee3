//! A local fake of the WeChat Official Account API (`PUPPET_OA_API_BASE` points at it): the token
//! endpoint, customer-service sends, media, followers, tags, menus, templates and QR codes — enough
//! to drive the official-account backend end to end, recording every call.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio::sync::watch;

/// The AppID and AppSecret the fake accepts.
pub const APP_ID: &str = "wx0123456789abcdef";
/// See [`APP_ID`].
pub const APP_SECRET: &str = "fake-secret-0123";

/// A recorded call: path, the token used, the query and the JSON body (or `null`).
#[derive(Clone, Debug)]
pub struct Call {
    /// `/cgi-bin/...`.
    pub path: String,
    /// The `access_token` it carried.
    pub token: String,
    /// The query parameters.
    pub query: BTreeMap<String, String>,
    /// The JSON body.
    pub body: Value,
}

/// A temporary media item.
#[derive(Clone, Debug)]
pub struct MediaItem {
    /// `image`, `voice`, … (uploads), or the content type (served media).
    pub kind: String,
    /// The file name.
    pub filename: String,
    /// The bytes.
    pub bytes: Vec<u8>,
}

#[derive(Default)]
struct FakeState {
    issued: u64,
    valid: HashSet<String>,
    expires_in: u64,
    calls: Vec<Call>,
    /// openid → errcode that customer-service sends to it answer.
    refuse: HashMap<String, i64>,
    media: HashMap<String, MediaItem>,
    uploads: Vec<MediaItem>,
    /// openid → (remark, tag ids).
    followers: BTreeMap<String, (String, Vec<i64>)>,
    tags: BTreeMap<i64, String>,
    menu: Option<Value>,
    next_msgid: u64,
}

/// The running fake. Dropping it stops the server.
pub struct FakeWeChat {
    /// `http://127.0.0.1:port`.
    pub base: String,
    state: Arc<Mutex<FakeState>>,
    fetches: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    fetches: Arc<watch::Sender<u64>>,
}

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

fn error(errcode: i64, errmsg: &str) -> Response {
    ok(json!({ "errcode": errcode, "errmsg": format!("{errmsg} rid: fake-{errcode}") }))
}

impl FakeWeChat {
    /// Starts on a free loopback port with three followers, tokens living `expires_in` seconds.
    pub async fn start(expires_in: u64) -> Self {
        let mut state = FakeState { expires_in, next_msgid: 200163836, ..Default::default() };
        state.followers.insert("oFollowerAlice".into(), ("Alice".into(), vec![100]));
        state.followers.insert("oFollowerBob".into(), (String::new(), vec![]));
        state.followers.insert("oFollowerCarol".into(), ("Carol".into(), vec![]));
        state.tags.insert(2, "星标组".into());
        state.tags.insert(100, "vip".into());
        let state = Arc::new(Mutex::new(state));
        let (tx, fetches) = watch::channel(0);
        let shared = Shared { state: state.clone(), fetches: Arc::new(tx) };
        let app = Router::new()
            .route("/cgi-bin/token", get(token))
            .route("/cgi-bin/media/upload", post(upload))
            .route("/cgi-bin/media/get", get(media_get))
            .route("/cgi-bin/{*rest}", get(api_get).post(api_post))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            _ = axum::serve(listener, app).await;
        });
        Self { base: format!("http://{addr}"), state, fetches, task }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        f(&mut self.state.lock().unwrap())
    }

    /// The environment that points a server's official-account backend at this fake.
    pub fn server_env<'a>(&'a self, oa_token: &'a str, original_id: &'a str) -> Vec<(&'static str, &'a str)> {
        vec![
            ("PUPPET_OA_APP_ID", APP_ID),
            ("PUPPET_OA_APP_SECRET", APP_SECRET),
            ("PUPPET_OA_TOKEN", oa_token),
            ("PUPPET_OA_API_BASE", self.base.as_str()),
            ("PUPPET_OA_ORIGINAL_ID", original_id),
        ]
    }

    /// Tokens fetched so far.
    pub fn token_fetches(&self) -> u64 {
        *self.fetches.borrow()
    }

    /// Waits (bounded) until at least `n` tokens were fetched.
    pub async fn wait_for_fetches(&self, n: u64, within: std::time::Duration) {
        let mut rx = self.fetches.clone();
        tokio::time::timeout(within, rx.wait_for(|f| *f >= n))
            .await
            .unwrap_or_else(|_| panic!("{n} token fetches within {within:?}; saw {}", self.token_fetches()))
            .unwrap();
    }

    /// Every token issued so far stops working (42001).
    pub fn expire_tokens(&self) {
        self.with(|s| s.valid.clear());
    }

    /// Customer-service sends to `openid` fail with `errcode`.
    pub fn refuse(&self, openid: &str, errcode: i64) {
        self.with(|s| s.refuse.insert(openid.to_owned(), errcode));
    }

    /// Media WeChat holds (what a follower sent).
    pub fn put_media(&self, media_id: &str, content_type: &str, filename: &str, bytes: &[u8]) {
        self.with(|s| {
            s.media.insert(
                media_id.to_owned(),
                MediaItem { kind: content_type.to_owned(), filename: filename.to_owned(), bytes: bytes.to_vec() },
            )
        });
    }

    /// Calls to `path` so far.
    pub fn calls(&self, path: &str) -> Vec<Call> {
        self.with(|s| s.calls.iter().filter(|c| c.path == path).cloned().collect())
    }

    /// Media uploaded so far, in order; the media id of the n-th is `MEDIA_UP_<n>`.
    pub fn uploads(&self) -> Vec<MediaItem> {
        self.with(|s| s.uploads.clone())
    }

    /// A follower's remark.
    pub fn remark(&self, openid: &str) -> Option<String> {
        self.with(|s| s.followers.get(openid).map(|(r, _)| r.clone()))
    }

    /// The stored menu.
    pub fn menu(&self) -> Option<Value> {
        self.with(|s| s.menu.clone())
    }
}

impl Drop for FakeWeChat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn token(State(sh): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    if q.get("grant_type").map(String::as_str) != Some("client_credential") {
        return error(40002, "invalid grant_type");
    }
    if q.get("appid").map(String::as_str) != Some(APP_ID) {
        return error(40013, "invalid appid");
    }
    if q.get("secret").map(String::as_str) != Some(APP_SECRET) {
        return error(40125, "invalid appsecret");
    }
    let (value, expires_in) = {
        let mut s = sh.state.lock().unwrap();
        s.issued += 1;
        let value = format!("ACCESS_TOKEN_{}", s.issued);
        s.valid.insert(value.clone());
        (value, s.expires_in)
    };
    sh.fetches.send_modify(|n| *n += 1);
    ok(json!({ "access_token": value, "expires_in": expires_in }))
}

/// Checks the token and records the call; the error response when the token is bad.
fn admit(sh: &Shared, path: &str, q: &HashMap<String, String>, body: Value) -> Option<Response> {
    let token = q.get("access_token").cloned().unwrap_or_default();
    let mut s = sh.state.lock().unwrap();
    if token.is_empty() {
        return Some(error(41001, "access_token missing"));
    }
    if !s.valid.contains(&token) {
        return Some(error(42001, "access_token expired"));
    }
    let query = q.iter().filter(|(k, _)| *k != "access_token").map(|(k, v)| (k.clone(), v.clone())).collect();
    s.calls.push(Call { path: path.to_owned(), token, query, body });
    None
}

/// `multipart/form-data`: the `media` part's file name and bytes.
fn media_part(headers: &HeaderMap, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = format!("--{}", ct.split("boundary=").nth(1)?.trim_matches('"'));
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
    };
    let start = find(body, boundary.as_bytes(), 0)? + boundary.len();
    let head_end = find(body, b"\r\n\r\n", start)?;
    let head = String::from_utf8_lossy(&body[start..head_end]).into_owned();
    if !head.contains("name=\"media\"") {
        return None;
    }
    let filename = head.split("filename=\"").nth(1)?.split('"').next()?.to_owned();
    let data_start = head_end + 4;
    let data_end = find(body, format!("\r\n{boundary}").as_bytes(), data_start)?;
    Some((filename, body[data_start..data_end].to_vec()))
}

async fn upload(
    State(sh): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = admit(&sh, "/cgi-bin/media/upload", &q, Value::Null) {
        return r;
    }
    let kind = q.get("type").cloned().unwrap_or_default();
    if !["image", "voice", "video", "thumb"].contains(&kind.as_str()) {
        return error(40004, "invalid media type");
    }
    let Some((filename, bytes)) = media_part(&headers, &body) else {
        return error(41005, "media data missing (multipart field `media`)");
    };
    let mut s = sh.state.lock().unwrap();
    s.uploads.push(MediaItem { kind: kind.clone(), filename, bytes });
    let media_id = format!("MEDIA_UP_{}", s.uploads.len());
    ok(json!({ "type": kind, "media_id": media_id, "created_at": 1700000000 }))
}

async fn media_get(State(sh): State<Shared>, Query(q): Query<HashMap<String, String>>) -> Response {
    if let Some(r) = admit(&sh, "/cgi-bin/media/get", &q, Value::Null) {
        return r;
    }
    let id = q.get("media_id").cloned().unwrap_or_default();
    let item = sh.state.lock().unwrap().media.get(&id).cloned();
    match item {
        None => error(40007, "invalid media_id"),
        Some(m) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, m.kind.clone()),
                (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", m.filename)),
            ],
            m.bytes,
        )
            .into_response(),
    }
}

async fn api_get(
    State(sh): State<Shared>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let path = format!("/cgi-bin/{rest}");
    if let Some(r) = admit(&sh, &path, &q, Value::Null) {
        return r;
    }
    let mut s = sh.state.lock().unwrap();
    match rest.as_str() {
        // Pages of two, so paging is exercised.
        "user/get" => {
            let after = q.get("next_openid").cloned().unwrap_or_default();
            let ids: Vec<String> = s
                .followers
                .keys()
                .filter(|k| after.is_empty() || k.as_str() > after.as_str())
                .take(2)
                .cloned()
                .collect();
            let next = ids.last().cloned().unwrap_or_default();
            ok(
                json!({ "total": s.followers.len(), "count": ids.len(), "data": { "openid": ids }, "next_openid": next }),
            )
        }
        "user/info" => {
            let openid = q.get("openid").cloned().unwrap_or_default();
            match s.followers.get(&openid) {
                // Since 2021-12-27: no nickname, no avatar.
                Some((remark, tags)) => ok(json!({
                    "subscribe": 1, "openid": openid, "language": "zh_CN", "subscribe_time": 1700000000,
                    "remark": remark, "groupid": 0, "tagid_list": tags, "subscribe_scene": "ADD_SCENE_QR_CODE",
                    "qr_scene": 0, "qr_scene_str": "",
                })),
                None => error(40003, "invalid openid"),
            }
        }
        "tags/get" => {
            let tags: Vec<Value> = s
                .tags
                .iter()
                .map(|(id, name)| {
                    let count = s.followers.values().filter(|(_, t)| t.contains(id)).count();
                    json!({ "id": id, "name": name, "count": count })
                })
                .collect();
            ok(json!({ "tags": tags }))
        }
        "menu/get" => match &s.menu {
            Some(m) => ok(json!({ "menu": m })),
            None => error(46003, "menu no exist"),
        },
        "menu/delete" => {
            s.menu = None;
            ok(json!({ "errcode": 0, "errmsg": "ok" }))
        }
        _ => error(48001, "api unauthorized (not faked)"),
    }
}

async fn api_post(
    State(sh): State<Shared>,
    axum::extract::Path(rest): axum::extract::Path<String>,
    Query(q): Query<HashMap<String, String>>,
    body: Bytes,
) -> Response {
    let path = format!("/cgi-bin/{rest}");
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return error(47001, "data format error");
    };
    if let Some(r) = admit(&sh, &path, &q, v.clone()) {
        return r;
    }
    let mut s = sh.state.lock().unwrap();
    let done = || ok(json!({ "errcode": 0, "errmsg": "ok" }));
    match rest.as_str() {
        "message/custom/send" => {
            let to = v["touser"].as_str().unwrap_or_default();
            match s.refuse.get(to) {
                Some(&45015) => error(45015, "response out of time limit or subscription is canceled"),
                Some(&code) => error(code, "refused"),
                None if !s.followers.contains_key(to) => error(40003, "invalid openid"),
                None => done(),
            }
        }
        "user/info/updateremark" => {
            let openid = v["openid"].as_str().unwrap_or_default().to_owned();
            match s.followers.get_mut(&openid) {
                Some(f) => {
                    f.0 = v["remark"].as_str().unwrap_or_default().to_owned();
                    done()
                }
                None => error(40003, "invalid openid"),
            }
        }
        "tags/create" => {
            let name = v["tag"]["name"].as_str().unwrap_or_default().to_owned();
            if s.tags.values().any(|n| *n == name) {
                return error(45157, "invalid tag name (exists)");
            }
            let id = s.tags.keys().max().copied().unwrap_or(99) + 1;
            s.tags.insert(id, name.clone());
            ok(json!({ "tag": { "id": id, "name": name } }))
        }
        "tags/members/batchtagging" => {
            let tag = v["tagid"].as_i64().unwrap_or_default();
            if !s.tags.contains_key(&tag) {
                return error(45159, "invalid tag id");
            }
            for id in v["openid_list"].as_array().cloned().unwrap_or_default() {
                if let Some(f) = s.followers.get_mut(id.as_str().unwrap_or_default())
                    && !f.1.contains(&tag)
                {
                    f.1.push(tag);
                }
            }
            done()
        }
        "tags/getidlist" => {
            let openid = v["openid"].as_str().unwrap_or_default();
            match s.followers.get(openid) {
                Some((_, tags)) => ok(json!({ "tagid_list": tags })),
                None => error(40003, "invalid openid"),
            }
        }
        "menu/create" => {
            s.menu = Some(v);
            done()
        }
        "message/template/send" => {
            if v["template_id"].as_str() != Some("TEMPLATE_OK") {
                return error(40037, "invalid template_id");
            }
            s.next_msgid += 1;
            ok(json!({ "errcode": 0, "errmsg": "ok", "msgid": s.next_msgid }))
        }
        "qrcode/create" => ok(json!({
            "ticket": "gQH47joAAAAAAAAAASxodHRwOi8vd2VpeGluLnFxLmNvbS9xL2taZ2Z3TVRtNzJXV1Brb3ZhYmJJAAIEZ23sUwMEmm3sUw==",
            "expire_seconds": v.get("expire_seconds").cloned().unwrap_or(json!(0)),
            "url": "http://weixin.qq.com/q/kZgfwMTm72WWPkovabbI",
        })),
        _ => error(48001, "api unauthorized (not faked)"),
    }
}
