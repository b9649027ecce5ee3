//! The one upstream `Event` stream, re-published into our bus, and the connection's life:
//! connect (discovering the endpoint when configured so), open `Event`, call `Start` when a client
//! had started, read until the stream ends, then wait with exponential back-off and jitter and do
//! it again — until the backend's tasks stop.
//!
//! Toward an upstream that numbers its events (`EventResponse.seq`: Juzi's fork of the contract, or
//! puppet-rs), a reconnection asks to resume after the last number seen (`EventRequest.seq`), so
//! events the upstream published while we were away still reach our log; an upstream that cannot
//! resume (`OUT_OF_RANGE`) is asked for its live stream next.
//!
//! Readiness ([`crate::backend::Backend::serving`]) is true from a LOGIN on the current stream
//! (the official server replays the login to every new stream) until the stream ends or the
//! upstream shows a QR code or logs out: a restarted upstream still logging in is not ready.
//!
//! What reaches our bus: every upstream event but HEARTBEAT (ours are ours) and the login replay a
//! reconnection brings (the official server sends LOGIN and READY again on every new stream; our
//! clients saw them already). A login that changed while we were away is told as it is: a SCAN or
//! another account's LOGIN after a reconnection first ends the old login with a LOGOUT.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use puppet_proto::event::{DirtyEvent, EventKind, LogoutEvent, PuppetEvent};
use puppet_proto::ids::ContactId;
use puppet_proto::pb::wechaty::puppet as pb;
use tokio_util::sync::CancellationToken;

use super::connect::{self, ConnectError};
use super::{Upstream, settings::Target};

/// A stream that stayed up this long resets the back-off.
const STABLE: Duration = Duration::from_secs(10);

/// Why a session ended.
enum Ended {
    /// The backend stops.
    Stopped,
    /// The stream was open and then ended or failed.
    Dropped(String),
    /// No stream could be opened.
    Failed(String),
}

/// The loop; returns when `stop` fires.
pub async fn run(up: Upstream, stop: CancellationToken) {
    let settings = up.inner.settings.clone();
    let mut backoff = settings.reconnect_min;
    let mut connected_before = false;
    let mut last_failure = String::new();
    loop {
        let began = Instant::now();
        let reconnect = connected_before;
        let ended = tokio::select! {
            _ = stop.cancelled() => Ended::Stopped,
            ended = session(&up, reconnect, &mut connected_before) => ended,
        };
        up.disconnected();
        match ended {
            Ended::Stopped => return,
            Ended::Dropped(why) => {
                tracing::warn!(upstream = %describe(&settings.target), reason = %why, "the upstream's event stream ended; reconnecting");
                last_failure.clear();
                if began.elapsed() >= STABLE {
                    backoff = settings.reconnect_min;
                }
            }
            Ended::Failed(why) => {
                // One line per new reason, not one per attempt.
                if why != last_failure {
                    tracing::error!(upstream = %describe(&settings.target), reason = %why, "cannot reach the upstream puppet service; retrying with back-off");
                    last_failure = why;
                }
            }
        }
        let wait = jittered(backoff);
        backoff = (backoff * 2).min(settings.reconnect_max);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
            _ = up.inner.wake.notified() => {}
        }
    }
}

/// Where the upstream is, for logs (never the token).
fn describe(target: &Target) -> String {
    match target {
        Target::Endpoint(e) => e.clone(),
        Target::Discover { base } => format!("discovered at {base}"),
    }
}

/// `base` plus or minus up to a quarter, from the OS CSPRNG.
fn jittered(base: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = if getrandom::fill(&mut b).is_ok() { u16::from_le_bytes(b) } else { u16::MAX / 2 };
    let quarter = base / 4;
    // r / 65535 of a half-width window, centred on base.
    base - quarter + quarter * 2 * u32::from(r) / u32::from(u16::MAX)
}

/// One connection: open the stream, start, republish until it ends.
async fn session(up: &Upstream, reconnect: bool, connected: &mut bool) -> Ended {
    let settings = &up.inner.settings;
    let endpoint = match connect::resolve(settings, &up.inner.http).await {
        Ok(e) => e,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let channel = match connect::channel(settings, &endpoint, settings.call_timeout).await {
        Ok(c) => c,
        Err(e @ ConnectError::Connect { .. }) | Err(e @ ConnectError::Discovery { .. }) => {
            return Ended::Failed(e.to_string());
        }
    };
    let mut client = connect::client(channel, &settings.token, settings.max_message);
    // Toward an upstream that numbers its events (Juzi's fork, puppet-rs), resume after the last
    // one seen; the official server ignores the field and streams live.
    let resume_after = up.inner.upstream_seq.load(Ordering::Acquire);
    let request = pb::EventRequest {
        seq: i32::try_from(resume_after).unwrap_or(0),
        account_id: Upstream::lock(&up.inner.login).contact.clone().unwrap_or_default(),
    };
    let opened = tokio::time::timeout(settings.call_timeout, client.event(request)).await;
    let mut events = match opened {
        Err(_) => return Ended::Failed(format!("`Event` not answered within {} s", settings.call_timeout.as_secs())),
        Ok(Err(s)) if s.code() == tonic::Code::Unauthenticated => {
            return Ended::Failed(format!(
                "the upstream refused the token {} (UNAUTHENTICATED: {}); check PUPPET_UPSTREAM_TOKEN",
                settings.token_masked,
                super::scrubbed(s.message(), settings)
            ));
        }
        Ok(Err(s)) if resume_after > 0 && s.code() == tonic::Code::OutOfRange => {
            // The upstream no longer holds what we missed (or its log was replaced): live next time.
            up.inner.upstream_seq.store(0, Ordering::Release);
            return Ended::Failed(format!(
                "the upstream cannot resume after its event {resume_after}: {}",
                super::scrubbed(s.message(), settings)
            ));
        }
        Ok(Err(s)) => {
            return Ended::Failed(format!("`Event` failed: {:?} {}", s.code(), super::scrubbed(s.message(), settings)));
        }
        Ok(Ok(r)) => r.into_inner(),
    };
    *super::Upstream::lock(&up.inner.client) = Some(client.clone());
    // A new connection may reach another service: ask it again for `Upload`/`Download`.
    *super::Upstream::lock(&up.inner.lacks) = super::files::Lacks::default();
    *connected = true;
    if reconnect {
        up.bump_generation();
    }
    tracing::info!(upstream = %endpoint, token = %settings.token_masked, resume_after, "connected to the upstream puppet service");
    if resume_after > 0 && up.logged_in() {
        // A resumed stream replays what we missed, not the login: the login holds unless a LOGOUT
        // or SCAN comes among the replayed events.
        up.inner.serving.send_replace(true);
    }
    if up.inner.started.load(Ordering::Acquire)
        && let Err(e) = up.start_upstream(&client).await
    {
        tracing::error!(error = %e, "the upstream's Start failed after connecting");
    }
    if reconnect {
        // Whatever our clients fetched may have changed while we were away.
        for (kind, id) in up.take_served() {
            up.inner.sink.emit(PuppetEvent::Dirty(DirtyEvent { payload_type: kind, payload_id: id }));
        }
    }
    loop {
        match events.message().await {
            Ok(Some(e)) => {
                if e.seq > 0 {
                    up.inner.upstream_seq.store(e.seq as u64, Ordering::Release);
                }
                up.republish(e);
            }
            Ok(None) => return Ended::Dropped("the upstream ended the stream".into()),
            Err(s) => {
                return Ended::Dropped(format!("{:?}: {}", s.code(), super::scrubbed(s.message(), &up.inner.settings)));
            }
        }
    }
}

impl Upstream {
    /// The stream is gone: calls fail fast until the next connection, readiness drops.
    fn disconnected(&self) {
        *Self::lock(&self.inner.client) = None;
        self.inner.serving.send_replace(false);
    }

    /// Calls the upstream's `Start` (idempotent there) on `client`, under the call deadline.
    pub(super) async fn start_upstream(&self, client: &super::UpstreamClient) -> crate::backend::BackendResult<()> {
        let mut client = client.clone();
        let timeout = self.inner.settings.call_timeout;
        match tokio::time::timeout(timeout, client.start(pb::StartRequest {})).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(super::map_status("start", None, &s, &self.inner.settings)),
            Err(_) => Err(crate::backend::BackendError::Unavailable(format!(
                "the upstream did not answer `start` within {} s",
                timeout.as_secs()
            ))),
        }
    }

    /// One upstream event into our bus, as the module docs say.
    fn republish(&self, e: pb::EventResponse) {
        let Some(kind) = EventKind::from_wire(e.r#type) else {
            tracing::debug!(r#type = e.r#type, "an upstream event of an unknown type was dropped");
            return;
        };
        if kind == EventKind::Heartbeat {
            return;
        }
        let event = match PuppetEvent::from_wire(e.r#type, &e.payload) {
            Ok(ev) => ev,
            Err(err) => {
                tracing::warn!(r#type = e.r#type, error = %err, "an upstream event could not be read; dropped");
                return;
            }
        };
        let mut login = Self::lock(&self.inner.login);
        match &event {
            PuppetEvent::Login(l) => {
                // Serving again: the upstream is reachable and logged in.
                self.inner.serving.send_replace(true);
                if login.contact.as_deref() == Some(l.contact_id.as_str()) {
                    // The replay a new stream begins with.
                    return;
                }
                if let Some(old) = login.contact.take() {
                    self.inner.sink.emit(logout(old, "another account logged in upstream"));
                }
                login.contact = Some(l.contact_id.to_string());
                login.ready = false;
            }
            PuppetEvent::Ready(_) => {
                if login.ready {
                    return;
                }
                login.ready = true;
            }
            PuppetEvent::Logout(_) => {
                self.inner.serving.send_replace(false);
                if login.contact.take().is_none() {
                    return;
                }
                login.ready = false;
            }
            PuppetEvent::Scan(_) => {
                self.inner.serving.send_replace(false);
                if let Some(old) = login.contact.take() {
                    login.ready = false;
                    self.inner.sink.emit(logout(old, "the upstream lost the login and shows a QR code"));
                }
            }
            PuppetEvent::Dirty(_) => self.bump_generation(),
            _ => {}
        }
        // Under the mirror's lock, so the mirror and the bus agree on the order.
        self.inner.sink.emit(event);
    }
}

fn logout(contact: String, why: &str) -> PuppetEvent {
    PuppetEvent::Logout(LogoutEvent { contact_id: ContactId(contact), data: why.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..200 {
            let j = jittered(Duration::from_millis(1000));
            assert!(j >= Duration::from_millis(750) && j <= Duration::from_millis(1250), "{j:?}");
        }
    }
}
