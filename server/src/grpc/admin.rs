//! `puppet_rs.v1.Admin`: the operator's view of the accounts (list, reload), behind the admin token.

use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::puppet_rs::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use crate::account::{Accounts, ReloadError};

/// See the module docs.
pub struct AdminService {
    accounts: Accounts,
}

impl AdminService {
    /// Over the process's accounts.
    pub fn new(accounts: Accounts) -> Self {
        Self { accounts }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn reload_accounts(
        &self,
        _: Request<ext::ReloadAccountsRequest>,
    ) -> Result<Response<ext::ReloadAccountsResponse>, Status> {
        match self.accounts.reload().await {
            Ok(done) => Ok(Response::new(ext::ReloadAccountsResponse {
                added: done.added,
                removed: done.removed,
                restarted: done.restarted,
                unchanged: done.unchanged as u32,
            })),
            Err(e @ ReloadError::NoFile) => Err(Status::failed_precondition(e.to_string())),
            Err(e @ ReloadError::Invalid(_)) => Err(Status::invalid_argument(e.to_string())),
            Err(e @ (ReloadError::Start(_) | ReloadError::Restart(_))) => {
                Err(Status::failed_precondition(e.to_string()))
            }
        }
    }

    async fn list_accounts(
        &self,
        _: Request<ext::ListAccountsRequest>,
    ) -> Result<Response<ext::ListAccountsResponse>, Status> {
        let accounts = self
            .accounts
            .all()
            .iter()
            .map(|a| ext::AccountInfo {
                name: a.name.clone(),
                backend: a.backend.name().to_owned(),
                logged_in: a.bus.logged_in(),
                contact_id: a.bus.login_view().contact_id.unwrap_or_default(),
                last_seq: a.bus.retention().last_seq,
            })
            .collect();
        let (ordinal, replicas) = self.accounts.shard().map_or((0, 1), |s| (s.ordinal, s.replicas));
        Ok(Response::new(ext::ListAccountsResponse { accounts, ordinal, replicas }))
    }
}
