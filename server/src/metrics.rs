//! Prometheus metrics, served at `/metrics` on the side port.
//!
//! RPCs are counted and timed by a tower layer around every service (not per handler): a method
//! label per known method (unknown paths count as `unknown`, so clients cannot grow the label set)
//! and the gRPC code of the answer. Bus, blob store and login figures are read when scraped.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tower::{Layer, Service};

use crate::blobs::BlobStore;
use crate::events::EventBus;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// What became of an Official Account push.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum PushOutcome {
    /// Handled: events emitted.
    handled,
    /// A retry of a push already handled or being handled.
    retry,
    /// Refused: `signature` or `msg_signature` did not match.
    bad_signature,
    /// Refused: not decryptable, for another AppID or account, malformed XML or a DTD.
    refused,
}

/// How the bot's answer to a follower went.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum ReplyPath {
    /// In the push's HTTP response.
    passive,
    /// Through the customer-service API.
    api,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: PushOutcome,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabel {
    path: ReplyPath,
}

/// The Official Account backend's counters (zero on other backends).
#[derive(Clone, Default)]
pub struct OaMetrics {
    pushes: Family<OutcomeLabel, Counter>,
    replies: Family<PathLabel, Counter>,
    /// access_tokens fetched.
    pub token_fetches: Counter,
}

impl OaMetrics {
    /// Counts a push.
    pub fn push(&self, outcome: PushOutcome) {
        self.pushes.get_or_create(&OutcomeLabel { outcome }).inc();
    }
    /// Counts an answer to a follower.
    pub fn reply(&self, path: ReplyPath) {
        self.replies.get_or_create(&PathLabel { path }).inc();
    }
}

/// Every metric the server exports.
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabel, Histogram>,
    events_emitted: Gauge,
    subscribers: Gauge,
    subscribers_cut: Gauge,
    blob_bytes: Gauge,
    logged_in: Gauge,
    /// The Official Account backend's counters.
    pub oa: OaMetrics,
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("puppet");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        let (events_emitted, subscribers, subscribers_cut, blob_bytes, logged_in) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("rpc_requests", "RPCs answered, by method and gRPC code", rpc_requests.clone());
        registry.register("rpc_seconds", "Time to the response headers, by method", rpc_seconds.clone());
        registry.register("events_emitted", "Events published on the bus since start", events_emitted.clone());
        registry.register("event_subscribers", "Event streams open now", subscribers.clone());
        registry.register(
            "event_subscribers_cut",
            "Event streams ended because they fell too far behind",
            subscribers_cut.clone(),
        );
        registry.register("blob_bytes", "Bytes held by the blob store", blob_bytes.clone());
        registry.register("logged_in", "1 while the account is logged in", logged_in.clone());
        let oa = OaMetrics::default();
        registry.register("oa_pushes", "Official Account webhook pushes, by outcome", oa.pushes.clone());
        registry.register("oa_replies", "Answers to followers, by path (passive reply or API)", oa.replies.clone());
        registry.register("oa_token_fetches", "Official Account access_tokens fetched", oa.token_fetches.clone());
        Self {
            registry,
            rpc_requests,
            rpc_seconds,
            events_emitted,
            subscribers,
            subscribers_cut,
            blob_bytes,
            logged_in,
            oa,
        }
    }

    fn record(&self, method: String, code: tonic::Code, elapsed: std::time::Duration) {
        // Unknown paths answer UNIMPLEMENTED; their names come from the client, so they share a label.
        let method = if code == tonic::Code::Unimplemented { "unknown".to_owned() } else { method };
        let code = format!("{code:?}");
        self.rpc_requests.get_or_create(&RpcLabels { method: method.clone(), code }).inc();
        self.rpc_seconds.get_or_create(&MethodLabel { method }).observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the figures read now.
    pub fn render(&self, bus: &EventBus, blobs: &BlobStore) -> String {
        let stats = bus.stats();
        self.events_emitted.set(stats.emitted as i64);
        self.subscribers.set(stats.subscribers as i64);
        self.subscribers_cut.set(stats.cut_off as i64);
        self.blob_bytes.set(blobs.total_bytes() as i64);
        self.logged_in.set(i64::from(bus.logged_in()));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The tower layer that counts and times RPCs.
#[derive(Clone)]
pub struct RpcMetricsLayer(pub Arc<Metrics>);

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner, metrics: self.0.clone() }
    }
}

/// See [`RpcMetricsLayer`].
#[derive(Clone)]
pub struct RpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            if let Ok(r) = &res {
                // Errors travel in the headers ("trailers-only"); a success's status comes in the
                // trailers, after the body, and is OK unless the stream fails later.
                let code = r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from);
                metrics.record(method, code, started.elapsed());
            }
            res
        })
    }
}
