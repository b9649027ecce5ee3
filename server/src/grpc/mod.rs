//! The gRPC layer: translation only. Requests become domain calls on the [`Backend`], results and
//! errors become responses and statuses. No state and no business logic live here.

pub mod admin;
pub mod auth;
mod convert;
pub mod durable;
pub mod event;
pub mod files;
pub mod ilink;
pub mod mock_world;
pub mod official_account;
pub mod size;
pub mod status;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use puppet_proto::ids::{ContactId, ConversationId, FriendshipId, MessageId, RoomId, RoomInvitationId, TagId};
use puppet_proto::model::{ImageType, MiniProgram, PayloadType, UrlLink};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use puppet_proto::pb::wechaty::puppet_server::Puppet;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

use crate::backend::{Backend, BackendError, Outgoing, Referrer};
use crate::blobs::BlobStore;
use crate::events::{EventBus, StartAt};
use convert::{card, file_box, legacy_json, non_empty};
use event::{EventStream, pump};
use files::{ClientKind, blob_status};
use puppet_proto::filebox::{FileBox, FileBoxSource};

type RpcResult<T> = Result<Response<T>, Status>;
type BoxStream<T> = std::pin::Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The `wechaty.Puppet` service over one backend.
#[derive(Clone)]
pub struct PuppetService {
    backend: Arc<dyn Backend>,
    bus: EventBus,
    blobs: BlobStore,
    heartbeat: Duration,
    version: Arc<str>,
}

impl PuppetService {
    /// Serves `backend`, streaming events from `bus` with a heartbeat every `heartbeat`.
    pub fn new(backend: Arc<dyn Backend>, bus: EventBus, blobs: BlobStore, heartbeat: Duration) -> Self {
        let version = format!("puppet-rs/{} ({} backend)", env!("CARGO_PKG_VERSION"), backend.name()).into();
        Self { backend, bus, blobs, heartbeat, version }
    }

    fn err(&self, e: BackendError) -> Status {
        status::to_status(self.backend.name(), e)
    }

    /// Removes the blob a call wrote for a file when the backend then refused the call: nobody
    /// will ever ask for it.
    async fn discard_on_error<T>(&self, outcome: &Result<T, BackendError>, created: Option<String>) {
        if let (Err(_), Some(id)) = (outcome, created)
            && let Err(e) = self.blobs.remove(&id).await
        {
            tracing::debug!(blob = %id, error = %e, "the blob of a failed call was gone already");
        }
    }
}

fn ok<T>(t: T) -> RpcResult<T> {
    Ok(Response::new(t))
}

fn contact_id(field: &str, v: String) -> Result<ContactId, Status> {
    validate::id(field, v).map(ContactId)
}
fn room_id(field: &str, v: String) -> Result<RoomId, Status> {
    validate::id(field, v).map(RoomId)
}
fn message_id(field: &str, v: String) -> Result<MessageId, Status> {
    validate::id(field, v).map(MessageId)
}
fn conversation(v: String) -> Result<ConversationId, Status> {
    validate::id("conversation_id", v).map(ConversationId)
}
/// An optional id field (the wire's "" for none), checked like any id.
fn optional(field: &str, v: Option<String>) -> Result<Option<String>, Status> {
    non_empty(v).map(|v| validate::optional_id(field, v)).transpose()
}

/// The current and deprecated id fields of every "message sent" response.
macro_rules! sent {
    ($ty:ident, $id:expr) => {{
        let id = $id.map(|m: MessageId| m.0).unwrap_or_default();
        #[allow(deprecated)]
        let r = pb::$ty { id_string_value_deprecated: non_empty(Some(id.clone())), id };
        r
    }};
}

#[tonic::async_trait]
impl Puppet for PuppetService {
    type MessageFileStreamStream = BoxStream<pb::MessageFileStreamResponse>;
    type MessageImageStreamStream = BoxStream<pb::MessageImageStreamResponse>;
    type EventStream = EventStream<pb::EventResponse>;
    type DownloadStream = BoxStream<pb::DownloadResponse>;

    async fn message_file_stream(
        &self,
        req: Request<pb::MessageFileStreamRequest>,
    ) -> RpcResult<Self::MessageFileStreamStream> {
        let id = message_id("id", req.into_inner().id)?;
        let fb = self.backend.message_file(&id).await.map_err(|e| self.err(e))?;
        let first = pb::MessageFileStreamResponse { file_box_chunk: Some(name_chunk(&fb)) };
        let chunks = files::stream_bytes(&self.blobs, &fb, Some(first), |data| pb::MessageFileStreamResponse {
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(data), name: None }),
        });
        ok(Box::pin(chunks.await?))
    }

    async fn message_image_stream(
        &self,
        req: Request<pb::MessageImageStreamRequest>,
    ) -> RpcResult<Self::MessageImageStreamStream> {
        let r = req.into_inner();
        let id = message_id("id", r.id)?;
        let fb = self.backend.message_image(&id, image_type(r.r#type)?).await.map_err(|e| self.err(e))?;
        let first = pb::MessageImageStreamResponse { file_box_chunk: Some(name_chunk(&fb)) };
        let chunks = files::stream_bytes(&self.blobs, &fb, Some(first), |data| pb::MessageImageStreamResponse {
            file_box_chunk: Some(pb::FileBoxChunk { data: Some(data), name: None }),
        });
        ok(Box::pin(chunks.await?))
    }

    /// Message order (as the Node client sends it): `conversation_id`, then a chunk with the file
    /// name, then chunks with data.
    async fn message_send_file_stream(
        &self,
        req: Request<Streaming<pb::MessageSendFileStreamRequest>>,
    ) -> RpcResult<pb::MessageSendFileStreamResponse> {
        let mut stream = req.into_inner();
        let mut to = None;
        let mut name = None;
        let mut writer = None;
        while let Some(msg) = stream.message().await? {
            if let Some(c) = msg.conversation_id {
                to = Some(conversation(c)?);
            }
            let Some(chunk) = msg.file_box_chunk else { continue };
            if let Some(n) = chunk.name {
                files::check_name(&n)?;
                name = Some(n);
            }
            if let Some(data) = chunk.data {
                if to.is_none() || name.is_none() {
                    return Err(Status::invalid_argument(
                        "MessageSendFileStream: send `conversation_id` first, then a chunk with the file name, then data",
                    ));
                }
                if writer.is_none() {
                    writer = Some(self.blobs.writer().await.map_err(blob_status)?);
                }
                if let Some(w) = writer.as_mut() {
                    w.write(&data).await.map_err(blob_status)?;
                }
            }
        }
        let to = to.ok_or_else(|| Status::invalid_argument("MessageSendFileStream: `conversation_id` is missing"))?;
        let name = name.ok_or_else(|| Status::invalid_argument("MessageSendFileStream: the file name is missing"))?;
        let writer = writer.ok_or_else(|| Status::invalid_argument("MessageSendFileStream: the file has no data"))?;
        let meta = writer.finish().await.map_err(blob_status)?;
        let mut fb = FileBox::new(name, FileBoxSource::Uuid(meta.id.clone()));
        fb.size = Some(meta.size);
        let sent = self.backend.send(&to, Outgoing::File(fb)).await;
        self.discard_on_error(&sent, Some(meta.id)).await;
        let id = sent.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendFileStreamResponse, id))
    }

    // ---- base ---------------------------------------------------------------------------------

    async fn start(&self, _: Request<pb::StartRequest>) -> RpcResult<pb::StartResponse> {
        self.backend.start().await.map_err(|e| self.err(e))?;
        ok(pb::StartResponse {})
    }

    async fn stop(&self, _: Request<pb::StopRequest>) -> RpcResult<pb::StopResponse> {
        self.backend.stop().await.map_err(|e| self.err(e))?;
        ok(pb::StopResponse {})
    }

    async fn logout(&self, _: Request<pb::LogoutRequest>) -> RpcResult<pb::LogoutResponse> {
        self.backend.logout().await.map_err(|e| self.err(e))?;
        ok(pb::LogoutResponse {})
    }

    async fn ding(&self, req: Request<pb::DingRequest>) -> RpcResult<pb::DingResponse> {
        let data = validate::ding(req.into_inner().data)?;
        self.backend.ding(data).await.map_err(|e| self.err(e))?;
        ok(pb::DingResponse {})
    }

    async fn version(&self, _: Request<pb::VersionRequest>) -> RpcResult<pb::VersionResponse> {
        ok(pb::VersionResponse { version: self.version.to_string() })
    }

    async fn event(&self, req: Request<pb::EventRequest>) -> RpcResult<Self::EventStream> {
        // Upstream allows one Event stream; we allow any number, each with its own cursor. A Juzi
        // client resumes after the `seq` it saw last (the bus refuses a range it no longer holds).
        let seq = req.into_inner().seq;
        let start = match u64::try_from(seq) {
            Ok(after) if after > 0 => StartAt::After(after),
            Ok(_) => StartAt::Live { replay_state: true },
            Err(_) => return Err(Status::invalid_argument(format!("`seq` {seq} is negative"))),
        };
        let sub = self.bus.subscribe(start).map_err(|e| Status::out_of_range(e.to_string()))?;
        ok(pump(sub, self.heartbeat))
    }

    async fn dirty_payload(&self, req: Request<pb::DirtyPayloadRequest>) -> RpcResult<pb::DirtyPayloadResponse> {
        let r = req.into_inner();
        let kind = PayloadType::from_wire(r.r#type)
            .filter(|k| *k != PayloadType::Unknown)
            .ok_or_else(|| Status::invalid_argument(format!("`type` {} is not a payload type (1-5)", r.r#type)))?;
        let id = validate::id("id", r.id)?;
        self.backend.dirty_payload(kind, id).await.map_err(|e| self.err(e))?;
        ok(pb::DirtyPayloadResponse {})
    }

    // ---- contact self -------------------------------------------------------------------------

    async fn contact_self_qr_code(
        &self,
        _: Request<pb::ContactSelfQrCodeRequest>,
    ) -> RpcResult<pb::ContactSelfQrCodeResponse> {
        let qrcode = self.backend.self_qrcode().await.map_err(|e| self.err(e))?;
        ok(pb::ContactSelfQrCodeResponse { qrcode })
    }

    async fn contact_self_name(
        &self,
        req: Request<pb::ContactSelfNameRequest>,
    ) -> RpcResult<pb::ContactSelfNameResponse> {
        let name = validate::required_text("name", req.into_inner().name, validate::MAX_NAME_CHARS)?;
        self.backend.set_self_name(name).await.map_err(|e| self.err(e))?;
        ok(pb::ContactSelfNameResponse {})
    }

    async fn contact_self_signature(
        &self,
        req: Request<pb::ContactSelfSignatureRequest>,
    ) -> RpcResult<pb::ContactSelfSignatureResponse> {
        let signature = validate::text("signature", req.into_inner().signature, validate::MAX_LINE_CHARS)?;
        self.backend.set_self_signature(signature).await.map_err(|e| self.err(e))?;
        ok(pb::ContactSelfSignatureResponse {})
    }

    // ---- contacts -----------------------------------------------------------------------------

    async fn contact_payload(&self, req: Request<pb::ContactPayloadRequest>) -> RpcResult<pb::ContactPayloadResponse> {
        let id = contact_id("id", req.into_inner().id)?;
        let c = self.backend.contact(&id).await.map_err(|e| self.err(e))?;
        ok(c.into())
    }

    #[allow(deprecated)]
    async fn contact_alias(&self, req: Request<pb::ContactAliasRequest>) -> RpcResult<pb::ContactAliasResponse> {
        let r = req.into_inner();
        let id = contact_id("id", r.id)?;
        if let Some(alias) = r.alias.or(r.alias_string_value_deprecated) {
            let alias = validate::text("alias", alias, validate::MAX_NAME_CHARS)?;
            self.backend.set_contact_alias(&id, alias).await.map_err(|e| self.err(e))?;
            return ok(pb::ContactAliasResponse::default());
        }
        let alias = self.backend.contact(&id).await.map_err(|e| self.err(e))?.alias;
        // Node needs the wrapper when the alias is empty, and Python always reads it.
        ok(pb::ContactAliasResponse { alias_string_value_deprecated: Some(alias.clone()), alias })
    }

    #[allow(deprecated)]
    async fn contact_avatar(&self, req: Request<pb::ContactAvatarRequest>) -> RpcResult<pb::ContactAvatarResponse> {
        let (metadata, _, r) = req.into_parts();
        let req_meta = &metadata;
        let id = contact_id("id", r.id)?;
        if let Some(json) = r.file_box.or(r.filebox_string_value_deprecated) {
            let (fb, created) = files::incoming(&self.blobs, file_box("file_box", &json)?).await?;
            let set = self.backend.set_contact_avatar(&id, fb).await;
            self.discard_on_error(&set, created).await;
            set.map_err(|e| self.err(e))?;
            return ok(pb::ContactAvatarResponse::default());
        }
        let fb = self.backend.contact_avatar(&id).await.map_err(|e| self.err(e))?;
        let json = files::outgoing(&self.blobs, fb, ClientKind::of(req_meta)).await?.to_json();
        ok(pb::ContactAvatarResponse { filebox_string_value_deprecated: Some(json.clone()), file_box: json })
    }

    async fn contact_phone(&self, req: Request<pb::ContactPhoneRequest>) -> RpcResult<pb::ContactPhoneResponse> {
        let r = req.into_inner();
        let id = contact_id("contact_id", r.contact_id)?;
        let phones = validate::phones(r.phones)?;
        self.backend.set_contact_phones(&id, phones.clone()).await.map_err(|e| self.err(e))?;
        ok(pb::ContactPhoneResponse { phones })
    }

    #[allow(deprecated)]
    async fn contact_corporation_remark(
        &self,
        req: Request<pb::ContactCorporationRemarkRequest>,
    ) -> RpcResult<pb::ContactCorporationRemarkResponse> {
        let r = req.into_inner();
        let id = contact_id("contact_id", r.contact_id)?;
        // Node sends both fields for a value and neither for null (= clear).
        let remark = r.corporation_remark_string_value_deprecated.or(non_empty(Some(r.corporation_remark)));
        let remark = remark.map(|t| validate::text("corporation_remark", t, validate::MAX_LINE_CHARS)).transpose()?;
        self.backend.set_contact_corporation_remark(&id, remark).await.map_err(|e| self.err(e))?;
        ok(pb::ContactCorporationRemarkResponse {})
    }

    #[allow(deprecated)]
    async fn contact_description(
        &self,
        req: Request<pb::ContactDescriptionRequest>,
    ) -> RpcResult<pb::ContactDescriptionResponse> {
        let r = req.into_inner();
        let id = contact_id("contact_id", r.contact_id)?;
        let description = r.description_string_value_deprecated.or(non_empty(Some(r.description)));
        let description =
            description.map(|t| validate::text("description", t, validate::MAX_LINE_CHARS)).transpose()?;
        self.backend.set_contact_description(&id, description).await.map_err(|e| self.err(e))?;
        ok(pb::ContactDescriptionResponse {})
    }

    async fn contact_list(&self, _: Request<pb::ContactListRequest>) -> RpcResult<pb::ContactListResponse> {
        let ids = self.backend.contact_list().await.map_err(|e| self.err(e))?;
        ok(pb::ContactListResponse { ids: ids.into_iter().map(|c| c.0).collect() })
    }

    // ---- friendships --------------------------------------------------------------------------

    async fn friendship_payload(
        &self,
        req: Request<pb::FriendshipPayloadRequest>,
    ) -> RpcResult<pb::FriendshipPayloadResponse> {
        // The payload fields (Python sends the literal "null") are an old write path nobody needs.
        let id = FriendshipId(validate::id("id", req.into_inner().id)?);
        let f = self.backend.friendship(&id).await.map_err(|e| self.err(e))?;
        ok(f.into())
    }

    #[allow(deprecated)]
    async fn friendship_search_phone(
        &self,
        req: Request<pb::FriendshipSearchPhoneRequest>,
    ) -> RpcResult<pb::FriendshipSearchPhoneResponse> {
        let phone = validate::required_text("phone", req.into_inner().phone, 32)?;
        let found = self.backend.friendship_search_phone(&phone).await.map_err(|e| self.err(e))?;
        let id = found.map(|c| c.0);
        ok(pb::FriendshipSearchPhoneResponse {
            contact_id_string_value_deprecated: id.clone(),
            contact_id: id.unwrap_or_default(),
        })
    }

    async fn friendship_search_weixin(
        &self,
        req: Request<pb::FriendshipSearchHandleRequest>,
    ) -> RpcResult<pb::FriendshipSearchHandleResponse> {
        self.friendship_search_handle(req).await
    }

    #[allow(deprecated)]
    async fn friendship_search_handle(
        &self,
        req: Request<pb::FriendshipSearchHandleRequest>,
    ) -> RpcResult<pb::FriendshipSearchHandleResponse> {
        let handle = validate::required_text("weixin", req.into_inner().weixin, validate::MAX_NAME_CHARS)?;
        let found = self.backend.friendship_search_handle(&handle).await.map_err(|e| self.err(e))?;
        let id = found.map(|c| c.0);
        ok(pb::FriendshipSearchHandleResponse {
            contact_id_string_value_deprecated: id.clone(),
            contact_id: id.unwrap_or_default(),
        })
    }

    #[allow(deprecated)]
    async fn friendship_add(&self, req: Request<pb::FriendshipAddRequest>) -> RpcResult<pb::FriendshipAddResponse> {
        let r = req.into_inner();
        let id = contact_id("contact_id", r.contact_id)?;
        let given = r.referrer.unwrap_or_default();
        let referrer = Referrer {
            contact_id: optional(
                "referrer.contact_id",
                non_empty(Some(given.contact_id)).or(r.source_contact_id_string_value_deprecated),
            )?
            .map(ContactId),
            room_id: optional(
                "referrer.room_id",
                non_empty(Some(given.room_id)).or(r.source_room_id_string_value_deprecated),
            )?
            .map(RoomId),
        };
        let hello = validate::text("hello", r.hello, validate::MAX_LINE_CHARS)?;
        self.backend.friendship_add(&id, hello, referrer).await.map_err(|e| self.err(e))?;
        ok(pb::FriendshipAddResponse {})
    }

    async fn friendship_accept(
        &self,
        req: Request<pb::FriendshipAcceptRequest>,
    ) -> RpcResult<pb::FriendshipAcceptResponse> {
        let id = FriendshipId(validate::id("id", req.into_inner().id)?);
        self.backend.friendship_accept(&id).await.map_err(|e| self.err(e))?;
        ok(pb::FriendshipAcceptResponse {})
    }

    // ---- messages -----------------------------------------------------------------------------

    async fn message_file(&self, req: Request<pb::MessageFileRequest>) -> RpcResult<pb::MessageFileResponse> {
        let client = ClientKind::of(req.metadata());
        let id = message_id("id", req.into_inner().id)?;
        let fb = self.backend.message_file(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageFileResponse { file_box: files::outgoing(&self.blobs, fb, client).await?.to_json() })
    }

    async fn message_image(&self, req: Request<pb::MessageImageRequest>) -> RpcResult<pb::MessageImageResponse> {
        let client = ClientKind::of(req.metadata());
        let r = req.into_inner();
        let id = message_id("id", r.id)?;
        let fb = self.backend.message_image(&id, image_type(r.r#type)?).await.map_err(|e| self.err(e))?;
        ok(pb::MessageImageResponse { file_box: files::outgoing(&self.blobs, fb, client).await?.to_json() })
    }

    async fn message_send_file(
        &self,
        req: Request<pb::MessageSendFileRequest>,
    ) -> RpcResult<pb::MessageSendFileResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let (fb, created) = files::incoming(&self.blobs, file_box("file_box", &r.file_box)?).await?;
        let sent = self.backend.send(&to, Outgoing::File(fb)).await;
        self.discard_on_error(&sent, created).await;
        let id = sent.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendFileResponse, id))
    }

    async fn message_payload(&self, req: Request<pb::MessagePayloadRequest>) -> RpcResult<pb::MessagePayloadResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let m = self.backend.message(&id).await.map_err(|e| self.err(e))?;
        ok(m.into())
    }

    async fn message_contact(&self, req: Request<pb::MessageContactRequest>) -> RpcResult<pb::MessageContactResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let c = self.backend.message_contact(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageContactResponse { id: c.0 })
    }

    #[allow(deprecated)]
    async fn message_mini_program(
        &self,
        req: Request<pb::MessageMiniProgramRequest>,
    ) -> RpcResult<pb::MessageMiniProgramResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let m = self.backend.message_mini_program(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageMiniProgramResponse { mini_program_deprecated: legacy_json(&m), mini_program: Some(m.into()) })
    }

    #[allow(deprecated)]
    async fn message_url(&self, req: Request<pb::MessageUrlRequest>) -> RpcResult<pb::MessageUrlResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let u = self.backend.message_url(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageUrlResponse { url_link_deprecated: legacy_json(&u), url_link: Some(u.into()) })
    }

    async fn message_recall(&self, req: Request<pb::MessageRecallRequest>) -> RpcResult<pb::MessageRecallResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let success = self.backend.message_recall(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageRecallResponse { success })
    }

    async fn message_forward(&self, req: Request<pb::MessageForwardRequest>) -> RpcResult<pb::MessageForwardResponse> {
        let r = req.into_inner();
        let msg = message_id("message_id", r.message_id)?;
        let to = conversation(r.conversation_id)?;
        let id = self.backend.message_forward(&to, &msg).await.map_err(|e| self.err(e))?;
        ok(sent!(MessageForwardResponse, id))
    }

    async fn message_location(
        &self,
        req: Request<pb::MessageLocationRequest>,
    ) -> RpcResult<pb::MessageLocationResponse> {
        let id = message_id("id", req.into_inner().id)?;
        let l = self.backend.message_location(&id).await.map_err(|e| self.err(e))?;
        ok(pb::MessageLocationResponse { location: Some(l.into()) })
    }

    async fn message_send_contact(
        &self,
        req: Request<pb::MessageSendContactRequest>,
    ) -> RpcResult<pb::MessageSendContactResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let card = contact_id("contact_id", r.contact_id)?;
        let id = self.backend.send(&to, Outgoing::Contact(card)).await.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendContactResponse, id))
    }

    async fn message_send_text(
        &self,
        req: Request<pb::MessageSendTextRequest>,
    ) -> RpcResult<pb::MessageSendTextResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let mentions = validate::ids("mentional_ids", r.mentional_ids)?.into_iter().map(ContactId).collect();
        let text = validate::text("text", r.text, validate::MAX_TEXT_CHARS)?;
        let id = self.backend.send(&to, Outgoing::Text { text, mentions }).await.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendTextResponse, id))
    }

    #[allow(deprecated)]
    async fn message_send_mini_program(
        &self,
        req: Request<pb::MessageSendMiniProgramRequest>,
    ) -> RpcResult<pb::MessageSendMiniProgramResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let m = validate::mini_program(card(
            "mini_program",
            r.mini_program,
            &r.mini_program_deprecated,
            MiniProgram::from,
        )?)?;
        let id = self.backend.send(&to, Outgoing::MiniProgram(m)).await.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendMiniProgramResponse, id))
    }

    #[allow(deprecated)]
    async fn message_send_url(&self, req: Request<pb::MessageSendUrlRequest>) -> RpcResult<pb::MessageSendUrlResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let u = validate::url_link(card("url_link", r.url_link, &r.url_link_deprecated, UrlLink::from)?)?;
        let id = self.backend.send(&to, Outgoing::Url(u)).await.map_err(|e| self.err(e))?;
        ok(sent!(MessageSendUrlResponse, id))
    }

    async fn message_send_location(
        &self,
        req: Request<pb::MessageSendLocationRequest>,
    ) -> RpcResult<pb::MessageSendLocationResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let l =
            validate::location(r.location.ok_or_else(|| Status::invalid_argument("`location` is required"))?.into())?;
        let id = self.backend.send(&to, Outgoing::Location(l)).await.map_err(|e| self.err(e))?;
        ok(pb::MessageSendLocationResponse { id: id.map(|m| m.0).unwrap_or_default() })
    }

    // ---- rooms --------------------------------------------------------------------------------

    async fn room_payload(&self, req: Request<pb::RoomPayloadRequest>) -> RpcResult<pb::RoomPayloadResponse> {
        let id = room_id("id", req.into_inner().id)?;
        let r = self.backend.room(&id).await.map_err(|e| self.err(e))?;
        ok(r.into())
    }

    async fn room_list(&self, _: Request<pb::RoomListRequest>) -> RpcResult<pb::RoomListResponse> {
        let ids = self.backend.room_list().await.map_err(|e| self.err(e))?;
        ok(pb::RoomListResponse { ids: ids.into_iter().map(|r| r.0).collect() })
    }

    async fn room_add(&self, req: Request<pb::RoomAddRequest>) -> RpcResult<pb::RoomAddResponse> {
        let r = req.into_inner();
        let room = room_id("id", r.id)?;
        let contacts = contact_set(r.contact_id, r.contact_ids)?;
        self.backend.room_add(&room, contacts, r.invite_only).await.map_err(|e| self.err(e))?;
        ok(pb::RoomAddResponse {})
    }

    async fn room_avatar(&self, req: Request<pb::RoomAvatarRequest>) -> RpcResult<pb::RoomAvatarResponse> {
        let client = ClientKind::of(req.metadata());
        let id = room_id("id", req.into_inner().id)?;
        let fb = self.backend.room_avatar(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomAvatarResponse { file_box: files::outgoing(&self.blobs, fb, client).await?.to_json() })
    }

    async fn room_create(&self, req: Request<pb::RoomCreateRequest>) -> RpcResult<pb::RoomCreateResponse> {
        let r = req.into_inner();
        let contacts = validate::ids("contact_ids", r.contact_ids)?.into_iter().map(ContactId).collect();
        let topic = validate::text("topic", r.topic, validate::MAX_NAME_CHARS)?;
        let id = self.backend.room_create(contacts, topic).await.map_err(|e| self.err(e))?;
        ok(pb::RoomCreateResponse { id: id.0 })
    }

    async fn room_del(&self, req: Request<pb::RoomDelRequest>) -> RpcResult<pb::RoomDelResponse> {
        let r = req.into_inner();
        let room = room_id("id", r.id)?;
        let contacts = contact_set(r.contact_id, r.contact_ids)?;
        self.backend.room_del(&room, contacts).await.map_err(|e| self.err(e))?;
        ok(pb::RoomDelResponse {})
    }

    async fn room_quit(&self, req: Request<pb::RoomQuitRequest>) -> RpcResult<pb::RoomQuitResponse> {
        let id = room_id("id", req.into_inner().id)?;
        self.backend.room_quit(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomQuitResponse {})
    }

    #[allow(deprecated)]
    async fn room_topic(&self, req: Request<pb::RoomTopicRequest>) -> RpcResult<pb::RoomTopicResponse> {
        let r = req.into_inner();
        let id = room_id("id", r.id)?;
        // Python sets through the wrapper only (the official server ignores it: a bug not copied).
        if let Some(topic) = r.topic.or(r.topic_string_value_deprecated) {
            let topic = validate::text("topic", topic, validate::MAX_NAME_CHARS)?;
            self.backend.set_room_topic(&id, topic).await.map_err(|e| self.err(e))?;
            return ok(pb::RoomTopicResponse::default());
        }
        let topic = self.backend.room(&id).await.map_err(|e| self.err(e))?.topic;
        ok(pb::RoomTopicResponse { topic_string_value_deprecated: Some(topic.clone()), topic })
    }

    async fn room_qr_code(&self, req: Request<pb::RoomQrCodeRequest>) -> RpcResult<pb::RoomQrCodeResponse> {
        // The Python client 0.8.10 sends no room id at all; say so rather than guess a room.
        let id = room_id("id", req.into_inner().id)?;
        let qrcode = self.backend.room_qrcode(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomQrCodeResponse { qrcode })
    }

    #[allow(deprecated)]
    async fn room_announce(&self, req: Request<pb::RoomAnnounceRequest>) -> RpcResult<pb::RoomAnnounceResponse> {
        let r = req.into_inner();
        let id = room_id("id", r.id)?;
        if let Some(text) = r.text.or(r.text_string_value_deprecated) {
            let text = validate::text("text", text, validate::MAX_ANNOUNCE_CHARS)?;
            self.backend.set_room_announce(&id, text).await.map_err(|e| self.err(e))?;
            return ok(pb::RoomAnnounceResponse::default());
        }
        let text = self.backend.room_announce(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomAnnounceResponse { text_string_value_deprecated: Some(text.clone()), text })
    }

    async fn room_member_payload(
        &self,
        req: Request<pb::RoomMemberPayloadRequest>,
    ) -> RpcResult<pb::RoomMemberPayloadResponse> {
        let r = req.into_inner();
        let room = room_id("id", r.id)?;
        let member = contact_id("member_id", r.member_id)?;
        let m = self.backend.room_member(&room, &member).await.map_err(|e| self.err(e))?;
        ok(m.into())
    }

    async fn room_member_list(&self, req: Request<pb::RoomMemberListRequest>) -> RpcResult<pb::RoomMemberListResponse> {
        let id = room_id("id", req.into_inner().id)?;
        let ids = self.backend.room_members(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomMemberListResponse { member_ids: ids.into_iter().map(|c| c.0).collect() })
    }

    async fn room_invitation_payload(
        &self,
        req: Request<pb::RoomInvitationPayloadRequest>,
    ) -> RpcResult<pb::RoomInvitationPayloadResponse> {
        let id = RoomInvitationId(validate::id("id", req.into_inner().id)?);
        let i = self.backend.room_invitation(&id).await.map_err(|e| self.err(e))?;
        ok(i.into())
    }

    async fn room_invitation_accept(
        &self,
        req: Request<pb::RoomInvitationAcceptRequest>,
    ) -> RpcResult<pb::RoomInvitationAcceptResponse> {
        let id = RoomInvitationId(validate::id("id", req.into_inner().id)?);
        self.backend.room_invitation_accept(&id).await.map_err(|e| self.err(e))?;
        ok(pb::RoomInvitationAcceptResponse {})
    }

    // ---- tags ---------------------------------------------------------------------------------

    async fn tag_contact_add(&self, req: Request<pb::TagContactAddRequest>) -> RpcResult<pb::TagContactAddResponse> {
        let r = req.into_inner();
        let tag = TagId(validate::id("id", r.id)?);
        let contact = contact_id("contact_id", r.contact_id)?;
        self.backend.tag_contact_add(&tag, &contact).await.map_err(|e| self.err(e))?;
        ok(pb::TagContactAddResponse {})
    }

    async fn tag_contact_remove(
        &self,
        req: Request<pb::TagContactRemoveRequest>,
    ) -> RpcResult<pb::TagContactRemoveResponse> {
        let r = req.into_inner();
        let tag = TagId(validate::id("id", r.id)?);
        let contact = contact_id("contact_id", r.contact_id)?;
        self.backend.tag_contact_remove(&tag, &contact).await.map_err(|e| self.err(e))?;
        ok(pb::TagContactRemoveResponse {})
    }

    async fn tag_contact_delete(
        &self,
        req: Request<pb::TagContactDeleteRequest>,
    ) -> RpcResult<pb::TagContactDeleteResponse> {
        let tag = TagId(validate::id("id", req.into_inner().id)?);
        self.backend.tag_delete(&tag).await.map_err(|e| self.err(e))?;
        ok(pb::TagContactDeleteResponse {})
    }

    #[allow(deprecated)]
    async fn tag_contact_list(&self, req: Request<pb::TagContactListRequest>) -> RpcResult<pb::TagContactListResponse> {
        let r = req.into_inner();
        let contact = optional("contact_id", non_empty(Some(r.contact_id)).or(r.contact_id_string_value_deprecated))?
            .map(ContactId);
        let tags = self.backend.tag_list(contact.as_ref()).await.map_err(|e| self.err(e))?;
        ok(pb::TagContactListResponse { ids: tags.into_iter().map(|t| t.0).collect() })
    }

    // ---- conversations ------------------------------------------------------------------------

    async fn conversation_read(
        &self,
        req: Request<pb::ConversationReadRequest>,
    ) -> RpcResult<pb::ConversationReadResponse> {
        let r = req.into_inner();
        let to = conversation(r.conversation_id)?;
        let has_read = self.backend.conversation_read(&to, r.has_read).await.map_err(|e| self.err(e))?;
        ok(pb::ConversationReadResponse { has_read })
    }

    // ---- blobs --------------------------------------------------------------------------------

    async fn download(&self, req: Request<pb::DownloadRequest>) -> RpcResult<Self::DownloadStream> {
        let id = validate::id("id", req.into_inner().id)?;
        let fb = FileBox::new("", FileBoxSource::Uuid(id));
        let chunks = files::stream_bytes(&self.blobs, &fb, None, |chunk| pb::DownloadResponse { chunk });
        ok(Box::pin(chunks.await?))
    }

    async fn upload(&self, req: Request<Streaming<pb::UploadRequest>>) -> RpcResult<pb::UploadResponse> {
        let mut stream = req.into_inner();
        let mut writer = self.blobs.writer().await.map_err(blob_status)?;
        while let Some(msg) = stream.message().await? {
            if !msg.chunk.is_empty() {
                writer.write(&msg.chunk).await.map_err(blob_status)?;
            }
        }
        let meta = writer.finish().await.map_err(blob_status)?;
        tracing::debug!(blob = %meta.id, size = meta.size, "upload stored");
        ok(pb::UploadResponse { id: meta.id })
    }
}

/// The first message of a chunked file stream: the file's name.
fn name_chunk(fb: &FileBox) -> pb::FileBoxChunk {
    pb::FileBoxChunk { data: None, name: Some(fb.name.clone()) }
}

fn image_type(n: i32) -> Result<ImageType, Status> {
    ImageType::from_wire(n).ok_or_else(|| Status::invalid_argument(format!("`type` {n} is not an image type (0-3)")))
}

/// `contact_id` (published clients) merged with `contact_ids` (upstream HEAD), de-duplicated.
fn contact_set(one: String, many: Vec<String>) -> Result<Vec<ContactId>, Status> {
    let mut out: Vec<ContactId> = Vec::new();
    let many = validate::ids("contact_ids", many)?;
    for id in std::iter::once(validate::optional_id("contact_id", one)?).chain(many).filter(|c| !c.is_empty()) {
        if !out.iter().any(|c| c.0 == id) {
            out.push(ContactId(id));
        }
    }
    if out.is_empty() {
        return Err(Status::invalid_argument("`contact_id` (or `contact_ids`) is required"));
    }
    Ok(out)
}

/// `puppet_rs.v1.EventFeed`: the resumable, sequenced event stream.
#[derive(Clone)]
pub struct EventFeedService {
    bus: EventBus,
    heartbeat: Duration,
}

impl EventFeedService {
    /// Serves `bus`.
    pub fn new(bus: EventBus, heartbeat: Duration) -> Self {
        Self { bus, heartbeat }
    }
}

#[tonic::async_trait]
impl ext::event_feed_server::EventFeed for EventFeedService {
    type SubscribeStream = EventStream<ext::SequencedEvent>;

    async fn subscribe(&self, req: Request<ext::SubscribeRequest>) -> RpcResult<Self::SubscribeStream> {
        let r = req.into_inner();
        let start = match r.after_seq {
            Some(seq) => StartAt::After(seq),
            None => StartAt::Live { replay_state: r.replay_state },
        };
        let log_id = non_empty(Some(r.log_id));
        let sub = self.bus.subscribe_to(start, log_id.as_deref()).map_err(|e| Status::out_of_range(e.to_string()))?;
        ok(pump(sub, self.heartbeat))
    }

    async fn retention(&self, _: Request<ext::RetentionRequest>) -> RpcResult<ext::RetentionResponse> {
        let r = self.bus.retention();
        ok(ext::RetentionResponse {
            first_seq: r.first_seq,
            last_seq: r.last_seq,
            capacity: r.capacity,
            log_id: r.log_id,
        })
    }
}
