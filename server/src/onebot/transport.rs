//! OneBot transports: the HTTP API and forward WebSocket on the account's listener(s), reverse
//! WebSocket clients, and HTTP POST event reporting.
//!
//! Why axum's `ws` for the server side and tokio-tungstenite for the reverse client: axum is the
//! HTTP stack the server already has, and its `ws` feature is tungstenite underneath, so both ends
//! share one WebSocket implementation (and one set of frame limits).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{self, WebSocket, WebSocketUpgrade};
use axum::extract::{FromRequestParts, Request};
use axum::response::{IntoResponse, Response};
use futures_util::{SinkExt, StreamExt};
use hmac::{Hmac, Mac};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use puppet_proto::filebox::FileBoxSource;
use puppet_proto::ids::{MessageId, Shown};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::Core;
use super::actions::{self, Failure, reply};
use super::ids::Kind;
use super::settings::{Reverse, Role, Settings};

/// Binds the listeners `settings` name (one when HTTP and WS share an address).
pub async fn bind(settings: &Settings) -> anyhow::Result<Vec<(SocketAddr, TcpListener)>> {
    let mut addrs = Vec::new();
    for a in [settings.http, settings.ws].into_iter().flatten() {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    let mut out = Vec::new();
    for a in addrs {
        let l = TcpListener::bind(a).await.map_err(|e| anyhow::anyhow!("OneBot cannot listen on {a}: {e}"))?;
        let local = l.local_addr()?;
        out.push((local, l));
    }
    Ok(out)
}

#[derive(Clone)]
struct Listener {
    core: Arc<Core>,
    http: bool,
    ws: bool,
    clients: Arc<Semaphore>,
    stop: CancellationToken,
}

/// How long a client may take to send a request's headers, and then its body.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long open connections get to finish once the listener stops.
const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Serves one listener until `stop`: at most `PUPPET_ONEBOT_MAX_CONNECTIONS` connections at once
/// (the next waits in the kernel's backlog), each with a header-read timeout. Every connection is
/// owned here and ends (gracefully, then by force) when `stop` comes.
pub async fn serve(core: Arc<Core>, listener: TcpListener, addr: SocketAddr, stop: CancellationToken) {
    let s = core.settings();
    // A listener bound to port 0 serves whatever the settings gave that address.
    let is = |want: Option<SocketAddr>| want.is_some_and(|w| w == addr || (w.port() == 0 && w.ip() == addr.ip()));
    let state = Listener {
        http: is(s.http),
        ws: is(s.ws),
        clients: Arc::new(Semaphore::new(s.max_clients)),
        core: core.clone(),
        stop: stop.clone(),
    };
    let app = axum::Router::new().fallback(handle).with_state(state);
    let permits = Arc::new(Semaphore::new(s.max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => break,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of descriptors and the like: wait a little rather than spin.
                    tracing::warn!(%addr, error = %e, "OneBot listener cannot accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        _ = stream.set_nodelay(true);
        let (app, stop) = (app.clone(), stop.clone());
        connections.spawn(async move {
            use tower::ServiceExt;
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                app.clone().oneshot(req.map(Body::new))
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(HEADER_TIMEOUT);
            let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = stop.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    _ = tokio::time::timeout(CLOSE_GRACE, conn).await;
                }
            }
            drop(permit);
        });
    }
    connections.close();
    _ = tokio::time::timeout(CLOSE_GRACE, connections.wait()).await;
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn refuse(status: StatusCode, retcode: i64, wording: &str) -> Response {
    json_response(status, &reply(&Err(Failure { retcode, wording: wording.into() }), None))
}

/// The token a request carries: `Authorization: Bearer …` (or `Token …`), else `?access_token=`.
fn presented(headers: &HeaderMap, query: &str) -> Option<String> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        for scheme in ["Bearer ", "bearer ", "Token ", "token "] {
            if let Some(t) = v.strip_prefix(scheme) {
                return Some(t.trim().to_owned());
            }
        }
        return Some(v.to_owned());
    }
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "access_token").map(|(_, v)| v.into_owned())
}

/// `None` when the request may go on; 401 without a token, 403 with a wrong one. Digests are
/// compared in constant time, so neither length nor content leaks through timing.
fn check_token(core: &Core, headers: &HeaderMap, query: &str) -> Option<Response> {
    let want = core.settings().access_token.as_ref()?;
    match presented(headers, query) {
        None => Some(refuse(StatusCode::UNAUTHORIZED, 1401, "an access token is required (Authorization: Bearer …)")),
        Some(got) => {
            let (a, b) = (Sha256::digest(got.as_bytes()), Sha256::digest(want.as_bytes()));
            if bool::from(subtle::ConstantTimeEq::ct_eq(a.as_slice(), b.as_slice())) {
                None
            } else {
                Some(refuse(StatusCode::FORBIDDEN, 1403, "the access token is wrong"))
            }
        }
    }
}

async fn handle(axum::extract::State(l): axum::extract::State<Listener>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    if let Some(n) = path.strip_prefix("/download/") {
        return download(&l.core, n, &query).await;
    }
    if let Some(r) = check_token(&l.core, req.headers(), &query) {
        return r;
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    if l.ws && upgrade {
        let role = match path.as_str() {
            "/" => Role::Universal,
            "/api" | "/api/" => Role::Api,
            "/event" | "/event/" => Role::Event,
            _ => return refuse(StatusCode::NOT_FOUND, 1404, "WebSocket paths are /, /api and /event"),
        };
        let Ok(permit) = l.clients.clone().try_acquire_owned() else {
            return refuse(StatusCode::SERVICE_UNAVAILABLE, 1500, "too many OneBot connections; retry later");
        };
        let (mut parts, _) = req.into_parts();
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(u) => u,
            Err(e) => return e.into_response(),
        };
        let (core, stop) = (l.core.clone(), l.stop.clone());
        let max = l.core.settings().max_request;
        return upgrade.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| async move {
            forward_socket(core, role, socket, stop).await;
            drop(permit);
        });
    }
    if !l.http {
        return refuse(StatusCode::NOT_FOUND, 1404, "this address serves OneBot WebSocket only (/, /api, /event)");
    }
    let action = path.trim_start_matches('/').trim_end_matches('/');
    if action.is_empty() || action.contains('/') || !actions::known(action) {
        return refuse(StatusCode::NOT_FOUND, 1404, &format!("unknown action `{}`", Shown(action)));
    }
    let action = action.to_owned();
    let params = match http_params(&l.core, req, &query).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let result = l.core.dispatch(&action, &params).await;
    json_response(StatusCode::OK, &reply(&result, None))
}

/// An HTTP action's parameters: the query string, then the JSON or form body over it.
async fn http_params(core: &Core, req: Request, query: &str) -> Result<Value, Response> {
    let mut params: Map<String, Value> = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k != "access_token")
        .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
        .collect();
    if req.method() != Method::POST {
        return Ok(Value::Object(params));
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    let max = core.settings().max_request;
    let body = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(req.into_body(), max)).await {
        Ok(Ok(b)) => b,
        Err(_) => return Err(refuse(StatusCode::REQUEST_TIMEOUT, 1400, "the body did not arrive in time")),
        Ok(Err(_)) => {
            return Err(refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                1400,
                &format!("the body is larger than {max} bytes (PUPPET_ONEBOT_MAX_REQUEST_KIB)"),
            ));
        }
    };
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Object(params));
    }
    match content_type.as_deref() {
        Some("application/json") | None => match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(o)) => params.extend(o),
            Ok(other) => {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    1400,
                    &format!("the body must be a JSON object, not {}", super::message::type_name(&other)),
                ));
            }
            Err(e) => return Err(refuse(StatusCode::BAD_REQUEST, 1400, &format!("the body is not JSON: {e}"))),
        },
        Some("application/x-www-form-urlencoded") => {
            params.extend(form_urlencoded::parse(&body).map(|(k, v)| (k.into_owned(), Value::String(v.into_owned()))));
        }
        Some(other) => {
            return Err(refuse(
                StatusCode::NOT_ACCEPTABLE,
                1400,
                &format!("Content-Type `{}` is not accepted: send application/json or a form", Shown(other)),
            ));
        }
    }
    Ok(Value::Object(params))
}

async fn download(core: &Core, n: &str, query: &str) -> Response {
    let not_found = || refuse(StatusCode::NOT_FOUND, 1404, "no such file");
    let Ok(n) = n.parse::<i64>() else { return not_found() };
    let sig = form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "sig").map(|(_, v)| v.into_owned());
    if !sig.is_some_and(|s| core.download_signed(n, &s)) {
        return refuse(StatusCode::FORBIDDEN, 1403, "this download link is not signed by this server");
    }
    let Ok(Some((Kind::Message, id))) = core.ids.lookup(n).await else { return not_found() };
    let id = MessageId::from(id);
    let file = match core.backend.message(&id).await {
        Ok(m) if m.kind == puppet_proto::model::MessageType::Image => {
            match core.backend.message_image(&id, puppet_proto::model::ImageType::Hd).await {
                Ok(f) => Ok(f),
                Err(_) => core.backend.message_file(&id).await,
            }
        }
        Ok(_) => core.backend.message_file(&id).await,
        Err(e) => Err(e),
    };
    let file = match file {
        Ok(f) => f,
        Err(e) => return refuse(StatusCode::NOT_FOUND, 1404, &e.to_string()),
    };
    let bytes = match &file.source {
        FileBoxSource::Base64(b) => {
            use base64::Engine;
            match puppet_proto::filebox::BASE64.decode(b.trim()) {
                Ok(b) => b,
                Err(_) => return refuse(StatusCode::INTERNAL_SERVER_ERROR, 1500, "the stored file is not readable"),
            }
        }
        FileBoxSource::Uuid(blob) => match core.blobs.read_all(blob).await {
            Ok(b) => b,
            Err(e) => return refuse(StatusCode::NOT_FOUND, 1404, &e.to_string()),
        },
        FileBoxSource::Url { url, .. } => {
            return match HeaderValue::from_str(url) {
                Ok(v) => (StatusCode::FOUND, [(header::LOCATION, v)]).into_response(),
                Err(_) => not_found(),
            };
        }
        FileBoxSource::QrCode(_) => return not_found(),
    };
    let name: String = file.name.chars().filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\').collect();
    let mut r = Response::new(Body::from(bytes));
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    r
}

/// What a connection sends.
enum Out {
    Text(String),
    Close(u16, String),
}

/// One OneBot WebSocket session over channels: `incoming` are the peer's text frames, `out`
/// what to send. Events (for Universal and Event) start with `lifecycle.connect` once the account
/// is logged in; actions
/// (Universal and API) run at most `PUPPET_ONEBOT_CONCURRENT_ACTIONS` at once, each answered with
/// its `echo`. Returns when the peer goes, the connection falls behind, or `stop`.
async fn session(
    core: Arc<Core>,
    role: Role,
    mut incoming: mpsc::Receiver<String>,
    out: mpsc::Sender<Out>,
    stop: CancellationToken,
) {
    let events = role != Role::Api;
    let actions = role != Role::Event;
    let mut rx: Option<broadcast::Receiver<Arc<str>>> = events.then(|| core.subscribe());
    if events {
        // `connect` names the bot (NoneBot takes `self_id` from it): it waits for the login.
        if core.logged_in(&stop).await.is_none() {
            return;
        }
        _ = out.send(Out::Text(core.lifecycle("connect").to_string())).await;
    }
    let permits = Arc::new(Semaphore::new(core.settings().concurrent_actions));
    let running = tokio_util::task::TaskTracker::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                _ = out.try_send(Out::Close(1001, "the server is stopping".into()));
                break;
            }
            ev = async { rx.as_mut().unwrap().recv().await }, if rx.is_some() => match ev {
                Ok(text) => if out.send(Out::Text(text.to_string())).await.is_err() { break },
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(behind = n, "a OneBot connection fell behind; closing it");
                    _ = out.send(Out::Close(1008, format!("fell {n} events behind (PUPPET_ONEBOT_QUEUE)"))).await;
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            frame = incoming.recv() => {
                let Some(frame) = frame else { break };
                if !actions {
                    continue;
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { break };
                let (core, out) = (core.clone(), out.clone());
                running.spawn(async move {
                    let answer = ws_action(&core, &frame).await;
                    _ = out.send(Out::Text(answer.to_string())).await;
                    drop(permit);
                });
            }
        }
    }
    running.close();
    // Actions in flight answer if they can; the connection closes after them.
    _ = tokio::time::timeout(std::time::Duration::from_secs(3), running.wait()).await;
}

async fn ws_action(core: &Arc<Core>, frame: &str) -> Value {
    let req: Value = match serde_json::from_str(frame) {
        Ok(v) => v,
        Err(e) => return reply(&Err(Failure::bad(format!("the frame is not JSON: {e}"))), None),
    };
    let echo = req.get("echo");
    let Some(obj) = req.as_object() else {
        return reply(&Err(Failure::bad("the frame must be an object with `action` and `params`")), None);
    };
    let action = match obj.get("action") {
        Some(Value::String(a)) => a.clone(),
        Some(other) => {
            return reply(
                &Err(Failure::bad(format!("`action` must be a string, not {}", super::message::type_name(other)))),
                echo,
            );
        }
        None => return reply(&Err(Failure::bad("`action` is required")), echo),
    };
    let params = obj.get("params").cloned().unwrap_or(Value::Null);
    reply(&core.dispatch(&action, &params).await, echo)
}

async fn forward_socket(core: Arc<Core>, role: Role, socket: WebSocket, stop: CancellationToken) {
    let (mut sink, mut stream) = socket.split();
    let (in_tx, in_rx) = mpsc::channel::<String>(1);
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(core.settings().concurrent_actions + 1);
    let reading = async move {
        while let Some(Ok(m)) = stream.next().await {
            let text = match m {
                ws::Message::Text(t) => t.to_string(),
                ws::Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                ws::Message::Close(_) => break,
                _ => continue,
            };
            if in_tx.send(text).await.is_err() {
                break;
            }
        }
    };
    let writing = async move {
        while let Some(o) = out_rx.recv().await {
            let m = match o {
                Out::Text(t) => ws::Message::Text(t.into()),
                Out::Close(code, reason) => {
                    _ = sink.send(ws::Message::Close(Some(ws::CloseFrame { code, reason: reason.into() }))).await;
                    break;
                }
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
        _ = sink.close().await;
    };
    let session = session(core, role, in_rx, out_tx, stop);
    tokio::select! {
        _ = reading => {}
        _ = async { tokio::join!(session, writing) } => {}
    }
}

/// Keeps a reverse WebSocket to `r.url` open until `stop`: connects once the account is logged
/// in (`X-Self-ID` is its `user_id`), and again `PUPPET_ONEBOT_RECONNECT_MS` after it drops.
pub async fn reverse(core: Arc<Core>, r: Reverse, stop: CancellationToken) {
    use tokio_tungstenite::tungstenite::{self as tung, client::IntoClientRequest};
    loop {
        let Some(self_id) = core.logged_in(&stop).await else { return };
        let mut request = match r.url.as_str().into_client_request() {
            Ok(req) => req,
            Err(e) => {
                tracing::error!(url = %r.url, error = %e, "OneBot reverse WebSocket URL is unusable");
                return;
            }
        };
        let h = request.headers_mut();
        h.insert("X-Self-ID", HeaderValue::from(self_id));
        h.insert("X-Client-Role", HeaderValue::from_static(r.role.header()));
        h.insert(header::USER_AGENT, HeaderValue::from_static("puppet-rs OneBot/v11"));
        if let Some(t) = &core.settings().access_token
            && let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}"))
        {
            h.insert(header::AUTHORIZATION, v);
        }
        let max = core.settings().max_request;
        let config = tung::protocol::WebSocketConfig::default().max_message_size(Some(max)).max_frame_size(Some(max));
        let connect = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
        let connected = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(std::time::Duration::from_secs(10), connect) => c,
        };
        match connected {
            Ok(Ok((socket, _))) => {
                tracing::info!(url = %r.url, role = r.role.header(), "OneBot reverse WebSocket connected");
                let (mut sink, mut stream) = socket.split();
                let (in_tx, in_rx) = mpsc::channel::<String>(1);
                let (out_tx, mut out_rx) = mpsc::channel::<Out>(core.settings().concurrent_actions + 1);
                let reading = async move {
                    while let Some(Ok(m)) = stream.next().await {
                        let text = match m {
                            tung::Message::Text(t) => t.to_string(),
                            tung::Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                            tung::Message::Close(_) => break,
                            _ => continue,
                        };
                        if in_tx.send(text).await.is_err() {
                            break;
                        }
                    }
                };
                let writing = async move {
                    while let Some(o) = out_rx.recv().await {
                        let m = match o {
                            Out::Text(t) => tung::Message::Text(t.into()),
                            Out::Close(code, reason) => {
                                let frame = tung::protocol::CloseFrame { code: code.into(), reason: reason.into() };
                                _ = sink.send(tung::Message::Close(Some(frame))).await;
                                break;
                            }
                        };
                        if sink.send(m).await.is_err() {
                            break;
                        }
                    }
                    _ = sink.close().await;
                };
                let session = session(core.clone(), r.role, in_rx, out_tx, stop.clone());
                tokio::select! {
                    _ = reading => {}
                    _ = async { tokio::join!(session, writing) } => {}
                }
                tracing::info!(url = %r.url, "OneBot reverse WebSocket closed");
            }
            Ok(Err(e)) => tracing::warn!(url = %r.url, error = %e, "OneBot reverse WebSocket could not connect"),
            Err(_) => tracing::warn!(url = %r.url, "OneBot reverse WebSocket connection timed out"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(core.settings().reconnect) => {}
        }
    }
}

/// `X-Signature`'s value for `body`.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha1={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Posts every event to `url` in order until `stop`; a JSON object in the answer is a quick
/// operation on that event. A target that cannot keep up loses events (logged), never memory.
pub async fn post(core: Arc<Core>, url: String, stop: CancellationToken) {
    let client = match reqwest::Client::builder().timeout(core.settings().post_timeout).build() {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "OneBot HTTP POST client could not be built");
            return;
        }
    };
    let mut rx = core.subscribe();
    loop {
        let body = tokio::select! {
            _ = stop.cancelled() => return,
            ev = rx.recv() => match ev {
                Ok(b) => b,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(%url, dropped = n, "OneBot HTTP POST target is too slow; events were dropped");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        let mut req = client
            .post(&url)
            .header(header::CONTENT_TYPE, "application/json")
            .header("X-Self-ID", core.self_id().to_string())
            .header(header::USER_AGENT, "puppet-rs OneBot/v11");
        if let Some(secret) = &core.settings().secret {
            req = req.header("X-Signature", signature(secret, body.as_bytes()));
        }
        let sent = tokio::select! {
            _ = stop.cancelled() => return,
            r = req.body(body.to_string()).send() => r,
        };
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%url, error = %e, "OneBot HTTP POST failed");
                continue;
            }
        };
        let status = resp.status();
        if !status.is_success() {
            tracing::warn!(%url, %status, "OneBot HTTP POST target refused the event");
            continue;
        }
        let Ok(answer) = resp.bytes().await else { continue };
        if answer.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let Ok(Value::Object(op)) = serde_json::from_slice::<Value>(&answer) else { continue };
        let Ok(context) = serde_json::from_str::<Value>(&body) else { continue };
        let params = json!({"context": context, "operation": op});
        if let Err(f) = core.call(".handle_quick_operation", &params).await {
            tracing::info!(%url, wording = %f.wording, "a OneBot quick operation failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_hmac_sha1_hex() {
        // RFC 2202 test case 2.
        assert_eq!(signature("Jefe", b"what do ya want for nothing?"), "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79");
    }

    #[test]
    fn tokens_come_from_the_header_or_the_query() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h, "a=1&access_token=q%20t"), Some("q t".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer abc"));
        assert_eq!(presented(&h, "access_token=q"), Some("abc".into()));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Token xyz"));
        assert_eq!(presented(&h, ""), Some("xyz".into()));
    }
}
