//! Backend errors to gRPC statuses, and the codec's own errors made precise.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::{Code, Status};
use tower::{Layer, Service};

use crate::backend::BackendError;
use crate::blobs::BlobError;

/// Longest status message sent (a backend's message plus whatever it quotes).
const MAX_MESSAGE: usize = 1024;

/// A status message made safe to send: control characters escaped and the length bounded, so no
/// client input (however it got into the message) can make a status huge or rewrite a terminal.
fn bounded(message: String) -> String {
    if message.len() <= MAX_MESSAGE && !message.chars().any(char::is_control) {
        return message;
    }
    let mut out = String::with_capacity(message.len().min(MAX_MESSAGE + 8));
    for c in message.chars() {
        if out.len() >= MAX_MESSAGE {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Maps a blob store error to the status a client can act on (through [`BackendError`], the one
/// mapping of blob errors).
pub fn blob_status(err: BlobError) -> Status {
    match BackendError::from(err) {
        BackendError::Internal(m) => Status::internal(bounded(m)),
        other => to_status("blob store", other),
    }
}

/// Maps a backend error to the gRPC status a client can act on.
pub fn to_status(backend: &str, err: BackendError) -> Status {
    let status = to_status_unbounded(backend, err);
    Status::new(status.code(), bounded(status.message().to_owned()))
}

fn to_status_unbounded(backend: &str, err: BackendError) -> Status {
    match err {
        BackendError::Unsupported(op) => {
            Status::unimplemented(format!("the `{backend}` backend does not support `{op}`"))
        }
        e @ BackendError::NotFound { .. } => Status::not_found(e.to_string()),
        BackendError::InvalidArgument(m) => Status::invalid_argument(m),
        BackendError::FailedPrecondition(m) => Status::failed_precondition(m),
        BackendError::ResourceExhausted(m) => Status::resource_exhausted(m),
        BackendError::Internal(m) => Status::internal(format!("`{backend}` backend: {m}")),
        e @ BackendError::PlatformLimit { .. } => Status::unimplemented(format!("`{backend}` backend: {e}")),
        BackendError::Unauthenticated(m) => Status::unauthenticated(m),
        BackendError::PermissionDenied(m) => Status::permission_denied(m),
        BackendError::AlreadyExists(m) => Status::already_exists(m),
        BackendError::Unavailable(m) => Status::unavailable(m),
        BackendError::Absent(m) => Status::not_found(m),
    }
}

/// Makes tonic's codec errors precise: a request message over the size limit is
/// `RESOURCE_EXHAUSTED` (gRPC's code for it; tonic says `OUT_OF_RANGE`) naming the flag, and a
/// malformed gRPC frame is `INVALID_ARGUMENT` (tonic says `INTERNAL`). Both arrive as
/// trailers-only responses, whose status is in the headers.
#[derive(Clone, Copy, Debug, Default)]
pub struct CodecStatusLayer;

impl<S> Layer<S> for CodecStatusLayer {
    type Service = CodecStatus<S>;
    fn layer(&self, inner: S) -> Self::Service {
        CodecStatus { inner }
    }
}

/// See [`CodecStatusLayer`].
#[derive(Clone, Debug)]
pub struct CodecStatus<S> {
    inner: S,
}

/// The precise status for one of tonic's codec errors, if `status` is one.
fn precise(status: &Status) -> Option<Status> {
    let message = status.message();
    match status.code() {
        Code::OutOfRange if message.starts_with("Error, decoded message length too large") => {
            Some(Status::resource_exhausted(format!(
                "the request message is too large for this server ({}); raise --max-message-mib, or send \
                 files with Upload and a Uuid FileBox",
                message.trim_start_matches("Error, decoded message length too large: ")
            )))
        }
        Code::Internal if message.starts_with("protocol error") => {
            Some(Status::invalid_argument(format!("malformed gRPC request: {message}")))
        }
        _ => None,
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for CodecStatus<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut response = fut.await?;
            if let Some(better) = Status::from_header_map(response.headers()).as_ref().and_then(precise) {
                _ = better.add_header(response.headers_mut());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn messages_are_bounded_and_escaped() {
        let s = to_status("mock", BackendError::InvalidArgument(format!("x{}\u{1b}[2J", "y".repeat(1 << 20))));
        assert!(s.message().len() <= MAX_MESSAGE + 4, "{}", s.message().len());
        let s = to_status("mock", BackendError::InvalidArgument("bad\u{1b}[2J".into()));
        assert_eq!(s.message(), "bad\\u{1b}[2J");
        let s = to_status("mock", BackendError::not_found("contact", puppet_proto::ids::ContactId("z".repeat(1000))));
        assert!(s.message().len() < 120, "ids are shown cut: {}", s.message());
    }

    #[test]
    fn codec_errors_become_precise() {
        let big = Status::out_of_range("Error, decoded message length too large: found 9 bytes, the limit is: 4 bytes");
        let p = precise(&big).unwrap();
        assert_eq!(p.code(), Code::ResourceExhausted);
        assert!(p.message().contains("found 9 bytes") && p.message().contains("--max-message-mib"), "{}", p.message());
        let frame = Status::internal("protocol error: received message with invalid compression flag: 7");
        assert_eq!(precise(&frame).unwrap().code(), Code::InvalidArgument);
        assert!(precise(&Status::internal("other")).is_none());
    }

    #[test]
    fn each_error_has_its_code() {
        let s = to_status("mock", BackendError::Unsupported("room_qrcode"));
        assert_eq!(s.code(), Code::Unimplemented);
        assert_eq!(s.message(), "the `mock` backend does not support `room_qrcode`");
        let s = to_status("mock", BackendError::not_found("contact", "wxid_x"));
        assert_eq!((s.code(), s.message()), (Code::NotFound, "contact `wxid_x` not found"));
        assert_eq!(to_status("m", BackendError::InvalidArgument("x".into())).code(), Code::InvalidArgument);
        assert_eq!(to_status("m", BackendError::FailedPrecondition("x".into())).code(), Code::FailedPrecondition);
        assert_eq!(to_status("m", BackendError::ResourceExhausted("x".into())).code(), Code::ResourceExhausted);
        assert_eq!(to_status("m", BackendError::Internal("x".into())).code(), Code::Internal);
        let s = to_status("oa", BackendError::PlatformLimit { op: "room_list", reason: "no groups" });
        assert_eq!(
            (s.code(), s.message()),
            (Code::Unimplemented, "`oa` backend: `room_list` is impossible here: no groups")
        );
        assert_eq!(to_status("m", BackendError::Unauthenticated("x".into())).code(), Code::Unauthenticated);
        assert_eq!(to_status("m", BackendError::PermissionDenied("x".into())).code(), Code::PermissionDenied);
        assert_eq!(to_status("m", BackendError::AlreadyExists("x".into())).code(), Code::AlreadyExists);
        assert_eq!(to_status("m", BackendError::Unavailable("x".into())).code(), Code::Unavailable);
    }
}
