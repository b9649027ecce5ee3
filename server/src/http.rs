//! The side HTTP port: liveness, readiness and metrics for orchestrators and humans.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::events::EventBus;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// The event bus, which knows the login state.
    pub bus: EventBus,
    /// What readiness means.
    pub ready_when: crate::config::ReadyWhen,
    /// The metrics registry.
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// The blob store, for its size.
    pub blobs: crate::blobs::BlobStore,
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn readyz(State(s): State<HttpState>) -> (StatusCode, &'static str) {
    if s.ready_when == crate::config::ReadyWhen::Started || s.bus.logged_in() {
        (StatusCode::OK, "logged in\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not logged in\n")
    }
}

async fn metrics(State(s): State<HttpState>) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let text = s.metrics.render(&s.bus, &s.blobs);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text)
}
