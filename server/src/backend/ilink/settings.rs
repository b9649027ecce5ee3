//! `--backend ilink` settings: the flags (each with its `PUPPET_ILINK_…` variable) and their
//! validation into [`IlinkSettings`]. A malformed setting stops start-up with one line naming it.

use std::time::Duration;

/// Tencent's iLink API.
pub const DEFAULT_API_BASE: &str = "https://ilinkai.weixin.qq.com";
/// Tencent's media CDN for iLink.
pub const DEFAULT_CDN_BASE: &str = "https://novac2c.cdn.weixin.qq.com/c2c";

/// The iLink flags, as given.
#[derive(Clone, clap::Args)]
pub struct IlinkFlags {
    /// iLink: the API base URL (tests point it at a local fake).
    #[arg(
        id = "ilink_api_base",
        value_name = "URL",
        long = "ilink-api-base",
        env = "PUPPET_ILINK_API_BASE",
        default_value = DEFAULT_API_BASE
    )]
    pub api_base: String,

    /// iLink: the media CDN base URL.
    #[arg(
        id = "ilink_cdn_base",
        value_name = "URL",
        long = "ilink-cdn-base",
        env = "PUPPET_ILINK_CDN_BASE",
        default_value = DEFAULT_CDN_BASE
    )]
    pub cdn_base: String,

    /// iLink: the `bot_type` asked for at QR login.
    #[arg(
        id = "ilink_bot_type",
        value_name = "N",
        long = "ilink-bot-type",
        env = "PUPPET_ILINK_BOT_TYPE",
        default_value = "3"
    )]
    pub bot_type: String,

    /// iLink: a bot token obtained earlier; skips the QR scan (a stale one leads to a fresh QR).
    #[arg(
        id = "ilink_bot_token",
        value_name = "TOKEN",
        long = "ilink-bot-token",
        env = "PUPPET_ILINK_BOT_TOKEN",
        hide_env_values = true
    )]
    pub bot_token: Option<String>,

    /// iLink: the `bot_agent` this bot declares (UA style, `Name/Version`).
    #[arg(
        id = "ilink_bot_agent",
        value_name = "AGENT",
        long = "ilink-bot-agent",
        env = "PUPPET_ILINK_BOT_AGENT",
        default_value = "puppet-rs"
    )]
    pub bot_agent: String,

    /// iLink: how long after a user's last message the bot may still write to them (the platform's
    /// session window, 24 h).
    #[arg(
        id = "ilink_session_window_secs",
        value_name = "SECS",
        long = "ilink-session-window-secs",
        env = "PUPPET_ILINK_SESSION_WINDOW_SECS",
        default_value_t = 86_400
    )]
    pub session_window_secs: u64,

    /// iLink: bot messages allowed per user message (the platform's quota, 10).
    #[arg(
        id = "ilink_replies_per_message",
        value_name = "N",
        long = "ilink-replies-per-message",
        env = "PUPPET_ILINK_REPLIES_PER_MESSAGE",
        default_value_t = 10
    )]
    pub replies_per_message: u32,

    /// iLink: how many times an expired login QR is replaced before the login gives up.
    #[arg(
        id = "ilink_qr_refreshes",
        value_name = "N",
        long = "ilink-qr-refreshes",
        env = "PUPPET_ILINK_QR_REFRESHES",
        default_value_t = 3
    )]
    pub qr_refreshes: u32,

    /// iLink: the largest media file downloaded from or uploaded to the CDN, in MiB.
    #[arg(
        id = "ilink_max_media_mib",
        value_name = "MIB",
        long = "ilink-max-media-mib",
        env = "PUPPET_ILINK_MAX_MEDIA_MIB",
        default_value_t = 100
    )]
    pub max_media_mib: u64,
}

impl std::fmt::Debug for IlinkFlags {
    /// Without the bot token (a secret).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IlinkFlags")
            .field("api_base", &self.api_base)
            .field("cdn_base", &self.cdn_base)
            .field("bot_type", &self.bot_type)
            .field("bot_token", &self.bot_token.as_ref().map(|_| "<set>"))
            .field("bot_agent", &self.bot_agent)
            .field("session_window_secs", &self.session_window_secs)
            .field("replies_per_message", &self.replies_per_message)
            .finish_non_exhaustive()
    }
}

/// The validated settings (no `Debug`: they hold the bot token).
#[derive(Clone)]
pub struct IlinkSettings {
    /// API base, no trailing `/`.
    pub api_base: String,
    /// CDN base, no trailing `/`.
    pub cdn_base: String,
    /// `bot_type`.
    pub bot_type: String,
    /// A token given at start-up.
    pub bot_token: Option<String>,
    /// `bot_agent`.
    pub bot_agent: String,
    /// The session window.
    pub session_window: Duration,
    /// The quota per user message.
    pub replies_per_message: u32,
    /// QR replacements allowed.
    pub qr_refreshes: u32,
    /// Media size limit in bytes.
    pub max_media_bytes: u64,
}

fn base_url(name: &str, value: &str) -> anyhow::Result<String> {
    let v = value.trim().trim_end_matches('/');
    if !(v.starts_with("https://") || v.starts_with("http://")) || v.len() <= "https://".len() {
        anyhow::bail!("{name} must be an http(s) URL, got `{}`", puppet_proto::ids::Shown(value));
    }
    Ok(v.to_string())
}

impl IlinkSettings {
    /// Validates the flags.
    pub fn from_flags(f: &IlinkFlags) -> anyhow::Result<Self> {
        if f.bot_type.is_empty() || !f.bot_type.bytes().all(|b| b.is_ascii_digit()) || f.bot_type.len() > 9 {
            anyhow::bail!("PUPPET_ILINK_BOT_TYPE must be a number, got `{}`", puppet_proto::ids::Shown(&f.bot_type));
        }
        let bot_token = f.bot_token.as_deref().map(str::trim).filter(|t| !t.is_empty()).map(String::from);
        if let Some(t) = &bot_token
            && (t.len() > 1024 || t.bytes().any(|b| !(0x21..0x7f).contains(&b)))
        {
            anyhow::bail!("PUPPET_ILINK_BOT_TOKEN must be printable ASCII without spaces, at most 1024 characters");
        }
        let agent = f.bot_agent.trim();
        if agent.is_empty() || agent.len() > 256 || !agent.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            anyhow::bail!("PUPPET_ILINK_BOT_AGENT must be 1–256 printable ASCII characters (`Name/Version`)");
        }
        if f.session_window_secs == 0 || f.replies_per_message == 0 {
            anyhow::bail!("PUPPET_ILINK_SESSION_WINDOW_SECS and PUPPET_ILINK_REPLIES_PER_MESSAGE must be at least 1");
        }
        if f.max_media_mib == 0 || f.max_media_mib > 1024 {
            anyhow::bail!("PUPPET_ILINK_MAX_MEDIA_MIB must be 1–1024");
        }
        Ok(Self {
            api_base: base_url("PUPPET_ILINK_API_BASE", &f.api_base)?,
            cdn_base: base_url("PUPPET_ILINK_CDN_BASE", &f.cdn_base)?,
            bot_type: f.bot_type.clone(),
            bot_token,
            bot_agent: agent.to_string(),
            session_window: Duration::from_secs(f.session_window_secs),
            replies_per_message: f.replies_per_message,
            qr_refreshes: f.qr_refreshes,
            max_media_bytes: f.max_media_mib << 20,
        })
    }
}
