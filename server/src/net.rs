//! Connections on both ports, before any HTTP is spoken: accepting with back-off, the connection
//! cap, bounded handshakes, the idle timeout, and the per-address throttle on failed authentication.
//!
//! * **Accepting.** Errors such as `EMFILE` (no file descriptors left) make the accept loop sleep,
//!   doubling from 5 ms to 1 s while they last, with one warning when a streak starts and one line
//!   when it ends — never a spin that burns a core and fills the disk with log lines.
//! * **Connection cap.** At most `max_connections` connections on both ports together; one more is
//!   accepted and closed at once (the client sees the connection refused instead of waiting in the
//!   kernel's queue), and counted.
//! * **Handshakes.** The first byte (TLS or not) and the TLS handshake must arrive within
//!   `handshake_timeout`, and at most `max_handshakes` may be under way at once.
//! * **Idle connections.** A connection with no request in flight for `idle_timeout` is closed,
//!   whether it never sent a request (a silent socket, a bare HTTP/2 preface, one byte) or is
//!   done with them. Requests in flight — an event stream included — keep it open; see
//!   [`TrackRequestsLayer`].

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;
use tower::{Layer, Service};

use crate::metrics::{NetMetrics, Port, RefuseReason};

/// The connection limits of both ports.
#[derive(Clone, Copy, Debug)]
pub struct ConnLimits {
    /// Open connections on both ports together.
    pub max_connections: usize,
    /// Connections still being classified or in their TLS handshake.
    pub max_handshakes: usize,
    /// Time for the first byte and the TLS handshake.
    pub handshake_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
}

/// Admission to both ports: the connection and handshake slots, shared by the two accept loops.
#[derive(Clone)]
pub struct Gate {
    connections: Arc<Semaphore>,
    handshakes: Arc<Semaphore>,
    limits: ConnLimits,
    metrics: NetMetrics,
    warned_full: Arc<Mutex<Option<Instant>>>,
}

/// A connection's place under the cap; the slot is freed when this is dropped.
pub struct ConnSlot {
    _permit: OwnedSemaphorePermit,
    port: Port,
    metrics: NetMetrics,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.metrics.closed(self.port);
    }
}

/// How often a full gate is reported in the log.
const FULL_WARNING_EVERY: Duration = Duration::from_secs(10);

impl Gate {
    /// A gate with these limits, counting into `metrics`.
    pub fn new(limits: ConnLimits, metrics: NetMetrics) -> Self {
        Self {
            connections: Arc::new(Semaphore::new(limits.max_connections.max(1))),
            handshakes: Arc::new(Semaphore::new(limits.max_handshakes.max(1))),
            limits,
            metrics,
            warned_full: Arc::new(Mutex::new(None)),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ConnLimits {
        self.limits
    }

    /// The counters.
    pub fn metrics(&self) -> &NetMetrics {
        &self.metrics
    }

    /// A slot for a new connection on `port`, or `None` (counted, and logged now and then) when
    /// the cap is reached.
    fn admit(&self, port: Port) -> Option<ConnSlot> {
        match self.connections.clone().try_acquire_owned() {
            Ok(permit) => {
                self.metrics.opened(port);
                Some(ConnSlot { _permit: permit, port, metrics: self.metrics.clone() })
            }
            Err(_) => {
                self.refuse(port, RefuseReason::max_connections, "the connection cap (--max-connections) is reached");
                None
            }
        }
    }

    /// A handshake slot, or `None` (counted) when too many are under way.
    pub fn handshake(&self, port: Port) -> Option<OwnedSemaphorePermit> {
        let permit = self.handshakes.clone().try_acquire_owned().ok();
        if permit.is_none() {
            self.refuse(port, RefuseReason::handshakes, "too many handshakes under way (--max-handshakes)");
        }
        permit
    }

    fn refuse(&self, port: Port, reason: RefuseReason, why: &str) {
        self.metrics.refused(port, reason);
        let mut warned = self.warned_full.lock().unwrap_or_else(|p| p.into_inner());
        if warned.is_none_or(|at| at.elapsed() >= FULL_WARNING_EVERY) {
            *warned = Some(Instant::now());
            tracing::warn!(?port, "refusing new connections: {why}");
        }
    }
}

/// A connection that passed the gate.
pub struct Admitted {
    /// The socket.
    pub stream: TcpStream,
    /// Who is on the other end.
    pub peer: SocketAddr,
    /// Its place under the cap.
    pub slot: ConnSlot,
}

/// Accept errors that concern one connection only (it was reset before we took it): go on.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    )
}

/// Growing sleeps while `accept` keeps failing.
struct Backoff {
    next: Duration,
    streak: u64,
    started: Option<Instant>,
}

const BACKOFF_MIN: Duration = Duration::from_millis(5);
const BACKOFF_MAX: Duration = Duration::from_secs(1);

impl Backoff {
    fn new() -> Self {
        Self { next: BACKOFF_MIN, streak: 0, started: None }
    }

    /// The sleep after an error; warns when a streak starts.
    fn failed(&mut self, port: Port, e: &io::Error) -> Duration {
        if self.started.is_none() {
            self.started = Some(Instant::now());
            tracing::warn!(?port, error = %e, "accepting connections failed; backing off until it works again");
        }
        self.streak += 1;
        let wait = self.next;
        self.next = (self.next * 2).min(BACKOFF_MAX);
        wait
    }

    fn succeeded(&mut self, port: Port) {
        if let Some(started) = self.started.take() {
            tracing::info!(
                ?port,
                failed_accepts = self.streak,
                secs = started.elapsed().as_secs_f32(),
                "accepting connections works again"
            );
        }
        self.next = BACKOFF_MIN;
        self.streak = 0;
    }
}

/// Accepts connections on `listener` until `stop`, handing those the gate admits to `admit`.
pub async fn accept_loop(
    listener: TcpListener,
    port: Port,
    gate: Gate,
    stop: CancellationToken,
    mut admit: impl FnMut(Admitted),
) {
    let mut backoff = Backoff::new();
    loop {
        let accepted = tokio::select! {
            biased;
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((stream, peer)) => {
                backoff.succeeded(port);
                _ = stream.set_nodelay(true);
                if let Some(slot) = gate.admit(port) {
                    admit(Admitted { stream, peer, slot });
                }
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                gate.metrics.accept_error(port);
                let wait = backoff.failed(port, &e);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
    }
}

static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn now_ms() -> u64 {
    EPOCH.elapsed().as_millis() as u64
}

/// Whether a connection has requests in flight, and since when it has had none.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When a request last began or ended (ms since [`EPOCH`]).
    last_change: AtomicU64,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self { in_flight: AtomicUsize::new(0), last_change: AtomicU64::new(now_ms()) })
    }

    /// Marks a request in flight until the guard is dropped.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.last_change.store(now_ms(), Ordering::Release);
        InFlight(self.clone())
    }

    /// When the connection counts as idle for `timeout`: `None` while a request is in flight.
    fn idle_deadline(&self, timeout: Duration) -> Option<tokio::time::Instant> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let since = *EPOCH + Duration::from_millis(self.last_change.load(Ordering::Acquire));
        Some(tokio::time::Instant::from_std(since + timeout))
    }
}

/// A request in flight on a connection (see [`Activity::begin`]).
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_change.store(now_ms(), Ordering::Release);
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What every request on a connection carries as an extension: who sent it, and the connection's
/// [`Activity`].
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// The remote address.
    pub addr: SocketAddr,
    /// The connection's requests in flight.
    pub activity: Arc<Activity>,
}

/// A connection under the cap, closed when idle (see the module docs).
pub struct Tracked<IO> {
    io: IO,
    peer: PeerInfo,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    port: Port,
    slot: ConnSlot,
}

impl<IO> Tracked<IO> {
    /// Wraps an admitted connection's I/O.
    pub fn new(io: IO, peer: SocketAddr, slot: ConnSlot, idle_timeout: Duration) -> Self {
        let port = slot.port;
        Self {
            io,
            peer: PeerInfo { addr: peer, activity: Activity::new() },
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            port,
            slot,
        }
    }

    /// The peer and activity, for the request extensions.
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    /// The wrapped I/O.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// True once the connection has been idle for the timeout. Polling the timer registers the
    /// waker, so a connection nobody writes to is still closed on time.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        while self.idle.as_mut().poll(cx).is_ready() {
            let now = tokio::time::Instant::now();
            match self.peer.activity.idle_deadline(self.idle_timeout) {
                Some(deadline) if deadline <= now => {
                    self.slot.metrics.idle_closed(self.port);
                    return true;
                }
                Some(deadline) => self.idle.as_mut().reset(deadline),
                None => self.idle.as_mut().reset(now + self.idle_timeout),
            }
        }
        false
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Tracked<IO> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.idle_expired(cx) {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "idle connection closed")));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Tracked<IO> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Counts every request as in flight on its connection until its response body is done, so
/// [`Tracked`] knows when the connection is idle. Requests without a [`PeerInfo`] pass untouched.
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackRequestsLayer;

impl<S> Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;
    fn layer(&self, inner: S) -> Self::Service {
        TrackRequests { inner }
    }
}

/// See [`TrackRequestsLayer`].
#[derive(Clone, Debug)]
pub struct TrackRequests<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<http::Request<B>> for TrackRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    RB: Send + 'static,
{
    type Response = http::Response<TrackedBody<RB>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let guard = req.extensions().get::<PeerInfo>().map(|p| p.activity.begin());
        let fut = self.inner.call(req);
        Box::pin(async move {
            let response = fut.await?;
            Ok(response.map(|inner| TrackedBody { inner, _in_flight: guard }))
        })
    }
}

/// A response body that keeps its request in flight until it is finished or dropped.
pub struct TrackedBody<B> {
    inner: B,
    _in_flight: Option<InFlight>,
}

impl<B: Body + Unpin> Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Settings of the per-address throttle on failed authentication: a bucket of `burst` failures
/// per address, refilled at `per_sec`.
#[derive(Clone, Copy, Debug)]
pub struct ThrottleSettings {
    /// Failures an address may make in a row.
    pub burst: u32,
    /// Failures forgiven per second.
    pub per_sec: f64,
}

/// Addresses tracked at most; beyond, the ones that have recovered are forgotten first.
const THROTTLE_ADDRESSES: usize = 16_384;

/// Throttles failed authentication per remote address (see [`ThrottleSettings`]). While an
/// address is throttled every credential it presents is refused unchecked, so guessing gains
/// nothing from the answers.
#[derive(Clone)]
pub struct AuthThrottle {
    settings: ThrottleSettings,
    buckets: Arc<Mutex<HashMap<IpAddr, Bucket>>>,
    metrics: NetMetrics,
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    /// Failures still allowed (refilled over time).
    left: f64,
    at: Instant,
}

impl Bucket {
    fn refilled(self, s: ThrottleSettings, now: Instant) -> f64 {
        (self.left + now.duration_since(self.at).as_secs_f64() * s.per_sec).min(f64::from(s.burst))
    }
}

impl AuthThrottle {
    /// A throttle with these settings, counting into `metrics`.
    pub fn new(settings: ThrottleSettings, metrics: NetMetrics) -> Self {
        Self { settings, buckets: Arc::new(Mutex::new(HashMap::new())), metrics }
    }

    fn buckets(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, Bucket>> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `ip` is throttled (counted); the caller refuses without checking.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        let now = Instant::now();
        let left = self.buckets().get(&ip).map(|b| b.refilled(self.settings, now));
        match left {
            Some(left) if left < 1.0 => {
                self.metrics.auth_throttled();
                let per_sec = self.settings.per_sec.max(f64::MIN_POSITIVE);
                Err(Duration::from_secs_f64(((1.0 - left) / per_sec).min(3600.0)).max(Duration::from_secs(1)))
            }
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.metrics.auth_failed();
        let now = Instant::now();
        let s = self.settings;
        let mut buckets = self.buckets();
        if buckets.len() >= THROTTLE_ADDRESSES && !buckets.contains_key(&ip) {
            buckets.retain(|_, b| b.refilled(s, now) < f64::from(s.burst));
            if buckets.len() >= THROTTLE_ADDRESSES
                && let Some(oldest) = buckets.iter().min_by_key(|(_, b)| b.at).map(|(ip, _)| *ip)
            {
                buckets.remove(&oldest);
            }
        }
        let left = buckets.get(&ip).map_or(f64::from(s.burst), |b| b.refilled(s, now));
        buckets.insert(ip, Bucket { left: (left - 1.0).max(0.0), at: now });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(max_connections: usize) -> Gate {
        let limits = ConnLimits {
            max_connections,
            max_handshakes: 1,
            handshake_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
        };
        Gate::new(limits, NetMetrics::default())
    }

    #[test]
    fn the_gate_admits_up_to_the_cap_and_frees_slots() {
        let g = gate(2);
        let a = g.admit(Port::Grpc).unwrap();
        let _b = g.admit(Port::Http).unwrap();
        assert!(g.admit(Port::Grpc).is_none(), "the cap covers both ports together");
        drop(a);
        assert!(g.admit(Port::Grpc).is_some());
        let h = g.handshake(Port::Grpc).unwrap();
        assert!(g.handshake(Port::Grpc).is_none());
        drop(h);
        assert!(g.handshake(Port::Grpc).is_some());
    }

    #[test]
    fn backoff_grows_to_its_cap_and_starts_over() {
        let mut b = Backoff::new();
        let e = io::Error::other("EMFILE");
        let waits: Vec<Duration> = (0..10).map(|_| b.failed(Port::Grpc, &e)).collect();
        assert_eq!(waits[0], BACKOFF_MIN);
        assert!(waits.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(*waits.last().unwrap(), BACKOFF_MAX);
        b.succeeded(Port::Grpc);
        assert_eq!(b.failed(Port::Grpc, &e), BACKOFF_MIN);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_close_and_busy_ones_stay() {
        use tokio::io::AsyncReadExt;
        let g = gate(4);
        let (client, server) = tokio::io::duplex(64);
        let mut conn =
            Tracked::new(server, "127.0.0.1:1".parse().unwrap(), g.admit(Port::Grpc).unwrap(), Duration::from_secs(20));
        // A request in flight keeps it open past the timeout.
        let request = conn.peer().activity.begin();
        let mut buf = [0u8; 8];
        assert!(tokio::time::timeout(Duration::from_secs(60), conn.read(&mut buf)).await.is_err(), "still open");
        drop(request);
        let started = tokio::time::Instant::now();
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(20), "closed exactly one idle timeout after the request");
        drop(client);
    }

    #[test]
    fn failed_logins_are_throttled_per_address_and_forgiven_over_time() {
        let t = AuthThrottle::new(ThrottleSettings { burst: 3, per_sec: 1000.0 }, NetMetrics::default());
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let slow = AuthThrottle::new(ThrottleSettings { burst: 3, per_sec: 0.001 }, NetMetrics::default());
        for _ in 0..3 {
            assert!(slow.check(a).is_ok());
            slow.failed(a);
        }
        let wait = slow.check(a).unwrap_err();
        assert!(wait >= Duration::from_secs(1), "{wait:?}");
        assert!(slow.check(b).is_ok(), "another address is not affected");
        for _ in 0..3 {
            t.failed(a);
        }
        std::thread::sleep(Duration::from_millis(5)); // 1000/s refills several failures
        assert!(t.check(a).is_ok());
    }
}
