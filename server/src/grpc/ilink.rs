//! `puppet_rs.v1.Ilink`: translation onto the iLink backend's extras.

use puppet_proto::pb::puppet_rs::v1 as ext;
use tonic::{Request, Response, Status};

use super::convert::required;
use crate::backend::ilink::Ilink;

/// The extension service over one iLink backend.
#[derive(Clone)]
pub struct IlinkService {
    ilink: Ilink,
}

impl IlinkService {
    /// Serves `ilink`'s extras.
    pub fn new(ilink: Ilink) -> Self {
        Self { ilink }
    }
}

#[tonic::async_trait]
impl ext::ilink_server::Ilink for IlinkService {
    async fn typing(&self, req: Request<ext::TypingRequest>) -> Result<Response<ext::TypingResponse>, Status> {
        let req = req.into_inner();
        let to = required("conversation_id", req.conversation_id)?;
        self.ilink.typing(&to, req.typing).await.map_err(|e| super::status::to_status("ilink", e))?;
        Ok(Response::new(ext::TypingResponse {}))
    }
}
