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
            Self::Payload(e) => write!(f, "malformed event payload: {e}"),
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
}
