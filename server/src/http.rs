//! The side HTTP port: liveness, readiness and metrics for orchestrators, and `/qrcode`, the login
//! QR for people (a pod's terminal is not where anyone scans from), and the backend's webhook when
//! it has one (the Official Account callback URL).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::{Layer, ServiceExt};
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::events::EventBus;
use crate::metrics::Port;
use crate::net::{self, AuthThrottle, Gate, TrackRequestsLayer, Tracked};

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The event bus, which knows the login state.
    pub bus: EventBus,
    /// What readiness means.
    pub ready_when: crate::config::ReadyWhen,
    /// The metrics registry.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The blob store, for its size.
    pub blobs: crate::blobs::BlobStore,
    /// The backend, for the account's name.
    pub backend: std::sync::Arc<dyn crate::backend::Backend>,
    /// The account's token: `/qrcode` shows the account only to whoever holds it.
    pub token: Arc<str>,
    /// `--qrcode-public`: `/qrcode` without the token.
    pub qrcode_public: bool,
    /// Failed tokens are throttled per address, as on the gRPC port.
    pub throttle: AuthThrottle,
}

/// The side port's request limits.
#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    /// Time for a request's headers to arrive (slowloris).
    pub header_read_timeout: Duration,
    /// Time for a whole request, answered 408 after.
    pub request_timeout: Duration,
    /// Largest request body on the server's own routes (the webhook has its own limit).
    pub max_body: usize,
}

/// The side port's routes; `webhook` (the backend's callback routes, with their own body limit)
/// is merged in.
pub fn router(state: HttpState, webhook: Option<Router>, limits: HttpLimits) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/qrcode", get(qrcode_page))
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(limits.max_body))
        .merge(webhook.unwrap_or_default())
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout))
}

/// Serves `app` on `listener` through `gate` until `stop`: then no new connection is taken, and
/// open ones finish their requests and close. Every connection is a task owned by `tasks`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Gate,
    limits: HttpLimits,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let idle_timeout = gate.limits().idle_timeout;
    net::accept_loop(listener, Port::Http, gate, stop.clone(), move |admitted| {
        let net::Admitted { stream, peer, slot } = admitted;
        let io = Tracked::new(stream, peer, slot, idle_timeout);
        let info = io.peer().clone();
        let app = TrackRequestsLayer.layer(app.clone());
        let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(info.clone());
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let stop = stop.clone();
        tasks.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(conn);
            let done = tokio::select! {
                done = conn.as_mut() => done,
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = done {
                tracing::debug!(%peer, error = %e, "side-port connection ended");
            }
        });
    })
    .await
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready_when == crate::config::ReadyWhen::Started || s.bus.logged_in() {
        (StatusCode::OK, "logged in\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not logged in\n")
    }
}

async fn metrics(State(s): State<HttpState>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let text = s.metrics.render(&s.bus, &s.blobs);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// `/qrcode?token=…`.
#[derive(Debug, Default, Deserialize)]
struct QrQuery {
    token: Option<String>,
}

/// The refusal of a `/qrcode` request that does not carry the account's token (`?token=`, or
/// `Authorization: Wechaty <token>` / `Bearer <token>`); `None` lets it through. Failures count
/// toward the per-address throttle.
fn qrcode_refusal(s: &HttpState, peer: SocketAddr, headers: &HeaderMap, query: &QrQuery) -> Option<Response> {
    if s.qrcode_public {
        return None;
    }
    if let Err(wait) = s.throttle.check(peer.ip()) {
        let text = format!("too many wrong tokens from this address; retry in {} s\n", wait.as_secs());
        return Some(
            (StatusCode::TOO_MANY_REQUESTS, [("retry-after", wait.as_secs().to_string())], text).into_response(),
        );
    }
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("wechaty") || scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let given = query.token.as_deref().or(from_header);
    let ok = given.is_some_and(|t| bool::from(subtle::ConstantTimeEq::ct_eq(t.as_bytes(), s.token.as_bytes())));
    if ok {
        return None;
    }
    s.throttle.failed(peer.ip());
    let why =
        if given.is_some() { "the token is wrong" } else { "the login QR is the account: this page needs its token" };
    Some((
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Bearer")],
        format!("{why}. Open /qrcode?token=<token> (the token the server printed), or start the server with --qrcode-public.\n"),
    )
        .into_response())
}

/// A page that shows the login QR while one is pending and the account once logged in, and reloads
/// itself every two seconds. It needs the account's token (see [`qrcode_refusal`]).
async fn qrcode_page(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<QrQuery>,
) -> Response {
    if let Some(refused) = qrcode_refusal(&s, peer, &headers, &query) {
        return refused;
    }
    qrcode_html(&s).await.into_response()
}

async fn qrcode_html(s: &HttpState) -> axum::response::Html<String> {
    let view = s.bus.login_view();
    let (title, body) = match (&view.contact_id, &view.qrcode) {
        (Some(id), _) => {
            let name = s.backend.contact(&id.as_str().into()).await.map(|c| c.name).unwrap_or_else(|_| id.clone());
            (format!("Logged in as {}", escape(&name)), format!("<p class=\"who\">{}</p>", escape(id)))
        }
        (None, Some(qr)) => {
            let svg = qrcode::QrCode::new(qr.as_bytes())
                .map(|q| q.render::<qrcode::render::svg::Color>().min_dimensions(240, 240).build())
                .unwrap_or_default();
            ("Scan to log in".to_owned(), format!("<div class=\"qr\">{svg}</div><p class=\"text\">{}</p>", escape(qr)))
        }
        (None, None) => ("Not logged in".to_owned(), "<p>No QR code yet: the login starts with Start.</p>".to_owned()),
    };
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>puppet-rs: {title}</title><style>body{{font-family:sans-serif;text-align:center;margin-top:3em}}\
         .text{{color:#888;font-size:small}}</style></head><body><h1 id=\"state\">{title}</h1>{body}</body></html>"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_escaped_into_the_page() {
        assert_eq!(
            super::escape(r#"<b>"Tom" & 'Jerry'</b>"#),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
        assert_eq!(super::escape("张伟"), "张伟");
    }
}
