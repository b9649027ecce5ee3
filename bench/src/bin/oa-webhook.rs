//! Official Account webhook round trips: a release `puppet-server` on the official-account backend
//! (against the test suite's fake WeChat API), a gRPC bot that answers every message with
//! `MessageSendText`, and `--concurrency` posters sending signed pushes (safe mode by default). Every
//! answer must come back as the passive reply of its push (checked, decrypted). Prints pushes per
//! second, latency p50/p99 (push in → reply out, through the bot), and the server's CPU time and
//! memory.
//!
//! ```sh
//! cargo build --release -p puppet-server -p puppet-bench
//! target/release/oa-webhook --count 5000 --concurrency 16
//! ```

use std::time::Instant;

use clap::Parser;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_server::backend::official_account::crypto::{self, AesKey};
use puppet_server::backend::official_account::xml;
use puppet_tests::fake_wechat::{APP_ID, FakeWeChat};
use puppet_tests::{Events, Server, http_request, kind, rss_kib};

const OA_TOKEN: &str = "benchToken42";
const AES_KEY: &str = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG";
const ORIGINAL_ID: &str = "gh_bench000001";

#[derive(Parser)]
struct Args {
    /// Pushes to send.
    #[arg(long, default_value_t = 5000)]
    count: usize,
    /// Pushes in flight at once.
    #[arg(long, default_value_t = 16)]
    concurrency: usize,
    /// Plain mode instead of safe (AES) mode.
    #[arg(long)]
    plain: bool,
}

/// utime + stime of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`; utime and stime are the 14th and 15th of the whole line.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + fields.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let fake = FakeWeChat::start(7200).await;
    let mut env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    if !args.plain {
        env.push(("PUPPET_OA_AES_KEY", AES_KEY));
    }
    let server = Server::start_with_env(&["--backend", "official-account", "--http-listen", "127.0.0.1:0"], &env);
    let http = server.http_addr.expect("side port");

    // The bot: every follower message answered with "echo: <text>".
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    let bot = server.puppet().await;
    let bot_task = tokio::spawn(async move {
        loop {
            let payload = events.wait_for(kind::MESSAGE).await;
            let id = payload["messageId"].as_str().unwrap_or_default().to_owned();
            let mut bot = bot.clone();
            tokio::spawn(async move {
                let Ok(m) = bot.message_payload(pb::MessagePayloadRequest { id }).await else { return };
                let m = m.into_inner();
                if m.talker_id == ORIGINAL_ID {
                    return;
                }
                _ = bot
                    .message_send_text(pb::MessageSendTextRequest {
                        conversation_id: m.talker_id,
                        text: format!("echo: {}", m.text),
                        mentional_ids: vec![],
                    })
                    .await;
            });
        }
    });

    let key = AesKey::from_encoding_aes_key(AES_KEY)?;
    let cpu_before = cpu_seconds(server.pid());
    let started = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per_task = args.count.div_ceil(args.concurrency);
    for task in 0..args.concurrency {
        let (tx, key, plain) = (tx.clone(), key.clone(), args.plain);
        tokio::spawn(async move {
            for i in 0..per_task {
                let n = task * per_task + i;
                let from = format!("oBench{task}");
                let xml = format!(
                    "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{from}]]></FromUserName>\
                     <CreateTime>1700000000</CreateTime><MsgType><![CDATA[text]]></MsgType>\
                     <Content><![CDATA[{n}]]></Content><MsgId>{}</MsgId></xml>",
                    1_000_000 + n
                );
                // Signed now: the server refuses timestamps outside its window (PUPPET_OA_MAX_SKEW_SECS),
                // and each nonce once.
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                let (ts, nonce) = (&now.as_secs().to_string(), n.to_string());
                let sig = crypto::signature(&[OA_TOKEN, ts, &nonce]);
                let (path, body) = if plain {
                    (format!("/wechat?signature={sig}&timestamp={ts}&nonce={nonce}"), xml)
                } else {
                    let enc = key.encrypt(&xml, APP_ID).expect("the OS random source");
                    let msg_sig = crypto::signature(&[OA_TOKEN, ts, &nonce, &enc]);
                    (
                        format!(
                            "/wechat?signature={sig}&timestamp={ts}&nonce={nonce}&encrypt_type=aes&msg_signature={msg_sig}"
                        ),
                        format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>"),
                    )
                };
                let t0 = Instant::now();
                let (status, answer) = http_request(http, "POST", &path, &body).await;
                let elapsed = t0.elapsed();
                let reply = if plain {
                    answer
                } else {
                    xml::parse_tree(&answer)
                        .ok()
                        .and_then(|t| t.get("Encrypt").map(str::to_owned))
                        .and_then(|e| key.decrypt(&e, APP_ID).ok())
                        .unwrap_or_default()
                };
                let ok = status == 200 && reply.contains(&format!("echo: {n}]]>"));
                if tx.send((elapsed, ok)).is_err() {
                    return;
                }
            }
        });
    }
    drop(tx);
    let mut latencies = Vec::with_capacity(args.count);
    let mut failed = 0;
    while let Some((elapsed, ok)) = rx.recv().await {
        latencies.push(elapsed);
        failed += usize::from(!ok);
    }
    let wall = started.elapsed();
    let cpu = cpu_seconds(server.pid()) - cpu_before;
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    let n = latencies.len();
    println!(
        "{} mode, {n} pushes, concurrency {}: {:.0} pushes/s, p50 {:.2} ms, p99 {:.2} ms; \
         {failed} without the passive reply",
        if args.plain { "plain" } else { "safe" },
        args.concurrency,
        n as f64 / wall.as_secs_f64(),
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    println!(
        "server CPU {:.2} s ({:.0} µs per push, bot gRPC calls included), RSS {} MiB",
        cpu,
        cpu / n as f64 * 1e6,
        rss_kib(server.pid()) / 1024
    );
    // Before the server goes: its stream ending is not the bot's failure.
    bot_task.abort();
    _ = bot_task.await;
    assert_eq!(fake.calls("/cgi-bin/message/custom/send").len(), 0, "every answer went back passively");
    anyhow::ensure!(failed == 0, "{failed} pushes did not get their passive reply");
    Ok(())
}
