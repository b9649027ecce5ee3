//! The mock account in the store: what a client was told happened survives SIGKILL, and memory
//! does not grow with the number of messages.

use std::time::Instant;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, kind, rss_kib, world};
use tonic::Code;

fn kill_9(server: Server) {
    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    drop(server); // reaps the killed process; the data dir is kept
}

#[allow(deprecated)]
fn alias(id: &str, alias: Option<&str>) -> pb::ContactAliasRequest {
    pb::ContactAliasRequest {
        id: id.into(),
        alias: alias.map(str::to_owned),
        alias_string_value_deprecated: alias.map(str::to_owned),
    }
}

/// The bot sends `text` to Alice; the message id.
async fn send_to_alice(p: &mut puppet_tests::PuppetClientT, text: &str) -> String {
    let req =
        pb::MessageSendTextRequest { conversation_id: "wxid_alice".into(), text: text.into(), ..Default::default() };
    p.message_send_text(req).await.unwrap().into_inner().id
}

#[allow(deprecated)]
fn topic(room: &str, topic: &str) -> pb::RoomTopicRequest {
    pb::RoomTopicRequest { id: room.into(), topic: Some(topic.into()), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_always_what_was_acknowledged_survives_sigkill() {
    let dir = std::env::temp_dir().join(format!("puppet-durable-mock-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let args = ["--durability", "always"];

    let server = Server::start_in(&dir, &args);
    let mut p = server.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;
    let sent = send_to_alice(&mut p, "sent before the crash").await;
    let mut w = world(&server).await;
    let heard = w
        .say(ext::SayRequest {
            from_id: "wxid_alice".into(),
            text: "heard before the crash".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // The last calls before the kill: acknowledged, then the process dies at once (the state
    // file of old servers was written up to a second later, and these changes were lost).
    p.contact_alias(alias("wxid_bob", Some("Bobby"))).await.unwrap();
    p.room_topic(topic("10002@chatroom", "Survives SIGKILL")).await.unwrap();
    kill_9(server);

    let again = Server::start_in(&dir, &args);
    let mut p = again.puppet().await;
    let mut events = Events::open(&mut p).await;
    assert_eq!(events.next().await.0, kind::LOGIN, "still logged in: no SCAN");
    assert_eq!(p.contact_alias(alias("wxid_bob", None)).await.unwrap().into_inner().alias, "Bobby");
    let room = p.room_payload(pb::RoomPayloadRequest { id: "10002@chatroom".into() }).await.unwrap().into_inner();
    assert_eq!(room.topic, "Survives SIGKILL");
    for (id, text) in [(&sent, "sent before the crash"), (&heard, "heard before the crash")] {
        let m = p.message_payload(pb::MessagePayloadRequest { id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(m.text, text, "{id}");
    }
    let listed = world(&again)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner()
        .messages;
    let ids: Vec<&str> = listed.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [sent.as_str(), heard.as_str()]);
    // New ids never reuse old ones.
    let next = send_to_alice(&mut p, "after").await;
    assert!(next != sent && next != heard, "{next}");
    let old = p.message_payload(pb::MessagePayloadRequest { id: sent.clone() }).await.unwrap().into_inner();
    assert_eq!(old.text, "sent before the crash");
    let unknown = p.message_payload(pb::MessagePayloadRequest { id: "msg_999999".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `count` messages said to the bot, `lanes` calls in flight at a time.
async fn say_many(server: &Server, count: usize, lanes: usize) {
    let w = world(server).await;
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let mut w = w.clone();
        tasks.push(tokio::spawn(async move {
            for i in (lane..count).step_by(lanes) {
                let text = format!("echo {i}: the quick brown fox jumps over the lazy dog");
                w.say(ext::SayRequest { from_id: "wxid_alice".into(), text, ..Default::default() }).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_does_not_grow_with_the_number_of_messages() {
    // Small caches, so that the warm-up fills them: what grows after it is what grows with the
    // messages.
    let server = Server::start(&["--durability", "batch", "--event-tail-mib", "1", "--store-cache-mib", "2"]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;
    let started = Instant::now();
    say_many(&server, 10_000, 16).await;
    let before = rss_kib(server.pid());
    say_many(&server, 50_000, 16).await;
    let after = rss_kib(server.pid());
    let grown = after.saturating_sub(before);
    eprintln!("server RSS {before} KiB after 10k messages, {after} KiB after 50k more ({:?})", started.elapsed());
    // Kept in memory (servers before the store), these 50k messages took 64 MiB (1.3 KB each,
    // measured with this test); kept in the store they take nothing once committed (1.6 MiB of
    // noise measured). 8 MiB leaves room for noise and fails at a sixth of the old cost.
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB ({before} → {after}) over 50k messages");
    // They are all there: the newest of the conversation are listed.
    let listed = world(&server)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(listed.len(), 1_000, "ListMessages answers the newest 1,000");
    assert!(listed.iter().all(|m| m.text.starts_with("echo ")));
}
