//! The Rust bot API (`puppet_client::bot`) against the real server: routes, handles, cache, and
//! resume across severed connections.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use puppet_client::ConnectOptions;
use puppet_client::bot::Bot;
use puppet_proto::ids::ContactId;
use puppet_proto::model::FriendshipType;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{Events, Proxy, Server, TOKEN, kind, world};
use tokio::sync::mpsc;

const BOT: &str = "wxid_puppet_bot";
const WAIT: Duration = Duration::from_secs(20);

async fn online() -> (Server, Events) {
    let server = Server::start(&[]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    (server, events)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>) -> T {
    tokio::time::timeout(WAIT, rx.recv()).await.expect("nothing arrived in time").expect("bot stopped")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_handles_and_the_payload_cache() {
    let (server, _events) = online().await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (t1, t2, t3, t4, t5) = (tx.clone(), tx.clone(), tx.clone(), tx.clone(), tx.clone());
    let bot = Bot::new(ConnectOptions::new(server.addr.to_string(), TOKEN))
        .on_login(move |me| {
            let tx = t1.clone();
            async move { Ok(_ = tx.send(format!("login {}", me.id()))) }
        })
        .on_text("ding", |msg| async move { msg.say("dong").await.map(drop) })
        // Registered after "ding": a "ding" never reaches it (first route that matches wins).
        .on_regex(r"^(d\w+)$", move |msg, caps| {
            let tx = t2.clone();
            async move { Ok(_ = tx.send(format!("regex {} from {}", caps[1], msg.talker_id()))) }
        })
        .on_friendship(move |f| {
            let tx = t3.clone();
            async move {
                // A request, then (after accepting) its confirmation, both arrive as FRIENDSHIP.
                if f.payload().await?.kind != FriendshipType::Receive {
                    return Ok(());
                }
                f.accept().await?;
                Ok(_ = tx.send(format!("friend {}", f.contact().await?.name().await?)))
            }
        })
        .on_room_join(move |j| {
            let tx = t4.clone();
            async move {
                let ids: Vec<ContactId> = j.invitees.iter().map(|c| c.id().clone()).collect();
                j.room.say("welcome", &ids).await?;
                Ok(_ = tx.send(format!("join {} {}", j.room.topic().await?, ids[0])))
            }
        })
        .on_error(move |e| {
            let tx = t5.clone();
            async move { Ok(_ = tx.send(format!("error {e}"))) }
        });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(bot.run_until(async move {
        _ = stop_rx.await;
    }));
    assert_eq!(next(&mut rx).await, format!("login {BOT}"), "the login is replayed to a late bot");

    let mut w = world(&server).await;
    let say = |text: &str| ext::SayRequest { from_id: "wxid_alice".into(), text: text.into(), ..Default::default() };
    w.say(say("ding")).await.unwrap();
    w.say(say("dance")).await.unwrap();
    assert_eq!(next(&mut rx).await, "regex dance from wxid_alice", "ding went to its own route only");
    let mut texts: Vec<(String, String)> = w
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.talker_id, m.text))
        .collect();
    texts.sort();
    // One answer only: the bot's own "dong" did not trigger the regex route (it would say nothing
    // back, but it would have sent "regex dong" on the channel, checked at the end).
    let dong = (BOT.to_owned(), "dong".to_owned());
    assert_eq!(texts, vec![("wxid_alice".into(), "dance".into()), ("wxid_alice".into(), "ding".into()), dong]);

    w.request_friendship(ext::RequestFriendshipRequest {
        contact_id: "wxid_zoe".into(),
        name: "Zoe".into(),
        hello: "hi".into(),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "friend Zoe");

    w.join_room(ext::JoinRoomRequest {
        room_id: "10001@chatroom".into(),
        contact_ids: vec!["wxid_grace".into()],
        inviter_id: "wxid_alice".into(),
    })
    .await
    .unwrap();
    assert_eq!(next(&mut rx).await, "join Tea Lovers wxid_grace");
    let last = w.list_messages(ext::ListMessagesRequest { conversation_id: "10001@chatroom".into() }).await.unwrap();
    let last = last.into_inner().messages.pop().unwrap();
    assert_eq!((last.text.as_str(), last.mention_ids.as_slice()), ("welcome", &["wxid_grace".to_owned()][..]));

    _ = stop_tx.send(());
    running.await.unwrap().unwrap();
    drop(tx);
    let rest: Vec<String> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
    assert!(rest.iter().all(|r| !r.starts_with("error") && !r.starts_with("regex")), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finders_and_the_cache_follow_dirty_events() {
    let (server, _events) = online().await;
    let (ctx_tx, mut ctx_rx) = mpsc::unbounded_channel();
    let bot = Bot::new(ConnectOptions::new(server.addr.to_string(), TOKEN)).on_login(move |me| {
        let tx = ctx_tx.clone();
        async move { Ok(_ = tx.send(me)) }
    });
    let running = tokio::spawn(bot.run_until(std::future::pending()));
    let me = next(&mut ctx_rx).await;
    let ctx = me_ctx(&me);

    let alice = ctx.find_contact("Alice (work)").await.unwrap().expect("found by alias");
    assert_eq!(alice.id().as_str(), "wxid_alice");
    assert_eq!(alice.name().await.unwrap(), "Alice");
    let room = ctx.find_room("Rust 中文社区").await.unwrap().expect("found by topic");
    assert_eq!(room.members().await.unwrap().len(), 6);

    // The world renames Alice: the DIRTY event drops the cached payload.
    world(&server)
        .await
        .update_contact(ext::UpdateContactRequest {
            contact_id: "wxid_alice".into(),
            name: Some("Alicia".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let renamed = tokio::time::timeout(WAIT, async {
        loop {
            if alice.name().await.unwrap() == "Alicia" {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    assert!(renamed.is_ok(), "the cached name never changed");

    alice.set_alias("").await.unwrap();
    assert_eq!(alice.alias().await.unwrap(), "");
    running.abort();
}

fn me_ctx(me: &puppet_client::bot::Contact) -> puppet_client::bot::Ctx {
    me.ctx().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_messages_arrive_exactly_once_in_order_across_severed_connections() {
    let (server, _events) = online().await;
    let proxy = Proxy::start(server.addr).await;
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let log = seen.clone();
    let bot = Bot::new(ConnectOptions::new(proxy.addr.to_string(), TOKEN)).on_message(move |msg| {
        let (log, done) = (log.clone(), done_tx.clone());
        async move {
            if let Some(n) = msg.text().strip_prefix("m-") {
                log.lock().unwrap().push(n.to_owned());
                if n == "999" {
                    _ = done.send(());
                }
            }
            Ok(())
        }
    });
    let (login_tx, mut login_rx) = mpsc::unbounded_channel();
    let bot = bot.on_login(move |_| {
        let tx = login_tx.clone();
        async move { Ok(_ = tx.send(())) }
    });
    let running = tokio::spawn(bot.run_until(std::future::pending()));
    next(&mut login_rx).await;

    let mut w = world(&server).await;
    for i in 0..1000 {
        let text = format!("m-{i}");
        w.say(ext::SayRequest { from_id: "wxid_alice".into(), text, ..Default::default() }).await.unwrap();
        if i % 150 == 75 {
            proxy.sever();
        }
    }
    tokio::time::timeout(Duration::from_secs(60), done_rx.recv()).await.expect("the bot did not get all messages");
    let got = seen.lock().unwrap().clone();
    let expected: Vec<String> = (0..1000).map(|i| i.to_string()).collect();
    assert_eq!(got.len(), 1000, "duplicates or losses");
    assert_eq!(got, expected, "order");
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_beyond_the_retention_window_is_reported() {
    let server = Server::start(&["--event-retention", "200"]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let proxy = Proxy::start(server.addr).await;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let (t1, t2) = (tx.clone(), tx.clone());
    let bot = Bot::new(ConnectOptions::new(proxy.addr.to_string(), TOKEN))
        .on_login(move |_| {
            let tx = t1.clone();
            async move { Ok(_ = tx.send("login".into())) }
        })
        .on_error(move |e| {
            let tx = t2.clone();
            async move { Ok(_ = tx.send(e.to_string())) }
        });
    let running = tokio::spawn(bot.run_until(std::future::pending()));
    assert_eq!(next(&mut rx).await, "login");

    proxy.block(true);
    proxy.sever();
    world(&server).await.flood(ext::FloodRequest { count: 1000, per_second: 0 }).await.unwrap();
    proxy.block(false);
    let report = next(&mut rx).await;
    assert!(report.starts_with("events were lost while disconnected"), "{report}");
    assert!(report.contains("cannot resume after sequence"), "{report}");
    running.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ding_dong_example_answers() {
    let example = puppet_tests::workspace_binary("examples/ding_dong");
    crate::polyglot::ding_dong(tokio::process::Command::new(example), "logged in as").await;
}
