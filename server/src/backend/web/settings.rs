//! The `--backend web` flags (`PUPPET_WEB_*`) and their checked form.

use std::time::Duration;

/// The UOS desktop client's `extspam` token (2022-07, puppet-wechat#206; used by wechat4u and
/// openwechat). Opaque and not per user; Tencent rotates it now and then, hence the flag.
pub const DEFAULT_EXTSPAM: &str = "Go8FCIkFEokFCggwMDAwMDAwMRAGGvAESySibk50w5Wb3uTl2c2h64jVVrV7gNs06GFlWplHQbY/5FfiO++1yH4ykCyNPWKXmco+wfQzK5R98D3so7rJ5LmGFvBLjGceleySrc3SOf2Pc1gVehzJgODeS0lDL3/I/0S2SSE98YgKleq6Uqx6ndTy9yaL9qFxJL7eiA/R3SEfTaW1SBoSITIu+EEkXff+Pv8NHOk7N57rcGk1w0ZzRrQDkXTOXFN2iHYIzAAZPIOY45Lsh+A4slpgnDiaOvRtlQYCt97nmPLuTipOJ8Qc5pM7ZsOsAPPrCQL7nK0I7aPrFDF0q4ziUUKettzW8MrAaiVfmbD1/VkmLNVqqZVvBCtRblXb5FHmtS8FxnqCzYP4WFvz3T0TcrOqwLX1M/DQvcHaGGw0B0y4bZMs7lVScGBFxMj3vbFi2SRKbKhaitxHfYHAOAa0X7/MSS0RNAjdwoyGHeOepXOKY+h3iHeqCvgOH6LOifdHf/1aaZNwSkGotYnYScW8Yx63LnSwba7+hESrtPa/huRmB9KWvMCKbDThL/nne14hnL277EDCSocPu3rOSYjuB9gKSOdVmWsj9Dxb/iZIe+S6AiG29Esm+/eUacSba0k8wn5HhHg9d4tIcixrxveflc8vi2/wNQGVFNsGO6tB5WF0xf/plngOvQ1/ivGV/C1Qpdhzznh0ExAVJ6dwzNg7qIEBaw+BzTJTUuRcPk92Sn6QDn2Pu3mpONaEumacjW4w6ipPnPw+g2TfywJjeEcpSZaP4Q3YV5HG8D6UjWA4GSkBKculWpdCMadx0usMomsSS/74QgpYqcPkmamB4nVv1JxczYITIqItIKjD35IGKAUwAA==";

/// The web backend's flags, as given.
#[derive(Clone, clap::Args)]
pub struct WebFlags {
    /// Web WeChat: where `jslogin`, the QR code and the login poll go. Every other host (main, push,
    /// file) is derived from the login redirect; an unknown host means "the redirect's own origin".
    #[arg(
        id = "web_login_base",
        long = "web-login-base",
        env = "PUPPET_WEB_LOGIN_BASE",
        default_value = "https://login.wx.qq.com"
    )]
    pub login_base: String,

    /// Web WeChat: log in as the UOS desktop client (`mod=desktop` and its headers on the ticket
    /// exchange), the only way most accounts still get in.
    #[arg(
        id = "web_uos",
        long = "web-uos",
        env = "PUPPET_WEB_UOS",
        default_value_t = true,
        action = clap::ArgAction::Set
    )]
    pub uos: bool,

    /// Web WeChat: the UOS client's `extspam` header value (change it when Tencent rotates it).
    #[arg(
        id = "web_uos_extspam",
        long = "web-uos-extspam",
        env = "PUPPET_WEB_UOS_EXTSPAM",
        default_value = DEFAULT_EXTSPAM,
        hide_default_value = true
    )]
    pub extspam: String,

    /// Web WeChat: QR codes shown per login before giving up (each lives a few minutes; a new one
    /// comes when the old expires). `Start` begins again.
    #[arg(id = "web_qr_codes", long = "web-qr-codes", env = "PUPPET_WEB_QR_CODES", default_value_t = 5)]
    pub qr_codes: u32,

    /// Web WeChat: seconds one long poll (login, synccheck) may take before it counts as failed.
    #[arg(
        id = "web_poll_timeout_secs",
        long = "web-poll-timeout-secs",
        env = "PUPPET_WEB_POLL_TIMEOUT_SECS",
        default_value_t = 60
    )]
    pub poll_timeout_secs: u64,

    /// Web WeChat: the largest media file fetched from WeChat or sent to it, and the largest answer
    /// read from it, in MiB (the platform itself takes files up to 25 MiB without the check-upload
    /// step this backend does not do).
    #[arg(
        id = "web_max_media_mib",
        long = "web-max-media-mib",
        env = "PUPPET_WEB_MAX_MEDIA_MIB",
        default_value_t = 25
    )]
    pub max_media_mib: u64,
}

impl std::fmt::Debug for WebFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The extspam token is not secret, but long; it is left out.
        f.debug_struct("WebFlags")
            .field("login_base", &self.login_base)
            .field("uos", &self.uos)
            .field("qr_codes", &self.qr_codes)
            .field("poll_timeout_secs", &self.poll_timeout_secs)
            .field("max_media_mib", &self.max_media_mib)
            .finish_non_exhaustive()
    }
}

/// The checked settings.
#[derive(Clone, Debug)]
pub struct WebSettings {
    /// `scheme://host[:port]` of the login host, no trailing slash.
    pub login_base: String,
    /// Desktop (UOS) mode.
    pub uos: bool,
    /// The `extspam` header value.
    pub extspam: String,
    /// QR codes per login.
    pub qr_codes: u32,
    /// One long poll's limit.
    pub poll_timeout: Duration,
    /// The largest media file, in bytes.
    pub max_media: usize,
    /// Print the QR code on stdout (single-account mode).
    pub print_qr: bool,
}

impl WebSettings {
    /// Checks the flags; the error is one line naming the bad one.
    pub fn from_flags(flags: &WebFlags, print_qr: bool) -> anyhow::Result<Self> {
        let login_base = flags.login_base.trim().trim_end_matches('/').to_owned();
        let url = reqwest::Url::parse(&login_base)
            .map_err(|e| anyhow::anyhow!("PUPPET_WEB_LOGIN_BASE={login_base:?} is not a URL ({e})"))?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            anyhow::bail!("PUPPET_WEB_LOGIN_BASE={login_base:?} must be an http:// or https:// URL with a host");
        }
        if flags.qr_codes == 0 {
            anyhow::bail!("PUPPET_WEB_QR_CODES must be at least 1");
        }
        if !(5..=600).contains(&flags.poll_timeout_secs) {
            anyhow::bail!("PUPPET_WEB_POLL_TIMEOUT_SECS must be between 5 and 600 (WeChat holds a poll ~25 s)");
        }
        if !(1..=1024).contains(&flags.max_media_mib) {
            anyhow::bail!("PUPPET_WEB_MAX_MEDIA_MIB must be between 1 and 1024");
        }
        if flags.uos && flags.extspam.trim().is_empty() {
            anyhow::bail!("PUPPET_WEB_UOS_EXTSPAM is empty: set the UOS token or PUPPET_WEB_UOS=false");
        }
        Ok(Self {
            login_base,
            uos: flags.uos,
            extspam: flags.extspam.trim().to_owned(),
            qr_codes: flags.qr_codes,
            poll_timeout: Duration::from_secs(flags.poll_timeout_secs),
            max_media: (flags.max_media_mib as usize) << 20,
            print_qr,
        })
    }
}
