//! The durable store (issue 15) end to end: the event log and its numbering across SIGKILL,
//! under `--durability always` and `batch`; a resume that names another log; the size cap; a
//! store file that cannot be opened.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex};

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{EVENT_TIMEOUT, Server, http_get, kind, world};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

type Puppet = puppet_proto::pb::wechaty::puppet_client::PuppetClient<InterceptedService<Channel, puppet_tests::Token>>;

/// A data directory the test owns (servers restart in it), removed when dropped.
struct DataDir(PathBuf);

impl DataDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("puppet-durability-{name}-{}", std::process::id()));
        _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One event as a feed subscriber was given it.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    seq: u64,
    kind: i32,
    payload: String,
}

impl Seen {
    /// `flood-<i>` for a flood DONG.
    fn flood_data(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.payload).ok()?;
        let data = v["data"].as_str()?;
        (self.kind == kind::DONG && data.starts_with("flood-")).then(|| data.to_owned())
    }
}

/// `kill -9`, then reaps the process; the data dir stays.
fn sigkill(server: Server) {
    let pid = server.pid().to_string();
    assert!(Command::new("kill").args(["-KILL", &pid]).status().unwrap().success(), "kill -KILL {pid}");
    drop(server);
}

/// SIGTERM (a clean stop: everything queued is committed), then reaps the process.
fn terminate(mut server: Server) {
    let status = server.terminate();
    assert!(status.success(), "the server exited with {status} on SIGTERM");
}

async fn retention(server: &Server) -> ext::RetentionResponse {
    server.feed().await.retention(ext::RetentionRequest {}).await.unwrap().into_inner()
}

async fn subscribe(
    server: &Server,
    after_seq: Option<u64>,
    log_id: &str,
) -> Result<Streaming<ext::SequencedEvent>, Status> {
    let request = ext::SubscribeRequest { after_seq, replay_state: false, log_id: log_id.into() };
    server.feed().await.subscribe(request).await.map(tonic::Response::into_inner)
}

/// The next event of a feed, heartbeats skipped; panics when none comes within [`EVENT_TIMEOUT`].
async fn next_event(stream: &mut Streaming<ext::SequencedEvent>) -> Seen {
    next_event_within(stream).await.expect("no event within the timeout")
}

/// The next event of a feed, heartbeats skipped; `None` when none comes within [`EVENT_TIMEOUT`].
async fn next_event_within(stream: &mut Streaming<ext::SequencedEvent>) -> Option<Seen> {
    let deadline = tokio::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let e = tokio::time::timeout_at(deadline, stream.message())
            .await
            .ok()?
            .unwrap_or_else(|status| panic!("the feed failed: {status:?}"))
            .expect("the feed ended");
        if e.seq != 0 {
            return Some(Seen { seq: e.seq, kind: e.r#type, payload: e.payload });
        }
    }
}

async fn next_events(stream: &mut Streaming<ext::SequencedEvent>, n: usize) -> Vec<Seen> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(next_event(stream).await);
    }
    out
}

/// Sequence numbers `from, from + 1, …`: no gap, no duplicate.
fn assert_consecutive(seen: &[Seen], what: &str) {
    if let Some(i) = seen.windows(2).position(|p| p[1].seq != p[0].seq + 1) {
        panic!("{what}: sequence {} follows {} (event {i} of {})", seen[i + 1].seq, seen[i].seq, seen.len());
    }
}

/// Waits (bounded) until the account is logged in: readiness (`grpc.health.v1` watch of
/// `wechaty.Puppet`) turns SERVING.
async fn wait_logged_in(server: &Server) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let mut health = HealthClient::new(server.channel().await);
    let mut watch = health.watch(HealthCheckRequest { service: "wechaty.Puppet".into() }).await.unwrap().into_inner();
    tokio::time::timeout(EVENT_TIMEOUT, async {
        while let Some(r) = watch.message().await.unwrap() {
            if r.status() == ServingStatus::Serving {
                return;
            }
        }
        panic!("the health watch ended");
    })
    .await
    .expect("not logged in within the timeout");
}

async fn send_text(p: &mut Puppet, text: &str) -> Result<String, Status> {
    let request =
        pb::MessageSendTextRequest { conversation_id: "wxid_alice".into(), text: text.into(), ..Default::default() };
    p.message_send_text(request).await.map(|r| r.into_inner().id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_a_sigkilled_server_resumes_the_feed_without_gap_or_duplicate_and_numbers_on() {
    let dir = DataDir::new("always-resume");
    // Nothing else publishes (no login): the flood's sequences are consecutive.
    let args = ["--durability", "always", "--autostart", "false"];
    let server = Server::start_in(&dir.0, &args);
    let log_id = retention(&server).await.log_id;
    assert_eq!(log_id.len(), 32, "{log_id:?}");
    let mut feed = subscribe(&server, None, "").await.unwrap();
    let flood = world(&server).await.flood(ext::FloodRequest { count: 1_500, per_second: 0 }).await.unwrap();
    let flood = flood.into_inner();
    let seen = next_events(&mut feed, 1_000).await;
    assert_consecutive(&seen, "before the crash");
    assert_eq!(seen[0].seq, flood.first_seq);
    let data: Vec<String> = seen.iter().filter_map(Seen::flood_data).collect();
    assert_eq!(data, (0..1_000).map(|i| format!("flood-{i}")).collect::<Vec<_>>());
    let last_read = seen.last().unwrap().seq;
    sigkill(server);

    let server = Server::start_in(&dir.0, &args);
    let r = retention(&server).await;
    assert_eq!(r.log_id, log_id, "the same log after a crash");
    assert_eq!(r.last_seq, flood.last_seq, "the flood was answered after its commit: all of it was kept");
    assert!(r.first_seq <= seen[0].seq, "{r:?}");

    // The rest, from where the subscriber stopped.
    let mut feed = subscribe(&server, Some(last_read), &log_id).await.unwrap();
    let rest = next_events(&mut feed, (flood.last_seq - last_read) as usize).await;
    assert_eq!(rest[0].seq, last_read + 1);
    assert_consecutive(&rest, "the rest after the crash");
    let data: Vec<String> = rest.iter().filter_map(Seen::flood_data).collect();
    assert_eq!(data, (1_000..1_500).map(|i| format!("flood-{i}")).collect::<Vec<_>>());

    // Every event the subscriber was given is still there, as it was given.
    let mut replay = subscribe(&server, Some(seen[0].seq - 1), &log_id).await.unwrap();
    assert_eq!(next_events(&mut replay, seen.len()).await, seen);

    // New events continue the numbering: past everything seen, no sequence reused, no gap.
    let more = world(&server).await.flood(ext::FloodRequest { count: 10, per_second: 0 }).await.unwrap();
    let more = more.into_inner();
    assert_eq!(more.first_seq, flood.last_seq + 1, "{more:?}");
    let after = next_events(&mut feed, 10).await;
    assert_eq!(after[0].seq, more.first_seq);
    assert_consecutive(&after, "after the restart");
}

/// Five runs under `--durability batch`, each killed right after its subscriber was given a
/// flood: the numbering never gives a sequence twice, and the subscriber resumes after the last
/// event it was given (which the crash may have lost).
async fn batch_sigkills(name: &str, limits: &[&str]) {
    let dir = DataDir::new(name);
    let mut args = vec!["--durability", "batch", "--autostart", "false"];
    args.extend_from_slice(limits);
    // Every event a subscriber was given, over every run.
    let mut seen: Vec<Seen> = Vec::new();
    let mut log_id = String::new();
    for round in 0..5 {
        let server = Server::start_in(&dir.0, &args);
        let r = retention(&server).await;
        if round == 0 {
            log_id = r.log_id.clone();
        }
        assert_eq!(r.log_id, log_id, "round {round}: the same log after a crash");
        let max_seen = seen.last().map_or(0, |e| e.seq);
        assert!(
            r.last_seq >= max_seen,
            "round {round}: this run numbers on from {}, but the last run gave sequence {max_seen} to a \
             subscriber before it was killed",
            r.last_seq + 1
        );
        // The subscriber resumes after the last event it was given, which the crash may have lost.
        let mut feed = subscribe(&server, Some(max_seen), &log_id).await.unwrap();
        let flood = world(&server).await.flood(ext::FloodRequest { count: 200, per_second: 0 }).await.unwrap();
        let flood = flood.into_inner();
        assert!(flood.first_seq > max_seen, "round {round}: {flood:?} after {max_seen}");
        let got = next_events(&mut feed, 200).await;
        assert_eq!(got[0].seq, flood.first_seq, "round {round}: the resumed feed goes on with this run's events");
        assert_consecutive(&got, "one run's flood");
        let data: Vec<String> = got.iter().filter_map(Seen::flood_data).collect();
        assert_eq!(data, (0..200).map(|i| format!("flood-{i}")).collect::<Vec<_>>());
        seen.extend(got);
        // At once: the newest events (in the first run, possibly all of them) are not committed yet.
        sigkill(server);
    }

    // The whole log, replayed: only events that were given out, each under the sequence it was
    // given with — a crash loses the tail of a batch, never renumbers it.
    let server = Server::start_in(&dir.0, &args);
    let marker = world(&server).await.flood(ext::FloodRequest { count: 1, per_second: 0 }).await.unwrap();
    let marker = marker.into_inner().first_seq;
    assert!(marker > seen.last().unwrap().seq);
    let given: std::collections::HashMap<u64, &Seen> = seen.iter().map(|e| (e.seq, e)).collect();
    let mut replay = subscribe(&server, Some(0), &log_id).await.unwrap();
    let mut previous = 0;
    loop {
        let e = next_event(&mut replay).await;
        assert!(e.seq > previous, "replay: {} after {previous}", e.seq);
        previous = e.seq;
        if e.seq == marker {
            break;
        }
        assert_eq!(given.get(&e.seq), Some(&&e), "replay: an event that was never given out under {}", e.seq);
    }
}

/// Every crash skips 2^20 sequences, more than the default count retention and lag limit: they
/// count the events kept, not the distance in sequences, so the defaults hold here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_a_sequence_is_never_given_twice_across_sigkills_and_a_resume_crosses_them() {
    batch_sigkills("batch-numbering", &[]).await;
}

/// Floods (small chunks) and sends texts to wxid_alice until a call fails (the server was killed);
/// records every message id whose answer came back. The failure that ended it.
async fn flood_and_send(
    mut w: puppet_tests::World,
    mut p: Puppet,
    round: usize,
    acked: Arc<Mutex<Vec<(String, String)>>>,
) -> Status {
    for i in 0.. {
        if let Err(e) = w.flood(ext::FloodRequest { count: 20, per_second: 0 }).await {
            return e;
        }
        let text = format!("round {round} message {i}");
        match send_text(&mut p, &text).await {
            Ok(id) => acked.lock().unwrap().push((id, text)),
            Err(e) => return e,
        }
    }
    unreachable!()
}

/// Kills the server 20 times during a flood of events and messages; after each restart, every
/// event the subscriber was given is still there, in order, as it was given, and every message
/// whose id was returned answers MessagePayload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_twenty_sigkills_during_a_flood_lose_no_acknowledged_event_or_message() {
    const ROUNDS: usize = 20;
    let dir = DataDir::new("crash");
    let args = ["--durability", "always", "--login-step-ms", "1"];
    let mut seen: Vec<Seen> = Vec::new();
    let mut acked: Vec<(String, String)> = Vec::new();
    let mut log_id = String::new();
    for round in 0..=ROUNDS {
        let server = Server::start_in(&dir.0, &args);
        let r = retention(&server).await;
        if round == 0 {
            log_id = r.log_id.clone();
        } else {
            assert_eq!(r.log_id, log_id, "round {round}: the same log after a crash");
            let mut replay = subscribe(&server, Some(seen[0].seq - 1), &log_id).await.unwrap();
            for (i, given) in seen.iter().enumerate() {
                let Some(now) = next_event_within(&mut replay).await else {
                    panic!("round {round}: lost in the crash: {} events given out, from {given:?}", seen.len() - i);
                };
                assert_eq!(&now, given, "round {round}: event {i} of the replay");
            }
            let mut p = server.puppet().await;
            for (id, text) in &acked {
                let m = p.message_payload(pb::MessagePayloadRequest { id: id.clone() }).await;
                let m = m.unwrap_or_else(|e| panic!("round {round}: message {id} ({text}) was lost: {e:?}"));
                assert_eq!(&m.into_inner().text, text, "round {round}: message {id}");
            }
        }
        if round == ROUNDS {
            break;
        }
        let mut feed = subscribe(&server, Some(seen.last().map_or(0, |e| e.seq)), &log_id).await.unwrap();
        wait_logged_in(&server).await;
        let round_acked = Arc::new(Mutex::new(Vec::new()));
        let flooder =
            tokio::spawn(flood_and_send(world(&server).await, server.puppet().await, round, round_acked.clone()));
        let mut this_round = 0;
        while this_round < 150 || round_acked.lock().unwrap().len() < 3 {
            if flooder.is_finished() {
                panic!("round {round}: the flood stopped before the kill: {:?}", flooder.await);
            }
            seen.push(next_event(&mut feed).await);
            this_round += 1;
        }
        sigkill(server);
        let ended = tokio::time::timeout(EVENT_TIMEOUT, flooder).await.expect("the flooder hung").unwrap();
        assert_ne!(ended.code(), Code::Ok);
        acked.extend(round_acked.lock().unwrap().drain(..));
        assert_consecutive(&seen, "the feed over every run so far");
    }
    assert!(seen.len() >= ROUNDS * 150 && acked.len() >= ROUNDS * 3);
}

fn assert_other_log(err: Status, old: &str, new: &str) {
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let message = err.message();
    assert!(message.contains(old) && message.contains(new), "the refusal names both logs: {message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_naming_another_log_is_refused() {
    // In memory: every start is a new log.
    let dir = DataDir::new("other-log-memory");
    let args = ["--durability", "memory", "--autostart", "false"];
    let server = Server::start_in(&dir.0, &args);
    world(&server).await.flood(ext::FloodRequest { count: 20, per_second: 0 }).await.unwrap();
    let old = retention(&server).await;
    sigkill(server);
    let server = Server::start_in(&dir.0, &args);
    // The new log numbers past the old position, so only the log id tells them apart.
    world(&server).await.flood(ext::FloodRequest { count: 50, per_second: 0 }).await.unwrap();
    let new = retention(&server).await;
    assert_ne!(new.log_id, old.log_id, "a memory store is a new log at every start");
    assert!(new.last_seq > old.last_seq, "{new:?}");
    let err = subscribe(&server, Some(old.last_seq), &old.log_id).await.unwrap_err();
    assert_other_log(err, &old.log_id, &new.log_id);
    let mut ok = subscribe(&server, Some(old.last_seq), &new.log_id).await.unwrap();
    assert_eq!(next_event(&mut ok).await.seq, old.last_seq + 1, "the same position in this log resumes");
    drop(server);

    // On disk: the same log across restarts, until the store file is wiped.
    let dir = DataDir::new("other-log-wiped");
    let args = ["--durability", "always", "--autostart", "false"];
    let server = Server::start_in(&dir.0, &args);
    world(&server).await.flood(ext::FloodRequest { count: 20, per_second: 0 }).await.unwrap();
    let old = retention(&server).await;
    terminate(server);
    let server = Server::start_in(&dir.0, &args);
    assert_eq!(retention(&server).await.log_id, old.log_id);
    let mut ok = subscribe(&server, Some(old.last_seq - 1), &old.log_id).await.unwrap();
    assert_eq!(next_event(&mut ok).await.seq, old.last_seq, "the log survives a restart");
    terminate(server);
    std::fs::remove_file(dir.0.join("store.redb")).unwrap();
    let server = Server::start_in(&dir.0, &args);
    world(&server).await.flood(ext::FloodRequest { count: 50, per_second: 0 }).await.unwrap();
    let new = retention(&server).await;
    assert_ne!(new.log_id, old.log_id, "a wiped store is a new log");
    assert!(new.last_seq > old.last_seq, "{new:?}");
    let err = subscribe(&server, Some(old.last_seq), &old.log_id).await.unwrap_err();
    assert_other_log(err, &old.log_id, &new.log_id);
}

/// The value of one sample line of `/metrics`.
fn sample(metrics: &str, name: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_size_cap_writes_are_refused_and_reads_keep_working() {
    let dir = DataDir::new("size-cap");
    let args = [
        "--store-max-mib",
        "8",
        // Retention never makes room here.
        "--event-retention",
        "100000000",
        "--event-retention-mib",
        "4096",
        "--message-retention-mib",
        "4096",
        "--login-step-ms",
        "1",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let server = Server::start_in(&dir.0, &args);
    wait_logged_in(&server).await;
    let mut p = server.puppet().await;
    let earlier = send_text(&mut p, "before the cap").await.unwrap();
    let mut w = world(&server).await;
    let mut refused = None;
    // 8 MiB of small events: a few hundred thousand.
    for _ in 0..100 {
        if let Err(e) = w.flood(ext::FloodRequest { count: 10_000, per_second: 0 }).await {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("a million events never filled 8 MiB");
    let says_which_limit = |e: &Status| {
        assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
        assert!(e.message().contains("--store-max-mib") && e.message().contains("8 MiB"), "{}", e.message());
    };
    says_which_limit(&refused);
    says_which_limit(&w.flood(ext::FloodRequest { count: 1, per_second: 0 }).await.unwrap_err());
    says_which_limit(&send_text(&mut p, &"x".repeat(16 << 10)).await.unwrap_err());

    // Reads keep working, and the server is up.
    let alice = p.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await.unwrap();
    assert_eq!(alice.into_inner().id, "wxid_alice");
    let m = p.message_payload(pb::MessagePayloadRequest { id: earlier.clone() }).await.unwrap().into_inner();
    assert_eq!(m.text, "before the cap");
    let full = retention(&server).await;
    assert!(full.last_seq > 100_000, "{full:?}");
    let mut feed = subscribe(&server, Some(full.first_seq), &full.log_id).await.unwrap();
    let replayed = next_events(&mut feed, 10).await;
    assert_eq!(replayed[0].seq, full.first_seq + 1);
    assert_consecutive(&replayed, "a replay from a full store");
    p.version(pb::VersionRequest {}).await.unwrap();
    let (status, metrics) = http_get(server.http_addr.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(sample(&metrics, "puppet_store_full"), Some(1.0), "{metrics}");
    assert!(sample(&metrics, "puppet_store_bytes").unwrap() >= (8 << 20) as f64, "{metrics}");

    // Sequences given out while the store was full are not given again after a restart.
    terminate(server);
    let server = Server::start_in(&dir.0, &args);
    let again = retention(&server).await;
    assert_eq!(again.log_id, full.log_id);
    assert!(
        again.last_seq >= full.last_seq,
        "the restarted server numbers on from {}, but sequences up to {} were given out before",
        again.last_seq + 1,
        full.last_seq
    );
}

/// Under `--durability always`, floods until the store refuses writes (its size cap), stops the
/// server with `stop` and restarts it: the sequences given to events the full store dropped are
/// not given again.
async fn cross_the_cap_and_restart(name: &str, stop: fn(Server)) {
    let dir = DataDir::new(name);
    let args =
        ["--durability", "always", "--store-max-mib", "8", "--autostart", "false", "--http-listen", "127.0.0.1:0"];
    let server = Server::start_in(&dir.0, &args);
    let mut w = world(&server).await;
    let mut refused = None;
    // Paced: the writer keeps up, the cap (about 200,000 of these events) is noticed in the middle
    // of a call, and the rest of that call's events are dropped (delivered, not kept).
    for _ in 0..5 {
        let flood = w.flood(ext::FloodRequest { count: 400_000, per_second: 200_000 });
        let answer = tokio::time::timeout(std::time::Duration::from_secs(30), flood).await;
        if let Err(e) = answer.expect("the write call that crossed the size cap was never answered") {
            refused = Some(e);
            break;
        }
    }
    let refused = refused.expect("two million events never filled 8 MiB");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("--store-max-mib"), "{}", refused.message());
    let given = retention(&server).await.last_seq;
    let (_, metrics) = http_get(server.http_addr.unwrap(), "/metrics").await;
    assert!(sample(&metrics, "puppet_store_dropped_writes").unwrap() > 0.0, "the case under test: {metrics}");
    stop(server);
    let server = Server::start_in(&dir.0, &args);
    let again = retention(&server).await;
    assert!(
        again.last_seq >= given,
        "the restarted server numbers on from {}, but sequences up to {given} were given out before",
        again.last_seq + 1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_the_write_call_crossing_the_size_cap_is_answered_and_a_clean_restart_numbers_on() {
    cross_the_cap_and_restart("size-cap-always", terminate).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn always_a_sigkill_while_the_store_is_full_gives_no_sequence_twice() {
    cross_the_cap_and_restart("size-cap-crash", sigkill).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_file_that_cannot_be_opened_is_moved_aside_and_the_server_serves() {
    let dir = DataDir::new("unusable");
    let garbage: Vec<u8> = (0..64 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(dir.0.join("store.redb"), &garbage).unwrap();
    let args = ["--http-listen", "127.0.0.1:0", "--login-step-ms", "1"];
    let server = Server::start_in_logged(&dir.0, &args);
    wait_logged_in(&server).await;
    assert_eq!(http_get(server.http_addr.unwrap(), "/readyz").await.0, 200);

    let aside: Vec<PathBuf> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("store.redb.unusable-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(std::fs::read(&aside[0]).unwrap(), garbage, "moved aside as it was");
    let log = server.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("store.redb")).collect();
    assert_eq!(lines.len(), 1, "one log line about the store file:\n{log}");
    let name = aside[0].file_name().unwrap().to_string_lossy().into_owned();
    assert!(lines[0].contains(&name), "the line says where the file went: {}", lines[0]);

    // A fresh store that works and lasts.
    world(&server).await.flood(ext::FloodRequest { count: 5, per_second: 0 }).await.unwrap();
    let r = retention(&server).await;
    assert!(r.last_seq >= 5, "{r:?}");
    terminate(server);
    let server = Server::start_in(&dir.0, &args);
    assert_eq!(retention(&server).await.log_id, r.log_id, "the fresh store is kept");
    let count = std::fs::read_dir(&dir.0)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("store.redb.unusable-"));
    assert_eq!(count.count(), 1, "nothing else was moved aside");
}
