//! Files across the two services. A Uuid names a blob in one service's store only, so:
//!
//! * a FileBox the upstream returns with *its* Uuid is downloaded (`Download`, chunk by chunk,
//!   each under the call deadline) into our blob store and handed on under *our* Uuid — our
//!   clients then `Download` it from us, or get it inline, as the gRPC layer decides;
//! * a FileBox our client sends with *our* Uuid, or inline data too big for one upstream message,
//!   is uploaded (`Upload`, 256 KiB chunks) first and sent under the upstream's Uuid.
//!
//! Nothing sent to the upstream is above 4 MiB in one message (the Node service's receive limit):
//! inline boxes larger than [`INLINE_TO_UPSTREAM`] are uploaded.

use base64::Engine;
use puppet_proto::filebox::{BASE64, FileBox, FileBoxSource};
use puppet_proto::pb::wechaty::puppet as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::Upstream;
use crate::backend::{BackendError, BackendResult};
use crate::blobs::READ_CHUNK;

/// Inline (base64) files up to this many bytes of JSON go to the upstream as they are; larger
/// ones are uploaded (a 4 MiB message limit, less room for the rest of the request).
pub const INLINE_TO_UPSTREAM: usize = 3 << 20;

/// Chunks in flight between the blob reader and the upload stream.
const CHUNKS_IN_FLIGHT: usize = 4;

impl Upstream {
    /// A FileBox from the upstream, as our clients can fetch it.
    pub(super) async fn adopt(&self, fb: FileBox) -> BackendResult<FileBox> {
        let FileBoxSource::Uuid(theirs) = &fb.source else { return Ok(fb) };
        let mut client = self.client()?;
        let timeout = self.inner.settings.call_timeout;
        let settings = &self.inner.settings;
        let status = |s: tonic::Status| super::map_status("download", Some(("file", theirs)), &s, settings);
        let deadline = |what: &str| {
            BackendError::Unavailable(format!("the upstream's {what} stalled for {} s", timeout.as_secs()))
        };
        let mut stream = tokio::time::timeout(timeout, client.download(pb::DownloadRequest { id: theirs.clone() }))
            .await
            .map_err(|_| deadline("download"))?
            .map_err(status)?
            .into_inner();
        let mut writer = self.inner.blobs.writer().await?;
        loop {
            let next = tokio::time::timeout(timeout, stream.message()).await.map_err(|_| deadline("download"))?;
            match next.map_err(status)? {
                Some(m) => writer.write(&m.chunk).await?,
                None => break,
            }
        }
        let meta = writer.finish().await?;
        Ok(FileBox { source: FileBoxSource::Uuid(meta.id), size: Some(meta.size), ..fb })
    }

    /// A FileBox from our client, as the upstream can take it.
    pub(super) async fn export(&self, fb: FileBox) -> BackendResult<FileBox> {
        match &fb.source {
            FileBoxSource::Uuid(ours) => {
                let (meta, mut file) = self.inner.blobs.open_blob(ours).await?;
                let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
                let reading = async move {
                    loop {
                        let mut chunk = vec![0u8; READ_CHUNK];
                        let n = file.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        chunk.truncate(n);
                        if tx.send(pb::UploadRequest { chunk }).await.is_err() {
                            return Ok(());
                        }
                    }
                };
                let id = self.upload(ReceiverStream::new(rx), reading, meta.size).await?;
                Ok(FileBox { source: FileBoxSource::Uuid(id), size: Some(meta.size), ..fb })
            }
            FileBoxSource::Base64(b64) if b64.len() > INLINE_TO_UPSTREAM => {
                let bytes = BASE64
                    .decode(b64.trim())
                    .map_err(|e| BackendError::InvalidArgument(format!("FileBox `base64` is not base64: {e}")))?;
                let size = bytes.len() as u64;
                let (tx, rx) = mpsc::channel(CHUNKS_IN_FLIGHT);
                let feeding = async move {
                    for chunk in bytes.chunks(READ_CHUNK) {
                        if tx.send(pb::UploadRequest { chunk: chunk.to_vec() }).await.is_err() {
                            break;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                };
                let id = self.upload(ReceiverStream::new(rx), feeding, size).await?;
                Ok(FileBox { source: FileBoxSource::Uuid(id), size: Some(size), ..fb })
            }
            _ => Ok(fb),
        }
    }

    /// Runs `Upload` with `chunks` while `feed` produces them; the upstream's blob id. The
    /// deadline is the call deadline per started 4 MiB.
    async fn upload(
        &self,
        chunks: ReceiverStream<pb::UploadRequest>,
        feed: impl std::future::Future<Output = std::io::Result<()>>,
        size: u64,
    ) -> BackendResult<String> {
        let mut client = self.client()?;
        let timeout = self.inner.settings.call_timeout;
        let deadline = timeout.saturating_mul(u32::try_from(1 + (size >> 22)).unwrap_or(u32::MAX));
        let (sent, fed) = tokio::time::timeout(deadline, async { tokio::join!(client.upload(chunks), feed) })
            .await
            .map_err(|_| {
                BackendError::Unavailable(format!(
                    "the upstream's Upload did not finish within {} s",
                    deadline.as_secs()
                ))
            })?;
        fed.map_err(|e| BackendError::Internal(format!("reading the file to upload failed: {e}")))?;
        let id = sent.map_err(|s| super::map_status("upload", None, &s, &self.inner.settings))?.into_inner().id;
        if id.is_empty() {
            return Err(BackendError::Internal("the upstream's Upload answered no id".into()));
        }
        Ok(id)
    }
}
