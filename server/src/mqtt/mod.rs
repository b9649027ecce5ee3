//! The MQTT bridge: the bot driven over a broker with the WeChatRemote protocol, alongside gRPC.
//!
//! Commands arrive on `thing/chatbot/{clientId}/command/invoke`; each gets exactly one response on
//! `…/response/d2c/{reqId}` (code 200, or another code with the reason — never silence); events go
//! to `…/event/post`. QoS 1 throughout, TCP_NODELAY on, reconnection with backoff (rumqttc
//! reconnects on the next poll; the command topic is subscribed again on every CONNACK).
//!
//! At most [`CONCURRENT_COMMANDS`] commands run at once; a flood of commands waits on the broker
//! connection rather than piling up tasks. While the broker is unreachable, up to [`QUEUE`]
//! outgoing messages wait in rumqttc's request queue; the event forwarder then waits too, falls
//! behind on the bus, is cut off, and starts over from live events: events from a long broker
//! outage are dropped, not buffered without bound.

pub mod commands;
pub mod envelope;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use puppet_proto::event::EventKind;
use puppet_proto::ids::MessageId;
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::Value;

use crate::backend::Backend;
use crate::events::{EventBus, StartAt};
use envelope::{Envelope, Seal, Topics};

/// Outgoing messages rumqttc may hold while the broker is away.
pub const QUEUE: usize = 1024;
/// Commands answered at once; further ones wait (and with them the broker connection's reading).
pub const CONCURRENT_COMMANDS: usize = 64;

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

/// Runs the bridge until the process ends.
pub async fn run(cfg: MqttConfig, backend: Arc<dyn Backend>, bus: EventBus) -> anyhow::Result<()> {
    let opts = options(&cfg)?;
    let topics = Topics::new(&cfg.client_id);
    let seal = Seal::new(cfg.secret.as_deref());
    let (client, mut eventloop) = AsyncClient::new(opts, QUEUE);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);

    tokio::spawn(forward_events(
        client.clone(),
        topics.clone(),
        seal.clone(),
        cfg.events.clone(),
        backend.clone(),
        bus.clone(),
    ));
    let ctx = Arc::new(commands::Ctx { backend, bus });
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_COMMANDS));
    let mut backoff = Duration::from_millis(100);
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff = Duration::from_millis(100);
                tracing::info!(topic = %topics.command, "MQTT bridge connected");
                if let Err(e) = client.subscribe(&topics.command, QoS::AtLeastOnce).await {
                    tracing::warn!(error = %e, "MQTT subscribe failed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == topics.command => {
                let Ok(permit) = permits.clone().acquire_owned().await else { continue };
                let (client, topics, seal, ctx) = (client.clone(), topics.clone(), seal.clone(), ctx.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let response = answer(&ctx, &seal, &p.payload).await;
                    let topic = topics.response(if response.req_id.is_empty() { "unknown" } else { &response.req_id });
                    if let Err(e) = client.publish(topic, QoS::AtLeastOnce, false, seal.seal(&response)).await {
                        tracing::warn!(error = %e, "could not queue an MQTT response");
                    }
                });
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64, "MQTT connection lost");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// The response to one command payload; unreadable ones get a response too.
async fn answer(ctx: &commands::Ctx, seal: &Seal, payload: &[u8]) -> Envelope {
    let command = match seal.open(payload) {
        Ok(c) => c,
        Err(reason) => {
            // Salvage the reqId from plain JSON, so the sender hears about its mistake.
            let req_id = serde_json::from_slice::<Value>(payload)
                .ok()
                .and_then(|v| v.get("reqId").and_then(Value::as_str).map(str::to_owned))
                .unwrap_or_default();
            return Envelope::response(&req_id, "", Err(reason));
        }
    };
    if command.method != "command" {
        return Envelope::response(
            &command.req_id,
            &command.name,
            Err(format!("method must be `command`, not `{}`", command.method)),
        );
    }
    if command.req_id.is_empty() {
        return Envelope::response("", &command.name, Err("missing `reqId`".into()));
    }
    let result = ctx.handle(&command.name, &command.params).await;
    Envelope::response(&command.req_id, &command.name, result)
}

async fn forward_events(
    client: AsyncClient,
    topics: Topics,
    seal: Seal,
    wanted: Option<HashSet<String>>,
    backend: Arc<dyn Backend>,
    bus: EventBus,
) {
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
                    params = commands::message_event(&backend, &MessageId::from(id)).await;
                }
                let bytes = seal.seal(&Envelope::event(name, params));
                if client.publish(topics.event.clone(), QoS::AtLeastOnce, false, bytes).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> MqttConfig {
        MqttConfig { url: url.into(), client_id: "c".into(), events: None, secret: None }
    }

    #[test]
    fn urls_are_checked_with_a_reason() {
        assert!(validate(&cfg("mqtt://user:pass@127.0.0.1:1884")).is_ok());
        assert!(validate(&cfg("mqtt://localhost")).is_ok());
        assert!(validate(&cfg("localhost:1883")).unwrap_err().to_string().contains("scheme"));
        assert!(validate(&cfg("http://x")).unwrap_err().to_string().contains("unsupported"));
        assert!(validate(&cfg("mqtt://h:port")).unwrap_err().to_string().contains("bad port"));
    }
}
