//! Readiness follows the login: the `wechaty.Puppet` health status (what a Kubernetes readiness
//! probe asks) is SERVING while the account is logged in, or from the start with
//! `--ready-when started`. The overall status (service "") stays SERVING: that is liveness.

use puppet_proto::event::EventKind;
use puppet_proto::pb::wechaty::puppet_server::PuppetServer;
use tonic_health::server::HealthReporter;

use crate::config::ReadyWhen;
use crate::events::{EventBus, StartAt};
use crate::grpc::PuppetService;

/// Keeps the readiness status in step with the login state until the bus closes.
pub async fn follow_login(bus: EventBus, health: HealthReporter, mode: ReadyWhen) {
    if mode == ReadyWhen::Started {
        health.set_serving::<PuppetServer<PuppetService>>().await;
        return;
    }
    health.set_not_serving::<PuppetServer<PuppetService>>().await;
    let mut batch = Vec::new();
    loop {
        // Replaying the state first means a LOGIN before this task started is not missed.
        let Ok(mut sub) = bus.subscribe(StartAt::Live { replay_state: true }) else { return };
        loop {
            batch.clear();
            match sub.next_batch(&mut batch).await {
                Ok(true) => {
                    for env in &batch {
                        match env.kind {
                            EventKind::Login => health.set_serving::<PuppetServer<PuppetService>>().await,
                            EventKind::Logout => health.set_not_serving::<PuppetServer<PuppetService>>().await,
                            _ => {}
                        }
                    }
                }
                Ok(false) => return,
                // Fell behind a flood of events: start over from the current state.
                Err(_) => break,
            }
        }
        set_from_bus(&health, &bus).await;
    }
}

async fn set_from_bus(health: &HealthReporter, bus: &EventBus) {
    if bus.logged_in() {
        health.set_serving::<PuppetServer<PuppetService>>().await;
    } else {
        health.set_not_serving::<PuppetServer<PuppetService>>().await;
    }
}
