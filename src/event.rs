//! Puppet events and their JSON payloads, exactly as the official Wechaty clients parse them
//! (camelCase keys; the keys Python requires are always present; never an empty payload).

use serde::{Deserialize, Serialize};

use crate::ids::{ContactId, FriendshipId, MessageId, RoomId, RoomInvitationId};
use crate::model::{PayloadType, ScanStatus};

/// Event kinds, numbered as `wechaty.puppet.EventType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[repr(i32)]
pub enum EventKind {
    /// Liveness; generated per stream by the server.
    Heartbeat = 1,
    /// A message arrived or was sent.
    Message = 2,
    /// The answer to a `Ding`.
    Dong = 3,
    /// Something went wrong on the backend side.
    Error = 16,
    /// A friend request.
    Friendship = 17,
    /// The bot was invited to a room.
    RoomInvite = 18,
    /// Members joined a room.
    RoomJoin = 19,
    /// Members left or were removed from a room.
    RoomLeave = 20,
    /// A room's topic changed.
    RoomTopic = 21,
    /// Login QR code state.
    Scan = 22,
    /// Contacts and rooms are loaded.
    Ready = 23,
    /// The bot logged in.
    Login = 25,
    /// The bot logged out.
    Logout = 26,
    /// Cached data about something changed; clients must refetch it.
    Dirty = 27,
    /// A room's announcement changed (upstream HEAD only; old clients throw on it).
    RoomAnnounce = 32,
}

impl EventKind {
    /// The `EventType` number.
    pub fn wire(self) -> i32 {
        self as i32
    }
    /// The kind for an `EventType` number, if it is one we know.
    pub fn from_wire(n: i32) -> Option<Self> {
        use EventKind::*;
        [
            Heartbeat,
            Message,
            Dong,
            Error,
            Friendship,
            RoomInvite,
            RoomJoin,
            RoomLeave,
            RoomTopic,
            Scan,
            Ready,
            Login,
            Logout,
            Dirty,
            RoomAnnounce,
        ]
        .into_iter()
        .find(|k| k.wire() == n)
    }
    /// Wechaty's event name (`message`, `room-join`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::Heartbeat => "heartbeat",
            Self::Message => "message",
            Self::Dong => "dong",
            Self::Error => "error",
            Self::Friendship => "friendship",
            Self::RoomInvite => "room-invite",
            Self::RoomJoin => "room-join",
            Self::RoomLeave => "room-leave",
            Self::RoomTopic => "room-topic",
            Self::Scan => "scan",
            Self::Ready => "ready",
            Self::Login => "login",
            Self::Logout => "logout",
            Self::Dirty => "dirty",
            Self::RoomAnnounce => "room-announce",
        }
    }
}

/// `HEARTBEAT`, `DONG` and `READY` payloads.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DataPayload {
    /// Free text (Python requires the key on HEARTBEAT and READY).
    #[serde(default)]
    pub data: String,
}

/// `MESSAGE` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessageEvent {
    /// The message to fetch with `MessagePayload`.
    pub message_id: MessageId,
}

/// `ERROR` payload. `gerror` is itself JSON text (the official server's form); `data` is the legacy
/// plain message Python requires.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// Human-readable message.
    pub data: String,
    /// JSON text of `{code, details, message, name, stack}`.
    pub gerror: String,
}

impl ErrorEvent {
    /// An error event with a gRPC-style code and message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        let message = message.into();
        let gerror = serde_json::json!({
            "code": code, "details": message, "message": message, "name": "GError", "stack": "",
        });
        Self { data: message, gerror: gerror.to_string() }
    }
}

/// `FRIENDSHIP` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FriendshipEvent {
    /// The request to fetch with `FriendshipPayload`.
    pub friendship_id: FriendshipId,
}

/// `ROOM_INVITE` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInviteEvent {
    /// The invitation to fetch with `RoomInvitationPayload`.
    pub room_invitation_id: RoomInvitationId,
}

/// `ROOM_JOIN` payload. Timestamps are seconds since the epoch (Node reads < 1e11 as seconds).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomJoinEvent {
    /// Who joined.
    pub invitee_id_list: Vec<ContactId>,
    /// Who invited them.
    pub inviter_id: ContactId,
    /// The room.
    pub room_id: RoomId,
    /// Seconds since the epoch.
    pub timestamp: u64,
}

/// `ROOM_LEAVE` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomLeaveEvent {
    /// Who left or was removed.
    pub removee_id_list: Vec<ContactId>,
    /// Who removed them (the leaver themself for a quit).
    pub remover_id: ContactId,
    /// The room.
    pub room_id: RoomId,
    /// Seconds since the epoch.
    pub timestamp: u64,
}

/// `ROOM_TOPIC` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomTopicEvent {
    /// Who changed it.
    pub changer_id: ContactId,
    /// The new topic.
    pub new_topic: String,
    /// The previous topic.
    pub old_topic: String,
    /// The room.
    pub room_id: RoomId,
    /// Seconds since the epoch.
    pub timestamp: u64,
}

/// `ROOM_ANNOUNCE` payload (upstream HEAD).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomAnnounceEvent {
    /// Who changed it.
    pub changer_id: ContactId,
    /// The new announcement.
    pub new_announce: String,
    /// The previous announcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_announce: Option<String>,
    /// The room.
    pub room_id: RoomId,
    /// Seconds since the epoch.
    pub timestamp: u64,
}

/// `SCAN` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScanEvent {
    /// [`ScanStatus`] number.
    pub status: i32,
    /// The text to encode in the QR code, while one is pending.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qrcode: Option<String>,
    /// Extra text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

/// `LOGIN` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoginEvent {
    /// The bot's own contact id.
    pub contact_id: ContactId,
}

/// `LOGOUT` payload (Python requires both keys).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogoutEvent {
    /// The bot's own contact id.
    pub contact_id: ContactId,
    /// Why.
    pub data: String,
}

/// `DIRTY` payload.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DirtyEvent {
    /// [`PayloadType`] number.
    pub payload_type: i32,
    /// The id whose cached payload is stale.
    pub payload_id: String,
}

/// One puppet event with its payload.
#[derive(Clone, Debug, PartialEq)]
pub enum PuppetEvent {
    /// See [`EventKind::Heartbeat`].
    Heartbeat(DataPayload),
    /// See [`EventKind::Message`].
    Message(MessageEvent),
    /// See [`EventKind::Dong`].
    Dong(DataPayload),
    /// See [`EventKind::Error`].
    Error(ErrorEvent),
    /// See [`EventKind::Friendship`].
    Friendship(FriendshipEvent),
    /// See [`EventKind::RoomInvite`].
    RoomInvite(RoomInviteEvent),
    /// See [`EventKind::RoomJoin`].
    RoomJoin(RoomJoinEvent),
    /// See [`EventKind::RoomLeave`].
    RoomLeave(RoomLeaveEvent),
    /// See [`EventKind::RoomTopic`].
    RoomTopic(RoomTopicEvent),
    /// See [`EventKind::RoomAnnounce`].
    RoomAnnounce(RoomAnnounceEvent),
    /// See [`EventKind::Scan`].
    Scan(ScanEvent),
    /// See [`EventKind::Ready`].
    Ready(DataPayload),
    /// See [`EventKind::Login`].
    Login(LoginEvent),
    /// See [`EventKind::Logout`].
    Logout(LogoutEvent),
    /// See [`EventKind::Dirty`].
    Dirty(DirtyEvent),
}

/// Why an event could not be decoded.
#[derive(Debug)]
pub enum DecodeError {
    /// The `EventType` number is not one we know.
    UnknownKind(i32),
    /// The payload is not the JSON this kind requires.
    Payload(serde_json::Error),
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnknownKind(n) => write!(f, "unknown event type {n}"),
            Self::Payload(e) => write!(f, "malformed event payload: {}", crate::ids::shown_quotes(&e.to_string())),
        }
    }
}

impl std::error::Error for DecodeError {}

impl PuppetEvent {
    /// A `SCAN` event.
    pub fn scan(status: ScanStatus, qrcode: Option<String>) -> Self {
        Self::Scan(ScanEvent { status: status.wire(), qrcode, data: None })
    }
    /// A `DIRTY` event.
    pub fn dirty(payload_type: PayloadType, id: impl Into<String>) -> Self {
        Self::Dirty(DirtyEvent { payload_type: payload_type.wire(), payload_id: id.into() })
    }
    /// A `READY` event.
    pub fn ready() -> Self {
        Self::Ready(DataPayload { data: "ready".into() })
    }

    /// Its kind.
    pub fn kind(&self) -> EventKind {
        match self {
            Self::Heartbeat(_) => EventKind::Heartbeat,
            Self::Message(_) => EventKind::Message,
            Self::Dong(_) => EventKind::Dong,
            Self::Error(_) => EventKind::Error,
            Self::Friendship(_) => EventKind::Friendship,
            Self::RoomInvite(_) => EventKind::RoomInvite,
            Self::RoomJoin(_) => EventKind::RoomJoin,
            Self::RoomLeave(_) => EventKind::RoomLeave,
            Self::RoomTopic(_) => EventKind::RoomTopic,
            Self::RoomAnnounce(_) => EventKind::RoomAnnounce,
            Self::Scan(_) => EventKind::Scan,
            Self::Ready(_) => EventKind::Ready,
            Self::Login(_) => EventKind::Login,
            Self::Logout(_) => EventKind::Logout,
            Self::Dirty(_) => EventKind::Dirty,
        }
    }

    /// The JSON text carried in `EventResponse.payload`.
    pub fn payload_json(&self) -> String {
        let r = match self {
            Self::Heartbeat(p) | Self::Dong(p) | Self::Ready(p) => serde_json::to_string(p),
            Self::Message(p) => serde_json::to_string(p),
            Self::Error(p) => serde_json::to_string(p),
            Self::Friendship(p) => serde_json::to_string(p),
            Self::RoomInvite(p) => serde_json::to_string(p),
            Self::RoomJoin(p) => serde_json::to_string(p),
            Self::RoomLeave(p) => serde_json::to_string(p),
            Self::RoomTopic(p) => serde_json::to_string(p),
            Self::RoomAnnounce(p) => serde_json::to_string(p),
            Self::Scan(p) => serde_json::to_string(p),
            Self::Login(p) => serde_json::to_string(p),
            Self::Logout(p) => serde_json::to_string(p),
            Self::Dirty(p) => serde_json::to_string(p),
        };
        // These structs hold only strings, numbers and lists: serialization cannot fail.
        r.unwrap_or_else(|_| "{}".to_owned())
    }

    /// Decodes an `EventResponse` (type number and JSON text).
    pub fn from_wire(kind: i32, payload: &str) -> Result<Self, DecodeError> {
        let kind = EventKind::from_wire(kind).ok_or(DecodeError::UnknownKind(kind))?;
        let p = if payload.is_empty() { "{}" } else { payload };
        fn de<T: serde::de::DeserializeOwned>(p: &str) -> Result<T, DecodeError> {
            serde_json::from_str(p).map_err(DecodeError::Payload)
        }
        Ok(match kind {
            EventKind::Heartbeat => Self::Heartbeat(de(p)?),
            EventKind::Message => Self::Message(de(p)?),
            EventKind::Dong => Self::Dong(de(p)?),
            EventKind::Error => Self::Error(de(p)?),
            EventKind::Friendship => Self::Friendship(de(p)?),
            EventKind::RoomInvite => Self::RoomInvite(de(p)?),
            EventKind::RoomJoin => Self::RoomJoin(de(p)?),
            EventKind::RoomLeave => Self::RoomLeave(de(p)?),
            EventKind::RoomTopic => Self::RoomTopic(de(p)?),
            EventKind::RoomAnnounce => Self::RoomAnnounce(de(p)?),
            EventKind::Scan => Self::Scan(de(p)?),
            EventKind::Ready => Self::Ready(de(p)?),
            EventKind::Login => Self::Login(de(p)?),
            EventKind::Logout => Self::Logout(de(p)?),
            EventKind::Dirty => Self::Dirty(de(p)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_match_what_clients_parse() {
        let cases = [
            (PuppetEvent::Heartbeat(DataPayload { data: "hb".into() }), r#"{"data":"hb"}"#),
            (PuppetEvent::Message(MessageEvent { message_id: "m1".into() }), r#"{"messageId":"m1"}"#),
            (PuppetEvent::scan(ScanStatus::Waiting, Some("qr".into())), r#"{"status":2,"qrcode":"qr"}"#),
            (PuppetEvent::ready(), r#"{"data":"ready"}"#),
            (
                PuppetEvent::Logout(LogoutEvent { contact_id: "me".into(), data: "bye".into() }),
                r#"{"contactId":"me","data":"bye"}"#,
            ),
            (PuppetEvent::dirty(PayloadType::Contact, "c1"), r#"{"payloadType":2,"payloadId":"c1"}"#),
            (
                PuppetEvent::RoomJoin(RoomJoinEvent {
                    invitee_id_list: vec!["a".into()],
                    inviter_id: "b".into(),
                    room_id: "r@chatroom".into(),
                    timestamp: 1,
                }),
                r#"{"inviteeIdList":["a"],"inviterId":"b","roomId":"r@chatroom","timestamp":1}"#,
            ),
        ];
        for (event, json) in cases {
            assert_eq!(event.payload_json(), json);
            assert_eq!(PuppetEvent::from_wire(event.kind().wire(), json).unwrap(), event);
        }
    }

    #[test]
    fn error_event_carries_data_and_gerror() {
        let json = PuppetEvent::Error(ErrorEvent::new(13, "boom")).payload_json();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["data"], "boom");
        let g: serde_json::Value = serde_json::from_str(v["gerror"].as_str().unwrap()).unwrap();
        assert_eq!(g["code"], 13);
    }

    #[test]
    fn unknown_kinds_are_reported() {
        assert!(matches!(PuppetEvent::from_wire(4, "{}"), Err(DecodeError::UnknownKind(4))));
        assert!(matches!(PuppetEvent::from_wire(25, "{}"), Err(DecodeError::Payload(_))));
    }

    #[test]
    fn a_malformed_payload_is_described_not_repeated() {
        let huge = "\u{1b}[31m".repeat(1 << 16);
        let payload = serde_json::json!({ "status": huge }).to_string();
        let e = PuppetEvent::from_wire(EventKind::Scan.wire(), &payload).unwrap_err().to_string();
        assert!(e.chars().count() < MAX_MESSAGE, "{}", &e[..e.len().min(300)]);
        assert!(e.contains("invalid type: string") && e.contains("expected i32") && !e.contains('\u{1b}'), "{e}");
    }

    #[test]
    fn deep_nesting_in_a_payload_never_overflows_the_stack() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        for kind in [EventKind::Message, EventKind::Heartbeat, EventKind::Scan, EventKind::RoomJoin] {
            let fields = format!(r#"{{"messageId":{deep},"data":{deep},"status":{deep},"inviteeIdList":{deep}}}"#);
            for text in [&deep, &fields] {
                let e = PuppetEvent::from_wire(kind.wire(), text).unwrap_err().to_string();
                assert!(e.len() < MAX_MESSAGE, "{e}");
            }
        }
        // An unknown key is skipped by serde_json without recursion, however deep.
        let skipped = PuppetEvent::from_wire(EventKind::Message.wire(), &format!(r#"{{"messageId":"m","x":{deep}}}"#));
        assert_eq!(skipped.unwrap(), PuppetEvent::Message(MessageEvent { message_id: "m".into() }));
    }

    /// Every file in `tests/fixtures/hostile/event/` (named `<event type number>-….json`) decodes
    /// or is refused with a short message.
    #[test]
    fn hostile_fixtures_are_decoded_or_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/event");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let kind: i32 = name.split('-').next().and_then(|n| n.parse().ok()).expect("named <type>-…");
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = PuppetEvent::from_wire(kind, &text) {
                assert!(e.to_string().chars().count() < MAX_MESSAGE, "{name}: {e}");
            }
            seen += 1;
        }
        assert!(seen > 0, "no fixtures in {}", dir.display());
    }

    /// No decoding error is longer than this, whatever the payload.
    const MAX_MESSAGE: usize = 400;

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        fn id<T: From<String> + std::fmt::Debug>() -> impl Strategy<Value = T> {
            any::<String>().prop_map(T::from)
        }

        fn ids<T: From<String> + std::fmt::Debug>() -> impl Strategy<Value = Vec<T>> {
            prop::collection::vec(id::<T>(), 0..4)
        }

        fn data() -> impl Strategy<Value = DataPayload> {
            any::<String>().prop_map(|data| DataPayload { data })
        }

        /// Every variant, with arbitrary strings and numbers.
        fn event() -> impl Strategy<Value = PuppetEvent> {
            prop_oneof![
                data().prop_map(PuppetEvent::Heartbeat),
                id().prop_map(|message_id| PuppetEvent::Message(MessageEvent { message_id })),
                data().prop_map(PuppetEvent::Dong),
                (any::<String>(), any::<String>())
                    .prop_map(|(data, gerror)| PuppetEvent::Error(ErrorEvent { data, gerror })),
                (any::<i32>(), any::<String>()).prop_map(|(code, m)| PuppetEvent::Error(ErrorEvent::new(code, m))),
                id().prop_map(|friendship_id| PuppetEvent::Friendship(FriendshipEvent { friendship_id })),
                id().prop_map(|room_invitation_id| PuppetEvent::RoomInvite(RoomInviteEvent { room_invitation_id })),
                (ids(), id(), id(), any::<u64>()).prop_map(|(invitee_id_list, inviter_id, room_id, timestamp)| {
                    PuppetEvent::RoomJoin(RoomJoinEvent { invitee_id_list, inviter_id, room_id, timestamp })
                }),
                (ids(), id(), id(), any::<u64>()).prop_map(|(removee_id_list, remover_id, room_id, timestamp)| {
                    PuppetEvent::RoomLeave(RoomLeaveEvent { removee_id_list, remover_id, room_id, timestamp })
                }),
                (id(), any::<String>(), any::<String>(), id(), any::<u64>()).prop_map(
                    |(changer_id, new_topic, old_topic, room_id, timestamp)| {
                        PuppetEvent::RoomTopic(RoomTopicEvent { changer_id, new_topic, old_topic, room_id, timestamp })
                    }
                ),
                (id(), any::<String>(), any::<Option<String>>(), id(), any::<u64>()).prop_map(
                    |(changer_id, new_announce, old_announce, room_id, timestamp)| {
                        PuppetEvent::RoomAnnounce(RoomAnnounceEvent {
                            changer_id,
                            new_announce,
                            old_announce,
                            room_id,
                            timestamp,
                        })
                    }
                ),
                (any::<i32>(), any::<Option<String>>(), any::<Option<String>>())
                    .prop_map(|(status, qrcode, data)| PuppetEvent::Scan(ScanEvent { status, qrcode, data })),
                data().prop_map(PuppetEvent::Ready),
                id().prop_map(|contact_id| PuppetEvent::Login(LoginEvent { contact_id })),
                (id(), any::<String>())
                    .prop_map(|(contact_id, data)| PuppetEvent::Logout(LogoutEvent { contact_id, data })),
                (any::<i32>(), any::<String>())
                    .prop_map(|(payload_type, payload_id)| PuppetEvent::Dirty(DirtyEvent { payload_type, payload_id })),
            ]
        }

        fn kind() -> impl Strategy<Value = i32> {
            prop_oneof![prop::sample::select((1..=40).collect::<Vec<i32>>()), any::<i32>()]
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..4)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn every_event_round_trips(event in event()) {
                let json = event.payload_json();
                prop_assert!(json.starts_with('{') && json != "{}", "never an empty payload: {}", json);
                prop_assert_eq!(PuppetEvent::from_wire(event.kind().wire(), &json).map_err(|e| e.to_string()), Ok(event));
            }

            #[test]
            fn arbitrary_text_is_decoded_or_refused_briefly(
                kind in kind(),
                text in prop_oneof![any::<String>(), "[\\[\\]{}\":,0-9a-zA-Z .eE+-]{0,120}"],
            ) {
                if let Err(e) = PuppetEvent::from_wire(kind, &text) {
                    prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e);
                    prop_assert!(!e.to_string().contains(|c: char| c.is_control()), "{}", e);
                }
            }

            #[test]
            fn near_valid_payloads_are_decoded_or_refused_briefly(
                event in event(),
                key in any::<prop::sample::Index>(),
                value in json_value(),
                extra in any::<String>(),
                how in 0..3u8,
            ) {
                let Value::Object(mut obj) = serde_json::from_str::<Value>(&event.payload_json()).unwrap() else {
                    unreachable!("payloads are objects")
                };
                let keys: Vec<String> = obj.keys().cloned().collect();
                let target = key.get(&keys).clone();
                match how {
                    0 => { obj.remove(&target); }
                    1 => { obj.insert(target, value); }
                    _ => { if !obj.contains_key(&extra) { obj.insert(extra, value); } }
                }
                let decoded = PuppetEvent::from_wire(event.kind().wire(), &Value::Object(obj).to_string());
                match decoded {
                    Ok(back) => {
                        prop_assert_eq!(back.kind(), event.kind());
                        if how == 2 {
                            prop_assert_eq!(back, event, "unknown keys are ignored");
                        }
                    }
                    Err(e) => {
                        prop_assert!(how != 2, "an unknown key refused: {}", e);
                        prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e);
                        prop_assert!(!e.to_string().contains(|c: char| c.is_control()), "{}", e);
                    }
                }
            }

            #[test]
            fn deep_payloads_never_overflow(event in event(), depth in 1usize..5_000, object in any::<bool>()) {
                let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
                let deep = format!("{}0{}", open.repeat(depth), close.repeat(depth));
                let kind = event.kind().wire();
                match PuppetEvent::from_wire(kind, &deep) {
                    Err(e) => prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e),
                    // Only an all-defaults payload (`data`) skips an unknown key `k`, however deep.
                    Ok(p) => prop_assert!(object && p.payload_json() == r#"{"data":""}"#, "{:?}", p),
                }
                // Deep JSON under an unknown key is skipped: the event is what it was.
                let json = event.payload_json();
                let with_deep = json.replacen('{', &format!(r#"{{"x":{deep},"#), 1);
                prop_assert_eq!(PuppetEvent::from_wire(kind, &with_deep).map_err(|e| e.to_string()), Ok(event));
                // Deep JSON where a field's value belongs is refused.
                if let Some(colon) = json.find(':') {
                    let bad = format!("{}:{deep}}}", &json[..colon]);
                    prop_assert!(PuppetEvent::from_wire(kind, &bad).is_err());
                }
            }
        }
    }
}
