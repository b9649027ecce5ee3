//! The callback URL WeChat calls (spec §1–§3), served on the side port.
//!
//! * `GET` — URL verification: the signature over (token, timestamp, nonce) must match; the answer is
//!   `echostr`. Anything else is 403.
//! * `POST` — a push. The same signature is checked on every request (403, nothing reaches the bot).
//!   Safe and compatibility mode (`<Encrypt>` in the body, or `encrypt_type=aes`) also need a
//!   matching `msg_signature` (403), a key that decrypts it — the current one, else the previous one
//!   — and the account's AppID inside (403); the answer is encrypted with the key that worked.
//!   WeChat's retries of a push get the answer of the first delivery, waiting for it if needed.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use tracing::Instrument;

use super::crypto::{self, AesKey, CryptoError};
use super::xml::{self, XmlError};
use super::{OfficialAccount, PushTurn};
use crate::metrics::PushOutcome;

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

/// The webhook routes for `oa`.
pub fn router(oa: OfficialAccount) -> Router {
    let path = oa.settings().webhook_path.clone();
    Router::new().route(&path, axum::routing::get(verify).post(push)).with_state(Arc::new(oa))
}

fn plain(status: StatusCode, text: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text.to_owned()).into_response()
}

fn signed(oa: &OfficialAccount, q: &CallbackQuery) -> bool {
    match (&q.signature, &q.timestamp, &q.nonce) {
        (Some(sig), Some(ts), Some(nonce)) => {
            crypto::signature_matches(&crypto::signature(&[&oa.settings().token, ts, nonce]), sig)
        }
        _ => false,
    }
}

async fn verify(State(oa): State<Arc<OfficialAccount>>, Query(q): Query<CallbackQuery>) -> Response {
    if !signed(&oa, &q) {
        tracing::warn!("URL verification with a wrong signature refused: check PUPPET_OA_TOKEN against the console");
        return plain(StatusCode::FORBIDDEN, "signature mismatch\n");
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

async fn push(State(oa): State<Arc<OfficialAccount>>, Query(q): Query<CallbackQuery>, body: String) -> Response {
    // WeChat's nonce is fresh for every delivery: the request id of this push's log lines.
    let span = tracing::info_span!("webhook", request_id = %format!("oa-{}", q.nonce.as_deref().unwrap_or("none")));
    let (outcome, response) = answer_push(&oa, q, body).instrument(span.clone()).await;
    oa.count_push(outcome);
    span.in_scope(|| tracing::debug!(?outcome, status = response.status().as_u16(), "push answered"));
    response
}

async fn answer_push(oa: &OfficialAccount, q: CallbackQuery, body: String) -> (PushOutcome, Response) {
    if !signed(oa, &q) {
        return (PushOutcome::bad_signature, plain(StatusCode::FORBIDDEN, "signature mismatch\n"));
    }
    let outer = match xml::parse_tree(&body) {
        Ok(t) => t,
        Err(e @ XmlError::Entity) => {
            oa.report(tonic::Code::InvalidArgument, format!("a push with a DTD or entity was refused: {e}"));
            return (PushOutcome::refused, plain(StatusCode::BAD_REQUEST, "DTDs and entities are refused\n"));
        }
        Err(e) => return (PushOutcome::refused, plain(StatusCode::BAD_REQUEST, &format!("{e}\n"))),
    };
    let encrypted = outer.get("Encrypt").map(str::to_owned);
    let wants_aes = q.encrypt_type.as_deref().is_some_and(|t| t.eq_ignore_ascii_case("aes"));
    let (inbound, key) = match encrypted {
        None if wants_aes => {
            return (
                PushOutcome::refused,
                plain(StatusCode::BAD_REQUEST, "encrypt_type=aes but no <Encrypt> in the body\n"),
            );
        }
        // Plain mode: the body is the push, parsed already.
        None => (xml::inbound_from(&outer, &body), None),
        Some(enc) => {
            let settings = oa.settings();
            let Some(current) = settings.aes_key.as_ref() else {
                oa.report(
                    tonic::Code::FailedPrecondition,
                    "WeChat sent an encrypted push but PUPPET_OA_AES_KEY is not set: copy the EncodingAESKey from \
                     the console"
                        .into(),
                );
                return (
                    PushOutcome::refused,
                    plain(StatusCode::BAD_REQUEST, "encrypted push, but no EncodingAESKey is configured\n"),
                );
            };
            let (Some(msg_sig), Some(ts), Some(nonce)) = (&q.msg_signature, &q.timestamp, &q.nonce) else {
                return (PushOutcome::bad_signature, plain(StatusCode::FORBIDDEN, "msg_signature missing\n"));
            };
            if !crypto::signature_matches(&crypto::signature(&[&settings.token, ts, nonce, &enc]), msg_sig) {
                return (PushOutcome::bad_signature, plain(StatusCode::FORBIDDEN, "msg_signature mismatch\n"));
            }
            let mut outcome = current.decrypt(&enc, &settings.app_id).map(|x| (x, current));
            if let (Err(_), Some(previous)) = (&outcome, settings.aes_key_previous.as_ref())
                && let Ok(x) = previous.decrypt(&enc, &settings.app_id)
            {
                outcome = Ok((x, previous));
            }
            match outcome {
                Ok((x, key)) => match xml::parse_inbound(&x) {
                    Ok(inbound) => (inbound, Some(key.clone())),
                    Err(e) => return (PushOutcome::refused, plain(StatusCode::BAD_REQUEST, &format!("{e}\n"))),
                },
                Err(e @ CryptoError::WrongAppId) => {
                    oa.report(tonic::Code::PermissionDenied, format!("an encrypted push was refused: {e}"));
                    return (PushOutcome::refused, plain(StatusCode::FORBIDDEN, "the push is for another AppID\n"));
                }
                Err(e) => {
                    oa.report(
                        tonic::Code::InvalidArgument,
                        format!("an encrypted push could not be decrypted ({e}); check PUPPET_OA_AES_KEY"),
                    );
                    return (PushOutcome::refused, plain(StatusCode::BAD_REQUEST, "cannot decrypt\n"));
                }
            }
        }
    };
    if let Some(expected) = &oa.settings().original_id
        && inbound.to != *expected
    {
        oa.report(
            tonic::Code::PermissionDenied,
            format!("a push addressed to `{}` was refused: this server is `{expected}`", inbound.to),
        );
        return (PushOutcome::refused, plain(StatusCode::FORBIDDEN, "the push is for another account\n"));
    }
    let (outcome, answer) = match oa.begin_push(inbound.dedupe_key()) {
        PushTurn::Retry(mut rx) => {
            tracing::debug!(key = %inbound.dedupe_key(), "WeChat retried a push; answering as the first delivery");
            // The first delivery answers within the reply window; past WeChat's 5 s nobody listens.
            let waited = tokio::time::timeout(std::time::Duration::from_secs(5), rx.wait_for(Option::is_some)).await;
            let answer = match waited {
                Ok(Ok(v)) => v.clone().unwrap_or_default(),
                _ => "success".to_owned(),
            };
            (PushOutcome::retry, answer)
        }
        PushTurn::New(tx) => {
            let (to, from) = (inbound.from.clone(), inbound.to.clone());
            let answer = match oa.handle_push(inbound).await {
                None => "success".to_owned(),
                Some(reply) => {
                    let xml = xml::render_reply(&to, &from, super::now_secs(), &reply);
                    match &key {
                        Some(key) => envelope(oa, key, &xml).unwrap_or_else(|e| {
                            oa.report(tonic::Code::Internal, format!("the passive reply could not be sealed: {e}"));
                            "success".to_owned()
                        }),
                        None => xml,
                    }
                }
            };
            _ = tx.send(Some(answer.clone()));
            (PushOutcome::handled, answer)
        }
    };
    let content_type = if answer.starts_with('<') { "application/xml; charset=utf-8" } else { "text/plain" };
    (outcome, (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], answer).into_response())
}
