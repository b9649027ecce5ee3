//! Token discovery with the official Node client (script: `tests/compat/node/discovery.js`): a server
//! holding two accounts (`--accounts`) serves `GET /v0/hosties/<token>` on its side port over TLS
//! (`--tls-self-signed`), and an unmodified `wechaty` + `wechaty-puppet-service` bot configured with
//! nothing but its token and the side port as `WECHATY_PUPPET_SERVICE_AUTHORITY` (plus trust for the
//! generated CA) finds its own account and runs the ding-dong bot; with a token the server does not
//! hold, it reports the client's own discovery error.
//!
//! The client's environment is built from scratch (`env_clear`), so nothing else can steer it:
//! * `NODE_EXTRA_CA_CERTS` — the discovery fetch is `https://<authority>/v0/hosties/<token>` through
//!   Node's https agent, which trusts Node's store plus this file;
//! * `WECHATY_PUPPET_SERVICE_TLS_CA_CERT` — the gRPC channel is built with an explicit root (Wechaty's
//!   own CA unless this is set), which replaces Node's store, so `NODE_EXTRA_CA_CERTS` alone is not
//!   enough for it;
//! * the tokens are `<NAME>_<secret>` with NAME the `--tls-self-signed` name: the client takes the
//!   part before the last `_` as the TLS server name it checks the certificate against.
//!
//! The Node packages come from a tree of their own (`WECHATY_DISCOVERY_NODE_MODULES`) with
//! `@grpc/grpc-js` held at 1.9.x: wechaty-token's resolver (1.1.2, the latest) calls the listener API
//! grpc-js replaced in 1.10, and with a newer grpc-js the client throws inside its own resolver before
//! it connects, whatever the server answers.

use std::path::PathBuf;
use std::time::Duration;

use puppet_tests::{Server, http_get, installed, repo_root, workspace_binary};

/// One client run may take this long (the script's own waits are 20 s each).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// The certificate's name; every account token starts with it and `_`.
const TLS_NAME: &str = "puppet-disc";

struct Account {
    name: &'static str,
    token: &'static str,
    self_id: &'static str,
}

const ACCOUNTS: [Account; 2] = [
    Account { name: "alpha", token: "puppet-disc_alpha-4c1f9e7a2b", self_id: "wxid_alpha_bot" },
    Account { name: "beta", token: "puppet-disc_beta-8d2e0b6f13", self_id: "wxid_beta_bot" },
];

/// A token no account has (same prefix, so only discovery can refuse it).
const UNKNOWN_TOKEN: &str = "puppet-disc_nobody-5a7c3e9d01";

/// A scratch directory for the accounts file and the worlds, removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes one world per account (its own bot id, one friend) and the accounts file naming them.
fn accounts_file() -> (Scratch, PathBuf) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "puppet-discovery-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let mut file = String::new();
    for a in &ACCOUNTS {
        let world = dir.join(format!("{}-world.toml", a.name));
        std::fs::write(
            &world,
            format!(
                "[self]\nid = \"{}\"\nname = \"{}\"\n\n[[contacts]]\nid = \"wxid_alice\"\nname = \"Alice\"\nfriend = true\n",
                a.self_id, a.name
            ),
        )
        .unwrap();
        file.push_str(&format!(
            "[[account]]\nname = \"{}\"\ntoken = \"{}\"\nbackend = \"mock\"\nworld = \"{}\"\nlogin_step_ms = 5\n\n",
            a.name,
            a.token,
            world.display()
        ));
    }
    let path = dir.join("accounts.toml");
    std::fs::write(&path, file).unwrap();
    (Scratch(dir), path)
}

fn start() -> (Scratch, Server) {
    let (scratch, accounts) = accounts_file();
    let server = Server::start(&[
        "--accounts",
        accounts.to_str().unwrap(),
        "--http-listen",
        "127.0.0.1:0",
        "--tls-self-signed",
        TLS_NAME,
    ]);
    assert!(server.http_addr.is_some(), "the server printed no side-port address");
    (scratch, server)
}

fn node_modules() -> PathBuf {
    installed(
        "WECHATY_DISCOVERY_NODE_MODULES",
        "npm wechaty@1.20.2 + wechaty-puppet-service@1.19.9 with @grpc/grpc-js overridden to 1.9.x",
    )
}

/// Runs the discovery script for `token` with `mode` (its EXPECT_* variables): (success, stdout, stderr).
async fn run_client(server: &Server, token: &str, mode: &[(&str, &str)]) -> (bool, String, String) {
    let ca = server.data_dir.join("tls/ca.pem");
    let ca_pem = std::fs::read_to_string(&ca).expect("the generated CA (<data-dir>/tls/ca.pem)");
    let authority = server.http_addr.expect("side port").to_string();
    let home = server.data_dir.join(format!("client-home-{}", token.rsplit('_').next().unwrap()));
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new("node");
    cmd.arg(repo_root().join("tests/compat/node/discovery.js"))
        .current_dir(&home)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        // The Node client keeps payload caches under $HOME; a fresh one per run.
        .env("HOME", &home)
        .env("NODE_PATH", node_modules())
        .env("WECHATY_LOG", "warn")
        // What a user sets (see the module docs for why each one).
        .env("WECHATY_PUPPET_SERVICE_TOKEN", token)
        .env("WECHATY_PUPPET_SERVICE_AUTHORITY", &authority)
        .env("NODE_EXTRA_CA_CERTS", &ca)
        .env("WECHATY_PUPPET_SERVICE_TLS_CA_CERT", &ca_pem)
        // For the script's own checks of the world, never read by Wechaty.
        .env("PUPPETCTL", workspace_binary("puppetctl"))
        .env("PUPPETCTL_ENDPOINT", server.addr.to_string())
        .kill_on_drop(true);
    for (k, v) in mode {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("the discovery client did not finish within {CLIENT_TIMEOUT:?}"))
        .expect("run node");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let ok = out.status.success() && stdout.lines().any(|l| l == "DISCOVERY OK");
    (ok, stdout, stderr)
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// The side port's answer, read in plaintext (the port takes TLS and plain HTTP/1.1 alike).
async fn hosties(server: &Server, token: &str) -> (u16, String) {
    http_get(server.http_addr.unwrap(), &format!("/v0/hosties/{token}")).await
}

/// The bot with `account`'s token logs in as that account and answers ding with dong.
async fn ding_dong(server: &Server, account: &Account) {
    let (ok, stdout, stderr) = run_client(server, account.token, &[("EXPECT_SELF_ID", account.self_id)]).await;
    assert!(
        ok,
        "the Node bot of `{}` failed:\n--- stdout\n{stdout}\n--- stderr (tail)\n{}",
        account.name,
        tail(&stderr, 40)
    );
    let steps = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert_eq!(steps, 4, "every step ran for `{}`:\n{stdout}", account.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wechaty_finds_its_account_by_token_discovery() {
    let (_scratch, server) = start();

    // The answer's shape, as the clients read it: `host` and `port` (Node), `ip` and `port` (Python).
    for a in &ACCOUNTS {
        let (status, body) = hosties(&server, a.token).await;
        assert_eq!(status, 200, "GET /v0/hosties/<{}'s token>: {body}", a.name);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{body:?} is not JSON: {e}"));
        assert_eq!(v["port"].as_u64(), Some(u64::from(server.addr.port())), "port, as a number: {body}");
        assert_eq!(v["host"].as_str(), Some("127.0.0.1"), "{body}");
        assert_eq!(v["ip"].as_str(), Some("127.0.0.1"), "{body}");
    }

    // Both bots at once: each token must lead to its own account.
    let [alpha, beta] = &ACCOUNTS;
    tokio::join!(ding_dong(&server, alpha), ding_dong(&server, beta));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wechaty_reports_an_unknown_token_from_discovery() {
    let (_scratch, server) = start();
    let (status, body) = hosties(&server, UNKNOWN_TOKEN).await;
    assert_eq!((status, body.trim()), (404, "{}"), "an unknown token is not found");

    let started = std::time::Instant::now();
    let (ok, stdout, stderr) = run_client(&server, UNKNOWN_TOKEN, &[("EXPECT_NOT_FOUND", "1")]).await;
    assert!(
        ok,
        "the Node bot did not report the unknown token:\n--- stdout\n{stdout}\n--- stderr (tail)\n{}",
        tail(&stderr, 40)
    );
    let error = stdout.lines().find_map(|l| l.strip_prefix("DISCOVERY ERROR ")).expect("the client's error");
    assert!(
        error.contains("Wechaty service discovery / resolution failed")
            && error.contains(&format!("token \"{UNKNOWN_TOKEN}\" does not exist")),
        "not the client's own discovery error: {error}"
    );
    // The same error follows a transport failure or a 5xx after retries; these lines show a clean 4xx.
    for sign in ["discoverApi) fail", "rejection:", "malformed"] {
        assert!(
            !stderr.contains(sign),
            "discovery failed for another reason than 404 ({sign:?}):\n{}",
            tail(&stderr, 40)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(30), "took {:?}", started.elapsed());
}
