//! OneBot v11 figures: `send_private_msg` round trips per second over the forward WebSocket and
//! the HTTP API (one keep-alive connection), sequential and with a window of requests in flight,
//! and message events delivered per second to one forward WebSocket client.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/onebot --count 5000
//! ```

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{Events, Server, kind, world};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// Actions (and events) per run.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Requests in flight for the windowed runs.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// Concurrent senders of world messages for the event run.
    #[arg(long, default_value_t = 16)]
    senders: usize,
}

fn report(what: &str, n: usize, elapsed: Duration, mut lat: Vec<Duration>) {
    lat.sort();
    let p = |q: f64| {
        lat.get(((lat.len() as f64 * q) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or_default()
    };
    println!(
        "{what}: {n} in {:.2} s = {:.0}/s, p50 {:.3} ms, p99 {:.3} ms",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64(),
        p(0.50).as_secs_f64() * 1e3,
        p(0.99).as_secs_f64() * 1e3
    );
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let server = Server::start(&["--onebot-http", &addr, "--onebot-ws", &addr, "--onebot-heartbeat-ms", "0"]);
    Events::open(&mut server.puppet().await).await.wait_for(kind::READY).await;

    // Alice's user_id: from one message event.
    let (mut events_ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/event")).await?;
    let mut w = world(&server).await;
    w.say(ext::SayRequest { from_id: "wxid_alice".into(), text: "hi".into(), ..Default::default() }).await?;
    let alice = loop {
        if let Some(Ok(Message::Text(t))) = events_ws.next().await {
            let v: Value = serde_json::from_str(&t)?;
            if v["post_type"] == "message" {
                break v["user_id"].as_i64().unwrap();
            }
        }
    };
    let frame = |i: usize| {
        json!({"action": "send_private_msg", "params": {"user_id": alice, "message": format!("m{i}")}, "echo": i})
            .to_string()
    };

    // Forward WebSocket, sequential and windowed.
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/api")).await?;
    let (mut tx, mut rx) = ws.split();
    for window in [1, args.window] {
        let mut sent_at = vec![Instant::now(); args.count];
        let mut lat = Vec::with_capacity(args.count);
        let start = Instant::now();
        let (mut next, mut done) = (0, 0);
        while done < args.count {
            while next < args.count && next - done < window {
                sent_at[next] = Instant::now();
                tx.send(Message::Text(frame(next).into())).await?;
                next += 1;
            }
            let Some(Ok(Message::Text(t))) = rx.next().await else { anyhow::bail!("the connection closed") };
            let v: Value = serde_json::from_str(&t)?;
            anyhow::ensure!(v["status"] == "ok", "{v}");
            lat.push(sent_at[v["echo"].as_u64().unwrap() as usize].elapsed());
            done += 1;
        }
        report(&format!("send_private_msg over forward WS, {window} in flight"), args.count, start.elapsed(), lat);
    }

    // HTTP API on one keep-alive connection (HTTP/1.1 pipelining for the window).
    let stream = tokio::net::TcpStream::connect(&addr).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    for window in [1, args.window] {
        let mut lat = Vec::with_capacity(args.count);
        let mut sent_at = std::collections::VecDeque::new();
        let start = Instant::now();
        let (mut next, mut done) = (0, 0);
        while done < args.count {
            while next < args.count && next - done < window {
                let body = json!({"user_id": alice, "message": format!("h{next}")}).to_string();
                let req = format!(
                    "POST /send_private_msg HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                sent_at.push_back(Instant::now());
                write.write_all(req.as_bytes()).await?;
                next += 1;
            }
            let mut len = 0usize;
            let mut status = String::new();
            read.read_line(&mut status).await?;
            anyhow::ensure!(status.contains(" 200 "), "{status}");
            loop {
                let mut line = String::new();
                read.read_line(&mut line).await?;
                if line == "\r\n" {
                    break;
                }
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse()?;
                }
            }
            let mut body = vec![0; len];
            read.read_exact(&mut body).await?;
            let v: Value = serde_json::from_slice(&body)?;
            anyhow::ensure!(v["status"] == "ok", "{v}");
            lat.push(sent_at.pop_front().unwrap().elapsed());
            done += 1;
        }
        report(&format!("send_private_msg over HTTP, {window} in flight"), args.count, start.elapsed(), lat);
    }

    // Events: the world says `count` messages from `senders` tasks; one /event client counts them.
    let start = Instant::now();
    let per = args.count.div_ceil(args.senders);
    let mut senders = tokio::task::JoinSet::new();
    for s in 0..args.senders {
        let mut w = world(&server).await;
        senders.spawn(async move {
            for i in 0..per {
                let text = format!("e{s}-{i}");
                w.say(ext::SayRequest { from_id: "wxid_alice".into(), text, ..Default::default() }).await.unwrap();
            }
        });
    }
    let total = per * args.senders;
    let mut got = 0;
    while got < total {
        let Some(Ok(Message::Text(t))) = events_ws.next().await else { anyhow::bail!("the event connection closed") };
        if t.contains("\"post_type\":\"message\"") {
            got += 1;
        }
    }
    let elapsed = start.elapsed();
    while senders.join_next().await.is_some() {}
    println!(
        "message events to one forward WS client: {total} in {:.2} s = {:.0}/s (world say, translation, delivery)",
        elapsed.as_secs_f64(),
        total as f64 / elapsed.as_secs_f64()
    );
    Ok(())
}
