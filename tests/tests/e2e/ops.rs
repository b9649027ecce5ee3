//! Operations: the side port (liveness, readiness, Prometheus metrics).

use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, http_get, kind};

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
