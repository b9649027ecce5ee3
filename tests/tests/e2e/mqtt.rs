//! The MQTT bridge through a real broker (Debian's mosquitto), driven as a WeChatRemote user would.

use std::collections::HashMap;
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{Events, Mosquitto, Server, kind, world};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const CID: &str = "bot1";

/// A WeChatRemote-style controller: publishes commands, collects responses and events.
struct Controller {
    client: AsyncClient,
    cid: String,
    responses: mpsc::UnboundedReceiver<Value>,
    events: mpsc::UnboundedReceiver<Value>,
    pending: HashMap<String, Value>,
    next: u64,
}

impl Controller {
    async fn connect(port: u16) -> Self {
        Self::connect_as(port, CID).await
    }

    /// A controller for the bot with client id `cid`.
    async fn connect_as(port: u16, cid: &str) -> Self {
        let mut opts = MqttOptions::new(format!("controller-{}", std::process::id()), "127.0.0.1", port);
        opts.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(opts, 64);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let (rtx, responses) = mpsc::unbounded_channel();
        let (etx, events) = mpsc::unbounded_channel();
        let (sub, topic) = (client.clone(), format!("thing/chatbot/{cid}"));
        tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        _ = sub.subscribe(format!("{topic}/response/d2c/+"), QoS::AtLeastOnce).await;
                        _ = sub.subscribe(format!("{topic}/event/post"), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let v: Value = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        let to = if p.topic.ends_with("/event/post") { &etx } else { &rtx };
                        if to.send(v).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Self { client, cid: cid.to_owned(), responses, events, pending: HashMap::new(), next: 0 }
    }

    async fn publish_raw(&self, payload: Vec<u8>) {
        self.client
            .publish(format!("thing/chatbot/{}/command/invoke", self.cid), QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Sends a command and waits for its response (retrying while the bridge is not subscribed yet).
    async fn call(&mut self, name: &str, params: Value) -> Value {
        for _ in 0..50 {
            self.next += 1;
            let req_id = format!("req-{}", self.next);
            let cmd = json!({"reqId": req_id, "method": "command", "version": "1.0", "timestamp": 0, "name": name, "params": params});
            self.publish_raw(serde_json::to_vec(&cmd).unwrap()).await;
            if let Some(r) = self.response(&req_id, Duration::from_millis(500)).await {
                return r;
            }
        }
        panic!("no response to {name}");
    }

    async fn response(&mut self, req_id: &str, wait: Duration) -> Option<Value> {
        if let Some(r) = self.pending.remove(req_id) {
            return Some(r);
        }
        let deadline = tokio::time::Instant::now() + wait;
        while let Ok(Some(r)) = tokio::time::timeout_at(deadline, self.responses.recv()).await {
            let id = r["reqId"].as_str().unwrap_or_default().to_owned();
            if id == req_id {
                return Some(r);
            }
            self.pending.insert(id, r);
        }
        None
    }

    async fn event(&mut self, name: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = tokio::time::timeout(Duration::from_secs(20), async {
            while let Some(e) = self.events.recv().await {
                if e["name"] == name && pred(&e["params"]) {
                    return e;
                }
            }
            panic!("event channel closed");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no `{name}` event"))
    }
}

fn ok(r: &Value) -> &Value {
    assert_eq!((r["code"].as_u64(), r["message"].as_str()), (Some(200), Some("success")), "{r}");
    assert_eq!(r["method"], "response");
    &r["params"]
}

fn failed(r: &Value) -> String {
    assert_ne!(r["code"].as_u64(), Some(200), "{r}");
    r["message"].as_str().unwrap_or_default().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechatremote_commands_events_errors_and_a_broker_restart() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let server = Server::start(&["--mqtt-url", &url, "--mqtt-client-id", CID]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;
    let mut c = Controller::connect(broker.port).await;

    assert_eq!(ok(&c.call("wechatyLogonoff", json!({})).await)["logonoff"], true);
    let me = c.call("wechatyUserSelf", json!({})).await;
    assert_eq!(ok(&me)["id"], "wxid_puppet_bot");

    let page = c.call("contactFindAll", json!({"page": 1, "size": 10})).await;
    let page = ok(&page);
    assert_eq!(
        (page["page"].as_u64(), page["size"].as_u64(), page["items"].as_array().map(Vec::len)),
        (Some(1), Some(10), Some(10))
    );
    assert!(page["total"].as_u64().unwrap() >= 30);
    for by in [json!({"id": "wxid_alice"}), json!({"alias": "Alice (work)"}), json!({"name": "Alice"})] {
        let r = c.call("contactFind", by.clone()).await;
        let p = ok(&r);
        assert_eq!(p["id"], "wxid_alice", "{by}");
        assert_eq!(
            (p["payload"]["name"].as_str(), p["payload"]["gender"].as_u64(), p["payload"]["type"].as_u64()),
            (Some("Alice"), Some(2), Some(1))
        );
    }

    let rooms = c.call("roomFindAll", json!({})).await;
    assert_eq!(ok(&rooms)["total"], 5);
    let tea = c.call("roomFind", json!({"topic": "Tea Lovers"})).await;
    let tea = ok(&tea);
    assert_eq!((tea["id"].as_str(), tea["payload"]["ownerId"].as_str()), (Some("10001@chatroom"), Some("wxid_alice")));
    assert_eq!(tea["payload"]["memberIdList"].as_array().map(Vec::len), Some(5));
    let members = c.call("roomMemberAllGet", json!({"room": "Tea Lovers"})).await;
    assert_eq!(ok(&members).as_array().map(Vec::len), Some(5));

    // Say things: contacts by id, name or alias; rooms by id or topic; an unknown one fails alone.
    let said = c
        .call("contactSay", json!({"contacts": ["wxid_bob", "Carol", "nobody-at-all"], "messageType": "Text", "messagePayload": "hello over MQTT"}))
        .await;
    let said = ok(&said);
    assert_eq!(said["success"], json!(["wxid_bob", "Carol"]));
    assert_eq!(said["fail"][0]["id"], "nobody-at-all");
    let mut w = world(&server).await;
    let viewer = world(&server).await;
    let last = |conv: &str| {
        let conv = conv.to_owned();
        let mut w = viewer.clone();
        async move {
            let m = w
                .list_messages(ext::ListMessagesRequest { conversation_id: conv })
                .await
                .unwrap()
                .into_inner()
                .messages;
            m.last().cloned().unwrap()
        }
    };
    assert_eq!(last("wxid_carol").await.text, "hello over MQTT");
    let said = c.call("roomSay", json!({"rooms": ["Rust 中文社区"], "messageType": "Url", "messagePayload": {"url": "https://example.com", "title": "Example"}})).await;
    assert_eq!(ok(&said)["success"], json!(["Rust 中文社区"]));
    assert_eq!(last("10002@chatroom").await.r#type, 14, "a link card");
    let at = c.call("roomSayAt", json!({"room": "10001@chatroom", "contacts": ["wxid_alice"], "text": "look"})).await;
    ok(&at);
    let m = last("10001@chatroom").await;
    assert_eq!((m.text.as_str(), m.mention_ids.as_slice()), ("@Alice look", &["wxid_alice".to_owned()][..]));

    // A world message arrives as an event, expanded with its talker; messageSay answers it.
    let id = w
        .say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ping".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let event = c.event("message", |p| p["id"] == id.as_str()).await;
    assert_eq!(event["method"], "event");
    assert_eq!(
        (event["params"]["text"].as_str(), event["params"]["talker"]["payload"]["name"].as_str()),
        (Some("ping"), Some("Alice"))
    );
    let r = c.call("messageSay", json!({"id": id, "messageType": "Text", "messagePayload": "pong"})).await;
    ok(&r);
    assert_eq!(last("wxid_alice").await.text, "pong");
    assert_eq!(failed(&c.call("messageSay", json!({"id": "msg_nope", "messagePayload": "x"})).await), "消息不存在");

    // Mistakes get a reason, not silence.
    assert!(failed(&c.call("noSuchCommand", json!({})).await).contains("unknown command"));
    assert!(failed(&c.call("contactFind", json!({})).await).contains("missing param"));
    assert!(failed(&c.call("contactSay", json!({"contacts": ["wxid_bob"]})).await).contains("messagePayload"));
    c.publish_raw(br#"{"reqId": "broken", "method": "command", "#.to_vec()).await;
    let r = c.response("", Duration::from_secs(10)).await.expect("a response to malformed JSON");
    assert!(failed(&r).contains("malformed JSON"), "{r}");

    // The broker restarts: the bridge reconnects and answers again.
    let port = broker.port;
    drop(broker);
    let _broker = Mosquitto::start_on(port);
    let mut c = Controller::connect(port).await;
    assert_eq!(ok(&c.call("wechatyLogonoff", json!({})).await)["logonoff"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_are_sealed_with_the_shared_secret() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let server = Server::start(&["--mqtt-url", &url, "--mqtt-client-id", CID, "--mqtt-secret", "s3cret"]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;
    let mut c = Controller::connect(broker.port).await;
    // A plain command is refused: it does not decrypt. The response is sealed, so its JSON is
    // unreadable. (Sent again until the bridge has subscribed and answers.)
    let mut raw = None;
    for _ in 0..50 {
        c.publish_raw(br#"{"reqId":"x","method":"command","name":"wechatyLogonoff","params":{}}"#.to_vec()).await;
        if let Ok(Some(r)) = tokio::time::timeout(Duration::from_millis(500), c.responses.recv()).await {
            raw = Some(r);
            break;
        }
    }
    assert_eq!(raw.expect("a response"), Value::Null, "the response is base64 ciphertext, not JSON");
}

/// The paho-mqtt controller (`tests/mqtt/controller.py`) against the bridge, plain and sealed.
async fn paho(secret: Option<&str>) {
    let python = puppet_tests::installed("PUPPET_TEST_PAHO_PYTHON", "a venv with paho-mqtt and cryptography");
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let mut args = vec!["--mqtt-url", url.as_str(), "--mqtt-client-id", "py-bot"];
    if let Some(s) = secret {
        args.extend(["--mqtt-secret", s]);
    }
    let server = Server::start(&args);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(puppet_tests::repo_root().join("tests/mqtt/controller.py")).arg(broker.port.to_string()).arg("py-bot");
    if let Some(s) = secret {
        cmd.arg(s);
    }
    let out =
        tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output()).await.expect("in time").unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("MQTT OK"),
        "controller.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen =
        world(&server).await.list_messages(ext::ListMessagesRequest { conversation_id: "wxid_bob".into() }).await;
    assert_eq!(seen.unwrap().into_inner().messages.last().unwrap().text, "hi from python");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_paho_controller_drives_the_bot() {
    paho(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_paho_controller_drives_the_bot_with_sealed_payloads() {
    paho(Some("s3cret")).await;
}

/// The banner's `mqtt` line (the server prints it after the address line).
fn mqtt_banner_line(server: &Server) -> String {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = server.stdout.recv_timeout(left).expect("a banner line starting with `mqtt`");
        if line.trim_start().starts_with("mqtt ") {
            return line;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_client_id_is_random_kept_in_the_data_dir_and_tells_nothing_of_the_token() {
    let broker = Mosquitto::start();
    let url = format!("mqtt://127.0.0.1:{}", broker.port);
    let dir = std::env::temp_dir().join(format!("puppet-mqtt-id-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let args = ["--mqtt-url", url.as_str()];

    let mut first = Server::start_in(&dir, &args);
    let line = mqtt_banner_line(&first);
    let token = puppet_tests::TOKEN;
    for len in 4..=token.len() {
        for start in 0..=token.len() - len {
            let part = &token[start..start + len];
            assert!(!line.contains(part), "the banner's mqtt line shows `{part}` of the token: {line}");
        }
    }
    let id = line.split("thing/chatbot/").nth(1).and_then(|r| r.split('/').next()).expect("topic in the banner");
    let hex = id.strip_prefix("puppet-rs-").unwrap_or_else(|| panic!("{id}"));
    assert!(hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
    assert_eq!(std::fs::read_to_string(dir.join("mqtt-client-id")).unwrap().trim(), id);
    let status = tokio::task::spawn_blocking(move || first.terminate()).await.unwrap();
    assert!(status.success(), "a clean stop with the bridge connected: {status:?}");

    // A restart on the same data dir answers on the same topics.
    let second = Server::start_in(&dir, &args);
    let again = mqtt_banner_line(&second);
    assert_eq!(again.split("thing/chatbot/").nth(1).and_then(|r| r.split('/').next()), Some(id), "{again}");
    let mut c = Controller::connect_as(broker.port, id).await;
    assert!(ok(&c.call("wechatyLogonoff", json!({})).await)["logonoff"].is_boolean());
    drop(second);
    std::fs::remove_dir_all(&dir).unwrap();
}
