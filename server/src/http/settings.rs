//! Flags of the browser-facing parts: gRPC-Web's CORS on the gRPC port.

/// `--cors-origin`.
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CorsFlags {
    /// Origins whose browser pages may call the gRPC port over gRPC-Web (CORS), comma-separated,
    /// e.g. `https://bot.example.com,http://localhost:5173`; `*` allows any origin. Default: none
    /// (gRPC-Web still works for non-browser clients and same-origin pages).
    #[arg(long = "cors-origin", env = "PUPPET_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
}

impl CorsFlags {
    /// The CORS layer for the gRPC port, when origins are given. A bad origin is refused.
    pub fn cors(&self) -> anyhow::Result<Option<tower_http::cors::CorsLayer>> {
        use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName};
        use tower_http::cors::{AllowOrigin, CorsLayer};
        let origins: Vec<&str> = self.cors_origin.iter().map(|o| o.trim()).filter(|o| !o.is_empty()).collect();
        if origins.is_empty() {
            return Ok(None);
        }
        let allow = if origins.contains(&"*") {
            AllowOrigin::any()
        } else {
            let parsed = origins
                .iter()
                .map(|o| {
                    http::HeaderValue::from_str(o.trim_end_matches('/'))
                        .map_err(|_| anyhow::anyhow!("--cors-origin: `{o}` is not an origin"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            AllowOrigin::list(parsed)
        };
        let request_headers = ["x-grpc-web", "x-user-agent", "grpc-timeout", "connect-protocol-version"]
            .map(HeaderName::from_static)
            .into_iter()
            .chain([AUTHORIZATION, CONTENT_TYPE]);
        let exposed = ["grpc-status", "grpc-message", "grpc-status-details-bin"].map(HeaderName::from_static);
        Ok(Some(
            CorsLayer::new()
                .allow_origin(allow)
                .allow_methods([http::Method::POST, http::Method::OPTIONS])
                .allow_headers(request_headers.collect::<Vec<_>>())
                .expose_headers(exposed)
                .max_age(std::time::Duration::from_secs(24 * 3600)),
        ))
    }
}
