//! Files end to end: Upload/Download, the deprecated chunked RPCs, FileBox spellings, limits,
//! eviction, concurrency, and inline files for the Python client.

use base64::Engine;
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use puppet_tests::{Events, Server, Token, kind, pattern_chunks, sha256, world};
use serde_json::Value;
use tonic::Code;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Puppet = PuppetClient<InterceptedService<Channel, Token>>;
const CHUNK: usize = 256 * 1024;

async fn online() -> (Server, Events) {
    online_with(&[]).await
}

async fn online_with(args: &[&str]) -> (Server, Events) {
    let server = Server::start(args);
    let mut events = Events::open(&mut server.puppet().await).await;
    events.wait_for(kind::READY).await;
    (server, events)
}

/// Uploads `len` pattern bytes; returns (id, sha256).
async fn upload(p: &mut Puppet, seed: u8, len: usize) -> Result<(String, String), tonic::Status> {
    let chunks: Vec<Vec<u8>> = pattern_chunks(seed, len, CHUNK).collect();
    let digest = sha256(chunks.iter().map(Vec::as_slice));
    let reqs = chunks.into_iter().map(|chunk| pb::UploadRequest { chunk });
    let id = p.upload(tokio_stream::iter(reqs)).await?.into_inner().id;
    Ok((id, digest))
}

/// Downloads a blob; returns (sha256, size, chunk sizes).
async fn download(p: &mut Puppet, id: &str) -> Result<(String, usize, Vec<usize>), tonic::Status> {
    let mut stream = p.download(pb::DownloadRequest { id: id.into() }).await?.into_inner();
    let mut chunks = Vec::new();
    while let Some(m) = stream.message().await? {
        chunks.push(m.chunk);
    }
    let sizes: Vec<usize> = chunks.iter().map(Vec::len).collect();
    Ok((sha256(chunks.iter().map(Vec::as_slice)), sizes.iter().sum(), sizes))
}

fn filebox(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_and_download_round_trip_every_size() {
    let server = Server::start(&["--autostart", "false"]);
    let mut p = server.puppet().await;
    for len in [1, 20 * 1024, 5 << 20, 100 << 20] {
        let (id, digest) = upload(&mut p, len as u8, len).await.unwrap();
        for _ in 0..2 {
            let (got, size, sizes) = download(&mut p, &id).await.unwrap();
            assert_eq!((got.as_str(), size), (digest.as_str(), len), "{len} bytes, read again");
            assert!(sizes.iter().all(|s| *s > 0 && *s <= CHUNK), "chunks of 1..=256 KiB: {sizes:?}");
            assert!(sizes[..sizes.len() - 1].iter().all(|s| *s >= 64 * 1024), "only the last chunk is short");
        }
    }
    let e = p.upload(tokio_stream::iter(Vec::<pb::UploadRequest>::new())).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "an empty upload is refused: {e:?}");
    assert!(e.message().contains("empty"), "{}", e.message());
    let e = download(&mut p, "no-such-blob").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_eviction_and_concurrent_uploads() {
    let server = Server::start(&["--autostart", "false", "--blob-max-file-mib", "2", "--blob-max-total-mib", "5"]);
    let mut p = server.puppet().await;
    let e = upload(&mut p, 1, (2 << 20) + 1).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted);
    assert!(e.message().contains("--blob-max-file-mib"), "{}", e.message());

    // 5 MiB total: a third 2 MiB file evicts the least recently used one.
    let (a, _) = upload(&mut p, 1, 2 << 20).await.unwrap();
    let (b, b_sum) = upload(&mut p, 2, 2 << 20).await.unwrap();
    let (c, c_sum) = upload(&mut p, 3, 2 << 20).await.unwrap();
    assert_eq!(download(&mut p, &a).await.unwrap_err().code(), Code::NotFound, "a was evicted");
    assert_eq!(download(&mut p, &b).await.unwrap().0, b_sum);
    assert_eq!(download(&mut p, &c).await.unwrap().0, c_sum);

    // Concurrent uploads on separate connections do not corrupt each other.
    let mut tasks = Vec::new();
    for seed in 10..14u8 {
        let mut client = server.puppet().await;
        tasks.push(tokio::spawn(async move {
            let (id, sum) = upload(&mut client, seed, 1 << 20).await.unwrap();
            assert_eq!(download(&mut client, &id).await.unwrap().0, sum, "seed {seed}");
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_sent_every_way_arrive_intact() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;

    // Node's large-file path: Upload, then MessageSendFile with a Uuid box.
    let (id, digest) = upload(&mut p, 7, 5 << 20).await.unwrap();
    let json = format!(r#"{{"type":7,"boxType":7,"uuid":"{id}","name":"report.pdf","size":{}}}"#, 5 << 20);
    let sent = p
        .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box: json })
        .await
        .unwrap()
        .into_inner();
    events.wait_until(kind::MESSAGE, |e| e["messageId"] == sent.id.as_str()).await;
    let m = p.message_payload(pb::MessagePayloadRequest { id: sent.id.clone() }).await.unwrap().into_inner();
    assert_eq!((m.r#type, m.filename.as_str()), (1, "report.pdf"), "Attachment is 1");
    let fb =
        filebox(&p.message_file(pb::MessageFileRequest { id: sent.id.clone() }).await.unwrap().into_inner().file_box);
    assert_eq!(
        (fb["type"].as_u64(), fb["name"].as_str(), fb["size"].as_u64()),
        (Some(7), Some("report.pdf"), Some(5 << 20))
    );
    assert_eq!(download(&mut p, fb["uuid"].as_str().unwrap()).await.unwrap().0, digest, "the world got the same bytes");

    // The deprecated chunked streams, both ways, at several sizes.
    for len in [1, 20 * 1024, 5 << 20] {
        let data: Vec<Vec<u8>> = pattern_chunks(len as u8, len, 64 * 1024).collect();
        let digest = sha256(data.iter().map(Vec::as_slice));
        let mut msgs = vec![
            pb::MessageSendFileStreamRequest { conversation_id: Some("wxid_bob".into()), file_box_chunk: None },
            pb::MessageSendFileStreamRequest {
                conversation_id: None,
                file_box_chunk: Some(pb::FileBoxChunk { data: None, name: Some(format!("f{len}.bin")) }),
            },
        ];
        msgs.extend(data.into_iter().map(|d| pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(d), name: None }),
        }));
        let id = p.message_send_file_stream(tokio_stream::iter(msgs)).await.unwrap().into_inner().id;
        let mut stream = p.message_file_stream(pb::MessageFileStreamRequest { id }).await.unwrap().into_inner();
        assert_eq!(stream.message().await.unwrap().unwrap().file_box_chunk.unwrap().name, Some(format!("f{len}.bin")));
        let mut got = Vec::new();
        while let Some(m) = stream.message().await.unwrap() {
            got.push(m.file_box_chunk.unwrap().data.unwrap());
        }
        assert_eq!(sha256(got.iter().map(Vec::as_slice)), digest, "{len} bytes through the deprecated streams");
    }

    // The Node client's exact shape, into a room: a video.
    let data: Vec<Vec<u8>> = pattern_chunks(9, 3 << 20, 64 * 1024).collect();
    let digest = sha256(data.iter().map(Vec::as_slice));
    let mut msgs = vec![
        pb::MessageSendFileStreamRequest { conversation_id: Some("10001@chatroom".into()), file_box_chunk: None },
        pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: None, name: Some("clip.mp4".into()) }),
        },
    ];
    msgs.extend(data.into_iter().map(|d| pb::MessageSendFileStreamRequest {
        conversation_id: None,
        file_box_chunk: Some(pb::FileBoxChunk { data: Some(d), name: None }),
    }));
    let sent = p.message_send_file_stream(tokio_stream::iter(msgs)).await.unwrap().into_inner();
    #[allow(deprecated)]
    let legacy = sent.id_string_value_deprecated.clone();
    assert_eq!(legacy.as_deref(), Some(sent.id.as_str()));
    assert_eq!(
        p.message_payload(pb::MessagePayloadRequest { id: sent.id.clone() }).await.unwrap().into_inner().r#type,
        15,
        "Video is 15"
    );
    let mut stream =
        p.message_file_stream(pb::MessageFileStreamRequest { id: sent.id.clone() }).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap().file_box_chunk.unwrap();
    assert_eq!((first.name.as_deref(), first.data), (Some("clip.mp4"), None), "the name comes first");
    let mut chunks = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        let c = m.file_box_chunk.unwrap();
        assert!(c.name.is_none());
        chunks.push(c.data.expect("every later message carries data"));
    }
    assert_eq!(sha256(chunks.iter().map(Vec::as_slice)), digest);

    // Out of order: data before the name.
    let bad = vec![
        pb::MessageSendFileStreamRequest { conversation_id: Some("wxid_alice".into()), file_box_chunk: None },
        pb::MessageSendFileStreamRequest {
            conversation_id: None,
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(vec![1]), name: None }),
        },
    ];
    assert_eq!(p.message_send_file_stream(tokio_stream::iter(bad)).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn every_filebox_spelling_is_accepted() {
    let (server, _events) = online().await;
    let mut p = server.puppet().await;
    let send = |json: &str| pb::MessageSendFileRequest { conversation_id: "wxid_bob".into(), file_box: json.into() };
    let cases = [
        (r#"{"type":1,"name":"a.txt","base64":"aGVsbG8="}"#, 1),
        (r#"{"boxType":1,"name":"a.txt","base64":"aGVsbG8="}"#, 1),
        (r#"{"type":2,"name":"cat.jpg","url":"https://example.com/cat.jpg"}"#, 2),
        // Python's Url box: boxType and remoteUrl only.
        (r#"{"boxType":2,"_type":"url","name":"cat.jpg","remoteUrl":"https://example.com/cat.jpg","headers":{}}"#, 2),
        (r#"{"type":3,"name":"qr.png","qrCode":"https://example.com/qr"}"#, 3),
    ];
    for (json, box_type) in cases {
        let id = p.message_send_file(send(json)).await.unwrap_or_else(|e| panic!("{json}: {e:?}")).into_inner().id;
        let fb = filebox(&p.message_file(pb::MessageFileRequest { id }).await.unwrap().into_inner().file_box);
        assert_eq!((fb["type"].as_u64(), fb["boxType"].as_u64()), (Some(box_type), Some(box_type)), "{json} → {fb}");
        if box_type == 2 {
            assert_eq!(
                (fb["url"].as_str(), fb["remoteUrl"].as_str()),
                (Some("https://example.com/cat.jpg"), Some("https://example.com/cat.jpg"))
            );
        }
    }
    for bad in [
        "",
        "{",
        r#"{"type":9,"name":"x"}"#,
        r#"{"type":1,"name":"x"}"#,
        r#"{"type":1,"base64":"%%%"}"#,
        r#"{"type":7,"uuid":"gone"}"#,
    ] {
        let e = p.message_send_file(send(bad)).await.unwrap_err();
        let expected = if bad.contains("gone") { Code::NotFound } else { Code::InvalidArgument };
        assert_eq!(e.code(), expected, "{bad}: {e:?}");
    }
    // A Url box cannot be streamed: the server fetches no URLs.
    let id = p.message_send_file(send(cases[2].0)).await.unwrap().into_inner().id;
    let e = p.message_file_stream(pb::MessageFileStreamRequest { id }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_files_reach_node_by_uuid_and_python_inline() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;
    let bytes: Vec<u8> = pattern_chunks(5, 2 << 20, 2 << 20).next().unwrap();
    let digest = sha256([bytes.as_slice()]);
    let id = world(&server)
        .await
        .send_file(ext::SendFileRequest {
            from_id: "wxid_alice".into(),
            room_id: String::new(),
            name: "photo.jpg".into(),
            data: bytes.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    events.wait_until(kind::MESSAGE, |e| e["messageId"] == id.as_str()).await;

    let fb = filebox(
        &p.message_image(pb::MessageImageRequest { id: id.clone(), r#type: 2 }).await.unwrap().into_inner().file_box,
    );
    assert_eq!(fb["type"], 7, "over 1 MiB: a Uuid box for clients that can Download");
    assert_eq!(download(&mut p, fb["uuid"].as_str().unwrap()).await.unwrap().0, digest);

    let mut stream =
        p.message_image_stream(pb::MessageImageStreamRequest { id: id.clone(), r#type: 1 }).await.unwrap().into_inner();
    assert_eq!(stream.message().await.unwrap().unwrap().file_box_chunk.unwrap().name.as_deref(), Some("photo.jpg"));
    let mut got = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        got.extend(m.file_box_chunk.unwrap().data.unwrap());
    }
    assert_eq!(sha256([got.as_slice()]), digest);

    // The Python client (grpclib) cannot Download: it gets the file inline.
    let channel = Channel::from_shared(server.endpoint())
        .unwrap()
        .user_agent("grpc-python-grpclib/0.4.9")
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut python =
        PuppetClient::with_interceptor(channel, Token(puppet_tests::TOKEN.into())).max_decoding_message_size(64 << 20);
    let fb = filebox(&python.message_file(pb::MessageFileRequest { id }).await.unwrap().into_inner().file_box);
    assert_eq!((fb["type"].as_u64(), fb["boxType"].as_u64()), (Some(1), Some(1)));
    let inline = base64::engine::general_purpose::STANDARD.decode(fb["base64"].as_str().unwrap()).unwrap();
    assert_eq!(sha256([inline.as_slice()]), digest);
}
