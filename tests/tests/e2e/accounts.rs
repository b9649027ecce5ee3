//! Many accounts in one process: routed by token, isolated, discovered, reloaded, sharded.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::admin_client::AdminClient;
use puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, Token, http_get, kind};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const ADMIN: &str = "admin_t0ken_for_tests";
const WAIT: Duration = Duration::from_secs(20);

fn account(name: &str) -> String {
    format!(
        "[[account]]\nname = \"{name}\"\ntoken = \"puppet_{name}_token\"\nbackend = \"mock\"\nlogin_step_ms = 5\n\n"
    )
}

fn token(name: &str) -> String {
    format!("puppet_{name}_token")
}

fn write_accounts(dir: &Path, names: &[&str]) -> String {
    let path = dir.join("accounts.toml");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(&path, names.iter().map(|n| account(n)).collect::<String>()).unwrap();
    path.display().to_string()
}

/// A server over `names`, with its side port, the admin token and its own data dir (`dir`).
fn start(dir: &Path, names: &[&str], extra: &[&str]) -> Server {
    let file = write_accounts(dir, names);
    let mut args = vec!["--accounts", file.as_str(), "--http-listen", "127.0.0.1:0", "--admin-token", ADMIN];
    args.extend_from_slice(extra);
    Server::start_in(&dir.join("data"), &args)
}

fn temp(tag: &str) -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    std::env::temp_dir().join(format!("puppet-accounts-{tag}-{}-{n}", std::process::id()))
}

async fn admin(server: &Server, token: &str) -> AdminClient<InterceptedService<Channel, Token>> {
    AdminClient::with_interceptor(server.channel().await, Token(token.into()))
}

async fn world(server: &Server, name: &str) -> MockWorldClient<InterceptedService<Channel, Token>> {
    MockWorldClient::with_interceptor(server.channel().await, Token(token(name)))
}

async fn logged_in(server: &Server, name: &str) -> Events {
    let mut events = Events::open(&mut server.puppet_as(&token(name)).await).await;
    events.wait_for(kind::READY).await;
    events
}

/// The next MESSAGE event's text, skipping everything else.
async fn next_text(events: &mut Events, puppet: &mut puppet_tests::PuppetClientT) -> String {
    let p = events.wait_for(kind::MESSAGE).await;
    let id = p["messageId"].as_str().unwrap().to_owned();
    puppet.message_payload(pb::MessagePayloadRequest { id }).await.unwrap().into_inner().text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_accounts_are_routed_by_token_and_kept_apart() {
    let dir = temp("three");
    let server = start(&dir, &["sales", "support", "ops"], &[]);
    let mut sales_events = logged_in(&server, "sales").await;
    let mut support_events = logged_in(&server, "support").await;
    let (mut sales, mut support) = (server.puppet_as(&token("sales")).await, server.puppet_as(&token("support")).await);

    // A message to one account is seen on its stream only: support's first message is its own.
    let say = |text: &str| ext::SayRequest { from_id: "wxid_alice".into(), text: text.into(), ..Default::default() };
    let to_sales = world(&server, "sales").await.say(say("for sales")).await.unwrap().into_inner().message_id;
    world(&server, "support").await.say(say("for support")).await.unwrap();
    assert_eq!(next_text(&mut sales_events, &mut sales).await, "for sales");
    assert_eq!(next_text(&mut support_events, &mut support).await, "for support");
    // Message ids are each account's own: sales' id names nothing of sales' on support.
    match support.message_payload(pb::MessagePayloadRequest { id: to_sales.clone() }).await {
        Ok(m) => assert_ne!(m.into_inner().text, "for sales"),
        Err(e) => assert_eq!(e.code(), Code::NotFound, "{e:?}"),
    }

    // Contacts: a change in one world leaves the others as they were.
    world(&server, "sales")
        .await
        .update_contact(ext::UpdateContactRequest {
            contact_id: "wxid_alice".into(),
            name: Some("Alice of sales".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let name_in = async |p: &mut puppet_tests::PuppetClientT| {
        p.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await.unwrap().into_inner().name
    };
    assert_eq!(name_in(&mut sales).await, "Alice of sales");
    assert_ne!(name_in(&mut support).await, "Alice of sales");

    // A token no account holds is refused as before.
    let err = server.puppet_as("puppet_nobody").await.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert_eq!(err.message(), "Invalid Wechaty TOKEN \"puppet_nobody\"");

    // Discovery answers for the three tokens, 404 for any other.
    let http = server.http_addr.unwrap();
    for name in ["sales", "support", "ops"] {
        let (status, body) = http_get(http, &format!("/v0/hosties/{}", token(name))).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["host"], "127.0.0.1");
        assert_eq!(v["ip"], "127.0.0.1");
        assert_eq!(v["port"], server.addr.port());
    }
    assert_eq!(http_get(http, "/v0/hosties/puppet_nobody").await, (404, "{}".to_owned()));

    // The side port: per-account metrics, readiness and login page.
    let (_, metrics) = http_get(http, "/metrics").await;
    assert!(metrics.contains("puppet_logged_in{account=\"sales\"} 1"), "{metrics}");
    assert!(metrics.contains("puppet_logged_in{account=\"support\"} 1"), "{metrics}");
    assert_eq!(metrics.matches("# TYPE puppet_logged_in gauge").count(), 1, "one family: {metrics}");
    assert_eq!(http_get(http, "/readyz?account=sales").await.0, 200);
    assert_eq!(http_get(http, "/readyz?account=nobody").await.0, 404);
    let (status, page) = http_get(http, &format!("/qrcode?token={}", token("support"))).await;
    assert_eq!(status, 200);
    assert!(page.contains("Logged in"), "{page}");
    assert_eq!(http_get(http, &format!("/qrcode?account=ops&token={ADMIN}")).await.0, 200);
    assert_eq!(http_get(http, &format!("/qrcode?account=ops&token={}", token("sales"))).await.0, 401);

    // The operator's list, behind the admin token.
    let list = admin(&server, ADMIN).await.list_accounts(ext::ListAccountsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = list.accounts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["ops", "sales", "support"]);
    assert!(list.accounts.iter().all(|a| a.backend == "mock"));
    let err = admin(&server, &token("sales")).await.list_accounts(ext::ListAccountsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);

    // puppetctl accounts: the same list for a person.
    let out = std::process::Command::new(puppet_tests::workspace_binary("puppetctl"))
        .args(["--endpoint", &server.addr.to_string(), "accounts"])
        .env("PUPPET_ADMIN_TOKEN", ADMIN)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table} {}", String::from_utf8_lossy(&out.stderr));
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert_eq!(&rows[1][..5], ["sales", "mock", "logged", "in", "wxid_puppet_bot"], "{table}");
    let out = std::process::Command::new(puppet_tests::workspace_binary("puppetctl"))
        .args(["--endpoint", &server.addr.to_string(), "accounts", "--admin-token", "wrong"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("Invalid Wechaty TOKEN"), "{out:?}");
    drop(server);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_account_flooding_does_not_stall_another() {
    let dir = temp("flood");
    let server = start(&dir, &["loud", "quiet"], &[]);
    let mut quiet_events = logged_in(&server, "quiet").await;
    _ = logged_in(&server, "loud").await;
    let mut quiet = server.puppet_as(&token("quiet")).await;
    // The loud account floods, with nobody reading a stream it holds open.
    let mut loud = server.puppet_as(&token("loud")).await;
    let _unread = loud.event(pb::EventRequest::default()).await.unwrap().into_inner();
    let flooding = tokio::spawn({
        let mut w = world(&server, "loud").await;
        async move { w.flood(ext::FloodRequest { count: 200_000, per_second: 0 }).await }
    });
    let say = ext::SayRequest { from_id: "wxid_alice".into(), text: "still here".into(), ..Default::default() };
    world(&server, "quiet").await.say(say).await.unwrap();
    let text =
        tokio::time::timeout(WAIT, next_text(&mut quiet_events, &mut quiet)).await.expect("quiet is not stalled");
    assert_eq!(text, "still here");
    flooding.await.unwrap().unwrap();
    drop(server);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_accounts_while_the_others_keep_streaming() {
    let dir = temp("reload");
    let server = start(&dir, &["sales", "support", "ops"], &[]);
    let mut sales_events = logged_in(&server, "sales").await;
    let mut sales = server.puppet_as(&token("sales")).await;
    let say = |text: &str| ext::SayRequest { from_id: "wxid_alice".into(), text: text.into(), ..Default::default() };
    world(&server, "sales").await.say(say("before")).await.unwrap();
    assert_eq!(next_text(&mut sales_events, &mut sales).await, "before");

    // A bad file changes nothing.
    let file = dir.join("accounts.toml");
    std::fs::write(&file, format!("{}[[account]]\nname = \"broken\"\n", account("sales"))).unwrap();
    let err = admin(&server, ADMIN).await.reload_accounts(ext::ReloadAccountsRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains(":7: account `broken` has no `token`"), "{}", err.message());
    assert!(err.message().contains("unchanged"), "{}", err.message());
    server.puppet_as(&token("ops")).await.version(pb::VersionRequest {}).await.expect("ops still served");

    // ops leaves, extra joins; sales and support are untouched.
    write_accounts(&dir, &["sales", "support", "extra"]);
    let done = admin(&server, ADMIN).await.reload_accounts(ext::ReloadAccountsRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (done.added, done.removed, done.restarted, done.unchanged),
        (vec!["extra".into()], vec!["ops".into()], vec![], 2)
    );
    let err = server.puppet_as(&token("ops")).await.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    _ = logged_in(&server, "extra").await;
    // The stream opened before the reload goes on, without a break.
    world(&server, "sales").await.say(say("after")).await.unwrap();
    assert_eq!(next_text(&mut sales_events, &mut sales).await, "after");

    // SIGHUP rereads the file too: a changed account restarts.
    std::fs::write(
        &file,
        format!(
            "{}{}{}",
            account("sales"),
            account("support"),
            account("extra").replace("login_step_ms = 5", "login_step_ms = 6")
        ),
    )
    .unwrap();
    let mut changes = admin(&server, ADMIN).await;
    let before = changes.list_accounts(ext::ListAccountsRequest {}).await.unwrap().into_inner();
    assert_eq!(before.accounts.len(), 3);
    std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    // The restarted account comes back logged out then logs in again (autostart): its login
    // event arrives on a new stream.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let list = changes.list_accounts(ext::ListAccountsRequest {}).await.unwrap().into_inner();
        let extra = list.accounts.iter().find(|a| a.name == "extra");
        // last_seq grows when the restarted account logs in again.
        let before_seq = before.accounts.iter().find(|a| a.name == "extra").unwrap().last_seq;
        if extra.is_some_and(|a| a.logged_in && a.last_seq > before_seq) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not restart `extra`: {list:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    world(&server, "sales").await.say(say("after the signal")).await.unwrap();
    assert_eq!(next_text(&mut sales_events, &mut sales).await, "after the signal");

    // A rename keeps the token working: the new name starts, the old one stops.
    let renamed = account("support").replace("name = \"support\"", "name = \"helpdesk\"");
    std::fs::write(&file, format!("{}{renamed}{}", account("sales"), account("extra").replace("= 5", "= 6"))).unwrap();
    let done = admin(&server, ADMIN).await.reload_accounts(ext::ReloadAccountsRequest {}).await.unwrap().into_inner();
    assert_eq!((done.added, done.removed), (vec!["helpdesk".into()], vec!["support".into()]));
    server.puppet_as(&token("support")).await.version(pb::VersionRequest {}).await.expect("the token still opens it");
    drop(server);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_pods_split_the_tokens_and_each_discovers_every_owner() {
    let dir = temp("shard");
    let names: Vec<String> = (0..24).map(|i| format!("a{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let file = write_accounts(&dir, &refs);
    let pods: Vec<Server> = (0..8)
        .map(|k| {
            let pod = format!("puppet-rs-{k}");
            let data = dir.join(format!("pod{k}"));
            Server::start_in(
                &data,
                &[
                    "--accounts",
                    file.as_str(),
                    "--http-listen",
                    "127.0.0.1:0",
                    "--admin-token",
                    ADMIN,
                    "--replicas",
                    "8",
                    "--pod-name",
                    pod.as_str(),
                    "--pod-service",
                    "puppet-rs-pods",
                    "--discovery-port",
                    "8788",
                    "--autostart",
                    "false",
                ],
            )
        })
        .collect();
    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    for (k, pod) in pods.iter().enumerate() {
        let list = admin(pod, ADMIN).await.list_accounts(ext::ListAccountsRequest {}).await.unwrap().into_inner();
        assert_eq!((list.ordinal, list.replicas), (k as u32, 8));
        for a in list.accounts {
            assert!(owner.insert(a.name.clone(), k).is_none(), "{} served twice", a.name);
        }
    }
    assert_eq!(owner.keys().cloned().collect::<BTreeSet<_>>(), names.iter().cloned().collect(), "each served once");
    // Every pod names the owner of every token; a pod serves only its own.
    for pod in &pods {
        let http = pod.http_addr.unwrap();
        for name in &names {
            let (status, body) = http_get(http, &format!("/v0/hosties/{}", token(name))).await;
            assert_eq!(status, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["host"], format!("puppet-rs-{}.puppet-rs-pods", owner[name]), "{name}");
            assert_eq!(v["port"], 8788);
        }
        assert_eq!(http_get(http, "/v0/hosties/puppet_nobody").await.0, 404);
    }
    let (name, k) = owner.iter().next().unwrap();
    pods[*k].puppet_as(&token(name)).await.version(pb::VersionRequest {}).await.expect("served by its owner");
    let other = (k + 1) % 8;
    let err = pods[other].puppet_as(&token(name)).await.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "another pod does not serve it");
    drop(pods);
    _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_bad_accounts_file_is_refused_at_start_with_the_line() {
    let dir = temp("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("accounts.toml");
    std::fs::write(&file, format!("{}{}", account("sales"), account("sales"))).unwrap();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(puppet_tests::server_binary())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.join("data"))
            .arg("--accounts")
            .arg(&file)
            .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the server exits")
    .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("accounts.toml:7: the name `sales` is used already (line 1)"), "{stderr}");
    _ = std::fs::remove_dir_all(dir);
}
