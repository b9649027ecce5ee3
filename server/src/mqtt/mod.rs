//! The MQTT bridge: the bot driven over a broker with the WeChatRemote protocol, alongside gRPC.
//!
//! Commands arrive on `thing/chatbot/{clientId}/command/invoke`; each gets exactly one response on
//! `…/response/d2c/{reqId}` (code 200, or another code with the reason — never silence); events go
//! to `…/event/post`. QoS 1 throughout, TCP_NODELAY on, reconnection with backoff (rumqttc
//! reconnects on the next poll; the command topic is subscribed again on every CONNACK).
//!
//! The loop that polls the broker connection never waits on anything but the connection: at most
//! [`CONCURRENT_COMMANDS`] commands run at once, and a command beyond that is answered at once with
//! code 429 (busy, retry). While the broker is unreachable, up to [`QUEUE`] outgoing messages wait
//! in rumqttc's request queue; the event forwarder then waits too, falls behind on the bus, is cut
//! off, and starts over from live events: events from a long broker outage are dropped, not
//! buffered without bound.
//!
//! [`run`] owns every task it starts and returns when its cancellation token is cancelled: in-flight
//! commands get [`STOP_GRACE`] to answer, then the bridge disconnects from the broker cleanly.

pub mod commands;
pub mod envelope;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use puppet_proto::event::EventKind;
use puppet_proto::ids::MessageId;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, NetworkOptions, Outgoing, Packet, QoS};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::backend::Backend;
use crate::events::{EventBus, StartAt};
use envelope::{Envelope, Seal, Topics};

/// Outgoing messages rumqttc may hold while the broker is away.
pub const QUEUE: usize = 1024;
/// Commands answered at once; further ones are refused with code 429 until one finishes.
pub const CONCURRENT_COMMANDS: usize = 64;
/// How long in-flight commands may take to answer once the bridge is told to stop.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the clean DISCONNECT from the broker may take.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The file in the data dir that keeps the generated client id.
const CLIENT_ID_FILE: &str = "mqtt-client-id";

/// Bridge settings (`PUPPET_MQTT_*`).
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// `mqtt://[user:pass@]host[:port]` or `mqtts://…`.
    pub url: String,
    /// `{clientId}` in the topics, and the MQTT client id.
    pub client_id: String,
    /// Event names to publish (`None`: all but heartbeats).
    pub events: Option<HashSet<String>>,
    /// Shared secret for AES-256-GCM payloads.
    pub secret: Option<String>,
}

/// The client id used when none is given: `puppet-rs-` and 12 hex digits from the OS CSPRNG,
/// generated once and kept in `data_dir/mqtt-client-id` so the topics stay put across restarts.
/// It says nothing about the token. Blocking: call it at start-up.
pub fn default_client_id(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(CLIENT_ID_FILE);
    let context = |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!(
                        "{} does not hold an MQTT client id (1-64 of A-Z a-z 0-9 - _ .); delete it to generate a new one",
                        path.display()
                    ),
                ));
            }
            return Ok(id.to_owned());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(context(e)),
    }
    let mut random = [0u8; 6];
    getrandom::fill(&mut random).map_err(|e| std::io::Error::other(format!("the OS random generator failed: {e}")))?;
    let id = format!("puppet-rs-{}", random.iter().map(|b| format!("{b:02x}")).collect::<String>());
    // Written whole and then renamed: a crash leaves either no file or a complete one.
    std::fs::create_dir_all(data_dir).map_err(context)?;
    let tmp = data_dir.join(format!("{CLIENT_ID_FILE}.tmp"));
    std::fs::write(&tmp, format!("{id}\n")).map_err(context)?;
    std::fs::rename(&tmp, &path).map_err(context)?;
    Ok(id)
}

fn options(cfg: &MqttConfig) -> anyhow::Result<MqttOptions> {
    let (scheme, rest) = cfg
        .url
        .split_once("://")
        .ok_or_else(|| anyhow::anyhow!("PUPPET_MQTT_URL needs a scheme: mqtt:// or mqtts://"))?;
    let tls = match scheme {
        "mqtt" | "tcp" => false,
        "mqtts" | "ssl" => true,
        other => anyhow::bail!("PUPPET_MQTT_URL: unsupported scheme `{other}` (mqtt or mqtts)"),
    };
    let rest = rest.trim_end_matches('/');
    let (userinfo, hostport) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p.parse::<u16>().map_err(|_| anyhow::anyhow!("PUPPET_MQTT_URL: bad port `{p}`"))?),
        None => (hostport, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        anyhow::bail!("PUPPET_MQTT_URL: no host");
    }
    let mut opts = MqttOptions::new(cfg.client_id.clone(), host, port);
    opts.set_keep_alive(Duration::from_secs(30));
    opts.set_clean_session(true);
    if let Some(u) = userinfo {
        let (user, pass) = u.split_once(':').unwrap_or((u, ""));
        opts.set_credentials(user, pass);
    }
    if tls {
        // One crypto provider per process: the ring provider the gRPC port uses.
        let _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        opts.set_transport(rumqttc::Transport::tls_with_default_config());
    }
    Ok(opts)
}

/// Checks the settings; call before starting the server so a typo stops start-up.
pub fn validate(cfg: &MqttConfig) -> anyhow::Result<()> {
    options(cfg).map(drop)
}

/// Runs the bridge until `stop` is cancelled, then lets in-flight commands answer (for at most
/// [`STOP_GRACE`]), disconnects from the broker and returns. Every task it starts has ended by then.
pub async fn run(
    cfg: MqttConfig,
    backend: Arc<dyn Backend>,
    bus: EventBus,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let opts = options(&cfg)?;
    let topics = Topics::new(&cfg.client_id);
    let seal = Seal::new(cfg.secret.as_deref());
    let (client, mut eventloop) = AsyncClient::new(opts, QUEUE);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);

    let bridge = Bridge::new(client, topics, seal, Arc::new(commands::Ctx { backend, bus }), CONCURRENT_COMMANDS);
    bridge.spawn(forward_events(bridge.clone(), cfg.events.clone(), stop.clone()));
    let mut backoff = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(topic = %bridge.topics.command, "MQTT bridge connected");
                bridge.subscribe();
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == bridge.topics.command => bridge.dispatch(p.payload),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }

    // Stopping: the forwarder has seen `stop`; commands in flight may still answer, so the
    // connection is polled (and new commands refused) until they are done or the grace is over.
    bridge.tasks.close();
    let grace = tokio::time::sleep(STOP_GRACE);
    tokio::pin!(grace);
    loop {
        tokio::select! {
            () = &mut grace => break,
            () = bridge.tasks.wait() => break,
            event = eventloop.poll() => match event {
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic == bridge.topics.command => {
                    bridge.refuse(p.payload, 503, "shutting down".into());
                }
                Ok(_) => {}
                Err(_) => break,
            },
        }
    }
    bridge.abandon.cancel();
    bridge.tasks.wait().await;
    disconnect(&bridge.client, &mut eventloop).await;
    tracing::info!("MQTT bridge stopped");
    Ok(())
}

/// Sends DISCONNECT and waits (bounded) until it is on the wire, so the broker sees a clean end
/// rather than a dropped connection.
async fn disconnect(client: &AsyncClient, eventloop: &mut EventLoop) {
    let flushed = async {
        let send = client.disconnect();
        tokio::pin!(send);
        let mut sent = false;
        loop {
            tokio::select! {
                result = &mut send, if !sent => {
                    if result.is_err() {
                        return;
                    }
                    sent = true;
                }
                event = eventloop.poll() => match event {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                    Ok(_) => {}
                },
            }
        }
    };
    if tokio::time::timeout(DISCONNECT_TIMEOUT, flushed).await.is_err() {
        tracing::warn!("MQTT DISCONNECT not sent in time; closing the connection");
    }
}

/// What the poll loop hands commands to. Cheap to clone.
#[derive(Clone)]
struct Bridge {
    client: AsyncClient,
    topics: Topics,
    seal: Seal,
    ctx: Arc<commands::Ctx>,
    permits: Arc<Semaphore>,
    /// Commands allowed in flight (the permits' total), for the busy answer.
    max_in_flight: usize,
    /// Every task the bridge starts.
    tasks: TaskTracker,
    /// Cancelled when in-flight commands must give up.
    abandon: CancellationToken,
}

impl Bridge {
    fn new(client: AsyncClient, topics: Topics, seal: Seal, ctx: Arc<commands::Ctx>, max_in_flight: usize) -> Self {
        Self {
            client,
            topics,
            seal,
            ctx,
            permits: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            tasks: TaskTracker::new(),
            abandon: CancellationToken::new(),
        }
    }

    /// Starts a task the bridge owns: it ends by itself or when the bridge abandons its work.
    fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let abandon = self.abandon.clone();
        self.tasks.spawn(async move {
            tokio::select! {
                () = abandon.cancelled() => {}
                () = work => {}
            }
        });
    }

    /// Subscribes to the command topic from a task: the request queue may be full, and the poll
    /// loop is what empties it.
    fn subscribe(&self) {
        let (client, topic) = (self.client.clone(), self.topics.command.clone());
        self.spawn(async move {
            if let Err(e) = client.subscribe(topic, QoS::AtLeastOnce).await {
                tracing::warn!(error = %e, "MQTT subscribe failed");
            }
        });
    }

    /// Runs one command in its own task, or — when [`Bridge::max_in_flight`] are already running —
    /// refuses it with 429. Never waits: the caller is the poll loop.
    fn dispatch(&self, payload: Bytes) {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            let reason = format!("busy: {} commands in flight; retry", self.max_in_flight);
            return self.refuse(payload, 429, reason);
        };
        let this = self.clone();
        self.spawn(async move {
            let _permit = permit;
            let response = answer(&this.ctx, &this.seal, &payload).await;
            this.publish(&response).await;
        });
    }

    /// Answers a command with `code` and `reason` without running it. The answer is queued with
    /// `try_publish` from a task of its own: it never waits for room in the outgoing queue, so a
    /// flood of refused commands cannot pile up waiting tasks (when the queue is full, the answer
    /// is dropped and logged — the broker is not taking messages anyway).
    fn refuse(&self, payload: Bytes, code: u16, reason: String) {
        let this = self.clone();
        self.spawn(async move {
            let (req_id, name) = command_ids(&this.seal, &payload);
            let response = Envelope::failure(&req_id, &name, code, reason);
            let bytes = match this.seal.seal(&response) {
                Ok(b) => b,
                Err(e) => return tracing::error!(error = %e, "could not seal an MQTT response"),
            };
            if let Err(e) = this.client.try_publish(this.topics.response(&req_id), QoS::AtLeastOnce, false, bytes) {
                tracing::warn!(code, error = %e, "could not queue an MQTT refusal (outgoing queue full?); dropped");
            }
        });
    }

    async fn publish(&self, response: &Envelope) {
        let bytes = match self.seal.seal(response) {
            Ok(b) => b,
            Err(e) => return tracing::error!(error = %e, "could not seal an MQTT response"),
        };
        if let Err(e) =
            self.client.publish(self.topics.response(&response.req_id), QoS::AtLeastOnce, false, bytes).await
        {
            tracing::warn!(error = %e, "could not queue an MQTT response");
        }
    }
}

/// A command's reqId and name, as far as they can be read (empty when not).
fn command_ids(seal: &Seal, payload: &[u8]) -> (String, String) {
    match seal.open(payload) {
        Ok(c) => (c.req_id, c.name),
        // Salvage the reqId from plain JSON, so the sender hears about its mistake.
        Err(_) => (plain_req_id(payload), String::new()),
    }
}

fn plain_req_id(payload: &[u8]) -> String {
    serde_json::from_slice::<Value>(payload)
        .ok()
        .and_then(|v| v.get("reqId").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default()
}

/// The response to one command payload; unreadable ones get a response too.
async fn answer(ctx: &commands::Ctx, seal: &Seal, payload: &[u8]) -> Envelope {
    let command = match seal.open(payload) {
        Ok(c) => c,
        Err(reason) => return Envelope::response(&plain_req_id(payload), "", Err(reason)),
    };
    if command.method != "command" {
        return Envelope::response(
            &command.req_id,
            &command.name,
            Err(format!("method must be `command`, not `{}`", envelope::quote(&command.method))),
        );
    }
    if command.req_id.is_empty() {
        return Envelope::response("", &command.name, Err("missing `reqId`".into()));
    }
    if !envelope::valid_req_id(&command.req_id) {
        return Envelope::response(
            &command.req_id,
            &command.name,
            Err(format!(
                "`reqId` must be 1-{} bytes without `/`, `+`, `#` or control characters: it names the response topic",
                envelope::MAX_REQ_ID
            )),
        );
    }
    let result = ctx.handle(&command.name, &command.params).await;
    Envelope::response(&command.req_id, &command.name, result)
}

async fn forward_events(bridge: Bridge, wanted: Option<HashSet<String>>, stop: CancellationToken) {
    tokio::select! {
        () = stop.cancelled() => {}
        () = forward(&bridge, wanted) => {}
    }
}

async fn forward(bridge: &Bridge, wanted: Option<HashSet<String>>) {
    let (backend, bus) = (&bridge.ctx.backend, &bridge.ctx.bus);
    let mut batch = Vec::new();
    loop {
        let Ok(mut sub) = bus.subscribe(StartAt::Live { replay_state: false }) else { return };
        loop {
            batch.clear();
            match sub.next_batch(&mut batch).await {
                Ok(true) => {}
                Ok(false) => return,
                Err(lagged) => {
                    tracing::warn!(
                        behind = lagged.behind,
                        "MQTT event forwarding fell behind; continuing with live events"
                    );
                    break;
                }
            }
            for env in &batch {
                let name = env.kind.name();
                let selected = match &wanted {
                    Some(set) => set.contains(name),
                    None => env.kind != EventKind::Heartbeat,
                };
                if !selected {
                    continue;
                }
                let mut params: Value = serde_json::from_str(&env.payload).unwrap_or(Value::Null);
                if env.kind == EventKind::Message
                    && let Some(id) = params.get("messageId").and_then(Value::as_str)
                {
                    params = commands::message_event(backend, &MessageId::from(id)).await;
                }
                let bytes = match bridge.seal.seal(&Envelope::event(name, params)) {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::error!(error = %e, "could not seal an MQTT event");
                        continue;
                    }
                };
                if bridge.client.publish(bridge.topics.event.clone(), QoS::AtLeastOnce, false, bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::mock::world::WorldSpec;
    use crate::backend::mock::{MockBackend, MockOptions};
    use proptest::prelude::*;
    use rumqttc::Request;
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn cfg(url: &str) -> MqttConfig {
        MqttConfig { url: url.into(), client_id: "c".into(), events: None, secret: None }
    }

    fn temp_dir(what: &str) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("puppet-mqtt-{what}-{}", uuid::Uuid::new_v4()))
    }

    /// A command context over the built-in mock world, logged in when `login` is set.
    async fn mock_ctx(login: bool) -> (Arc<commands::Ctx>, std::path::PathBuf) {
        let dir = temp_dir("blobs");
        let limits = crate::blobs::BlobLimits { max_file: 1 << 20, max_total: 1 << 20, ttl: Duration::from_secs(60) };
        let blobs = crate::blobs::BlobStore::open(&dir, limits).unwrap();
        let bus = EventBus::new(1024, 1 << 20, 1024);
        let options =
            MockOptions { world: WorldSpec::builtin(), login_step: Duration::ZERO, print_qr: false, import_file: None };
        let backend: Arc<dyn Backend> = Arc::new(
            MockBackend::new(
                options,
                crate::backend::mock::tests::memory_store(),
                bus.sink(),
                blobs,
                crate::tasks::Tasks::new(),
            )
            .unwrap(),
        );
        if login {
            let mut sub = bus.subscribe(StartAt::Live { replay_state: true }).unwrap();
            backend.start().await.unwrap();
            let logged_in = async {
                let mut batch = Vec::new();
                while !batch.iter().any(|e: &Arc<crate::events::Envelope>| e.kind == EventKind::Login) {
                    batch.clear();
                    sub.next_batch(&mut batch).await.unwrap();
                }
            };
            tokio::time::timeout(Duration::from_secs(10), logged_in).await.expect("the mock account logs in");
        }
        (Arc::new(commands::Ctx { backend, bus }), dir)
    }

    /// A bridge whose client queues into an event loop nobody polls, so a test can read what it
    /// published.
    fn bridge(ctx: Arc<commands::Ctx>, secret: Option<&str>, max_in_flight: usize) -> (Bridge, EventLoop) {
        let (client, eventloop) = AsyncClient::new(MqttOptions::new("test", "127.0.0.1", 1), 64);
        (Bridge::new(client, Topics::new("bot"), Seal::new(secret), ctx, max_in_flight), eventloop)
    }

    /// Waits for the bridge's tasks, then takes the (topic, envelope) pairs it published.
    async fn published(bridge: &Bridge, eventloop: &mut EventLoop) -> Vec<(String, Envelope)> {
        bridge.tasks.close();
        tokio::time::timeout(Duration::from_secs(10), bridge.tasks.wait()).await.expect("tasks end");
        bridge.tasks.reopen();
        eventloop.clean(); // moves the queued requests into `pending`
        eventloop
            .pending
            .drain(..)
            .filter_map(|r| match r {
                Request::Publish(p) => Some((p.topic.clone(), bridge.seal.open(&p.payload).unwrap())),
                _ => None,
            })
            .collect()
    }

    /// A command payload, sealed as the bridge expects.
    fn command(seal: &Seal, req_id: &str, name: &str) -> Bytes {
        let mut e = Envelope::event(name, json!({}));
        (e.req_id, e.method) = (req_id.to_owned(), "command".to_owned());
        seal.seal(&e).unwrap().into()
    }

    #[test]
    fn urls_are_checked_with_a_reason() {
        assert!(validate(&cfg("mqtt://user:pass@127.0.0.1:1884")).is_ok());
        assert!(validate(&cfg("mqtt://localhost")).is_ok());
        assert!(validate(&cfg("localhost:1883")).unwrap_err().to_string().contains("scheme"));
        assert!(validate(&cfg("http://x")).unwrap_err().to_string().contains("unsupported"));
        assert!(validate(&cfg("mqtt://h:port")).unwrap_err().to_string().contains("bad port"));
    }

    #[tokio::test]
    async fn a_command_beyond_the_limit_is_answered_at_once_with_429() {
        let (ctx, dir) = mock_ctx(false).await;
        for secret in [None, Some("s3cret")] {
            let (bridge, mut eventloop) = bridge(ctx.clone(), secret, 1);
            let seal = bridge.seal.clone();
            let held = bridge.permits.clone().try_acquire_owned().unwrap(); // the one command in flight
            bridge.dispatch(command(&seal, "r1", "wechatyLogonoff"));
            bridge.dispatch(command(&Seal::new(None), "r2", "contactFindAll"));
            let out = published(&bridge, &mut eventloop).await;
            assert_eq!(out.len(), 2, "{out:?}");
            let (topic, refused) = &out[0];
            assert_eq!(topic, "thing/chatbot/bot/response/d2c/r1");
            assert_eq!(
                (refused.code, refused.message.as_deref(), refused.name.as_str()),
                (Some(429), Some("busy: 1 commands in flight; retry"), "wechatyLogonoff"),
                "secret {secret:?}"
            );
            // Busy comes first: even a command that would not decrypt gets 429, to its reqId.
            assert_eq!((out[1].0.as_str(), out[1].1.code), ("thing/chatbot/bot/response/d2c/r2", Some(429)));

            drop(held);
            bridge.dispatch(command(&seal, "r3", "wechatyLogonoff"));
            let out = published(&bridge, &mut eventloop).await;
            assert_eq!(out[0].0, "thing/chatbot/bot/response/d2c/r3");
            assert_eq!((out[0].1.code, &out[0].1.params), (Some(200), &json!({"logonoff": false})));
            assert_eq!(bridge.permits.available_permits(), 1, "the permit came back");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn a_request_id_that_cannot_name_a_topic_is_refused_on_the_unknown_topic() {
        let (ctx, dir) = mock_ctx(false).await;
        let (bridge, mut eventloop) = bridge(ctx, None, 8);
        for bad in ["a/b", "+", "#", "x\u{0}", &"r".repeat(envelope::MAX_REQ_ID + 1)] {
            bridge.dispatch(command(&bridge.seal, bad, "wechatyLogonoff"));
        }
        let out = published(&bridge, &mut eventloop).await;
        assert_eq!(out.len(), 5);
        for (topic, e) in out {
            assert_eq!(topic, "thing/chatbot/bot/response/d2c/unknown");
            assert_eq!(e.code, Some(400));
            assert!(e.message.unwrap().contains("`reqId` must be"));
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_default_client_id_is_random_kept_and_checked() {
        let (a, b) = (temp_dir("id-a"), temp_dir("id-b"));
        let id = default_client_id(&a).unwrap();
        let hex = id.strip_prefix("puppet-rs-").expect("prefix");
        assert!(hex.len() == 12 && hex.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(default_client_id(&a).unwrap(), id, "kept across restarts");
        assert_eq!(std::fs::read_to_string(a.join("mqtt-client-id")).unwrap().trim(), id);
        assert_ne!(default_client_id(&b).unwrap(), id, "each data dir gets its own");
        std::fs::write(b.join("mqtt-client-id"), "bad/id\n").unwrap();
        let e = default_client_id(&b).unwrap_err();
        assert!(e.to_string().contains("delete it"), "{e}");
        std::fs::remove_dir_all(a).unwrap();
        std::fs::remove_dir_all(b).unwrap();
    }

    /// One MQTT packet: (first header byte, body).
    async fn read_packet(s: &mut tokio::net::TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let kind = s.read_u8().await?;
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await?;
            len |= usize::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        let mut body = vec![0; len];
        s.read_exact(&mut body).await?;
        Ok((kind, body))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_stops_when_cancelled_after_a_clean_disconnect() {
        let (ctx, dir) = mock_ctx(false).await;
        let broker = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("mqtt://{}", broker.local_addr().unwrap());
        let stop = CancellationToken::new();
        let bridge = tokio::spawn(run(cfg(&url), ctx.backend.clone(), ctx.bus.clone(), stop.clone()));

        let (mut conn, _) = tokio::time::timeout(Duration::from_secs(10), broker.accept())
            .await
            .expect("within 10 s: connect")
            .unwrap();
        let step = Duration::from_secs(10);
        assert_eq!(tokio::time::timeout(step, read_packet(&mut conn)).await.unwrap().unwrap().0, 0x10, "CONNECT");
        conn.write_all(&[0x20, 2, 0, 0]).await.unwrap(); // CONNACK
        let (kind, body) = tokio::time::timeout(step, read_packet(&mut conn)).await.unwrap().unwrap();
        assert_eq!(kind, 0x82, "SUBSCRIBE");
        conn.write_all(&[0x90, 3, body[0], body[1], 1]).await.unwrap(); // SUBACK

        stop.cancel();
        let disconnect = async {
            loop {
                match read_packet(&mut conn).await {
                    Ok((0xe0, _)) => return true,
                    Ok(_) => {}
                    Err(_) => return false,
                }
            }
        };
        assert!(tokio::time::timeout(step, disconnect).await.expect("within 10 s: DISCONNECT"), "a DISCONNECT");
        tokio::time::timeout(step, bridge).await.expect("within 10 s: run to return").unwrap().unwrap();

        // Cancelled while the broker is unreachable (connecting or backing off): it returns too.
        drop(broker);
        let stop = CancellationToken::new();
        let bridge = tokio::spawn(run(cfg(&url), ctx.backend.clone(), ctx.bus.clone(), stop.clone()));
        stop.cancel();
        tokio::time::timeout(step, bridge).await.expect("within 10 s: run to return").unwrap().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Command names: every one the bridge knows, and now and then one it does not.
    fn command_name() -> impl Strategy<Value = String> {
        prop_oneof![
            8 => prop::sample::select(vec![
                "wechatyLogonoff",
                "wechatyUserSelf",
                "contactFindAll",
                "contactFind",
                "contactSay",
                "roomFindAll",
                "roomFind",
                "roomMemberAllGet",
                "roomSay",
                "roomSayAt",
                "messageSay",
            ])
            .prop_map(str::to_owned),
            1 => "\\PC{0,80}",
        ]
    }

    /// Strings and numbers the commands look at, and edge cases.
    fn json_leaf() -> impl Strategy<Value = Value> {
        let text = prop_oneof![
            3 => prop::sample::select(vec![
                "wxid_alice", "wxid_bob", "Alice", "Carol", "10001@chatroom", "Tea Lovers", "Text", "Image", "File",
                "Url", "MiniProgram", "Voice", "https://x/a.png", "{\"url\":\"https://x\",\"title\":\"t\"}", "",
            ])
            .prop_map(str::to_owned),
            1 => "\\PC{0,40}",
        ];
        let number = prop_oneof![
            Just(json!(u64::MAX)),
            Just(json!(0)),
            (1..4u64).prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
        ];
        prop_oneof![
            1 => Just(Value::Null),
            1 => any::<bool>().prop_map(Value::from),
            3 => number,
            3 => text.prop_map(Value::from),
        ]
    }

    /// Any JSON, built from those leaves.
    fn json_value() -> impl Strategy<Value = Value> {
        json_leaf().prop_recursive(3, 24, 6, |inner| {
            prop_oneof![prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array), params_of(inner)]
        })
    }

    /// An object with keys the commands read.
    fn params_of(value: impl Strategy<Value = Value>) -> impl Strategy<Value = Value> {
        let key = prop::sample::select(vec![
            "id",
            "alias",
            "name",
            "topic",
            "room",
            "contacts",
            "rooms",
            "text",
            "messageType",
            "messagePayload",
            "page",
            "size",
            "url",
            "base64",
            "type",
            "boxType",
            "uuid",
            "title",
        ]);
        prop::collection::btree_map(key.prop_map(str::to_owned), value, 0..8)
            .prop_map(|m| Value::Object(m.into_iter().collect()))
    }

    #[test]
    fn commands_never_panic_on_arbitrary_input() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (ctx, dir) = rt.block_on(mock_ctx(true));
        let plain = Seal::new(None);
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 512, ..Default::default() });
        let method = prop_oneof![4 => Just("command".to_owned()), 1 => "\\PC{0,10}"];
        let params = params_of(prop_oneof![2 => json_leaf(), 1 => json_value()]);
        let commands = (command_name(), params, "[a-z0-9-]{0,20}", method);
        runner
            .run(&commands, |(name, params, req_id, method)| {
                let cmd = json!({"reqId": req_id, "method": method, "name": name, "params": params.clone()});
                rt.block_on(answer(&ctx, &plain, &serde_json::to_vec(&cmd).unwrap()));
                // And straight to the handler, with the checks answer() does skipped.
                let result = rt.block_on(ctx.handle(&name, &params));
                if let Err(reason) = result {
                    prop_assert!(reason.chars().count() < 400, "{reason}");
                }
                Ok(())
            })
            .unwrap();
        let sealed = Seal::new(Some("s3cret"));
        runner
            .run(&prop::collection::vec(any::<u8>(), 0..512), |bytes| {
                for seal in [&plain, &sealed] {
                    let response = rt.block_on(answer(&ctx, seal, &bytes));
                    prop_assert_eq!(response.method, "response");
                    prop_assert!(response.code.is_some());
                }
                Ok(())
            })
            .unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }
}
