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
    /// A response to `req_id`.
    pub fn response(req_id: &str, name: &str, result: Result<Value, String>) -> Self {
        let (code, message, params) = match result {
            Ok(v) => (200, "success".to_owned(), v),
            Err(reason) => (400, reason, Value::Null),
        };
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

    /// Where the response to `req_id` goes.
    pub fn response(&self, req_id: &str) -> String {
        format!("{}/response/d2c/{req_id}", self.prefix)
    }
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

    /// The bytes to publish.
    pub fn seal(&self, envelope: &Envelope) -> Vec<u8> {
        let json = serde_json::to_vec(envelope).unwrap_or_default();
        let Some(cipher) = &self.0 else { return json };
        let nonce_bytes: [u8; 12] = rand_nonce();
        let mut out = nonce_bytes.to_vec();
        match cipher.encrypt(Nonce::from_slice(&nonce_bytes), json.as_slice()) {
            Ok(ct) => out.extend(ct),
            Err(_) => return Vec::new(),
        }
        base64::engine::general_purpose::STANDARD.encode(out).into_bytes()
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
        serde_json::from_slice(&json).map_err(|e| format!("malformed JSON envelope: {e}"))
    }
}

fn rand_nonce() -> [u8; 12] {
    // A v4 UUID is 122 random bits from the OS generator; 96 of them make a GCM nonce.
    let u = uuid::Uuid::new_v4();
    let mut n = [0u8; 12];
    n.copy_from_slice(&u.as_bytes()[..12]);
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_round_trip_plain_and_sealed() {
        let e = Envelope::response("r1", "contactFind", Ok(serde_json::json!({"id": "a"})));
        let plain = Seal::new(None);
        assert_eq!(plain.open(&plain.seal(&e)).unwrap(), e);
        let sealed = Seal::new(Some("s3cret"));
        let bytes = sealed.seal(&e);
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
}
