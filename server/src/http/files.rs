//! Files over HTTP: `POST /upload` (the raw request body, streamed into the account's `Upload`
//! RPC as it arrives) and `GET /download/{id}` (the blob streamed from disk with `Content-Length`
//! and single `Range` requests). Neither holds a whole file in memory: the upload is cut into gRPC
//! frames chunk by chunk, the download read from the open file chunk by chunk.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::StreamBody;
use prost_reflect::MethodDescriptor;
use puppet_proto::ids::Shown;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_stream::StreamExt;

use super::rest::RestError;
use crate::account::Account;
use crate::blobs::READ_CHUNK;

/// Encodes one body chunk as a gRPC frame of `UploadRequest { chunk }` (field 1, bytes).
fn upload_frame(chunk: &[u8]) -> Bytes {
    let mut msg = BytesMut::with_capacity(16 + chunk.len());
    msg.put_u8(0x0a);
    prost::encoding::encode_varint(chunk.len() as u64, &mut msg);
    msg.put_slice(chunk);
    let mut frame = BytesMut::with_capacity(5 + msg.len());
    frame.put_u8(0);
    frame.put_u32(msg.len() as u32);
    frame.put_slice(&msg);
    frame.freeze()
}

/// `POST /upload`: the body's bytes become a blob; the answer is `UploadResponse` (`{"id": …}`).
pub async fn upload(account: &Account, method: &MethodDescriptor, body: Body) -> Result<Response, RestError> {
    // Chunks go on as the client sends them; a chunk larger than READ_CHUNK is split so that no
    // frame is near the gRPC message limit.
    let frames = body.into_data_stream().map(|chunk| {
        chunk
            .map(|c| {
                let mut out = BytesMut::new();
                for piece in c.chunks(READ_CHUNK) {
                    out.extend_from_slice(&upload_frame(piece));
                }
                http_body::Frame::data(out.freeze())
            })
            .map_err(|e| tonic::Status::cancelled(format!("the upload ended early: {e}")))
    });
    let body = tonic::body::Body::new(StreamBody::new(frames));
    let answer = super::rest::call(account, method, body, 1 << 20).await?;
    let json = super::rest::to_json(&answer)?;
    Ok(([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], json).into_response())
}

/// A `Range` header's single range over a file of `size` bytes: `Ok(None)` for no (or an ignored
/// multi-) range, `Err` when it cannot be satisfied.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(value) = headers.get(header::RANGE) else { return Ok(None) };
    let Some(spec) = value.to_str().ok().and_then(|v| v.trim().strip_prefix("bytes=")) else { return Ok(None) };
    if spec.contains(',') {
        // Several ranges: the whole file is a valid answer (RFC 9110 §14.2).
        return Ok(None);
    }
    let (start, end) = spec.split_once('-').ok_or(())?;
    let (start, end) = (start.trim(), end.trim());
    let (first, last) = if start.is_empty() {
        let suffix: u64 = end.parse().map_err(|_| ())?;
        if suffix == 0 || size == 0 {
            return Err(());
        }
        (size.saturating_sub(suffix), size - 1)
    } else {
        let first: u64 = start.parse().map_err(|_| ())?;
        let last = if end.is_empty() { size.saturating_sub(1) } else { end.parse::<u64>().map_err(|_| ())? };
        (first, last.min(size.saturating_sub(1)))
    };
    if first >= size || first > last {
        return Err(());
    }
    Ok(Some((first, last)))
}

/// `GET /download/{id}`.
pub async fn download(account: &Account, id: &str, headers: &HeaderMap) -> Result<Response, RestError> {
    let id = crate::grpc::validate::id("id", id.to_owned())?;
    let (meta, mut file) =
        account.blobs.open_blob(&id).await.map_err(|e| RestError::from(crate::grpc::files::blob_status(e)))?;
    let size = meta.size;
    let (status, first, len) = match range(headers, size) {
        Ok(None) => (StatusCode::OK, 0, size),
        Ok(Some((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Err(()) => {
            let mut r = (
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!(
                    "the range {} is not within the file's {size} bytes\n",
                    Shown(headers.get(header::RANGE).and_then(|v| v.to_str().ok()).unwrap_or(""))
                ),
            )
                .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(r);
        }
    };
    if first > 0 {
        file.seek(std::io::SeekFrom::Start(first))
            .await
            .map_err(|e| RestError::from(tonic::Status::internal(format!("reading blob: {e}"))))?;
    }
    let reader = tokio_util::io::ReaderStream::with_capacity(file.take(len), READ_CHUNK);
    let mut response = Response::new(Body::from_stream(reader));
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
        h.insert(header::CONTENT_LENGTH, v);
    }
    if status == StatusCode::PARTIAL_CONTENT
        && let Ok(v) = HeaderValue::from_str(&format!("bytes {first}-{}/{size}", first + len - 1))
    {
        h.insert(header::CONTENT_RANGE, v);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_range(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn ranges_are_read_as_rfc_9110_says() {
        assert_eq!(range(&HeaderMap::new(), 10), Ok(None));
        assert_eq!(range(&with_range("bytes=0-4"), 10), Ok(Some((0, 4))));
        assert_eq!(range(&with_range("bytes=5-"), 10), Ok(Some((5, 9))));
        assert_eq!(range(&with_range("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(range(&with_range("bytes=-30"), 10), Ok(Some((0, 9))));
        assert_eq!(range(&with_range("bytes=8-100"), 10), Ok(Some((8, 9))));
        assert_eq!(range(&with_range("bytes=10-"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=5-2"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=x-2"), 10), Err(()));
        assert_eq!(range(&with_range("bytes=0-1,4-5"), 10), Ok(None));
        assert_eq!(range(&with_range("items=0-1"), 10), Ok(None));
    }

    #[test]
    fn an_upload_frame_is_an_upload_request() {
        use prost::Message;
        let frame = upload_frame(b"hello");
        assert_eq!(frame[0], 0);
        assert_eq!(u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize, frame.len() - 5);
        let msg = puppet_proto::pb::wechaty::puppet::UploadRequest::decode(&frame[5..]).unwrap();
        assert_eq!(msg.chunk, b"hello");
    }
}
