//! Request size by method: only the calls that carry files may send messages up to
//! `--max-message-mib` (the Python client sends files inline); every other call's message is held to
//! `--max-request-kib`. The check reads the 5-byte gRPC frame header before the message itself is
//! buffered, so a 100 MiB `Ding` is refused without ever being read — many of them at once cannot
//! make the server's memory spike.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use tonic::Status;
use tonic::body::Body;
use tower::{Layer, Service};

/// The methods whose messages may carry a whole file.
const FILE_METHODS: [&str; 6] = [
    "/wechaty.Puppet/MessageSendFile",
    "/wechaty.Puppet/MessageSendFileStream",
    "/wechaty.Puppet/ContactAvatar",
    "/wechaty.Puppet/Upload",
    "/puppet_rs.v1.MockWorld/SendFile",
    "/puppet_rs.v1.OfficialAccount/Reply",
];

/// See the module docs.
#[derive(Clone, Copy, Debug)]
pub struct RequestSizeLayer {
    /// Largest message of a call that carries no file, in bytes.
    pub max_request: usize,
}

impl<S> Layer<S> for RequestSizeLayer {
    type Service = RequestSize<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequestSize { inner, max_request: self.max_request }
    }
}

/// See [`RequestSizeLayer`].
#[derive(Clone, Debug)]
pub struct RequestSize<S> {
    inner: S,
    max_request: usize,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// The first gRPC frame's message length, once its 5-byte header has arrived: `(length, bytes read
/// so far, the body's rest)`; `None` for a body that ends first (the codec then says what is wrong).
async fn first_length(mut body: Body) -> (Option<usize>, Bytes, Body) {
    let mut head = BytesMut::new();
    while head.len() < 5 {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            // Errors and the end are the codec's to report, unchanged.
            _ => return (None, head.freeze(), body),
        }
    }
    let length = (&head[1..5]).get_u32() as usize;
    (Some(length), head.freeze(), body)
}

impl<S> Service<http::Request<Body>> for RequestSize<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if FILE_METHODS.contains(&req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        // The ready service goes with this call; a clone waits for the next (tower's usual dance).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max = self.max_request;
        Box::pin(async move {
            let (parts, body) = req.into_parts();
            let (length, head, rest) = first_length(body).await;
            if let Some(length) = length.filter(|l| *l > max) {
                let status = Status::resource_exhausted(format!(
                    "the request message is {length} bytes; calls that carry no file take at most {max} \
                     (--max-request-kib)"
                ));
                return Ok(status.into_http());
            }
            let body = Body::new(Prefixed { head: (!head.is_empty()).then_some(head), rest });
            inner.call(http::Request::from_parts(parts, body)).await
        })
    }
}

/// A body whose first bytes were read already.
struct Prefixed {
    head: Option<Bytes>,
    rest: Body,
}

impl http_body::Body for Prefixed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        let this = self.get_mut();
        if let Some(head) = this.head.take() {
            return Poll::Ready(Some(Ok(Frame::data(head))));
        }
        Pin::new(&mut this.rest).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let mut hint = self.rest.size_hint();
        let head = self.head.as_ref().map_or(0, |h| h.len() as u64);
        hint.set_lower(hint.lower() + head);
        if let Some(upper) = hint.upper() {
            hint.set_upper(upper + head);
        }
        hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grpc_frame(len: u32, payload: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.extend_from_slice(&[0]);
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        b.freeze()
    }

    #[tokio::test]
    async fn the_length_is_read_from_the_header_and_the_bytes_are_kept() {
        let body = Body::new(http_body_util::Full::new(grpc_frame(3, b"abc")));
        let (length, head, rest) = first_length(body).await;
        assert_eq!(length, Some(3));
        let all = Prefixed { head: Some(head), rest }.collect().await.unwrap().to_bytes();
        assert_eq!(&all[..], &grpc_frame(3, b"abc")[..], "nothing is lost");
        let (length, _, _) = first_length(Body::new(http_body_util::Full::new(Bytes::from_static(&[0, 0])))).await;
        assert_eq!(length, None, "a short body is left to the codec");
    }
}
