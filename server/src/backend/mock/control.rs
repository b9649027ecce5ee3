//! What the simulated world can do to the bot: the operations behind `puppet_rs.v1.MockWorld`.

use std::time::{Duration, Instant};

use puppet_proto::event::{
    DataPayload, FriendshipEvent, LogoutEvent, MessageEvent, PuppetEvent, RoomInviteEvent, RoomJoinEvent,
    RoomLeaveEvent, RoomTopicEvent,
};
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId};
use puppet_proto::model::{
    Contact, ContactType, Friendship, FriendshipScene, FriendshipType, Message, MessageType, PayloadType,
    RoomInvitation, now_ms,
};

use super::{Attachment, LIST_MESSAGES_MAX, MockBackend, Session, StoredMessage, Target, World, file_message_type};
use crate::backend::{BackendError, BackendResult};

/// Profile changes for [`MockBackend::update_contact`]; `None` leaves a field alone.
#[derive(Clone, Debug, Default)]
pub struct ContactUpdate {
    /// New display name.
    pub name: Option<String>,
    /// New signature.
    pub signature: Option<String>,
    /// New city.
    pub city: Option<String>,
    /// New avatar URL.
    pub avatar: Option<String>,
}

impl World {
    /// Checks that `from` can say something where the bot hears it.
    fn speaker_target(&self, from: &ContactId, room: Option<&RoomId>) -> BackendResult<Target> {
        self.require_online()?;
        let c = self.contact(from)?;
        if *from == self.me {
            return Err(BackendError::InvalidArgument(
                "the world speaks as a contact; the bot speaks through MessageSend*".into(),
            ));
        }
        match room {
            Some(r) => {
                let room = &self.room(r)?.room;
                if !room.member_ids.contains(from) {
                    return Err(BackendError::FailedPrecondition(format!("`{from}` is not a member of room `{r}`")));
                }
                if !room.member_ids.contains(&self.me) {
                    return Err(BackendError::FailedPrecondition(format!("the bot is not a member of room `{r}`")));
                }
                Ok(Target::Room(r.clone()))
            }
            None if !c.friend => Err(BackendError::FailedPrecondition(format!(
                "`{from}` is not the bot's friend; strangers reach the bot with RequestFriendship"
            ))),
            None => Ok(Target::Contact(self.me.clone())),
        }
    }
}

impl MockBackend {
    fn deliver(&self, w: &World, message: Message, attachment: Attachment) -> BackendResult<MessageId> {
        let id = self.keep(w, message, attachment)?;
        self.emit(PuppetEvent::Message(MessageEvent { message_id: id.clone() }));
        Ok(id)
    }

    /// A contact says `text` to the bot, or into a room with @mentions.
    pub fn say(
        &self,
        from: &ContactId,
        room: Option<&RoomId>,
        text: String,
        mentions: Vec<ContactId>,
    ) -> BackendResult<MessageId> {
        if text.is_empty() {
            return Err(BackendError::InvalidArgument("`text` is empty".into()));
        }
        let mut w = self.world();
        let target = w.speaker_target(from, room)?;
        if let Target::Room(r) = &target {
            let members = &w.room(r)?.room.member_ids;
            if let Some(m) = mentions.iter().find(|m| !members.contains(m)) {
                return Err(BackendError::InvalidArgument(format!("`{m}` is not a member of room `{r}`")));
            }
        } else if !mentions.is_empty() {
            return Err(BackendError::InvalidArgument("mentions are only possible in a room".into()));
        }
        let mut m = Self::new_message(&mut w, MessageType::Text, from.clone(), &target, text);
        m.mention_ids = mentions;
        self.deliver(&w, m, Attachment::None)
    }

    /// A contact sends a file; its name decides the message type. The bytes go into the blob store.
    pub async fn send_file(
        &self,
        from: &ContactId,
        room: Option<&RoomId>,
        name: String,
        data: &[u8],
    ) -> BackendResult<MessageId> {
        if name.is_empty() {
            return Err(BackendError::InvalidArgument("`name` is required (its extension decides the type)".into()));
        }
        self.world().speaker_target(from, room)?;
        let meta = self.inner.blobs.put(data).await.map_err(|e| match e {
            crate::blobs::BlobError::Io(_) => BackendError::Internal(e.to_string()),
            crate::blobs::BlobError::TooLarge { .. } => BackendError::ResourceExhausted(e.to_string()),
            _ => BackendError::InvalidArgument(e.to_string()),
        })?;
        let mut fb = FileBox::new(name.clone(), FileBoxSource::Uuid(meta.id));
        fb.size = Some(meta.size);
        let mut w = self.world();
        // Checked again: the world may have changed while the bytes were stored.
        let target = w.speaker_target(from, room)?;
        let mut m = Self::new_message(&mut w, file_message_type(&name), from.clone(), &target, String::new());
        m.filename = name;
        self.deliver(&w, m, Attachment::File(fb))
    }

    /// Someone asks the bot to be friends; an unknown id becomes a new stranger.
    pub fn request_friendship(&self, contact: &ContactId, name: String, hello: String) -> BackendResult<FriendshipId> {
        let mut w = self.world();
        w.require_online()?;
        if *contact == w.me {
            return Err(BackendError::InvalidArgument("the bot cannot befriend itself".into()));
        }
        match w.contacts.get(contact) {
            Some(c) if c.friend => {
                return Err(BackendError::FailedPrecondition(format!("`{contact}` is already a friend")));
            }
            Some(_) => {}
            None => {
                let stranger = Contact {
                    id: contact.clone(),
                    name: if name.is_empty() { contact.as_str().to_owned() } else { name },
                    kind: ContactType::Individual,
                    ..Default::default()
                };
                w.contacts.insert(contact.clone(), stranger);
                w.save_contact(contact);
            }
        }
        let id = FriendshipId(w.fresh_id("friendship_"));
        let f = Friendship {
            id: id.clone(),
            contact_id: contact.clone(),
            hello,
            kind: FriendshipType::Receive,
            scene: FriendshipScene::Weixin,
            ticket: format!("ticket-{id}"),
            timestamp_ms: now_ms(),
            ..Default::default()
        };
        w.friendships.insert(id.clone(), f);
        w.save_friendship(&id);
        self.emit(PuppetEvent::Friendship(FriendshipEvent { friendship_id: id.clone() }));
        Ok(id)
    }

    /// The other side accepts a request the bot sent.
    pub fn accept_friendship(&self, id: &FriendshipId) -> BackendResult<()> {
        self.confirm_friendship(id, FriendshipType::Verify, "a request the bot sent")
    }

    /// A member invites the bot into a room.
    pub fn invite_bot(&self, room: &RoomId, inviter: &ContactId) -> BackendResult<RoomInvitationId> {
        let mut w = self.world();
        w.require_online()?;
        w.contact(inviter)?;
        let r = &w.room(room)?.room;
        if !r.member_ids.contains(inviter) {
            return Err(BackendError::FailedPrecondition(format!("`{inviter}` is not a member of room `{room}`")));
        }
        if r.member_ids.contains(&w.me) {
            return Err(BackendError::FailedPrecondition(format!("the bot is already in room `{room}`")));
        }
        let invitation = RoomInvitation {
            id: RoomInvitationId::default(),
            inviter_id: inviter.clone(),
            topic: r.topic.clone(),
            member_count: r.member_ids.len() as u32,
            member_ids: r.member_ids.clone(),
            avatar: r.avatar.clone(),
            invitation: room.as_str().to_owned(),
            receiver_id: w.me.clone(),
            timestamp_ms: now_ms(),
        };
        let id = RoomInvitationId(w.fresh_id("invitation_"));
        w.invitations.insert(id.clone(), RoomInvitation { id: id.clone(), ..invitation });
        w.save_invitation(&id);
        self.emit(PuppetEvent::RoomInvite(RoomInviteEvent { room_invitation_id: id.clone() }));
        Ok(id)
    }

    /// Contacts join a room.
    pub fn join_room(&self, room: &RoomId, contacts: Vec<ContactId>, inviter: &ContactId) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        for c in contacts.iter().chain(std::iter::once(inviter)) {
            w.contact(c)?;
        }
        let me = w.me.clone();
        let r = w.rooms.get_mut(room).ok_or_else(|| BackendError::not_found("room", room))?;
        if !r.room.member_ids.contains(inviter) {
            return Err(BackendError::FailedPrecondition(format!("inviter `{inviter}` is not in room `{room}`")));
        }
        if let Some(c) = contacts.iter().find(|c| r.room.member_ids.contains(c)) {
            return Err(BackendError::FailedPrecondition(format!("`{c}` is already in room `{room}`")));
        }
        if contacts.is_empty() || contacts.contains(&me) {
            return Err(BackendError::InvalidArgument(
                "name at least one contact, not the bot (the bot joins through InviteBot)".into(),
            ));
        }
        for c in &contacts {
            r.room.member_ids.push(c.clone());
            r.inviters.insert(c.clone(), inviter.clone());
        }
        let bot_sees = r.room.member_ids.contains(&me);
        if bot_sees {
            self.emit(PuppetEvent::RoomJoin(RoomJoinEvent {
                invitee_id_list: contacts,
                inviter_id: inviter.clone(),
                room_id: room.clone(),
                timestamp: now_ms() / 1000,
            }));
        }
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    /// Members leave a room, or `remover` removes them (possibly the bot).
    pub fn leave_room(
        &self,
        room: &RoomId,
        contacts: Vec<ContactId>,
        remover: Option<&ContactId>,
    ) -> BackendResult<()> {
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.rooms.get_mut(room).ok_or_else(|| BackendError::not_found("room", room))?;
        if contacts.is_empty() {
            return Err(BackendError::InvalidArgument("`contact_ids` is required".into()));
        }
        if let Some(c) = contacts.iter().find(|c| !r.room.member_ids.contains(c)) {
            return Err(BackendError::FailedPrecondition(format!("`{c}` is not a member of room `{room}`")));
        }
        if let Some(rm) = remover {
            if *rm == me {
                return Err(BackendError::InvalidArgument("the bot removes members through RoomDel".into()));
            }
            if r.room.owner_id != *rm && !r.room.admin_ids.contains(rm) {
                return Err(BackendError::FailedPrecondition(format!("`{rm}` is not an owner or admin of `{room}`")));
            }
        } else if contacts.len() != 1 {
            return Err(BackendError::InvalidArgument("without a remover, members leave one at a time".into()));
        }
        let bot_saw = r.room.member_ids.contains(&me);
        r.room.member_ids.retain(|m| !contacts.contains(m));
        r.room.admin_ids.retain(|m| !contacts.contains(m));
        if bot_saw {
            let remover_id = remover.cloned().unwrap_or_else(|| contacts[0].clone());
            self.emit(PuppetEvent::RoomLeave(RoomLeaveEvent {
                removee_id_list: contacts,
                remover_id,
                room_id: room.clone(),
                timestamp: now_ms() / 1000,
            }));
        }
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    /// A member changes a room's topic.
    pub fn change_topic(&self, room: &RoomId, changer: &ContactId, topic: String) -> BackendResult<()> {
        if topic.trim().is_empty() {
            return Err(BackendError::InvalidArgument("a room topic cannot be empty".into()));
        }
        let mut w = self.world();
        w.require_online()?;
        let me = w.me.clone();
        let r = w.rooms.get_mut(room).ok_or_else(|| BackendError::not_found("room", room))?;
        if !r.room.member_ids.contains(changer) {
            return Err(BackendError::FailedPrecondition(format!("`{changer}` is not a member of room `{room}`")));
        }
        let old_topic = std::mem::replace(&mut r.room.topic, topic.clone());
        if r.room.member_ids.contains(&me) {
            self.emit(PuppetEvent::RoomTopic(RoomTopicEvent {
                changer_id: changer.clone(),
                new_topic: topic,
                old_topic,
                room_id: room.clone(),
                timestamp: now_ms() / 1000,
            }));
        }
        w.save_room(room);
        self.dirty(PayloadType::Room, room.as_str());
        Ok(())
    }

    /// A contact changes their profile.
    pub fn update_contact(&self, id: &ContactId, update: ContactUpdate) -> BackendResult<()> {
        let mut w = self.world();
        let c = w.contact_mut(id)?;
        let ContactUpdate { name, signature, city, avatar } = update;
        for (field, value) in
            [(&mut c.name, name), (&mut c.signature, signature), (&mut c.city, city), (&mut c.avatar, avatar)]
        {
            if let Some(v) = value {
                *field = v;
            }
        }
        w.save_contact(id);
        self.dirty(PayloadType::Contact, id.as_str());
        Ok(())
    }

    /// The platform logs the bot out.
    pub fn force_logout(&self, reason: String) -> BackendResult<()> {
        let mut w = self.world();
        if w.session != Session::Online {
            return Err(BackendError::FailedPrecondition("the bot is not logged in".into()));
        }
        w.session = Session::Offline;
        w.login_generation += 1;
        w.save_logged_in(false);
        let reason = if reason.is_empty() { "logged out by the platform".to_owned() } else { reason };
        self.emit(PuppetEvent::Logout(LogoutEvent { contact_id: w.me.clone(), data: reason }));
        Ok(())
    }

    /// A conversation's messages (the newest [`LIST_MESSAGES_MAX`] the store keeps), oldest
    /// first: read from the store on the blocking pool, the world's lock not held.
    pub async fn list_messages(&self, conversation: &ConversationId) -> BackendResult<Vec<Message>> {
        self.world().resolve(conversation)?;
        let key = conversation.as_str().to_owned();
        let records = self
            .inner
            .store
            .read(move |s| s.messages().list(&key, LIST_MESSAGES_MAX))
            .await
            .map_err(BackendError::from)?;
        Ok(records
            .iter()
            .filter_map(|r| match StoredMessage::decode(r) {
                Ok(m) => Some(m.message),
                Err(e) => {
                    // One unreadable record does not hide the rest of the conversation.
                    tracing::warn!(error = %e, "skipping a stored message");
                    None
                }
            })
            .collect())
    }

    /// Publishes `count` DONG events, paced to `per_second` when non-zero. Returns the first and
    /// last sequence numbers.
    pub async fn flood(&self, count: u64, per_second: u64) -> BackendResult<(u64, u64)> {
        if count == 0 {
            return Err(BackendError::InvalidArgument("`count` must be at least 1".into()));
        }
        // Paced floods publish about a millisecond's worth at a time, so no burst outruns a
        // subscriber that keeps up with the rate on average.
        let chunk = if per_second > 0 { (per_second / 1000).clamp(1, 1024) } else { 1024 };
        let start = Instant::now();
        let (mut first, mut last) = (0, 0);
        for i in 0..count {
            last = self.inner.sink.emit(PuppetEvent::Dong(DataPayload { data: format!("flood-{i}") }));
            if i == 0 {
                first = last;
            }
            if (i + 1) % chunk == 0 {
                if per_second > 0 {
                    let due = start + Duration::from_secs_f64((i + 1) as f64 / per_second as f64);
                    tokio::time::sleep_until(due.into()).await;
                } else {
                    // Let the stream tasks run between chunks on a busy runtime.
                    tokio::task::yield_now().await;
                }
                self.inner.sink.backpressure().await;
            }
        }
        Ok((first, last))
    }
}
