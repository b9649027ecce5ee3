//! `--backend official-account` settings: the flags (each with its `PUPPET_OA_…` variable) and
//! their validation into [`OaSettings`]. A missing or malformed setting stops start-up with one line
//! that names it.

use std::time::Duration;

use super::crypto::AesKey;

/// The callback mode (消息加解密方式), as the console sets it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OaMode {
    /// 明文模式: plaintext pushes only.
    Plain,
    /// 兼容模式: plaintext and encrypted pushes (WeChat sends both while switching).
    Compatible,
    /// 安全模式: encrypted pushes only; a plaintext one is refused.
    Safe,
}

impl OaMode {
    /// How the start-up banner names it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Plain => "plain mode",
            Self::Compatible => "compatible mode",
            Self::Safe => "safe mode",
        }
    }
}

/// Default of `--oa-max-skew-secs`.
pub const DEFAULT_MAX_SKEW_SECS: u64 = 300;
/// Default of `--oa-max-body-kib`.
pub const DEFAULT_MAX_BODY_KIB: usize = 64;

/// The Official Account flags, as given.
#[derive(Clone, clap::Args)]
pub struct OaFlags {
    /// Official Account: the AppID (开发者ID, `wx…`).
    #[arg(id = "oa_app_id", value_name = "APPID", long = "oa-app-id", env = "PUPPET_OA_APP_ID")]
    pub app_id: Option<String>,

    /// Official Account: the AppSecret (开发者密码).
    #[arg(
        id = "oa_app_secret",
        value_name = "SECRET",
        long = "oa-app-secret",
        env = "PUPPET_OA_APP_SECRET",
        hide_env_values = true
    )]
    pub app_secret: Option<String>,

    /// Official Account: the server-configuration Token (3–32 letters and digits).
    #[arg(id = "oa_token", value_name = "TOKEN", long = "oa-token", env = "PUPPET_OA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Official Account: the EncodingAESKey (43 characters). Absent: plain mode only.
    #[arg(
        id = "oa_aes_key",
        value_name = "KEY",
        long = "oa-aes-key",
        env = "PUPPET_OA_AES_KEY",
        hide_env_values = true
    )]
    pub aes_key: Option<String>,

    /// Official Account: the previous EncodingAESKey, tried when the current one fails (key rotation).
    #[arg(
        id = "oa_aes_key_previous",
        value_name = "KEY",
        long = "oa-aes-key-previous",
        env = "PUPPET_OA_AES_KEY_PREVIOUS",
        hide_env_values = true
    )]
    pub aes_key_previous: Option<String>,

    /// Official Account: the WeChat API base URL (tests point it at a local fake).
    #[arg(
        id = "oa_api_base",
        value_name = "URL",
        long = "oa-api-base",
        env = "PUPPET_OA_API_BASE",
        default_value = "https://api.weixin.qq.com"
    )]
    pub api_base: String,

    /// Official Account: the original id (`gh_…`). It becomes the bot's own contact id, and pushes
    /// addressed to another account are refused. Default: the AppID stands for the bot.
    #[arg(id = "oa_original_id", value_name = "GH_ID", long = "oa-original-id", env = "PUPPET_OA_ORIGINAL_ID")]
    pub original_id: Option<String>,

    /// Official Account: the webhook path on the side port (`PUPPET_HTTP_LISTEN`).
    #[arg(
        id = "oa_webhook_path",
        value_name = "PATH",
        long = "oa-webhook-path",
        env = "PUPPET_OA_WEBHOOK_PATH",
        default_value = "/wechat"
    )]
    pub webhook_path: String,

    /// Official Account: how long a follower's push waits for the bot's answer to go back as the
    /// passive reply, in milliseconds (WeChat gives up after 5 s). After that the push is answered
    /// `success` and the bot's answer goes through the customer-service API.
    #[arg(
        id = "oa_reply_window_ms",
        value_name = "MS",
        long = "oa-reply-window-ms",
        env = "PUPPET_OA_REPLY_WINDOW_MS",
        default_value_t = 4500
    )]
    pub reply_window_ms: u64,

    /// Official Account: the callback mode, as set in the console: `plain`, `compatible` or `safe`.
    /// Default: `safe` when `PUPPET_OA_AES_KEY` is set, else `plain`. In `safe` mode a plaintext push
    /// is refused (403); `compatible` takes both.
    #[arg(id = "oa_mode", value_name = "MODE", long = "oa-mode", env = "PUPPET_OA_MODE", value_enum)]
    pub mode: Option<OaMode>,

    /// Official Account: how far a callback's `timestamp` may be from this server's clock, in
    /// seconds, and so how long a request's (timestamp, nonce) is remembered to refuse replays.
    #[arg(
        id = "oa_max_skew_secs",
        value_name = "SECS",
        long = "oa-max-skew-secs",
        env = "PUPPET_OA_MAX_SKEW_SECS",
        default_value_t = DEFAULT_MAX_SKEW_SECS
    )]
    pub max_skew_secs: u64,

    /// Official Account: the largest webhook request body, in KiB (413 beyond).
    #[arg(
        id = "oa_max_body_kib",
        value_name = "KIB",
        long = "oa-max-body-kib",
        env = "PUPPET_OA_MAX_BODY_KIB",
        default_value_t = DEFAULT_MAX_BODY_KIB
    )]
    pub max_body_kib: usize,
}

impl Default for OaFlags {
    /// The clap defaults.
    fn default() -> Self {
        Self {
            app_id: None,
            app_secret: None,
            token: None,
            aes_key: None,
            aes_key_previous: None,
            api_base: "https://api.weixin.qq.com".into(),
            original_id: None,
            webhook_path: "/wechat".into(),
            reply_window_ms: 4500,
            mode: None,
            max_skew_secs: DEFAULT_MAX_SKEW_SECS,
            max_body_kib: DEFAULT_MAX_BODY_KIB,
        }
    }
}

// Hand-written so a `{:?}` can never print a secret.
impl std::fmt::Debug for OaFlags {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OaFlags")
            .field("app_id", &self.app_id)
            .field("api_base", &self.api_base)
            .field("original_id", &self.original_id)
            .field("webhook_path", &self.webhook_path)
            .field("reply_window_ms", &self.reply_window_ms)
            .field("mode", &self.mode)
            .field("max_skew_secs", &self.max_skew_secs)
            .field("max_body_kib", &self.max_body_kib)
            .finish_non_exhaustive()
    }
}

/// Validated Official Account settings.
#[derive(Clone)]
pub struct OaSettings {
    /// AppID.
    pub app_id: String,
    /// AppSecret (never logged).
    pub app_secret: String,
    /// The callback Token.
    pub token: String,
    /// The current EncodingAESKey; `None` in plain mode.
    pub aes_key: Option<AesKey>,
    /// The previous EncodingAESKey.
    pub aes_key_previous: Option<AesKey>,
    /// The API base, without a trailing `/`.
    pub api_base: String,
    /// The `gh_…` id, when configured.
    pub original_id: Option<String>,
    /// Where the webhook is served.
    pub webhook_path: String,
    /// See `--oa-reply-window-ms`.
    pub reply_window: Duration,
    /// Which pushes are taken: plaintext, encrypted or both (`--oa-mode`).
    pub mode: OaMode,
    /// See `--oa-max-skew-secs`.
    pub max_skew_secs: u64,
    /// The largest request body, in bytes (`--oa-max-body-kib`).
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for OaSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OaSettings")
            .field("app_id", &self.app_id)
            .field("mode", &self.mode)
            .field("api_base", &self.api_base)
            .field("original_id", &self.original_id)
            .field("webhook_path", &self.webhook_path)
            .field("max_skew_secs", &self.max_skew_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

fn required(value: &Option<String>, env: &str, what: &str) -> anyhow::Result<String> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v.to_owned()),
        _ => anyhow::bail!("{env} is not set: the official-account backend needs the account's {what}"),
    }
}

impl OaSettings {
    /// Checks every setting; the error is one line naming the first bad one.
    pub fn from_flags(flags: &OaFlags) -> anyhow::Result<Self> {
        let app_id = required(&flags.app_id, "PUPPET_OA_APP_ID", "AppID (开发者ID, wx…)")?;
        if !app_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            anyhow::bail!("PUPPET_OA_APP_ID={app_id:?} is malformed: an AppID is letters and digits (wx…)");
        }
        let app_secret = required(&flags.app_secret, "PUPPET_OA_APP_SECRET", "AppSecret (开发者密码)")?;
        let token = required(&flags.token, "PUPPET_OA_TOKEN", "server-configuration Token")?;
        if !(3..=32).contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
            anyhow::bail!("PUPPET_OA_TOKEN is malformed: WeChat accepts 3 to 32 letters and digits");
        }
        let key = |value: &Option<String>, env: &str| -> anyhow::Result<Option<AesKey>> {
            match value.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
                None => Ok(None),
                Some(v) => AesKey::from_encoding_aes_key(v).map(Some).map_err(|_| {
                    anyhow::anyhow!(
                        "{env} is malformed: an EncodingAESKey is 43 letters and digits (got {} characters)",
                        v.chars().count()
                    )
                }),
            }
        };
        let aes_key = key(&flags.aes_key, "PUPPET_OA_AES_KEY")?;
        let aes_key_previous = key(&flags.aes_key_previous, "PUPPET_OA_AES_KEY_PREVIOUS")?;
        if aes_key.is_none() && aes_key_previous.is_some() {
            anyhow::bail!("PUPPET_OA_AES_KEY_PREVIOUS is set without PUPPET_OA_AES_KEY: set the current key too");
        }
        let api_base = flags.api_base.trim().trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&api_base)
            .map_err(|e| anyhow::anyhow!("PUPPET_OA_API_BASE={api_base:?} is not a URL ({e})"))?;
        if !matches!(parsed.scheme(), "http" | "https") {
            anyhow::bail!("PUPPET_OA_API_BASE={api_base:?} must be an http:// or https:// URL");
        }
        let original_id = flags.original_id.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);
        if let Some(id) = &original_id
            && !id.starts_with("gh_")
        {
            anyhow::bail!("PUPPET_OA_ORIGINAL_ID={id:?} is malformed: an original id starts with `gh_`");
        }
        if !flags.webhook_path.starts_with('/') {
            anyhow::bail!("PUPPET_OA_WEBHOOK_PATH={:?} must start with `/`", flags.webhook_path);
        }
        if !(100..=4900).contains(&flags.reply_window_ms) {
            anyhow::bail!(
                "PUPPET_OA_REPLY_WINDOW_MS={} is out of range: WeChat waits 5 s, so use 100..=4900",
                flags.reply_window_ms
            );
        }
        let mode = match (flags.mode, &aes_key) {
            (None, Some(_)) => OaMode::Safe,
            (None, None) => OaMode::Plain,
            (Some(mode @ (OaMode::Compatible | OaMode::Safe)), None) => anyhow::bail!(
                "PUPPET_OA_MODE={} needs PUPPET_OA_AES_KEY: copy the EncodingAESKey from the console, or use \
                 PUPPET_OA_MODE=plain",
                if mode == OaMode::Safe { "safe" } else { "compatible" }
            ),
            (Some(mode), _) => mode,
        };
        if !(1..=86_400).contains(&flags.max_skew_secs) {
            anyhow::bail!(
                "PUPPET_OA_MAX_SKEW_SECS={} is out of range: use 1..=86400 (seconds a callback's timestamp may be \
                 off this server's clock)",
                flags.max_skew_secs
            );
        }
        if !(4..=1024).contains(&flags.max_body_kib) {
            anyhow::bail!(
                "PUPPET_OA_MAX_BODY_KIB={} is out of range: use 4..=1024 (a push is a few KiB)",
                flags.max_body_kib
            );
        }
        Ok(Self {
            app_id,
            app_secret,
            token,
            aes_key,
            aes_key_previous,
            api_base,
            original_id,
            webhook_path: flags.webhook_path.clone(),
            reply_window: Duration::from_millis(flags.reply_window_ms),
            mode,
            max_skew_secs: flags.max_skew_secs,
            max_body_bytes: flags.max_body_kib << 10,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags() -> OaFlags {
        OaFlags {
            app_id: Some("wx0123456789abcdef".into()),
            app_secret: Some("s3cret".into()),
            token: Some("pamtest".into()),
            aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
            aes_key_previous: None,
            api_base: "https://api.weixin.qq.com/".into(),
            original_id: Some("gh_10f6c3c3ac5a".into()),
            webhook_path: "/wechat".into(),
            ..OaFlags::default()
        }
    }

    fn error(f: OaFlags) -> String {
        OaSettings::from_flags(&f).err().map(|e| e.to_string()).unwrap_or_default()
    }

    #[test]
    fn good_settings_pass_and_debug_hides_secrets() {
        let s = OaSettings::from_flags(&flags()).unwrap();
        assert_eq!(s.api_base, "https://api.weixin.qq.com");
        assert!(s.aes_key.is_some());
        let shown = format!("{s:?} {:?}", flags());
        assert!(!shown.contains("s3cret") && !shown.contains("pamtest") && !shown.contains("ABCDEFG"), "{shown}");
    }

    #[test]
    fn each_bad_setting_is_named() {
        assert!(error(OaFlags { app_id: None, ..flags() }).starts_with("PUPPET_OA_APP_ID is not set"));
        assert!(error(OaFlags { app_secret: Some(" ".into()), ..flags() }).starts_with("PUPPET_OA_APP_SECRET"));
        assert!(error(OaFlags { token: Some("a-b".into()), ..flags() }).starts_with("PUPPET_OA_TOKEN is malformed"));
        assert!(error(OaFlags { aes_key: Some("abcde".into()), ..flags() }).starts_with("PUPPET_OA_AES_KEY is"));
        assert!(
            error(OaFlags { aes_key_previous: Some("short".into()), ..flags() })
                .starts_with("PUPPET_OA_AES_KEY_PREVIOUS is malformed")
        );
        assert!(error(OaFlags { api_base: "ftp://x".into(), ..flags() }).starts_with("PUPPET_OA_API_BASE"));
        assert!(error(OaFlags { original_id: Some("wx1".into()), ..flags() }).starts_with("PUPPET_OA_ORIGINAL_ID"));
        assert!(error(OaFlags { reply_window_ms: 6000, ..flags() }).starts_with("PUPPET_OA_REPLY_WINDOW_MS"));
        assert!(OaSettings::from_flags(&OaFlags { aes_key: None, ..flags() }).unwrap().aes_key.is_none());
        assert!(
            error(OaFlags { max_skew_secs: 0, ..flags() }).starts_with("PUPPET_OA_MAX_SKEW_SECS=0 is out of range")
        );
        assert!(error(OaFlags { max_body_kib: 2048, ..flags() }).starts_with("PUPPET_OA_MAX_BODY_KIB=2048"));
    }

    #[test]
    fn the_mode_defaults_from_the_key_and_encryption_needs_one() {
        let mode = |mode: Option<OaMode>, key: bool| {
            let f = OaFlags { mode, aes_key: if key { flags().aes_key } else { None }, ..flags() };
            OaSettings::from_flags(&f).map(|s| s.mode).map_err(|e| e.to_string())
        };
        assert_eq!(mode(None, true), Ok(OaMode::Safe));
        assert_eq!(mode(None, false), Ok(OaMode::Plain));
        assert_eq!(mode(Some(OaMode::Compatible), true), Ok(OaMode::Compatible));
        assert_eq!(mode(Some(OaMode::Plain), true), Ok(OaMode::Plain));
        for m in [OaMode::Safe, OaMode::Compatible] {
            let e = mode(Some(m), false).unwrap_err();
            assert!(e.starts_with("PUPPET_OA_MODE=") && e.contains("needs PUPPET_OA_AES_KEY"), "{e}");
        }
        let s = OaSettings::from_flags(&flags()).unwrap();
        assert_eq!((s.max_skew_secs, s.max_body_bytes), (300, 64 * 1024));
    }
}
