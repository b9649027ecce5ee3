//! The side HTTP port: liveness, readiness and metrics for orchestrators, and `/qrcode`, the login
//! QR for people (a pod's terminal is not where anyone scans from), and the backend's webhook when
//! it has one (the Official Account callback URL); and `wechaty.Puppet` for HTTP clients: the REST
//! routes its annotations declare ([`rest`]), live events over SSE and WebSocket ([`events`]) and
//! files ([`files`]).

pub mod events;
pub mod files;
pub mod openapi;
pub mod rest;
pub mod settings;

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

use crate::metrics::Port;
use crate::net::{self, AuthThrottle, Gate, TrackRequestsLayer, Tracked};

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The accounts this process serves.
    pub accounts: crate::account::Accounts,
    /// The process's metrics registry.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// `--qrcode-public`: `/qrcode` without a token.
    pub qrcode_public: bool,
    /// `--admin-token`: opens every account's `/qrcode`.
    pub admin_token: Option<Arc<str>>,
    /// Failed tokens are throttled per address, as on the gRPC port.
    pub throttle: AuthThrottle,
    /// What discovery answers for the accounts served here: host and gRPC port.
    pub discovery: (String, u16),
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

/// What the REST, event and file handlers read.
#[derive(Clone)]
struct Side {
    http: HttpState,
    rest: Arc<rest::Rest>,
    limits: HttpLimits,
    /// `/openapi.json`, made once.
    openapi: Arc<str>,
}

/// The side port's routes; the accounts' webhooks (each with its own body limit) are found by path,
/// then the REST routes (which read their bodies within the limit themselves, `/upload` streaming).
pub fn router(state: HttpState, limits: HttpLimits) -> anyhow::Result<Router> {
    let rest = Arc::new(rest::Rest::builtin()?);
    let openapi = openapi::document(&rest).to_string().into();
    let side = Side { http: state.clone(), rest, limits, openapi };
    let dynamic = Router::new()
        .route("/events/ws", get(events_ws))
        .route("/openapi.json", get(openapi_json))
        .route("/console", get(console))
        .fallback(dispatch)
        .with_state(side);
    Ok(Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/qrcode", get(qrcode_page))
        .route("/v0/hosties/{token}", get(hosties))
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(limits.max_body))
        .merge(dynamic)
        .layer(TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, limits.request_timeout)))
}

/// An Official Account's callback, handed to the account whose webhook path it is; else a REST
/// route.
async fn dispatch(
    State(s): State<Side>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: axum::extract::Request,
) -> Response {
    if let Some(routes) = s.http.accounts.webhook(req.uri().path()) {
        return routes.oneshot(req).await.into_response();
    }
    let found = match s.rest.find(req.method(), req.uri().path()) {
        Ok(found) => found,
        Err(e) => return e.into_response(),
    };
    match found {
        rest::Found::None => (StatusCode::NOT_FOUND, "no such page\n").into_response(),
        rest::Found::OtherVerbs(verbs) => {
            let allow = verbs.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
            let message =
                format!("{} answers {allow}, not {}", puppet_proto::ids::Shown(req.uri().path()), req.method());
            let mut r = rest::status_response(StatusCode::METHOD_NOT_ALLOWED, tonic::Code::Unimplemented, &message);
            if let Ok(v) = http::HeaderValue::from_str(&allow) {
                r.headers_mut().insert(http::header::ALLOW, v);
            }
            r
        }
        rest::Found::Route(route, vars) => {
            let route = route.clone();
            match serve_rest(&s, peer, &route, vars, req).await {
                Ok(r) => r,
                Err(e) => e.into_response(),
            }
        }
    }
}

/// The account of a REST request: `Authorization: Wechaty <token>` or `Bearer <token>`, or where
/// a browser cannot set headers (EventSource, WebSocket, a download link) `?token=`. Wrong tokens
/// count toward the per-address throttle.
fn rest_account(
    s: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: Option<&str>,
    token_in_query: bool,
) -> Result<Arc<crate::account::Account>, Box<Response>> {
    if let Err(wait) = s.throttle.check(peer.ip()) {
        let message = format!("too many wrong tokens from this address; retry in {} s", wait.as_secs());
        let mut r = rest::status_response(StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted, &message);
        if let Ok(v) = http::HeaderValue::from_str(&wait.as_secs().to_string()) {
            r.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        return Err(Box::new(r));
    }
    let refuse = |message: &str| {
        let mut r = rest::status_response(StatusCode::UNAUTHORIZED, tonic::Code::Unauthenticated, message);
        r.headers_mut().insert(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"));
        r
    };
    let given = match headers.get(axum::http::header::AUTHORIZATION) {
        Some(value) => {
            let scheme_and_token = value.to_str().ok().and_then(|v| v.trim().split_once(' '));
            match scheme_and_token {
                Some((scheme, token))
                    if scheme.eq_ignore_ascii_case("wechaty") || scheme.eq_ignore_ascii_case("bearer") =>
                {
                    Some(token.trim().to_owned())
                }
                _ => {
                    return Err(Box::new(refuse(
                        "the Authorization header is not `Bearer <token>` or `Wechaty <token>`",
                    )));
                }
            }
        }
        None if token_in_query => query.and_then(|q| {
            form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == "token").map(|(_, v)| v.into_owned())
        }),
        None => None,
    };
    let Some(given) = given else {
        return Err(Box::new(refuse("no token: send `Authorization: Bearer <token>` with the account's token")));
    };
    match s.accounts.by_token(&given) {
        Some(account) => Ok(account),
        None => {
            s.throttle.failed(peer.ip());
            Err(Box::new(refuse("the token is wrong: no account here has it")))
        }
    }
}

/// One REST call.
async fn serve_rest(
    s: &Side,
    peer: SocketAddr,
    route: &rest::Route,
    vars: Vec<(String, String)>,
    req: axum::extract::Request,
) -> Result<Response, rest::RestError> {
    let name = route.method.name();
    let browser = matches!(name, "Event" | "Download");
    let query = req.uri().query().map(str::to_owned);
    let account = match rest_account(&s.http, peer, req.headers(), query.as_deref(), browser) {
        Ok(a) => a,
        Err(refused) => return Ok(*refused),
    };
    match name {
        "Event" => {
            let last_event_id = req.headers().get("last-event-id").and_then(|v| v.to_str().ok());
            let start = events::start_at(last_event_id, query.as_deref(), &["token"])?;
            Ok(events::sse(&account, s.rest.pool().clone(), start))
        }
        "Download" => {
            let id = vars.iter().find(|(f, _)| f == "id").map(|(_, v)| v.as_str()).unwrap_or_default();
            if id.is_empty() {
                return Err(rest::RestError::bad("missing path parameter `id`"));
            }
            files::download(&account, id, req.headers()).await
        }
        "Upload" => files::upload(&account, &route.method, req.into_body()).await,
        _ if route.method.is_client_streaming() || route.method.is_server_streaming() => {
            Err(tonic::Status::unimplemented(format!(
                "the streaming method {name} has no REST form here; call it over gRPC"
            ))
            .into())
        }
        _ => {
            let limited = http_body_util::Limited::new(req.into_body(), s.limits.max_body);
            let body = match http_body_util::BodyExt::collect(limited).await {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Err(rest::RestError {
                        status: StatusCode::PAYLOAD_TOO_LARGE,
                        code: tonic::Code::InvalidArgument,
                        message: format!(
                            "the request body is larger than {} KiB (--http-max-body-kib), or was cut short",
                            s.limits.max_body / 1024
                        ),
                    });
                }
            };
            let input = rest::Input { vars, query: query.as_deref(), body, ignored: &[] };
            let msg = rest::bind(route, input)?;
            let max_answer = (account.config.max_message_mib as usize).saturating_mul(1 << 20);
            let answer = rest::call_unary(&account, &route.method, &msg, max_answer).await?;
            let json = rest::to_json(&answer)?;
            Ok(([(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"))], json)
                .into_response())
        }
    }
}

/// `GET /openapi.json`: the REST routes' OpenAPI 3.1 document (no token: it describes, it does
/// not serve).
async fn openapi_json(State(s): State<Side>) -> Response {
    ([(http::header::CONTENT_TYPE, "application/json")], s.openapi.to_string()).into_response()
}

/// `GET /console`: the web console, one self-contained page (no CDN) over the REST routes and
/// SSE. The page itself holds nothing: it asks for the token.
async fn console() -> Response {
    let page = include_str!("console.html");
    (
        [
            (http::header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything the page loads comes from here; no framing by other sites.
            (
                http::header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; frame-ancestors 'none'",
            ),
        ],
        page,
    )
        .into_response()
}

/// `GET /events/ws`.
async fn events_ws(
    State(s): State<Side>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: http::Uri,
    upgrade: Result<axum::extract::ws::WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let account = match rest_account(&s.http, peer, &headers, uri.query(), true) {
        Ok(a) => a,
        Err(refused) => return *refused,
    };
    let start = match events::start_at(None, uri.query(), &["token"]) {
        Ok(start) => start,
        Err(e) => return e.into_response(),
    };
    match upgrade {
        Ok(upgrade) => events::websocket(&account, s.rest.pool().clone(), start, upgrade),
        Err(rejection) => rest::status_response(
            StatusCode::BAD_REQUEST,
            tonic::Code::InvalidArgument,
            &format!("/events/ws is a WebSocket: {rejection}"),
        ),
    }
}

/// Wechaty's token discovery: where the account of a token is served. Clients only learn what
/// they would learn by connecting; unknown tokens are throttled per address like wrong ones.
async fn hosties(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
    if let Err(wait) = s.throttle.check(peer.ip()) {
        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", wait.as_secs().to_string())], "{}").into_response();
    }
    let (here, port) = &s.discovery;
    match crate::account::discover(&s.accounts, &token, here, *port) {
        Some((host, port)) => {
            let body = serde_json::json!({ "host": host, "ip": host, "port": port });
            (StatusCode::OK, json, body.to_string()).into_response()
        }
        None => {
            s.throttle.failed(peer.ip());
            (StatusCode::NOT_FOUND, json, "{}").into_response()
        }
    }
}

/// Serves `app` on `listener` through `gate` until `stop`: then no new connection is taken, and
/// open ones finish their requests and close. Every connection is a task owned by `tasks`.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    gate: Gate,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    stop: CancellationToken,
    tasks: TaskTracker,
) {
    let conn_limits = gate.limits();
    let metrics = gate.metrics().clone();
    net::accept_loop(listener, Port::Http, gate, stop.clone(), move |admitted| {
        let net::Admitted { stream, peer, slot } = admitted;
        let (app, stop, tls, metrics) = (app.clone(), stop.clone(), tls.clone(), metrics.clone());
        tasks.spawn(async move {
            // With TLS material the port also speaks HTTPS (discovery clients ask https://),
            // told apart by the first byte as on the gRPC port.
            let conn =
                match tokio::time::timeout(conn_limits.handshake_timeout, crate::tls::classify(stream, tls)).await {
                    Ok(Ok(conn)) => conn,
                    Ok(Err(e)) => {
                        metrics.refused(Port::Http, crate::metrics::RefuseReason::tls);
                        tracing::debug!(%peer, error = %e, "side-port connection dropped during the TLS handshake");
                        return;
                    }
                    Err(_) => {
                        metrics.refused(Port::Http, crate::metrics::RefuseReason::handshake_timeout);
                        return;
                    }
                };
            let io = Tracked::new(conn, peer, slot, conn_limits.idle_timeout);
            let info = io.peer().clone();
            let app = TrackRequestsLayer.layer(app);
            let service = hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(info.clone());
                req.extensions_mut().insert(ConnectInfo(peer));
                app.clone().oneshot(req)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
            let conn = builder.serve_connection(TokioIo::new(io), service).with_upgrades();
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

/// `/readyz?account=NAME`.
#[derive(Debug, Default, Deserialize)]
struct AccountQuery {
    account: Option<String>,
}

/// Ready when every account served here is (or, with `?account=`, that one).
async fn readyz(State(s): State<HttpState>, Query(q): Query<AccountQuery>) -> (StatusCode, String) {
    let accounts = match &q.account {
        Some(name) => match s.accounts.by_name(name) {
            Some(a) => vec![a],
            None => return (StatusCode::NOT_FOUND, "no such account here\n".into()),
        },
        None => s.accounts.all(),
    };
    let waiting: Vec<&str> = accounts.iter().filter(|a| !a.ready()).map(|a| a.name.as_str()).collect();
    match (accounts.is_empty(), waiting.is_empty()) {
        (true, _) => (StatusCode::SERVICE_UNAVAILABLE, "no account served here\n".into()),
        (false, true) => (StatusCode::OK, "logged in\n".into()),
        (false, false) if !s.accounts.from_file() => (StatusCode::SERVICE_UNAVAILABLE, "not logged in\n".into()),
        (false, false) => (StatusCode::SERVICE_UNAVAILABLE, format!("not logged in: {}\n", waiting.join(" "))),
    }
}

async fn metrics(State(s): State<HttpState>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let accounts = s.accounts.all();
    let parts: Vec<(Option<&str>, String)> =
        accounts.iter().map(|a| (a.label.as_deref(), a.metrics.text(&a.bus, &a.blobs, &a.store))).collect();
    let text = crate::metrics::render(&s.metrics, &parts);
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

/// `/qrcode?token=…&account=…`.
#[derive(Debug, Default, Deserialize)]
struct QrQuery {
    token: Option<String>,
    account: Option<String>,
}

/// The account whose `/qrcode` page a request may see: it carries that account's token
/// (`?token=`, or `Authorization: Wechaty <token>` / `Bearer <token>`), or the admin token with
/// `?account=NAME`; with one account and `--qrcode-public`, no token. Failures count toward the
/// per-address throttle.
fn qrcode_account(
    s: &HttpState,
    peer: SocketAddr,
    headers: &HeaderMap,
    query: &QrQuery,
) -> Result<Arc<crate::account::Account>, Box<Response>> {
    let named =
        |name: &str| s.accounts.by_name(name).ok_or_else(|| boxed((StatusCode::NOT_FOUND, "no such account here\n")));
    if s.qrcode_public {
        return match (&query.account, s.accounts.all().as_slice()) {
            (Some(name), _) => named(name),
            (None, [only]) => Ok(only.clone()),
            (None, _) => Err(boxed((StatusCode::BAD_REQUEST, "this server has many accounts: add ?account=NAME\n"))),
        };
    }
    if let Err(wait) = s.throttle.check(peer.ip()) {
        let text = format!("too many wrong tokens from this address; retry in {} s\n", wait.as_secs());
        return Err(boxed((StatusCode::TOO_MANY_REQUESTS, [("retry-after", wait.as_secs().to_string())], text)));
    }
    let from_header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("wechaty") || scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let given = query.token.as_deref().or(from_header);
    if let Some(given) = given {
        let admin = s
            .admin_token
            .as_ref()
            .is_some_and(|a| bool::from(subtle::ConstantTimeEq::ct_eq(given.as_bytes(), a.as_bytes())));
        match (&query.account, admin) {
            (Some(name), true) => return named(name),
            (Some(name), false) => {
                if let Some(a) = s.accounts.by_name(name).filter(|a| a.token_is(given)) {
                    return Ok(a);
                }
            }
            (None, _) => {
                if let Some(a) = s.accounts.by_token(given) {
                    return Ok(a);
                }
            }
        }
    }
    s.throttle.failed(peer.ip());
    let why =
        if given.is_some() { "the token is wrong" } else { "the login QR is the account: this page needs its token" };
    Err(boxed((
        StatusCode::UNAUTHORIZED,
        [("www-authenticate", "Bearer")],
        format!(
            "{why}. Open /qrcode?token=<token> (the account's token, which the server printed), or \
             /qrcode?account=<name>&token=<admin token>, or start the server with --qrcode-public.\n"
        ),
    )))
}

fn boxed(response: impl IntoResponse) -> Box<Response> {
    Box::new(response.into_response())
}

/// A page that shows the login QR while one is pending and the account once logged in, and reloads
/// itself every two seconds. It needs the account's token (see [`qrcode_account`]).
async fn qrcode_page(
    State(s): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(query): Query<QrQuery>,
) -> Response {
    match qrcode_account(&s, peer, &headers, &query) {
        Ok(account) => qrcode_html(&account).await.into_response(),
        Err(refused) => *refused,
    }
}

async fn qrcode_html(s: &crate::account::Account) -> axum::response::Html<String> {
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
    use super::*;
    use crate::events::StartAt;
    use crate::net::ThrottleSettings;
    use axum::http::{HeaderName, HeaderValue, Request};
    use proptest::prelude::*;
    use puppet_proto::event::EventKind;

    const TOKEN: &str = "s3cret-token";

    #[test]
    fn names_are_escaped_into_the_page() {
        assert_eq!(
            super::escape(r#"<b>"Tom" & 'Jerry'</b>"#),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
        assert_eq!(super::escape("张伟"), "张伟");
    }

    /// The side port's routes over one account on the built-in mock world (logged in when
    /// `login`), with its data directory to remove after.
    async fn app(login: bool, throttle: ThrottleSettings) -> (Router, std::path::PathBuf) {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("puppet-http-{}", uuid::Uuid::new_v4()));
        let args = ["puppet-server", "--durability", "memory", "--login-step-ms", "0", "--autostart", "false"];
        let mut config = crate::config::Config::try_parse_from(args).unwrap();
        config.data_dir = Some(dir.clone());
        config.ready_when = crate::config::ReadyWhen::Started;
        let spec = crate::accounts::AccountSpec { name: "default".into(), token: TOKEN.into(), config, line: 0 };
        let shared = crate::account::Shared {
            max_message: 4 << 20,
            front_stop: tokio_util::sync::CancellationToken::new(),
            changed: tokio::sync::watch::Sender::new(0),
        };
        let accounts = crate::account::Accounts::new(None, Vec::new(), None, shared);
        accounts.start(&[spec], false).await.unwrap();
        if login {
            let account = accounts.by_name("default").unwrap();
            let mut sub = account.bus.subscribe(StartAt::Live { replay_state: true }).unwrap();
            account.backend.start().await.unwrap();
            let logged_in = async {
                let mut batch = Vec::new();
                while !batch.iter().any(|e: &Arc<crate::events::Envelope>| e.kind == EventKind::Login) {
                    batch.clear();
                    sub.next_batch(&mut batch).await.unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(10), logged_in).await.expect("the mock account logs in");
        }
        let state = HttpState {
            accounts,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            qrcode_public: false,
            admin_token: None,
            throttle: AuthThrottle::new(throttle, crate::metrics::NetMetrics::default()),
            discovery: ("127.0.0.1".into(), 1),
        };
        let limits = HttpLimits {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_body: 16 << 10,
        };
        (router(state, limits).unwrap(), dir)
    }

    /// A GET as the accept loop hands it over (with the peer's address), answered in-process.
    async fn get(
        app: &Router,
        uri: http::Uri,
        headers: &[(HeaderName, HeaderValue)],
        peer: SocketAddr,
    ) -> (StatusCode, String) {
        let mut req = Request::get(uri).body(axum::body::Body::empty()).unwrap();
        for (name, value) in headers {
            req.headers_mut().append(name.clone(), value.clone());
        }
        req.extensions_mut().insert(ConnectInfo(peer));
        let response = app.clone().oneshot(req).await.unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20).await.expect("a body under 1 MiB");
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    /// Percent-encodes everything but unreserved characters.
    fn pct(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
                b => format!("%{b:02X}"),
            })
            .collect()
    }

    /// Query strings: raw ones over every character a URI's query may hold (malformed `%`
    /// escapes, `+`, repeated and empty keys included), and arbitrary text percent-encoded.
    fn query() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-zA-Z0-9%&=+;,./:@!$'()*?~_-]{0,120}",
            "(token|tok%65n|t%6Fken|%74oken|x|)(=[a-zA-Z0-9%+]{0,40})?(&(token|x|)(=[a-zA-Z0-9%+]{0,20})?){0,4}",
            prop::collection::vec((any::<String>(), any::<String>()), 0..4).prop_map(|pairs| {
                pairs.iter().map(|(k, v)| format!("{}={}", pct(k), pct(v))).collect::<Vec<_>>().join("&")
            }),
        ]
    }

    /// Header values over every byte a header value may hold (visible ASCII, tab, obs-text).
    fn header_value() -> impl Strategy<Value = HeaderValue> {
        let byte = prop_oneof![0x20u8..0x7f, Just(b'\t'), 0x80u8..=0xff];
        prop_oneof![
            prop::collection::vec(byte, 0..80),
            "(Bearer|bearer|WECHATY|Wechaty|Basic|)( {0,3})(s3cret-token|s3cret|[ -~]{0,30})( {0,2})"
                .prop_map(String::into_bytes),
        ]
        .prop_filter_map("not a header value", |bytes| HeaderValue::from_bytes(&bytes).ok())
    }

    fn headers() -> impl Strategy<Value = Vec<(HeaderName, HeaderValue)>> {
        let name = prop_oneof![
            3 => Just(http::header::AUTHORIZATION),
            1 => "[a-z][a-z0-9-]{0,15}".prop_filter_map("a header name", |n| HeaderName::try_from(n).ok()),
            1 => Just(http::header::COOKIE),
        ];
        prop::collection::vec((name, header_value()), 0..4)
    }

    /// Whether the request carries the account's token where `/qrcode` looks for it.
    fn carries_token(query: &str, headers: &[(HeaderName, HeaderValue)]) -> bool {
        query.contains(TOKEN)
            || headers
                .iter()
                .find(|(n, _)| n == http::header::AUTHORIZATION)
                .is_some_and(|(_, v)| v.as_bytes().windows(TOKEN.len()).any(|w| w == TOKEN.as_bytes()))
    }

    #[tokio::test]
    async fn a_wrong_token_is_throttled_and_the_right_one_opens_the_page() {
        let (app, dir) = app(false, ThrottleSettings { burst: 2, per_sec: 0.001 }).await;
        let peer: SocketAddr = "192.0.2.1:5000".parse().unwrap();
        let open = |q: &str| format!("/qrcode?{q}").parse::<http::Uri>().unwrap();
        assert_eq!(get(&app, open(&format!("token={TOKEN}")), &[], peer).await.0, StatusCode::OK);
        let (status, body) = get(&app, open(&format!("token={TOKEN}&token={TOKEN}")), &[], peer).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(!body.contains(TOKEN), "{body}");
        for _ in 0..2 {
            assert_eq!(get(&app, open("token=nope"), &[], peer).await.0, StatusCode::UNAUTHORIZED);
        }
        let (status, body) = get(&app, open(&format!("token={TOKEN}")), &[], peer).await;
        assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every file in `tests/fixtures/hostile/qrcode-query/` is a query string `/qrcode` answers
    /// with a 4xx, briefly and without the token.
    #[tokio::test]
    async fn hostile_query_fixtures_get_a_4xx() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile/qrcode-query");
        let (app, blobs) = app(false, ThrottleSettings { burst: 1_000, per_sec: 1.0 }).await;
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let query = std::fs::read_to_string(&path).unwrap();
            let uri = format!("/qrcode?{}", query.trim_end()).parse::<http::Uri>().unwrap();
            let (status, body) = get(&app, uri, &[], "192.0.2.7:1".parse().unwrap()).await;
            assert!(
                [StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED].contains(&status),
                "{}: {status}",
                path.display()
            );
            assert!(body.len() < 512 && !body.contains(TOKEN), "{}: {body}", path.display());
            seen += 1;
        }
        assert!(seen > 0, "no fixtures in {}", dir.display());
        std::fs::remove_dir_all(blobs).unwrap();
    }

    proptest! {
        // Each case sends up to eight requests to a fresh server, so that some get throttled.
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn arbitrary_queries_and_headers_get_a_4xx_or_the_page(
            cases in prop::collection::vec((query(), headers(), 0u8..4), 1..8),
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (app, dir) = app(false, ThrottleSettings { burst: 3, per_sec: 0.001 }).await;
                for (query, headers, peer) in cases {
                    let uri = format!("/qrcode?{query}").parse::<http::Uri>();
                    prop_assert!(uri.is_ok(), "the query strategy made an invalid URI: {}", query);
                    let uri = uri.unwrap();
                    let peer = SocketAddr::from(([192, 0, 2, peer], 5000));
                    let (status, body) = get(&app, uri, &headers, peer).await;
                    prop_assert!(
                        [StatusCode::OK, StatusCode::BAD_REQUEST, StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS]
                            .contains(&status),
                        "{} for {:?} {:?}: {}", status, query, headers, body
                    );
                    if status == StatusCode::OK {
                        prop_assert!(carries_token(&query, &headers) && body.contains("Not logged in"), "{}", body);
                    } else {
                        prop_assert!(body.len() < 512, "{}", body);
                    }
                    prop_assert!(status == StatusCode::OK || !body.contains(TOKEN), "the token never appears in a refusal");
                }
                std::fs::remove_dir_all(dir).unwrap();
                Ok(())
            })?;
        }
    }

    proptest! {
        // Each case logs a mock account in.
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn the_right_token_opens_the_page_whatever_else_comes_with_it(
            extra in prop::collection::vec(("[a-su-z][a-z]{0,7}", any::<String>()), 0..4),
            at in any::<prop::sample::Index>(),
            other_headers in prop::collection::vec(
                ("x-[a-z]{1,10}".prop_map(|n| HeaderName::try_from(n).unwrap()), header_value()), 0..3),
            how in 0u8..3,
            scheme in "(Bearer|bearer|BEARER|Wechaty|wechaty)",
            pad in " {0,3}",
        ) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let (app, dir) = app(true, ThrottleSettings { burst: 1, per_sec: 0.001 }).await;
                let mut params: Vec<String> = extra.iter().map(|(k, v)| format!("{k}={}", pct(v))).collect();
                let mut headers = other_headers;
                match how {
                    0 => params.insert(at.index(params.len() + 1), format!("token={TOKEN}")),
                    1 => params.insert(at.index(params.len() + 1), format!("token={}", pct(TOKEN))),
                    _ => headers.push((
                        http::header::AUTHORIZATION,
                        HeaderValue::try_from(format!("{scheme} {pad}{TOKEN}{pad}")).unwrap(),
                    )),
                }
                let uri = format!("/qrcode?{}", params.join("&")).parse::<http::Uri>().unwrap();
                let (status, body) = get(&app, uri, &headers, "192.0.2.9:1".parse().unwrap()).await;
                prop_assert_eq!(status, StatusCode::OK, "{}", body);
                prop_assert!(body.contains("Logged in as Puppet Bot"), "{}", body);
                std::fs::remove_dir_all(dir).unwrap();
                Ok(())
            })?;
        }
    }
}
