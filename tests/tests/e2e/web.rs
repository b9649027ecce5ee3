//! The `web` backend (the web-WeChat protocol itchat and wechat4u speak), against the faithful fake
//! in `tests/fakes/web/`. First the fake's fidelity: the real itchat-uos and wechat4u log in to it,
//! receive a text and an image, and send a text and a file it records.

use std::path::Path;
use std::time::Duration;

use puppet_tests::fake_web::FakeWeb;
use puppet_tests::{installed, repo_root};

/// How long a client script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(120);

async fn run_script(program: &Path, script: &str, fake: &FakeWeb, env: &[(&str, String)]) {
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(repo_root().join(script)).env("FAKE_WEB_BASE", &fake.base).kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {SCRIPT_TIMEOUT:?}"))
        .expect("run the client script");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}", out.status);
    assert!(stdout.lines().any(|l| l.ends_with(": ok")), "{script} did not reach its end:\n{stdout}\n{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn itchat_accepts_the_fake() {
    let python = installed("PUPPET_TEST_WEB_FIDELITY", "itchat-uos 1.4.1 and wechat4u 0.7.14").join("venv/bin/python");
    let fake = FakeWeb::start().await;
    fake.set_auto_login(true);
    run_script(&python, "tests/fakes/web/itchat_fidelity.py", &fake, &[]).await;
    // What the fake saw: desktop mode with the UOS headers, paged contacts, the sends.
    let jslogin = fake.calls("jslogin");
    assert!(jslogin[0].query["redirect_uri"].contains("mod=desktop"), "{:?}", jslogin[0].query);
    let exchange = fake.calls("webwxnewloginpage");
    assert_eq!(exchange[0].headers.get("client-version").map(String::as_str), Some("2.0.0"));
    assert!(exchange[0].headers.contains_key("extspam"));
    assert!(fake.calls("webwxgetcontact").len() >= 2, "contacts came in pages");
    assert_eq!(fake.calls("webwxsendmsg").len(), 1);
    assert_eq!(fake.uploads()[0].chunks, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wechat4u_accepts_the_fake() {
    let modules =
        installed("PUPPET_TEST_WEB_FIDELITY", "itchat-uos 1.4.1 and wechat4u 0.7.14").join("npm/node_modules");
    let fake = FakeWeb::start().await;
    fake.set_auto_login(true);
    run_script(
        Path::new("node"),
        "tests/fakes/web/wechat4u_fidelity.js",
        &fake,
        &[("NODE_PATH", modules.display().to_string())],
    )
    .await;
    let exchange = fake.calls("webwxnewloginpage");
    assert!(exchange[0].headers.contains_key("extspam"));
    assert_eq!(fake.uploads().len(), 1);
    assert!(fake.max_batch() <= 50);
}

// ---- puppet-server --backend web against the fake ------------------------------------------------

use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::fake_web::{Inject, LoginState, SELF_WXID};
use puppet_tests::{Events, PuppetClientT, Server};
use serde_json::Value;

mod kind {
    pub const MESSAGE: i32 = 2;
    pub const ERROR: i32 = 16;
    pub const FRIENDSHIP: i32 = 17;
    pub const ROOM_JOIN: i32 = 19;
    pub const ROOM_LEAVE: i32 = 20;
    pub const ROOM_TOPIC: i32 = 21;
    pub const SCAN: i32 = 22;
    pub const READY: i32 = 23;
    pub const LOGIN: i32 = 25;
    pub const LOGOUT: i32 = 26;
}

struct Web {
    server: Server,
    puppet: PuppetClientT,
    events: Events,
    me: String,
}

fn env_of(fake: &FakeWeb) -> Vec<(&'static str, String)> {
    let mut env = fake.server_env();
    env.push(("PUPPET_WEB_POLL_TIMEOUT_SECS", "10".into()));
    env
}

/// Starts a server on the web backend (in `dir` if given) and opens its event stream.
async fn start(fake: &FakeWeb, dir: Option<&Path>) -> (Server, PuppetClientT, Events) {
    let env = env_of(fake);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let server = match dir {
        Some(d) => Server::start_in_with_env(d, &["--backend", "web"], &env),
        None => Server::start_with_env(&["--backend", "web"], &env),
    };
    let mut puppet = server.puppet().await;
    let events = Events::open(&mut puppet).await;
    (server, puppet, events)
}

/// The payload of the first MESSAGE in the account's event log, read through the resumable feed
/// from its beginning.
async fn first_stored_message(server: &Server) -> serde_json::Value {
    use puppet_proto::pb::puppet_rs::v1 as ext;
    let request = ext::SubscribeRequest { after_seq: Some(0), replay_state: false, log_id: String::new() };
    let mut feed = server.feed().await.subscribe(request).await.expect("EventFeed.Subscribe").into_inner();
    loop {
        let e = tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, feed.message())
            .await
            .expect("no MESSAGE in the event log within the timeout")
            .expect("the feed failed")
            .expect("the feed ended");
        if e.r#type == kind::MESSAGE {
            return serde_json::from_str(&e.payload).expect("a MESSAGE payload is JSON");
        }
    }
}

/// Scans and confirms the QR the server shows; LOGIN and READY follow.
async fn scan_in(fake: &FakeWeb, events: &mut Events) -> String {
    let scan = events.wait_until(kind::SCAN, |p| p["status"] == 2).await;
    let qr = scan["qrcode"].as_str().unwrap().to_owned();
    let uuid = fake.latest_uuid().unwrap();
    assert_eq!(qr, format!("https://login.weixin.qq.com/l/{uuid}"));
    fake.wait("the login poll", |s| s.login == Some(LoginState::Waiting) && s.calls.contains_key("login")).await;
    fake.scan().await;
    let scanned = events.wait_until(kind::SCAN, |p| p["status"] == 3).await;
    // The 201's `window.userAvatar` (the phone's avatar) rides in the scan payload's `data`.
    use base64::Engine;
    let avatar = base64::engine::general_purpose::STANDARD.encode(puppet_tests::fake_web::TINY_PNG);
    assert_eq!(scanned["data"], format!("data:img/jpg;base64,{avatar}"), "{scanned}");
    fake.confirm().await;
    events.wait_until(kind::SCAN, |p| p["status"] == 4).await;
    let login = events.wait_for(kind::LOGIN).await;
    events.wait_for(kind::READY).await;
    login["contactId"].as_str().unwrap().to_owned()
}

async fn online(fake: &FakeWeb) -> Web {
    let (server, puppet, mut events) = start(fake, None).await;
    let me = scan_in(fake, &mut events).await;
    Web { server, puppet, events, me }
}

async fn contact_named(p: &mut PuppetClientT, name: &str) -> String {
    let ids = p.contact_list(pb::ContactListRequest {}).await.unwrap().into_inner().ids;
    for id in ids {
        let c = p.contact_payload(pb::ContactPayloadRequest { id: id.clone() }).await.unwrap().into_inner();
        if c.name == name {
            return id;
        }
    }
    panic!("no contact named {name}");
}

async fn room_named(p: &mut PuppetClientT, topic: &str) -> String {
    let ids = p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids;
    for id in ids {
        let r = p.room_payload(pb::RoomPayloadRequest { id: id.clone() }).await.unwrap().into_inner();
        if r.topic == topic {
            return id;
        }
    }
    panic!("no room with topic {topic}");
}

async fn message(p: &mut PuppetClientT, id: &str) -> pb::MessagePayloadResponse {
    p.message_payload(pb::MessagePayloadRequest { id: id.into() }).await.unwrap().into_inner()
}

/// The next MESSAGE event's payload.
async fn next_message(w: &mut Web) -> pb::MessagePayloadResponse {
    let ev: Value = w.events.wait_for(kind::MESSAGE).await;
    message(&mut w.puppet, ev["messageId"].as_str().unwrap()).await
}

async fn download(p: &mut PuppetClientT, filebox_json: &str) -> Vec<u8> {
    let fb: Value = serde_json::from_str(filebox_json).unwrap();
    if let Some(b) = fb["base64"].as_str() {
        use base64::Engine;
        return base64::engine::general_purpose::STANDARD.decode(b).unwrap();
    }
    let id = fb["uuid"].as_str().unwrap_or_else(|| panic!("a blob FileBox: {fb}"));
    let mut stream = p.download(pb::DownloadRequest { id: id.into() }).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        out.extend_from_slice(&m.chunk);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_by_scan_loads_contacts_and_rooms() {
    let fake = FakeWeb::start().await;
    let mut w = online(&fake).await;
    let mut p = w.puppet.clone();
    let me = p.contact_payload(pb::ContactPayloadRequest { id: w.me.clone() }).await.unwrap().into_inner();
    assert_eq!(me.name, "PuppetBot");
    // Contacts came in pages of 3; rooms were batch-fetched with their members.
    assert!(fake.calls("webwxgetcontact").len() >= 3);
    assert!(fake.max_batch() <= 50);
    let dave = contact_named(&mut p, "Dave").await;
    let c = p.contact_payload(pb::ContactPayloadRequest { id: dave.clone() }).await.unwrap().into_inner();
    assert_eq!(c.alias, "dave-remark");
    assert!(c.friend);
    let news = contact_named(&mut p, "News Daily").await;
    let c = p.contact_payload(pb::ContactPayloadRequest { id: news }).await.unwrap().into_inner();
    assert_eq!(c.r#type, 2, "VerifyFlag 24 is an official account");
    let room = room_named(&mut p, "Friends").await;
    let r = p.room_payload(pb::RoomPayloadRequest { id: room.clone() }).await.unwrap().into_inner();
    assert_eq!(r.member_ids.len(), 4);
    assert!(r.member_ids.contains(&w.me));
    let m = p
        .room_member_payload(pb::RoomMemberPayloadRequest { id: room.clone(), member_id: r.member_ids[1].clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((m.name.as_str(), m.room_alias.as_str()), ("Alice", "Ali"));
    // The desktop (UOS) login: mod=desktop and the headers on the ticket exchange.
    assert!(fake.calls("jslogin")[0].query["redirect_uri"].contains("mod=desktop"));
    let ex = &fake.calls("webwxnewloginpage")[0];
    assert_eq!(ex.headers.get("client-version").map(String::as_str), Some("2.0.0"));
    assert!(ex.headers.contains_key("extspam"));
    drop(w.events);
    w.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_of_every_kind_arrive_and_go_out() {
    let fake = FakeWeb::start().await;
    let mut w = online(&fake).await;
    let mut p = w.puppet.clone();
    let alice = contact_named(&mut p, "Alice").await;
    let friends = room_named(&mut p, "Friends").await;
    let from = |s: &str| s.to_owned();

    // Text, HTML-escaped with a newline and an emoji span.
    fake.inject(Inject::Text { from: from("wxid_alice"), to: SELF_WXID.into(), text: "hi <bot> & co\nline 2".into() })
        .await;
    let m = next_message(&mut w).await;
    assert_eq!((m.r#type, m.talker_id.as_str(), m.text.as_str()), (7, alice.as_str(), "hi <bot> & co\nline 2"));
    assert_eq!(m.listener_id, w.me);
    let first_text = m.id.clone();

    // A member the room did not list yet: the room is fetched again, the talker is known.
    fake.add_member_silently("1001@chatroom", "wxid_hana", "Hana");
    fake.inject(Inject::RoomText { room: "1001@chatroom".into(), member: "wxid_hana".into(), text: "new here".into() })
        .await;
    let m = next_message(&mut w).await;
    let hana = p.contact_payload(pb::ContactPayloadRequest { id: m.talker_id.clone() }).await.unwrap().into_inner();
    assert_eq!((hana.name.as_str(), m.room_id.as_str()), ("Hana", friends.as_str()));

    // A contact card.
    fake.inject(Inject::Card { from: from("wxid_alice"), card: "wxid_dave".into() }).await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 3);
    let shared = p.message_contact(pb::MessageContactRequest { id: m.id.clone() }).await.unwrap().into_inner().id;
    assert_eq!(shared, contact_named(&mut p, "Dave").await);

    // Sent from the bot's phone: the bot is the talker.
    fake.inject(Inject::Text { from: SELF_WXID.into(), to: "wxid_bob".into(), text: "from my phone".into() }).await;
    let m = next_message(&mut w).await;
    let bob = contact_named(&mut p, "Bob").await;
    assert_eq!((m.talker_id.as_str(), m.listener_id.as_str()), (w.me.as_str(), bob.as_str()));
    // Avatars come through the session (cookies), into the blob store.
    let a = p.contact_avatar(pb::ContactAvatarRequest { id: alice.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(download(&mut p, &a.into_inner().file_box).await, puppet_tests::fake_web::TINY_PNG);

    // A room text from a member, mentioning the bot with U+2005.
    fake.inject(Inject::RoomText {
        room: "1001@chatroom".into(),
        member: "wxid_erin".into(),
        text: "@PuppetBot\u{2005}are you there".into(),
    })
    .await;
    let m = next_message(&mut w).await;
    assert_eq!(m.room_id, friends);
    assert_eq!(m.text, "@PuppetBot\u{2005}are you there");
    assert_eq!(m.mention_ids, vec![w.me.clone()]);
    let erin = p.contact_payload(pb::ContactPayloadRequest { id: m.talker_id.clone() }).await.unwrap().into_inner();
    assert_eq!(erin.name, "Erin");

    // Media: image, voice, video (Range), emoticon, file.
    let image: Vec<u8> = (0..3000u32).map(|i| (i * 7) as u8).collect();
    fake.inject(Inject::Image { from: from("wxid_alice"), member: None, bytes: image.clone() }).await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 6);
    let fb = p.message_image(pb::MessageImageRequest { id: m.id.clone(), r#type: 3 }).await.unwrap().into_inner();
    assert_eq!(download(&mut p, &fb.file_box).await, image);

    let voice = b"ID3 voice bytes".to_vec();
    fake.inject(Inject::Voice { from: from("wxid_bob"), bytes: voice.clone(), ms: 2000 }).await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 2);
    let fb = p.message_file(pb::MessageFileRequest { id: m.id.clone() }).await.unwrap().into_inner();
    assert_eq!(download(&mut p, &fb.file_box).await, voice);

    let video: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    fake.inject(Inject::Video { from: from("wxid_bob"), bytes: video.clone(), seconds: 3 }).await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 15);
    let fb = p.message_file(pb::MessageFileRequest { id: m.id.clone() }).await.unwrap().into_inner();
    assert_eq!(download(&mut p, &fb.file_box).await, video);
    assert_eq!(fake.calls("webwxgetvideo")[0].headers.get("range").map(String::as_str), Some("bytes=0-"));

    fake.inject(Inject::Emoticon { from: from("wxid_carol"), bytes: b"GIF89a".to_vec() }).await;
    assert_eq!(next_message(&mut w).await.r#type, 5);

    let doc = b"%PDF-1.4 a small report".to_vec();
    fake.inject(Inject::File { from: from("wxid_alice"), name: "report.pdf".into(), bytes: doc.clone() }).await;
    let m = next_message(&mut w).await;
    assert_eq!((m.r#type, m.filename.as_str()), (1, "report.pdf"));
    let fb = p.message_file(pb::MessageFileRequest { id: m.id.clone() }).await.unwrap().into_inner();
    assert_eq!(download(&mut p, &fb.file_box).await, doc);
    // Forwarding the file resends it by the original's MediaId with Scene 2, no upload.
    let media_id = fake.calls("webwxgetmedia").pop().unwrap().query["mediaid"].clone();
    let uploads = fake.uploads().len();
    let bob = contact_named(&mut p, "Bob").await;
    p.message_forward(pb::MessageForwardRequest { message_id: m.id.clone(), conversation_id: bob }).await.unwrap();
    let fwd = fake.calls("webwxsendappmsg").pop().unwrap();
    let content = fwd.body["Msg"]["Content"].as_str().unwrap();
    assert!(content.contains(&format!("<attachid>{media_id}</attachid>")), "{content}");
    assert!(content.contains("<title>report.pdf</title>"), "{content}");
    assert!(content.contains(&format!("<totallen>{}</totallen>", doc.len())), "{content}");
    assert_eq!(fwd.body["Scene"], 2);
    assert_eq!(fwd.body["Msg"]["ToUserName"], fake.at_id("wxid_bob").as_str());
    assert_eq!(fake.uploads().len(), uploads);

    // Link share and mini program.
    fake.inject(Inject::Url {
        from: from("wxid_alice"),
        title: "A page".into(),
        description: "about it".into(),
        url: "https://example.com/p".into(),
    })
    .await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 14);
    let u = p.message_url(pb::MessageUrlRequest { id: m.id.clone() }).await.unwrap().into_inner().url_link.unwrap();
    assert_eq!(
        (u.title.as_str(), u.url.as_str(), u.description.as_str()),
        ("A page", "https://example.com/p", "about it")
    );
    fake.inject(Inject::MiniProgram {
        from: from("wxid_bob"),
        title: "Mini".into(),
        appid: "wx1234".into(),
        pagepath: "pages/index".into(),
    })
    .await;
    let m = next_message(&mut w).await;
    assert_eq!(m.r#type, 9);
    let mp = p.message_mini_program(pb::MessageMiniProgramRequest { id: m.id.clone() }).await.unwrap().into_inner();
    let mp = mp.mini_program.unwrap();
    assert_eq!((mp.appid.as_str(), mp.page_path.as_str()), ("wx1234", "pages/index"));

    // A shared location.
    fake.inject(Inject::Location {
        from: from("wxid_carol"),
        label: "Shenzhen Bay".into(),
        poiname: "Bay Park".into(),
        x: 22.5,
        y: 113.9,
    })
    .await;
    let loc = next_message(&mut w).await;
    assert_eq!((loc.r#type, loc.text.as_str()), (8, "Shenzhen Bay"));
    let l = p.message_location(pb::MessageLocationRequest { id: loc.id.clone() }).await.unwrap().into_inner();
    let l = l.location.unwrap();
    assert_eq!(
        (l.latitude, l.longitude, l.name.as_str(), l.address.as_str()),
        (22.5, 113.9, "Bay Park", "Shenzhen Bay")
    );

    // A recall of an earlier message.
    fake.inject(Inject::Recall { from: from("wxid_alice"), msg_id: m.id.clone() }).await;
    let r = next_message(&mut w).await;
    assert_eq!((r.r#type, r.text.as_str()), (13, m.id.as_str()));

    // A friend request.
    fake.inject(Inject::FriendRequest {
        wxid: "wxid_frank".into(),
        nick: "Frank".into(),
        hello: "hi, I'm Frank".into(),
    })
    .await;
    let ev = w.events.wait_for(kind::FRIENDSHIP).await;
    let f = p
        .friendship_payload(pb::FriendshipPayloadRequest {
            id: ev["friendshipId"].as_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((f.r#type, f.hello.as_str()), (2, "hi, I'm Frank"));
    p.friendship_accept(pb::FriendshipAcceptRequest { id: f.id.clone() }).await.unwrap();
    let v = fake.calls("webwxverifyuser");
    assert_eq!(v[0].body["Opcode"], 3);
    assert!(v[0].body["VerifyUserList"][0]["VerifyUserTicket"].as_str().unwrap().starts_with("v2_"));
    // WeChat confirms with "你已添加了Frank…": a FRIENDSHIP (confirm) with the same contact.
    let ev = w.events.wait_for(kind::FRIENDSHIP).await;
    let c = p
        .friendship_payload(pb::FriendshipPayloadRequest {
            id: ev["friendshipId"].as_str().unwrap().into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((c.r#type, c.contact_id.as_str()), (1, f.contact_id.as_str()));
    let frank = p.contact_payload(pb::ContactPayloadRequest { id: f.contact_id.clone() }).await.unwrap().into_inner();
    assert_eq!((frank.name.as_str(), frank.friend), ("Frank", true));

    // Out: text, text with a mention, image (2 chunks), file, recall.
    let sent = p
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: alice.clone(),
            text: "hello <Alice>".into(),
            mentional_ids: vec![],
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let call = fake.calls("webwxsendmsg").pop().unwrap();
    assert_eq!(call.body["Msg"]["ToUserName"], fake.at_id("wxid_alice").as_str());
    assert_eq!(call.body["Msg"]["Content"], "hello <Alice>");
    assert_eq!(call.body["Msg"]["LocalID"], call.body["Msg"]["ClientMsgId"]);
    let room = p.room_payload(pb::RoomPayloadRequest { id: friends.clone() }).await.unwrap().into_inner();
    let alice_in_room = room.member_ids.iter().find(|i| **i == alice).unwrap().clone();
    p.message_send_text(pb::MessageSendTextRequest {
        conversation_id: friends.clone(),
        text: "look".into(),
        mentional_ids: vec![alice_in_room],
    })
    .await
    .unwrap();
    let call = fake.calls("webwxsendmsg").pop().unwrap();
    assert_eq!(call.body["Msg"]["Content"], "@Ali\u{2005}look");
    assert_eq!(call.body["Msg"]["ToUserName"], fake.at_id("1001@chatroom").as_str());

    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let big: Vec<u8> = (0..700_000u32).map(|i| (i % 253) as u8).collect();
    let fb = serde_json::json!({"type": 1, "name": "photo.jpg", "base64": b64(&big)}).to_string();
    let photo = p
        .message_send_file(pb::MessageSendFileRequest { conversation_id: alice.clone(), file_box: fb })
        .await
        .unwrap()
        .into_inner()
        .id;
    let up = fake.uploads().pop().unwrap();
    assert_eq!((up.chunks, up.mediatype.as_str(), up.bytes.len()), (2, "pic", big.len()));
    assert_eq!(up.bytes, big);
    let img = fake.calls("webwxsendmsgimg").pop().unwrap();
    assert_eq!(
        (img.body["Msg"]["Type"].as_u64(), img.body["Msg"]["MediaId"].as_str()),
        (Some(3), Some(up.media_id.as_str()))
    );
    // Forwarding the image resends the same MediaId (Scene 2) without uploading again.
    let uploads = fake.uploads().len();
    let bob_id = contact_named(&mut p, "Bob").await;
    p.message_forward(pb::MessageForwardRequest { message_id: photo, conversation_id: bob_id }).await.unwrap();
    let fwd = fake.calls("webwxsendmsgimg").pop().unwrap();
    assert_eq!(
        (fwd.body["Msg"]["Type"].as_u64(), fwd.body["Msg"]["MediaId"].as_str(), fwd.body["Scene"].as_u64()),
        (Some(3), Some(up.media_id.as_str()), Some(2))
    );
    assert_eq!(fwd.body["Msg"]["ToUserName"], fake.at_id("wxid_bob").as_str());
    assert_eq!(fake.uploads().len(), uploads);

    let fb = serde_json::json!({"type": 1, "name": "notes.txt", "base64": b64(b"some notes")}).to_string();
    p.message_send_file(pb::MessageSendFileRequest { conversation_id: alice.clone(), file_box: fb }).await.unwrap();
    let up = fake.uploads().pop().unwrap();
    assert_eq!((up.chunks, up.mediatype.as_str(), up.bytes.as_slice()), (1, "doc", &b"some notes"[..]));
    let app = fake.calls("webwxsendappmsg").pop().unwrap();
    let content = app.body["Msg"]["Content"].as_str().unwrap();
    assert!(content.contains("<title>notes.txt</title>") && content.contains(&up.media_id), "{content}");

    let recalled = p.message_recall(pb::MessageRecallRequest { id: sent.clone() }).await.unwrap().into_inner();
    assert!(recalled.success);
    let rv = fake.calls("webwxrevokemsg").pop().unwrap();
    assert_eq!(rv.body["SvrMsgId"], sent.as_str());
    assert_eq!(rv.body["ClientMsgId"], call_client(&fake, "hello <Alice>"));

    // 1205 (too frequent) is waited out once, then answered.
    fake.fail_sends(&[1205]);
    p.message_send_text(pb::MessageSendTextRequest {
        conversation_id: alice.clone(),
        text: "again".into(),
        mentional_ids: vec![],
    })
    .await
    .unwrap();
    // Forwarding a text resends it.
    let bob = contact_named(&mut p, "Bob").await;
    p.message_forward(pb::MessageForwardRequest { message_id: first_text, conversation_id: bob.clone() })
        .await
        .unwrap();
    let fwd = fake.calls("webwxsendmsg").pop().unwrap();
    assert_eq!(fwd.body["Msg"]["Content"], "hi <bot> & co\nline 2");
    assert_eq!(fwd.body["Msg"]["ToUserName"], fake.at_id("wxid_bob").as_str());

    // Still too frequent after two pauses: RESOURCE_EXHAUSTED saying so.
    fake.fail_sends(&[1205, 1205, 1205]);
    let err = p
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: alice.clone(),
            text: "and again".into(),
            mentional_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    assert!(err.message().contains("1205") && err.message().contains("too frequent"), "{}", err.message());
    // What the protocol cannot do names the limit.
    let err = p
        .message_send_url(pb::MessageSendUrlRequest {
            conversation_id: alice.clone(),
            url_link: Some(pb::UrlLinkPayload { url: "https://example.com".into(), ..Default::default() }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    assert!(err.message().contains("web WeChat"), "{}", err.message());
    drop(w.events);
    w.server.terminate();
}

/// The ClientMsgId the bot sent with the text `content`.
fn call_client(fake: &FakeWeb, content: &str) -> Value {
    fake.calls("webwxsendmsg").into_iter().find(|c| c.body["Msg"]["Content"] == content).unwrap().body["Msg"]["ClientMsgId"]
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_join_leave_and_topic_are_events() {
    let fake = FakeWeb::start().await;
    let mut w = online(&fake).await;
    let mut p = w.puppet.clone();
    let work = room_named(&mut p, "Work").await;
    let carol = contact_named(&mut p, "Carol").await;

    fake.inject(Inject::RoomJoin {
        room: "1002@chatroom".into(),
        inviter: "wxid_carol".into(),
        member: "wxid_gina".into(),
        member_nick: "Gina".into(),
    })
    .await;
    let join = w.events.wait_for(kind::ROOM_JOIN).await;
    assert_eq!(join["roomId"], work.as_str());
    assert_eq!(join["inviterId"], carol.as_str());
    let gina = join["inviteeIdList"][0].as_str().unwrap().to_owned();
    let r = p.room_payload(pb::RoomPayloadRequest { id: work.clone() }).await.unwrap().into_inner();
    assert!(r.member_ids.contains(&gina) && r.member_ids.len() == 4);
    let m = p
        .room_member_payload(pb::RoomMemberPayloadRequest { id: work.clone(), member_id: gina.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(m.name, "Gina");

    fake.inject(Inject::RoomLeave { room: "1002@chatroom".into(), member: "wxid_gina".into() }).await;
    let leave = w.events.wait_for(kind::ROOM_LEAVE).await;
    assert_eq!(leave["roomId"], work.as_str());
    assert_eq!(leave["removeeIdList"][0], gina.as_str());
    let r = p.room_payload(pb::RoomPayloadRequest { id: work.clone() }).await.unwrap().into_inner();
    assert!(!r.member_ids.contains(&gina));

    fake.inject(Inject::RoomTopic { room: "1002@chatroom".into(), by: "wxid_carol".into(), topic: "Work 2".into() })
        .await;
    let topic = w.events.wait_for(kind::ROOM_TOPIC).await;
    assert_eq!((topic["oldTopic"].as_str(), topic["newTopic"].as_str()), (Some("Work"), Some("Work 2")));
    assert_eq!(topic["changerId"], carol.as_str());

    // The bot's own room operations go through webwxupdatechatroom.
    p.room_topic(pb::RoomTopicRequest { id: work.clone(), topic: Some("Work 3".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(fake.calls("webwxupdatechatroom").pop().unwrap().query["fun"], "modtopic");
    let t = w.events.wait_until(kind::ROOM_TOPIC, |t| t["newTopic"] == "Work 3").await;
    assert_eq!(t["changerId"], w.me.as_str());
    let bob = contact_named(&mut p, "Bob").await;
    p.room_add(pb::RoomAddRequest { id: work.clone(), contact_id: bob.clone(), ..Default::default() }).await.unwrap();
    assert_eq!(fake.calls("webwxupdatechatroom").pop().unwrap().query["fun"], "addmember");
    let join = w.events.wait_for(kind::ROOM_JOIN).await;
    assert_eq!(join["inviteeIdList"][0], bob.as_str());
    p.room_del(pb::RoomDelRequest { id: work.clone(), contact_id: bob.clone(), ..Default::default() }).await.unwrap();
    let leave = w.events.wait_for(kind::ROOM_LEAVE).await;
    assert_eq!(leave["removeeIdList"][0], bob.as_str());
    assert!(!fake.room_members("1002@chatroom").contains(&"wxid_bob".to_owned()));
    // The remark (alias) goes through webwxoplog.
    p.contact_alias(pb::ContactAliasRequest { id: bob.clone(), alias: Some("bobby".into()), ..Default::default() })
        .await
        .unwrap();
    assert_eq!(fake.calls("webwxoplog").pop().unwrap().body["RemarkName"], "bobby");
    let c = p.contact_payload(pb::ContactPayloadRequest { id: bob.clone() }).await.unwrap().into_inner();
    assert_eq!(c.alias, "bobby");
    let err = p.room_quit(pb::RoomQuitRequest { id: work.clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    drop(w.events);
    w.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kick_1101_is_a_logout_naming_the_reason() {
    let fake = FakeWeb::start().await;
    let mut w = online(&fake).await;
    fake.kick(1101).await;
    let logout = w.events.wait_for(kind::LOGOUT).await;
    assert_eq!(logout["contactId"], w.me.as_str());
    let data = logout["data"].as_str().unwrap();
    assert!(data.contains("1101") && data.contains("logged in elsewhere"), "{data}");
    // Nothing is sent for a dead session.
    let err = w
        .puppet
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: w.me.clone(),
            text: "x".into(),
            mentional_ids: vec![],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::FailedPrecondition);
    drop(w.events);
    w.server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_account_1203_is_a_logout_with_the_platforms_words() {
    let fake = FakeWeb::start().await;
    fake.set_refused(true);
    let (mut server, _puppet, mut events) = start(&fake, None).await;
    events.wait_until(kind::SCAN, |p| p["status"] == 2).await;
    fake.wait("the login poll", |s| s.calls.contains_key("login")).await;
    fake.scan().await;
    fake.confirm().await;
    let logout = events.wait_for(kind::LOGOUT).await;
    let data = logout["data"].as_str().unwrap();
    assert!(data.contains("1203") && data.contains("不能登录网页微信"), "{data}");
    assert!(fake.calls("webwxinit").is_empty(), "no init after a refusal");
    drop(events);
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_the_session_without_a_scan() {
    let fake = FakeWeb::start().await;
    let dir = std::env::temp_dir().join(format!("puppet-web-reload-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let (mut server, mut p, mut events) = start(&fake, Some(&dir)).await;
    let me = scan_in(&fake, &mut events).await;
    let alice = contact_named(&mut p, "Alice").await;
    let friends = room_named(&mut p, "Friends").await;
    drop(events);
    server.terminate();

    // A message that arrives while the server is down is delivered after the restart.
    fake.inject(Inject::Text { from: "wxid_alice".into(), to: SELF_WXID.into(), text: "while you were away".into() })
        .await;
    let (mut server, mut p, mut events) = start(&fake, Some(&dir)).await;
    let login = events.wait_for(kind::LOGIN).await;
    assert_eq!(login["contactId"], me.as_str());
    assert_eq!(fake.sessions(), 1, "the same session, no second ticket exchange");
    assert_eq!(fake.attempts(), 1, "no new QR code");
    // The restarted server resumes, and may deliver the message, before this test's `Event`
    // stream opens (which replays only the login): read it from the feed, which replays the store.
    let ev = first_stored_message(&server).await;
    let m = message(&mut p, ev["messageId"].as_str().unwrap()).await;
    assert_eq!((m.text.as_str(), m.talker_id.as_str()), ("while you were away", alice.as_str()));
    assert_eq!(contact_named(&mut p, "Alice").await, alice);
    assert_eq!(room_named(&mut p, "Friends").await, friends);
    drop(events);
    server.terminate();

    // The session dies while the server is down: the next start shows a QR again, and after the
    // scan the new session's new @ids map to the same puppet ids.
    fake.kick(1101).await;
    let jslogins = fake.calls("jslogin").len();
    let (mut server, mut p, mut events) = start(&fake, Some(&dir)).await;
    assert_eq!(scan_in(&fake, &mut events).await, me);
    assert_eq!(fake.sessions(), 2);
    // The phone was asked to confirm (push login with the old session's cookies), no new jslogin.
    assert_eq!(fake.calls("webwxpushloginurl").len(), 1);
    assert_eq!(fake.calls("jslogin").len(), jslogins);
    assert_eq!(contact_named(&mut p, "Alice").await, alice);
    assert_eq!(contact_named(&mut p, "Dave").await.len(), alice.len());
    assert_eq!(room_named(&mut p, "Friends").await, friends);
    drop(events);
    server.terminate();
    _ = std::fs::remove_dir_all(&dir);
}

/// The official Node Wechaty client's ding-dong bot, through puppet-server on the web backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_wechaty_client_plays_ding_dong() {
    use tokio::io::AsyncBufReadExt;
    let node_modules = installed("WECHATY_NODE_MODULES", "npm wechaty + wechaty-puppet-service");
    let fake = FakeWeb::start().await;
    let (mut server, _puppet, events) = start(&fake, None).await;
    drop(events);
    let home = server.data_dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(repo_root().join("tests/compat/node/web_dingdong.js"))
        .current_dir(&home)
        .env("HOME", &home)
        .env("NODE_PATH", &node_modules)
        .env("WECHATY_PUPPET_SERVICE_ENDPOINT", server.addr.to_string())
        .env("WECHATY_PUPPET_SERVICE_TOKEN", puppet_tests::TOKEN)
        .env("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT", "true")
        .env("WECHATY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run node");
    let mut out = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen: Vec<String> = vec![];
    // A line seen already counts (Wechaty prints `ready` and `login` in either order).
    let mut expect_line = async |want: &str| -> String {
        if let Some(line) = seen.iter().find(|l| l.starts_with(want)) {
            return line.clone();
        }
        let found = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = out.next_line().await.unwrap() {
                seen.push(line.clone());
                if line.starts_with(want) {
                    return Some(line);
                }
            }
            None
        })
        .await;
        match found {
            Ok(Some(line)) => line,
            _ => panic!("no `{want}` from the Node bot; it printed {seen:?}"),
        }
    };
    let scan = expect_line("scan 2 ").await;
    assert!(scan.ends_with(&fake.latest_uuid().unwrap()), "{scan}");
    fake.wait("the login poll", |s| s.calls.contains_key("login")).await;
    fake.scan().await;
    fake.confirm().await;
    let login = expect_line("login ").await;
    assert!(login.ends_with(" PuppetBot"), "{login}");
    expect_line("READY").await;

    fake.inject(Inject::Text { from: "wxid_alice".into(), to: SELF_WXID.into(), text: "ding".into() }).await;
    expect_line("message Alice \"ding\"").await;
    expect_line("dong sent").await;
    let dong = fake.calls("webwxsendmsg").into_iter().find(|c| c.body["Msg"]["Content"] == "dong").expect("dong sent");
    assert_eq!(dong.body["Msg"]["ToUserName"], fake.at_id("wxid_alice").as_str());

    fake.inject(Inject::Text { from: "wxid_alice".into(), to: SELF_WXID.into(), text: "bye".into() }).await;
    expect_line("COMPAT OK").await;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success());
    server.terminate();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_qr_code_is_renewed_a_bounded_number_of_times() {
    let fake = FakeWeb::start().await;
    let mut env = env_of(&fake);
    env.push(("PUPPET_WEB_QR_CODES", "2".into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start_with_env(&["--backend", "web", "--http-listen", "127.0.0.1:0"], &env);
    let mut p = server.puppet().await;
    let mut events = Events::open(&mut p).await;
    let first = events.wait_until(kind::SCAN, |s| s["status"] == 2).await;
    // The side port's QR page shows the same code.
    let http = server.http_addr.unwrap();
    let (status, page) = puppet_tests::http_get(http, &format!("/qrcode?token={}", puppet_tests::TOKEN)).await;
    assert_eq!(status, 200);
    let uuid = fake.latest_uuid().unwrap();
    assert!(page.contains(&uuid), "{page}");
    fake.wait("the first poll", |s| s.calls.contains_key("login")).await;
    fake.expire().await;
    events.wait_until(kind::SCAN, |s| s["status"] == 5).await;
    let second = events.wait_until(kind::SCAN, |s| s["status"] == 2).await;
    assert_ne!(first["qrcode"], second["qrcode"], "a new QR code");
    fake.wait("the second attempt", |s| s.attempts == 2 && s.login == Some(LoginState::Waiting)).await;
    fake.expire().await;
    // Two codes were the limit: an ERROR naming the setting, no third code.
    let err = events.wait_for(kind::ERROR).await;
    assert!(err["data"].as_str().unwrap().contains("PUPPET_WEB_QR_CODES"), "{err}");
    assert_eq!(fake.attempts(), 2);
    // Start begins again.
    p.start(pb::StartRequest {}).await.unwrap();
    events.wait_until(kind::SCAN, |s| s["status"] == 2).await;
    assert!(!scan_in_after_shown(&fake, &mut events).await.is_empty());
    drop(events);
    server.terminate();
}

/// As [`scan_in`], once the SCAN (waiting) event was seen already.
async fn scan_in_after_shown(fake: &FakeWeb, events: &mut Events) -> String {
    fake.wait("a login poll", |s| s.login == Some(LoginState::Waiting) && s.attempts == 3).await;
    fake.scan().await;
    fake.confirm().await;
    let login = events.wait_for(kind::LOGIN).await;
    login["contactId"].as_str().unwrap().to_owned()
}

/// The README's start command, as far as a test may run it: its environment (the backend from it;
/// the side port on a free port instead of 8789, and the login host pointed at the fake, as the
/// tests never contact WeChat), then the QR page it names.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_start_command_shows_a_qr_code() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## Web WeChat (itchat's protocol)").nth(1).expect("the README section");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let words: Vec<&str> = block.split_whitespace().collect();
    assert!(block.contains("cargo run --release -p puppet-server"), "{block}");
    let env: Vec<(&str, &str)> = words.iter().filter_map(|w| w.split_once('=')).collect();
    assert_eq!(env.iter().find(|(k, _)| *k == "PUPPET_BACKEND"), Some(&("PUPPET_BACKEND", "web")));
    assert!(env.iter().any(|(k, _)| *k == "PUPPET_HTTP_LISTEN"), "{block}");
    let path = section.split("`http://127.0.0.1:8789").nth(1).and_then(|r| r.split('`').next()).expect("the QR page");
    assert_eq!(path, "/qrcode?token=<token>");

    let fake = FakeWeb::start().await;
    let mut run_env: Vec<(&str, String)> =
        env.iter().filter(|(k, _)| *k != "PUPPET_HTTP_LISTEN").map(|(k, v)| (*k, v.to_string())).collect();
    run_env.extend(env_of(&fake));
    let run_env: Vec<(&str, &str)> = run_env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut server = Server::start_with_env(&["--http-listen", "127.0.0.1:0"], &run_env);
    let mut p = server.puppet().await;
    let mut events = Events::open(&mut p).await;
    events.wait_until(kind::SCAN, |s| s["status"] == 2).await;
    let page = path.replace("<token>", puppet_tests::TOKEN);
    let (status, html) = puppet_tests::http_get(server.http_addr.unwrap(), &page).await;
    assert_eq!(status, 200);
    assert!(html.contains(&fake.latest_uuid().unwrap()), "{html}");
    drop(events);
    server.terminate();
}
