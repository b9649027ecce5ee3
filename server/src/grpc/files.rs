//! File transfer over gRPC: `Upload`/`Download`, the deprecated chunked RPCs, and turning FileBoxes
//! into what each kind of client can take.
//!
//! * Incoming inline files larger than [`INLINE_LIMIT`] are moved into the blob store, so backends
//!   and replies deal in Uuid boxes instead of megabytes of base64.
//! * Outgoing files up to [`INLINE_LIMIT`] go inline (Base64) to everyone. Larger ones go as Uuid
//!   boxes, fetched with `Download` — except to the Python client, which cannot download and gets
//!   them inline (its receive size is unlimited; Node's is 4 MiB).
//! * Everything streams through bounded channels in [`READ_CHUNK`] pieces; no path holds a whole
//!   file in memory except the inline replies Python needs.

use base64::Engine;
pub use puppet_proto::filebox::BASE64;
use puppet_proto::filebox::{FileBox, FileBoxSource};
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tonic::metadata::MetadataMap;

pub use super::status::blob_status;
use super::validate;
use crate::blobs::{BlobStore, READ_CHUNK};
use puppet_proto::ids::Shown;

/// Files up to this size travel inline; larger ones through the blob store.
pub const INLINE_LIMIT: u64 = 1 << 20;

/// Chunks in flight between a file reader task and its gRPC stream.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Which kind of client is calling, as far as files are concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientKind {
    /// python-wechaty (grpclib): no Download, needs inline files.
    Python,
    /// Anything else (Node, Go, Rust, grpcurl): can Download Uuid boxes.
    Other,
}

impl ClientKind {
    /// From the request's `user-agent`.
    pub fn of(metadata: &MetadataMap) -> Self {
        let ua = metadata.get("user-agent").and_then(|v| v.to_str().ok()).unwrap_or_default();
        if ua.contains("grpc-python-grpclib") { Self::Python } else { Self::Other }
    }
}

fn decode(b64: &str) -> Result<Vec<u8>, Status> {
    BASE64.decode(b64.trim()).map_err(|e| Status::invalid_argument(format!("FileBox `base64` is not base64: {e}")))
}

/// Longest file name, in characters.
pub const MAX_FILE_NAME_CHARS: usize = 255;

/// Checks what a client's FileBox may hold: a bounded, printable name; a Uuid that is an id; a
/// URL over http(s) (the server fetches it, if at all, only through its outbound fence); a QR
/// text of bounded size.
fn check_incoming(fb: &FileBox) -> Result<(), Status> {
    let invalid = |why: String| Err(Status::invalid_argument(format!("`file_box`: {why}")));
    check_name(&fb.name)?;
    match &fb.source {
        FileBoxSource::Uuid(id) => validate::id("file_box.uuid", id.clone()).map(drop),
        FileBoxSource::Url { url, .. } => {
            let scheme = url.split_once(':').map(|(s, _)| s.to_ascii_lowercase()).unwrap_or_default();
            if url.len() > validate::MAX_URL_BYTES {
                return invalid(format!("the URL is {} bytes; at most {}", url.len(), validate::MAX_URL_BYTES));
            }
            if scheme != "http" && scheme != "https" {
                return invalid(format!(
                    "the URL `{}` is not http(s): files are fetched only over http and https",
                    Shown(url)
                ));
            }
            Ok(())
        }
        FileBoxSource::QrCode(text) if text.is_empty() || text.len() > 4096 => {
            invalid(format!("a QR code text is 1 to 4096 bytes, not {}", text.len()))
        }
        FileBoxSource::QrCode(_) | FileBoxSource::Base64(_) => Ok(()),
    }
}

/// A file name: at most [`MAX_FILE_NAME_CHARS`], no control characters.
pub fn check_name(name: &str) -> Result<(), Status> {
    let name_chars = name.chars().count();
    if name_chars > MAX_FILE_NAME_CHARS {
        return Err(Status::invalid_argument(format!(
            "`file_box`: the name is {name_chars} characters; at most {MAX_FILE_NAME_CHARS}"
        )));
    }
    if name.chars().any(char::is_control) {
        return Err(Status::invalid_argument(format!(
            "`file_box`: the name `{}` contains control characters",
            Shown(name)
        )));
    }
    Ok(())
}

fn non_empty_file(bytes: Vec<u8>) -> Result<Vec<u8>, Status> {
    if bytes.is_empty() {
        return Err(Status::invalid_argument("`file_box`: the file is empty; WeChat cannot send empty files"));
    }
    Ok(bytes)
}

/// A FileBox from a client, made ready for the backend: checked ([`check_incoming`]), large
/// inline data moved into the store, Uuid boxes checked to exist. The second value is the blob
/// this call created, if any: the caller removes it when the call fails after all.
pub async fn incoming(store: &BlobStore, mut fb: FileBox) -> Result<(FileBox, Option<String>), Status> {
    check_incoming(&fb)?;
    let mut created = None;
    match &fb.source {
        FileBoxSource::Uuid(id) => {
            let meta = store.touch(id).map_err(blob_status)?;
            fb.size = Some(meta.size);
        }
        FileBoxSource::Base64(b64) if (b64.len() as u64) / 4 * 3 > INLINE_LIMIT => {
            let bytes = non_empty_file(decode(b64)?)?;
            let meta = store.put(&bytes).await.map_err(blob_status)?;
            fb.size = Some(meta.size);
            created = Some(meta.id.clone());
            fb.source = FileBoxSource::Uuid(meta.id);
        }
        FileBoxSource::Base64(b64) => {
            fb.size = Some(non_empty_file(decode(b64)?)?.len() as u64);
        }
        FileBoxSource::Url { .. } | FileBoxSource::QrCode(_) => {}
    }
    Ok((fb, created))
}

/// A FileBox from the backend, made ready for this client (see the module docs).
pub async fn outgoing(store: &BlobStore, mut fb: FileBox, client: ClientKind) -> Result<FileBox, Status> {
    match &fb.source {
        FileBoxSource::Uuid(id) => {
            let meta = store.touch(id).map_err(blob_status)?;
            fb.size = Some(meta.size);
            if meta.size <= INLINE_LIMIT || client == ClientKind::Python {
                let bytes = store.read_all(id).await.map_err(blob_status)?;
                fb.source = FileBoxSource::Base64(BASE64.encode(bytes));
            }
        }
        FileBoxSource::Base64(b64) if client == ClientKind::Other && (b64.len() as u64) / 4 * 3 > INLINE_LIMIT => {
            let bytes = decode(b64)?;
            let meta = store.put(&bytes).await.map_err(blob_status)?;
            fb.size = Some(meta.size);
            fb.source = FileBoxSource::Uuid(meta.id);
        }
        _ => {}
    }
    Ok(fb)
}

/// Streams a FileBox's bytes as messages built by `chunk`, preceded by `first` when given. Uuid and
/// Base64 boxes only: the server fetches no URLs.
pub async fn stream_bytes<T: Send + 'static>(
    store: &BlobStore,
    fb: &FileBox,
    first: Option<T>,
    chunk: fn(Vec<u8>) -> T,
) -> Result<ReceiverStream<Result<T, Status>>, Status> {
    let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
    match &fb.source {
        FileBoxSource::Uuid(id) => {
            let (_, mut file) = store.open_blob(id).await.map_err(blob_status)?;
            tokio::spawn(async move {
                if let Some(f) = first
                    && tx.send(Ok(f)).await.is_err()
                {
                    return;
                }
                loop {
                    let mut buf = Vec::with_capacity(READ_CHUNK);
                    // Fill whole chunks: a short read is not the end of the file.
                    while buf.len() < READ_CHUNK {
                        match (&mut file).take((READ_CHUNK - buf.len()) as u64).read_to_end(&mut buf).await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(e) => {
                                _ = tx.send(Err(Status::internal(format!("reading blob: {e}")))).await;
                                return;
                            }
                        }
                    }
                    // Never an empty chunk: the Node client rejects those.
                    if buf.is_empty() || tx.send(Ok(chunk(buf))).await.is_err() {
                        return;
                    }
                }
            });
        }
        FileBoxSource::Base64(b64) => {
            let bytes = decode(b64)?;
            tokio::spawn(async move {
                if let Some(f) = first
                    && tx.send(Ok(f)).await.is_err()
                {
                    return;
                }
                for piece in bytes.chunks(READ_CHUNK) {
                    if tx.send(Ok(chunk(piece.to_vec()))).await.is_err() {
                        return;
                    }
                }
            });
        }
        FileBoxSource::Url { url, .. } => {
            return Err(Status::failed_precondition(format!(
                "this file is at a URL ({url}); the server does not fetch URLs, fetch it directly"
            )));
        }
        FileBoxSource::QrCode(_) => {
            return Err(Status::failed_precondition("this FileBox is a QR code text, not a file"));
        }
    }
    Ok(ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio_stream::StreamExt;

    fn store() -> (BlobStore, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("puppet-files-{}", uuid::Uuid::new_v4()));
        let limits = crate::blobs::BlobLimits { max_file: 64 << 20, max_total: 64 << 20, ttl: Duration::from_secs(60) };
        (BlobStore::open(&dir, limits).unwrap(), dir)
    }

    #[tokio::test]
    async fn large_inline_files_move_into_the_store_and_back_out_per_client() {
        let (s, dir) = store();
        let big = vec![7u8; (INLINE_LIMIT + 1) as usize];
        let fb = FileBox::new("big.bin", FileBoxSource::Base64(BASE64.encode(&big)));
        let (stored, created) = incoming(&s, fb).await.unwrap();
        let FileBoxSource::Uuid(id) = &stored.source else { panic!("{stored:?}") };
        assert_eq!(created.as_ref(), Some(id), "the caller learns which blob it created");
        assert_eq!(stored.size, Some(big.len() as u64));
        assert_eq!(s.read_all(id).await.unwrap(), big);

        let to_node = outgoing(&s, stored.clone(), ClientKind::Other).await.unwrap();
        assert!(matches!(to_node.source, FileBoxSource::Uuid(_)), "large files go to Node as Uuid");
        let to_python = outgoing(&s, stored, ClientKind::Python).await.unwrap();
        assert_eq!(to_python.source, FileBoxSource::Base64(BASE64.encode(&big)), "Python gets them inline");

        let small = s.put(b"tiny").await.unwrap();
        let fb = outgoing(&s, FileBox::new("t", FileBoxSource::Uuid(small.id)), ClientKind::Other).await.unwrap();
        assert_eq!(fb.source, FileBoxSource::Base64("dGlueQ==".into()), "small files go inline to everyone");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn streams_come_in_full_non_empty_chunks_after_the_name() {
        let (s, dir) = store();
        let data: Vec<u8> = (0..(READ_CHUNK * 2 + 10)).map(|i| i as u8).collect();
        let meta = s.put(&data).await.unwrap();
        let fb = FileBox::new("f", FileBoxSource::Uuid(meta.id));
        let got: Vec<Vec<u8>> =
            stream_bytes(&s, &fb, Some(b"name".to_vec()), |c| c).await.unwrap().map(|r| r.unwrap()).collect().await;
        assert_eq!(got[0], b"name");
        assert_eq!(got[1..].iter().map(Vec::len).collect::<Vec<_>>(), vec![READ_CHUNK, READ_CHUNK, 10]);
        assert_eq!(got[1..].concat(), data);
        let url = FileBox::new("u", FileBoxSource::Url { url: "http://x".into(), headers: None });
        assert_eq!(stream_bytes(&s, &url, None, |c| c).await.unwrap_err().code(), tonic::Code::FailedPrecondition);
        let missing = FileBox::new("m", FileBoxSource::Uuid("nope".into()));
        assert_eq!(stream_bytes(&s, &missing, None, |c| c).await.unwrap_err().code(), tonic::Code::NotFound);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn python_is_told_apart_by_its_user_agent() {
        let mut m = MetadataMap::new();
        m.insert("user-agent", "grpc-python-grpclib/0.4.9 (linux)".parse().unwrap());
        assert_eq!(ClientKind::of(&m), ClientKind::Python);
        m.insert("user-agent", "grpc-node-js/1.14.7".parse().unwrap());
        assert_eq!(ClientKind::of(&m), ClientKind::Other);
    }
}
