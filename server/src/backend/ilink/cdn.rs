//! Media through iLink's CDN, as Tencent's client does it (`src/cdn/*`): files are AES-128-ECB
//! encrypted (PKCS#7) with a fresh random key; an upload asks `getuploadurl` for a URL (declaring
//! the plaintext's size and MD5 and the ciphertext's size), POSTs the ciphertext there and gets the
//! download parameter back in the `x-encrypted-param` header; a download fetches
//! `{cdn}/download?encrypted_query_param=…` (or the `full_url` given) and decrypts.

use aes::Aes128;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyInit, block_padding::Pkcs7};
use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::api::{Api, ApiError, enc};

/// `UploadMediaType`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MediaType {
    /// 1.
    Image = 1,
    /// 2.
    Video = 2,
    /// 3.
    File = 3,
}

/// A CDN media reference as an inbound message carries it, kept with the stored message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRef {
    /// `encrypt_query_param`.
    pub param: String,
    /// `full_url`, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub full_url: Option<String>,
    /// The AES key, 32 hex digits.
    pub key_hex: String,
}

/// AES-128-ECB with PKCS#7.
pub fn encrypt(key: &[u8; 16], plain: &[u8]) -> Vec<u8> {
    ecb::Encryptor::<Aes128>::new(key.into()).encrypt_padded_vec_mut::<Pkcs7>(plain)
}

/// The inverse of [`encrypt`]; `None` when the length or padding is wrong (a wrong key, usually).
pub fn decrypt(key: &[u8; 16], cipher: &[u8]) -> Option<Vec<u8>> {
    ecb::Decryptor::<Aes128>::new(key.into()).decrypt_padded_vec_mut::<Pkcs7>(cipher).ok()
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// 32 hex digits as a key.
pub fn unhex16(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// A key from a `CDNMedia.aes_key`: base64 of the 16 raw bytes (images) or of their 32 hex digits
/// (files, voice, video).
pub fn key_from_aes_key(b64: &str) -> Option<[u8; 16]> {
    let d = base64::engine::general_purpose::STANDARD.decode(b64.trim()).ok()?;
    match d.len() {
        16 => d.try_into().ok(),
        32 => unhex16(std::str::from_utf8(&d).ok()?),
        _ => None,
    }
}

/// The media reference of an inbound item (`image_item`, `file_item`, …): `media` plus the key —
/// an image's raw hex `aeskey` first (the one that decrypts), else `media.aes_key`.
pub fn media_ref(item: &Value) -> Option<MediaRef> {
    let media = item.get("media")?;
    let param = media.get("encrypt_query_param").and_then(Value::as_str).unwrap_or("").to_owned();
    let full_url = media.get("full_url").and_then(Value::as_str).filter(|u| !u.is_empty()).map(String::from);
    if param.is_empty() && full_url.is_none() {
        return None;
    }
    let key = item
        .get("aeskey")
        .and_then(Value::as_str)
        .and_then(unhex16)
        .or_else(|| media.get("aes_key").and_then(Value::as_str).and_then(key_from_aes_key))?;
    Some(MediaRef { param, full_url, key_hex: hex(&key) })
}

/// What an upload left on the CDN.
pub struct Uploaded {
    /// The download parameter.
    pub param: String,
    /// The key.
    pub key: [u8; 16],
    /// Plaintext size.
    pub size: usize,
    /// Ciphertext size.
    pub cipher_size: usize,
}

/// Downloads and decrypts; at most `max` ciphertext bytes.
pub async fn download(api: &Api, cdn_base: &str, m: &MediaRef, max: u64) -> Result<Vec<u8>, ApiError> {
    let call = "CDN download";
    let key =
        unhex16(&m.key_hex).ok_or(ApiError::Transport { call, msg: "the stored key is not 32 hex digits".into() })?;
    let url = match &m.full_url {
        Some(u) => u.clone(),
        None => format!("{cdn_base}/download?encrypted_query_param={}", enc(&m.param)),
    };
    let t = |e: reqwest::Error| ApiError::Transport { call, msg: e.without_url().to_string() };
    let mut res = api.http().get(url).timeout(std::time::Duration::from_secs(120)).send().await.map_err(t)?;
    if !res.status().is_success() {
        return Err(ApiError::Transport { call, msg: format!("HTTP {}", res.status()) });
    }
    if res.content_length().is_some_and(|n| n > max) {
        return Err(ApiError::Transport { call, msg: format!("the file is larger than {max} bytes") });
    }
    let mut cipher = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(t)? {
        if (cipher.len() + chunk.len()) as u64 > max {
            return Err(ApiError::Transport { call, msg: format!("the file is larger than {max} bytes") });
        }
        cipher.extend_from_slice(&chunk);
    }
    decrypt(&key, &cipher).ok_or(ApiError::Transport { call, msg: "the file does not decrypt with its key".into() })
}

/// Encrypts `plain` with a fresh key and uploads it for `to`.
pub async fn upload(
    api: &Api,
    cdn_base: &str,
    token: &str,
    to: &str,
    media_type: MediaType,
    plain: &[u8],
) -> Result<Uploaded, ApiError> {
    let mut key = [0u8; 16];
    let mut filekey = [0u8; 16];
    getrandom::fill(&mut key)
        .and_then(|()| getrandom::fill(&mut filekey))
        .map_err(|e| ApiError::Transport { call: "getuploadurl", msg: format!("no randomness: {e}") })?;
    let filekey = hex(&filekey);
    let cipher = encrypt(&key, plain);
    let body = json!({
        "filekey": filekey, "media_type": media_type as i64, "to_user_id": to,
        "rawsize": plain.len(), "rawfilemd5": hex(&Md5::digest(plain)), "filesize": cipher.len(),
        "no_need_thumb": true, "aeskey": hex(&key),
    });
    let v = api.post("getuploadurl", "getuploadurl", Some(token), body, None).await?;
    let full = v.get("upload_full_url").and_then(Value::as_str).map(str::trim).filter(|u| !u.is_empty());
    let url = match (full, v.get("upload_param").and_then(Value::as_str)) {
        (Some(u), _) => u.to_owned(),
        (None, Some(p)) if !p.is_empty() => {
            format!("{cdn_base}/upload?encrypted_query_param={}&filekey={}", enc(p), enc(&filekey))
        }
        _ => {
            return Err(ApiError::Transport { call: "getuploadurl", msg: "answered without an upload URL".into() });
        }
    };
    let call = "CDN upload";
    let cipher_size = cipher.len();
    let res = api
        .http()
        .post(url)
        .header("Content-Type", "application/octet-stream")
        .timeout(std::time::Duration::from_secs(120))
        .body(cipher)
        .send()
        .await
        .map_err(|e| ApiError::Transport { call, msg: e.without_url().to_string() })?;
    if !res.status().is_success() {
        let why = res.headers().get("x-error-message").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        return Err(ApiError::Transport {
            call,
            msg: format!("HTTP {}: {}", res.status(), puppet_proto::ids::Shown(&why)),
        });
    }
    let param = res
        .headers()
        .get("x-encrypted-param")
        .and_then(|v| v.to_str().ok())
        .filter(|p| !p.is_empty())
        .ok_or(ApiError::Transport { call, msg: "the answer has no x-encrypted-param header".into() })?
        .to_owned();
    Ok(Uploaded { param, key, size: plain.len(), cipher_size })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecb_pads_to_the_next_block() {
        let key = [9u8; 16];
        for len in [0usize, 1, 15, 16, 17, 4096] {
            let plain = vec![0xabu8; len];
            let c = encrypt(&key, &plain);
            assert_eq!(c.len(), (len / 16 + 1) * 16);
            assert_eq!(decrypt(&key, &c).unwrap(), plain);
        }
        assert!(decrypt(&key, &[0u8; 15]).is_none());
    }

    #[test]
    fn both_aes_key_encodings_give_the_key() {
        let key: [u8; 16] = *b"0123456789abcdef";
        let b64 = base64::engine::general_purpose::STANDARD;
        assert_eq!(key_from_aes_key(&b64.encode(key)), Some(key));
        assert_eq!(key_from_aes_key(&b64.encode(hex(&key))), Some(key));
        assert_eq!(key_from_aes_key(&b64.encode([1u8; 20])), None);
        let item =
            json!({"media": {"encrypt_query_param": "p", "aes_key": b64.encode([0u8; 16])}, "aeskey": hex(&key)});
        assert_eq!(media_ref(&item).unwrap().key_hex, hex(&key), "an image's hex aeskey wins");
    }
}
