//! Identifier newtypes. On the wire every id is a plain string; in code the type says what it names.
//! `as_str()` is the wire form; `Display` is for people (log lines, error messages) and shows the
//! id as [`Shown`] does, since ids come from clients.

use std::fmt::{self, Write};

/// At most this many characters of client input are shown in a message.
pub const SHOWN_CHARS: usize = 64;

/// Client input made safe to show in a message: control characters, bidirectional overrides and
/// invisible formatting characters escaped (`\u{202e}`), cut after [`SHOWN_CHARS`] characters with
/// the full length said — an 8 MB id never comes back inside a status, and no ANSI escape or RTL
/// override reaches a terminal.
#[derive(Clone, Copy, Debug)]
pub struct Shown<'a>(pub &'a str);

fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2060}'..='\u{2069}' | '\u{061c}' | '\u{feff}')
}

/// `text` as [`Shown`] shows it, but cut after `max_chars` characters (for a place that has less
/// room than a message, such as a request id).
pub fn shown(text: &str, max_chars: usize) -> String {
    let mut out = String::new();
    _ = write_shown(&mut out, text, max_chars);
    out
}

fn write_shown(f: &mut impl Write, text: &str, max_chars: usize) -> fmt::Result {
    for (shown, c) in text.chars().enumerate() {
        if shown == max_chars {
            return write!(f, "… ({} bytes)", text.len());
        }
        if needs_escape(c) {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c => write!(f, "\\u{{{:x}}}", c as u32)?,
            }
        } else {
            f.write_char(c)?;
        }
    }
    Ok(())
}

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_shown(f, self.0, SHOWN_CHARS)
    }
}

/// A serde error message made safe to show: every part it quotes (between `"…"` or `` `…` ``,
/// where serde puts the input it complains about) and every part between them shown as [`Shown`]
/// shows input, so `invalid type: string "…"` stays short however long the string was.
pub fn shown_quotes(message: &str) -> String {
    let mut out = String::new();
    let mut rest = message;
    while let Some(start) = rest.find(['"', '`']) {
        let mark = if rest.as_bytes()[start] == b'"' { '"' } else { '`' };
        write!(out, "{}{mark}", Shown(&rest[..start])).ok();
        rest = &rest[start + 1..];
        // serde writes a `"` inside a quoted string as `\"`.
        let mut escaped = false;
        let end = rest.char_indices().find(|&(_, c)| {
            let closes = !escaped && c == mark;
            escaped = !escaped && c == '\\';
            closes
        });
        let Some((end, _)) = end else { break };
        write!(out, "{}{mark}", Shown(&rest[..end])).ok();
        rest = &rest[end + 1..];
    }
    write!(out, "{}", Shown(rest)).ok();
    out
}

macro_rules! id_type {
    ($($(#[$doc:meta])+ $name:ident),* $(,)?) => {$(
        $(#[$doc])+
        #[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The id as it travels on the wire.
            pub fn as_str(&self) -> &str {
                &self.0
            }
            /// True for the empty string, which the wire uses for "none".
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                Shown(&self.0).fmt(f)
            }
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }
        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }
    )*};
}

id_type!(
    /// A contact (a person, an official account, or the bot itself).
    ContactId,
    /// A group chat.
    RoomId,
    /// A message.
    MessageId,
    /// A friend request.
    FriendshipId,
    /// An invitation to join a room.
    RoomInvitationId,
    /// A contact tag.
    TagId,
    /// Where a message goes: a contact id (direct chat) or a room id (group chat). Only the backend
    /// knows which; WeChat room ids end in `@chatroom`.
    ConversationId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_is_shown_cut_and_escaped() {
        assert_eq!(Shown("wxid_alice").to_string(), "wxid_alice");
        assert_eq!(Shown("张伟").to_string(), "张伟");
        assert_eq!(Shown("a\nb\u{1b}[31mred\u{202e}").to_string(), "a\\nb\\u{1b}[31mred\\u{202e}");
        let long = "x".repeat(8 << 20);
        let shown = Shown(&long).to_string();
        assert!(shown.starts_with(&"x".repeat(SHOWN_CHARS)) && shown.ends_with("… (8388608 bytes)"), "{shown}");
        assert!(shown.len() < 100);
        assert_eq!(ContactId("a\u{7}".into()).to_string(), "a\\u{7}");
        assert_eq!(ContactId("a\u{7}".into()).as_str(), "a\u{7}", "the wire form is untouched");
    }

    #[test]
    fn serde_messages_show_their_quotes_cut() {
        let long = "y".repeat(10_000);
        let m = shown_quotes(&format!(r#"invalid type: string "{long}", expected i32 at line 1 column 10012"#));
        assert_eq!(
            m,
            format!(r#"invalid type: string "{}… (10000 bytes)", expected i32 at line 1 column 10012"#, &long[..64])
        );
        assert_eq!(shown_quotes(r#"a "q\"uote" b `x` c"#), r#"a "q\"uote" b `x` c"#);
        assert_eq!(shown_quotes("unknown field `a\u{1b}b`, expected `c`"), "unknown field `a\\u{1b}b`, expected `c`");
        assert_eq!(shown_quotes("unterminated \"xyz"), "unterminated \"xyz");
        assert_eq!(shown_quotes(""), "");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        #[test]
        fn shown_quotes_is_bounded_and_escaped(parts in proptest::collection::vec(proptest::prelude::any::<String>(), 0..8)) {
            let message = parts.join("\"");
            let shown = shown_quotes(&message);
            // At most 64 characters and a length note per piece, whatever each piece's length.
            let quotes = message.matches(['"', '`']).count();
            proptest::prop_assert!(shown.chars().count() <= quotes + 90 * (quotes + 1), "{}", shown);
            proptest::prop_assert!(!shown.contains(|c: char| c.is_control()), "{}", shown);
        }
    }
}
