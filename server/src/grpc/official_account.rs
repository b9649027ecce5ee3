//! `puppet_rs.v1.OfficialAccount`: translation onto the Official Account backend's extras.

use std::pin::Pin;

use puppet_proto::pb::puppet_rs::v1 as ext;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::convert::{non_empty, required};
use crate::backend::BackendError;
use crate::backend::official_account::OfficialAccount;
use crate::backend::official_account::extension::{FollowerInfo, Scene, TagInfo, TemplateMessage};
use crate::backend::official_account::xml::Reply;

type RpcResult<T> = Result<Response<T>, Status>;

/// The extension service over one Official Account backend.
#[derive(Clone)]
pub struct OfficialAccountService {
    oa: OfficialAccount,
    stopping: tokio_util::sync::CancellationToken,
}

impl OfficialAccountService {
    /// Serves `oa`'s extras; `Events` streams end with OK once `stopping` is cancelled.
    pub fn new(oa: OfficialAccount, stopping: tokio_util::sync::CancellationToken) -> Self {
        Self { oa, stopping }
    }
}

fn err(e: BackendError) -> Status {
    super::status::to_status("official-account", e)
}

fn tag(t: TagInfo) -> ext::Tag {
    ext::Tag { id: t.id, name: t.name, count: t.count }
}

#[tonic::async_trait]
impl ext::official_account_server::OfficialAccount for OfficialAccountService {
    async fn create_menu(&self, req: Request<ext::CreateMenuRequest>) -> RpcResult<ext::CreateMenuResponse> {
        let text = required("menu_json", req.into_inner().menu_json)?;
        let menu = serde_json::from_str(&text)
            .map_err(|e| Status::invalid_argument(format!("`menu_json` is not JSON: {e}")))?;
        self.oa.create_menu(menu).await.map_err(err)?;
        Ok(Response::new(ext::CreateMenuResponse {}))
    }

    async fn get_menu(&self, _req: Request<ext::GetMenuRequest>) -> RpcResult<ext::GetMenuResponse> {
        let menu = self.oa.menu().await.map_err(err)?;
        Ok(Response::new(ext::GetMenuResponse { menu_json: menu.to_string() }))
    }

    async fn delete_menu(&self, _req: Request<ext::DeleteMenuRequest>) -> RpcResult<ext::DeleteMenuResponse> {
        self.oa.delete_menu().await.map_err(err)?;
        Ok(Response::new(ext::DeleteMenuResponse {}))
    }

    async fn send_template(&self, req: Request<ext::SendTemplateRequest>) -> RpcResult<ext::SendTemplateResponse> {
        let r = req.into_inner();
        let message = TemplateMessage {
            to_user: required("to_user", r.to_user)?,
            template_id: required("template_id", r.template_id)?,
            url: non_empty(Some(r.url)),
            mini_program: non_empty(Some(r.miniprogram_appid)).map(|appid| (appid, r.miniprogram_pagepath)),
            data: r.data.into_iter().map(|(k, v)| (k, v.value, non_empty(Some(v.color)))).collect(),
            client_msg_id: non_empty(Some(r.client_msg_id)),
        };
        let msg_id = self.oa.send_template(message).await.map_err(err)?;
        Ok(Response::new(ext::SendTemplateResponse { msg_id }))
    }

    async fn get_template_result(
        &self,
        req: Request<ext::GetTemplateResultRequest>,
    ) -> RpcResult<ext::GetTemplateResultResponse> {
        let msg_id = req.into_inner().msg_id;
        let (status, to_user) = self.oa.template_result(msg_id).await.map_err(err)?.ok_or_else(|| {
            Status::not_found(format!("no delivery result for template message {msg_id} yet (or it is too old)"))
        })?;
        Ok(Response::new(ext::GetTemplateResultResponse { status, to_user }))
    }

    async fn create_qr_code(&self, req: Request<ext::CreateQrCodeRequest>) -> RpcResult<ext::CreateQrCodeResponse> {
        let r = req.into_inner();
        let scene = match r.scene {
            Some(ext::create_qr_code_request::Scene::SceneId(id)) => Scene::Id(id),
            Some(ext::create_qr_code_request::Scene::SceneStr(s)) => Scene::Str(s),
            None => return Err(Status::invalid_argument("`scene_id` or `scene_str` is required")),
        };
        let t = self.oa.create_qrcode(scene, r.permanent, r.expire_seconds).await.map_err(err)?;
        Ok(Response::new(ext::CreateQrCodeResponse {
            ticket: t.ticket,
            url: t.url,
            image_url: t.image_url,
            expire_seconds: t.expire_seconds,
        }))
    }

    async fn get_follower(&self, req: Request<ext::GetFollowerRequest>) -> RpcResult<ext::Follower> {
        let openid = required("openid", req.into_inner().openid)?;
        let f: FollowerInfo = self.oa.follower_info(&openid).await.map_err(err)?;
        Ok(Response::new(ext::Follower {
            openid: f.openid,
            subscribed: f.subscribed,
            remark: f.remark,
            subscribe_time: f.subscribe_time,
            language: f.language,
            unionid: f.unionid,
            subscribe_scene: f.subscribe_scene,
            qr_scene: f.qr_scene,
            qr_scene_str: f.qr_scene_str,
            tags: f.tags.into_iter().map(tag).collect(),
            nickname: f.nickname,
        }))
    }

    async fn list_tags(&self, _req: Request<ext::ListTagsRequest>) -> RpcResult<ext::ListTagsResponse> {
        let tags = self.oa.list_tags().await.map_err(err)?;
        Ok(Response::new(ext::ListTagsResponse { tags: tags.into_iter().map(tag).collect() }))
    }

    async fn reply(&self, req: Request<ext::ReplyRequest>) -> RpcResult<ext::ReplyResponse> {
        use ext::reply_request::Reply as R;
        let r = req.into_inner();
        let to = required("to_user", r.to_user)?;
        let reply = match r.reply.ok_or_else(|| Status::invalid_argument("a reply (`text`, `music`, …) is required"))?
        {
            R::Text(t) => Reply::Text(required("text", t)?),
            R::ImageMediaId(m) => Reply::Image { media_id: required("image_media_id", m)? },
            R::VoiceMediaId(m) => Reply::Voice { media_id: required("voice_media_id", m)? },
            R::Video(v) => Reply::Video {
                media_id: required("video.media_id", v.media_id)?,
                title: non_empty(Some(v.title)),
                description: non_empty(Some(v.description)),
            },
            R::Music(m) => Reply::Music {
                title: m.title,
                description: m.description,
                url: required("music.url", m.url)?,
                hq_url: non_empty(Some(m.hq_url)),
                thumb_media_id: non_empty(Some(m.thumb_media_id)),
            },
            R::News(n) => {
                Reply::News(n.articles.into_iter().map(|a| [a.title, a.description, a.pic_url, a.url]).collect())
            }
            R::TransferCustomerService(t) => {
                Reply::TransferCustomerService { kf_account: non_empty(Some(t.kf_account)) }
            }
        };
        let passive = self.oa.reply(&to, reply).await.map_err(err)?;
        Ok(Response::new(ext::ReplyResponse { passive }))
    }

    type EventsStream = Pin<Box<dyn Stream<Item = Result<ext::Push, Status>> + Send>>;

    async fn events(&self, req: Request<ext::EventsRequest>) -> RpcResult<Self::EventsStream> {
        let types = req.into_inner().types;
        let mut rx = self.oa.subscribe_pushes();
        let stopping = self.stopping.clone();
        // A bounded hand-off: the stream holds at most one push beyond the broadcast's own buffer.
        let (tx, out) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let received = tokio::select! {
                    r = rx.recv() => r,
                    _ = tx.closed() => break,
                    _ = stopping.cancelled() => break,
                };
                let item = match received {
                    Ok(p) => {
                        let key = p.inbound.type_key();
                        if !types.is_empty() && !types.contains(&key) {
                            continue;
                        }
                        let (event, event_key) = match &p.inbound.kind {
                            crate::backend::official_account::xml::InboundKind::Event { event, key, .. } => {
                                (event.clone(), key.clone().unwrap_or_default())
                            }
                            _ => (String::new(), String::new()),
                        };
                        Ok(ext::Push {
                            r#type: key,
                            from_user: p.inbound.from.clone(),
                            to_user: p.inbound.to.clone(),
                            create_time: p.inbound.create_time,
                            msg_id: p.inbound.msg_id,
                            event,
                            event_key,
                            fields: p.inbound.fields.clone().into_iter().collect(),
                            raw_xml: p.inbound.raw.clone(),
                            message_id: p.message_id.as_ref().map(|m| m.0.clone()).unwrap_or_default(),
                        })
                    }
                    Err(RecvError::Lagged(n)) => Err(Status::resource_exhausted(format!(
                        "this subscriber fell {n} pushes behind (the buffer holds {}); subscribe again",
                        crate::backend::official_account::PUSH_BUFFER
                    ))),
                    Err(RecvError::Closed) => break,
                };
                let end = item.is_err();
                if tx.send(item).await.is_err() || end {
                    break;
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(out))))
    }
}
