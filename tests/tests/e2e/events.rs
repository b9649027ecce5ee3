//! The event bus over gRPC: many subscribers, slow-subscriber cut-off with flat memory, resume.

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{EVENT_TIMEOUT, Events, Server, kind, rss_kib, world};
use tonic::Code;

/// Collects the data of `n` flood DONGs from a stream, in arrival order.
async fn flood_data(events: &mut Events, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = events.wait_for(kind::DONG).await;
        let data = p["data"].as_str().unwrap().to_owned();
        if data.starts_with("flood-") {
            out.push(data);
        }
    }
    out
}

fn expected(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("flood-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_subscribers_see_identical_ordered_streams() {
    let server = Server::start(&[]);
    let mut a = Events::open(&mut server.puppet().await).await;
    let mut b = Events::open(&mut server.puppet().await).await;
    world(&server).await.flood(ext::FloodRequest { count: 5_000, per_second: 0 }).await.unwrap();
    let (got_a, got_b) = tokio::join!(flood_data(&mut a, 5_000), flood_data(&mut b, 5_000));
    assert_eq!(got_a, expected(0..5_000));
    assert_eq!(got_b, got_a);
}

/// Floods `total` events in chunks of `chunk`, each only after `reader` has read the previous one:
/// the reader never falls more than a chunk behind, however slow the machine.
async fn paced_flood(w: &mut puppet_tests::World, reader: &mut Events, total: usize, chunk: usize) -> Vec<String> {
    let mut got = Vec::with_capacity(total);
    while got.len() < total {
        let n = chunk.min(total - got.len());
        w.flood(ext::FloodRequest { count: n as u64, per_second: 0 }).await.unwrap();
        got.extend(flood_data(reader, n).await);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_subscriber_is_cut_off_while_a_fast_one_keeps_receiving_and_memory_stays_flat() {
    let server =
        Server::start(&["--event-retention", "8192", "--subscriber-max-lag", "4096", "--store-cache-mib", "1"]);
    // Separate connections, so the slow one's HTTP/2 flow control does not touch the fast one. The
    // slow one's small receive window makes it fall behind once the server's buffers are full too.
    let mut slow = Events::open(&mut server.puppet_with_window(16 * 1024).await).await.into_inner();
    let mut fast = Events::open(&mut server.puppet().await).await;
    let mut w = world(&server).await;

    // Each flood chunk (1,000) is far under the lag limit (4,096), and the fast reader reads it
    // before the next: it can never be the one cut off, while the slow one falls 20,000 behind.
    let got = paced_flood(&mut w, &mut fast, 20_000, 1_000).await;
    let numbers: Vec<usize> = got.iter().map(|d| d.trim_start_matches("flood-").parse().unwrap()).collect();
    assert_eq!(numbers.len(), 20_000, "the fast subscriber missed nothing");
    assert!(numbers.windows(2).all(|p| p[1] == p[0] + 1 || p[1] == 0), "in order, chunk after chunk");

    // The slow one never read; now it does, and learns it was cut off.
    let status = tokio::time::timeout(EVENT_TIMEOUT, async {
        loop {
            match slow.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => panic!("the slow stream ended with OK instead of RESOURCE_EXHAUSTED"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("slow subscriber was not cut off");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("after_seq="), "the status says where to resume: {}", status.message());

    // Memory does not grow with the number of events while a subscriber is stuck (after a
    // warm-up that fills the store's page cache).
    let _stuck = Events::open(&mut server.puppet_with_window(16 * 1024).await).await;
    paced_flood(&mut w, &mut fast, 200_000, 2_000).await;
    let before = rss_kib(server.pid());
    let read = paced_flood(&mut w, &mut fast, 200_000, 2_000).await;
    assert_eq!(read.len(), 200_000);
    let after = rss_kib(server.pid());
    let grown = after.saturating_sub(before);
    eprintln!("server RSS {before} KiB before, {after} KiB after 200k more events");
    // Unbounded retention would cost roughly 120 bytes an event here, over 20 MiB.
    assert!(grown < 8 * 1024, "RSS grew {grown} KiB ({before} → {after}) over 200k events with a stuck subscriber");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_resumes_without_gap_or_duplicate_and_refuses_lost_ranges() {
    // Nothing else publishes (no autostart login), so the DONG sequences are consecutive.
    let server = Server::start(&["--event-retention", "1000", "--autostart", "false"]);
    let mut feed = server.feed().await;
    let mut w = world(&server).await;

    let mut stream = feed
        .subscribe(ext::SubscribeRequest { after_seq: None, replay_state: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let flood = w.flood(ext::FloodRequest { count: 100, per_second: 0 }).await.unwrap().into_inner();
    let mut seen = Vec::new();
    while seen.len() < 40 {
        let e = tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await.unwrap().unwrap().unwrap();
        if e.seq != 0 && e.r#type == kind::DONG {
            seen.push((e.seq, e.payload));
        }
    }
    drop(stream); // the network blinks
    w.flood(ext::FloodRequest { count: 100, per_second: 0 }).await.unwrap();

    let last = seen.last().unwrap().0;
    let mut stream = feed
        .subscribe(ext::SubscribeRequest { after_seq: Some(last), replay_state: false, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    while seen.len() < 200 {
        let e = tokio::time::timeout(EVENT_TIMEOUT, stream.message()).await.unwrap().unwrap().unwrap();
        if e.seq != 0 && e.r#type == kind::DONG {
            seen.push((e.seq, e.payload));
        }
    }
    let seqs: Vec<u64> = seen.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (flood.first_seq..flood.first_seq + 200).collect::<Vec<_>>(), "no gap, no duplicate");
    let data: Vec<String> = seen
        .iter()
        .map(|(_, p)| serde_json::from_str::<serde_json::Value>(p).unwrap()["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(&data[..100], expected(0..100).as_slice());

    // Push the start out of the window: resuming there is refused, not silently skipped.
    w.flood(ext::FloodRequest { count: 2_000, per_second: 0 }).await.unwrap();
    let retention = feed.retention(ext::RetentionRequest {}).await.unwrap().into_inner();
    assert_eq!(retention.capacity, 1000);
    assert_eq!(retention.last_seq - retention.first_seq + 1, 1000);
    let err = feed
        .subscribe(ext::SubscribeRequest { after_seq: Some(last), replay_state: false, ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    let ok = feed
        .subscribe(ext::SubscribeRequest {
            after_seq: Some(retention.first_seq - 1),
            replay_state: false,
            ..Default::default()
        })
        .await;
    assert!(ok.is_ok(), "the oldest retained event can still be resumed from");
}

#[tokio::test]
async fn heartbeats_keep_coming() {
    let server = Server::start(&["--heartbeat-secs", "1"]);
    let mut p = server.puppet().await;
    let mut events = Events::open(&mut p).await;
    let mut beats = 0;
    while beats < 2 {
        let (k, payload) = events.next_any().await;
        if k == kind::HEARTBEAT {
            assert!(payload["data"].is_string(), "Python requires `data`: {payload}");
            beats += 1;
        }
    }
    p.version(pb::VersionRequest {}).await.unwrap();
}
