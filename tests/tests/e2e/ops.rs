//! Operations: the side port (liveness, readiness, Prometheus metrics).

use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, TOKEN, http_get, http_request, kind};

/// The value of one sample line, e.g. `puppet_rpc_requests_total{method="…",code="Ok"}`.
fn sample(metrics: &str, name_and_labels: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name_and_labels)?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_side_port_serves_health_readiness_and_metrics() {
    let server = Server::start(&["--autostart", "false", "--http-listen", "127.0.0.1:0"]);
    let http = server.http_addr.expect("side port");
    assert_eq!(http_get(http, "/healthz").await, (200, "ok\n".into()));
    assert_eq!(http_get(http, "/readyz").await.0, 503, "not ready before login");

    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    puppet.start(pb::StartRequest {}).await.unwrap();
    events.wait_for(kind::READY).await;
    assert_eq!(http_get(http, "/readyz").await.0, 200);

    let version = r#"puppet_rpc_requests_total{method="/wechaty.Puppet/Version",code="Ok"}"#;
    let (status, before) = http_get(http, "/metrics").await;
    assert_eq!(status, 200);
    let n = sample(&before, version).unwrap_or(0.0);
    puppet.version(pb::VersionRequest {}).await.unwrap();
    puppet.version(pb::VersionRequest {}).await.unwrap();
    let e = puppet.contact_payload(pb::ContactPayloadRequest { id: "nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let (_, after) = http_get(http, "/metrics").await;
    assert_eq!(sample(&after, version), Some(n + 2.0), "{after}");
    assert_eq!(
        sample(&after, r#"puppet_rpc_requests_total{method="/wechaty.Puppet/ContactPayload",code="NotFound"}"#),
        Some(1.0)
    );
    assert!(sample(&after, r#"puppet_rpc_seconds_count{method="/wechaty.Puppet/Version"}"#).unwrap() >= 2.0);
    assert_eq!(sample(&after, "puppet_event_subscribers"), Some(1.0), "the one open Event stream");
    assert_eq!(sample(&after, "puppet_logged_in"), Some(1.0));
    assert!(sample(&after, "puppet_events_emitted").unwrap() >= 5.0, "scan x3, login, ready");
    assert!(sample(&after, "puppet_blob_bytes").is_some());
}

/// Every manifest under `deploy/k8s` (the single-account set and `sharded/`), sorted.
fn manifest_files() -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![puppet_tests::repo_root().join("deploy/k8s")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn the_kubernetes_manifests_validate_offline() {
    let validate = puppet_tests::installed("PUPPET_KUBE_VALIDATE", "kubernetes-validate");
    let files = manifest_files();
    assert!(files.len() >= 11, "{files:?}");
    let out = std::process::Command::new(validate).arg("--strict").args(&files).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for resource in [
        // One account per pod.
        "statefulset/puppet-rs",
        "service/puppet-rs",
        "configmap/puppet-rs",
        "secret/puppet-rs-token",
        "poddisruptionbudget/puppet-rs",
        "ingress/puppet-rs-webhook",
        // Many accounts sharded over the pods.
        "statefulset/puppet-rs-shard",
        "service/puppet-rs-pods",
        "service/puppet-rs-discovery",
        "configmap/puppet-rs-shard",
        "secret/puppet-rs-accounts",
        "secret/puppet-rs-admin",
        "poddisruptionbudget/puppet-rs-shard",
        "ingress/puppet-rs-discovery",
    ] {
        assert!(text.contains(&format!("passed for resource {resource} ")), "{resource} not validated:\n{text}");
    }
}

/// The value of the first line of `text` that reads `<key>: <value>` (indentation and a list
/// dash ignored), without quotes.
fn yaml_value<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let l = l.trim_start().trim_start_matches("- ");
        Some(l.strip_prefix(key)?.strip_prefix(':')?.trim().trim_matches('"'))
    })
}

/// The `value:` of the container environment variable `name` in a manifest.
fn env_value<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    let after = text.split(&format!("- name: {name}\n")).nth(1)?;
    yaml_value(after.lines().next()?, "value")
}

#[test]
fn the_sharded_manifests_agree_on_the_replica_count_and_the_pod_names() {
    let dir = puppet_tests::repo_root().join("deploy/k8s/sharded");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let (sts, services, config, secrets) =
        (read("statefulset.yaml"), read("service.yaml"), read("configmap.yaml"), read("secret.yaml"));

    // Every pod must know how many there are: that count decides which accounts it serves.
    let replicas = yaml_value(&sts, "replicas").expect("spec.replicas");
    assert_eq!(env_value(&sts, "PUPPET_REPLICAS"), Some(replicas), "PUPPET_REPLICAS must equal spec.replicas");
    let pod_name = sts.split("- name: POD_NAME\n").nth(1).expect("POD_NAME is set");
    let field = pod_name.lines().take(3).find_map(|l| yaml_value(l, "fieldPath"));
    assert_eq!(field, Some("metadata.name"), "POD_NAME comes from the downward API");

    // Discovery names pods `<sts>-<k>.<PUPPET_POD_SERVICE>`: that must be the headless Service the
    // StatefulSet names its pods with, and it must resolve before the pods are ready.
    let governing = yaml_value(&sts, "serviceName").expect("spec.serviceName");
    let headless = services
        .split("\n---\n")
        .find(|doc| yaml_value(doc, "name") == Some(governing))
        .unwrap_or_else(|| panic!("no Service {governing} in service.yaml"));
    assert_eq!(yaml_value(headless, "clusterIP"), Some("None"), "{governing} must be headless");
    assert_eq!(yaml_value(headless, "publishNotReadyAddresses"), Some("true"));
    let pod_service = env_value(&sts, "PUPPET_POD_SERVICE").expect("PUPPET_POD_SERVICE");
    assert!(pod_service.starts_with(&format!("{governing}.")), "{pod_service} is not under {governing}");

    // The accounts file is where PUPPET_ACCOUNTS says, from the Secret that holds it.
    let accounts = yaml_value(&config, "PUPPET_ACCOUNTS").expect("PUPPET_ACCOUNTS");
    let (mount, file) = accounts.rsplit_once('/').unwrap();
    assert!(sts.contains(&format!("mountPath: {mount}\n")), "nothing mounted at {mount}");
    assert!(secrets.contains(&format!("  {file}: |\n")), "the Secret has no {file}");
    assert!(secrets.matches("[[account]]").count() >= 2, "the example holds two accounts");
}

/// The environment variables `puppet-server --help` documents (`[env: NAME=…]`).
fn flag_env_names() -> std::collections::BTreeSet<String> {
    let out = std::process::Command::new(puppet_tests::server_binary()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    help.split("[env: ").skip(1).map(|rest| rest.split(['=', ']']).next().unwrap().to_owned()).collect()
}

#[test]
fn every_environment_variable_in_the_manifests_is_a_flag_of_the_server() {
    // Spelled only into another value with `$(NAME)`; the server never reads it.
    const HELPERS: [&str; 1] = ["POD_NAMESPACE"];
    let flags = flag_env_names();
    assert!(flags.contains("PUPPET_LISTEN") && flags.contains("WECHATY_PUPPET_SERVICE_TOKEN"), "{flags:?}");
    let mut unknown = std::collections::BTreeSet::new();
    let mut checked = 0;
    for file in manifest_files() {
        let text = std::fs::read_to_string(&file).unwrap();
        let shown = file.strip_prefix(puppet_tests::repo_root()).unwrap().display().to_string();
        // Every name the server would read: ConfigMap and Secret keys, `env` entries, and the ones
        // comments point to.
        let words = text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        let mut names: Vec<&str> =
            words.filter(|w| w.starts_with("PUPPET_") || w.starts_with("WECHATY_") || *w == "POD_NAME").collect();
        // Every other upper-case `env` entry must be a helper that is actually used.
        for line in text.lines() {
            let Some(name) = line.trim_start().strip_prefix("- name: ") else { continue };
            if name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') {
                if HELPERS.contains(&name) {
                    assert!(text.contains(&format!("$({name})")), "{shown}: {name} is set but never used");
                } else {
                    names.push(name);
                }
            }
        }
        for name in names {
            checked += 1;
            if !flags.contains(name) {
                unknown.insert(format!("{shown}: {name}"));
            }
        }
    }
    assert!(checked >= 20, "only {checked} names found");
    assert!(
        unknown.is_empty(),
        "not an environment variable of any puppet-server flag:\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

/// The ConfigMap's settings, as environment variables.
fn configmap_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(puppet_tests::repo_root().join("deploy/k8s/configmap.yaml")).unwrap();
    let data = text.split("\ndata:\n").nth(1).expect("a data section");
    data.lines()
        .filter_map(|l| l.strip_prefix("  ")?.split_once(": "))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_with_the_configmap_settings_and_answers_the_probes() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let env = configmap_env();
    assert!(env.iter().any(|(k, _)| k == "PUPPET_READY_WHEN"), "{env:?}");
    // Same settings, but loopback and free ports here, and a temporary data dir.
    let env: Vec<(String, String)> = env
        .into_iter()
        .filter(|(k, _)| !matches!(k.as_str(), "PUPPET_LISTEN" | "PUPPET_HTTP_LISTEN" | "PUPPET_DATA_DIR"))
        .collect();
    let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = Server::start_with_env(&["--http-listen", "127.0.0.1:0"], &refs);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let mut health = HealthClient::new(server.channel().await);
    for service in ["", "wechaty.Puppet"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status(), ServingStatus::Serving, "probe service {service:?}");
    }
    let (status, metrics) = http_get(server.http_addr.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics.contains("puppet_logged_in 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_streams_and_in_flight_uploads_and_keeps_what_was_accepted() {
    use puppet_tests::{pattern_chunks, sha256};
    let dir = std::env::temp_dir().join(format!("puppet-drain-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let mut server = Server::start_in(&dir, &["--shutdown-grace-secs", "20"]);
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await.into_inner();

    // An upload whose chunks are still coming when SIGTERM arrives.
    let chunks: Vec<Vec<u8>> = pattern_chunks(42, 4 << 20, 256 * 1024).collect();
    let digest = sha256(chunks.iter().map(Vec::as_slice));
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut uploader = server.puppet().await;
    let upload = tokio::spawn(async move { uploader.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let mut chunks = chunks.into_iter();
    tx.send(pb::UploadRequest { chunk: chunks.next().unwrap() }).await.unwrap();
    tx.send(pb::UploadRequest { chunk: chunks.next().unwrap() }).await.unwrap(); // the first is in the server

    let pid = server.pid().to_string();
    std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    // The event stream ends with OK.
    loop {
        match tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, events.message()).await.expect("stream end") {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("the event stream ended with {e:?}, not OK"),
        }
    }
    for chunk in chunks {
        tx.send(pb::UploadRequest { chunk }).await.unwrap();
    }
    drop(tx);
    let id = upload.await.unwrap().expect("the in-flight upload completes during the drain").into_inner().id;
    let status = tokio::task::spawn_blocking(move || server.terminate()).await.unwrap();
    assert!(status.success(), "{status:?}");

    // A new process on the same data dir still has what was accepted.
    let again = Server::start_in(&dir, &[]);
    let mut p = again.puppet().await;
    let mut stream = p.download(pb::DownloadRequest { id }).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.push(m.chunk);
    }
    assert_eq!(sha256(got.iter().map(Vec::as_slice)), digest);
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_the_same_data_dir_keeps_the_login_and_the_world_and_survives_a_corrupt_file() {
    use puppet_proto::pb::puppet_rs::v1 as ext;
    let dir = std::env::temp_dir().join(format!("puppet-restart-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let bob_alias = |alias: Option<&str>| {
        #[allow(deprecated)]
        let r = pb::ContactAliasRequest {
            id: "wxid_bob".into(),
            alias: alias.map(str::to_owned),
            alias_string_value_deprecated: alias.map(str::to_owned),
        };
        r
    };

    let mut first = Server::start_in(&dir, &[]);
    let mut p = first.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;
    p.contact_alias(bob_alias(Some("Bobby"))).await.unwrap();
    #[allow(deprecated)]
    let topic =
        pb::RoomTopicRequest { id: "10002@chatroom".into(), topic: Some("Persisted".into()), ..Default::default() };
    p.room_topic(topic).await.unwrap();
    let mut w = puppet_tests::world(&first).await;
    w.request_friendship(ext::RequestFriendshipRequest {
        contact_id: "wxid_zoe".into(),
        name: "Zoe".into(),
        hello: "hi".into(),
    })
    .await
    .unwrap();
    let status = tokio::task::spawn_blocking(move || first.terminate()).await.unwrap();
    assert!(status.success());

    // Back logged in, without a scan, in the world as it was.
    let second = Server::start_in(&dir, &[]);
    let mut p = second.puppet().await;
    let mut events = Events::open(&mut p).await;
    assert_eq!(events.next().await.0, kind::LOGIN, "no SCAN before the login");
    assert_eq!(events.next().await.0, kind::READY);
    assert_eq!(p.contact_alias(bob_alias(None)).await.unwrap().into_inner().alias, "Bobby");
    let room = p.room_payload(pb::RoomPayloadRequest { id: "10002@chatroom".into() }).await.unwrap().into_inner();
    assert_eq!(room.topic, "Persisted");
    let zoe = p.contact_payload(pb::ContactPayloadRequest { id: "wxid_zoe".into() }).await.unwrap().into_inner();
    assert_eq!(zoe.name, "Zoe");
    drop(second);

    // A damaged store and a damaged state file of an old server: both moved aside, and a fresh
    // world (with a fresh login) instead.
    std::fs::write(dir.join("store.redb"), b"{ this is not a store").unwrap();
    std::fs::write(dir.join("mock-world.json"), b"{ this is not json").unwrap();
    let third = Server::start_in(&dir, &[]);
    let mut p = third.puppet().await;
    let mut events = Events::open(&mut p).await;
    assert_eq!(events.next().await.0, kind::SCAN);
    events.wait_for(kind::READY).await;
    assert_eq!(p.contact_alias(bob_alias(None)).await.unwrap().into_inner().alias, "");
    let names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.starts_with("mock-world.corrupt-")), "the damaged file was kept aside: {names:?}");
    assert!(names.iter().any(|n| n.starts_with("store.redb.unusable-")), "the damaged store was kept aside: {names:?}");
    drop(third);

    // The state file of a server from before the store: imported once (the login, Bob's alias, a
    // room's topic), then renamed; the store's world from then on.
    let old = dir.join("old");
    std::fs::create_dir_all(&old).unwrap();
    std::fs::write(old.join("mock-world.json"), OLD_STATE_FILE).unwrap();
    let mut fourth = Server::start_in(&old, &[]);
    let mut p = fourth.puppet().await;
    let mut events = Events::open(&mut p).await;
    assert_eq!(events.next().await.0, kind::LOGIN, "logged in when the old server stopped: no SCAN");
    assert_eq!(p.contact_alias(bob_alias(None)).await.unwrap().into_inner().alias, "Imported");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !old.join("mock-world.json.imported").exists() {
        assert!(std::time::Instant::now() < deadline, "the imported file is renamed once the store holds it");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(!old.join("mock-world.json").exists());
    p.contact_alias(bob_alias(Some("Changed after the import"))).await.unwrap();
    let status = tokio::task::spawn_blocking(move || fourth.terminate()).await.unwrap();
    assert!(status.success());
    let fifth = Server::start_in(&old, &[]);
    let mut p = fifth.puppet().await;
    assert_eq!(Events::open(&mut p).await.next().await.0, kind::LOGIN);
    assert_eq!(p.contact_alias(bob_alias(None)).await.unwrap().into_inner().alias, "Changed after the import");
    let room = p.room_payload(pb::RoomPayloadRequest { id: "10001@chatroom".into() }).await.unwrap().into_inner();
    assert_eq!(room.topic, "Old room");
    drop(fifth);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `mock-world.json` as servers before the store wrote it.
const OLD_STATE_FILE: &str = r#"{
  "version": 1,
  "me": "wxid_puppet_bot",
  "contacts": [
    { "id": "wxid_puppet_bot", "name": "Puppet Bot", "type": "individual" },
    { "id": "wxid_bob", "name": "Bob", "alias": "Imported", "friend": true, "type": "individual" }
  ],
  "rooms": [
    {
      "id": "10001@chatroom",
      "topic": "Old room",
      "ownerId": "wxid_bob",
      "memberIds": ["wxid_puppet_bot", "wxid_bob"],
      "memberAliases": {},
      "inviters": {},
      "announce": ""
    }
  ],
  "tags": { "vip": ["wxid_bob"] },
  "friendships": [],
  "invitations": [],
  "loggedIn": true,
  "nextId": 42
}"#;

/// The page as headless Chromium renders it (its DOM after load).
async fn rendered(url: &str) -> String {
    let chromium = puppet_tests::installed("PUPPET_CHROMIUM", "Debian's chromium");
    let profile = std::env::temp_dir().join(format!("puppet-chromium-{}-{}", std::process::id(), url.len()));
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(60),
        tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-sync",
                "--disable-component-update",
                "--dump-dom",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("chromium finished")
    .expect("run chromium");
    _ = std::fs::remove_dir_all(&profile);
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_qrcode_page_shows_the_qr_while_scanning_and_the_account_after_login() {
    // Slow login steps: the QR stays pending while the browser looks.
    let scanning = Server::start(&["--http-listen", "127.0.0.1:0", "--login-step-ms", "600000"]);
    let mut events = Events::open(&mut scanning.puppet().await).await;
    let scan = events.wait_for(kind::SCAN).await;
    let http = scanning.http_addr.unwrap();
    // The QR is the account: without the token the page refuses, and says how to open it.
    let (status, body) = http_request(http, "GET", "/qrcode", "").await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("/qrcode?token=") && !body.contains("https://login"), "{body}");
    let (status, _) = http_request(http, "GET", "/qrcode?token=wrong", "").await;
    assert_eq!(status, 401);
    let dom = rendered(&format!("http://{http}/qrcode?token={TOKEN}")).await;
    assert!(dom.contains(r#"<h1 id="state">Scan to log in</h1>"#), "{dom}");
    assert!(dom.contains("<svg"), "a QR image: {dom}");
    assert!(dom.contains(scan["qrcode"].as_str().unwrap()), "the QR text under it");
    assert!(dom.contains(r#"http-equiv="refresh""#), "the page reloads itself");

    // --qrcode-public serves it to anyone who reaches the side port.
    let online = Server::start(&["--http-listen", "127.0.0.1:0", "--qrcode-public", "true"]);
    Events::open(&mut online.puppet().await).await.wait_for(kind::READY).await;
    let dom = rendered(&format!("http://{}/qrcode", online.http_addr.unwrap())).await;
    assert!(dom.contains(r#"<h1 id="state">Logged in as Puppet Bot</h1>"#), "{dom}");
    assert!(!dom.contains("<svg"), "no QR once logged in");
}
