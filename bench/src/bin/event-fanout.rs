//! Event fan-out benchmark: starts a release `puppet-server`, opens N `wechaty.Puppet/Event`
//! subscribers (one HTTP/2 connection each), floods M events through the bus, and prints the
//! delivery rate per subscriber and in aggregate, plus the server's peak RSS.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/event-fanout --subscribers 1 --events 1000000
//! target/release/event-fanout --subscribers 50 --events 200000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Server, world};

#[derive(Parser)]
struct Args {
    /// Concurrent Event subscribers, each on its own connection.
    #[arg(long, default_value_t = 1)]
    subscribers: usize,
    /// Events to publish.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Events per second to publish (0 = as fast as the server can).
    #[arg(long, default_value_t = 0)]
    per_second: u64,
    /// Retention window and lag limit; defaults to `events` so nobody is cut off while the producer
    /// outruns the consumers.
    #[arg(long)]
    retention: Option<u64>,
}

struct Received {
    count: u64,
    first: Instant,
    last: Instant,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let retention = args.retention.unwrap_or(args.events + 1024).to_string();
    let server = Server::start(&[
        "--autostart",
        "false",
        "--event-retention",
        &retention,
        "--subscriber-max-lag",
        &retention,
        "--heartbeat-secs",
        "60",
    ]);
    let rss_idle = rss_peak_kib(server.pid());

    let mut readers = Vec::new();
    for _ in 0..args.subscribers {
        let mut client = server.puppet().await;
        let mut stream = client.event(pb::EventRequest::default()).await?.into_inner();
        stream.message().await?.expect("heartbeat first");
        let want = args.events;
        readers.push(tokio::spawn(async move {
            let mut r = Received { count: 0, first: Instant::now(), last: Instant::now() };
            while r.count < want {
                match stream.message().await {
                    Ok(Some(e)) if e.r#type == 3 => {
                        if r.count == 0 {
                            r.first = Instant::now();
                        }
                        r.count += 1;
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => break,
                    Err(status) => {
                        eprintln!("subscriber ended: {status}");
                        break;
                    }
                }
            }
            r.last = Instant::now();
            r
        }));
    }

    let started = Instant::now();
    world(&server).await.flood(ext::FloodRequest { count: args.events, per_second: args.per_second }).await?;
    let published_in = started.elapsed();
    let mut results = Vec::new();
    for r in readers {
        results.push(r.await?);
    }
    let delivered: u64 = results.iter().map(|r| r.count).sum();
    let first = results.iter().map(|r| r.first).min().unwrap_or(started);
    let last = results.iter().map(|r| r.last).max().unwrap_or(started);
    let span = last.duration_since(first).max(Duration::from_micros(1));
    let per_sub: Vec<f64> = results
        .iter()
        .map(|r| r.count as f64 / r.last.duration_since(r.first).max(Duration::from_micros(1)).as_secs_f64())
        .collect();
    let min_sub = per_sub.iter().cloned().fold(f64::INFINITY, f64::min);
    let rss_peak = rss_peak_kib(server.pid());

    println!("event-fanout: {} subscriber(s), {} events each", args.subscribers, args.events);
    println!(
        "  published in         {:>10.3} s ({:.0} events/s)",
        published_in.as_secs_f64(),
        args.events as f64 / published_in.as_secs_f64()
    );
    println!("  delivered            {delivered:>10} of {}", args.events * args.subscribers as u64);
    println!(
        "  aggregate            {:>10.0} deliveries/s over {:.3} s",
        delivered as f64 / span.as_secs_f64(),
        span.as_secs_f64()
    );
    println!("  slowest subscriber   {:>10.0} events/s", min_sub);
    println!("  server peak RSS      {:>10} KiB (idle {rss_idle} KiB; retention {retention} events)", rss_peak);
    anyhow::ensure!(delivered == args.events * args.subscribers as u64, "some events were not delivered");
    Ok(())
}

fn rss_peak_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
