//! MQTT command round trips: starts mosquitto (TCP_NODELAY) and a release `puppet-server` with the
//! bridge on, then sends `wechatyLogonoff` commands one at a time (QoS 1 both ways) and prints
//! round trips per second with p50/p99.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/mqtt-roundtrip --count 2000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use puppet_tests::{Events, Mosquitto, Server, kind};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::json;

#[derive(Parser)]
struct Args {
    /// Commands to send.
    #[arg(long, default_value_t = 2000)]
    count: usize,
    /// The mosquitto binary.
    #[arg(long, env = "PUPPET_MOSQUITTO", default_value = "/usr/sbin/mosquitto")]
    mosquitto: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let _broker = Mosquitto::launch(&args.mosquitto, port);
    let url = format!("mqtt://127.0.0.1:{port}");
    let server = Server::start(&["--mqtt-url", &url, "--mqtt-client-id", "bench"]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;

    let mut opts = MqttOptions::new("bench-controller", "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let sub = client.clone();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    _ = sub.subscribe("thing/chatbot/bench/response/d2c/+", QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let req = p.topic.rsplit('/').next().unwrap_or_default().to_owned();
                    if tx.send(req).is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    });
    let send = |i: usize| {
        let client = client.clone();
        async move {
            let cmd = json!({"reqId": format!("r{i}"), "method": "command", "version": "1.0", "name": "wechatyLogonoff", "params": {}});
            client
                .publish(
                    "thing/chatbot/bench/command/invoke",
                    QoS::AtLeastOnce,
                    false,
                    serde_json::to_vec(&cmd).unwrap(),
                )
                .await
        }
    };
    // Warm up until the bridge answers (it subscribes when it connects).
    let mut warm = 0;
    loop {
        send(1_000_000 + warm).await?;
        if let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), rx.recv()).await {
            break;
        }
        warm += 1;
        anyhow::ensure!(warm < 100, "the bridge never answered");
    }
    while rx.try_recv().is_ok() {}

    let mut latencies = Vec::with_capacity(args.count);
    let started = Instant::now();
    for i in 0..args.count {
        let t = Instant::now();
        send(i).await?;
        let want = format!("r{i}");
        loop {
            let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await?
                .ok_or_else(|| anyhow::anyhow!("closed"))?;
            if got == want {
                break;
            }
        }
        latencies.push(t.elapsed());
    }
    let total = started.elapsed();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "mqtt-roundtrip: {} sequential wechatyLogonoff commands through mosquitto (QoS 1, TCP_NODELAY)",
        args.count
    );
    println!("  round trips  {:>8.0}/s", args.count as f64 / total.as_secs_f64());
    println!("  p50          {:>8.0} µs", pct(0.50).as_secs_f64() * 1e6);
    println!("  p99          {:>8.0} µs", pct(0.99).as_secs_f64() * 1e6);
    Ok(())
}
