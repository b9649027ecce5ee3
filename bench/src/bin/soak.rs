//! Mixed soak (`bench/soak`): two release `puppet-server`s under a steady mix for `--secs` seconds,
//! sampled every 10 s, with the figures printed at the end.
//!
//! * A **mock** server takes unary calls from `--concurrency` workers (ContactPayload, ContactList,
//!   RoomList, RoomPayload, MessageSendText, Ding, `MockWorld/Say` followed by MessagePayload,
//!   Version), a long-lived Event stream, `--streams` Event streams opened and dropped at random
//!   (with their connections), and `--uploads-per-sec` cycles that upload `--upload-mib` MiB,
//!   download it back and check every byte — one cycle in five cut mid-upload, one in five
//!   mid-download.
//! * An **official-account** server (safe mode, against the test suite's fake WeChat API) takes
//!   `--pushers` loops of signed, encrypted webhook pushes (the current time, a fresh nonce), each
//!   answered by a gRPC bot (MessagePayload, then MessageSendText) as the push's passive reply.
//!
//! Unary calls and pushes run flat out by default, so the servers' bounded stores (event
//! retention, message stores, the webhook's nonce window) fill early in the run and growth after
//! the warm-up is what a leak would look like.
//! * A few **hostile** requests a second, cycling: a wrong token, a 1 MiB id, malformed FileBox JSON,
//!   a silent TCP connection left open, a slowloris on the webhook's side port, a signed push of
//!   10,000 nested elements, a replayed push and a stale one. Each is counted by the status it got,
//!   beside the status it should get.
//!
//! Printed at the end: calls served by kind, errors by gRPC code and HTTP status, both servers' RSS
//! every `--sample-secs`, RSS growth from the end of the warm-up to the end, CPU seconds in total and
//! per call, and the verdict line `RSS flat after warm-up: yes/no (grew X MiB)` — a figure, not an
//! assertion. The exit status is non-zero only when a server died or answered UNKNOWN or INTERNAL.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/soak                # 10 minutes
//! target/release/soak --secs 60      # a quick look
//! ```

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::event_feed_client::EventFeedClient;
use puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_server::backend::official_account::crypto::{self, AesKey};
use puppet_server::backend::official_account::xml;
use puppet_tests::fake_wechat::{APP_ID, FakeWeChat};
use puppet_tests::{Events, Server, TOKEN, Token, kind, pattern_chunks};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

const OA_TOKEN: &str = "soakToken42";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ORIGINAL_ID: &str = "gh_soak0000001";
const WRONG_TOKEN: &str = "insecure_wrong-soak-token";
/// Longest wait for one answer; a call past it is counted as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a silent or slowloris connection is watched for the server to close it.
const HOSTILE_BOUND: Duration = Duration::from_secs(60);
/// Upload chunk size, as the Node client sends.
const CHUNK: usize = 256 * 1024;

const MOCK: &str = "mock";
const OA: &str = "oa";
const WEBHOOK: &str = "webhook";
const HOSTILE: &str = "hostile";
const EVENTS: &str = "events";
const CUTS: &str = "disconnects";

#[derive(Parser)]
struct Args {
    /// Length of the soak in seconds.
    #[arg(long, default_value_t = 600)]
    secs: u64,
    /// Warm-up in seconds: RSS growth is measured from the first sample at or after it to the end
    /// (default: 60 s, at most half the run).
    #[arg(long)]
    warmup_secs: Option<u64>,
    /// Seconds between RSS and CPU samples.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Unary workers on the mock server, each on its own connection.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Unary calls per second across the workers (0: as fast as the server answers).
    #[arg(long, default_value_t = 0)]
    unary_per_sec: u64,
    /// Event streams held at once that are opened and dropped at random (0–5 s), each on its own
    /// connection.
    #[arg(long, default_value_t = 4)]
    streams: usize,
    /// Upload/Download loops on the mock server.
    #[arg(long, default_value_t = 1)]
    uploaders: usize,
    /// Size of each upload in MiB.
    #[arg(long, default_value_t = 4)]
    upload_mib: usize,
    /// Upload cycles per second across the uploaders (0: back to back).
    #[arg(long, default_value_t = 2.0)]
    uploads_per_sec: f64,
    /// The mock server's --blob-max-total-mib (older uploads are evicted beyond it).
    #[arg(long, default_value_t = 256)]
    blob_total_mib: u64,
    /// Webhook posters against the official-account server, one push in flight each.
    #[arg(long, default_value_t = 2)]
    pushers: usize,
    /// Hostile requests per second, cycling through the kinds (a wrong token at most every 2 s,
    /// below the server's default failure refill, so 127.0.0.1 is never throttled).
    #[arg(long, default_value_t = 3.0)]
    hostile_per_sec: f64,
    /// RSS growth after the warm-up that still counts as flat, in MiB.
    #[arg(long, default_value_t = 4.0)]
    flat_mib: f64,
}

type Puppet = PuppetClient<InterceptedService<Channel, Token>>;

/// Counts by (section, what, outcome), plus durations by what.
#[derive(Default)]
struct Book {
    counts: Mutex<BTreeMap<(&'static str, String, String), u64>>,
    times: Mutex<BTreeMap<String, (u64, f64, f64)>>,
}

impl Book {
    fn add_n(&self, section: &'static str, what: &str, outcome: &str, n: u64) {
        if n > 0 {
            let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
            *c.entry((section, what.to_owned(), outcome.to_owned())).or_default() += n;
        }
    }

    fn add(&self, section: &'static str, what: &str, outcome: &str) {
        self.add_n(section, what, outcome, 1);
    }

    fn time(&self, what: &str, d: Duration) {
        let s = d.as_secs_f64();
        let mut t = self.times.lock().unwrap_or_else(|p| p.into_inner());
        let e = t.entry(what.to_owned()).or_insert((0, f64::INFINITY, 0.0));
        *e = (e.0 + 1, e.1.min(s), e.2.max(s));
    }

    fn snapshot(&self) -> BTreeMap<(&'static str, String, String), u64> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Answers the server gave in a section (anything but no answer or no connection).
    fn served(&self, section: &str) -> u64 {
        self.snapshot().iter().filter(|((s, _, o), _)| *s == section && answered(o)).map(|(_, n)| n).sum()
    }
}

fn answered(outcome: &str) -> bool {
    !outcome.starts_with("no answer") && !outcome.starts_with("no connection")
}

/// What every task shares.
struct Ctx {
    deadline: Instant,
    stop: AtomicBool,
    book: Book,
    /// Pushers (and the hostile driver, which pushes too) not finished yet.
    pushing: AtomicU64,
    /// UNKNOWN and INTERNAL answers (count, first few).
    bad: Mutex<(u64, Vec<String>)>,
}

impl Ctx {
    fn running(&self) -> bool {
        !self.stop.load(Ordering::Relaxed) && Instant::now() < self.deadline
    }

    /// While pushes may still wait for the bot's answer (after the deadline too, until the last
    /// pusher has finished).
    fn serving(&self) -> bool {
        self.running() || self.pushing.load(Ordering::SeqCst) > 0
    }

    fn left(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }

    fn record<T>(&self, section: &'static str, what: &str, r: &Result<T, Status>) {
        match r {
            Ok(_) => self.book.add(section, what, "OK"),
            Err(s) => {
                if matches!(s.code(), Code::Unknown | Code::Internal) {
                    let mut bad = self.bad.lock().unwrap_or_else(|p| p.into_inner());
                    bad.0 += 1;
                    if bad.1.len() < 5 {
                        bad.1.push(format!("{section} {what}: {:?} {}", s.code(), s.message()));
                    }
                }
                self.book.add(section, what, &format!("{:?}", s.code()));
            }
        }
    }
}

/// A unary gRPC call, bounded in time and counted.
async fn grpc<T>(
    ctx: &Ctx,
    section: &'static str,
    what: &str,
    call: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Option<T> {
    match timeout(CALL_TIMEOUT, call).await {
        Err(_) => {
            ctx.book.add(section, what, "no answer within 60 s");
            None
        }
        Ok(r) => {
            ctx.record(section, what, &r);
            r.ok().map(tonic::Response::into_inner)
        }
    }
}

/// A new connection (bounded); counted when it fails.
async fn connect(ctx: &Ctx, section: &'static str, addr: SocketAddr) -> Option<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}")).ok()?.connect_timeout(Duration::from_secs(10));
    match timeout(Duration::from_secs(15), endpoint.connect()).await {
        Ok(Ok(ch)) => Some(ch),
        _ => {
            ctx.book.add(section, "connect", "no connection");
            sleep(Duration::from_millis(200)).await;
            None
        }
    }
}

/// A pacing interval that does not catch up after a slow call.
fn interval(period: Duration) -> tokio::time::Interval {
    let mut i = tokio::time::interval(period);
    i.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    i
}

fn puppet(ch: Channel, token: &str) -> Puppet {
    PuppetClient::with_interceptor(ch, Token(token.into())).max_decoding_message_size(64 << 20)
}

/// Mock world ids the workers pick from.
struct WorldIds {
    friends: Vec<String>,
    rooms: Vec<String>,
}

async fn unary_worker(ctx: Arc<Ctx>, addr: SocketAddr, ids: Arc<WorldIds>, seed: u64, period: Option<Duration>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tick = period.map(interval);
    let mut n = 0u64;
    while ctx.running() {
        let Some(ch) = connect(&ctx, MOCK, addr).await else { continue };
        let mut p = puppet(ch.clone(), TOKEN);
        let mut w = MockWorldClient::with_interceptor(ch, Token(TOKEN.into()));
        // One connection per worker, reopened only if it is lost.
        while ctx.running() {
            if let Some(t) = &mut tick {
                t.tick().await;
            }
            n += 1;
            let friend = ids.friends[rng.usize(..ids.friends.len())].clone();
            let ok = match rng.u32(0..100) {
                0..20 => {
                    grpc(&ctx, MOCK, "ContactPayload", p.contact_payload(pb::ContactPayloadRequest { id: friend }))
                        .await
                        .is_some()
                }
                20..26 => grpc(&ctx, MOCK, "ContactList", p.contact_list(pb::ContactListRequest {})).await.is_some(),
                26..32 => grpc(&ctx, MOCK, "RoomList", p.room_list(pb::RoomListRequest {})).await.is_some(),
                32..40 => {
                    let id = ids.rooms[rng.usize(..ids.rooms.len())].clone();
                    grpc(&ctx, MOCK, "RoomPayload", p.room_payload(pb::RoomPayloadRequest { id })).await.is_some()
                }
                40..55 => {
                    let req = pb::MessageSendTextRequest {
                        conversation_id: friend,
                        text: format!("soak {seed}-{n}"),
                        mentional_ids: vec![],
                    };
                    grpc(&ctx, MOCK, "MessageSendText", p.message_send_text(req)).await.is_some()
                }
                55..65 => {
                    grpc(&ctx, MOCK, "Ding", p.ding(pb::DingRequest { data: format!("soak-{n}") })).await.is_some()
                }
                65..95 => {
                    let say =
                        ext::SayRequest { from_id: friend, text: format!("hello {seed}-{n}"), ..Default::default() };
                    match grpc(&ctx, MOCK, "MockWorld/Say", w.say(say)).await {
                        Some(r) => grpc(
                            &ctx,
                            MOCK,
                            "MessagePayload",
                            p.message_payload(pb::MessagePayloadRequest { id: r.message_id }),
                        )
                        .await
                        .is_some(),
                        None => false,
                    }
                }
                _ => grpc(&ctx, MOCK, "Version", p.version(pb::VersionRequest {})).await.is_some(),
            };
            if !ok && !alive_channel(&mut p).await {
                break;
            }
        }
    }
}

/// After a failed call: does the connection still answer? (A lost one is replaced.)
async fn alive_channel(p: &mut Puppet) -> bool {
    matches!(timeout(Duration::from_secs(10), p.version(pb::VersionRequest {})).await, Ok(Ok(_)))
}

fn event_name(t: i32) -> String {
    pb::EventType::try_from(t).map(|e| format!("{e:?}")).unwrap_or_else(|_| format!("type {t}"))
}

/// A long-lived Event stream (reopened if the server ends it); on the official-account server it
/// hands every MESSAGE id to the bot, and keeps going while pushes are still in flight. `opened`
/// hears when the first stream is open.
async fn consumer(
    ctx: Arc<Ctx>,
    section: &'static str,
    addr: SocketAddr,
    bot: Option<tokio::sync::mpsc::Sender<String>>,
    mut opened: Option<tokio::sync::oneshot::Sender<()>>,
) {
    let what = format!("{section}: long-lived Event stream");
    let mut seen: BTreeMap<i32, u64> = BTreeMap::new();
    let going = || if bot.is_some() { ctx.serving() } else { ctx.running() };
    let mut check = interval(Duration::from_millis(250));
    'outer: while going() {
        let Some(ch) = connect(&ctx, section, addr).await else { continue };
        let mut p = puppet(ch, TOKEN);
        let Some(mut stream) = grpc(&ctx, section, "Event (long-lived)", p.event(pb::EventRequest::default())).await
        else {
            sleep(Duration::from_millis(200)).await;
            continue;
        };
        if let Some(tx) = opened.take() {
            _ = tx.send(());
        }
        loop {
            tokio::select! {
                _ = check.tick() => if !going() { break 'outer },
                m = stream.message() => match m {
                    Ok(Some(e)) => {
                        *seen.entry(e.r#type).or_default() += 1;
                        if e.r#type == kind::MESSAGE
                            && let Some(bot) = &bot
                        {
                            let id = serde_json::from_str::<serde_json::Value>(&e.payload)
                                .ok()
                                .and_then(|v| v["messageId"].as_str().map(str::to_owned))
                                .unwrap_or_default();
                            if bot.try_send(id).is_err() {
                                ctx.book.add(EVENTS, &what, "MESSAGE not handed to the bot (its queue was full)");
                            }
                        }
                    }
                    Ok(None) => {
                        ctx.book.add(EVENTS, &what, "ended by the server");
                        break;
                    }
                    Err(s) => {
                        ctx.record(section, "Event (long-lived) ended early", &Err::<(), _>(s));
                        break;
                    }
                }
            }
        }
    }
    for (t, n) in seen {
        ctx.book.add_n(EVENTS, &what, &event_name(t), n);
    }
}

/// The official-account bot: every follower message answered with "echo: <text>".
async fn bot_worker(ctx: Arc<Ctx>, addr: SocketAddr, rx: Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<String>>>) {
    while ctx.serving() {
        let Some(ch) = connect(&ctx, OA, addr).await else { continue };
        let mut p = puppet(ch, TOKEN);
        while ctx.serving() {
            let next = { timeout(Duration::from_millis(250), rx.lock().await.recv()).await };
            let id = match next {
                Err(_) => continue,
                Ok(None) => return,
                Ok(Some(id)) => id,
            };
            let Some(m) = grpc(&ctx, OA, "MessagePayload", p.message_payload(pb::MessagePayloadRequest { id })).await
            else {
                if alive_channel(&mut p).await {
                    continue;
                }
                break;
            };
            if m.talker_id == ORIGINAL_ID {
                continue; // the bot's own message
            }
            let req = pb::MessageSendTextRequest {
                conversation_id: m.talker_id,
                text: format!("echo: {}", m.text),
                mentional_ids: vec![],
            };
            if grpc(&ctx, OA, "MessageSendText", p.message_send_text(req)).await.is_none()
                && !alive_channel(&mut p).await
            {
                break;
            }
        }
    }
}

/// Event streams opened, read for a random while, and dropped with their connection.
async fn churner(ctx: Arc<Ctx>, addr: SocketAddr, seed: u64) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut received = 0u64;
    while ctx.running() {
        let Some(ch) = connect(&ctx, MOCK, addr).await else { continue };
        let mut p = puppet(ch, TOKEN);
        let hold = Duration::from_millis(rng.u64(0..5000)).min(ctx.left());
        if let Some(mut stream) =
            grpc(&ctx, MOCK, "Event (dropped at random)", p.event(pb::EventRequest::default())).await
        {
            let until = tokio::time::Instant::now() + hold;
            loop {
                tokio::select! {
                    _ = sleep_until(until) => break,
                    m = stream.message() => match m {
                        Ok(Some(_)) => received += 1,
                        Ok(None) => {
                            ctx.book.add(EVENTS, "mock: short-lived Event streams", "ended by the server");
                            break;
                        }
                        Err(s) => {
                            ctx.record(MOCK, "Event (dropped at random) ended early", &Err::<(), _>(s));
                            break;
                        }
                    }
                }
            }
        }
        drop(p);
        ctx.book.add(CUTS, "Event stream dropped with its connection", "done");
    }
    ctx.book.add_n(EVENTS, "mock: short-lived Event streams", "events (all types)", received);
}

/// Upload, download back and check; one cycle in five cut mid-upload, one in five mid-download.
async fn uploader(ctx: Arc<Ctx>, addr: SocketAddr, mib: usize, seed: u64, period: Option<Duration>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut tick = period.map(interval);
    let chunks: Arc<Vec<Vec<u8>>> = Arc::new(pattern_chunks(seed as u8, mib << 20, CHUNK).collect());
    let expected = chunks.concat();
    let requests = |k: usize| {
        let chunks = chunks.clone();
        tokio_stream::iter(0..k).map(move |i| pb::UploadRequest { chunk: chunks[i].clone() })
    };
    let mut n = 0u64;
    while ctx.running() {
        if let Some(t) = &mut tick {
            t.tick().await;
        }
        n += 1;
        let Some(ch) = connect(&ctx, MOCK, addr).await else { continue };
        let mut p = puppet(ch, TOKEN);
        if n.is_multiple_of(5) {
            let k = rng.usize(1..chunks.len().max(2));
            let body = requests(k).chain(tokio_stream::pending());
            match timeout(Duration::from_millis(rng.u64(20..300)), p.upload(body)).await {
                Err(_) => ctx.book.add(CUTS, "Upload cut mid-way with its connection", "done"),
                Ok(r) => ctx.record(MOCK, "Upload (answered before the cut)", &r),
            }
            continue;
        }
        let Some(id) = grpc(&ctx, MOCK, "Upload", p.upload(requests(chunks.len()))).await.map(|r| r.id) else {
            continue;
        };
        let Some(mut stream) = grpc(&ctx, MOCK, "Download", p.download(pb::DownloadRequest { id })).await else {
            continue;
        };
        if n % 5 == 3 {
            for _ in 0..rng.usize(0..3) {
                _ = timeout(CALL_TIMEOUT, stream.message()).await;
            }
            ctx.book.add(CUTS, "Download cut mid-way with its connection", "done");
            continue;
        }
        let mut got = Vec::new();
        let read = timeout(CALL_TIMEOUT, async {
            while let Some(m) = stream.message().await? {
                got.push(m.chunk);
            }
            Ok::<_, Status>(())
        })
        .await;
        match read {
            Err(_) => ctx.book.add(MOCK, "Download (all bytes)", "no answer within 60 s"),
            Ok(Err(s)) => ctx.record(MOCK, "Download (all bytes)", &Err::<(), _>(s)),
            Ok(Ok(())) if got.concat() == expected => ctx.book.add(MOCK, "Download (all bytes)", "OK, bytes verified"),
            Ok(Ok(())) => ctx.book.add(MOCK, "Download (all bytes)", "BYTES DIFFER"),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

fn text_push(from: &str, content: &str, msg_id: u64) -> String {
    format!(
        "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
         <CreateTime>{}</CreateTime><MsgType><![CDATA[text]]></MsgType>\
         <Content><![CDATA[{content}]]></Content><MsgId>{msg_id}</MsgId></xml>",
        now_secs()
    )
}

/// The query and body WeChat sends for `xml` in safe mode, signed with `ts` and `nonce`.
fn signed(key: &AesKey, xml: &str, ts: u64, nonce: &str) -> (String, String) {
    let ts = ts.to_string();
    let sig = crypto::signature(&[OA_TOKEN, &ts, nonce]);
    let enc = key.encrypt(xml, APP_ID).expect("the OS random source");
    let msg_sig = crypto::signature(&[OA_TOKEN, &ts, nonce, &enc]);
    (
        format!("/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={msg_sig}"),
        format!("<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
    )
}

/// One HTTP/1.1 request on a new connection, bounded: (status, body).
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> Result<(u16, String), String> {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/xml\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        s.write_all(head.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        s.write_all(body.as_bytes()).await.map_err(|e| format!("write: {e}"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.map_err(|e| format!("read: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).ok_or("no status line")?;
        Ok((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    };
    timeout(CALL_TIMEOUT, exchange).await.map_err(|_| "no answer within 60 s".to_owned())?
}

/// Counts a pusher as active until dropped.
struct Pushing(Arc<Ctx>);

impl Pushing {
    fn new(ctx: &Arc<Ctx>) -> Self {
        ctx.pushing.fetch_add(1, Ordering::SeqCst);
        Self(ctx.clone())
    }
}

impl Drop for Pushing {
    fn drop(&mut self) {
        self.0.pushing.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Pushes that want the bot's passive reply.
struct Pusher {
    ctx: Arc<Ctx>,
    http: SocketAddr,
    key: AesKey,
    counter: Arc<AtomicU64>,
    /// Its own follower: a passive reply goes to the oldest waiting push of the follower it answers.
    from: String,
    /// Push-to-answer latencies of its passive replies, in ms.
    latencies: Arc<Mutex<Vec<f32>>>,
}

impl Pusher {
    fn next(&self) -> u64 {
        self.counter.fetch_add(1, Ordering::Relaxed)
    }

    /// A text push signed now with a fresh nonce; the answer classified.
    async fn push(&self, what: &str, n: u64) -> (String, String) {
        let xml = text_push(&self.from, &format!("soak {n}"), 5_000_000_000 + n);
        let (path, body) = signed(&self.key, &xml, now_secs(), &format!("{}", 7_000_000_000 + n));
        let started = Instant::now();
        let outcome = match http(self.http, "POST", &path, &body).await {
            Err(e) => format!("no answer: {e}"),
            Ok((200, answer)) => {
                let reply = xml::parse_tree(&answer)
                    .ok()
                    .and_then(|t| t.get("Encrypt").map(str::to_owned))
                    .and_then(|e| self.key.decrypt(&e, APP_ID).ok())
                    .unwrap_or_default();
                if reply.contains(&format!("echo: soak {n}]]>")) {
                    let ms = started.elapsed().as_secs_f32() * 1e3;
                    self.latencies.lock().unwrap_or_else(|p| p.into_inner()).push(ms);
                    "HTTP 200, the bot's passive reply".to_owned()
                } else if answer == "success" {
                    "HTTP 200 `success` (the bot missed the reply window)".to_owned()
                } else {
                    "HTTP 200, some other answer".to_owned()
                }
            }
            Ok((status, _)) => format!("HTTP {status}"),
        };
        self.ctx.book.add(WEBHOOK, what, &outcome);
        (path, body)
    }

    async fn run(self, _active: Pushing) {
        while self.ctx.running() {
            let n = self.next();
            self.push("text push", n).await;
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Hostile {
    WrongToken,
    HugeId,
    BadFileBox,
    SilentTcp,
    Slowloris,
    DeepXml,
    Replay,
    Stale,
}

/// Each hostile kind: what it is, and the answer it should get.
const HOSTILES: [(Hostile, &str, &str); 8] = [
    (Hostile::WrongToken, "wrong token (Version, mock gRPC)", "Unauthenticated"),
    (Hostile::HugeId, "1 MiB id (ContactPayload, mock gRPC)", "InvalidArgument"),
    (Hostile::BadFileBox, "malformed FileBox JSON (MessageSendFile, mock gRPC)", "InvalidArgument"),
    (Hostile::SilentTcp, "silent TCP connection (mock gRPC port)", "closed by the server"),
    (Hostile::Slowloris, "slowloris, a header byte a second (webhook side port)", "closed by the server"),
    (Hostile::DeepXml, "signed push of 10,000 nested elements (webhook)", "HTTP 400, nested too deep"),
    (Hostile::Replay, "replayed push, same timestamp and nonce (webhook)", "HTTP 403, replayed"),
    (Hostile::Stale, "push signed 400 s ago (webhook)", "HTTP 403, stale"),
];

struct HostileTargets {
    grpc: SocketAddr,
    good: Puppet,
    wrong: Puppet,
    pusher: Arc<Pusher>,
}

async fn hostile(ctx: Arc<Ctx>, which: Hostile, t: Arc<HostileTargets>) {
    let label = HOSTILES.iter().find(|h| h.0 == which).map(|h| h.1).unwrap_or_default();
    let started = Instant::now();
    match which {
        Hostile::WrongToken => {
            grpc(&ctx, HOSTILE, label, t.wrong.clone().version(pb::VersionRequest {})).await;
        }
        Hostile::HugeId => {
            let req = pb::ContactPayloadRequest { id: "x".repeat(1 << 20) };
            grpc(&ctx, HOSTILE, label, t.good.clone().contact_payload(req)).await;
        }
        Hostile::BadFileBox => {
            let req = pb::MessageSendFileRequest {
                conversation_id: "wxid_alice".into(),
                file_box: r#"{"boxType": 1, "base64""#.into(),
            };
            grpc(&ctx, HOSTILE, label, t.good.clone().message_send_file(req)).await;
        }
        Hostile::SilentTcp => {
            let Ok(mut s) = TcpStream::connect(t.grpc).await else {
                return ctx.book.add(HOSTILE, label, "no connection");
            };
            let mut buf = [0u8; 1024];
            let closed = timeout(HOSTILE_BOUND, async {
                while let Ok(n) = s.read(&mut buf).await
                    && n > 0
                {}
            })
            .await;
            let outcome = if closed.is_ok() { "closed by the server" } else { "still open after 60 s" };
            ctx.book.add(HOSTILE, label, outcome);
            ctx.book.time(label, started.elapsed());
        }
        Hostile::Slowloris => {
            let Ok(mut s) = TcpStream::connect(t.pusher.http).await else {
                return ctx.book.add(HOSTILE, label, "no connection");
            };
            let (mut rd, mut wr) = s.split();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            let written = wr.write_all(b"POST /wechat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ").await.is_ok();
            let closed = written
                && timeout(HOSTILE_BOUND, async {
                    loop {
                        tokio::select! {
                            r = rd.read(&mut buf) => match r {
                                Ok(0) | Err(_) => return,
                                Ok(n) => got.extend_from_slice(&buf[..n]),
                            },
                            _ = sleep(Duration::from_secs(1)) => if wr.write_all(b"x").await.is_err() { return },
                        }
                    }
                })
                .await
                .is_ok();
            let text = String::from_utf8_lossy(&got);
            let outcome = match (closed, text.split_whitespace().nth(1)) {
                (false, _) => "still open after 60 s".to_owned(),
                (true, Some(code)) if text.starts_with("HTTP/") => format!("HTTP {code}, then closed by the server"),
                (true, _) => "closed by the server".to_owned(),
            };
            ctx.book.add(HOSTILE, label, &outcome);
            ctx.book.time(label, started.elapsed());
        }
        Hostile::DeepXml => {
            let deep = format!("{}{}", "<a>".repeat(10_000), "</a>".repeat(10_000));
            let n = t.pusher.next();
            let (path, body) = signed(&t.pusher.key, &deep, now_secs(), &format!("{}", 7_000_000_000 + n));
            let outcome = match http(t.pusher.http, "POST", &path, &body).await {
                Err(e) => format!("no answer: {e}"),
                Ok((400, b)) if b.contains("nested deeper than") => "HTTP 400, nested too deep".to_owned(),
                Ok((status, b)) => format!("HTTP {status}: {}", b.trim().chars().take(80).collect::<String>()),
            };
            ctx.book.add(HOSTILE, label, &outcome);
        }
        Hostile::Replay => {
            let n = t.pusher.next();
            let (path, body) = t.pusher.push("text push (then replayed)", n).await;
            let outcome = match http(t.pusher.http, "POST", &path, &body).await {
                Err(e) => format!("no answer: {e}"),
                Ok((403, b)) if b.contains("replayed") => "HTTP 403, replayed".to_owned(),
                Ok((status, b)) => format!("HTTP {status}: {}", b.trim().chars().take(80).collect::<String>()),
            };
            ctx.book.add(HOSTILE, label, &outcome);
        }
        Hostile::Stale => {
            let n = t.pusher.next();
            let xml = text_push(&t.pusher.from, "stale", 5_000_000_000 + n);
            let (path, body) = signed(&t.pusher.key, &xml, now_secs() - 400, &format!("{}", 7_000_000_000 + n));
            let outcome = match http(t.pusher.http, "POST", &path, &body).await {
                Err(e) => format!("no answer: {e}"),
                Ok((403, b)) if b.contains("behind this server's clock") => "HTTP 403, stale".to_owned(),
                Ok((status, b)) => format!("HTTP {status}: {}", b.trim().chars().take(80).collect::<String>()),
            };
            ctx.book.add(HOSTILE, label, &outcome);
        }
    }
}

async fn hostile_driver(ctx: Arc<Ctx>, per_sec: f64, t: Arc<HostileTargets>, _active: Pushing) {
    let mut tasks = JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec.max(0.01)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_wrong: Option<Instant> = None;
    let mut i = 0;
    while ctx.running() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = sleep_until(ctx.deadline.into()) => break,
        }
        let which = HOSTILES[i % HOSTILES.len()].0;
        i += 1;
        // Under the default throttle refill (1 failure/s/address): 127.0.0.1 is never throttled.
        if which == Hostile::WrongToken {
            if last_wrong.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
                continue;
            }
            last_wrong = Some(Instant::now());
        }
        // Long-lived ones only while they can end before the run does.
        if matches!(which, Hostile::SilentTcp | Hostile::Slowloris) && ctx.left() < Duration::from_secs(30) {
            continue;
        }
        tasks.spawn(hostile(ctx.clone(), which, t.clone()));
        while tasks.try_join_next().is_some() {}
    }
    _ = timeout(HOSTILE_BOUND + Duration::from_secs(10), async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
}

/// One sample of a process: RSS and peak in KiB, CPU seconds, alive.
#[derive(Clone, Copy, Default)]
struct Probe {
    rss_kib: u64,
    hwm_kib: u64,
    cpu: f64,
    alive: bool,
}

fn probe(pid: u32) -> Probe {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after `(comm)`: state is the 1st, utime and stime the 12th and 13th.
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Probe {
        rss_kib: field("VmRSS:"),
        hwm_kib: field("VmHWM:"),
        cpu: (ticks(11) + ticks(12)) / 100.0, // USER_HZ is 100 on Linux
        alive: matches!(fields.first(), Some(s) if !matches!(*s, "Z" | "X" | "x")),
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// The mock server's retention window: (events held, capacity).
async fn retention(addr: SocketAddr) -> Option<(u64, u64)> {
    let ch = Channel::from_shared(format!("http://{addr}")).ok()?.connect().await.ok()?;
    let mut feed = EventFeedClient::with_interceptor(ch, Token(TOKEN.into()));
    let r = timeout(Duration::from_secs(10), feed.retention(ext::RetentionRequest {})).await.ok()?.ok()?.into_inner();
    let held = if r.last_seq == 0 { 0 } else { r.last_seq - r.first_seq + 1 };
    Some((held, r.capacity))
}

/// Files and bytes under a directory (one level deep).
fn dir_usage(dir: &std::path::Path) -> (u64, u64) {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(|m| m.is_file())
                .fold((0, 0), |(n, b), m| (n + 1, b + m.len()))
        })
        .unwrap_or((0, 0))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(args.secs > 0 && args.sample_secs > 0, "--secs and --sample-secs must be positive");
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let warmup = args.warmup_secs.unwrap_or(60.min(args.secs / 2));
    let blob_total = args.blob_total_mib.to_string();

    // The official-account server, safe mode, body limit raised so the deep push reaches the parser.
    let fake = FakeWeChat::start(7200).await;
    let mut env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    env.extend([("PUPPET_OA_AES_KEY", AES_KEY), ("PUPPET_OA_MAX_BODY_KIB", "128")]);
    let oa = Server::start_with_env(&["--backend", "official-account", "--http-listen", "127.0.0.1:0"], &env);
    let oa_http = oa.http_addr.expect("side port");
    let mock = Server::start(&["--http-listen", "127.0.0.1:0", "--blob-max-total-mib", &blob_total]);
    Events::open(&mut oa.puppet().await).await.wait_for(kind::READY).await;
    let mut p = mock.puppet().await;
    Events::open(&mut p).await.wait_for(kind::READY).await;

    let mut friends = Vec::new();
    for id in p.contact_list(pb::ContactListRequest {}).await?.into_inner().ids {
        if p.contact_payload(pb::ContactPayloadRequest { id: id.clone() }).await?.into_inner().friend {
            friends.push(id);
        }
    }
    let rooms = p.room_list(pb::RoomListRequest {}).await?.into_inner().ids;
    anyhow::ensure!(!friends.is_empty() && !rooms.is_empty(), "the mock world has no friends or rooms");
    let ids = Arc::new(WorldIds { friends, rooms });

    println!(
        "soak: {} s (warm-up {warmup} s), samples every {} s; mock server pid {}, official-account server pid {}",
        args.secs,
        args.sample_secs,
        mock.pid(),
        oa.pid()
    );
    println!(
        "  {} unary workers{}, {} churned Event streams, {} uploader(s) of {} MiB, {} webhook pushers, {} hostile/s",
        args.concurrency,
        if args.unary_per_sec > 0 { format!(" at {}/s", args.unary_per_sec) } else { " (unpaced)".into() },
        args.streams,
        args.uploaders,
        args.upload_mib,
        args.pushers,
        args.hostile_per_sec
    );

    let started = Instant::now();
    let ctx = Arc::new(Ctx {
        deadline: started + Duration::from_secs(args.secs),
        stop: AtomicBool::new(false),
        book: Book::default(),
        pushing: AtomicU64::new(0),
        bad: Mutex::new((0, Vec::new())),
    });
    let mut tasks = JoinSet::new();
    let period =
        (args.unary_per_sec > 0).then(|| Duration::from_secs_f64(args.concurrency as f64 / args.unary_per_sec as f64));
    for i in 0..args.concurrency {
        tasks.spawn(unary_worker(ctx.clone(), mock.addr, ids.clone(), 1000 + i as u64, period));
    }
    tasks.spawn(consumer(ctx.clone(), MOCK, mock.addr, None, None));
    for i in 0..args.streams {
        tasks.spawn(churner(ctx.clone(), mock.addr, 2000 + i as u64));
    }
    let upload_period =
        (args.uploads_per_sec > 0.0).then(|| Duration::from_secs_f64(args.uploaders as f64 / args.uploads_per_sec));
    for i in 0..args.uploaders {
        tasks.spawn(uploader(ctx.clone(), mock.addr, args.upload_mib.max(1), 3000 + i as u64, upload_period));
    }
    let (bot_tx, bot_rx) = tokio::sync::mpsc::channel(1024);
    let bot_rx = Arc::new(tokio::sync::Mutex::new(bot_rx));
    let (opened_tx, opened) = tokio::sync::oneshot::channel();
    tasks.spawn(consumer(ctx.clone(), OA, oa.addr, Some(bot_tx), Some(opened_tx)));
    for _ in 0..args.pushers + 2 {
        tasks.spawn(bot_worker(ctx.clone(), oa.addr, bot_rx.clone()));
    }
    // Pushes start once the bot listens.
    anyhow::ensure!(
        matches!(timeout(Duration::from_secs(30), opened).await, Ok(Ok(()))),
        "the bot's Event stream did not open within 30 s"
    );
    let key = AesKey::from_encoding_aes_key(AES_KEY)?;
    let counter = Arc::new(AtomicU64::new(1));
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let pusher = |from: String| Pusher {
        ctx: ctx.clone(),
        http: oa_http,
        key: key.clone(),
        counter: counter.clone(),
        from,
        latencies: latencies.clone(),
    };
    for i in 0..args.pushers {
        tasks.spawn(pusher(format!("oSoakFollower{i}")).run(Pushing::new(&ctx)));
    }
    if args.hostile_per_sec > 0.0 {
        let ch = mock.channel().await;
        let targets = Arc::new(HostileTargets {
            grpc: mock.addr,
            good: puppet(ch.clone(), TOKEN),
            wrong: puppet(ch, WRONG_TOKEN),
            pusher: Arc::new(pusher("oSoakHostile".into())),
        });
        tasks.spawn(hostile_driver(ctx.clone(), args.hostile_per_sec, targets, Pushing::new(&ctx)));
    }

    // Samples every --sample-secs, and one at the end.
    let pids = [mock.pid(), oa.pid()];
    let mut samples: Vec<(u64, [Probe; 2])> = vec![(0, pids.map(probe))];
    let mut retention_at_warmup = None;
    let mut died = Vec::new();
    let mut t = 0;
    while died.is_empty() && t < args.secs {
        t = (t + args.sample_secs).min(args.secs);
        sleep_until((started + Duration::from_secs(t)).into()).await;
        let now = pids.map(probe);
        samples.push((t, now));
        for (name, p) in [("mock", now[0]), ("official-account", now[1])] {
            if !p.alive {
                died.push(name);
            }
        }
        if retention_at_warmup.is_none() && t >= warmup {
            retention_at_warmup = retention(mock.addr).await;
        }
        println!(
            "  [{t:>4} s] mock RSS {:6.1} MiB, CPU {:6.1} s, {} answers | official-account RSS {:6.1} MiB, CPU {:6.1} s, {} pushes answered",
            mib(now[0].rss_kib),
            now[0].cpu - samples[0].1[0].cpu,
            ctx.book.served(MOCK) + ctx.book.served(HOSTILE),
            mib(now[1].rss_kib),
            now[1].cpu - samples[0].1[1].cpu,
            ctx.book.served(WEBHOOK),
        );
    }
    ctx.stop.store(true, Ordering::Relaxed);
    let retention_at_end = retention(mock.addr).await;
    let wall = started.elapsed();
    // Every task stops at the deadline; a call in flight ends within its own bound.
    _ = timeout(CALL_TIMEOUT + HOSTILE_BOUND, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    let blob_dir = mock.data_dir.join("blobs");
    let (blob_files, blob_bytes) = dir_usage(&blob_dir);

    let mut latencies = std::mem::take(&mut *latencies.lock().unwrap_or_else(|p| p.into_inner()));
    latencies.sort_by(f32::total_cmp);
    report(&ctx, &args, warmup, wall, &samples, &latencies);
    println!(
        "mock event retention window: {} at the end of the warm-up, {} at the end",
        retention_at_warmup.map(|(h, c)| format!("{h} of {c} events")).unwrap_or("unknown".into()),
        retention_at_end.map(|(h, c)| format!("{h} of {c} events")).unwrap_or("unknown".into()),
    );
    println!(
        "mock blob directory at the end: {blob_files} files, {:.1} MiB (--blob-max-total-mib {})",
        blob_bytes as f64 / (1 << 20) as f64,
        args.blob_total_mib
    );
    let verdict = flat_verdict(&samples, warmup, args.flat_mib);
    println!("{verdict}");

    let bad = ctx.bad.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if died.is_empty() {
        println!("servers: both up at the end");
    } else {
        println!("SERVER DIED: {}", died.join(", "));
    }
    println!("UNKNOWN/INTERNAL answers: {}", bad.0);
    for b in &bad.1 {
        println!("  {b}");
    }
    drop(fake);
    anyhow::ensure!(died.is_empty(), "a server died: {}", died.join(", "));
    anyhow::ensure!(bad.0 == 0, "{} UNKNOWN/INTERNAL answers", bad.0);
    Ok(())
}

/// RSS growth from the first sample at or after the warm-up to the last one, per server (MiB).
fn growth(samples: &[(u64, [Probe; 2])], warmup: u64) -> Option<(u64, u64, [f64; 2])> {
    let from = samples.iter().find(|(t, _)| *t >= warmup)?;
    let to = samples.last()?;
    let g = [0, 1].map(|i| mib(to.1[i].rss_kib) - mib(from.1[i].rss_kib));
    Some((from.0, to.0, g))
}

fn flat_verdict(samples: &[(u64, [Probe; 2])], warmup: u64, flat_mib: f64) -> String {
    match growth(samples, warmup) {
        Some((from, to, g)) if to > from => {
            let worst = g[0].max(g[1]);
            format!(
                "RSS flat after warm-up: {} (grew {worst:.1} MiB; mock {:+.1} MiB, official-account {:+.1} MiB, \
                 {from} s → {to} s, threshold {flat_mib} MiB)",
                if worst <= flat_mib { "yes" } else { "no" },
                g[0],
                g[1]
            )
        }
        _ => "RSS flat after warm-up: unknown (no sample after the warm-up)".to_owned(),
    }
}

fn report(ctx: &Ctx, args: &Args, warmup: u64, wall: Duration, samples: &[(u64, [Probe; 2])], latencies: &[f32]) {
    let counts = ctx.book.snapshot();
    let mut by_what: BTreeMap<(&str, &str), Vec<(&str, u64)>> = BTreeMap::new();
    for ((section, what, outcome), n) in &counts {
        by_what.entry((section, what)).or_default().push((outcome, *n));
    }
    let total = |outcomes: &[(&str, u64)]| outcomes.iter().map(|(_, n)| n).sum::<u64>();
    let ok =
        |outcomes: &[(&str, u64)]| outcomes.iter().filter(|(o, _)| o.starts_with("OK")).map(|(_, n)| n).sum::<u64>();
    let others = |outcomes: &[(&str, u64)], skip_ok: bool| {
        outcomes
            .iter()
            .filter(|(o, _)| !(skip_ok && o.starts_with("OK")))
            .map(|(o, n)| format!("{o} ×{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };

    println!();
    println!("== soak results: {:.0} s wall ==", wall.as_secs_f64());
    for (section, title) in
        [(MOCK, "mock server, gRPC calls served"), (OA, "official-account server, the bot's gRPC calls")]
    {
        println!("{title} (kind: answered, OK, errors by code):");
        for ((s, what), outcomes) in &by_what {
            if s == &section {
                let errs = others(outcomes, true);
                println!(
                    "  {what:<44} {:>9} {:>9}  {}",
                    total(outcomes),
                    ok(outcomes),
                    if errs.is_empty() { "-".into() } else { errs }
                );
            }
        }
    }
    println!("official-account webhook pushes (HTTP):");
    for ((s, what), outcomes) in &by_what {
        if *s == WEBHOOK {
            println!("  {what:<44} {:>9}  {}", total(outcomes), others(outcomes, false));
        }
    }
    if !latencies.is_empty() {
        let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
        println!(
            "  push to passive reply (through the bot): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            pct(0.50),
            pct(0.99),
            latencies[latencies.len() - 1]
        );
    }

    let mut grpc_errors: BTreeMap<&str, u64> = BTreeMap::new();
    let mut http_statuses: BTreeMap<String, u64> = BTreeMap::new();
    for ((section, _, outcome), n) in &counts {
        match *section {
            MOCK | OA if !outcome.starts_with("OK") => *grpc_errors.entry(outcome).or_default() += n,
            WEBHOOK | HOSTILE if outcome.starts_with("HTTP ") => {
                let code = outcome.split([',', ':', ' ']).nth(1).unwrap_or_default();
                *http_statuses.entry(format!("HTTP {code}")).or_default() += n;
            }
            HOSTILE if !outcome.starts_with("closed") && !outcome.starts_with("still") => {
                *grpc_errors.entry(outcome).or_default() += n
            }
            _ => {}
        }
    }
    let join = |m: Vec<String>| if m.is_empty() { "none".to_owned() } else { m.join(", ") };
    println!(
        "errors by gRPC code (hostile requests included): {}",
        join(grpc_errors.iter().map(|(c, n)| format!("{c} ×{n}")).collect())
    );
    println!(
        "HTTP statuses (webhook, hostile included): {}",
        join(http_statuses.iter().map(|(c, n)| format!("{c} ×{n}")).collect())
    );

    println!("hostile requests (answer ×count, expected):");
    let times = ctx.book.times.lock().unwrap_or_else(|p| p.into_inner()).clone();
    for (_, label, expected) in HOSTILES {
        let outcomes = by_what.get(&(HOSTILE, label)).cloned().unwrap_or_default();
        let as_expected = !outcomes.is_empty() && outcomes.iter().all(|(o, _)| o.starts_with(expected));
        let timing = times.get(label).map(|(_, lo, hi)| format!(" (after {lo:.1}–{hi:.1} s)")).unwrap_or_default();
        println!(
            "  {label:<58} {}{timing}; expected {expected}: {}",
            if outcomes.is_empty() { "none sent".to_owned() } else { others(&outcomes, false) },
            if outcomes.is_empty() {
                "-"
            } else if as_expected {
                "ok"
            } else {
                "UNEXPECTED"
            }
        );
    }
    println!("events received:");
    for ((s, what), outcomes) in &by_what {
        if *s == EVENTS {
            println!("  {what:<44} {}", others(outcomes, false));
        }
    }
    println!("random disconnects (by the client):");
    for ((s, what), outcomes) in &by_what {
        if *s == CUTS {
            println!("  {what:<44} {}", total(outcomes));
        }
    }

    println!("RSS (MiB) every {} s:", args.sample_secs);
    println!("  {:>6} {:>10} {:>18}", "t (s)", "mock", "official-account");
    for (t, p) in samples {
        println!(
            "  {t:>6} {:>10.1} {:>18.1}{}",
            mib(p[0].rss_kib),
            mib(p[1].rss_kib),
            if *t == samples.iter().find(|(t, _)| *t >= warmup).map(|s| s.0).unwrap_or(u64::MAX) {
                "   ← end of warm-up"
            } else {
                ""
            }
        );
    }
    let (first, last) = (samples[0].1, samples[samples.len() - 1].1);
    println!("peak RSS: mock {:.1} MiB, official-account {:.1} MiB", mib(last[0].hwm_kib), mib(last[1].hwm_kib));
    if let Some((from, to, g)) = growth(samples, warmup) {
        println!(
            "RSS growth after warm-up ({from} s → {to} s): mock {:+.1} MiB, official-account {:+.1} MiB",
            g[0], g[1]
        );
    }
    let mock_calls = ctx.book.served(MOCK) + ctx.book.served(HOSTILE);
    let pushes = ctx.book.served(WEBHOOK);
    let (mock_cpu, oa_cpu) = (last[0].cpu - first[0].cpu, last[1].cpu - first[1].cpu);
    println!(
        "CPU: mock {mock_cpu:.1} s for {mock_calls} answers ({:.0} µs each); official-account {oa_cpu:.1} s for {pushes} pushes \
         ({:.0} µs each, the bot's calls included)",
        mock_cpu / mock_calls.max(1) as f64 * 1e6,
        oa_cpu / pushes.max(1) as f64 * 1e6
    );
}
