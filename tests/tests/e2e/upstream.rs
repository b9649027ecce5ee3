//! `--backend upstream`: puppet-rs in front of another puppet service. The upstream is puppet-rs
//! itself on the mock (a chain of two), reached through a proxy the test can re-point when it
//! restarts the upstream; and the official Node `wechaty-puppet-service` server wrapping
//! `wechaty-puppet-mock`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{EVENT_TIMEOUT, Events, PuppetClientT, Server, TOKEN, kind, pattern_chunks, sha256, world};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// A TCP proxy whose target can change (an upstream restarted on another free port).
struct Relay {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let target = Arc::new(Mutex::new(target));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let (t, c) = (target.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let to = *t.lock().unwrap();
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, target, conns, accept }
    }

    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().unwrap() = to;
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
        self.accept.abort();
    }
}

/// The flags of a puppet-rs in front of `endpoint` (plaintext, fast reconnects for the tests).
fn front_args(endpoint: &str) -> Vec<String> {
    [
        "--backend",
        "upstream",
        "--upstream-endpoint",
        endpoint,
        "--upstream-token",
        TOKEN,
        "--upstream-tls",
        "off",
        "--upstream-reconnect-min-ms",
        "100",
        "--upstream-reconnect-max-ms",
        "500",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start_front(endpoint: &str, extra: &[&str]) -> Server {
    let mut args = front_args(endpoint);
    args.extend(extra.iter().map(|s| s.to_string()));
    Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Waits (bounded) for `server`'s `wechaty.Puppet` readiness to be `want`.
async fn readiness(server: &Server, want: ServingStatus) {
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: "wechaty.Puppet".into() }).await.unwrap().into_inner();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(r) = watch.message().await.unwrap() {
            if r.status() == want {
                return;
            }
        }
        panic!("the health watch ended");
    })
    .await
    .unwrap_or_else(|_| panic!("readiness did not turn {want:?}"));
}

async fn contacts(p: &mut PuppetClientT) -> Vec<String> {
    let mut ids = p.contact_list(pb::ContactListRequest {}).await.unwrap().into_inner().ids;
    ids.sort();
    ids
}

async fn rooms(p: &mut PuppetClientT) -> Vec<String> {
    let mut ids = p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids;
    ids.sort();
    ids
}

const CHUNK: usize = 256 * 1024;

async fn upload(p: &mut PuppetClientT, seed: u8, len: usize) -> (String, String) {
    let chunks: Vec<Vec<u8>> = pattern_chunks(seed, len, CHUNK).collect();
    let digest = sha256(chunks.iter().map(Vec::as_slice));
    let reqs = chunks.into_iter().map(|chunk| pb::UploadRequest { chunk });
    (p.upload(tokio_stream::iter(reqs)).await.unwrap().into_inner().id, digest)
}

/// Downloads a blob: (sha256, size, largest chunk).
async fn download(p: &mut PuppetClientT, id: &str) -> (String, usize, usize) {
    let mut stream = p.download(pb::DownloadRequest { id: id.into() }).await.unwrap().into_inner();
    let mut chunks = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        chunks.push(m.chunk);
    }
    let size = chunks.iter().map(Vec::len).sum();
    let largest = chunks.iter().map(Vec::len).max().unwrap_or(0);
    (sha256(chunks.iter().map(Vec::as_slice)), size, largest)
}

fn uuid_of(file_box_json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(file_box_json).unwrap();
    assert_eq!(v["type"], 7, "a big file travels as a Uuid FileBox: {v}");
    v["uuid"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_two_lists_the_same_world_fans_out_messages_and_sends_upstream() {
    let upstream = Server::start(&[]);
    let front = start_front(&upstream.addr.to_string(), &[]);
    let mut up = upstream.puppet().await;
    let mut ours = front.puppet().await;
    let mut first = Events::open(&mut ours).await;
    let mut second = Events::open(&mut front.puppet().await).await;
    // Our clients learn the login from the upstream.
    assert_eq!(first.wait_for(kind::LOGIN).await["contactId"], "wxid_puppet_bot");
    readiness(&front, ServingStatus::Serving).await;

    assert_eq!(contacts(&mut ours).await, contacts(&mut up).await);
    assert_eq!(rooms(&mut ours).await, rooms(&mut up).await);
    let payload = |id: &str| pb::ContactPayloadRequest { id: id.into() };
    assert_eq!(
        ours.contact_payload(payload("wxid_alice")).await.unwrap().into_inner(),
        up.contact_payload(payload("wxid_alice")).await.unwrap().into_inner()
    );
    // A missing id is NOT_FOUND naming it, through the chain.
    let e = ours.contact_payload(payload("wxid_nobody")).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("wxid_nobody"), "{e:?}");

    // A message the upstream world produces reaches both of our subscribers.
    let said = world(&upstream)
        .await
        .say(ext::SayRequest { from_id: "wxid_alice".into(), text: "hello through two".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    for events in [&mut first, &mut second] {
        let m = events.wait_until(kind::MESSAGE, |p| p["messageId"] == said.as_str()).await;
        assert_eq!(m["messageId"], said.as_str());
    }
    let m = ours.message_payload(pb::MessagePayloadRequest { id: said.clone() }).await.unwrap().into_inner();
    assert_eq!(m.text, "hello through two");

    // MessageSendText reaches the upstream.
    let sent = ours
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: "wxid_alice".into(),
            text: "from the front".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert!(!sent.is_empty());
    let there = up.message_payload(pb::MessagePayloadRequest { id: sent }).await.unwrap().into_inner();
    assert_eq!(there.text, "from the front");

    // Ding reaches the upstream and its DONG comes back to us.
    ours.ding(pb::DingRequest { data: "ping-7".into() }).await.unwrap();
    first.wait_until(kind::DONG, |p| p["data"] == "ping-7").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_both_ways_through_the_chain_with_equal_checksums() {
    const SIZE: usize = 10 << 20;
    let upstream = Server::start(&[]);
    let front = start_front(&upstream.addr.to_string(), &[]);
    let mut up = upstream.puppet().await;
    let mut ours = front.puppet().await;
    let mut events = Events::open(&mut ours).await;
    events.wait_for(kind::LOGIN).await;

    // Down: a 10 MiB file message held upstream (the upstream's bot sent it there); our client
    // fetches it from us.
    let (theirs, digest) = upload(&mut up, 3, SIZE).await;
    let file_box = serde_json::json!({"type": 7, "boxType": 7, "uuid": theirs, "name": "down.bin"}).to_string();
    let said = up
        .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box })
        .await
        .unwrap()
        .into_inner()
        .id;
    let fb = ours.message_file(pb::MessageFileRequest { id: said.clone() }).await.unwrap().into_inner().file_box;
    let (got, size, largest) = download(&mut ours, &uuid_of(&fb)).await;
    assert_eq!((got, size), (digest, SIZE));
    assert!(largest <= 4 << 20, "a chunk of {largest} bytes");

    // Up: our client uploads 10 MiB to us and sends it; the upstream holds the same bytes.
    let (id, digest) = upload(&mut ours, 9, SIZE).await;
    let file_box = serde_json::json!({"type": 7, "boxType": 7, "uuid": id, "name": "up.bin", "size": SIZE}).to_string();
    let sent = ours
        .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box })
        .await
        .unwrap()
        .into_inner()
        .id;
    let fb = up.message_file(pb::MessageFileRequest { id: sent }).await.unwrap().into_inner().file_box;
    let (got, size, _) = download(&mut up, &uuid_of(&fb)).await;
    assert_eq!((got, size), (digest, SIZE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deprecated_file_streams_work_through_the_chain_and_the_upstream_holds_the_bytes() {
    let upstream = Server::start(&[]);
    let front = start_front(&upstream.addr.to_string(), &[]);
    let mut up = upstream.puppet().await;
    let mut ours = front.puppet().await;
    Events::open(&mut ours).await.wait_for(kind::LOGIN).await;
    for len in [5, 6 << 20] {
        let data: Vec<Vec<u8>> = pattern_chunks(len as u8, len, 64 * 1024).collect();
        let digest = sha256(data.iter().map(Vec::as_slice));
        let mut msgs = vec![
            pb::MessageSendFileStreamRequest { conversation_id: Some("wxid_bob".into()), file_box_chunk: None },
            pb::MessageSendFileStreamRequest {
                conversation_id: None,
                file_box_chunk: Some(pb::FileBoxChunk { data: None, name: Some(format!("s{len}.bin")) }),
            },
        ];
        msgs.extend(data.into_iter().map(|d| pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(d), name: None }),
        }));
        let id = ours.message_send_file_stream(tokio_stream::iter(msgs)).await.unwrap().into_inner().id;
        // Read back through us with the deprecated stream…
        let mut stream =
            ours.message_file_stream(pb::MessageFileStreamRequest { id: id.clone() }).await.unwrap().into_inner();
        let first = stream.message().await.unwrap().unwrap().file_box_chunk.unwrap();
        assert_eq!(first.name, Some(format!("s{len}.bin")));
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            got.push(m.file_box_chunk.unwrap().data.unwrap());
        }
        assert_eq!(sha256(got.iter().map(Vec::as_slice)), digest, "{len} bytes back through us");
        // …and the upstream itself holds the same bytes.
        let mut stream = up.message_file_stream(pb::MessageFileStreamRequest { id }).await.unwrap().into_inner();
        stream.message().await.unwrap().unwrap();
        let mut there = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            there.push(m.file_box_chunk.unwrap().data.unwrap());
        }
        assert_eq!(sha256(there.iter().map(Vec::as_slice)), digest, "{len} bytes upstream");
    }
}

/// An upstream without `Upload`/`Download`, as older `wechaty-puppet-service` versions and some
/// hosted token providers are: a gRPC proxy in front of `target` that answers those two
/// `UNIMPLEMENTED` (counting how often they were asked) and forwards every other call.
struct NoUploadDownload {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
    serving: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct NoUploadDownloadSvc {
    to: tonic::transport::Channel,
    asked: Arc<Mutex<Vec<String>>>,
}

impl tonic::server::NamedService for NoUploadDownloadSvc {
    const NAME: &'static str = "wechaty.Puppet";
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for NoUploadDownloadSvc {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path().to_owned();
        let mut to = self.to.clone();
        let asked = self.asked.clone();
        Box::pin(async move {
            asked.lock().unwrap().push(path.clone());
            if path == "/wechaty.Puppet/Upload" || path == "/wechaty.Puppet/Download" {
                return Ok(tonic::Status::unimplemented("").into_http());
            }
            let forwarded = match std::future::poll_fn(|cx| to.poll_ready(cx)).await {
                Ok(()) => to.call(req).await,
                Err(e) => Err(e),
            };
            Ok(forwarded.unwrap_or_else(|e| tonic::Status::unavailable(e.to_string()).into_http()))
        })
    }
}

impl NoUploadDownload {
    async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let to = tonic::transport::Channel::from_shared(format!("http://{target}")).unwrap().connect_lazy();
        let asked: Arc<Mutex<Vec<String>>> = Default::default();
        let svc = NoUploadDownloadSvc { to, asked: asked.clone() };
        let serving = tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        Self { addr, asked, serving }
    }

    /// How often `method` was asked for.
    fn asked(&self, method: &str) -> usize {
        let path = format!("/wechaty.Puppet/{method}");
        self.asked.lock().unwrap().iter().filter(|p| **p == path).count()
    }
}

impl Drop for NoUploadDownload {
    fn drop(&mut self) {
        self.serving.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_mib_both_ways_through_the_deprecated_streams_when_the_upstream_lacks_upload_and_download() {
    const SIZE: usize = 10 << 20;
    let upstream = Server::start(&[]);
    let old = NoUploadDownload::start(upstream.addr).await;
    let front = start_front(&old.addr.to_string(), &[]);
    let mut up = upstream.puppet().await;
    let mut ours = front.puppet().await;
    Events::open(&mut ours).await.wait_for(kind::LOGIN).await;

    // Down: the upstream answers MessageFile with its own Uuid; Download is refused, so we fetch
    // the bytes with MessageFileStream, and the next time (MessageImage) go to the stream at once.
    let (theirs, digest) = upload(&mut up, 5, SIZE).await;
    let file_box = serde_json::json!({"type": 7, "boxType": 7, "uuid": theirs, "name": "down.png"}).to_string();
    let said = up
        .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box })
        .await
        .unwrap()
        .into_inner()
        .id;
    let fb = ours.message_file(pb::MessageFileRequest { id: said.clone() }).await.unwrap().into_inner().file_box;
    let v: serde_json::Value = serde_json::from_str(&fb).unwrap();
    assert_eq!(v["name"], "down.png", "{v}");
    let (got, size, largest) = download(&mut ours, &uuid_of(&fb)).await;
    assert_eq!((got, size), (digest.clone(), SIZE));
    assert!(largest <= 4 << 20, "a chunk of {largest} bytes");
    assert_eq!((old.asked("Download"), old.asked("MessageFileStream")), (1, 1));
    let image = pb::MessageImageRequest { id: said.clone(), r#type: pb::ImageType::Hd as i32 };
    let fb = ours.message_image(image).await.unwrap().into_inner().file_box;
    let (got, size, _) = download(&mut ours, &uuid_of(&fb)).await;
    assert_eq!((got, size), (digest, SIZE));
    assert_eq!(
        (old.asked("Download"), old.asked("MessageImage"), old.asked("MessageImageStream")),
        (1, 0, 1),
        "the second fetch goes to the stream at once"
    );

    // Up: our client uploads 10 MiB to us and sends it; Upload is refused, so the bytes go with
    // MessageSendFileStream, and the next send goes there at once. The upstream holds them.
    let (id, digest) = upload(&mut ours, 11, SIZE).await;
    for round in 1..=2 {
        let file_box =
            serde_json::json!({"type": 7, "boxType": 7, "uuid": id, "name": "up.bin", "size": SIZE}).to_string();
        let sent = ours
            .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box })
            .await
            .unwrap()
            .into_inner()
            .id;
        assert!(!sent.is_empty(), "the upstream's message id comes back");
        assert_eq!((old.asked("Upload"), old.asked("MessageSendFileStream")), (1, round));
        let fb = up.message_file(pb::MessageFileRequest { id: sent }).await.unwrap().into_inner().file_box;
        let v: serde_json::Value = serde_json::from_str(&fb).unwrap();
        assert_eq!(v["name"], "up.bin", "{v}");
        let (got, size, _) = download(&mut up, &uuid_of(&fb)).await;
        assert_eq!((got, size), (digest.clone(), SIZE), "round {round}");
    }

    // A message the upstream does not have: NOT_FOUND naming it, through the stream too.
    let e = ours.message_file(pb::MessageFileRequest { id: "no-such-message".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("no-such-message"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_the_upstreams_ca_and_server_name() {
    let upstream = Server::start(&["--tls-self-signed", "puppet-upstream"]);
    let ca = upstream.data_dir.join("tls/ca.pem");
    let mut args = front_args(&upstream.addr.to_string());
    let at = args.iter().position(|a| a == "off").unwrap();
    args[at] = "on".into();
    args.extend(
        ["--upstream-tls-ca", ca.to_str().unwrap(), "--upstream-server-name", "puppet-upstream"].map(String::from),
    );
    let front = Server::start(&args.iter().map(String::as_str).collect::<Vec<_>>());
    readiness(&front, ServingStatus::Serving).await;
    assert_eq!(contacts(&mut front.puppet().await).await, contacts(&mut upstream.puppet().await).await);
    // The wrong name is refused by the certificate check: never ready.
    let mut args = front_args(&upstream.addr.to_string());
    let at = args.iter().position(|a| a == "off").unwrap();
    args[at] = "on".into();
    args.extend(
        ["--upstream-tls-ca", ca.to_str().unwrap(), "--upstream-server-name", "someone-else"].map(String::from),
    );
    let wrong = Server::start_logged(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !wrong.log().contains("cannot reach the upstream") {
        assert!(std::time::Instant::now() < deadline, "no log line:\n{}", wrong.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    readiness(&wrong, ServingStatus::NotServing).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_restart_keeps_our_clients_and_the_feed_contiguous() {
    let dir = std::env::temp_dir().join(format!("puppet-e2e-upstream-restart-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let upstream = Server::start_in(&dir, &[]);
    let relay = Relay::start(upstream.addr).await;
    let front = start_front(&relay.addr.to_string(), &[]);
    let mut ours = front.puppet().await;
    let mut events = Events::open(&mut ours).await;
    events.wait_for(kind::LOGIN).await;
    readiness(&front, ServingStatus::Serving).await;
    let mut feed = front
        .feed()
        .await
        .subscribe(ext::SubscribeRequest { after_seq: None, replay_state: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();

    // The upstream goes away: our readiness drops, our clients stay connected.
    drop(upstream);
    readiness(&front, ServingStatus::NotServing).await;
    let e = ours.contact_list(pb::ContactListRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");

    // It comes back (same data, another port): we reconnect and serve again.
    let upstream = Server::start_in(&dir, &[]);
    // Once it is logged in again (a resumed stream carries the events after the last one we saw,
    // not a replay of the login).
    readiness(&upstream, ServingStatus::Serving).await;
    relay.retarget(upstream.addr);
    readiness(&front, ServingStatus::Serving).await;
    let said = world(&upstream)
        .await
        .say(ext::SayRequest { from_id: "wxid_bob".into(), text: "after the restart".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    // The same Event stream that was open before carries it.
    events.wait_until(kind::MESSAGE, |p| p["messageId"] == said.as_str()).await;
    // The bot continues.
    let m = ours.message_payload(pb::MessagePayloadRequest { id: said.clone() }).await.unwrap().into_inner();
    assert_eq!(m.text, "after the restart");
    ours.message_send_text(pb::MessageSendTextRequest {
        conversation_id: "wxid_bob".into(),
        text: "still here".into(),
        ..Default::default()
    })
    .await
    .unwrap();

    // The feed saw every event in order, without a gap.
    let mut seqs = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(e) = feed.message().await.unwrap() {
            if e.seq == 0 {
                continue; // a heartbeat
            }
            seqs.push(e.seq);
            if e.r#type == kind::MESSAGE && e.payload.contains(&said) {
                return;
            }
        }
        panic!("the feed ended");
    })
    .await
    .expect("the message after the restart did not reach the feed");
    assert!(!seqs.is_empty());
    if let Some(i) = seqs.windows(2).position(|p| p[1] != p[0] + 1) {
        panic!("the feed skipped from {} to {}: {seqs:?}", seqs[i], seqs[i + 1]);
    }
    drop(upstream);
    _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_upstream_token_keeps_us_not_ready_and_says_so_masked() {
    let upstream = Server::start(&[]);
    let secret = "insecure_wrong-secret-0123456789";
    let mut args = front_args(&upstream.addr.to_string());
    let at = args.iter().position(|a| a == TOKEN).unwrap();
    args[at] = secret.into();
    let front = Server::start_logged(&args.iter().map(String::as_str).collect::<Vec<_>>());
    // The upstream answers (readiness would follow its login within a second otherwise).
    readiness(&upstream, ServingStatus::Serving).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let line = loop {
        if let Some(l) = front.log().lines().find(|l| l.contains("refused the token")) {
            break l.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no log line about the token:\n{}", front.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(line.contains("insecure_****89"), "{line}");
    assert!(!front.log().contains("wrong-secret"), "the token leaked into the log:\n{}", front.log());
    readiness(&front, ServingStatus::NotServing).await;
    let e = front.puppet().await.contact_list(pb::ContactListRequest {}).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

/// Asks the front for a contact's name.
async fn name_of(p: &mut PuppetClientT, id: &str) -> Result<String, tonic::Status> {
    p.contact_payload(pb::ContactPayloadRequest { id: id.into() }).await.map(|r| r.into_inner().name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_cache_answers_until_the_upstream_says_dirty_and_can_be_turned_off() {
    for cache in ["true", "false"] {
        let upstream = Server::start(&[]);
        let relay = Relay::start(upstream.addr).await;
        let front = start_front(&relay.addr.to_string(), &["--upstream-cache", cache]);
        let mut ours = front.puppet().await;
        let mut events = Events::open(&mut ours).await;
        events.wait_for(kind::LOGIN).await;
        assert_eq!(name_of(&mut ours, "wxid_alice").await.unwrap(), "Alice");
        // The upstream's DIRTY drops the cached payload: the new name shows at once.
        world(&upstream)
            .await
            .update_contact(ext::UpdateContactRequest {
                contact_id: "wxid_alice".into(),
                name: Some("Alice B.".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        events.wait_until(kind::DIRTY, |p| p["payloadId"] == "wxid_alice").await;
        assert_eq!(name_of(&mut ours, "wxid_alice").await.unwrap(), "Alice B.");
        // Cached again; with the upstream unreachable, only the cache can answer.
        relay.retarget("127.0.0.1:9".parse().unwrap());
        readiness(&front, ServingStatus::NotServing).await;
        let cached = name_of(&mut ours, "wxid_alice").await;
        if cache == "true" {
            assert_eq!(cached.unwrap(), "Alice B.");
        } else {
            assert_eq!(cached.unwrap_err().code(), tonic::Code::Unavailable);
        }
        // Never fetched, never cached.
        assert_eq!(name_of(&mut ours, "wxid_bob").await.unwrap_err().code(), tonic::Code::Unavailable);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_and_scan_while_we_were_cut_off_reach_our_clients_in_order() {
    let upstream = Server::start(&[]);
    let mut up = upstream.puppet().await;
    let relay = Relay::start(upstream.addr).await;
    let front = start_front(&relay.addr.to_string(), &[]);
    let mut ours = front.puppet().await;
    let mut events = Events::open(&mut ours).await;
    events.wait_for(kind::LOGIN).await;
    readiness(&front, ServingStatus::Serving).await;

    relay.retarget("127.0.0.1:9".parse().unwrap());
    readiness(&front, ServingStatus::NotServing).await;
    // While we are cut off, the platform logs the bot out and it logs in again through a QR code.
    let mut up_events = Events::open(&mut up).await;
    world(&upstream).await.force_logout(ext::ForceLogoutRequest { reason: "test".into() }).await.unwrap();
    up.start(pb::StartRequest {}).await.unwrap();
    up_events.wait_for(kind::LOGIN).await;
    relay.retarget(upstream.addr);
    // Our clients get it in order: the logout, the SCAN as a SCAN, the new login.
    let mut seen = Vec::new();
    loop {
        let (k, _) = events.next().await;
        if [kind::LOGOUT, kind::SCAN, kind::LOGIN].contains(&k) && seen.last() != Some(&k) {
            seen.push(k);
        }
        if k == kind::LOGIN {
            break;
        }
    }
    assert_eq!(seen, vec![kind::LOGOUT, kind::SCAN, kind::LOGIN]);
    readiness(&front, ServingStatus::Serving).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_endpoint_is_discovered_from_the_authority_by_token() {
    // The upstream's side port answers `/v0/hosties/<token>` (Wechaty discovery).
    let upstream = Server::start(&["--http-listen", "127.0.0.1:0"]);
    let authority = format!("http://{}", upstream.http_addr.unwrap());
    let front = Server::start(&[
        "--backend",
        "upstream",
        "--upstream-authority",
        &authority,
        "--upstream-token",
        TOKEN,
        "--upstream-tls",
        "off",
    ]);
    readiness(&front, ServingStatus::Serving).await;
    assert_eq!(contacts(&mut front.puppet().await).await, contacts(&mut upstream.puppet().await).await);
}

// ---- the official Node puppet service as the upstream ------------------------------------------

/// `node tests/compat/node/upstream_service.js`: the official `PuppetServer` around
/// `wechaty-puppet-mock`, plaintext, on a free port; commands go to its stdin.
struct NodeUpstream {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    addr: SocketAddr,
}

fn upstream_node_modules() -> std::path::PathBuf {
    puppet_tests::installed(
        "PUPPET_UPSTREAM_NODE_MODULES",
        "npm wechaty-puppet-service@1.19.9 + wechaty-puppet-mock@1.19.4 (the npm-upstream tree)",
    )
}

impl NodeUpstream {
    async fn start() -> Self {
        use tokio::io::AsyncBufReadExt;
        // A free port for the Node server (it cannot report one it picked itself).
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut child = tokio::process::Command::new("node")
            .arg(puppet_tests::repo_root().join("tests/compat/node/upstream_service.js"))
            .env("NODE_PATH", upstream_node_modules())
            .env("UPSTREAM_PORT", port.to_string())
            .env("UPSTREAM_TOKEN", TOKEN)
            .env("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_SERVER", "true")
            .env("WECHATY_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = lines.next_line().await.unwrap() {
                if l == "UPSTREAM READY" {
                    return;
                }
            }
            panic!("the Node puppet service exited before serving");
        })
        .await
        .expect("the Node puppet service did not start within 30 s");
        Self { child, stdin, lines, addr: SocketAddr::from(([127, 0, 0, 1], port)) }
    }

    /// Sends one command and waits for its `done`.
    async fn command(&mut self, line: &str) {
        use tokio::io::AsyncWriteExt;
        self.stdin.write_all(format!("{line}\n").as_bytes()).await.unwrap();
        let cmd = line.split(' ').next().unwrap().to_owned();
        tokio::time::timeout(EVENT_TIMEOUT, async {
            while let Some(l) = self.lines.next_line().await.unwrap() {
                if l == format!("done {cmd}") {
                    return;
                }
                assert!(!l.starts_with("not started"), "the Node mock was not started: {l}");
            }
            panic!("the Node puppet service exited");
        })
        .await
        .expect("the Node puppet service did not answer");
    }

    /// A client of the Node service itself.
    async fn puppet(&self) -> PuppetClientT {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .expect("connect to the Node service");
        puppet_proto::pb::wechaty::puppet_client::PuppetClient::with_interceptor(
            channel,
            puppet_tests::Token(TOKEN.into()),
        )
        .max_decoding_message_size(64 << 20)
    }
}

impl Drop for NodeUpstream {
    fn drop(&mut self) {
        _ = self.child.start_kill();
    }
}

/// Waits for a MESSAGE whose payload (read through `p`) has `text`; returns its id.
async fn message_with_text(events: &mut Events, p: &mut PuppetClientT, text: &str) -> String {
    loop {
        let m = events.wait_for(kind::MESSAGE).await;
        let id = m["messageId"].as_str().unwrap().to_owned();
        let payload = p.message_payload(pb::MessagePayloadRequest { id: id.clone() }).await.unwrap().into_inner();
        if payload.text == text {
            return id;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_front_of_the_official_node_service() {
    let mut node = NodeUpstream::start().await;
    let front = start_front(&node.addr.to_string(), &[]);
    let mut ours = front.puppet().await;
    let mut first = Events::open(&mut ours).await;
    let mut second = Events::open(&mut front.puppet().await).await;
    assert_eq!(first.wait_for(kind::LOGIN).await["contactId"], "node_bot");
    readiness(&front, ServingStatus::Serving).await;

    let mut theirs = node.puppet().await;
    assert_eq!(contacts(&mut ours).await, contacts(&mut theirs).await);
    assert!(contacts(&mut ours).await.contains(&"node_alice".to_owned()));
    assert_eq!(rooms(&mut ours).await, vec!["node_room@chatroom".to_owned()]);
    let room =
        ours.room_payload(pb::RoomPayloadRequest { id: "node_room@chatroom".into() }).await.unwrap().into_inner();
    assert_eq!(room.topic, "Node room");
    // The Node service answers UNKNOWN with a stack trace for a missing id: NOT_FOUND here, no stack.
    let e = ours.contact_payload(pb::ContactPayloadRequest { id: "node_nobody".into() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
    assert!(e.message().contains("node_nobody") && !e.message().contains(" at "), "{e:?}");

    // A message the Node world produces reaches both of our subscribers.
    node.command("say hello from node").await;
    let id = message_with_text(&mut first, &mut ours, "hello from node").await;
    second.wait_until(kind::MESSAGE, |p| p["messageId"] == id.as_str()).await;

    // MessageSendText reaches the Node mock, which echoes the bot's own message.
    ours.message_send_text(pb::MessageSendTextRequest {
        conversation_id: "node_alice".into(),
        text: "hello node".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let echo = message_with_text(&mut first, &mut ours, "hello node").await;
    let m = ours.message_payload(pb::MessagePayloadRequest { id: echo }).await.unwrap().into_inner();
    assert_eq!(m.talker_id, "node_bot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_node_wechaty_ding_dong_through_us_in_front_of_the_node_service() {
    use tokio::io::AsyncBufReadExt;
    let mut node = NodeUpstream::start().await;
    let front = start_front(&node.addr.to_string(), &[]);
    readiness(&front, ServingStatus::Serving).await;
    let home = front.data_dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut bot = tokio::process::Command::new("node")
        .arg(puppet_tests::repo_root().join("tests/compat/node/upstream_dingdong.js"))
        .current_dir(&home)
        .env("HOME", &home)
        .env("NODE_PATH", upstream_node_modules())
        .env("WECHATY_PUPPET_SERVICE_ENDPOINT", front.addr.to_string())
        .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
        .env("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT", "true")
        .env("WECHATY_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = tokio::io::BufReader::new(bot.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ok = tokio::time::timeout(Duration::from_secs(90), async {
        while let Some(l) = lines.next_line().await.unwrap() {
            seen.push(l.clone());
            if l == "BOT READY" {
                node.command("say ding").await;
            }
            if l == "COMPAT OK" {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ok, Ok(true), "the ding-dong bot did not finish:\n{}", seen.join("\n"));
    let status = tokio::time::timeout(Duration::from_secs(30), bot.wait()).await.expect("bot exit").unwrap();
    assert!(status.success(), "{status}:\n{}", seen.join("\n"));
}

// ---- Juzi's resumable stream -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_juzi_client_resumes_its_event_stream_after_the_seq_it_saw() {
    let server = Server::start(&[]);
    let mut p = server.puppet().await;
    let mut stream = p.event(pb::EventRequest::default()).await.unwrap().into_inner();
    // Every event carries its sequence (heartbeats 0), as Juzi's server sends them.
    let last = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            let e = stream.message().await.unwrap().unwrap();
            if e.r#type == kind::LOGIN {
                return e.seq;
            }
            assert!(e.r#type != kind::HEARTBEAT || e.seq == 0, "{e:?}");
        }
    })
    .await
    .unwrap();
    assert!(last > 0);
    drop(stream);
    // Missed while disconnected.
    let mut w = world(&server).await;
    let mut said = Vec::new();
    for i in 0..3 {
        let r =
            w.say(ext::SayRequest { from_id: "wxid_carol".into(), text: format!("missed {i}"), ..Default::default() });
        said.push(r.await.unwrap().into_inner().message_id);
    }
    let mut resumed =
        p.event(pb::EventRequest { seq: last, account_id: "wxid_puppet_bot".into() }).await.unwrap().into_inner();
    let mut seqs = vec![last];
    let mut got = Vec::new();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while got.len() < said.len() {
            let e = resumed.message().await.unwrap().unwrap();
            if e.seq == 0 {
                continue;
            }
            seqs.push(e.seq);
            if e.r#type == kind::MESSAGE {
                let v: serde_json::Value = serde_json::from_str(&e.payload).unwrap();
                got.push(v["messageId"].as_str().unwrap().to_owned());
            }
        }
    })
    .await
    .expect("the missed messages did not come");
    assert_eq!(got, said);
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "not contiguous: {seqs:?}");
    // A negative seq is refused.
    let e = p.event(pb::EventRequest { seq: -1, ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_resumes_the_upstream_stream_after_a_cut_so_nothing_said_meanwhile_is_lost() {
    let upstream = Server::start(&[]);
    let relay = Relay::start(upstream.addr).await;
    let front = start_front(&relay.addr.to_string(), &[]);
    let mut ours = front.puppet().await;
    let mut events = Events::open(&mut ours).await;
    events.wait_for(kind::LOGIN).await;
    readiness(&front, ServingStatus::Serving).await;
    // The link to the upstream breaks; the upstream world goes on.
    relay.retarget("127.0.0.1:9".parse().unwrap());
    readiness(&front, ServingStatus::NotServing).await;
    let said = world(&upstream)
        .await
        .say(ext::SayRequest { from_id: "wxid_dave".into(), text: "while you were away".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    relay.retarget(upstream.addr);
    readiness(&front, ServingStatus::Serving).await;
    events.wait_until(kind::MESSAGE, |p| p["messageId"] == said.as_str()).await;
}

/// `node tests/compat/node/juzi_resume.js` against `server`, with `home` as its $HOME.
struct JuziClient {
    child: tokio::process::Child,
    stdin: tokio::process::ChildStdin,
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
}

impl JuziClient {
    fn start(server: &Server, home: &std::path::Path) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new("node")
            .arg(puppet_tests::repo_root().join("tests/compat/node/juzi_resume.js"))
            .current_dir(home)
            .env("HOME", home)
            .env("NODE_PATH", upstream_node_modules())
            .env("WECHATY_PUPPET_SERVICE_ENDPOINT", server.addr.to_string())
            .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
            .env("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT", "true")
            .env("WECHATY_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdin = child.stdin.take().unwrap();
        let lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, stdin, lines }
    }

    /// Reads lines until one satisfies `done`; returns the `message <id>` ids seen on the way.
    async fn until(&mut self, done: impl Fn(&str) -> bool) -> Vec<String> {
        let mut ids = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(l) = self.lines.next_line().await.unwrap() {
                if let Some(id) = l.strip_prefix("message ") {
                    ids.push(id.to_owned());
                }
                if done(&l) {
                    return;
                }
            }
            panic!("the Juzi client exited");
        })
        .await
        .expect("the Juzi client did not get there within 30 s");
        ids
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_juzi_client_resumes_with_its_seq_and_gets_what_it_missed() {
    use tokio::io::AsyncWriteExt;
    let server = Server::start(&[]);
    let home = server.data_dir.join("juzi-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut w = world(&server).await;
    let say = |text: &str| ext::SayRequest { from_id: "wxid_erin".into(), text: text.into(), ..Default::default() };

    let mut first = JuziClient::start(&server, &home);
    first.until(|l| l.starts_with("LOGGED IN")).await;
    let seen = w.say(say("while connected")).await.unwrap().into_inner().message_id;
    assert_eq!(first.until(|l| l == format!("message {seen}")).await, vec![seen.clone()]);
    first.stdin.write_all(b"stop\n").await.unwrap();
    first.until(|l| l == "STOPPED").await;
    _ = first.child.wait().await;

    // Said while no client was connected: a live stream would never show these.
    let mut missed = Vec::new();
    for i in 0..3 {
        missed.push(w.say(say(&format!("missed {i}"))).await.unwrap().into_inner().message_id);
    }
    let mut second = JuziClient::start(&server, &home);
    second.until(|l| l == "STARTED").await;
    // A marker said after the resume: once it is in, everything resumed has been delivered.
    let marker = w.say(say("after the resume")).await.unwrap().into_inner().message_id;
    let got = second.until(|l| l == format!("message {marker}")).await;
    // The client hands events on from concurrent async handlers (their order can change), and
    // events that arrive together with the first one it peeks at can be dropped on its side; but a
    // stream that did not resume would carry none of the missed messages at all.
    let resumed: Vec<&String> = got.iter().filter(|id| missed.contains(id)).collect();
    assert!(!resumed.is_empty(), "the resumed client got none of what it missed: {got:?} (missed {missed:?})");
    assert!(got.iter().all(|id| missed.contains(id) || *id == marker), "{got:?}");
    assert!(!got.contains(&seen), "the message seen before the stop came again: {got:?}");
}
