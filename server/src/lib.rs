//! puppet-server: WeChat bot accounts, each held by a [`backend::Backend`], served over the
//! `wechaty.Puppet` gRPC contract plus the `puppet_rs.v1` extensions.
//!
//! Layout: [`config`] (flags), [`accounts`] (the accounts file, sharding), [`account`] (running
//! accounts and the token resolver every front door asks), [`grpc`] (translation between the contract and the backend),
//! [`events`] (the sequenced event bus), [`backend`] (the trait and its implementations),
//! [`http`] (the side port), [`net`] (connection limits of both ports), [`tasks`] (ownership of
//! background work). This file wires them and owns the order of shutdown.

pub mod account;
pub mod accounts;
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
pub mod onebot;
pub mod store;
pub mod tasks;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1::admin_server::AdminServer;
use tokio::net::TcpListener;

use crate::backend::{Backend, BackendKind};
use crate::config::{Config, TokenSource};
use crate::events::EventSink;
use crate::grpc::auth::RequireToken;
use crate::tasks::Tasks;

/// HTTP/2 flow-control window per stream, in bytes.
const FLOW_WINDOW: u32 = 4 << 20;

/// A backend as built from the flags.
pub struct Built {
    /// The backend behind `wechaty.Puppet`.
    pub backend: Arc<dyn Backend>,
    /// The same backend when it is the mock, for the `MockWorld` control service.
    pub mock: Option<backend::mock::MockBackend>,
    /// The same backend when it is an Official Account, for its extension service and webhook.
    pub official_account: Option<backend::official_account::OfficialAccount>,
    /// The same backend when it is iLink, for its extension service.
    pub ilink: Option<backend::ilink::Ilink>,
}

/// Builds the configured backend, wired to the event sink and the account's store; its loops belong
/// to `tasks`.
pub fn build_backend(
    config: &Config,
    sink: EventSink,
    blobs: blobs::BlobStore,
    metrics: &metrics::AccountMetrics,
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
                // With an accounts file the QRs are on `/qrcode?account=NAME`, not a thousand on stdout.
                print_qr: config.accounts.is_none(),
                import_file: Some(config.data_dir().join("mock-world.json")),
            };
            let mock = backend::mock::MockBackend::new(options, store.clone(), sink, blobs, tasks)?;
            Ok(Built { backend: Arc::new(mock.clone()), mock: Some(mock), official_account: None, ilink: None })
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
            Ok(Built { backend: Arc::new(oa.clone()), mock: None, official_account: Some(oa), ilink: None })
        }
        BackendKind::Ilink => {
            let settings = backend::ilink::settings::IlinkSettings::from_flags(&config.ilink)?;
            let print_qr = config.accounts.is_none();
            let ilink = backend::ilink::Ilink::new(
                settings,
                sink,
                blobs,
                metrics.ilink.clone(),
                tasks,
                store.clone(),
                print_qr,
            )?;
            Ok(Built { backend: Arc::new(ilink.clone()), mock: None, official_account: None, ilink: Some(ilink) })
        }
        BackendKind::Upstream => {
            let settings = backend::upstream::settings::UpstreamSettings::from_flags(&config.upstream)?;
            let up = backend::upstream::Upstream::new(settings, sink, blobs, tasks, store.clone())?;
            Ok(Built { backend: Arc::new(up), mock: None, official_account: None, ilink: None })
        }
        BackendKind::Web => {
            let settings = backend::web::settings::WebSettings::from_flags(&config.web, config.accounts.is_none())?;
            let web =
                backend::web::WebBackend::new(settings, config.fetch.build()?, store.clone(), sink, blobs, tasks)?;
            Ok(Built { backend: Arc::new(web), mock: None, official_account: None, ilink: None })
        }
    }
}

/// Runs the server until SIGINT/SIGTERM, then stops in order: the front doors (no new connection;
/// event streams end with OK; open calls get the grace period), then every account (its background
/// tasks, its backend's final save, its store). SIGHUP rereads the accounts file.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let shutdown = shutdown_signal()?;
    // One rustls provider for the whole process (gRPC TLS, MQTT, the Official Account API client).
    _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let process_args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if config.accounts.is_some() && config.token.is_some() {
        anyhow::bail!(
            "--token (WECHATY_PUPPET_SERVICE_TOKEN) and --accounts cannot be used together: each account of the file has its own token"
        );
    }
    let (specs, token_source) = {
        let (config, args) = (config.clone(), process_args.clone());
        tokio::task::spawn_blocking(move || account::specs_of(&config, &args)).await??
    };
    let shard = match (config.replicas, &config.pod_name) {
        (1, _) => None,
        (n, Some(pod)) => Some(
            accounts::Shard::from_pod_name(pod, n, config.pod_service.clone()).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        (n, None) => anyhow::bail!("--replicas {n} needs POD_NAME (--pod-name): which of the {n} pods this is"),
    };
    let metrics = Arc::new(metrics::Metrics::new());
    // Front doors (accept loops, connections) stop first; the accounts after.
    let front = Tasks::new();
    let max_message = (config.max_message_mib as usize).saturating_mul(1024 * 1024);
    let shared =
        account::Shared { max_message, front_stop: front.stop_signal(), changed: tokio::sync::watch::Sender::new(0) };
    let accounts = account::Accounts::new(config.accounts.clone(), process_args, shard, shared);
    accounts.start(&specs, config.accounts.is_some()).await?;

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
        let (accounts, health) = (accounts.clone(), health.clone());
        front.spawn("readiness", |stop| health::follow_accounts(accounts, health, stop));
    }
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(puppet_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(puppet_proto::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;
    let tls = tls_setup(&config)?;
    let discovery = (discovery_host(&config, &accounts, grpc_addr), config.discovery_port.unwrap_or(grpc_addr.port()));
    let admin_token: Option<Arc<str>> = config.admin_token.as_deref().filter(|t| !t.is_empty()).map(Into::into);
    if let Some(t) = &admin_token {
        config::validate_token(t).map_err(|e| anyhow::anyhow!("--admin-token: {e}"))?;
    }

    print_banner(&Banner {
        config: &config,
        grpc: grpc_addr,
        http: http_addr,
        accounts: &accounts,
        source: token_source,
        tls: &tls,
    });

    // After the banner: the mock's login QR comes below where the server listens.
    for a in accounts.all() {
        a.autostart();
    }

    if let Some(listener) = http_listener {
        let state = http::HttpState {
            accounts: accounts.clone(),
            metrics: metrics.clone(),
            qrcode_public: config.qrcode_public,
            admin_token: admin_token.clone(),
            throttle: throttle.clone(),
            discovery,
        };
        let limits = config.http_limits();
        let app = http::router(state, limits)?;
        let (gate, connections, tls) = (gate.clone(), front.tracker(), tls.side_port.clone());
        front.spawn("http-side-port", |stop| http::serve(listener, app, gate, limits, tls, stop, connections));
    }
    {
        let accounts = accounts.clone();
        front.spawn("reload-on-sighup", |stop| reload_on_sighup(accounts, stop));
    }

    let admin = admin_token.map(|t| {
        RequireToken::new(AdminServer::new(grpc::admin::AdminService::new(accounts.clone())), t, throttle.clone())
    });
    let stop_grpc = front.stop_signal();
    let cors = config.cors.cors()?;
    let server = tonic::transport::Server::builder()
        // gRPC-Web: browsers speak HTTP/1.1 (and h2 through fetch); CORS only with --cors-origin.
        .accept_http1(true)
        .layer(tower::util::option_layer(cors))
        .layer(tonic_web::GrpcWebLayer::new())
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
        .layer(grpc::size::RequestSizeLayer {
            max_request: (config.max_request_kib as usize).saturating_mul(1024).min(max_message),
        })
        .trace_fn(|req| tracing::info_span!("rpc", method = %req.uri().path(), request_id = %request_id(req.headers())))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(account::Routed::new(accounts.clone(), throttle.clone(), |a| Some(a.services.puppet.clone())))
        .add_service(account::Routed::new(accounts.clone(), throttle.clone(), |a| Some(a.services.feed.clone())))
        .add_service(account::Routed::new(accounts.clone(), throttle.clone(), |a| a.services.oa.clone()))
        .add_service(account::Routed::new(accounts.clone(), throttle.clone(), |a| a.services.ilink.clone()))
        .add_service(account::Routed::new(accounts.clone(), throttle.clone(), |a| a.services.mock.clone()))
        .add_optional_service(admin)
        .serve_with_incoming_shutdown(
            tls::incoming(grpc_listener, tls.acceptor, gate, front.stop_signal(), front.tracker()),
            async move { stop_grpc.cancelled().await },
        );
    let serving = tokio::spawn(server);
    shutdown.await;
    tracing::info!("shutting down: ending event streams and draining calls");
    for a in accounts.all() {
        a.bus.close();
    }
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
    // Last: every account's loops stop, its backend saves, its store commits and closes.
    accounts.close_all().await;
    tracing::info!("stopped");
    Ok(())
}

/// What discovery answers for the accounts served here.
fn discovery_host(config: &Config, accounts: &account::Accounts, grpc: SocketAddr) -> String {
    if let Some(h) = &config.discovery_host {
        return h.clone();
    }
    if let Some(shard) = accounts.shard() {
        return shard.host_of(shard.ordinal);
    }
    if grpc.ip().is_unspecified() { "127.0.0.1".to_owned() } else { grpc.ip().to_string() }
}

/// Rereads the accounts file on every SIGHUP until `stop`. (Without a handler SIGHUP would end the
/// process.)
async fn reload_on_sighup(accounts: account::Accounts, stop: tokio_util::sync::CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let Ok(mut hup) = signal(SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP: reload with the Admin service instead");
            return;
        };
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            match accounts.reload().await {
                Ok(done) => tracing::info!(
                    added = ?done.added,
                    removed = ?done.removed,
                    restarted = ?done.restarted,
                    unchanged = done.unchanged,
                    "accounts reloaded (SIGHUP)"
                ),
                Err(e) => tracing::error!(error = %e, "reloading the accounts failed (SIGHUP)"),
            }
        }
    }
    #[cfg(not(unix))]
    {
        _ = accounts;
        stop.cancelled().await;
    }
}

/// How the gRPC port speaks, and what to tell clients about it.
struct TlsSetup {
    acceptor: Option<tokio_rustls::TlsAcceptor>,
    /// The same certificate for the side port (HTTP/1.1): discovery clients ask over HTTPS.
    side_port: Option<tokio_rustls::TlsAcceptor>,
    /// One line for the banner.
    mode: String,
    /// Client settings to print (self-signed mode).
    client_env: Vec<String>,
}

fn tls_setup(config: &Config) -> anyhow::Result<TlsSetup> {
    let plaintext =
        |mode: &str| TlsSetup { acceptor: None, side_port: None, mode: mode.to_owned(), client_env: vec![] };
    let pair = |cert: &str, key: &str| -> anyhow::Result<_> {
        Ok((tls::acceptor(cert, key)?, tls::acceptor_for(cert, key, b"http/1.1")?))
    };
    if config.no_tls {
        return Ok(plaintext("plaintext HTTP/2 only (TLS switched off)"));
    }
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        let (grpc, side) = pair(&tls::pem_text(cert, "--tls-cert")?, &tls::pem_text(key, "--tls-key")?)?;
        return Ok(TlsSetup {
            acceptor: Some(grpc),
            side_port: Some(side),
            mode: "TLS (ALPN h2) and plaintext HTTP/2 on one port".into(),
            client_env: vec![],
        });
    }
    if let Some(name) = &config.tls_self_signed {
        let dir = config.data_dir().join("tls");
        let certs = tls::self_signed(&dir, name)?;
        let (grpc, side) = pair(&certs.cert_pem, &certs.key_pem)?;
        return Ok(TlsSetup {
            acceptor: Some(grpc),
            side_port: Some(side),
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
    accounts: &'a account::Accounts,
    /// Where the single account's token came from.
    source: TokenSource,
    tls: &'a TlsSetup,
}

fn print_banner(banner: &Banner<'_>) {
    let Banner { config, grpc, http, accounts, source, tls } = *banner;
    let all = accounts.all();
    let mut out = String::new();
    out.push_str(&format!("puppet-rs {} — wechaty.Puppet service\n", env!("CARGO_PKG_VERSION")));
    out.push_str(&format!("  listening  grpc://{grpc}  ({})\n", tls.mode));
    if accounts.from_file() {
        banner_accounts(&mut out, config, http, accounts, &all);
    } else if let Some(only) = all.first() {
        banner_single(&mut out, config, grpc, http, only, source, tls);
    }
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    _ = stdout.write_all(out.as_bytes());
    _ = stdout.flush();
}

/// The banner of a process with an accounts file: one line per account, tokens masked.
fn banner_accounts(
    out: &mut String,
    config: &Config,
    http: Option<SocketAddr>,
    accounts: &account::Accounts,
    all: &[Arc<account::Account>],
) {
    let file = config.accounts.as_ref().map(|p| p.display().to_string()).unwrap_or_default();
    match accounts.shard() {
        Some(s) => out.push_str(&format!(
            "  accounts   {} served here of {file} (pod {} of {}; discovery names the others' pods)\n",
            all.len(),
            s.ordinal,
            s.replicas
        )),
        None => out.push_str(&format!("  accounts   {} from {file}\n", all.len())),
    }
    for a in all {
        out.push_str(&format!("    {:<16} {:<18} token {}\n", a.name, a.backend.name(), mask(a.token())));
    }
    if let Some(h) = http {
        out.push_str(&format!(
            "  http       http://{h}  (/qrcode?account=NAME /healthz /readyz /metrics /v0/hosties/TOKEN)\n"
        ));
        out.push_str(&format!(
            "  discovery  WECHATY_PUPPET_SERVICE_AUTHORITY={h} WECHATY_PUPPET_SERVICE_TOKEN=<an account's token>\n"
        ));
        for a in all {
            if let Some((path, _)) = &a.webhook {
                out.push_str(&format!("  webhook    {}: http://{h}{path}\n", a.name));
            }
        }
    }
    if config.admin_token.is_some() {
        out.push_str(
            "  admin      puppet_rs.v1.Admin (ListAccounts, ReloadAccounts) with the admin token; SIGHUP reloads too\n",
        );
    }
}

fn banner_single(
    out: &mut String,
    config: &Config,
    grpc: SocketAddr,
    http: Option<SocketAddr>,
    account: &account::Account,
    source: TokenSource,
    tls: &TlsSetup,
) {
    let token = account.token();
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
    out.push_str(&format!("  token      {shown}  ({note})\n"));
    out.push_str(&format!("  backend    {}\n", account.backend.name()));
    if let Some(h) = http {
        out.push_str(&format!("  http       http://{h}  (/qrcode /healthz /readyz /metrics /v0/hosties/TOKEN)\n"));
        // The QR page shows the account, so it asks for the token (unless --qrcode-public).
        let query = if config.qrcode_public { String::new() } else { format!("?token={tok}") };
        out.push_str(&format!("  login QR   http://{h}/qrcode{query}\n"));
        if let (Some((path, _)), Some(mode)) = (&account.webhook, account.webhook_mode) {
            out.push_str(&format!(
                "  webhook    http://{h}{path}  (the Official Account's server URL, {mode}; expose it over HTTPS)\n"
            ));
        }
    }
    if let Some(m) = &account.mqtt {
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
}

/// Lets a person recognise a token without showing any piece of it: its length and a short
/// SHA-256 fingerprint.
fn mask(token: &str) -> String {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(token.as_bytes());
    let fingerprint: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("({} chars, sha256 {fingerprint}…)", token.chars().count())
}
