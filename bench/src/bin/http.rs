//! `wechaty.Puppet` over HTTP next to gRPC, in one run against one mock server (printed, never
//! asserted):
//!
//! * **calls**: `GET /contacts/wxid_alice` over REST (HTTP/1.1 keep-alive, `--concurrency`
//!   connections) for `--secs` seconds, then `wechaty.Puppet/ContactPayload` over gRPC (one HTTP/2
//!   connection, the same concurrency) for as long: calls/s and the server's CPU per call
//!   (utime + stime from `/proc/<pid>/stat`).
//! * **sse**: `--events` DONG events flooded (`MockWorld/Flood`) to 1 and then to `--readers` SSE
//!   readers of `GET /events`: the time until every reader has all of them, events/s per reader
//!   and in total.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/http                    # 10 s per protocol, 16 at a time; 20,000 events
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, TOKEN, kind, world};
use tokio::task::JoinSet;

#[derive(Parser)]
struct Args {
    /// Seconds of calls per protocol.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Calls in flight at a time.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Events flooded to the SSE readers.
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// SSE readers in the second round.
    #[arg(long, default_value_t = 50)]
    readers: usize,
}

/// The server's CPU time so far, in seconds (utime + stime).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

fn client() -> reqwest::Client {
    _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder().pool_max_idle_per_host(256).build().expect("an HTTP client")
}

/// Runs `call` `concurrency` at a time for `secs`: (calls, seconds, server CPU seconds).
async fn measure<F, Fut>(pid: u32, args: &Args, call: F) -> (u64, f64, f64)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let end = Instant::now() + Duration::from_secs(args.secs);
    let (cpu0, t0) = (cpu_secs(pid), Instant::now());
    let mut workers = JoinSet::new();
    for _ in 0..args.concurrency {
        let call = call.clone();
        workers.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < end {
                call().await;
                n += 1;
            }
            n
        });
    }
    let mut calls = 0;
    while let Some(n) = workers.join_next().await {
        calls += n.expect("a worker");
    }
    (calls, t0.elapsed().as_secs_f64(), cpu_secs(pid) - cpu0)
}

fn report(what: &str, (calls, secs, cpu): (u64, f64, f64)) {
    println!(
        "  {what:<28} {:>9.0} calls/s   server CPU {:>6.1} µs/call ({calls} calls in {secs:.1} s)",
        calls as f64 / secs,
        cpu / calls.max(1) as f64 * 1e6
    );
}

/// One SSE reader: counts DONG events until `want`, returns when it has them.
async fn sse_reader(base: String, want: u64, open: tokio::sync::mpsc::Sender<()>) -> u64 {
    let r = client().get(format!("{base}/events")).bearer_auth(TOKEN).send().await.expect("GET /events");
    let mut stream = r.bytes_stream();
    let (mut got, mut opened, mut tail) = (0u64, false, String::new());
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("the stream goes on");
        if !opened {
            opened = true;
            _ = open.send(()).await;
        }
        tail.push_str(&String::from_utf8_lossy(&chunk));
        let complete = tail.rfind('\n').map_or(0, |i| i + 1);
        got +=
            tail[..complete].lines().filter(|l| l.starts_with("data:") && l.contains("EVENT_TYPE_DONG")).count() as u64;
        tail.drain(..complete);
        if got >= want {
            break;
        }
    }
    got
}

async fn sse_round(server: &Server, base: &str, readers: usize, events: u64) {
    let (open_tx, mut open_rx) = tokio::sync::mpsc::channel(readers);
    let mut set = JoinSet::new();
    for _ in 0..readers {
        set.spawn(sse_reader(base.to_owned(), events, open_tx.clone()));
    }
    for _ in 0..readers {
        open_rx.recv().await.expect("every reader's stream opens");
    }
    let t0 = Instant::now();
    world(server).await.flood(ext::FloodRequest { count: events, per_second: 0 }).await.expect("flood");
    let mut total = 0;
    while let Some(got) = set.join_next().await {
        total += got.expect("a reader");
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "  {readers:>3} reader(s): {events} events each in {secs:.2} s: {:>9.0} events/s per reader, {:>9.0} in total",
        events as f64 / secs,
        total as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = Args::parse();
    let max_lag = (args.events * 2).to_string();
    let server = Server::start(&["--http-listen", "127.0.0.1:0", "--subscriber-max-lag", &max_lag]);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    drop(events);
    let base = format!("http://{}", server.http_addr.expect("the side port"));
    let pid = server.pid();
    println!(
        "http: {} s per protocol, {} in flight, {} CPUs; GET /contacts/wxid_alice vs ContactPayload",
        args.secs,
        args.concurrency,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    let http = client();
    let url = format!("{base}/contacts/wxid_alice");
    let rest = measure(pid, &args, move || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http.get(&url).bearer_auth(TOKEN).send().await.expect("REST call");
            assert!(r.status().is_success());
            r.bytes().await.expect("REST answer");
        }
    })
    .await;
    report("REST (HTTP/1.1 + JSON)", rest);

    let grpc = server.puppet().await;
    let grpc_result = measure(pid, &args, move || {
        let mut grpc = grpc.clone();
        async move {
            grpc.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await.expect("gRPC call");
        }
    })
    .await;
    report("gRPC (HTTP/2 + protobuf)", grpc_result);

    println!("SSE: {} DONG events flooded", args.events);
    sse_round(&server, &base, 1, args.events).await;
    sse_round(&server, &base, args.readers, args.events).await;
}
