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
