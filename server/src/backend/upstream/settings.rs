//! `--backend upstream` settings: the flags (each with its `PUPPET_UPSTREAM_…` variable) and their
//! validation into [`UpstreamSettings`], following the official Node client's rules for the
//! endpoint, discovery, TLS and the certificate name. The upstream token is a secret: no `Debug`,
//! log line or error message shows it (see [`masked`]).

use std::time::Duration;

/// The Wechaty community root CA, the only trust root the official client passes (CN
/// `wechaty-root-ca`, SHA-256 8D:69:5F:…:4C:2B, valid until 2031-08-07).
pub const WECHATY_ROOT_CA: &str = include_str!("wechaty-root-ca.pem");

/// Where the official client discovers endpoints when no authority is given.
pub const DEFAULT_AUTHORITY: &str = "api.chatie.io";

/// Whether the connection to the upstream uses TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum TlsMode {
    /// As the official client: TLS, unless the token starts with `insecure_` and
    /// `WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT=true`.
    Auto,
    /// Always TLS.
    On,
    /// Plaintext HTTP/2.
    Off,
}

/// The upstream flags, as given.
#[derive(Clone, clap::Args)]
pub struct UpstreamFlags {
    /// Upstream backend: the puppet service to front, `host:port`. Absent: discovered from
    /// PUPPET_UPSTREAM_AUTHORITY with the token, as the official client does.
    #[arg(
        id = "upstream_endpoint",
        value_name = "HOST:PORT",
        long = "upstream-endpoint",
        env = "PUPPET_UPSTREAM_ENDPOINT"
    )]
    pub endpoint: Option<String>,

    /// Upstream backend: the discovery service asked `GET https://AUTHORITY/v0/hosties/TOKEN` for
    /// the endpoint (an `http://` prefix asks over plain HTTP).
    #[arg(
        id = "upstream_authority",
        value_name = "AUTHORITY",
        long = "upstream-authority",
        env = "PUPPET_UPSTREAM_AUTHORITY",
        default_value = DEFAULT_AUTHORITY
    )]
    pub authority: String,

    /// Upstream backend: the upstream's token (a secret: masked in every log line). Our own
    /// clients keep using our token.
    #[arg(
        id = "upstream_token",
        value_name = "TOKEN",
        long = "upstream-token",
        env = "PUPPET_UPSTREAM_TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Upstream backend: TLS toward the upstream (`auto` follows the official client).
    #[arg(
        id = "upstream_tls",
        value_name = "MODE",
        long = "upstream-tls",
        env = "PUPPET_UPSTREAM_TLS",
        value_enum,
        default_value_t = TlsMode::Auto
    )]
    pub tls: TlsMode,

    /// Upstream backend: the CA to trust (PEM file), instead of the Wechaty root CA.
    #[arg(id = "upstream_tls_ca", value_name = "PEM_FILE", long = "upstream-tls-ca", env = "PUPPET_UPSTREAM_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,

    /// Upstream backend: the name sent as SNI and expected in the upstream's certificate. Default:
    /// the token's prefix before its last `_` (Wechaty's convention).
    #[arg(
        id = "upstream_server_name",
        value_name = "NAME",
        long = "upstream-server-name",
        env = "PUPPET_UPSTREAM_SERVER_NAME"
    )]
    pub server_name: Option<String>,

    /// The official client's switch for plaintext with `insecure_` tokens (only the exact `true`
    /// counts), read by `--upstream-tls auto`.
    #[arg(
        id = "upstream_wechaty_no_tls",
        value_name = "true",
        long = "upstream-wechaty-no-tls-insecure-client",
        env = "WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT",
        hide = true
    )]
    pub wechaty_no_tls: Option<String>,

    /// Upstream backend: keep contact, room and member payloads in the store until the upstream
    /// says DIRTY (`false`: ask the upstream every time).
    #[arg(
        id = "upstream_cache",
        value_name = "BOOL",
        long = "upstream-cache",
        env = "PUPPET_UPSTREAM_CACHE",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub cache: bool,

    /// Upstream backend: first wait before reconnecting, in milliseconds (doubles up to the
    /// maximum, with jitter).
    #[arg(
        id = "upstream_reconnect_min_ms",
        value_name = "MS",
        long = "upstream-reconnect-min-ms",
        env = "PUPPET_UPSTREAM_RECONNECT_MIN_MS",
        default_value_t = 200
    )]
    pub reconnect_min_ms: u64,

    /// Upstream backend: longest wait between reconnection attempts, in milliseconds.
    #[arg(
        id = "upstream_reconnect_max_ms",
        value_name = "MS",
        long = "upstream-reconnect-max-ms",
        env = "PUPPET_UPSTREAM_RECONNECT_MAX_MS",
        default_value_t = 30_000
    )]
    pub reconnect_max_ms: u64,

    /// Upstream backend: deadline of one call to the upstream, in seconds (file transfers get it
    /// per chunk).
    #[arg(
        id = "upstream_call_timeout_secs",
        value_name = "SECS",
        long = "upstream-call-timeout-secs",
        env = "PUPPET_UPSTREAM_CALL_TIMEOUT_SECS",
        default_value_t = 30
    )]
    pub call_timeout_secs: u64,

    /// Upstream backend: largest message accepted from the upstream, in MiB (inline files).
    #[arg(
        id = "upstream_max_message_mib",
        value_name = "MIB",
        long = "upstream-max-message-mib",
        env = "PUPPET_UPSTREAM_MAX_MESSAGE_MIB",
        default_value_t = 64
    )]
    pub max_message_mib: u32,

    /// Upstream backend: most payloads remembered as served to our clients, each re-announced
    /// with DIRTY after a reconnect (what may have changed meanwhile).
    #[arg(
        id = "upstream_dirty_kept",
        value_name = "N",
        long = "upstream-dirty-kept",
        env = "PUPPET_UPSTREAM_DIRTY_KEPT",
        default_value_t = 10_000
    )]
    pub dirty_kept: usize,
}

impl Default for UpstreamFlags {
    fn default() -> Self {
        Self {
            endpoint: None,
            authority: DEFAULT_AUTHORITY.into(),
            token: None,
            tls: TlsMode::Auto,
            tls_ca: None,
            server_name: None,
            wechaty_no_tls: None,
            cache: true,
            reconnect_min_ms: 200,
            reconnect_max_ms: 30_000,
            call_timeout_secs: 30,
            max_message_mib: 64,
            dirty_kept: 10_000,
        }
    }
}

// Hand-written so a `{:?}` can never print the token.
impl std::fmt::Debug for UpstreamFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamFlags")
            .field("endpoint", &self.endpoint)
            .field("authority", &self.authority)
            .field("token", &self.token.as_deref().map(masked))
            .field("tls", &self.tls)
            .field("tls_ca", &self.tls_ca)
            .field("server_name", &self.server_name)
            .field("wechaty_no_tls", &self.wechaty_no_tls)
            .field("cache", &self.cache)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("call_timeout_secs", &self.call_timeout_secs)
            .field("max_message_mib", &self.max_message_mib)
            .field("dirty_kept", &self.dirty_kept)
            .finish()
    }
}

/// How a token appears in logs: its SNI prefix and the last two characters, the rest starred
/// (`puppet_padlocal_…ab` → `puppet_padlocal_****ab`). Short tokens show nothing.
pub fn masked(token: &str) -> String {
    let chars: Vec<char> = token.chars().collect();
    if chars.len() < 12 {
        return "****".into();
    }
    let prefix = token.rfind('_').map(|i| &token[..=i]).filter(|p| p.chars().count() + 6 <= chars.len());
    let tail: String = chars[chars.len() - 2..].iter().collect();
    format!("{}****{tail}", prefix.unwrap_or_default())
}

/// Where the upstream is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A fixed `host:port`.
    Endpoint(String),
    /// Asked of a discovery service each time a connection is made.
    Discover {
        /// `https://authority` or `http://authority`, without a trailing `/`.
        base: String,
    },
}

/// Validated upstream settings.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// Where to connect.
    pub target: Target,
    /// The upstream's token (never logged).
    pub token: String,
    /// The token as logs show it.
    pub token_masked: String,
    /// `Some((CA PEM, server name))` for TLS; `None` for plaintext.
    pub tls: Option<(String, String)>,
    /// See `--upstream-cache`.
    pub cache: bool,
    /// Reconnect back-off bounds.
    pub reconnect_min: Duration,
    /// See `--upstream-reconnect-max-ms`.
    pub reconnect_max: Duration,
    /// See `--upstream-call-timeout-secs`.
    pub call_timeout: Duration,
    /// See `--upstream-max-message-mib`, in bytes.
    pub max_message: usize,
    /// See `--upstream-dirty-kept`.
    pub dirty_kept: usize,
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("target", &self.target)
            .field("token", &self.token_masked)
            .field("tls", &self.tls.as_ref().map(|(_, name)| name))
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The SNI Wechaty derives from a token: the part before the last `_`, lower-cased.
pub fn sni_of(token: &str) -> Option<String> {
    token.rfind('_').map(|i| token[..i].to_ascii_lowercase()).filter(|s| !s.is_empty())
}

impl UpstreamSettings {
    /// Checks every setting; the error is one line naming the first bad one (never the token).
    pub fn from_flags(flags: &UpstreamFlags) -> anyhow::Result<Self> {
        let token = match flags.token.as_deref().map(str::trim) {
            Some(t) if !t.is_empty() => t.to_owned(),
            _ => anyhow::bail!(
                "PUPPET_UPSTREAM_TOKEN is not set: the upstream backend needs the token of the puppet service it fronts"
            ),
        };
        if !token.bytes().all(|b| b.is_ascii_graphic()) || token.len() > 256 {
            anyhow::bail!(
                "PUPPET_UPSTREAM_TOKEN is malformed: a token is at most 256 printable ASCII characters without spaces"
            );
        }
        let token_masked = masked(&token);
        let target = match flags.endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty()) {
            Some(e) => {
                let hostport = e.split_once("://").map_or(e, |(_, rest)| rest).trim_end_matches('/');
                if hostport.parse::<http::uri::Authority>().ok().and_then(|a| a.port_u16()).is_none() {
                    anyhow::bail!(
                        "PUPPET_UPSTREAM_ENDPOINT={:?} is not host:port",
                        puppet_proto::ids::Shown(e).to_string()
                    );
                }
                Target::Endpoint(hostport.to_owned())
            }
            None => {
                let a = flags.authority.trim().trim_end_matches('/');
                let (scheme, host) = match a.split_once("://") {
                    Some(("http", h)) => ("http", h),
                    Some(("https", h)) => ("https", h),
                    Some((s, _)) => anyhow::bail!(
                        "PUPPET_UPSTREAM_AUTHORITY: the scheme `{}` is neither http nor https",
                        puppet_proto::ids::Shown(s)
                    ),
                    None => ("https", a),
                };
                if host.parse::<http::uri::Authority>().is_err() {
                    anyhow::bail!(
                        "PUPPET_UPSTREAM_AUTHORITY={:?} is not a host name (with an optional port)",
                        puppet_proto::ids::Shown(a).to_string()
                    );
                }
                Target::Discover { base: format!("{scheme}://{host}") }
            }
        };
        let tls_on = match flags.tls {
            TlsMode::On => true,
            TlsMode::Off => false,
            TlsMode::Auto => !(token.starts_with("insecure_") && flags.wechaty_no_tls.as_deref() == Some("true")),
        };
        let tls = if tls_on {
            let name = match flags.server_name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
                Some(n) => n.to_owned(),
                None => sni_of(&token).ok_or_else(|| {
                    anyhow::anyhow!(
                        "PUPPET_UPSTREAM_TOKEN has no `_`: with TLS, Wechaty takes the server name from the token's \
                         prefix (`puppet_xxx_<id>` → `puppet_xxx`); set PUPPET_UPSTREAM_SERVER_NAME"
                    )
                })?,
            };
            let ca = match &flags.tls_ca {
                Some(path) => std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("PUPPET_UPSTREAM_TLS_CA: cannot read {}: {e}", path.display()))?,
                None => WECHATY_ROOT_CA.to_owned(),
            };
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                anyhow::bail!("PUPPET_UPSTREAM_TLS_CA holds no PEM certificate");
            }
            Some((ca, name))
        } else {
            None
        };
        if flags.reconnect_min_ms == 0 || flags.reconnect_min_ms > flags.reconnect_max_ms {
            anyhow::bail!(
                "PUPPET_UPSTREAM_RECONNECT_MIN_MS must be at least 1 and at most PUPPET_UPSTREAM_RECONNECT_MAX_MS ({})",
                flags.reconnect_max_ms
            );
        }
        if flags.call_timeout_secs == 0 {
            anyhow::bail!("PUPPET_UPSTREAM_CALL_TIMEOUT_SECS must be at least 1");
        }
        if !(4..=1024).contains(&flags.max_message_mib) {
            anyhow::bail!("PUPPET_UPSTREAM_MAX_MESSAGE_MIB must be 4 to 1024");
        }
        Ok(Self {
            target,
            token,
            token_masked,
            tls,
            cache: flags.cache,
            reconnect_min: Duration::from_millis(flags.reconnect_min_ms),
            reconnect_max: Duration::from_millis(flags.reconnect_max_ms),
            call_timeout: Duration::from_secs(flags.call_timeout_secs),
            max_message: (flags.max_message_mib as usize) << 20,
            dirty_kept: flags.dirty_kept,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(token: &str) -> UpstreamFlags {
        UpstreamFlags { token: Some(token.into()), endpoint: Some("127.0.0.1:8788".into()), ..Default::default() }
    }

    #[test]
    fn masking_keeps_the_prefix_and_hides_the_secret_part() {
        let t = "puppet_padlocal_0123456789abcdef";
        let m = masked(t);
        assert_eq!(m, "puppet_padlocal_****ef");
        assert!(!m.contains("0123456789"));
        assert_eq!(masked("short"), "****");
        // A prefix that would leave too little hidden is not shown.
        assert_eq!(masked("aaaaaaaaaa_bcd"), "****cd");
        let s = UpstreamSettings::from_flags(&flags(t)).unwrap();
        assert!(!format!("{s:?}").contains("0123456789"));
        assert!(!format!("{:?}", flags(t)).contains("0123456789"));
    }

    #[test]
    fn tls_auto_follows_the_official_client() {
        // TLS by default, the SNI from the token.
        let s = UpstreamSettings::from_flags(&flags("puppet_padlocal_x1")).unwrap();
        assert_eq!(s.tls.as_ref().map(|t| t.1.as_str()), Some("puppet_padlocal"));
        // insecure_ alone is not enough…
        let s = UpstreamSettings::from_flags(&flags("insecure_abc")).unwrap();
        assert_eq!(s.tls.as_ref().map(|t| t.1.as_str()), Some("insecure"));
        // …with the Wechaty switch set to exactly `true` it is plaintext.
        let mut f = flags("insecure_abc");
        f.wechaty_no_tls = Some("true".into());
        assert!(UpstreamSettings::from_flags(&f).unwrap().tls.is_none());
        f.wechaty_no_tls = Some("1".into());
        assert!(UpstreamSettings::from_flags(&f).unwrap().tls.is_some());
        // …but not for another kind of token.
        let mut f = flags("puppet_x");
        f.wechaty_no_tls = Some("true".into());
        assert!(UpstreamSettings::from_flags(&f).unwrap().tls.is_some());
        // A token without `_` needs a server name under TLS, not with TLS off.
        let e = UpstreamSettings::from_flags(&flags("nounderscore")).unwrap_err().to_string();
        assert!(e.contains("PUPPET_UPSTREAM_SERVER_NAME"), "{e}");
        assert!(!e.contains("nounderscore"), "{e}");
        let mut f = flags("nounderscore");
        f.tls = TlsMode::Off;
        assert!(UpstreamSettings::from_flags(&f).unwrap().tls.is_none());
        f.tls = TlsMode::On;
        f.server_name = Some("example.org".into());
        assert_eq!(UpstreamSettings::from_flags(&f).unwrap().tls.unwrap().1, "example.org");
    }

    #[test]
    fn endpoint_or_discovery() {
        let mut f = flags("insecure_a");
        f.endpoint = None;
        assert_eq!(
            UpstreamSettings::from_flags(&f).unwrap().target,
            Target::Discover { base: "https://api.chatie.io".into() }
        );
        f.authority = "http://127.0.0.1:9000/".into();
        assert_eq!(
            UpstreamSettings::from_flags(&f).unwrap().target,
            Target::Discover { base: "http://127.0.0.1:9000".into() }
        );
        f.authority = "ftp://x".into();
        assert!(UpstreamSettings::from_flags(&f).is_err());
        f.endpoint = Some("no-port".into());
        assert!(UpstreamSettings::from_flags(&f).unwrap_err().to_string().contains("host:port"));
        f.endpoint = None;
        f.token = None;
        assert!(UpstreamSettings::from_flags(&f).unwrap_err().to_string().contains("PUPPET_UPSTREAM_TOKEN"));
    }
}
