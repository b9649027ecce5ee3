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
