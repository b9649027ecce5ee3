//! puppet-server: one WeChat bot account, held by a [`backend::Backend`], served over the
//! `wechaty.Puppet` gRPC contract plus the `puppet_rs.v1` extensions.
//!
//! Layout: [`config`] (flags), [`grpc`] (translation between the contract and the backend),
//! [`events`] (the sequenced event bus), [`backend`] (the trait and its implementations),
//! [`http`] (the side port), [`net`] (connection limits of both ports), [`tasks`] (ownership of
//! background work). This file wires them and owns the order of shutdown.

pub mod backend;
pub mod blobs;
pub mod config;
pub mod events;
pub mod fetch;
pub mod grpc;
pub mod health;
pub mod http;
pub mod metrics;
pub mod mqtt;
pub mod net;
pub mod store;
pub mod tasks;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1::event_feed_server::EventFeedServer;
use puppet_proto::pb::puppet_rs::v1::mock_world_server::MockWorldServer;
use puppet_proto::pb::puppet_rs::v1::official_account_server::OfficialAccountServer;
use puppet_proto::pb::wechaty::puppet_server::PuppetServer;
use tokio::net::TcpListener;

use crate::backend::{Backend, BackendKind};
use crate::config::{Config, TokenSource};
use crate::events::{EventBus, EventSink};
use crate::grpc::auth::RequireToken;
use crate::grpc::mock_world::MockWorldService;
use crate::grpc::{EventFeedService, PuppetService};
use crate::tasks::Tasks;

/// HTTP/2 flow-control window per stream, in bytes.
const FLOW_WINDOW: u32 = 4 << 20;

/// How long background tasks get to stop after the front doors have drained.
const BACKGROUND_GRACE: Duration = Duration::from_secs(5);

/// A backend as built from the flags.
pub struct Built {
    /// The backend behind `wechaty.Puppet`.
    pub backend: Arc<dyn Backend>,
    /// The same backend when it is the mock, for the `MockWorld` control service.
    pub mock: Option<backend::mock::MockBackend>,
    /// The same backend when it is an Official Account, for its extension service and webhook.
    pub official_account: Option<backend::official_account::OfficialAccount>,
}

/// Builds the configured backend, wired to the event sink and the account's store; its loops belong
/// to `tasks`.
pub fn build_backend(
    config: &Config,
    sink: EventSink,
    blobs: blobs::BlobStore,
    metrics: &metrics::Metrics,
    tasks: Tasks,
    store: &store::Store,
) -> anyhow::Result<Built> {
    match config.backend {
        BackendKind::Mock => {
            let world = match &config.world {
                Some(path) => backend::mock::world::WorldSpec::load(path)?,
                None => backend::mock::world::WorldSpec::builtin(),
            };
            let options = backend::mock::MockOptions {
                world,
                login_step: Duration::from_millis(config.login_step_ms),
                print_qr: true,
                import_file: Some(config.data_dir().join("mock-world.json")),
            };
            let mock = backend::mock::MockBackend::new(options, store.clone(), sink, blobs, tasks)?;
            Ok(Built { backend: Arc::new(mock.clone()), mock: Some(mock), official_account: None })
        }
        BackendKind::OfficialAccount => {
            let settings = backend::official_account::settings::OaSettings::from_flags(&config.oa)?;
            if config.http_listen.is_none() {
                anyhow::bail!(
                    "PUPPET_HTTP_LISTEN is not set: the official-account backend serves its webhook ({}) on the \
                     side port, e.g. PUPPET_HTTP_LISTEN=0.0.0.0:8080",
                    settings.webhook_path
                );
            }
            let outbound = config.fetch.build()?;
            let oa = backend::official_account::OfficialAccount::new(
                settings,
                outbound,
                sink,
                blobs,
                metrics.oa.clone(),
                tasks,
                store.clone(),
            )?;
            Ok(Built { backend: Arc::new(oa.clone()), mock: None, official_account: Some(oa) })
        }
    }
}

/// Runs the server until SIGINT/SIGTERM, then stops in order: the front doors (no new connection;
/// event streams end with OK; open calls get the grace period), then the background tasks, then
/// the backend's final save.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    // One rustls provider for the whole process (gRPC TLS, MQTT, the Official Account API client).
    _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let (token, token_source) = config.resolve_token()?;
    let store = store::Store::open(&config.data_dir(), config.store_options())
        .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", config.data_dir().display()))?;
    let bus = EventBus::with_store(&store, config.bus_limits());
    let blob_dir = config.blob_dir();
    let blobs = blobs::BlobStore::open(&blob_dir, config.blob_limits())
        .map_err(|e| anyhow::anyhow!("cannot open the blob store at {}: {e}", blob_dir.display()))?;
    let metrics = Arc::new(metrics::Metrics::new());
    // Front doors (accept loops, connections, the MQTT bridge) stop first; background work after.
    let front = Tasks::new();
    let background = Tasks::new();
    let Built { backend, mock, official_account } =
        build_backend(&config, bus.sink(), blobs.clone(), &metrics, background.clone(), &store)?;
    let heartbeat = Duration::from_secs(config.heartbeat_secs);

    let grpc_listener = bind(config.listen_addr()?, "gRPC").await?;
    let grpc_addr = grpc_listener.local_addr()?;
    let http_listener = match config.http_listen {
        Some(a) => Some(bind(a, "HTTP").await?),
        None => None,
    };
    let http_addr = http_listener.as_ref().map(|l| l.local_addr()).transpose()?;
    let gate = net::Gate::new(config.conn_limits(), metrics.net.clone());
    let throttle = net::AuthThrottle::new(config.auth_throttle(), metrics.net.clone());

    let (health, health_service) = tonic_health::server::health_reporter();
    {
        let (bus, health, ready_when) = (bus.clone(), health.clone(), config.ready_when);
        background.spawn("readiness", |stop| health::follow_login(bus, health, ready_when, stop));
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(puppet_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(puppet_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let mqtt_id = match (&config.mqtt_url, &config.mqtt_client_id) {
        (Some(_), None) => mqtt::default_client_id(&config.data_dir())?,
        (_, id) => id.clone().unwrap_or_default(),
    };
    let mqtt = config.mqtt_url.clone().map(|url| mqtt::MqttConfig {
        url,
        client_id: mqtt_id,
        events: config
            .mqtt_events
            .as_ref()
            .map(|e| e.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()),
        secret: config.mqtt_secret.clone().filter(|s| !s.is_empty()),
    });
    if let Some(m) = &mqtt {
        mqtt::validate(m)?;
    }
    let max_message = (config.max_message_mib as usize).saturating_mul(1024 * 1024);
    let tls = tls_setup(&config)?;
    let token: Arc<str> = token.into();
    let puppet = PuppetServer::new(PuppetService::new(backend.clone(), bus.clone(), blobs.clone(), heartbeat))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);
    let feed = EventFeedServer::new(EventFeedService::new(bus.clone(), heartbeat));

    print_banner(&Banner {
        config: &config,
        grpc: grpc_addr,
        http: http_addr,
        token: &token,
        source: token_source,
        backend: backend.name(),
        webhook: official_account.as_ref().map(|oa| {
            let s = oa.settings();
            (s.webhook_path.clone(), s.mode.describe())
        }),
        tls: &tls,
        mqtt: mqtt.as_ref(),
    });

    if let Some(listener) = http_listener {
        let webhook = official_account.clone().map(backend::official_account::webhook::router);
        let state = http::HttpState {
            bus: bus.clone(),
            ready_when: config.ready_when,
            metrics: metrics.clone(),
            blobs: blobs.clone(),
            store: store.clone(),
            backend: backend.clone(),
            token: token.clone(),
            qrcode_public: config.qrcode_public,
            throttle: throttle.clone(),
        };
        let limits = config.http_limits();
        let app = http::router(state, webhook, limits);
        let (gate, connections) = (gate.clone(), front.tracker());
        front.spawn("http-side-port", |stop| http::serve(listener, app, gate, limits, stop, connections));
    }
    if let Some(m) = mqtt {
        let (backend, bus) = (backend.clone(), bus.clone());
        // A front door: it stops with the others, answering the commands it has taken first.
        front.spawn("mqtt-bridge", |stop| async move {
            if let Err(e) = mqtt::run(m, backend, bus, stop).await {
                tracing::error!(error = %e, "MQTT bridge stopped");
            }
        });
    }
    if config.autostart {
        let backend = backend.clone();
        background.spawn_cancellable("autostart", async move {
            if let Err(e) = backend.start().await {
                tracing::error!(error = %e, "autostart failed; a client's Start call will retry");
            }
        });
    }

    let auth = |svc| RequireToken::new(svc, token.clone(), throttle.clone());
    let stop_grpc = front.stop_signal();
    let server = tonic::transport::Server::builder()
        // HTTP/2's default 64 KiB windows cap uploads at ~100 MB/s on loopback; files want more in flight.
        .initial_stream_window_size(Some(FLOW_WINDOW))
        .initial_connection_window_size(Some(2 * FLOW_WINDOW))
        .max_concurrent_streams(Some(config.max_concurrent_streams))
        .http2_max_header_list_size(Some(config.max_header_list_kib.saturating_mul(1024)))
        .http2_keepalive_interval(Some(Duration::from_secs(config.keepalive_secs)))
        .http2_keepalive_timeout(Some(Duration::from_secs(config.keepalive_timeout_secs)))
        // hyper's own defaults are 20 and 1024, but tonic passes "unset" for the latter, which h2
        // reads as unlimited: both are set explicitly.
        .http2_max_pending_accept_reset_streams(Some(config.max_pending_resets as usize))
        .http2_max_local_error_reset_streams(Some(config.max_local_resets as usize))
        .layer(net::TrackRequestsLayer)
        .layer(metrics::RpcMetricsLayer(metrics.clone()))
        .layer(grpc::status::CodecStatusLayer)
        .layer(grpc::durable::DurableWritesLayer { store: store.clone() })
        .layer(grpc::size::RequestSizeLayer {
            max_request: (config.max_request_kib as usize).saturating_mul(1024).min(max_message),
        })
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path(), request_id = %request_id(req.headers())))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth(puppet))
        .add_service(RequireToken::new(feed, token.clone(), throttle.clone()))
        .add_optional_service(official_account.map(|oa| {
            let service = grpc::official_account::OfficialAccountService::new(oa, front.stop_signal());
            RequireToken::new(OfficialAccountServer::new(service), token.clone(), throttle.clone())
        }))
        .add_optional_service(mock.map(|m| {
            RequireToken::new(MockWorldServer::new(MockWorldService::new(m)), token.clone(), throttle.clone())
        }))
        .serve_with_incoming_shutdown(
            tls::incoming(grpc_listener, tls.acceptor, gate, front.stop_signal(), front.tracker()),
            async move { stop_grpc.cancelled().await },
        );
    let serving = tokio::spawn(server);
    shutdown.await;
    tracing::info!("shutting down: ending event streams and draining calls");
    bus.close();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let drained = async {
        let front_stopped = front.stop(grace);
        let (grpc, _) = tokio::join!(serving, front_stopped);
        grpc
    };
    match tokio::time::timeout(grace, drained).await {
        Ok(result) => result??,
        // A client that neither reads nor closes must not keep the process alive.
        Err(_) => {
            tracing::warn!(grace_secs = grace.as_secs(), "connections still open after the grace period; exiting")
        }
    }
    if !background.stop(BACKGROUND_GRACE).await {
        tracing::warn!("background tasks still running after the grace period; saving anyway");
    }
    if let Err(e) = backend.shutdown().await {
        tracing::error!(error = %e, "saving state at shutdown failed");
    }
    // Last: everything queued is committed and the store marked closed cleanly.
    let closing = store.clone();
    drop(store);
    if tokio::task::spawn_blocking(move || closing.close()).await.is_err() {
        tracing::error!("closing the store failed");
    }
    tracing::info!("stopped");
    Ok(())
}

/// How the gRPC port speaks, and what to tell clients about it.
struct TlsSetup {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// One line for the banner.
    mode: String,
    /// Client settings to print (self-signed mode).
    client_env: Vec<String>,
}

fn tls_setup(config: &Config) -> anyhow::Result<TlsSetup> {
    let plaintext = |mode: &str| TlsSetup { acceptor: None, mode: mode.to_owned(), client_env: vec![] };
    if config.no_tls {
        return Ok(plaintext("plaintext HTTP/2 only (TLS switched off)"));
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let acceptor = tls::acceptor(&tls::pem_text(cert, "--tls-cert")?, &tls::pem_text(key, "--tls-key")?)?;
        return Ok(TlsSetup {
            acceptor: Some(acceptor),
            mode: "TLS (ALPN h2) and plaintext HTTP/2 on one port".into(),
            client_env: vec![],
        });
    }
    if let Some(name) = &config.tls_self_signed {
        let dir = config.data_dir().join("tls");
        let certs = tls::self_signed(&dir, name)?;
        let acceptor = tls::acceptor(&certs.cert_pem, &certs.key_pem)?;
        return Ok(TlsSetup {
            acceptor: Some(acceptor),
            mode: format!("TLS (ALPN h2, self-signed for {name}) and plaintext HTTP/2 on one port"),
            client_env: vec![
                format!("WECHATY_PUPPET_SERVICE_TLS_CA_CERT=\"$(cat {})\"", dir.join("ca.pem").display()),
                format!("WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME={name}"),
            ],
        });
    }
    Ok(plaintext("plaintext HTTP/2 (no TLS: give --tls-cert/--tls-key or --tls-self-signed NAME)"))
}

async fn bind(addr: SocketAddr, what: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| anyhow::anyhow!("cannot listen for {what} on {addr}: {e}"))
}

/// The client's `x-request-id`, or a new process-unique one.
fn request_id(headers: &::http::HeaderMap) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| format!("r{}", NEXT.fetch_add(1, Ordering::Relaxed)))
}

/// SIGTERM or SIGINT. The handlers are installed when this is called, not when the future is first
/// polled: a signal that arrives while the server starts up is not lost (nor does it kill the
/// process with the default action).
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            _ = tokio::signal::ctrl_c().await;
        })
    }
}

/// What the start-up banner shows.
struct Banner<'a> {
    config: &'a Config,
    grpc: SocketAddr,
    http: Option<SocketAddr>,
    token: &'a str,
    source: TokenSource,
    backend: &'a str,
    /// The Official Account webhook path and message-encryption mode.
    webhook: Option<(String, &'static str)>,
    tls: &'a TlsSetup,
    mqtt: Option<&'a mqtt::MqttConfig>,
}

fn print_banner(banner: &Banner<'_>) {
    let Banner { config, grpc, http, token, source, backend, ref webhook, tls, mqtt } = *banner;
    // The banner is for the person who started the server; tracing logs never carry the token.
    let (shown, note, tok) = match source {
        TokenSource::Given => (mask(token), "given".to_owned(), "$WECHATY_PUPPET_SERVICE_TOKEN".to_owned()),
        TokenSource::Saved => {
            (token.to_owned(), format!("saved in {}", config.data_dir().join("token").display()), token.to_owned())
        }
        TokenSource::Generated => (
            token.to_owned(),
            format!("generated, saved in {}", config.data_dir().join("token").display()),
            token.to_owned(),
        ),
    };
    let mut out = String::new();
    out.push_str(&format!("puppet-rs {} — wechaty.Puppet service\n", env!("CARGO_PKG_VERSION")));
    out.push_str(&format!("  listening  grpc://{grpc}  ({})\n", tls.mode));
    out.push_str(&format!("  token      {shown}  ({note})\n"));
    out.push_str(&format!("  backend    {backend}\n"));
    if let Some(h) = http {
        out.push_str(&format!("  http       http://{h}  (/qrcode /healthz /readyz /metrics)\n"));
        // The QR page shows the account, so it asks for the token (unless --qrcode-public).
        let query = if config.qrcode_public { String::new() } else { format!("?token={tok}") };
        out.push_str(&format!("  login QR   http://{h}/qrcode{query}\n"));
        if let Some((path, mode)) = webhook {
            out.push_str(&format!(
                "  webhook    http://{h}{path}  (the Official Account's server URL, {mode}; expose it over HTTPS)\n"
            ));
        }
    }
    if let Some(m) = mqtt {
        // The URL may carry credentials: show only where it goes.
        let broker = m.url.rsplit('@').next().unwrap_or_default().rsplit("://").next().unwrap_or_default();
        out.push_str(&format!("  mqtt       thing/chatbot/{}/…  via {broker}\n", m.client_id));
    }
    out.push_str("connect:\n");
    out.push_str(&format!(
        "  grpcurl  grpcurl -plaintext -H \"authorization: Wechaty {tok}\" {grpc} wechaty.Puppet/Version\n"
    ));
    out.push_str(&format!(
        "  node     WECHATY_PUPPET=wechaty-puppet-service WECHATY_PUPPET_SERVICE_ENDPOINT={grpc} \
         WECHATY_PUPPET_SERVICE_TOKEN={tok} WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT=true node bot.js\n"
    ));
    out.push_str(&format!(
        "  python   WECHATY_PUPPET_SERVICE_ENDPOINT={grpc} WECHATY_PUPPET_SERVICE_TOKEN={tok} python bot.py\n"
    ));
    if !tls.client_env.is_empty() {
        out.push_str(&format!(
            "  node over TLS: instead of ..._NO_TLS_INSECURE_CLIENT=true, set {}\n",
            tls.client_env.join(" ")
        ));
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    _ = stdout.write_all(out.as_bytes());
    _ = stdout.flush();
}

/// Lets a person recognise a token without showing any piece of it: its length and a short
/// SHA-256 fingerprint.
fn mask(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let fingerprint: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("({} chars, sha256 {fingerprint}…)", token.chars().count())
}
