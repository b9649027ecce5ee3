//! The side HTTP port: liveness, readiness and metrics for orchestrators, and `/qrcode`, the login
//! QR for people (a pod's terminal is not where anyone scans from), and the backend's webhook when
//! it has one (the Official Account callback URL).

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
    /// The backend, for the account's name.
    pub backend: std::sync::Arc<dyn crate::backend::Backend>,
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    state: HttpState,
    webhook: Option<Router>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/qrcode", get(qrcode_page))
        .with_state(state)
        .merge(webhook.unwrap_or_default());
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

fn escape(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

/// A page that shows the login QR while one is pending and the account once logged in, and reloads
/// itself every two seconds.
async fn qrcode_page(State(s): State<HttpState>) -> axum::response::Html<String> {
    let view = s.bus.login_view();
    let (title, body) = match (&view.contact_id, &view.qrcode) {
        (Some(id), _) => {
            let name = s.backend.contact(&id.as_str().into()).await.map(|c| c.name).unwrap_or_else(|_| id.clone());
            (format!("Logged in as {}", escape(&name)), format!("<p class=\"who\">{}</p>", escape(id)))
        }
        (None, Some(qr)) => {
            let svg = qrcode::QrCode::new(qr.as_bytes())
                .map(|q| q.render::<qrcode::render::svg::Color>().min_dimensions(240, 240).build())
                .unwrap_or_default();
            ("Scan to log in".to_owned(), format!("<div class=\"qr\">{svg}</div><p class=\"text\">{}</p>", escape(qr)))
        }
        (None, None) => ("Not logged in".to_owned(), "<p>No QR code yet: the login starts with Start.</p>".to_owned()),
    };
    axum::response::Html(format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
         <title>puppet-rs: {title}</title><style>body{{font-family:sans-serif;text-align:center;margin-top:3em}}\
         .text{{color:#888;font-size:small}}</style></head><body><h1 id=\"state\">{title}</h1>{body}</body></html>"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_are_escaped_into_the_page() {
        assert_eq!(
            super::escape(r#"<b>"Tom" & 'Jerry'</b>"#),
            "&lt;b&gt;&quot;Tom&quot; &amp; &#39;Jerry&#39;&lt;/b&gt;"
        );
        assert_eq!(super::escape("张伟"), "张伟");
    }
}
