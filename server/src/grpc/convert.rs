//! Domain ⇄ protobuf conversions shared by the RPC handlers. Responses fill the current field *and*
//! its deprecated twin (Node reads the new one, Python 0.8.10 only the old one); requests accept
//! either.

use puppet_proto::filebox::FileBox;
use tonic::Status;

/// A required string field; `INVALID_ARGUMENT` naming it when empty.
pub fn required(field: &str, value: String) -> Result<String, Status> {
    if value.trim().is_empty() { Err(Status::invalid_argument(format!("`{field}` is required"))) } else { Ok(value) }
}

/// An optional string that the wire encodes as "" for none.
pub fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

/// Parses a FileBox JSON field, `INVALID_ARGUMENT` naming the field and the problem.
pub fn file_box(field: &str, json: &str) -> Result<FileBox, Status> {
    FileBox::from_json(json).map_err(|e| Status::invalid_argument(format!("`{field}`: {e}")))
}

/// A card given either as a message (current clients) or as legacy camelCase JSON (Python).
pub fn card<P, T: serde::de::DeserializeOwned>(
    what: &str,
    message: Option<P>,
    legacy_json: &str,
    from_pb: impl FnOnce(P) -> T,
) -> Result<T, Status> {
    match message {
        Some(m) => Ok(from_pb(m)),
        None if !legacy_json.is_empty() => serde_json::from_str(legacy_json)
            .map_err(|e| Status::invalid_argument(format!("`{what}_deprecated` is not valid {what} JSON: {e}"))),
        None => Err(Status::invalid_argument(format!("`{what}` is required"))),
    }
}

/// JSON text of a card for the deprecated response fields (camelCase, as Python reads it).
pub fn legacy_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "{}".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use puppet_proto::model::UrlLink;
    use puppet_proto::pb::wechaty::puppet as pb;

    #[test]
    fn cards_come_from_the_message_or_the_legacy_json() {
        let from_json: UrlLink =
            card("url_link", None::<pb::UrlLinkPayload>, r#"{"url":"https://x","thumbnailUrl":"t"}"#, UrlLink::from)
                .unwrap();
        assert_eq!((from_json.url.as_str(), from_json.thumbnail_url.as_str()), ("https://x", "t"));
        let msg = pb::UrlLinkPayload { url: "https://y".into(), ..Default::default() };
        assert_eq!(card("url_link", Some(msg), "ignored", UrlLink::from).unwrap().url, "https://y");
        let e = card::<pb::UrlLinkPayload, UrlLink>("url_link", None, "", UrlLink::from).unwrap_err();
        assert_eq!(e.message(), "`url_link` is required");
        let e = card::<pb::UrlLinkPayload, UrlLink>("url_link", None, "{", UrlLink::from).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert_eq!(legacy_json(&UrlLink::default()), r#"{"description":"","thumbnailUrl":"","title":"","url":""}"#);
    }
}
