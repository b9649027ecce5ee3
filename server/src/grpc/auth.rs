//! Token authentication, as the official server does it: `authorization: Wechaty <token>`, or when
//! that header is absent, the HTTP/2 `:authority` (the official clients put the raw token there and,
//! in plaintext mode, send no header at all). Only the Puppet service is wrapped; health and
//! reflection stay open. Failures are throttled per remote address ([`AuthThrottle`]): past the
//! burst, an address's calls are refused with `RESOURCE_EXHAUSTED` without looking at them.

use std::sync::Arc;
use std::task::{Context, Poll};

use puppet_proto::ids::Shown;
use subtle::ConstantTimeEq;
use tonic::Status;

use crate::net::{AuthThrottle, PeerInfo};
use tonic::server::NamedService;
use tower::Service;

/// The token a request presents: `authorization: Wechaty <token>`, else its `:authority`. The
/// messages are upstream's, so existing bots show the errors their users already know.
pub fn presented<B>(req: &http::Request<B>) -> Result<String, Status> {
    let presented: String = match req.headers().get(http::header::AUTHORIZATION) {
        Some(v) => v.to_str().map_err(|_| Status::unauthenticated("No Authorization found."))?.to_owned(),
        None => match req.uri().authority() {
            Some(a) => format!("Wechaty {}", a.as_str()),
            None => return Err(Status::unauthenticated("No Authorization found.")),
        },
    };
    let mut parts = presented.split_whitespace();
    let (scheme, given) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !scheme.eq_ignore_ascii_case("wechaty") {
        return Err(Status::unauthenticated(format!("Invalid authorization type: \"{}\"", Shown(scheme))));
    }
    Ok(given.to_owned())
}

/// The answer to a token no account holds.
pub fn wrong_token(given: &str) -> Status {
    Status::unauthenticated(format!("Invalid Wechaty TOKEN \"{}\"", Shown(given)))
}

/// Checks a request's credentials against the expected token.
pub fn check<B>(req: &http::Request<B>, token: &str) -> Result<(), Status> {
    let given = presented(req)?;
    if bool::from(given.as_bytes().ct_eq(token.as_bytes())) { Ok(()) } else { Err(wrong_token(&given)) }
}

/// A tower service that answers `UNAUTHENTICATED` unless [`check`] passes.
#[derive(Clone)]
pub struct RequireToken<S> {
    inner: S,
    token: Arc<str>,
    throttle: AuthThrottle,
}

impl<S> RequireToken<S> {
    /// Wraps `inner`; failures count toward `throttle`.
    pub fn new(inner: S, token: Arc<str>, throttle: AuthThrottle) -> Self {
        Self { inner, token, throttle }
    }
}

impl<S: NamedService> NamedService for RequireToken<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for RequireToken<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let token = self.token.clone();
        let given = |t: &str| bool::from(t.as_bytes().ct_eq(token.as_bytes())).then_some(());
        match authenticate(&req, &self.throttle, given) {
            Ok(()) => Box::pin(self.inner.call(req)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

/// Authenticates a call: refused unchecked (`RESOURCE_EXHAUSTED`) while its address is throttled;
/// otherwise `find` maps the presented token to what it opens, and a token that opens nothing is
/// `UNAUTHENTICATED` and counts toward the throttle.
pub fn authenticate<B, T>(
    req: &http::Request<B>,
    throttle: &AuthThrottle,
    find: impl FnOnce(&str) -> Option<T>,
) -> Result<T, Status> {
    let ip = req.extensions().get::<PeerInfo>().map(|p| p.addr.ip());
    if let Some(wait) = ip.and_then(|ip| throttle.check(ip).err()) {
        return Err(Status::resource_exhausted(format!(
            "too many failed authentication attempts from this address; retry in {} s",
            wait.as_secs()
        )));
    }
    let found = presented(req).and_then(|given| find(&given).ok_or_else(|| wrong_token(&given)));
    if let Err(status) = &found {
        if let Some(ip) = ip {
            throttle.failed(ip);
        }
        tracing::debug!(reason = status.message(), "rejected unauthenticated call");
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(auth: Option<&str>, authority: Option<&str>) -> http::Request<()> {
        let uri = match authority {
            Some(a) => format!("http://{a}/wechaty.Puppet/Version"),
            None => "/wechaty.Puppet/Version".to_owned(),
        };
        let mut b = http::Request::builder().uri(uri);
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn header_or_authority_must_carry_the_token() {
        let t = "insecure_abc";
        assert!(check(&req(Some("Wechaty insecure_abc"), Some("127.0.0.1:1")), t).is_ok());
        assert!(check(&req(None, Some("insecure_abc")), t).is_ok());
        let e = check(&req(Some("Bearer insecure_abc"), None), t).unwrap_err();
        assert_eq!(e.message(), "Invalid authorization type: \"Bearer\"");
        let e = check(&req(Some("Wechaty nope"), Some("insecure_abc")), t).unwrap_err();
        assert_eq!(e.message(), "Invalid Wechaty TOKEN \"nope\"", "a present header wins over :authority");
        let e = check(&req(None, Some("127.0.0.1:8788")), t).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert_eq!(check(&req(None, None), t).unwrap_err().message(), "No Authorization found.");
    }
}
