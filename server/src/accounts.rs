//! Accounts: one process serves many bot accounts, each found by the credential a client presents.
//!
//! * **The accounts file** (`--accounts FILE`, TOML): one `[[account]]` table per account with its
//!   `name` (logs, metrics, paths; never the token), its `token`, its `backend` and that backend's
//!   settings under their flag names in snake case (`--world` → `world`). A secret may be given as
//!   a file instead (`token_file`, `oa_app_secret_file`, …). Each account's settings are the
//!   process's flags with the account's own on top, checked by the same parser as the command line,
//!   so every default, range and error message is the same. Without the file, the flags make one
//!   account exactly as before.
//! * **Looking up a token** hashes it with a key drawn at start and looks the digest up: the time a
//!   lookup takes says nothing about how much of a guess was right.
//! * **Sharding**: with `--replicas N` each process (pod `<sts>-<k>`) serves the accounts whose token
//!   hashes to its ordinal by rendezvous hashing, and knows which pod owns every other account.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::Path;

use clap::Parser;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::Config;

/// Settings that belong to the whole process and cannot be given per account.
const PROCESS_WIDE: [&str; 34] = [
    "listen",
    "http_listen",
    "data_dir",
    "tls_cert",
    "tls_key",
    "tls_self_signed",
    "no_tls",
    "log_format",
    "max_connections",
    "max_handshakes",
    "handshake_timeout_secs",
    "idle_timeout_secs",
    "header_read_timeout_secs",
    "http_request_timeout_secs",
    "http_max_body_kib",
    "max_concurrent_streams",
    "max_header_list_kib",
    "keepalive_secs",
    "keepalive_timeout_secs",
    "max_pending_resets",
    "max_local_resets",
    "auth_failure_burst",
    "auth_failures_per_sec",
    "qrcode_public",
    "shutdown_grace_secs",
    "max_message_mib",
    "max_request_kib",
    "accounts",
    "admin_token",
    "replicas",
    "pod_name",
    "pod_service",
    "discovery_port",
    "discovery_host",
];

/// Why an accounts file was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{path}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct AccountsError {
    /// The file.
    pub path: String,
    /// The line, when one is to blame.
    pub line: Option<usize>,
    /// What is wrong, in a sentence a person can act on.
    pub reason: String,
}

/// One account as the file (or the flags) describe it.
#[derive(Clone)]
pub struct AccountSpec {
    /// Its name.
    pub name: String,
    /// The token clients present (a secret: never logged or printed in full).
    pub token: String,
    /// Its settings: the process's flags with the account's own on top.
    pub config: Config,
    /// The line of its table in the file (0 for the account the flags make).
    pub line: usize,
}

impl std::fmt::Debug for AccountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountSpec").field("name", &self.name).field("line", &self.line).finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct File {
    #[serde(default)]
    account: Vec<toml::Spanned<toml::Table>>,
}

/// A valid account name: letters, digits, `-` and `_`, 1 to 64 of them (it becomes a path and a
/// metric label).
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

fn scalar(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Reads and checks an accounts file. `process_args` are the process's own arguments (the
/// program name first), which every account starts from. Blocking.
pub fn load(path: &Path, process_args: &[OsString]) -> Result<Vec<AccountSpec>, AccountsError> {
    let shown = path.display().to_string();
    let err = |line: Option<usize>, reason: String| AccountsError { path: shown.clone(), line, reason };
    let text = std::fs::read_to_string(path).map_err(|e| err(None, format!("cannot read the accounts file: {e}")))?;
    parse(&text, path.parent().unwrap_or(Path::new(".")), process_args).map_err(|(line, reason)| err(line, reason))
}

/// [`load`] on text; relative `*_file` paths are read from `base`.
pub fn parse(text: &str, base: &Path, process_args: &[OsString]) -> Result<Vec<AccountSpec>, (Option<usize>, String)> {
    let file: File = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        (line, format!("not a valid accounts file: {}", e.message()))
    })?;
    if file.account.is_empty() {
        return Err((None, "no [[account]] table: the file must describe at least one account".into()));
    }
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut tokens: HashMap<String, usize> = HashMap::new();
    let mut webhooks: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::with_capacity(file.account.len());
    for spanned in &file.account {
        let line = line_of(text, spanned.span().start);
        let table = spanned.get_ref();
        let fail = |reason: String| (Some(line), reason);
        let mut settings: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in table {
            let (key, value) = match key.strip_suffix("_file") {
                Some(secret) => {
                    let Some(rel) = scalar(value) else {
                        return Err(fail(format!("`{key}` must be a file path")));
                    };
                    let path = base.join(rel);
                    let text = std::fs::read_to_string(&path)
                        .map_err(|e| fail(format!("`{key}`: cannot read {}: {e}", path.display())))?;
                    (secret.to_owned(), text.trim().to_owned())
                }
                None => {
                    let Some(v) = scalar(value) else {
                        return Err(fail(format!("`{key}` must be a string, a number or a boolean")));
                    };
                    (key.clone(), v)
                }
            };
            if PROCESS_WIDE.contains(&key.as_str()) {
                return Err(fail(format!(
                    "`{key}` is set for the whole process (on the command line), not per account"
                )));
            }
            if settings.insert(key.clone(), value).is_some() {
                return Err(fail(format!("`{key}` is given twice")));
            }
        }
        let name = settings.remove("name").ok_or_else(|| fail("the account has no `name`".into()))?;
        if !valid_name(&name) {
            return Err(fail(format!(
                "the name `{}` may hold only letters, digits, `-` and `_` (1 to 64)",
                puppet_proto::ids::Shown(&name)
            )));
        }
        if let Some(first) = names.insert(name.clone(), line) {
            return Err(fail(format!("the name `{name}` is used already (line {first})")));
        }
        let token = settings.remove("token").ok_or_else(|| fail(format!("account `{name}` has no `token`")))?;
        if let Some(first) = tokens.insert(token.clone(), line) {
            return Err(fail(format!("account `{name}` has the token of the account on line {first}")));
        }
        let mut args = process_args.to_vec();
        args.push("--token".into());
        args.push(token.clone().into());
        for (key, value) in &settings {
            args.push(format!("--{}", key.replace('_', "-")).into());
            args.push(value.into());
        }
        let mut config =
            Config::try_parse_from(&args).map_err(|e| fail(format!("account `{name}`: {}", clap_reason(&e))))?;
        crate::config::validate_token(&token).map_err(|e| fail(format!("account `{name}`: {e}")))?;
        // Each account keeps its state apart: its own directory, blob directory and webhook path.
        let process_blobs = config.blob_dir.clone().filter(|_| !settings.contains_key("blob_dir"));
        config.data_dir = Some(config.data_dir().join("accounts").join(&name));
        if let Some(dir) = process_blobs {
            config.blob_dir = Some(dir.join(&name));
        }
        if !settings.contains_key("oa_webhook_path") {
            config.oa.webhook_path = format!("/wechat/{name}");
        }
        if config.backend == crate::backend::BackendKind::OfficialAccount
            && let Some(first) = webhooks.insert(config.oa.webhook_path.clone(), line)
        {
            return Err(fail(format!(
                "account `{name}` has the webhook path {} of the account on line {first}",
                config.oa.webhook_path
            )));
        }
        out.push(AccountSpec { name, token, config, line });
    }
    Ok(out)
}

/// clap's message without its usage lines, with flags named as the file names them.
fn clap_reason(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ");
    first.replace("'--", "'").replace("--", "").replace('-', "_")
}

/// What a process knows about sharding: `replicas` processes, this one with ordinal `ordinal`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shard {
    /// How many processes share the accounts.
    pub replicas: u32,
    /// This process's ordinal (0-based).
    pub ordinal: u32,
    /// The StatefulSet's name (the pod name without its ordinal).
    pub statefulset: String,
    /// The headless Service whose DNS names the pods (`<sts>-<k>.<service>`).
    pub service: Option<String>,
}

impl Shard {
    /// From `POD_NAME` (`<statefulset>-<ordinal>`) and the replica count.
    pub fn from_pod_name(pod_name: &str, replicas: u32, service: Option<String>) -> Result<Self, String> {
        let (sts, ordinal) =
            pod_name.rsplit_once('-').and_then(|(sts, k)| Some((sts, k.parse::<u32>().ok()?))).ok_or_else(|| {
                format!("POD_NAME `{pod_name}` does not end in -<ordinal> (a StatefulSet pod's name does)")
            })?;
        if replicas == 0 || ordinal >= replicas {
            return Err(format!("POD_NAME `{pod_name}` has ordinal {ordinal}, but --replicas is {replicas}"));
        }
        Ok(Self { replicas, ordinal, statefulset: sts.to_owned(), service })
    }

    /// The ordinal of the process that owns `token`.
    pub fn owner(&self, token: &str) -> u32 {
        owner(token, self.replicas)
    }

    /// The stable DNS name of pod `k`.
    pub fn host_of(&self, k: u32) -> String {
        match &self.service {
            Some(svc) => format!("{}-{k}.{svc}", self.statefulset),
            None => format!("{}-{k}", self.statefulset),
        }
    }
}

/// Rendezvous (highest-random-weight) hashing: the ordinal in `0..replicas` whose weight for
/// `token` is highest. Changing the replica count moves only the accounts that land on the added
/// (or from the removed) ordinals.
pub fn owner(token: &str, replicas: u32) -> u32 {
    (0..replicas.max(1))
        .max_by_key(|k| {
            let mut h = Sha256::new();
            h.update(token.as_bytes());
            h.update(k.to_be_bytes());
            let d = h.finalize();
            u64::from_be_bytes(d[..8].try_into().unwrap_or_default())
        })
        .unwrap_or(0)
}

/// A keyed digest of a token: what token lookups compare.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl TokenKey {
    /// A fresh key from the OS.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        if getrandom::fill(&mut key).is_err() {
            key = Sha256::digest(format!("{:?}{}", std::time::SystemTime::now(), std::process::id())).into();
        }
        Self(key)
    }

    /// The digest of `token` under this key.
    pub fn digest(&self, token: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.0);
        h.update(token.as_bytes());
        h.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> Vec<OsString> {
        vec!["puppet-server".into(), "--listen".into(), "127.0.0.1:0".into()]
    }

    const TWO: &str = r#"
[[account]]
name = "sales"
token = "puppet_sales_0001"
backend = "mock"
login_step_ms = 5

[[account]]
name = "support"
token = "puppet_support_0002"
backend = "mock"
autostart = false
"#;

    #[test]
    fn accounts_take_the_process_flags_and_their_own() {
        let specs = parse(TWO, Path::new("."), &args()).unwrap();
        assert_eq!(specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(), ["sales", "support"]);
        assert_eq!(specs[0].config.login_step_ms, 5);
        assert_eq!(specs[1].config.login_step_ms, 50, "the default");
        assert!(!specs[1].config.autostart);
        assert_eq!(specs[0].config.listen, Some("127.0.0.1:0".parse().unwrap()), "the process's flag");
        assert_eq!((specs[0].line, specs[1].line), (2, 8));
        assert!(!format!("{:?}", specs[0]).contains("puppet_sales_0001"), "Debug never shows the token");
    }

    #[test]
    fn a_bad_file_is_refused_with_the_line_and_the_reason() {
        let bad = |text: &str| parse(text, Path::new("."), &args()).map(|_| ()).unwrap_err();
        assert_eq!(bad("[[account]]\nname = \"a\"\n").1, "account `a` has no `token`");
        let (line, why) = bad(&format!("{TWO}\n[[account]]\nname = \"sales\"\ntoken = \"t_3\"\n"));
        assert_eq!((line, why.as_str()), (Some(14), "the name `sales` is used already (line 2)"));
        let (line, why) = bad("[[account]]\nname = \"x\"\ntoken = \"t_1\"\nworld = \n");
        assert_eq!(line, Some(4), "{why}");
        let (_, why) = bad("[[account]]\nname = \"x\"\ntoken = \"t_1\"\nlisten = \"0.0.0.0:1\"\n");
        assert!(why.contains("`listen` is set for the whole process"), "{why}");
        let (_, why) = bad("[[account]]\nname = \"x\"\ntoken = \"t_1\"\nwrold = \"w.toml\"\n");
        assert!(why.contains("wrold"), "{why}");
        let (_, why) = bad("[[account]]\nname = \"x\"\ntoken = \"has space\"\n");
        assert!(why.contains("letters, digits"), "{why}");
        let (_, why) = bad("[[account]]\nname = \"a/b\"\ntoken = \"t_1\"\n");
        assert!(why.contains("may hold only"), "{why}");
        let (_, why) = bad("[[account]]\nname = \"x\"\ntoken = \"t_1\"\nlogin_step_ms = \"soon\"\n");
        assert!(why.contains("account `x`") && why.contains("soon"), "{why}");
        assert!(bad("").1.contains("at least one account"));
    }

    #[test]
    fn secrets_may_come_from_files() {
        let dir = std::env::temp_dir().join(format!("puppet-accounts-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("sales.token"), "puppet_sales_9\n").unwrap();
        let specs =
            parse("[[account]]\nname = \"sales\"\ntoken_file = \"sales.token\"\nbackend = \"mock\"\n", &dir, &args())
                .unwrap();
        assert_eq!(specs[0].token, "puppet_sales_9");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn rendezvous_spreads_tokens_and_moves_few_when_a_replica_is_added() {
        let tokens: Vec<String> = (0..2000).map(|i| format!("puppet_t_{i}")).collect();
        let mut counts = [0u32; 8];
        for t in &tokens {
            counts[owner(t, 8) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (180..=320).contains(c)), "{counts:?}");
        let moved = tokens.iter().filter(|t| owner(t, 8) != owner(t, 9)).count();
        assert!(moved < 400, "only about 1/9 move to the new replica: {moved}");
        assert!(tokens.iter().filter(|t| owner(t, 8) != owner(t, 9)).all(|t| owner(t, 9) == 8));
    }

    #[test]
    fn pods_know_their_ordinal_and_their_peers_names() {
        let s = Shard::from_pod_name("puppet-rs-3", 8, Some("puppet-rs-pods".into())).unwrap();
        assert_eq!((s.ordinal, s.statefulset.as_str()), (3, "puppet-rs"));
        assert_eq!(s.host_of(5), "puppet-rs-5.puppet-rs-pods");
        assert!(Shard::from_pod_name("puppet-rs", 8, None).is_err());
        assert!(Shard::from_pod_name("puppet-rs-9", 8, None).is_err());
    }

    #[test]
    fn token_digests_are_keyed() {
        let (a, b) = (TokenKey::random(), TokenKey::random());
        assert_eq!(a.digest("t"), a.digest("t"));
        assert_ne!(a.digest("t"), b.digest("t"));
        assert_ne!(a.digest("t"), a.digest("u"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
        /// Any text, or an accounts table with arbitrary keys and values: an answer, never a
        /// panic, and a refusal's line lies within the text.
        #[test]
        fn any_file_is_answered_never_a_panic(
            text in "(?s).{0,400}",
            keys in proptest::collection::vec("[a-z_]{1,20}", 0..6),
            values in proptest::collection::vec("[ -~]{0,30}", 0..6),
        ) {
            let lines = |t: &str| t.lines().count().max(1) + 1;
            if let Err((Some(line), _)) = parse(&text, Path::new("."), &args()) {
                proptest::prop_assert!(line <= lines(&text));
            }
            let mut table = String::from("[[account]]\nname = \"p\"\ntoken = \"t_1\"\n");
            for (k, v) in keys.iter().zip(&values) {
                table.push_str(&format!("{k} = {}\n", toml::Value::String(v.clone())));
            }
            if let Err((Some(line), _)) = parse(&table, Path::new("."), &args()) {
                proptest::prop_assert!(line <= lines(&table));
            }
        }
    }
}
