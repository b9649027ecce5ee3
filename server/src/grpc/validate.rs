//! What each field of a request may hold, checked before anything reaches a backend: ids, texts
//! and lists are bounded by what WeChat itself accepts (with room to spare), numbers by their
//! meaning. A field out of bounds is `INVALID_ARGUMENT` naming the field, the limit and what was
//! given — never the whole input (see [`Shown`]).

use puppet_proto::ids::Shown;
use puppet_proto::model::{Location, MiniProgram, UrlLink};
use tonic::Status;

/// Longest id, in bytes. WeChat's own ids are under 70 (web-protocol room ids are `@@` and 64 hex
/// digits); Wechaty message ids from other puppets are longer, so there is room.
pub const MAX_ID_BYTES: usize = 256;
/// Longest text message, in characters.
pub const MAX_TEXT_CHARS: usize = 16_384;
/// Longest room topic, contact alias, tag or name, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// Longest signature, description, corporation remark or friend-request greeting.
pub const MAX_LINE_CHARS: usize = 1024;
/// Longest room announcement.
pub const MAX_ANNOUNCE_CHARS: usize = 4096;
/// Longest `Ding` data, in bytes (it comes back in a DONG event every subscriber receives).
pub const MAX_DING_BYTES: usize = 4096;
/// Longest URL.
pub const MAX_URL_BYTES: usize = 4096;
/// Most ids in one list (mentions, members to add or remove): a WeChat room holds 500.
pub const MAX_LIST: usize = 500;
/// Most phone numbers of one contact.
pub const MAX_PHONES: usize = 16;

fn invalid(field: &str, why: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("`{field}` {why}"))
}

/// An id: present, at most [`MAX_ID_BYTES`], no control characters.
pub fn id(field: &str, value: String) -> Result<String, Status> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    optional_id(field, value)
}

/// An id that may be empty (the wire's "none").
pub fn optional_id(field: &str, value: String) -> Result<String, Status> {
    if value.len() > MAX_ID_BYTES {
        return Err(invalid(field, format!("is {} bytes; ids are at most {MAX_ID_BYTES}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, format!("`{}` contains control characters; ids never do", Shown(&value))));
    }
    Ok(value)
}

/// A list of ids: at most [`MAX_LIST`], each an [`id`].
pub fn ids(field: &str, values: Vec<String>) -> Result<Vec<String>, Status> {
    if values.len() > MAX_LIST {
        return Err(invalid(field, format!("names {} ids; at most {MAX_LIST} at once", values.len())));
    }
    values.into_iter().filter(|v| !v.is_empty()).map(|v| id(field, v)).collect()
}

/// A text of at most `max` characters (empty allowed).
pub fn text(field: &str, value: String, max: usize) -> Result<String, Status> {
    // Bytes bound characters from above: a cheap first test before counting.
    if value.len() > max && value.chars().count() > max {
        return Err(invalid(field, format!("is {} characters; at most {max}", value.chars().count())));
    }
    Ok(value)
}

/// A text that must not be empty either.
pub fn required_text(field: &str, value: String, max: usize) -> Result<String, Status> {
    if value.trim().is_empty() {
        return Err(invalid(field, "is required"));
    }
    text(field, value, max)
}

/// `Ding` data: at most [`MAX_DING_BYTES`].
pub fn ding(value: String) -> Result<String, Status> {
    if value.len() > MAX_DING_BYTES {
        return Err(invalid("data", format!("is {} bytes; at most {MAX_DING_BYTES}", value.len())));
    }
    Ok(value)
}

/// Phone numbers: at most [`MAX_PHONES`], each at most 32 characters of digits, `+`, `-`, spaces.
pub fn phones(values: Vec<String>) -> Result<Vec<String>, Status> {
    if values.len() > MAX_PHONES {
        return Err(invalid("phones", format!("lists {} numbers; at most {MAX_PHONES}", values.len())));
    }
    for p in &values {
        let ok = p.len() <= 32 && p.chars().all(|c| c.is_ascii_digit() || "+- ()".contains(c));
        if !ok {
            return Err(invalid("phones", format!("holds `{}`, which is not a phone number", Shown(p))));
        }
    }
    Ok(values)
}

fn url(field: &str, value: &str) -> Result<(), Status> {
    if value.len() > MAX_URL_BYTES {
        return Err(invalid(field, format!("is {} bytes; URLs are at most {MAX_URL_BYTES}", value.len())));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(field, "contains control characters"));
    }
    Ok(())
}

/// A link card: a URL of at most [`MAX_URL_BYTES`], bounded texts.
pub fn url_link(u: UrlLink) -> Result<UrlLink, Status> {
    url("url_link.url", &u.url)?;
    url("url_link.thumbnail_url", &u.thumbnail_url)?;
    let title = text("url_link.title", u.title, MAX_LINE_CHARS)?;
    let description = text("url_link.description", u.description, MAX_LINE_CHARS)?;
    Ok(UrlLink { title, description, ..u })
}

/// A mini-program card: bounded ids, texts and URLs.
pub fn mini_program(m: MiniProgram) -> Result<MiniProgram, Status> {
    url("mini_program.thumb_url", &m.thumb_url)?;
    url("mini_program.icon_url", &m.icon_url)?;
    url("mini_program.page_path", &m.page_path)?;
    for (field, v) in [
        ("mini_program.appid", &m.appid),
        ("mini_program.username", &m.username),
        ("mini_program.thumb_key", &m.thumb_key),
        ("mini_program.share_id", &m.share_id),
    ] {
        optional_id(field, v.clone())?;
    }
    let title = text("mini_program.title", m.title, MAX_LINE_CHARS)?;
    let description = text("mini_program.description", m.description, MAX_LINE_CHARS)?;
    Ok(MiniProgram { title, description, ..m })
}

/// A location on Earth: latitude in [-90, 90], longitude in [-180, 180], a non-negative accuracy.
pub fn location(l: Location) -> Result<Location, Status> {
    if !(l.latitude.is_finite() && (-90.0..=90.0).contains(&l.latitude)) {
        return Err(invalid("location.latitude", format!("is {}; latitudes lie in [-90, 90]", l.latitude)));
    }
    if !(l.longitude.is_finite() && (-180.0..=180.0).contains(&l.longitude)) {
        return Err(invalid("location.longitude", format!("is {}; longitudes lie in [-180, 180]", l.longitude)));
    }
    if !(l.accuracy.is_finite() && l.accuracy >= 0.0) {
        return Err(invalid("location.accuracy", format!("is {}; an accuracy is a distance ≥ 0", l.accuracy)));
    }
    let name = text("location.name", l.name, MAX_LINE_CHARS)?;
    let address = text("location.address", l.address, MAX_LINE_CHARS)?;
    Ok(Location { name, address, ..l })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn ids_are_required_bounded_and_printable() {
        assert_eq!(id("id", "wxid_alice".into()).unwrap(), "wxid_alice");
        assert_eq!(id("id", " ".into()).unwrap_err().message(), "`id` is required");
        let e = id("id", "x".repeat(8 << 20)).unwrap_err();
        assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "`id` is 8388608 bytes; ids are at most 256"));
        let e = id("contact_id", "a\u{1b}[31m".into()).unwrap_err();
        assert!(e.message().contains("control characters") && !e.message().contains('\u{1b}'), "{}", e.message());
        assert!(ids("contact_ids", vec!["a".into(); MAX_LIST + 1]).is_err());
        assert_eq!(ids("contact_ids", vec!["a".into(), String::new()]).unwrap(), vec!["a"]);
    }

    #[test]
    fn texts_are_bounded_in_characters() {
        assert!(text("text", "字".repeat(MAX_TEXT_CHARS), MAX_TEXT_CHARS).is_ok(), "characters, not bytes");
        let e = text("text", "x".repeat(MAX_TEXT_CHARS + 1), MAX_TEXT_CHARS).unwrap_err();
        assert_eq!(e.message(), "`text` is 16385 characters; at most 16384");
        assert!(required_text("topic", String::new(), MAX_NAME_CHARS).is_err());
        assert!(ding("x".repeat(MAX_DING_BYTES + 1)).is_err());
        assert!(phones(vec!["+86 139-0000-0001".into()]).is_ok());
        assert!(phones(vec!["call me".into()]).is_err());
    }

    #[test]
    fn locations_must_be_on_earth() {
        let here = Location { latitude: 39.9, longitude: 116.4, accuracy: 15.0, ..Default::default() };
        assert!(location(here.clone()).is_ok());
        let e = location(Location { latitude: 999.0, ..here.clone() }).unwrap_err();
        assert_eq!(e.message(), "`location.latitude` is 999; latitudes lie in [-90, 90]");
        assert!(location(Location { longitude: f64::NAN, ..here.clone() }).is_err());
        assert!(location(Location { accuracy: -1.0, ..here }).is_err());
    }
}
