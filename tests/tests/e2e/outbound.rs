//! Outbound fetches of URLs from clients and pushes (`--fetch-*`): the real server on the
//! official-account backend against the fake WeChat, asked to fetch from a local origin that counts
//! its connections. A loopback URL, a redirect to loopback, a `PicUrl` and a `video_url` are refused
//! with PERMISSION_DENIED before the origin sees anything; the allow-list opens exactly what it names.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_server::backend::official_account::crypto;
use puppet_tests::fake_wechat::FakeWeChat;
use puppet_tests::{Events, Server, Token, http_request, kind};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Puppet = PuppetClient<InterceptedService<Channel, Token>>;

const OA_TOKEN: &str = "puppetrsTest42";
const ORIGINAL_ID: &str = "gh_puppetrs0001";
const ALICE: &str = "oFollowerAlice";
/// What the origin serves: a JPEG the Official Account can send.
const JPEG: &[u8] = b"\xFF\xD8\xFF\xE0 outbound-fetch test image";

/// A local HTTP origin that counts connections; `/go` redirects to `redirect_to`, anything else
/// is [`JPEG`].
struct Origin {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Origin {
    async fn start(ip: &str, redirect_to: Option<String>) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = connections.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let redirect_to = redirect_to.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let path = String::from_utf8_lossy(&head).split(' ').nth(1).unwrap_or("/").to_owned();
                    let answer = match (path.as_str(), redirect_to) {
                        ("/go", Some(to)) => format!(
                            "HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                        )
                        .into_bytes(),
                        _ => [
                            format!(
                                "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\
                                 Connection: close\r\n\r\n",
                                JPEG.len()
                            )
                            .as_bytes(),
                            JPEG,
                        ]
                        .concat(),
                    };
                    _ = conn.write_all(&answer).await;
                    _ = conn.shutdown().await;
                });
            }
        });
        Self { addr, connections, task }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

struct Oa {
    _server: Server,
    http: SocketAddr,
    puppet: Puppet,
    events: Events,
}

/// The server on the official-account backend against `fake`, online, with `--fetch-allow allow`.
async fn online(fake: &FakeWeChat, allow: Option<&str>) -> Oa {
    let mut env = fake.server_env(OA_TOKEN, ORIGINAL_ID);
    env.push(("PUPPET_OA_REPLY_WINDOW_MS", "100"));
    if let Some(allow) = allow {
        env.push(("PUPPET_FETCH_ALLOW", allow));
    }
    let server = Server::start_with_env(&["--backend", "official-account", "--http-listen", "127.0.0.1:0"], &env);
    let http = server.http_addr.expect("side port");
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    events.wait_for(kind::READY).await;
    Oa { _server: server, http, puppet, events }
}

async fn send_url(oa: &mut Oa, url: &str) -> Result<(), tonic::Status> {
    let file_box = json!({ "type": 2, "name": "secret.jpg", "url": url }).to_string();
    oa.puppet
        .message_send_file(pb::MessageSendFileRequest { conversation_id: ALICE.into(), file_box })
        .await
        .map(|_| ())
}

/// Posts a signed plain-mode push from Alice; the id of the MESSAGE it became.
async fn push(oa: &mut Oa, msg_type: &str, extra: &str, msg_id: u64) -> String {
    let xml = format!(
        "<xml><ToUserName><![CDATA[{ORIGINAL_ID}]]></ToUserName><FromUserName><![CDATA[{ALICE}]]></FromUserName>\
         <CreateTime>1700000000</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{extra}<MsgId>{msg_id}</MsgId></xml>"
    );
    // Signed now: the webhook refuses callbacks outside its time window.
    let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
    let nonce = msg_id.to_string();
    let path = format!(
        "/wechat?signature={}&timestamp={ts}&nonce={nonce}&openid=o",
        crypto::signature(&[OA_TOKEN, &ts, &nonce])
    );
    let http = oa.http;
    let answered = tokio::spawn(async move { http_request(http, "POST", &path, &xml).await.0 });
    // Skip the MESSAGE events of what the bot sent itself.
    let id = loop {
        let id = oa.events.wait_for(kind::MESSAGE).await["messageId"].as_str().unwrap().to_owned();
        let m = oa.puppet.message_payload(pb::MessagePayloadRequest { id: id.clone() }).await.unwrap().into_inner();
        if m.talker_id == ALICE {
            break id;
        }
    };
    assert_eq!(answered.await.unwrap(), 200);
    id
}

fn assert_refused(status: &tonic::Status, what: &str) {
    assert_eq!(status.code(), Code::PermissionDenied, "{what}: {status:?}");
    let m = status.message();
    assert!(m.contains("was refused") && m.contains("--fetch-allow"), "{what}: {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_at_non_public_addresses_are_refused_and_never_fetched() {
    let fake = FakeWeChat::start(7200).await;
    let origin = Origin::start("127.0.0.1", None).await;
    let mut oa = online(&fake, None).await;

    let e = send_url(&mut oa, &origin.url("/secret.jpg")).await.unwrap_err();
    assert_refused(&e, "a loopback URL FileBox");
    assert!(e.message().contains(&format!("fetching {} was refused", origin.url("/secret.jpg"))), "{}", e.message());
    assert!(e.message().contains("127.0.0.1 is a loopback address"), "{}", e.message());
    assert!(e.message().contains("--fetch-allow 127.0.0.1/32"), "{}", e.message());

    // Other spellings of the same place, and the cloud metadata services.
    let port = origin.addr.port();
    for url in [
        format!("http://localhost:{port}/secret.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/secret.jpg"),
        format!("http://2130706433:{port}/secret.jpg"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://100.100.100.200/latest/meta-data/".to_owned(),
        "http://[fd00::1]/x.jpg".to_owned(),
        "http://10.0.0.1/x.jpg".to_owned(),
    ] {
        assert_refused(&send_url(&mut oa, &url).await.unwrap_err(), &url);
    }
    // Not http(s): INVALID_ARGUMENT.
    let e = send_url(&mut oa, "file:///etc/passwd").await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("only over http and https"), "{}", e.message());

    // A push's PicUrl (no MediaId) and a video's video_url are fenced the same way.
    let image = push(&mut oa, "image", &format!("<PicUrl><![CDATA[{}]]></PicUrl>", origin.url("/pic.jpg")), 7001).await;
    let e = oa.puppet.message_image(pb::MessageImageRequest { id: image, r#type: 1 }).await.unwrap_err();
    assert_refused(&e, "a PicUrl");
    fake.put_media(
        "VIDEO_1",
        "application/json",
        "",
        json!({ "video_url": origin.url("/v.mp4") }).to_string().as_bytes(),
    );
    let video = push(&mut oa, "video", "<MediaId><![CDATA[VIDEO_1]]></MediaId>", 7002).await;
    let e = oa.puppet.message_file(pb::MessageFileRequest { id: video }).await.unwrap_err();
    assert_refused(&e, "a video_url");
    assert_eq!(fake.calls("/cgi-bin/media/get").len(), 1, "the video's media/get went to the (unfenced) API");

    assert_eq!(origin.connections(), 0, "the origin saw no connection");
    assert!(fake.uploads().is_empty(), "nothing was uploaded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_refused_address_is_refused_and_the_allow_list_opens_it() {
    let fake = FakeWeChat::start(7200).await;
    let target = Origin::start("127.0.0.1", None).await;
    // 127.0.0.2 stands for a public host: allowed, it redirects to loopback.
    let front = Origin::start("127.0.0.2", Some(target.url("/metrics"))).await;
    let mut oa = online(&fake, Some("127.0.0.2/32")).await;

    let e = send_url(&mut oa, &front.url("/go")).await.unwrap_err();
    assert_refused(&e, "a redirect to loopback");
    assert!(e.message().contains(&format!("it redirected to {}", target.url("/metrics"))), "{}", e.message());
    assert_eq!((front.connections(), target.connections()), (1, 0), "the redirect target saw no connection");
    // The allowed address itself is fetched and sent.
    send_url(&mut oa, &front.url("/direct.jpg")).await.unwrap();
    assert_eq!(fake.uploads().len(), 1);
    assert!(fake.uploads()[0].bytes == JPEG, "the fetched bytes were uploaded");
    drop(oa);

    // With the allow-list covering the target too, the redirect is followed.
    let mut oa = online(&fake, Some("127.0.0.2/32, 127.0.0.1")).await;
    send_url(&mut oa, &front.url("/go")).await.unwrap();
    assert_eq!(target.connections(), 1);
    assert!(fake.uploads().last().unwrap().bytes == JPEG);
    let image = push(&mut oa, "image", &format!("<PicUrl><![CDATA[{}]]></PicUrl>", target.url("/pic.jpg")), 7101).await;
    let fb = oa.puppet.message_image(pb::MessageImageRequest { id: image, r#type: 1 }).await.unwrap().into_inner();
    assert!(fb.file_box.contains("\"base64\""), "the PicUrl was fetched: {}", fb.file_box);
    assert_eq!(target.connections(), 2);
}
