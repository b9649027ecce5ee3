//! File transfer benchmark: starts a release `puppet-server`, uploads a generated file of N MiB
//! (`Upload`, 256 KiB chunks, as the Node client does), downloads it back (`Download`), checks the
//! bytes, and prints MB/s each way plus the server's RSS growth.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/file-transfer --mib 1024
//! ```

use std::time::Instant;

use clap::Parser;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Server, rss_kib};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// File size in MiB.
    #[arg(long, default_value_t = 1024)]
    mib: u64,
}

const CHUNK: usize = 256 * 1024;

fn chunk(i: u64) -> Vec<u8> {
    // Cheap, position-dependent bytes so a misplaced chunk is caught.
    let mut v = vec![(i % 251) as u8; CHUNK];
    v[..8].copy_from_slice(&i.to_le_bytes());
    v
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let limit = (args.mib + 1).to_string();
    let server =
        Server::start(&["--autostart", "false", "--blob-max-file-mib", &limit, "--blob-max-total-mib", &limit]);
    let mut client = server.puppet().await;
    let idle = rss_kib(server.pid());
    let chunks = args.mib * (1 << 20) / CHUNK as u64;
    let bytes = chunks * CHUNK as u64;

    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        for i in 0..chunks {
            if tx.send(pb::UploadRequest { chunk: chunk(i) }).await.is_err() {
                break;
            }
        }
    });
    let started = Instant::now();
    let id = client.upload(ReceiverStream::new(rx)).await?.into_inner().id;
    let up = started.elapsed();
    let after_up = rss_peak(server.pid());

    let started = Instant::now();
    let mut stream = client.download(pb::DownloadRequest { id }).await?.into_inner();
    let (mut received, mut index, mut carry) = (0u64, 0u64, Vec::with_capacity(CHUNK));
    while let Some(m) = stream.message().await? {
        received += m.chunk.len() as u64;
        carry.extend_from_slice(&m.chunk);
        while carry.len() >= CHUNK {
            anyhow::ensure!(carry[..CHUNK] == chunk(index)[..], "chunk {index} came back different");
            carry.drain(..CHUNK);
            index += 1;
        }
    }
    let down = started.elapsed();
    anyhow::ensure!(received == bytes && carry.is_empty(), "downloaded {received} of {bytes} bytes");
    let peak = rss_peak(server.pid());

    let mb = bytes as f64 / 1e6;
    println!("file-transfer: {} MiB ({} bytes), 256 KiB chunks, one connection", args.mib, bytes);
    println!("  upload     {:>8.1} MB/s ({:.2} s)", mb / up.as_secs_f64(), up.as_secs_f64());
    println!("  download   {:>8.1} MB/s ({:.2} s), bytes verified", mb / down.as_secs_f64(), down.as_secs_f64());
    println!("  server RSS idle {idle} KiB, peak after upload {after_up} KiB, peak overall {peak} KiB");
    println!("  RSS growth {:.1} MiB", peak.saturating_sub(idle) as f64 / 1024.0);
    Ok(())
}

fn rss_peak(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}
