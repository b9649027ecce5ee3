//! The `upstream` backend: puppet-rs in front of another Wechaty puppet service (a hosted token
//! provider, `wechaty gateway`, the official Node `PuppetServer`, or puppet-rs itself).
//!
//! * Every call of the contract is forwarded as the matching `wechaty.Puppet` call ([`forward`]),
//!   with the upstream's answers mapped to precise errors: the Node service's `UNKNOWN` with a
//!   stack trace for a missing id becomes `NOT_FOUND` naming the id, without the stack.
//! * One upstream `Event` stream ([`stream`]) feeds our bus: any number of our subscribers,
//!   sequence numbers, resume. Upstream heartbeats are absorbed; LOGIN/LOGOUT/SCAN/READY drive our
//!   login state; the stream's health drives our readiness ([`Backend::serving`]). When the
//!   upstream drops, the stream reconnects with exponential back-off and jitter, calls `Start`
//!   again when a client had started, and announces DIRTY for the payloads served meanwhile.
//! * Contact, room and room-member payloads are kept in the store's payload cache until the
//!   upstream says DIRTY ([`cache`]; `--upstream-cache false` turns it off).
//! * Files ([`files`]): FileBoxes the upstream returns with its own Uuid are downloaded into our
//!   blob store and re-served under ours; ours are uploaded before a send. Every message to the
//!   upstream stays below 4 MiB (uploads go in 256 KiB chunks). An upstream without
//!   `Upload`/`Download` gets the deprecated `MessageSendFileStream`/`MessageFileStream`/
//!   `MessageImageStream` instead, remembered per connection.
//! * `Stop` from our clients does not stop the upstream (that would end the WeChat session there);
//!   `Logout` is forwarded only while logged in (clients echo a LOGOUT back as a Logout call).

pub mod cache;
pub mod connect;
pub mod files;
mod forward;
pub mod settings;
pub mod stream;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{Notify, watch};
use tonic::{Code, Status};

use self::connect::UpstreamClient;
use self::settings::UpstreamSettings;
use super::{BackendError, BackendResult};
use crate::blobs::BlobStore;
use crate::events::EventSink;
use crate::store::Store;
use crate::tasks::Tasks;
use puppet_proto::model::PayloadType;

/// The backend. Cheap to clone; clones share the connection and state.
#[derive(Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

struct Inner {
    settings: UpstreamSettings,
    sink: EventSink,
    blobs: BlobStore,
    store: Store,
    /// The stub over the current connection; `None` while disconnected.
    client: Mutex<Option<UpstreamClient>>,
    /// What the current connection's upstream answered `UNIMPLEMENTED` to (see [`files`]).
    lacks: Mutex<files::Lacks>,
    /// True while the upstream's event stream is open and has shown a login (see [`stream`]).
    serving: watch::Sender<bool>,
    /// Set once a client (or autostart) called `Start`: the stream calls it again after a reconnect.
    started: AtomicBool,
    /// Rung by `start` so a stream waiting to reconnect tries at once.
    wake: Notify,
    /// The login as our clients know it (see [`stream`]).
    login: Mutex<LoginMirror>,
    /// Payloads served since the last (re)connection, announced DIRTY after the next one.
    served: Mutex<Served>,
    /// For discovery.
    http: reqwest::Client,
    /// See [`Upstream::generation`].
    generation: AtomicU64,
    /// Calls answered from the payload cache.
    cache_hits: AtomicU64,
    /// The upstream's sequence number of the last event it sent (Juzi's `EventResponse.seq`; 0
    /// while it sends none): a reconnection asks to resume after it.
    upstream_seq: AtomicU64,
}

/// The upstream's login state as our bus has published it.
#[derive(Debug, Default)]
struct LoginMirror {
    contact: Option<String>,
    ready: bool,
}

/// A bounded set of `(payload type, id)`, oldest first.
#[derive(Default)]
struct Served {
    set: HashSet<(i32, String)>,
    order: VecDeque<(i32, String)>,
}

impl Upstream {
    /// Builds the backend and starts its event stream (owned by `tasks`).
    pub fn new(
        settings: UpstreamSettings,
        sink: EventSink,
        blobs: BlobStore,
        tasks: Tasks,
        store: Store,
    ) -> anyhow::Result<Self> {
        // reqwest is built without a rustls provider of its own; ring is the process's one.
        _ = tokio_rustls::rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(settings.call_timeout)
            .timeout(settings.call_timeout)
            .user_agent(concat!("puppet-rs/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let upstream = Self {
            inner: Arc::new(Inner {
                settings,
                sink,
                blobs,
                store,
                client: Mutex::new(None),
                lacks: Mutex::new(files::Lacks::default()),
                serving: watch::Sender::new(false),
                started: AtomicBool::new(false),
                wake: Notify::new(),
                login: Mutex::new(LoginMirror::default()),
                served: Mutex::new(Served::default()),
                http,
                generation: AtomicU64::new(0),
                cache_hits: AtomicU64::new(0),
                upstream_seq: AtomicU64::new(0),
            }),
        };
        let running = upstream.clone();
        tasks.spawn("upstream-events", |stop| async move { stream::run(running, stop).await });
        Ok(upstream)
    }

    /// The settings in use.
    pub fn settings(&self) -> &UpstreamSettings {
        &self.inner.settings
    }

    fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
        // Every update under these locks is a single assignment: a poisoned one is still usable.
        m.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stub over the current connection.
    fn client(&self) -> BackendResult<UpstreamClient> {
        Self::lock(&self.inner.client).clone().ok_or_else(|| {
            BackendError::Unavailable(
                "the upstream puppet service is not connected (reconnecting); retry shortly".into(),
            )
        })
    }

    /// Remembers that a payload was served, to announce it DIRTY after a reconnect.
    fn note_served(&self, kind: PayloadType, id: &str) {
        let cap = self.inner.settings.dirty_kept;
        if cap == 0 {
            return;
        }
        let mut s = Self::lock(&self.inner.served);
        let key = (kind.wire(), id.to_owned());
        if s.set.contains(&key) {
            return;
        }
        if s.order.len() >= cap
            && let Some(old) = s.order.pop_front()
        {
            s.set.remove(&old);
        }
        s.set.insert(key.clone());
        s.order.push_back(key);
    }

    /// Takes what was served since the last connection.
    fn take_served(&self) -> Vec<(i32, String)> {
        let mut s = Self::lock(&self.inner.served);
        s.set.clear();
        s.order.drain(..).collect()
    }

    /// Whether our clients know the account as logged in.
    fn logged_in(&self) -> bool {
        Self::lock(&self.inner.login).contact.is_some()
    }

    /// Runs one unary call against the upstream with the call deadline, mapping its error.
    async fn call<R, F, Fut>(&self, op: &'static str, subject: Option<(&'static str, &str)>, f: F) -> BackendResult<R>
    where
        F: FnOnce(UpstreamClient) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<R>, Status>>,
    {
        let client = self.client()?;
        let timeout = self.inner.settings.call_timeout;
        match tokio::time::timeout(timeout, f(client)).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => Err(map_status(op, subject, &status, &self.inner.settings)),
            Err(_) => Err(BackendError::Unavailable(format!(
                "the upstream did not answer `{op}` within {} s",
                timeout.as_secs()
            ))),
        }
    }
}

/// The first line of an upstream message (the Node service puts a stack trace after it), at most
/// 200 characters, control characters escaped.
fn first_line(message: &str) -> String {
    let line = message.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
    let shown: String = line.chars().take(200).flat_map(char::escape_default).collect();
    if line.chars().count() > 200 { format!("{shown}…") } else { shown }
}

/// Whether an upstream error text says that a looked-up thing does not exist (how the Node puppets
/// word it: `no payload`, `… not exist`, `… not found`).
fn says_missing(message: &str) -> bool {
    let m = first_line(message).to_ascii_lowercase();
    ["not found", "not exist", "no payload", "notfound", "can not find", "cannot find", "unknown id"]
        .iter()
        .any(|p| m.contains(p))
}

/// The first line of an upstream message with our upstream token masked (services quote the token
/// they refused).
fn scrubbed(message: &str, settings: &UpstreamSettings) -> String {
    first_line(&message.replace(&settings.token, &settings.token_masked))
}

/// Maps an upstream status to our error. `subject` is what was looked up (kind, id), if anything.
fn map_status(
    op: &'static str,
    subject: Option<(&'static str, &str)>,
    s: &Status,
    settings: &UpstreamSettings,
) -> BackendError {
    let token_masked = &settings.token_masked;
    let msg = scrubbed(s.message(), settings);
    let missing = || subject.map(|(kind, id)| BackendError::not_found(kind, id));
    match s.code() {
        Code::NotFound => missing().unwrap_or_else(|| BackendError::Absent(format!("the upstream: {msg}"))),
        Code::Unknown | Code::Internal if says_missing(s.message()) => {
            missing().unwrap_or_else(|| BackendError::Absent(format!("the upstream: {msg}")))
        }
        Code::InvalidArgument | Code::OutOfRange => {
            BackendError::InvalidArgument(format!("the upstream refused `{op}`: {msg}"))
        }
        Code::FailedPrecondition => BackendError::FailedPrecondition(format!("the upstream refused `{op}`: {msg}")),
        Code::ResourceExhausted => BackendError::ResourceExhausted(format!("the upstream refused `{op}`: {msg}")),
        Code::AlreadyExists => BackendError::AlreadyExists(format!("the upstream: {msg}")),
        Code::PermissionDenied => BackendError::PermissionDenied(format!("the upstream refused `{op}`: {msg}")),
        Code::Unimplemented => BackendError::Unsupported(op),
        // Our clients' token is fine; ours toward the upstream is not: not their credentials problem.
        Code::Unauthenticated => BackendError::Unavailable(format!(
            "the upstream refused the token {token_masked} (PUPPET_UPSTREAM_TOKEN): {msg}"
        )),
        Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled | Code::Aborted => {
            BackendError::Unavailable(format!("the upstream is unavailable for `{op}`: {msg}"))
        }
        _ => BackendError::Internal(format!("the upstream failed `{op}` ({:?}): {msg}", s.code())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> UpstreamSettings {
        let flags = settings::UpstreamFlags {
            token: Some("insecure_secret-0123456789ab".into()),
            endpoint: Some("127.0.0.1:1".into()),
            ..Default::default()
        };
        UpstreamSettings::from_flags(&flags).unwrap()
    }

    #[test]
    fn node_unknown_with_a_stack_becomes_not_found_without_it() {
        let s = settings();
        let stack = "Error: no payload\n    at Mocker.contactPayload (/x/mocker.js:105:19)\n    at async Promise.all";
        let e = map_status("contact", Some(("contact", "c-9")), &Status::unknown(stack), &s);
        assert_eq!(e, BackendError::not_found("contact", "c-9"));
        let e = map_status(
            "room",
            Some(("room", "r1")),
            &Status::unknown("Error: MockRoom.load(): r1 not exist.\n  at x"),
            &s,
        );
        assert_eq!(e, BackendError::not_found("room", "r1"));
        // Another UNKNOWN keeps its first line only.
        let e = map_status("send", None, &Status::unknown("Error: boom\n    at secret/path.js:1"), &s);
        assert_eq!(e, BackendError::Internal("the upstream failed `send` (Unknown): Error: boom".into()));
        // Our own NOT_FOUND upstream (a chain) names the id as we do.
        let e = map_status("message", Some(("message", "m1")), &Status::not_found("message `m1` not found"), &s);
        assert_eq!(e, BackendError::not_found("message", "m1"));
        let refused = Status::unauthenticated("Invalid Wechaty TOKEN \"insecure_secret-0123456789ab\"");
        let e = map_status("room_add", None, &refused, &s);
        assert!(matches!(&e, BackendError::Unavailable(m) if m.contains("insecure_****ab")), "{e:?}");
        assert!(!format!("{e:?}").contains("0123456789"), "{e:?}");
        assert_eq!(map_status("tag_list", None, &Status::unimplemented(""), &s), BackendError::Unsupported("tag_list"));
        assert!(matches!(map_status("x", None, &Status::unavailable("down"), &s), BackendError::Unavailable(_)));
    }

    #[test]
    fn first_line_is_bounded_and_escaped() {
        assert_eq!(first_line("\n  a\u{1b}b\nc"), "a\\u{1b}b");
        let long = "x".repeat(500);
        assert_eq!(first_line(&long).chars().count(), 201);
    }
}
