//! Hostile input and faults against the real binary: no request can kill, stall or flood the
//! server. Each test is a finding that once held (see the hardening issue) turned into a check.
//!
//! Elsewhere in this suite: the Official Account webhook's hostile cases (deep XML, downgrade to
//! plaintext, replays, body limit) in `official_account.rs`; URLs at non-public addresses in
//! `outbound.rs`; a SIGKILL mid-upload in `blob_crash.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::raw::{self, Contract};
use puppet_tests::{Events, Server, TOKEN, http_get, http_request, installed, kind, rss_kib, world};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;

/// How long a test waits for the server to close a connection it should close.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Sum of a metric's samples (every label set) in a Prometheus text exposition.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.split(['{', ' ']).next() == Some(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics(server: &Server) -> String {
    http_get(server.http_addr.expect("side port"), "/metrics").await.1
}

/// Waits (bounded) until the server closes `stream`; how long that took.
async fn closed_within(mut stream: TcpStream, bound: Duration) -> Duration {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(bound, async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept the connection open for over {bound:?}");
    started.elapsed()
}

async fn alive(server: &Server) {
    let version = server.puppet().await.version(pb::VersionRequest {}).await;
    assert!(version.is_ok(), "the server stopped answering: {version:?}");
}

/// Retries `Version` on new connections until one is answered, for at most `bound`.
async fn answers_again_within(server: &Server, bound: Duration) {
    let deadline = Instant::now() + bound;
    loop {
        let answered = match tonic::transport::Channel::from_shared(server.endpoint()).unwrap().connect().await {
            Ok(ch) => puppet_proto::pb::wechaty::puppet_client::PuppetClient::with_interceptor(
                ch,
                puppet_tests::Token(TOKEN.into()),
            )
            .version(pb::VersionRequest {})
            .await
            .is_ok(),
            Err(_) => false,
        };
        if answered {
            return;
        }
        assert!(Instant::now() < deadline, "the server took no calls again within {bound:?}:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// CPU seconds (user + system) the process has used.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc stat");
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').expect("stat format").1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0 // USER_HZ is 100 on Linux
}

/// The value every string field of a request gets, by field name.
type FieldValue = Box<dyn Fn(&str) -> String>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_unary_rpc_answers_hostile_input_with_a_precise_status() {
    let server = Server::start(&[]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;
    let channel = server.channel().await;
    let contract = Contract::load();
    let huge = "x".repeat(1 << 20);
    let nasty = "wxid_\u{1b}[2J\u{202e}evil\r\n".to_owned();
    let variants: [(&str, FieldValue); 5] = [
        ("empty", Box::new(|_| String::new())),
        ("unknown ids", Box::new(|_| "no_such_thing_0".to_owned())),
        ("1 MB strings", Box::new(move |_| huge.clone())),
        ("control characters", Box::new(move |_| nasty.clone())),
        (
            "malformed FileBox JSON",
            Box::new(|f| if f.contains("file") { "{\"boxType\": 1, \"base64\"".into() } else { "wxid_alice".into() }),
        ),
    ];
    let mut methods = contract.unary_methods("wechaty.Puppet");
    assert!(methods.len() > 50, "the contract has {} unary methods", methods.len());
    // Logout last: it ends the session the other calls need.
    methods.sort_by_key(|m| m.path.ends_with("/Logout"));
    let mut answered = 0;
    for method in &methods {
        for (variant, value) in &variants {
            let body = contract.request(&method.input, value.as_ref());
            let result = raw::call(&channel, &method.path, TOKEN, body).await;
            if let Err(status) = &result {
                assert!(
                    !matches!(status.code(), Code::Unknown | Code::Internal),
                    "{} with {variant}: {:?} {}",
                    method.path,
                    status.code(),
                    status.message()
                );
                assert!(
                    status.message().len() <= 1100,
                    "{} with {variant}: a {}-byte status message",
                    method.path,
                    status.message().len()
                );
                assert!(
                    !status.message().chars().any(char::is_control),
                    "{} with {variant}: raw control characters in {:?}",
                    method.path,
                    status.message()
                );
            }
            answered += 1;
        }
        alive(&server).await;
    }
    assert_eq!(answered, methods.len() * variants.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fields_are_held_to_what_wechat_accepts() {
    let server = Server::start(&["--max-message-mib", "8"]);
    let mut p = server.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;
    fn invalid<T>(r: Result<T, tonic::Status>, what: &str) -> String {
        let e = r.err().unwrap_or_else(|| panic!("{what} was accepted"));
        assert_eq!(e.code(), Code::InvalidArgument, "{what}: {e:?}");
        e.message().to_owned()
    }

    // A 3 MB unknown id: refused for what it is, not echoed (an 8 MB one used to come back inside
    // the status, which then exceeded the client's limit: RESOURCE_EXHAUSTED instead of NOT_FOUND).
    let m = invalid(p.contact_payload(pb::ContactPayloadRequest { id: "x".repeat(3 << 20) }).await, "3 MB id");
    assert!(m.len() < 100 && m.contains("3145728 bytes"), "{m}");
    let e = p.contact_payload(pb::ContactPayloadRequest { id: "wxid_\u{1b}[31mred\u{202e}".into() }).await.unwrap_err();
    assert!(!e.message().contains('\u{1b}') && !e.message().contains('\u{202e}'), "{:?}", e.message());
    let e = p.contact_payload(pb::ContactPayloadRequest { id: "y".repeat(200) }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains(&"y".repeat(64)) && !e.message().contains(&"y".repeat(65)), "{}", e.message());

    invalid(
        p.tag_contact_add(pb::TagContactAddRequest { id: "t".repeat(1 << 20), contact_id: "wxid_alice".into() }).await,
        "1 MB tag",
    );
    invalid(p.ding(pb::DingRequest { data: "d".repeat(100 << 10) }).await, "100 KB of Ding data");
    let text = "字".repeat(16_385);
    invalid(
        p.message_send_text(pb::MessageSendTextRequest {
            conversation_id: "wxid_alice".into(),
            text,
            ..Default::default()
        })
        .await,
        "a 16,385-character text",
    );
    let empty_file = r#"{"boxType":1,"base64":"","name":"empty.txt"}"#;
    let m = invalid(
        p.message_send_file(pb::MessageSendFileRequest {
            conversation_id: "wxid_alice".into(),
            file_box: empty_file.into(),
        })
        .await,
        "an empty file",
    );
    assert!(m.contains("empty"), "{m}");
    let far = pb::LocationPayload { latitude: 999.0, longitude: 10.0, ..Default::default() };
    let m = invalid(
        p.message_send_location(pb::MessageSendLocationRequest {
            conversation_id: "wxid_alice".into(),
            location: Some(far),
        })
        .await,
        "latitude 999",
    );
    assert!(m.contains("latitude"), "{m}");

    // Over --max-message-mib: RESOURCE_EXHAUSTED (tonic's own answer is OUT_OF_RANGE), naming the flag.
    let nine_mib = puppet_proto::filebox::BASE64.encode(vec![1u8; 7 << 20]);
    let e = p
        .message_send_file(pb::MessageSendFileRequest {
            conversation_id: "wxid_alice".into(),
            file_box: format!(r#"{{"boxType":1,"base64":"{nine_mib}","name":"x.bin"}}"#),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-message-mib"), "{}", e.message());
    // A call that carries no file is held to --max-request-kib.
    let five_mib = "z".repeat(5 << 20);
    let e = p
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: "wxid_alice".into(),
            text: five_mib,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("--max-request-kib"), "{}", e.message());
    alive(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_messages_of_calls_that_carry_no_file_are_refused_unread() {
    let server = Server::start(&[]);
    let before = rss_kib(server.pid());
    // Three 40 MiB Dings at once (once: 100 MiB each took the server's RSS past a gigabyte).
    let mut calls = Vec::new();
    for _ in 0..3 {
        let mut p = server.puppet().await;
        calls.push(tokio::spawn(
            async move { p.ding(pb::DingRequest { data: "d".repeat(40 << 20) }).await.unwrap_err() },
        ));
    }
    for call in calls {
        let e = call.await.unwrap();
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--max-request-kib"), "{}", e.message());
    }
    let after = rss_kib(server.pid());
    eprintln!("server RSS {before} KiB before, {after} KiB after three 40 MiB Dings");
    assert!(after < before + 32 * 1024, "the server read the messages anyway: {before} → {after} KiB");
    // Files still travel inline up to --max-message-mib (the Python client needs it).
    let mut p = server.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;
    let big = puppet_proto::filebox::BASE64.encode(vec![9u8; 6 << 20]);
    let fb = format!(r#"{{"boxType":1,"base64":"{big}","name":"big.bin"}}"#);
    p.message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box: fb })
        .await
        .expect("a 6 MiB inline file is a file call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_that_fails_leaves_no_file_behind() {
    let server = Server::start(&["--http-listen", "127.0.0.1:0"]);
    let mut p = server.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;
    let blobs = server.data_dir.join("blobs");
    let files = || std::fs::read_dir(&blobs).map(|d| d.count()).unwrap_or(0);
    let big = puppet_proto::filebox::BASE64.encode(vec![7u8; 2 << 20]);
    let fb = format!(r#"{{"boxType":1,"base64":"{big}","name":"big.bin"}}"#);
    for _ in 0..2 {
        let e = p
            .message_send_file(pb::MessageSendFileRequest {
                conversation_id: "wxid_nobody".into(),
                file_box: fb.clone(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{e:?}");
    }
    // The deprecated chunked send, to an unknown conversation.
    let chunks = vec![
        pb::MessageSendFileStreamRequest { conversation_id: Some("wxid_nobody".into()), file_box_chunk: None },
        pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: None, name: Some("a.bin".into()) }),
        },
        pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(vec![1; 300_000]), name: None }),
        },
    ];
    let e = p.message_send_file_stream(tokio_stream::iter(chunks)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    // Deletions run on the blocking pool: wait (bounded) for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while files() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(files(), 0, "no blob of a failed call is left in {}", blobs.display());
    assert_eq!(metric(&metrics(&server).await, "puppet_blob_bytes"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_slow_connections_are_closed_on_both_ports_and_streams_are_not() {
    let server = Server::start(&[
        "--http-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        "puppet-hostile",
        "--idle-timeout-secs",
        "2",
        "--handshake-timeout-secs",
        "2",
        "--header-read-timeout-secs",
        "2",
        "--heartbeat-secs",
        "1",
    ]);
    let (grpc, http) = (server.addr, server.http_addr.unwrap());
    // A real event stream outlives the idle timeout: a request in flight is not idleness.
    let mut events = Events::open(&mut server.puppet().await).await;

    let silent_grpc = TcpStream::connect(grpc).await.unwrap();
    let mut preface_only = TcpStream::connect(grpc).await.unwrap();
    preface_only.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    let mut one_byte = TcpStream::connect(grpc).await.unwrap();
    one_byte.write_all(b"P").await.unwrap();
    let silent_http = TcpStream::connect(http).await.unwrap();
    let mut slowloris = TcpStream::connect(http).await.unwrap();
    slowloris.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let trickle = tokio::spawn(async move {
        // One header byte every 300 ms, never the blank line that ends the headers.
        let started = Instant::now();
        let mut buf = [0u8; 256];
        loop {
            if slowloris.write_all(b"X").await.is_err() {
                return started.elapsed();
            }
            match tokio::time::timeout(Duration::from_millis(300), slowloris.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
                _ => {}
            }
            assert!(started.elapsed() < CLOSE_BOUND, "a slowloris connection stayed open for over {CLOSE_BOUND:?}");
        }
    });
    let (a, b, c, d) = tokio::join!(
        closed_within(silent_grpc, CLOSE_BOUND),
        closed_within(preface_only, CLOSE_BOUND),
        closed_within(one_byte, CLOSE_BOUND),
        closed_within(silent_http, CLOSE_BOUND),
    );
    let e = trickle.await.unwrap();
    eprintln!(
        "closed after: silent gRPC {a:?}, preface only {b:?}, one byte {c:?}, silent HTTP {d:?}, slowloris {e:?}"
    );

    // The stream opened before them still delivers heartbeats.
    while events.next_any().await.0 != kind::HEARTBEAT {}
    let text = metrics(&server).await;
    assert!(metric(&text, "puppet_connections_idle_closed_total") >= 3.0, "{text}");
    assert!(metric(&text, "puppet_connections_refused_total") >= 1.0, "the silent TLS-capable socket: {text}");
    alive(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_closes_one_more_and_frees_slots() {
    let server = Server::start(&["--http-listen", "127.0.0.1:0", "--max-connections", "3"]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Give the accept loop the three before the fourth (a connection it took is one it counted).
    let one_more = TcpStream::connect(server.addr).await.unwrap();
    let waited = closed_within(one_more, CLOSE_BOUND).await;
    assert!(waited < Duration::from_secs(5), "the fourth connection should be closed at once, took {waited:?}");
    drop(held);
    // Slots free up as the server sees the three close; then calls work again.
    answers_again_within(&server, CLOSE_BOUND).await;
    let text = metrics(&server).await;
    assert!(metric(&text, "puppet_connections_refused_total") >= 1.0, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_backs_off_instead_of_spinning_and_recovers() {
    let server = Server::start_limited(&["--max-connections", "100000"], 64);
    let addr: SocketAddr = server.addr;
    // Far more connections than descriptors: the server runs out and accept fails with EMFILE.
    let mut held = Vec::new();
    for _ in 0..200 {
        match TcpStream::connect(addr).await {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    let deadline = Instant::now() + CLOSE_BOUND;
    while !server.log().contains("accepting connections failed") {
        assert!(Instant::now() < deadline, "the server never ran out of descriptors: {}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // While exhausted, it sleeps between attempts: measure its CPU for two seconds.
    let (cpu_before, started) = (cpu_secs(server.pid()), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_secs(server.pid()) - cpu_before;
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!("CPU while out of descriptors: {used:.2} s in {elapsed:.2} s");
    assert!(used < 0.5 * elapsed, "the accept loop spins: {used:.2} s of CPU in {elapsed:.2} s");
    // One warning when a streak of failures starts (a descriptor freed now and then may end one),
    // not one per failed accept: the old loop wrote millions.
    let warnings = server.log().matches("accepting connections failed").count();
    assert!(warnings <= 5, "{warnings} warnings, one per failed accept?\n{}", server.log());

    drop(held);
    answers_again_within(&server, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.log().contains("accepting connections works again") {
        assert!(Instant::now() < deadline, "no recovery line:\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs `tests/hostile/h2_abuse.py` against the gRPC port: (what it printed as JSON).
async fn h2_abuse(server: &Server, mode: &str, n: usize) -> serde_json::Value {
    let python = installed("PUPPET_TEST_PYTHON", "Python with grpcio and h2");
    let script = puppet_tests::repo_root().join("tests/hostile/h2_abuse.py");
    let out = tokio::process::Command::new(python)
        .arg(script)
        .args([mode, &server.addr.to_string(), TOKEN, &n.to_string()])
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out).await.expect("h2_abuse.py finished").unwrap();
    assert!(out.status.success(), "h2_abuse.py failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_streams_and_rapid_resets_on_one_connection_are_refused() {
    let server = Server::start(&["--http-listen", "127.0.0.1:0", "--max-concurrent-streams", "256"]);
    let rss_before = rss_kib(server.pid());
    let streams = h2_abuse(&server, "streams", 2000).await;
    eprintln!("2,000 streams on one connection: {streams}");
    let answered = streams["answered"].as_u64().unwrap();
    assert!(answered <= 256, "more streams than --max-concurrent-streams were taken: {streams}");
    assert!(
        streams["refused"].as_u64().unwrap() > 0 || streams["goaway"].is_number(),
        "the excess was neither refused nor the connection closed: {streams}"
    );
    let rss_after = rss_kib(server.pid());
    eprintln!("RSS {rss_before} KiB before, {rss_after} KiB after");
    assert!(rss_after < rss_before + 64 * 1024, "RSS grew from {rss_before} to {rss_after} KiB");

    let resets = h2_abuse(&server, "resets", 5000).await;
    eprintln!("5,000 rapid resets: {resets}");
    // ENHANCE_YOUR_CALM: the connection is closed long before 5,000.
    assert_eq!(resets["goaway"].as_u64(), Some(11), "{resets}");
    assert!(resets["sent"].as_u64().unwrap() < 5000 || resets["closed"] == true, "{resets}");

    alive(&server).await;
    // Once the abusive connections are gone, no subscriber is left behind.
    let deadline = Instant::now() + CLOSE_BOUND;
    while metric(&metrics(&server).await, "puppet_event_subscribers") > 0.0 {
        assert!(Instant::now() < deadline, "event subscribers left behind:\n{}", metrics(&server).await);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_never_read_are_ended_while_events_flow() {
    let server =
        Server::start(&["--http-listen", "127.0.0.1:0", "--event-retention", "8192", "--subscriber-max-lag", "2048"]);
    // 200 streams over 10 connections with small windows; each reads its first heartbeat, then
    // nothing more.
    let mut stuck = Vec::new();
    for _ in 0..10 {
        let client = server.puppet_with_window(16 * 1024).await;
        for _ in 0..20 {
            stuck.push(Events::open(&mut client.clone()).await);
        }
    }
    let text = metrics(&server).await;
    assert!(metric(&text, "puppet_event_subscribers") >= 200.0, "{text}");
    let mut w = world(&server).await;
    for _ in 0..10 {
        w.flood(ext::FloodRequest { count: 2_000, per_second: 0 }).await.unwrap();
    }
    // Nobody read: the publisher itself found them lagging and ended them.
    let deadline = Instant::now() + CLOSE_BOUND;
    loop {
        let text = metrics(&server).await;
        if metric(&text, "puppet_event_subscribers") == 0.0 {
            assert!(metric(&text, "puppet_event_subscribers_cut") >= 200.0, "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "stuck subscribers are still registered:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And a stream ends with RESOURCE_EXHAUSTED once its client reads again (the others are
    // dropped first: their unread data holds their connection's shared flow-control window).
    let mut last = stuck.pop().unwrap().into_inner();
    drop(stuck);
    let status = tokio::time::timeout(CLOSE_BOUND, async {
        loop {
            match last.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("ended with OK"),
                Err(s) => return s,
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_tokens_are_throttled_per_address_on_both_ports() {
    let server =
        Server::start(&["--http-listen", "127.0.0.1:0", "--auth-failure-burst", "5", "--auth-failures-per-sec", "0.2"]);
    let channel = server.channel().await;
    let version = || async {
        let mut c = puppet_proto::pb::wechaty::puppet_client::PuppetClient::with_interceptor(
            channel.clone(),
            puppet_tests::Token("insecure_wrong".into()),
        );
        c.version(pb::VersionRequest {}).await
    };
    for i in 0..5 {
        let e = version().await.unwrap_err();
        assert_eq!(e.code(), Code::Unauthenticated, "attempt {i}: {e:?}");
    }
    let e = version().await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("too many failed authentication attempts"), "{}", e.message());
    // While throttled nothing from that address is looked at, the right token included: guessing
    // learns nothing from the answers.
    let e = server.puppet().await.version(pb::VersionRequest {}).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    let (status, _) = http_get(server.http_addr.unwrap(), "/qrcode?token=nope").await;
    assert_eq!(status, 429, "the side port shares the throttle");
    let text = metrics(&server).await;
    assert!(
        metric(&text, "puppet_auth_failures_total") >= 5.0 && metric(&text, "puppet_auth_throttled_total") >= 2.0,
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn side_port_bodies_are_bounded() {
    let server = Server::start(&["--http-listen", "127.0.0.1:0", "--http-max-body-kib", "4"]);
    let body = "b".repeat(8 * 1024);
    let (status, _) = http_request(server.http_addr.unwrap(), "POST", "/healthz", &body).await;
    assert!(status == 413 || status == 405, "an 8 KiB body on a 4 KiB route: {status}");
    let (status, _) = http_request(server.http_addr.unwrap(), "GET", "/healthz", &body).await;
    assert_eq!(status, 413);
    let (status, body) = http_get(server.http_addr.unwrap(), "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}
