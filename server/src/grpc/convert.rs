//! Domain ⇄ protobuf conversions shared by the RPC handlers. Responses fill the current field *and*
//! its deprecated twin (Node reads the new one, Python 0.8.10 only the old one); requests accept
//! either.

use std::time::Duration;

use puppet_proto::filebox::FileBox;
use puppet_proto::model::{
    Contact, Friendship, Location, Message, MiniProgram, Room, RoomInvitation, RoomMember, UrlLink,
};
use puppet_proto::pb::wechaty::puppet as pb;
use tonic::Status;

/// A required string field; `INVALID_ARGUMENT` naming it when empty.
pub fn required(field: &str, value: String) -> Result<String, Status> {
    if value.trim().is_empty() { Err(Status::invalid_argument(format!("`{field}` is required"))) } else { Ok(value) }
}

/// An optional string that the wire encodes as "" for none.
pub fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Parses a FileBox JSON field, `INVALID_ARGUMENT` naming the field and the problem.
pub fn file_box(field: &str, json: &str) -> Result<FileBox, Status> {
    FileBox::from_json(json).map_err(|e| Status::invalid_argument(format!("`{field}`: {e}")))
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    let d = Duration::from_millis(ms);
    prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

pub fn contact(c: Contact) -> pb::ContactPayloadResponse {
    pb::ContactPayloadResponse {
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

pub fn room(r: Room) -> pb::RoomPayloadResponse {
    pb::RoomPayloadResponse {
        id: r.id.0,
        topic: r.topic,
        avatar: r.avatar,
        owner_id: r.owner_id.0,
        admin_ids: r.admin_ids.into_iter().map(|c| c.0).collect(),
        member_ids: r.member_ids.into_iter().map(|c| c.0).collect(),
        handle: r.handle,
    }
}

pub fn room_member(m: RoomMember) -> pb::RoomMemberPayloadResponse {
    pb::RoomMemberPayloadResponse {
        id: m.id.0,
        room_alias: m.room_alias,
        inviter_id: m.inviter_id.0,
        avatar: m.avatar,
        name: m.name,
    }
}

#[allow(deprecated)]
pub fn message(m: Message) -> pb::MessagePayloadResponse {
    pb::MessagePayloadResponse {
        id: m.id.0,
        filename: m.filename,
        text: m.text,
        timestamp_deprecated: m.timestamp_ms,
        r#type: m.kind.wire(),
        talker_id: m.talker_id.0,
        room_id: m.room_id.0,
        listener_id: m.listener_id.0,
        mention_ids: m.mention_ids.into_iter().map(|c| c.0).collect(),
        receive_time: Some(timestamp(m.timestamp_ms)),
    }
}

pub fn friendship(f: Friendship) -> pb::FriendshipPayloadResponse {
    pb::FriendshipPayloadResponse {
        id: f.id.0,
        contact_id: f.contact_id.0,
        hello: f.hello,
        r#type: f.kind.wire(),
        stranger: f.stranger,
        ticket: f.ticket,
        scene: f.scene.wire(),
    }
}

#[allow(deprecated)]
pub fn room_invitation(i: RoomInvitation) -> pb::RoomInvitationPayloadResponse {
    pb::RoomInvitationPayloadResponse {
        id: i.id.0,
        inviter_id: i.inviter_id.0,
        topic: i.topic,
        member_count: i.member_count.min(i32::MAX as u32) as i32,
        member_ids: i.member_ids.into_iter().map(|c| c.0).collect(),
        timestamp_uint64_deprecated: i.timestamp_ms,
        avatar: i.avatar,
        invitation: i.invitation,
        receiver_id: i.receiver_id.0,
        receive_time: Some(timestamp(i.timestamp_ms)),
    }
}

pub fn url_link(u: UrlLink) -> pb::UrlLinkPayload {
    pb::UrlLinkPayload { description: u.description, thumbnail_url: u.thumbnail_url, title: u.title, url: u.url }
}

pub fn url_link_from(u: pb::UrlLinkPayload) -> UrlLink {
    UrlLink { description: u.description, thumbnail_url: u.thumbnail_url, title: u.title, url: u.url }
}

pub fn mini_program(m: MiniProgram) -> pb::MiniProgramPayload {
    pb::MiniProgramPayload {
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

pub fn mini_program_from(m: pb::MiniProgramPayload) -> MiniProgram {
    MiniProgram {
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

pub fn location(l: Location) -> pb::LocationPayload {
    pb::LocationPayload {
        accuracy: l.accuracy,
        address: l.address,
        latitude: l.latitude,
        longitude: l.longitude,
        name: l.name,
    }
}

pub fn location_from(l: pb::LocationPayload) -> Location {
    Location { accuracy: l.accuracy, address: l.address, latitude: l.latitude, longitude: l.longitude, name: l.name }
}

/// A card given either as a message (current clients) or as legacy camelCase JSON (Python).
pub fn card<P, T: serde::de::DeserializeOwned>(
    what: &str,
    message: Option<P>,
    legacy_json: &str,
    from_pb: impl FnOnce(P) -> T,
) -> Result<T, Status> {
    match message {
        Some(m) => Ok(from_pb(m)),
        None if !legacy_json.is_empty() => serde_json::from_str(legacy_json)
            .map_err(|e| Status::invalid_argument(format!("`{what}_deprecated` is not valid {what} JSON: {e}"))),
        None => Err(Status::invalid_argument(format!("`{what}` is required"))),
    }
}

/// JSON text of a card for the deprecated response fields (camelCase, as Python reads it).
pub fn legacy_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_fills_both_time_fields() {
        let m = Message { timestamp_ms: 1_700_000_000_123, ..Default::default() };
        let pb = message(m);
        #[allow(deprecated)]
        let legacy = pb.timestamp_deprecated;
        assert_eq!(legacy, 1_700_000_000_123);
        let ts = pb.receive_time.unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 123_000_000));
    }

    #[test]
    fn cards_come_from_the_message_or_the_legacy_json() {
        let from_json: UrlLink =
            card("url_link", None::<pb::UrlLinkPayload>, r#"{"url":"https://x","thumbnailUrl":"t"}"#, url_link_from)
                .unwrap();
        assert_eq!((from_json.url.as_str(), from_json.thumbnail_url.as_str()), ("https://x", "t"));
        let msg = pb::UrlLinkPayload { url: "https://y".into(), ..Default::default() };
        assert_eq!(card("url_link", Some(msg), "ignored", url_link_from).unwrap().url, "https://y");
        let e = card::<pb::UrlLinkPayload, UrlLink>("url_link", None, "", url_link_from).unwrap_err();
        assert_eq!(e.message(), "`url_link` is required");
        let e = card::<pb::UrlLinkPayload, UrlLink>("url_link", None, "{", url_link_from).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(
            legacy_json(&url_link_from(pb::UrlLinkPayload::default())),
            r#"{"description":"","thumbnailUrl":"","title":"","url":""}"#
        );
    }
}
