//! Reaching the upstream: discovery (`GET /v0/hosties/<token>` as the official client does), the
//! HTTP/2 channel (TLS with Wechaty's SNI convention, or plaintext), and the token on every call.

use std::time::Duration;

use puppet_proto::pb::wechaty::puppet_client::PuppetClient;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

use super::settings::{Target, UpstreamSettings};

/// HTTP/2 flow-control window per stream toward the upstream (files want more than 64 KiB in flight).
const WINDOW: u32 = 4 << 20;
/// Largest discovery answer read.
const MAX_DISCOVERY_BODY: usize = 16 * 1024;

/// Adds `authorization: Wechaty <token>` to every call (the official server also accepts the token
/// as `:authority` on plaintext, but the header works in both modes).
#[derive(Clone)]
pub struct UpstreamToken(AsciiMetadataValue);

impl Interceptor for UpstreamToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        req.metadata_mut().insert("authorization", self.0.clone());
        Ok(req)
    }
}

/// The `wechaty.Puppet` stub toward the upstream.
pub type UpstreamClient = PuppetClient<InterceptedService<Channel, UpstreamToken>>;

/// Why a connection could not be made; the text never holds the token.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Discovery failed or answered nothing usable.
    #[error("discovery at {base} failed: {why}")]
    Discovery {
        /// The discovery base URL.
        base: String,
        /// What went wrong.
        why: String,
    },
    /// The endpoint could not be reached.
    #[error("cannot connect to the upstream at {endpoint}: {why}")]
    Connect {
        /// `host:port`.
        endpoint: String,
        /// What went wrong.
        why: String,
    },
}

/// What discovery answers (Node reads `host`, Python `ip`).
#[derive(serde::Deserialize)]
struct Hostie {
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    ip: Option<String>,
    #[serde(default)]
    port: Option<serde_json::Value>,
}

/// Asks `base/v0/hosties/<token>` where the token's service is.
pub async fn discover(http: &reqwest::Client, base: &str, token: &str) -> Result<String, ConnectError> {
    let fail = |why: String| ConnectError::Discovery { base: base.to_owned(), why };
    // The token is a path segment: percent-encode anything outside the unreserved set.
    let segment: String = token
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect();
    let url = format!("{base}/v0/hosties/{segment}");
    // reqwest's error text includes the URL, which holds the token: report the kind only.
    let mut resp = http.get(&url).send().await.map_err(|e| fail(describe_reqwest(&e)))?;
    let status = resp.status();
    if status.is_client_error() {
        return Err(fail(format!("HTTP {status}: the discovery service does not know the token")));
    }
    if !status.is_success() {
        return Err(fail(format!("HTTP {status}")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(describe_reqwest(&e)))? {
        if body.len() + chunk.len() > MAX_DISCOVERY_BODY {
            return Err(fail(format!("the answer is longer than {MAX_DISCOVERY_BODY} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    let hostie: Hostie = serde_json::from_slice(&body).map_err(|e| fail(format!("the answer is not JSON: {e}")))?;
    let host = hostie.host.or(hostie.ip).filter(|h| !h.is_empty() && h != "0.0.0.0");
    let port = match hostie.port {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    }
    .filter(|p| (1..=65535).contains(p));
    match (host, port) {
        (Some(h), Some(p)) => {
            let endpoint =
                if h.contains(':') && !h.starts_with('[') { format!("[{h}]:{p}") } else { format!("{h}:{p}") };
            if endpoint.parse::<http::uri::Authority>().is_err() {
                return Err(fail("the answer's host is not a host name".into()));
            }
            Ok(endpoint)
        }
        _ => Err(fail("the answer has no usable `host` and `port`: the token is unknown there".into())),
    }
}

fn describe_reqwest(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "the answer could not be read"
    } else {
        "the request failed"
    };
    // The source chain never holds the URL; the top-level Display does.
    let mut why = kind.to_owned();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        why = format!("{why}: {s}");
        source = s.source();
    }
    why
}

/// Where to connect now: the fixed endpoint, or what discovery says.
pub async fn resolve(settings: &UpstreamSettings, http: &reqwest::Client) -> Result<String, ConnectError> {
    match &settings.target {
        Target::Endpoint(e) => Ok(e.clone()),
        Target::Discover { base } => discover(http, base, &settings.token).await,
    }
}

/// Opens an HTTP/2 connection to `endpoint` as the settings say.
pub async fn channel(settings: &UpstreamSettings, endpoint: &str, timeout: Duration) -> Result<Channel, ConnectError> {
    let fail = |why: String| ConnectError::Connect { endpoint: endpoint.to_owned(), why };
    let scheme = if settings.tls.is_some() { "https" } else { "http" };
    let mut ep = Endpoint::from_shared(format!("{scheme}://{endpoint}")).map_err(|e| fail(e.to_string()))?;
    if let Some((ca, name)) = &settings.tls {
        let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name(name.clone());
        ep = ep.tls_config(tls).map_err(|e| fail(format!("TLS: {e}")))?;
    }
    let ep = ep
        .connect_timeout(timeout)
        .initial_stream_window_size(WINDOW)
        .initial_connection_window_size(2 * WINDOW)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    match tokio::time::timeout(timeout, ep.connect()).await {
        Ok(Ok(ch)) => Ok(ch),
        Ok(Err(e)) => Err(fail(error_chain(&e))),
        Err(_) => Err(fail(format!("no connection within {} s", timeout.as_secs()))),
    }
}

/// An error with its sources, on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// The stub over `channel`, carrying `token`.
pub fn client(channel: Channel, token: &str, max_message: usize) -> UpstreamClient {
    // Checked printable ASCII in the settings, so this parses.
    let header = AsciiMetadataValue::try_from(format!("Wechaty {token}"))
        .unwrap_or_else(|_| AsciiMetadataValue::from_static("Wechaty"));
    PuppetClient::with_interceptor(channel, UpstreamToken(header))
        .max_decoding_message_size(max_message)
        // Nothing we send is above 4 MiB anyway: files go through Upload in small chunks.
        .max_encoding_message_size(max_message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn discovery_reads_host_or_ip_and_refuses_an_unknown_token() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            for (status, body) in [
                ("200 OK", r#"{"host":"127.0.0.1","port":8788}"#),
                ("200 OK", r#"{"ip":"10.0.0.1","port":"99"}"#),
                ("404 Not Found", ""),
                ("200 OK", r#"{"ip":"0.0.0.0","port":0}"#),
            ] {
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(head.starts_with("GET /v0/hosties/insecure_s%20cret HTTP/1.1"), "{head}");
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::new();
        let base = format!("http://{addr}");
        let token = "insecure_s cret";
        assert_eq!(discover(&http, &base, token).await.unwrap(), "127.0.0.1:8788");
        assert_eq!(discover(&http, &base, token).await.unwrap(), "10.0.0.1:99");
        let e = discover(&http, &base, token).await.unwrap_err().to_string();
        assert!(e.contains("does not know the token") && !e.contains("cret"), "{e}");
        let e = discover(&http, &base, token).await.unwrap_err().to_string();
        assert!(e.contains("unknown") && !e.contains("cret"), "{e}");
        server.await.unwrap();
    }
}
