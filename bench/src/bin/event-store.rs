//! The durable store's figures (issue 15): publish rate under `batch` and `memory`, a resuming
//! subscriber reading back from disk, memory with a million messages and a million events
//! retained, and commit latency under `always`. Printed, never asserted.
//!
//! Two views, labelled in the output:
//!
//! * **in-process**: `puppet_server::store` and `puppet_server::events` driven directly, each part in
//!   a child process of its own (clean RSS), with the server's default limits (parsed from its
//!   flags) and the store file in `--dir` (default: the temp dir). Isolates the store and the bus
//!   from gRPC.
//! * **end-to-end**: the release `puppet-server` (`PUPPET_SERVER_BIN` overrides), `MockWorld/Flood`
//!   over gRPC, `EventFeed/Subscribe` with `after_seq` to resume, `Ding` round trips.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/event-store                       # everything, 1 M events / 1 M messages
//! target/release/event-store --part in-process
//! target/release/event-store --part e2e --events 200000
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use puppet_proto::event::{DataPayload, PuppetEvent};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_server::config::Config;
use puppet_server::events::{EventBus, StartAt};
use puppet_server::store::{self, MessageRecord, Store, StoredEvent};
use puppet_tests::{Server, world};

#[derive(Parser)]
struct Args {
    /// Events to publish (and to retain).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Messages to store for the memory figure.
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Commits timed for each latency figure.
    #[arg(long, default_value_t = 2000)]
    commits: usize,
    /// Events in a "small group" commit.
    #[arg(long, default_value_t = 16)]
    group: usize,
    /// Which view to run.
    #[arg(long, value_enum, default_value = "all")]
    part: Part,
    /// Where in-process stores are created (a directory on the disk to measure).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Internal: run one in-process phase in this process.
    #[arg(long, value_enum, hide = true)]
    phase: Option<Phase>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    All,
    InProcess,
    E2e,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, ValueEnum)]
enum Phase {
    PublishBatch,
    PublishMemory,
    AppendOnly,
    Memory,
    Latency,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if let Some(phase) = args.phase {
        return runtime.block_on(run_phase(&args, phase));
    }
    println!(
        "event-store: {} events, {} messages, {} CPUs, {}",
        args.events,
        args.messages,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    if args.part != Part::E2e {
        println!("\n== in-process (puppet_server::store / events, no gRPC) ==");
        for phase in [Phase::PublishBatch, Phase::AppendOnly, Phase::PublishMemory, Phase::Memory, Phase::Latency] {
            let status = Command::new(std::env::current_exe()?)
                .args(std::env::args_os().skip(1))
                .arg("--phase")
                .arg(phase.to_possible_value().expect("not skipped").get_name())
                .status()?;
            anyhow::ensure!(status.success(), "phase {phase:?} failed: {status}");
        }
    }
    if args.part != Part::InProcess {
        println!("\n== end-to-end (release puppet-server over gRPC) ==");
        runtime.block_on(e2e(&args))?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// In-process
// ---------------------------------------------------------------------------------------------

/// The server's own defaults for `--durability <d>` plus `extra` flags.
fn config(durability: &str, extra: &[&str]) -> anyhow::Result<Config> {
    let mut argv = vec!["puppet-server", "--durability", durability];
    argv.extend_from_slice(extra);
    Ok(Config::try_parse_from(argv)?)
}

fn scratch(args: &Args, name: &str) -> PathBuf {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    base.join(format!("puppet-event-store-{name}-{}", std::process::id()))
}

fn dong(i: u64) -> PuppetEvent {
    PuppetEvent::Dong(DataPayload { data: format!("flood-{i}") })
}

async fn run_phase(args: &Args, phase: Phase) -> anyhow::Result<()> {
    match phase {
        Phase::PublishBatch => publish_batch(args).await,
        Phase::AppendOnly => append_only(args).await,
        Phase::PublishMemory => publish_memory(args).await,
        Phase::Memory => memory(args).await,
        Phase::Latency => latency(args).await,
    }
}

/// Publishes `n` DONG events through the bus the way `MockWorld/Flood` does (waiting on the
/// store's backlog every 1024), then waits until the last is committed.
async fn flood(bus: &EventBus, store: Option<&Store>, n: u64) -> (Duration, Duration, u64) {
    let sink = bus.sink();
    let started = Instant::now();
    let mut last = 0;
    for i in 0..n {
        last = sink.emit(dong(i));
        if (i + 1).is_multiple_of(1024) {
            sink.backpressure().await;
        }
    }
    let published = started.elapsed();
    if let Some(store) = store {
        let mut committed = store.committed_seq();
        _ = committed.wait_for(|c| *c >= last).await;
    }
    (published, started.elapsed(), last)
}

async fn publish_batch(args: &Args) -> anyhow::Result<()> {
    let dir = scratch(args, "batch");
    let _ = std::fs::remove_dir_all(&dir);
    let n = args.events;
    let cfg = config("batch", &[])?;
    let store = Store::open(&dir, cfg.store_options())?;
    let bus = EventBus::with_store(&store, cfg.bus_limits());
    let cpu0 = thread_cpu();
    let (published, committed, last) = flood(&bus, Some(&store), n).await;
    let cpu = thread_cpu().since(&cpu0);
    let st = store.stats();
    println!("publish, batch (bus + store, default limits, {})", dir.display());
    println!(
        "  {n} events: published in {:.2} s, all committed in {:.2} s: {:.0} events/s committed (goal ≥ 300k)",
        published.as_secs_f64(),
        committed.as_secs_f64(),
        n as f64 / committed.as_secs_f64()
    );
    println!(
        "  {} commits ({:.0} events each), commit p50 {:.1} ms p99 {:.1} ms, file {:.1} MiB",
        st.commits,
        n as f64 / st.commits.max(1) as f64,
        st.commit_p50 * 1e3,
        st.commit_p99 * 1e3,
        st.file_bytes as f64 / 1048576.0
    );
    println!("  CPU by thread: {}", cpu.show(committed));

    // A subscriber resuming from the start: all but the in-memory tail comes from disk.
    let tail_first = last.saturating_sub(cfg.bus_limits().tail_events as u64) + 1;
    let mut sub = bus.subscribe(StartAt::After(0))?;
    let mut out = Vec::with_capacity(256);
    let started = Instant::now();
    let (mut got, mut expect) = (0u64, 1u64);
    let mut disk_done = None;
    while got < n {
        out.clear();
        match sub.next_batch(&mut out).await {
            Ok(true) => {}
            Ok(false) => break,
            Err(lagged) => anyhow::bail!("the resuming subscriber was cut off: {lagged}"),
        }
        for e in &out {
            anyhow::ensure!(e.seq == expect, "resume: got {} where {expect} was due", e.seq);
            expect += 1;
        }
        got += out.len() as u64;
        if disk_done.is_none() && expect >= tail_first {
            disk_done = Some((expect - 1, started.elapsed()));
        }
    }
    let all = started.elapsed();
    println!(
        "resume from after_seq 0 (bus subscription; older than the in-memory tail of {} read from disk)",
        cfg.bus_limits().tail_events
    );
    if let Some((from_disk, t)) = disk_done {
        println!(
            "  {from_disk} events from disk in {:.2} s: {:.0} events/s (goal ≥ 500k); all {got} in {:.2} s: {:.0} events/s",
            t.as_secs_f64(),
            from_disk as f64 / t.as_secs_f64(),
            all.as_secs_f64(),
            got as f64 / all.as_secs_f64()
        );
    }
    // The store's range read alone, in the bus's batches of 256 and in larger ones.
    for batch in [256usize, 4096] {
        let started = Instant::now();
        let (mut after, mut read) = (0u64, 0u64);
        loop {
            let events = store::events::read_after(&store, after, batch)?;
            let Some(e) = events.last() else { break };
            after = e.seq;
            read += events.len() as u64;
        }
        let t = started.elapsed();
        println!(
            "  store::events::read_after alone, {batch} a call: {read} events in {:.2} s: {:.0} events/s",
            t.as_secs_f64(),
            read as f64 / t.as_secs_f64()
        );
    }
    drop(sub);
    drop(bus);
    tokio::task::spawn_blocking(move || store.close()).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The store alone: events appended straight to it (no bus), under batch and memory. Under batch,
/// the producer waits for the backlog to fall below 2 MiB every 1024 events as `Flood` does, and
/// again below 24 MiB: past the writer's early-commit mark (a quarter of its 64 MiB queue), so the
/// writer never sits out its 50 ms gathering interval while the producer waits.
async fn append_only(args: &Args) -> anyhow::Result<()> {
    let n = args.events;
    for (durability, backlog) in [("batch", 2usize << 20), ("batch", 24 << 20), ("memory", 2 << 20)] {
        let dir = scratch(args, &format!("append-{durability}"));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir, config(durability, &[])?.store_options())?;
        let first = store.next_seq();
        let cpu0 = thread_cpu();
        let started = Instant::now();
        for i in 0..n {
            let seq = first + i;
            store.append_event(StoredEvent {
                seq,
                time_ms: 1_700_000_000_000 + i,
                kind: 3,
                payload: format!(r#"{{"data":"flood-{i}"}}"#),
            });
            if (i + 1).is_multiple_of(1024) {
                store.wait_backlog_below(backlog).await;
            }
        }
        let mut committed = store.committed_seq();
        _ = committed.wait_for(|c| *c >= first + n - 1).await;
        let t = started.elapsed();
        let cpu = thread_cpu().since(&cpu0);
        let st = store.stats();
        println!(
            "store alone, {durability}, producer waits at a {} MiB backlog: {n} events appended and committed in {:.2} s: {:.0} events/s ({} commits, p50 {:.1} ms)",
            backlog >> 20,
            t.as_secs_f64(),
            n as f64 / t.as_secs_f64(),
            st.commits,
            st.commit_p50 * 1e3
        );
        println!("  CPU by thread: {}", cpu.show(t));
        tokio::task::spawn_blocking(move || store.close()).await?;
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}

async fn publish_memory(args: &Args) -> anyhow::Result<()> {
    let n = args.events;
    let dir = scratch(args, "memory");
    let cfg = config("memory", &[])?;
    let store = Store::open(&dir, cfg.store_options())?;
    let bus = EventBus::with_store(&store, cfg.bus_limits());
    let rss0 = rss_kib();
    let cpu0 = thread_cpu();
    let (published, _, _) = flood(&bus, None, n).await;
    let cpu = thread_cpu().since(&cpu0);
    println!("publish, memory (bus only: with --durability memory the in-memory window is the log)");
    println!(
        "  {n} events in {:.2} s: {:.0} events/s (goal ≥ 1M); RSS {} → {} KiB ({} events retained in memory)",
        published.as_secs_f64(),
        n as f64 / published.as_secs_f64(),
        rss0,
        rss_kib(),
        bus.retention().last_seq - bus.retention().first_seq + 1
    );
    println!("  CPU by thread: {}", cpu.show(published));
    tokio::task::spawn_blocking(move || store.close()).await?;
    Ok(())
}

/// RSS with messages and events retained, at 0, 100k and the full count.
async fn memory(args: &Args) -> anyhow::Result<()> {
    let dir = scratch(args, "rss");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config("batch", &[])?;
    let store = Store::open(&dir, cfg.store_options())?;
    let bus = EventBus::with_store(&store, cfg.bus_limits());
    let sink = bus.sink();
    let messages = store.messages();
    let total = args.events.max(args.messages);
    let marks: std::collections::BTreeSet<u64> =
        [100_000, 1_000_000, total].into_iter().filter(|m| *m <= total).collect();
    println!(
        "memory, batch (bus + store at the server's defaults: {} MiB page cache, tail {} events / {} MiB)",
        cfg.store_cache_mib,
        cfg.bus_limits().tail_events,
        cfg.bus_limits().tail_bytes >> 20
    );
    let show = |n: u64, store: &Store| {
        let st = store.stats();
        println!(
            "  {n:>8} messages + {n:>8} events: RSS {:>7} KiB (peak {:>7} KiB), file {:.0} MiB",
            rss_kib(),
            hwm_kib(),
            st.file_bytes as f64 / 1048576.0
        );
    };
    show(0, &store);
    let started = Instant::now();
    let mut i = 0u64;
    for mark in marks {
        while i < mark {
            if i < args.messages {
                messages.put(MessageRecord {
                    id: format!("msg_{i:010}"),
                    conversation: format!("wxid_contact_{:04}", i % 1000),
                    time_ms: store_now_ms(),
                    body: message_body(i),
                });
            }
            if i < args.events {
                sink.emit(dong(i));
            }
            i += 1;
            if i.is_multiple_of(1024) {
                sink.backpressure().await;
            }
        }
        store.settled().await?;
        let mut committed = store.committed_seq();
        let last = bus.retention().last_seq;
        _ = committed.wait_for(|c| *c >= last).await;
        // Let the pending commit and retention finish before reading RSS.
        tokio::time::sleep(Duration::from_millis(200)).await;
        show(mark, &store);
    }
    println!(
        "  ({:.0} s; {} messages, {} events on disk; message body {} bytes)",
        started.elapsed().as_secs_f64(),
        messages.count()?,
        store::events::count(&store)?,
        message_body(0).len()
    );
    drop(messages);
    drop(sink);
    drop(bus);
    tokio::task::spawn_blocking(move || store.close()).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

fn store_now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// About what the mock backend keeps for a text message.
fn message_body(i: u64) -> Vec<u8> {
    format!(
        r#"{{"id":"msg_{i:010}","talkerId":"wxid_contact_{:04}","listenerId":"wxid_bot","type":7,"text":"hello number {i}, how are you today?","timestamp":{}}}"#,
        i % 1000,
        1_700_000_000_000u64 + i
    )
    .into_bytes()
}

/// Commit latency under `always`: one event per commit, a small group, and publish-to-delivery
/// through the bus.
async fn latency(args: &Args) -> anyhow::Result<()> {
    let dir = scratch(args, "always");
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config("always", &[])?;
    let store = Store::open(&dir, cfg.store_options())?;
    println!("commit latency, always ({})", dir.display());
    let mut seq = store.next_seq();
    for group in [1, args.group] {
        let mut samples = Vec::with_capacity(args.commits);
        let commits0 = store.stats().commits;
        for _ in 0..args.commits {
            let started = Instant::now();
            for _ in 0..group {
                store.append_event(StoredEvent {
                    seq,
                    time_ms: store_now_ms(),
                    kind: 3,
                    payload: format!(r#"{{"data":"ding-{seq}"}}"#),
                });
                seq += 1;
            }
            store.settled().await?;
            samples.push(started.elapsed());
        }
        let commits = store.stats().commits - commits0;
        let st = store.stats();
        println!(
            "  {group:>2} event(s) then settled(), ×{}: p50 {} p99 {} max {} ({} commits; the writer's own commit time over the last 1024: p50 {:.2} ms p99 {:.2} ms)",
            args.commits,
            ms(pct(&mut samples, 0.5)),
            ms(pct(&mut samples, 0.99)),
            ms(pct(&mut samples, 1.0)),
            commits,
            st.commit_p50 * 1e3,
            st.commit_p99 * 1e3
        );
    }
    // Through the bus: under always an event is delivered only once committed.
    let bus = EventBus::with_store(&store, cfg.bus_limits());
    let sink = bus.sink();
    let mut sub = bus.subscribe(StartAt::Live { replay_state: false })?;
    let mut out = Vec::new();
    for group in [1, args.group] {
        let mut samples = Vec::with_capacity(args.commits);
        for i in 0..args.commits as u64 {
            let started = Instant::now();
            let mut last = 0;
            for j in 0..group as u64 {
                last = sink.emit(dong(i * 1000 + j));
            }
            loop {
                out.clear();
                sub.next_batch(&mut out).await.map_err(|l| anyhow::anyhow!("{l}"))?;
                if out.last().is_some_and(|e| e.seq >= last) {
                    break;
                }
            }
            samples.push(started.elapsed());
        }
        println!(
            "  {group:>2} event(s) published until delivered to a bus subscriber, ×{}: p50 {} p99 {}",
            args.commits,
            ms(pct(&mut samples, 0.5)),
            ms(pct(&mut samples, 0.99))
        );
    }
    drop(sub);
    drop(sink);
    drop(bus);
    tokio::task::spawn_blocking(move || store.close()).await?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// End-to-end
// ---------------------------------------------------------------------------------------------

async fn e2e(args: &Args) -> anyhow::Result<()> {
    let n = args.events;
    let retention = n.max(1).to_string();
    for durability in ["batch", "memory", "always"] {
        let server = Server::start(&[
            "--autostart",
            "false",
            "--durability",
            durability,
            "--event-retention",
            &retention,
            "--heartbeat-secs",
            "60",
        ]);
        let rss0 = puppet_tests::rss_kib(server.pid());
        let cpu0 = proc_cpu_ticks(server.pid());
        let started = Instant::now();
        let flooded = world(&server).await.flood(ext::FloodRequest { count: n, per_second: 0 }).await?.into_inner();
        let t = started.elapsed();
        let cpu = (proc_cpu_ticks(server.pid()) - cpu0) as f64 / ticks_per_sec();
        println!(
            "Flood, {durability}: {n} events in {:.2} s: {:.0} events/s{}; server CPU {:.2} s; RSS {rss0} → {} KiB (peak {} KiB){}",
            t.as_secs_f64(),
            n as f64 / t.as_secs_f64(),
            match durability {
                "batch" => " (goal ≥ 300k)",
                "memory" => " (goal ≥ 1M)",
                _ => " (answered once committed)",
            },
            cpu,
            puppet_tests::rss_kib(server.pid()),
            peak_kib(server.pid()),
            store_file(&server.data_dir)
                .map_or(String::new(), |b| format!(", store file {:.0} MiB", b as f64 / 1048576.0)),
        );
        if durability == "batch" {
            resume(&server, flooded.last_seq).await?;
        }
    }
    rss_steps(args).await?;
    default_lag_resume(args).await?;
    ding_latency(args).await?;
    Ok(())
}

/// `EventFeed/Subscribe` after_seq 0: everything but the tail comes from disk.
async fn resume(server: &Server, last: u64) -> anyhow::Result<()> {
    let mut feed = server.feed().await;
    let log_id = feed.retention(ext::RetentionRequest {}).await?.into_inner().log_id;
    let started = Instant::now();
    let mut stream =
        feed.subscribe(ext::SubscribeRequest { after_seq: Some(0), replay_state: false, log_id }).await?.into_inner();
    let mut expect = 1;
    while expect <= last {
        match stream.message().await? {
            Some(e) if e.seq == 0 => {}
            Some(e) => {
                anyhow::ensure!(e.seq == expect, "resume: got {} where {expect} was due", e.seq);
                expect += 1;
            }
            None => anyhow::bail!("the stream ended at {expect}"),
        }
    }
    let t = started.elapsed();
    println!(
        "  EventFeed resume after_seq 0 → {last}: {:.2} s, {:.0} events/s (goal ≥ 500k; all but the in-memory tail read from disk)",
        t.as_secs_f64(),
        last as f64 / t.as_secs_f64()
    );
    Ok(())
}

/// Server RSS as the retained log grows, at the server's defaults (batch).
async fn rss_steps(args: &Args) -> anyhow::Result<()> {
    let server = Server::start(&["--autostart", "false", "--heartbeat-secs", "60"]);
    let mut w = world(&server).await;
    println!(
        "server RSS at its defaults (batch, retention 1M events), events flooded in steps (Flood stores no messages):"
    );
    let show = |n: u64| {
        println!(
            "  {n:>8} events: RSS {:>6} KiB (peak {:>6} KiB){}",
            puppet_tests::rss_kib(server.pid()),
            peak_kib(server.pid()),
            store_file(&server.data_dir)
                .map_or(String::new(), |b| format!(", store file {:.0} MiB", b as f64 / 1048576.0))
        )
    };
    show(0);
    let mut done = 0;
    for mark in [100_000u64, 1_000_000, 2 * args.events.max(1_000_000)] {
        w.flood(ext::FloodRequest { count: mark - done, per_second: 0 }).await?;
        done = mark;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        show(mark);
    }
    Ok(())
}

/// What a client resuming further back than the default lag limit (16,384) gets.
async fn default_lag_resume(args: &Args) -> anyhow::Result<()> {
    let server = Server::start(&["--autostart", "false", "--heartbeat-secs", "60"]);
    let n = 100_000.min(args.events);
    world(&server).await.flood(ext::FloodRequest { count: n, per_second: 0 }).await?;
    let mut feed = server.feed().await;
    let mut stream = feed
        .subscribe(ext::SubscribeRequest { after_seq: Some(0), replay_state: false, log_id: String::new() })
        .await?
        .into_inner();
    let mut got = 0u64;
    let outcome = loop {
        match stream.message().await {
            Ok(Some(e)) if e.seq != 0 => got += 1,
            Ok(Some(_)) => {}
            Ok(None) => break "the stream ended".to_owned(),
            Err(status) => break format!("{:?}: {}", status.code(), status.message()),
        }
        if got == n {
            break "all delivered".to_owned();
        }
    };
    println!(
        "resume after_seq 0 of {n} retained events at the default --subscriber-max-lag: {got} delivered, then {outcome}"
    );
    Ok(())
}

/// `Ding` round trips: under always the answer waits for the commit of its DONG event.
async fn ding_latency(args: &Args) -> anyhow::Result<()> {
    for durability in ["batch", "always"] {
        let server = Server::start(&["--autostart", "false", "--durability", durability, "--heartbeat-secs", "60"]);
        let client = server.puppet().await;
        for in_flight in [1, args.group] {
            let per_task = args.commits.div_ceil(in_flight);
            let mut tasks = Vec::new();
            let started = Instant::now();
            for _ in 0..in_flight {
                let mut client = client.clone();
                tasks.push(tokio::spawn(async move {
                    let mut samples = Vec::with_capacity(per_task);
                    for _ in 0..per_task {
                        let t = Instant::now();
                        client.ding(pb::DingRequest { data: "latency".into() }).await?;
                        samples.push(t.elapsed());
                    }
                    anyhow::Ok(samples)
                }));
            }
            let mut samples = Vec::new();
            for t in tasks {
                samples.extend(t.await??);
            }
            let elapsed = started.elapsed();
            println!(
                "Ding, {durability}, {in_flight:>2} in flight: p50 {} p99 {} ({:.0} calls/s)",
                ms(pct(&mut samples, 0.5)),
                ms(pct(&mut samples, 0.99)),
                samples.len() as f64 / elapsed.as_secs_f64()
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

fn pct(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples.get(((samples.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn status_kib(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn rss_kib() -> u64 {
    status_kib("self", "VmRSS:")
}

fn hwm_kib() -> u64 {
    status_kib("self", "VmHWM:")
}

fn peak_kib(pid: u32) -> u64 {
    status_kib(&pid.to_string(), "VmHWM:")
}

fn store_file(data_dir: &Path) -> Option<u64> {
    std::fs::metadata(data_dir.join("store.redb")).ok().map(|m| m.len())
}

fn ticks_per_sec() -> f64 {
    100.0 // USER_HZ on Linux
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).ok().map_or(0, |s| stat_ticks(&s))
}

fn stat_ticks(stat: &str) -> u64 {
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}

/// CPU ticks by thread name, for this process.
struct ThreadCpu(HashMap<String, u64>);

fn thread_cpu() -> ThreadCpu {
    let mut by_name = HashMap::new();
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
            let name = stat.split_once('(').and_then(|(_, r)| r.rsplit_once(')')).map_or("?", |(n, _)| n);
            // Blocking-pool and worker threads share names: sum them.
            *by_name.entry(name.to_owned()).or_default() += stat_ticks(&stat);
        }
    }
    ThreadCpu(by_name)
}

impl ThreadCpu {
    fn since(&self, before: &ThreadCpu) -> ThreadCpu {
        ThreadCpu(
            self.0.iter().map(|(k, v)| (k.clone(), v.saturating_sub(before.0.get(k).copied().unwrap_or(0)))).collect(),
        )
    }

    fn show(&self, wall: Duration) -> String {
        let mut v: Vec<(&String, &u64)> = self.0.iter().filter(|(_, t)| **t > 0).collect();
        v.sort_by(|a, b| b.1.cmp(a.1));
        let parts: Vec<String> = v
            .iter()
            .map(|(name, t)| {
                let s = **t as f64 / ticks_per_sec();
                format!("{name} {s:.2} s ({:.0}%)", 100.0 * s / wall.as_secs_f64())
            })
            .collect();
        format!("{} (wall {:.2} s)", parts.join(", "), wall.as_secs_f64())
    }
}
