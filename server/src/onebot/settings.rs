//! The OneBot v11 front door's flags (`PUPPET_ONEBOT_*`); each is also an account setting in the
//! accounts file (`onebot_http = "127.0.0.1:5700"`), so every account has its own transports.

use std::net::SocketAddr;
use std::time::Duration;

/// How a message is written in events: OneBot's segment array or a CQ-code string.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum MessageFormat {
    /// `[{"type": "text", "data": {"text": "hi"}}, …]`.
    #[default]
    Array,
    /// `hi[CQ:at,qq=10001]`.
    String,
}

/// OneBot v11 settings, flattened into the server's `Config`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct OneBotFlags {
    /// OneBot HTTP API: where to listen (`127.0.0.1:5700` or `http://127.0.0.1:5700`); unset means none.
    #[arg(long, env = "PUPPET_ONEBOT_HTTP")]
    pub onebot_http: Option<String>,

    /// OneBot forward WebSocket (`/`, `/api`, `/event`): where to listen; may equal `--onebot-http`.
    #[arg(long, env = "PUPPET_ONEBOT_WS")]
    pub onebot_ws: Option<String>,

    /// OneBot reverse WebSocket, Universal role: comma-separated `ws://…` URLs to connect to.
    #[arg(long, env = "PUPPET_ONEBOT_WS_REVERSE")]
    pub onebot_ws_reverse: Option<String>,

    /// OneBot reverse WebSocket, API role: comma-separated URLs (each paired with an Event one).
    #[arg(long, env = "PUPPET_ONEBOT_WS_REVERSE_API")]
    pub onebot_ws_reverse_api: Option<String>,

    /// OneBot reverse WebSocket, Event role: comma-separated URLs.
    #[arg(long, env = "PUPPET_ONEBOT_WS_REVERSE_EVENT")]
    pub onebot_ws_reverse_event: Option<String>,

    /// OneBot reverse WebSocket: milliseconds between reconnection attempts.
    #[arg(long, env = "PUPPET_ONEBOT_RECONNECT_MS", default_value_t = 3000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub onebot_reconnect_ms: u64,

    /// OneBot HTTP POST event reporting: comma-separated URLs every event is posted to.
    #[arg(long, env = "PUPPET_ONEBOT_POST_URL")]
    pub onebot_post_url: Option<String>,

    /// OneBot HTTP POST: milliseconds a post (and its quick operation answer) may take.
    #[arg(long, env = "PUPPET_ONEBOT_POST_TIMEOUT_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub onebot_post_timeout_ms: u64,

    /// OneBot access token, required on every transport (`Authorization: Bearer …` or
    /// `?access_token=`); required when a listener is not on loopback.
    #[arg(long, env = "PUPPET_ONEBOT_ACCESS_TOKEN", hide_env_values = true)]
    pub onebot_access_token: Option<String>,

    /// OneBot HTTP POST: secret for `X-Signature: sha1=<HMAC-SHA1 of the body>`.
    #[arg(long, env = "PUPPET_ONEBOT_SECRET", hide_env_values = true)]
    pub onebot_secret: Option<String>,

    /// OneBot: how messages are written in events (`array` or `string` with CQ codes).
    #[arg(long, env = "PUPPET_ONEBOT_MESSAGE_FORMAT", value_enum, default_value_t = MessageFormat::Array)]
    pub onebot_message_format: MessageFormat,

    /// OneBot: milliseconds between `heartbeat` meta events (0: none).
    #[arg(long, env = "PUPPET_ONEBOT_HEARTBEAT_MS", default_value_t = 15_000, value_parser = clap::value_parser!(u64).range(0..=3_600_000))]
    pub onebot_heartbeat_ms: u64,

    /// OneBot: largest request (HTTP body or WebSocket message), in KiB.
    #[arg(long, env = "PUPPET_ONEBOT_MAX_REQUEST_KIB", default_value_t = 16 * 1024, value_parser = clap::value_parser!(u64).range(1..=1024 * 1024))]
    pub onebot_max_request_kib: u64,

    /// OneBot: connections to the account's OneBot listener(s) at once; more wait to be accepted.
    #[arg(long, env = "PUPPET_ONEBOT_MAX_CONNECTIONS", default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub onebot_max_connections: u64,

    /// OneBot: forward WebSocket connections open at once per account; one more is refused (503).
    #[arg(long, env = "PUPPET_ONEBOT_MAX_CLIENTS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub onebot_max_clients: u64,

    /// OneBot: events a connection may fall behind before it is closed (1008, "fell behind").
    #[arg(long, env = "PUPPET_ONEBOT_QUEUE", default_value_t = 4096, value_parser = clap::value_parser!(u64).range(16..=1_000_000))]
    pub onebot_queue: u64,

    /// OneBot: actions of one connection running at once; more wait for one to finish.
    #[arg(long, env = "PUPPET_ONEBOT_CONCURRENT_ACTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub onebot_concurrent_actions: u64,

    /// OneBot: `_async` and `_rate_limited` actions waiting at once; one more is refused.
    #[arg(long, env = "PUPPET_ONEBOT_BACKLOG", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub onebot_backlog: u64,

    /// OneBot: milliseconds between two `_rate_limited` actions.
    #[arg(long, env = "PUPPET_ONEBOT_RATE_LIMIT_MS", default_value_t = 500, value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub onebot_rate_limit_ms: u64,
}

/// Where a reverse WebSocket connects and as which role.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reverse {
    /// `ws://…` or `wss://…`.
    pub url: String,
    /// `Universal`, `API` or `Event` (the `X-Client-Role` header).
    pub role: Role,
}

/// A reverse WebSocket's role.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Events and actions on one connection.
    Universal,
    /// Actions only.
    Api,
    /// Events only.
    Event,
}

impl Role {
    /// The `X-Client-Role` header's value.
    pub fn header(self) -> &'static str {
        match self {
            Role::Universal => "Universal",
            Role::Api => "API",
            Role::Event => "Event",
        }
    }
}

/// The checked settings.
#[derive(Clone, Debug)]
pub struct Settings {
    /// HTTP API listen address.
    pub http: Option<SocketAddr>,
    /// Forward WebSocket listen address.
    pub ws: Option<SocketAddr>,
    /// Reverse WebSocket connections.
    pub reverse: Vec<Reverse>,
    /// Reconnection interval.
    pub reconnect: Duration,
    /// HTTP POST targets.
    pub post: Vec<String>,
    /// HTTP POST timeout.
    pub post_timeout: Duration,
    /// Access token (`None`: no check, loopback listeners only).
    pub access_token: Option<String>,
    /// HTTP POST signature secret.
    pub secret: Option<String>,
    /// Event message format.
    pub format: MessageFormat,
    /// Heartbeat interval (`None`: none).
    pub heartbeat: Option<Duration>,
    /// Largest request, bytes.
    pub max_request: usize,
    /// Listener connections at once.
    pub max_connections: usize,
    /// Forward WS connections at once.
    pub max_clients: usize,
    /// Events a connection may fall behind.
    pub queue: usize,
    /// Actions of one connection at once.
    pub concurrent_actions: usize,
    /// Queued `_async`/`_rate_limited` actions at most.
    pub backlog: usize,
    /// Interval of `_rate_limited` actions.
    pub rate_limit: Duration,
}

fn listen(flag: &str, value: &str, schemes: &[&str]) -> anyhow::Result<SocketAddr> {
    let mut rest = value.trim();
    for s in schemes {
        if let Some(r) = rest.strip_prefix(s) {
            rest = r;
        }
    }
    let rest = rest.trim_end_matches('/');
    rest.parse().map_err(|_| {
        anyhow::anyhow!("{flag}: `{}` is not an address to listen on (host:port, e.g. 127.0.0.1:5700)", Shown(value))
    })
}

struct Shown<'a>(&'a str);
impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        puppet_proto::ids::Shown(self.0).fmt(f)
    }
}

fn urls(flag: &str, value: Option<&str>, schemes: &[&str]) -> anyhow::Result<Vec<String>> {
    let Some(value) = value else { return Ok(vec![]) };
    value
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            if schemes.iter().any(|s| u.starts_with(s)) && u.len() > u.find("://").unwrap_or(0) + 3 {
                Ok(u.to_owned())
            } else {
                Err(anyhow::anyhow!("{flag}: `{}` is not a {} URL", Shown(u), schemes.join(" or ")))
            }
        })
        .collect()
}

impl Settings {
    /// The settings, or `None` when no OneBot transport is configured. Refuses a listener off
    /// loopback without an access token.
    pub fn from_flags(f: &OneBotFlags) -> anyhow::Result<Option<Self>> {
        let http = f.onebot_http.as_deref().map(|v| listen("PUPPET_ONEBOT_HTTP", v, &["http://"])).transpose()?;
        let ws = f.onebot_ws.as_deref().map(|v| listen("PUPPET_ONEBOT_WS", v, &["ws://", "http://"])).transpose()?;
        let ws_schemes = ["ws://", "wss://"];
        let mut reverse: Vec<Reverse> = urls("PUPPET_ONEBOT_WS_REVERSE", f.onebot_ws_reverse.as_deref(), &ws_schemes)?
            .into_iter()
            .map(|url| Reverse { url, role: Role::Universal })
            .collect();
        let api = urls("PUPPET_ONEBOT_WS_REVERSE_API", f.onebot_ws_reverse_api.as_deref(), &ws_schemes)?;
        let event = urls("PUPPET_ONEBOT_WS_REVERSE_EVENT", f.onebot_ws_reverse_event.as_deref(), &ws_schemes)?;
        reverse.extend(api.into_iter().map(|url| Reverse { url, role: Role::Api }));
        reverse.extend(event.into_iter().map(|url| Reverse { url, role: Role::Event }));
        let post = urls("PUPPET_ONEBOT_POST_URL", f.onebot_post_url.as_deref(), &["http://", "https://"])?;
        if http.is_none() && ws.is_none() && reverse.is_empty() && post.is_empty() {
            return Ok(None);
        }
        let access_token = f.onebot_access_token.clone().filter(|t| !t.is_empty());
        if let Some(t) = &access_token
            && t.chars().any(|c| c.is_control() || c == ' ')
        {
            anyhow::bail!("PUPPET_ONEBOT_ACCESS_TOKEN may not hold spaces or control characters");
        }
        for (flag, addr) in [("PUPPET_ONEBOT_HTTP", http), ("PUPPET_ONEBOT_WS", ws)] {
            if let Some(a) = addr
                && !a.ip().is_loopback()
                && access_token.is_none()
            {
                anyhow::bail!(
                    "{flag} listens on {a} without PUPPET_ONEBOT_ACCESS_TOKEN: anyone who reaches it would drive \
                     the account; set a token (or listen on 127.0.0.1)"
                );
            }
        }
        if let (Some(h), Some(w)) = (http, ws)
            && h.port() == w.port()
            && h.port() != 0
            && h != w
        {
            anyhow::bail!(
                "PUPPET_ONEBOT_HTTP ({h}) and PUPPET_ONEBOT_WS ({w}) share a port: give the same address or two ports"
            );
        }
        Ok(Some(Self {
            http,
            ws,
            reverse,
            reconnect: Duration::from_millis(f.onebot_reconnect_ms),
            post,
            post_timeout: Duration::from_millis(f.onebot_post_timeout_ms),
            access_token,
            secret: f.onebot_secret.clone().filter(|s| !s.is_empty()),
            format: f.onebot_message_format,
            heartbeat: (f.onebot_heartbeat_ms > 0).then(|| Duration::from_millis(f.onebot_heartbeat_ms)),
            max_request: (f.onebot_max_request_kib as usize).saturating_mul(1024),
            max_connections: f.onebot_max_connections as usize,
            max_clients: f.onebot_max_clients as usize,
            queue: f.onebot_queue as usize,
            concurrent_actions: f.onebot_concurrent_actions as usize,
            backlog: f.onebot_backlog as usize,
            rate_limit: Duration::from_millis(f.onebot_rate_limit_ms),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        f: OneBotFlags,
    }

    fn settings(args: &[&str]) -> anyhow::Result<Option<Settings>> {
        let mut all = vec!["x"];
        all.extend_from_slice(args);
        Settings::from_flags(&Cli::try_parse_from(all)?.f)
    }

    #[test]
    fn nothing_configured_is_no_front_door() {
        assert!(settings(&[]).unwrap().is_none());
    }

    #[test]
    fn addresses_urls_and_roles() {
        let s = settings(&[
            "--onebot-http",
            "http://127.0.0.1:5700/",
            "--onebot-ws-reverse",
            "ws://127.0.0.1:8080/onebot/v11/ws, ws://h:1/x",
            "--onebot-ws-reverse-api",
            "ws://a/api",
            "--onebot-message-format",
            "string",
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.http, Some("127.0.0.1:5700".parse().unwrap()));
        assert_eq!(s.reverse.len(), 3);
        assert_eq!((s.reverse[2].role, s.reverse[2].url.as_str()), (Role::Api, "ws://a/api"));
        assert_eq!(s.format, MessageFormat::String);
        assert_eq!(s.heartbeat, Some(Duration::from_secs(15)));
    }

    #[test]
    fn bad_settings_are_refused_with_the_flag() {
        let e = settings(&["--onebot-http", "0.0.0.0:5700"]).unwrap_err().to_string();
        assert!(e.contains("PUPPET_ONEBOT_ACCESS_TOKEN"), "{e}");
        assert!(settings(&["--onebot-http", "0.0.0.0:5700", "--onebot-access-token", "t"]).unwrap().is_some());
        let e = settings(&["--onebot-ws", "nowhere"]).unwrap_err().to_string();
        assert!(e.contains("PUPPET_ONEBOT_WS") && e.contains("nowhere"), "{e}");
        let e = settings(&["--onebot-post-url", "ftp://x"]).unwrap_err().to_string();
        assert!(e.contains("PUPPET_ONEBOT_POST_URL"), "{e}");
        assert!(settings(&["--onebot-message-format", "xml"]).is_err());
    }

    #[test]
    fn each_account_of_the_file_has_its_own_onebot_settings() {
        let text = "[[account]]\nname = \"a\"\ntoken = \"t_a\"\nonebot_http = \"127.0.0.1:5700\"\nonebot_access_token = \"x\"\n\n\
                    [[account]]\nname = \"b\"\ntoken = \"t_b\"\nonebot_message_format = \"string\"\nonebot_ws_reverse = \"ws://h/ws\"\n";
        let args = vec!["puppet-server".into(), "--onebot-heartbeat-ms".into(), "1000".into()];
        let specs = crate::accounts::parse(text, std::path::Path::new("."), &args).unwrap();
        let a = Settings::from_flags(&specs[0].config.onebot).unwrap().unwrap();
        let b = Settings::from_flags(&specs[1].config.onebot).unwrap().unwrap();
        assert_eq!(
            (a.http, a.access_token.as_deref(), a.format),
            (Some("127.0.0.1:5700".parse().unwrap()), Some("x"), MessageFormat::Array)
        );
        assert_eq!((b.http, b.format, b.reverse.len()), (None, MessageFormat::String, 1));
        assert_eq!(b.heartbeat, Some(Duration::from_secs(1)), "the process's flag");
    }
}
