//! WeChatRemote's MQTT envelope, topics, and the optional AES-256-GCM payload encryption.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The message every topic carries.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Pairs a response with its command.
    #[serde(default)]
    pub req_id: String,
    /// `command`, `response` or `event`.
    pub method: String,
    /// Protocol version, "1.0".
    #[serde(default = "version")]
    pub version: String,
    /// Milliseconds since the epoch.
    #[serde(default)]
    pub timestamp: u64,
    /// Command or event name.
    #[serde(default)]
    pub name: String,
    /// Arguments or payload.
    #[serde(default)]
    pub params: Value,
    /// Responses: 200 on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<u16>,
    /// Responses: "success" or the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

fn version() -> String {
    "1.0".into()
}

impl Envelope {
    /// A response to `req_id`: 200 with the result, or 400 with the reason.
    pub fn response(req_id: &str, name: &str, result: Result<Value, String>) -> Self {
        match result {
            Ok(v) => Self::answer(req_id, name, 200, "success".to_owned(), v),
            Err(reason) => Self::failure(req_id, name, 400, reason),
        }
    }

    /// A response with another failure code (429 busy, 503 shutting down, …) and its reason.
    pub fn failure(req_id: &str, name: &str, code: u16, reason: String) -> Self {
        Self::answer(req_id, name, code, reason, Value::Null)
    }

    fn answer(req_id: &str, name: &str, code: u16, message: String, params: Value) -> Self {
        Self {
            req_id: req_id.to_owned(),
            method: "response".into(),
            version: version(),
            timestamp: puppet_proto::model::now_ms(),
            name: name.to_owned(),
            params,
            code: Some(code),
            message: Some(message),
        }
    }

    /// An event.
    pub fn event(name: &str, params: Value) -> Self {
        Self {
            req_id: uuid::Uuid::new_v4().to_string(),
            method: "event".into(),
            version: version(),
            timestamp: puppet_proto::model::now_ms(),
            name: name.to_owned(),
            params,
            code: None,
            message: None,
        }
    }
}

/// The bridge's topics for one client id.
#[derive(Clone, Debug)]
pub struct Topics {
    /// Where commands arrive.
    pub command: String,
    /// Where events go.
    pub event: String,
    prefix: String,
}

impl Topics {
    /// Topics under `thing/chatbot/{client_id}/`.
    pub fn new(client_id: &str) -> Self {
        let prefix = format!("thing/chatbot/{client_id}");
        Self { command: format!("{prefix}/command/invoke"), event: format!("{prefix}/event/post"), prefix }
    }

    /// Where the response to `req_id` goes: `…/response/d2c/unknown` when there is no reqId or it
    /// cannot be a topic level (see [`valid_req_id`]).
    pub fn response(&self, req_id: &str) -> String {
        let level = if valid_req_id(req_id) { req_id } else { "unknown" };
        format!("{}/response/d2c/{level}", self.prefix)
    }
}

/// The longest reqId answered on its own topic.
pub const MAX_REQ_ID: usize = 128;

/// Whether a reqId can be a topic level: 1 to [`MAX_REQ_ID`] bytes, no `/`, no wildcard, no
/// control character.
pub fn valid_req_id(req_id: &str) -> bool {
    !req_id.is_empty()
        && req_id.len() <= MAX_REQ_ID
        && !req_id.chars().any(|c| matches!(c, '/' | '+' | '#') || c.is_control())
}

/// Payload encryption with a shared secret: AES-256-GCM, key = SHA-256(secret), and on the wire
/// `base64(nonce[12] || ciphertext || tag[16])` of the JSON envelope (standard alphabet, padded).
#[derive(Clone)]
pub struct Seal(Option<Aes256Gcm>);

impl Seal {
    /// No encryption when `secret` is `None`.
    pub fn new(secret: Option<&str>) -> Self {
        Self(secret.map(|s| {
            use sha2::Digest;
            let key = sha2::Sha256::digest(s.as_bytes());
            Aes256Gcm::new_from_slice(&key).expect("a SHA-256 digest is a 32-byte key")
        }))
    }

    /// The bytes to publish, or why they could not be made (the OS random generator failed).
    pub fn seal(&self, envelope: &Envelope) -> Result<Vec<u8>, String> {
        let json = serde_json::to_vec(envelope).map_err(|e| format!("cannot encode the envelope: {e}"))?;
        let Some(cipher) = &self.0 else { return Ok(json) };
        let nonce = nonce()?;
        let mut out = nonce.to_vec();
        let ct = cipher
            .encrypt(Nonce::from_slice(&nonce), json.as_slice())
            .map_err(|_| "AES-GCM refused to encrypt the envelope".to_owned())?;
        out.extend(ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out).into_bytes())
    }

    /// The envelope in received bytes, or why it is unreadable.
    pub fn open(&self, bytes: &[u8]) -> Result<Envelope, String> {
        let json = match &self.0 {
            None => bytes.to_vec(),
            Some(cipher) => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(bytes.trim_ascii())
                    .map_err(|e| format!("the payload is not base64 (a secret is set): {e}"))?;
                if raw.len() < 12 + 16 {
                    return Err("the encrypted payload is too short".into());
                }
                let (nonce, ct) = raw.split_at(12);
                cipher
                    .decrypt(Nonce::from_slice(nonce), ct)
                    .map_err(|_| "the payload does not decrypt with the shared secret".to_owned())?
            }
        };
        serde_json::from_slice(&json).map_err(|e| format!("malformed JSON envelope: {}", clip_quoted(&e.to_string())))
    }
}

/// Client input for an error message, shown as [`puppet_proto::ids::Shown`] shows input.
pub fn quote(input: &str) -> String {
    puppet_proto::ids::Shown(input).to_string()
}

/// A serde message with the client input it quotes clipped ([`puppet_proto::ids::shown_quotes`]).
pub fn clip_quoted(message: &str) -> String {
    puppet_proto::ids::shown_quotes(message)
}

/// A fresh 96-bit GCM nonce from the OS CSPRNG. Random nonces are safe for far more messages than
/// one key will seal here (the collision bound is about 2^32 messages per key).
fn nonce() -> Result<[u8; 12], String> {
    let mut n = [0u8; 12];
    getrandom::fill(&mut n).map_err(|e| format!("the OS random generator failed: {e}"))?;
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_plain_and_sealed() {
        let e = Envelope::response("r1", "contactFind", Ok(serde_json::json!({"id": "a"})));
        let plain = Seal::new(None);
        assert_eq!(plain.open(&plain.seal(&e).unwrap()).unwrap(), e);
        let sealed = Seal::new(Some("s3cret"));
        let bytes = sealed.seal(&e).unwrap();
        assert!(!String::from_utf8_lossy(&bytes).contains("contactFind"), "encrypted");
        assert_eq!(sealed.open(&bytes).unwrap(), e);
        assert!(Seal::new(Some("other")).open(&bytes).unwrap_err().contains("decrypt"));
        assert!(plain.open(b"{nope").unwrap_err().contains("malformed"));
    }

    #[test]
    fn topics_follow_wechatremote() {
        let t = Topics::new("bot1");
        assert_eq!(t.command, "thing/chatbot/bot1/command/invoke");
        assert_eq!(t.event, "thing/chatbot/bot1/event/post");
        assert_eq!(t.response("42"), "thing/chatbot/bot1/response/d2c/42");
    }

    #[test]
    fn nonces_are_fresh_random_96_bit_values() {
        let e = Envelope::response("r1", "wechatyLogonoff", Ok(serde_json::json!({"logonoff": true})));
        let json_len = serde_json::to_vec(&e).unwrap().len();
        let sealed = Seal::new(Some("s3cret"));
        let mut seen = std::collections::HashSet::new();
        let mut uuid_shaped = 0;
        for _ in 0..2000 {
            let raw = base64::engine::general_purpose::STANDARD.decode(sealed.seal(&e).unwrap()).unwrap();
            assert_eq!(raw.len(), 12 + json_len + 16, "nonce, ciphertext, tag");
            let nonce: [u8; 12] = raw[..12].try_into().unwrap();
            assert!(seen.insert(nonce), "a nonce repeated");
            // A v4 UUID's bytes carry its version (0100) and variant (10) bits: only 90 are random.
            if nonce[6] >> 4 == 4 && nonce[8] >> 6 == 2 {
                uuid_shaped += 1;
            }
        }
        // 1 in 64 random nonces looks like that by chance; all 2000 only if they came from UUIDs.
        assert!(uuid_shaped < 200, "{uuid_shaped} of 2000 nonces have UUID version/variant bits");
    }

    #[test]
    fn client_input_in_messages_is_clipped_and_escaped() {
        assert_eq!(quote("a\nb"), "a\\nb");
        assert_eq!(quote(&"x".repeat(100)), format!("{}… (100 bytes)", "x".repeat(64)));
        let long = format!("invalid type: string \"{}\", expected u64", "y".repeat(500));
        assert_eq!(
            clip_quoted(&long),
            format!("invalid type: string \"{}… (500 bytes)\", expected u64", "y".repeat(64))
        );
        let e = Seal::new(None).open(format!("{{\"reqId\": 1, \"method\": \"{}\"}}", "z".repeat(10_000)).as_bytes());
        assert!(e.unwrap_err().len() < 200, "malformed JSON is described, not repeated");
        assert!(!valid_req_id("") && !valid_req_id("a/b") && !valid_req_id("a+") && !valid_req_id("#"));
        assert!(valid_req_id("req-1") && !valid_req_id(&"r".repeat(MAX_REQ_ID + 1)));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 256, ..Default::default() })]

        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..1024)) {
            let plain = Seal::new(None);
            let sealed = Seal::new(Some("s3cret"));
            _ = plain.open(&bytes);
            _ = sealed.open(&bytes);
            // Valid base64 of arbitrary bytes reaches the decryption.
            _ = sealed.open(base64::engine::general_purpose::STANDARD.encode(&bytes).as_bytes());
            // Whatever the error, it stays short.
            if let Err(e) = plain.open(&bytes) {
                proptest::prop_assert!(e.chars().count() < 300, "{}", e);
            }
        }

        #[test]
        fn clipping_never_panics_and_bounds_input(text in "\\PC{0,300}") {
            proptest::prop_assert!(quote(&text).chars().count() <= 64 * 4 + 1);
            _ = clip_quoted(&text);
        }
    }
}
