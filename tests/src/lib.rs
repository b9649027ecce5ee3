//! Helpers for the end-to-end tests: start the real `puppet-server` binary on a free loopback port,
//! connect typed gRPC clients to it, and find the client toolchains `scripts/test` installed.

pub mod contract;
#[path = "../fakes/ilink/mod.rs"]
pub mod fake_ilink;
#[path = "../fakes/web/mod.rs"]
pub mod fake_web;
pub mod fake_wechat;
pub mod raw;

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
    workspace_binary("puppet-server")
}

/// A binary of this workspace, from the target dir this test runs in.
pub fn workspace_binary(name: &str) -> PathBuf {
    // target/<profile>/deps/<test-binary> or target/<profile>/<bench-binary> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("current_exe");
    let mut dir = exe.parent().expect("target profile dir");
    if dir.ends_with("deps") {
        dir = dir.parent().expect("target profile dir");
    }
    let bin = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} does not exist: build it first (`cargo build --workspace --bins`; scripts/test does)",
        bin.display()
    );
    bin
}

/// The `wechaty.Puppet` client the tests use (with a token interceptor).
pub type PuppetClientT = PuppetClient<InterceptedService<Channel, Token>>;

/// A running server, killed when dropped.
pub struct Server {
    child: Child,
    /// The gRPC address it printed.
    pub addr: SocketAddr,
    /// The side HTTP address, when enabled with `--http-listen` (its banner line may say `http://`
    /// or `https://`).
    pub http_addr: Option<SocketAddr>,
    /// Its stdout after the address line, one line per message (QR art, …).
    pub stdout: mpsc::Receiver<String>,
    /// Its data directory (removed on drop unless given with [`Server::start_in`]).
    pub data_dir: PathBuf,
    keep_data_dir: bool,
}

impl Server {
    /// Starts the server with the test token on a free port, plus `args`.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// As [`Server::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        let data_dir = std::env::temp_dir().join(format!("puppet-e2e-{}-{}", std::process::id(), unique()));
        Self::launch(data_dir, false, args, env)
    }

    /// As [`Server::start`], with a data directory the caller owns (kept on drop), so a second
    /// server can start where the first stopped.
    pub fn start_in(data_dir: &std::path::Path, args: &[&str]) -> Self {
        Self::launch(data_dir.to_owned(), true, args, &[])
    }

    /// As [`Server::start_in`], with extra environment variables.
    pub fn start_in_with_env(data_dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch(data_dir.to_owned(), true, args, env)
    }

    /// As [`Server::start_in`], with its log (level info) written to `<data dir>/server.log` (see
    /// [`Server::log`]).
    pub fn start_in_logged(data_dir: &std::path::Path, args: &[&str]) -> Self {
        Self::launch_with(data_dir.to_owned(), true, args, &[("PUPPET_LOG", "info")], None, true)
    }

    /// As [`Server::start`], under a limit of `nofile` open file descriptors (`ulimit -n`), with
    /// its log (level info) written to `<data dir>/server.log` (see [`Server::log`]).
    pub fn start_limited(args: &[&str], nofile: u64) -> Self {
        let data_dir = std::env::temp_dir().join(format!("puppet-e2e-{}-{}", std::process::id(), unique()));
        Self::launch_with(data_dir, false, args, &[("PUPPET_LOG", "info")], Some(nofile), true)
    }

    /// As [`Server::start`], with its log (level info) written to `<data dir>/server.log` (see
    /// [`Server::log`]).
    pub fn start_logged(args: &[&str]) -> Self {
        let data_dir = std::env::temp_dir().join(format!("puppet-e2e-{}-{}", std::process::id(), unique()));
        Self::launch_with(data_dir, false, args, &[("PUPPET_LOG", "info")], None, true)
    }

    /// The log of a server started with [`Server::start_logged`] or [`Server::start_limited`].
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }

    fn launch(data_dir: PathBuf, keep_data_dir: bool, args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch_with(data_dir, keep_data_dir, args, env, None, false)
    }

    fn launch_with(
        data_dir: PathBuf,
        keep_data_dir: bool,
        args: &[&str],
        env: &[(&str, &str)],
        nofile: Option<u64>,
        logged: bool,
    ) -> Self {
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut cmd = match nofile {
            // The shell sets the limit, then becomes the server (same pid).
            Some(n) => {
                let mut c = Command::new("sh");
                c.args(["-c", &format!("ulimit -n {n} && exec \"$0\" \"$@\"")]).arg(server_binary());
                c
            }
            None => Command::new(server_binary()),
        };
        cmd.args(["--listen", "127.0.0.1:0", "--data-dir"]).arg(&data_dir);
        // With an accounts file, each account brings its own token.
        if !args.contains(&"--accounts") {
            cmd.args(["--token", TOKEN]);
        }
        cmd.args(args)
            .env_remove("WECHATY_PUPPET_SERVICE_TOKEN")
            .env_remove("WECHATY_TOKEN")
            .env_remove("PUPPET_LISTEN")
            .env("PUPPET_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(if logged {
                Stdio::from(std::fs::File::create(data_dir.join("server.log")).expect("server.log"))
            } else {
                Stdio::inherit()
            });
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
                addr = Some(rest.split_whitespace().next().unwrap().parse().expect("grpc address"));
            } else if (line.trim_start().starts_with("http ") || line.trim_start().starts_with("https "))
                && let Some(rest) = line.split("://").nth(1)
            {
                http_addr = Some(rest.split_whitespace().next().unwrap().parse().expect("http address"));
            }
        }
        Self { child, addr: addr.unwrap(), http_addr, stdout: rx, data_dir, keep_data_dir }
    }

    /// `http://host:port`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A plain channel (no credentials).
    pub async fn channel(&self) -> Channel {
        Channel::from_shared(self.endpoint()).unwrap().connect().await.expect("connect")
    }

    /// A `wechaty.Puppet` client on its own connection whose HTTP/2 receive window is only
    /// `window` bytes: a deliberately slow reader fills it quickly.
    pub async fn puppet_with_window(&self, window: u32) -> PuppetClient<InterceptedService<Channel, Token>> {
        let channel = Channel::from_shared(self.endpoint())
            .unwrap()
            .initial_stream_window_size(window)
            .initial_connection_window_size(window)
            .connect()
            .await
            .expect("connect");
        PuppetClient::with_interceptor(channel, Token(TOKEN.into()))
    }

    /// A `wechaty.Puppet` client that sends `token`.
    pub async fn puppet_as(&self, token: &str) -> PuppetClient<InterceptedService<Channel, Token>> {
        PuppetClient::with_interceptor(self.channel().await, Token(token.into())).max_decoding_message_size(64 << 20)
    }

    /// A `wechaty.Puppet` client that sends the test token.
    pub async fn puppet(&self) -> PuppetClient<InterceptedService<Channel, Token>> {
        PuppetClient::with_interceptor(self.channel().await, Token(TOKEN.into())).max_decoding_message_size(64 << 20)
    }

    /// A `puppet_rs.v1.EventFeed` client that sends the test token.
    pub async fn feed(&self) -> EventFeedClient<InterceptedService<Channel, Token>> {
        EventFeedClient::with_interceptor(self.channel().await, Token(TOKEN.into()))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().expect("kill -TERM");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit within 20 s of SIGTERM");
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
        if !self.keep_data_dir {
            _ = std::fs::remove_dir_all(&self.data_dir);
        }
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
        let v = format!("Wechaty {}", self.0).parse().map_err(|_| tonic::Status::internal("bad token"))?;
        req.metadata_mut().insert("authorization", v);
        Ok(req)
    }
}

/// A path `scripts/test` provides through an environment variable; a clear failure when it did not.
pub fn installed(var: &str, what: &str) -> PathBuf {
    match std::env::var_os(var) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => panic!("{var} is not set: this test needs {what}, which scripts/test installs (run scripts/test)"),
    }
}

/// The repository root.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Reads a `wechaty.Puppet/Event` stream with bounded waits.
pub struct Events {
    stream: tonic::Streaming<puppet_proto::pb::wechaty::puppet::EventResponse>,
}

/// How long a test waits for one expected event.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);

impl Events {
    /// Opens the stream and checks that it starts with a heartbeat.
    pub async fn open(client: &mut PuppetClient<InterceptedService<Channel, Token>>) -> Self {
        let stream =
            client.event(puppet_proto::pb::wechaty::puppet::EventRequest::default()).await.expect("Event").into_inner();
        let mut events = Self { stream };
        let (kind, _) = events.next_any().await;
        assert_eq!(kind, 1, "an Event stream must open with a HEARTBEAT");
        events
    }

    /// The next message, heartbeats included: (type, JSON payload).
    pub async fn next_any(&mut self) -> (i32, serde_json::Value) {
        let msg = tokio::time::timeout(EVENT_TIMEOUT, self.stream.message())
            .await
            .expect("no event within the timeout")
            .expect("event stream failed")
            .expect("event stream ended");
        let payload =
            serde_json::from_str(&msg.payload).unwrap_or_else(|e| panic!("payload {:?} is not JSON: {e}", msg.payload));
        (msg.r#type, payload)
    }

    /// The next non-heartbeat event.
    pub async fn next(&mut self) -> (i32, serde_json::Value) {
        loop {
            let e = self.next_any().await;
            if e.0 != 1 {
                return e;
            }
        }
    }

    /// Skips events until one of `kind` arrives; returns its payload.
    pub async fn wait_for(&mut self, kind: i32) -> serde_json::Value {
        loop {
            let (k, p) = self.next().await;
            if k == kind {
                return p;
            }
        }
    }

    /// Skips events until one of `kind` satisfies `pred`.
    pub async fn wait_until(&mut self, kind: i32, pred: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
        loop {
            let p = self.wait_for(kind).await;
            if pred(&p) {
                return p;
            }
        }
    }

    /// The raw stream, for tests of its ending.
    pub fn into_inner(self) -> tonic::Streaming<puppet_proto::pb::wechaty::puppet::EventResponse> {
        self.stream
    }
}

/// A `puppet_rs.v1.MockWorld` client with the test token.
pub type World =
    puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient<InterceptedService<Channel, Token>>;

/// A `puppet_rs.v1.MockWorld` client that sends the test token.
pub async fn world(
    server: &Server,
) -> puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient<InterceptedService<Channel, Token>> {
    puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient::with_interceptor(
        server.channel().await,
        Token(TOKEN.into()),
    )
}

/// Event type numbers (wechaty.puppet.EventType).
pub mod kind {
    #![allow(missing_docs)]
    pub const HEARTBEAT: i32 = 1;
    pub const MESSAGE: i32 = 2;
    pub const DONG: i32 = 3;
    pub const ERROR: i32 = 16;
    pub const FRIENDSHIP: i32 = 17;
    pub const ROOM_INVITE: i32 = 18;
    pub const ROOM_JOIN: i32 = 19;
    pub const ROOM_LEAVE: i32 = 20;
    pub const ROOM_TOPIC: i32 = 21;
    pub const SCAN: i32 = 22;
    pub const READY: i32 = 23;
    pub const LOGIN: i32 = 25;
    pub const LOGOUT: i32 = 26;
    pub const DIRTY: i32 = 27;
}

/// The server's resident memory, in KiB (Linux).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmRSS")
}

/// Deterministic test bytes: `len` bytes of pattern `seed`, produced in chunks of at most `chunk`.
pub fn pattern_chunks(seed: u8, len: usize, chunk: usize) -> impl Iterator<Item = Vec<u8>> {
    (0..len).step_by(chunk.max(1)).map(move |start| {
        (start..(start + chunk).min(len))
            .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
            .collect()
    })
}

/// Hex SHA-256 of chunks.
pub fn sha256<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for c in chunks {
        h.update(c);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A TCP proxy in front of the server whose connections a test can cut at will.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    blocked: std::sync::Arc<std::sync::atomic::AtomicBool>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards a free loopback port to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Default::default();
        let blocked: std::sync::Arc<std::sync::atomic::AtomicBool> = Default::default();
        let (c, b) = (conns.clone(), blocked.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if b.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { addr, conns, blocked, accept }
    }

    /// Cuts every open connection (both sides see it close).
    pub fn sever(&self) {
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    /// While blocked, new connections are closed at once.
    pub fn block(&self, on: bool) {
        self.blocked.store(on, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.sever();
        self.accept.abort();
    }
}

/// A plain HTTP/1.1 GET on the side port: (status code, body).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_request(addr, "GET", path, "").await
}

/// A plain HTTP/1.1 request with a body on the side port: (status code, body).
pub async fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect to the side port");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: text/xml\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("HTTP answer").unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("status line");
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// A mosquitto broker on a free loopback port, stopped on drop.
pub struct Mosquitto {
    child: Child,
    /// Its port.
    pub port: u16,
    conf: PathBuf,
}

impl Mosquitto {
    /// Starts Debian's mosquitto (installed by scripts/test) with TCP_NODELAY on.
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self::start_on(port)
    }

    /// Starts it on a given port (to restart a broker where clients expect it).
    pub fn start_on(port: u16) -> Self {
        Self::launch(&installed("PUPPET_MOSQUITTO", "Debian's mosquitto"), port)
    }

    /// Starts the mosquitto binary `bin` on `port`.
    pub fn launch(bin: &std::path::Path, port: u16) -> Self {
        let conf = std::env::temp_dir().join(format!("puppet-mosquitto-{}-{port}.conf", std::process::id()));
        let text = format!(
            "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nset_tcp_nodelay true\nlog_dest stderr\nlog_type information\n"
        );
        std::fs::write(&conf, text).unwrap();
        let mut child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mosquitto");
        // Ready once it says it listens (or: fail with what it said).
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut seen = Vec::new();
        loop {
            match rx.recv_timeout(STARTUP_TIMEOUT) {
                Ok(line) => {
                    let ready = line.contains("running");
                    seen.push(line);
                    if ready {
                        break;
                    }
                }
                Err(_) => panic!("mosquitto did not start:\n{}", seen.join("\n")),
            }
        }
        Self { child, port, conf }
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        _ = self.child.kill();
        _ = self.child.wait();
        _ = std::fs::remove_file(&self.conf);
    }
}
