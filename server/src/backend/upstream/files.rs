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
//!
//! Many deployed services (older `wechaty-puppet-service`, some hosted token providers) answer
//! `UNIMPLEMENTED` to `Upload`/`Download`. For them the files travel through the deprecated
//! streams instead: a send goes as `MessageSendFileStream` (conversation, name, 256 KiB chunks), a
//! message's file or image comes as `MessageFileStream`/`MessageImageStream`. The first
//! `UNIMPLEMENTED` is remembered for the connection ([`Lacks`]), so later transfers go to the
//! stream at once; a new connection asks again. Avatars have no stream: without `Download` they
//! answer `UNIMPLEMENTED` naming `download`.

use std::future::Future;
use std::pin::Pin;

use base64::Engine;
use puppet_proto::filebox::{BASE64, FileBox, FileBoxSource};
use puppet_proto::pb::wechaty::puppet as pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::Code;

use super::Upstream;
use crate::backend::{BackendError, BackendResult};
use crate::blobs::READ_CHUNK;

/// Inline (base64) files up to this many bytes of JSON go to the upstream as they are; larger
/// ones are uploaded (a 4 MiB message limit, less room for the rest of the request).
pub const INLINE_TO_UPSTREAM: usize = 3 << 20;

/// Chunks in flight between the blob reader and the upload stream.
const CHUNKS_IN_FLIGHT: usize = 4;

/// What the upstream answered `UNIMPLEMENTED` to on the current connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lacks {
    /// `Upload`: sends go through `MessageSendFileStream`.
    pub upload: bool,
    /// `Download`: message files and images come through `MessageFileStream`/`MessageImageStream`.
    pub download: bool,
}

/// Which deprecated download stream to use.
#[derive(Clone, Copy, Debug)]
pub(super) enum FileOf<'a> {
    /// `MessageFileStream`.
    File(&'a str),
    /// `MessageImageStream` with the image type's wire value.
    Image(&'a str, i32),
}

/// The bytes of a file to send, produced by `feed` into `chunks` (each at most [`READ_CHUNK`]).
struct Feed {
    size: u64,
    chunks: ReceiverStream<Vec<u8>>,
    feed: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
}

/// `Upload` was answered `UNIMPLEMENTED` (the caller falls back to the stream).
const NO_UPLOAD: BackendError = BackendError::Unsupported("upload");
/// `Download` was answered `UNIMPLEMENTED` (the caller falls back to the stream).
const NO_DOWNLOAD: BackendError = BackendError::Unsupported("download");

impl Upstream {
    /// What the upstream lacks, as far as this connection has shown.
    pub(super) fn lacks(&self) -> Lacks {
        *Self::lock(&self.inner.lacks)
    }

    fn note_lacks(&self, f: impl FnOnce(&mut Lacks)) {
        f(&mut Self::lock(&self.inner.lacks));
    }

    /// A message's file or image: `MessageFile`/`MessageImage` (then `Download` if it comes as
    /// the upstream's Uuid), or the deprecated stream when the upstream lacks `Download`.
    pub(super) async fn message_file_box(&self, of: FileOf<'_>) -> BackendResult<FileBox> {
        if !self.lacks().download {
            let (op, fb) = match of {
                FileOf::File(id) => {
                    let req = pb::MessageFileRequest { id: id.to_owned() };
                    let r = self
                        .call("message_file", Some(("message", id)), |mut c| async move { c.message_file(req).await })
                        .await?;
                    ("message_file", r.file_box)
                }
                FileOf::Image(id, kind) => {
                    let req = pb::MessageImageRequest { id: id.to_owned(), r#type: kind };
                    let r = self
                        .call("message_image", Some(("message", id)), |mut c| async move { c.message_image(req).await })
                        .await?;
                    ("message_image", r.file_box)
                }
            };
            let fb = FileBox::from_json(&fb)
                .map_err(|e| BackendError::Internal(format!("the upstream's `{op}` FileBox: {e}")))?;
            match self.adopt(fb).await {
                Err(e) if e == NO_DOWNLOAD => {}
                other => return other,
            }
        }
        self.fetch_by_stream(of).await
    }

    /// `MessageFileStream`/`MessageImageStream` into our blob store: a name chunk first, then data.
    async fn fetch_by_stream(&self, of: FileOf<'_>) -> BackendResult<FileBox> {
        let (op, id) = match of {
            FileOf::File(id) => ("message_file_stream", id),
            FileOf::Image(id, _) => ("message_image_stream", id),
        };
        let mut client = self.client()?;
        let timeout = self.inner.settings.call_timeout;
        let settings = &self.inner.settings;
        let status = |s: tonic::Status| super::map_status(op, Some(("message", id)), &s, settings);
        let deadline =
            || BackendError::Unavailable(format!("the upstream's `{op}` stalled for {} s", timeout.as_secs()));
        let mut chunks: Pin<Box<dyn Stream<Item = Result<pb::FileBoxChunk, tonic::Status>> + Send>> = match of {
            FileOf::File(id) => {
                let req = pb::MessageFileStreamRequest { id: id.to_owned() };
                let s = tokio::time::timeout(timeout, client.message_file_stream(req))
                    .await
                    .map_err(|_| deadline())?
                    .map_err(status)?
                    .into_inner();
                Box::pin(s.map(|m| m.map(|m| m.file_box_chunk.unwrap_or_default())))
            }
            FileOf::Image(id, kind) => {
                let req = pb::MessageImageStreamRequest { id: id.to_owned(), r#type: kind };
                let s = tokio::time::timeout(timeout, client.message_image_stream(req))
                    .await
                    .map_err(|_| deadline())?
                    .map_err(status)?
                    .into_inner();
                Box::pin(s.map(|m| m.map(|m| m.file_box_chunk.unwrap_or_default())))
            }
        };
        let mut name = None;
        let mut writer = self.inner.blobs.writer().await?;
        loop {
            let next = tokio::time::timeout(timeout, chunks.next()).await.map_err(|_| deadline())?;
            let Some(chunk) = next.transpose().map_err(status)? else { break };
            match (chunk.name, chunk.data, &name) {
                (Some(n), None, None) => name = Some(n),
                (None, Some(data), Some(_)) => writer.write(&data).await?,
                (None, None, _) => {}
                _ => {
                    return Err(BackendError::Internal(format!(
                        "the upstream's `{op}` broke the chunk order (a name first, then data only)"
                    )));
                }
            }
        }
        let name = name.ok_or_else(|| BackendError::Internal(format!("the upstream's `{op}` sent no file name")))?;
        let meta = writer.finish().await?;
        Ok(FileBox { size: Some(meta.size), ..FileBox::new(name, FileBoxSource::Uuid(meta.id)) })
    }

    /// A FileBox from the upstream, as our clients can fetch it.
    pub(super) async fn adopt(&self, fb: FileBox) -> BackendResult<FileBox> {
        let FileBoxSource::Uuid(theirs) = &fb.source else { return Ok(fb) };
        if self.lacks().download {
            return Err(NO_DOWNLOAD);
        }
        let mut client = self.client()?;
        let timeout = self.inner.settings.call_timeout;
        let settings = &self.inner.settings;
        let status = |s: tonic::Status| {
            if s.code() == Code::Unimplemented {
                self.note_lacks(|l| l.download = true);
                return NO_DOWNLOAD;
            }
            super::map_status("download", Some(("file", theirs)), &s, settings)
        };
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

    /// Whether `fb` must be uploaded before the upstream can take it.
    pub(super) fn needs_upload(fb: &FileBox) -> bool {
        match &fb.source {
            FileBoxSource::Uuid(_) => true,
            FileBoxSource::Base64(b64) => b64.len() > INLINE_TO_UPSTREAM,
            _ => false,
        }
    }

    /// The bytes of `fb` in chunks, if it is ours (a Uuid) or inline.
    async fn feed(&self, fb: &FileBox) -> BackendResult<Option<Feed>> {
        let (tx, rx) = mpsc::channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
        match &fb.source {
            FileBoxSource::Uuid(ours) => {
                let (meta, mut file) = self.inner.blobs.open_blob(ours).await?;
                let reading = async move {
                    loop {
                        let mut chunk = vec![0u8; READ_CHUNK];
                        let n = file.read(&mut chunk).await?;
                        if n == 0 {
                            return Ok::<(), std::io::Error>(());
                        }
                        chunk.truncate(n);
                        if tx.send(chunk).await.is_err() {
                            return Ok(());
                        }
                    }
                };
                Ok(Some(Feed { size: meta.size, chunks: ReceiverStream::new(rx), feed: Box::pin(reading) }))
            }
            FileBoxSource::Base64(b64) => {
                let bytes = BASE64
                    .decode(b64.trim())
                    .map_err(|e| BackendError::InvalidArgument(format!("FileBox `base64` is not base64: {e}")))?;
                let size = bytes.len() as u64;
                let feeding = async move {
                    for chunk in bytes.chunks(READ_CHUNK) {
                        if tx.send(chunk.to_vec()).await.is_err() {
                            break;
                        }
                    }
                    Ok::<(), std::io::Error>(())
                };
                Ok(Some(Feed { size, chunks: ReceiverStream::new(rx), feed: Box::pin(feeding) }))
            }
            _ => Ok(None),
        }
    }

    /// A FileBox from our client, as the upstream can take it. `Unsupported("upload")` when the
    /// upstream lacks `Upload` (known before, or answered now).
    pub(super) async fn export(&self, fb: &FileBox) -> BackendResult<FileBox> {
        if !Self::needs_upload(fb) {
            return Ok(fb.clone());
        }
        if self.lacks().upload {
            return Err(NO_UPLOAD);
        }
        let Some(Feed { size, chunks, feed }) = self.feed(fb).await? else { return Ok(fb.clone()) };
        let mut client = self.client()?;
        let requests = chunks.map(|chunk| pb::UploadRequest { chunk });
        let sent = self.with_feed("Upload", size, async { tokio::join!(client.upload(requests), feed) }).await?;
        let id = match sent {
            Err(s) if s.code() == Code::Unimplemented => {
                self.note_lacks(|l| l.upload = true);
                return Err(NO_UPLOAD);
            }
            sent => sent.map_err(|s| super::map_status("upload", None, &s, &self.inner.settings))?.into_inner().id,
        };
        if id.is_empty() {
            return Err(BackendError::Internal("the upstream's Upload answered no id".into()));
        }
        Ok(FileBox {
            name: fb.name.clone(),
            source: FileBoxSource::Uuid(id),
            size: Some(size),
            md5: fb.md5.clone(),
            metadata: fb.metadata.clone(),
        })
    }

    /// Sends `fb` (ours or inline) through the deprecated `MessageSendFileStream`: the
    /// conversation, then the name, then the data. The upstream's message id, if it gave one.
    pub(super) async fn send_by_stream(
        &self,
        to: &str,
        fb: &FileBox,
    ) -> BackendResult<pb::MessageSendFileStreamResponse> {
        let Some(Feed { size, chunks, feed }) = self.feed(fb).await? else {
            return Err(BackendError::Internal(
                "only stored or inline files go through `MessageSendFileStream`".into(),
            ));
        };
        let mut client = self.client()?;
        let head = [
            pb::MessageSendFileStreamRequest { conversation_id: Some(to.to_owned()), file_box_chunk: None },
            pb::MessageSendFileStreamRequest {
                conversation_id: None,
                file_box_chunk: Some(pb::FileBoxChunk { data: None, name: Some(fb.name.clone()) }),
            },
        ];
        let requests = tokio_stream::iter(head).chain(chunks.map(|data| pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(data), name: None }),
        }));
        let sent = self
            .with_feed("MessageSendFileStream", size, async {
                tokio::join!(client.message_send_file_stream(requests), feed)
            })
            .await?;
        sent.map(tonic::Response::into_inner).map_err(|s| {
            super::map_status("message_send_file_stream", Some(("conversation", to)), &s, &self.inner.settings)
        })
    }

    /// Runs a client-streaming call beside the feed of its chunks. The deadline is the call
    /// deadline per started 4 MiB.
    async fn with_feed<R>(
        &self,
        what: &str,
        size: u64,
        both: impl Future<Output = (Result<R, tonic::Status>, std::io::Result<()>)>,
    ) -> BackendResult<Result<R, tonic::Status>> {
        let timeout = self.inner.settings.call_timeout;
        let deadline = timeout.saturating_mul(u32::try_from(1 + (size >> 22)).unwrap_or(u32::MAX));
        let (sent, fed) = tokio::time::timeout(deadline, both).await.map_err(|_| {
            BackendError::Unavailable(format!("the upstream's {what} did not finish within {} s", deadline.as_secs()))
        })?;
        fed.map_err(|e| BackendError::Internal(format!("reading the file to send failed: {e}")))?;
        Ok(sent)
    }
}
