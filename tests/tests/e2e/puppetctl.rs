//! The puppetctl CLI against a running server: outputs asserted.

use std::process::Output;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{Events, Server, TOKEN, kind, pattern_chunks, sha256, workspace_binary, world};

fn puppetctl(server: &Server, args: &[&str]) -> Output {
    std::process::Command::new(workspace_binary("puppetctl"))
        .args(["--endpoint", &server.addr.to_string()])
        .args(args)
        .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
        .output()
        .expect("run puppetctl")
}

fn stdout(out: &Output) -> String {
    assert!(out.status.success(), "puppetctl failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puppetctl_says_sends_downloads_and_follows() {
    let server = Server::start(&[]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;

    assert!(stdout(&puppetctl(&server, &["version"])).starts_with("puppet-rs/"));
    assert_eq!(stdout(&puppetctl(&server, &["health"])).trim(), "SERVING");

    let table = stdout(&puppetctl(&server, &["contacts"]));
    let alice = table.lines().find(|l| l.starts_with("wxid_alice ")).expect("alice in the table");
    assert!(alice.contains("Alice") && alice.contains("Alice (work)"), "{alice}");
    let json: Vec<serde_json::Value> =
        serde_json::from_str(&stdout(&puppetctl(&server, &["contacts", "--json"]))).unwrap();
    assert!(json.len() >= 30 && json.iter().any(|c| c["id"] == "gh_news_daily" && c["type"] == "official"));
    let one: serde_json::Value = serde_json::from_str(&stdout(&puppetctl(&server, &["contact", "wxid_bob"]))).unwrap();
    assert_eq!((one["name"].as_str(), one["star"].as_bool()), (Some("Bob"), Some(true)));
    let rooms = stdout(&puppetctl(&server, &["rooms"]));
    assert_eq!(rooms.lines().count(), 6, "a header and five rooms:\n{rooms}");
    let tea: serde_json::Value =
        serde_json::from_str(&stdout(&puppetctl(&server, &["room", "10001@chatroom"]))).unwrap();
    assert_eq!((tea["topic"].as_str(), tea["memberIds"].as_array().map(Vec::len)), (Some("Tea Lovers"), Some(5)));
    let missing = puppetctl(&server, &["contact", "wxid_nobody"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not found"));

    let id = stdout(&puppetctl(&server, &["say", "wxid_alice", "hello from the shell"])).trim().to_owned();
    assert!(id.starts_with("msg_"), "{id}");
    let seen = world(&server)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap();
    assert_eq!(seen.into_inner().messages.last().unwrap().text, "hello from the shell");

    let dir = std::env::temp_dir().join(format!("puppetctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let src = dir.join("big.bin");
    let bytes: Vec<u8> = pattern_chunks(3, 3 << 20, 3 << 20).next().unwrap();
    std::fs::write(&src, &bytes).unwrap();
    let id = stdout(&puppetctl(&server, &["send-file", "10001@chatroom", src.to_str().unwrap()])).trim().to_owned();
    let dst = dir.join("back.bin");
    let out = stdout(&puppetctl(&server, &["download", &id, "-o", dst.to_str().unwrap()]));
    assert!(out.contains("(3145728 bytes)"), "{out}");
    assert_eq!(sha256([std::fs::read(&dst).unwrap().as_slice()]), sha256([bytes.as_slice()]));
    std::fs::remove_dir_all(&dir).unwrap();

    // Follow from a known sequence: the next events print as JSON lines.
    let last = server.feed().await.retention(ext::RetentionRequest {}).await.unwrap().into_inner().last_seq;
    world(&server).await.flood(ext::FloodRequest { count: 2, per_second: 0 }).await.unwrap();
    let out = stdout(&puppetctl(&server, &["events", "--since", &last.to_string(), "--count", "2"]));
    let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert_eq!(lines[0]["seq"], last + 1);
    assert_eq!(lines[0]["type"], "dong");
    assert_eq!(lines[1]["payload"]["data"], "flood-1");
    let readable = stdout(&puppetctl(&server, &["events", "--since", &last.to_string(), "--count", "1", "--text"]));
    assert_eq!(readable.trim(), format!("#{:<6} {:<12} {{\"data\":\"flood-0\"}}", last + 1, "dong"));
}

#[test]
fn puppetctl_fails_with_one_line_reasons() {
    let server = Server::start(&["--autostart", "false"]);
    let out = std::process::Command::new(workspace_binary("puppetctl"))
        .args(["--endpoint", &server.addr.to_string(), "version"])
        .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no token"), "{err}");

    let out = puppetctl(&server, &["say", "wxid_alice", "hi"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not logged in"), "{err}");
}
