//! A Rust client for puppet-rs (and any `wechaty.Puppet` service).
//!
//! * [`Client`]: one HTTP/2 connection with the token attached, and a typed method for every call of
//!   the contract, taking and returning the domain types of [`puppet_proto`]. Failures are an
//!   [`Error`] that keeps the gRPC code and message.
//! * [`bot`]: a Wechaty-style bot API — handlers for scans, logins, messages (by kind, exact text or
//!   regex), friendships and room changes; handles that act; events resumed across reconnects.
//!
//! ```no_run
//! # async fn demo() -> Result<(), puppet_client::Error> {
//! let client = puppet_client::Client::connect("127.0.0.1:8788", "insecure_token").await?;
//! println!("{}", client.version().await?);
//! for id in client.contact_list().await? {
//!     println!("{}", client.contact(&id).await?.name);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bot;
mod client;

pub use client::{AuthChannel, Client, ConnectOptions, WechatyToken};

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint, token or TLS settings are unusable, or a local file could not be read.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The server sent something this client cannot read (a malformed event payload, FileBox, …).
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// Events were lost: the resume point had left the server's retention window.
    #[error("events were lost while disconnected: {0}")]
    Gap(String),
    /// A handler failed for a reason of its own.
    #[error("{0}")]
    Handler(String),
}

impl Error {
    /// The gRPC code, when the server answered.
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Self::Status(s) => Some(s.code()),
            _ => None,
        }
    }
}
