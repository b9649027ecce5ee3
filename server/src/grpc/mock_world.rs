//! `puppet_rs.v1.MockWorld`: translation onto the mock backend's world controls.

use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, RoomId};
use puppet_proto::pb::puppet_rs::v1 as ext;
use tonic::{Request, Response, Status};

use super::convert::{non_empty, required};
use crate::backend::BackendError;
use crate::backend::mock::MockBackend;
use crate::backend::mock::control::ContactUpdate;

type RpcResult<T> = Result<Response<T>, Status>;

/// The world-control service over one mock backend.
#[derive(Clone)]
pub struct MockWorldService {
    mock: MockBackend,
}

impl MockWorldService {
    /// Controls `mock`'s world.
    pub fn new(mock: MockBackend) -> Self {
        Self { mock }
    }
}

fn err(e: BackendError) -> Status {
    super::status::to_status("mock", e)
}

fn contact(field: &str, v: String) -> Result<ContactId, Status> {
    required(field, v).map(ContactId)
}

fn room(v: String) -> Option<RoomId> {
    non_empty(Some(v)).map(RoomId)
}

#[tonic::async_trait]
impl ext::mock_world_server::MockWorld for MockWorldService {
    async fn say(&self, req: Request<ext::SayRequest>) -> RpcResult<ext::SayResponse> {
        let r = req.into_inner();
        let from = contact("from_id", r.from_id)?;
        let mentions = r.mention_ids.into_iter().filter(|m| !m.is_empty()).map(ContactId).collect();
        let id = self.mock.say(&from, room(r.room_id).as_ref(), r.text, mentions).map_err(err)?;
        Ok(Response::new(ext::SayResponse { message_id: id.0 }))
    }

    async fn send_file(&self, req: Request<ext::SendFileRequest>) -> RpcResult<ext::SayResponse> {
        let r = req.into_inner();
        let from = contact("from_id", r.from_id)?;
        let id = self.mock.send_file(&from, room(r.room_id).as_ref(), r.name, &r.data).await.map_err(err)?;
        Ok(Response::new(ext::SayResponse { message_id: id.0 }))
    }

    async fn request_friendship(
        &self,
        req: Request<ext::RequestFriendshipRequest>,
    ) -> RpcResult<ext::RequestFriendshipResponse> {
        let r = req.into_inner();
        let id = contact("contact_id", r.contact_id)?;
        let f = self.mock.request_friendship(&id, r.name, r.hello).map_err(err)?;
        Ok(Response::new(ext::RequestFriendshipResponse { friendship_id: f.0 }))
    }

    async fn accept_friendship(
        &self,
        req: Request<ext::AcceptFriendshipRequest>,
    ) -> RpcResult<ext::AcceptFriendshipResponse> {
        let id = FriendshipId(required("friendship_id", req.into_inner().friendship_id)?);
        self.mock.accept_friendship(&id).map_err(err)?;
        Ok(Response::new(ext::AcceptFriendshipResponse {}))
    }

    async fn invite_bot(&self, req: Request<ext::InviteBotRequest>) -> RpcResult<ext::InviteBotResponse> {
        let r = req.into_inner();
        let room_id = RoomId(required("room_id", r.room_id)?);
        let inviter = contact("inviter_id", r.inviter_id)?;
        let id = self.mock.invite_bot(&room_id, &inviter).map_err(err)?;
        Ok(Response::new(ext::InviteBotResponse { room_invitation_id: id.0 }))
    }

    async fn join_room(&self, req: Request<ext::JoinRoomRequest>) -> RpcResult<ext::JoinRoomResponse> {
        let r = req.into_inner();
        let room_id = RoomId(required("room_id", r.room_id)?);
        let inviter = contact("inviter_id", r.inviter_id)?;
        let who = r.contact_ids.into_iter().filter(|c| !c.is_empty()).map(ContactId).collect();
        self.mock.join_room(&room_id, who, &inviter).map_err(err)?;
        Ok(Response::new(ext::JoinRoomResponse {}))
    }

    async fn leave_room(&self, req: Request<ext::LeaveRoomRequest>) -> RpcResult<ext::LeaveRoomResponse> {
        let r = req.into_inner();
        let room_id = RoomId(required("room_id", r.room_id)?);
        let who = r.contact_ids.into_iter().filter(|c| !c.is_empty()).map(ContactId).collect();
        let remover = non_empty(Some(r.remover_id)).map(ContactId);
        self.mock.leave_room(&room_id, who, remover.as_ref()).map_err(err)?;
        Ok(Response::new(ext::LeaveRoomResponse {}))
    }

    async fn change_topic(&self, req: Request<ext::ChangeTopicRequest>) -> RpcResult<ext::ChangeTopicResponse> {
        let r = req.into_inner();
        let room_id = RoomId(required("room_id", r.room_id)?);
        let changer = contact("changer_id", r.changer_id)?;
        self.mock.change_topic(&room_id, &changer, r.topic).map_err(err)?;
        Ok(Response::new(ext::ChangeTopicResponse {}))
    }

    async fn update_contact(&self, req: Request<ext::UpdateContactRequest>) -> RpcResult<ext::UpdateContactResponse> {
        let r = req.into_inner();
        let id = contact("contact_id", r.contact_id)?;
        let update = ContactUpdate { name: r.name, signature: r.signature, city: r.city, avatar: r.avatar };
        self.mock.update_contact(&id, update).map_err(err)?;
        Ok(Response::new(ext::UpdateContactResponse {}))
    }

    async fn force_logout(&self, req: Request<ext::ForceLogoutRequest>) -> RpcResult<ext::ForceLogoutResponse> {
        self.mock.force_logout(req.into_inner().reason).map_err(err)?;
        Ok(Response::new(ext::ForceLogoutResponse {}))
    }

    async fn list_messages(&self, req: Request<ext::ListMessagesRequest>) -> RpcResult<ext::ListMessagesResponse> {
        let id = ConversationId(required("conversation_id", req.into_inner().conversation_id)?);
        let messages = self.mock.list_messages(&id).await.map_err(err)?;
        Ok(Response::new(ext::ListMessagesResponse { messages: messages.into_iter().map(Into::into).collect() }))
    }

    async fn flood(&self, req: Request<ext::FloodRequest>) -> RpcResult<ext::FloodResponse> {
        let r = req.into_inner();
        let (first_seq, last_seq) = self.mock.flood(r.count, r.per_second).await.map_err(err)?;
        Ok(Response::new(ext::FloodResponse { first_seq, last_seq }))
    }
}
