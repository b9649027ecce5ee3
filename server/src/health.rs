//! Readiness follows the login: the `wechaty.Puppet` health status (what a Kubernetes readiness
//! probe asks) is SERVING while every account served here is logged in (or from the start with
//! `--ready-when started`). The overall status (service "") stays SERVING: that is liveness.

use puppet_proto::pb::wechaty::puppet_server::PuppetServer;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::account::Accounts;
use crate::grpc::PuppetService;

/// Keeps the readiness status in step with the accounts' login states until `stop`.
pub async fn follow_accounts(accounts: Accounts, health: HealthReporter, stop: CancellationToken) {
    let mut changes = accounts.changes();
    loop {
        changes.borrow_and_update();
        let all = accounts.all();
        if !all.is_empty() && all.iter().all(|a| a.ready()) {
            health.set_serving::<PuppetServer<PuppetService>>().await;
        } else {
            health.set_not_serving::<PuppetServer<PuppetService>>().await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}
