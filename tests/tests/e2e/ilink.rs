//! The `ilink` backend (Tencent's iLink bot API for personal WeChat accounts) against the fake iLink
//! server in `tests/fakes/ilink`; nothing here reaches Tencent. The fake's fidelity is proved first by
//! running Tencent's own compiled client modules against it.

use std::time::Duration;

use puppet_tests::fake_ilink::{FakeIlink, OWNER};
use puppet_tests::{installed, repo_root};

/// One run of the official client may take this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// A deterministic test image (not valid PNG past the signature; the CDN carries bytes).
fn image_bytes(len: usize) -> Vec<u8> {
    let mut v = b"\x89PNG\r\n\x1a\n".to_vec();
    v.extend((0..len).map(|i| (i * 31 % 251) as u8));
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_client_modules_run_against_the_fake() {
    let pkg = installed("PUPPET_ILINK_OFFICIAL_PKG", "npm @tencent-weixin/openclaw-weixin@2.4.9");
    let fake = FakeIlink::start(2_000).await;
    let dir = std::env::temp_dir().join(format!("puppet-ilink-official-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let image = image_bytes(3000);
    let image_path = dir.join("picture.png");
    std::fs::write(&image_path, &image).unwrap();
    let script_dir = repo_root().join("tests/compat/node/ilink");
    let out = tokio::time::timeout(
        CLIENT_TIMEOUT,
        tokio::process::Command::new("node")
            .arg("--import")
            .arg("./register.mjs")
            .arg("official.mjs")
            .current_dir(&script_dir)
            .env("ILINK_PKG", &pkg)
            .env("ILINK_FAKE_BASE", &fake.base)
            .env("ILINK_IMAGE", &image_path)
            .env("OPENCLAW_STATE_DIR", dir.join("state"))
            .env("OPENCLAW_TMP_DIR", dir.join("tmp"))
            .env("HOME", &dir)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the official client finished in time")
    .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "ILINK OFFICIAL OK"),
        "official client failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(stdout.lines().filter(|l| l.starts_with("ok ")).count() >= 8, "{stdout}");
    let token = stdout.lines().find_map(|l| l.strip_prefix("TOKEN ")).expect("token line").to_string();

    // The fake saw what Tencent's client sends: its app id, client version (2.4.9 → 0x020409) and
    // the bot-token headers.
    let calls = fake.calls();
    let send = calls.iter().find(|c| c.path == "ilink/bot/sendmessage").expect("a sendmessage");
    assert_eq!(send.headers.get("ilink-app-id").map(String::as_str), Some("bot"));
    assert_eq!(send.headers.get("ilink-app-clientversion").map(String::as_str), Some("132105"));
    assert_eq!(send.headers.get("authorizationtype").map(String::as_str), Some("ilink_bot_token"));
    assert_eq!(send.body["base_info"]["channel_version"], "2.4.9");

    // The text and the image arrived; the image the fake decrypted is the file's bytes.
    let sent = fake.sent(&token);
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert_eq!(sent[0]["to_user_id"], OWNER);
    assert_eq!(sent[0]["item_list"][0]["text_item"]["text"], "hello from the bot");
    assert!(sent[0]["context_token"].as_str().is_some_and(|c| c.starts_with("ctx-")));
    assert_eq!(sent[1]["item_list"][0]["type"], 2);
    let uploads = fake.uploads();
    assert_eq!(uploads.len(), 1);
    assert_eq!(uploads[0].plain, image);
    assert_eq!(uploads[0].media_type, 1);
    assert_eq!(
        sent[1]["item_list"][0]["image_item"]["media"]["encrypt_query_param"],
        uploads[0].download_param.as_str()
    );
    _ = std::fs::remove_dir_all(&dir);
}

// ---- puppet-server on --backend ilink ---------------------------------------------------------

mod server {
    use base64::Engine;
    use puppet_proto::model::MessageType;
    use puppet_proto::pb::wechaty::puppet as pb;
    use puppet_tests::fake_ilink::{FakeIlink, REPLIES_PER_MESSAGE};
    use puppet_tests::{Events, PuppetClientT, Server, kind};
    use tonic::Code;

    const ALICE: &str = "o9cq80alice000@im.wechat";
    const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

    fn env(fake: &FakeIlink, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let mut env = fake.server_env();
        env.extend_from_slice(extra);
        env
    }

    fn start(fake: &FakeIlink, extra: &[(&'static str, String)]) -> Server {
        let env = env(fake, extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_with_env(&["--backend", "ilink", "--http-listen", "127.0.0.1:0"], &env)
    }

    fn start_in(dir: &std::path::Path, fake: &FakeIlink, extra: &[(&'static str, String)]) -> Server {
        let env = env(fake, extra);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Server::start_in_with_env(dir, &["--backend", "ilink"], &env)
    }

    async fn say(p: &mut PuppetClientT, to: &str, text: &str) -> Result<String, tonic::Status> {
        p.message_send_text(pb::MessageSendTextRequest {
            conversation_id: to.into(),
            text: text.into(),
            mentional_ids: vec![],
        })
        .await
        .map(|r| r.into_inner().id)
    }

    /// A FileBox's bytes: inline, or downloaded by its uuid.
    async fn file_bytes(p: &mut PuppetClientT, file_box: &str) -> Vec<u8> {
        let fb: serde_json::Value = serde_json::from_str(file_box).unwrap();
        if let Some(b) = fb["base64"].as_str() {
            return B64.decode(b).unwrap();
        }
        let uuid = fb["uuid"].as_str().expect("inline or uuid");
        let mut s = p.download(pb::DownloadRequest { id: uuid.into() }).await.unwrap().into_inner();
        let mut all = Vec::new();
        while let Some(c) = s.message().await.unwrap() {
            all.extend(c.chunk);
        }
        all
    }

    async fn payload(p: &mut PuppetClientT, id: &str) -> pb::MessagePayloadResponse {
        p.message_payload(pb::MessagePayloadRequest { id: id.into() }).await.unwrap().into_inner()
    }

    /// QR login through SCAN events, then: a text in, a reply with its context token, an image in
    /// (decrypted to the original bytes), an image out (the fake decrypts the same bytes), the quota,
    /// rooms refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn qr_login_messages_media_and_the_platform_rules() {
        let fake = FakeIlink::start(3_000).await;
        let server = start(&fake, &[]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;

        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!(scan["status"], 2, "{scan}");
        assert_eq!(scan["data"], "wait");
        let qr = fake.qr(0).await;
        assert!(scan["qrcode"].as_str().unwrap().contains(&qr), "{scan}");
        let http = server.http_addr.unwrap();
        let qr_page = format!("/qrcode?token={}", puppet_tests::TOKEN);
        let page = puppet_tests::http_get(http, &qr_page).await.1;
        assert!(page.contains("Scan to log in") && page.contains(&qr), "{page}");
        fake.set_qr(&qr, "scaned");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!((scan["status"].as_i64(), scan["data"].as_str()), (Some(3), Some("scaned")), "{scan}");
        let token = fake.set_qr(&qr, "confirmed").unwrap();
        let login = events.wait_for(kind::LOGIN).await;
        let bot_id = token.split(':').next().unwrap();
        assert_eq!(login["contactId"], bot_id);
        events.wait_for(kind::READY).await;
        fake.wait_call("ilink/bot/msg/notifystart").await;
        let page = puppet_tests::http_get(http, &qr_page).await.1;
        assert!(page.contains("Logged in as iLink bot"), "{page}");

        // A text in; the talker becomes a contact.
        let ctx = fake.inject_text(&token, ALICE, "ding");
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let m = payload(&mut p, &id).await;
        assert_eq!((m.text.as_str(), m.talker_id.as_str(), m.r#type), ("ding", ALICE, MessageType::Text.wire()));
        let contacts = p.contact_list(pb::ContactListRequest {}).await.unwrap().into_inner().ids;
        assert!(contacts.iter().any(|c| c == ALICE), "{contacts:?}");

        // The reply carries the conversation's context token.
        say(&mut p, ALICE, "dong").await.unwrap();
        let sent = fake.wait_sent(&token, 1).await;
        assert_eq!(sent[0]["context_token"], ctx.as_str());
        assert_eq!(sent[0]["item_list"][0]["text_item"]["text"], "dong");
        let call = fake.calls().into_iter().find(|c| c.path == "ilink/bot/sendmessage").unwrap();
        assert_eq!(call.headers.get("ilink-app-id").map(String::as_str), Some("bot"));

        // Typing through the extension service: one getconfig (the ticket is cached), two sendtyping.
        let mut ext = puppet_proto::pb::puppet_rs::v1::ilink_client::IlinkClient::with_interceptor(
            server.channel().await,
            puppet_tests::Token(puppet_tests::TOKEN.into()),
        );
        use puppet_proto::pb::puppet_rs::v1::TypingRequest;
        for typing in [true, false] {
            ext.typing(TypingRequest { conversation_id: ALICE.into(), typing }).await.unwrap();
        }
        let typing: Vec<i64> = fake
            .calls()
            .iter()
            .filter(|c| c.path == "ilink/bot/sendtyping")
            .map(|c| c.body["status"].as_i64().unwrap())
            .collect();
        assert_eq!(typing, [1, 2]);
        assert_eq!(fake.calls().iter().filter(|c| c.path == "ilink/bot/getconfig").count(), 1);
        let err = ext
            .typing(TypingRequest { conversation_id: "o9cq80stranger@im.wechat".into(), typing: true })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);

        // An image in: MessageImage answers the original bytes, decrypted from the CDN.
        let picture: Vec<u8> = (0..5000u32).map(|i| (i * 7 % 256) as u8).collect();
        fake.inject_image(&token, ALICE, &picture);
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        assert_eq!(payload(&mut p, &id).await.r#type, MessageType::Image.wire());
        let fb = p.message_image(pb::MessageImageRequest { id: id.clone(), r#type: 2 }).await.unwrap().into_inner();
        let bytes = file_bytes(&mut p, &fb.file_box).await;
        assert!(bytes == picture, "the inbound image decrypts to the original bytes");

        // A file in (its key comes base64-encoded hex, as iLink sends files'): MessageFile answers it.
        let pdf = [&b"%PDF-1.4\n"[..], &[3u8; 777][..]].concat();
        let ctx2 = fake.inject_file(&token, ALICE, "report.pdf", &pdf);
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let m = payload(&mut p, &id).await;
        assert_eq!((m.r#type, m.filename.as_str()), (MessageType::Attachment.wire(), "report.pdf"));
        let fb = p.message_file(pb::MessageFileRequest { id }).await.unwrap().into_inner();
        assert!(fb.file_box.contains("report.pdf"), "{}", fb.file_box);
        assert!(file_bytes(&mut p, &fb.file_box).await == pdf, "the inbound file decrypts to the original bytes");

        // An image out: uploaded encrypted, the fake decrypts the same bytes; it carries the newest
        // context token.
        let png = [&b"\x89PNG\r\n\x1a\n"[..], &[5u8; 3000][..]].concat();
        let file_box = serde_json::json!({"type": 1, "name": "back.png", "base64": B64.encode(&png)});
        p.message_send_file(pb::MessageSendFileRequest {
            conversation_id: ALICE.into(),
            file_box: file_box.to_string(),
        })
        .await
        .unwrap();
        let sent = fake.wait_sent(&token, 2).await;
        assert_eq!(sent[1]["item_list"][0]["type"], 2);
        assert_eq!(sent[1]["context_token"], ctx2.as_str());
        let uploads = fake.uploads();
        assert_eq!(uploads.len(), 1);
        assert!(uploads[0].plain == png && uploads[0].media_type == 1 && uploads[0].to_user_id == ALICE);

        // The quota: the image message reset it; REPLIES_PER_MESSAGE sends pass (one used), the next
        // is refused here, before iLink sees it.
        for i in 1..REPLIES_PER_MESSAGE {
            say(&mut p, ALICE, &format!("reply {i}")).await.unwrap();
        }
        let err = say(&mut p, ALICE, "one too many").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
        assert!(err.message().contains("quota of 10") && err.message().contains("reopens when"), "{}", err.message());
        assert_eq!(fake.sent(&token).len(), 2 + REPLIES_PER_MESSAGE as usize - 1);
        // A user who never wrote cannot be written to.
        let err = say(&mut p, "o9cq80stranger@im.wechat", "hi").await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("has not written"), "{}", err.message());
        // A new message from Alice reopens it.
        fake.inject_text(&token, ALICE, "again");
        events.wait_for(kind::MESSAGE).await;
        say(&mut p, ALICE, "welcome back").await.unwrap();

        // Rooms do not exist here.
        let err = p.room_list(pb::RoomListRequest {}).await.unwrap_err();
        assert_eq!(err.code(), Code::Unimplemented);
        assert!(err.message().contains("iLink bots receive direct messages only"), "{}", err.message());

        // Sends are counted by outcome, the refusals by the rule that refused them.
        let metrics = puppet_tests::http_get(http, "/metrics").await.1;
        for line in [
            "puppet_ilink_sends_total{outcome=\"sent\"} 12",
            "puppet_ilink_sends_total{outcome=\"quota_used\"} 1",
            "puppet_ilink_sends_total{outcome=\"no_conversation\"} 1",
        ] {
            assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
        }

        // Stop tells iLink (notifystop) and stops polling; the login is kept.
        p.stop(pb::StopRequest {}).await.unwrap();
        fake.wait_call("ilink/bot/msg/notifystop").await;
    }

    /// Expired QRs are replaced, at most PUPPET_ILINK_QR_REFRESHES times, then the login stops with
    /// an ERROR until the next Start; a `scaned_but_redirect` moves the status polls to the host named.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_qrs_are_replaced_a_bounded_number_of_times_and_redirects_are_followed() {
        let fake = FakeIlink::start(3_000).await;
        let server = start(&fake, &[("PUPPET_ILINK_QR_REFRESHES", "1".into())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        assert_eq!(events.wait_for(kind::SCAN).await["status"], 2);
        let qr0 = fake.qr(0).await;

        let port = fake.base.rsplit(':').next().unwrap().to_owned();
        fake.redirect_qr(&qr0, &format!("localhost:{port}"));
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!((scan["status"].as_i64(), scan["data"].as_str()), (Some(3), Some("scaned_but_redirect")), "{scan}");
        fake.set_qr(&qr0, "expired");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!((scan["status"].as_i64(), scan["data"].as_str()), (Some(5), Some("expired")), "{scan}");
        let polled_after_redirect = fake
            .calls()
            .into_iter()
            .filter(|c| c.path == "ilink/bot/get_qrcode_status")
            .any(|c| c.headers.get("host").is_some_and(|h| h.starts_with("localhost:")));
        assert!(polled_after_redirect, "the status polls moved to the redirect host");

        // A new QR, shown; it expires too, and that was the last replacement allowed.
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!(scan["status"], 2);
        let qr1 = fake.qr(1).await;
        assert!(scan["qrcode"].as_str().unwrap().contains(&qr1));
        fake.set_qr(&qr1, "expired");
        let error = events.wait_for(kind::ERROR).await;
        assert!(error["data"].as_str().unwrap().contains("PUPPET_ILINK_QR_REFRESHES=1"), "{error}");
        assert_eq!(fake.qr_count(), 2);

        // Start begins a new login.
        p.start(pb::StartRequest {}).await.unwrap();
        let scan = events.wait_until(kind::SCAN, |s| s["status"] == 2).await;
        assert!(scan["qrcode"].as_str().unwrap().contains(&fake.qr(2).await));
    }

    /// The QR states that need the phone: `need_verifycode` is a SCAN Scanned naming what the phone
    /// asks; `verify_code_blocked` a SCAN Timeout and a new QR; `binded_redirect` a SCAN Cancel and an
    /// ERROR telling to give the earlier token, with no new QR fetched.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verify_code_and_bound_bot_qr_states() {
        let fake = FakeIlink::start(3_000).await;
        let server = start(&fake, &[]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        assert_eq!(events.wait_for(kind::SCAN).await["status"], 2);
        let qr0 = fake.qr(0).await;

        fake.set_qr(&qr0, "need_verifycode");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!(scan["status"], 3, "{scan}");
        let data = scan["data"].as_str().unwrap();
        assert!(data.starts_with("need_verifycode") && data.contains("new one follows"), "{scan}");

        fake.set_qr(&qr0, "verify_code_blocked");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!((scan["status"].as_i64(), scan["data"].as_str()), (Some(5), Some("verify_code_blocked")), "{scan}");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!(scan["status"], 2, "{scan}");
        let qr1 = fake.qr(1).await;
        assert!(scan["qrcode"].as_str().unwrap().contains(&qr1), "{scan}");

        fake.set_qr(&qr1, "binded_redirect");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!((scan["status"].as_i64(), scan["data"].as_str()), (Some(1), Some("binded_redirect")), "{scan}");
        let error = events.wait_for(kind::ERROR).await;
        let data = error["data"].as_str().unwrap();
        assert!(data.contains("binded_redirect") && data.contains("PUPPET_ILINK_BOT_TOKEN"), "{error}");
        // The login ended: no third QR was fetched.
        assert_eq!(fake.qr_count(), 2);
    }

    /// Failed `getupdates` polls are retried after a pause (2 s, the reference client's), and the
    /// poller recovers: a message queued after the failures arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn failed_polls_back_off_and_recover() {
        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let server = start(&fake, &[("PUPPET_ILINK_BOT_TOKEN", token.clone())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        fake.wait_polling(&token).await;
        // The held poll answers with this message; the next two fail.
        fake.fail_polls(2);
        fake.inject_text(&token, ALICE, "before");
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        assert_eq!(payload(&mut p, &id).await.text, "before");
        fake.inject_text(&token, ALICE, "after");
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        assert_eq!(payload(&mut p, &id).await.text, "after");

        let polls: Vec<_> = fake.calls().into_iter().filter(|c| c.path == "ilink/bot/getupdates").collect();
        let first_failed = polls.iter().position(|c| c.failed).expect("a failed poll");
        let tail = &polls[first_failed..];
        assert!(tail.len() >= 3 && tail[0].failed && tail[1].failed && !tail[2].failed, "{tail:?}");
        for pair in tail[..3].windows(2) {
            let gap = pair[1].at - pair[0].at;
            assert!(gap >= std::time::Duration::from_millis(1_900), "retried after {gap:?}, before the pause");
        }
    }

    /// With a tiny session window (PUPPET_ILINK_SESSION_WINDOW_SECS=1), a send once the window has
    /// closed is refused with FAILED_PRECONDITION naming when it reopens; the user writing reopens it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_session_window_closes_and_reopens() {
        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let server = start(
            &fake,
            &[("PUPPET_ILINK_BOT_TOKEN", token.clone()), ("PUPPET_ILINK_SESSION_WINDOW_SECS", "1".into())],
        );
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        fake.inject_text(&token, ALICE, "hi");
        events.wait_for(kind::MESSAGE).await;
        // Sends until the first refusal (bounded: the window is 1 s, the quota 10 per message).
        let refused = tokio::time::timeout(std::time::Duration::from_secs(10), async {
            loop {
                match say(&mut p, ALICE, "still there?").await {
                    Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
                    Err(e) => break e,
                }
            }
        })
        .await
        .expect("the window closes within 10 s");
        assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
        let m = refused.message();
        assert!(m.contains("session window") && m.contains("reopens when they write again"), "{m}");
        assert!(fake.sent(&token).len() < REPLIES_PER_MESSAGE as usize, "refused by the window, not the quota");

        fake.inject_text(&token, ALICE, "back");
        events.wait_for(kind::MESSAGE).await;
        say(&mut p, ALICE, "welcome back").await.unwrap();
    }

    /// A token given at start skips the QR; a restart resumes from the stored token and cursor:
    /// a message that arrived while down comes once, nothing before it again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_token_and_restart_without_loss_or_duplicate() {
        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let dir = std::env::temp_dir().join(format!("puppet-ilink-restart-{}", std::process::id()));
        _ = std::fs::remove_dir_all(&dir);
        let mut server = start_in(&dir, &fake, &[("PUPPET_ILINK_BOT_TOKEN", token.clone())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        let mut before = Vec::new();
        for i in 0..3 {
            fake.inject_text(&token, ALICE, &format!("before {i}"));
            before.push(events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned());
        }
        fake.wait_polling(&token).await;
        assert!(server.terminate().success());
        fake.inject_text(&token, ALICE, "while down");

        // No token given this time: the stored one is used; no QR is fetched. (Started by `Start`
        // once the stream is open: the Event stream replays the login state, not past messages.)
        let env = env(&fake, &[]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let server = Server::start_in_with_env(&dir, &["--backend", "ilink", "--autostart", "false"], &env);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        p.start(pb::StartRequest {}).await.unwrap();
        events.wait_for(kind::LOGIN).await;
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        assert!(!before.contains(&id), "a message from before the restart came again");
        assert_eq!(payload(&mut p, &id).await.text, "while down");
        // The old ones are still readable, and nothing else arrives.
        assert_eq!(payload(&mut p, &before[0]).await.text, "before 0");
        fake.inject_text(&token, ALICE, "after");
        let next = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        assert_eq!(payload(&mut p, &next).await.text, "after");
        assert_eq!(fake.qr_count(), 0);
        drop(server);
        _ = std::fs::remove_dir_all(&dir);
    }

    /// A message quoting another carries the quote the way Wechaty's puppets show it in text
    /// (`「who: quoted」` and a dashed line): with the quoted text iLink sent, and, for a quote that
    /// names only an earlier message kept here, that message's sender and text.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn quoted_messages_keep_their_reference_in_the_text() {
        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let server = start(&fake, &[("PUPPET_ILINK_BOT_TOKEN", token.clone())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        fake.inject_text(&token, ALICE, "the original");
        let first = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let svr_id = first.strip_prefix("ilink-").unwrap().to_owned();

        fake.inject_quote(&token, ALICE, "my answer", "999", "", Some("what was said"));
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let m = payload(&mut p, &id).await;
        assert_eq!(m.text, "「what was said」\n- - - - - - - - - - - - - - -\nmy answer");
        assert_eq!(m.r#type, MessageType::Text.wire());

        fake.inject_quote(&token, ALICE, "and again", &svr_id, "", None);
        let id = events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let who = ALICE.split('@').next().unwrap();
        assert_eq!(
            payload(&mut p, &id).await.text,
            format!("「{who}: the original」\n- - - - - - - - - - - - - - -\nand again")
        );
    }

    /// A stale token (-14) is a LOGOUT with the reason, then a fresh login QR.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stale_token_logs_out_and_shows_a_new_qr() {
        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let server = start(&fake, &[("PUPPET_ILINK_BOT_TOKEN", token.clone())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        fake.wait_polling(&token).await;
        fake.expire_token(&token);
        let logout = events.wait_for(kind::LOGOUT).await;
        assert!(logout["data"].as_str().unwrap().contains("stale"), "{logout}");
        let scan = events.wait_for(kind::SCAN).await;
        assert_eq!(scan["status"], 2);
        let qr = fake.qr(0).await;
        assert!(scan["qrcode"].as_str().unwrap().contains(&qr));
        // Scanning it logs in with the new token.
        let new_token = fake.set_qr(&qr, "confirmed").unwrap();
        events.wait_for(kind::LOGIN).await;
        fake.inject_text(&new_token, ALICE, "hello again");
        events.wait_for(kind::MESSAGE).await;
    }

    /// The official Node Wechaty client runs a ding-dong bot through puppet-server on this backend:
    /// it sees the login QR, logs in when the fake confirms the scan, answers `ding` and an image.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_node_wechaty_client_plays_ding_dong() {
        use tokio::io::AsyncBufReadExt;
        let node_modules = puppet_tests::installed("WECHATY_NODE_MODULES", "npm wechaty + wechaty-puppet-service");
        let fake = FakeIlink::start(3_000).await;
        let server = start(&fake, &[]);
        let home = server.data_dir.join("client-home");
        std::fs::create_dir_all(&home).unwrap();
        let mut child = tokio::process::Command::new("node")
            .arg(puppet_tests::repo_root().join("tests/compat/node/ilink.js"))
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
        let mut seen = vec![];
        let mut expect_line = async |want: &str| -> String {
            let found = tokio::time::timeout(std::time::Duration::from_secs(60), async {
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
        let scan = expect_line("SCAN ").await;
        let qr = fake.qr(0).await;
        assert!(scan.contains(&qr), "{scan}");
        let token = fake.set_qr(&qr, "confirmed").unwrap();
        // Wechaty may report READY before or after LOGIN; LOGIN is what the bot needs.
        let login = expect_line("LOGIN ").await;
        assert_eq!(login, format!("LOGIN {}", token.split(':').next().unwrap()));

        let ctx = fake.inject_text(&token, ALICE, "ding");
        let sent = fake.wait_sent(&token, 1).await;
        assert_eq!(sent[0]["item_list"][0]["text_item"]["text"], "dong");
        assert_eq!(sent[0]["context_token"], ctx.as_str());

        let picture: Vec<u8> = (0..4321u32).map(|i| (i % 199) as u8).collect();
        fake.inject_image(&token, ALICE, &picture);
        let sent = fake.wait_sent(&token, 2).await;
        let text = sent[1]["item_list"][0]["text_item"]["text"].as_str().unwrap();
        assert!(text.starts_with("got image-") && text.ends_with(", 4321 bytes"), "{text}");

        fake.inject_text(&token, ALICE, "bye");
        let sent = fake.wait_sent(&token, 3).await;
        assert_eq!(sent[2]["item_list"][0]["text_item"]["text"], "再见");
        expect_line("COMPAT OK").await;
        let status = tokio::time::timeout(std::time::Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
        assert!(status.success());
    }

    /// The grpcurl line of the README's iLink section, run as written (grpcurl 1.9.4).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_readme_typing_recipe_works() {
        let grpcurl = puppet_tests::installed("PUPPET_GRPCURL", "grpcurl");
        let readme = std::fs::read_to_string(puppet_tests::repo_root().join("README.md")).unwrap();
        let section = readme.split("## A personal account through iLink").nth(1).expect("the README section");
        let recipe = section
            .split("```sh")
            .filter_map(|b| b.split("```").next())
            .find(|b| b.contains("grpcurl"))
            .expect("a grpcurl block")
            .replace("\\\n", " ");
        let recipe = recipe.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(recipe.contains("puppet_rs.v1.Ilink/Typing") && recipe.contains(ALICE), "{recipe}");

        let fake = FakeIlink::start(3_000).await;
        let token = fake.mint_token();
        let server = start(&fake, &[("PUPPET_ILINK_BOT_TOKEN", token.clone())]);
        let mut p = server.puppet().await;
        let mut events = Events::open(&mut p).await;
        events.wait_for(kind::LOGIN).await;
        fake.inject_text(&token, ALICE, "hello");
        events.wait_for(kind::MESSAGE).await;
        let path = format!("{}:{}", grpcurl.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
        let out = tokio::process::Command::new("sh")
            .args(["-c", &recipe.replace("127.0.0.1:8788", &server.addr.to_string())])
            .env("PATH", &path)
            .env("TOKEN", puppet_tests::TOKEN)
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), out).await.unwrap().unwrap();
        assert!(out.status.success(), "`{recipe}` failed: {}", String::from_utf8_lossy(&out.stderr));
        let typing = fake.wait_call("ilink/bot/sendtyping").await;
        assert_eq!(typing[0].body["ilink_user_id"], ALICE);
        assert_eq!(typing[0].body["status"], 1);
    }
}

/// The README's iLink table names exactly the `PUPPET_ILINK_*` settings `puppet-server --help` lists.
#[test]
fn the_readme_lists_every_ilink_setting() {
    let help = std::process::Command::new(puppet_tests::server_binary()).arg("--help").output().expect("--help");
    let help = String::from_utf8_lossy(&help.stdout);
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("## A personal account through iLink").nth(1).expect("the README section");
    let section = section.split("\n## ").next().unwrap();
    let names = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("PUPPET_ILINK_"))
            .map(String::from)
            .collect()
    };
    let in_help = names(&help);
    assert!(in_help.len() >= 9, "{in_help:?}");
    assert_eq!(names(section), in_help);
}
