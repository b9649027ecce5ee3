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

    #[test]
    fn a_deeply_nested_box_is_refused_without_overflowing_the_stack() {
        // serde_json stops at 128 levels; 100 000 would overflow any stack if it did not.
        for (open, close) in [("[", "]"), ("{\"a\":", "}")] {
            let deep = format!("{}1{}", open.repeat(100_000), close.repeat(100_000));
            let e = FileBox::from_json(&format!(r#"{{"type":7,"uuid":"u","metadata":{deep}}}"#)).unwrap_err();
            assert!(e.0.contains("recursion limit"), "{e}");
            assert!(FileBox::from_json(&deep).unwrap_err().0.contains("recursion limit"));
        }
    }

    #[test]
    fn a_huge_box_parses_in_linear_time() {
        let fb = FileBox::new("n".repeat(1 << 20), FileBoxSource::Base64("QUJD".repeat(1 << 18)));
        let started = std::time::Instant::now();
        assert_eq!(FileBox::from_json(&fb.to_json()).unwrap(), fb.clone().with_metadata_default());
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
    }

    /// Every file in `tests/fixtures/hostile/filebox/` (inputs that once misbehaved somewhere)
    /// parses or is refused with a short message.
    #[test]
    fn hostile_fixtures_are_parsed_or_refused() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hostile/filebox");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            if let Err(e) = FileBox::from_json(&text) {
                assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen > 0, "no fixtures in {}", dir.display());
    }

    /// No refusal is longer than this, whatever the input.
    const MAX_MESSAGE: usize = 200;

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// JSON values without floats (which serde_json does not round-trip exactly by default).
        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(6, 48, 6, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                    prop::collection::btree_map(any::<String>(), inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn json_object() -> impl Strategy<Value = Value> {
            prop::collection::btree_map(any::<String>(), json_value(), 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        }

        fn source() -> impl Strategy<Value = FileBoxSource> {
            prop_oneof![
                any::<String>().prop_map(FileBoxSource::Base64),
                (any::<String>(), prop::option::of(json_value().prop_filter("null is no headers", |h| !h.is_null())))
                    .prop_map(|(url, headers)| FileBoxSource::Url { url, headers }),
                any::<String>().prop_map(FileBoxSource::QrCode),
                any::<String>().prop_map(FileBoxSource::Uuid),
            ]
        }

        /// Any box `to_json` can write and `from_json` can give back: metadata is an object or
        /// absent (absent comes back as `{}`).
        fn file_box() -> impl Strategy<Value = FileBox> {
            (any::<String>(), source(), any::<Option<u64>>(), any::<Option<String>>(), prop::option::of(json_object()))
                .prop_map(|(name, source, size, md5, metadata)| FileBox { name, source, size, md5, metadata })
        }

        /// One change that makes a valid box's object near-valid.
        #[derive(Clone, Debug)]
        enum Mutation {
            Remove(usize),
            Replace(usize, Value),
            Insert(String, Value),
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            const KEYS: &[&str] =
                &["type", "boxType", "name", "url", "remoteUrl", "base64", "qrCode", "uuid", "size", "md5"];
            let wrong = prop_oneof![
                json_value(),
                Just(json!(-1)),
                Just(json!(7.0)),
                Just(json!(u64::MAX)),
                Just(json!("7")),
                (0u64..10).prop_map(Value::from),
            ];
            prop_oneof![
                any::<usize>().prop_map(Mutation::Remove),
                (any::<usize>(), wrong.clone()).prop_map(|(i, v)| Mutation::Replace(i, v)),
                (prop::sample::select(KEYS).prop_map(str::to_owned), wrong).prop_map(|(k, v)| Mutation::Insert(k, v)),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn arbitrary_text_is_parsed_or_refused_briefly(
                text in prop_oneof![any::<String>(), "[\\[\\]{}\":,0-9a-zA-Z .eE+-]{0,120}"],
            ) {
                if let Err(e) = FileBox::from_json(&text) {
                    prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e);
                }
            }

            #[test]
            fn arbitrary_json_values_are_parsed_or_refused_briefly(value in json_value()) {
                match FileBox::from_json(&value.to_string()) {
                    Ok(fb) => {
                        let t = value.get("type").or_else(|| value.get("boxType")).and_then(Value::as_u64);
                        prop_assert_eq!(Some(fb.source.type_number()), t);
                    }
                    Err(e) => prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e),
                }
            }

            #[test]
            fn any_box_round_trips(fb in file_box()) {
                let text = fb.to_json();
                let back = FileBox::from_json(&text);
                prop_assert_eq!(back, Ok(fb.with_metadata_default()), "{}", text);
            }

            #[test]
            fn near_valid_boxes_are_parsed_or_refused_briefly(fb in file_box(), mutations in prop::collection::vec(mutation(), 1..4)) {
                let Value::Object(mut obj) = serde_json::from_str::<Value>(&fb.to_json()).unwrap() else {
                    unreachable!("to_json writes an object")
                };
                for m in mutations {
                    let keys: Vec<String> = obj.keys().cloned().collect();
                    match m {
                        Mutation::Remove(i) if !keys.is_empty() => { obj.remove(&keys[i % keys.len()]); }
                        Mutation::Replace(i, v) if !keys.is_empty() => { obj.insert(keys[i % keys.len()].clone(), v); }
                        Mutation::Insert(k, v) => { obj.insert(k, v); }
                        _ => {}
                    }
                }
                let expected_type = obj.get("type").or_else(|| obj.get("boxType")).and_then(Value::as_u64);
                match FileBox::from_json(&Value::Object(obj.clone()).to_string()) {
                    Ok(back) => {
                        prop_assert_eq!(Some(back.source.type_number()), expected_type);
                        prop_assert_eq!(back.name.as_str(), obj.get("name").and_then(Value::as_str).unwrap_or(""));
                    }
                    Err(e) => {
                        prop_assert!(e.to_string().chars().count() < MAX_MESSAGE, "{}", e);
                        // Only a missing or unusable `type`, or a missing source field, is refused.
                        let needs = match expected_type {
                            None => true,
                            Some(1) => obj.get("base64").and_then(Value::as_str).is_none(),
                            Some(2) => ["url", "remoteUrl"].iter().all(|k| obj.get(*k).and_then(Value::as_str).is_none()),
                            Some(3) => obj.get("qrCode").and_then(Value::as_str).is_none(),
                            Some(7) => obj.get("uuid").and_then(Value::as_str).is_none(),
                            Some(_) => true,
                        };
                        prop_assert!(needs, "refused a usable box: {}", e);
                    }
                }
            }

            #[test]
            fn deep_nesting_anywhere_is_refused_or_parsed_without_overflow(
                depth in 1usize..5_000,
                object in any::<bool>(),
                place in 0usize..3,
            ) {
                let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
                let deep = format!("{}null{}", open.repeat(depth), close.repeat(depth));
                let text = match place {
                    0 => deep,
                    1 => format!(r#"{{"type":7,"uuid":"u","metadata":{{"m":{deep}}}}}"#),
                    _ => format!(r#"{{"type":2,"url":"http://x","headers":{deep}}}"#),
                };
                let parsed = FileBox::from_json(&text);
                // serde_json refuses beyond 128 levels; the box adds one or two of its own.
                if depth + 3 < 128 && place > 0 {
                    prop_assert!(parsed.is_ok(), "{:?}", parsed);
                    let fb = parsed.unwrap();
                    prop_assert_eq!(FileBox::from_json(&fb.to_json()), Ok(fb.clone().with_metadata_default()));
                } else if depth > 128 {
                    let e = parsed.unwrap_err();
                    prop_assert!(e.0.contains("recursion limit"), "{}", e);
                }
            }
        }
    }
}
