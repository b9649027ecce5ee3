//! Official Account callback XML: a hardened reader (no DTD, no entities beyond the five predefined
//! ones and character references, bounded depth, element count and text) into a small tree, the
//! typed inbound message, and the passive reply writer (spec `official-account.md` §1, §3).
//!
//! Every walk over a [`Node`] — reading, [`Node::leaves`], comparing, printing, dropping — uses an
//! explicit stack, so a tree of any depth (built by hand; [`parse_tree`] stops at [`MAX_DEPTH`])
//! cannot overflow the thread's stack.

use std::collections::{BTreeMap, HashMap};

use quick_xml::Reader;
use quick_xml::events::Event;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Deepest element nesting accepted (the root element is level 1; WeChat's deepest push,
/// `SendPicsInfo/PicList/item/PicMd5Sum`, is level 5).
pub const MAX_DEPTH: usize = 32;
/// Most elements in one document (a push has a few dozen).
pub const MAX_ELEMENTS: usize = 4096;
/// Most text (CDATA and character data, after entity decoding) in one document.
pub const MAX_TEXT_BYTES: usize = 1 << 20;
/// Most bytes of element paths (`SendPicsInfo/PicList/item`, …) in one document, added up over its
/// elements: what [`Node::leaves`] may build, so long names nested deep cannot multiply a small
/// body into a large map.
pub const MAX_PATH_BYTES: usize = 256 << 10;

/// Why a callback body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A DTD or an undeclared entity: refused outright (XXE).
    #[error("DTDs and custom entities are not accepted")]
    Entity,
    /// Not well-formed.
    #[error("malformed XML: {0}")]
    Malformed(String),
    /// Well-formed, but beyond one of the reader's bounds.
    #[error("XML refused: {0}")]
    TooLarge(String),
}

/// At most `max` characters of `text` (client input) for an error message, shown as
/// [`puppet_proto::ids::Shown`] shows input.
pub fn clip(text: &str, max: usize) -> String {
    puppet_proto::ids::shown(text, max)
}

/// An element: its trimmed text and its children in order.
#[derive(Default)]
pub struct Node {
    /// Text content (CDATA and text, trimmed).
    pub text: String,
    /// Child elements.
    pub children: Vec<(String, Node)>,
}

impl Drop for Node {
    fn drop(&mut self) {
        // The derived drop recurses once per level; a deep tree would overflow the stack. Children
        // are moved onto a heap stack and emptied there, so every node drops with no children.
        if self.children.iter().all(|(_, c)| c.children.is_empty()) {
            return;
        }
        let mut pending: Vec<Node> = self.children.drain(..).map(|(_, c)| c).collect();
        while let Some(mut node) = pending.pop() {
            pending.extend(node.children.drain(..).map(|(_, c)| c));
        }
    }
}

impl PartialEq for Node {
    fn eq(&self, other: &Self) -> bool {
        let mut pending = vec![(self, other)];
        while let Some((a, b)) = pending.pop() {
            if a.text != b.text || a.children.len() != b.children.len() {
                return false;
            }
            for ((na, ca), (nb, cb)) in a.children.iter().zip(&b.children) {
                if na != nb {
                    return false;
                }
                pending.push((ca, cb));
            }
        }
        true
    }
}

impl std::fmt::Debug for Node {
    /// As XML-like text: `<name>text<child>…</child></name>` (never escaped; for diagnostics).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        enum Step<'a> {
            Open(&'a str, &'a Node),
            Close(&'a str),
        }
        f.write_str("Node(")?;
        let mut steps = vec![Step::Open("", self)];
        while let Some(step) = steps.pop() {
            match step {
                Step::Open(name, node) => {
                    if !name.is_empty() {
                        write!(f, "<{name}>")?;
                    }
                    f.write_str(&node.text)?;
                    steps.push(Step::Close(name));
                    steps.extend(node.children.iter().rev().map(|(n, c)| Step::Open(n, c)));
                }
                Step::Close("") => {}
                Step::Close(name) => write!(f, "</{name}>")?,
            }
        }
        f.write_str(")")
    }
}

impl Node {
    /// The first child called `name`.
    pub fn child(&self, name: &str) -> Option<&Node> {
        self.children.iter().find(|(n, _)| n == name).map(|(_, c)| c)
    }

    /// The text at a `/`-separated path; an empty value counts as absent (as WeRoBot reads it).
    pub fn get(&self, path: &str) -> Option<&str> {
        let mut node = self;
        for part in path.split('/') {
            node = node.child(part)?;
        }
        Some(node.text.as_str()).filter(|t| !t.is_empty())
    }

    /// Every leaf under this node as `path → text` (nested elements joined with `/`; the second and
    /// later of repeated siblings get an index, `item[1]`, `item[2]`, as WeChat's `PicList` needs).
    /// When two leaves share a path, the first in document order wins.
    pub fn leaves(&self) -> BTreeMap<String, String> {
        // One path buffer, cut back to a level's prefix for each child: the work is the output's
        // size, however deep the tree.
        type Level<'a> = (std::slice::Iter<'a, (String, Node)>, usize, HashMap<&'a str, usize>);
        let mut out = BTreeMap::new();
        let mut path = String::new();
        let mut levels: Vec<Level<'_>> = vec![(self.children.iter(), 0, HashMap::new())];
        while let Some((siblings, prefix, seen)) = levels.last_mut() {
            let Some((name, child)) = siblings.next() else {
                levels.pop();
                continue;
            };
            path.truncate(*prefix);
            if *prefix > 0 {
                path.push('/');
            }
            path.push_str(name);
            let n = seen.entry(name.as_str()).or_default();
            if *n > 0 {
                path.push_str(&format!("[{n}]"));
            }
            *n += 1;
            if child.children.is_empty() {
                if !child.text.is_empty() {
                    out.entry(path.clone()).or_insert_with(|| child.text.clone());
                }
            } else {
                levels.push((child.children.iter(), path.len(), HashMap::new()));
            }
        }
        out
    }
}

fn predefined(name: &str) -> Option<char> {
    Some(match name {
        "lt" => '<',
        "gt" => '>',
        "amp" => '&',
        "apos" => '\'',
        "quot" => '"',
        _ => return None,
    })
}

/// What [`parse_tree`] has spent of its bounds.
#[derive(Default)]
struct Budget {
    elements: usize,
    text: usize,
    paths: usize,
}

impl Budget {
    fn text(&mut self, bytes: usize) -> Result<(), XmlError> {
        self.text += bytes;
        if self.text > MAX_TEXT_BYTES {
            return Err(XmlError::TooLarge(format!("more than {} KiB of text", MAX_TEXT_BYTES >> 10)));
        }
        Ok(())
    }
}

/// An element being read: its name, the node so far, and the length of its path below the root.
type Open = (String, Node, usize);

/// Opens an element under the innermost open one, within the bounds.
fn open(stack: &[Open], budget: &mut Budget, name: &str) -> Result<Open, XmlError> {
    // `stack[0]` is the document itself, so `stack.len()` is the new element's level.
    if stack.len() > MAX_DEPTH {
        return Err(XmlError::TooLarge(format!("elements nested deeper than {MAX_DEPTH} levels")));
    }
    budget.elements += 1;
    if budget.elements > MAX_ELEMENTS {
        return Err(XmlError::TooLarge(format!("more than {MAX_ELEMENTS} elements")));
    }
    let name = name.to_owned();
    // The root's own name is not part of the paths below it.
    let path = match stack {
        [_] => 0,
        [_, _] => name.len(),
        [.., (_, _, parent)] => parent + 1 + name.len(),
        [] => 0,
    };
    budget.paths += path;
    if budget.paths > MAX_PATH_BYTES {
        return Err(XmlError::TooLarge(format!(
            "element paths add up to more than {} KiB (long names nested deep)",
            MAX_PATH_BYTES >> 10
        )));
    }
    Ok((name, Node::default(), path))
}

/// Reads a document into its root element, within [`MAX_DEPTH`], [`MAX_ELEMENTS`],
/// [`MAX_TEXT_BYTES`] and [`MAX_PATH_BYTES`]; the work is linear in the input and stops at the
/// first bound crossed.
pub fn parse_tree(xml: &str) -> Result<Node, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<Open> = vec![(String::new(), Node::default(), 0)];
    let mut budget = Budget::default();
    let malformed = |reader: &Reader<&[u8]>, e: quick_xml::Error| {
        XmlError::Malformed(format!("{} (at byte {})", clip(&e.to_string(), 64), reader.error_position()))
    };
    loop {
        let event = reader.read_event().map_err(|e| malformed(&reader, e))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Entity),
            Event::Start(e) => {
                let element = open(&stack, &mut budget, e.name().as_ref())?;
                stack.push(element);
            }
            Event::Empty(e) => {
                let (name, node, _) = open(&stack, &mut budget, e.name().as_ref())?;
                if let Some((_, parent, _)) = stack.last_mut() {
                    parent.children.push((name, node));
                }
            }
            Event::End(_) => {
                let (name, mut node, _) = stack.pop().ok_or_else(|| XmlError::Malformed("unbalanced".into()))?;
                node.text = node.text.trim().to_owned();
                match stack.last_mut() {
                    Some((_, parent, _)) => parent.children.push((name, node)),
                    None => return Err(XmlError::Malformed("unbalanced".into())),
                }
            }
            Event::Text(t) => {
                let text = t.xml10_content();
                budget.text(text.len())?;
                if let Some((_, node, _)) = stack.last_mut() {
                    node.text.push_str(&text);
                }
            }
            Event::CData(c) => {
                let text = c.xml10_content();
                budget.text(text.len())?;
                if let Some((_, node, _)) = stack.last_mut() {
                    node.text.push_str(&text);
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => predefined(&r.xml10_content()).ok_or(XmlError::Entity)?,
                    Err(_) => return Err(XmlError::Entity),
                };
                budget.text(c.len_utf8())?;
                if let Some((_, node, _)) = stack.last_mut() {
                    node.text.push(c);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    let (_, mut document, _) = stack.pop().ok_or_else(|| XmlError::Malformed("empty".into()))?;
    if !stack.is_empty() {
        return Err(XmlError::Malformed("unclosed element".into()));
    }
    match document.children.len() {
        1 => Ok(document.children.remove(0).1),
        0 => Err(XmlError::Malformed("no root element".into())),
        _ => Err(XmlError::Malformed("more than one root element".into())),
    }
}

/// What a follower's push carries beyond the common fields (kept with its message in the store,
/// as JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InboundKind {
    /// `text`.
    Text { content: String },
    /// `image`.
    Image { pic_url: Option<String>, media_id: Option<String> },
    /// `voice`.
    Voice { media_id: Option<String>, format: Option<String>, recognition: Option<String> },
    /// `video` and `shortvideo`.
    Video { media_id: Option<String>, thumb_media_id: Option<String>, short: bool },
    /// `location`.
    Location { latitude: f64, longitude: f64, scale: i64, label: Option<String> },
    /// `link`.
    Link { title: Option<String>, description: Option<String>, url: Option<String> },
    /// `event`: its name as sent (`subscribe`, `SCAN`, `CLICK`, …) and `EventKey`; the other fields
    /// are in [`Inbound::fields`].
    Event { event: String, key: Option<String> },
    /// A `MsgType` this reader does not know; the raw XML is kept.
    Unknown { msg_type: String },
}

/// One parsed push.
#[derive(Clone, Debug, PartialEq)]
pub struct Inbound {
    /// The OA's original id (`gh_…`).
    pub to: String,
    /// The follower's openid.
    pub from: String,
    /// Unix seconds.
    pub create_time: u64,
    /// `MsgId` (`MsgID` on job-finished events); 0 when absent.
    pub msg_id: u64,
    /// The rest.
    pub kind: InboundKind,
    /// Every field as `path → text` ([`Node::leaves`]), the common ones included.
    pub fields: BTreeMap<String, String>,
    /// The XML as received.
    pub raw: String,
}

impl Inbound {
    /// WeRoBot's type key: lower-cased `MsgType`, and for events lower-cased `Event` + `_event`.
    pub fn type_key(&self) -> String {
        match &self.kind {
            InboundKind::Text { .. } => "text".into(),
            InboundKind::Image { .. } => "image".into(),
            InboundKind::Voice { .. } => "voice".into(),
            InboundKind::Video { short: false, .. } => "video".into(),
            InboundKind::Video { short: true, .. } => "shortvideo".into(),
            InboundKind::Location { .. } => "location".into(),
            InboundKind::Link { .. } => "link".into(),
            InboundKind::Event { event, .. } => format!("{}_event", event.to_lowercase()),
            InboundKind::Unknown { .. } => "unknown".into(),
        }
    }

    /// The key that identifies WeChat's retries of this push: `msg|<MsgId>` when it has one
    /// (`MsgID` on job-finished events); else a digest of the sender, `CreateTime`, the type key and
    /// every field — WeChat re-sends a push byte for byte, while two different pushes without an id
    /// (two menu clicks in one second, messages of types without `MsgId`) differ somewhere. Fixed
    /// size whatever the push holds.
    pub fn dedupe_key(&self) -> String {
        if self.msg_id != 0 {
            return format!("msg|{}", self.msg_id);
        }
        let mut digest = Sha256::new();
        let create_time = self.create_time.to_string();
        let type_key = self.type_key();
        let parts = [self.from.as_str(), create_time.as_str(), type_key.as_str()].into_iter();
        let fields = self.fields.iter().flat_map(|(k, v)| [k.as_str(), v.as_str()]);
        for part in parts.chain(fields) {
            // Length-prefixed, so no two different sequences of parts hash the same bytes.
            digest.update((part.len() as u64).to_be_bytes());
            digest.update(part.as_bytes());
        }
        let hex: String = digest.finalize()[..16].iter().map(|b| format!("{b:02x}")).collect();
        format!("push|{hex}")
    }
}

/// Parses a (decrypted) push.
pub fn parse_inbound(xml: &str) -> Result<Inbound, XmlError> {
    Ok(inbound_from(&parse_tree(xml)?, xml))
}

/// The push in an already parsed document (`raw` is its text).
pub fn inbound_from(root: &Node, raw: &str) -> Inbound {
    let s = |p: &str| root.get(p).map(str::to_owned);
    let num = |p: &str| root.get(p).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let float = |p: &str| root.get(p).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let msg_type = s("MsgType").unwrap_or_default();
    let kind = match msg_type.to_lowercase().as_str() {
        "text" => InboundKind::Text { content: root.child("Content").map(|c| c.text.clone()).unwrap_or_default() },
        "image" => InboundKind::Image { pic_url: s("PicUrl"), media_id: s("MediaId") },
        "voice" => InboundKind::Voice { media_id: s("MediaId"), format: s("Format"), recognition: s("Recognition") },
        "video" | "shortvideo" => InboundKind::Video {
            media_id: s("MediaId"),
            thumb_media_id: s("ThumbMediaId"),
            short: msg_type.eq_ignore_ascii_case("shortvideo"),
        },
        "location" => InboundKind::Location {
            latitude: float("Location_X"),
            longitude: float("Location_Y"),
            scale: root.get("Scale").and_then(|v| v.parse().ok()).unwrap_or(0),
            label: s("Label"),
        },
        "link" => InboundKind::Link { title: s("Title"), description: s("Description"), url: s("Url") },
        "event" => InboundKind::Event { event: s("Event").unwrap_or_default(), key: s("EventKey") },
        _ => InboundKind::Unknown { msg_type },
    };
    Inbound {
        to: s("ToUserName").unwrap_or_default(),
        from: s("FromUserName").unwrap_or_default(),
        create_time: num("CreateTime"),
        msg_id: if root.get("MsgId").is_some() { num("MsgId") } else { num("MsgID") },
        kind,
        fields: root.leaves(),
        raw: raw.to_owned(),
    }
}

/// A passive reply (the HTTP response to a push).
#[derive(Clone, Debug, PartialEq)]
pub enum Reply {
    /// Text.
    Text(String),
    /// A pre-uploaded image.
    Image { media_id: String },
    /// A pre-uploaded voice clip.
    Voice { media_id: String },
    /// A pre-uploaded video.
    Video { media_id: String, title: Option<String>, description: Option<String> },
    /// Music: title, description, URL, high-quality URL (the URL when absent), thumbnail media id.
    Music {
        /// Title.
        title: String,
        /// Description.
        description: String,
        /// The music URL.
        url: String,
        /// The high-quality URL; `url` when `None` (as WeRoBot does).
        hq_url: Option<String>,
        /// A pre-uploaded thumbnail (WeChat's docs require it; WeRoBot omits it).
        thumb_media_id: Option<String>,
    },
    /// News articles (title, description, picture URL, URL); one when answering a user's message.
    News(Vec<[String; 4]>),
    /// Hand the session to human customer service.
    TransferCustomerService { kf_account: Option<String> },
}

fn cdata(text: &str) -> String {
    // `]]>` cannot appear inside one CDATA section: split it across two.
    format!("<![CDATA[{}]]>", text.replace("]]>", "]]]]><![CDATA[>"))
}

/// Renders `reply` from the OA (`from`, its `gh_` id) to a follower (`to`).
pub fn render_reply(to: &str, from: &str, create_time: u64, reply: &Reply) -> String {
    let (msg_type, body) = match reply {
        Reply::Text(content) => ("text", format!("<Content>{}</Content>", cdata(content))),
        Reply::Image { media_id } => ("image", format!("<Image><MediaId>{}</MediaId></Image>", cdata(media_id))),
        Reply::Voice { media_id } => ("voice", format!("<Voice><MediaId>{}</MediaId></Voice>", cdata(media_id))),
        Reply::Video { media_id, title, description } => {
            let mut v = format!("<MediaId>{}</MediaId>", cdata(media_id));
            if let Some(t) = title {
                v.push_str(&format!("<Title>{}</Title>", cdata(t)));
            }
            if let Some(d) = description {
                v.push_str(&format!("<Description>{}</Description>", cdata(d)));
            }
            ("video", format!("<Video>{v}</Video>"))
        }
        Reply::Music { title, description, url, hq_url, thumb_media_id } => {
            let thumb = thumb_media_id
                .as_ref()
                .map(|t| format!("<ThumbMediaId>{}</ThumbMediaId>", cdata(t)))
                .unwrap_or_default();
            (
                "music",
                format!(
                    "<Music><Title>{}</Title><Description>{}</Description><MusicUrl>{}</MusicUrl><HQMusicUrl>{}</HQMusicUrl>{thumb}</Music>",
                    cdata(title),
                    cdata(description),
                    cdata(url),
                    cdata(hq_url.as_deref().unwrap_or(url))
                ),
            )
        }
        Reply::News(articles) => {
            let items: String = articles
                .iter()
                .map(|[title, description, pic_url, url]| {
                    format!(
                        "<item><Title>{}</Title><Description>{}</Description><PicUrl>{}</PicUrl><Url>{}</Url></item>",
                        cdata(title),
                        cdata(description),
                        cdata(pic_url),
                        cdata(url)
                    )
                })
                .collect();
            ("news", format!("<ArticleCount>{}</ArticleCount><Articles>{items}</Articles>", articles.len()))
        }
        Reply::TransferCustomerService { kf_account } => (
            "transfer_customer_service",
            kf_account
                .as_ref()
                .map(|k| format!("<TransInfo><KfAccount>{}</KfAccount></TransInfo>", cdata(k)))
                .unwrap_or_default(),
        ),
    };
    format!(
        "<xml><ToUserName>{}</ToUserName><FromUserName>{}</FromUserName><CreateTime>{create_time}</CreateTime><MsgType>{}</MsgType>{body}</xml>",
        cdata(to),
        cdata(from),
        cdata(msg_type)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push(msg_type: &str, extra: &str) -> String {
        format!(
            "<xml><ToUserName><![CDATA[toUser]]></ToUserName> <FromUserName> <![CDATA[fromUser]]> </FromUserName>\n\
             <CreateTime>1348831860</CreateTime><MsgType><![CDATA[{msg_type}]]></MsgType>{extra}</xml>"
        )
    }

    #[test]
    fn ordinary_messages_parse_into_their_types() {
        let m = parse_inbound(&push(
            "text",
            "<Content><![CDATA[this is a test]]></Content><MsgId>1234567890123456</MsgId>",
        ))
        .unwrap();
        assert_eq!(
            (m.to.as_str(), m.from.as_str(), m.create_time, m.msg_id),
            ("toUser", "fromUser", 1348831860, 1234567890123456)
        );
        assert_eq!(m.kind, InboundKind::Text { content: "this is a test".into() });
        assert_eq!(m.type_key(), "text");

        let m = parse_inbound(&push(
            "image",
            "<PicUrl><![CDATA[this is a url]]></PicUrl><MediaId><![CDATA[m]]></MediaId><MsgId>1</MsgId>",
        ))
        .unwrap();
        assert_eq!(m.kind, InboundKind::Image { pic_url: Some("this is a url".into()), media_id: Some("m".into()) });
        let m = parse_inbound(&push(
            "voice",
            "<MediaId>media_id</MediaId><Format>Format</Format><Recognition>Meow~</Recognition>",
        ))
        .unwrap();
        assert!(matches!(m.kind, InboundKind::Voice { recognition: Some(ref r), .. } if r == "Meow~"));
        let m = parse_inbound(&push(
            "shortvideo",
            "<MediaId>media_id</MediaId><ThumbMediaId>thumb_media_id</ThumbMediaId>",
        ))
        .unwrap();
        assert_eq!(m.type_key(), "shortvideo");
        let m = parse_inbound(&push(
            "location",
            "<Location_X>23.134521</Location_X><Location_Y>113.358803</Location_Y><Scale>20</Scale><Label><![CDATA[Location]]></Label>",
        ))
        .unwrap();
        assert_eq!(
            m.kind,
            InboundKind::Location {
                latitude: 23.134521,
                longitude: 113.358803,
                scale: 20,
                label: Some("Location".into())
            }
        );
        let m =
            parse_inbound(&push("link", "<Title><![CDATA[WeRoBot]]></Title><Url><![CDATA[https://x]]></Url>")).unwrap();
        assert!(matches!(m.kind, InboundKind::Link { title: Some(ref t), description: None, .. } if t == "WeRoBot"));
    }

    #[test]
    fn events_keep_their_name_key_and_every_field() {
        let m = parse_inbound(&push(
            "event",
            "<Event><![CDATA[SCAN]]></Event><EventKey><![CDATA[123]]></EventKey><Ticket>t</Ticket>",
        ))
        .unwrap();
        assert_eq!(m.type_key(), "scan_event");
        let InboundKind::Event { event, key } = &m.kind else { panic!() };
        assert_eq!(
            (event.as_str(), key.as_deref(), m.fields.get("Ticket").map(String::as_str)),
            ("SCAN", Some("123"), Some("t"))
        );
        assert!(m.dedupe_key().starts_with("push|"), "{}", m.dedupe_key());

        let pics = "<Event>pic_weixin</Event><EventKey>k</EventKey><SendPicsInfo><Count>1</Count><PicList><item><PicMd5Sum>abc</PicMd5Sum></item></PicList></SendPicsInfo>";
        let m = parse_inbound(&push("event", pics)).unwrap();
        assert_eq!(m.fields.get("SendPicsInfo/PicList/item/PicMd5Sum").map(String::as_str), Some("abc"));

        let job = "<Event>TEMPLATESENDJOBFINISH</Event><MsgID>200163836</MsgID><Status><![CDATA[success]]></Status>";
        let m = parse_inbound(&push("event", job)).unwrap();
        assert_eq!((m.type_key().as_str(), m.msg_id), ("templatesendjobfinish_event", 200163836));
        assert_eq!(m.dedupe_key(), "msg|200163836");
    }

    /// WeRoBot's parser cases (spec §5) for events.
    #[test]
    fn werobot_event_cases_parse() {
        let event = |name: &str, extra: &str| {
            let m = parse_inbound(&push("event", &format!("<Event><![CDATA[{name}]]></Event>{extra}"))).unwrap();
            let InboundKind::Event { key, .. } = m.kind.clone() else { panic!("{name} is an event") };
            (m.type_key(), key, m.fields)
        };
        let (t, key, _) = event("subscribe", "");
        assert_eq!((t.as_str(), key), ("subscribe_event", None));
        let (_, key, fields) =
            event("subscribe", "<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket>");
        assert_eq!(
            (key.as_deref(), fields.get("Ticket").map(String::as_str)),
            (Some("qrscene_123123"), Some("TICKET"))
        );
        assert_eq!(event("unsubscribe", "").0, "unsubscribe_event");
        assert_eq!(event("CLICK", "<EventKey><![CDATA[EVENTKEY]]></EventKey>").1.as_deref(), Some("EVENTKEY"));
        assert_eq!(event("VIEW", "<EventKey><![CDATA[www.qq.com]]></EventKey>").1.as_deref(), Some("www.qq.com"));
        let (t, _, f) = event(
            "LOCATION",
            "<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision>",
        );
        assert_eq!(t, "location_event");
        assert_eq!(f["Precision"].parse::<f64>().unwrap(), 119.38504);
        let (t, _, f) = event(
            "scancode_waitmsg",
            "<EventKey><![CDATA[EVENTKEY]]></EventKey><ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>\
             <ScanResult><![CDATA[www.qq.com]]></ScanResult></ScanCodeInfo>",
        );
        assert_eq!(
            (t.as_str(), f["ScanCodeInfo/ScanType"].as_str(), f["ScanCodeInfo/ScanResult"].as_str()),
            ("scancode_waitmsg_event", "qrcode", "www.qq.com")
        );
        // Count 2: PicList/item repeats.
        let (t, key, f) = event(
            "pic_sysphoto",
            "<EventKey><![CDATA[6]]></EventKey><SendPicsInfo><Count>2</Count><PicList><item><PicMd5Sum>\
             <![CDATA[1b5f7c23b5bf75682a53e7b6d163e185]]></PicMd5Sum></item><item><PicMd5Sum><![CDATA[233]]>\
             </PicMd5Sum></item></PicList></SendPicsInfo>",
        );
        assert_eq!((t.as_str(), key.as_deref()), ("pic_sysphoto_event", Some("6")));
        assert_eq!(
            (f["SendPicsInfo/PicList/item/PicMd5Sum"].as_str(), f["SendPicsInfo/PicList/item[1]/PicMd5Sum"].as_str()),
            ("1b5f7c23b5bf75682a53e7b6d163e185", "233")
        );
        let (_, _, f) = event(
            "location_select",
            "<EventKey><![CDATA[6]]></EventKey><SendLocationInfo><Location_X><![CDATA[23]]></Location_X>\
             <Location_Y><![CDATA[113]]></Location_Y><Scale><![CDATA[15]]></Scale><Label><![CDATA[ 广州市海珠区客村艺苑路 106号]]>\
             </Label><Poiname><![CDATA[]]></Poiname></SendLocationInfo>",
        );
        assert_eq!(
            (f["SendLocationInfo/Location_X"].as_str(), f["SendLocationInfo/Scale"].as_str()),
            ("23", "15"),
            "location_select values stay strings"
        );
        assert_eq!(f["SendLocationInfo/Label"], "广州市海珠区客村艺苑路 106号");
        assert!(!f.contains_key("SendLocationInfo/Poiname"), "empty Poiname is absent");
        let (_, _, f) = event(
            "TEMPLATESENDJOBFINISH",
            "<MsgID>200163840</MsgID><Status><![CDATA[failed: system failed]]></Status>",
        );
        assert_eq!(f["Status"], "failed: system failed");
        assert_eq!(event("user_consume_card", "<CardId>c</CardId>").0, "user_consume_card_event");
        assert_eq!(event("some_future_event", "").0, "some_future_event_event");
    }

    #[test]
    fn unknown_types_are_kept_and_empty_values_are_absent() {
        let m = parse_inbound(&push("miniprogrampage", "<Title></Title>")).unwrap();
        assert_eq!(m.kind, InboundKind::Unknown { msg_type: "miniprogrampage".into() });
        assert!(m.raw.contains("miniprogrampage"));
        assert_eq!(m.msg_id, 0);
        let tree = parse_tree("<xml><A><![CDATA[]]></A><B> x </B><C/></xml>").unwrap();
        assert_eq!((tree.get("A"), tree.get("B"), tree.get("C")), (None, Some("x"), None));
    }

    #[test]
    fn dtds_entities_and_broken_xml_are_refused() {
        let xxe = r#"<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Content>&e;</Content></xml>"#;
        assert_eq!(parse_tree(xxe), Err(XmlError::Entity));
        assert_eq!(parse_tree("<xml><C>&e;</C></xml>"), Err(XmlError::Entity));
        assert_eq!(parse_tree("<xml><C>a &amp; b &#20013;</C></xml>").unwrap().get("C"), Some("a & b 中"));
        assert!(matches!(parse_tree("<xml><C></xml>"), Err(XmlError::Malformed(_))));
        assert!(matches!(parse_tree(""), Err(XmlError::Malformed(_))));
    }

    /// Runs `f` on a thread with a small stack, so anything recursive per level fails loudly.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new().stack_size(256 << 10).spawn(f).unwrap().join().expect("no stack overflow");
    }

    /// A hand-built chain of `depth` nested `a` elements around the text `x`.
    fn chain(depth: usize) -> Node {
        let mut node = Node { text: "x".into(), children: vec![] };
        for _ in 0..depth {
            node = Node { text: String::new(), children: vec![("a".into(), node)] };
        }
        node
    }

    /// (deepest level, elements, text bytes) of a tree, the root counted as level 1.
    fn measure(root: &Node) -> (usize, usize, usize) {
        let (mut depth, mut count, mut text) = (0, 0, 0);
        let mut pending = vec![(root, 1)];
        while let Some((node, level)) = pending.pop() {
            (depth, count, text) = (depth.max(level), count + 1, text + node.text.len());
            pending.extend(node.children.iter().map(|(_, c)| (c, level + 1)));
        }
        (depth, count, text)
    }

    #[test]
    fn ten_thousand_nesting_levels_are_refused_without_recursion() {
        on_small_stack(|| {
            let deep = format!("<xml>{}{}</xml>", "<a>".repeat(10_000), "</a>".repeat(10_000));
            let e = parse_tree(&deep).unwrap_err();
            assert_eq!(e, XmlError::TooLarge("elements nested deeper than 32 levels".into()));
            // Unclosed as well.
            assert!(matches!(parse_tree(&"<a>".repeat(10_000)), Err(XmlError::TooLarge(_))));
        });
    }

    #[test]
    fn the_bounds_are_exact() {
        let nested = |levels: usize| format!("{}{}", "<a>".repeat(levels), "</a>".repeat(levels));
        assert_eq!(measure(&parse_tree(&nested(MAX_DEPTH)).unwrap()).0, MAX_DEPTH);
        assert!(matches!(parse_tree(&nested(MAX_DEPTH + 1)), Err(XmlError::TooLarge(_))));
        assert!(matches!(
            parse_tree(&format!("{}<b/>{}", "<a>".repeat(32), "</a>".repeat(32))),
            Err(XmlError::TooLarge(_))
        ));
        let wide = |n: usize| format!("<xml>{}</xml>", "<i/>".repeat(n));
        assert_eq!(parse_tree(&wide(MAX_ELEMENTS - 1)).unwrap().children.len(), MAX_ELEMENTS - 1);
        let e = parse_tree(&wide(MAX_ELEMENTS)).unwrap_err();
        assert_eq!(e, XmlError::TooLarge("more than 4096 elements".into()));
        let text = |n: usize| format!("<xml><C>{}</C></xml>", "x".repeat(n));
        assert_eq!(parse_tree(&text(MAX_TEXT_BYTES)).unwrap().get("C").map(str::len), Some(MAX_TEXT_BYTES));
        assert!(matches!(parse_tree(&text(MAX_TEXT_BYTES + 1)), Err(XmlError::TooLarge(_))));
        // 31 levels of 2,000-character names, then leaves: every leaf would carry a 62 kB path.
        let name = "n".repeat(2000);
        let long = format!(
            "<xml>{}{}{}</xml>",
            format!("<{name}>").repeat(30),
            "<a>x</a>".repeat(100),
            format!("</{name}>").repeat(30)
        );
        let e = parse_tree(&long).unwrap_err();
        assert!(matches!(&e, XmlError::TooLarge(m) if m.contains("paths")), "{e}");
    }

    #[test]
    fn a_hundred_thousand_siblings_stop_at_the_element_bound() {
        let wide = format!("<xml>{}</xml>", "<item>x</item>".repeat(100_000));
        assert_eq!(parse_tree(&wide), Err(XmlError::TooLarge("more than 4096 elements".into())));
        // Built by hand instead, the walks still work.
        let root = Node { text: String::new(), children: (0..100_000).map(|_| ("item".into(), chain(0))).collect() };
        let leaves = root.leaves();
        assert_eq!((leaves.len(), leaves["item"].as_str(), leaves["item[99999]"].as_str()), (100_000, "x", "x"));
    }

    #[test]
    fn every_walk_of_a_deep_tree_is_iterative() {
        on_small_stack(|| {
            let (a, b) = (chain(100_000), chain(100_000));
            assert_eq!(a.leaves().len(), 1);
            assert_eq!(a.leaves().into_values().next().as_deref(), Some("x"));
            assert_eq!(a.get(&["a"; 100_000].join("/")), Some("x"));
            assert!(a == b);
            assert!(a != chain(99_999));
            let shown = format!("{:?}", chain(3));
            assert_eq!(shown, "Node(<a><a><a>x</a></a></a>)");
            assert!(format!("{a:?}").len() > 700_000);
            drop((a, b));
        });
    }

    #[test]
    fn pushes_without_msg_id_have_their_own_dedupe_keys() {
        let no_id = |content: &str| {
            parse_inbound(&push("miniprogrampage", &format!("<Title><![CDATA[{content}]]></Title>"))).unwrap()
        };
        let (a, b) = (no_id("first"), no_id("second"));
        assert_eq!((a.msg_id, b.msg_id), (0, 0));
        assert_ne!(a.dedupe_key(), b.dedupe_key(), "two different pushes in the same second");
        assert_eq!(a.dedupe_key(), no_id("first").dedupe_key(), "WeChat's retry of the same push");
        let c = parse_inbound(&push("text", "<Content>x</Content>")).unwrap();
        let d = parse_inbound(&push("text", "<Content>y</Content>")).unwrap();
        assert_ne!(c.dedupe_key(), d.dedupe_key());
        // Two menu clicks of one second.
        let click = |key: &str| {
            parse_inbound(&push("event", &format!("<Event>CLICK</Event><EventKey>{key}</EventKey>"))).unwrap()
        };
        assert_ne!(click("A").dedupe_key(), click("B").dedupe_key());
        // Fixed size, whatever the push holds.
        let huge = no_id(&"z".repeat(50_000));
        assert_eq!(huge.dedupe_key().len(), a.dedupe_key().len());
        let with_id = parse_inbound(&push("text", "<Content>x</Content><MsgId>42</MsgId>")).unwrap();
        assert_eq!(with_id.dedupe_key(), "msg|42");
    }

    #[test]
    fn error_messages_quote_little_and_escape_controls() {
        assert_eq!(clip("a\nb", 64), "a\\nb");
        assert_eq!(clip(&"x".repeat(100), 3), "xxx… (100 bytes)");
        let e = parse_tree(&format!("<xml><{0}>\u{1}</{0}x></xml>", "n".repeat(500))).unwrap_err().to_string();
        assert!(e.chars().count() < 140 && !e.chars().any(char::is_control), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]

        /// Anything at all: never a panic, and a tree within the bounds when accepted.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,400}") {
            if let Ok(root) = parse_tree(&text) {
                let (depth, count, bytes) = measure(&root);
                proptest::prop_assert!(depth <= MAX_DEPTH && count <= MAX_ELEMENTS && bytes <= MAX_TEXT_BYTES);
            }
            _ = parse_inbound(&text);
        }

        /// Tag soup from XML's own alphabet, which reaches far more of the reader.
        #[test]
        fn tag_soup_never_panics(parts in proptest::collection::vec(
            proptest::sample::select(vec!["<a>", "</a>", "<b/>", "<![CDATA[", "]]>", "&amp;", "&#20013;", "&x;",
                                          "<!DOCTYPE x>", "<?xml version=\"1.0\"?>", "<!--", "-->", "x", " ", "<", ">",
                                          "&", "\"", "'", "=", "<Content>", "</Content>", "<MsgId>", "</MsgId>", "1",
                                          "\u{0}", "中"]),
            0..300,
        )) {
            let text = parts.concat();
            if let Ok(root) = parse_tree(&text) {
                let (depth, count, _) = measure(&root);
                proptest::prop_assert!(depth <= MAX_DEPTH && count <= MAX_ELEMENTS);
                _ = root.leaves();
            }
            _ = parse_inbound(&format!("<xml>{text}</xml>"));
        }

        /// Deep and wide documents of any shape: refused past the bounds, read within them.
        #[test]
        fn deep_and_huge_documents_are_bounded(depth in 0usize..20_000, width in 0usize..20_000, closed: bool) {
            let mut doc = "<a>".repeat(depth);
            doc.push_str(&"<i>t</i>".repeat(width));
            if closed {
                doc.push_str(&"</a>".repeat(depth));
            }
            let root = match parse_tree(&doc) {
                Ok(root) => root,
                Err(XmlError::TooLarge(_)) => {
                    proptest::prop_assert!(depth > MAX_DEPTH || depth + width > MAX_ELEMENTS);
                    return Ok(());
                }
                Err(_) => return Ok(()),
            };
            proptest::prop_assert!(closed || depth + width == 1);
            let (d, n, _) = measure(&root);
            proptest::prop_assert!(d <= MAX_DEPTH && n <= MAX_ELEMENTS);
            // Each `i` is a leaf under the `a`s; a lone `i` is the root itself, with no leaves below.
            proptest::prop_assert_eq!(root.leaves().len(), if depth == 0 { 0 } else { width });
        }

        /// A real push with bytes cut out, doubled or replaced: never a panic.
        #[test]
        fn near_valid_pushes_never_panic(cut in 0usize..400, len in 0usize..20, insert in "\\PC{0,8}") {
            let valid = push("text", "<Content><![CDATA[你好 &amp; ]]></Content><MsgId>1234567890123456</MsgId>");
            let chars: Vec<char> = valid.chars().collect();
            let at = cut.min(chars.len());
            let end = (at + len).min(chars.len());
            let mutated: String = chars[..at].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(&chars[end..]).collect();
            if let Ok(m) = parse_inbound(&mutated) {
                _ = (m.type_key(), m.dedupe_key());
            }
            let doubled: String = chars[..end].iter().chain(&chars[at..]).collect();
            _ = parse_inbound(&doubled);
        }
    }

    #[test]
    fn replies_render_and_read_back() {
        let replies = [
            Reply::Text("hello\n]]> world".into()),
            Reply::Image { media_id: "img".into() },
            Reply::Voice { media_id: "v".into() },
            Reply::Video { media_id: "vid".into(), title: Some("T".into()), description: None },
            Reply::News(vec![["t".into(), "d".into(), "https://p".into(), "https://u".into()]]),
            Reply::TransferCustomerService { kf_account: Some("kf@x".into()) },
            // WeRoBot's music case: hq_url defaults to url.
            Reply::Music {
                title: "tt".into(),
                description: "ds".into(),
                url: "u1".into(),
                hq_url: None,
                thumb_media_id: None,
            },
        ];
        for reply in replies {
            let xml = render_reply("fromUser", "gh_oa", 1700000000, &reply);
            let tree = parse_tree(&xml).unwrap();
            assert_eq!(
                (tree.get("ToUserName"), tree.get("FromUserName"), tree.get("CreateTime")),
                (Some("fromUser"), Some("gh_oa"), Some("1700000000"))
            );
            match &reply {
                Reply::Text(t) => assert_eq!(tree.child("Content").unwrap().text, t.trim()),
                Reply::Image { .. } => assert_eq!(tree.get("Image/MediaId"), Some("img")),
                Reply::Voice { .. } => assert_eq!(tree.get("Voice/MediaId"), Some("v")),
                Reply::Video { .. } => {
                    assert_eq!((tree.get("Video/MediaId"), tree.get("Video/Title")), (Some("vid"), Some("T")))
                }
                Reply::News(_) => assert_eq!(
                    (tree.get("ArticleCount"), tree.get("Articles/item/Url")),
                    (Some("1"), Some("https://u"))
                ),
                Reply::TransferCustomerService { .. } => {
                    assert_eq!(
                        (tree.get("MsgType"), tree.get("TransInfo/KfAccount")),
                        (Some("transfer_customer_service"), Some("kf@x"))
                    )
                }
                Reply::Music { .. } => assert_eq!(
                    ["Music/Title", "Music/Description", "Music/MusicUrl", "Music/HQMusicUrl", "Music/ThumbMediaId"]
                        .map(|p| tree.get(p)),
                    [Some("tt"), Some("ds"), Some("u1"), Some("u1"), None]
                ),
            }
        }
    }
}
