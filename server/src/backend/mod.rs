//! The seam between the gRPC contract and whatever actually holds the WeChat account.
//!
//! A backend implements [`Backend`] in domain types (never protobuf types) and reports what happens
//! through the [`EventSink`] it is built with. Every operation has a default body that answers
//! [`BackendError::Unsupported`], which the gRPC layer turns into `UNIMPLEMENTED` naming the backend
//! and the operation, so a backend can grow one operation at a time.

pub mod ilink;
pub mod mock;
pub mod official_account;
pub mod upstream;
pub mod web;

use async_trait::async_trait;
use puppet_proto::filebox::FileBox;
use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{
    Contact, Friendship, ImageType, Location, Message, MiniProgram, PayloadType, Room, RoomInvitation, RoomMember,
    UrlLink,
};

/// What went wrong in a backend. Each variant maps to one gRPC code (see `grpc::status`).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum BackendError {
    /// This backend cannot do the named operation at all.
    #[error("operation `{0}` is not supported")]
    Unsupported(&'static str),
    /// The named thing does not exist.
    #[error("{kind} `{id}` not found")]
    NotFound {
        /// What was looked up ("contact", "room", …).
        kind: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// The request itself is malformed (empty text, bad FileBox, …).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well-formed but impossible in the current state (not logged in, not a member, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A limit was reached.
    #[error("{0}")]
    ResourceExhausted(String),
    /// The backend failed for a reason of its own.
    #[error("{0}")]
    Internal(String),
    /// The platform cannot do this at all, for the reason given (not a missing feature of ours).
    #[error("`{op}` is impossible here: {reason}")]
    PlatformLimit {
        /// The operation.
        op: &'static str,
        /// Why the platform forbids it.
        reason: &'static str,
    },
    /// The platform refused the backend's credentials, and a retry with fresh ones failed too.
    #[error("{0}")]
    Unauthenticated(String),
    /// The platform does not allow this account (or its address) to do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// Something the request names does not exist, as the platform put it.
    #[error("{0}")]
    Absent(String),
    /// The platform could not be reached or is busy; retrying later may work.
    #[error("{0}")]
    Unavailable(String),
}

impl BackendError {
    /// Shorthand for [`BackendError::NotFound`]; the id is shown as client input is
    /// ([`puppet_proto::ids::Shown`]: escaped, at most 64 characters).
    pub fn not_found(kind: &'static str, id: impl AsRef<str>) -> Self {
        Self::NotFound { kind, id: puppet_proto::ids::Shown(id.as_ref()).to_string() }
    }
}

impl From<crate::blobs::BlobError> for BackendError {
    /// The one mapping of blob store errors, used by the gRPC layer and the backends alike.
    fn from(e: crate::blobs::BlobError) -> Self {
        use crate::blobs::BlobError;
        match e {
            BlobError::NotFound(_) => BackendError::Absent(e.to_string()),
            BlobError::TooLarge { .. } => BackendError::ResourceExhausted(e.to_string()),
            BlobError::Empty => BackendError::InvalidArgument(e.to_string()),
            BlobError::Io(_) => BackendError::Internal(e.to_string()),
        }
    }
}

impl From<crate::store::StoreError> for BackendError {
    /// The one mapping of store errors: a full store is a limit a client can wait out.
    fn from(e: crate::store::StoreError) -> Self {
        match e {
            crate::store::StoreError::Full(_) => BackendError::ResourceExhausted(e.to_string()),
            crate::store::StoreError::Failed(_) => BackendError::Internal(e.to_string()),
        }
    }
}

/// Result of a backend operation.
pub type BackendResult<T> = Result<T, BackendError>;

/// The stored record of message `id`, read off the runtime; `NOT_FOUND` when the store has none.
pub(crate) async fn stored_message(
    store: &crate::store::Store,
    id: &MessageId,
) -> BackendResult<crate::store::MessageRecord> {
    store.messages().get_async(id.as_str()).await?.ok_or_else(|| BackendError::not_found("message", id))
}

/// Something the bot sends into a conversation.
#[derive(Clone, Debug, PartialEq)]
pub enum Outgoing {
    /// Text, optionally @-mentioning room members.
    Text {
        /// The text.
        text: String,
        /// Members to mention (rooms only).
        mentions: Vec<ContactId>,
    },
    /// A contact card.
    Contact(ContactId),
    /// A file, image, video or voice clip.
    File(FileBox),
    /// A mini-program card.
    MiniProgram(MiniProgram),
    /// A link card.
    Url(UrlLink),
    /// A location.
    Location(Location),
}

/// Who referred a friend request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Referrer {
    /// A contact whose card was shared.
    pub contact_id: Option<ContactId>,
    /// A room the two share.
    pub room_id: Option<RoomId>,
}

/// A WeChat account as seen by the gRPC layer. See the module docs.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    /// Short name for logs and error messages (`mock`, `official-account`, …).
    fn name(&self) -> &'static str;

    /// Whether the backend can serve now (its upstream reachable), when that can change; readiness
    /// then needs it as well as the login. `None`: readiness follows the login alone.
    fn serving(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    // ---- lifecycle ----------------------------------------------------------------------------
    /// Begin (or resume) the login flow. Idempotent.
    async fn start(&self) -> BackendResult<()> {
        Err(BackendError::Unsupported("start"))
    }
    /// A client stopped. Must succeed when nothing is started, and should keep the login.
    async fn stop(&self) -> BackendResult<()> {
        Err(BackendError::Unsupported("stop"))
    }
    /// The server is stopping: save whatever must survive the restart.
    async fn shutdown(&self) -> BackendResult<()> {
        Ok(())
    }
    /// End the WeChat session. Idempotent.
    async fn logout(&self) -> BackendResult<()> {
        Err(BackendError::Unsupported("logout"))
    }
    /// Answer with a DONG event carrying `data`.
    async fn ding(&self, _data: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("ding"))
    }
    /// Drop any cached copy of the payload and emit DIRTY for it.
    async fn dirty_payload(&self, _kind: PayloadType, _id: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("dirty_payload"))
    }

    // ---- the bot itself -----------------------------------------------------------------------
    /// The text of the bot's own contact QR code.
    async fn self_qrcode(&self) -> BackendResult<String> {
        Err(BackendError::Unsupported("self_qrcode"))
    }
    /// Rename the bot.
    async fn set_self_name(&self, _name: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_self_name"))
    }
    /// Change the bot's signature.
    async fn set_self_signature(&self, _signature: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_self_signature"))
    }

    // ---- contacts -----------------------------------------------------------------------------
    /// Every contact id.
    async fn contact_list(&self) -> BackendResult<Vec<ContactId>> {
        Err(BackendError::Unsupported("contact_list"))
    }
    /// One contact.
    async fn contact(&self, _id: &ContactId) -> BackendResult<Contact> {
        Err(BackendError::Unsupported("contact"))
    }
    /// Set (or with `""` clear) the alias the bot gives a contact.
    async fn set_contact_alias(&self, _id: &ContactId, _alias: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_contact_alias"))
    }
    /// A contact's avatar.
    async fn contact_avatar(&self, _id: &ContactId) -> BackendResult<FileBox> {
        Err(BackendError::Unsupported("contact_avatar"))
    }
    /// Change an avatar; platforms allow it for the bot itself only.
    async fn set_contact_avatar(&self, _id: &ContactId, _file: FileBox) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_contact_avatar"))
    }
    /// Replace the phone numbers recorded for a contact.
    async fn set_contact_phones(&self, _id: &ContactId, _phones: Vec<String>) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_contact_phones"))
    }
    /// Set or (`None`) clear a WeCom corporation remark.
    async fn set_contact_corporation_remark(&self, _id: &ContactId, _remark: Option<String>) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_contact_corporation_remark"))
    }
    /// Set or (`None`) clear a contact's description.
    async fn set_contact_description(&self, _id: &ContactId, _description: Option<String>) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_contact_description"))
    }

    // ---- friendships --------------------------------------------------------------------------
    /// One friend request.
    async fn friendship(&self, _id: &FriendshipId) -> BackendResult<Friendship> {
        Err(BackendError::Unsupported("friendship"))
    }
    /// Find a stranger by phone number.
    async fn friendship_search_phone(&self, _phone: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::Unsupported("friendship_search_phone"))
    }
    /// Find a stranger by WeChat handle.
    async fn friendship_search_handle(&self, _handle: &str) -> BackendResult<Option<ContactId>> {
        Err(BackendError::Unsupported("friendship_search_handle"))
    }
    /// Send a friend request.
    async fn friendship_add(&self, _contact: &ContactId, _hello: String, _referrer: Referrer) -> BackendResult<()> {
        Err(BackendError::Unsupported("friendship_add"))
    }
    /// Accept a received friend request.
    async fn friendship_accept(&self, _id: &FriendshipId) -> BackendResult<()> {
        Err(BackendError::Unsupported("friendship_accept"))
    }

    // ---- messages -----------------------------------------------------------------------------
    /// One message.
    async fn message(&self, _id: &MessageId) -> BackendResult<Message> {
        Err(BackendError::Unsupported("message"))
    }
    /// The contact shared by a contact-card message.
    async fn message_contact(&self, _id: &MessageId) -> BackendResult<ContactId> {
        Err(BackendError::Unsupported("message_contact"))
    }
    /// The file of an attachment, video, audio or emoticon message.
    async fn message_file(&self, _id: &MessageId) -> BackendResult<FileBox> {
        Err(BackendError::Unsupported("message_file"))
    }
    /// One rendition of an image message.
    async fn message_image(&self, _id: &MessageId, _kind: ImageType) -> BackendResult<FileBox> {
        Err(BackendError::Unsupported("message_image"))
    }
    /// The card of a mini-program message.
    async fn message_mini_program(&self, _id: &MessageId) -> BackendResult<MiniProgram> {
        Err(BackendError::Unsupported("message_mini_program"))
    }
    /// The card of a link message.
    async fn message_url(&self, _id: &MessageId) -> BackendResult<UrlLink> {
        Err(BackendError::Unsupported("message_url"))
    }
    /// The place of a location message.
    async fn message_location(&self, _id: &MessageId) -> BackendResult<Location> {
        Err(BackendError::Unsupported("message_location"))
    }
    /// Recall a message the bot sent. `false` when the platform refused (too old, …).
    async fn message_recall(&self, _id: &MessageId) -> BackendResult<bool> {
        Err(BackendError::Unsupported("message_recall"))
    }
    /// Forward a message into a conversation; the new message's id when the platform tells it.
    async fn message_forward(&self, _to: &ConversationId, _id: &MessageId) -> BackendResult<Option<MessageId>> {
        Err(BackendError::Unsupported("message_forward"))
    }
    /// Send into a conversation; the new message's id when the platform tells it.
    async fn send(&self, _to: &ConversationId, _content: Outgoing) -> BackendResult<Option<MessageId>> {
        Err(BackendError::Unsupported("send"))
    }

    // ---- rooms --------------------------------------------------------------------------------
    /// Every room the bot is in.
    async fn room_list(&self) -> BackendResult<Vec<RoomId>> {
        Err(BackendError::Unsupported("room_list"))
    }
    /// One room.
    async fn room(&self, _id: &RoomId) -> BackendResult<Room> {
        Err(BackendError::Unsupported("room"))
    }
    /// Add (or with `invite_only`, invite) contacts to a room.
    async fn room_add(&self, _room: &RoomId, _contacts: Vec<ContactId>, _invite_only: bool) -> BackendResult<()> {
        Err(BackendError::Unsupported("room_add"))
    }
    /// Remove members from a room.
    async fn room_del(&self, _room: &RoomId, _contacts: Vec<ContactId>) -> BackendResult<()> {
        Err(BackendError::Unsupported("room_del"))
    }
    /// A room's avatar.
    async fn room_avatar(&self, _room: &RoomId) -> BackendResult<FileBox> {
        Err(BackendError::Unsupported("room_avatar"))
    }
    /// Create a room with these contacts (and the bot).
    async fn room_create(&self, _contacts: Vec<ContactId>, _topic: String) -> BackendResult<RoomId> {
        Err(BackendError::Unsupported("room_create"))
    }
    /// Leave a room.
    async fn room_quit(&self, _room: &RoomId) -> BackendResult<()> {
        Err(BackendError::Unsupported("room_quit"))
    }
    /// Change a room's topic.
    async fn set_room_topic(&self, _room: &RoomId, _topic: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_room_topic"))
    }
    /// The text of a room's QR code.
    async fn room_qrcode(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::Unsupported("room_qrcode"))
    }
    /// A room's announcement.
    async fn room_announce(&self, _room: &RoomId) -> BackendResult<String> {
        Err(BackendError::Unsupported("room_announce"))
    }
    /// Change a room's announcement.
    async fn set_room_announce(&self, _room: &RoomId, _text: String) -> BackendResult<()> {
        Err(BackendError::Unsupported("set_room_announce"))
    }
    /// One member of a room.
    async fn room_member(&self, _room: &RoomId, _member: &ContactId) -> BackendResult<RoomMember> {
        Err(BackendError::Unsupported("room_member"))
    }
    /// Every member of a room.
    async fn room_members(&self, _room: &RoomId) -> BackendResult<Vec<ContactId>> {
        Err(BackendError::Unsupported("room_members"))
    }
    /// One room invitation.
    async fn room_invitation(&self, _id: &RoomInvitationId) -> BackendResult<RoomInvitation> {
        Err(BackendError::Unsupported("room_invitation"))
    }
    /// Accept a room invitation.
    async fn room_invitation_accept(&self, _id: &RoomInvitationId) -> BackendResult<()> {
        Err(BackendError::Unsupported("room_invitation_accept"))
    }

    // ---- tags ---------------------------------------------------------------------------------
    /// Tag a contact (creating the tag if needed).
    async fn tag_contact_add(&self, _tag: &TagId, _contact: &ContactId) -> BackendResult<()> {
        Err(BackendError::Unsupported("tag_contact_add"))
    }
    /// Untag a contact.
    async fn tag_contact_remove(&self, _tag: &TagId, _contact: &ContactId) -> BackendResult<()> {
        Err(BackendError::Unsupported("tag_contact_remove"))
    }
    /// Delete a tag from every contact.
    async fn tag_delete(&self, _tag: &TagId) -> BackendResult<()> {
        Err(BackendError::Unsupported("tag_delete"))
    }
    /// The tags of one contact, or every tag.
    async fn tag_list(&self, _contact: Option<&ContactId>) -> BackendResult<Vec<TagId>> {
        Err(BackendError::Unsupported("tag_list"))
    }

    // ---- conversations ------------------------------------------------------------------------
    /// Mark a conversation read (or unread); the resulting state.
    async fn conversation_read(&self, _id: &ConversationId, _has_read: bool) -> BackendResult<bool> {
        Err(BackendError::Unsupported("conversation_read"))
    }
}

/// The backends this build knows, by the name `--backend` takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// The embedded simulated WeChat world.
    Mock,
    /// A WeChat Official Account (公众号): webhook on the side port, WeChat's REST API.
    OfficialAccount,
    /// Another Wechaty puppet service, re-served (`--upstream-endpoint`, `--upstream-token`).
    Upstream,
    /// A personal WeChat account through Tencent's iLink bot API (QR login, long-poll).
    Ilink,
    /// Personal WeChat through the web-WeChat protocol (itchat's, wechat4u's).
    Web,
}
