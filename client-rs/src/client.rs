//! The connection and the typed calls.

use puppet_proto::event::PuppetEvent;
use puppet_proto::filebox::FileBox;
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{
    Contact, Friendship, ImageType, Location, Message, MiniProgram, PayloadType, Room, RoomInvitation, RoomMember,
    UrlLink,
};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::event_feed_client::EventFeedClient;
use puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use crate::Error;

/// Largest message the client accepts (inline files can be large).
const MAX_MESSAGE: usize = 256 << 20;

/// Adds `authorization: Wechaty <token>` to every call.
#[derive(Clone)]
pub struct WechatyToken(AsciiMetadataValue);

impl Interceptor for WechatyToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// A channel with the token attached.
pub type AuthChannel = InterceptedService<Channel, WechatyToken>;

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct ConnectOptions {
    /// `host:port`, `http://host:port` or `https://host:port`.
    pub endpoint: String,
    /// The server's token.
    pub token: String,
    /// PEM of the CA to trust; setting it switches TLS on.
    pub tls_ca_pem: Option<String>,
    /// The name to expect in the server's certificate (and send as SNI); default: the host.
    pub tls_server_name: Option<String>,
}

impl ConnectOptions {
    /// Plaintext HTTP/2 to `endpoint` with `token`.
    pub fn new(endpoint: impl Into<String>, token: impl Into<String>) -> Self {
        Self { endpoint: endpoint.into(), token: token.into(), tls_ca_pem: None, tls_server_name: None }
    }

    /// TLS, trusting the CA in this PEM file.
    pub fn tls_ca_file(mut self, path: impl AsRef<std::path::Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let pem = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("cannot read the CA file {}: {e}", path.display())))?;
        self.tls_ca_pem = Some(pem);
        Ok(self)
    }

    /// The certificate name to expect (Wechaty's `WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME`).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls_server_name = Some(name.into());
        self
    }

    /// From the environment variables the Wechaty clients use: `WECHATY_PUPPET_SERVICE_ENDPOINT`
    /// (default `127.0.0.1:8788`), `WECHATY_PUPPET_SERVICE_TOKEN` (required),
    /// `WECHATY_PUPPET_SERVICE_TLS_CA_CERT` (PEM text) and `WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME`.
    pub fn from_env() -> Result<Self, Error> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let token = var("WECHATY_PUPPET_SERVICE_TOKEN")
            .ok_or_else(|| Error::Config("WECHATY_PUPPET_SERVICE_TOKEN is not set".into()))?;
        let mut options =
            Self::new(var("WECHATY_PUPPET_SERVICE_ENDPOINT").unwrap_or_else(|| "127.0.0.1:8788".into()), token);
        options.tls_ca_pem = var("WECHATY_PUPPET_SERVICE_TLS_CA_CERT").map(|p| p.replace("\\n", "\n"));
        options.tls_server_name = var("WECHATY_PUPPET_SERVICE_TLS_SERVER_NAME");
        Ok(options)
    }
}

/// A connection to a puppet service. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    token: WechatyToken,
    /// The server's event log, learned when following live: a resume names it, so a server whose
    /// log was replaced refuses instead of answering with unrelated events.
    log_id: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

fn ok<T>(r: Result<tonic::Response<T>, tonic::Status>) -> Result<T, Error> {
    r.map(tonic::Response::into_inner).map_err(Error::Status)
}

/// The id a "message sent" response carries, in whichever field the server filled.
fn sent_id(id: String, legacy: Option<String>) -> Option<MessageId> {
    Some(id).filter(|i| !i.is_empty()).or(legacy.filter(|i| !i.is_empty())).map(MessageId)
}

fn file_box(json: &str) -> Result<FileBox, Error> {
    FileBox::from_json(json).map_err(|e| Error::Protocol(e.to_string()))
}

impl Client {
    /// Connects in plaintext to `endpoint` (`host:port` or `http://host:port`) with `token`.
    pub async fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        Self::connect_with(ConnectOptions::new(endpoint, token)).await
    }

    /// Connects as `options` say.
    pub async fn connect_with(options: ConnectOptions) -> Result<Self, Error> {
        let tls = options.tls_ca_pem.is_some() || options.endpoint.starts_with("https://");
        let uri = match options.endpoint.split_once("://") {
            Some((_, rest)) => format!("{}://{rest}", if tls { "https" } else { "http" }),
            None => format!("{}://{}", if tls { "https" } else { "http" }, options.endpoint),
        };
        let mut endpoint = Endpoint::from_shared(uri).map_err(|e| Error::Config(format!("endpoint: {e}")))?;
        if tls {
            let mut config = ClientTlsConfig::new();
            if let Some(pem) = &options.tls_ca_pem {
                config = config.ca_certificate(Certificate::from_pem(pem));
            }
            if let Some(name) = &options.tls_server_name {
                config = config.domain_name(name.clone());
            }
            endpoint = endpoint.tls_config(config).map_err(|e| Error::Config(format!("TLS: {e}")))?;
        }
        let header = format!("Wechaty {}", options.token)
            .parse()
            .map_err(|_| Error::Config("the token contains characters a header cannot carry".into()))?;
        let channel = endpoint.initial_stream_window_size(4 << 20).connect().await?;
        Ok(Self { channel, token: WechatyToken(header), log_id: Default::default() })
    }

    /// The generated `wechaty.Puppet` stub, for anything the typed methods do not cover.
    pub fn puppet(&self) -> PuppetClient<AuthChannel> {
        PuppetClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The resumable event feed (`puppet_rs.v1.EventFeed`).
    pub fn feed(&self) -> EventFeedClient<AuthChannel> {
        EventFeedClient::with_interceptor(self.channel.clone(), self.token.clone())
    }

    /// The mock backend's world control (`puppet_rs.v1.MockWorld`).
    pub fn world(&self) -> MockWorldClient<AuthChannel> {
        MockWorldClient::with_interceptor(self.channel.clone(), self.token.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// The plain channel (health checks need no token).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    // ---- base -----------------------------------------------------------------------------------

    /// Begins (or resumes) the login.
    pub async fn start(&self) -> Result<(), Error> {
        ok(self.puppet().start(pb::StartRequest {}).await).map(drop)
    }
    /// Detaches; the server keeps the WeChat session.
    pub async fn stop(&self) -> Result<(), Error> {
        ok(self.puppet().stop(pb::StopRequest {}).await).map(drop)
    }
    /// Ends the WeChat session.
    pub async fn logout(&self) -> Result<(), Error> {
        ok(self.puppet().logout(pb::LogoutRequest {}).await).map(drop)
    }
    /// Asks for a DONG event carrying `data`.
    pub async fn ding(&self, data: &str) -> Result<(), Error> {
        ok(self.puppet().ding(pb::DingRequest { data: data.into() }).await).map(drop)
    }
    /// The server's version string.
    pub async fn version(&self) -> Result<String, Error> {
        ok(self.puppet().version(pb::VersionRequest {}).await).map(|r| r.version)
    }
    /// Asks the server to drop its cached payload and emit DIRTY.
    pub async fn dirty(&self, kind: PayloadType, id: &str) -> Result<(), Error> {
        let req = pb::DirtyPayloadRequest { r#type: kind.wire(), id: id.into() };
        ok(self.puppet().dirty_payload(req).await).map(drop)
    }

    // ---- the bot itself -------------------------------------------------------------------------

    /// The text of the bot's own QR code.
    pub async fn self_qrcode(&self) -> Result<String, Error> {
        ok(self.puppet().contact_self_qr_code(pb::ContactSelfQrCodeRequest {}).await).map(|r| r.qrcode)
    }
    /// Renames the bot.
    pub async fn set_self_name(&self, name: &str) -> Result<(), Error> {
        ok(self.puppet().contact_self_name(pb::ContactSelfNameRequest { name: name.into() }).await).map(drop)
    }
    /// Changes the bot's signature.
    pub async fn set_self_signature(&self, signature: &str) -> Result<(), Error> {
        let req = pb::ContactSelfSignatureRequest { signature: signature.into() };
        ok(self.puppet().contact_self_signature(req).await).map(drop)
    }

    // ---- contacts -------------------------------------------------------------------------------

    /// Every contact id.
    pub async fn contact_list(&self) -> Result<Vec<ContactId>, Error> {
        ok(self.puppet().contact_list(pb::ContactListRequest {}).await)
            .map(|r| r.ids.into_iter().map(ContactId).collect())
    }
    /// One contact.
    pub async fn contact(&self, id: &ContactId) -> Result<Contact, Error> {
        ok(self.puppet().contact_payload(pb::ContactPayloadRequest { id: id.0.clone() }).await).map(Contact::from)
    }
    /// A contact's alias ("" for none).
    #[allow(deprecated)]
    pub async fn contact_alias(&self, id: &ContactId) -> Result<String, Error> {
        let req = pb::ContactAliasRequest { id: id.0.clone(), ..Default::default() };
        let r = ok(self.puppet().contact_alias(req).await)?;
        Ok(if r.alias.is_empty() { r.alias_string_value_deprecated.unwrap_or_default() } else { r.alias })
    }
    /// Sets (or with `""` clears) a contact's alias.
    #[allow(deprecated)]
    pub async fn set_contact_alias(&self, id: &ContactId, alias: &str) -> Result<(), Error> {
        let req = pb::ContactAliasRequest {
            id: id.0.clone(),
            alias: Some(alias.into()),
            alias_string_value_deprecated: Some(alias.into()),
        };
        ok(self.puppet().contact_alias(req).await).map(drop)
    }
    /// A contact's avatar.
    #[allow(deprecated)]
    pub async fn contact_avatar(&self, id: &ContactId) -> Result<FileBox, Error> {
        let req = pb::ContactAvatarRequest { id: id.0.clone(), ..Default::default() };
        let r = ok(self.puppet().contact_avatar(req).await)?;
        file_box(if r.file_box.is_empty() {
            r.filebox_string_value_deprecated.as_deref().unwrap_or("")
        } else {
            &r.file_box
        })
    }
    /// Replaces the phone numbers recorded for a contact.
    pub async fn set_contact_phones(&self, id: &ContactId, phones: Vec<String>) -> Result<(), Error> {
        let req = pb::ContactPhoneRequest { contact_id: id.0.clone(), phones };
        ok(self.puppet().contact_phone(req).await).map(drop)
    }
    /// Sets or (`None`) clears a WeCom corporation remark.
    #[allow(deprecated)]
    pub async fn set_contact_corporation_remark(&self, id: &ContactId, remark: Option<&str>) -> Result<(), Error> {
        let req = pb::ContactCorporationRemarkRequest {
            contact_id: id.0.clone(),
            corporation_remark_string_value_deprecated: remark.map(str::to_owned),
            corporation_remark: remark.unwrap_or_default().into(),
        };
        ok(self.puppet().contact_corporation_remark(req).await).map(drop)
    }
    /// Sets or (`None`) clears a contact's description.
    #[allow(deprecated)]
    pub async fn set_contact_description(&self, id: &ContactId, description: Option<&str>) -> Result<(), Error> {
        let req = pb::ContactDescriptionRequest {
            contact_id: id.0.clone(),
            description_string_value_deprecated: description.map(str::to_owned),
            description: description.unwrap_or_default().into(),
        };
        ok(self.puppet().contact_description(req).await).map(drop)
    }

    // ---- friendships ----------------------------------------------------------------------------

    /// One friend request.
    pub async fn friendship(&self, id: &FriendshipId) -> Result<Friendship, Error> {
        let req = pb::FriendshipPayloadRequest { id: id.0.clone(), ..Default::default() };
        ok(self.puppet().friendship_payload(req).await).map(Friendship::from)
    }
    /// A stranger by phone number.
    #[allow(deprecated)]
    pub async fn friendship_search_phone(&self, phone: &str) -> Result<Option<ContactId>, Error> {
        let r =
            ok(self.puppet().friendship_search_phone(pb::FriendshipSearchPhoneRequest { phone: phone.into() }).await)?;
        Ok(Some(r.contact_id).filter(|c| !c.is_empty()).or(r.contact_id_string_value_deprecated).map(ContactId))
    }
    /// A stranger by WeChat handle.
    #[allow(deprecated)]
    pub async fn friendship_search_handle(&self, handle: &str) -> Result<Option<ContactId>, Error> {
        let req = pb::FriendshipSearchHandleRequest { weixin: handle.into() };
        let r = ok(self.puppet().friendship_search_handle(req).await)?;
        Ok(Some(r.contact_id).filter(|c| !c.is_empty()).or(r.contact_id_string_value_deprecated).map(ContactId))
    }
    /// Sends a friend request.
    pub async fn friendship_add(&self, contact: &ContactId, hello: &str) -> Result<(), Error> {
        let req = pb::FriendshipAddRequest { contact_id: contact.0.clone(), hello: hello.into(), ..Default::default() };
        ok(self.puppet().friendship_add(req).await).map(drop)
    }
    /// Accepts a received friend request.
    pub async fn friendship_accept(&self, id: &FriendshipId) -> Result<(), Error> {
        ok(self.puppet().friendship_accept(pb::FriendshipAcceptRequest { id: id.0.clone() }).await).map(drop)
    }

    // ---- messages -------------------------------------------------------------------------------

    /// One message.
    pub async fn message(&self, id: &MessageId) -> Result<Message, Error> {
        ok(self.puppet().message_payload(pb::MessagePayloadRequest { id: id.0.clone() }).await).map(Message::from)
    }
    /// The contact a contact-card message shares.
    pub async fn message_contact(&self, id: &MessageId) -> Result<ContactId, Error> {
        ok(self.puppet().message_contact(pb::MessageContactRequest { id: id.0.clone() }).await).map(|r| ContactId(r.id))
    }
    /// The file of a message.
    pub async fn message_file(&self, id: &MessageId) -> Result<FileBox, Error> {
        file_box(&ok(self.puppet().message_file(pb::MessageFileRequest { id: id.0.clone() }).await)?.file_box)
    }
    /// One rendition of an image message.
    pub async fn message_image(&self, id: &MessageId, kind: ImageType) -> Result<FileBox, Error> {
        let req = pb::MessageImageRequest { id: id.0.clone(), r#type: kind.wire() };
        file_box(&ok(self.puppet().message_image(req).await)?.file_box)
    }
    /// The card of a link message.
    pub async fn message_url(&self, id: &MessageId) -> Result<UrlLink, Error> {
        let r = ok(self.puppet().message_url(pb::MessageUrlRequest { id: id.0.clone() }).await)?;
        r.url_link.map(UrlLink::from).ok_or_else(|| Error::Protocol("MessageUrl without a url_link".into()))
    }
    /// The card of a mini-program message.
    pub async fn message_mini_program(&self, id: &MessageId) -> Result<MiniProgram, Error> {
        let r = ok(self.puppet().message_mini_program(pb::MessageMiniProgramRequest { id: id.0.clone() }).await)?;
        r.mini_program
            .map(MiniProgram::from)
            .ok_or_else(|| Error::Protocol("MessageMiniProgram without a payload".into()))
    }
    /// The place of a location message.
    pub async fn message_location(&self, id: &MessageId) -> Result<Location, Error> {
        let r = ok(self.puppet().message_location(pb::MessageLocationRequest { id: id.0.clone() }).await)?;
        r.location.map(Location::from).ok_or_else(|| Error::Protocol("MessageLocation without a location".into()))
    }
    /// Recalls a message the bot sent; `false` when the platform refused.
    pub async fn message_recall(&self, id: &MessageId) -> Result<bool, Error> {
        ok(self.puppet().message_recall(pb::MessageRecallRequest { id: id.0.clone() }).await).map(|r| r.success)
    }
    /// Forwards a message.
    #[allow(deprecated)]
    pub async fn message_forward(&self, to: &ConversationId, id: &MessageId) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageForwardRequest { message_id: id.0.clone(), conversation_id: to.0.clone() };
        ok(self.puppet().message_forward(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends text, @-mentioning `mentions` in a room.
    #[allow(deprecated)]
    pub async fn send_text(
        &self,
        to: &ConversationId,
        text: &str,
        mentions: &[ContactId],
    ) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendTextRequest {
            conversation_id: to.0.clone(),
            text: text.into(),
            mentional_ids: mentions.iter().map(|m| m.0.clone()).collect(),
        };
        ok(self.puppet().message_send_text(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends a contact card.
    #[allow(deprecated)]
    pub async fn send_contact(&self, to: &ConversationId, contact: &ContactId) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendContactRequest { conversation_id: to.0.clone(), contact_id: contact.0.clone() };
        ok(self.puppet().message_send_contact(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends a file given as a FileBox (upload big files first with [`Client::upload`]).
    #[allow(deprecated)]
    pub async fn send_file(&self, to: &ConversationId, file: &FileBox) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendFileRequest { conversation_id: to.0.clone(), file_box: file.to_json() };
        ok(self.puppet().message_send_file(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends a link card.
    #[allow(deprecated)]
    pub async fn send_url(&self, to: &ConversationId, link: UrlLink) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendUrlRequest {
            conversation_id: to.0.clone(),
            url_link: Some(link.into()),
            ..Default::default()
        };
        ok(self.puppet().message_send_url(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends a mini-program card.
    #[allow(deprecated)]
    pub async fn send_mini_program(&self, to: &ConversationId, card: MiniProgram) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendMiniProgramRequest {
            conversation_id: to.0.clone(),
            mini_program: Some(card.into()),
            ..Default::default()
        };
        ok(self.puppet().message_send_mini_program(req).await).map(|r| sent_id(r.id, r.id_string_value_deprecated))
    }
    /// Sends a location.
    pub async fn send_location(&self, to: &ConversationId, location: Location) -> Result<Option<MessageId>, Error> {
        let req = pb::MessageSendLocationRequest { conversation_id: to.0.clone(), location: Some(location.into()) };
        ok(self.puppet().message_send_location(req).await).map(|r| sent_id(r.id, None))
    }

    // ---- rooms ----------------------------------------------------------------------------------

    /// Every room the bot is in.
    pub async fn room_list(&self) -> Result<Vec<RoomId>, Error> {
        ok(self.puppet().room_list(pb::RoomListRequest {}).await).map(|r| r.ids.into_iter().map(RoomId).collect())
    }
    /// One room.
    pub async fn room(&self, id: &RoomId) -> Result<Room, Error> {
        ok(self.puppet().room_payload(pb::RoomPayloadRequest { id: id.0.clone() }).await).map(Room::from)
    }
    /// Adds contacts to a room.
    pub async fn room_add(&self, room: &RoomId, contacts: &[ContactId]) -> Result<(), Error> {
        let req = pb::RoomAddRequest {
            id: room.0.clone(),
            contact_id: contacts.first().map(|c| c.0.clone()).unwrap_or_default(),
            contact_ids: contacts.iter().map(|c| c.0.clone()).collect(),
            invite_only: false,
        };
        ok(self.puppet().room_add(req).await).map(drop)
    }
    /// Removes members from a room.
    pub async fn room_del(&self, room: &RoomId, contacts: &[ContactId]) -> Result<(), Error> {
        let req = pb::RoomDelRequest {
            id: room.0.clone(),
            contact_id: contacts.first().map(|c| c.0.clone()).unwrap_or_default(),
            contact_ids: contacts.iter().map(|c| c.0.clone()).collect(),
        };
        ok(self.puppet().room_del(req).await).map(drop)
    }
    /// A room's avatar.
    pub async fn room_avatar(&self, room: &RoomId) -> Result<FileBox, Error> {
        file_box(&ok(self.puppet().room_avatar(pb::RoomAvatarRequest { id: room.0.clone() }).await)?.file_box)
    }
    /// Creates a room with these contacts and the bot.
    pub async fn room_create(&self, contacts: &[ContactId], topic: &str) -> Result<RoomId, Error> {
        let req =
            pb::RoomCreateRequest { contact_ids: contacts.iter().map(|c| c.0.clone()).collect(), topic: topic.into() };
        ok(self.puppet().room_create(req).await).map(|r| RoomId(r.id))
    }
    /// Leaves a room.
    pub async fn room_quit(&self, room: &RoomId) -> Result<(), Error> {
        ok(self.puppet().room_quit(pb::RoomQuitRequest { id: room.0.clone() }).await).map(drop)
    }
    /// Changes a room's topic.
    #[allow(deprecated)]
    pub async fn set_room_topic(&self, room: &RoomId, topic: &str) -> Result<(), Error> {
        let req = pb::RoomTopicRequest {
            id: room.0.clone(),
            topic: Some(topic.into()),
            topic_string_value_deprecated: Some(topic.into()),
        };
        ok(self.puppet().room_topic(req).await).map(drop)
    }
    /// The text of a room's QR code.
    pub async fn room_qrcode(&self, room: &RoomId) -> Result<String, Error> {
        ok(self.puppet().room_qr_code(pb::RoomQrCodeRequest { id: room.0.clone() }).await).map(|r| r.qrcode)
    }
    /// A room's announcement.
    #[allow(deprecated)]
    pub async fn room_announce(&self, room: &RoomId) -> Result<String, Error> {
        let r = ok(self
            .puppet()
            .room_announce(pb::RoomAnnounceRequest { id: room.0.clone(), ..Default::default() })
            .await)?;
        Ok(if r.text.is_empty() { r.text_string_value_deprecated.unwrap_or_default() } else { r.text })
    }
    /// Changes a room's announcement.
    #[allow(deprecated)]
    pub async fn set_room_announce(&self, room: &RoomId, text: &str) -> Result<(), Error> {
        let req = pb::RoomAnnounceRequest {
            id: room.0.clone(),
            text: Some(text.into()),
            text_string_value_deprecated: Some(text.into()),
        };
        ok(self.puppet().room_announce(req).await).map(drop)
    }
    /// One member of a room.
    pub async fn room_member(&self, room: &RoomId, member: &ContactId) -> Result<RoomMember, Error> {
        let req = pb::RoomMemberPayloadRequest { id: room.0.clone(), member_id: member.0.clone() };
        ok(self.puppet().room_member_payload(req).await).map(RoomMember::from)
    }
    /// Every member of a room.
    pub async fn room_members(&self, room: &RoomId) -> Result<Vec<ContactId>, Error> {
        let r = ok(self.puppet().room_member_list(pb::RoomMemberListRequest { id: room.0.clone() }).await)?;
        Ok(r.member_ids.into_iter().map(ContactId).collect())
    }
    /// One room invitation.
    pub async fn room_invitation(&self, id: &RoomInvitationId) -> Result<RoomInvitation, Error> {
        let req = pb::RoomInvitationPayloadRequest { id: id.0.clone(), ..Default::default() };
        ok(self.puppet().room_invitation_payload(req).await).map(RoomInvitation::from)
    }
    /// Accepts a room invitation.
    pub async fn room_invitation_accept(&self, id: &RoomInvitationId) -> Result<(), Error> {
        ok(self.puppet().room_invitation_accept(pb::RoomInvitationAcceptRequest { id: id.0.clone() }).await).map(drop)
    }

    // ---- tags -----------------------------------------------------------------------------------

    /// Tags a contact.
    pub async fn tag_contact_add(&self, tag: &TagId, contact: &ContactId) -> Result<(), Error> {
        let req = pb::TagContactAddRequest { id: tag.0.clone(), contact_id: contact.0.clone() };
        ok(self.puppet().tag_contact_add(req).await).map(drop)
    }
    /// Untags a contact.
    pub async fn tag_contact_remove(&self, tag: &TagId, contact: &ContactId) -> Result<(), Error> {
        let req = pb::TagContactRemoveRequest { id: tag.0.clone(), contact_id: contact.0.clone() };
        ok(self.puppet().tag_contact_remove(req).await).map(drop)
    }
    /// Deletes a tag.
    pub async fn tag_delete(&self, tag: &TagId) -> Result<(), Error> {
        ok(self.puppet().tag_contact_delete(pb::TagContactDeleteRequest { id: tag.0.clone() }).await).map(drop)
    }
    /// The tags of a contact, or every tag.
    #[allow(deprecated)]
    pub async fn tag_list(&self, contact: Option<&ContactId>) -> Result<Vec<TagId>, Error> {
        let req = pb::TagContactListRequest {
            contact_id: contact.map(|c| c.0.clone()).unwrap_or_default(),
            contact_id_string_value_deprecated: contact.map(|c| c.0.clone()),
        };
        ok(self.puppet().tag_contact_list(req).await).map(|r| r.ids.into_iter().map(TagId).collect())
    }

    // ---- conversations --------------------------------------------------------------------------

    /// Marks a conversation read (or unread); the resulting state.
    pub async fn conversation_read(&self, id: &ConversationId, has_read: bool) -> Result<bool, Error> {
        let req = pb::ConversationReadRequest { conversation_id: id.0.clone(), has_read };
        ok(self.puppet().conversation_read(req).await).map(|r| r.has_read)
    }

    // ---- files ----------------------------------------------------------------------------------

    /// Uploads a file from any reader, in 256 KiB chunks; returns the blob id for a Uuid FileBox.
    /// `progress` is called with the bytes sent so far.
    pub async fn upload(
        &self,
        mut reader: impl tokio::io::AsyncRead + Unpin + Send + 'static,
        mut progress: impl FnMut(u64) + Send + 'static,
    ) -> Result<String, Error> {
        use tokio::io::AsyncReadExt;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let reading = tokio::spawn(async move {
            let mut sent = 0u64;
            loop {
                let mut chunk = vec![0u8; 256 * 1024];
                let n = reader.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                chunk.truncate(n);
                sent += n as u64;
                progress(sent);
                if tx.send(pb::UploadRequest { chunk }).await.is_err() {
                    return Ok(());
                }
            }
        });
        let id = ok(self.puppet().upload(tokio_stream::wrappers::ReceiverStream::new(rx)).await)?.id;
        reading.await.map_err(|e| Error::Config(e.to_string()))?.map_err(|e| Error::Config(format!("reading: {e}")))?;
        Ok(id)
    }

    /// Downloads a blob into any writer; returns the bytes written. `progress` is called with the
    /// bytes received so far.
    pub async fn download(
        &self,
        id: &str,
        writer: &mut (impl tokio::io::AsyncWrite + Unpin),
        mut progress: impl FnMut(u64),
    ) -> Result<u64, Error> {
        use tokio::io::AsyncWriteExt;
        let mut stream = ok(self.puppet().download(pb::DownloadRequest { id: id.into() }).await)?;
        let mut n = 0u64;
        while let Some(m) = stream.message().await? {
            writer.write_all(&m.chunk).await.map_err(|e| Error::Config(format!("writing: {e}")))?;
            n += m.chunk.len() as u64;
            progress(n);
        }
        writer.flush().await.map_err(|e| Error::Config(format!("writing: {e}")))?;
        Ok(n)
    }

    // ---- events ---------------------------------------------------------------------------------

    /// Follows the sequenced event feed: after `after_seq`, or live (with the login state first)
    /// when `None`. Yields `(seq, event)`; heartbeats are skipped. Following live learns the
    /// server's log id, which later resumes name (a server whose log was replaced then answers
    /// `OUT_OF_RANGE`).
    pub async fn events(
        &self,
        after_seq: Option<u64>,
    ) -> Result<impl tokio_stream::Stream<Item = Result<(u64, PuppetEvent), Error>> + use<>, Error> {
        use tokio_stream::StreamExt;
        let remembered = || self.log_id.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let log_id = match after_seq {
            None => {
                let retention = ok(self.feed().retention(ext::RetentionRequest {}).await)?;
                *self.log_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(retention.log_id);
                String::new()
            }
            Some(_) => remembered().unwrap_or_default(),
        };
        let req = ext::SubscribeRequest { after_seq, replay_state: after_seq.is_none(), log_id };
        let stream = ok(self.feed().subscribe(req).await)?;
        Ok(stream.filter_map(|item| match item {
            Ok(e) if e.seq == 0 => None,
            Ok(e) => Some(
                PuppetEvent::from_wire(e.r#type, &e.payload)
                    .map(|event| (e.seq, event))
                    .map_err(|err| Error::Protocol(format!("event {}: {err}", e.seq))),
            ),
            Err(status) => Some(Err(Error::Status(status))),
        }))
    }
}
