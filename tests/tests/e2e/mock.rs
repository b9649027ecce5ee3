//! The mock backend over raw gRPC: login, queries, messages both ways, rooms, friendships, dirty.

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_tests::{Events, Server, kind, world};
use serde_json::json;
use tonic::Code;

const BOT: &str = "wxid_puppet_bot";

/// A server whose account is online, and an event stream that has seen the login.
async fn online() -> (Server, Events) {
    let server = Server::start(&[]);
    let mut puppet = server.puppet().await;
    let mut events = Events::open(&mut puppet).await;
    events.wait_for(kind::READY).await;
    (server, events)
}

#[tokio::test]
async fn login_flow_replay_logout_and_login_again() {
    let server = Server::start(&["--autostart", "false"]);
    let mut puppet = server.puppet().await;
    // Python calls Stop before anything has started: it must succeed.
    puppet.stop(pb::StopRequest {}).await.unwrap();
    let mut events = Events::open(&mut puppet).await;
    puppet.start(pb::StartRequest {}).await.unwrap();

    let (k, scan) = events.next().await;
    assert_eq!((k, &scan["status"]), (kind::SCAN, &json!(2)), "{scan}");
    assert!(scan["qrcode"].as_str().is_some_and(|q| !q.is_empty()), "{scan}");
    assert_eq!(events.next().await, (kind::SCAN, json!({"status": 3})));
    assert_eq!(events.next().await, (kind::SCAN, json!({"status": 4})));
    assert_eq!(events.next().await, (kind::LOGIN, json!({"contactId": BOT})));
    assert_eq!(events.next().await.0, kind::READY);

    // Start again has nothing to do: the next event is the DONG, not a new SCAN.
    puppet.start(pb::StartRequest {}).await.unwrap();
    puppet.ding(pb::DingRequest { data: "after-start".into() }).await.unwrap();
    assert_eq!(events.next().await, (kind::DONG, json!({"data": "after-start"})));

    // A late subscriber is told where the account stands.
    let mut late = Events::open(&mut puppet).await;
    assert_eq!(late.next().await, (kind::LOGIN, json!({"contactId": BOT})));
    assert_eq!(late.next().await.0, kind::READY);

    // Stop keeps the login; Logout ends it, once.
    puppet.stop(pb::StopRequest {}).await.unwrap();
    puppet.logout(pb::LogoutRequest {}).await.unwrap();
    let logout = events.wait_for(kind::LOGOUT).await;
    assert_eq!(logout["contactId"], BOT);
    assert!(logout["data"].is_string(), "Python requires `data`: {logout}");
    puppet.logout(pb::LogoutRequest {}).await.unwrap();
    let err = puppet
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: "wxid_alice".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");

    // The next event after the echoed Logout is the new scan: no second LOGOUT.
    puppet.start(pb::StartRequest {}).await.unwrap();
    assert_eq!(events.next().await.0, kind::SCAN);
    events.wait_for(kind::LOGIN).await;
}

#[tokio::test]
async fn contacts_rooms_aliases_and_tags() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;

    let ids = p.contact_list(pb::ContactListRequest {}).await.unwrap().into_inner().ids;
    assert!(ids.len() >= 30, "{}", ids.len());
    assert!(ids.contains(&"wxid_alice".to_owned()) && ids.contains(&BOT.to_owned()));
    assert!(!ids.contains(&"wxid_stranger_sam".to_owned()), "strangers are not contacts");

    let alice = p.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await.unwrap().into_inner();
    assert_eq!((alice.name.as_str(), alice.gender, alice.r#type, alice.friend), ("Alice", 2, 1, true));
    assert_eq!(alice.alias, "Alice (work)");
    assert_eq!(alice.weixin, "alice");
    assert_eq!(alice.phones.len(), 1);
    let news = p.contact_payload(pb::ContactPayloadRequest { id: "gh_news_daily".into() }).await.unwrap().into_inner();
    assert_eq!(news.r#type, 2, "official account");

    let e = p.contact_payload(pb::ContactPayloadRequest { id: "wxid_nobody".into() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "contact `wxid_nobody` not found"));
    let e = p.contact_payload(pb::ContactPayloadRequest { id: String::new() }).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "`id` is required"));

    // Alias: get with an empty alias still fills the wrapper (Node needs it, Python reads only it).
    #[allow(deprecated)]
    {
        let get = pb::ContactAliasRequest { id: "wxid_bob".into(), ..Default::default() };
        let r = p.contact_alias(get.clone()).await.unwrap().into_inner();
        assert_eq!((r.alias.as_str(), r.alias_string_value_deprecated.as_deref()), ("", Some("")));
        // Node sets with field 3 (and the wrapper); Python with the wrapper only.
        let node_set = pb::ContactAliasRequest {
            id: "wxid_bob".into(),
            alias: Some("Bobby".into()),
            alias_string_value_deprecated: Some("Bobby".into()),
        };
        p.contact_alias(node_set).await.unwrap();
        assert_eq!(events.wait_for(kind::DIRTY).await, json!({"payloadType": 2, "payloadId": "wxid_bob"}));
        let r = p.contact_alias(get.clone()).await.unwrap().into_inner();
        assert_eq!((r.alias.as_str(), r.alias_string_value_deprecated.as_deref()), ("Bobby", Some("Bobby")));
        let python_clear = pb::ContactAliasRequest {
            id: "wxid_bob".into(),
            alias_string_value_deprecated: Some(String::new()),
            alias: None,
        };
        p.contact_alias(python_clear).await.unwrap();
        assert_eq!(p.contact_alias(get).await.unwrap().into_inner().alias, "");
    }

    let rooms = p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids;
    assert_eq!(rooms.len(), 5, "{rooms:?}");
    assert!(!rooms.contains(&"10006@chatroom".to_owned()), "the bot is not in that room");
    let tea = p.room_payload(pb::RoomPayloadRequest { id: "10001@chatroom".into() }).await.unwrap().into_inner();
    assert_eq!((tea.topic.as_str(), tea.owner_id.as_str()), ("Tea Lovers", "wxid_alice"));
    assert_eq!(tea.admin_ids, vec!["wxid_bob"]);
    let members = p
        .room_member_list(pb::RoomMemberListRequest { id: "10001@chatroom".into() })
        .await
        .unwrap()
        .into_inner()
        .member_ids;
    assert_eq!(members, tea.member_ids);
    let carol = p
        .room_member_payload(pb::RoomMemberPayloadRequest {
            id: "10001@chatroom".into(),
            member_id: "wxid_carol".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((carol.name.as_str(), carol.room_alias.as_str()), ("Carol", "Carol from HR"));
    let e = p
        .room_member_payload(pb::RoomMemberPayloadRequest {
            id: "10001@chatroom".into(),
            member_id: "wxid_ivan".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    #[allow(deprecated)]
    {
        let t = p
            .room_topic(pb::RoomTopicRequest { id: "10003@chatroom".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((t.topic.as_str(), t.topic_string_value_deprecated.as_deref()), ("周末徒步", Some("周末徒步")));
        let a = p
            .room_announce(pb::RoomAnnounceRequest { id: "10003@chatroom".into(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (a.text.as_str(), a.text_string_value_deprecated.as_deref()),
            ("周六早上八点集合", Some("周六早上八点集合"))
        );
    }

    #[allow(deprecated)]
    {
        let all = p.tag_contact_list(pb::TagContactListRequest::default()).await.unwrap().into_inner().ids;
        assert!(all.contains(&"colleagues".to_owned()) && all.contains(&"家人".to_owned()), "{all:?}");
        // Per contact, by either field (upstream's server wrongly answers an empty list here).
        let by_sv = pb::TagContactListRequest {
            contact_id_string_value_deprecated: Some("wxid_alice".into()),
            contact_id: String::new(),
        };
        assert_eq!(p.tag_contact_list(by_sv).await.unwrap().into_inner().ids, vec!["colleagues"]);
        p.tag_contact_add(pb::TagContactAddRequest { id: "vip".into(), contact_id: "wxid_alice".into() })
            .await
            .unwrap();
        let by_id = pb::TagContactListRequest { contact_id: "wxid_alice".into(), ..Default::default() };
        assert_eq!(p.tag_contact_list(by_id).await.unwrap().into_inner().ids, vec!["colleagues", "vip"]);
    }
}

#[tokio::test]
async fn sent_messages_echo_as_events_with_full_payloads() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;

    let before = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let sent = p
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: "wxid_alice".into(),
            text: "hello".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    #[allow(deprecated)]
    let legacy = sent.id_string_value_deprecated.clone();
    assert!(!sent.id.is_empty());
    assert_eq!(legacy.as_deref(), Some(sent.id.as_str()), "Python reads only the wrapper");
    assert_eq!(events.wait_for(kind::MESSAGE).await, json!({"messageId": sent.id}));

    let m = p.message_payload(pb::MessagePayloadRequest { id: sent.id.clone() }).await.unwrap().into_inner();
    assert_eq!((m.talker_id.as_str(), m.listener_id.as_str(), m.room_id.as_str()), (BOT, "wxid_alice", ""));
    assert_eq!((m.r#type, m.text.as_str()), (7, "hello"), "Text is 7 in wechaty-puppet numbering");
    #[allow(deprecated)]
    let ms = m.timestamp_deprecated;
    assert!(ms >= before, "{ms} < {before}");
    assert_eq!(m.receive_time.unwrap().seconds as u64, ms / 1000);

    // Into a room, mentioning a member.
    let sent = p
        .message_send_text(pb::MessageSendTextRequest {
            conversation_id: "10002@chatroom".into(),
            text: "@张伟 hi".into(),
            mentional_ids: vec!["wxid_zhangwei".into()],
        })
        .await
        .unwrap()
        .into_inner();
    events.wait_until(kind::MESSAGE, |p| p["messageId"] == sent.id.as_str()).await;
    let m = p.message_payload(pb::MessagePayloadRequest { id: sent.id }).await.unwrap().into_inner();
    assert_eq!((m.room_id.as_str(), m.listener_id.as_str()), ("10002@chatroom", ""));
    assert_eq!(m.mention_ids, vec!["wxid_zhangwei"]);

    // Cards: Python sends the legacy JSON; both response fields come back.
    #[allow(deprecated)]
    {
        let url = pb::MessageSendUrlRequest {
            conversation_id: "wxid_bob".into(),
            url_link_deprecated: r#"{"url":"https://example.com","title":"Example","thumbnailUrl":"t"}"#.into(),
            url_link: None,
        };
        let id = p.message_send_url(url).await.unwrap().into_inner().id;
        let r = p.message_url(pb::MessageUrlRequest { id: id.clone() }).await.unwrap().into_inner();
        assert_eq!(r.url_link.unwrap().title, "Example");
        let legacy: serde_json::Value = serde_json::from_str(&r.url_link_deprecated).unwrap();
        assert_eq!(legacy["thumbnailUrl"], "t");
        assert_eq!(p.message_payload(pb::MessagePayloadRequest { id }).await.unwrap().into_inner().r#type, 14);
    }
    let loc = pb::LocationPayload { name: "Home".into(), latitude: 39.9, longitude: 116.4, ..Default::default() };
    let id = p
        .message_send_location(pb::MessageSendLocationRequest {
            conversation_id: "wxid_bob".into(),
            location: Some(loc),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let got = p.message_location(pb::MessageLocationRequest { id }).await.unwrap().into_inner().location.unwrap();
    assert_eq!((got.name.as_str(), got.latitude), ("Home", 39.9));
    let id = p
        .message_send_contact(pb::MessageSendContactRequest {
            conversation_id: "wxid_bob".into(),
            contact_id: "wxid_alice".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    assert_eq!(
        p.message_contact(pb::MessageContactRequest { id: id.clone() }).await.unwrap().into_inner().id,
        "wxid_alice"
    );
    let e = p.message_url(pb::MessageUrlRequest { id }).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "a contact card is not a link: {e:?}");

    // Recall, forward.
    let original = sent_id(&mut p, "fwd me").await;
    let r = p
        .message_forward(pb::MessageForwardRequest { message_id: original, conversation_id: "wxid_carol".into() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        p.message_payload(pb::MessagePayloadRequest { id: r.id.clone() }).await.unwrap().into_inner().listener_id,
        "wxid_carol"
    );
    assert!(p.message_recall(pb::MessageRecallRequest { id: r.id.clone() }).await.unwrap().into_inner().success);
    assert_eq!(p.message_payload(pb::MessagePayloadRequest { id: r.id }).await.unwrap().into_inner().r#type, 13);

    // Bad input.
    let bad = |conversation: &str, text: &str| pb::MessageSendTextRequest {
        conversation_id: conversation.into(),
        text: text.into(),
        ..Default::default()
    };
    assert_eq!(p.message_send_text(bad("wxid_alice", "  ")).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(p.message_send_text(bad("", "x")).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(p.message_send_text(bad("wxid_nobody", "x")).await.unwrap_err().code(), Code::NotFound);
    let e = p.message_send_text(bad("10006@chatroom", "x")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::FailedPrecondition, "the bot is not a member of room `10006@chatroom`"));
    let e = p
        .message_send_file(pb::MessageSendFileRequest { conversation_id: "wxid_alice".into(), file_box: "{}".into() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("file_box"), "{}", e.message());
    assert_eq!(
        p.message_payload(pb::MessagePayloadRequest { id: "msg_nope".into() }).await.unwrap_err().code(),
        Code::NotFound
    );

    // The world sees what the bot said.
    let history = world(&server)
        .await
        .list_messages(ext::ListMessagesRequest { conversation_id: "wxid_alice".into() })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(history.iter().map(|m| m.text.as_str()).collect::<Vec<_>>(), vec!["hello"]);
}

async fn sent_id(
    p: &mut puppet_proto::pb::wechaty::puppet_client::PuppetClient<
        tonic::service::interceptor::InterceptedService<tonic::transport::Channel, puppet_tests::Token>,
    >,
    text: &str,
) -> String {
    p.message_send_text(pb::MessageSendTextRequest {
        conversation_id: "wxid_bob".into(),
        text: text.into(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .id
}

#[tokio::test]
async fn the_world_talks_to_the_bot() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;
    let mut w = world(&server).await;

    let id = w
        .say(ext::SayRequest { from_id: "wxid_alice".into(), text: "ding".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    assert_eq!(events.wait_for(kind::MESSAGE).await, json!({"messageId": id}));
    let m = p.message_payload(pb::MessagePayloadRequest { id }).await.unwrap().into_inner();
    assert_eq!(
        (m.talker_id.as_str(), m.listener_id.as_str(), m.r#type, m.text.as_str()),
        ("wxid_alice", BOT, 7, "ding")
    );

    let id = w
        .say(ext::SayRequest {
            from_id: "wxid_bob".into(),
            room_id: "10001@chatroom".into(),
            text: "@Puppet Bot hi".into(),
            mention_ids: vec![BOT.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    events.wait_until(kind::MESSAGE, |p| p["messageId"] == id.as_str()).await;
    let m = p.message_payload(pb::MessagePayloadRequest { id }).await.unwrap().into_inner();
    assert_eq!((m.room_id.as_str(), m.mention_ids.clone()), ("10001@chatroom", vec![BOT.to_owned()]));

    let id = w
        .send_file(ext::SendFileRequest {
            from_id: "wxid_carol".into(),
            name: "cat.png".into(),
            data: b"\x89PNG fake".to_vec(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .message_id;
    let m = p.message_payload(pb::MessagePayloadRequest { id: id.clone() }).await.unwrap().into_inner();
    assert_eq!((m.r#type, m.filename.as_str()), (6, "cat.png"), "Image is 6");
    let fb: serde_json::Value =
        serde_json::from_str(&p.message_file(pb::MessageFileRequest { id }).await.unwrap().into_inner().file_box)
            .unwrap();
    assert_eq!((fb["type"].as_i64(), fb["boxType"].as_i64(), fb["name"].as_str()), (Some(1), Some(1), Some("cat.png")));
    assert_eq!(fb["base64"], "iVBORyBmYWtl");

    let e = w
        .say(ext::SayRequest { from_id: "wxid_stranger_sam".into(), text: "hi".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    let e = w
        .say(ext::SayRequest {
            from_id: "wxid_ivan".into(),
            room_id: "10001@chatroom".into(),
            text: "hi".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "not a member");
}

#[tokio::test]
async fn room_operations_emit_their_events() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;
    let mut w = world(&server).await;
    let rust = "10002@chatroom"; // the bot owns it

    p.room_add(pb::RoomAddRequest { id: rust.into(), contact_id: "wxid_alice".into(), ..Default::default() })
        .await
        .unwrap();
    let join = events.wait_for(kind::ROOM_JOIN).await;
    assert_eq!(
        (&join["inviteeIdList"], &join["inviterId"], &join["roomId"]),
        (&json!(["wxid_alice"]), &json!(BOT), &json!(rust))
    );
    assert!(join["timestamp"].as_u64().unwrap() < 100_000_000_000, "seconds, not ms");
    assert_eq!(events.next().await, (kind::DIRTY, json!({"payloadType": 3, "payloadId": rust})));

    p.room_del(pb::RoomDelRequest { id: rust.into(), contact_ids: vec!["wxid_alice".into()], ..Default::default() })
        .await
        .unwrap();
    let leave = events.wait_for(kind::ROOM_LEAVE).await;
    assert_eq!((&leave["removeeIdList"], &leave["removerId"]), (&json!(["wxid_alice"]), &json!(BOT)));
    let e = p
        .room_del(pb::RoomDelRequest {
            id: "10003@chatroom".into(),
            contact_id: "wxid_chenjing".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "the bot is neither owner nor admin there");
    let e = p.room_add(pb::RoomAddRequest { id: rust.into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    #[allow(deprecated)]
    {
        p.room_topic(pb::RoomTopicRequest { id: rust.into(), topic: Some("Rustaceans".into()), ..Default::default() })
            .await
            .unwrap();
        let t = events.wait_for(kind::ROOM_TOPIC).await;
        assert_eq!(
            (&t["oldTopic"], &t["newTopic"], &t["changerId"]),
            (&json!("Rust 中文社区"), &json!("Rustaceans"), &json!(BOT))
        );
        // Python sets through the wrapper only.
        p.room_topic(pb::RoomTopicRequest {
            id: rust.into(),
            topic_string_value_deprecated: Some("Rust!".into()),
            topic: None,
        })
        .await
        .unwrap();
        assert_eq!(events.wait_for(kind::ROOM_TOPIC).await["newTopic"], "Rust!");
    }

    let created = p
        .room_create(pb::RoomCreateRequest {
            contact_ids: vec!["wxid_bob".into(), "wxid_carol".into()],
            topic: "New".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .id;
    let join = events.wait_for(kind::ROOM_JOIN).await;
    assert_eq!((&join["roomId"], &join["inviteeIdList"]), (&json!(created), &json!(["wxid_bob", "wxid_carol"])));
    p.room_quit(pb::RoomQuitRequest { id: created.clone() }).await.unwrap();
    assert_eq!(events.wait_for(kind::ROOM_LEAVE).await["removeeIdList"], json!([BOT]));
    assert!(!p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids.contains(&created));

    // The world's side.
    w.join_room(ext::JoinRoomRequest {
        room_id: "10001@chatroom".into(),
        contact_ids: vec!["wxid_grace".into()],
        inviter_id: "wxid_alice".into(),
    })
    .await
    .unwrap();
    assert_eq!(events.wait_for(kind::ROOM_JOIN).await["inviterId"], "wxid_alice");
    w.leave_room(ext::LeaveRoomRequest {
        room_id: "10001@chatroom".into(),
        contact_ids: vec!["wxid_grace".into()],
        remover_id: String::new(),
    })
    .await
    .unwrap();
    assert_eq!(events.wait_for(kind::ROOM_LEAVE).await["removerId"], "wxid_grace");
    w.change_topic(ext::ChangeTopicRequest {
        room_id: "10001@chatroom".into(),
        changer_id: "wxid_bob".into(),
        topic: "Tea!".into(),
    })
    .await
    .unwrap();
    assert_eq!(events.wait_for(kind::ROOM_TOPIC).await["changerId"], "wxid_bob");

    let inv = w
        .invite_bot(ext::InviteBotRequest { room_id: "10006@chatroom".into(), inviter_id: "wxid_victor".into() })
        .await
        .unwrap()
        .into_inner()
        .room_invitation_id;
    assert_eq!(events.wait_for(kind::ROOM_INVITE).await, json!({"roomInvitationId": inv}));
    let payload = p
        .room_invitation_payload(pb::RoomInvitationPayloadRequest { id: inv.clone(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (payload.inviter_id.as_str(), payload.topic.as_str(), payload.member_count),
        ("wxid_victor", "Secret Garden", 3)
    );
    p.room_invitation_accept(pb::RoomInvitationAcceptRequest { id: inv }).await.unwrap();
    let join = events.wait_for(kind::ROOM_JOIN).await;
    assert_eq!((&join["inviteeIdList"], &join["roomId"]), (&json!([BOT]), &json!("10006@chatroom")));
    assert!(p.room_list(pb::RoomListRequest {}).await.unwrap().into_inner().ids.contains(&"10006@chatroom".to_owned()));
}

#[tokio::test]
async fn friendships_ding_dirty_and_forced_logout() {
    let (server, mut events) = online().await;
    let mut p = server.puppet().await;
    let mut w = world(&server).await;

    let f = w
        .request_friendship(ext::RequestFriendshipRequest {
            contact_id: "wxid_newbie".into(),
            name: "Newbie".into(),
            hello: "hi, add me".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .friendship_id;
    assert_eq!(events.wait_for(kind::FRIENDSHIP).await, json!({"friendshipId": f}));
    // Python sends the literal "null" in the deprecated payload field: still a read.
    #[allow(deprecated)]
    let req = pb::FriendshipPayloadRequest {
        id: f.clone(),
        payload_string_value_deprecated: Some("null".into()),
        payload: String::new(),
    };
    let fp = p.friendship_payload(req).await.unwrap().into_inner();
    assert_eq!((fp.contact_id.as_str(), fp.hello.as_str(), fp.r#type), ("wxid_newbie", "hi, add me", 2));
    p.friendship_accept(pb::FriendshipAcceptRequest { id: f.clone() }).await.unwrap();
    events.wait_for(kind::FRIENDSHIP).await;
    assert!(
        p.contact_payload(pb::ContactPayloadRequest { id: "wxid_newbie".into() }).await.unwrap().into_inner().friend
    );
    assert_eq!(
        p.friendship_accept(pb::FriendshipAcceptRequest { id: f }).await.unwrap_err().code(),
        Code::FailedPrecondition
    );

    #[allow(deprecated)]
    {
        let r = p
            .friendship_search_phone(pb::FriendshipSearchPhoneRequest { phone: "13900000001".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            (r.contact_id.as_str(), r.contact_id_string_value_deprecated.as_deref()),
            ("wxid_stranger_sam", Some("wxid_stranger_sam"))
        );
        let r = p
            .friendship_search_weixin(pb::FriendshipSearchHandleRequest { weixin: "nobody".into() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((r.contact_id.as_str(), r.contact_id_string_value_deprecated), ("", None));
    }
    p.friendship_add(pb::FriendshipAddRequest {
        contact_id: "wxid_stranger_sam".into(),
        hello: "hello".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let e = p
        .friendship_add(pb::FriendshipAddRequest { contact_id: "wxid_alice".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "already a friend");

    p.ding(pb::DingRequest { data: "ping-42".into() }).await.unwrap();
    assert_eq!(events.wait_for(kind::DONG).await, json!({"data": "ping-42"}));

    p.dirty_payload(pb::DirtyPayloadRequest { r#type: 3, id: "10001@chatroom".into() }).await.unwrap();
    assert_eq!(events.wait_for(kind::DIRTY).await, json!({"payloadType": 3, "payloadId": "10001@chatroom"}));
    let e = p.dirty_payload(pb::DirtyPayloadRequest { r#type: 9, id: "x".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);

    w.update_contact(ext::UpdateContactRequest {
        contact_id: "wxid_alice".into(),
        name: Some("Alicia".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(events.wait_for(kind::DIRTY).await, json!({"payloadType": 2, "payloadId": "wxid_alice"}));
    assert_eq!(
        p.contact_payload(pb::ContactPayloadRequest { id: "wxid_alice".into() }).await.unwrap().into_inner().name,
        "Alicia"
    );

    w.force_logout(ext::ForceLogoutRequest { reason: "kicked by the platform".into() }).await.unwrap();
    assert_eq!(events.wait_for(kind::LOGOUT).await, json!({"contactId": BOT, "data": "kicked by the platform"}));
    // The Node client echoes Logout after a LOGOUT event: harmless.
    p.logout(pb::LogoutRequest {}).await.unwrap();
    p.ding(pb::DingRequest { data: "still-here".into() }).await.unwrap();
    assert_eq!(events.next().await, (kind::DONG, json!({"data": "still-here"})), "no second LOGOUT");
}
