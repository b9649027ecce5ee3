//! The WeChat Official Account callback crypto: URL/message signatures and the "safe mode"
//! AES-256-CBC envelope (spec `official-account.md` §2).
//!
//! Frame: `random(16) | len(xml) as big-endian u32 | xml | appid`, PKCS#7-padded to **32-byte**
//! blocks (not AES's 16), encrypted with AES-256-CBC whose IV is the key's first 16 bytes, then
//! base64. The key is the 43-character EncodingAESKey plus `=`, decoded leniently: real keys carry
//! non-zero trailing bits that a strict decoder rejects.

use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
use base64::Engine;
use base64::engine::{GeneralPurpose, GeneralPurposeConfig};
use sha1::{Digest, Sha1};

type Encryptor = cbc::Encryptor<aes::Aes256>;
type Decryptor = cbc::Decryptor<aes::Aes256>;

/// WeChat's own block size for the PKCS#7 padding.
const PAD_BLOCK: usize = 32;

const KEY_BASE64: GeneralPurpose =
    GeneralPurpose::new(&base64::alphabet::STANDARD, GeneralPurposeConfig::new().with_decode_allow_trailing_bits(true));

/// Why a callback could not be verified or decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The EncodingAESKey is not 43 base64 characters that decode to 32 bytes.
    #[error("the EncodingAESKey must be 43 characters [A-Za-z0-9] decoding to 32 bytes")]
    BadKey,
    /// The ciphertext is not base64, not whole AES blocks, or badly padded.
    #[error("the encrypted message is malformed: {0}")]
    Malformed(&'static str),
    /// The frame's AppID is not ours (official code -40005).
    #[error("the message was encrypted for another AppID")]
    WrongAppId,
    /// The operating system's random source failed (no frame prefix or nonce can be made).
    #[error("the operating system's random source failed: {0}")]
    NoRandomness(String),
}

/// `N` bytes from the operating system's CSPRNG.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| CryptoError::NoRandomness(e.to_string()))?;
    Ok(bytes)
}

/// SHA-1 hex of the sorted, concatenated parts: the URL `signature` (token, timestamp, nonce) and the
/// `msg_signature` (the same plus the `Encrypt` text).
pub fn signature(parts: &[&str]) -> String {
    let mut sorted = parts.to_vec();
    sorted.sort_unstable();
    let digest = Sha1::digest(sorted.concat().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Constant-time comparison of a computed and a presented signature.
pub fn signature_matches(expected: &str, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    expected.len() == presented.len() && bool::from(expected.as_bytes().ct_eq(presented.as_bytes()))
}

/// A decoded EncodingAESKey.
#[derive(Clone)]
pub struct AesKey([u8; 32]);

impl std::fmt::Debug for AesKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are never printed.
        f.write_str("AesKey(…)")
    }
}

impl AesKey {
    /// From the console's 43-character EncodingAESKey.
    pub fn from_encoding_aes_key(key: &str) -> Result<Self, CryptoError> {
        if key.len() != 43 || !key.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(CryptoError::BadKey);
        }
        let bytes = KEY_BASE64.decode(format!("{key}=")).map_err(|_| CryptoError::BadKey)?;
        Ok(Self(bytes.try_into().map_err(|_| CryptoError::BadKey)?))
    }

    fn iv(&self) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&self.0[..16]);
        iv
    }

    /// Encrypts `xml` for `appid` with the given 16-byte random prefix (tests pin it; callers use
    /// [`AesKey::encrypt`]).
    pub fn encrypt_with_random(&self, random: &[u8; 16], xml: &str, appid: &str) -> String {
        let mut frame = Vec::with_capacity(20 + xml.len() + appid.len() + PAD_BLOCK);
        frame.extend_from_slice(random);
        frame.extend_from_slice(&(xml.len() as u32).to_be_bytes());
        frame.extend_from_slice(xml.as_bytes());
        frame.extend_from_slice(appid.as_bytes());
        let pad = PAD_BLOCK - frame.len() % PAD_BLOCK;
        frame.extend(std::iter::repeat_n(pad as u8, pad));
        let len = frame.len();
        let ct = Encryptor::new(&self.0.into(), &self.iv().into())
            .encrypt_padded_mut::<NoPadding>(&mut frame, len)
            .map(<[u8]>::to_vec)
            .unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(ct)
    }

    /// Encrypts `xml` for `appid` with a fresh random prefix from the OS CSPRNG.
    pub fn encrypt(&self, xml: &str, appid: &str) -> Result<String, CryptoError> {
        Ok(self.encrypt_with_random(&random_bytes()?, xml, appid))
    }

    /// Decrypts an `Encrypt` value and checks it was meant for `appid`.
    pub fn decrypt(&self, encrypted: &str, appid: &str) -> Result<String, CryptoError> {
        let mut data = base64::engine::general_purpose::STANDARD
            .decode(encrypted.trim())
            .map_err(|_| CryptoError::Malformed("not base64"))?;
        if data.is_empty() || data.len() % 16 != 0 {
            return Err(CryptoError::Malformed("not whole AES blocks"));
        }
        let plain = Decryptor::new(&self.0.into(), &self.iv().into())
            .decrypt_padded_mut::<NoPadding>(&mut data)
            .map_err(|_| CryptoError::Malformed("AES"))?;
        let pad = *plain.last().ok_or(CryptoError::Malformed("empty"))? as usize;
        if pad == 0 || pad > PAD_BLOCK || pad > plain.len() {
            return Err(CryptoError::Malformed("bad padding"));
        }
        let frame = &plain[..plain.len() - pad];
        if frame.len() < 20 {
            return Err(CryptoError::Malformed("too short"));
        }
        let len = u32::from_be_bytes([frame[16], frame[17], frame[18], frame[19]]) as usize;
        let body = &frame[20..];
        if len > body.len() {
            return Err(CryptoError::Malformed("length beyond the frame"));
        }
        let (xml, from) = body.split_at(len);
        if from != appid.as_bytes() {
            return Err(CryptoError::WrongAppId);
        }
        String::from_utf8(xml.to_vec()).map_err(|_| CryptoError::Malformed("not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn vectors() -> Value {
        // Tencent's published vectors (a copy of shared/spec/official-account-vectors.json).
        serde_json::from_str(include_str!("vectors.json")).unwrap()
    }

    fn s<'a>(v: &'a Value, k: &str) -> &'a str {
        v[k].as_str().unwrap_or_else(|| panic!("vector field {k}"))
    }

    fn random(v: &Value) -> [u8; 16] {
        s(v, "random").as_bytes().try_into().expect("16-byte random")
    }

    #[test]
    fn encryption_matches_the_published_vectors_byte_for_byte() {
        let all = vectors();
        for name in ["A1_official_java_encrypt", "A2_official_java_encrypt_xml", "C_official_python_sample_decrypt"] {
            let v = &all[name];
            let key = AesKey::from_encoding_aes_key(s(v, "encoding_aes_key")).unwrap();
            assert_eq!(
                key.encrypt_with_random(&random(v), s(v, "plaintext"), s(v, "appid")),
                s(v, "encrypt"),
                "{name}"
            );
            assert_eq!(key.decrypt(s(v, "encrypt"), s(v, "appid")).unwrap(), s(v, "plaintext"), "{name}");
        }
    }

    #[test]
    fn decryption_handles_pads_beyond_sixteen_and_replies_encrypt_exactly() {
        let e = &vectors()["E_official_docs_push_example"];
        let key = AesKey::from_encoding_aes_key(s(e, "encoding_aes_key")).unwrap();
        assert_eq!(e["pad"], 22);
        let plain = key.decrypt(s(e, "encrypt"), s(e, "appid")).unwrap();
        assert_eq!(plain, s(e, "plaintext"));
        assert_eq!(plain.len() as u64, e["plaintext_len"].as_u64().unwrap());
        let reply = &e["reply"];
        let random: [u8; 16] = s(reply, "random").as_bytes().try_into().unwrap();
        assert_eq!(key.encrypt_with_random(&random, s(reply, "plaintext"), s(e, "appid")), s(reply, "encrypt"));
    }

    #[test]
    fn signatures_match_the_published_vectors() {
        let all = vectors();
        let a1 = &all["A1_official_java_encrypt"];
        let (t, ts, n) = (s(a1, "token"), s(a1, "timestamp"), s(a1, "nonce"));
        assert_eq!(signature(&[t, ts, n, s(a1, "encrypt")]), s(a1, "derived_msg_signature"));
        assert_eq!(signature(&[t, ts, n]), s(a1, "derived_plain_signature"));
        let c = &all["C_official_python_sample_decrypt"];
        let (t, ts, n) = (s(c, "token"), s(c, "timestamp"), s(c, "nonce"));
        assert_eq!(signature(&[t, ts, n, s(c, "encrypt")]), s(c, "msg_signature"));
        assert_eq!(signature(&[t, ts, n]), s(c, "plain_signature"));
        for name in ["F_official_docs_plain_get_verify", "G_official_docs_plain_post"] {
            let v = &all[name];
            assert_eq!(signature(&[s(v, "token"), s(v, "timestamp"), s(v, "nonce")]), s(v, "signature"), "{name}");
        }
        let f = &all["F_official_docs_plain_get_verify"];
        let changed = signature(&[s(f, "token"), s(f, "timestamp"), "1"]);
        assert!(!signature_matches(&changed, s(f, "signature")), "a changed nonce no longer matches");
        assert!(signature_matches(s(f, "signature"), s(f, "signature")));
    }

    #[test]
    fn the_negative_cases_fail_with_a_reason() {
        let c = &vectors()["C_official_python_sample_decrypt"];
        let key = AesKey::from_encoding_aes_key(s(c, "encoding_aes_key")).unwrap();
        assert_eq!(key.decrypt(s(c, "encrypt"), "wx_other"), Err(CryptoError::WrongAppId));
        assert_eq!(key.decrypt("YWJj", s(c, "appid")), Err(CryptoError::Malformed("not whole AES blocks")));
        assert!(matches!(key.decrypt("AAAAAAAAAAAAAAAAAAAAAA==", s(c, "appid")), Err(CryptoError::Malformed(_))));
        assert!(matches!(key.decrypt("%%%", s(c, "appid")), Err(CryptoError::Malformed("not base64"))));
        assert!(matches!(AesKey::from_encoding_aes_key("abcde"), Err(CryptoError::BadKey)));
        assert!(format!("{key:?}").contains('…'), "keys are never printed");
    }

    #[test]
    fn random_round_trips_survive_every_length() {
        let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
        for n in 0..70 {
            let xml: String = "<xml>中".chars().cycle().take(n).collect();
            assert_eq!(key.decrypt(&key.encrypt(&xml, "wxapp").unwrap(), "wxapp").unwrap(), xml);
        }
        let (a, b) = (key.encrypt("<xml/>", "wxapp").unwrap(), key.encrypt("<xml/>", "wxapp").unwrap());
        assert_ne!(a, b, "a fresh random prefix every time");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Any `Encrypt` text at all: an error or a string, never a panic.
        #[test]
        fn decrypting_any_text_never_panics(text in "\\PC{0,300}|[A-Za-z0-9+/]{0,200}={0,2}") {
            let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
            _ = key.decrypt(&text, "wxapp");
        }

        /// Any ciphertext bytes, block-aligned or not (so the padding, the length field and the
        /// AppID check all see garbage): never a panic, and nothing opens for the wrong AppID.
        #[test]
        fn decrypting_any_bytes_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), blocks in 0usize..20) {
            use base64::Engine;
            let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
            for data in [&bytes[..], &bytes[..(blocks * 16).min(bytes.len() / 16 * 16)]] {
                let text = base64::engine::general_purpose::STANDARD.encode(data);
                _ = key.decrypt(&text, "wxapp");
            }
        }

        /// Frames that are well formed up to a lying length field or a wrong AppID.
        #[test]
        fn crafted_frames_are_refused_not_panicked_on(len in proptest::num::u32::ANY, body in "\\PC{0,80}", appid in "[a-z0-9]{0,12}") {
            use aes::cipher::{BlockEncryptMut, KeyIvInit, block_padding::NoPadding};
            use base64::Engine;
            let key = AesKey::from_encoding_aes_key("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
            let mut frame = vec![7u8; 16];
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(body.as_bytes());
            frame.extend_from_slice(appid.as_bytes());
            let pad = PAD_BLOCK - frame.len() % PAD_BLOCK;
            frame.extend(std::iter::repeat_n(pad as u8, pad));
            let n = frame.len();
            let ct = Encryptor::new(&key.0.into(), &key.iv().into()).encrypt_padded_mut::<NoPadding>(&mut frame, n).unwrap().to_vec();
            let opened = key.decrypt(&base64::engine::general_purpose::STANDARD.encode(ct), "wxapp");
            // Opened only when the length splits the frame into some XML and exactly our AppID.
            if let Ok(xml) = opened {
                proptest::prop_assert_eq!(len as usize, xml.len());
                proptest::prop_assert_eq!(format!("{xml}wxapp"), format!("{body}{appid}"));
            }
        }
    }
}
