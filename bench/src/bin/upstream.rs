//! `--backend upstream`: what puppet-rs in front of another puppet service adds per call, and what
//! its payload cache saves. The upstream is a `puppet-server` on the mock; the front is a second one
//! with `--backend upstream` pointing at it. Printed, never asserted.
//!
//! * **latency**: `--calls` sequential `ContactPayload` calls (concurrency 1) for the same
//!   contact, three ways in one run: straight to the upstream, through the front with the cache
//!   off, through the front with the cache on. p50/p99 per call, and the front's CPU per call
//!   (`/proc/<pid>/stat` utime+stime over the run).
//! * **cache**: a `--mix` call `ContactPayload` mix over every contact of the world (uniformly
//!   random ids), through a fresh front with the cache on and one with it off: the calls that
//!   reached the upstream, read off the upstream's `/metrics` (`puppet_rpc_requests`).
//!
//! The servers are the `puppet-server` beside this binary (build both in the same profile).
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/upstream
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, PuppetClientT, Server, TOKEN, http_get, kind};

#[derive(Parser)]
struct Args {
    /// Sequential calls per path in the latency part.
    #[arg(long, default_value_t = 2000)]
    calls: usize,
    /// Calls in the cache part's mix.
    #[arg(long, default_value_t = 1000)]
    mix: usize,
}

fn front(upstream: &Server, cache: bool) -> Server {
    let endpoint = upstream.addr.to_string();
    Server::start(&[
        "--backend",
        "upstream",
        "--upstream-endpoint",
        &endpoint,
        "--upstream-token",
        TOKEN,
        "--upstream-tls",
        "off",
        "--upstream-cache",
        if cache { "true" } else { "false" },
    ])
}

/// Waits for the account's LOGIN on `server`.
async fn online(server: &Server) -> PuppetClientT {
    let mut p = server.puppet().await;
    let mut events = Events::open(&mut p).await;
    events.wait_for(kind::LOGIN).await;
    p
}

/// utime + stime of a process, in seconds.
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command's closing parenthesis; utime and stime are the 12th and 13th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // The clock tick is 100 Hz on Linux unless the kernel was configured otherwise.
    (ticks(11) + ticks(12)) / 100.0
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// `calls` sequential ContactPayload calls; (p50, p99).
async fn latency(p: &mut PuppetClientT, calls: usize) -> anyhow::Result<(Duration, Duration)> {
    let mut took = Vec::with_capacity(calls);
    for _ in 0..calls {
        let t = Instant::now();
        p.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await?;
        took.push(t.elapsed());
    }
    took.sort();
    Ok((percentile(&took, 0.5), percentile(&took, 0.99)))
}

/// The upstream's answered `ContactPayload` calls so far.
async fn upstream_contact_calls(upstream: &Server) -> anyhow::Result<u64> {
    let addr = upstream.http_addr.ok_or_else(|| anyhow::anyhow!("the upstream has no side port"))?;
    let (_, body) = http_get(addr, "/metrics").await;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("puppet_rpc_requests") && l.contains("ContactPayload"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    println!(
        "upstream: {} sequential ContactPayload calls per path, a {}-call mix; {} CPUs",
        args.calls,
        args.mix,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let upstream = Server::start(&["--http-listen", "127.0.0.1:0"]);
    let mut direct = online(&upstream).await;

    println!("\n== latency per call (concurrency 1) ==");
    println!("{:<28} {:>10} {:>10} {:>16}", "path", "p50 µs", "p99 µs", "front CPU µs/call");
    latency(&mut direct, args.calls / 10 + 1).await?;
    let (p50, p99) = latency(&mut direct, args.calls).await?;
    println!("{:<28} {:>10} {:>10} {:>16}", "direct to the upstream", p50.as_micros(), p99.as_micros(), "-");
    for cache in [false, true] {
        let front = front(&upstream, cache);
        let mut p = online(&front).await;
        latency(&mut p, args.calls / 10 + 1).await?;
        let cpu = cpu_secs(front.pid());
        let (p50, p99) = latency(&mut p, args.calls).await?;
        let per_call = (cpu_secs(front.pid()) - cpu) * 1e6 / args.calls as f64;
        let path = if cache { "through the front, cache on" } else { "through the front, cache off" };
        println!("{path:<28} {:>10} {:>10} {:>16.0}", p50.as_micros(), p99.as_micros(), per_call);
    }

    println!("\n== upstream calls for a {}-call ContactPayload mix ==", args.mix);
    let ids = direct.contact_list(pb::ContactListRequest {}).await?.into_inner().ids;
    let mix: Vec<String> = (0..args.mix).map(|_| ids[fastrand::usize(..ids.len())].clone()).collect();
    for cache in [false, true] {
        let front = front(&upstream, cache);
        let mut p = online(&front).await;
        let before = upstream_contact_calls(&upstream).await?;
        for id in &mix {
            p.contact_payload(pb::ContactPayloadRequest { id: id.clone() }).await?;
        }
        let reached = upstream_contact_calls(&upstream).await? - before;
        println!(
            "cache {:<3}: {reached} of {} calls reached the upstream ({} distinct contacts)",
            if cache { "on" } else { "off" },
            args.mix,
            ids.len()
        );
    }
    Ok(())
}
