//! What a write call's answer promises: the calls that change something are refused while the
//! store refuses writes (`RESOURCE_EXHAUSTED` saying why: its size cap, a full disk), and under
//! `--durability always` their success is sent only once everything they wrote — the change, the
//! message, its events — is committed.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use crate::store::Store;

/// Calls that only read (or stream what is there): never held back by the store.
const READS: [&str; 30] = [
    "/wechaty.Puppet/Version",
    "/wechaty.Puppet/Event",
    "/wechaty.Puppet/Stop",
    "/wechaty.Puppet/ContactList",
    "/wechaty.Puppet/ContactPayload",
    "/wechaty.Puppet/ContactSelfQRCode",
    "/wechaty.Puppet/FriendshipPayload",
    "/wechaty.Puppet/FriendshipSearchPhone",
    "/wechaty.Puppet/FriendshipSearchWeixin",
    "/wechaty.Puppet/FriendshipSearchHandle",
    "/wechaty.Puppet/MessagePayload",
    "/wechaty.Puppet/MessageContact",
    "/wechaty.Puppet/MessageFile",
    "/wechaty.Puppet/MessageImage",
    "/wechaty.Puppet/MessageFileStream",
    "/wechaty.Puppet/MessageImageStream",
    "/wechaty.Puppet/MessageMiniProgram",
    "/wechaty.Puppet/MessageUrl",
    "/wechaty.Puppet/MessageLocation",
    "/wechaty.Puppet/RoomList",
    "/wechaty.Puppet/RoomPayload",
    "/wechaty.Puppet/RoomAvatar",
    "/wechaty.Puppet/RoomQRCode",
    "/wechaty.Puppet/RoomMemberList",
    "/wechaty.Puppet/RoomMemberPayload",
    "/wechaty.Puppet/RoomInvitationPayload",
    "/wechaty.Puppet/TagContactList",
    "/wechaty.Puppet/Download",
    "/puppet_rs.v1.MockWorld/ListMessages",
    "/puppet_rs.v1.OfficialAccount/GetFollower",
];

/// True for a call that changes something (everything of `wechaty.Puppet`, `MockWorld` and
/// `OfficialAccount` that is not a plain read).
fn writes(path: &str) -> bool {
    let ours = ["/wechaty.Puppet/", "/puppet_rs.v1.MockWorld/", "/puppet_rs.v1.OfficialAccount/"];
    ours.iter().any(|p| path.starts_with(p))
        && !READS.contains(&path)
        && !path.starts_with("/puppet_rs.v1.OfficialAccount/Get")
        && !path.starts_with("/puppet_rs.v1.OfficialAccount/List")
        && path != "/puppet_rs.v1.OfficialAccount/Events"
}

/// See the module docs.
#[derive(Clone, Debug)]
pub struct DurableWritesLayer {
    /// The account's store.
    pub store: Store,
}

impl<S> Layer<S> for DurableWritesLayer {
    type Service = DurableWrites<S>;
    fn layer(&self, inner: S) -> Self::Service {
        DurableWrites { inner, store: self.store.clone() }
    }
}

/// See [`DurableWritesLayer`].
#[derive(Clone, Debug)]
pub struct DurableWrites<S> {
    inner: S,
    store: Store,
}

impl<S: tonic::server::NamedService> tonic::server::NamedService for DurableWrites<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn refused(e: crate::store::StoreError) -> Status {
    Status::resource_exhausted(format!("{e}; reads still work"))
}

impl<S, B, RB> Service<http::Request<B>> for DurableWrites<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if !writes(req.uri().path()) {
            return Box::pin(self.inner.call(req));
        }
        if let Err(e) = self.store.writable() {
            return Box::pin(std::future::ready(Ok(refused(e).into_http())));
        }
        let store = self.store.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            let failed = response.headers().get("grpc-status").is_some_and(|s| s != "0");
            if !failed && let Err(e) = store.settled().await {
                return Ok(refused(e).into_http());
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::writes;

    #[test]
    fn changes_are_writes_and_reads_are_not() {
        for w in [
            "/wechaty.Puppet/MessageSendText",
            "/wechaty.Puppet/ContactAlias",
            "/wechaty.Puppet/RoomTopic",
            "/wechaty.Puppet/Upload",
            "/puppet_rs.v1.MockWorld/Say",
            "/puppet_rs.v1.OfficialAccount/Reply",
        ] {
            assert!(writes(w), "{w}");
        }
        for r in [
            "/wechaty.Puppet/MessagePayload",
            "/wechaty.Puppet/Event",
            "/puppet_rs.v1.EventFeed/Subscribe",
            "/grpc.health.v1.Health/Check",
            "/puppet_rs.v1.MockWorld/ListMessages",
            "/puppet_rs.v1.OfficialAccount/GetMenu",
        ] {
            assert!(!writes(r), "{r}");
        }
    }
}
