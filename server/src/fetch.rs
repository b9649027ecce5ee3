//! Outbound fetches of URLs that come from outside: a FileBox a client names by URL (gRPC or MQTT),
//! a push's `PicUrl`, a video's `video_url`. Such a URL must not make the server a proxy into its
//! own network (server-side request forgery: `/metrics` on loopback, a pod's neighbours, the cloud
//! metadata service at 169.254.169.254 or Alibaba's 100.100.100.200).
//!
//! [`OutboundFetcher`] fetches only `http` and `https`, and refuses every address that is not
//! public ([`refused_range`]) unless `--fetch-allow` covers it. The check runs where the address is
//! known: on the URL itself for an IP-literal host (reqwest does not resolve those), inside the DNS
//! resolver for a name (so the address connected to is the address checked — DNS rebinding cannot
//! slip a second answer in), and on every redirect. A name with any refused address is refused as
//! a whole. Bodies are capped (by `Content-Length` before reading, and while reading), redirects
//! are counted, connecting and the whole exchange have timeouts, and proxies from the environment
//! are ignored (they would resolve the name instead of us).

use std::error::Error as StdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::Url;
use reqwest::header::HeaderMap;

use puppet_proto::ids::Shown;

use crate::backend::BackendError;

/// How many characters of a URL (or host) an error message quotes.
/// How much of a transport error's text an error message keeps.
const REASON_CHARS: usize = 200;

/// The outbound-fetch flags, as given.
#[derive(Clone, Debug, clap::Args)]
pub struct FetchFlags {
    /// Addresses that URLs from clients and pushes may be fetched from although they are not
    /// public (loopback, private, link-local, CGNAT, …): comma-separated CIDRs or single addresses,
    /// e.g. `10.20.0.0/16,127.0.0.1`. Default: none.
    #[arg(
        id = "fetch_allow",
        long = "fetch-allow",
        env = "PUPPET_FETCH_ALLOW",
        value_name = "CIDR,…",
        value_parser = AllowList::parse
    )]
    pub allow: Option<AllowList>,

    /// Largest body fetched from a URL from a client or a push, in MiB.
    #[arg(
        id = "fetch_max_mib",
        long = "fetch-max-mib",
        env = "PUPPET_FETCH_MAX_MIB",
        value_name = "MIB",
        default_value_t = 20,
        value_parser = clap::value_parser!(u64).range(1..=4096)
    )]
    pub max_mib: u64,

    /// Seconds a fetch of a URL from a client or a push may take, body included.
    #[arg(
        id = "fetch_timeout_secs",
        long = "fetch-timeout-secs",
        env = "PUPPET_FETCH_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = 15,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub timeout_secs: u64,

    /// Seconds connecting for such a fetch may take (DNS and TCP/TLS).
    #[arg(
        id = "fetch_connect_timeout_secs",
        long = "fetch-connect-timeout-secs",
        env = "PUPPET_FETCH_CONNECT_TIMEOUT_SECS",
        value_name = "SECS",
        default_value_t = 5,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub connect_timeout_secs: u64,

    /// Redirects such a fetch follows (each target checked like the first URL); 0 follows none.
    #[arg(
        id = "fetch_max_redirects",
        long = "fetch-max-redirects",
        env = "PUPPET_FETCH_MAX_REDIRECTS",
        value_name = "N",
        default_value_t = 3,
        value_parser = clap::value_parser!(u8).range(0..=20)
    )]
    pub max_redirects: u8,
}

/// `--fetch-allow`: comma-separated CIDRs, an address standing for itself alone; empty items (and
/// an empty value) are nothing.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<IpNet>);

impl AllowList {
    /// Parses the flag's value; the error names the entry that is neither a CIDR nor an address.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if let Ok(net) = entry.parse::<IpNet>() {
                nets.push(net.trunc());
            } else if let Ok(addr) = entry.parse::<IpAddr>() {
                nets.push(IpNet::from(addr));
            } else {
                return Err(format!(
                    "`{}` is not a CIDR or an address (e.g. 10.20.0.0/16, 127.0.0.1, fd00::/8)",
                    quote(entry)
                ));
            }
        }
        Ok(Self(nets))
    }
}

impl FetchFlags {
    /// The limits these flags set.
    pub fn limits(&self) -> FetchLimits {
        FetchLimits {
            allow: self.allow.clone().unwrap_or_default().0,
            max_bytes: self.max_mib.saturating_mul(1 << 20),
            max_redirects: self.max_redirects.into(),
            timeout: Duration::from_secs(self.timeout_secs),
            connect_timeout: Duration::from_secs(self.connect_timeout_secs),
        }
    }

    /// The fetcher these flags describe.
    pub fn build(&self) -> anyhow::Result<OutboundFetcher> {
        OutboundFetcher::new(self.limits())
    }
}

/// What an [`OutboundFetcher`] allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FetchLimits {
    /// Non-public ranges fetched from anyway.
    pub allow: Vec<IpNet>,
    /// Largest body, in bytes.
    pub max_bytes: u64,
    /// Redirects followed.
    pub max_redirects: usize,
    /// The whole exchange, body included.
    pub timeout: Duration,
    /// Resolving and connecting.
    pub connect_timeout: Duration,
}

impl Default for FetchLimits {
    /// The flags' defaults.
    fn default() -> Self {
        Self {
            allow: Vec::new(),
            max_bytes: 20 << 20,
            max_redirects: 3,
            timeout: Duration::from_secs(15),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// A fetched body and the response's headers.
#[derive(Debug)]
pub struct Fetched {
    /// The response headers (content type, `Content-Disposition`, …).
    pub headers: HeaderMap,
    /// The body, at most the configured size.
    pub bytes: Vec<u8>,
}

/// Why a fetch did not happen or did not finish. Every URL in it is quoted (at most 64 characters,
/// control characters escaped, credentials dropped).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// The URL (or a redirect) leads to an address that is not public.
    #[error("fetching {url} was refused: {refusal}")]
    Refused {
        /// The URL asked for.
        url: String,
        /// What was refused.
        refusal: Refusal,
    },
    /// Not a URL this server fetches: malformed, not http(s), or redirecting too often or to a
    /// scheme it does not fetch.
    #[error("cannot fetch {url}: {reason}")]
    Invalid {
        /// The URL asked for.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The body is larger than `--fetch-max-mib`.
    #[error("fetching {url}: the file is larger than {limit_mib} MiB (--fetch-max-mib)")]
    TooLarge {
        /// The URL asked for.
        url: String,
        /// The limit.
        limit_mib: u64,
    },
    /// Connecting or the whole exchange took too long.
    #[error("fetching {url} timed out: {what} took longer than {secs} s ({flag})")]
    Timeout {
        /// The URL asked for.
        url: String,
        /// `connecting` or `the download`.
        what: &'static str,
        /// The limit.
        secs: u64,
        /// The flag that sets it.
        flag: &'static str,
    },
    /// The host could not be resolved or reached, or the connection failed.
    #[error("fetching {url} failed: {reason}")]
    Unreachable {
        /// The URL asked for.
        url: String,
        /// The transport's reason.
        reason: String,
    },
    /// The server answered with a status other than 2xx.
    #[error("fetching {url}: the server answered HTTP {status}")]
    Status {
        /// The URL asked for.
        url: String,
        /// The HTTP status.
        status: u16,
    },
}

impl From<FetchError> for BackendError {
    fn from(e: FetchError) -> Self {
        let text = e.to_string();
        match e {
            FetchError::Refused { .. } => BackendError::PermissionDenied(text),
            FetchError::Invalid { .. } | FetchError::TooLarge { .. } => BackendError::InvalidArgument(text),
            FetchError::Status { status: 404 | 410, .. } => BackendError::Absent(text),
            FetchError::Status { status: 408 | 429, .. } => BackendError::Unavailable(text),
            FetchError::Status { status: 400..=499, .. } => BackendError::FailedPrecondition(text),
            FetchError::Timeout { .. } | FetchError::Unreachable { .. } | FetchError::Status { .. } => {
                BackendError::Unavailable(text)
            }
        }
    }
}

/// An address that is not to be fetched from, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The DNS name that resolved to the address, quoted; `None` for an IP-literal host.
    pub host: Option<String>,
    /// The refused address.
    pub addr: IpAddr,
    /// What kind of address it is ("a loopback address", …).
    pub range: &'static str,
    /// The redirect target (quoted) when the refused address came from a redirect.
    pub via: Option<String>,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(via) = &self.via {
            write!(f, "it redirected to {via}, and ")?;
        }
        write!(
            f,
            "{} {}; if this server may fetch from there, allow it with --fetch-allow {} (PUPPET_FETCH_ALLOW)",
            self.subject(),
            self.range,
            IpNet::from(self.suggest())
        )
    }
}

impl StdError for Refusal {}

impl Refusal {
    fn subject(&self) -> String {
        let addr = match embedded_v4(self.addr) {
            Some(v4) => format!("{} (IPv4 {v4})", self.addr),
            None => self.addr.to_string(),
        };
        match &self.host {
            Some(host) => format!("`{host}` resolves to {addr}, which is"),
            None => format!("{addr} is"),
        }
    }

    /// The one address to allow (the IPv4 address an IPv6 one embeds).
    fn suggest(&self) -> IpAddr {
        embedded_v4(self.addr).map(IpAddr::V4).unwrap_or(self.addr)
    }
}

/// What is wrong with a URL (the first or a redirect's) before connecting.
enum UrlProblem {
    /// Not http(s).
    Scheme,
    /// An IP-literal host that is refused.
    Refused(Refusal),
}

/// `text` as a message may show client input ([`Shown`]: escaped, at most 64 characters).
fn quote(text: &str) -> String {
    Shown(text).to_string()
}

/// A parsed URL quoted for a message, without its user name and password.
fn quote_url(url: &Url) -> String {
    let mut shown = url.clone();
    _ = shown.set_password(None);
    _ = shown.set_username("");
    quote(shown.as_str())
}

const fn v4(a: u8, b: u8, c: u8, d: u8, prefix: u8) -> Ipv4Net {
    Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), prefix)
}

const fn v6(segments: [u16; 8], prefix: u8) -> Ipv6Net {
    let [a, b, c, d, e, f, g, h] = segments;
    Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, d, e, f, g, h), prefix)
}

const LOOPBACK: &str = "a loopback address";
const PRIVATE: &str = "a private address";
const LINK_LOCAL: &str = "a link-local address (cloud metadata services such as 169.254.169.254 live there)";
const DOCUMENTATION: &str = "a documentation address";
const MULTICAST: &str = "a multicast address";

/// IPv4 ranges that are not fetched from (RFC 6890 and its updates), most specific first.
const V4_REFUSED: [(Ipv4Net, &str); 15] = [
    (v4(0, 0, 0, 0, 8), "an unspecified (\"this network\") address"),
    (v4(10, 0, 0, 0, 8), PRIVATE),
    (
        v4(100, 64, 0, 0, 10),
        "a shared (carrier-grade NAT) address (cloud metadata services such as 100.100.100.200 live there)",
    ),
    (v4(127, 0, 0, 0, 8), LOOPBACK),
    (v4(169, 254, 0, 0, 16), LINK_LOCAL),
    (v4(172, 16, 0, 0, 12), PRIVATE),
    (v4(192, 0, 0, 0, 24), "an IETF protocol-assignment address"),
    (v4(192, 0, 2, 0, 24), DOCUMENTATION),
    (v4(192, 168, 0, 0, 16), PRIVATE),
    (v4(198, 18, 0, 0, 15), "a benchmarking address"),
    (v4(198, 51, 100, 0, 24), DOCUMENTATION),
    (v4(203, 0, 113, 0, 24), DOCUMENTATION),
    (v4(224, 0, 0, 0, 4), MULTICAST),
    (v4(255, 255, 255, 255, 32), "the broadcast address"),
    (v4(240, 0, 0, 0, 4), "a reserved address"),
];

/// IPv6 ranges that are not fetched from, most specific first. Ranges that embed an IPv4 address
/// are judged by that address instead (see [`embedded_v4`]).
const V6_REFUSED: [(Ipv6Net, &str); 11] = [
    (v6([0, 0, 0, 0, 0, 0, 0, 0], 128), "the unspecified address"),
    (v6([0, 0, 0, 0, 0, 0, 0, 1], 128), LOOPBACK),
    (v6([0x64, 0xff9b, 1, 0, 0, 0, 0, 0], 48), "a local-use NAT64 address"),
    (v6([0x100, 0, 0, 0, 0, 0, 0, 0], 64), "a discard-only address"),
    (v6([0x2001, 2, 0, 0, 0, 0, 0, 0], 48), "a benchmarking address"),
    (v6([0x2001, 0xdb8, 0, 0, 0, 0, 0, 0], 32), DOCUMENTATION),
    (v6([0x2001, 0, 0, 0, 0, 0, 0, 0], 23), "an IETF protocol-assignment address (Teredo included)"),
    (v6([0x3fff, 0, 0, 0, 0, 0, 0, 0], 20), DOCUMENTATION),
    (v6([0xfc00, 0, 0, 0, 0, 0, 0, 0], 7), "a unique-local (private) address"),
    (v6([0xfe80, 0, 0, 0, 0, 0, 0, 0], 10), LINK_LOCAL),
    (v6([0xfec0, 0, 0, 0, 0, 0, 0, 0], 10), "a site-local address"),
];

/// The IPv4 address an IPv6 address stands for: IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d` and 6to4 `2002:aabb:ccdd::`. `None` for IPv4 itself and for
/// `::` and `::1`.
pub fn embedded_v4(addr: IpAddr) -> Option<Ipv4Addr> {
    let IpAddr::V6(v6) = addr else { return None };
    let s = v6.segments();
    let low = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        [0, 0, 0, 0, 0, 0xffff, _, _] => Some(low),
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, _, _] => Some(low),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => Some(low),
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8)),
        _ => None,
    }
}

/// What kind of non-public address `addr` is, or `None` when it is public. IPv6 addresses that
/// embed an IPv4 address are judged by it; multicast IPv6 (`ff00::/8`) is refused too.
pub fn refused_range(addr: IpAddr) -> Option<&'static str> {
    if let Some(v4) = embedded_v4(addr) {
        return refused_range(IpAddr::V4(v4));
    }
    match addr {
        IpAddr::V4(a) => V4_REFUSED.iter().find(|(net, _)| net.contains(&a)).map(|(_, what)| *what),
        IpAddr::V6(a) if a.is_multicast() => Some(MULTICAST),
        IpAddr::V6(a) => V6_REFUSED.iter().find(|(net, _)| net.contains(&a)).map(|(_, what)| *what),
    }
}

/// The address check, shared by the resolver and the URL check (first URL and every redirect).
#[derive(Clone, Debug)]
struct Guard {
    allow: Arc<[IpNet]>,
}

impl Guard {
    /// `Ok` when `addr` is public or allowed.
    fn check(&self, addr: IpAddr, host: Option<&str>) -> Result<(), Refusal> {
        let Some(range) = refused_range(addr) else { return Ok(()) };
        let v4 = embedded_v4(addr).map(IpAddr::V4);
        if self.allow.iter().any(|net| net.contains(&addr) || v4.is_some_and(|v| net.contains(&v))) {
            return Ok(());
        }
        Err(Refusal { host: host.map(quote), addr, range, via: None })
    }

    /// The addresses `host` resolved to, all of them checked: one refused address refuses the name.
    fn admit(&self, host: &str, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
        for a in &addrs {
            self.check(a.ip(), Some(host))?;
        }
        Ok(addrs)
    }

    /// The scheme and, for an IP-literal host, the address of `url`. A named host is checked when
    /// it is resolved.
    fn check_url(&self, url: &Url) -> Result<(), UrlProblem> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(UrlProblem::Scheme);
        }
        if let Some(addr) = literal_host(url) {
            self.check(addr, None).map_err(UrlProblem::Refused)?;
        }
        Ok(())
    }
}

/// The address of an IP-literal host (`http://127.0.0.1/`, `http://[::1]/`; numeric forms such as
/// `http://2130706433/` are already normalised by the URL parser).
fn literal_host(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// The system resolver (`getaddrinfo` on the blocking pool), every answer checked.
struct GuardedResolver(Guard);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let addrs = guard.admit(&host, addrs)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fetches URLs from clients and pushes within [`FetchLimits`]. Cheap to clone.
///
/// Redirects are followed here rather than by reqwest, so each hop goes through the same check as
/// the first URL and a refusal can say which redirect led where (reqwest 0.13 answers the 3xx
/// itself for a non-http `Location`, and its errors do not tell the hop).
#[derive(Clone, Debug)]
pub struct OutboundFetcher {
    client: reqwest::Client,
    guard: Guard,
    limits: Arc<FetchLimits>,
}

impl OutboundFetcher {
    /// A fetcher enforcing `limits`.
    pub fn new(limits: FetchLimits) -> anyhow::Result<Self> {
        // reqwest is built without a rustls provider of its own; ring is the process's one.
        _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let guard = Guard { allow: limits.allow.clone().into() };
        let client = reqwest::Client::builder()
            .dns_resolver(GuardedResolver(guard.clone()))
            .redirect(reqwest::redirect::Policy::none())
            // A proxy would resolve the name itself, past the resolver's check.
            .no_proxy()
            .connect_timeout(limits.connect_timeout)
            .timeout(limits.timeout)
            .user_agent(concat!("puppet-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client, guard, limits: Arc::new(limits) })
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &FetchLimits {
        &self.limits
    }

    /// Checks `url` before any connection: it parses, is http(s), and an IP-literal host is allowed.
    pub fn check(&self, url: &str) -> Result<Url, FetchError> {
        let parsed = Url::parse(url.trim())
            .map_err(|e| FetchError::Invalid { url: quote(url), reason: format!("not a URL ({e})") })?;
        let shown = quote_url(&parsed);
        match self.guard.check_url(&parsed) {
            Ok(()) => Ok(parsed),
            Err(UrlProblem::Refused(refusal)) => Err(FetchError::Refused { url: shown, refusal }),
            Err(UrlProblem::Scheme) => Err(FetchError::Invalid {
                url: shown,
                reason: format!("only http and https URLs are fetched, not `{}:`", quote(parsed.scheme())),
            }),
        }
    }

    /// `GET url`, within the limits.
    pub async fn get(&self, url: &str) -> Result<Fetched, FetchError> {
        let parsed = self.check(url)?;
        let shown = quote_url(&parsed);
        // One deadline for the whole chain of redirects (reqwest's own timeout is per request).
        let result = match tokio::time::timeout(self.limits.timeout, self.exchange(parsed, &shown)).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(&shown, false)),
        };
        if let Err(e @ FetchError::Refused { .. }) = &result {
            tracing::warn!(error = %e, "refused an outbound fetch");
        }
        result
    }

    async fn exchange(&self, mut url: Url, shown: &str) -> Result<Fetched, FetchError> {
        let mut redirects = 0;
        // The last redirect's target (quoted), for messages.
        let mut via: Option<String> = None;
        let mut response = loop {
            let response =
                self.client.get(url.clone()).send().await.map_err(|e| self.failure(e, shown, via.as_deref()))?;
            if !matches!(response.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                break response;
            }
            let Some(location) = response.headers().get(reqwest::header::LOCATION) else { break response };
            let invalid = |reason: String| FetchError::Invalid { url: shown.to_owned(), reason };
            if redirects == self.limits.max_redirects {
                return Err(invalid(format!(
                    "it redirected more than {} times (--fetch-max-redirects)",
                    self.limits.max_redirects
                )));
            }
            redirects += 1;
            let next = location.to_str().ok().and_then(|l| url.join(l).ok()).ok_or_else(|| {
                invalid(format!(
                    "it redirected to a malformed Location `{}`",
                    quote(&String::from_utf8_lossy(location.as_bytes()))
                ))
            })?;
            let target = quote_url(&next);
            match self.guard.check_url(&next) {
                Ok(()) => {}
                Err(UrlProblem::Scheme) => {
                    return Err(invalid(format!("it redirected to {target}; only http and https URLs are fetched")));
                }
                Err(UrlProblem::Refused(mut refusal)) => {
                    refusal.via = Some(target);
                    return Err(FetchError::Refused { url: shown.to_owned(), refusal });
                }
            }
            via = Some(target);
            url = next;
        };
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: shown.to_owned(), status: status.as_u16() });
        }
        let too_large = || FetchError::TooLarge { url: shown.to_owned(), limit_mib: self.limits.max_bytes >> 20 };
        let max = self.limits.max_bytes;
        if response.content_length().is_some_and(|n| n > max) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| self.failure(e, shown, via.as_deref()))? {
            if (bytes.len() + chunk.len()) as u64 > max {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        Ok(Fetched { headers: response.headers().clone(), bytes })
    }

    fn timeout(&self, shown: &str, connecting: bool) -> FetchError {
        let (what, secs, flag) = if connecting {
            ("connecting", self.limits.connect_timeout.as_secs(), "--fetch-connect-timeout-secs")
        } else {
            ("the download", self.limits.timeout.as_secs(), "--fetch-timeout-secs")
        };
        FetchError::Timeout { url: shown.to_owned(), what, secs, flag }
    }

    /// The [`FetchError`] for a reqwest error: the resolver's refusal when the error chain carries
    /// one, else a timeout or a transport failure.
    fn failure(&self, e: reqwest::Error, shown: &str, via: Option<&str>) -> FetchError {
        let url = shown.to_owned();
        let mut causes = Vec::new();
        let mut source: Option<&(dyn StdError + 'static)> = e.source();
        while let Some(s) = source {
            if let Some(r) = s.downcast_ref::<Refusal>() {
                let refusal = Refusal { via: via.map(str::to_owned), ..r.clone() };
                return FetchError::Refused { url, refusal };
            }
            causes.push(s.to_string());
            source = s.source();
        }
        if e.is_timeout() {
            return self.timeout(shown, e.is_connect());
        }
        // reqwest's own text says little ("error sending request"); the causes say what happened.
        let reason = std::iter::once(e.without_url().to_string()).chain(causes).collect::<Vec<_>>().join(": ");
        let reason: String = reason.chars().take(REASON_CHARS).collect();
        FetchError::Unreachable { url, reason: quote_reason(&reason) }
    }
}

/// A transport reason with control characters escaped.
fn quote_reason(reason: &str) -> String {
    reason.chars().flat_map(|c| if c.is_control() { c.escape_default().collect() } else { vec![c] }).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use proptest::prelude::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn every_non_public_range_is_refused_with_its_name() {
        let cases = [
            ("0.0.0.0", "unspecified"),
            ("0.1.2.3", "unspecified"),
            ("10.0.0.1", "private"),
            ("10.255.255.255", "private"),
            ("100.64.0.1", "carrier-grade NAT"),
            ("100.100.100.200", "carrier-grade NAT"),
            ("100.127.255.255", "carrier-grade NAT"),
            ("127.0.0.1", "loopback"),
            ("127.255.255.254", "loopback"),
            ("169.254.169.254", "link-local"),
            ("172.16.0.1", "private"),
            ("172.31.255.255", "private"),
            ("192.0.0.8", "protocol-assignment"),
            ("192.0.2.1", "documentation"),
            ("192.168.1.1", "private"),
            ("198.18.0.1", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.9", "documentation"),
            ("224.0.0.1", "multicast"),
            ("239.255.255.250", "multicast"),
            ("255.255.255.255", "broadcast"),
            ("240.0.0.1", "reserved"),
            ("::", "unspecified"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("::ffff:169.254.169.254", "link-local"),
            ("::ffff:10.1.2.3", "private"),
            ("::ffff:100.100.100.200", "carrier-grade NAT"),
            ("::127.0.0.1", "loopback"),
            ("::10.0.0.1", "private"),
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a9fe:a9fe", "link-local"),
            ("2002:7f00:1::", "loopback"),
            ("2002:c0a8:101::1", "private"),
            ("64:ff9b:1::1", "NAT64"),
            ("100::1", "discard"),
            ("2001:2::1", "benchmarking"),
            ("2001:db8::1", "documentation"),
            ("2001::1", "Teredo"),
            ("3fff::1", "documentation"),
            ("fc00::1", "unique-local"),
            ("fd12:3456::1", "unique-local"),
            ("fe80::1", "link-local"),
            ("febf::1", "link-local"),
            ("fec0::1", "site-local"),
            ("ff02::1", "multicast"),
            ("ff0e::1", "multicast"),
        ];
        for (addr, kind) in cases {
            let range = refused_range(ip(addr)).unwrap_or_else(|| panic!("{addr} is refused"));
            assert!(range.contains(kind), "{addr}: {range:?} should say {kind}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "9.255.255.255",
            "11.0.0.0",
            "100.63.255.255",
            "100.128.0.0",
            "126.255.255.255",
            "128.0.0.0",
            "169.253.255.255",
            "169.255.0.0",
            "172.15.255.255",
            "172.32.0.0",
            "192.0.1.0",
            "192.167.255.255",
            "192.169.0.0",
            "198.17.255.255",
            "198.20.0.0",
            "223.255.255.255",
            "2606:4700:4700::1111",
            "2400:cb00::1",
            "::ffff:8.8.8.8",
            "::8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
            "2001:200::1",
            "fbff::1",
        ] {
            assert_eq!(refused_range(ip(public)), None, "{public} is public");
        }
    }

    #[test]
    fn ipv6_forms_of_an_ipv4_address_are_judged_by_it() {
        assert_eq!(embedded_v4(ip("::ffff:127.0.0.1")), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(embedded_v4(ip("::7f00:1")), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(embedded_v4(ip("64:ff9b::7f00:1")), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(embedded_v4(ip("2002:7f00:1::5")), Some(Ipv4Addr::LOCALHOST));
        assert_eq!(embedded_v4(ip("::1")), None);
        assert_eq!(embedded_v4(ip("::")), None);
        assert_eq!(embedded_v4(ip("127.0.0.1")), None);
        assert_eq!(embedded_v4(ip("2606:4700::1")), None);
    }

    fn guard(allow: &[&str]) -> Guard {
        Guard { allow: AllowList::parse(&allow.join(",")).unwrap().0.into() }
    }

    #[test]
    fn the_allow_list_opens_exactly_what_it_names() {
        let g = guard(&["127.0.0.1/32", "10.20.0.0/16"]);
        assert!(g.check(ip("127.0.0.1"), None).is_ok());
        assert!(g.check(ip("::ffff:127.0.0.1"), None).is_ok(), "the v4-mapped form of an allowed address");
        assert!(g.check(ip("10.20.255.1"), None).is_ok());
        assert!(g.check(ip("8.8.8.8"), None).is_ok(), "public addresses need no entry");
        let r = g.check(ip("127.0.0.2"), None).unwrap_err();
        assert_eq!((r.addr, r.range), (ip("127.0.0.2"), LOOPBACK));
        assert!(g.check(ip("10.21.0.1"), None).is_err());
        assert!(g.check(ip("::1"), None).is_err());
        assert!(g.check(ip("169.254.169.254"), None).is_err());

        let r = guard(&[]).check(ip("::ffff:169.254.169.254"), Some("metadata.internal")).unwrap_err();
        let text = r.to_string();
        assert!(
            text.starts_with("`metadata.internal` resolves to ::ffff:169.254.169.254 (IPv4 169.254.169.254)"),
            "{text}"
        );
        assert!(text.contains("--fetch-allow 169.254.169.254/32"), "{text}");
    }

    #[test]
    fn allow_entries_are_cidrs_or_addresses() {
        assert_eq!(AllowList::parse("").unwrap(), AllowList::default());
        assert_eq!(AllowList::parse(" , ").unwrap(), AllowList::default());
        let list = AllowList::parse("10.1.2.3/8, 127.0.0.1 ,fd00::/8,::1,").unwrap();
        let want: Vec<IpNet> =
            ["10.0.0.0/8", "127.0.0.1/32", "fd00::/8", "::1/128"].iter().map(|n| n.parse().unwrap()).collect();
        assert_eq!(list.0, want);
        let e = AllowList::parse("10.0.0.0/8,localhost").unwrap_err();
        assert!(e.contains("`localhost` is not a CIDR"), "{e}");
        assert!(AllowList::parse("10.0.0.0/33").is_err());
    }

    #[test]
    fn every_resolved_address_is_checked() {
        let g = guard(&[]);
        let at = |a: &str| SocketAddr::new(ip(a), 0);
        assert!(g.admit("ok.example", vec![at("8.8.8.8"), at("2606:4700::1")]).is_ok());
        // One private answer among public ones (a rebinding attempt) refuses the name.
        let r = g.admit("rebind.example", vec![at("8.8.8.8"), at("10.0.0.7")]).unwrap_err();
        assert_eq!((r.host.as_deref(), r.addr), (Some("rebind.example"), ip("10.0.0.7")));
    }

    #[tokio::test]
    async fn the_resolver_refuses_a_name_for_loopback() {
        use reqwest::dns::Resolve;
        let resolver = GuardedResolver(guard(&[]));
        let e = match resolver.resolve("localhost".parse().unwrap()).await {
            Ok(addrs) => panic!("localhost resolved to {:?}", addrs.collect::<Vec<_>>()),
            Err(e) => e,
        };
        let r = e.downcast_ref::<Refusal>().unwrap_or_else(|| panic!("a refusal, not {e}"));
        assert_eq!((r.host.as_deref(), r.range), (Some("localhost"), LOOPBACK));
        let allowed = GuardedResolver(guard(&["127.0.0.0/8", "::1"]));
        assert!(allowed.resolve("localhost".parse().unwrap()).await.is_ok());
    }

    /// A local HTTP origin that counts connections and answers each request with `respond(path)`.
    struct Origin {
        addr: SocketAddr,
        hits: Arc<AtomicUsize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for Origin {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl Origin {
        async fn start(ip: &str, respond: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> Self {
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            let hits = Arc::new(AtomicUsize::new(0));
            let respond = Arc::new(respond);
            let counter = hits.clone();
            let task = tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let respond = respond.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 << 10 {
                            match conn.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head);
                        let path = text.split(' ').nth(1).unwrap_or("/").to_owned();
                        _ = conn.write_all(&respond(&path)).await;
                        _ = conn.shutdown().await;
                    });
                }
            });
            Self { addr, hits, task }
        }

        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }

        fn url(&self, path: &str) -> String {
            format!("http://{}{path}", self.addr)
        }
    }

    fn ok_body(body: &[u8]) -> Vec<u8> {
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        );
        [head.as_bytes(), body].concat()
    }

    fn redirect(to: &str) -> Vec<u8> {
        format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").into_bytes()
    }

    fn fetcher(allow: &[&str], tweak: impl FnOnce(&mut FetchLimits)) -> OutboundFetcher {
        let mut limits = FetchLimits { allow: AllowList::parse(&allow.join(",")).unwrap().0, ..Default::default() };
        tweak(&mut limits);
        OutboundFetcher::new(limits).unwrap()
    }

    #[tokio::test]
    async fn a_loopback_url_is_refused_before_any_connection() {
        let origin = Origin::start("127.0.0.1", |_| ok_body(b"secret")).await;
        let e = fetcher(&[], |_| {}).get(&origin.url("/secret.jpg")).await.unwrap_err();
        let FetchError::Refused { url, refusal } = &e else { panic!("{e:?}") };
        assert_eq!(url, &origin.url("/secret.jpg"));
        assert_eq!((refusal.addr, refusal.host.as_deref(), refusal.via.as_deref()), (ip("127.0.0.1"), None, None));
        let text = e.to_string();
        assert!(
            text.contains("was refused: 127.0.0.1 is a loopback address")
                && text.contains("--fetch-allow 127.0.0.1/32"),
            "{text}"
        );
        assert!(matches!(BackendError::from(e), BackendError::PermissionDenied(_)));
        // By name, through the resolver.
        let e = fetcher(&[], |_| {}).get(&format!("http://localhost:{}/x", origin.addr.port())).await.unwrap_err();
        assert!(
            matches!(&e, FetchError::Refused { refusal, .. } if refusal.host.as_deref() == Some("localhost")),
            "{e:?}"
        );
        // IPv6 and numeric spellings of loopback.
        for url in ["http://[::1]/", "http://[::ffff:127.0.0.1]/", "http://2130706433/", "http://0x7f.1/"] {
            let e = fetcher(&[], |_| {}).get(url).await.unwrap_err();
            assert!(matches!(e, FetchError::Refused { .. }), "{url}: {e:?}");
        }
        assert_eq!(origin.hits(), 0, "the origin saw no connection");
    }

    #[tokio::test]
    async fn an_allowed_address_is_fetched() {
        let origin = Origin::start("127.0.0.1", |_| {
            let mut r = ok_body(b"jpeg bytes");
            let at = r.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
            r.splice(at..at, b"Content-Disposition: attachment; filename=\"a.jpg\"\r\n".iter().copied());
            r
        })
        .await;
        let got = fetcher(&["127.0.0.1/32"], |_| {}).get(&origin.url("/a.jpg")).await.unwrap();
        assert_eq!(got.bytes, b"jpeg bytes");
        assert_eq!(got.headers.get("content-type").unwrap(), "image/jpeg");
        assert_eq!(origin.hits(), 1);
        let by_name = fetcher(&["127.0.0.0/8", "::1"], |_| {})
            .get(&format!("http://localhost:{}/", origin.addr.port()))
            .await
            .unwrap();
        assert_eq!(by_name.bytes, b"jpeg bytes");
    }

    #[tokio::test]
    async fn a_redirect_to_a_refused_address_is_refused() {
        let target = Origin::start("127.0.0.1", |_| ok_body(b"secret")).await;
        let (to_ip, to_name) = (target.url("/metrics"), format!("http://localhost:{}/metrics", target.addr.port()));
        let front =
            Origin::start("127.0.0.2", move |path| redirect(if path == "/ip" { &to_ip } else { &to_name })).await;
        let f = fetcher(&["127.0.0.2/32"], |_| {});

        let e = f.get(&front.url("/ip")).await.unwrap_err();
        let FetchError::Refused { url, refusal } = &e else { panic!("{e:?}") };
        assert_eq!(url, &front.url("/ip"));
        assert_eq!(refusal.via.as_deref(), Some(target.url("/metrics").as_str()));
        assert!(e.to_string().contains("it redirected to http://127.0.0.1:"), "{e}");

        let e = f.get(&front.url("/name")).await.unwrap_err();
        let FetchError::Refused { refusal, .. } = &e else { panic!("{e:?}") };
        assert_eq!(refusal.host.as_deref(), Some("localhost"));
        assert!(refusal.via.as_deref().is_some_and(|v| v.starts_with("http://localhost:")), "{e}");

        assert_eq!(front.hits(), 2);
        assert_eq!(target.hits(), 0, "the redirect target saw no connection");
        // Allowed, the same redirect is followed.
        let got = fetcher(&["127.0.0.1", "127.0.0.2"], |_| {}).get(&front.url("/ip")).await.unwrap();
        assert_eq!((got.bytes.as_slice(), target.hits()), (&b"secret"[..], 1));
    }

    #[tokio::test]
    async fn redirects_are_counted_and_their_scheme_checked() {
        let origin = Origin::start("127.0.0.1", |path| match path {
            "/file" => redirect("file:///etc/passwd"),
            "/gopher" => redirect("gopher://127.0.0.1:70/"),
            _ => redirect("/loop"),
        })
        .await;
        let f = fetcher(&["127.0.0.1"], |l| l.max_redirects = 2);
        let e = f.get(&origin.url("/loop")).await.unwrap_err();
        assert!(matches!(&e, FetchError::Invalid { reason, .. } if reason.contains("more than 2 times")), "{e:?}");
        assert_eq!(origin.hits(), 3, "the first request and two redirects");
        for path in ["/file", "/gopher"] {
            let e = f.get(&origin.url(path)).await.unwrap_err();
            assert!(
                matches!(&e, FetchError::Invalid { reason, .. } if reason.contains("only http and https")),
                "{e:?}"
            );
            assert!(matches!(BackendError::from(e), BackendError::InvalidArgument(_)));
        }
        let none = fetcher(&["127.0.0.1"], |l| l.max_redirects = 0);
        assert!(matches!(none.get(&origin.url("/loop")).await, Err(FetchError::Invalid { .. })));
    }

    #[tokio::test]
    async fn bodies_beyond_the_cap_are_refused() {
        let origin = Origin::start("127.0.0.1", |path| match path {
            "/declared" => ok_body(&[1u8; 2000]),
            "/exact" => ok_body(&[1u8; 1000]),
            // No Content-Length: the cap applies while reading.
            _ => [&b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n"[..], &[2u8; 5000][..]].concat(),
        })
        .await;
        let f = fetcher(&["127.0.0.1"], |l| l.max_bytes = 1000);
        for path in ["/declared", "/streamed"] {
            let e = f.get(&origin.url(path)).await.unwrap_err();
            assert!(matches!(e, FetchError::TooLarge { .. }), "{path}: {e:?}");
            assert!(matches!(BackendError::from(e), BackendError::InvalidArgument(m) if m.contains("--fetch-max-mib")));
        }
        assert_eq!(f.get(&origin.url("/exact")).await.unwrap().bytes.len(), 1000);
    }

    #[tokio::test]
    async fn only_http_and_https_urls_are_fetched() {
        let f = fetcher(&[], |_| {});
        for url in [
            "ftp://example.com/a.jpg",
            "file:///etc/passwd",
            "gopher://example.com/",
            "data:image/png;base64,AAAA",
            "javascript:alert(1)",
            "not a url",
            "http://",
            "",
            "http://exa mple.com/",
        ] {
            let e = f.get(url).await.unwrap_err();
            assert!(matches!(e, FetchError::Invalid { .. }), "{url:?}: {e:?}");
            assert!(matches!(BackendError::from(e), BackendError::InvalidArgument(_)));
        }
    }

    #[tokio::test]
    async fn failures_map_to_precise_statuses() {
        let origin = Origin::start("127.0.0.1", |path| match path {
            "/gone" => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            _ => b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
        })
        .await;
        let f = fetcher(&["127.0.0.1"], |_| {});
        let e = f.get(&origin.url("/gone")).await.unwrap_err();
        assert_eq!(e, FetchError::Status { url: origin.url("/gone"), status: 404 });
        assert!(matches!(BackendError::from(e), BackendError::Absent(_)));
        assert!(matches!(
            f.get(&origin.url("/busy")).await.map_err(BackendError::from),
            Err(BackendError::Unavailable(_))
        ));

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let e = f.get(&format!("http://{closed}/")).await.unwrap_err();
        assert!(matches!(&e, FetchError::Unreachable { .. }), "{e:?}");
        assert!(matches!(BackendError::from(e), BackendError::Unavailable(_)));
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        // Accepts, never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let _held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                open.push(c);
            }
        });
        let f = fetcher(&["127.0.0.1"], |l| l.timeout = Duration::from_millis(300));
        let e = f.get(&format!("http://{addr}/")).await.unwrap_err();
        assert!(matches!(&e, FetchError::Timeout { what: "the download", .. }), "{e:?}");
        assert!(matches!(BackendError::from(e), BackendError::Unavailable(m) if m.contains("--fetch-timeout-secs")));
        _held.abort();
    }

    #[test]
    fn messages_quote_at_most_64_characters_and_no_credentials() {
        let long = format!("http://example.com/{}", "a".repeat(200));
        let e = fetcher(&[], |_| {}).check(&format!("ftp://u:pw@example.com/{long}")).unwrap_err();
        let FetchError::Invalid { url, .. } = &e else { panic!("{e:?}") };
        assert!(url.starts_with("ftp://example.com/") && url.ends_with(" bytes)"), "{url}");
        assert!(url.chars().take_while(|c| *c != '…').count() == 64 && !url.contains("pw"), "{url}");
        assert_eq!(quote("a\nb\u{202E}c\u{1b}"), "a\\nb\\u{202e}c\\u{1b}");
        let e = fetcher(&[], |_| {}).check("not a url\r\n\u{7}").unwrap_err();
        assert!(!e.to_string().contains(['\r', '\n', '\u{7}']), "{e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

        #[test]
        fn v4_mapped_and_compatible_addresses_are_judged_as_ipv4(a in any::<u32>()) {
            let v4 = Ipv4Addr::from(a);
            let refused = refused_range(IpAddr::V4(v4)).is_some();
            prop_assert_eq!(refused_range(IpAddr::V6(v4.to_ipv6_mapped())).is_some(), refused);
            prop_assert_eq!(refused_range(IpAddr::V6(v4.to_ipv6_compatible())).is_some(), refused);
        }

        #[test]
        fn checking_arbitrary_input_never_panics(text in any::<String>(), host in "[\\PC]{0,40}") {
            // One client for every case: building one loads the TLS roots.
            static FETCHER: std::sync::OnceLock<OutboundFetcher> = std::sync::OnceLock::new();
            let f = FETCHER.get_or_init(|| fetcher(&[], |_| {}));
            let checked = f.check(&text);
            if let Err(e) = &checked {
                let _ = BackendError::from(e.clone());
            }
            for url in [format!("http://{host}/"), format!("https://[{host}]:1/x"), format!("{host}://x")] {
                if let Err(e) = f.check(&url) {
                    prop_assert!(!e.to_string().contains(['\n', '\r']));
                }
            }
            prop_assert!(quote(&text).chars().filter(|c| *c != '…').count() <= 64 * 10);
        }

        #[test]
        fn any_address_is_classified_without_panicking(a in any::<u128>(), allow in any::<u32>()) {
            let addr = IpAddr::V6(Ipv6Addr::from(a));
            let g = guard(&[&Ipv4Addr::from(allow).to_string()]);
            if let Err(r) = g.check(addr, Some("h")) {
                prop_assert!(r.to_string().contains("--fetch-allow"));
            }
        }
    }
}
