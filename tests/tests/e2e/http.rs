//! `wechaty.Puppet` over plain HTTP on the side port: every REST route upstream `wechaty-grpc@1.5.2`
//! annotates, proto3 JSON in and out, errors as `google.rpc.Status`; events over SSE with resume;
//! files up and down, streamed.

use std::path::Path;
use std::time::Duration;

use futures_util::StreamExt;
use prost_reflect::{DescriptorPool, Value};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_tests::{Server, TOKEN, installed, world};
use serde_json::{Value as Json, json};

/// Bounds every wait on the server.
const PATIENCE: Duration = Duration::from_secs(30);

/// A logged-in mock server with the side port, and its base URL.
async fn online(extra: &[&str]) -> (Server, String) {
    let mut args = vec!["--http-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let server = Server::start(&args);
    let base = format!("http://{}", server.http_addr.expect("side port"));
    let client = client();
    // Ready once logged in (the mock logs in by itself).
    tokio::time::timeout(PATIENCE, async {
        loop {
            let r = client.get(format!("{base}/readyz")).send().await.unwrap();
            if r.status() == 200 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the mock account logs in");
    (server, base)
}

/// A plain-HTTP client (reqwest's rustls, unified with the server's, wants a crypto provider).
fn client() -> reqwest::Client {
    _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

fn authed(rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    rb.header("authorization", format!("Bearer {TOKEN}"))
}

async fn json_of(r: reqwest::Response) -> (u16, Json) {
    let status = r.status().as_u16();
    let text = r.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}")))
}

/// The `google.api.http` rules of upstream's `wechaty.Puppet`: (method, verb, path template).
fn upstream_routes() -> Vec<(String, String, String)> {
    let package = installed("WECHATY_GRPC_DIR", "the npm package wechaty-grpc@1.5.2");
    let version: Json = serde_json::from_slice(&std::fs::read(package.join("package.json")).unwrap()).unwrap();
    assert_eq!(version["version"], "1.5.2", "WECHATY_GRPC_DIR must hold wechaty-grpc 1.5.2");
    let work = std::env::temp_dir().join(format!("puppet-http-routes-{}", std::process::id()));
    _ = std::fs::remove_dir_all(&work);
    copy_without_openapi(&package.join("dist/cjs/proto"), &work);
    // google/api/{http,annotations}.proto are not in the npm package: googleapis' own, as vendored.
    std::fs::create_dir_all(work.join("google/api")).unwrap();
    for f in ["http.proto", "annotations.proto"] {
        std::fs::copy(puppet_tests::repo_root().join("proto/google/api").join(f), work.join("google/api").join(f))
            .unwrap();
    }
    let out = work.join("upstream.bin");
    let status = std::process::Command::new(protoc_bin_vendored::protoc_bin_path().unwrap())
        .arg(format!("-I{}", work.display()))
        .arg(format!("-I{}", protoc_bin_vendored::include_path().unwrap().display()))
        .arg("--include_imports")
        .arg(format!("--descriptor_set_out={}", out.display()))
        .arg("wechaty/puppet.proto")
        .status()
        .unwrap();
    assert!(status.success(), "protoc failed on the upstream protos");
    let pool = DescriptorPool::decode(std::fs::read(&out).unwrap().as_slice()).unwrap();
    std::fs::remove_dir_all(&work).unwrap();
    let http = pool.get_extension_by_name("google.api.http").expect("google.api.http");
    let service = pool.get_service_by_name("wechaty.Puppet").unwrap();
    let mut routes = Vec::new();
    for method in service.methods() {
        let options = method.options();
        if !options.has_extension(&http) {
            continue;
        }
        let Value::Message(rule) = options.get_extension(&http).into_owned() else { panic!() };
        let mut rules = vec![rule.clone()];
        if let Some(Value::List(more)) = rule.get_field_by_name("additional_bindings").map(|v| v.into_owned()) {
            rules.extend(more.into_iter().map(|v| v.as_message().unwrap().clone()));
        }
        for rule in rules {
            for verb in ["get", "put", "post", "delete", "patch"] {
                if rule.has_field_by_name(verb) {
                    let path = rule.get_field_by_name(verb).unwrap().as_str().unwrap().to_owned();
                    routes.push((method.name().to_owned(), verb.to_uppercase(), path));
                }
            }
        }
    }
    routes
}

/// Copies the upstream protos without their protoc-gen-openapiv2 options and import (the npm
/// package ships neither the files they import nor a use for them here).
fn copy_without_openapi(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let dest = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_without_openapi(&path, &dest);
        } else if path.extension().is_some_and(|e| e == "proto") {
            let text = std::fs::read_to_string(&path).unwrap();
            std::fs::write(dest, strip_openapi(&text)).unwrap();
        }
    }
}

fn strip_openapi(text: &str) -> String {
    let kept: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("import \"protoc-gen-openapiv2/"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = String::new();
    let mut rest = kept.as_str();
    while let Some(at) = rest.find("option (grpc.gateway.protoc_gen_openapiv2") {
        out.push_str(&rest[..at]);
        // The option's value is one brace-balanced block, then `;`.
        let tail = &rest[at..];
        let open = tail.find('{').unwrap();
        let mut depth = 0;
        let mut end = open;
        for (i, c) in tail[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + i;
                        break;
                    }
                }
                _ => {}
            }
        }
        let semi = tail[end..].find(';').unwrap();
        rest = &tail[end + semi + 1..];
    }
    out.push_str(rest);
    out
}

/// A concrete path for a template: variables get sample values, `{type=X}` its literal.
fn concrete(template: &str) -> String {
    let mut out = String::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let close = rest[open..].find('}').unwrap() + open;
        let var = &rest[open + 1..close];
        match var.split_once('=') {
            Some((_, literal)) => out.push_str(literal),
            None => out.push_str(&format!("sample-{var}")),
        }
        rest = &rest[close + 1..];
    }
    out.push_str(rest);
    out
}

#[tokio::test]
async fn every_route_upstream_annotates_is_served_at_its_verb_and_path() {
    let routes = upstream_routes();
    assert!(routes.len() >= 58, "only {} annotated routes upstream: did the reading lose some?", routes.len());
    let (_server, base) = online(&[]).await;
    let client = client();
    // Logout and Stop last: the other calls want the account online.
    let mut ordered = routes.clone();
    ordered.sort_by_key(|(m, _, _)| matches!(m.as_str(), "Logout" | "Stop"));
    let mut unserved = Vec::new();
    for (method, verb, template) in &ordered {
        let url = format!("{base}{}", concrete(template));
        let mut rb = authed(client.request(verb.parse().unwrap(), &url));
        if method == "Upload" {
            rb = rb.body("some bytes");
        } else if ["POST", "PUT"].contains(&verb.as_str()) {
            rb = rb.header("content-type", "application/json").body("{}");
        }
        let r = tokio::time::timeout(PATIENCE, rb.send()).await.expect("an answer").unwrap();
        let status = r.status().as_u16();
        let content_type = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let served = match method.as_str() {
            "Event" => status == 200 && content_type.starts_with("text/event-stream"),
            // A blob that does not exist: NOT_FOUND from the blob store, as JSON.
            "Download" => status == 404 && content_type == "application/json",
            // Answered by the method (a JSON answer or a google.rpc.Status), not by the router.
            _ => {
                let body = r.text().await.unwrap();
                let json: Option<Json> = serde_json::from_str(&body).ok();
                content_type == "application/json"
                    && status != 405
                    && json.as_ref().is_some_and(|j| status == 200 || j["code"].as_i64().is_some_and(|c| c != 12))
            }
        };
        if !served {
            unserved.push(format!("{method}: {verb} {template} -> {status} {content_type}"));
        }
    }
    assert!(unserved.is_empty(), "routes not served:\n  {}", unserved.join("\n  "));
}

#[tokio::test]
async fn rest_calls_reach_the_account_and_errors_are_google_rpc_statuses() {
    let (server, base) = online(&[]).await;
    let client = client();

    let (status, version) = json_of(authed(client.get(format!("{base}/version"))).send().await.unwrap()).await;
    assert_eq!(status, 200, "{version}");
    assert!(version["version"].as_str().unwrap().starts_with("puppet-rs/"), "{version}");

    let (_, contacts) = json_of(authed(client.get(format!("{base}/contacts"))).send().await.unwrap()).await;
    let ids = contacts["ids"].as_array().expect("ids");
    assert!(ids.iter().any(|i| i == "wxid_alice"), "{contacts}");
    let (status, alice) =
        json_of(authed(client.get(format!("{base}/contacts/wxid_alice"))).send().await.unwrap()).await;
    assert_eq!(status, 200, "{alice}");
    assert_eq!(alice["id"], "wxid_alice");
    assert!(alice["name"].as_str().is_some_and(|n| !n.is_empty()), "{alice}");

    // A text to Alice, with the Wechaty scheme this time; the world sees it.
    let (status, sent) = json_of(
        client
            .post(format!("{base}/conversations/wxid_alice/text"))
            .header("authorization", format!("Wechaty {TOKEN}"))
            .body(r#"{"text": "hello over REST"}"#)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{sent}");
    assert!(sent["id"].as_str().is_some_and(|i| !i.is_empty()), "{sent}");
    let seen = world(&server)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{seen:?}").contains("hello over REST"), "{seen:?}");

    // Errors: the standard HTTP status, a google.rpc.Status body that names what is wrong.
    let (status, e) = json_of(client.get(format!("{base}/contacts")).send().await.unwrap()).await;
    assert_eq!((status, &e["code"]), (401, &json!(16)), "{e}");
    let (status, e) = json_of(client.get(format!("{base}/contacts")).bearer_auth("wrong").send().await.unwrap()).await;
    assert_eq!((status, &e["code"]), (401, &json!(16)), "{e}");
    let (status, e) = json_of(authed(client.get(format!("{base}/contacts/nobody"))).send().await.unwrap()).await;
    assert_eq!((status, &e["code"]), (404, &json!(5)), "{e}");
    assert!(e["message"].as_str().unwrap().contains("nobody"), "{e}");
    let text = format!("{base}/conversations/wxid_alice/text");
    for (body, names) in [
        (r#"{"text": "hi""#, "JSON"),
        (r#"{"text": "hi", "colour": "red"}"#, "colour"),
        (r#"{"text": 42}"#, "text"),
        (r#"{"text": "hi", "mentionalIds": "wxid_bob"}"#, "mentionalIds"),
    ] {
        let (status, e) = json_of(authed(client.post(&text)).body(body).send().await.unwrap()).await;
        assert_eq!((status, &e["code"]), (400, &json!(3)), "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(names), "{body}: {e}");
    }
    let (status, e) =
        json_of(authed(client.put(format!("{base}/contacts//alias"))).body("{}").send().await.unwrap()).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("`id`"), "{e}");
    let (status, e) = json_of(authed(client.get(format!("{base}/contacts?colour=red"))).send().await.unwrap()).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("colour"), "{e}");
    let r = authed(client.delete(format!("{base}/version"))).send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET");
    // The side port's own pages still answer.
    assert_eq!(client.get(format!("{base}/healthz")).send().await.unwrap().status(), 200);
}

/// Reads SSE frames from a response: (id, event, data) of every event (comments skipped).
struct Sse {
    stream: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    fn new(r: reqwest::Response) -> Self {
        assert_eq!(r.status(), 200);
        Self { stream: Box::pin(r.bytes_stream()), buffer: String::new() }
    }

    async fn next(&mut self) -> (Option<String>, Option<String>, String) {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, Vec::new());
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push(v.trim_start().to_owned());
                    }
                }
                if id.is_none() && event.is_none() && data.is_empty() {
                    continue; // a heartbeat comment
                }
                return (id, event, data.join("\n"));
            }
            let chunk = tokio::time::timeout(PATIENCE, self.stream.next()).await.expect("an SSE frame");
            self.buffer.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on").unwrap()));
        }
    }

    /// The next MESSAGE event's text (as the payload's `messageId` is looked up by the caller).
    async fn next_message(&mut self) -> (String, Json) {
        loop {
            let (id, event, data) = self.next().await;
            assert_eq!(event, None, "{data}");
            let json: Json = serde_json::from_str(&data).unwrap();
            if json["type"] == "EVENT_TYPE_MESSAGE" {
                let payload: Json = serde_json::from_str(json["payload"].as_str().unwrap()).unwrap();
                assert_eq!(id.as_deref(), json["seq"].as_str(), "id: is the sequence number");
                return (id.unwrap(), payload);
            }
        }
    }
}

#[tokio::test]
async fn sse_delivers_world_messages_and_resumes_after_last_event_id_with_exactly_what_was_missed() {
    let (server, base) = online(&[]).await;
    let client = client();
    let mut w = world(&server).await;
    let say = |text: String| ext::SayRequest { from_id: "wxid_alice".into(), text, ..Default::default() };

    let mut sse = Sse::new(authed(client.get(format!("{base}/events"))).send().await.unwrap());
    let first = w.say(say("first".into())).await.unwrap().into_inner().message_id;
    let (last_id, payload) = sse.next_message().await;
    assert_eq!(payload["messageId"], first.as_str());
    drop(sse);

    let mut missed = Vec::new();
    for i in 0..100 {
        missed.push(w.say(say(format!("missed {i}"))).await.unwrap().into_inner().message_id);
    }
    let end = w.say(say("end".into())).await.unwrap().into_inner().message_id;

    let r = authed(client.get(format!("{base}/events"))).header("last-event-id", &last_id).send().await.unwrap();
    let mut sse = Sse::new(r);
    let mut got = Vec::new();
    let mut previous: u64 = last_id.parse().unwrap();
    loop {
        let (id, payload) = sse.next_message().await;
        let seq: u64 = id.parse().unwrap();
        assert!(seq > previous, "sequence numbers only grow: {seq} after {previous}");
        previous = seq;
        let message_id = payload["messageId"].as_str().unwrap().to_owned();
        if message_id == end {
            break;
        }
        got.push(message_id);
    }
    assert_eq!(got, missed, "exactly the 100 messages sent while disconnected, in order");

    // ?after_seq= resumes the same way; a resume point past the log is refused.
    let url = format!("{base}/events?after_seq={last_id}&token={TOKEN}");
    let mut sse = Sse::new(client.get(url).send().await.unwrap());
    assert_eq!(sse.next_message().await.1["messageId"], missed[0].as_str());
    let (status, e) =
        json_of(authed(client.get(format!("{base}/events?after_seq=99999999"))).send().await.unwrap()).await;
    assert_eq!((status, &e["code"]), (400, &json!(11)), "{e}");
    let (status, e) = json_of(authed(client.get(format!("{base}/events?after_seq=soon"))).send().await.unwrap()).await;
    assert_eq!(status, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("after_seq"), "{e}");
}

#[tokio::test]
async fn a_lagging_sse_reader_is_ended_with_an_error_event_naming_where_to_resume() {
    let (server, base) = online(&["--subscriber-max-lag", "64"]).await;
    let client = client();
    let r = authed(client.get(format!("{base}/events"))).send().await.unwrap();
    // Not read while the world floods far more than the socket buffers and the lag limit hold.
    world(&server).await.flood(ext::FloodRequest { count: 100_000, per_second: 0 }).await.unwrap();
    let mut sse = Sse::new(r);
    let mut last_seq = 0u64;
    let error = loop {
        let (id, event, data) = sse.next().await;
        match event.as_deref() {
            Some("error") => break serde_json::from_str::<Json>(&data).unwrap(),
            _ => last_seq = id.unwrap().parse().unwrap(),
        }
    };
    assert_eq!(error["code"], 8, "{error}");
    assert_eq!(error["resumeAfterSeq"], last_seq.to_string(), "{error}");
}

#[tokio::test]
async fn a_100_mib_file_goes_up_and_down_streamed_with_equal_checksums_and_bounded_memory() {
    const SIZE: usize = 100 << 20;
    let (server, base) =
        online(&["--blob-max-file-mib", "128", "--blob-max-total-mib", "512", "--http-request-timeout-secs", "300"])
            .await;
    let client = client();
    let pid = server.pid();
    let rss_before = puppet_tests::rss_kib(pid);

    let chunks = puppet_tests::pattern_chunks(7, SIZE, 256 << 10);
    let mut expected = <sha2::Sha256 as sha2::Digest>::new();
    for c in puppet_tests::pattern_chunks(7, SIZE, 256 << 10) {
        sha2::Digest::update(&mut expected, &c);
    }
    let expected: String = sha2::Digest::finalize(expected).iter().map(|b| format!("{b:02x}")).collect();
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        chunks.map(|c| Ok::<_, std::io::Error>(bytes::Bytes::from(c))),
    ));
    let (status, uploaded) =
        json_of(authed(client.post(format!("{base}/upload"))).body(body).send().await.unwrap()).await;
    assert_eq!(status, 200, "{uploaded}");
    let id = uploaded["id"].as_str().unwrap().to_owned();

    let r = authed(client.get(format!("{base}/download/{id}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-length"], SIZE.to_string().as_str());
    let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
    let mut got = 0usize;
    let mut stream = r.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        got += chunk.len();
        sha2::Digest::update(&mut hasher, &chunk);
    }
    assert_eq!(got, SIZE);
    let actual: String = sha2::Digest::finalize(hasher).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(actual, expected, "the file came back as it went up");
    let peak = hwm_kib(pid);
    assert!(
        peak.saturating_sub(rss_before) < 32 << 10,
        "the server's memory grew by {} KiB (RSS {rss_before} KiB before, peak {peak} KiB)",
        peak.saturating_sub(rss_before)
    );

    // A range of it.
    let r =
        authed(client.get(format!("{base}/download/{id}"))).header("range", "bytes=1000-1999").send().await.unwrap();
    assert_eq!(r.status(), 206);
    assert_eq!(r.headers()["content-range"], format!("bytes 1000-1999/{SIZE}").as_str());
    let part = r.bytes().await.unwrap();
    let whole: Vec<u8> = puppet_tests::pattern_chunks(7, 2000, 2000).next().unwrap();
    assert_eq!(&part[..], &whole[1000..2000]);
    let r = authed(client.get(format!("{base}/download/{id}")))
        .header("range", format!("bytes={SIZE}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 416);
}

/// The server's peak resident memory, in KiB.
fn hwm_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
async fn the_openapi_document_is_valid_and_describes_every_annotated_route() {
    let validator = installed("PUPPET_OPENAPI_VALIDATOR", "openapi-spec-validator (scripts/install-test-deps)");
    let (server, base) = online(&[]).await;
    let r = client().get(format!("{base}/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    let doc: Json = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let file = server.data_dir.join("openapi.json");
    std::fs::write(&file, &text).unwrap();
    let out = std::process::Command::new(validator).arg(&file).output().unwrap();
    assert!(
        out.status.success(),
        "openapi-spec-validator refused the document:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for (method, verb, template) in upstream_routes() {
        let path = template
            .split('/')
            .map(|s| match s.strip_prefix('{').and_then(|s| s.strip_suffix('}')).and_then(|v| v.split_once('=')) {
                Some((_, literal)) => literal.to_owned(),
                None => s.to_owned(),
            })
            .collect::<Vec<_>>()
            .join("/");
        let op = &doc["paths"][&path][verb.to_lowercase()];
        assert!(op.is_object(), "{method}: {verb} {path} is not in the document");
    }
    // The proto comments are the descriptions.
    let seq = &doc["components"]["schemas"]["puppet_rs.v1.SequencedEvent"]["properties"]["seq"];
    assert!(seq["description"].as_str().is_some_and(|d| d.contains("heartbeats")), "{seq}");
    let text_op = &doc["paths"]["/conversations/{conversation_id}/text"]["post"];
    assert_eq!(
        text_op["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/wechaty.puppet.MessageSendTextRequest"
    );
}

#[tokio::test]
async fn the_websocket_carries_the_same_events_and_resumes_with_after_seq() {
    use tokio_tungstenite::tungstenite::Message;
    let (server, base) = online(&[]).await;
    let ws_base = base.replace("http://", "ws://");
    let mut w = world(&server).await;
    let say = |text: &str| ext::SayRequest { from_id: "wxid_alice".into(), text: text.into(), ..Default::default() };

    let (status, e) = json_of(client().get(format!("{base}/events/ws")).send().await.unwrap()).await;
    assert_eq!((status, &e["code"]), (401, &json!(16)), "{e}");

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("{ws_base}/events/ws?token={TOKEN}")).await.unwrap();
    let sent = w.say(say("over the socket")).await.unwrap().into_inner().message_id;
    let first = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next()).await.expect("a message").unwrap().unwrap();
        let Message::Text(text) = msg else { continue };
        let json: Json = serde_json::from_str(&text).unwrap();
        if json["type"] == "EVENT_TYPE_MESSAGE" {
            break json;
        }
    };
    let payload: Json = serde_json::from_str(first["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["messageId"], sent.as_str());
    drop(ws);

    let later = w.say(say("while away")).await.unwrap().into_inner().message_id;
    let seq = first["seq"].as_str().unwrap();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("{ws_base}/events/ws?token={TOKEN}&after_seq={seq}")).await.unwrap();
    let resumed = loop {
        let msg = tokio::time::timeout(PATIENCE, ws.next()).await.expect("a message").unwrap().unwrap();
        let Message::Text(text) = msg else { continue };
        let json: Json = serde_json::from_str(&text).unwrap();
        if json["type"] == "EVENT_TYPE_MESSAGE" {
            break json;
        }
    };
    let payload: Json = serde_json::from_str(resumed["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["messageId"], later.as_str());
}

/// One uncompressed gRPC(-Web) data frame.
fn grpc_frame(msg: &impl prost::Message) -> Vec<u8> {
    let body = msg.encode_to_vec();
    let mut out = vec![0];
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

/// The data message and the trailer text of a gRPC-Web answer body.
fn grpc_web_parts(mut body: &[u8]) -> (Vec<u8>, String) {
    let (mut data, mut trailers) = (Vec::new(), String::new());
    while body.len() >= 5 {
        let len = u32::from_be_bytes(body[1..5].try_into().unwrap()) as usize;
        let payload = &body[5..5 + len];
        if body[0] & 0x80 != 0 {
            trailers.push_str(&String::from_utf8_lossy(payload));
        } else {
            data.extend_from_slice(payload);
        }
        body = &body[5 + len..];
    }
    (data, trailers)
}

#[tokio::test]
async fn grpc_web_answers_text_over_http1_and_binary_over_h2_with_cors_only_when_asked() {
    use base64::Engine;
    use prost::Message;
    use puppet_proto::pb::wechaty::puppet as pb;
    let b64 = base64::engine::general_purpose::STANDARD;
    let (server, _) = online(&["--cors-origin", "http://console.example"]).await;
    let url = format!("http://{}/wechaty.Puppet/Version", server.addr);
    let frame = grpc_frame(&pb::VersionRequest {});

    // grpc-web-text over HTTP/1.1.
    let r = client()
        .post(&url)
        .header("content-type", "application/grpc-web-text")
        .header("accept", "application/grpc-web-text")
        .header("x-grpc-web", "1")
        .header("authorization", format!("Wechaty {TOKEN}"))
        .body(b64.encode(&frame))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/grpc-web-text"));
    let text = r.text().await.unwrap();
    // Each frame is base64 on its own: padding can end one before the next begins.
    let (mut raw, mut segment) = (Vec::new(), String::new());
    for quad in text.trim().as_bytes().chunks(4) {
        segment.push_str(std::str::from_utf8(quad).unwrap());
        if quad.contains(&b'=') {
            raw.extend(b64.decode(&segment).unwrap());
            segment.clear();
        }
    }
    raw.extend(b64.decode(&segment).unwrap());
    let (data, trailers) = grpc_web_parts(&raw);
    assert!(trailers.contains("grpc-status:0"), "{trailers}");
    let version = pb::VersionResponse::decode(data.as_slice()).unwrap().version;
    assert!(version.starts_with("puppet-rs/"), "{version}");

    // Binary gRPC-Web over HTTP/2 (prior knowledge), and a wrong token refused in the trailers.
    _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
    let h2 = reqwest::Client::builder().http2_prior_knowledge().build().unwrap();
    for (token, want) in [(TOKEN, "grpc-status:0"), ("wrong", "grpc-status:16")] {
        let r = h2
            .post(&url)
            .header("content-type", "application/grpc-web+proto")
            .header("authorization", format!("Wechaty {token}"))
            .body(frame.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        let headers = format!("{:?}", r.headers());
        let body = r.bytes().await.unwrap();
        let (data, trailers) = grpc_web_parts(&body);
        assert!(trailers.contains(want) || headers.contains(&want.replace(':', "\": \"")), "{headers} {trailers}");
        if token == TOKEN {
            assert!(pb::VersionResponse::decode(data.as_slice()).unwrap().version.starts_with("puppet-rs/"));
        }
    }

    // CORS: the configured origin is allowed, another is not; a server without --cors-origin
    // allows none.
    let preflight = |base: String, origin: &'static str| {
        client()
            .request(reqwest::Method::OPTIONS, format!("{base}/wechaty.Puppet/Version"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,x-grpc-web,authorization")
            .send()
    };
    let r = preflight(format!("http://{}", server.addr), "http://console.example").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "http://console.example");
    let r = preflight(format!("http://{}", server.addr), "http://elsewhere.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let (plain, _) = online(&[]).await;
    let r = preflight(format!("http://{}", plain.addr), "http://console.example").await.unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn connect_web_grpc_web_transport_calls_version_and_receives_events() {
    use tokio::io::AsyncBufReadExt;
    let modules = installed("PUPPET_GRPC_WEB_NODE_MODULES", "the gRPC-Web test client (scripts/install-test-deps)");
    let (server, _) = online(&[]).await;
    // The client is ESM: it finds its packages next to itself.
    let dir = server.data_dir.join("grpc-web");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(&modules, dir.join("node_modules")).unwrap();
    std::fs::copy(puppet_tests::repo_root().join("tests/grpc-web/client.mjs"), dir.join("client.mjs")).unwrap();
    std::fs::write(dir.join("descriptors.bin"), puppet_proto::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("client.mjs"))
        .arg(format!("http://{}", server.addr))
        .arg(TOKEN)
        .arg(dir.join("descriptors.bin"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("node");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut next = async || -> Json {
        let line = tokio::time::timeout(PATIENCE, lines.next_line()).await.expect("a line from node").unwrap();
        serde_json::from_str(&line.expect("node printed a line before exiting")).unwrap()
    };
    let version = next().await;
    assert!(version["version"].as_str().unwrap().starts_with("puppet-rs/"), "{version}");
    // The stream replays the login state first: once READY is there, the stream is open.
    while next().await["type"] != 23 {}
    let mut w = world(&server).await;
    let say = ext::SayRequest { from_id: "wxid_alice".into(), text: "to the browser".into(), ..Default::default() };
    let sent = w.say(say).await.unwrap().into_inner().message_id;
    let message = loop {
        let event = next().await;
        if event["type"] == 2 {
            break event;
        }
    };
    let payload: Json = serde_json::from_str(message["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["messageId"], sent.as_str());
    let status = tokio::time::timeout(PATIENCE, child.wait()).await.unwrap().unwrap();
    assert!(status.success());
}

/// Headless Chromium driven over the DevTools protocol: one page, JavaScript evaluated in it.
struct Browser {
    child: tokio::process::Child,
    page: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    profile: std::path::PathBuf,
    next_id: u64,
}

impl Browser {
    async fn open(url: &str) -> Self {
        use tokio::io::AsyncBufReadExt;
        let chromium = installed("PUPPET_CHROMIUM", "Debian's chromium");
        let profile = std::env::temp_dir().join(format!("puppet-console-{}", std::process::id()));
        let mut child = tokio::process::Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--no-first-run",
                "--disable-sync",
                "--disable-component-update",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(url)
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("chromium");
        let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let port = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = stderr.next_line().await.unwrap() {
                if let Some(rest) = line.split("DevTools listening on ws://127.0.0.1:").nth(1) {
                    return rest.split('/').next().unwrap().to_owned();
                }
            }
            panic!("chromium ended without a DevTools address")
        })
        .await
        .expect("chromium's DevTools address");
        // Chromium keeps writing to stderr: drain it so it never blocks.
        tokio::spawn(async move { while let Ok(Some(_)) = stderr.next_line().await {} });
        let targets: Json =
            client().get(format!("http://127.0.0.1:{port}/json/list")).send().await.unwrap().json().await.unwrap();
        let page = targets.as_array().unwrap().iter().find(|t| t["type"] == "page").expect("a page");
        let (page, _) = tokio_tungstenite::connect_async(page["webSocketDebuggerUrl"].as_str().unwrap()).await.unwrap();
        Self { child, page, profile, next_id: 0 }
    }

    /// Evaluates `expression` in the page (promises awaited) and returns its value.
    async fn eval(&mut self, expression: &str) -> Json {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        self.next_id += 1;
        let id = self.next_id;
        let call = json!({ "id": id, "method": "Runtime.evaluate",
            "params": { "expression": expression, "returnByValue": true, "awaitPromise": true } });
        self.page.send(Message::Text(call.to_string().into())).await.unwrap();
        loop {
            let msg =
                tokio::time::timeout(PATIENCE, self.page.next()).await.expect("DevTools answers").unwrap().unwrap();
            let Message::Text(text) = msg else { continue };
            let answer: Json = serde_json::from_str(&text).unwrap();
            if answer["id"] == id {
                assert!(answer["result"]["exceptionDetails"].is_null(), "{expression}: {answer}");
                return answer["result"]["result"]["value"].clone();
            }
        }
    }

    /// Waits until `condition` (a JavaScript expression) is true in the page.
    async fn wait_for(&mut self, condition: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while self.eval(&format!("!!({condition})")).await != json!(true) {
            assert!(tokio::time::Instant::now() < deadline, "the page never got to: {condition}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        _ = self.child.start_kill();
        _ = std::fs::remove_dir_all(&self.profile);
    }
}

#[tokio::test]
async fn the_console_logs_in_shows_a_world_message_and_sends_a_reply_the_world_sees() {
    let (server, base) = online(&[]).await;
    let page = client().get(format!("{base}/console")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    assert!(!html.contains("http://") && !html.contains("https://"), "the page loads nothing from elsewhere");

    let mut browser = Browser::open(&format!("{base}/console")).await;
    browser.wait_for("document.getElementById('token')").await;
    // A wrong token is refused on the page.
    browser.eval("document.getElementById('token').value = 'wrong'; document.getElementById('connect').click()").await;
    browser.wait_for("document.getElementById('login-error').textContent.includes('token')").await;
    browser
        .eval(&format!(
            "document.getElementById('token').value = '{TOKEN}'; document.getElementById('connect').click()"
        ))
        .await;
    browser.wait_for("document.getElementById('state').textContent === 'logged in'").await;
    browser.wait_for("document.getElementById('who').textContent.includes('Puppet Bot')").await;

    // A message from the world shows up live.
    let mut w = world(&server).await;
    let say = ext::SayRequest { from_id: "wxid_alice".into(), text: "hello console".into(), ..Default::default() };
    w.say(say).await.unwrap();
    browser
        .wait_for("[...document.querySelectorAll('#events li')].some(li => li.textContent.includes('hello console'))")
        .await;

    // Contacts are listed and searchable; pick Alice and reply.
    browser.wait_for("document.querySelector('#directory li[data-id=\"wxid_alice\"]')").await;
    browser
        .eval("const s = document.getElementById('search'); s.value = 'alice'; s.dispatchEvent(new Event('input'))")
        .await;
    let shown = browser.eval("document.querySelectorAll('#directory li').length").await;
    assert!(shown.as_u64().unwrap() >= 1);
    assert_eq!(browser.eval("[...document.querySelectorAll('#directory li')].every(li => li.textContent.toLowerCase().includes('alice'))").await, json!(true));
    browser.eval("document.querySelector('#directory li[data-id=\"wxid_alice\"]').click()").await;
    browser
        .eval(
            "document.getElementById('text').value = 'reply from the console'; document.getElementById('send').click()",
        )
        .await;
    browser.wait_for("document.getElementById('send-result').textContent.startsWith('sent ')").await;
    let seen =
        w.list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() }).await.unwrap().into_inner();
    assert!(format!("{seen:?}").contains("reply from the console"), "{seen:?}");
}

/// The `curl …` commands of the README's section "HTTP, SSE and the browser", block by block, as
/// written there (continuation lines joined).
fn readme_curl_blocks() -> Vec<Vec<String>> {
    let readme = std::fs::read_to_string(puppet_tests::repo_root().join("README.md")).unwrap();
    let section = readme.split("## HTTP, SSE and the browser").nth(1).expect("the README section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split("```sh")
        .skip(1)
        .map(|b| {
            let block = b.split("```").next().unwrap();
            let mut commands = Vec::new();
            let mut current = String::new();
            for line in block.lines().map(str::trim).filter(|l| !l.is_empty()) {
                current.push_str(line.trim_end_matches('\\'));
                current.push(' ');
                if !line.ends_with('\\') {
                    commands.push(current.trim().to_owned());
                    current.clear();
                }
            }
            commands
        })
        .collect()
}

#[tokio::test]
async fn the_readme_curl_recipes_work_as_written() {
    use tokio::io::AsyncBufReadExt;
    let blocks = readme_curl_blocks();
    assert_eq!(blocks.len(), 2, "{blocks:?}");
    assert_eq!(blocks[0].len(), 10, "ten recipes: {:?}", blocks[0]);
    let (server, base) = online(&[]).await;
    let here = base.trim_start_matches("http://");
    for recipe in &blocks[0] {
        assert!(recipe.starts_with("curl "), "{recipe}");
        let out = tokio::time::timeout(
            PATIENCE,
            tokio::process::Command::new("sh")
                .args(["-c", &recipe.replace("127.0.0.1:8080", here)])
                .env("TOKEN", TOKEN)
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("curl ends")
        .unwrap();
        assert!(out.status.success(), "{recipe}: {}", String::from_utf8_lossy(&out.stderr));
        let answer: Json = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{recipe}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        assert!(answer.get("code").is_none() || answer.get("message").is_none(), "{recipe}: {answer}");
    }
    let seen = world(&server)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner();
    assert!(format!("{seen:?}").contains("hello from curl"), "{seen:?}");

    // The SSE example: the stream opens with the login state.
    let [sse] = blocks[1].as_slice() else { panic!("one SSE example: {:?}", blocks[1]) };
    let mut child = tokio::process::Command::new("sh")
        .args(["-c", &sse.replace("127.0.0.1:8080", here)])
        .env("TOKEN", TOKEN)
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let data = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(data) = line.strip_prefix("data: ") {
                return data.to_owned();
            }
        }
        panic!("the stream ended")
    })
    .await
    .expect("an event");
    let event: Json = serde_json::from_str(&data).unwrap();
    assert!(event["seq"].as_str().is_some() && event["type"].as_str().unwrap().starts_with("EVENT_TYPE_"), "{event}");
    child.kill().await.unwrap();
}
