//! Identifier newtypes. On the wire every id is a plain string; in code the type says what it names.

macro_rules! id_type {
    ($($(#[$doc:meta])+ $name:ident),* $(,)?) => {$(
        $(#[$doc])+
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as it travels on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// True for the empty string, which the wire uses for "none".
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    )*};
}

id_type!(
    /// A contact (a person, an official account, or the bot itself).
    ContactId,
    /// A group chat.
    RoomId,
    /// A message.
    MessageId,
    /// A friend request.
    FriendshipId,
    /// An invitation to join a room.
    RoomInvitationId,
    /// A contact tag.
    TagId,
    /// Where a message goes: a contact id (direct chat) or a room id (group chat). Only the backend
    /// knows which; WeChat room ids end in `@chatroom`.
    ConversationId,
);
