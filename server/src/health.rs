//! Readiness follows the login: the `wechaty.Puppet` health status (what a Kubernetes readiness
//! probe asks) is SERVING while the account is logged in, or from the start with
//! `--ready-when started`. The overall status (service "") stays SERVING: that is liveness.

use puppet_proto::pb::wechaty::puppet_server::PuppetServer;
use tokio_util::sync::CancellationToken;
use tonic_health::server::HealthReporter;

use crate::config::ReadyWhen;
use crate::events::EventBus;
use crate::grpc::PuppetService;

/// Keeps the readiness status in step with the login state until `stop`.
pub async fn follow_login(bus: EventBus, health: HealthReporter, mode: ReadyWhen, stop: CancellationToken) {
    if mode == ReadyWhen::Started {
        health.set_serving::<PuppetServer<PuppetService>>().await;
        return;
    }
    let mut login = bus.login_state();
    loop {
        if *login.borrow_and_update() {
            health.set_serving::<PuppetServer<PuppetService>>().await;
        } else {
            health.set_not_serving::<PuppetServer<PuppetService>>().await;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = login.changed() => if changed.is_err() { return },
        }
    }
}
