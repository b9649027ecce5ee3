//! OneBot messages: segment arrays and CQ-code strings, both ways.
//!
//! A CQ string is text with codes `[CQ:type,key=value,…]`. In text `&`, `[` and `]` are written
//! `&amp;`, `&#91;`, `&#93;`; inside a code, `,` is `&#44;` as well.

use serde_json::{Map, Value, json};

/// Most segments in one message.
pub const MAX_SEGMENTS: usize = 256;

/// One segment: `{"type": "text", "data": {"text": "hi"}}`.
#[derive(Clone, Debug, PartialEq)]
pub struct Segment {
    /// `text`, `at`, `image`, …
    pub kind: String,
    /// Its data; values are strings in CQ codes, anything JSON in arrays.
    pub data: Map<String, Value>,
}

impl Segment {
    /// A `text` segment.
    pub fn text(t: impl Into<String>) -> Self {
        Self::new("text", [("text", Value::String(t.into()))])
    }

    /// A segment of `kind` with `data`.
    pub fn new<'a>(kind: &str, data: impl IntoIterator<Item = (&'a str, Value)>) -> Self {
        Self { kind: kind.to_owned(), data: data.into_iter().map(|(k, v)| (k.to_owned(), v)).collect() }
    }

    /// Its JSON.
    pub fn to_json(&self) -> Value {
        json!({"type": self.kind, "data": self.data})
    }

    /// A data value as a string (numbers too), when present.
    pub fn get(&self, key: &str) -> Option<String> {
        match self.data.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            _ => None,
        }
    }
}

/// Escapes text for a CQ string.
pub fn escape(text: &str, in_code: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '[' => out.push_str("&#91;"),
            ']' => out.push_str("&#93;"),
            ',' if in_code => out.push_str("&#44;"),
            c => out.push(c),
        }
    }
    out
}

/// Undoes [`escape`].
pub fn unescape(text: &str) -> String {
    text.replace("&#44;", ",").replace("&#91;", "[").replace("&#93;", "]").replace("&amp;", "&")
}

/// Segments as a CQ string.
pub fn to_cq(segments: &[Segment]) -> String {
    let mut out = String::new();
    for s in segments {
        if s.kind == "text" {
            out.push_str(&escape(&s.get("text").unwrap_or_default(), false));
            continue;
        }
        out.push_str("[CQ:");
        out.push_str(&s.kind);
        for (k, v) in &s.data {
            let v = match v {
                Value::String(s) => s.clone(),
                Value::Null => continue,
                other => other.to_string(),
            };
            out.push(',');
            out.push_str(k);
            out.push('=');
            out.push_str(&escape(&v, true));
        }
        out.push(']');
    }
    out
}

/// Parses a CQ string. An unterminated or malformed code is kept as text, as CQ parsers do.
pub fn parse_cq(text: &str) -> Vec<Segment> {
    let mut out = Vec::new();
    let mut rest = text;
    let mut plain = String::new();
    while let Some(start) = rest.find("[CQ:") {
        let Some(len) = rest[start..].find(']') else { break };
        let code = &rest[start + 4..start + len];
        let mut parts = code.split(',');
        let kind = parts.next().unwrap_or_default();
        let valid_kind = !kind.is_empty() && kind.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
        let mut data = Map::new();
        let mut valid = valid_kind;
        for p in parts {
            match p.split_once('=') {
                Some((k, v)) if !k.is_empty() => _ = data.insert(k.to_owned(), Value::String(unescape(v))),
                _ => valid = false,
            }
        }
        plain.push_str(&rest[..start]);
        if valid {
            if !plain.is_empty() {
                out.push(Segment::text(unescape(&plain)));
                plain.clear();
            }
            out.push(Segment { kind: kind.to_owned(), data });
        } else {
            plain.push_str(&rest[start..start + len + 1]);
        }
        rest = &rest[start + len + 1..];
    }
    plain.push_str(rest);
    if !plain.is_empty() {
        out.push(Segment::text(unescape(&plain)));
    }
    out
}

/// The `message` parameter of an action as segments: a CQ string (or, with `auto_escape`, plain
/// text), one segment object, or an array of them. `Err` says what is wrong.
pub fn parse_param(value: &Value, auto_escape: bool) -> Result<Vec<Segment>, String> {
    let segments = match value {
        Value::String(s) if auto_escape => vec![Segment::text(s.clone())],
        Value::String(s) => parse_cq(s),
        Value::Object(_) => vec![segment(value, 0)?],
        Value::Array(items) => {
            if items.len() > MAX_SEGMENTS {
                return Err(format!("has {} segments; at most {MAX_SEGMENTS}", items.len()));
            }
            items.iter().enumerate().map(|(i, v)| segment(v, i)).collect::<Result<_, _>>()?
        }
        other => return Err(format!("must be a string or an array of segments, not {}", type_name(other))),
    };
    if segments.len() > MAX_SEGMENTS {
        return Err(format!("has {} segments; at most {MAX_SEGMENTS}", segments.len()));
    }
    if segments.is_empty() {
        return Err("is empty".into());
    }
    Ok(segments)
}

fn segment(v: &Value, i: usize) -> Result<Segment, String> {
    let Value::Object(o) = v else {
        return Err(format!("segment {i} must be an object with `type` and `data`, not {}", type_name(v)));
    };
    let Some(Value::String(kind)) = o.get("type") else {
        return Err(format!("segment {i} has no string `type`"));
    };
    let data = match o.get("data") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(d)) => d.clone(),
        Some(other) => return Err(format!("segment {i}: `data` must be an object, not {}", type_name(other))),
    };
    Ok(Segment { kind: kind.clone(), data })
}

/// JSON's name for a value's type, for error messages.
pub fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The text a person would read: text segments as they are, others as CQ codes.
pub fn raw(segments: &[Segment]) -> String {
    to_cq(segments)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cq_strings_round_trip_with_escapes() {
        let segs = vec![
            Segment::text("a&b [x], y"),
            Segment::new("at", [("qq", json!("10001"))]),
            Segment::new("image", [("file", json!("1.jpg")), ("url", json!("http://h/d?a=1,2&b=[3]"))]),
            Segment::text(" tail"),
        ];
        let cq = to_cq(&segs);
        assert_eq!(
            cq,
            "a&amp;b &#91;x&#93;, y[CQ:at,qq=10001][CQ:image,file=1.jpg,url=http://h/d?a=1&#44;2&amp;b=&#91;3&#93;] tail"
        );
        assert_eq!(parse_cq(&cq), segs);
    }

    #[test]
    fn malformed_codes_stay_text() {
        assert_eq!(parse_cq("[CQ:at,qq=1"), vec![Segment::text("[CQ:at,qq=1")]);
        assert_eq!(parse_cq("x[CQ:,a=1]y"), vec![Segment::text("x[CQ:,a=1]y")]);
        assert_eq!(parse_cq("[CQ:face]"), vec![Segment::new("face", [])]);
    }

    #[test]
    fn message_params_are_checked() {
        assert_eq!(parse_param(&json!("[CQ:at,qq=1]"), true).unwrap(), vec![Segment::text("[CQ:at,qq=1]")]);
        assert_eq!(
            parse_param(&json!({"type": "text", "data": {"text": "hi"}}), false).unwrap(),
            vec![Segment::text("hi")]
        );
        assert!(parse_param(&json!(5), false).unwrap_err().contains("a number"));
        assert!(parse_param(&json!([{"data": {}}]), false).unwrap_err().contains("segment 0"));
        assert!(parse_param(&json!([]), false).unwrap_err().contains("empty"));
    }

    proptest::proptest! {
        /// Any text survives escaping and parsing as one text segment.
        #[test]
        fn any_text_survives(text in ".{1,64}") {
            let cq = to_cq(&[Segment::text(text.clone())]);
            proptest::prop_assert_eq!(parse_cq(&cq), vec![Segment::text(text)]);
        }
    }
}
