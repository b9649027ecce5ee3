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

/// How an iLink send ended.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum IlinkSendOutcome {
    /// iLink took it.
    sent,
    /// Refused here: the user never wrote to the bot.
    no_conversation,
    /// Refused here: the session window after the user's last message closed.
    window_closed,
    /// Refused here: the quota of bot messages per user message is used up.
    quota_used,
    /// iLink refused it (`ret` ≠ 0).
    platform_refused,
    /// It could not be sent (network, CDN, bad input).
    failed,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IlinkSendLabel {
    outcome: IlinkSendOutcome,
}

/// The iLink backend's counters (zero on other backends).
#[derive(Clone, Default)]
pub struct IlinkMetrics {
    sends: Family<IlinkSendLabel, Counter>,
}

impl IlinkMetrics {
    /// Counts a send.
    pub fn send(&self, outcome: IlinkSendOutcome) {
        self.sends.get_or_create(&IlinkSendLabel { outcome }).inc();
    }
}

/// Which port a connection came in on.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum Port {
    /// The gRPC port.
    Grpc,
    /// The side HTTP port.
    Http,
}

impl prometheus_client::encoding::EncodeLabelValue for Port {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder) -> Result<(), std::fmt::Error> {
        use std::fmt::Write;
        encoder.write_str(match self {
            Port::Grpc => "grpc",
            Port::Http => "http",
        })
    }
}

/// Why a connection was closed before any request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelValue)]
#[allow(non_camel_case_types)]
pub enum RefuseReason {
    /// `--max-connections` connections were open.
    max_connections,
    /// `--max-handshakes` handshakes were under way.
    handshakes,
    /// No first byte, or no TLS handshake, within `--handshake-timeout-secs`.
    handshake_timeout,
    /// The TLS handshake failed.
    tls,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PortLabel {
    port: Port,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    port: Port,
    reason: RefuseReason,
}

/// Connection-level counters of both ports (see `net`).
#[derive(Clone, Default)]
pub struct NetMetrics {
    open: Family<PortLabel, Gauge>,
    refused: Family<RefusedLabels, Counter>,
    accept_errors: Family<PortLabel, Counter>,
    idle_closed: Family<PortLabel, Counter>,
    auth_failures: Counter,
    auth_throttled: Counter,
}

impl NetMetrics {
    /// A connection was admitted.
    pub fn opened(&self, port: Port) {
        self.open.get_or_create(&PortLabel { port }).inc();
    }
    /// An admitted connection closed.
    pub fn closed(&self, port: Port) {
        self.open.get_or_create(&PortLabel { port }).dec();
    }
    /// A connection was closed before any request.
    pub fn refused(&self, port: Port, reason: RefuseReason) {
        self.refused.get_or_create(&RefusedLabels { port, reason }).inc();
    }
    /// `accept` failed (EMFILE and the like).
    pub fn accept_error(&self, port: Port) {
        self.accept_errors.get_or_create(&PortLabel { port }).inc();
    }
    /// A connection was closed for idleness.
    pub fn idle_closed(&self, port: Port) {
        self.idle_closed.get_or_create(&PortLabel { port }).inc();
    }
    /// A credential was refused.
    pub fn auth_failed(&self) {
        self.auth_failures.inc();
    }
    /// A request was refused unchecked because its address failed too often.
    pub fn auth_throttled(&self) {
        self.auth_throttled.inc();
    }
    /// Connections open on `port` now.
    pub fn open_connections(&self, port: Port) -> i64 {
        self.open.get_or_create(&PortLabel { port }).get()
    }
}

/// The process's metrics: RPCs and connections (every account's calls share them).
pub struct Metrics {
    registry: Registry,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_seconds: Family<MethodLabel, Histogram>,
    /// Connection-level counters.
    pub net: NetMetrics,
    /// Every gRPC method path the server serves, so client-chosen paths cannot grow the labels.
    methods: std::collections::HashSet<String>,
}

/// One account's metrics: its event bus, blobs, store, login and backend. With many accounts each
/// sample carries an `account` label (see [`render`]).
pub struct AccountMetrics {
    registry: Registry,
    events_emitted: Gauge,
    subscribers: Gauge,
    subscribers_cut: Gauge,
    blob_bytes: Gauge,
    logged_in: Gauge,
    /// The Official Account backend's counters.
    pub oa: OaMetrics,
    /// The iLink backend's counters.
    pub ilink: IlinkMetrics,
    store: StoreGauges,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QuantileLabel {
    quantile: &'static str,
}

/// The store's figures, read when scraped.
#[derive(Default)]
struct StoreGauges {
    used: Gauge,
    file: Gauge,
    commits: Gauge,
    commit_seconds: Family<QuantileLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    dropped: Gauge,
    full: Gauge,
}

/// Every `/package.Service/Method` path described in these encoded descriptor sets.
fn method_paths(sets: &[&[u8]]) -> std::collections::HashSet<String> {
    use prost::Message;
    let mut out = std::collections::HashSet::new();
    for bytes in sets {
        let Ok(set) = prost_types::FileDescriptorSet::decode(*bytes) else { continue };
        for file in set.file {
            let package = file.package.unwrap_or_default();
            for service in file.service {
                let name = service.name.unwrap_or_default();
                for method in service.method {
                    out.insert(format!("/{package}.{name}/{}", method.name.unwrap_or_default()));
                }
            }
        }
    }
    out
}

impl Metrics {
    /// A fresh registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("puppet");
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_seconds = Family::<MethodLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 4.0, 10))
        });
        registry.register("rpc_requests", "RPCs answered, by method and gRPC code", rpc_requests.clone());
        registry.register("rpc_seconds", "Time to the response headers, by method", rpc_seconds.clone());
        let net = NetMetrics::default();
        registry.register("connections_open", "Connections open now, by port", net.open.clone());
        registry.register(
            "connections_refused",
            "Connections closed before any request, by port and reason",
            net.refused.clone(),
        );
        registry.register("accept_errors", "Failed accepts (EMFILE and the like), by port", net.accept_errors.clone());
        registry.register(
            "connections_idle_closed",
            "Connections closed for idleness, by port",
            net.idle_closed.clone(),
        );
        registry.register(
            "auth_failures",
            "Requests refused for a missing or wrong credential",
            net.auth_failures.clone(),
        );
        registry.register(
            "auth_throttled",
            "Requests refused unchecked because their address failed authentication too often",
            net.auth_throttled.clone(),
        );
        let methods = method_paths(&[
            puppet_proto::pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        Self { registry, rpc_requests, rpc_seconds, net, methods }
    }

    fn record(&self, method: String, code: tonic::Code, elapsed: std::time::Duration) {
        // Paths come from the client (refused or not), so any path the server does not serve shares
        // one label: a client must not be able to grow the label set.
        let method = if self.methods.contains(&method) { method } else { "unknown".to_owned() };
        let code = format!("{code:?}");
        self.rpc_requests.get_or_create(&RpcLabels { method: method.clone(), code }).inc();
        self.rpc_seconds.get_or_create(&MethodLabel { method }).observe(elapsed.as_secs_f64());
    }

    /// The process's part of the exposition (no `# EOF`).
    fn text(&self) -> String {
        encode(&self.registry)
    }
}

impl AccountMetrics {
    /// A fresh registry for one account.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("puppet");
        let (events_emitted, subscribers, subscribers_cut, blob_bytes, logged_in) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
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
        let ilink = IlinkMetrics::default();
        registry.register(
            "ilink_sends",
            "iLink sends, by outcome (refusals by the platform's rules included)",
            ilink.sends.clone(),
        );
        let store = StoreGauges::default();
        registry.register("store_bytes", "Bytes the store's pages take", store.used.clone());
        registry.register("store_file_bytes", "The store file's size on disk", store.file.clone());
        registry.register("store_commits", "Store commits since start", store.commits.clone());
        registry.register(
            "store_commit_seconds",
            "Store commit latency over the last commits, by quantile",
            store.commit_seconds.clone(),
        );
        registry.register(
            "store_dropped_writes",
            "Writes dropped because the store refused them",
            store.dropped.clone(),
        );
        registry.register("store_full", "1 while the store refuses writes (size cap, full disk)", store.full.clone());
        Self { registry, events_emitted, subscribers, subscribers_cut, blob_bytes, logged_in, oa, ilink, store }
    }

    /// This account's part of the exposition (no `# EOF`), with the figures read now.
    pub fn text(&self, bus: &EventBus, blobs: &BlobStore, store: &crate::store::Store) -> String {
        let st = store.stats();
        self.store.used.set(st.used_bytes as i64);
        self.store.file.set(st.file_bytes as i64);
        self.store.commits.set(st.commits as i64);
        self.store.commit_seconds.get_or_create(&QuantileLabel { quantile: "0.5" }).set(st.commit_p50);
        self.store.commit_seconds.get_or_create(&QuantileLabel { quantile: "0.99" }).set(st.commit_p99);
        self.store.dropped.set(store.dropped_writes() as i64);
        self.store.full.set(i64::from(st.full));
        let stats = bus.stats();
        self.events_emitted.set(stats.emitted as i64);
        self.subscribers.set(stats.subscribers as i64);
        self.subscribers_cut.set(stats.cut_off as i64);
        self.blob_bytes.set(blobs.total_bytes() as i64);
        self.logged_in.set(i64::from(bus.logged_in()));
        encode(&self.registry)
    }
}

impl Default for AccountMetrics {
    fn default() -> Self {
        Self::new()
    }
}

fn encode(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    match out.strip_suffix("# EOF\n") {
        Some(body) => body.to_owned(),
        None => out,
    }
}

/// The whole exposition: the process's metrics, then the accounts'. One account named `None` (the
/// single account the flags make) is shown as before, unlabelled; otherwise every account sample
/// gets `account="<name>"`, each family's samples together under one HELP and TYPE.
pub fn render(process: &Metrics, accounts: &[(Option<&str>, String)]) -> String {
    let mut out = process.text();
    match accounts {
        [(None, text)] => out.push_str(text),
        _ => out.push_str(&merge_labelled(accounts)),
    }
    out.push_str("# EOF\n");
    out
}

/// Families of several accounts' expositions merged, each sample labelled with its account.
fn merge_labelled(accounts: &[(Option<&str>, String)]) -> String {
    // (family name, its HELP/TYPE/UNIT lines, its samples), in the order first seen.
    let mut families: Vec<(String, Vec<String>, Vec<String>)> = Vec::new();
    for (name, text) in accounts {
        let account = name.unwrap_or("default");
        let mut current: Option<usize> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# ") {
                let family = rest.split_whitespace().nth(1).unwrap_or_default().to_owned();
                let at = match families.iter().position(|f| f.0 == family) {
                    Some(i) => i,
                    None => {
                        families.push((family, Vec::new(), Vec::new()));
                        families.len() - 1
                    }
                };
                if !families[at].1.iter().any(|h| h == line) && families[at].2.is_empty() {
                    families[at].1.push(line.to_owned());
                }
                current = Some(at);
            } else if let Some(at) = current {
                families[at].2.push(labelled(line, account));
            }
        }
    }
    let mut out = String::new();
    for (_, header, samples) in families {
        for line in header.iter().chain(&samples) {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// `name{a="b"} 1` → `name{account="x",a="b"} 1`; `name 1` → `name{account="x"} 1`.
fn labelled(sample: &str, account: &str) -> String {
    let end = sample.find([' ', '{']).unwrap_or(sample.len());
    let (name, rest) = sample.split_at(end);
    match rest.strip_prefix('{') {
        Some(labels) if labels.starts_with('}') => format!("{name}{{account=\"{account}\"{labels}"),
        Some(labels) => format!("{name}{{account=\"{account}\",{labels}"),
        None => format!("{name}{{account=\"{account}\"}}{rest}"),
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
