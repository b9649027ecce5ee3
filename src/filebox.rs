//! FileBox JSON: how files travel in `file_box` string fields.
//!
//! Parsing is lenient the way the ecosystem needs: `type` or `boxType`, `url` or `remoteUrl` (Python
//! writes only `remoteUrl`). Output carries both spellings of each, plus `name`, so both the Node and
//! the Python client can read it.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value, json};

/// Standard base64, tolerant of missing padding (clients differ): the engine FileBox data is
/// decoded and encoded with everywhere.
pub const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where a FileBox's bytes are.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileBoxSource {
    /// Inline, base64-encoded (`type` 1).
    Base64(String),
    /// At a URL, with optional request headers (`type` 2).
    Url {
        /// The URL.
        url: String,
        /// Headers as given by the sender (free-form JSON object).
        headers: Option<Value>,
    },
    /// The text of a QR code (`type` 3).
    QrCode(String),
    /// In the server's blob store, fetched with `Download` (`type` 7).
    Uuid(String),
}

impl FileBoxSource {
    /// The FileBox `type` number.
    pub fn type_number(&self) -> u64 {
        match self {
            Self::Base64(_) => 1,
            Self::Url { .. } => 2,
            Self::QrCode(_) => 3,
            Self::Uuid(_) => 7,
        }
    }
}

/// A file reference as carried on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileBox {
    /// File name (may be empty for a QR code).
    pub name: String,
    /// Where the bytes are.
    pub source: FileBoxSource,
    /// Size in bytes, when known.
    pub size: Option<u64>,
    /// MD5 hex digest, when known.
    pub md5: Option<String>,
    /// Free-form metadata object, passed through.
    pub metadata: Option<Value>,
}

/// Why a FileBox JSON text was refused. The message names what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileBoxError(pub String);

impl std::fmt::Display for FileBoxError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid FileBox JSON: {}", self.0)
    }
}

impl std::error::Error for FileBoxError {}

impl FileBox {
    /// A FileBox with no size, digest or metadata.
    pub fn new(name: impl Into<String>, source: FileBoxSource) -> Self {
        Self { name: name.into(), source, size: None, md5: None, metadata: None }
    }

    /// Parses the JSON text of a FileBox.
    pub fn from_json(text: &str) -> Result<Self, FileBoxError> {
        let value: Value = serde_json::from_str(text).map_err(|e| FileBoxError(format!("not JSON ({e})")))?;
        let obj = value.as_object().ok_or_else(|| FileBoxError("expected a JSON object".into()))?;
        let box_type = obj
            .get("type")
            .or_else(|| obj.get("boxType"))
            .and_then(Value::as_u64)
            .ok_or_else(|| FileBoxError("missing numeric `type` (or `boxType`)".into()))?;
        let text_field = |keys: &[&str]| -> Result<String, FileBoxError> {
            keys.iter()
                .find_map(|k| obj.get(*k).and_then(Value::as_str))
                .map(str::to_owned)
                .ok_or_else(|| FileBoxError(format!("type {box_type} needs a string `{}`", keys.join("` or `"))))
        };
        let source = match box_type {
            1 => FileBoxSource::Base64(text_field(&["base64"])?),
            2 => FileBoxSource::Url {
                url: text_field(&["url", "remoteUrl"])?,
                headers: obj.get("headers").filter(|h| !h.is_null()).cloned(),
            },
            3 => FileBoxSource::QrCode(text_field(&["qrCode"])?),
            7 => FileBoxSource::Uuid(text_field(&["uuid"])?),
            4..=6 => {
                return Err(FileBoxError(format!(
                    "type {box_type} (Buffer/File/Stream) cannot travel as JSON; upload it first and send a Uuid box"
                )));
            }
            n => return Err(FileBoxError(format!("unsupported type {n}"))),
        };
        Ok(Self {
            name: obj.get("name").and_then(Value::as_str).unwrap_or_default().to_owned(),
            source,
            size: obj.get("size").and_then(Value::as_u64),
            md5: obj.get("md5").and_then(Value::as_str).map(str::to_owned),
            metadata: obj.get("metadata").filter(|m| m.is_object()).cloned(),
        })
    }

    /// The JSON text, readable by the Node (`type`, `url`) and Python (`boxType`, `remoteUrl`) clients.
    pub fn to_json(&self) -> String {
        let t = self.source.type_number();
        let mut obj = Map::new();
        obj.insert("type".into(), json!(t));
        obj.insert("boxType".into(), json!(t));
        obj.insert("name".into(), json!(self.name));
        obj.insert("metadata".into(), self.metadata.clone().unwrap_or_else(|| json!({})));
        if let Some(size) = self.size {
            obj.insert("size".into(), json!(size));
        }
        if let Some(md5) = &self.md5 {
            obj.insert("md5".into(), json!(md5));
        }
        match &self.source {
            FileBoxSource::Base64(b) => {
                obj.insert("base64".into(), json!(b));
            }
            FileBoxSource::Url { url, headers } => {
                obj.insert("url".into(), json!(url));
                obj.insert("remoteUrl".into(), json!(url));
                if let Some(h) = headers {
                    obj.insert("headers".into(), h.clone());
                }
            }
            FileBoxSource::QrCode(q) => {
                obj.insert("qrCode".into(), json!(q));
            }
            FileBoxSource::Uuid(u) => {
                obj.insert("uuid".into(), json!(u));
            }
        }
        Value::Object(obj).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_url_box_is_accepted_and_written_for_both_clients() {
        let fb =
            FileBox::from_json(r#"{"boxType":2,"name":"a.png","remoteUrl":"http://x/a.png","_type":"x"}"#).unwrap();
        assert_eq!(fb.source, FileBoxSource::Url { url: "http://x/a.png".into(), headers: None });
        let out: Value = serde_json::from_str(&fb.to_json()).unwrap();
        assert_eq!(out["type"], 2);
        assert_eq!(out["boxType"], 2);
        assert_eq!(out["url"], "http://x/a.png");
        assert_eq!(out["remoteUrl"], "http://x/a.png");
        assert_eq!(out["name"], "a.png");
    }

    #[test]
    fn node_uuid_box_round_trips() {
        let text = r#"{"type":7,"uuid":"u-1","name":"f.bin","size":102400,"md5":"abc"}"#;
        let fb = FileBox::from_json(text).unwrap();
        assert_eq!(fb.size, Some(102400));
        assert_eq!(FileBox::from_json(&fb.to_json()).unwrap(), fb.clone().with_metadata_default());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        assert!(FileBox::from_json("nope").unwrap_err().0.contains("not JSON"));
        assert!(FileBox::from_json(r#"{"name":"x"}"#).unwrap_err().0.contains("type"));
        assert!(FileBox::from_json(r#"{"type":2}"#).unwrap_err().0.contains("remoteUrl"));
        assert!(FileBox::from_json(r#"{"type":4}"#).unwrap_err().0.contains("upload"));
        assert!(FileBox::from_json(r#"{"type":42}"#).unwrap_err().0.contains("unsupported"));
    }

    impl FileBox {
        fn with_metadata_default(mut self) -> Self {
            self.metadata.get_or_insert_with(|| json!({}));
            self
        }
    }
}
