//! A faithful fake of the web-WeChat server (wx.qq.com, spec `web-wechat.md` §6): QR login with a
//! long-polled `login`, the ticket exchange (XML + cookies, 301-without-Location in desktop mode,
//! 1203 for a web-restricted account), `webwxinit`, contacts with `Seq` paging, batch contacts,
//! `synccheck`/`webwxsync` over a per-session event log, sends, chunked uploads, downloads, recall
//! and the room/friend operations — one listener on `127.0.0.1`, routing by path only, so the
//! clients' "unknown host ⇒ same origin" rule covers the push and file hosts.
//!
//! Tests drive it in-process ([`FakeWeb::scan`], [`FakeWeb::inject`], [`FakeWeb::kick`], …) and
//! client scripts over HTTP (`/__fake/*`, see [`control`]). Every send, upload and operation is
//! recorded in the outbox for assertions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use base64::Engine;
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::watch;

/// The bot account's wxid.
pub const SELF_WXID: &str = "wxid_puppetbot";
/// The bot account's nickname.
pub const SELF_NICK: &str = "PuppetBot";
/// The bot account's uin.
pub const SELF_UIN: u64 = 155217200;
/// The text of the 1203 refusal, as the platform words it.
pub const REFUSAL_1203: &str =
    "为了你的帐号安全，此微信号不能登录网页微信。你可以使用Windows微信或Mac微信在电脑端登录。";
/// A 1×1 PNG, served for QR codes and avatars.
pub const TINY_PNG: &[u8] = &[
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x06, 0x00, 0x00, 0x00, 0x1f, 0x15, 0xc4, 0x89, 0x00, 0x00, 0x00, 0x0d, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0xf0, 0x1f, 0x00, 0x05, 0x00, 0x01, 0xff, 0x89, 0x99, 0x3d,
    0x1d, 0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// A person (friend, stranger or official account) of the fake's world.
#[derive(Clone, Debug)]
pub struct Person {
    /// The stable wxid (`wxid_…`, `gh_…`).
    pub wxid: String,
    /// Nickname.
    pub nick: String,
    /// The remark the bot gave them.
    pub remark: String,
    /// 0 unknown, 1 male, 2 female.
    pub sex: u8,
    /// `VerifyFlag` (8 = official account).
    pub verify_flag: u32,
    /// A friend (ContactFlag & 1) rather than a stranger met in a room.
    pub friend: bool,
    /// The WeChat handle (`Alias`).
    pub alias: String,
}

/// A room of the fake's world.
#[derive(Clone, Debug)]
pub struct Room {
    /// `<n>@chatroom`.
    pub wxid: String,
    /// The topic.
    pub topic: String,
    /// The owner's wxid.
    pub owner: String,
    /// Members: (wxid, in-room display name).
    pub members: Vec<(String, String)>,
}

/// Where a login attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoginState {
    /// The QR is shown, nobody scanned.
    Waiting,
    /// Scanned, waiting for the confirm on the phone.
    Scanned,
    /// Confirmed: the next poll gets the redirect.
    Confirmed,
    /// The redirect was handed out.
    Redirected,
    /// The QR expired (the next poll answers 400).
    Expired,
}

#[derive(Clone, Debug)]
struct Attempt {
    state: LoginState,
    desktop: bool,
    ticket: String,
    polls: u32,
    push: bool,
}

/// A recorded request: the path's last segment, the query and the JSON body (multipart uploads
/// are recorded in [`Upload`]s instead).
#[derive(Clone, Debug)]
pub struct Call {
    /// `webwxsendmsg`, `webwxrevokemsg`, …
    pub endpoint: String,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// The JSON body (or `null`).
    pub body: Value,
    /// Selected request headers (`extspam`, `client-version`, `range`).
    pub headers: BTreeMap<String, String>,
}

/// A finished upload.
#[derive(Clone, Debug)]
pub struct Upload {
    /// The `MediaId` handed out.
    pub media_id: String,
    /// The file name.
    pub name: String,
    /// `pic`, `video` or `doc`.
    pub mediatype: String,
    /// How many chunks it came in.
    pub chunks: u32,
    /// The reassembled bytes.
    pub bytes: Vec<u8>,
}

#[derive(Clone, Debug)]
struct Media {
    bytes: Vec<u8>,
    mime: String,
    name: String,
}

struct Session {
    sid: String,
    skey: String,
    data_ticket: String,
    salt: String,
    /// The retcode synccheck answers once the session is dead.
    dead: Option<u32>,
    /// Events (seq, AddMsg/ModContact/DelContact marker).
    log: VecDeque<(u64, Pending)>,
    seq: u64,
}

#[derive(Clone, Debug)]
enum Pending {
    Msg(Value),
    ModContact(String),
}

/// Something to inject into the active session, as the platform would deliver it.
#[derive(Clone, Debug)]
pub enum Inject {
    /// 1:1 text from `from` (or, with `from == SELF_WXID`, sent from the phone to `to`).
    Text { from: String, to: String, text: String },
    /// Room text from `member` of `room`.
    RoomText { room: String, member: String, text: String },
    /// An image (MsgType 3) from `from` (a wxid, or a room with `member`).
    Image { from: String, member: Option<String>, bytes: Vec<u8> },
    /// A voice clip (34).
    Voice { from: String, bytes: Vec<u8>, ms: u32 },
    /// A video (43).
    Video { from: String, bytes: Vec<u8>, seconds: u32 },
    /// An emoticon (47).
    Emoticon { from: String, bytes: Vec<u8> },
    /// A file (49/6).
    File { from: String, name: String, bytes: Vec<u8> },
    /// A link share (49/5).
    Url { from: String, title: String, description: String, url: String },
    /// A mini program (49/33).
    MiniProgram { from: String, title: String, appid: String, pagepath: String },
    /// A shared location (MsgType 1 with SubMsgType 48, as web WeChat delivers it).
    Location { from: String, label: String, poiname: String, x: f64, y: f64 },
    /// A contact card (42) of `card` sent by `from`.
    Card { from: String, card: String },
    /// A recall (10002) of message `msg_id` sent by `from`.
    Recall { from: String, msg_id: String },
    /// A friend request (37) from a stranger.
    FriendRequest { wxid: String, nick: String, hello: String },
    /// `inviter` invites `member` (added to the world as a stranger if unknown) into `room`.
    RoomJoin { room: String, inviter: String, member: String, member_nick: String },
    /// `member` leaves `room` (10000 "移出" when `by_bot`, else only the member diff).
    RoomLeave { room: String, member: String },
    /// `by` changes `room`'s topic.
    RoomTopic { room: String, by: String, topic: String },
    /// A contact changed (remark set on the phone, …): a ModContactList entry.
    ModContact { wxid: String },
}

struct FakeState {
    base: String,
    people: Vec<Person>,
    rooms: Vec<Room>,
    attempts: BTreeMap<String, Attempt>,
    latest_uuid: Option<String>,
    sessions: Vec<Session>,
    auto_login: bool,
    web_restricted: bool,
    desktop_refused: bool,
    contact_page: usize,
    calls: Vec<Call>,
    uploads: Vec<Upload>,
    partial: HashMap<String, (u32, Vec<u8>)>,
    media_by_msg: HashMap<String, Media>,
    media_by_id: HashMap<String, Media>,
    next_id: u64,
    counter: u64,
    /// Ret codes the next sends answer (front first).
    send_faults: VecDeque<i64>,
    max_batch: usize,
    synccheck_polls: u64,
}

/// The running fake. Dropping it stops the server.
pub struct FakeWeb {
    /// `http://127.0.0.1:port`.
    pub base: String,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<FakeState>>,
    changes: Arc<watch::Sender<u64>>,
    hold: Duration,
}

impl Shared {
    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        let out = f(&mut self.state.lock().unwrap());
        self.changes.send_modify(|n| *n += 1);
        out
    }
    fn peek<T>(&self, f: impl FnOnce(&FakeState) -> T) -> T {
        f(&self.state.lock().unwrap())
    }
    /// Waits until `cond` holds or the long-poll hold ends; whether it held.
    async fn hold_until(&self, cond: impl Fn(&FakeState) -> bool) -> bool {
        let mut rx = self.changes.subscribe();
        let st = self.state.clone();
        tokio::time::timeout(self.hold, rx.wait_for(|_| cond(&st.lock().unwrap()))).await.is_ok_and(|r| r.is_ok())
    }
}

fn person(wxid: &str, nick: &str, remark: &str, sex: u8, verify_flag: u32, friend: bool) -> Person {
    Person {
        wxid: wxid.into(),
        nick: nick.into(),
        remark: remark.into(),
        sex,
        verify_flag,
        friend,
        alias: String::new(),
    }
}

impl FakeWeb {
    /// Starts on a free loopback port with a small world: friends Alice, Bob, Carol, Dave (Dave's
    /// remark is "dave-remark"), an official account, and two rooms. Long polls hold 300 ms.
    pub async fn start() -> Self {
        Self::start_with_hold(Duration::from_millis(300)).await
    }

    /// As [`FakeWeb::start`], with long polls held `hold` before answering "nothing new".
    pub async fn start_with_hold(hold: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let people = vec![
            person("wxid_alice", "Alice", "", 2, 0, true),
            person("wxid_bob", "Bob", "", 1, 0, true),
            person("wxid_carol", "Carol", "", 2, 0, true),
            person("wxid_dave", "Dave", "dave-remark", 1, 0, true),
            person("gh_news", "News Daily", "", 0, 24, true),
            person("wxid_erin", "Erin", "", 2, 0, false),
        ];
        let rooms = vec![
            Room {
                wxid: "1001@chatroom".into(),
                topic: "Friends".into(),
                owner: "wxid_alice".into(),
                members: vec![
                    (SELF_WXID.into(), String::new()),
                    ("wxid_alice".into(), "Ali".into()),
                    ("wxid_bob".into(), String::new()),
                    ("wxid_erin".into(), String::new()),
                ],
            },
            Room {
                wxid: "1002@chatroom".into(),
                topic: "Work".into(),
                owner: SELF_WXID.into(),
                members: vec![
                    (SELF_WXID.into(), String::new()),
                    ("wxid_carol".into(), String::new()),
                    ("wxid_dave".into(), String::new()),
                ],
            },
        ];
        let state = Arc::new(Mutex::new(FakeState {
            base: base.clone(),
            people,
            rooms,
            attempts: BTreeMap::new(),
            latest_uuid: None,
            sessions: Vec::new(),
            auto_login: false,
            web_restricted: false,
            desktop_refused: false,
            contact_page: 3,
            calls: Vec::new(),
            uploads: Vec::new(),
            partial: HashMap::new(),
            media_by_msg: HashMap::new(),
            media_by_id: HashMap::new(),
            next_id: 4_611_686_018_427_387_904,
            counter: 0,
            send_faults: VecDeque::new(),
            max_batch: 0,
            synccheck_polls: 0,
        }));
        let (tx, _) = watch::channel(0);
        let shared = Shared { state, changes: Arc::new(tx), hold };
        let app = Router::new()
            .route("/jslogin", any(jslogin))
            .route("/qrcode/{uuid}", get(|| async { ([(header::CONTENT_TYPE, "image/jpeg")], TINY_PNG) }))
            .route("/cgi-bin/mmwebwx-bin/{endpoint}", any(api))
            .route("/__fake/{action}", any(control))
            .with_state(shared.clone());
        let task = tokio::spawn(async move {
            _ = axum::serve(listener, app).await;
        });
        Self { base, shared, task }
    }

    fn with<T>(&self, f: impl FnOnce(&mut FakeState) -> T) -> T {
        self.shared.with(f)
    }

    /// The environment pointing a puppet-server's web backend at this fake.
    pub fn server_env(&self) -> Vec<(&'static str, String)> {
        vec![("PUPPET_WEB_LOGIN_BASE", self.base.clone())]
    }

    /// Every QR scan is scanned and confirmed by itself (for client scripts that block in login).
    pub fn set_auto_login(&self, on: bool) {
        self.with(|s| s.auto_login = on);
    }

    /// The account is barred from web login: the ticket exchange answers 1203 (unless the attempt
    /// came in desktop mode with an `extspam` header).
    pub fn set_web_restricted(&self, on: bool) {
        self.with(|s| s.web_restricted = on);
    }

    /// The account is barred from desktop (UOS) login too: every ticket exchange answers 1203.
    pub fn set_refused(&self, on: bool) {
        self.with(|s| s.desktop_refused = on);
    }

    /// The uuid of the newest login attempt.
    pub fn latest_uuid(&self) -> Option<String> {
        self.with(|s| s.latest_uuid.clone())
    }

    /// How many login attempts (QR codes) were handed out.
    pub fn attempts(&self) -> usize {
        self.with(|s| s.attempts.len())
    }

    /// Waits (bounded) until `cond` holds on the fake's state summary.
    pub async fn wait(&self, what: &str, cond: impl Fn(&Summary) -> bool) {
        let mut rx = self.shared.changes.subscribe();
        let st = self.shared.state.clone();
        let res =
            tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|_| cond(&summary(&st.lock().unwrap())))).await;
        assert!(res.is_ok(), "fake web: waited 30 s for {what}; state: {:?}", self.shared.peek(summary));
    }

    /// Applies a control action (the same as `POST /__fake/<action>`), answering its JSON.
    pub async fn control(&self, action: &str, body: Value) -> Value {
        http_post_json(&format!("{}/__fake/{action}", self.base), &body).await
    }

    /// Scans the newest QR code.
    pub async fn scan(&self) {
        self.control("scan", json!({})).await;
    }
    /// Confirms the newest scanned QR code on the "phone".
    pub async fn confirm(&self) {
        self.control("confirm", json!({})).await;
    }
    /// Expires the newest QR code.
    pub async fn expire(&self) {
        self.control("expire", json!({})).await;
    }
    /// Kills the active session: synccheck answers `retcode`, webwxsync and webwxinit Ret 1101.
    pub async fn kick(&self, retcode: u32) {
        self.control("kick", json!({ "retcode": retcode })).await;
    }
    /// The next sends answer these `Ret` codes, in order.
    pub fn fail_sends(&self, rets: &[i64]) {
        self.with(|s| s.send_faults.extend(rets.iter().copied()));
    }
    /// Injects an event into the active session; the new message's MsgId (if it is a message).
    pub async fn inject(&self, what: Inject) -> Option<String> {
        self.with(|s| inject(s, what))
    }
    /// Calls recorded at `endpoint` so far.
    pub fn calls(&self, endpoint: &str) -> Vec<Call> {
        self.with(|s| s.calls.iter().filter(|c| c.endpoint == endpoint).cloned().collect())
    }
    /// Finished uploads so far.
    pub fn uploads(&self) -> Vec<Upload> {
        self.with(|s| s.uploads.clone())
    }
    /// The most contacts one `webwxbatchgetcontact` asked for.
    pub fn max_batch(&self) -> usize {
        self.with(|s| s.max_batch)
    }
    /// The session-scoped `@…` id the active session uses for `wxid` (a person or a room).
    pub fn at_id(&self, wxid: &str) -> String {
        self.with(|s| {
            let sess = s.sessions.iter().rev().find(|x| x.dead.is_none()).expect("an alive session");
            at_id(sess, wxid)
        })
    }
    /// How many sessions were created (one per completed ticket exchange).
    pub fn sessions(&self) -> usize {
        self.with(|s| s.sessions.len())
    }
    /// `wxid` (a new stranger called `nick`) joins `room` without any sync telling the client: the
    /// client learns it only by fetching the room again.
    pub fn add_member_silently(&self, room: &str, wxid: &str, nick: &str) {
        self.with(|s| {
            if !s.people.iter().any(|p| p.wxid == wxid) {
                s.people.push(person(wxid, nick, "", 2, 0, false));
            }
            if let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room) {
                r.members.push((wxid.to_owned(), String::new()));
            }
        });
    }

    /// The members of room `wxid`.
    pub fn room_members(&self, wxid: &str) -> Vec<String> {
        self.with(|s| s.rooms.iter().find(|r| r.wxid == wxid).map(|r| r.members.iter().map(|m| m.0.clone()).collect()))
            .unwrap_or_default()
    }
}

impl Drop for FakeWeb {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What [`FakeWeb::wait`] conditions look at.
#[derive(Clone, Debug)]
pub struct Summary {
    /// The newest attempt's state.
    pub login: Option<LoginState>,
    /// How many attempts were handed out.
    pub attempts: usize,
    /// Sessions created.
    pub sessions: usize,
    /// Sessions alive.
    pub alive: usize,
    /// synccheck polls answered so far.
    pub synccheck_polls: u64,
    /// Calls recorded so far, by endpoint.
    pub calls: BTreeMap<String, usize>,
    /// Finished uploads.
    pub uploads: usize,
}

fn summary(s: &FakeState) -> Summary {
    let mut calls = BTreeMap::new();
    for c in &s.calls {
        *calls.entry(c.endpoint.clone()).or_insert(0) += 1;
    }
    Summary {
        login: s.latest_uuid.as_ref().and_then(|u| s.attempts.get(u)).map(|a| a.state),
        attempts: s.attempts.len(),
        sessions: s.sessions.len(),
        alive: s.sessions.iter().filter(|x| x.dead.is_none()).count(),
        synccheck_polls: s.synccheck_polls,
        calls,
        uploads: s.uploads.len(),
    }
}

async fn http_post_json(url: &str, body: &Value) -> Value {
    // A tiny HTTP/1.1 client on tokio, so the tests crate needs no HTTP client dependency.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").expect("http url");
    let (host, path) = rest.split_once('/').expect("path");
    let payload = body.to_string();
    let mut stream = tokio::net::TcpStream::connect(host).await.expect("connect to the fake");
    let req = format!(
        "POST /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{payload}",
        payload.len()
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf);
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    serde_json::from_str(body).unwrap_or(Value::Null)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn digest(parts: &[&str]) -> String {
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize())
}

fn fresh(s: &mut FakeState, what: &str) -> String {
    s.counter += 1;
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    digest(&[what, &s.counter.to_string(), &nanos.to_string()])
}

/// The per-session id of a wxid: `@` + 32 hex for people, `@@` + 64 hex for rooms, plain for specials.
fn at_id(sess: &Session, wxid: &str) -> String {
    if wxid == "filehelper" || wxid == "fmessage" {
        return wxid.to_owned();
    }
    let d = digest(&[&sess.salt, wxid]);
    if wxid.ends_with("@chatroom") { format!("@@{d}") } else { format!("@{}", &d[..32]) }
}

fn wxid_of(s: &FakeState, sess: &Session, at: &str) -> Option<String> {
    if at == "filehelper" || at == "fmessage" {
        return Some(at.to_owned());
    }
    let mut all: Vec<&str> = vec![SELF_WXID];
    all.extend(s.people.iter().map(|p| p.wxid.as_str()));
    all.extend(s.rooms.iter().map(|r| r.wxid.as_str()));
    all.into_iter().find(|w| at_id(sess, w) == at).map(str::to_owned)
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// HTML-escapes text as web WeChat delivers it (`<br/>` for newlines).
pub fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('\n', "<br/>")
}

fn user_json(s: &FakeState, sess: &Session, wxid: &str) -> Value {
    if wxid == SELF_WXID {
        return json!({
            "Uin": SELF_UIN, "UserName": at_id(sess, SELF_WXID), "NickName": SELF_NICK,
            "HeadImgUrl": format!("/cgi-bin/mmwebwx-bin/webwxgeticon?seq=1&username={}&skey={}", at_id(sess, SELF_WXID), sess.skey),
            "RemarkName": "", "PYInitial": "", "PYQuanPin": "", "RemarkPYInitial": "", "RemarkPYQuanPin": "",
            "HideInputBarFlag": 0, "StarFriend": 0, "Sex": 1, "Signature": "a fake bot", "AppAccountFlag": 0,
            "VerifyFlag": 0, "ContactFlag": 0, "WebWxPluginSwitch": 0, "HeadImgFlag": 1, "SnsFlag": 1
        });
    }
    if let Some(r) = s.rooms.iter().find(|r| r.wxid == wxid) {
        let members: Vec<Value> = r
            .members
            .iter()
            .map(|(m, display)| {
                let nick = s
                    .people
                    .iter()
                    .find(|p| &p.wxid == m)
                    .map(|p| p.nick.clone())
                    .unwrap_or_else(|| if m == SELF_WXID { SELF_NICK.to_owned() } else { String::new() });
                json!({"Uin": 0, "UserName": at_id(sess, m), "NickName": nick, "AttrStatus": 0, "PYInitial": "",
                       "PYQuanPin": "", "RemarkPYInitial": "", "RemarkPYQuanPin": "", "MemberStatus": 0,
                       "DisplayName": display, "KeyWord": ""})
            })
            .collect();
        let owner_uin = if r.owner == SELF_WXID { SELF_UIN } else { 0 };
        return json!({
            "Uin": 0, "UserName": at_id(sess, &r.wxid), "NickName": r.topic,
            "HeadImgUrl": format!("/cgi-bin/mmwebwx-bin/webwxgetheadimg?seq=0&username={}&skey={}", at_id(sess, &r.wxid), sess.skey),
            "ContactFlag": 3, "MemberCount": members.len(), "MemberList": members, "RemarkName": "",
            "HideInputBarFlag": 0, "Sex": 0, "Signature": "", "VerifyFlag": 0, "OwnerUin": owner_uin,
            "PYInitial": "", "PYQuanPin": "", "RemarkPYInitial": "", "RemarkPYQuanPin": "", "StarFriend": 0,
            "AppAccountFlag": 0, "Statues": 1, "AttrStatus": 0, "Province": "", "City": "", "Alias": "",
            "SnsFlag": 0, "UniFriend": 0, "DisplayName": "", "ChatRoomId": 0, "KeyWord": "",
            "EncryChatRoomId": format!("@{}", &digest(&[&sess.salt, "encry", &r.wxid])[..32]),
            "IsOwner": u8::from(r.owner == SELF_WXID), "ChatRoomOwner": at_id(sess, &r.owner)
        });
    }
    let p = s.people.iter().find(|p| p.wxid == wxid).cloned().unwrap_or_else(|| person(wxid, "", "", 0, 0, false));
    json!({
        "Uin": 0, "UserName": at_id(sess, &p.wxid), "NickName": p.nick,
        "HeadImgUrl": format!("/cgi-bin/mmwebwx-bin/webwxgeticon?seq=2&username={}&skey={}", at_id(sess, &p.wxid), sess.skey),
        "ContactFlag": if p.friend { 3 } else { 0 }, "MemberCount": 0, "MemberList": [], "RemarkName": p.remark,
        "HideInputBarFlag": 0, "Sex": p.sex, "Signature": "", "VerifyFlag": p.verify_flag, "OwnerUin": 0,
        "PYInitial": "", "PYQuanPin": "", "RemarkPYInitial": "", "RemarkPYQuanPin": "", "StarFriend": 0,
        "AppAccountFlag": 0, "Statues": 0, "AttrStatus": 33656871, "Province": "Guangdong", "City": "Shenzhen",
        "Alias": p.alias, "SnsFlag": 17, "UniFriend": 0, "DisplayName": "", "ChatRoomId": 0, "KeyWord": "",
        "EncryChatRoomId": "", "IsOwner": 0
    })
}

fn sync_key(seq: u64) -> Value {
    let base = 700_000_000u64;
    json!({"Count": 4, "List": [
        {"Key": 1, "Val": base + seq}, {"Key": 2, "Val": base + seq}, {"Key": 3, "Val": base}, {"Key": 1000, "Val": 1_700_000_000u64}
    ]})
}

/// The client's position: Key 1's value from a synccheck string (`1_v|2_v…`) or a SyncKey object.
fn client_seq_str(synckey: &str) -> Option<u64> {
    synckey.split('|').find_map(|kv| kv.strip_prefix("1_")).and_then(|v| v.parse::<u64>().ok()).map(|v| v - 700_000_000)
}

fn client_seq_json(v: &Value) -> Option<u64> {
    v["List"].as_array()?.iter().find(|k| k["Key"].as_u64() == Some(1))?["Val"].as_u64().map(|v| v - 700_000_000)
}

fn push(sess: &mut Session, p: Pending) {
    sess.seq += 1;
    sess.log.push_back((sess.seq, p));
    while sess.log.len() > 1000 {
        sess.log.pop_front();
    }
}

fn msg_json(
    s: &mut FakeState,
    sess: &Session,
    from: &str,
    to: &str,
    msg_type: u32,
    content: String,
    extra: Value,
) -> Value {
    s.next_id += 1;
    let id = s.next_id;
    let mut m = json!({
        "MsgId": id.to_string(), "FromUserName": at_id(sess, from), "ToUserName": at_id(sess, to),
        "MsgType": msg_type, "Content": content, "Status": 3, "ImgStatus": 1, "CreateTime": now(),
        "VoiceLength": 0, "PlayLength": 0, "FileName": "", "FileSize": "", "MediaId": "", "Url": "",
        "AppMsgType": 0, "StatusNotifyCode": 0, "StatusNotifyUserName": "",
        "RecommendInfo": {"UserName": "", "NickName": "", "QQNum": 0, "Province": "", "City": "", "Content": "",
            "Signature": "", "Alias": "", "Scene": 0, "VerifyFlag": 0, "AttrStatus": 0, "Sex": 0, "Ticket": "", "OpCode": 0},
        "ForwardFlag": 0, "AppInfo": {"AppID": "", "Type": 0}, "HasProductId": 0, "Ticket": "",
        "ImgHeight": 0, "ImgWidth": 0, "SubMsgType": 0, "NewMsgId": id, "OriContent": "", "EncryFileName": ""
    });
    if let (Some(m), Some(extra)) = (m.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            m.insert(k.clone(), v.clone());
        }
    }
    m
}

/// Content prefix for a room message from `member`.
fn prefixed(sess: &Session, from: &str, member: Option<&str>, body: &str) -> String {
    match member {
        Some(m) if from.ends_with("@chatroom") => format!("{}:<br/>{body}", at_id(sess, m)),
        _ => body.to_owned(),
    }
}

fn inject(s: &mut FakeState, what: Inject) -> Option<String> {
    let idx = s.sessions.iter().rposition(|x| x.dead.is_none())?;
    let sess = std::mem::replace(&mut s.sessions[idx], placeholder());
    let mut sess = sess;
    let out = inject_into(s, &mut sess, what);
    s.sessions[idx] = sess;
    out
}

fn placeholder() -> Session {
    Session {
        sid: String::new(),
        skey: String::new(),
        data_ticket: String::new(),
        salt: String::new(),
        dead: Some(0),
        log: VecDeque::new(),
        seq: 0,
    }
}

fn inject_into(s: &mut FakeState, sess: &mut Session, what: Inject) -> Option<String> {
    let me = SELF_WXID;
    let msg = match what {
        Inject::Text { from, to, text } => msg_json(s, sess, &from, &to, 1, escape_html(&text), json!({})),
        Inject::RoomText { room, member, text } => {
            let c = prefixed(sess, &room, Some(&member), &escape_html(&text));
            msg_json(s, sess, &room, me, 1, c, json!({}))
        }
        Inject::Image { from, member, bytes } => {
            let md5 = digest(&[&hex(&bytes)]);
            let body = escape_html(&format!(
                "<?xml version=\"1.0\"?>\n<msg><img length=\"{}\" md5=\"{}\" hdlength=\"0\" cdnthumburl=\"x\" /></msg>",
                bytes.len(),
                &md5[..32]
            ));
            let c = prefixed(sess, &from, member.as_deref(), &body);
            let m = msg_json(s, sess, &from, me, 3, c, json!({"ImgWidth": 1, "ImgHeight": 1}));
            s.media_by_msg.insert(
                m["MsgId"].as_str().unwrap().to_owned(),
                Media { bytes, mime: "image/jpeg".into(), name: String::new() },
            );
            m
        }
        Inject::Voice { from, bytes, ms } => {
            let c = escape_html(&format!("<msg><voicemsg length=\"{}\" voicelength=\"{ms}\" /></msg>", bytes.len()));
            let m = msg_json(s, sess, &from, me, 34, c, json!({"VoiceLength": ms}));
            s.media_by_msg.insert(
                m["MsgId"].as_str().unwrap().to_owned(),
                Media { bytes, mime: "audio/mp3".into(), name: String::new() },
            );
            m
        }
        Inject::Video { from, bytes, seconds } => {
            let c =
                escape_html(&format!("<msg><videomsg length=\"{}\" playlength=\"{seconds}\" /></msg>", bytes.len()));
            let m = msg_json(s, sess, &from, me, 43, c, json!({"PlayLength": seconds}));
            s.media_by_msg.insert(
                m["MsgId"].as_str().unwrap().to_owned(),
                Media { bytes, mime: "video/mp4".into(), name: String::new() },
            );
            m
        }
        Inject::Emoticon { from, bytes } => {
            let c = escape_html(&format!("<msg><emoji md5=\"abc\" len=\"{}\" productid=\"\" /></msg>", bytes.len()));
            let m = msg_json(s, sess, &from, me, 47, c, json!({}));
            s.media_by_msg.insert(
                m["MsgId"].as_str().unwrap().to_owned(),
                Media { bytes, mime: "image/gif".into(), name: String::new() },
            );
            m
        }
        Inject::File { from, name, bytes } => {
            let media_id = format!("@crypt_{}", &fresh(s, "media")[..40]);
            let ext = name.rsplit_once('.').map(|x| x.1).unwrap_or("");
            let c = escape_html(&format!(
                "<msg><appmsg appid=\"\" sdkver=\"0\"><title>{name}</title><des></des><action></action><type>6</type><content></content><url></url><appattach><totallen>{}</totallen><attachid>{media_id}</attachid><fileext>{ext}</fileext></appattach></appmsg></msg>",
                bytes.len()
            ));
            let encry = format!("{}%2E{ext}", name.rsplit_once('.').map(|x| x.0).unwrap_or(&name));
            let m = msg_json(
                s,
                sess,
                &from,
                me,
                49,
                c,
                json!({"AppMsgType": 6, "FileName": name, "FileSize": bytes.len().to_string(), "MediaId": media_id, "EncryFileName": encry}),
            );
            s.media_by_id.insert(media_id, Media { bytes, mime: "application/octet-stream".into(), name });
            m
        }
        Inject::Url { from, title, description, url } => {
            let c = escape_html(&format!(
                "<msg><appmsg appid=\"\" sdkver=\"0\"><title>{title}</title><des>{description}</des><type>5</type><url>{url}</url><thumburl></thumburl></appmsg></msg>"
            ));
            msg_json(s, sess, &from, me, 49, c, json!({"AppMsgType": 5, "FileName": title, "Url": url}))
        }
        Inject::MiniProgram { from, title, appid, pagepath } => {
            let c = escape_html(&format!(
                "<msg><appmsg appid=\"\" sdkver=\"0\"><title>{title}</title><des></des><type>33</type><url></url><sourcedisplayname>{title}</sourcedisplayname><weappinfo><username>gh_mini@app</username><appid>{appid}</appid><pagepath>{pagepath}</pagepath></weappinfo></appmsg></msg>"
            ));
            msg_json(s, sess, &from, me, 49, c, json!({"AppMsgType": 33, "FileName": title}))
        }
        Inject::Location { from, label, poiname, x, y } => {
            let ori = escape_html(&format!(
                "<?xml version=\"1.0\"?>\n<msg>\n\t<location x=\"{x}\" y=\"{y}\" scale=\"16\" label=\"{label}\" maptype=\"0\" poiname=\"{poiname}\" poiid=\"\" />\n</msg>\n"
            ));
            let content = format!(
                "{}:<br/>/cgi-bin/mmwebwx-bin/webwxgetpubliclinkimg?url=xxx&msgid={}&pictype=location",
                escape_html(&label),
                s.next_id + 1
            );
            let url = format!("https://apis.map.qq.com/uri/v1/geocoder?coord={x},{y}");
            msg_json(s, sess, &from, me, 1, content, json!({"SubMsgType": 48, "Url": url, "OriContent": ori}))
        }
        Inject::Card { from, card } => {
            let nick = nick_of(s, &card);
            let c = escape_html(&format!("<msg username=\"{card}\" nickname=\"{nick}\" alias=\"\" />"));
            let info = json!({"UserName": at_id(sess, &card), "NickName": nick, "QQNum": 0, "Province": "", "City": "",
                "Content": "", "Signature": "", "Alias": "", "Scene": 17, "VerifyFlag": 0, "AttrStatus": 0,
                "Sex": 1, "Ticket": "", "OpCode": 0});
            msg_json(s, sess, &from, me, 42, c, json!({"RecommendInfo": info}))
        }
        Inject::Recall { from, msg_id } => {
            let c = escape_html(&format!(
                "<sysmsg type=\"revokemsg\"><revokemsg><session>{from}</session><oldmsgid>1</oldmsgid><msgid>{msg_id}</msgid><replacemsg><![CDATA[\"x\" 撤回了一条消息]]></replacemsg></revokemsg></sysmsg>"
            ));
            msg_json(s, sess, &from, me, 10002, c, json!({}))
        }
        Inject::FriendRequest { wxid, nick, hello } => {
            if !s.people.iter().any(|p| p.wxid == wxid) {
                s.people.push(person(&wxid, &nick, "", 1, 0, false));
            }
            let ticket = format!("v2_{}@stranger", &fresh(s, "ticket")[..24]);
            let c = escape_html(&format!(
                "<msg fromusername=\"{wxid}\" encryptusername=\"v1_x@stranger\" fromnickname=\"{nick}\" content=\"{hello}\" scene=\"30\" ticket=\"{ticket}\" opcode=\"2\" />"
            ));
            let info = json!({"UserName": at_id(sess, &wxid), "NickName": nick, "QQNum": 0, "Province": "", "City": "",
                "Content": hello, "Signature": "", "Alias": "", "Scene": 30, "VerifyFlag": 0, "AttrStatus": 0,
                "Sex": 1, "Ticket": ticket, "OpCode": 2});
            msg_json(s, sess, "fmessage", me, 37, c, json!({"RecommendInfo": info, "Ticket": ticket}))
        }
        Inject::RoomJoin { room, inviter, member, member_nick } => {
            if !s.people.iter().any(|p| p.wxid == member) {
                s.people.push(person(&member, &member_nick, "", 1, 0, false));
            }
            let inviter_nick = nick_of(s, &inviter);
            if let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room) {
                r.members.push((member.clone(), String::new()));
            }
            let text = format!("\"{inviter_nick}\"邀请\"{member_nick}\"加入了群聊");
            let m = msg_json(s, sess, &room, me, 10000, text, json!({}));
            push(sess, Pending::ModContact(room));
            m
        }
        Inject::RoomLeave { room, member } => {
            if let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room) {
                r.members.retain(|m| m.0 != member);
            }
            push(sess, Pending::ModContact(room));
            return None;
        }
        Inject::RoomTopic { room, by, topic } => {
            if let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room) {
                r.topic = topic.clone();
            }
            let by_nick = if by == SELF_WXID { "你".to_owned() } else { format!("\"{}\"", nick_of(s, &by)) };
            let m = msg_json(s, sess, &room, me, 10000, format!("{by_nick}修改群名为“{topic}”"), json!({}));
            push(sess, Pending::ModContact(room));
            m
        }
        Inject::ModContact { wxid } => {
            push(sess, Pending::ModContact(wxid));
            return None;
        }
    };
    let id = msg["MsgId"].as_str().map(str::to_owned);
    push(sess, Pending::Msg(msg));
    id
}

fn nick_of(s: &FakeState, wxid: &str) -> String {
    if wxid == SELF_WXID {
        return SELF_NICK.into();
    }
    s.people.iter().find(|p| p.wxid == wxid).map(|p| p.nick.clone()).unwrap_or_default()
}

fn js(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/javascript")], body).into_response()
}

fn ret(code: i64, msg: &str) -> Value {
    json!({"Ret": code, "ErrMsg": msg})
}

fn cookies(headers: &HeaderMap) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for v in headers.get_all(header::COOKIE) {
        for kv in v.to_str().unwrap_or("").split(';') {
            if let Some((k, v)) = kv.trim().split_once('=') {
                out.insert(k.to_owned(), v.to_owned());
            }
        }
    }
    out
}

async fn jslogin(State(sh): State<Shared>, Query(q): Query<HashMap<String, String>>, body: Bytes) -> Response {
    // wechat4u POSTs with the parameters in the query; accept form bodies too.
    let mut q = q;
    for (k, v) in form_urlencoded(&body) {
        q.entry(k).or_insert(v);
    }
    let desktop = q.get("redirect_uri").is_some_and(|r| r.contains("mod=desktop"));
    let uuid = sh.with(|s| {
        let raw = fresh(s, "uuid");
        let uuid = format!("{}Wx{}==", &raw[..4], &raw[4..10]);
        let attempt = Attempt {
            state: LoginState::Waiting,
            desktop,
            ticket: fresh(s, "ticket")[..24].to_owned(),
            polls: 0,
            push: false,
        };
        s.attempts.insert(uuid.clone(), attempt);
        s.latest_uuid = Some(uuid.clone());
        s.calls.push(Call {
            endpoint: "jslogin".into(),
            query: q.clone().into_iter().collect(),
            body: Value::Null,
            headers: BTreeMap::new(),
        });
        uuid
    });
    js(format!("window.QRLogin.code = 200; window.QRLogin.uuid = \"{uuid}\";"))
}

fn form_urlencoded(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body);
    text.split('&').filter_map(|kv| kv.split_once('=')).map(|(k, v)| (percent_decode(k), percent_decode(v))).collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether a JSON value (number or string) is this uin.
fn is_uin(v: &Value) -> bool {
    v.as_u64() == Some(SELF_UIN) || v.as_str().and_then(|s| s.parse::<u64>().ok()) == Some(SELF_UIN)
}

/// The session a request belongs to: by `BaseRequest.Sid`, else the `wxsid` cookie, else the `sid` query.
fn session_index(
    s: &FakeState,
    body: &Value,
    cookies: &HashMap<String, String>,
    q: &HashMap<String, String>,
) -> Option<usize> {
    let sid = body["BaseRequest"]["Sid"]
        .as_str()
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .or_else(|| cookies.get("wxsid").cloned())
        .or_else(|| q.get("sid").cloned())?;
    s.sessions.iter().position(|x| x.sid == sid)
}

async fn api(
    State(sh): State<Shared>,
    Path(endpoint): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let jar = cookies(&headers);
    let json_body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let mut recorded = BTreeMap::new();
    for h in ["extspam", "client-version", "range", "referer"] {
        if let Some(v) = headers.get(h).and_then(|v| v.to_str().ok()) {
            recorded.insert(h.to_owned(), v.to_owned());
        }
    }
    if endpoint != "webwxuploadmedia" {
        sh.with(|s| {
            s.calls.push(Call {
                endpoint: endpoint.clone(),
                query: q.clone().into_iter().collect(),
                body: json_body.clone(),
                headers: recorded.clone(),
            })
        });
    }
    match endpoint.as_str() {
        "login" => login_poll(&sh, &q).await,
        "webwxnewloginpage" => ticket_exchange(&sh, &q, &headers),
        "webwxpushloginurl" => {
            let ok = q.get("uin").and_then(|u| u.parse::<u64>().ok()) == Some(SELF_UIN)
                && jar.get("webwx_auth_ticket").is_some_and(|t| !t.is_empty());
            if !ok {
                return axum::Json(json!({"ret": "1", "msg": "param error"})).into_response();
            }
            let uuid = sh.with(|s| {
                let raw = fresh(s, "uuid");
                let uuid = format!("{}Wx{}==", &raw[..4], &raw[4..10]);
                let ticket = fresh(s, "ticket")[..24].to_owned();
                s.attempts.insert(
                    uuid.clone(),
                    Attempt {
                        state: LoginState::Waiting,
                        desktop: q.contains_key("mod"),
                        ticket,
                        polls: 0,
                        push: true,
                    },
                );
                s.latest_uuid = Some(uuid.clone());
                uuid
            });
            axum::Json(json!({"ret": "0", "msg": "all ok", "uuid": uuid})).into_response()
        }
        "webwxinit" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            };
            if !is_uin(&json_body["BaseRequest"]["Uin"]) || s.sessions[i].dead.is_some() {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            }
            let sess = &s.sessions[i];
            let recent: Vec<Value> = ["wxid_alice", "1001@chatroom", "filehelper"]
                .iter()
                .map(|w| {
                    let mut u = user_json(s, sess, w);
                    if w.ends_with("@chatroom") {
                        // Stale partial member lists, as the real server sends.
                        u["MemberList"] = json!([]);
                    }
                    u
                })
                .collect();
            let chat_set: Vec<String> =
                ["wxid_alice", "1001@chatroom", "filehelper"].iter().map(|w| at_id(sess, w)).collect();
            axum::Json(json!({
                "BaseResponse": ret(0, ""), "Count": recent.len(), "ContactList": recent,
                "SyncKey": sync_key(sess.seq), "User": user_json(s, sess, SELF_WXID),
                "ChatSet": chat_set.join(","), "SKey": sess.skey, "ClientVersion": 1661993526,
                "SystemTime": now(), "GrayScale": 1, "InviteStartCount": 40, "MPSubscribeMsgCount": 0,
                "MPSubscribeMsgList": [], "ClickReportInterval": 600000
            }))
            .into_response()
        }),
        "webwxstatusnotify" => sh.with(|s| {
            let id = fresh(s, "msg")[..16].to_owned();
            axum::Json(json!({"BaseResponse": ret(0, ""), "MsgID": id})).into_response()
        }),
        "webwxgetcontact" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(
                    json!({"BaseResponse": ret(1101, ""), "MemberCount": 0, "MemberList": [], "Seq": 0}),
                )
                .into_response();
            };
            let sess = &s.sessions[i];
            let mut all: Vec<String> = s.people.iter().filter(|p| p.friend).map(|p| p.wxid.clone()).collect();
            all.push("filehelper".into());
            all.extend(s.rooms.iter().map(|r| r.wxid.clone()));
            let seq: usize = q.get("seq").and_then(|x| x.parse().ok()).unwrap_or(0);
            let page: Vec<Value> = all
                .iter()
                .skip(seq)
                .take(s.contact_page)
                .map(|w| {
                    let mut u = user_json(s, sess, w);
                    if w.ends_with("@chatroom") {
                        u["MemberCount"] = json!(0);
                        u["MemberList"] = json!([]);
                    }
                    if w == "filehelper" {
                        u = json!({"Uin": 0, "UserName": "filehelper", "NickName": "文件传输助手", "HeadImgUrl": "",
                            "ContactFlag": 3, "MemberCount": 0, "MemberList": [], "RemarkName": "", "Sex": 0,
                            "VerifyFlag": 0, "Signature": "", "Alias": "", "Province": "", "City": "", "StarFriend": 0,
                            "AttrStatus": 0, "EncryChatRoomId": "", "KeyWord": "fil", "DisplayName": "", "SnsFlag": 0});
                    }
                    u
                })
                .collect();
            let next = if seq + s.contact_page < all.len() { seq + s.contact_page } else { 0 };
            axum::Json(json!({"BaseResponse": ret(0, ""), "MemberCount": page.len(), "MemberList": page, "Seq": next}))
                .into_response()
        }),
        "webwxbatchgetcontact" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(json!({"BaseResponse": ret(1101, ""), "Count": 0, "ContactList": []}))
                    .into_response();
            };
            let list = json_body["List"].as_array().cloned().unwrap_or_default();
            s.max_batch = s.max_batch.max(list.len());
            if list.len() > 50 {
                return axum::Json(json!({"BaseResponse": ret(-1, "too many"), "Count": 0, "ContactList": []}))
                    .into_response();
            }
            let sess = &s.sessions[i];
            let found: Vec<Value> = list
                .iter()
                .filter_map(|e| e["UserName"].as_str())
                .filter_map(|at| wxid_of(s, sess, at))
                .map(|w| user_json(s, sess, &w))
                .collect();
            axum::Json(json!({"BaseResponse": ret(0, ""), "Count": found.len(), "ContactList": found})).into_response()
        }),
        "synccheck" => synccheck(&sh, &q, &jar).await,
        "webwxsync" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            };
            if s.sessions[i].dead.is_some() {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            }
            let from = client_seq_json(&json_body["SyncKey"]).unwrap_or(0);
            let sess = &s.sessions[i];
            let mut msgs = Vec::new();
            let mut mods = Vec::new();
            let dels: Vec<Value> = Vec::new();
            for (seq, p) in &sess.log {
                if *seq <= from {
                    continue;
                }
                match p {
                    Pending::Msg(m) => msgs.push(m.clone()),
                    Pending::ModContact(w) => mods.push(user_json(s, sess, w)),
                }
            }
            axum::Json(json!({
                "BaseResponse": ret(0, ""), "AddMsgCount": msgs.len(), "AddMsgList": msgs,
                "ModContactCount": mods.len(), "ModContactList": mods, "DelContactCount": dels.len(),
                "DelContactList": dels, "ModChatRoomMemberCount": 0, "ModChatRoomMemberList": [],
                "Profile": {"BitFlag": 0, "UserName": {"Buff": ""}, "NickName": {"Buff": ""}, "BindUin": 0,
                    "BindEmail": {"Buff": ""}, "BindMobile": {"Buff": ""}, "Status": 0, "Sex": 0, "PersonalCard": 0,
                    "Alias": "", "HeadImgUpdateFlag": 0, "HeadImgUrl": "", "Signature": ""},
                "ContinueFlag": 0, "SyncKey": sync_key(sess.seq), "SyncCheckKey": sync_key(sess.seq), "SKey": ""
            }))
            .into_response()
        }),
        "webwxsendmsg" | "webwxsendmsgimg" | "webwxsendappmsg" | "webwxsendvideomsg" | "webwxsendemoticon" => {
            sh.with(|s| {
                if session_index(s, &json_body, &jar, &q).is_none_or(|i| s.sessions[i].dead.is_some()) {
                    return axum::Json(json!({"BaseResponse": ret(1101, ""), "MsgID": "", "LocalID": ""}))
                        .into_response();
                }
                if json_body["Msg"]["ToUserName"].as_str().unwrap_or("").is_empty() {
                    return axum::Json(json!({"BaseResponse": ret(1, "no ToUserName"), "MsgID": "", "LocalID": ""}))
                        .into_response();
                }
                if let Some(code) = s.send_faults.pop_front() {
                    return axum::Json(json!({"BaseResponse": ret(code, ""), "MsgID": "", "LocalID": ""}))
                        .into_response();
                }
                s.next_id += 1;
                let local = json_body["Msg"]["LocalID"].clone();
                let local = local.as_str().map(str::to_owned).unwrap_or_else(|| local.to_string());
                axum::Json(json!({"BaseResponse": ret(0, ""), "MsgID": s.next_id.to_string(), "LocalID": local}))
                    .into_response()
            })
        }
        "webwxuploadmedia" => upload(&sh, &headers, &body, &jar),
        "webwxrevokemsg" => {
            axum::Json(json!({"BaseResponse": ret(0, ""), "Introduction": "", "SysWording": ""})).into_response()
        }
        "webwxoplog" => sh.with(|s| {
            if let (Some(i), Some(at)) = (session_index(s, &json_body, &jar, &q), json_body["UserName"].as_str()) {
                let sess = &s.sessions[i];
                if let Some(w) = wxid_of(s, sess, at) {
                    let remark = json_body["RemarkName"].as_str().unwrap_or("").to_owned();
                    if let Some(p) = s.people.iter_mut().find(|p| p.wxid == w) {
                        p.remark = remark;
                    }
                }
            }
            axum::Json(json!({"BaseResponse": ret(0, "")})).into_response()
        }),
        "webwxupdatechatroom" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            };
            let room_at = json_body["ChatRoomName"].as_str().unwrap_or("").to_owned();
            let sess = std::mem::replace(&mut s.sessions[i], placeholder());
            let mut sess = sess;
            let room = wxid_of(s, &sess, &room_at);
            if let (Some(room), Some("modtopic")) = (room.clone(), q.get("fun").map(String::as_str)) {
                let topic = json_body["NewTopic"].as_str().unwrap_or("").to_owned();
                inject_into(s, &mut sess, Inject::RoomTopic { room, by: SELF_WXID.into(), topic });
            } else if let (Some(room), Some("addmember" | "invitemember")) =
                (room.clone(), q.get("fun").map(String::as_str))
            {
                let list = json_body["AddMemberList"].as_str().or(json_body["InviteMemberList"].as_str()).unwrap_or("");
                for at in list.split(',') {
                    if let Some(w) = wxid_of(s, &sess, at)
                        && let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room)
                    {
                        r.members.push((w, String::new()));
                    }
                }
                push(&mut sess, Pending::ModContact(room));
            } else if let (Some(room), Some("delmember")) = (room, q.get("fun").map(String::as_str)) {
                let list = json_body["DelMemberList"].as_str().unwrap_or("").to_owned();
                let gone: Vec<String> = list.split(',').filter_map(|at| wxid_of(s, &sess, at)).collect();
                if let Some(r) = s.rooms.iter_mut().find(|r| r.wxid == room) {
                    r.members.retain(|m| !gone.contains(&m.0));
                }
                push(&mut sess, Pending::ModContact(room));
            }
            s.sessions[i] = sess;
            axum::Json(json!({"BaseResponse": ret(0, ""), "MemberCount": 0, "MemberList": []})).into_response()
        }),
        "webwxcreatechatroom" => sh.with(|s| {
            let Some(i) = session_index(s, &json_body, &jar, &q) else {
                return axum::Json(json!({"BaseResponse": ret(1101, "")})).into_response();
            };
            let n = s.rooms.len() + 1001;
            let wxid = format!("{n}@chatroom");
            let sess = &s.sessions[i];
            let mut members = vec![(SELF_WXID.to_owned(), String::new())];
            for m in json_body["MemberList"].as_array().cloned().unwrap_or_default() {
                if let Some(w) = m["UserName"].as_str().and_then(|at| wxid_of(s, sess, at)) {
                    members.push((w, String::new()));
                }
            }
            let topic = json_body["Topic"].as_str().unwrap_or("").to_owned();
            s.rooms.push(Room { wxid: wxid.clone(), topic: topic.clone(), owner: SELF_WXID.into(), members });
            let sess = &s.sessions[i];
            axum::Json(json!({"BaseResponse": ret(0, ""), "ChatRoomName": at_id(sess, &wxid), "Topic": topic,
                "MemberCount": 0, "MemberList": []}))
            .into_response()
        }),
        "webwxverifyuser" => sh.with(|s| {
            if json_body["Opcode"].as_u64() == Some(3)
                && let Some(i) = session_index(s, &json_body, &jar, &q)
            {
                let at = json_body["VerifyUserList"][0]["Value"].as_str().unwrap_or("").to_owned();
                let sess = std::mem::replace(&mut s.sessions[i], placeholder());
                let mut sess = sess;
                if let Some(w) = wxid_of(s, &sess, &at) {
                    if let Some(p) = s.people.iter_mut().find(|p| p.wxid == w) {
                        p.friend = true;
                    }
                    let nick = nick_of(s, &w);
                    let m = msg_json(
                        s,
                        &sess,
                        &w,
                        SELF_WXID,
                        10000,
                        format!("你已添加了{nick}，现在可以开始聊天了。"),
                        json!({}),
                    );
                    push(&mut sess, Pending::Msg(m));
                    push(&mut sess, Pending::ModContact(w));
                }
                s.sessions[i] = sess;
            }
            axum::Json(json!({"BaseResponse": ret(0, "")})).into_response()
        }),
        "webwxgetmsgimg" | "webwxgetvoice" | "webwxgetvideo" => {
            if !jar.contains_key("wxsid") {
                return (StatusCode::OK, Vec::<u8>::new()).into_response();
            }
            let id = q.get("MsgID").or(q.get("msgid")).or(q.get("MsgId")).cloned().unwrap_or_default();
            let Some(m) = sh.peek(|s| s.media_by_msg.get(&id).cloned()) else {
                return (StatusCode::OK, Vec::<u8>::new()).into_response();
            };
            if endpoint == "webwxgetvideo" {
                let Some(range) = headers.get(header::RANGE) else {
                    return (StatusCode::OK, Vec::<u8>::new()).into_response();
                };
                let start: usize = range
                    .to_str()
                    .ok()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .and_then(|r| r.split('-').next())
                    .and_then(|x| x.parse().ok())
                    .unwrap_or(0)
                    .min(m.bytes.len());
                let total = m.bytes.len();
                return (
                    StatusCode::PARTIAL_CONTENT,
                    [
                        (header::CONTENT_TYPE, m.mime.clone()),
                        (header::CONTENT_RANGE, format!("bytes {start}-{}/{total}", total.saturating_sub(1))),
                    ],
                    m.bytes[start..].to_vec(),
                )
                    .into_response();
            }
            ([(header::CONTENT_TYPE, m.mime)], m.bytes).into_response()
        }
        "webwxgetmedia" => {
            let ticket_ok = sh.peek(|s| {
                let t = jar.get("webwx_data_ticket").or(q.get("webwx_data_ticket"));
                t.is_some_and(|t| s.sessions.iter().any(|x| &x.data_ticket == t && x.dead.is_none()))
            });
            if !ticket_ok {
                return (StatusCode::OK, Vec::<u8>::new()).into_response();
            }
            let id = q.get("mediaid").cloned().unwrap_or_default();
            match sh.peek(|s| s.media_by_id.get(&id).cloned()) {
                Some(m) => (
                    [
                        (header::CONTENT_TYPE, m.mime),
                        (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{}\"", m.name)),
                    ],
                    m.bytes,
                )
                    .into_response(),
                None => (StatusCode::OK, Vec::<u8>::new()).into_response(),
            }
        }
        "webwxgeticon" | "webwxgetheadimg" => ([(header::CONTENT_TYPE, "image/png")], TINY_PNG).into_response(),
        "webwxlogout" => sh.with(|s| {
            if let Some(i) = session_index(s, &json_body, &jar, &q) {
                s.sessions[i].dead = Some(1101);
            }
            (StatusCode::OK, "").into_response()
        }),
        "webwxstatreport" | "webwxcheckupload" => {
            axum::Json(json!({"BaseResponse": ret(0, ""), "MediaId": ""})).into_response()
        }
        _ => (StatusCode::NOT_FOUND, "").into_response(),
    }
}

async fn login_poll(sh: &Shared, q: &HashMap<String, String>) -> Response {
    let uuid = q.get("uuid").cloned().unwrap_or_default();
    // The scripted "phone" of auto-login mode: 408 once, then 201, then 200.
    sh.with(|s| {
        let auto = s.auto_login;
        if let Some(a) = s.attempts.get_mut(&uuid) {
            a.polls += 1;
            if auto {
                a.state = match (a.state, a.polls) {
                    (LoginState::Waiting, n) if n >= 2 => LoginState::Scanned,
                    (LoginState::Scanned, _) => LoginState::Confirmed,
                    (st, _) => st,
                };
            }
        }
    });
    let state_of = |s: &FakeState| s.attempts.get(&uuid).map(|a| a.state);
    let before = sh.peek(state_of);
    if before == Some(LoginState::Waiting) || (before == Some(LoginState::Scanned)) {
        let b = before;
        sh.hold_until(move |s| s.attempts.get(&uuid).map(|a| a.state) != b).await;
    }
    let uuid = q.get("uuid").cloned().unwrap_or_default();
    let (state, ticket, base) = sh.peek(|s| {
        let a = s.attempts.get(&uuid);
        (a.map(|a| a.state), a.map(|a| a.ticket.clone()), s.base.clone())
    });
    match state {
        None | Some(LoginState::Expired) | Some(LoginState::Redirected) => js("window.code=400;".into()),
        Some(LoginState::Waiting) => js("window.code=408;".into()),
        Some(LoginState::Scanned) => {
            let avatar = base64::engine::general_purpose::STANDARD.encode(TINY_PNG);
            js(format!("window.code=201;window.userAvatar = 'data:img/jpg;base64,{avatar}';"))
        }
        Some(LoginState::Confirmed) => {
            sh.with(|s| {
                if let Some(a) = s.attempts.get_mut(&uuid) {
                    a.state = LoginState::Redirected;
                }
            });
            js(format!(
                "window.code=200;\nwindow.redirect_uri=\"{base}/cgi-bin/mmwebwx-bin/webwxnewloginpage?ticket={}@qrticket_0&uuid={uuid}&lang=zh_CN&scan={}\";",
                ticket.unwrap_or_default(),
                now()
            ))
        }
    }
}

fn ticket_exchange(sh: &Shared, q: &HashMap<String, String>, headers: &HeaderMap) -> Response {
    let ticket = q.get("ticket").map(|t| t.trim_end_matches("@qrticket_0").to_owned()).unwrap_or_default();
    let v2 = q.get("version").map(String::as_str) == Some("v2");
    let extspam = headers.get("extspam").is_some_and(|v| !v.is_empty());
    sh.with(|s| {
        let uuid = q.get("uuid").cloned().unwrap_or_default();
        let attempt = s.attempts.get(&uuid).filter(|a| a.ticket == ticket && a.state == LoginState::Redirected).cloned();
        let Some(attempt) = attempt else {
            let xml = "<error><ret>1</ret><message>ticket invalid</message></error>";
            return (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], xml).into_response();
        };
        // Consume the ticket.
        if let Some(a) = s.attempts.get_mut(&uuid) {
            a.ticket = String::new();
        }
        let status = if attempt.desktop && !v2 { StatusCode::MOVED_PERMANENTLY } else { StatusCode::OK };
        if s.desktop_refused || (s.web_restricted && !(attempt.desktop && extspam)) {
            let xml = format!("<error><ret>1203</ret><message>{REFUSAL_1203}</message></error>");
            return (status, [(header::CONTENT_TYPE, "text/plain")], xml).into_response();
        }
        let _ = attempt.push;
        let sid = base64::engine::general_purpose::STANDARD.encode(&fresh(s, "sid").as_bytes()[..12]);
        let skey = format!("@crypt_{}_{}", &fresh(s, "k")[..8], &fresh(s, "skey")[..32]);
        let pass_ticket = format!("{}%2B{}%3D", &fresh(s, "pt")[..20], &fresh(s, "pt2")[..20]);
        let data_ticket = fresh(s, "data")[..40].to_owned();
        let auth_ticket = fresh(s, "auth")[..40].to_owned();
        let salt = fresh(s, "salt");
        s.sessions.push(Session {
            sid: sid.clone(),
            skey: skey.clone(),
            data_ticket: data_ticket.clone(),
            salt,
            dead: None,
            log: VecDeque::new(),
            seq: 0,
        });
        // The status notify of the phone (Code 4) is the first thing a new session syncs.
        let n = s.sessions.len() - 1;
        let sess = std::mem::replace(&mut s.sessions[n], placeholder());
        let mut sess = sess;
        let names: Vec<String> = ["wxid_alice", "1001@chatroom"].iter().map(|w| at_id(&sess, w)).collect();
        let m = msg_json(
            s,
            &sess,
            SELF_WXID,
            SELF_WXID,
            51,
            escape_html("<msg><op id='4'><username>wxid_alice,1001@chatroom</username></op></msg>"),
            json!({"StatusNotifyCode": 4, "StatusNotifyUserName": names.join(",")}),
        );
        push(&mut sess, Pending::Msg(m));
        s.sessions[n] = sess;
        let xml = format!(
            "<error><ret>0</ret><message></message><skey>{skey}</skey><wxsid>{sid}</wxsid><wxuin>{SELF_UIN}</wxuin><pass_ticket>{pass_ticket}</pass_ticket><isgrayscale>1</isgrayscale></error>"
        );
        let mut resp = (status, [(header::CONTENT_TYPE, "text/plain")], xml).into_response();
        let exp = "Expires=Tue, 01-Dec-2099 00:00:00 GMT; Path=/";
        for (k, v) in [
            ("wxuin", SELF_UIN.to_string()),
            ("wxsid", sid),
            ("wxloadtime", now().to_string()),
            ("mm_lang", "zh_CN".into()),
            ("webwx_data_ticket", data_ticket),
            ("webwxuvid", "uvid0123456789".into()),
            ("webwx_auth_ticket", auth_ticket),
        ] {
            resp.headers_mut().append(header::SET_COOKIE, format!("{k}={v}; {exp}").parse().unwrap());
        }
        resp
    })
}

async fn synccheck(sh: &Shared, q: &HashMap<String, String>, jar: &HashMap<String, String>) -> Response {
    let answer =
        |retcode: u32, selector: u32| js(format!("window.synccheck={{retcode:\"{retcode}\",selector:\"{selector}\"}}"));
    let Some(sid) = jar.get("wxsid").cloned() else {
        return answer(1102, 0);
    };
    if !jar.contains_key("wxuin") {
        return answer(1102, 0);
    }
    let client = q.get("synckey").and_then(|k| client_seq_str(k)).unwrap_or(0);
    let check = |s: &FakeState| -> Option<(u32, u32)> {
        let sess = s.sessions.iter().find(|x| x.sid == sid)?;
        if let Some(code) = sess.dead {
            return Some((code, 0));
        }
        (sess.seq > client).then_some((0, 2))
    };
    sh.with(|s| s.synccheck_polls += 1);
    let known = sh.peek(|s| s.sessions.iter().any(|x| x.sid == sid));
    if !known {
        return answer(1101, 0);
    }
    if let Some((r, sel)) = sh.peek(check) {
        return answer(r, sel);
    }
    sh.hold_until(move |s| check(s).is_some()).await;
    let sid2 = sid.clone();
    let now = sh.peek(|s| {
        let sess = s.sessions.iter().find(|x| x.sid == sid2)?;
        if let Some(code) = sess.dead {
            return Some((code, 0));
        }
        Some((0, if sess.seq > client { 2 } else { 0 }))
    });
    let (r, sel) = now.unwrap_or((1101, 0));
    answer(r, sel)
}

/// One multipart part: field name, file name, bytes.
type Part = (String, Option<String>, Vec<u8>);

fn multipart(headers: &HeaderMap, body: &[u8]) -> Option<Vec<Part>> {
    let ct = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let boundary = ct.split("boundary=").nth(1)?.trim_matches('"');
    let delim = format!("--{boundary}").into_bytes();
    let mut parts = Vec::new();
    let mut rest = body;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let start = find(rest, &delim)?;
    rest = &rest[start + delim.len()..];
    loop {
        if rest.starts_with(b"--") {
            break;
        }
        rest = rest.strip_prefix(b"\r\n")?;
        let head_end = find(rest, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&rest[..head_end]).into_owned();
        rest = &rest[head_end + 4..];
        let mut end_delim = b"\r\n".to_vec();
        end_delim.extend_from_slice(&delim);
        let end = find(rest, &end_delim)?;
        let data = rest[..end].to_vec();
        rest = &rest[end + end_delim.len()..];
        let disp = head.lines().find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))?.to_owned();
        let attr = |name: &str| {
            disp.split(';')
                .map(str::trim)
                .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
                .map(|v| v.trim_matches('"').to_owned())
        };
        parts.push((attr("name")?, attr("filename"), data));
    }
    Some(parts)
}

fn upload(sh: &Shared, headers: &HeaderMap, body: &[u8], jar: &HashMap<String, String>) -> Response {
    let fail =
        |msg: &str| axum::Json(json!({"BaseResponse": ret(-1, msg), "MediaId": "", "StartPos": 0})).into_response();
    let Some(parts) = multipart(headers, body) else { return fail("not multipart") };
    let field = |n: &str| parts.iter().find(|p| p.0 == n).map(|p| String::from_utf8_lossy(&p.2).into_owned());
    let Some(req) = field("uploadmediarequest").and_then(|r| serde_json::from_str::<Value>(&r).ok()) else {
        return fail("no uploadmediarequest");
    };
    let ticket = field("webwx_data_ticket").or_else(|| jar.get("webwx_data_ticket").cloned()).unwrap_or_default();
    let Some(file) = parts.iter().find(|p| p.0 == "filename") else { return fail("no file part") };
    let chunks: u32 = field("chunks").and_then(|c| c.parse().ok()).unwrap_or(1);
    let chunk: u32 = field("chunk").and_then(|c| c.parse().ok()).unwrap_or(0);
    let name = percent_decode(&field("name").unwrap_or_default());
    let mediatype = field("mediatype").unwrap_or_default();
    let total: usize = req["TotalLen"].as_u64().unwrap_or(0) as usize;
    let key = format!("{}/{}", req["ClientMediaId"], ticket);
    sh.with(|s| {
        if !s.sessions.iter().any(|x| x.data_ticket == ticket && x.dead.is_none()) {
            return fail("webwx_data_ticket invalid");
        }
        if chunks > 1 && file.2.len() > 524288 {
            return fail("chunk too large");
        }
        let entry = s.partial.entry(key.clone()).or_insert((0, Vec::new()));
        if entry.0 != chunk {
            return fail("chunk out of order");
        }
        entry.0 += 1;
        entry.1.extend_from_slice(&file.2);
        if chunk + 1 < chunks {
            return axum::Json(json!({"BaseResponse": ret(0, ""), "MediaId": "", "StartPos": entry.1.len(),
                "CDNThumbImgHeight": 0, "CDNThumbImgWidth": 0}))
            .into_response();
        }
        let (_, bytes) = s.partial.remove(&key).unwrap();
        if bytes.len() != total {
            return fail("TotalLen does not match the bytes received");
        }
        let media_id = format!("@crypt_{}", &fresh(s, "media")[..48]);
        s.media_by_id.insert(
            media_id.clone(),
            Media { bytes: bytes.clone(), mime: "application/octet-stream".into(), name: name.clone() },
        );
        s.uploads.push(Upload { media_id: media_id.clone(), name, mediatype, chunks, bytes });
        axum::Json(json!({"BaseResponse": ret(0, ""), "MediaId": media_id, "StartPos": total,
            "CDNThumbImgHeight": 100, "CDNThumbImgWidth": 75, "EncryFileName": ""}))
        .into_response()
    })
}

/// The HTTP control surface for client scripts: `POST /__fake/<action>` with a JSON body.
///
/// - `scan`, `confirm`, `expire` — the newest QR code; `auto_login {on}`; `restricted {on}`
/// - `kick {retcode}` — the active session dies
/// - `inject {kind, from, to?, room?, member?, text?, name?, b64?}` — kind `text`, `room_text`,
///   `image`, `file`, `voice`, `video`; answers `{msg_id}`
/// - `outbox {endpoint}` — `{calls:[{query, body}]}`; `uploads` — `{uploads:[{name, mediatype,
///   chunks, size, b64}]}`; `at_id {wxid}` — `{at}`; `poke` — wakes held long polls
async fn control(State(sh): State<Shared>, Path(action): Path<String>, body: Bytes) -> Response {
    let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let str_of = |k: &str| b[k].as_str().unwrap_or("").to_owned();
    let bytes_of = || base64::engine::general_purpose::STANDARD.decode(str_of("b64")).unwrap_or_default();
    let set_state = |from: &[LoginState], to: LoginState| {
        sh.with(|s| {
            if let Some(u) = s.latest_uuid.clone()
                && let Some(a) = s.attempts.get_mut(&u)
                && from.contains(&a.state)
            {
                a.state = to;
            }
        })
    };
    let out = match action.as_str() {
        "scan" => {
            set_state(&[LoginState::Waiting], LoginState::Scanned);
            json!({})
        }
        "confirm" => {
            set_state(&[LoginState::Scanned, LoginState::Waiting], LoginState::Confirmed);
            json!({})
        }
        "expire" => {
            set_state(&[LoginState::Waiting, LoginState::Scanned], LoginState::Expired);
            json!({})
        }
        "auto_login" => {
            sh.with(|s| s.auto_login = b["on"].as_bool().unwrap_or(true));
            json!({})
        }
        "restricted" => {
            sh.with(|s| s.web_restricted = b["on"].as_bool().unwrap_or(true));
            json!({})
        }
        "kick" => {
            let code = b["retcode"].as_u64().unwrap_or(1101) as u32;
            sh.with(|s| {
                if let Some(x) = s.sessions.iter_mut().rev().find(|x| x.dead.is_none()) {
                    x.dead = Some(code);
                }
            });
            json!({})
        }
        "poke" => {
            sh.with(|_| ());
            json!({})
        }
        "inject" => {
            let from = str_of("from");
            let what = match str_of("kind").as_str() {
                "text" => {
                    Inject::Text { from, to: b["to"].as_str().unwrap_or(SELF_WXID).to_owned(), text: str_of("text") }
                }
                "room_text" => {
                    Inject::RoomText { room: str_of("room"), member: str_of("member"), text: str_of("text") }
                }
                "image" => Inject::Image { from, member: b["member"].as_str().map(str::to_owned), bytes: bytes_of() },
                "file" => Inject::File { from, name: str_of("name"), bytes: bytes_of() },
                "voice" => Inject::Voice { from, bytes: bytes_of(), ms: 2000 },
                "video" => Inject::Video { from, bytes: bytes_of(), seconds: 3 },
                other => return (StatusCode::BAD_REQUEST, format!("unknown kind {other}")).into_response(),
            };
            let id = sh.with(|s| inject(s, what));
            json!({"msg_id": id})
        }
        "outbox" => {
            let ep = str_of("endpoint");
            let calls: Vec<Value> = sh.peek(|s| {
                s.calls.iter().filter(|c| c.endpoint == ep).map(|c| json!({"query": c.query, "body": c.body})).collect()
            });
            json!({"calls": calls})
        }
        "uploads" => {
            let ups: Vec<Value> = sh.peek(|s| {
                s.uploads
                    .iter()
                    .map(|u| {
                        json!({"name": u.name, "mediatype": u.mediatype, "chunks": u.chunks, "size": u.bytes.len(),
                            "media_id": u.media_id, "b64": base64::engine::general_purpose::STANDARD.encode(&u.bytes)})
                    })
                    .collect()
            });
            json!({"uploads": ups})
        }
        "at_id" => {
            let w = str_of("wxid");
            let at = sh.peek(|s| s.sessions.iter().rev().find(|x| x.dead.is_none()).map(|sess| at_id(sess, &w)));
            json!({"at": at})
        }
        other => return (StatusCode::NOT_FOUND, format!("no control action {other}")).into_response(),
    };
    axum::Json(out).into_response()
}
