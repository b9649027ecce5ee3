//! The example bots (Python, Node, Go; `examples/`) and the README's grpcurl recipes, against the
//! real server on the mock backend.

use std::process::Stdio;
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{EVENT_TIMEOUT, Events, Server, TOKEN, installed, kind, repo_root, world};
use tokio::io::{AsyncBufReadExt, BufReader};

const BOT: &str = "wxid_puppet_bot";

/// Starts a bot, waits until it listens, has Alice say "ding", and waits for its "dong".
pub(crate) async fn ding_dong(mut cmd: tokio::process::Command, ready_marker: &str) {
    let server = Server::start(&["--http-listen", "127.0.0.1:0"]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;

    cmd.env("WECHATY_PUPPET_SERVICE_ENDPOINT", server.addr.to_string())
        .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut bot = cmd.spawn().expect("start the bot");
    // Go's log and Python's logging write to different streams; watch both.
    let mut lines = tokio_stream::StreamExt::merge(
        tokio_stream::wrappers::LinesStream::new(BufReader::new(bot.stdout.take().unwrap()).lines()),
        tokio_stream::wrappers::LinesStream::new(BufReader::new(bot.stderr.take().unwrap()).lines()),
    );
    let mut seen = Vec::new();
    let listening = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(Ok(line)) = tokio_stream::StreamExt::next(&mut lines).await {
            let ready = line.contains(ready_marker);
            seen.push(line);
            if ready {
                return;
            }
        }
    })
    .await;
    assert!(listening.is_ok(), "the bot never said it was listening:\n{}", seen.join("\n"));

    // A bot may log "listening" a moment before the server has its event stream: wait until the
    // server counts two subscribers (this test's and the bot's).
    let subscribed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let (_, metrics) = puppet_tests::http_get(server.http_addr.unwrap(), "/metrics").await;
            let n =
                metrics.lines().find_map(|l| l.strip_prefix("puppet_event_subscribers ")?.trim().parse::<f64>().ok());
            if n.unwrap_or(0.0) >= 2.0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(subscribed.is_ok(), "the bot never opened its event stream:\n{}", seen.join("\n"));

    let mut w = world(&server).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() }).await.unwrap();
    // The bot's reply shows up as the bot's own MESSAGE; then the world has it too.
    let mut puppet = server.puppet().await;
    let reply = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let p = events.wait_for(kind::MESSAGE).await;
            let id = p["messageId"].as_str().unwrap().to_owned();
            let m =
                puppet.message_payload(puppet_proto::pb::wechaty::puppet::MessagePayloadRequest { id }).await.unwrap();
            let m = m.into_inner();
            if m.talker_id == BOT {
                return m;
            }
        }
    })
    .await
    .expect("no reply from the bot");
    assert_eq!((reply.text.as_str(), reply.listener_id.as_str()), ("dong", "wxid_alice"));
    let history = w.list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() }).await.unwrap();
    let texts: Vec<String> = history.into_inner().messages.into_iter().map(|m| m.text).collect();
    assert_eq!(texts, vec!["ding", "dong"]);

    // SIGINT: a clean exit.
    let pid = bot.id().expect("pid").to_string();
    std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), bot.wait()).await.expect("exit after SIGINT").unwrap();
    assert!(status.success(), "exit status after SIGINT: {status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_ding_dong_bot() {
    let python = installed("PUPPET_EXAMPLES_PYTHON", "the Python example's venv (grpcio)");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(repo_root().join("examples/python/bot.py"));
    ding_dong(cmd, "listening for events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_ding_dong_bot() {
    let modules = installed("PUPPET_EXAMPLES_NODE_MODULES", "the Node example's packages");
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("examples/node/bot.js")).env("NODE_PATH", modules);
    ding_dong(cmd, "listening for events").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_ding_dong_bot() {
    let go = installed("PUPPET_DINGDONG_GO", "the Go example, built");
    ding_dong(tokio::process::Command::new(go), "listening for events").await;
}

/// The `grpcurl …` lines of the README's grpcurl section, exactly as written there.
fn readme_recipes() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme.split("### grpcurl").nth(1).expect("a grpcurl section in the README");
    let block = section.split("```sh").nth(1).and_then(|b| b.split("```").next()).expect("a sh block");
    let mut recipes = Vec::new();
    let mut current = String::new();
    for line in block.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        current.push_str(line.trim_end_matches('\\'));
        current.push(' ');
        if !line.ends_with('\\') {
            recipes.push(current.trim().to_owned());
            current.clear();
        }
    }
    recipes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_grpcurl_recipes_work() {
    let grpcurl = installed("PUPPET_GRPCURL", "grpcurl");
    let recipes = readme_recipes();
    assert!(recipes.len() >= 6, "{recipes:?}");
    let server = Server::start(&[]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let bin_dir = grpcurl.parent().unwrap().to_owned();
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());

    for recipe in recipes {
        assert!(recipe.starts_with("grpcurl "), "{recipe}");
        let command = recipe.replace("127.0.0.1:8788", &server.addr.to_string());
        let streaming = command.contains("/Event") || command.contains("/Subscribe");
        let mut child = tokio::process::Command::new("sh")
            .args(["-c", &command])
            .env("PATH", &path)
            .env("TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let output = if streaming {
            // A follow never ends by itself: read until the first event has printed, then stop.
            let mut out = BufReader::new(child.stdout.take().unwrap()).lines();
            let mut text = String::new();
            tokio::time::timeout(EVENT_TIMEOUT, async {
                while let Ok(Some(line)) = out.next_line().await {
                    text.push_str(&line);
                    text.push('\n');
                    if line.trim() == "}" {
                        break;
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("no event from `{recipe}`"));
            child.kill().await.ok();
            text
        } else {
            let out = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output()).await.unwrap().unwrap();
            assert!(out.status.success(), "`{recipe}` failed: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let expect = match () {
            _ if command.ends_with(" list") => "wechaty.Puppet",
            _ if command.contains("describe wechaty.Puppet") => "rpc Event",
            _ if command.contains("/ContactList") => "wxid_alice",
            _ if command.contains("/MessageSendText") => "\"id\"",
            _ if command.contains("Health/Check") => "SERVING",
            _ if streaming => "EVENT_TYPE_",
            _ => panic!("no expectation for `{recipe}`: add one when adding a recipe"),
        };
        assert!(output.contains(expect), "`{recipe}` printed:\n{output}");
    }
}
