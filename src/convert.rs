//! Conversions between the domain types ([`crate::model`]) and the protobuf messages, both ways.
//! Responses fill the current field *and* its deprecated twin (Node reads the new one, Python 0.8.10
//! only the old one); reading prefers the current field and falls back to the deprecated one.

use std::time::Duration;

use crate::model::{
    Contact, ContactGender, ContactType, Friendship, FriendshipScene, FriendshipType, Location, Message, MessageType,
    MiniProgram, Room, RoomInvitation, RoomMember, UrlLink,
};
use crate::pb::wechaty::puppet as pb;

fn timestamp(ms: u64) -> prost_types::Timestamp {
    let d = Duration::from_millis(ms);
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

fn millis(ts: Option<&prost_types::Timestamp>, legacy: u64) -> u64 {
    match ts {
        Some(t) => (t.seconds.max(0) as u64) * 1000 + (t.nanos.max(0) as u64) / 1_000_000,
        // Older servers send seconds or milliseconds here; anything below 1e11 is seconds.
        None if legacy < 100_000_000_000 => legacy * 1000,
        None => legacy,
    }
}

fn ids<T: From<String>>(v: Vec<String>) -> Vec<T> {
    v.into_iter().map(T::from).collect()
}

fn strings<T: Into<String>>(v: Vec<T>) -> Vec<String> {
    v.into_iter().map(Into::into).collect()
}

macro_rules! id_into_string {
    ($($t:ty),*) => {$(
        impl From<$t> for String {
            fn from(id: $t) -> String {
                id.0
            }
        }
    )*};
}
id_into_string!(
    crate::ids::ContactId,
    crate::ids::RoomId,
    crate::ids::MessageId,
    crate::ids::FriendshipId,
    crate::ids::RoomInvitationId,
    crate::ids::TagId,
    crate::ids::ConversationId
);

impl From<Contact> for pb::ContactPayloadResponse {
    fn from(c: Contact) -> Self {
        Self {
            id: c.id.0,
            gender: c.gender.wire(),
            r#type: c.kind.wire(),
            name: c.name,
            avatar: c.avatar,
            address: c.address,
            alias: c.alias,
            city: c.city,
            friend: c.friend,
            province: c.province,
            signature: c.signature,
            star: c.star,
            weixin: c.handle,
            corporation: c.corporation,
            title: c.title,
            description: c.description,
            coworker: c.coworker,
            phones: c.phones,
        }
    }
}

impl From<pb::ContactPayloadResponse> for Contact {
    fn from(c: pb::ContactPayloadResponse) -> Self {
        Self {
            id: c.id.into(),
            gender: ContactGender::from_wire(c.gender).unwrap_or_default(),
            kind: ContactType::from_wire(c.r#type).unwrap_or_default(),
            name: c.name,
            avatar: c.avatar,
            address: c.address,
            alias: c.alias,
            city: c.city,
            friend: c.friend,
            province: c.province,
            signature: c.signature,
            star: c.star,
            handle: c.weixin,
            corporation: c.corporation,
            title: c.title,
            description: c.description,
            coworker: c.coworker,
            phones: c.phones,
        }
    }
}

impl From<Room> for pb::RoomPayloadResponse {
    fn from(r: Room) -> Self {
        Self {
            id: r.id.0,
            topic: r.topic,
            avatar: r.avatar,
            owner_id: r.owner_id.0,
            admin_ids: strings(r.admin_ids),
            member_ids: strings(r.member_ids),
            handle: r.handle,
        }
    }
}

impl From<pb::RoomPayloadResponse> for Room {
    fn from(r: pb::RoomPayloadResponse) -> Self {
        Self {
            id: r.id.into(),
            topic: r.topic,
            avatar: r.avatar,
            owner_id: r.owner_id.into(),
            admin_ids: ids(r.admin_ids),
            member_ids: ids(r.member_ids),
            handle: r.handle,
        }
    }
}

impl From<RoomMember> for pb::RoomMemberPayloadResponse {
    fn from(m: RoomMember) -> Self {
        Self { id: m.id.0, room_alias: m.room_alias, inviter_id: m.inviter_id.0, avatar: m.avatar, name: m.name }
    }
}

impl From<pb::RoomMemberPayloadResponse> for RoomMember {
    fn from(m: pb::RoomMemberPayloadResponse) -> Self {
        Self {
            id: m.id.into(),
            room_alias: m.room_alias,
            inviter_id: m.inviter_id.into(),
            avatar: m.avatar,
            name: m.name,
        }
    }
}

#[allow(deprecated)]
impl From<Message> for pb::MessagePayloadResponse {
    fn from(m: Message) -> Self {
        Self {
            id: m.id.0,
            filename: m.filename,
            text: m.text,
            timestamp_deprecated: m.timestamp_ms,
            r#type: m.kind.wire(),
            talker_id: m.talker_id.0,
            room_id: m.room_id.0,
            listener_id: m.listener_id.0,
            mention_ids: strings(m.mention_ids),
            receive_time: Some(timestamp(m.timestamp_ms)),
        }
    }
}

#[allow(deprecated)]
impl From<pb::MessagePayloadResponse> for Message {
    fn from(m: pb::MessagePayloadResponse) -> Self {
        Self {
            id: m.id.into(),
            kind: MessageType::from_wire(m.r#type).unwrap_or_default(),
            talker_id: m.talker_id.into(),
            listener_id: m.listener_id.into(),
            room_id: m.room_id.into(),
            text: m.text,
            filename: m.filename,
            mention_ids: ids(m.mention_ids),
            timestamp_ms: millis(m.receive_time.as_ref(), m.timestamp_deprecated),
        }
    }
}

impl From<Friendship> for pb::FriendshipPayloadResponse {
    fn from(f: Friendship) -> Self {
        Self {
            id: f.id.0,
            contact_id: f.contact_id.0,
            hello: f.hello,
            r#type: f.kind.wire(),
            stranger: f.stranger,
            ticket: f.ticket,
            scene: f.scene.wire(),
        }
    }
}

impl From<pb::FriendshipPayloadResponse> for Friendship {
    fn from(f: pb::FriendshipPayloadResponse) -> Self {
        Self {
            id: f.id.into(),
            contact_id: f.contact_id.into(),
            hello: f.hello,
            kind: FriendshipType::from_wire(f.r#type).unwrap_or_default(),
            stranger: f.stranger,
            ticket: f.ticket,
            scene: FriendshipScene::from_wire(f.scene).unwrap_or_default(),
            timestamp_ms: 0,
        }
    }
}

#[allow(deprecated)]
impl From<RoomInvitation> for pb::RoomInvitationPayloadResponse {
    fn from(i: RoomInvitation) -> Self {
        Self {
            id: i.id.0,
            inviter_id: i.inviter_id.0,
            topic: i.topic,
            member_count: i.member_count.min(i32::MAX as u32) as i32,
            member_ids: strings(i.member_ids),
            timestamp_uint64_deprecated: i.timestamp_ms,
            avatar: i.avatar,
            invitation: i.invitation,
            receiver_id: i.receiver_id.0,
            receive_time: Some(timestamp(i.timestamp_ms)),
        }
    }
}

#[allow(deprecated)]
impl From<pb::RoomInvitationPayloadResponse> for RoomInvitation {
    fn from(i: pb::RoomInvitationPayloadResponse) -> Self {
        Self {
            id: i.id.into(),
            inviter_id: i.inviter_id.into(),
            topic: i.topic,
            member_count: i.member_count.max(0) as u32,
            member_ids: ids(i.member_ids),
            avatar: i.avatar,
            invitation: i.invitation,
            receiver_id: i.receiver_id.into(),
            timestamp_ms: millis(i.receive_time.as_ref(), i.timestamp_uint64_deprecated),
        }
    }
}

impl From<UrlLink> for pb::UrlLinkPayload {
    fn from(u: UrlLink) -> Self {
        Self { description: u.description, thumbnail_url: u.thumbnail_url, title: u.title, url: u.url }
    }
}

impl From<pb::UrlLinkPayload> for UrlLink {
    fn from(u: pb::UrlLinkPayload) -> Self {
        Self { description: u.description, thumbnail_url: u.thumbnail_url, title: u.title, url: u.url }
    }
}

impl From<MiniProgram> for pb::MiniProgramPayload {
    fn from(m: MiniProgram) -> Self {
        Self {
            appid: m.appid,
            description: m.description,
            page_path: m.page_path,
            icon_url: m.icon_url,
            share_id: m.share_id,
            thumb_url: m.thumb_url,
            title: m.title,
            username: m.username,
            thumb_key: m.thumb_key,
        }
    }
}

impl From<pb::MiniProgramPayload> for MiniProgram {
    fn from(m: pb::MiniProgramPayload) -> Self {
        Self {
            appid: m.appid,
            description: m.description,
            page_path: m.page_path,
            icon_url: m.icon_url,
            share_id: m.share_id,
            thumb_url: m.thumb_url,
            title: m.title,
            username: m.username,
            thumb_key: m.thumb_key,
        }
    }
}

impl From<Location> for pb::LocationPayload {
    fn from(l: Location) -> Self {
        Self { accuracy: l.accuracy, address: l.address, latitude: l.latitude, longitude: l.longitude, name: l.name }
    }
}

impl From<pb::LocationPayload> for Location {
    fn from(l: pb::LocationPayload) -> Self {
        Self { accuracy: l.accuracy, address: l.address, latitude: l.latitude, longitude: l.longitude, name: l.name }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_survive_the_round_trip() {
        let m = Message {
            id: "m1".into(),
            kind: MessageType::Text,
            talker_id: "a".into(),
            room_id: "r@chatroom".into(),
            text: "hi".into(),
            mention_ids: vec!["b".into()],
            timestamp_ms: 1_700_000_000_123,
            ..Default::default()
        };
        let wire: pb::MessagePayloadResponse = m.clone().into();
        #[allow(deprecated)]
        let legacy = wire.timestamp_deprecated;
        assert_eq!((wire.r#type, legacy), (7, 1_700_000_000_123));
        assert_eq!(Message::from(wire), m);
        let c = Contact { id: "c".into(), kind: ContactType::Official, phones: vec!["1".into()], ..Default::default() };
        assert_eq!(Contact::from(pb::ContactPayloadResponse::from(c.clone())), c);
    }

    #[test]
    fn legacy_timestamps_in_seconds_or_milliseconds_are_read() {
        assert_eq!(millis(None, 1_700_000_000), 1_700_000_000_000);
        assert_eq!(millis(None, 1_700_000_000_123), 1_700_000_000_123);
    }
}
