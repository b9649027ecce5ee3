//! Every operation of the Backend trait as the matching `wechaty.Puppet` call to the upstream.
//! Requests fill the current field and its deprecated twin (older servers read only the latter);
//! answers are read through the same conversions our clients' answers are made with.

use async_trait::async_trait;
use puppet_proto::filebox::FileBox;
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{
    Contact, Friendship, ImageType, Location, Message, MiniProgram, PayloadType, Room, RoomInvitation, RoomMember,
    UrlLink,
};
use puppet_proto::pb::wechaty::puppet as pb;
use std::sync::atomic::Ordering;

use super::Upstream;
use super::cache::{MEMBERS_KEPT, RoomMembers};
use super::files::FileOf;
use crate::backend::{Backend, BackendError, BackendResult, Outgoing, Referrer};

/// The id a "sent" answer carries, in whichever field the upstream filled.
fn sent(id: String, legacy: Option<String>) -> Option<MessageId> {
    Some(id).filter(|i| !i.is_empty()).or(legacy.filter(|i| !i.is_empty())).map(MessageId)
}

fn file_box(op: &str, json: &str) -> BackendResult<FileBox> {
    FileBox::from_json(json).map_err(|e| BackendError::Internal(format!("the upstream's `{op}` FileBox: {e}")))
}

fn ids<T: From<String>>(v: Vec<String>) -> Vec<T> {
    v.into_iter().map(T::from).collect()
}

#[async_trait]
#[allow(deprecated)]
impl Backend for Upstream {
    fn name(&self) -> &'static str {
        "upstream"
    }

    fn serving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        Some(self.inner.serving.subscribe())
    }

    // ---- lifecycle ----------------------------------------------------------------------------
    async fn start(&self) -> BackendResult<()> {
        self.inner.started.store(true, Ordering::Release);
        match self.client() {
            Ok(c) => self.start_upstream(&c).await,
            // The stream calls Start as soon as it connects.
            Err(_) => {
                self.inner.wake.notify_one();
                Ok(())
            }
        }
    }

    async fn stop(&self) -> BackendResult<()> {
        // The upstream's Stop stops its puppet (a WeChat logout on most): our clients detaching
        // must not end the session there.
        Ok(())
    }

    async fn logout(&self) -> BackendResult<()> {
        // Clients echo a LOGOUT event back as a Logout call: nothing to do when already out.
        if !self.logged_in() {
            return Ok(());
        }
        self.call("logout", None, |mut c| async move { c.logout(pb::LogoutRequest {}).await }).await.map(drop)
    }

    async fn ding(&self, data: String) -> BackendResult<()> {
        self.call("ding", None, |mut c| async move { c.ding(pb::DingRequest { data }).await }).await.map(drop)
    }

    async fn dirty_payload(&self, kind: PayloadType, id: String) -> BackendResult<()> {
        let req = pb::DirtyPayloadRequest { r#type: kind.wire(), id };
        self.call("dirty_payload", None, |mut c| async move { c.dirty_payload(req).await }).await.map(drop)
    }

    // ---- the bot itself -----------------------------------------------------------------------
    async fn self_qrcode(&self) -> BackendResult<String> {
        self.call(
            "self_qrcode",
            None,
            |mut c| async move { c.contact_self_qr_code(pb::ContactSelfQrCodeRequest {}).await },
        )
        .await
        .map(|r| r.qrcode)
    }

    async fn set_self_name(&self, name: String) -> BackendResult<()> {
        self.call("set_self_name", None, |mut c| async move {
            c.contact_self_name(pb::ContactSelfNameRequest { name }).await
        })
        .await
        .map(drop)
    }

    async fn set_self_signature(&self, signature: String) -> BackendResult<()> {
        let req = pb::ContactSelfSignatureRequest { signature };
        self.call("set_self_signature", None, |mut c| async move { c.contact_self_signature(req).await })
            .await
            .map(drop)
    }

    // ---- contacts -----------------------------------------------------------------------------
    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        self.call("contact_list", None, |mut c| async move { c.contact_list(pb::ContactListRequest {}).await })
            .await
            .map(|r| ids(r.ids))
    }

    async fn contact(&self, id: &ContactId) -> BackendResult<Contact> {
        self.note_served(PayloadType::Contact, id.as_str());
        if let Some(hit) = self.cache_get::<Contact>(PayloadType::Contact, id.as_str()).await {
            return Ok(hit);
        }
        let since = self.generation();
        let req = pb::ContactPayloadRequest { id: id.to_string() };
        let contact = Contact::from(
            self.call("contact", Some(("contact", id.as_str())), |mut c| async move { c.contact_payload(req).await })
                .await?,
        );
        self.cache_put(PayloadType::Contact, id.as_str(), &contact, since);
        Ok(contact)
    }

    async fn set_contact_alias(&self, id: &ContactId, alias: String) -> BackendResult<()> {
        let req = pb::ContactAliasRequest {
            id: id.to_string(),
            alias: Some(alias.clone()),
            alias_string_value_deprecated: Some(alias),
        };
        self.call(
            "set_contact_alias",
            Some(("contact", id.as_str())),
            |mut c| async move { c.contact_alias(req).await },
        )
        .await
        .map(drop)
    }

    async fn contact_avatar(&self, id: &ContactId) -> BackendResult<FileBox> {
        let req = pb::ContactAvatarRequest { id: id.to_string(), ..Default::default() };
        let r = self
            .call("contact_avatar", Some(("contact", id.as_str())), |mut c| async move { c.contact_avatar(req).await })
            .await?;
        let json =
            if r.file_box.is_empty() { r.filebox_string_value_deprecated.unwrap_or_default() } else { r.file_box };
        self.adopt(file_box("contact_avatar", &json)?).await
    }

    async fn set_contact_avatar(&self, id: &ContactId, file: FileBox) -> BackendResult<()> {
        let json = self.export(&file).await?.to_json();
        let req = pb::ContactAvatarRequest {
            id: id.to_string(),
            file_box: Some(json.clone()),
            filebox_string_value_deprecated: Some(json),
        };
        self.call(
            "set_contact_avatar",
            Some(("contact", id.as_str())),
            |mut c| async move { c.contact_avatar(req).await },
        )
        .await
        .map(drop)
    }

    async fn set_contact_phones(&self, id: &ContactId, phones: Vec<String>) -> BackendResult<()> {
        let req = pb::ContactPhoneRequest { contact_id: id.to_string(), phones };
        self.call(
            "set_contact_phones",
            Some(("contact", id.as_str())),
            |mut c| async move { c.contact_phone(req).await },
        )
        .await
        .map(drop)
    }

    async fn set_contact_corporation_remark(&self, id: &ContactId, remark: Option<String>) -> BackendResult<()> {
        let req = pb::ContactCorporationRemarkRequest {
            contact_id: id.to_string(),
            corporation_remark: remark.clone().unwrap_or_default(),
            corporation_remark_string_value_deprecated: remark,
        };
        self.call("set_contact_corporation_remark", Some(("contact", id.as_str())), |mut c| async move {
            c.contact_corporation_remark(req).await
        })
        .await
        .map(drop)
    }

    async fn set_contact_description(&self, id: &ContactId, description: Option<String>) -> BackendResult<()> {
        let req = pb::ContactDescriptionRequest {
            contact_id: id.to_string(),
            description: description.clone().unwrap_or_default(),
            description_string_value_deprecated: description,
        };
        self.call("set_contact_description", Some(("contact", id.as_str())), |mut c| async move {
            c.contact_description(req).await
        })
        .await
        .map(drop)
    }

    // ---- friendships --------------------------------------------------------------------------
    async fn friendship(&self, id: &FriendshipId) -> BackendResult<Friendship> {
        let req = pb::FriendshipPayloadRequest { id: id.to_string(), ..Default::default() };
        self.call(
            "friendship",
            Some(("friendship", id.as_str())),
            |mut c| async move { c.friendship_payload(req).await },
        )
        .await
        .map(Friendship::from)
    }

    async fn friendship_search_phone(&self, phone: &str) -> BackendResult<Option<ContactId>> {
        let req = pb::FriendshipSearchPhoneRequest { phone: phone.to_owned() };
        let r = self
            .call("friendship_search_phone", None, |mut c| async move { c.friendship_search_phone(req).await })
            .await?;
        Ok(Some(r.contact_id)
            .filter(|c| !c.is_empty())
            .or(r.contact_id_string_value_deprecated.filter(|c| !c.is_empty()))
            .map(ContactId))
    }

    async fn friendship_search_handle(&self, handle: &str) -> BackendResult<Option<ContactId>> {
        let req = pb::FriendshipSearchHandleRequest { weixin: handle.to_owned() };
        let r = self
            .call("friendship_search_handle", None, |mut c| async move { c.friendship_search_handle(req).await })
            .await?;
        Ok(Some(r.contact_id)
            .filter(|c| !c.is_empty())
            .or(r.contact_id_string_value_deprecated.filter(|c| !c.is_empty()))
            .map(ContactId))
    }

    async fn friendship_add(&self, contact: &ContactId, hello: String, referrer: Referrer) -> BackendResult<()> {
        let req = pb::FriendshipAddRequest {
            contact_id: contact.to_string(),
            hello,
            source_room_id_string_value_deprecated: referrer.room_id.as_ref().map(|r| r.to_string()),
            source_contact_id_string_value_deprecated: referrer.contact_id.as_ref().map(|c| c.to_string()),
            referrer: Some(pb::Referrer {
                contact_id: referrer.contact_id.map(|c| c.to_string()).unwrap_or_default(),
                room_id: referrer.room_id.map(|r| r.to_string()).unwrap_or_default(),
            }),
        };
        self.call(
            "friendship_add",
            Some(("contact", contact.as_str())),
            |mut c| async move { c.friendship_add(req).await },
        )
        .await
        .map(drop)
    }

    async fn friendship_accept(&self, id: &FriendshipId) -> BackendResult<()> {
        let req = pb::FriendshipAcceptRequest { id: id.to_string() };
        self.call("friendship_accept", Some(("friendship", id.as_str())), |mut c| async move {
            c.friendship_accept(req).await
        })
        .await
        .map(drop)
    }

    // ---- messages -----------------------------------------------------------------------------
    async fn message(&self, id: &MessageId) -> BackendResult<Message> {
        let req = pb::MessagePayloadRequest { id: id.to_string() };
        self.call("message", Some(("message", id.as_str())), |mut c| async move { c.message_payload(req).await })
            .await
            .map(Message::from)
    }

    async fn message_contact(&self, id: &MessageId) -> BackendResult<ContactId> {
        let req = pb::MessageContactRequest { id: id.to_string() };
        self.call(
            "message_contact",
            Some(("message", id.as_str())),
            |mut c| async move { c.message_contact(req).await },
        )
        .await
        .map(|r| ContactId(r.id))
    }

    async fn message_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        self.message_file_box(FileOf::File(id.as_str())).await
    }

    async fn message_image(&self, id: &MessageId, kind: ImageType) -> BackendResult<FileBox> {
        self.message_file_box(FileOf::Image(id.as_str(), kind.wire())).await
    }

    async fn message_mini_program(&self, id: &MessageId) -> BackendResult<MiniProgram> {
        let req = pb::MessageMiniProgramRequest { id: id.to_string() };
        let r = self
            .call("message_mini_program", Some(("message", id.as_str())), |mut c| async move {
                c.message_mini_program(req).await
            })
            .await?;
        match (r.mini_program, r.mini_program_deprecated.as_str()) {
            (Some(m), _) => Ok(m.into()),
            (None, json) if !json.is_empty() => serde_json::from_str(json)
                .map_err(|e| BackendError::Internal(format!("the upstream's mini-program JSON: {e}"))),
            _ => Err(BackendError::Internal("the upstream's MessageMiniProgram carried no card".into())),
        }
    }

    async fn message_url(&self, id: &MessageId) -> BackendResult<UrlLink> {
        let req = pb::MessageUrlRequest { id: id.to_string() };
        let r = self
            .call("message_url", Some(("message", id.as_str())), |mut c| async move { c.message_url(req).await })
            .await?;
        match (r.url_link, r.url_link_deprecated.as_str()) {
            (Some(u), _) => Ok(u.into()),
            (None, json) if !json.is_empty() => {
                serde_json::from_str(json).map_err(|e| BackendError::Internal(format!("the upstream's link JSON: {e}")))
            }
            _ => Err(BackendError::Internal("the upstream's MessageUrl carried no card".into())),
        }
    }

    async fn message_location(&self, id: &MessageId) -> BackendResult<Location> {
        let req = pb::MessageLocationRequest { id: id.to_string() };
        let r =
            self.call("message_location", Some(("message", id.as_str())), |mut c| async move {
                c.message_location(req).await
            })
            .await?;
        r.location
            .map(Location::from)
            .ok_or_else(|| BackendError::Internal("the upstream's MessageLocation carried no place".into()))
    }

    async fn message_recall(&self, id: &MessageId) -> BackendResult<bool> {
        let req = pb::MessageRecallRequest { id: id.to_string() };
        self.call("message_recall", Some(("message", id.as_str())), |mut c| async move { c.message_recall(req).await })
            .await
            .map(|r| r.success)
    }

    async fn message_forward(&self, to: &ConversationId, id: &MessageId) -> BackendResult<Option<MessageId>> {
        let req = pb::MessageForwardRequest { message_id: id.to_string(), conversation_id: to.to_string() };
        self.call(
            "message_forward",
            Some(("message", id.as_str())),
            |mut c| async move { c.message_forward(req).await },
        )
        .await
        .map(|r| sent(r.id, r.id_string_value_deprecated))
    }

    async fn send(&self, to: &ConversationId, content: Outgoing) -> BackendResult<Option<MessageId>> {
        let conversation_id = to.to_string();
        let subject = Some(("conversation", to.as_str()));
        match content {
            Outgoing::Text { text, mentions } => {
                let req = pb::MessageSendTextRequest {
                    conversation_id,
                    text,
                    mentional_ids: mentions.into_iter().map(|m| m.to_string()).collect(),
                };
                self.call("send", subject, |mut c| async move { c.message_send_text(req).await })
                    .await
                    .map(|r| sent(r.id, r.id_string_value_deprecated))
            }
            Outgoing::Contact(contact) => {
                let req = pb::MessageSendContactRequest { conversation_id, contact_id: contact.to_string() };
                self.call("send", subject, |mut c| async move { c.message_send_contact(req).await })
                    .await
                    .map(|r| sent(r.id, r.id_string_value_deprecated))
            }
            Outgoing::File(file) => {
                let file_box = match self.export(&file).await {
                    Ok(fb) => fb.to_json(),
                    // The upstream lacks `Upload`: the deprecated stream carries the bytes instead.
                    Err(BackendError::Unsupported("upload")) => {
                        return self
                            .send_by_stream(to.as_str(), &file)
                            .await
                            .map(|r| sent(r.id, r.id_string_value_deprecated));
                    }
                    Err(e) => return Err(e),
                };
                let req = pb::MessageSendFileRequest { conversation_id, file_box };
                self.call("send", subject, |mut c| async move { c.message_send_file(req).await })
                    .await
                    .map(|r| sent(r.id, r.id_string_value_deprecated))
            }
            Outgoing::MiniProgram(card) => {
                let legacy = serde_json::to_string(&card).unwrap_or_default();
                let req = pb::MessageSendMiniProgramRequest {
                    conversation_id,
                    mini_program_deprecated: legacy,
                    mini_program: Some(card.into()),
                };
                self.call("send", subject, |mut c| async move { c.message_send_mini_program(req).await })
                    .await
                    .map(|r| sent(r.id, r.id_string_value_deprecated))
            }
            Outgoing::Url(link) => {
                let legacy = serde_json::to_string(&link).unwrap_or_default();
                let req = pb::MessageSendUrlRequest {
                    conversation_id,
                    url_link_deprecated: legacy,
                    url_link: Some(link.into()),
                };
                self.call("send", subject, |mut c| async move { c.message_send_url(req).await })
                    .await
                    .map(|r| sent(r.id, r.id_string_value_deprecated))
            }
            Outgoing::Location(place) => {
                let req = pb::MessageSendLocationRequest { conversation_id, location: Some(place.into()) };
                self.call("send", subject, |mut c| async move { c.message_send_location(req).await })
                    .await
                    .map(|r| sent(r.id, None))
            }
        }
    }

    // ---- rooms --------------------------------------------------------------------------------
    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        self.call("room_list", None, |mut c| async move { c.room_list(pb::RoomListRequest {}).await })
            .await
            .map(|r| ids(r.ids))
    }

    async fn room(&self, id: &RoomId) -> BackendResult<Room> {
        self.note_served(PayloadType::Room, id.as_str());
        if let Some(hit) = self.cache_get::<Room>(PayloadType::Room, id.as_str()).await {
            return Ok(hit);
        }
        let since = self.generation();
        let req = pb::RoomPayloadRequest { id: id.to_string() };
        let room = Room::from(
            self.call("room", Some(("room", id.as_str())), |mut c| async move { c.room_payload(req).await }).await?,
        );
        self.cache_put(PayloadType::Room, id.as_str(), &room, since);
        Ok(room)
    }

    async fn room_add(&self, room: &RoomId, contacts: Vec<ContactId>, invite_only: bool) -> BackendResult<()> {
        // The published contract carries one contact per call; newer servers also read the list.
        for contact in &contacts {
            let req = pb::RoomAddRequest {
                id: room.to_string(),
                contact_id: contact.to_string(),
                invite_only,
                contact_ids: vec![contact.to_string()],
            };
            self.call("room_add", Some(("room", room.as_str())), |mut c| async move { c.room_add(req).await }).await?;
        }
        Ok(())
    }

    async fn room_del(&self, room: &RoomId, contacts: Vec<ContactId>) -> BackendResult<()> {
        for contact in &contacts {
            let req = pb::RoomDelRequest {
                id: room.to_string(),
                contact_id: contact.to_string(),
                contact_ids: vec![contact.to_string()],
            };
            self.call("room_del", Some(("room", room.as_str())), |mut c| async move { c.room_del(req).await }).await?;
        }
        Ok(())
    }

    async fn room_avatar(&self, room: &RoomId) -> BackendResult<FileBox> {
        let req = pb::RoomAvatarRequest { id: room.to_string() };
        let r = self
            .call("room_avatar", Some(("room", room.as_str())), |mut c| async move { c.room_avatar(req).await })
            .await?;
        self.adopt(file_box("room_avatar", &r.file_box)?).await
    }

    async fn room_create(&self, contacts: Vec<ContactId>, topic: String) -> BackendResult<RoomId> {
        let req = pb::RoomCreateRequest { contact_ids: contacts.into_iter().map(|c| c.to_string()).collect(), topic };
        self.call("room_create", None, |mut c| async move { c.room_create(req).await }).await.map(|r| RoomId(r.id))
    }

    async fn room_quit(&self, room: &RoomId) -> BackendResult<()> {
        let req = pb::RoomQuitRequest { id: room.to_string() };
        self.call("room_quit", Some(("room", room.as_str())), |mut c| async move { c.room_quit(req).await })
            .await
            .map(drop)
    }

    async fn set_room_topic(&self, room: &RoomId, topic: String) -> BackendResult<()> {
        let req = pb::RoomTopicRequest {
            id: room.to_string(),
            topic: Some(topic.clone()),
            topic_string_value_deprecated: Some(topic),
        };
        self.call("set_room_topic", Some(("room", room.as_str())), |mut c| async move { c.room_topic(req).await })
            .await
            .map(drop)
    }

    async fn room_qrcode(&self, room: &RoomId) -> BackendResult<String> {
        let req = pb::RoomQrCodeRequest { id: room.to_string() };
        self.call("room_qrcode", Some(("room", room.as_str())), |mut c| async move { c.room_qr_code(req).await })
            .await
            .map(|r| r.qrcode)
    }

    async fn room_announce(&self, room: &RoomId) -> BackendResult<String> {
        let req = pb::RoomAnnounceRequest { id: room.to_string(), ..Default::default() };
        let r = self
            .call("room_announce", Some(("room", room.as_str())), |mut c| async move { c.room_announce(req).await })
            .await?;
        Ok(if r.text.is_empty() { r.text_string_value_deprecated.unwrap_or_default() } else { r.text })
    }

    async fn set_room_announce(&self, room: &RoomId, text: String) -> BackendResult<()> {
        let req = pb::RoomAnnounceRequest {
            id: room.to_string(),
            text: Some(text.clone()),
            text_string_value_deprecated: Some(text),
        };
        self.call("set_room_announce", Some(("room", room.as_str())), |mut c| async move { c.room_announce(req).await })
            .await
            .map(drop)
    }

    async fn room_member(&self, room: &RoomId, member: &ContactId) -> BackendResult<RoomMember> {
        self.note_served(PayloadType::RoomMember, room.as_str());
        let cached = self.cache_get::<RoomMembers>(PayloadType::RoomMember, room.as_str()).await;
        if let Some(m) = cached.as_ref().and_then(|c| c.members.get(member.as_str())) {
            return Ok(m.clone());
        }
        let since = self.generation();
        let req = pb::RoomMemberPayloadRequest { id: room.to_string(), member_id: member.to_string() };
        let payload = RoomMember::from(
            self.call("room_member", Some(("room member", member.as_str())), |mut c| async move {
                c.room_member_payload(req).await
            })
            .await?,
        );
        let mut entry = cached.unwrap_or_default();
        if entry.members.len() < MEMBERS_KEPT {
            entry.members.insert(member.to_string(), payload.clone());
            self.cache_put(PayloadType::RoomMember, room.as_str(), &entry, since);
        }
        Ok(payload)
    }

    async fn room_members(&self, room: &RoomId) -> BackendResult<Vec<ContactId>> {
        self.note_served(PayloadType::RoomMember, room.as_str());
        let cached = self.cache_get::<RoomMembers>(PayloadType::RoomMember, room.as_str()).await;
        if let Some(list) = cached.as_ref().and_then(|c| c.list.clone()) {
            return Ok(ids(list));
        }
        let since = self.generation();
        let req = pb::RoomMemberListRequest { id: room.to_string() };
        let list = self
            .call("room_members", Some(("room", room.as_str())), |mut c| async move { c.room_member_list(req).await })
            .await?
            .member_ids;
        let mut entry = cached.unwrap_or_default();
        if list.len() <= MEMBERS_KEPT {
            entry.list = Some(list.clone());
            self.cache_put(PayloadType::RoomMember, room.as_str(), &entry, since);
        }
        Ok(ids(list))
    }

    async fn room_invitation(&self, id: &RoomInvitationId) -> BackendResult<RoomInvitation> {
        let req = pb::RoomInvitationPayloadRequest { id: id.to_string(), ..Default::default() };
        self.call("room_invitation", Some(("room invitation", id.as_str())), |mut c| async move {
            c.room_invitation_payload(req).await
        })
        .await
        .map(RoomInvitation::from)
    }

    async fn room_invitation_accept(&self, id: &RoomInvitationId) -> BackendResult<()> {
        let req = pb::RoomInvitationAcceptRequest { id: id.to_string() };
        self.call("room_invitation_accept", Some(("room invitation", id.as_str())), |mut c| async move {
            c.room_invitation_accept(req).await
        })
        .await
        .map(drop)
    }

    // ---- tags ---------------------------------------------------------------------------------
    async fn tag_contact_add(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let req = pb::TagContactAddRequest { id: tag.to_string(), contact_id: contact.to_string() };
        self.call("tag_contact_add", Some(("contact", contact.as_str())), |mut c| async move {
            c.tag_contact_add(req).await
        })
        .await
        .map(drop)
    }

    async fn tag_contact_remove(&self, tag: &TagId, contact: &ContactId) -> BackendResult<()> {
        let req = pb::TagContactRemoveRequest { id: tag.to_string(), contact_id: contact.to_string() };
        self.call("tag_contact_remove", Some(("contact", contact.as_str())), |mut c| async move {
            c.tag_contact_remove(req).await
        })
        .await
        .map(drop)
    }

    async fn tag_delete(&self, tag: &TagId) -> BackendResult<()> {
        let req = pb::TagContactDeleteRequest { id: tag.to_string() };
        self.call("tag_delete", Some(("tag", tag.as_str())), |mut c| async move { c.tag_contact_delete(req).await })
            .await
            .map(drop)
    }

    async fn tag_list(&self, contact: Option<&ContactId>) -> BackendResult<Vec<TagId>> {
        let req = pb::TagContactListRequest {
            contact_id: contact.map(|c| c.to_string()).unwrap_or_default(),
            contact_id_string_value_deprecated: contact.map(|c| c.to_string()),
        };
        let subject = contact.map(|c| ("contact", c.as_str()));
        self.call("tag_list", subject, |mut c| async move { c.tag_contact_list(req).await }).await.map(|r| ids(r.ids))
    }

    // ---- conversations ------------------------------------------------------------------------
    async fn conversation_read(&self, id: &ConversationId, has_read: bool) -> BackendResult<bool> {
        let req = pb::ConversationReadRequest { conversation_id: id.to_string(), has_read };
        self.call("conversation_read", Some(("conversation", id.as_str())), |mut c| async move {
            c.conversation_read(req).await
        })
        .await
        .map(|r| r.has_read)
    }
}
