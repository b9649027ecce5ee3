#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod convert;
pub mod event;
pub mod filebox;
pub mod ids;
pub mod model;

/// Code generated from `proto/`.
pub mod pb {
    /// The `wechaty` package: the `Puppet` service.
    #[allow(missing_docs, clippy::all)]
    pub mod wechaty {
        tonic::include_proto!("wechaty");
        /// The `wechaty.puppet` package: every message and enum of the contract.
        pub mod puppet {
            tonic::include_proto!("wechaty.puppet");
        }
    }
    /// The `puppet_rs.v1` package: our extensions (resumable event feed, ...).
    #[allow(missing_docs, clippy::all)]
    pub mod puppet_rs {
        /// Version 1 of the extensions.
        pub mod v1 {
            tonic::include_proto!("puppet_rs.v1");
        }
    }
    /// Encoded `FileDescriptorSet` of every service above, for server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("puppet_descriptor");
}

pub use ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
