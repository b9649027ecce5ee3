//! Many accounts in one process, and many processes: the release `puppet-server` with an accounts
//! file (`--accounts`) of mock accounts. Printed, never asserted.
//!
//! * **memory**: `--accounts` mock accounts (default 1,000) in one process, first with the lean
//!   per-account settings of `--lean` (default `store_cache_mib = 1`, `event_tail_mib = 1`), then
//!   with every setting at its default. For each: the time from the process's start to its banner
//!   (every account's store opened) and until every account is logged in (polled with
//!   `Admin/ListAccounts`), then after `--settle-secs` the RSS, threads, open files, disk use, and
//!   the idle process's CPU and disk writes (`/proc/<pid>/io`); the same for a process with one
//!   account of the same settings: RSS per idle account is `(RSS with N − RSS with 1) / (N − 1)`
//!   (goal ≤ 1 MB). Then `--busy` accounts are flooded (`MockWorld/Flood`) with `--busy-events`
//!   events each, past the in-memory tail: the RSS a busy account adds.
//! * **events**: in the process with N accounts at their defaults, one `wechaty.Puppet/Event`
//!   stream per account (spread over `--channels` connections) and one `MockWorld/Say` per account
//!   per second, spread over the second, for `--secs` seconds: Say sent → its MESSAGE event on that
//!   account's stream (p50/p99), events delivered vs Says answered, the server's CPU and disk writes.
//! * **cluster**: `--pods` processes as the pods of one StatefulSet (`--replicas`, `--pod-name
//!   puppet-rs-<k>`) over one file of `--tokens` accounts with `autostart = false` (nobody logs
//!   in: the figure is about placement). Every token is looked up on pod 0's side port
//!   (`GET /v0/hosties/<token>`), the named pod's `Admin/ListAccounts` must list it, and a
//!   `Puppet/Version` call with the token on that pod must be answered; min/max accounts per pod.
//!
//! The server binary is `target/release/puppet-server` beside this one (`PUPPET_SERVER_BIN`
//! overrides); data dirs go under `--dir` (default: the temp dir) and are removed at the end
//! unless `--keep`. `--nofile N` runs the servers under `ulimit -n N`.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/many-accounts                      # all three, 1,000 accounts, 20 s of events
//! target/release/many-accounts --part memory --accounts 200
//! target/release/many-accounts --part cluster --pods 8 --tokens 2000
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::admin_client::AdminClient;
use puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_tests::{Token, http_get, kind};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, timeout};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const ADMIN: &str = "bench_admin_token_0001";
const STS: &str = "puppet-rs";
const SVC: &str = "puppet-rs-pods";
/// Longest wait for one answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Parser)]
struct Args {
    /// Mock accounts in the one process (memory and events).
    #[arg(long, default_value_t = 1000)]
    accounts: usize,
    /// Seconds of one Say per account per second.
    #[arg(long, default_value_t = 20)]
    secs: u64,
    /// Processes in the simulated cluster.
    #[arg(long, default_value_t = 8)]
    pods: u32,
    /// Accounts (tokens) in the cluster's file.
    #[arg(long, default_value_t = 2000)]
    tokens: usize,
    /// The lean per-account settings, `key = value` separated by commas (accounts-file syntax).
    #[arg(long, default_value = "store_cache_mib = 1, event_tail_mib = 1")]
    lean: String,
    /// Seconds to wait after the last login before reading RSS.
    #[arg(long, default_value_t = 3)]
    settle_secs: u64,
    /// Connections the client spreads its event streams (and, separately, its calls) over.
    #[arg(long, default_value_t = 8)]
    channels: usize,
    /// Accounts flooded with `--busy-events` events each after the idle figures (memory of busy
    /// accounts: the in-memory tail and the page cache fill).
    #[arg(long, default_value_t = 10)]
    busy: usize,
    /// Events flooded into each busy account (the default tail holds 32,768).
    #[arg(long, default_value_t = 40_000)]
    busy_events: u64,
    /// Run the servers under this open-file limit (`ulimit -n`); default: this process's.
    #[arg(long)]
    nofile: Option<u64>,
    /// Bound on a process's start and on all its accounts logging in, in seconds.
    #[arg(long, default_value_t = 240)]
    timeout_secs: u64,
    /// Which part to run.
    #[arg(long, value_enum, default_value = "all")]
    part: Part,
    /// Where the servers' data dirs are created.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the data dirs (and the servers' logs, `server.log` in each) at the end.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Part {
    All,
    Memory,
    Events,
    Cluster,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir).join(format!("puppet-many-{}", std::process::id()));
    println!(
        "many-accounts: {} accounts, {} s of events, {} pods × {} tokens, {} CPUs, open-file limit {}; {}",
        args.accounts,
        args.secs,
        args.pods,
        args.tokens,
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        nofile_limit("self"),
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let result = run(&args, &base).await;
    if args.keep {
        println!("\ndata dirs and server logs kept in {}", base.display());
    } else {
        _ = std::fs::remove_dir_all(&base);
    }
    result
}

async fn run(args: &Args, base: &Path) -> anyhow::Result<()> {
    let mut loaded = None;
    if matches!(args.part, Part::All | Part::Memory) {
        println!("\n== {} idle mock accounts in one process ==", args.accounts);
        let lean = lean_settings(&args.lean)?;
        let lean_shown = lean.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", ");
        // Lean first, so the defaults' process is the one left running for the events part.
        memory(args, base, &format!("lean ({lean_shown})"), "lean", &lean).await?;
        loaded = Some(memory(args, base, "defaults", "defaults", &[]).await?);
    }
    if matches!(args.part, Part::All | Part::Events) {
        println!("\n== one event per account per second ==");
        let (server, idle) = match loaded.take() {
            Some((s, idle)) => (s, Some(idle)),
            None => {
                let s = start_accounts(args, &base.join("events"), args.accounts, &[])?;
                all_logged_in(&s, args.accounts, Duration::from_secs(args.timeout_secs)).await?;
                (s, None)
            }
        };
        events(args, &server, idle).await?;
    }
    drop(loaded);
    if matches!(args.part, Part::All | Part::Cluster) {
        println!("\n== {} pods, {} tokens in one file ==", args.pods, args.tokens);
        cluster(args, &base.join("cluster")).await?;
    }
    Ok(())
}

fn lean_settings(text: &str) -> anyhow::Result<Vec<(String, String)>> {
    text.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| anyhow::anyhow!("--lean: `{kv}` is not key = value"))?;
            Ok((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The server processes
// ---------------------------------------------------------------------------------------------

/// A running release server, killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    http: SocketAddr,
    /// From spawning it to its banner (every account's store opened, ports bound).
    to_banner: Duration,
    started: Instant,
    dir: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        _ = self.child.kill();
        _ = self.child.wait();
    }
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }
}

/// A spawned server whose banner is not read yet.
struct Spawned {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    started: Instant,
    dir: PathBuf,
}

fn token_of(tag: &str, i: usize) -> String {
    format!("puppet_{tag}_{i:05}_bench")
}

fn name_of(i: usize) -> String {
    format!("a{i:05}")
}

/// Writes an accounts file of `n` mock accounts (tokens tagged `tag`) with `settings` each.
fn accounts_file(dir: &Path, tag: &str, n: usize, settings: &[(String, String)]) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[account]]\nname = \"{}\"\ntoken = \"{}\"\nbackend = \"mock\"\n",
            name_of(i),
            token_of(tag, i)
        ));
        for (k, v) in settings {
            text.push_str(&format!("{k} = {v}\n"));
        }
        text.push('\n');
    }
    let path = dir.join("accounts.toml");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn spawn(dir: &Path, args: &[String], nofile: Option<u64>) -> anyhow::Result<Spawned> {
    std::fs::create_dir_all(dir)?;
    let log = std::fs::File::create(dir.join("server.log"))?;
    let started = Instant::now();
    let mut cmd = match nofile {
        // The shell sets the limit, then becomes the server (same pid).
        Some(n) => {
            let mut c = Command::new("sh");
            c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")]).arg(puppet_tests::server_binary());
            c
        }
        None => Command::new(puppet_tests::server_binary()),
    };
    let mut child = cmd
        .args(["--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0", "--admin-token", ADMIN, "--data-dir"])
        .arg(dir.join("data"))
        .args(args)
        .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
        .env_remove("WECHATY_TOKEN")
        .env_remove("PUPPET_LISTEN")
        .env("PUPPET_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // Keeps draining stdout (every mock account prints its QR code) after the banner is read.
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.as_ref().is_some_and(|t| t.send(line).is_err()) {
                tx = None;
            }
        }
    });
    Ok(Spawned { child, lines, started, dir: dir.to_owned() })
}

/// Reads the banner: the gRPC and side-port addresses.
fn banner(s: Spawned, within: Duration) -> anyhow::Result<Proc> {
    let Spawned { mut child, lines, started, dir } = s;
    let (mut addr, mut http) = (None, None);
    while addr.is_none() || http.is_none() {
        let left = (started + within).saturating_duration_since(Instant::now());
        let Ok(line) = lines.recv_timeout(left) else {
            _ = child.kill();
            let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
            anyhow::bail!("the server printed no banner within {within:?}: {}", log.trim());
        };
        if let Some(rest) = line.split("grpc://").nth(1) {
            addr = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        } else if line.trim_start().starts_with("http ")
            && let Some(rest) = line.split("http://").nth(1)
        {
            http = rest.split_whitespace().next().and_then(|a| a.parse().ok());
        }
    }
    let to_banner = started.elapsed();
    let (addr, http) = (addr.expect("read"), http.expect("read"));
    Ok(Proc { child, addr, http, to_banner, started, dir })
}

fn start_accounts(args: &Args, dir: &Path, n: usize, settings: &[(String, String)]) -> anyhow::Result<Proc> {
    let file = accounts_file(dir, "acct", n, settings)?;
    let s = spawn(dir, &["--accounts".into(), file.display().to_string()], args.nofile)?;
    banner(s, Duration::from_secs(args.timeout_secs))
}

async fn channel(addr: SocketAddr) -> anyhow::Result<Channel> {
    let endpoint = Channel::from_shared(format!("http://{addr}"))?.connect_timeout(Duration::from_secs(10));
    Ok(timeout(Duration::from_secs(15), endpoint.connect()).await??)
}

type Admin = AdminClient<InterceptedService<Channel, Token>>;

async fn admin(p: &Proc) -> anyhow::Result<Admin> {
    Ok(AdminClient::with_interceptor(channel(p.addr).await?, Token(ADMIN.into())))
}

/// Polls `Admin/ListAccounts` until `n` accounts are logged in: the time since the process started.
async fn all_logged_in(p: &Proc, n: usize, within: Duration) -> anyhow::Result<Duration> {
    let mut admin = admin(p).await?;
    loop {
        let list = timeout(CALL_TIMEOUT, admin.list_accounts(ext::ListAccountsRequest {})).await??.into_inner();
        let done = list.accounts.iter().filter(|a| a.logged_in).count();
        if done >= n {
            return Ok(p.started.elapsed());
        }
        if p.started.elapsed() > within {
            anyhow::bail!("{done} of {n} accounts logged in after {within:?}");
        }
        sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Memory
// ---------------------------------------------------------------------------------------------

/// What /proc says about a process.
struct Snapshot {
    rss: u64,
    anon: u64,
    threads: u64,
    fds: usize,
}

fn snapshot(pid: u32) -> Snapshot {
    let pid = pid.to_string();
    Snapshot {
        rss: status_field(&pid, "VmRSS:"),
        anon: status_field(&pid, "RssAnon:"),
        threads: status_field(&pid, "Threads:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count()),
    }
}

/// One profile: a process with one account, then one with N (idle, then `--busy` of them flooded);
/// the process with N is returned with its idle CPU (a fraction of a core).
async fn memory(
    args: &Args,
    base: &Path,
    label: &str,
    tag: &str,
    settings: &[(String, String)],
) -> anyhow::Result<(Proc, f64)> {
    let n = args.accounts.max(2);
    let within = Duration::from_secs(args.timeout_secs);
    let settle = Duration::from_secs(args.settle_secs);

    let one = start_accounts(args, &base.join(format!("{tag}-1")), 1, settings)?;
    all_logged_in(&one, 1, within).await?;
    sleep(settle).await;
    let s1 = snapshot(one.pid());
    drop(one);

    let many = start_accounts(args, &base.join(format!("{tag}-{n}")), n, settings)?;
    let to_banner = many.to_banner;
    let logged_in = all_logged_in(&many, n, within).await?;
    let pid = many.pid().to_string();
    let cpu_start = proc_cpu_ticks(many.pid()) as f64 / TICKS;
    let (ticks0, io0, t0) = (proc_cpu_ticks(many.pid()), io_fields(&pid), Instant::now());
    sleep(settle).await;
    let (ticks1, io1, idle) = (proc_cpu_ticks(many.pid()), io_fields(&pid), t0.elapsed().as_secs_f64());
    let idle_cpu = (ticks1 - ticks0) as f64 / TICKS / idle;
    let io_rate = |field: &str| {
        (io1.get(field).copied().unwrap_or(0) as f64 - io0.get(field).copied().unwrap_or(0) as f64) / idle
    };
    let sn = snapshot(many.pid());
    let per = (sn.rss as f64 - s1.rss as f64) / (n - 1) as f64;
    let per_anon = (sn.anon as f64 - s1.anon as f64) / (n - 1) as f64;
    let disk = du_kib(&many.dir.join("data"));
    println!("{label}:");
    println!(
        "  start: banner after {:.2} s (every store opened; nothing is served before), all {n} logged in after {:.2} s; {:.1} CPU s until then",
        to_banner.as_secs_f64(),
        logged_in.as_secs_f64(),
        cpu_start
    );
    println!(
        "  RSS with 1 account {} KiB (anon {}), with {n} {} KiB (anon {}) = {:.1} MiB",
        s1.rss,
        s1.anon,
        sn.rss,
        sn.anon,
        sn.rss as f64 / 1024.0
    );
    println!(
        "  RSS per idle account {:.0} KiB = {:.2} MB (goal ≤ 1 MB: {}); anon {per_anon:.0} KiB",
        per,
        per * 1024.0 / 1e6,
        if per * 1024.0 <= 1e6 { "met" } else { "NOT met" }
    );
    println!(
        "  threads {} → {} ({:.2} per account), open files {} → {} ({:.2} per account, limit {}), data on disk {:.1} MiB ({:.0} KiB per account)",
        s1.threads,
        sn.threads,
        (sn.threads as f64 - s1.threads as f64) / (n - 1) as f64,
        s1.fds,
        sn.fds,
        (sn.fds as f64 - s1.fds as f64) / (n - 1) as f64,
        nofile_limit(&pid),
        disk as f64 / 1024.0,
        disk as f64 / n as f64,
    );
    println!(
        "  idle, all logged in, no client: CPU {:.1}% of a core, disk writes {:.1} MB/s in {:.0} write calls/s ({:.1} KB and {:.1} calls per account per second)",
        idle_cpu * 100.0,
        io_rate("write_bytes") / 1e6,
        io_rate("syscw"),
        io_rate("write_bytes") / 1e3 / n as f64,
        io_rate("syscw") / n as f64
    );

    // Busy accounts: each flooded past the in-memory tail.
    let busy = args.busy.min(n);
    if busy > 0 && args.busy_events > 0 {
        let ch = channel(many.addr).await?;
        let started = Instant::now();
        for i in 0..busy {
            let mut w = MockWorldClient::with_interceptor(ch.clone(), Token(token_of("acct", i)));
            timeout(Duration::from_secs(120), w.flood(ext::FloodRequest { count: args.busy_events, per_second: 0 }))
                .await??;
        }
        let flooded = started.elapsed();
        sleep(settle).await;
        let sb = snapshot(many.pid());
        println!(
            "  {busy} accounts flooded with {} events each ({:.1} s): RSS {} KiB, {:.0} KiB more per busy account",
            args.busy_events,
            flooded.as_secs_f64(),
            sb.rss,
            (sb.rss as f64 - sn.rss as f64) / busy as f64
        );
    }
    let warnings = many.log().lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).count();
    if warnings > 0 {
        println!("  the server logged {warnings} warnings/errors (see its log)");
    }
    Ok((many, idle_cpu))
}

/// `/proc/<pid>/io`: write_bytes, syscw, …
fn io_fields(pid: &str) -> HashMap<String, u64> {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect()
}

fn du_kib(dir: &Path) -> u64 {
    fn walk(p: &Path) -> u64 {
        let Ok(meta) = std::fs::symlink_metadata(p) else { return 0 };
        if meta.is_dir() {
            std::fs::read_dir(p).map_or(0, |d| d.flatten().map(|e| walk(&e.path())).sum())
        } else {
            use std::os::unix::fs::MetadataExt;
            meta.blocks() * 512 / 1024
        }
    }
    walk(dir)
}

// ---------------------------------------------------------------------------------------------
// Events
// ---------------------------------------------------------------------------------------------

type Key = (usize, String);

async fn events(args: &Args, server: &Proc, idle: Option<f64>) -> anyhow::Result<()> {
    let n = args.accounts.max(2);
    let k = args.channels.max(1);
    let mut stream_channels = Vec::with_capacity(k);
    let mut call_channels = Vec::with_capacity(k);
    for _ in 0..k {
        stream_channels.push(channel(server.addr).await?);
        call_channels.push(channel(server.addr).await?);
    }
    // Every MESSAGE event received, by (account, message id).
    let received: Arc<Mutex<HashMap<Key, Instant>>> = Arc::default();
    let opened = Instant::now();
    let mut readers = JoinSet::new();
    let stream_errors = Arc::new(AtomicU64::new(0));
    for i in 0..n {
        let mut client = PuppetClient::with_interceptor(stream_channels[i % k].clone(), Token(token_of("acct", i)));
        let mut stream = timeout(CALL_TIMEOUT, client.event(pb::EventRequest::default())).await??.into_inner();
        let (received, errors) = (received.clone(), stream_errors.clone());
        readers.spawn(async move {
            loop {
                match stream.message().await {
                    Ok(Some(e)) if e.r#type == kind::MESSAGE => {
                        let at = Instant::now();
                        let id = serde_json::from_str::<serde_json::Value>(&e.payload)
                            .ok()
                            .and_then(|v| v["messageId"].as_str().map(str::to_owned))
                            .unwrap_or_default();
                        received.lock().unwrap_or_else(|p| p.into_inner()).insert((i, id), at);
                    }
                    Ok(Some(_)) => {}
                    Ok(None) => return,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
            }
        });
    }
    println!(
        "  {n} wechaty.Puppet/Event streams opened in {:.2} s over {k} connections",
        opened.elapsed().as_secs_f64()
    );

    let sent: Arc<Mutex<HashMap<Key, Instant>>> = Arc::default();
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let late = Arc::new(AtomicU64::new(0));
    let t0 = tokio::time::Instant::now() + Duration::from_millis(500);
    let mut drivers = JoinSet::new();
    for i in 0..n {
        let mut world = MockWorldClient::with_interceptor(call_channels[i % k].clone(), Token(token_of("acct", i)));
        let offset = Duration::from_secs(1).mul_f64(i as f64 / n as f64);
        let (sent, errors, late, secs) = (sent.clone(), errors.clone(), late.clone(), args.secs);
        drivers.spawn(async move {
            for s in 0..secs {
                let due = t0 + Duration::from_secs(s) + offset;
                if tokio::time::Instant::now() > due + Duration::from_millis(100) {
                    late.fetch_add(1, Ordering::Relaxed);
                }
                sleep_until(due).await;
                let at = Instant::now();
                let say = ext::SayRequest {
                    from_id: "wxid_alice".into(),
                    text: format!("bench {i} {s}"),
                    ..Default::default()
                };
                let outcome = match timeout(CALL_TIMEOUT, world.say(say)).await {
                    Ok(Ok(r)) => {
                        sent.lock().unwrap_or_else(|p| p.into_inner()).insert((i, r.into_inner().message_id), at);
                        continue;
                    }
                    Ok(Err(status)) => format!("{:?}", status.code()),
                    Err(_) => "no answer".to_owned(),
                };
                *errors.lock().unwrap_or_else(|p| p.into_inner()).entry(outcome).or_default() += 1;
            }
        });
    }
    sleep_until(t0).await;
    let pid = server.pid().to_string();
    let (cpu0, own0, io0, wall0) =
        (proc_cpu_ticks(server.pid()), proc_cpu_ticks(std::process::id()), io_fields(&pid), Instant::now());
    while drivers.join_next().await.is_some() {}
    let (cpu1, own1, io1, wall) =
        (proc_cpu_ticks(server.pid()), proc_cpu_ticks(std::process::id()), io_fields(&pid), wall0.elapsed());
    let io_rate = |field: &str| {
        (io1.get(field).copied().unwrap_or(0) as f64 - io0.get(field).copied().unwrap_or(0) as f64) / wall.as_secs_f64()
    };
    // Stragglers: up to 5 s for the last events.
    let answered = sent.lock().unwrap_or_else(|p| p.into_inner()).len();
    let deadline = Instant::now() + Duration::from_secs(5);
    let delivered =
        |r: &HashMap<Key, Instant>, s: &HashMap<Key, Instant>| s.keys().filter(|k| r.contains_key(*k)).count();
    while Instant::now() < deadline {
        let got = delivered(
            &received.lock().unwrap_or_else(|p| p.into_inner()),
            &sent.lock().unwrap_or_else(|p| p.into_inner()),
        );
        if got >= answered {
            break;
        }
        sleep(Duration::from_millis(50)).await;
    }
    let (sent, received) = (
        std::mem::take(&mut *sent.lock().unwrap_or_else(|p| p.into_inner())),
        std::mem::take(&mut *received.lock().unwrap_or_else(|p| p.into_inner())),
    );
    let mut latencies: Vec<Duration> =
        sent.iter().filter_map(|(k, at)| received.get(k).map(|got| got.saturating_duration_since(*at))).collect();
    let unmatched = received.len().saturating_sub(latencies.len());
    let attempted = n as u64 * args.secs;
    let server_cpu = (cpu1 - cpu0) as f64 / TICKS;
    let own_cpu = (own1 - own0) as f64 / TICKS;
    println!(
        "  {attempted} Says due over {:.1} s ({:.0}/s): {} answered, {} events delivered on their account's stream, {} missing; {} other MESSAGE events; stream errors {}; Says started >100 ms late {}",
        wall.as_secs_f64(),
        attempted as f64 / wall.as_secs_f64(),
        sent.len(),
        latencies.len(),
        sent.len() - latencies.len(),
        unmatched,
        stream_errors.load(Ordering::Relaxed),
        late.load(Ordering::Relaxed)
    );
    let errors = errors.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !errors.is_empty() {
        println!("  Say errors: {errors:?}");
    }
    println!(
        "  Say sent → MESSAGE received: p50 {} p90 {} p99 {} max {}",
        ms(pct(&mut latencies, 0.5)),
        ms(pct(&mut latencies, 0.9)),
        ms(pct(&mut latencies, 0.99)),
        ms(pct(&mut latencies, 1.0))
    );
    println!(
        "  server CPU {server_cpu:.2} s over {:.1} s = {:.0}% of a core{}, {:.0} µs per Say + event; client CPU {own_cpu:.2} s ({:.0}%); server RSS {} KiB, threads {}",
        wall.as_secs_f64(),
        100.0 * server_cpu / wall.as_secs_f64(),
        idle.map_or(String::new(), |i| format!(" (idle: {:.0}%)", i * 100.0)),
        1e6 * server_cpu / sent.len().max(1) as f64,
        100.0 * own_cpu / wall.as_secs_f64(),
        status_field(&server.pid().to_string(), "VmRSS:"),
        status_field(&server.pid().to_string(), "Threads:")
    );
    println!("  server disk writes {:.1} MB/s in {:.0} write calls/s", io_rate("write_bytes") / 1e6, io_rate("syscw"));
    readers.abort_all();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Cluster
// ---------------------------------------------------------------------------------------------

async fn cluster(args: &Args, dir: &Path) -> anyhow::Result<()> {
    let pods = args.pods.max(1);
    let t = args.tokens;
    let file = accounts_file(dir, "pod", t, &[("autostart".into(), "false".into())])?;
    let started = Instant::now();
    let mut spawned = Vec::new();
    for k in 0..pods {
        spawned.push(spawn(
            &dir.join(format!("pod{k}")),
            &[
                "--accounts".into(),
                file.display().to_string(),
                "--replicas".into(),
                pods.to_string(),
                "--pod-name".into(),
                format!("{STS}-{k}"),
                "--pod-service".into(),
                SVC.into(),
            ],
            args.nofile,
        )?);
    }
    let within = Duration::from_secs(args.timeout_secs);
    let procs: Vec<Proc> = spawned.into_iter().map(|s| banner(s, within)).collect::<anyhow::Result<_>>()?;
    println!(
        "  {pods} processes started together (autostart = false: no account logs in), all banners after {:.2} s (slowest {:.2} s)",
        started.elapsed().as_secs_f64(),
        procs.iter().map(|p| p.to_banner).max().unwrap_or_default().as_secs_f64()
    );

    // Who serves what, by each pod's own account.
    let mut serving: HashMap<String, Vec<u32>> = HashMap::new();
    let mut counts = Vec::new();
    for (k, p) in procs.iter().enumerate() {
        let list = admin(p).await?.list_accounts(ext::ListAccountsRequest {}).await?.into_inner();
        anyhow::ensure!(
            (list.ordinal, list.replicas) == (k as u32, pods),
            "pod {k} says it is {} of {}",
            list.ordinal,
            list.replicas
        );
        counts.push(list.accounts.len());
        for a in list.accounts {
            serving.entry(a.name).or_default().push(k as u32);
        }
    }

    // Discovery from pod 0, then a call on the pod it names.
    let pod0 = procs[0].http;
    let grpc: Arc<Vec<Channel>> = Arc::new({
        let mut v = Vec::new();
        for p in &procs {
            v.push(channel(p.addr).await?);
        }
        v
    });
    let serving = Arc::new(serving);
    let looked_up = Instant::now();
    let mut tasks = JoinSet::new();
    let outcomes: Arc<Mutex<BTreeMap<&'static str, u64>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..16 {
        let (next, outcomes, serving, grpc) = (next.clone(), outcomes.clone(), serving.clone(), grpc.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= t {
                    return;
                }
                let outcome = resolve(pod0, i, &serving, &grpc, pods).await;
                *outcomes.lock().unwrap_or_else(|p| p.into_inner()).entry(outcome).or_default() += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let outcomes = outcomes.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let ok = outcomes.get(OK).copied().unwrap_or(0);
    let served_once = serving.values().filter(|v| v.len() == 1).count();
    println!(
        "  accounts per pod: {counts:?}, min {} max {} (even split {:.0}); {served_once} of {t} served by exactly one pod",
        counts.iter().min().unwrap_or(&0),
        counts.iter().max().unwrap_or(&0),
        t as f64 / pods as f64
    );
    println!(
        "  GET /v0/hosties/<token> on pod 0 for all {t} tokens, then Puppet/Version on the pod named: {:.2} s",
        looked_up.elapsed().as_secs_f64()
    );
    for (outcome, count) in &outcomes {
        println!("    {count:>5} {outcome}");
    }
    println!("  all {t} resolve to the serving pod: {}", if ok == t as u64 { "yes" } else { "NO" });
    let rss: Vec<u64> = procs.iter().map(|p| status_field(&p.pid().to_string(), "VmRSS:")).collect();
    println!(
        "  RSS per pod (nobody logged in): {} – {} KiB",
        rss.iter().min().unwrap_or(&0),
        rss.iter().max().unwrap_or(&0)
    );
    Ok(())
}

const OK: &str = "discovered, listed by the pod named and answered there";

async fn resolve(
    pod0: SocketAddr,
    i: usize,
    serving: &HashMap<String, Vec<u32>>,
    grpc: &[Channel],
    pods: u32,
) -> &'static str {
    let token = token_of("pod", i);
    let (status, body) = match timeout(CALL_TIMEOUT, http_get(pod0, &format!("/v0/hosties/{token}"))).await {
        Ok(r) => r,
        Err(_) => return "no discovery answer",
    };
    if status != 200 {
        return "discovery did not answer 200";
    }
    let host = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["host"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let owner = host
        .strip_suffix(&format!(".{SVC}"))
        .and_then(|h| h.strip_prefix(&format!("{STS}-")))
        .and_then(|k| k.parse::<u32>().ok())
        .filter(|k| *k < pods);
    let Some(owner) = owner else { return "discovery named no pod of the set" };
    if serving.get(&name_of(i)).map(Vec::as_slice) != Some(&[owner]) {
        return "the pod named does not list it (or another does)";
    }
    let mut puppet = PuppetClient::with_interceptor(grpc[owner as usize].clone(), Token(token));
    match timeout(CALL_TIMEOUT, puppet.version(pb::VersionRequest {})).await {
        Ok(Ok(_)) => OK,
        _ => "the pod named refused the token",
    }
}

// ---------------------------------------------------------------------------------------------
// Measuring
// ---------------------------------------------------------------------------------------------

const TICKS: f64 = 100.0; // USER_HZ on Linux

fn pct(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort_unstable();
    samples.get(((samples.len().max(1) - 1) as f64 * q).round() as usize).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn status_field(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

fn nofile_limit(pid: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/limits"))
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Max open files")).map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(3).copied().unwrap_or("?").to_owned()
            })
        })
        .unwrap_or_else(|| "?".into())
}

/// utime + stime of a process, in clock ticks.
fn proc_cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
}
