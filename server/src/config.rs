//! Command-line flags, each also read from an environment variable.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::backend::BackendKind;

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable, coloured when on a terminal.
    Pretty,
    /// One JSON object per line.
    Json,
}

/// When the `wechaty.Puppet` health status (the readiness probe) says SERVING.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadyWhen {
    /// As soon as the server accepts calls.
    Started,
    /// While the account is logged in.
    LoggedIn,
}

/// puppet-server: one WeChat bot account served over the wechaty.Puppet gRPC contract.
#[derive(Clone, Debug, Parser)]
#[command(name = "puppet-server", version, about, args_override_self = true)]
pub struct Config {
    /// gRPC address. Port 0 picks a free port (printed at start-up). A Wechaty user's
    /// WECHATY_PUPPET_SERVER_PORT sets the port when this is not given.
    #[arg(long, env = "PUPPET_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// The token clients must present. Also read from WECHATY_TOKEN. When none is given, the token
    /// saved in the data dir is used, or a new `insecure_<uuid>` is generated and saved there.
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Which backend holds the account.
    #[arg(long, env = "PUPPET_BACKEND", value_enum, default_value = "mock")]
    pub backend: BackendKind,

    /// Where the server keeps its state (generated token, …). Default:
    /// $XDG_DATA_HOME/puppet-rs, else ~/.local/share/puppet-rs, else ./puppet-data.
    #[arg(long, env = "PUPPET_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    /// TLS server certificate chain: PEM text (a literal `\n` counts as a newline) or a file path.
    /// With a key, the gRPC port serves TLS and plaintext HTTP/2 side by side.
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_TLS_SERVER_CERT", hide_env_values = true, requires = "tls_key")]
    pub tls_cert: Option<String>,

    /// TLS private key for `--tls-cert`: PEM text or a file path.
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_TLS_SERVER_KEY", hide_env_values = true, requires = "tls_cert")]
    pub tls_key: Option<String>,

    /// Serve TLS with a certificate for NAME signed by a local CA, both generated on first start
    /// and kept in `<data-dir>/tls/`. The start-up banner prints the client settings.
    #[arg(long, env = "PUPPET_TLS_SELF_SIGNED", value_name = "NAME", conflicts_with = "tls_cert")]
    pub tls_self_signed: Option<String>,

    /// Plaintext only, even when a certificate is configured (`true`/`false`).
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_SERVER", default_value_t = false, action = clap::ArgAction::Set)]
    pub no_tls: bool,

    /// Side HTTP port for liveness/readiness and the login QR page (off when not given).
    #[arg(long, env = "PUPPET_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// Log format.
    #[arg(long, env = "PUPPET_LOG_FORMAT", value_enum, default_value = "pretty")]
    pub log_format: LogFormat,

    /// When writes are durable: `always` (committed, fsynced, before anything is acknowledged),
    /// `batch` (group commits at most every 50 ms) or `memory` (nothing on disk).
    #[arg(long, env = "PUPPET_DURABILITY", value_enum, default_value = "batch")]
    pub durability: crate::store::Durability,

    /// How many events the log retains for resuming subscribers.
    #[arg(long, env = "PUPPET_EVENT_RETENTION", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub event_retention: u64,

    /// Oldest event the log retains, in hours.
    #[arg(long, env = "PUPPET_EVENT_RETENTION_HOURS", default_value_t = 72, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub event_retention_hours: u64,

    /// Most bytes, in MiB, the event log retains; the oldest events leave first.
    #[arg(long, env = "PUPPET_EVENT_RETENTION_MIB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub event_retention_mib: u64,

    /// Most bytes, in MiB, of recent events kept in memory for live subscribers (older ones are
    /// read back from disk).
    #[arg(long, env = "PUPPET_EVENT_TAIL_MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub event_tail_mib: u64,

    /// How many messages are kept (payloads and conversations).
    #[arg(long, env = "PUPPET_MESSAGE_RETENTION", default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub message_retention: u64,

    /// Oldest message kept, in hours.
    #[arg(long, env = "PUPPET_MESSAGE_RETENTION_HOURS", default_value_t = 720, value_parser = clap::value_parser!(u64).range(1..=87_600))]
    pub message_retention_hours: u64,

    /// Most bytes, in MiB, of messages kept.
    #[arg(long, env = "PUPPET_MESSAGE_RETENTION_MIB", default_value_t = 512, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub message_retention_mib: u64,

    /// The store's page cache, in MiB (reads of recent data come from memory).
    #[arg(long, env = "PUPPET_STORE_CACHE_MIB", default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub store_cache_mib: u64,

    /// The store file's size cap, in MiB: past it, writes fail with RESOURCE_EXHAUSTED until
    /// retention makes room (reads keep working).
    #[arg(long, env = "PUPPET_STORE_MAX_MIB", default_value_t = 2048, value_parser = clap::value_parser!(u64).range(1..=16_777_216))]
    pub store_max_mib: u64,

    /// How far (in events) a subscriber may fall behind before its stream is ended with
    /// RESOURCE_EXHAUSTED. Capped at the retention size. A resume from further back reads at its
    /// own pace until it has caught up.
    #[arg(long, env = "PUPPET_SUBSCRIBER_MAX_LAG", default_value_t = 16_384)]
    pub subscriber_max_lag: usize,

    /// Seconds between heartbeats on every event stream (Wechaty clients reset after 60 s of silence).
    #[arg(long, env = "PUPPET_HEARTBEAT_SECS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=60))]
    pub heartbeat_secs: u64,

    /// Largest message of a call that carries no file, in KiB (the calls that carry files take up
    /// to `--max-message-mib`).
    #[arg(long, env = "PUPPET_MAX_REQUEST_KIB", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(64..=2_097_152))]
    pub max_request_kib: u64,

    /// Largest message accepted from clients, in MiB (Python sends files inline, so this is large).
    #[arg(long, env = "PUPPET_MAX_MESSAGE_MIB", default_value_t = 150, value_parser = clap::value_parser!(u64).range(4..=2048))]
    pub max_message_mib: u64,

    /// Where uploaded and in-transit files are kept (finished ones survive restarts). Default:
    /// `<data-dir>/blobs`.
    #[arg(long, env = "PUPPET_BLOB_DIR")]
    pub blob_dir: Option<PathBuf>,

    /// Largest single file, in MiB (uploads, inline files, files the backend hands out).
    #[arg(long, env = "PUPPET_BLOB_MAX_FILE_MIB", default_value_t = 1024)]
    pub blob_max_file_mib: u64,

    /// Most file bytes kept at once, in MiB; the least recently used files make room for new ones.
    #[arg(long, env = "PUPPET_BLOB_MAX_TOTAL_MIB", default_value_t = 4096)]
    pub blob_max_total_mib: u64,

    /// Seconds a file is kept after it was last written or read.
    #[arg(long, env = "PUPPET_BLOB_TTL_SECS", default_value_t = 3600)]
    pub blob_ttl_secs: u64,

    /// Readiness (`grpc.health.v1` service `wechaty.Puppet`, and `/readyz`): SERVING once started,
    /// or only while logged in. The overall status (service "") is liveness: SERVING while the
    /// process runs.
    #[arg(long, env = "PUPPET_READY_WHEN", value_enum, default_value = "logged-in")]
    pub ready_when: ReadyWhen,

    /// MQTT bridge (WeChatRemote protocol): `mqtt://[user:pass@]host[:port]` or `mqtts://…`; unset
    /// means no bridge.
    #[arg(long, env = "PUPPET_MQTT_URL", hide_env_values = true)]
    pub mqtt_url: Option<String>,

    /// MQTT: the `{clientId}` in the topics (default: `puppet-rs-` and 12 random hex digits, kept in the
    /// data dir as `mqtt-client-id`).
    #[arg(long, env = "PUPPET_MQTT_CLIENT_ID")]
    pub mqtt_client_id: Option<String>,

    /// MQTT: comma-separated event names to publish (default: all but heartbeat).
    #[arg(long, env = "PUPPET_MQTT_EVENTS")]
    pub mqtt_events: Option<String>,

    /// MQTT: shared secret; payloads become base64(nonce || AES-256-GCM ciphertext), key SHA-256(secret).
    #[arg(long, env = "PUPPET_MQTT_SECRET", hide_env_values = true)]
    pub mqtt_secret: Option<String>,

    /// Most connections open at once on both ports together; one more is closed at once.
    #[arg(long, env = "PUPPET_MAX_CONNECTIONS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_connections: u64,

    /// Most connections being classified or in their TLS handshake at once; one more is closed.
    #[arg(long, env = "PUPPET_MAX_HANDSHAKES", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_handshakes: u64,

    /// Seconds a new connection has to send its first byte and finish the TLS handshake.
    #[arg(long, env = "PUPPET_HANDSHAKE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub handshake_timeout_secs: u64,

    /// Seconds a connection may stay open with no request in flight (both ports; an open event
    /// stream is a request in flight).
    #[arg(long, env = "PUPPET_IDLE_TIMEOUT_SECS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub idle_timeout_secs: u64,

    /// Side port: seconds for a request's headers to arrive.
    #[arg(long, env = "PUPPET_HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub header_read_timeout_secs: u64,

    /// Side port: seconds for a whole request before it is answered 408.
    #[arg(long, env = "PUPPET_HTTP_REQUEST_TIMEOUT_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub http_request_timeout_secs: u64,

    /// Side port: largest request body, in KiB, on the server's own routes (the Official Account
    /// webhook has its own limit).
    #[arg(long, env = "PUPPET_HTTP_MAX_BODY_KIB", default_value_t = 16, value_parser = clap::value_parser!(u64).range(1..=1_048_576))]
    pub http_max_body_kib: u64,

    /// gRPC: most concurrent streams (calls) per HTTP/2 connection; more are refused with
    /// REFUSED_STREAM, which clients retry.
    #[arg(long, env = "PUPPET_MAX_CONCURRENT_STREAMS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent_streams: u32,

    /// gRPC: largest header list a client may send, in KiB.
    #[arg(long, env = "PUPPET_MAX_HEADER_LIST_KIB", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub max_header_list_kib: u32,

    /// gRPC: seconds between HTTP/2 pings to each client; a client that does not answer within
    /// `--keepalive-timeout-secs` is disconnected (dead peers do not hold streams).
    #[arg(long, env = "PUPPET_KEEPALIVE_SECS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub keepalive_secs: u64,

    /// gRPC: seconds to wait for a ping's answer.
    #[arg(long, env = "PUPPET_KEEPALIVE_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_timeout_secs: u64,

    /// gRPC: streams a client may open and reset before the server takes them up (HTTP/2
    /// "rapid reset"); beyond, the connection is closed with ENHANCE_YOUR_CALM.
    #[arg(long, env = "PUPPET_MAX_PENDING_RESETS", default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub max_pending_resets: u64,

    /// gRPC: streams the server may reset because of a client's errors per connection before it
    /// closes the connection.
    #[arg(long, env = "PUPPET_MAX_LOCAL_RESETS", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub max_local_resets: u64,

    /// Failed authentications an address may make in a row before its requests are refused
    /// unchecked (gRPC RESOURCE_EXHAUSTED, HTTP 429).
    #[arg(long, env = "PUPPET_AUTH_FAILURE_BURST", default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub auth_failure_burst: u32,

    /// Failed authentications forgiven per second and address.
    #[arg(long, env = "PUPPET_AUTH_FAILURES_PER_SEC", default_value_t = 1.0)]
    pub auth_failures_per_sec: f64,

    /// Serve `/qrcode` without the token (the page shows the login QR, that is the account).
    #[arg(long, env = "PUPPET_QRCODE_PUBLIC", default_value_t = false, action = clap::ArgAction::Set)]
    pub qrcode_public: bool,

    /// Seconds to wait on SIGTERM/SIGINT for open calls and connections to finish before exiting.
    #[arg(long, env = "PUPPET_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,

    /// Serve many accounts: a TOML file with one `[[account]]` table per account (name, token,
    /// backend and that backend's settings under their flag names in snake case). Each account
    /// starts from these flags with its own on top. Without it, the flags make one account.
    #[arg(long, env = "PUPPET_ACCOUNTS")]
    pub accounts: Option<PathBuf>,

    /// The operator's token: the `puppet_rs.v1.Admin` service (reload, list) and every account's
    /// `/qrcode` page. Without it the Admin service answers UNAUTHENTICATED to everyone.
    #[arg(long, env = "PUPPET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// How many processes (StatefulSet pods) share the accounts file. Each serves the accounts whose
    /// token hashes to its ordinal (rendezvous hashing), and discovery names the owner of any.
    #[arg(long, env = "PUPPET_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub replicas: u32,

    /// This process's pod name, `<statefulset>-<ordinal>` (Kubernetes sets POD_NAME from the
    /// downward API). Needed with `--replicas` above 1.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// The headless Service that names the pods: discovery answers `<statefulset>-<k>.<this>`.
    #[arg(long, env = "PUPPET_POD_SERVICE")]
    pub pod_service: Option<String>,

    /// The port discovery answers for the owning pod's gRPC port. Default: this process's gRPC port.
    #[arg(long, env = "PUPPET_DISCOVERY_PORT")]
    pub discovery_port: Option<u16>,

    /// The host discovery answers when not sharded. Default: the gRPC listen address's IP (or
    /// 127.0.0.1 when it listens on all addresses).
    #[arg(long, env = "PUPPET_DISCOVERY_HOST")]
    pub discovery_host: Option<String>,

    /// Mock backend: a world description (JSON or TOML) instead of the built-in default world.
    #[arg(long, env = "PUPPET_MOCK_WORLD")]
    pub world: Option<PathBuf>,

    /// Mock backend: begin the login flow at start-up, so the account is online before any client
    /// connects (a later `Start` has nothing to do). `--autostart false` waits for `Start`.
    #[arg(long, env = "PUPPET_AUTOSTART", default_value_t = true, action = clap::ArgAction::Set)]
    pub autostart: bool,

    /// Mock backend: milliseconds between the steps of the simulated login (QR shown, scanned,
    /// confirmed, logged in, ready).
    #[arg(long, env = "PUPPET_MOCK_LOGIN_STEP_MS", default_value_t = 50)]
    pub login_step_ms: u64,

    /// `--backend official-account` settings.
    #[command(flatten)]
    pub oa: crate::backend::official_account::settings::OaFlags,

    /// `--backend upstream` settings.
    #[command(flatten)]
    pub upstream: crate::backend::upstream::settings::UpstreamFlags,
    /// `--backend ilink` settings.
    #[command(flatten)]
    pub ilink: crate::backend::ilink::settings::IlinkFlags,
    /// `--backend web` settings.
    #[command(flatten)]
    pub web: crate::backend::web::settings::WebFlags,

    /// Fetches of URLs from clients and pushes.
    #[command(flatten)]
    pub fetch: crate::fetch::FetchFlags,

    /// The OneBot v11 front door (`PUPPET_ONEBOT_*`).
    #[command(flatten)]
    pub onebot: crate::onebot::settings::OneBotFlags,
    /// Browsers: gRPC-Web's CORS.
    #[command(flatten)]
    pub cors: crate::http::settings::CorsFlags,
}

/// The default gRPC port (the official puppet service examples use 8788).
pub const DEFAULT_PORT: u16 = 8788;

/// Where the token came from, for the start-up banner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenSource {
    /// `--token` / `WECHATY_PUPPET_SERVICE_TOKEN` / `WECHATY_TOKEN`.
    Given,
    /// Read back from the data dir.
    Saved,
    /// Generated now and saved.
    Generated,
}

/// Events the in-memory tail holds at most with a durable store (also bounded by
/// `--event-tail-mib`), unless `--subscriber-max-lag` is larger.
const TAIL_EVENTS: u64 = 32_768;

impl Config {
    /// The gRPC address, honouring `WECHATY_PUPPET_SERVER_PORT` when `--listen` is absent.
    pub fn listen_addr(&self) -> anyhow::Result<SocketAddr> {
        if let Some(a) = self.listen {
            return Ok(a);
        }
        let port = match std::env::var("WECHATY_PUPPET_SERVER_PORT") {
            Ok(p) => p.parse().map_err(|_| anyhow::anyhow!("WECHATY_PUPPET_SERVER_PORT={p:?} is not a port number"))?,
            Err(_) => DEFAULT_PORT,
        };
        Ok(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// The data directory (see `--data-dir`).
    pub fn data_dir(&self) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|x| !x.is_empty()) {
            return PathBuf::from(x).join("puppet-rs");
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(h) => PathBuf::from(h).join(".local/share/puppet-rs"),
            None => PathBuf::from("puppet-data"),
        }
    }

    /// The blob store directory (see `--blob-dir`).
    pub fn blob_dir(&self) -> PathBuf {
        self.blob_dir.clone().unwrap_or_else(|| self.data_dir().join("blobs"))
    }

    /// The blob store limits.
    pub fn blob_limits(&self) -> crate::blobs::BlobLimits {
        crate::blobs::BlobLimits {
            max_file: self.blob_max_file_mib.saturating_mul(1 << 20),
            max_total: self.blob_max_total_mib.saturating_mul(1 << 20),
            ttl: std::time::Duration::from_secs(self.blob_ttl_secs),
        }
    }

    /// How the account's store is opened.
    pub fn store_options(&self) -> crate::store::StoreOptions {
        use crate::store::Retention;
        let hours = |h: u64| std::time::Duration::from_secs(h.saturating_mul(3600));
        crate::store::StoreOptions {
            durability: self.durability,
            events: Retention {
                count: self.event_retention,
                age: hours(self.event_retention_hours),
                bytes: self.event_retention_mib.saturating_mul(1 << 20),
            },
            messages: Retention {
                count: self.message_retention,
                age: hours(self.message_retention_hours),
                bytes: self.message_retention_mib.saturating_mul(1 << 20),
            },
            max_bytes: self.store_max_mib.saturating_mul(1 << 20),
            cache_bytes: (self.store_cache_mib as usize).saturating_mul(1 << 20),
        }
    }

    /// The event bus's limits.
    pub fn bus_limits(&self) -> crate::events::BusLimits {
        let memory = self.durability == crate::store::Durability::Memory;
        let tail_mib = if memory { self.event_retention_mib } else { self.event_tail_mib };
        crate::events::BusLimits {
            retention: self.event_retention,
            // With a durable store the tail is for live subscribers; in memory it is the log.
            // Subscribers within the lag limit read from memory.
            tail_events: if memory {
                self.event_retention as usize
            } else {
                self.event_retention.min(TAIL_EVENTS.max(self.subscriber_max_lag as u64)) as usize
            },
            tail_bytes: (tail_mib as usize).saturating_mul(1 << 20),
            max_lag: self.subscriber_max_lag,
        }
    }

    /// The connection limits of both ports.
    pub fn conn_limits(&self) -> crate::net::ConnLimits {
        crate::net::ConnLimits {
            max_connections: self.max_connections as usize,
            max_handshakes: self.max_handshakes as usize,
            handshake_timeout: std::time::Duration::from_secs(self.handshake_timeout_secs),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout_secs),
        }
    }

    /// The per-address throttle on failed authentication.
    pub fn auth_throttle(&self) -> crate::net::ThrottleSettings {
        crate::net::ThrottleSettings { burst: self.auth_failure_burst, per_sec: self.auth_failures_per_sec.max(0.0) }
    }

    /// The side port's request limits.
    pub fn http_limits(&self) -> crate::http::HttpLimits {
        crate::http::HttpLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            request_timeout: std::time::Duration::from_secs(self.http_request_timeout_secs),
            max_body: (self.http_max_body_kib as usize).saturating_mul(1024),
        }
    }

    /// The token and where it came from.
    pub fn resolve_token(&self) -> anyhow::Result<(String, TokenSource)> {
        let given = self.token.clone().or_else(|| std::env::var("WECHATY_TOKEN").ok()).filter(|t| !t.is_empty());
        if let Some(t) = given {
            validate_token(&t)?;
            return Ok((t, TokenSource::Given));
        }
        load_or_generate_token(&self.data_dir())
    }
}

/// Tokens travel in `:authority` and TLS SNI: keep them to characters those allow.
pub(crate) fn validate_token(t: &str) -> anyhow::Result<()> {
    if t.chars().all(|c| c.is_ascii_alphanumeric() || "-_.~".contains(c)) {
        Ok(())
    } else {
        anyhow::bail!(
            "the token may contain only letters, digits and - _ . ~ (clients send it as the HTTP/2 :authority)"
        )
    }
}

fn load_or_generate_token(dir: &Path) -> anyhow::Result<(String, TokenSource)> {
    let path = dir.join("token");
    match std::fs::read_to_string(&path) {
        Ok(t) if !t.trim().is_empty() => {
            let t = t.trim().to_owned();
            validate_token(&t).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            return Ok((t, TokenSource::Saved));
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
    }
    let token = format!("insecure_{}", uuid::Uuid::new_v4());
    std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("cannot create data dir {}: {e}", dir.display()))?;
    write_private(&path, &token).map_err(|e| anyhow::anyhow!("cannot save {}: {e}", path.display()))?;
    Ok((token, TokenSource::Generated))
}

pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(path)?.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_token_is_saved_and_reused() {
        let dir = std::env::temp_dir().join(format!("puppet-token-{}", uuid::Uuid::new_v4()));
        let (t1, s1) = load_or_generate_token(&dir).unwrap();
        assert!(t1.starts_with("insecure_"));
        assert_eq!(s1, TokenSource::Generated);
        let (t2, s2) = load_or_generate_token(&dir).unwrap();
        assert_eq!((t2, s2), (t1, TokenSource::Saved));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn tokens_must_fit_in_an_authority() {
        assert!(validate_token("puppet_padlocal_x-1.2~3").is_ok());
        assert!(validate_token("has space").is_err());
        assert!(validate_token("a/b").is_err());
    }
}
