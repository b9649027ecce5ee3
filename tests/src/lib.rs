//! Helpers for the end-to-end tests: start the real `puppet-server` binary on a free loopback port,
//! connect typed gRPC clients to it, and find the client toolchains `scripts/test` installed.

pub mod contract;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1::event_feed_client::EventFeedClient;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// How long a server may take to print its address.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(30);

/// The token every test server is started with.
pub const TOKEN: &str = "insecure_e2e-test-token";

/// Where the `puppet-server` binary is: `PUPPET_SERVER_BIN`, else beside this test's target dir.
pub fn server_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("PUPPET_SERVER_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test-binary> → target/<profile>/puppet-server
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir");
    let bin = dir.join(format!("puppet-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build -p puppet-server`; scripts/test does) or set PUPPET_SERVER_BIN",
        bin.display()
    );
    bin
}

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    /// The gRPC address it printed.
    pub addr: SocketAddr,
    /// The side HTTP address, when enabled with `--http-listen`.
    pub http_addr: Option<SocketAddr>,
    /// Its stdout after the address line, one line per message (QR art, …).
    pub stdout: mpsc::Receiver<String>,
    /// Its data directory (removed on drop).
    pub data_dir: PathBuf,
}

impl Server {
    /// Starts the server with the test token on a free port, plus `args`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir =
            std::env::temp_dir().join(format!("puppet-e2e-{}-{}", std::process::id(), unique()));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut cmd = Command::new(server_binary());
        cmd.args(["--listen", "127.0.0.1:0", "--token", TOKEN, "--data-dir"])
            .arg(&data_dir)
            .args(args)
            .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
            .env_remove("WECHATY_TOKEN")
            .env_remove("PUPPET_LISTEN")
            .env("PUPPET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn puppet-server");
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut addr = None;
        let mut http_addr = None;
        let deadline = std::time::Instant::now() + STARTUP_TIMEOUT;
        while addr.is_none() || (args.contains(&"--http-listen") && http_addr.is_none()) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let line = rx
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("server printed no address within {STARTUP_TIMEOUT:?}"));
            if let Some(rest) = line.split("grpc://").nth(1) {
                addr = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .expect("grpc address"),
                );
            } else if line.trim_start().starts_with("http ")
                && let Some(rest) = line.split("http://").nth(1)
            {
                http_addr = Some(
                    rest.split_whitespace()
                        .next()
                        .unwrap()
                        .parse()
                        .expect("http address"),
                );
            }
        }
        Self {
            child,
            addr: addr.unwrap(),
            http_addr,
            stdout: rx,
            data_dir,
        }
    }

    /// `http://host:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain channel (no credentials).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// A `wechaty.Puppet` client that sends the test token.
    pub async fn puppet(&self) -> PuppetClient<InterceptedService<Channel, Token>> {
        PuppetClient::with_interceptor(self.channel().await, Token(TOKEN.into()))
            .max_decoding_message_size(64 << 20)
    }

    /// A `puppet_rs.v1.EventFeed` client that sends the test token.
    pub async fn feed(&self) -> EventFeedClient<InterceptedService<Channel, Token>> {
        EventFeedClient::with_interceptor(self.channel().await, Token(TOKEN.into()))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill -TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "server did not exit within 20 s of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The OS process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        _ = self.child.kill();
        _ = self.child.wait();
        _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Adds `authorization: Wechaty <token>` to every call.
#[derive(Clone)]
pub struct Token(pub String);

impl Interceptor for Token {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let v = format!("Wechaty {}", self.0)
            .parse()
            .map_err(|_| tonic::Status::internal("bad token"))?;
        req.metadata_mut().insert("authorization", v);
        Ok(req)
    }
}

/// A path `scripts/test` provides through an environment variable; a clear failure when it did not.
pub fn installed(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!(
            "{var} is not set: this test needs {what}, which scripts/test installs (run scripts/test)"
        ),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}
