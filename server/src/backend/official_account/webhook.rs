//! The callback URL WeChat calls (spec §1–§3), served on the side port.
//!
//! * Every request: a body over `--oa-max-body-kib` is refused (413) before anything is parsed.
//! * `GET` — URL verification: the signature over (token, timestamp, nonce) must match and the
//!   timestamp be within `--oa-max-skew-secs` of this server's clock; the answer is `echostr`.
//!   Anything else is 403 with the reason.
//! * `POST` — a push. The same two checks (403, nothing reaches the bot), then the request's
//!   (timestamp, nonce) must be new: a replay inside the window is 403 too. The body is read within
//!   the XML reader's bounds (depth, element count, text; 400). Then the mode (`--oa-mode`): `safe`
//!   takes encrypted pushes only (a plaintext one is 403), `compatible` both, `plain` plaintext only
//!   (an encrypted one is 400). An encrypted push (`<Encrypt>` in the body, or `encrypt_type=aes`)
//!   also needs a matching `msg_signature` (403), a key that decrypts it — the current one, else
//!   the previous one — and the account's AppID inside (403); the answer is encrypted with the key
//!   that worked. WeChat's retries of a push get the answer of the first delivery, waiting for it
//!   if needed.
//! * A push is answered once what it wrote (its message, its events) is kept: under
//!   `--durability always`, committed — a crash before the answer leaves WeChat to deliver it
//!   again. While the store refuses writes (its size cap, a full disk) a push is answered 503,
//!   before anything reaches the bot, and WeChat delivers it again later.
//!
//! Refusals a client can act on and that cannot repeat without a fresh signature (those after the
//! replay check, and an oversized body in a signed, fresh, new request) also go to clients as ERROR events;
//! the others (a bad `signature` or `msg_signature`, a stale timestamp, a replay) are only logged
//! and counted, so that nobody can flood the bot's event stream with one captured request.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::rejection::{QueryRejection, StringRejection};
use axum::extract::{DefaultBodyLimit, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tracing::Instrument;

use super::crypto::{self, AesKey, CryptoError};
use super::settings::{OaMode, OaSettings};
use super::xml::{self, XmlError, clip};
use super::{OfficialAccount, PushAnswer, PushTurn};
use crate::metrics::PushOutcome;

/// Requests' (timestamp, nonce) pairs remembered to refuse replays; beyond, the oldest are
/// forgotten first (a push needs a valid signature to get here, so only WeChat's own traffic —
/// over 100 pushes a second for the whole window — fills it).
pub const NONCES_KEPT: usize = 65_536;

/// The query string WeChat sends.
#[derive(Debug, Default, Deserialize)]
pub struct CallbackQuery {
    signature: Option<String>,
    timestamp: Option<String>,
    nonce: Option<String>,
    echostr: Option<String>,
    encrypt_type: Option<String>,
    msg_signature: Option<String>,
}

/// The (timestamp, nonce) pairs of recent requests, each kept for a fixed time (so insertion order
/// is expiry order) and at most [`NONCES_KEPT`] of them.
struct Replays {
    seen: HashSet<[u8; 16]>,
    order: VecDeque<(Instant, [u8; 16])>,
    keep: Duration,
    cap: usize,
}

impl Replays {
    fn new(keep: Duration, cap: usize) -> Self {
        Self { seen: HashSet::new(), order: VecDeque::new(), keep, cap }
    }

    /// True the first time a (timestamp, nonce) pair is seen within `keep`; false for a replay.
    fn first_use(&mut self, timestamp: &str, nonce: &str, now: Instant) -> bool {
        while let Some((at, key)) = self.order.front() {
            if now.saturating_duration_since(*at) < self.keep {
                break;
            }
            self.seen.remove(key);
            self.order.pop_front();
        }
        // A fixed-size digest: the strings themselves are as long as the sender likes.
        let mut digest = Sha256::new();
        digest.update((timestamp.len() as u64).to_be_bytes());
        digest.update(timestamp.as_bytes());
        digest.update(nonce.as_bytes());
        let mut key = [0u8; 16];
        key.copy_from_slice(&digest.finalize()[..16]);
        if self.seen.contains(&key) {
            return false;
        }
        if self.order.len() >= self.cap
            && let Some((_, oldest)) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        self.seen.insert(key);
        self.order.push_back((now, key));
        true
    }
}

/// What the routes share.
struct Hook {
    oa: OfficialAccount,
    replays: Mutex<Replays>,
}

/// The webhook routes for `oa`.
pub fn router(oa: OfficialAccount) -> Router {
    let settings = oa.settings();
    let path = settings.webhook_path.clone();
    let limit = settings.max_body_bytes;
    // A timestamp up to the skew ahead stays acceptable until twice the skew from now.
    let keep = Duration::from_secs(settings.max_skew_secs * 2 + 1);
    let hook = Hook { replays: Mutex::new(Replays::new(keep, NONCES_KEPT)), oa };
    Router::new()
        .route(&path, axum::routing::get(verify).post(push))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(Arc::new(hook))
}

fn plain(status: StatusCode, text: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.to_owned()).into_response()
}

/// A refused request: its status, how it is counted, the reason (the answer's body), and whether
/// clients hear of it (as an ERROR event with this code).
#[derive(Debug)]
struct Refusal {
    status: StatusCode,
    outcome: PushOutcome,
    reason: String,
    report: Option<tonic::Code>,
}

impl Refusal {
    fn new(status: StatusCode, reason: impl Into<String>) -> Self {
        Self { status, outcome: PushOutcome::refused, reason: reason.into(), report: None }
    }

    fn reported(mut self, code: tonic::Code) -> Self {
        self.report = Some(code);
        self
    }

    fn answer(self, oa: &OfficialAccount) -> (PushOutcome, Response) {
        match self.report {
            Some(code) => oa.report(code, format!("a push was refused: {}", self.reason)),
            None => tracing::warn!(status = self.status.as_u16(), reason = %self.reason, "webhook request refused"),
        }
        (self.outcome, plain(self.status, &format!("{}\n", self.reason)))
    }
}

impl From<XmlError> for Refusal {
    fn from(e: XmlError) -> Self {
        match e {
            XmlError::Entity => Refusal::new(StatusCode::BAD_REQUEST, "DTDs and entities are refused")
                .reported(tonic::Code::InvalidArgument),
            e => Refusal::new(StatusCode::BAD_REQUEST, e.to_string()).reported(tonic::Code::InvalidArgument),
        }
    }
}

fn signed(settings: &OaSettings, q: &CallbackQuery) -> bool {
    match (&q.signature, &q.timestamp, &q.nonce) {
        (Some(sig), Some(ts), Some(nonce)) => {
            crypto::signature_matches(&crypto::signature(&[&settings.token, ts, nonce]), sig)
        }
        _ => false,
    }
}

/// The whole seconds of a callback `timestamp`: decimal digits, optionally with a fraction
/// (WeRoBot's tests send `str(time.time())`, `1700000000.12`). Anything else is `None`.
fn timestamp_secs(timestamp: &str) -> Option<u64> {
    let digits = |s: &str, max: usize| (1..=max).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let (whole, fraction) = match timestamp.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (timestamp, None),
    };
    if !digits(whole, 12) || fraction.is_some_and(|f| !digits(f, 16)) {
        return None;
    }
    whole.parse().ok()
}

/// The checks before a request's body is looked at: the URL signature, then the timestamp within
/// the skew of `now` (unix seconds).
fn check_signed(settings: &OaSettings, q: &CallbackQuery, now: u64) -> Result<(), Refusal> {
    if !signed(settings, q) {
        return Err(Refusal {
            outcome: PushOutcome::bad_signature,
            ..Refusal::new(StatusCode::FORBIDDEN, "signature mismatch: check PUPPET_OA_TOKEN against the console")
        });
    }
    let timestamp = q.timestamp.as_deref().unwrap_or_default();
    let Some(at) = timestamp_secs(timestamp) else {
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("timestamp `{}` is not a time in seconds", clip(timestamp, 64)),
        ));
    };
    let skew = now.abs_diff(at);
    if skew > settings.max_skew_secs {
        let side = if at < now { "behind" } else { "ahead of" };
        return Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!(
                "timestamp {at} is {skew} s {side} this server's clock, beyond the {} s PUPPET_OA_MAX_SKEW_SECS \
                 allows: a replayed request, or a clock to set right",
                settings.max_skew_secs
            ),
        ));
    }
    Ok(())
}

async fn verify(State(hook): State<Arc<Hook>>, query: Result<Query<CallbackQuery>, QueryRejection>) -> Response {
    let Ok(Query(q)) = query else {
        return plain(StatusCode::BAD_REQUEST, "the query string is malformed\n");
    };
    if let Err(refusal) = check_signed(hook.oa.settings(), &q, super::now_secs()) {
        tracing::warn!(reason = %refusal.reason, "URL verification refused");
        return plain(refusal.status, &format!("{}\n", refusal.reason));
    }
    plain(StatusCode::OK, q.echostr.as_deref().unwrap_or_default())
}

/// The encrypted answer envelope (spec §2.2), signed over its own timestamp and a nonce from the
/// OS CSPRNG (a predictable nonce would let a forged answer be signed ahead).
fn envelope(oa: &OfficialAccount, key: &AesKey, reply_xml: &str) -> Result<String, CryptoError> {
    let timestamp = super::now_secs().to_string();
    // WeChat's own nonces are decimal numbers.
    let nonce = u32::from_be_bytes(crypto::random_bytes()?).to_string();
    let encrypted = key.encrypt(reply_xml, &oa.settings().app_id)?;
    let signature = crypto::signature(&[&oa.settings().token, &timestamp, &nonce, &encrypted]);
    Ok(format!(
        "<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt><MsgSignature><![CDATA[{signature}]]></MsgSignature>\
         <TimeStamp>{timestamp}</TimeStamp><Nonce><![CDATA[{nonce}]]></Nonce></xml>"
    ))
}

async fn push(
    State(hook): State<Arc<Hook>>,
    query: Result<Query<CallbackQuery>, QueryRejection>,
    body: Result<String, StringRejection>,
) -> Response {
    let q = query.map(|Query(q)| q);
    // WeChat's nonce is fresh for every delivery: the request id of this push's log lines.
    let nonce = q.as_ref().ok().and_then(|q| q.nonce.as_deref()).unwrap_or("none");
    let span = tracing::info_span!("webhook", request_id = %format!("oa-{}", clip(nonce, 32)));
    let (outcome, response) = answer_push(&hook, q, body).instrument(span.clone()).await;
    hook.oa.count_push(outcome);
    span.in_scope(|| tracing::debug!(?outcome, status = response.status().as_u16(), "push answered"));
    response
}

async fn answer_push(
    hook: &Hook,
    query: Result<CallbackQuery, QueryRejection>,
    body: Result<String, StringRejection>,
) -> (PushOutcome, Response) {
    let oa = &hook.oa;
    let settings = oa.settings();
    let Ok(q) = query else {
        return Refusal::new(StatusCode::BAD_REQUEST, "the query string is malformed").answer(oa);
    };
    // Signed, fresh and never seen: the request is WeChat's own (or its first capture's).
    let genuine = |q: &CallbackQuery| -> Result<(), Refusal> {
        check_signed(settings, q, super::now_secs())?;
        let (timestamp, nonce) = (q.timestamp.as_deref().unwrap_or_default(), q.nonce.as_deref().unwrap_or_default());
        let mut replays = hook.replays.lock().unwrap_or_else(|p| p.into_inner());
        if !replays.first_use(timestamp, nonce, Instant::now()) {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this timestamp and nonce were used already: a replayed request",
            ));
        }
        Ok(())
    };
    let body = match body {
        Ok(body) => body,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            let refusal = Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} KiB (PUPPET_OA_MAX_BODY_KIB)", settings.max_body_bytes >> 10),
            );
            // WeChat's own push, which the operator needs to hear of; anyone else's is only logged.
            return if genuine(&q).is_ok() { refusal.reported(tonic::Code::ResourceExhausted) } else { refusal }
                .answer(oa);
        }
        Err(e) => return Refusal::new(e.status(), clip(&e.body_text(), 96)).answer(oa),
    };
    if let Err(refusal) = genuine(&q) {
        return refusal.answer(oa);
    }
    match read_push(settings, &q, &body) {
        Ok((inbound, key)) => deliver(oa, inbound, key).await,
        Err(refusal) => refusal.answer(oa),
    }
}

/// The push in a signed, fresh request, decrypted when it is sealed, as the mode allows; the key
/// that opened it.
fn read_push(settings: &OaSettings, q: &CallbackQuery, body: &str) -> Result<(xml::Inbound, Option<AesKey>), Refusal> {
    let outer = xml::parse_tree(body)?;
    let encrypted = outer.get("Encrypt").map(str::to_owned);
    let wants_aes = q.encrypt_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("aes"));
    let enc = match (encrypted, settings.mode) {
        (None, _) if wants_aes => {
            return Err(Refusal::new(StatusCode::BAD_REQUEST, "encrypt_type=aes but no <Encrypt> in the body")
                .reported(tonic::Code::InvalidArgument));
        }
        (None, OaMode::Safe) => {
            return Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "a plaintext push to a server in safe mode (PUPPET_OA_MODE=safe takes encrypted pushes only): set \
                 安全模式 in the console, or PUPPET_OA_MODE=compatible while switching",
            )
            .reported(tonic::Code::PermissionDenied));
        }
        // Plain and compatible mode: the body is the push, parsed already.
        (None, OaMode::Plain | OaMode::Compatible) => return Ok((xml::inbound_from(&outer, body), None)),
        (Some(_), OaMode::Plain) if settings.aes_key.is_none() => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "an encrypted push, but no EncodingAESKey is configured: copy it from the console to \
                 PUPPET_OA_AES_KEY",
            )
            .reported(tonic::Code::FailedPrecondition));
        }
        (Some(_), OaMode::Plain) => {
            return Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                "an encrypted push to a server in plain mode (PUPPET_OA_MODE=plain): set PUPPET_OA_MODE=safe or \
                 compatible to match the console",
            )
            .reported(tonic::Code::FailedPrecondition));
        }
        (Some(enc), OaMode::Compatible | OaMode::Safe) => enc,
    };
    // Settings refuse compatible and safe mode without a key.
    let current = settings.aes_key.as_ref().ok_or_else(|| {
        Refusal::new(StatusCode::BAD_REQUEST, "no EncodingAESKey is configured").reported(tonic::Code::Internal)
    })?;
    let (Some(msg_sig), Some(ts), Some(nonce)) = (&q.msg_signature, &q.timestamp, &q.nonce) else {
        return Err(Refusal {
            outcome: PushOutcome::bad_signature,
            ..Refusal::new(StatusCode::FORBIDDEN, "msg_signature missing")
        });
    };
    if !crypto::signature_matches(&crypto::signature(&[&settings.token, ts, nonce, &enc]), msg_sig) {
        return Err(Refusal {
            outcome: PushOutcome::bad_signature,
            ..Refusal::new(StatusCode::FORBIDDEN, "msg_signature mismatch")
        });
    }
    let mut opened = current.decrypt(&enc, &settings.app_id).map(|x| (x, current));
    if let (Err(_), Some(previous)) = (&opened, settings.aes_key_previous.as_ref())
        && let Ok(x) = previous.decrypt(&enc, &settings.app_id)
    {
        opened = Ok((x, previous));
    }
    match opened {
        Ok((x, key)) => Ok((xml::parse_inbound(&x)?, Some(key.clone()))),
        Err(e @ CryptoError::WrongAppId) => {
            Err(Refusal::new(StatusCode::FORBIDDEN, e.to_string()).reported(tonic::Code::PermissionDenied))
        }
        Err(e) => Err(Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("an encrypted push could not be decrypted ({e}); check PUPPET_OA_AES_KEY"),
        )
        .reported(tonic::Code::InvalidArgument)),
    }
}

/// Hands a push to the bot (or answers WeChat's retry of one) and renders the answer. A push is
/// answered only once what it wrote is kept (under `--durability always`: committed), so that a
/// crash before then leaves WeChat to deliver it again; while the store refuses writes, it is
/// answered 503 and WeChat delivers it again later.
async fn deliver(oa: &OfficialAccount, inbound: xml::Inbound, key: Option<AesKey>) -> (PushOutcome, Response) {
    if let Some(expected) = &oa.settings().original_id
        && inbound.to != *expected
    {
        let reason = format!("the push is addressed to `{}`, and this server is `{expected}`", clip(&inbound.to, 64));
        return Refusal::new(StatusCode::FORBIDDEN, reason).reported(tonic::Code::PermissionDenied).answer(oa);
    }
    let dedupe_key = inbound.dedupe_key();
    let (outcome, answer) = match oa.begin_push(dedupe_key.clone()) {
        PushTurn::Retry(mut rx) => {
            tracing::debug!(key = %dedupe_key, "WeChat retried a push; answering as the first delivery");
            // The first delivery answers within the reply window; past WeChat's 5 s nobody listens.
            let waited = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
            let answer = match waited {
                Ok(Ok(v)) => v.clone().unwrap_or(PushAnswer::Body("success".to_owned())),
                _ => PushAnswer::Body("success".to_owned()),
            };
            (PushOutcome::retry, answer)
        }
        PushTurn::New(tx) => {
            let answer = match oa.store().writable() {
                // Nothing is handled that could not be kept.
                Err(e) => PushAnswer::RetryLater(e.to_string()),
                Ok(()) => handle(oa, inbound, key).await,
            };
            let outcome = match answer {
                PushAnswer::Body(_) => PushOutcome::handled,
                PushAnswer::RetryLater(_) => {
                    oa.forget_push(&dedupe_key);
                    PushOutcome::refused
                }
            };
            _ = tx.send(Some(answer.clone()));
            (outcome, answer)
        }
    };
    match answer {
        PushAnswer::Body(answer) => {
            let content_type = if answer.starts_with('<') { "application/xml; charset=utf-8" } else { "text/plain" };
            (outcome, (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], answer).into_response())
        }
        PushAnswer::RetryLater(why) => Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the push could not be kept ({why}); WeChat delivers it again later"),
        )
        .answer(oa),
    }
}

/// A new push: to the bot, then — once what it wrote is kept — its answer.
async fn handle(oa: &OfficialAccount, inbound: xml::Inbound, key: Option<AesKey>) -> PushAnswer {
    let (to, from) = (inbound.from.clone(), inbound.to.clone());
    let message = match inbound.kind {
        xml::InboundKind::Event { .. } => None,
        _ => Some(inbound.msg_id),
    };
    let reply = oa.handle_push(inbound).await;
    if let Err(e) = oa.store().settled().await {
        // Refused now — by the commit that kept this very message, perhaps: then it is answered.
        let kept = match message {
            Some(msg_id) => oa.message_kept(msg_id).await,
            None => false,
        };
        if !kept {
            return PushAnswer::RetryLater(e.to_string());
        }
    }
    let Some(reply) = reply else {
        return PushAnswer::Body("success".to_owned());
    };
    let xml = xml::render_reply(&to, &from, super::now_secs(), &reply);
    PushAnswer::Body(match &key {
        Some(key) => envelope(oa, key, &xml).unwrap_or_else(|e| {
            oa.report(tonic::Code::Internal, format!("the passive reply could not be sealed: {e}"));
            "success".to_owned()
        }),
        None => xml,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::official_account::settings::OaFlags;
    use proptest::prelude::*;

    const TOKEN: &str = "pamtest";
    const NOW: u64 = 1_700_000_000;

    fn settings(mode: Option<OaMode>) -> OaSettings {
        OaSettings::from_flags(&OaFlags {
            app_id: Some("wxb11529c136998cb6".into()),
            app_secret: Some("s".into()),
            token: Some(TOKEN.into()),
            aes_key: Some("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG".into()),
            mode,
            ..OaFlags::default()
        })
        .unwrap()
    }

    fn query(timestamp: &str, nonce: &str) -> CallbackQuery {
        CallbackQuery {
            signature: Some(crypto::signature(&[TOKEN, timestamp, nonce])),
            timestamp: Some(timestamp.into()),
            nonce: Some(nonce.into()),
            ..CallbackQuery::default()
        }
    }

    #[test]
    fn timestamps_are_whole_or_fractional_seconds_and_nothing_else() {
        assert_eq!(timestamp_secs("1700000000"), Some(1_700_000_000));
        assert_eq!(timestamp_secs("1700000000.12"), Some(1_700_000_000));
        for bad in ["", "abc", "1e9", "-5", "+5", " 1", "1.", ".5", "1.2.3", "NaN", "inf", "1_000", "9999999999999"] {
            assert_eq!(timestamp_secs(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_signature_and_then_the_window_are_checked() {
        let s = settings(None);
        assert!(check_signed(&s, &query("1700000000", "1"), NOW).is_ok());
        assert!(check_signed(&s, &query("1700000000.12", "1"), NOW + 300).is_ok(), "a float timestamp, at the edge");
        let stale = check_signed(&s, &query("1699999699", "1"), NOW).unwrap_err();
        assert_eq!((stale.status, stale.outcome), (StatusCode::FORBIDDEN, PushOutcome::refused));
        assert!(stale.reason.contains("301 s behind") && stale.reason.contains("PUPPET_OA_MAX_SKEW_SECS"), "{stale:?}");
        let ahead = check_signed(&s, &query("1700000400", "1"), NOW).unwrap_err();
        assert!(ahead.reason.contains("400 s ahead of"), "{ahead:?}");
        let words = check_signed(&s, &query("yesterday\n", "1"), NOW).unwrap_err();
        assert_eq!(words.status, StatusCode::FORBIDDEN);
        assert!(words.reason.contains("`yesterday\\n` is not a time"), "{words:?}");
        let mut forged = query("1700000000", "1");
        forged.nonce = Some("2".into());
        assert_eq!(check_signed(&s, &forged, NOW).unwrap_err().outcome, PushOutcome::bad_signature);
        assert_eq!(check_signed(&s, &CallbackQuery::default(), NOW).unwrap_err().outcome, PushOutcome::bad_signature);
    }

    #[test]
    fn a_replay_is_refused_until_the_pair_expires_and_memory_is_capped() {
        let t0 = Instant::now();
        let mut r = Replays::new(Duration::from_secs(601), 3);
        assert!(r.first_use("1700000000", "1", t0));
        assert!(!r.first_use("1700000000", "1", t0 + Duration::from_secs(600)), "an exact replay");
        assert!(r.first_use("1700000001", "1", t0), "the same nonce at another time is another request");
        // (timestamp, nonce) is not confused with a shifted split of the same characters.
        assert!(r.first_use("17000000001", "", t0));
        assert!(r.first_use("1700000000", "1", t0 + Duration::from_secs(601)), "forgotten after the window");
        assert!(r.order.len() <= 3 && r.seen.len() == r.order.len(), "capped: {}", r.order.len());
        for n in 0..10 {
            r.first_use("1700000000", &n.to_string(), t0 + Duration::from_secs(602));
        }
        assert_eq!((r.order.len(), r.seen.len()), (3, 3));
    }

    /// Hostile-input regressions kept as fixtures: a plaintext push to a safe-mode server.
    #[test]
    fn a_plaintext_push_is_refused_in_safe_mode_only() {
        let push = include_str!("../../../tests/fixtures/hostile/plaintext-push.xml");
        let q = query("1700000000", "1");
        let refused = read_push(&settings(None), &q, push).unwrap_err();
        assert_eq!((refused.status, refused.report), (StatusCode::FORBIDDEN, Some(tonic::Code::PermissionDenied)));
        assert!(refused.reason.contains("safe mode"), "{refused:?}");
        for mode in [OaMode::Compatible, OaMode::Plain] {
            let (inbound, key) = read_push(&settings(Some(mode)), &q, push).unwrap();
            assert!(key.is_none() && inbound.from == "oFollower", "{mode:?}");
        }
        // Sealed: refused in plain mode, opened in the other two.
        let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        let enc = key.encrypt(push, "wxb11529c136998cb6").unwrap();
        let sealed = format!("<xml><Encrypt><![CDATA[{enc}]]></Encrypt></xml>");
        let q = CallbackQuery {
            msg_signature: Some(crypto::signature(&[TOKEN, "1700000000", "1", &enc])),
            encrypt_type: Some("aes".into()),
            ..query("1700000000", "1")
        };
        assert_eq!(read_push(&settings(Some(OaMode::Plain)), &q, &sealed).unwrap_err().status, StatusCode::BAD_REQUEST);
        for mode in [OaMode::Compatible, OaMode::Safe] {
            assert!(read_push(&settings(Some(mode)), &q, &sealed).unwrap().1.is_some(), "{mode:?}");
        }
    }

    /// A captured, validly signed URL (WeChat's published plain POST, token `AAAAA`).
    #[test]
    fn a_captured_url_is_refused_for_its_age_and_as_a_replay() {
        let url = include_str!("../../../tests/fixtures/hostile/replayed-url.txt").trim();
        let Query(q) = Query::<CallbackQuery>::try_from_uri(&url.parse().unwrap()).unwrap();
        let s = OaSettings { token: "AAAAA".into(), ..settings(None) };
        let refused = check_signed(&s, &q, crate::backend::official_account::now_secs()).unwrap_err();
        assert_eq!((refused.status, refused.outcome), (StatusCode::FORBIDDEN, PushOutcome::refused));
        assert!(refused.reason.contains("behind this server's clock"), "{refused:?}");
        // Sent again within its window: the signature and the time pass, the replay check does not.
        let sent_at = 1_714_037_059;
        assert!(check_signed(&s, &q, sent_at + 10).is_ok());
        let mut replays = Replays::new(Duration::from_secs(601), NONCES_KEPT);
        let (ts, nonce) = (q.timestamp.as_deref().unwrap(), q.nonce.as_deref().unwrap());
        let t0 = Instant::now();
        assert!(replays.first_use(ts, nonce, t0));
        assert!(!replays.first_use(ts, nonce, t0 + Duration::from_secs(299)));
    }

    #[test]
    fn over_deep_bodies_are_refused_with_400_and_the_reason() {
        let deep = format!("<xml>{}{}</xml>", "<a>".repeat(10_000), "</a>".repeat(10_000));
        let refused = read_push(&settings(Some(OaMode::Plain)), &query("1700000000", "1"), &deep).unwrap_err();
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert!(refused.reason.contains("deeper than 32"), "{refused:?}");
    }

    #[tokio::test]
    async fn a_push_is_answered_503_while_the_store_refuses_writes_and_reaches_nobody() {
        use crate::backend::official_account::tests::{account, push};
        use crate::store::tests::{options, temp_dir};
        let dir = temp_dir();
        let store = crate::store::Store::open(
            &dir,
            crate::store::StoreOptions { max_bytes: 1, ..options(crate::store::Durability::Always) },
        )
        .unwrap();
        let oa = account(&store, &dir.join("blobs"));
        store.kv().put("test", "filler", &1).unwrap();
        assert!(store.settled().await.is_err(), "the first commit passes the 1-byte cap");
        let mut pushes = oa.subscribe_pushes();
        let text = "<MsgType>text</MsgType><Content>hello</Content>";
        let (outcome, response) = deliver(&oa, push("oAlice", text, Some(77)), None).await;
        assert_eq!((outcome, response.status()), (PushOutcome::refused, StatusCode::SERVICE_UNAVAILABLE));
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("size cap") && body.contains("again later"), "{body}");
        assert!(pushes.try_recv().is_err(), "nothing reached the bot");
        // WeChat's next delivery is handled afresh, not answered from the retry cache.
        assert!(matches!(oa.begin_push(push("oAlice", text, Some(77)).dedupe_key()), PushTurn::New(_)));
        drop(oa);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test]
    async fn under_durability_always_a_push_is_answered_once_committed() {
        use crate::backend::official_account::tests::{account, push};
        use crate::store::tests::{options, temp_dir};
        let dir = temp_dir();
        let store = crate::store::Store::open(&dir, options(crate::store::Durability::Always)).unwrap();
        let oa = account(&store, &dir.join("blobs"));
        let mut pushes = oa.subscribe_pushes();
        let text = "<MsgType>text</MsgType><Content>hello</Content>";
        let answering = tokio::spawn({
            let oa = oa.clone();
            async move { deliver(&oa, push("oAlice", text, Some(78)), None).await }
        });
        // The bot answers at once: the passive reply is ready long before a commit could be.
        pushes.recv().await.unwrap();
        assert!(oa.offer_passive("oAlice", super::xml::Reply::Text("hi".into())));
        let (outcome, response) = answering.await.unwrap();
        assert_eq!((outcome, response.status()), (PushOutcome::handled, StatusCode::OK));
        // Read from the file, not from what waits for the writer.
        assert!(store.messages().get_committed("78").unwrap().is_some(), "committed before the answer");
        let body = axum::body::to_bytes(response.into_body(), 4096).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("<Content><![CDATA[hi]]></Content>"));
        drop(oa);
        store.close();
        std::fs::remove_dir_all(dir).unwrap();
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Whatever the query string, parsing it and checking it never panics, and nothing
        /// unsigned passes.
        #[test]
        fn any_query_string_is_checked_without_panicking(raw in "[a-z_=&%0-9.A-F+-]{0,200}") {
            let s = settings(None);
            let uri: axum::http::Uri = match format!("/wechat?{raw}").parse() {
                Ok(uri) => uri,
                Err(_) => return Ok(()),
            };
            if let Ok(Query(q)) = Query::<CallbackQuery>::try_from_uri(&uri) {
                let checked = check_signed(&s, &q, NOW);
                prop_assert!(checked.is_err() || signed(&s, &q));
            }
        }

        /// Signed requests with any timestamp and nonce: accepted exactly when the timestamp is
        /// seconds within the window.
        #[test]
        fn any_signed_timestamp_is_judged(timestamp in "\\PC{0,24}|[0-9]{1,11}(\\.[0-9]{1,3})?", nonce in "\\PC{0,16}") {
            let s = settings(None);
            let ok = check_signed(&s, &query(&timestamp, &nonce), NOW).is_ok();
            let expected = timestamp_secs(&timestamp).is_some_and(|t| t.abs_diff(NOW) <= 300);
            prop_assert_eq!(ok, expected);
        }

        /// Around the window's edges, with and without a fraction.
        #[test]
        fn timestamps_near_now_are_judged_by_their_distance(offset in -400i64..400, fraction in proptest::option::of(0u32..1000)) {
            let s = settings(None);
            let at = NOW.checked_add_signed(offset).unwrap();
            let timestamp = match fraction {
                Some(f) => format!("{at}.{f}"),
                None => at.to_string(),
            };
            prop_assert_eq!(check_signed(&s, &query(&timestamp, "n"), NOW).is_ok(), offset.unsigned_abs() <= 300);
        }
    }
}
