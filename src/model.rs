//! Domain types: what a backend knows about contacts, rooms, messages and the rest, independent of
//! the protobuf encoding. Field names follow Wechaty's payloads; serde uses camelCase so the same
//! types describe a mock world file or a client-side cache.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::ids::{ContactId, FriendshipId, MessageId, RoomId, RoomInvitationId};

/// Declares a C-like enum whose discriminants are the wire numbers, with lossless conversion to and
/// lenient conversion from `i32` (unknown numbers map to the `Unknown`-like first variant).
macro_rules! wire_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $num:expr),* $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "camelCase")]
        #[repr(i32)]
        #[allow(missing_docs)] // the variants are Wechaty's own names
        pub enum $name {
            #[default]
            $($(#[$vdoc])* $variant = $num),*
        }
        impl $name {
            /// The number used on the wire.
            pub fn wire(self) -> i32 {
                self as i32
            }
            /// The variant for a wire number, if the number is known.
            pub fn from_wire(n: i32) -> Option<Self> {
                match n {
                    $($num => Some(Self::$variant),)*
                    _ => None,
                }
            }
        }
    };
}

wire_enum!(
    /// A contact's gender.
    ContactGender { Unknown = 0, Male = 1, Female = 2 }
);
wire_enum!(
    /// What kind of account a contact is.
    ContactType { Unknown = 0, Individual = 1, Official = 2, Corporation = 3 }
);
wire_enum!(
    /// Direction and state of a friend request.
    FriendshipType { Unknown = 0, Confirm = 1, Receive = 2, Verify = 3 }
);
wire_enum!(
    /// How a friend request came about.
    FriendshipScene {
        Unknown = 0, Qq = 1, Email = 2, Weixin = 3, QqTbd = 12, Room = 14, Phone = 15, Card = 17,
        Location = 18, Bottle = 25, Shaking = 29, QrCode = 30,
    }
);
wire_enum!(
    /// Which rendition of an image message.
    ImageType { Unknown = 0, Thumbnail = 1, Hd = 2, Artwork = 3 }
);
wire_enum!(
    /// What a DIRTY event or `DirtyPayload` call names (wechaty-puppet's `DirtyType`).
    PayloadType { Unknown = 0, Message = 1, Contact = 2, Room = 3, RoomMember = 4, Friendship = 5, Post = 6 }
);
wire_enum!(
    /// State of a login QR code, as carried by SCAN events.
    ScanStatus { Unknown = 0, Cancel = 1, Waiting = 2, Scanned = 3, Confirmed = 4, Timeout = 5 }
);
wire_enum!(
    /// Message kinds **with wechaty-puppet's TypeScript numbers**, which is what travels in
    /// `MessagePayloadResponse.type` (the proto's enum names disagree and are ignored by every client).
    MessageType {
        Unknown = 0, Attachment = 1, Audio = 2, Contact = 3, ChatHistory = 4, Emoticon = 5, Image = 6,
        Text = 7, Location = 8, MiniProgram = 9, GroupNote = 10, Transfer = 11, RedEnvelope = 12,
        Recalled = 13, Url = 14, Video = 15, Post = 16,
    }
);

/// Everything known about one contact.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Contact {
    /// Its id.
    pub id: ContactId,
    /// Gender.
    pub gender: ContactGender,
    /// Individual, official account, corporation.
    #[serde(rename = "type")]
    pub kind: ContactType,
    /// Display name (nickname).
    pub name: String,
    /// Avatar URL or empty.
    pub avatar: String,
    /// Postal address.
    pub address: String,
    /// The alias (remark) the bot gave this contact; empty for none.
    pub alias: String,
    /// City.
    pub city: String,
    /// True when the contact is the bot's friend.
    pub friend: bool,
    /// Province.
    pub province: String,
    /// Signature line.
    pub signature: String,
    /// Starred by the bot.
    pub star: bool,
    /// The WeChat handle (Wechaty's `weixin`).
    pub handle: String,
    /// Company (WeCom contacts).
    pub corporation: String,
    /// Job title.
    pub title: String,
    /// The bot's private description of the contact.
    pub description: String,
    /// A WeCom coworker.
    pub coworker: bool,
    /// Phone numbers the bot recorded for the contact.
    pub phones: Vec<String>,
}

/// Everything known about one room.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Room {
    /// Its id.
    pub id: RoomId,
    /// Topic (name).
    pub topic: String,
    /// Avatar URL or empty.
    pub avatar: String,
    /// Owner.
    pub owner_id: ContactId,
    /// Administrators.
    pub admin_ids: Vec<ContactId>,
    /// Members, the bot included when it is in the room.
    pub member_ids: Vec<ContactId>,
    /// Room handle, where the platform has one.
    pub handle: String,
}

/// One member as seen in one room.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoomMember {
    /// The member's contact id.
    pub id: ContactId,
    /// The member's alias in this room.
    pub room_alias: String,
    /// Who invited the member, if known.
    pub inviter_id: ContactId,
    /// Avatar URL or empty.
    pub avatar: String,
    /// Display name.
    pub name: String,
}

/// One message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Message {
    /// Its id.
    pub id: MessageId,
    /// Kind, with TypeScript numbers.
    #[serde(rename = "type")]
    pub kind: MessageType,
    /// Who sent it.
    pub talker_id: ContactId,
    /// The addressee of a direct message; empty in a room.
    pub listener_id: ContactId,
    /// The room of a group message; empty for a direct one.
    pub room_id: RoomId,
    /// Text, or a description for non-text kinds.
    pub text: String,
    /// File name of an attachment, image, video or audio message.
    pub filename: String,
    /// Contacts mentioned (@) in a room message.
    pub mention_ids: Vec<ContactId>,
    /// When it was received, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

impl Message {
    /// `timestamp_ms` as a `SystemTime`.
    pub fn received_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.timestamp_ms)
    }
}

/// A friend request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Friendship {
    /// Its id.
    pub id: FriendshipId,
    /// The other side.
    pub contact_id: ContactId,
    /// The greeting text.
    pub hello: String,
    /// Received, sent (verify) or confirmed.
    #[serde(rename = "type")]
    pub kind: FriendshipType,
    /// Platform data identifying the stranger.
    pub stranger: String,
    /// Platform ticket needed to accept.
    pub ticket: String,
    /// How the request came about.
    pub scene: FriendshipScene,
    /// When it was received, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// An invitation for the bot to join a room.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoomInvitation {
    /// Its id.
    pub id: RoomInvitationId,
    /// Who invited the bot.
    pub inviter_id: ContactId,
    /// The room's topic.
    pub topic: String,
    /// How many members the room has.
    pub member_count: u32,
    /// Some or all of the members.
    pub member_ids: Vec<ContactId>,
    /// Room avatar URL.
    pub avatar: String,
    /// Platform invitation data.
    pub invitation: String,
    /// Who received it (the bot).
    pub receiver_id: ContactId,
    /// When it was received, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
}

/// A shared link card.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct UrlLink {
    /// Summary text.
    pub description: String,
    /// Thumbnail image URL.
    pub thumbnail_url: String,
    /// Title.
    pub title: String,
    /// Target URL.
    pub url: String,
}

/// A shared mini-program card.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MiniProgram {
    /// App id.
    pub appid: String,
    /// Description.
    pub description: String,
    /// Page inside the app.
    pub page_path: String,
    /// Icon URL.
    pub icon_url: String,
    /// Share id.
    pub share_id: String,
    /// Thumbnail URL.
    pub thumb_url: String,
    /// Title.
    pub title: String,
    /// Owner user name (`gh_…`).
    pub username: String,
    /// Thumbnail key.
    pub thumb_key: String,
}

/// A shared location.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Location {
    /// Accuracy in metres.
    pub accuracy: f32,
    /// Street address.
    pub address: String,
    /// Latitude in degrees.
    pub latitude: f64,
    /// Longitude in degrees.
    pub longitude: f64,
    /// Place name.
    pub name: String,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_type_uses_typescript_numbers() {
        assert_eq!(MessageType::Text.wire(), 7);
        assert_eq!(MessageType::Image.wire(), 6);
        assert_eq!(MessageType::Video.wire(), 15);
        assert_eq!(MessageType::from_wire(14), Some(MessageType::Url));
        assert_eq!(MessageType::from_wire(99), None);
    }

    #[test]
    fn contact_json_uses_wechaty_names() {
        let c = Contact { id: "wxid_a".into(), kind: ContactType::Official, ..Default::default() };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["type"], "official");
        assert_eq!(v["id"], "wxid_a");
        assert!(v.get("phones").is_some());
    }
}
