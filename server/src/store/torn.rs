//! Crash recovery, simulated. redb keeps two checksummed commit slots and verifies the primary's
//! trees when it opens a file that was not closed cleanly, so a commit torn by a crash must roll
//! back to the previous one; a file it cannot open at all is moved aside by [`Store::open`].
//!
//! The images: records A are committed (the file as a crash right then leaves it: `S1`, the store
//! still open), then records B in one more commit (`S2`). A torn image applies to `S1` only part
//! of the bytes that differ between the two:
//!
//! * in ascending file order (the header first, then the pages) and in descending order (the
//!   pages first, the header last), cut at every changed byte of the header page and at every
//!   512-byte boundary of the changed regions, plus random cuts;
//! * a random subset of the changed 512-byte sectors (a disk that wrote back some of the
//!   unsynced sectors, in any order);
//! * when B grew the file, `S2` cut at `S1`'s length, at every page boundary (±1) beyond it, every
//!   512 bytes of the first 16 KiB of the growth and at random lengths; and `S2` cut at a page then
//!   zero-filled back to its length.
//!
//! Every image is opened with [`Store::open`]: it must not panic nor fail nor be moved aside; every
//! record of A is there, byte for byte, and B is there entirely or not at all — in the event log, the messages with their conversation index and counters, and the
//! key-value table (one key that B overwrites holds A's value exactly when B is absent).
//! `cargo test -p puppet-server --lib store::torn -- --nocapture` prints how the images fared.
//!
//! What it shows with redb 4.6: every torn image opens with A intact (B whole or absent). redb alone
//! refuses a file whose growth was lost — `S2` cut at any length past `S1`'s (a length no region
//! layout has is "corrupted"; a layout length ends in an I/O error, end of file, while redb
//! verifies B's pages, instead of falling back to A) — but the same file zero-filled back to `S2`'s
//! length rolls back to A, and so [`Store::open`] repairs it that way (`repair_lost_growth`).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::tests::options;
use super::{Durability, MessageRecord, Op, Store, StoredEvent, events};

const EVENTS_A: u64 = 300;
const EVENTS_B: u64 = 300;
const MESSAGES_A: u64 = 120;
const MESSAGES_B: u64 = 120;
const KV_A: u64 = 20;
const SECTOR: usize = 512;
const PAGE: usize = 4096;

fn event(seq: u64) -> StoredEvent {
    StoredEvent {
        seq,
        time_ms: 1_700_000_000_000 + seq,
        kind: 2,
        payload: format!(r#"{{"messageId":"msg_{seq:06}","padding":"{}"}}"#, "e".repeat((seq % 97) as usize)),
    }
}

fn message(i: u64) -> MessageRecord {
    MessageRecord {
        id: format!("msg_{i:06}"),
        conversation: format!("conv_{}", i % 7),
        time_ms: 1_700_000_000_000 + i,
        body: format!(r#"{{"text":"message {i}","more":"{}"}}"#, "m".repeat((i % 131) as usize)).into_bytes(),
    }
}

fn kv_value(name: &str) -> Vec<u8> {
    serde_json::to_vec(name).expect("a string serialises")
}

/// Records A: events 1..=EVENTS_A, messages 0..MESSAGES_A, keys `a_0..`, and `cursor` = "A".
fn records_a() -> Vec<Op> {
    let mut ops: Vec<Op> = (1..=EVENTS_A).map(|s| Op::Event(event(s))).collect();
    ops.extend((0..MESSAGES_A).map(|i| Op::Message(message(i))));
    ops.extend((0..KV_A).map(|i| Op::KvPut { ns: "torn".into(), key: format!("a_{i}"), value: kv_value("a") }));
    ops.push(Op::KvPut { ns: "torn".into(), key: "cursor".into(), value: kv_value("A") });
    ops
}

/// Records B, one commit: the next events, new messages, key `b` and `cursor` = "B".
fn records_b() -> Vec<Op> {
    let mut ops: Vec<Op> = (EVENTS_A + 1..=EVENTS_A + EVENTS_B).map(|s| Op::Event(event(s))).collect();
    ops.extend((MESSAGES_A..MESSAGES_A + MESSAGES_B).map(|i| Op::Message(message(i))));
    ops.push(Op::KvPut { ns: "torn".into(), key: "b".into(), value: kv_value("b") });
    ops.push(Op::KvPut { ns: "torn".into(), key: "cursor".into(), value: kv_value("B") });
    ops
}

/// tmpfs when there is one: thousands of opens, each with a commit and its fsync.
fn scratch_root() -> PathBuf {
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    base.join(format!("puppet-torn-{}", uuid::Uuid::new_v4()))
}

/// `S1`, `S2` and where they differ.
struct Images {
    s1: Vec<u8>,
    s2: Vec<u8>,
    /// Every offset where `S1` and `S2` differ, each zero-padded to the longer length, ascending.
    diffs: Vec<usize>,
}

impl Images {
    fn len(&self) -> usize {
        self.s1.len().max(self.s2.len())
    }

    /// `S1` (zero-padded: an extended file reads zeros where nothing was written) with `S2`'s
    /// bytes at `offsets`.
    fn with(&self, offsets: impl IntoIterator<Item = usize>) -> Vec<u8> {
        let mut image = self.s1.clone();
        image.resize(self.len(), 0);
        for o in offsets {
            image[o] = self.s2.get(o).copied().unwrap_or(0);
        }
        image
    }

    /// A write torn at the `k`-th changed byte: in ascending file order the bytes before it
    /// landed, in descending order the bytes from it on.
    fn torn_at(&self, k: usize, ascending: bool) -> Vec<u8> {
        if ascending { self.with(self.diffs[..k].iter().copied()) } else { self.with(self.diffs[k..].iter().copied()) }
    }

    /// The changed 512-byte sectors.
    fn sectors(&self) -> Vec<usize> {
        let set: BTreeSet<usize> = self.diffs.iter().map(|o| o / SECTOR).collect();
        set.into_iter().collect()
    }

    fn with_sectors(&self, sectors: &[usize]) -> Vec<u8> {
        let wanted: BTreeSet<usize> = sectors.iter().copied().collect();
        self.with(self.diffs.iter().copied().filter(|o| wanted.contains(&(o / SECTOR))))
    }
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime").block_on(f)
}

/// Commits A, copies the file, commits B in one transaction, copies it again. Retried when it
/// took long enough for the writer's once-a-second retention commit to slip in between (that
/// commit may reuse pages B freed, which no crash between two fsyncs can tear).
fn images() -> &'static Images {
    static IMAGES: OnceLock<Images> = OnceLock::new();
    IMAGES.get_or_init(|| {
        for _ in 0..10 {
            let dir = scratch_root();
            let started = Instant::now();
            let store = Store::open(&dir, options(Durability::Always)).expect("a fresh store opens");
            assert_eq!(store.next_seq(), 1);
            let file = dir.join("store.redb");
            store.submit(records_a());
            run(store.settled()).expect("A commits");
            let s1 = std::fs::read(&file).expect("S1");
            let commits = store.stats().commits;
            store.submit(records_b());
            run(store.settled()).expect("B commits");
            let s2 = std::fs::read(&file).expect("S2");
            let one_commit = store.stats().commits == commits + 1;
            let quick = started.elapsed() < Duration::from_millis(900);
            store.close();
            std::fs::remove_dir_all(&dir).ok();
            if !(quick && one_commit) {
                continue;
            }
            let len = s1.len().max(s2.len());
            let at = |v: &[u8], o: usize| v.get(o).copied().unwrap_or(0);
            let diffs = (0..len).filter(|&o| at(&s1, o) != at(&s2, o)).collect();
            return Images { s1, s2, diffs };
        }
        panic!("could not commit A and B with no other commit between them in ten tries");
    })
}

/// What opening one image gave.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Outcome {
    /// Opened with A and without B.
    RolledBack,
    /// Opened with A and B.
    WithB,
    /// Moved aside (redb's reason); a fresh store was started.
    MovedAside(String),
}

/// Opens `image` as a data dir's store file and checks it; `Err` says what was wrong.
fn open_image(image: &[u8]) -> Result<Outcome, String> {
    let dir = scratch_root();
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("store.redb"), image).map_err(|e| e.to_string())?;
    let opened = std::panic::catch_unwind(|| Store::open(&dir, options(Durability::Always)));
    let result = match opened {
        Err(panic) => Err(format!(
            "Store::open panicked: {}",
            panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("?")
        )),
        Ok(Err(e)) => Err(format!("Store::open failed: {e}")),
        Ok(Ok(store)) => {
            let aside = std::fs::read_dir(&dir)
                .map_err(|e| e.to_string())?
                .filter_map(Result::ok)
                .find(|e| e.file_name().to_string_lossy().starts_with("store.redb.unusable-"));
            let checked = match aside {
                // Why redb refused it, for the tally.
                Some(aside) => Ok(Outcome::MovedAside(
                    redb::Database::create(aside.path()).err().map_or("opens now?".into(), |e| e.to_string()),
                )),
                None => check(&store),
            };
            store.close();
            checked
        }
    };
    std::fs::remove_dir_all(&dir).ok();
    result
}

/// Every record of A is there; B entirely or not at all.
fn check(store: &Store) -> Result<Outcome, String> {
    let e = |e: super::StoreError| e.to_string();
    let got = events::read_after(store, 0, 100_000).map_err(e)?;
    for seq in 1..=EVENTS_A {
        if got.get(seq as usize - 1) != Some(&event(seq)) {
            return Err(format!("event {seq} of A is missing or different ({} events read)", got.len()));
        }
    }
    let b_events = got.len() as u64 - EVENTS_A;
    let all_b = got[EVENTS_A as usize..].iter().cloned().eq((EVENTS_A + 1..=EVENTS_A + EVENTS_B).map(event));
    if b_events != 0 && !all_b {
        return Err(format!("{b_events} events of B's {EVENTS_B} are there"));
    }
    let has_b = b_events != 0;

    let messages = store.messages();
    let b_range = MESSAGES_A..MESSAGES_A + MESSAGES_B;
    for i in 0..MESSAGES_A + MESSAGES_B {
        let m = messages.get_committed(&message(i).id).map_err(e)?;
        let want = i < MESSAGES_A || has_b;
        if want && m.as_ref() != Some(&message(i)) {
            return Err(format!("message {i} is missing or different (B there: {has_b})"));
        }
        if !want && m.is_some() {
            return Err(format!("message {i} of B is there without B's events"));
        }
    }
    let count = messages.count().map_err(e)?;
    let want = MESSAGES_A + if has_b { MESSAGES_B } else { 0 };
    if count != want {
        return Err(format!("the message counter says {count}, {want} are stored"));
    }
    for c in 0..7 {
        let conversation = format!("conv_{c}");
        let listed: Vec<String> = messages.list(&conversation, 10_000).map_err(e)?.into_iter().map(|m| m.id).collect();
        let want: Vec<String> = (0..MESSAGES_A)
            .chain(b_range.clone().filter(|_| has_b))
            .filter(|i| i % 7 == c)
            .map(|i| message(i).id)
            .collect();
        if listed != want {
            return Err(format!("{conversation}'s index lists {} messages, {} expected", listed.len(), want.len()));
        }
    }

    let kv = store.kv();
    for i in 0..KV_A {
        if kv.get::<String>("torn", &format!("a_{i}")).map_err(e)?.as_deref() != Some("a") {
            return Err(format!("key a_{i} of A is missing"));
        }
    }
    let cursor = kv.get::<String>("torn", "cursor").map_err(e)?;
    let b = kv.get::<String>("torn", "b").map_err(e)?;
    let want = if has_b { ("B", Some("b")) } else { ("A", None) };
    if (cursor.as_deref(), b.as_deref()) != (Some(want.0), want.1) {
        return Err(format!(
            "cursor {cursor:?} and b {b:?} with B's events {}",
            if has_b { "there" } else { "absent" }
        ));
    }
    Ok(if has_b { Outcome::WithB } else { Outcome::RolledBack })
}

/// Tallies outcomes by family of images, failing with every bad image named.
#[derive(Default)]
struct Tally {
    counts: std::collections::BTreeMap<&'static str, [usize; 3]>,
    /// (family, redb's reason) → images moved aside.
    reasons: std::collections::BTreeMap<(&'static str, String), usize>,
    bad: Vec<String>,
}

/// One image to open: its family, what it is, how to build it.
type Job<'a> = (&'static str, String, Box<dyn Fn() -> Vec<u8> + Send + Sync + 'a>);

impl Tally {
    fn open(&mut self, family: &'static str, what: String, image: &[u8]) -> Option<Outcome> {
        self.record(family, what, open_image(image))
    }

    /// Opens every job's image on two threads; their outcomes in order.
    fn open_all(&mut self, jobs: Vec<Job<'_>>) -> Vec<Option<Outcome>> {
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut outcomes: Vec<(usize, Result<Outcome, String>)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..2)
                .map(|_| {
                    scope.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some((_, _, build)) = jobs.get(i) else { return done };
                            done.push((i, open_image(&build())));
                        }
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().expect("a worker panicked")).collect()
        });
        outcomes.sort_by_key(|(i, _)| *i);
        jobs.into_iter()
            .zip(outcomes)
            .map(|((family, what, _), (_, outcome))| self.record(family, what, outcome))
            .collect()
    }

    fn record(&mut self, family: &'static str, what: String, outcome: Result<Outcome, String>) -> Option<Outcome> {
        let counts = self.counts.entry(family).or_default();
        match &outcome {
            Ok(Outcome::RolledBack) => counts[0] += 1,
            Ok(Outcome::WithB) => counts[1] += 1,
            Ok(Outcome::MovedAside(why)) => {
                counts[2] += 1;
                // Grouped without the numbers (lengths, offsets) they quote.
                let mut shape = why.clone();
                shape.retain(|c| !c.is_ascii_digit());
                *self.reasons.entry((family, shape)).or_default() += 1;
            }
            Err(why) => self.bad.push(format!("{family} {what}: {why}")),
        }
        outcome.ok()
    }

    /// Fails with every bad image named, and when any was moved aside: A was lost with it.
    fn assert_good(&self) {
        let aside: usize = self.counts.values().map(|c| c[2]).sum();
        assert_eq!(aside, 0, "images moved aside, losing A: {:?}", self.reasons);
        assert!(self.bad.is_empty(), "{} bad images:\n{}", self.bad.len(), self.bad.join("\n"));
    }

    fn report(&self) {
        for (family, [a, b, aside]) in &self.counts {
            println!(
                "torn images, {family}: {} opened: {a} rolled back to A, {b} with A and B, {aside} moved aside",
                a + b + aside
            );
        }
        for ((family, why), n) in &self.reasons {
            println!("  {family}: {n} moved aside because: {why}");
        }
        self.assert_good();
    }
}

/// The cut points of a sweep: every changed byte of the header page, and the changed bytes
/// before every 512-byte boundary of the rest.
fn sweep_cuts(diffs: &[usize]) -> BTreeSet<usize> {
    let mut cuts: BTreeSet<usize> = [0, diffs.len()].into();
    for (k, o) in diffs.iter().enumerate() {
        if *o < PAGE {
            cuts.insert(k);
            cuts.insert(k + 1);
        }
        // k is the count of changed bytes below `o`: a cut at the boundary `o` lies on.
        let boundary = o / SECTOR * SECTOR;
        cuts.insert(diffs.partition_point(|d| *d < boundary));
    }
    cuts
}

#[test]
fn the_untorn_images_hold_a_then_a_and_b() {
    let images = images();
    assert_eq!(open_image(&images.s1), Ok(Outcome::RolledBack), "S1");
    assert_eq!(open_image(&images.s2), Ok(Outcome::WithB), "S2");
}

#[test]
fn torn_commits_roll_back_to_the_previous_one() {
    let images = images();
    let started = Instant::now();
    let n = images.diffs.len();
    println!(
        "S1 {} bytes, S2 {} bytes, {n} bytes differ in {} sectors",
        images.s1.len(),
        images.s2.len(),
        images.sectors().len()
    );
    let mut tally = Tally::default();
    let cuts: Vec<usize> = sweep_cuts(&images.diffs).into_iter().collect();
    let mut jobs: Vec<Job<'_>> = Vec::new();
    for &k in &cuts {
        jobs.push(("ascending", format!("after {k} of {n} changed bytes"), Box::new(move || images.torn_at(k, true))));
        jobs.push(("descending", format!("from {k} of {n} changed bytes"), Box::new(move || images.torn_at(k, false))));
    }
    let outcomes = tally.open_all(jobs);
    // The last descending cut that still gives B: the header's bytes the commit needs last.
    let b_from = cuts
        .iter()
        .zip(outcomes.chunks(2))
        .filter(|(_, o)| o[1] == Some(Outcome::WithB))
        .map(|(k, _)| (*k, images.diffs.get(*k).copied()))
        .next_back();
    // In descending order B's pages land first: once its commit slot is whole too, the newer,
    // valid secondary slot is chosen even before the god byte flips.
    println!("descending: the images hold B from cut (changed byte, file offset) {b_from:?} on");
    if images.s2.len() > images.s1.len() {
        // The growth lost: S2's header and pages, cut at S1's length (what a file system that
        // persisted the header's block but not the new size leaves), at every page boundary
        // (±1) beyond it and every 512 bytes of the first 16 KiB.
        let (len1, len2) = (images.s1.len(), images.s2.len());
        let cut = tally.open("truncated at S1's length", format!("S2 cut at {len1}"), &images.s2[..len1]);
        println!("S2 cut at S1's length ({len1}): {cut:?}");
        let mut lengths: BTreeSet<usize> = (len1 + 1..len2.min(len1 + (16 << 10))).step_by(SECTOR).collect();
        for page in (len1.div_ceil(PAGE) * PAGE..len2).step_by(PAGE) {
            lengths.extend([page - 1, page, page + 1]);
        }
        lengths.remove(&len1);
        let mut jobs: Vec<Job<'_>> = Vec::new();
        for len in lengths {
            jobs.push((
                "truncated beyond S1's length",
                format!("S2 cut at {len} bytes"),
                Box::new(move || images.s2[..len].to_vec()),
            ));
        }
        // What extending such a file back to S2's length with zeros (as a repair could) gives.
        for len in (len1..len2).step_by(PAGE) {
            jobs.push((
                "truncated at a page, then zero-filled to S2's length",
                format!("S2 cut at {len}"),
                Box::new(move || {
                    let mut image = images.s2[..len].to_vec();
                    image.resize(len2, 0);
                    image
                }),
            ));
        }
        tally.open_all(jobs);
    }
    tally.report();
    println!("{} cut points in {:.1} s", cuts.len(), started.elapsed().as_secs_f64());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn any_torn_write_keeps_a(
        cut in 0.0..=1.0f64,
        ascending in any::<bool>(),
        sectors in proptest::sample::subsequence(images().sectors(), 0..=images().sectors().len()),
    ) {
        let images = images();
        let n = images.diffs.len();
        let mut tally = Tally::default();
        let k = ((n as f64 * cut) as usize).min(n);
        tally.open("random cut", format!("ascending={ascending} after {k} of {n}"), &images.torn_at(k, ascending));
        // Any subset of the changed sectors: a disk that wrote back some of them before the crash.
        tally.open("sector subset", format!("sectors {sectors:?}"), &images.with_sectors(&sectors));
        if images.s2.len() > images.s1.len() {
            let len = images.s1.len() + ((images.s2.len() - images.s1.len()) as f64 * cut) as usize;
            tally.open("random truncation", format!("S2 cut at {len}"), &images.s2[..len]);
        }
        tally.assert_good();
    }
}
