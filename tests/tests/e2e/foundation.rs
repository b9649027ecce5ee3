//! Health, reflection, auth and the start-up banner, with Rust clients.

use puppet_proto::pb::wechaty::puppet::VersionRequest;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_tests::{Server, TOKEN};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Follows `grpc.health.v1.Health/Watch` for `service` until it reports `want`.
async fn health_becomes(channel: tonic::transport::Channel, service: &str, want: ServingStatus) {
    let mut health = HealthClient::new(channel);
    let mut watch = health.watch(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
    let reached = tokio::time::timeout(puppet_tests::EVENT_TIMEOUT, async {
        while let Some(r) = watch.message().await.unwrap() {
            if r.status() == want {
                return;
            }
        }
    })
    .await;
    assert!(reached.is_ok(), "{service:?} never became {want:?}");
}

#[tokio::test]
async fn liveness_is_open_and_readiness_follows_the_login() {
    let server = Server::start(&["--autostart", "false"]);
    let mut health = HealthClient::new(server.channel().await);
    let live = health.check(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(live.status(), ServingStatus::Serving, "liveness needs no token and no login");
    health_becomes(server.channel().await, "wechaty.Puppet", ServingStatus::NotServing).await;

    let mut puppet = server.puppet().await;
    puppet.start(puppet_proto::pb::wechaty::puppet::StartRequest {}).await.unwrap();
    health_becomes(server.channel().await, "wechaty.Puppet", ServingStatus::Serving).await;
    puppet.logout(puppet_proto::pb::wechaty::puppet::LogoutRequest {}).await.unwrap();
    health_becomes(server.channel().await, "wechaty.Puppet", ServingStatus::NotServing).await;

    let started = Server::start(&["--autostart", "false", "--ready-when", "started"]);
    health_becomes(started.channel().await, "wechaty.Puppet", ServingStatus::Serving).await;
}

#[tokio::test]
async fn reflection_lists_the_services() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let server = Server::start(&[]);
    let mut client = ServerReflectionClient::new(server.channel().await);
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = client.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let resp = stream.next().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else { panic!("{resp:?}") };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["wechaty.Puppet", "puppet_rs.v1.EventFeed", "puppet_rs.v1.MockWorld", "grpc.health.v1.Health"] {
        assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
    }
}

#[tokio::test]
async fn the_puppet_service_needs_the_token() {
    let server = Server::start(&[]);
    let mut anonymous = PuppetClient::new(server.channel().await);
    let err = anonymous.version(VersionRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    // tonic sends the address as :authority, which is not the token.
    assert!(err.message().starts_with("Invalid Wechaty TOKEN"), "{}", err.message());

    let mut puppet = server.puppet().await;
    let version = puppet.version(VersionRequest {}).await.unwrap().into_inner().version;
    assert!(version.starts_with("puppet-rs/"), "{version}");
    assert!(version.contains("mock"), "{version}");
}

#[tokio::test]
async fn a_generated_token_is_printed_and_kept_in_the_data_dir() {
    use std::io::{BufRead, BufReader};
    let dir = std::env::temp_dir().join(format!("puppet-token-e2e-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let start = || {
        let mut child = std::process::Command::new(puppet_tests::server_binary())
            .args(["--listen", "127.0.0.1:0", "--autostart", "false", "--data-dir"])
            .arg(&dir)
            .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
            .env_remove("WECHATY_TOKEN")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines().map_while(Result::ok);
        let token_line = lines.take(10).find(|l| l.trim_start().starts_with("token")).expect("token line");
        _ = child.kill();
        _ = child.wait();
        token_line.split_whitespace().nth(1).unwrap().to_owned()
    };
    let first = start();
    assert!(first.starts_with("insecure_"), "{first}");
    assert_eq!(std::fs::read_to_string(dir.join("token")).unwrap(), first);
    assert_eq!(start(), first, "the saved token is reused");
    assert_ne!(first, TOKEN);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly() {
    let mut server = Server::start(&[]);
    let mut puppet = server.puppet().await;
    let mut events =
        puppet.event(puppet_proto::pb::wechaty::puppet::EventRequest::default()).await.unwrap().into_inner();
    events.message().await.unwrap().expect("heartbeat");
    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    // The event stream ends with OK (None), not an error.
    loop {
        match events.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => break,
            Err(e) => panic!("stream ended with an error: {e}"),
        }
    }
}

/// The banner's token line of a server started on `dir` without a token (then killed).
fn banner_token_line(dir: &std::path::Path) -> String {
    use std::io::BufRead;
    let mut child = std::process::Command::new(puppet_tests::server_binary())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir)
        .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
        .env_remove("WECHATY_TOKEN")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    // Each line arrives as the server prints it; the banner comes first, so this ends.
    let mut before = Vec::new();
    let mut token_line = String::new();
    for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
        if line.trim_start().starts_with("token ") {
            token_line = line;
            break;
        }
        before.push(line);
    }
    _ = child.kill();
    _ = child.wait();
    assert!(before.iter().any(|l| l.contains("listening  grpc://")), "{before:?}");
    assert!(!before.iter().any(|l| l.contains("scan to log in")), "the banner comes before the QR: {before:?}");
    token_line
}

#[test]
fn a_new_user_is_told_the_token_was_generated_then_that_it_was_saved() {
    let dir = std::env::temp_dir().join(format!("puppet-banner-{}", std::process::id()));
    let first = banner_token_line(&dir);
    assert!(first.contains("insecure_") && first.contains("(generated, saved in"), "{first}");
    let again = banner_token_line(&dir);
    assert!(again.contains("(saved in"), "{again}");
    _ = std::fs::remove_dir_all(dir);
}
