//! The official Wechaty clients, unmodified, against the real server (scripts in `tests/compat/`):
//! Node plaintext, Node TLS with Wechaty's published insecure key pair, Node TLS with a CA the
//! server generated, and Python plaintext. Each script asserts every step itself and ends with
//! `COMPAT OK`. A Node client with TLS on cannot fall back to plaintext, so the TLS variants passing
//! proves the TLS side of the shared port.

use std::path::{Path, PathBuf};
use std::time::Duration;

use puppet_tests::{Server, TOKEN, installed, repo_root, workspace_binary};

/// One client run may take this long (the scripts' own waits are 15 s each).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(180);

async fn run_client(program: &Path, script: &str, server: &Server, env: &[(&str, String)]) {
    let home = server.data_dir.join("client-home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = tokio::process::Command::new(program);
    cmd.arg(repo_root().join(script))
        .current_dir(&home)
        // The Node client keeps payload caches under $HOME; a fresh one per run.
        .env("HOME", &home)
        .env("WECHATY_PUPPET_SERVICE_ENDPOINT", server.addr.to_string())
        .env("WECHATY_PUPPET_SERVICE_TOKEN", TOKEN)
        .env("PUPPETCTL", workspace_binary("puppetctl"))
        .env("WECHATY_LOG", "warn")
        .env_remove("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT")
        .env_remove("WECHATY_PUPPET_SERVICE_TLS_CA_CERT")
        .env_remove("WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME")
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(CLIENT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish within {CLIENT_TIMEOUT:?}"))
        .expect("run the client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.lines().any(|l| l == "COMPAT OK"),
        "{script} failed ({}):\n--- stdout\n{stdout}\n--- stderr (tail)\n{}",
        out.status,
        stderr.lines().rev().take(40).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n")
    );
    let steps = stdout.lines().filter(|l| l.starts_with("ok ")).count();
    assert!(steps >= 10, "only {steps} steps ran:\n{stdout}");
}

fn node_modules() -> PathBuf {
    installed("WECHATY_NODE_MODULES", "npm wechaty@1.20.2 + wechaty-puppet-service@1.19.9")
}

async fn node(server: &Server, mut env: Vec<(&str, String)>) {
    env.push(("NODE_PATH", node_modules().display().to_string()));
    run_client(Path::new("node"), "tests/compat/node/bot.js", server, &env).await;
}

/// Wechaty's published insecure server pair, read from the installed package (never stored here).
async fn published_insecure_pair() -> (String, String) {
    let ca_js = node_modules().join("wechaty-puppet-service/dist/cjs/src/auth/ca.js");
    let out = tokio::process::Command::new("node")
        .arg("-e")
        .arg("const ca = require(process.argv[1]); process.stdout.write(JSON.stringify([ca.TLS_INSECURE_SERVER_CERT, ca.TLS_INSECURE_SERVER_KEY]))")
        .arg(&ca_js)
        .output()
        .await
        .expect("node");
    assert!(out.status.success(), "reading {}: {}", ca_js.display(), String::from_utf8_lossy(&out.stderr));
    let [cert, key]: [String; 2] = serde_json::from_slice(&out.stdout).expect("cert and key");
    assert!(cert.contains("BEGIN CERTIFICATE") && key.contains("PRIVATE KEY"));
    (cert, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wechaty_over_plaintext() {
    let server = Server::start(&["--autostart", "false"]);
    node(&server, vec![("WECHATY_PUPPET_SERVICE_NO_TLS_INSECURE_CLIENT", "true".into())]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wechaty_over_tls_with_the_published_insecure_pair() {
    let (cert, key) = published_insecure_pair().await;
    // The token's prefix ("insecure") is the SNI the client checks against the certificate's CN.
    assert!(TOKEN.starts_with("insecure_"));
    let server = Server::start_with_env(
        &["--autostart", "false"],
        &[("WECHATY_PUPPET_SERVICE_TLS_SERVER_CERT", &cert), ("WECHATY_PUPPET_SERVICE_TLS_SERVER_KEY", &key)],
    );
    node(&server, vec![]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_wechaty_over_tls_with_a_generated_ca() {
    let server = Server::start(&["--autostart", "false", "--tls-self-signed", "puppet-compat"]);
    let ca = std::fs::read_to_string(server.data_dir.join("tls/ca.pem")).expect("generated CA");
    node(
        &server,
        vec![
            ("WECHATY_PUPPET_SERVICE_TLS_CA_CERT", ca),
            ("WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME", "puppet-compat".into()),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_wechaty_over_plaintext() {
    let python = installed("PUPPET_TEST_WECHATY_PYTHON", "a venv with python-wechaty 0.10.7");
    let server = Server::start(&["--autostart", "false"]);
    run_client(&python, "tests/compat/python/bot.py", &server, &[]).await;
}
