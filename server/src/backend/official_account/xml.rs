//! Official Account callback XML: a hardened reader (no DTD, no entities beyond the five predefined
//! ones and character references) into a small tree, the typed inbound message, and the passive
//! reply writer (spec `official-account.md` §1, §3).

use std::collections::BTreeMap;

use quick_xml::Reader;
use quick_xml::events::Event;

/// Why a callback body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A DTD or an undeclared entity: refused outright (XXE).
    #[error("DTDs and custom entities are not accepted")]
    Entity,
    /// Not well-formed.
    #[error("malformed XML: {0}")]
    Malformed(String),
}

/// An element: its trimmed text and its children in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Node {
    /// Text content (CDATA and text, trimmed).
    pub text: String,
    /// Child elements.
    pub children: Vec<(String, Node)>,
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
    pub fn leaves(&self) -> BTreeMap<String, String> {
        fn walk(node: &Node, prefix: &str, out: &mut BTreeMap<String, String>) {
            let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
            for (name, child) in &node.children {
                let n = seen.entry(name.as_str()).or_default();
                let indexed = if *n == 0 { name.clone() } else { format!("{name}[{n}]") };
                *n += 1;
                let path = if prefix.is_empty() { indexed } else { format!("{prefix}/{indexed}") };
                if child.children.is_empty() {
                    if !child.text.is_empty() {
                        out.entry(path).or_insert_with(|| child.text.clone());
                    }
                } else {
                    walk(child, &path, out);
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(self, "", &mut out);
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

/// Reads a document into its root element.
pub fn parse_tree(xml: &str) -> Result<Node, XmlError> {
    let mut reader = Reader::from_str(xml);
    let mut stack: Vec<(String, Node)> = vec![(String::new(), Node::default())];
    loop {
        let event = reader.read_event().map_err(|e| XmlError::Malformed(e.to_string()))?;
        match event {
            Event::DocType(_) => return Err(XmlError::Entity),
            Event::Start(e) => {
                let name = e.name().as_ref().to_owned();
                stack.push((name, Node::default()));
            }
            Event::Empty(e) => {
                let name = e.name().as_ref().to_owned();
                if let Some((_, parent)) = stack.last_mut() {
                    parent.children.push((name, Node::default()));
                }
            }
            Event::End(_) => {
                let (name, mut node) = stack.pop().ok_or_else(|| XmlError::Malformed("unbalanced".into()))?;
                node.text = node.text.trim().to_owned();
                match stack.last_mut() {
                    Some((_, parent)) => parent.children.push((name, node)),
                    None => return Err(XmlError::Malformed("unbalanced".into())),
                }
            }
            Event::Text(t) => {
                if let Some((_, node)) = stack.last_mut() {
                    node.text.push_str(&t.xml10_content());
                }
            }
            Event::CData(c) => {
                if let Some((_, node)) = stack.last_mut() {
                    node.text.push_str(&c.xml10_content());
                }
            }
            Event::GeneralRef(r) => {
                let c = match r.resolve_char_ref() {
                    Ok(Some(c)) => c,
                    Ok(None) => predefined(&r.xml10_content()).ok_or(XmlError::Entity)?,
                    Err(_) => return Err(XmlError::Entity),
                };
                if let Some((_, node)) = stack.last_mut() {
                    node.text.push(c);
                }
            }
            Event::Eof => break,
            Event::Comment(_) | Event::Decl(_) | Event::PI(_) => {}
        }
    }
    let (_, mut document) = stack.pop().ok_or_else(|| XmlError::Malformed("empty".into()))?;
    if !stack.is_empty() {
        return Err(XmlError::Malformed("unclosed element".into()));
    }
    match document.children.len() {
        1 => Ok(document.children.remove(0).1),
        0 => Err(XmlError::Malformed("no root element".into())),
        _ => Err(XmlError::Malformed("more than one root element".into())),
    }
}

/// What a follower's push carries beyond the common fields.
#[derive(Clone, Debug, PartialEq)]
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

    /// The key that identifies WeChat's retries of this push.
    pub fn dedupe_key(&self) -> String {
        match &self.kind {
            InboundKind::Event { event, .. } if self.msg_id == 0 => {
                format!("{}|{}|{event}", self.from, self.create_time)
            }
            _ => format!("msg|{}", self.msg_id),
        }
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
        assert_eq!(m.dedupe_key(), "fromUser|1348831860|SCAN");

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
