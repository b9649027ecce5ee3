//! A Rust client for puppet-rs (and any `wechaty.Puppet` service).
//!
//! [`Client::connect`] opens one HTTP/2 connection that every call shares and adds the
//! `authorization: Wechaty <token>` header. The generated stubs are reachable through
//! [`Client::puppet`], [`Client::feed`] and [`Client::world`]; [`Error`] keeps the gRPC code and
//! message of a failed call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), puppet_client::Error> {
//! use puppet_proto::pb::wechaty::puppet::VersionRequest;
//! let client = puppet_client::Client::connect("http://127.0.0.1:8788", "insecure_token").await?;
//! let version = client.puppet().version(VersionRequest {}).await?.into_inner().version;
//! println!("{version}");
//! # Ok(()) }
//! ```

use puppet_proto::pb::puppet_rs::v1::event_feed_client::EventFeedClient;
use puppet_proto::pb::puppet_rs::v1::mock_world_client::MockWorldClient;
use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest message the client accepts (inline files can be large).
const MAX_MESSAGE: usize = 256 << 20;

/// What can go wrong talking to the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The endpoint is not a valid URI, or the token cannot travel in a header.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The connection could not be established.
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    /// The server answered with an error status.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
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

/// A connection to a puppet service.
#[derive(Clone)]
pub struct Client {
    channel: Channel,
    token: WechatyToken,
}

impl Client {
    /// Connects to `endpoint` (`http://host:port`, or `host:port`) with `token`.
    pub async fn connect(endpoint: &str, token: &str) -> Result<Self, Error> {
        let uri = if endpoint.contains("://") { endpoint.to_owned() } else { format!("http://{endpoint}") };
        let endpoint = Endpoint::from_shared(uri).map_err(|e| Error::Config(format!("endpoint: {e}")))?;
        let header = format!("Wechaty {token}")
            .parse()
            .map_err(|_| Error::Config("the token contains characters a header cannot carry".into()))?;
        let channel = endpoint.initial_stream_window_size(4 << 20).connect().await?;
        Ok(Self { channel, token: WechatyToken(header) })
    }

    /// The `wechaty.Puppet` service.
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
}
