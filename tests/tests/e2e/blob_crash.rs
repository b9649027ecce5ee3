//! The blob store across a crash: the server killed with SIGKILL in the middle of an Upload.

use std::path::Path;
use std::time::{Duration, Instant};

use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Server, pattern_chunks, sha256};
use tonic::Code;

const CHUNK: usize = 256 * 1024;

/// The `.part` files (partial uploads) in a blob directory, with their sizes.
fn partials(blobs: &Path) -> Vec<(String, u64)> {
    std::fs::read_dir(blobs)
        .map(|entries| {
            entries
                .map_while(Result::ok)
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let stem = name.strip_suffix(".part")?.to_owned();
                    Some((stem, e.metadata().ok()?.len()))
                })
                .collect()
        })
        .unwrap_or_default()
}

async fn download(server: &Server, id: &str) -> Result<String, tonic::Status> {
    let mut stream = server.puppet().await.download(pb::DownloadRequest { id: id.into() }).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(m) = stream.message().await? {
        chunks.push(m.chunk);
    }
    Ok(sha256(chunks.iter().map(Vec::as_slice)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_upload_leaves_no_partial_blob_and_keeps_finished_ones() {
    let dir = std::env::temp_dir().join(format!("puppet-blob-crash-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&dir);
    let blobs = dir.join("blobs");
    let server = Server::start_in(&dir, &["--autostart", "false"]);

    // A finished upload from before the crash.
    let kept: Vec<Vec<u8>> = pattern_chunks(7, 3 << 20, CHUNK).collect();
    let kept_digest = sha256(kept.iter().map(Vec::as_slice));
    let kept_id = server
        .puppet()
        .await
        .upload(tokio_stream::iter(kept.into_iter().map(|chunk| pb::UploadRequest { chunk })))
        .await
        .unwrap()
        .into_inner()
        .id;

    // An upload still streaming: 1 MiB sent, the stream left open.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut uploader = server.puppet().await;
    let upload = tokio::spawn(async move { uploader.upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for chunk in pattern_chunks(9, 1 << 20, CHUNK) {
        tx.send(pb::UploadRequest { chunk }).await.unwrap();
    }
    // Until the server has written what was sent to its partial file (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    let partial_id = loop {
        if let Some((id, _)) = partials(&blobs).into_iter().find(|(_, len)| *len >= 1 << 20) {
            break id;
        }
        assert!(Instant::now() < deadline, "no 1 MiB partial upload in {} within 20 s", blobs.display());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };

    let pid = server.pid().to_string();
    assert!(std::process::Command::new("kill").args(["-KILL", &pid]).status().unwrap().success());
    drop(server); // reaps the killed process (the data dir is kept)
    let err = upload.await.unwrap().expect_err("the upload cannot succeed: the server died mid-stream");
    assert_ne!(err.code(), Code::Ok);
    assert_eq!(partials(&blobs).len(), 1, "the crash left the partial file behind (the case under test)");
    drop(tx);

    // Restarted on the same data dir: it starts cleanly and serves no partial file.
    let again = Server::start_in(&dir, &["--autostart", "false"]);
    assert_eq!(partials(&blobs), vec![], "the partial upload is deleted at start-up");
    assert!(!blobs.join(&partial_id).exists(), "the partial upload was never made visible");
    for id in [partial_id.as_str(), &format!("{partial_id}.part"), "00000000-0000-4000-8000-000000000000"] {
        let e = download(&again, id).await.unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{id}: {e:?}");
    }
    assert_eq!(download(&again, &kept_id).await.unwrap(), kept_digest, "the finished blob is served byte-exact");
    drop(again);
    std::fs::remove_dir_all(&dir).unwrap();
}
