//! The OneBot v11 front door with real OneBot clients — NoneBot2 (reverse and forward WebSocket)
//! and aiocqhttp (HTTP API + HTTP POST with a signature secret) — and with hand-made bad input on
//! every transport.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, installed, kind, repo_root, world};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};

const BOT: &str = "wxid_puppet_bot";
const ROOM: &str = "10001@chatroom";
const ONEBOT_TOKEN: &str = "onebot-e2e-token";
const WAIT: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A Python OneBot client, its stdout and stderr read line by line; killed on drop.
struct Client {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Client {
    fn start(script: &str, args: &[&str]) -> Self {
        Self::start_in(&std::env::temp_dir(), script, args)
    }

    /// Starts `script` with `args` in the directory `dir`.
    fn start_in(dir: &std::path::Path, script: &str, args: &[&str]) -> Self {
        let python = installed("PUPPET_TEST_ONEBOT_PYTHON", "the OneBot test venv (NoneBot2, aiocqhttp)");
        let mut cmd = Command::new(python);
        cmd.arg(repo_root().join("tests/onebot").join(script)).args(args).current_dir(dir).env("PYTHONUNBUFFERED", "1");
        Self::spawn(cmd)
    }

    fn spawn(mut cmd: Command) -> Self {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the Python OneBot client");
        let (tx, lines) = mpsc::channel();
        for out in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines().map_while(Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Self { child, lines, seen: vec![] }
    }

    /// Waits for a line holding `needle`; the line.
    fn wait_line(&mut self, needle: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => panic!("no line with `{needle}` within {WAIT:?}; the client said:\n{}", self.seen.join("\n")),
            }
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        _ = self.child.kill();
        _ = self.child.wait();
    }
}

/// Waits for the bot's next message into `conversation` and returns its text.
async fn bot_says(events: &mut Events, server: &Server, conversation: &str) -> String {
    let mut puppet = server.puppet().await;
    loop {
        let ev = events.wait_for(kind::MESSAGE).await;
        let id = ev["messageId"].as_str().unwrap().to_owned();
        let m = puppet.message_payload(pb::MessagePayloadRequest { id }).await.unwrap().into_inner();
        let here =
            if conversation.ends_with("@chatroom") { m.room_id == conversation } else { m.listener_id == conversation };
        if m.talker_id == BOT && here {
            return m.text;
        }
    }
}

async fn online(args: &[&str]) -> (Server, Events) {
    let server = Server::start(args);
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    events.wait_for(kind::READY).await;
    (server, events)
}

/// The world talks to the bot: Alice says `ding` to it, then says `@Puppet Bot ding` in a room;
/// both answers must be `dong` (the room one may carry an @ of Alice).
async fn ding_dong_private_and_room(server: &Server, events: &mut Events) {
    let mut w = world(server).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() }).await.unwrap();
    assert_eq!(bot_says(events, server, "wxid_alice").await, "dong");
    w.say(ext::SayRequest {
        from_id: "wxid_alice".into(),
        room_id: ROOM.into(),
        text: "@Puppet Bot\u{2005}ding".into(),
        mention_ids: vec![BOT.into()],
    })
    .await
    .unwrap();
    let said = bot_says(events, server, ROOM).await;
    assert!(said.ends_with("dong"), "{said}");
}

/// The README's OneBot section: its NoneBot `.env` (with `PORT` set to `port` and `extra` lines
/// added), written into a fresh directory NoneBot starts in, and the environment of its server
/// command with `8080`/`6700` replaced by `ports`.
fn readme_nonebot(port: u16, extra: &str) -> std::path::PathBuf {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## OneBot v11 (NoneBot, Koishi, …)").nth(1).unwrap();
    let dotenv = section.split("```dotenv\n").nth(1).unwrap().split("```").next().unwrap();
    let dotenv = dotenv.replace("PORT=8080", &format!("PORT={port}")) + extra;
    let dir = std::env::temp_dir().join(format!("puppet-nonebot-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".env"), dotenv).unwrap();
    dir
}

/// The environment of the README's server command after `intro`, with ports replaced.
fn readme_server_env(intro: &str, ports: &[(&str, u16)]) -> Vec<(String, String)> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## OneBot v11 (NoneBot, Koishi, …)").nth(1).unwrap();
    let after = section.split(intro).nth(1).unwrap();
    let line = after.split("```sh\n").nth(1).unwrap().lines().next().unwrap();
    let mut line = line.to_owned();
    for (from, to) in ports {
        line = line.replace(from, &to.to_string());
    }
    line.split_whitespace().filter_map(|w| w.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[tokio::test]
async fn nonebot_over_reverse_websocket_answers_ding_and_accepts_a_friend() {
    let port = free_port();
    let env = readme_server_env("and the server:", &[("8080", port)]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with_env(&["--onebot-reconnect-ms", "100"], &env);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let dir = readme_nonebot(port, "");
    let mut nonebot = Client::start_in(&dir, "nonebot_bot.py", &[]);
    nonebot.wait_line("CONNECTED");
    ding_dong_private_and_room(&server, &mut events).await;

    // A stranger asks to be friends; NoneBot's request handler approves.
    let mut w = world(&server).await;
    let fid = w
        .request_friendship(ext::RequestFriendshipRequest {
            contact_id: "wxid_stranger_olga".into(),
            name: "Olga".into(),
            hello: "hi, I am Olga".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .friendship_id;
    nonebot.wait_line("APPROVED");
    let is_fid = |v: &Value| v["friendshipId"] == fid.as_str();
    events.wait_until(kind::FRIENDSHIP, is_fid).await;
    events.wait_until(kind::FRIENDSHIP, is_fid).await;
    let mut puppet = server.puppet().await;
    let olga = puppet
        .contact_payload(pb::ContactPayloadRequest { id: "wxid_stranger_olga".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(olga.friend, "the friendship exists: {olga:?}");
    drop(nonebot);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn nonebot_over_forward_websocket_answers_ding() {
    let port = free_port();
    let server = Server::start_with_env(
        &[],
        &[("PUPPET_ONEBOT_WS", &format!("127.0.0.1:{port}")), ("PUPPET_ONEBOT_ACCESS_TOKEN", "change-me")],
    );
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let dir = readme_nonebot(free_port(), &format!("ONEBOT_WS_URLS=[\"ws://127.0.0.1:{port}/\"]\n"));
    let mut nonebot = Client::start_in(&dir, "nonebot_bot.py", &[]);
    nonebot.wait_line("CONNECTED");
    ding_dong_private_and_room(&server, &mut events).await;
    drop(nonebot);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn aiocqhttp_over_http_api_and_signed_posts() {
    let (api, hook) = (free_port(), free_port());
    let (server, mut events) = online(&[
        "--onebot-http",
        &format!("127.0.0.1:{api}"),
        "--onebot-post-url",
        &format!("http://127.0.0.1:{hook}/"),
        "--onebot-access-token",
        ONEBOT_TOKEN,
        "--onebot-secret",
        "the-secret",
    ])
    .await;
    let api_root = format!("http://127.0.0.1:{api}");
    let mut bot = Client::start("aiocqhttp_bot.py", &[&hook.to_string(), &api_root, ONEBOT_TOKEN, "the-secret"]);
    bot.wait_line("READY");
    ding_dong_private_and_room(&server, &mut events).await;
    drop(bot);

    // The same bot with another secret: aiocqhttp refuses our post, so nobody answers.
    let mut wrong = Client::start("aiocqhttp_bot.py", &[&hook.to_string(), &api_root, ONEBOT_TOKEN, "not-the-secret"]);
    wrong.wait_line("READY");
    let mut w = world(&server).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() }).await.unwrap();
    wrong.wait_line("signature header is invalid");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn ws_connect(port: u16, path: &str, token: Option<&str>) -> Result<Ws, u16> {
    let mut req = format!("ws://127.0.0.1:{port}{path}").into_client_request().unwrap();
    if let Some(t) = token {
        req.headers_mut().insert("Authorization", format!("Bearer {t}").parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tungstenite::Error::Http(r)) => Err(r.status().as_u16()),
        Err(e) => panic!("{e}"),
    }
}

/// Sends an action and returns the answer with the same echo (events in between are skipped).
async fn ws_call(ws: &mut Ws, frame: Value) -> Value {
    let echo = frame.get("echo").cloned();
    ws.send(tungstenite::Message::Text(frame.to_string().into())).await.unwrap();
    wait_frame(ws, |v| v.get("post_type").is_none() && v.get("echo") == echo.as_ref()).await
}

async fn wait_frame(ws: &mut Ws, want: impl Fn(&Value) -> bool) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = ws.next().await.expect("the connection stays open").unwrap();
            if let tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if want(&v) {
                    return v;
                }
            }
        }
    })
    .await
    .expect("the frame came")
}

#[tokio::test]
async fn message_ids_stay_valid_across_a_restart() {
    let dir = std::env::temp_dir().join(format!("puppet-onebot-ids-{}", std::process::id()));
    let port = free_port();
    let args =
        ["--onebot-ws", &format!("127.0.0.1:{port}"), "--onebot-access-token", ONEBOT_TOKEN, "--durability", "always"];
    let mut first = Server::start_in(&dir, &args);
    Events::open(&mut first.puppet().await).await.wait_for(kind::READY).await;
    let mut ws = ws_connect(port, "/", Some(ONEBOT_TOKEN)).await.unwrap();
    let connect = wait_frame(&mut ws, |v| v["meta_event_type"] == "lifecycle").await;
    assert_eq!(connect["sub_type"], "connect");
    let mut w = world(&first).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() }).await.unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "message").await;
    assert_eq!(ev["message"], json!([{"type": "text", "data": {"text": "ding"}}]), "{ev}");
    assert_eq!((ev["message_type"].as_str(), ev["raw_message"].as_str()), (Some("private"), Some("ding")));
    let (alice, received) = (ev["user_id"].as_i64().unwrap(), ev["message_id"].as_i64().unwrap());
    let sent = ws_call(
        &mut ws,
        json!({"action": "send_private_msg", "params": {"user_id": alice, "message": "dong"}, "echo": 1}),
    )
    .await;
    assert_eq!(sent["status"], "ok", "{sent}");
    let sent = sent["data"]["message_id"].as_i64().unwrap();
    drop((ws, w));
    // Off the runtime: the clients' connections must see the server's goodbye while it stops.
    let status = tokio::task::spawn_blocking(move || first.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");

    let second = Server::start_in(&dir, &args);
    let mut events = Events::open(&mut second.puppet().await).await;
    events.wait_for(kind::READY).await;
    let mut ws = ws_connect(port, "/api", Some(ONEBOT_TOKEN)).await.unwrap();
    let got = ws_call(&mut ws, json!({"action": "get_msg", "params": {"message_id": received}, "echo": "a"})).await;
    assert_eq!((got["status"].as_str(), got["data"]["sender"]["user_id"].as_i64()), (Some("ok"), Some(alice)), "{got}");
    assert_eq!(got["data"]["message"][0]["data"]["text"], "ding");
    let gone = ws_call(&mut ws, json!({"action": "delete_msg", "params": {"message_id": sent}, "echo": "b"})).await;
    assert_eq!(gone["status"], "ok", "{gone}");
    let got = ws_call(&mut ws, json!({"action": "get_msg", "params": {"message_id": sent}, "echo": "c"})).await;
    assert_eq!(got["data"]["recalled"], true, "{got}");
    drop(second);
    _ = std::fs::remove_dir_all(dir);
}

async fn http(port: u16, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap();
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, serde_json::from_str(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn bad_input_on_every_transport_gets_the_right_codes() {
    let (api, ws_port) = (free_port(), free_port());
    let reverse = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let reverse_url = format!("ws://127.0.0.1:{}/", reverse.local_addr().unwrap().port());
    let (_server, _events) = online(&[
        "--onebot-http",
        &format!("127.0.0.1:{api}"),
        "--onebot-ws",
        &format!("127.0.0.1:{ws_port}"),
        "--onebot-ws-reverse",
        &reverse_url,
        "--onebot-reconnect-ms",
        "100",
        "--onebot-access-token",
        ONEBOT_TOKEN,
    ])
    .await;
    let auth = ("Authorization", "Bearer onebot-e2e-token");
    let json_type = ("Content-Type", "application/json");

    // HTTP API.
    let (status, body) = http(api, "POST", "/get_status", &[json_type], "{}").await;
    assert_eq!((status, body["retcode"].as_i64()), (401, Some(1401)), "{body}");
    let (status, _) = http(api, "POST", "/get_status", &[json_type, ("Authorization", "Bearer wrong")], "{}").await;
    assert_eq!(status, 403);
    let (status, _) = http(api, "GET", "/get_status?access_token=wrong", &[], "").await;
    assert_eq!(status, 403);
    let (status, body) = http(api, "POST", "/no_such_action", &[json_type, auth], "{}").await;
    assert_eq!((status, body["retcode"].as_i64()), (404, Some(1404)), "{body}");
    assert!(body["wording"].as_str().unwrap().contains("no_such_action"), "{body}");
    let (status, body) =
        http(api, "POST", "/send_private_msg", &[json_type, auth], r#"{"user_id": [1], "message": "x"}"#).await;
    assert_eq!((status, body["retcode"].as_i64()), (200, Some(1400)), "{body}");
    assert!(body["wording"].as_str().unwrap().contains("`user_id`"), "{body}");
    let (status, body) = http(
        api,
        "POST",
        "/send_private_msg",
        &[("Content-Type", "application/x-www-form-urlencoded"), auth],
        "user_id=abc&message=x",
    )
    .await;
    assert_eq!((status, body["retcode"].as_i64()), (200, Some(1400)), "{body}");
    let (status, body) = http(api, "POST", "/get_status", &[json_type, auth], "{not json").await;
    assert_eq!((status, body["retcode"].as_i64()), (400, Some(1400)), "{body}");
    let (status, _) = http(api, "POST", "/get_status", &[("Content-Type", "text/xml"), auth], "<x/>").await;
    assert_eq!(status, 406);
    let (status, body) = http(api, "GET", &format!("/get_status?access_token={ONEBOT_TOKEN}"), &[], "").await;
    assert_eq!(
        (status, body["status"].as_str(), body["data"]["online"].as_bool()),
        (200, Some("ok"), Some(true)),
        "{body}"
    );
    let (status, body) = http(api, "POST", "/get_version_info_async", &[json_type, auth], "{}").await;
    assert_eq!((status, body["status"].as_str(), body["retcode"].as_i64()), (200, Some("async"), Some(1)), "{body}");
    let (_, body) =
        http(api, "POST", "/set_friend_add_request", &[json_type, auth], r#"{"flag": "x", "approve": false}"#).await;
    assert_eq!(body["retcode"], 1404, "what WeChat cannot do says why: {body}");
    assert!(body["wording"].as_str().unwrap().contains("decline"), "{body}");

    // Forward WebSocket.
    assert_eq!(ws_connect(ws_port, "/", None).await.err(), Some(401));
    assert_eq!(ws_connect(ws_port, "/", Some("wrong")).await.err(), Some(403));
    let mut ws = ws_connect(ws_port, "/api", Some(ONEBOT_TOKEN)).await.unwrap();
    bad_actions(&mut ws).await;

    // Reverse WebSocket: our own endpoint checks the handshake and sends the same bad input.
    let (stream, _) = tokio::time::timeout(WAIT, reverse.accept()).await.unwrap().unwrap();
    let headers = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = headers.clone();
    // tungstenite's callback type fixes the (large) error type.
    #[allow(clippy::result_large_err)]
    let callback = move |req: &tungstenite::handshake::server::Request, resp| {
        *seen.lock().unwrap() = Some(req.headers().clone());
        Ok(resp)
    };
    let mut rws = tokio_tungstenite::accept_hdr_async(stream, callback).await.unwrap();
    let h = headers.lock().unwrap().clone().unwrap();
    assert_eq!(h["x-client-role"], "Universal");
    assert_eq!(h["authorization"], "Bearer onebot-e2e-token");
    let self_id: i64 = h["x-self-id"].to_str().unwrap().parse().unwrap();
    assert!(self_id > 0);
    let connect = reverse_frame(&mut rws, |v| v["meta_event_type"] == "lifecycle").await;
    assert_eq!((connect["sub_type"].as_str(), connect["self_id"].as_i64()), (Some("connect"), Some(self_id)));
    for (frame, retcode, needle) in [
        (json!({"action": "nope", "params": {}, "echo": 7}), 1404, "nope"),
        (json!({"action": "get_group_info", "params": {"group_id": "x"}, "echo": 8}), 1400, "`group_id`"),
        (json!({"action": "get_group_info", "params": {"group_id": self_id}, "echo": 9}), 1400, "a user, not a group"),
    ] {
        let echo = frame["echo"].clone();
        rws.send(tungstenite::Message::Text(frame.to_string().into())).await.unwrap();
        let r = reverse_frame(&mut rws, |v| v.get("echo") == Some(&echo)).await;
        assert_eq!((r["status"].as_str(), r["retcode"].as_i64()), (Some("failed"), Some(retcode)), "{r}");
        assert!(r["wording"].as_str().unwrap().contains(needle), "{r}");
    }
    let info = {
        rws.send(tungstenite::Message::Text(json!({"action": "get_login_info", "echo": "me"}).to_string().into()))
            .await
            .unwrap();
        reverse_frame(&mut rws, |v| v["echo"] == "me").await
    };
    assert_eq!(
        (info["data"]["user_id"].as_i64(), info["data"]["nickname"].as_str()),
        (Some(self_id), Some("Puppet Bot")),
        "{info}"
    );

    // The server is unaffected.
    let (status, body) = http(api, "POST", "/get_status", &[json_type, auth], "").await;
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")), "{body}");
}

async fn bad_actions(ws: &mut Ws) {
    let r = ws_call(ws, json!({"action": "no_such_action", "params": {}, "echo": {"n": 1}})).await;
    assert_eq!((r["status"].as_str(), r["retcode"].as_i64()), (Some("failed"), Some(1404)), "{r}");
    let r =
        ws_call(ws, json!({"action": "send_group_msg", "params": {"group_id": true, "message": "x"}, "echo": 2})).await;
    assert_eq!(r["retcode"], 1400, "{r}");
    assert!(r["wording"].as_str().unwrap().contains("`group_id`"), "{r}");
    let r = ws_call(ws, json!({"action": "send_private_msg", "params": {"user_id": 1, "message": 5}, "echo": 3})).await;
    assert_eq!(r["retcode"], 1400, "{r}");
    let r = ws_call(ws, json!({"action": "get_msg", "params": "x", "echo": 4})).await;
    assert!(r["wording"].as_str().unwrap().contains("`params`"), "{r}");
    ws.send(tungstenite::Message::Text("{not json".into())).await.unwrap();
    let r = wait_frame(ws, |v| v.get("retcode").is_some()).await;
    assert_eq!(r["retcode"], 1400, "{r}");
    let r = ws_call(ws, json!({"action": "get_status", "echo": 5})).await;
    assert_eq!(r["status"], "ok", "{r}");
}

async fn reverse_frame(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    want: impl Fn(&Value) -> bool,
) -> Value {
    tokio::time::timeout(WAIT, async {
        loop {
            let m = ws.next().await.expect("the connection stays open").unwrap();
            if let tungstenite::Message::Text(t) = m {
                let v: Value = serde_json::from_str(&t).unwrap();
                if want(&v) {
                    return v;
                }
            }
        }
    })
    .await
    .expect("the frame came")
}

/// What the world does reaches a forward WebSocket client as OneBot events: CQ strings with `at`,
/// an image with a download link that serves its bytes (and refuses an unsigned one), join, leave,
/// recall, friend and invitation events, and heartbeats.
#[tokio::test]
async fn world_events_become_onebot_events() {
    let port = free_port();
    let (server, _events) = online(&[
        "--onebot-ws",
        &format!("127.0.0.1:{port}"),
        "--onebot-message-format",
        "string",
        "--onebot-heartbeat-ms",
        "200",
    ])
    .await;
    let mut ws = ws_connect(port, "/event", None).await.unwrap();
    let connect = wait_frame(&mut ws, |v| v["meta_event_type"] == "lifecycle").await;
    let me = connect["self_id"].as_i64().unwrap();
    let beat = wait_frame(&mut ws, |v| v["meta_event_type"] == "heartbeat").await;
    assert_eq!((beat["interval"].as_i64(), beat["status"]["online"].as_bool()), (Some(200), Some(true)), "{beat}");
    let mut w = world(&server).await;

    w.say(ext::SayRequest {
        from_id: "wxid_carol".into(),
        room_id: ROOM.into(),
        text: "@Puppet Bot\u{2005}[look] & see".into(),
        mention_ids: vec![BOT.into()],
    })
    .await
    .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "message").await;
    assert_eq!(ev["message"], format!("[CQ:at,qq={me}][look] &amp; see").replace("[look]", "&#91;look&#93;"), "{ev}");
    assert_eq!(
        (ev["message_type"].as_str(), ev["sender"]["card"].as_str(), ev["sender"]["role"].as_str()),
        (Some("group"), Some("Carol from HR"), Some("member"))
    );
    let group = ev["group_id"].as_i64().unwrap();
    let carol = ev["user_id"].as_i64().unwrap();

    let png = b"\x89PNG\r\n\x1a\n not really a png".to_vec();
    w.send_file(ext::SendFileRequest {
        from_id: "wxid_alice".into(),
        room_id: String::new(),
        name: "cat.png".into(),
        data: png.clone(),
    })
    .await
    .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "message").await;
    let text = ev["message"].as_str().unwrap();
    let image_id = ev["message_id"].as_i64().unwrap();
    assert!(text.starts_with(&format!("[CQ:image,file={image_id}.png,name=cat.png,url=")), "{ev}");
    let url = unescape_url(text);
    let path = url.split_once(&format!("127.0.0.1:{port}")).unwrap().1.to_owned();
    let (status, body) = raw_get(port, &path).await;
    assert_eq!((status, body), (200, png));
    let (status, _) = raw_get(port, &path.replace("sig=", "sig=0")).await;
    assert_eq!(status, 403, "an unsigned link serves nothing");

    let mut api = ws_connect(port, "/api", None).await.unwrap();
    let got =
        ws_call(&mut api, json!({"action": "get_image", "params": {"file": format!("{image_id}.png")}, "echo": "img"}))
            .await;
    assert_eq!(got["data"]["url"].as_str(), Some(url.as_str()), "{got}");

    w.join_room(ext::JoinRoomRequest {
        room_id: ROOM.into(),
        contact_ids: vec!["wxid_stranger_sam".into()],
        inviter_id: "wxid_alice".into(),
    })
    .await
    .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "notice").await;
    assert_eq!(
        (ev["notice_type"].as_str(), ev["sub_type"].as_str(), ev["group_id"].as_i64()),
        (Some("group_increase"), Some("invite"), Some(group)),
        "{ev}"
    );
    w.leave_room(ext::LeaveRoomRequest {
        room_id: ROOM.into(),
        contact_ids: vec!["wxid_carol".into()],
        remover_id: String::new(),
    })
    .await
    .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "notice").await;
    assert_eq!(
        (ev["notice_type"].as_str(), ev["sub_type"].as_str(), ev["user_id"].as_i64()),
        (Some("group_decrease"), Some("leave"), Some(carol)),
        "{ev}"
    );

    // Reads and room changes through an API connection.
    let friends = ws_call(&mut api, json!({"action": "get_friend_list", "echo": "f"})).await;
    assert!(friends["data"].as_array().unwrap().iter().any(|f| f["nickname"] == "Alice"), "{friends}");
    let groups = ws_call(&mut api, json!({"action": "get_group_list", "echo": "g"})).await;
    assert_eq!(groups["data"].as_array().unwrap().len(), 5, "{groups}");
    let members =
        ws_call(&mut api, json!({"action": "get_group_member_list", "params": {"group_id": group}, "echo": "m"})).await;
    let owner = members["data"].as_array().unwrap().iter().find(|m| m["role"] == "owner").cloned().unwrap();
    assert_eq!(owner["nickname"], "Alice", "{members}");
    let stranger =
        ws_call(&mut api, json!({"action": "get_stranger_info", "params": {"user_id": carol}, "echo": "s"})).await;
    assert_eq!(
        (stranger["data"]["nickname"].as_str(), stranger["data"]["sex"].as_str()),
        (Some("Carol"), Some("female"))
    );
    let renamed = ws_call(
        &mut api,
        json!({"action": "set_group_name", "params": {"group_id": group, "group_name": "Tea & Cake"}, "echo": "n"}),
    )
    .await;
    assert_eq!(renamed["status"], "ok", "{renamed}");
    let info = ws_call(&mut api, json!({"action": "get_group_info", "params": {"group_id": group}, "echo": "i"})).await;
    assert_eq!(info["data"]["group_name"], "Tea & Cake", "{info}");

    // The bot's own message, recalled.
    let sent = ws_call(
        &mut api,
        json!({"action": "send_group_msg", "params": {"group_id": group, "message": "oops"}, "echo": 1}),
    )
    .await;
    let sent = sent["data"]["message_id"].as_i64().unwrap();
    ws_call(&mut api, json!({"action": "delete_msg", "params": {"message_id": sent}, "echo": 2})).await;
    let ev = wait_frame(&mut ws, |v| v["notice_type"] == "group_recall").await;
    assert_eq!((ev["message_id"].as_i64(), ev["user_id"].as_i64()), (Some(sent), Some(me)), "{ev}");

    w.request_friendship(ext::RequestFriendshipRequest {
        contact_id: "wxid_stranger_sam".into(),
        name: String::new(),
        hello: "hi & bye".into(),
    })
    .await
    .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "request").await;
    assert_eq!((ev["request_type"].as_str(), ev["comment"].as_str()), (Some("friend"), Some("hi & bye")), "{ev}");
    let sam = ev["user_id"].as_i64().unwrap();
    let r = ws_call(&mut api, json!({"action": "set_friend_add_request", "params": {"flag": ev["flag"], "approve": true, "remark": "Sam (gym)"}, "echo": "fr"})).await;
    assert_eq!(r["status"], "ok", "{r}");
    let ev = wait_frame(&mut ws, |v| v["notice_type"] == "friend_add").await;
    assert_eq!(ev["user_id"].as_i64(), Some(sam), "{ev}");
    let friends = ws_call(&mut api, json!({"action": "get_friend_list", "echo": "f2"})).await;
    assert!(
        friends["data"].as_array().unwrap().iter().any(|f| f["user_id"] == sam && f["remark"] == "Sam (gym)"),
        "{friends}"
    );

    w.invite_bot(ext::InviteBotRequest { room_id: "10006@chatroom".into(), inviter_id: "wxid_victor".into() })
        .await
        .unwrap();
    let ev = wait_frame(&mut ws, |v| v["post_type"] == "request").await;
    assert_eq!(
        (ev["request_type"].as_str(), ev["sub_type"].as_str(), ev["group_name"].as_str()),
        (Some("group"), Some("invite"), Some("Secret Garden")),
        "{ev}"
    );
    let r = ws_call(&mut api, json!({"action": "set_group_add_request", "params": {"flag": ev["flag"], "sub_type": "invite", "approve": true}, "echo": 3})).await;
    assert_eq!(r["status"], "ok", "{r}");
    let ev = wait_frame(&mut ws, |v| v["notice_type"] == "group_increase" && v["user_id"] == me).await;
    let secret_garden = ev["group_id"].as_i64().unwrap();
    let info =
        ws_call(&mut api, json!({"action": "get_group_info", "params": {"group_id": secret_garden}, "echo": 4})).await;
    assert_eq!(info["data"]["group_name"], "Secret Garden", "{info}");
}

/// The `url=` value of the first CQ code in `text`, unescaped.
pub fn unescape_url(text: &str) -> String {
    let v = text.split("url=").nth(1).unwrap().split([',', ']']).next().unwrap();
    v.replace("&#44;", ",").replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")
}

async fn raw_get(port: u16, path: &str) -> (u16, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.unwrap().unwrap();
    let status = String::from_utf8_lossy(&raw[..12]).split_whitespace().nth(1).unwrap().parse().unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, raw[at..].to_vec())
}

/// The README's Koishi setup as written: its `koishi.yml` (the port replaced, a ding-dong plugin
/// added) and its server command; `koishi start` connects over the forward WebSocket.
#[tokio::test]
async fn koishi_with_the_readme_config_answers_ding() {
    let modules = installed("PUPPET_TEST_KOISHI_NODE_MODULES", "Koishi and its OneBot adapter (npm)");
    let port = free_port();
    let env = readme_server_env("and the server for it:", &[("6700", port)]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with_env(&[], &env);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;

    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## OneBot v11 (NoneBot, Koishi, …)").nth(1).unwrap();
    let yaml = section.split("```yaml\n").nth(1).unwrap().split("```").next().unwrap();
    let dir = std::env::temp_dir().join(format!("puppet-koishi-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("koishi.yml"), yaml.replace("6700", &port.to_string()) + "  ./dingdong:\n").unwrap();
    std::fs::write(dir.join("package.json"), r#"{"name": "koishi-e2e", "private": true}"#).unwrap();
    std::fs::copy(repo_root().join("tests/onebot/koishi_dingdong.js"), dir.join("dingdong.js")).unwrap();
    _ = std::fs::remove_file(dir.join("node_modules"));
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();
    let mut cmd = Command::new("node");
    cmd.arg(modules.join("koishi/bin.js")).arg("start").current_dir(&dir);
    let mut koishi = Client::spawn(cmd);
    // Status 1 is ONLINE: Koishi asked get_login_info and took the bot's `selfId` from the file.
    koishi.wait_line("STATUS 1 10001");
    ding_dong_private_and_room(&server, &mut events).await;
    drop(koishi);
    _ = std::fs::remove_dir_all(dir);
}

/// Reverse WebSocket with separate API and Event connections: each says its role; events come on
/// the Event one only, actions are answered on the API one.
#[tokio::test]
async fn reverse_websocket_api_and_event_roles() {
    let endpoint = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("ws://127.0.0.1:{}", endpoint.local_addr().unwrap().port());
    let (server, _events) = online(&[
        "--onebot-ws-reverse-api",
        &format!("{base}/api"),
        "--onebot-ws-reverse-event",
        &format!("{base}/event"),
        "--onebot-reconnect-ms",
        "100",
    ])
    .await;
    let mut by_role = std::collections::HashMap::new();
    while by_role.len() < 2 {
        let (stream, _) = tokio::time::timeout(WAIT, endpoint.accept()).await.unwrap().unwrap();
        let role = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let seen = role.clone();
        #[allow(clippy::result_large_err)]
        let callback = move |req: &tungstenite::handshake::server::Request, resp| {
            *seen.lock().unwrap() =
                format!("{} {}", req.uri().path(), req.headers()["x-client-role"].to_str().unwrap());
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, callback).await.unwrap();
        let role = role.lock().unwrap().clone();
        by_role.insert(role, ws);
    }
    let mut event = by_role.remove("/event Event").expect("an Event connection to /event");
    let mut api = by_role.remove("/api API").expect("an API connection to /api");
    assert_eq!(reverse_frame(&mut event, |v| v["post_type"].is_string()).await["sub_type"], "connect");
    let mut w = world(&server).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() }).await.unwrap();
    let ev = reverse_frame(&mut event, |v| v["post_type"] == "message").await;
    let frame =
        json!({"action": "send_private_msg", "params": {"user_id": ev["user_id"], "message": "dong"}, "echo": "x"});
    api.send(tungstenite::Message::Text(frame.to_string().into())).await.unwrap();
    let first = reverse_frame(&mut api, |_| true).await;
    assert_eq!(
        (first["status"].as_str(), first["echo"].as_str()),
        (Some("ok"), Some("x")),
        "the API connection carries no events: {first}"
    );
}
