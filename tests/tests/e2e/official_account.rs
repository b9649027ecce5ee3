//! The Official Account backend end to end: the real server with `--backend official-account`
//! against a local fake of the WeChat API, pushes signed (and in safe mode encrypted) as WeChat
//! sends them, and the bot driven over `wechaty.Puppet` and `puppet_rs.v1.OfficialAccount`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine;
use puppet_proto::model::MessageType;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::official_account_client::OfficialAccountClient;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_server::backend::official_account::crypto::{self, AesKey};
use puppet_server::backend::official_account::xml::{self, Node};
use puppet_tests::fake_wechat::{APP_ID, APP_SECRET, FakeWeChat};
use puppet_tests::{Events, Server, TOKEN, Token, http_request, kind};
use serde_json::Value;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Puppet = PuppetClient<InterceptedService<Channel, Token>>;

const OA_TOKEN: &str = "puppetrsTest42";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ORIGINAL_ID: &str = "gh_puppetrs0001";
const ALICE: &str = "oFollowerAlice";
const BOB: &str = "oFollowerBob";
const CAROL: &str = "oFollowerCarol";

/// How pushes are sent.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Plain,
    Safe,
}

struct Oa {
    server: Server,
    http: SocketAddr,
    puppet: Puppet,
    events: Events,
}

/// The server on the official-account backend against `fake`, online.
async fn online(fake: &FakeWeChat, extra: &[(&str, &str)]) -> Oa {
    let mut env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    env.extend_from_slice(extra);
    let server = Server::start_with_env(&["--backend", "official-account", "--http-listen", "127.0.0.1:0"], &env);
    let http = server.http_addr.expect("side port");
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    // The Event stream replays the login state to a late subscriber.
    let login = events.wait_for(kind::LOGIN).await;
    assert_eq!(login["contactId"], ORIGINAL_ID);
    events.wait_for(kind::READY).await;
    Oa { server, http, puppet, events }
}

fn safe_env() -> [(&'static str, &'static str); 1] {
    [("PUPPET_OA_AES_KEY", AES_KEY)]
}

async fn extension(server: &Server) -> OfficialAccountClient<InterceptedService<Channel, Token>> {
    OfficialAccountClient::with_interceptor(server.channel().await, Token(TOKEN.into()))
}

fn push_xml(from: &str, msg_type: &str, extra: &str, create_time: u64, msg_id: Option<u64>) -> String {
    let id = msg_id.map(|i| format!("<MsgId>{i}</MsgId>")).unwrap_or_default();
    format!(
        "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\n\
         <CreateTime>{create_time}</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{extra}{id}</xml>"
    )
}

fn text_push(from: &str, content: &str, msg_id: u64) -> String {
    push_xml(from, "text", &format!("<Content><![CDATA[{content}]]></Content>"), 1_700_000_000, Some(msg_id))
}

fn event_push(from: &str, event: &str, extra: &str, create_time: u64) -> String {
    push_xml(from, "event", &format!("<Event><![CDATA[{event}]]></Event>{extra}"), create_time, None)
}

fn nonce() -> String {
    static N: AtomicU64 = AtomicU64::new(1_320_562_132);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// This machine's clock, in the unix seconds of a callback `timestamp`.
fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The query and body WeChat would send for `xml` now, encrypted for `appid` in safe mode.
fn signed_push(xml: &str, mode: Mode, appid: &str) -> (String, String) {
    signed_push_at(xml, mode, appid, &now_secs().to_string())
}

/// The same, signed with the given `timestamp`.
fn signed_push_at(xml: &str, mode: Mode, appid: &str, ts: &str) -> (String, String) {
    let nonce = nonce();
    let sig = crypto::signature(&[OA_TOKEN, ts, &nonce]);
    match mode {
        Mode::Plain => (format!("/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&openid=o"), xml.to_owned()),
        Mode::Safe => {
            let enc = AesKey::from_encoding_aes_key(AES_KEY).unwrap().encrypt(xml, appid).unwrap();
            let msg_sig = crypto::signature(&[OA_TOKEN, ts, &nonce, &enc]);
            (
                format!(
                    "/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&openid=o&encrypt_type=aes&msg_signature={msg_sig}"
                ),
                format!(
                    "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"
                ),
            )
        }
    }
}

async fn post(http: SocketAddr, xml: &str, mode: Mode) -> (u16, String) {
    let (path, body) = signed_push(xml, mode, APP_ID);
    http_request(http, "POST", &path, &body).await
}

/// Checks an encrypted answer's signature and opens it.
fn open_reply(body: &str) -> Node {
    let envelope = xml::parse_tree(body).unwrap_or_else(|e| panic!("answer {body:?} is not XML: {e}"));
    let enc = envelope.get("Encrypt").expect("an encrypted answer");
    let (ts, nonce, sig) =
        (envelope.get("TimeStamp").unwrap(), envelope.get("Nonce").unwrap(), envelope.get("MsgSignature").unwrap());
    assert_eq!(crypto::signature(&[OA_TOKEN, ts, nonce, enc]), sig, "the answer's MsgSignature");
    let plain = AesKey::from_encoding_aes_key(AES_KEY).unwrap().decrypt(enc, APP_ID).expect("decrypts for our AppID");
    xml::parse_tree(&plain).unwrap()
}

async fn message(p: &mut Puppet, id: &str) -> pb::MessagePayloadResponse {
    p.message_payload(pb::MessagePayloadRequest { id: id.into() }).await.unwrap().into_inner()
}

async fn say(p: &mut Puppet, to: &str, text: &str) -> Result<String, tonic::Status> {
    p.message_send_text(pb::MessageSendTextRequest {
        conversation_id: to.into(),
        text: text.into(),
        mentional_ids: vec![],
    })
    .await
    .map(|r| r.into_inner().id)
}

/// Events up to the DONG answering a fresh ding: everything the server emitted before it.
async fn drain(oa: &mut Oa) -> Vec<(i32, Value)> {
    oa.puppet.ding(pb::DingRequest { data: "drain".into() }).await.unwrap();
    let mut seen = vec![];
    loop {
        let (k, p) = oa.events.next().await;
        if k == kind::DONG && p["data"] == "drain" {
            return seen;
        }
        seen.push((k, p));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_names_the_missing_or_bad_setting() {
    let run = async |args: &[&str], env: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(puppet_tests::server_binary());
        cmd.args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--backend", "official-account"]).args(args);
        for k in ["PUPPET_OA_APP_ID", "PUPPET_OA_APP_SECRET", "PUPPET_OA_TOKEN", "PUPPET_OA_AES_KEY", "PUPPET_OA_MODE"]
        {
            cmd.env_remove(k);
        }
        cmd.env("PUPPET_DATA_DIR", std::env::temp_dir().join(format!("puppet-oa-cfg-{}", std::process::id())));
        for (k, v) in env {
            cmd.env(k, v);
        }
        // A server that accepted the settings would run on: bounded, then killed.
        cmd.kill_on_drop(true);
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), cmd.output())
            .await
            .expect("start-up refused the settings (the server did not exit)")
            .expect("run puppet-server");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).trim().to_owned()
    };
    let http = ["--http-listen", "127.0.0.1:0"];
    let full = [("PUPPET_OA_APP_ID", APP_ID), ("PUPPET_OA_APP_SECRET", APP_SECRET), ("PUPPET_OA_TOKEN", OA_TOKEN)];
    let e = run(&http, &[]).await;
    assert!(
        e.ends_with(
            "PUPPET_OA_APP_ID is not set: the official-account backend needs the account's AppID (开发者ID, wx…)"
        ),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "one line: {e}");
    let e = run(&http, &[full[0], full[1], ("PUPPET_OA_TOKEN", "has spaces")]).await;
    assert!(e.contains("PUPPET_OA_TOKEN is malformed"), "{e}");
    let e = run(&http, &[full[0], full[1], full[2], ("PUPPET_OA_AES_KEY", "abcde")]).await;
    assert!(e.contains("PUPPET_OA_AES_KEY is malformed") && e.contains("43"), "{e}");
    let e = run(&[], &full).await;
    assert!(e.contains("PUPPET_HTTP_LISTEN is not set") && e.contains("/wechat"), "{e}");
    for mode in ["safe", "compatible"] {
        let e = run(&http, &[full[0], full[1], full[2], ("PUPPET_OA_MODE", mode)]).await;
        assert!(e.contains(&format!("PUPPET_OA_MODE={mode} needs PUPPET_OA_AES_KEY")), "{e}");
    }
    let e = run(&[&http[..], &["--oa-max-body-kib", "0"]].concat(), &full).await;
    assert!(e.contains("PUPPET_OA_MAX_BODY_KIB=0 is out of range"), "{e}");
    let e = run(&http, &[full[0], full[1], full[2], ("PUPPET_OA_MAX_SKEW_SECS", "0")]).await;
    assert!(e.contains("PUPPET_OA_MAX_SKEW_SECS=0 is out of range"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_app_secret_fails_start_with_the_reason() {
    let fake = FakeWeChat::start(7200).await;
    let server = Server::start_with_env(
        &["--backend", "official-account", "--http-listen", "127.0.0.1:0", "--autostart", "false"],
        &[
            ("PUPPET_OA_APP_ID", APP_ID),
            ("PUPPET_OA_APP_SECRET", "not-the-secret"),
            ("PUPPET_OA_TOKEN", OA_TOKEN),
            ("PUPPET_OA_API_BASE", fake.base.as_str()),
        ],
    );
    let err = server.puppet().await.start(pb::StartRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(err.message().contains("40125") && err.message().contains("PUPPET_OA_APP_SECRET"), "{}", err.message());
    assert!(!err.message().contains("not-the-secret"), "the secret leaked: {}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn safe_mode_text_is_answered_with_the_bots_passive_reply() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &safe_env()).await;
    assert_eq!(fake.token_fetches(), 1, "one token fetched at start");

    let http = oa.http;
    let pending = tokio::spawn(async move {
        post(http, &text_push(ALICE, "你好 puppet\n第二行", 6054768590064713728), Mode::Safe).await
    });
    let id = oa.events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
    assert_eq!(id, "6054768590064713728");
    let m = message(&mut oa.puppet, &id).await;
    assert_eq!(
        (m.talker_id.as_str(), m.listener_id.as_str(), m.text.as_str(), m.r#type),
        (ALICE, ORIGINAL_ID, "你好 puppet\n第二行", MessageType::Text.wire())
    );
    let answer = "你好，我是 puppet-rs 🤖";
    let sent = say(&mut oa.puppet, ALICE, answer).await.unwrap();

    let (status, body) = pending.await.unwrap();
    assert_eq!(status, 200);
    let reply = open_reply(&body);
    assert_eq!(
        (reply.get("ToUserName"), reply.get("FromUserName"), reply.get("MsgType"), reply.get("Content")),
        (Some(ALICE), Some(ORIGINAL_ID), Some("text"), Some(answer))
    );
    assert!(fake.calls("/cgi-bin/message/custom/send").is_empty(), "answered passively, not through the API");
    let own = message(&mut oa.puppet, &sent).await;
    assert_eq!((own.talker_id.as_str(), own.listener_id.as_str(), own.text.as_str()), (ORIGINAL_ID, ALICE, answer));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_use_the_customer_service_api_and_its_errors_become_statuses() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "200")]).await;

    // Nobody answers within the window: WeChat gets `success`.
    let (status, body) = post(oa.http, &text_push(BOB, "hello?", 1001), Mode::Plain).await;
    assert_eq!((status, body.as_str()), (200, "success"));
    oa.events.wait_for(kind::MESSAGE).await;
    say(&mut oa.puppet, BOB, "sorry, late").await.unwrap();
    let calls = fake.calls("/cgi-bin/message/custom/send");
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].body,
        serde_json::json!({"touser": BOB, "msgtype": "text", "text": {"content": "sorry, late"}})
    );

    fake.refuse(CAROL, 45015);
    let err = say(&mut oa.puppet, CAROL, "are you there?").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains("errcode 45015") && err.message().contains("48 hours"), "{}", err.message());
    let err = say(&mut oa.puppet, "oNobody", "hi").await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{}", err.message());

    // The token WeChat stops honouring is replaced once and the call retried.
    fake.expire_tokens();
    say(&mut oa.puppet, BOB, "after expiry").await.unwrap();
    assert_eq!(fake.token_fetches(), 2);
    let last = fake.calls("/cgi-bin/message/custom/send").pop().unwrap();
    assert_eq!((last.token.as_str(), last.body["text"]["content"].as_str()), ("ACCESS_TOKEN_2", Some("after expiry")));

    // What the platform cannot do says so.
    let err = say(&mut oa.puppet, "123@chatroom", "hi").await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("no group chats"), "{}", err.message());
    let err = oa
        .puppet
        .friendship_add(pb::FriendshipAddRequest { contact_id: BOB.into(), hello: "hi".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("follow"), "{}", err.message());
    let err = oa.puppet.message_recall(pb::MessageRecallRequest { id: "1001".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("recall"), "{}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_refreshed_before_they_expire() {
    // Two-second tokens: refreshed every 1.5 s without any call needing one.
    let fake = FakeWeChat::start(2).await;
    let _oa = online(&fake, &[]).await;
    fake.wait_for_fetches(3, std::time::Duration::from_secs(15)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat_retries_are_answered_once_with_the_same_reply() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[]).await;
    let push = text_push(ALICE, "retry me", 777);
    let http = oa.http;
    let deliveries: Vec<_> = (0..3)
        .map(|_| {
            let push = push.clone();
            tokio::spawn(async move { post(http, &push, Mode::Plain).await })
        })
        .collect();
    let id = oa.events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
    assert_eq!(id, "777");
    let sent = say(&mut oa.puppet, ALICE, "answered once").await.unwrap();
    let mut bodies = vec![];
    for d in deliveries {
        let (status, body) = d.await.unwrap();
        assert_eq!(status, 200);
        bodies.push(body);
    }
    assert!(bodies.iter().all(|b| *b == bodies[0]), "every delivery gets the same answer: {bodies:?}");
    let reply = xml::parse_tree(&bodies[0]).unwrap();
    assert_eq!(reply.get("Content"), Some("answered once"));
    // A fourth delivery after the answer: the same again, from the cache.
    assert_eq!(post(http, &push, Mode::Plain).await.1, bodies[0]);

    // Events retried (no MsgId: sender + time + event) are de-duplicated too.
    let subscribe = event_push("oNewFan", "subscribe", "<EventKey><![CDATA[]]></EventKey>", 1_700_000_100);
    let (a, b) = tokio::join!(post(http, &subscribe, Mode::Plain), post(http, &subscribe, Mode::Plain));
    assert_eq!((a.0, b.0), (200, 200));
    let seen = drain(&mut oa).await;
    let messages: Vec<&Value> =
        seen.iter().filter(|(k, _)| *k == kind::MESSAGE).map(|(_, p)| &p["messageId"]).collect();
    assert_eq!(messages, vec![&Value::String(sent)], "only the bot's own message after the first delivery");
    assert_eq!(seen.iter().filter(|(k, _)| *k == kind::FRIENDSHIP).count(), 1, "{seen:?}");
    assert!(fake.calls("/cgi-bin/message/custom/send").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signatures_and_foreign_pushes_are_refused() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &safe_env()).await;
    let http = oa.http;
    let now = now_secs().to_string();
    let sig = crypto::signature(&[OA_TOKEN, &now, "1514711492"]);

    // URL verification.
    let good = format!("/wechat?signature={sig}&timestamp={now}&nonce=1514711492&echostr=4375120948345356249");
    assert_eq!(http_request(http, "GET", &good, "").await, (200, "4375120948345356249".to_owned()));
    let bad = good.replace("nonce=1514711492", "nonce=1514711493");
    assert_eq!(http_request(http, "GET", &bad, "").await.0, 403);
    assert_eq!(http_request(http, "GET", "/wechat", "").await.0, 403);

    let push = text_push(ALICE, "forged", 4242);
    // A forged URL signature.
    let (path, body) = signed_push(&push, Mode::Plain, APP_ID);
    assert_eq!(http_request(http, "POST", &path.replace("signature=", "signature=0"), &body).await.0, 403);
    // A good URL signature but a forged msg_signature.
    let (path, body) = signed_push(&push, Mode::Safe, APP_ID);
    let forged = path.replace("msg_signature=", "msg_signature=ff");
    assert_eq!(http_request(http, "POST", &forged, &body).await.0, 403);
    // Encrypted for another account.
    let (path, body) = signed_push(&push, Mode::Safe, "wx_other");
    assert_eq!(http_request(http, "POST", &path, &body).await.0, 403);
    // Addressed to another original id.
    let (path, body) = signed_push(&push.replace(ORIGINAL_ID, "gh_someoneelse"), Mode::Safe, APP_ID);
    assert_eq!(http_request(http, "POST", &path, &body).await.0, 403);
    // XXE.
    let xxe = format!("<!DOCTYPE xml [<!ENTITY x SYSTEM \"file:///etc/passwd\">]>{push}");
    let (path, body) = signed_push(&xxe, Mode::Plain, APP_ID);
    assert_eq!(http_request(http, "POST", &path, &body).await.0, 400);

    let seen = drain(&mut oa).await;
    assert!(seen.iter().all(|(k, _)| *k != kind::MESSAGE), "nothing refused reached the bot: {seen:?}");
    assert!(
        seen.iter().any(|(k, p)| *k == kind::ERROR && p["data"].as_str().unwrap_or_default().contains("another AppID")),
        "the AppID mismatch is reported: {seen:?}"
    );
    let metrics = puppet_tests::http_get(http, "/metrics").await.1;
    for line in [
        "puppet_oa_pushes_total{outcome=\"bad_signature\"} 2",
        "puppet_oa_pushes_total{outcome=\"refused\"} 3",
        "puppet_oa_token_fetches_total 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    assert!(!metrics.contains("outcome=\"handled\""), "nothing was handled:\n{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_go_both_ways_through_the_media_api() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &safe_env()).await;
    let photo: Vec<u8> =
        [&[0xFF, 0xD8, 0xFF, 0xE0][..], &(0..=255u8).cycle().take(300_000).collect::<Vec<_>>()].concat();
    fake.put_media("MEDIA_IN_1", "image/jpeg", "photo.jpg", &photo);

    let push = push_xml(
        ALICE,
        "image",
        "<PicUrl><![CDATA[http://mmbiz.qpic.cn/x]]></PicUrl><MediaId><![CDATA[MEDIA_IN_1]]></MediaId>",
        1_700_000_200,
        Some(5001),
    );
    let http = oa.http;
    let pending = tokio::spawn(async move { post(http, &push, Mode::Safe).await });
    let id = oa.events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
    assert_eq!(message(&mut oa.puppet, &id).await.r#type, MessageType::Image.wire());
    let fb = oa.puppet.message_image(pb::MessageImageRequest { id: id.clone(), r#type: 1 }).await.unwrap().into_inner();
    assert!(!fb.file_box.contains("access_token") && !fb.file_box.contains("ACCESS_TOKEN"), "{}", fb.file_box);
    let fb: Value = serde_json::from_str(&fb.file_box).unwrap();
    assert_eq!(fb["name"], "photo.jpg");
    let bytes = match fb["base64"].as_str() {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        None => panic!("expected an inline image for a 300 kB file: {fb}"),
    };
    assert!(bytes == photo, "the image bytes round trip");

    // The bot sends a picture back while the push still waits: uploaded, then the passive reply.
    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[7u8; 5000][..]].concat();
    let file_box = serde_json::json!({
        "type": 1, "name": "back.png", "base64": base64::engine::general_purpose::STANDARD.encode(&png),
    });
    oa.puppet
        .message_send_file(pb::MessageSendFileRequest { conversation_id: ALICE.into(), file_box: file_box.to_string() })
        .await
        .unwrap();
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!((uploads[0].kind.as_str(), uploads[0].filename.as_str()), ("image", "back.png"));
    assert!(uploads[0].bytes == png, "uploaded bytes");
    let reply = open_reply(&pending.await.unwrap().1);
    assert_eq!((reply.get("MsgType"), reply.get("Image/MediaId")), (Some("image"), Some("MEDIA_UP_1")));

    // What WeChat cannot carry is refused before any upload.
    let pdf = serde_json::json!({"type": 1, "name": "report.pdf", "base64": "JVBERi0xLjQ="});
    let err = oa
        .puppet
        .message_send_file(pb::MessageSendFileRequest { conversation_id: ALICE.into(), file_box: pdf.to_string() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("report.pdf") && err.message().contains("mp4"), "{}", err.message());
    assert_eq!(fake.uploads().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_are_contacts_and_subscribing_is_a_friendship() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "200")]).await;
    let p = &mut oa.puppet;
    let mut ids = p.contact_list(pb::ContactListRequest {}).await.unwrap().into_inner().ids;
    ids.sort();
    assert_eq!(ids, vec![ORIGINAL_ID, ALICE, BOB, CAROL], "every page of user/get, and the account itself");

    let contact = |id: &str| pb::ContactPayloadRequest { id: id.into() };
    let me = p.contact_payload(contact(ORIGINAL_ID)).await.unwrap().into_inner();
    assert_eq!(me.r#type, 2, "the bot is an official account");
    let alice = p.contact_payload(contact(ALICE)).await.unwrap().into_inner();
    assert_eq!((alice.name.as_str(), alice.alias.as_str(), alice.friend), ("Alice", "Alice", true));
    let bob = p.contact_payload(contact(BOB)).await.unwrap().into_inner();
    assert_eq!((bob.name.as_str(), bob.alias.as_str()), (BOB, ""), "no nickname, no remark: the openid");
    let err = p.contact_payload(contact("oStranger")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    p.contact_alias(pb::ContactAliasRequest { id: BOB.into(), alias: Some("Bobby".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(fake.remark(BOB).as_deref(), Some("Bobby"));
    oa.events.wait_until(kind::DIRTY, |d| d["payloadId"] == BOB).await;
    let bob = oa.puppet.contact_payload(contact(BOB)).await.unwrap().into_inner();
    assert_eq!((bob.name.as_str(), bob.alias.as_str()), ("Bobby", "Bobby"));

    let p = &mut oa.puppet;
    let tags = |c: &str| pb::TagContactListRequest { contact_id: c.into(), ..Default::default() };
    assert_eq!(p.tag_contact_list(tags(ALICE)).await.unwrap().into_inner().ids, vec!["100"]);
    p.tag_contact_add(pb::TagContactAddRequest { id: "新客".into(), contact_id: BOB.into() }).await.unwrap();
    assert_eq!(p.tag_contact_list(tags(BOB)).await.unwrap().into_inner().ids, vec!["101"], "created, then tagged");
    assert!(p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids.is_empty());
    let err = p.room_payload(pb::RoomPayloadRequest { id: "1@chatroom".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);

    // A new follower through a parametric QR code.
    let subscribe = event_push(
        "oNewFan",
        "subscribe",
        "<EventKey><![CDATA[qrscene_42]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>",
        1_700_000_300,
    );
    assert_eq!(post(oa.http, &subscribe, Mode::Plain).await, (200, "success".to_owned()));
    let f = oa.events.wait_for(kind::FRIENDSHIP).await;
    let f = oa
        .puppet
        .friendship_payload(pb::FriendshipPayloadRequest {
            id: f["friendshipId"].as_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.contact_id.as_str(), f.r#type, f.scene, f.hello.as_str()), ("oNewFan", 1, 30, "qrscene_42"));
    oa.events.wait_until(kind::DIRTY, |d| d["payloadId"] == "oNewFan").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_extension_service_covers_menus_templates_qr_codes_and_every_push() {
    let fake = FakeWeChat::start(7200).await;
    let oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "200")]).await;
    let mut x = extension(&oa.server).await;

    let menu = r#"{"button":[{"type":"click","name":"今日歌曲","key":"V1001_TODAY_MUSIC"}]}"#;
    x.create_menu(ext::CreateMenuRequest { menu_json: menu.into() }).await.unwrap();
    assert_eq!(fake.menu().unwrap()["button"][0]["key"], "V1001_TODAY_MUSIC");
    let got = x.get_menu(ext::GetMenuRequest {}).await.unwrap().into_inner().menu_json;
    assert!(got.contains("V1001_TODAY_MUSIC") && got.contains("今日歌曲"), "{got}");
    let four = r#"{"button":[{"name":"a"},{"name":"b"},{"name":"c"},{"name":"d"}]}"#;
    let err = x.create_menu(ext::CreateMenuRequest { menu_json: four.into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let err = x.create_menu(ext::CreateMenuRequest { menu_json: "{not json".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    x.delete_menu(ext::DeleteMenuRequest {}).await.unwrap();
    assert_eq!(x.get_menu(ext::GetMenuRequest {}).await.unwrap_err().code(), Code::NotFound);

    let template = |id: &str| ext::SendTemplateRequest {
        to_user: ALICE.into(),
        template_id: id.into(),
        url: "https://example.com/order/1".into(),
        data: [("first".to_owned(), ext::TemplateValue { value: "您的订单已发货".into(), color: "#173177".into() })]
            .into(),
        ..Default::default()
    };
    let msg_id = x.send_template(template("TEMPLATE_OK")).await.unwrap().into_inner().msg_id;
    let call = fake.calls("/cgi-bin/message/template/send").pop().unwrap();
    assert_eq!(call.body["data"]["first"], serde_json::json!({"value": "您的订单已发货", "color": "#173177"}));
    let err = x.send_template(template("NO_SUCH")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert!(err.message().contains("40037"), "{}", err.message());
    let err = x.get_template_result(ext::GetTemplateResultRequest { msg_id }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "no result before WeChat reports one");

    let mut pushes = x.events(ext::EventsRequest { types: vec![] }).await.unwrap().into_inner();
    let click = event_push(ALICE, "CLICK", "<EventKey><![CDATA[V1001_TODAY_MUSIC]]></EventKey>", 1_700_000_400);
    assert_eq!(post(oa.http, &click, Mode::Plain).await.0, 200);
    let done = event_push(
        ALICE,
        "TEMPLATESENDJOBFINISH",
        &format!("<MsgID>{msg_id}</MsgID><Status><![CDATA[success]]></Status>"),
        1_700_000_401,
    );
    assert_eq!(post(oa.http, &done, Mode::Plain).await, (200, "success".to_owned()));
    let result = x.get_template_result(ext::GetTemplateResultRequest { msg_id }).await.unwrap().into_inner();
    assert_eq!((result.status.as_str(), result.to_user.as_str()), ("success", ALICE));

    let next = async |s: &mut tonic::Streaming<ext::Push>| {
        tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, s.message()).await.unwrap().unwrap().unwrap()
    };
    let p = next(&mut pushes).await;
    assert_eq!(
        (p.r#type.as_str(), p.event.as_str(), p.event_key.as_str(), p.from_user.as_str()),
        ("click_event", "CLICK", "V1001_TODAY_MUSIC", ALICE)
    );
    assert!(p.raw_xml.contains("V1001_TODAY_MUSIC"));
    let p = next(&mut pushes).await;
    assert_eq!(
        (p.r#type.as_str(), p.msg_id, p.fields["Status"].as_str()),
        ("templatesendjobfinish_event", msg_id, "success")
    );

    let qr = x
        .create_qr_code(ext::CreateQrCodeRequest {
            scene: Some(ext::create_qr_code_request::Scene::SceneStr("campaign-7".into())),
            permanent: false,
            expire_seconds: 600,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(qr.image_url.starts_with("https://mp.weixin.qq.com/cgi-bin/showqrcode?ticket=gQH47"), "{}", qr.image_url);
    assert_eq!(qr.expire_seconds, 600);
    let call = fake.calls("/cgi-bin/qrcode/create").pop().unwrap();
    assert_eq!(call.body["action_name"], "QR_STR_SCENE");
    assert_eq!(call.body["action_info"]["scene"]["scene_str"], "campaign-7");

    let f = x.get_follower(ext::GetFollowerRequest { openid: ALICE.into() }).await.unwrap().into_inner();
    assert_eq!((f.remark.as_str(), f.subscribed, f.subscribe_scene.as_str()), ("Alice", true, "ADD_SCENE_QR_CODE"));
    assert_eq!(f.tags.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(), vec!["vip"]);
    let tags = x.list_tags(ext::ListTagsRequest {}).await.unwrap().into_inner().tags;
    assert_eq!(tags.iter().map(|t| (t.id, t.count)).collect::<Vec<_>>(), vec![(2, 0), (100, 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_wechaty_cannot_express_go_through_the_extension() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &safe_env()).await;
    let mut x = extension(&oa.server).await;
    let music = |url: &str| ext::ReplyRequest {
        to_user: ALICE.into(),
        reply: Some(ext::reply_request::Reply::Music(ext::MusicReply {
            title: "tt".into(),
            description: "ds".into(),
            url: url.into(),
            thumb_media_id: "THUMB_1".into(),
            ..Default::default()
        })),
    };

    // While a push waits: music as the passive reply (HQMusicUrl defaults to the URL).
    let http = oa.http;
    let pending = tokio::spawn(async move { post(http, &text_push(ALICE, "play something", 9001), Mode::Safe).await });
    oa.events.wait_for(kind::MESSAGE).await;
    assert!(x.reply(music("https://music.example/u1.mp3")).await.unwrap().into_inner().passive);
    let reply = open_reply(&pending.await.unwrap().1);
    assert_eq!(
        (
            reply.get("MsgType"),
            reply.get("Music/MusicUrl"),
            reply.get("Music/HQMusicUrl"),
            reply.get("Music/ThumbMediaId")
        ),
        (Some("music"), Some("https://music.example/u1.mp3"), Some("https://music.example/u1.mp3"), Some("THUMB_1"))
    );

    // Nothing waiting: the customer-service API.
    assert!(!x.reply(music("https://music.example/u2.mp3")).await.unwrap().into_inner().passive);
    let call = fake.calls("/cgi-bin/message/custom/send").pop().unwrap();
    assert_eq!(
        (call.body["msgtype"].as_str(), call.body["music"]["hqmusicurl"].as_str()),
        (Some("music"), Some("https://music.example/u2.mp3"))
    );
    let transfer = ext::ReplyRequest {
        to_user: ALICE.into(),
        reply: Some(ext::reply_request::Reply::TransferCustomerService(ext::TransferCustomerService::default())),
    };
    let err = x.reply(transfer).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    let article = ext::Article { title: "t".into(), url: "https://example.com".into(), ..Default::default() };
    let news = ext::ReplyRequest {
        to_user: ALICE.into(),
        reply: Some(ext::reply_request::Reply::News(ext::NewsReply { articles: vec![article.clone(), article] })),
    };
    assert_eq!(x.reply(news).await.unwrap_err().code(), Code::InvalidArgument, "the API sends one article");
    let empty = ext::ReplyRequest { to_user: ALICE.into(), reply: None };
    assert_eq!(x.reply(empty).await.unwrap_err().code(), Code::InvalidArgument);
    let metrics = puppet_tests::http_get(http, "/metrics").await.1;
    for line in ["puppet_oa_replies_total{path=\"passive\"} 1", "puppet_oa_replies_total{path=\"api\"} 1"] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
}

/// Whether the bot got a MESSAGE (from the events up to a fresh DONG).
async fn messages_seen(oa: &mut Oa) -> Vec<String> {
    drain(oa)
        .await
        .into_iter()
        .filter(|(k, _)| *k == kind::MESSAGE)
        .map(|(_, p)| p["messageId"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn errors(seen: &[(i32, Value)]) -> Vec<String> {
    seen.iter()
        .filter(|(k, _)| *k == kind::ERROR)
        .map(|(_, p)| p["data"].as_str().unwrap_or_default().to_owned())
        .collect()
}

async fn metric(http: SocketAddr, line: &str) -> bool {
    puppet_tests::http_get(http, "/metrics").await.1.lines().any(|l| l == line)
}

/// Hostile input: 10,000 nested elements (about 70 kB, under a raised body limit) once aborted the
/// process with a stack overflow. Now: 400 with the reason, and the next push is handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deeply_nested_push_is_refused_and_the_server_lives_on() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_MAX_BODY_KIB", "128"), ("PUPPET_OA_REPLY_WINDOW_MS", "100")]).await;
    let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
    assert_eq!(deep.len(), 70_000);
    let (status, body) = post(oa.http, &deep, Mode::Plain).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("nested deeper than 32 levels"), "{body}");
    // So is one just past the bounds inside a push, and a hundred thousand siblings (the 128 KiB
    // limit lets 16,000 of them through).
    let wide = format!("<xml>{}</xml>", "<i>1</i>".repeat(16_000));
    let (status, body) = post(oa.http, &wide, Mode::Plain).await;
    assert_eq!((status, body.as_str()), (400, "XML refused: more than 4096 elements\n"));

    let (status, body) = post(oa.http, &text_push(ALICE, "still there?", 8001), Mode::Plain).await;
    assert_eq!((status, body.as_str()), (200, "success"), "the process is alive and handles the next push");
    let seen = drain(&mut oa).await;
    assert_eq!(seen.iter().filter(|(k, _)| *k == kind::MESSAGE).count(), 1, "{seen:?}");
    assert!(errors(&seen).iter().any(|e| e.contains("deeper than 32")), "clients hear of it: {seen:?}");
    assert!(metric(oa.http, "puppet_oa_pushes_total{outcome=\"refused\"} 2").await);
}

/// Every request body is bounded (`PUPPET_OA_MAX_BODY_KIB`, 64 KiB by default): 413 with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_is_refused_with_413() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "100")]).await;
    // A well-formed, signed push of 65 KiB.
    let mut big = text_push(BOB, "", 8101);
    big = big.replace("<![CDATA[]]>", &format!("<![CDATA[{}]]>", "x".repeat(65 * 1024 - big.len())));
    assert_eq!(big.len(), 65 * 1024);
    let (status, body) = post(oa.http, &big, Mode::Plain).await;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("larger than 64 KiB (PUPPET_OA_MAX_BODY_KIB)"), "{body}");
    // Just under the limit is fine.
    let fits = text_push(BOB, &"y".repeat(60 * 1024), 8102);
    assert_eq!(post(oa.http, &fits, Mode::Plain).await, (200, "success".to_owned()));
    let seen = drain(&mut oa).await;
    let messages: Vec<&Value> =
        seen.iter().filter(|(k, _)| *k == kind::MESSAGE).map(|(_, p)| &p["messageId"]).collect();
    assert_eq!(messages, vec!["8102"], "only the push that fits");
    assert!(errors(&seen).iter().any(|e| e.contains("PUPPET_OA_MAX_BODY_KIB")), "clients hear of it: {seen:?}");
    // Unsigned, it is refused all the same, and nobody hears of it.
    let (status, _) = http_request(oa.http, "POST", "/wechat?signature=0&timestamp=1&nonce=1", &big).await;
    assert_eq!(status, 413);
    assert!(errors(&drain(&mut oa).await).is_empty());
    assert!(metric(oa.http, "puppet_oa_pushes_total{outcome=\"refused\"} 2").await);
}

/// The three modes as WeChat defines them: safe takes encrypted pushes only (a plaintext one could
/// be a downgrade), compatible both, plain plaintext only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_mode_takes_exactly_its_pushes() {
    let fake = FakeWeChat::start(7200).await;
    let fast = ("PUPPET_OA_REPLY_WINDOW_MS", "100");

    // A key and no mode: safe.
    let mut oa = online(&fake, &[("PUPPET_OA_AES_KEY", AES_KEY), fast]).await;
    let (status, body) = post(oa.http, &text_push(ALICE, "downgraded", 8201), Mode::Plain).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("plaintext push to a server in safe mode"), "{body}");
    let (status, _) = post(oa.http, &text_push(ALICE, "sealed", 8202), Mode::Safe).await;
    assert_eq!(status, 200);
    let seen = drain(&mut oa).await;
    let messages: Vec<&Value> =
        seen.iter().filter(|(k, _)| *k == kind::MESSAGE).map(|(_, p)| &p["messageId"]).collect();
    assert_eq!(messages, vec!["8202"], "the plaintext push never reached the bot");
    assert!(errors(&seen).iter().any(|e| e.contains("safe mode")), "clients hear of it: {seen:?}");
    assert!(metric(oa.http, "puppet_oa_pushes_total{outcome=\"refused\"} 1").await);
    drop(oa);

    let mut oa = online(&fake, &[("PUPPET_OA_AES_KEY", AES_KEY), ("PUPPET_OA_MODE", "compatible"), fast]).await;
    assert_eq!(post(oa.http, &text_push(ALICE, "plain", 8203), Mode::Plain).await.0, 200);
    assert_eq!(post(oa.http, &text_push(ALICE, "sealed", 8204), Mode::Safe).await.0, 200);
    assert_eq!(messages_seen(&mut oa).await, vec!["8203", "8204"]);
    drop(oa);

    let mut oa = online(&fake, &[("PUPPET_OA_AES_KEY", AES_KEY), ("PUPPET_OA_MODE", "plain"), fast]).await;
    let (status, body) = post(oa.http, &text_push(ALICE, "sealed", 8205), Mode::Safe).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("plain mode"), "{body}");
    assert_eq!(post(oa.http, &text_push(ALICE, "plain", 8206), Mode::Plain).await.0, 200);
    assert_eq!(messages_seen(&mut oa).await, vec!["8206"]);
}

/// A plain-mode signature covers only token, timestamp and nonce: a captured request is refused
/// once its timestamp leaves the window (±300 s), and sent twice inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_and_replayed_callbacks_are_refused() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "100")]).await;
    let http = oa.http;
    let push = text_push(CAROL, "once", 8301);

    let (path, body) = signed_push_at(&push, Mode::Plain, APP_ID, &(now_secs() - 400).to_string());
    let (status, answer) = http_request(http, "POST", &path, &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("behind this server's clock") && answer.contains("PUPPET_OA_MAX_SKEW_SECS"), "{answer}");
    let (path, body) = signed_push_at(&push, Mode::Plain, APP_ID, "yesterday");
    let (status, answer) = http_request(http, "POST", &path, &body).await;
    assert_eq!((status, answer.as_str()), (403, "timestamp `yesterday` is not a time in seconds\n"));

    // A fractional timestamp (as WeRoBot's tests send) is fine; the same request again is not.
    let (path, body) = signed_push_at(&push, Mode::Plain, APP_ID, &format!("{}.12", now_secs()));
    assert_eq!(http_request(http, "POST", &path, &body).await, (200, "success".to_owned()));
    let (status, answer) = http_request(http, "POST", &path, &body).await;
    assert_eq!(status, 403, "{answer}");
    assert!(answer.contains("replayed request"), "{answer}");
    assert_eq!(messages_seen(&mut oa).await, vec!["8301"]);

    // URL verification checks the window too (a stale GET most often means a wrong clock).
    let at = (now_secs() - 3600).to_string();
    let sig = crypto::signature(&[OA_TOKEN, &at, "42"]);
    let (status, answer) =
        http_request(http, "GET", &format!("/wechat?signature={sig}&timestamp={at}&nonce=42&echostr=e"), "").await;
    assert_eq!(status, 403);
    assert!(answer.contains("3600 s behind"), "{answer}");
    assert!(metric(http, "puppet_oa_pushes_total{outcome=\"refused\"} 3").await);
}

/// Pushes without a MsgId (here a type WeChat sends none for, and two menu clicks in one second)
/// are told apart by their content; only a byte-identical re-delivery is a retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_without_a_msg_id_are_not_taken_for_retries() {
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "100")]).await;
    let card = |title: &str| {
        push_xml(ALICE, "miniprogrampage", &format!("<Title><![CDATA[{title}]]></Title>"), 1_700_000_700, None)
    };
    for push in [card("first"), card("second"), card("first")] {
        assert_eq!(post(oa.http, &push, Mode::Plain).await.0, 200);
    }
    let seen = drain(&mut oa).await;
    assert_eq!(seen.iter().filter(|(k, _)| *k == kind::MESSAGE).count(), 2, "two pushes, one retry: {seen:?}");
    let mut pushes =
        extension(&oa.server).await.events(ext::EventsRequest { types: vec![] }).await.unwrap().into_inner();
    for key in ["A", "B"] {
        let click = event_push(ALICE, "CLICK", &format!("<EventKey><![CDATA[{key}]]></EventKey>"), 1_700_000_800);
        assert_eq!(post(oa.http, &click, Mode::Plain).await.0, 200);
    }
    for key in ["A", "B"] {
        let p = tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, pushes.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(p.event_key, key);
    }
    assert!(metric(oa.http, "puppet_oa_pushes_total{outcome=\"retry\"} 1").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_sealed_with_the_previous_key_are_answered_with_it() {
    const NEW_KEY: &str = "ZYXWVUTSRQPONMLKJIHGFEDCBA9876543210zyxwvut";
    let fake = FakeWeChat::start(7200).await;
    let mut oa = online(&fake, &[("PUPPET_OA_AES_KEY", NEW_KEY), ("PUPPET_OA_AES_KEY_PREVIOUS", AES_KEY)]).await;
    let http = oa.http;
    // `post` seals with AES_KEY, now the previous key.
    let pending = tokio::spawn(async move { post(http, &text_push(BOB, "old key", 9101), Mode::Safe).await });
    oa.events.wait_for(kind::MESSAGE).await;
    say(&mut oa.puppet, BOB, "still understood").await.unwrap();
    let body = pending.await.unwrap().1;
    assert_eq!(open_reply(&body).get("Content"), Some("still understood"), "answered with the key that worked");
    let enc = xml::parse_tree(&body).unwrap().get("Encrypt").unwrap().to_owned();
    assert!(AesKey::from_encoding_aes_key(NEW_KEY).unwrap().decrypt(&enc, APP_ID).is_err());
}

/// An official Wechaty client, unmodified, as the bot of an Official Account
/// (`tests/compat/{node,python}/official_account.*`): every answer it gives comes back to WeChat as
/// the passive reply of the push it answers.
async fn wechaty_client_answers_followers(program: &std::path::Path, script: &str, env: &[(&str, String)]) {
    use tokio::io::AsyncBufReadExt;
    let fake = FakeWeChat::start(7200).await;
    let mut oa_env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    oa_env.push(("PUPPET_OA_AES_KEY", AES_KEY));
    let server = Server::start_with_env(&["--backend", "official-account", "--http-listen", "127.0.0.1:0"], &oa_env);
    let http = server.http_addr.unwrap();
    let home = server.data_dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = tokio::process::Command::new(program)
        .arg(puppet_tests::repo_root().join(script))
        .current_dir(&home)
        .env("HOME", &home)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("WECHATY_PUPPET_SERVICE_ENDPOINT", server.addr.to_string())
        .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
        .env("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT", "true")
        .env("WECHATY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = vec![];
    let mut expect_line = async |want: &str| {
        let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
            while let Some(line) = out.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.starts_with(want) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(matches!(found, Ok(true)), "no `{want}` from the {script} bot; it printed {seen:?}");
    };
    expect_line("READY").await;

    let answer = async |push: String| {
        let (status, body) = post(http, &push, Mode::Safe).await;
        assert_eq!(status, 200);
        assert_ne!(body, "success", "the bot did not answer in time");
        open_reply(&body)
    };
    let reply = answer(text_push(ALICE, "who am i", 7001)).await;
    assert_eq!((reply.get("ToUserName"), reply.get("Content")), (Some(ALICE), Some("you are Alice")));
    let reply = answer(text_push(BOB, "你好", 7002)).await;
    assert_eq!(reply.get("Content"), Some("echo: 你好"));

    let photo: Vec<u8> = [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[42u8; 20_000][..]].concat();
    fake.put_media("MEDIA_NODE", "image/jpeg", "cat.jpg", &photo);
    let image = push_xml(BOB, "image", "<MediaId><![CDATA[MEDIA_NODE]]></MediaId>", 1_700_000_500, Some(7003));
    assert_eq!(answer(image).await.get("Content"), Some("got cat.jpg, 20004 bytes"));

    let follow = event_push(CAROL, "subscribe", "", 1_700_000_600);
    assert_eq!(answer(follow).await.get("Content"), Some("welcome oFollowerCarol"));

    assert_eq!(answer(text_push(ALICE, "bye", 7004)).await.get("Content"), Some("再见"));
    expect_line("COMPAT OK").await;
    let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "the {script} bot exited with {status}");
    assert!(fake.calls("/cgi-bin/message/custom/send").is_empty(), "every answer went back passively");
    let metrics = puppet_tests::http_get(http, "/metrics").await.1;
    for line in ["puppet_oa_replies_total{path=\"passive\"} 5", "puppet_oa_pushes_total{outcome=\"handled\"} 5"] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_wechaty_client_answers_followers() {
    let node_modules = puppet_tests::installed("WECHATY_NODE_MODULES", "npm wechaty + wechaty-puppet-service");
    let env = [("NODE_PATH", node_modules.display().to_string())];
    wechaty_client_answers_followers(std::path::Path::new("node"), "tests/compat/node/official_account.js", &env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_wechaty_client_answers_followers() {
    let python = puppet_tests::installed("PUPPET_TEST_WECHATY_PYTHON", "a venv with python-wechaty 0.10.7");
    wechaty_client_answers_followers(&python, "tests/compat/python/official_account.py", &[]).await;
}

/// The grpcurl lines of the README's Official Account section, run as written (grpcurl 1.9.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_official_account_recipes_work() {
    use tokio::io::AsyncBufReadExt;
    let grpcurl = puppet_tests::installed("PUPPET_GRPCURL", "grpcurl");
    let readme = std::fs::read_to_string(puppet_tests::repo_root().join("README.md")).unwrap();
    let section = readme.split("## Connect an Official Account").nth(1).expect("the README section");
    let block = section
        .split("```sh")
        .filter_map(|b| b.split("```").next())
        .find(|b| b.contains("grpcurl"))
        .expect("a grpcurl block");
    let recipes: Vec<String> = block
        .replace("\\\n", " ")
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(recipes.len(), 2, "{recipes:?}");

    let fake = FakeWeChat::start(7200).await;
    let oa = online(&fake, &[("PUPPET_OA_REPLY_WINDOW_MS", "100")]).await;
    let path = format!("{}:{}", grpcurl.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let run = |recipe: &str| {
        let mut cmd = tokio::process::Command::new("sh");
        cmd.args(["-c", &recipe.replace("127.0.0.1:8788", &oa.server.addr.to_string())])
            .env("PATH", &path)
            .env("TOKEN", TOKEN)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        cmd
    };
    let menu = &recipes[0];
    assert!(menu.contains("OfficialAccount/CreateMenu"), "{menu}");
    let out = tokio::time::timeout(std::time::Duration::from_secs(30), run(menu).output()).await.unwrap().unwrap();
    assert!(out.status.success(), "`{menu}` failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(fake.menu().unwrap()["button"][0]["key"], "TODAY");

    let follow = &recipes[1];
    assert!(follow.contains("OfficialAccount/Events"), "{follow}");
    let mut child = run(follow).spawn().unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    // The stream may not be registered yet when the first click arrives: click until it prints.
    let printed = tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, async {
        let mut text = String::new();
        let mut at = 1_700_001_000;
        loop {
            at += 1;
            let click = event_push(ALICE, "CLICK", "<EventKey><![CDATA[TODAY]]></EventKey>", at);
            assert_eq!(post(oa.http, &click, Mode::Plain).await.0, 200);
            if let Ok(Ok(Some(line))) =
                tokio::time::timeout(std::time::Duration::from_millis(500), lines.next_line()).await
            {
                text.push_str(&line);
                while let Some(line) = lines.next_line().await.unwrap() {
                    text.push_str(&line);
                    if line.trim() == "}" {
                        return text;
                    }
                }
            }
        }
    })
    .await
    .expect("a push from the Events recipe");
    assert!(printed.contains("\"type\": \"click_event\"") && printed.contains("\"eventKey\": \"TODAY\""), "{printed}");
}

/// The server on the official-account backend against `fake`, with its data in `dir`, online.
async fn online_in(fake: &FakeWeChat, dir: &std::path::Path, args: &[&str]) -> Oa {
    let mut env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    env.push(("PUPPET_OA_REPLY_WINDOW_MS", "200"));
    let mut all = vec!["--backend", "official-account", "--http-listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let server = Server::start_in_with_env(dir, &all, &env);
    let http = server.http_addr.expect("side port");
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    events.wait_for(kind::LOGIN).await;
    Oa { server, http, puppet, events }
}

/// The bytes of an image message, as `MessageImage` hands them out (inline for small files).
async fn image_bytes(p: &mut Puppet, id: &str) -> Vec<u8> {
    let fb = p.message_image(pb::MessageImageRequest { id: id.into(), r#type: 2 }).await.unwrap().into_inner();
    let fb: Value = serde_json::from_str(&fb.file_box).unwrap();
    let b64 = fb["base64"].as_str().unwrap_or_else(|| panic!("an inline image: {fb}"));
    base64::engine::general_purpose::STANDARD.decode(b64).unwrap()
}

fn image_push(from: &str, media_id: &str, msg_id: u64) -> String {
    let body = format!(
        "<PicUrl><![CDATA[http://mmbiz.qpic.cn/{media_id}]]></PicUrl><MediaId><![CDATA[{media_id}]]></MediaId>"
    );
    push_xml(from, "image", &body, 1_700_000_500, Some(msg_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_friendships_and_template_results_survive_a_restart() {
    let fake = FakeWeChat::start(7200).await;
    let dir = std::env::temp_dir().join(format!("puppet-e2e-oa-restart-{}", std::process::id()));
    let photo = |seed: u8| -> Vec<u8> { [&[0xFF, 0xD8, 0xFF, 0xE0][..], &[seed; 20_000][..]].concat() };
    fake.put_media("MEDIA_R1", "image/jpeg", "first.jpg", &photo(1));
    fake.put_media("MEDIA_R2", "image/jpeg", "second.jpg", &photo(2));

    let mut oa = online_in(&fake, &dir, &[]).await;
    assert_eq!(post(oa.http, &text_push(ALICE, "before the restart", 7001), Mode::Plain).await.0, 200);
    assert_eq!(post(oa.http, &image_push(ALICE, "MEDIA_R1", 7002), Mode::Plain).await.0, 200);
    assert_eq!(post(oa.http, &image_push(BOB, "MEDIA_R2", 7003), Mode::Plain).await.0, 200);
    // One image is fetched before the restart: the blob it went to is kept with the message.
    assert!(image_bytes(&mut oa.puppet, "7003").await == photo(2));
    assert_eq!(fake.calls("/cgi-bin/media/get").len(), 1);
    let sent = say(&mut oa.puppet, ALICE, "sent before the restart").await.unwrap();
    let png = [&b"\x89PNG\r\n\x1a\n"[..], &[9u8; 3000][..]].concat();
    let file_box = serde_json::json!({
        "type": 1, "name": "sent.png", "base64": base64::engine::general_purpose::STANDARD.encode(&png),
    });
    let sent_file = oa
        .puppet
        .message_send_file(pb::MessageSendFileRequest { conversation_id: BOB.into(), file_box: file_box.to_string() })
        .await
        .unwrap()
        .into_inner()
        .id;
    let contact = |id: &str| pb::ContactPayloadRequest { id: id.into() };
    assert_eq!(oa.puppet.contact_payload(contact(ALICE)).await.unwrap().into_inner().name, "Alice");
    assert_eq!(fake.calls("/cgi-bin/user/info").len(), 1);
    let subscribe = event_push("oRestartFan", "subscribe", "<EventKey><![CDATA[qrscene_9]]></EventKey>", 1_700_000_600);
    assert_eq!(post(oa.http, &subscribe, Mode::Plain).await.0, 200);
    let friendship = oa.events.wait_for(kind::FRIENDSHIP).await["friendshipId"].as_str().unwrap().to_owned();
    let done = event_push(
        ALICE,
        "TEMPLATESENDJOBFINISH",
        "<MsgID>88001</MsgID><Status><![CDATA[failed:user block]]></Status>",
        1_700_000_601,
    );
    assert_eq!(post(oa.http, &done, Mode::Plain).await.0, 200);
    assert!(oa.server.terminate().success());
    drop(oa);

    let mut oa = online_in(&fake, &dir, &[]).await;
    let m = message(&mut oa.puppet, "7001").await;
    assert_eq!((m.text.as_str(), m.talker_id.as_str()), ("before the restart", ALICE));
    assert_eq!(message(&mut oa.puppet, &sent).await.text, "sent before the restart");
    let fb = oa.puppet.message_file(pb::MessageFileRequest { id: sent_file }).await.unwrap().into_inner().file_box;
    let fb: Value = serde_json::from_str(&fb).unwrap();
    assert_eq!(fb["name"], "sent.png");
    let bytes = base64::engine::general_purpose::STANDARD.decode(fb["base64"].as_str().unwrap()).unwrap();
    assert!(bytes == png, "the file the bot sent, kept across the restart");
    assert!(image_bytes(&mut oa.puppet, "7002").await == photo(1), "fetched from WeChat after the restart");
    assert!(image_bytes(&mut oa.puppet, "7003").await == photo(2));
    assert_eq!(fake.calls("/cgi-bin/media/get").len(), 2, "the image fetched before the restart is not fetched again");
    assert_eq!(oa.puppet.contact_payload(contact(ALICE)).await.unwrap().into_inner().name, "Alice");
    assert_eq!(fake.calls("/cgi-bin/user/info").len(), 1, "the payload cached before the restart");
    let f = oa
        .puppet
        .friendship_payload(pb::FriendshipPayloadRequest { id: friendship, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.contact_id.as_str(), f.hello.as_str()), ("oRestartFan", "qrscene_9"));
    let mut x = extension(&oa.server).await;
    let result = x.get_template_result(ext::GetTemplateResultRequest { msg_id: 88001 }).await.unwrap().into_inner();
    assert_eq!((result.status.as_str(), result.to_user.as_str()), ("failed:user block", ALICE));
    drop(oa);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_durability_always_an_answered_push_survives_a_kill() {
    let fake = FakeWeChat::start(7200).await;
    let dir = std::env::temp_dir().join(format!("puppet-e2e-oa-kill-{}", std::process::id()));
    let always = ["--durability", "always"];
    let oa = online_in(&fake, &dir, &always).await;
    let push = text_push(ALICE, "answered, then killed", 7101);
    assert_eq!(post(oa.http, &push, Mode::Plain).await, (200, "success".to_owned()));
    // SIGKILL the moment the answer is in: nothing is flushed on the way out.
    drop(oa);

    let mut oa = online_in(&fake, &dir, &always).await;
    assert_eq!(message(&mut oa.puppet, "7101").await.text, "answered, then killed");
    // WeChat delivering it again (its answer lost, say) is answered, and not a second message.
    assert_eq!(post(oa.http, &push, Mode::Plain).await, (200, "success".to_owned()));
    assert_eq!(post(oa.http, &text_push(ALICE, "and a new one", 7102), Mode::Plain).await.0, 200);
    let ids: Vec<String> = drain(&mut oa)
        .await
        .into_iter()
        .filter(|(k, _)| *k == kind::MESSAGE)
        .map(|(_, p)| p["messageId"].as_str().unwrap().to_owned())
        .collect();
    assert!(!ids.contains(&"7101".to_owned()) && ids.contains(&"7102".to_owned()), "{ids:?}");
    drop(oa);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_store_answers_pushes_503_and_handles_nothing() {
    let fake = FakeWeChat::start(7200).await;
    let dir = std::env::temp_dir().join(format!("puppet-e2e-oa-full-{}", std::process::id()));
    let mut oa = online_in(&fake, &dir, &["--durability", "always", "--store-max-mib", "1"]).await;
    let big = "满".repeat(16_000);
    let mut kept = vec![];
    let refused = loop {
        assert!(kept.len() < 200, "the 1 MiB store never filled up");
        let id = 7200 + kept.len() as u64;
        let (status, body) = post(oa.http, &text_push(ALICE, &big, id), Mode::Plain).await;
        match status {
            200 => kept.push(id),
            503 => {
                assert!(body.contains("full") && body.contains("again"), "{body}");
                break id;
            }
            other => panic!("unexpected {other}: {body}"),
        }
    };
    for id in &kept {
        assert_eq!(message(&mut oa.puppet, &id.to_string()).await.text.len(), big.len());
    }
    let err = oa.puppet.message_payload(pb::MessagePayloadRequest { id: refused.to_string() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "a push answered 503 reached nobody");
    drop(oa);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_official_account_in_an_accounts_file_takes_pushes_at_its_own_webhook() {
    let fake = FakeWeChat::start(7200).await;
    let dir = std::env::temp_dir().join(format!("puppet-oa-accounts-{}-{}", std::process::id(), nonce()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("news.secret"), APP_SECRET).unwrap();
    let file = dir.join("accounts.toml");
    let accounts = format!(
        "[[account]]\nname = \"shop\"\ntoken = \"puppet_shop_1\"\nbackend = \"mock\"\nlogin_step_ms = 5\n\n\
         [[account]]\nname = \"news\"\ntoken = \"puppet_news_2\"\nbackend = \"official-account\"\n\
         oa_app_id = \"{APP_ID}\"\noa_app_secret_file = \"news.secret\"\noa_token = \"{OA_TOKEN}\"\n\
         oa_api_base = \"{}\"\noa_original_id = \"{ORIGINAL_ID}\"\n",
        fake.base
    );
    std::fs::write(&file, accounts).unwrap();
    let file = file.display().to_string();
    let server = Server::start_in(&dir.join("data"), &["--accounts", &file, "--http-listen", "127.0.0.1:0"]);
    let http = server.http_addr.unwrap();
    let mut news = server.puppet_as("puppet_news_2").await;
    let mut events = Events::open(&mut news).await;
    events.wait_for(kind::READY).await;

    // Its webhook is /wechat/<name>; the one-account path is nobody's here.
    let (path, body) = signed_push(&text_push(ALICE, "hello news", 7001), Mode::Plain, APP_ID);
    let path = path.replacen("/wechat?", "/wechat/news?", 1);
    let (status, _) = http_request(http, "POST", &path, &body).await;
    assert_eq!(status, 200);
    let m = events.wait_for(kind::MESSAGE).await;
    let payload = message(&mut news, m["messageId"].as_str().unwrap()).await;
    assert_eq!((payload.text.as_str(), payload.talker_id.as_str()), ("hello news", ALICE));
    let (path, body) = signed_push(&text_push(ALICE, "lost", 7002), Mode::Plain, APP_ID);
    assert_eq!(http_request(http, "POST", &path, &body).await.0, 404);

    // Each backend's own service, for its own accounts only.
    let err = puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient::with_interceptor(
        server.channel().await,
        Token("puppet_news_2".into()),
    )
    .list_messages(ext::ListMessagesRequest { conversation_id: ALICE.into() })
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert!(err.message().contains("account `news`") && err.message().contains("official-account"), "{err:?}");
    let err = OfficialAccountClient::with_interceptor(server.channel().await, Token("puppet_shop_1".into()))
        .get_menu(ext::GetMenuRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");
    drop(server);
    _ = std::fs::remove_dir_all(dir);
}
