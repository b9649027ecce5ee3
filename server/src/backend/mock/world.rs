//! The simulated world: who exists, who is in which room, what has been said. Loaded from a JSON or
//! TOML file (`--world`), or the deterministic built-in default.
//!
//! File schema (camelCase keys; every field optional except ids):
//!
//! ```toml
//! [self]                      # the bot's own account
//! id = "wxid_bot"
//! name = "Puppet Bot"
//!
//! [[contacts]]                # people and official accounts (Contact fields; friend = true for friends)
//! id = "wxid_alice"
//! name = "Alice"
//! friend = true
//! type = "individual"         # individual | official | corporation
//! phones = ["13800000001"]
//!
//! [[rooms]]                   # Room fields, plus per-member aliases and an announcement
//! id = "1001@chatroom"
//! topic = "Tea Lovers"
//! ownerId = "wxid_alice"
//! memberIds = ["wxid_bot", "wxid_alice"]
//! announce = "Be kind"
//! [rooms.memberAliases]
//! wxid_alice = "Host"
//!
//! [tags]                      # tag id -> contact ids
//! vip = ["wxid_alice"]
//! ```

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use puppet_proto::ids::{ContactId, RoomId, Shown, TagId, shown_quotes};
use puppet_proto::model::{Contact, ContactGender, ContactType, Room};
use serde::{Deserialize, Serialize};
use toml_parser::parser::EventReceiver;
use toml_parser::{ErrorSink, Span};

/// The largest world file read, far beyond any simulation; without it, `--world /dev/zero` fills
/// memory.
pub const MAX_WORLD_BYTES: u64 = 16 << 20;

/// The deepest a world file may nest (a world is a few levels deep). TOML's own guards allow 80
/// levels of brackets of 80-key dotted keys each, thousands of levels in all, and a tree that deep
/// overflows the stack when it is dropped or skipped: a 24 KiB file aborted the server.
pub const MAX_WORLD_DEPTH: u32 = 32;

/// A room as described in a world file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct RoomSpec {
    /// The room itself.
    #[serde(flatten)]
    pub room: Room,
    /// Member id → alias in this room.
    pub member_aliases: BTreeMap<ContactId, String>,
    /// Member id → who invited them.
    pub inviters: BTreeMap<ContactId, ContactId>,
    /// The room announcement.
    pub announce: String,
}

/// A world description.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WorldSpec {
    /// The bot's own account.
    #[serde(rename = "self")]
    pub me: Contact,
    /// Everyone else.
    pub contacts: Vec<Contact>,
    /// Every room, including ones the bot is not (yet) in.
    pub rooms: Vec<RoomSpec>,
    /// Tag id → tagged contacts.
    pub tags: BTreeMap<TagId, Vec<ContactId>>,
}

impl WorldSpec {
    /// Reads a world file: TOML when the name ends in `.toml`, JSON otherwise. Files over
    /// [`MAX_WORLD_BYTES`] or nested deeper than [`MAX_WORLD_DEPTH`] are refused.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let shown = path.display();
        let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("cannot read world file {shown}: {e}"))?;
        let mut bytes = Vec::new();
        file.take(MAX_WORLD_BYTES + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| anyhow::anyhow!("cannot read world file {shown}: {e}"))?;
        if bytes.len() as u64 > MAX_WORLD_BYTES {
            anyhow::bail!("world file {shown} is larger than {} MiB, which no world needs", MAX_WORLD_BYTES >> 20);
        }
        let text = String::from_utf8(bytes).map_err(|e| {
            anyhow::anyhow!("world file {shown} is not UTF-8 text (byte {})", e.utf8_error().valid_up_to())
        })?;
        let spec = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
            Self::from_toml(&text)
        } else {
            Self::from_json(&text)
        };
        spec.map_err(|e| anyhow::anyhow!("world file {shown}: {e}"))
    }

    /// Parses and validates a TOML world. The message of a refusal quotes at most 64 characters
    /// of the text at a time.
    pub fn from_toml(text: &str) -> Result<Self, String> {
        toml_depth(text, MAX_WORLD_DEPTH)?;
        let spec: Self = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| position(text, s.start)).unwrap_or_default();
            format!("{}{at}", shown_quotes(e.message().trim_end()))
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// Parses and validates a JSON world (serde_json refuses nesting past 128 levels itself).
    pub fn from_json(text: &str) -> Result<Self, String> {
        let spec: Self = serde_json::from_str(text).map_err(|e| shown_quotes(&e.to_string()))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Checks that ids are present, unique, and that rooms and tags name known contacts.
    pub fn validate(&self) -> Result<(), String> {
        if self.me.id.is_empty() {
            return Err("`self.id` is required".into());
        }
        let mut known: HashMap<&str, ()> = HashMap::new();
        known.insert(self.me.id.as_str(), ());
        for c in &self.contacts {
            if c.id.is_empty() {
                return Err(format!("a contact named \"{}\" has no id", Shown(&c.name)));
            }
            if known.insert(c.id.as_str(), ()).is_some() {
                return Err(format!("contact id `{}` appears twice", c.id));
            }
        }
        let mut rooms: HashMap<&str, ()> = HashMap::new();
        for r in &self.rooms {
            if r.room.id.is_empty() {
                return Err(format!("room \"{}\" has no id", Shown(&r.room.topic)));
            }
            if rooms.insert(r.room.id.as_str(), ()).is_some() {
                return Err(format!("room id `{}` appears twice", r.room.id));
            }
            let people = r.room.member_ids.iter().chain(&r.room.admin_ids).chain(std::iter::once(&r.room.owner_id));
            for m in people.filter(|m| !m.is_empty()) {
                if !known.contains_key(m.as_str()) {
                    return Err(format!("room `{}` names unknown contact `{m}`", r.room.id));
                }
            }
        }
        for (tag, ids) in &self.tags {
            if let Some(m) = ids.iter().find(|m| !known.contains_key(m.as_str())) {
                return Err(format!("tag `{tag}` names unknown contact `{m}`"));
            }
        }
        Ok(())
    }

    /// The deterministic built-in world: the bot, 32 contacts (Chinese and Latin names, a few
    /// official accounts and strangers) and 5 rooms.
    pub fn builtin() -> Self {
        const PEOPLE: &[(&str, &str, ContactGender, &str, &str)] = &[
            ("wxid_alice", "Alice", ContactGender::Female, "London", "Tea first."),
            ("wxid_bob", "Bob", ContactGender::Male, "Berlin", "Build things."),
            ("wxid_carol", "Carol", ContactGender::Female, "Paris", ""),
            ("wxid_dave", "Dave", ContactGender::Male, "Austin", "Ship it"),
            ("wxid_erin", "Erin", ContactGender::Female, "Dublin", ""),
            ("wxid_frank", "Frank", ContactGender::Male, "Toronto", "Coffee > tea"),
            ("wxid_grace", "Grace", ContactGender::Female, "Seattle", "Hello world"),
            ("wxid_heidi", "Heidi", ContactGender::Female, "Zurich", ""),
            ("wxid_ivan", "Ivan", ContactGender::Male, "Riga", ""),
            ("wxid_judy", "Judy", ContactGender::Female, "Sydney", "Surf"),
            ("wxid_mallory", "Mallory", ContactGender::Female, "Madrid", ""),
            ("wxid_oscar", "Oscar", ContactGender::Male, "Oslo", ""),
            ("wxid_peggy", "Peggy", ContactGender::Female, "Lisbon", ""),
            ("wxid_trent", "Trent", ContactGender::Male, "Denver", ""),
            ("wxid_victor", "Victor", ContactGender::Male, "Vienna", ""),
            ("wxid_walter", "Walter", ContactGender::Male, "Warsaw", ""),
            ("wxid_zhangwei", "张伟", ContactGender::Male, "北京", "天道酬勤"),
            ("wxid_wangfang", "王芳", ContactGender::Female, "上海", "热爱生活"),
            ("wxid_lina", "李娜", ContactGender::Female, "深圳", ""),
            ("wxid_liuyang", "刘洋", ContactGender::Male, "广州", "跑步中"),
            ("wxid_chenjing", "陈静", ContactGender::Female, "杭州", "读书"),
            ("wxid_yangjie", "杨杰", ContactGender::Male, "成都", "火锅"),
            ("wxid_zhaomin", "赵敏", ContactGender::Female, "西安", ""),
            ("wxid_huanglei", "黄磊", ContactGender::Male, "南京", "做饭"),
            ("wxid_zhouxun", "周迅", ContactGender::Female, "武汉", ""),
            ("wxid_wuhao", "吴昊", ContactGender::Male, "重庆", ""),
            ("wxid_sunli", "孙俪", ContactGender::Female, "天津", ""),
            ("wxid_maqiang", "马强", ContactGender::Male, "长沙", ""),
        ];
        let mut contacts: Vec<Contact> = PEOPLE
            .iter()
            .enumerate()
            .map(|(i, (id, name, gender, city, signature))| Contact {
                id: ContactId::from(*id),
                gender: *gender,
                kind: ContactType::Individual,
                name: (*name).into(),
                city: (*city).into(),
                signature: (*signature).into(),
                handle: id.trim_start_matches("wxid_").into(),
                friend: true,
                phones: vec![format!("1380000{:04}", i + 1)],
                ..Default::default()
            })
            .collect();
        // Two strangers, findable by phone or handle, to befriend.
        for (id, name, phone) in
            [("wxid_stranger_sam", "Sam", "13900000001"), ("wxid_moshengren", "陌生人", "13900000002")]
        {
            contacts.push(Contact {
                id: id.into(),
                name: name.into(),
                kind: ContactType::Individual,
                handle: id.trim_start_matches("wxid_").into(),
                phones: vec![phone.into()],
                friend: false,
                ..Default::default()
            });
        }
        for (id, name) in [("gh_news_daily", "Daily News"), ("gh_weather", "天气预报")] {
            contacts.push(Contact {
                id: id.into(),
                name: name.into(),
                kind: ContactType::Official,
                friend: true,
                signature: "Official account".into(),
                ..Default::default()
            });
        }
        for c in &mut contacts {
            match c.id.as_str() {
                "wxid_alice" => c.alias = "Alice (work)".into(),
                "wxid_bob" => c.star = true,
                _ => {}
            }
        }

        let me = Contact {
            id: "wxid_puppet_bot".into(),
            name: "Puppet Bot".into(),
            kind: ContactType::Individual,
            handle: "puppet_bot".into(),
            signature: "I am a bot.".into(),
            city: "Cloud".into(),
            friend: false,
            ..Default::default()
        };
        let room = |id: &str, topic: &str, owner: &str, admins: &[&str], members: &[&str], announce: &str| {
            let mut member_ids: Vec<ContactId> = members.iter().map(|m| ContactId::from(*m)).collect();
            if !member_ids.iter().any(|m| m.as_str() == owner) {
                member_ids.insert(0, owner.into());
            }
            RoomSpec {
                room: Room {
                    id: RoomId::from(id),
                    topic: topic.into(),
                    owner_id: owner.into(),
                    admin_ids: admins.iter().map(|a| ContactId::from(*a)).collect(),
                    member_ids,
                    ..Default::default()
                },
                announce: announce.into(),
                ..Default::default()
            }
        };
        let bot = "wxid_puppet_bot";
        let mut rooms = vec![
            room(
                "10001@chatroom",
                "Tea Lovers",
                "wxid_alice",
                &["wxid_bob"],
                &[bot, "wxid_alice", "wxid_bob", "wxid_carol", "wxid_dave"],
                "Be kind.",
            ),
            room(
                "10002@chatroom",
                "Rust 中文社区",
                bot,
                &[],
                &[bot, "wxid_zhangwei", "wxid_wangfang", "wxid_lina", "wxid_grace", "wxid_ivan"],
                "",
            ),
            room(
                "10003@chatroom",
                "周末徒步",
                "wxid_liuyang",
                &[],
                &[bot, "wxid_liuyang", "wxid_chenjing", "wxid_yangjie", "wxid_zhaomin", "wxid_huanglei"],
                "周六早上八点集合",
            ),
            room(
                "10004@chatroom",
                "Family",
                "wxid_erin",
                &["wxid_erin"],
                &[bot, "wxid_erin", "wxid_frank", "wxid_heidi"],
                "",
            ),
            room(
                "10005@chatroom",
                "Book Club",
                "wxid_judy",
                &[],
                &[bot, "wxid_judy", "wxid_oscar", "wxid_peggy", "wxid_trent", "wxid_sunli"],
                "This month: 三体",
            ),
            // The bot is not in this one: an invitation from the world can bring it in.
            room(
                "10006@chatroom",
                "Secret Garden",
                "wxid_victor",
                &[],
                &["wxid_victor", "wxid_walter", "wxid_mallory"],
                "",
            ),
        ];
        rooms[0].member_aliases.insert("wxid_carol".into(), "Carol from HR".into());
        rooms[1].member_aliases.insert("wxid_zhangwei".into(), "伟哥".into());

        let mut tags = BTreeMap::new();
        tags.insert(TagId::from("colleagues"), vec!["wxid_alice".into(), "wxid_bob".into(), "wxid_grace".into()]);
        tags.insert(TagId::from("家人"), vec!["wxid_erin".into(), "wxid_frank".into()]);
        Self { me, contacts, rooms, tags }
    }
}

/// ` at line L, column C` for a byte offset into `text`.
fn position(text: &str, offset: usize) -> String {
    let Some(before) = text.get(..offset) else { return String::new() };
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().unwrap_or_default().chars().count() + 1;
    format!(" at line {line}, column {column}")
}

/// Refuses a TOML text whose tree would be deeper than `max`, measured on the parser's own events
/// before anything is built: `[a.b]` headers, `c.d = ` dotted keys, arrays and inline tables each
/// add their levels. Where the parser recovers from an error (an unclosed header), the count errs
/// on the deep side.
fn toml_depth(text: &str, max: u32) -> Result<(), String> {
    let source = toml_parser::Source::new(text);
    let tokens = source.lex().into_vec();
    let mut depth = TomlDepth { max, ..TomlDepth::default() };
    toml_parser::parser::parse_document(&tokens, &mut depth, &mut ());
    match depth.too_deep {
        Some(at) => Err(format!("nested deeper than {max} levels{}; a world is a few levels deep", position(text, at))),
        None => Ok(()),
    }
}

/// The depth a TOML document's tree reaches, followed event by event. Like toml's own guard it
/// refuses to descend further once past the limit, so the parser's recursion stays bounded too.
#[derive(Default)]
struct TomlDepth {
    max: u32,
    /// Levels of the table the last header opened.
    table: u32,
    /// Levels of a header being read (`[[…]]` starts at one: the array's element).
    header: Option<u32>,
    /// Dotted-key levels of the current top-level `key = value`.
    keys: u32,
    /// Open arrays and inline tables, each with the dotted-key levels of its current entry.
    open: Vec<(bool, u32)>,
    /// Where the limit was first passed.
    too_deep: Option<usize>,
}

impl TomlDepth {
    fn check(&mut self, span: Span) -> bool {
        let inner: u32 = self.open.iter().map(|(_, keys)| 1 + keys).sum();
        // A header's path starts at the root; while one is read, the table before still counts
        // (an unclosed header is an error the parser recovers from).
        let table = self.header.map_or(self.table, |h| h.max(self.table));
        let depth = table + self.keys + inner;
        if depth > self.max {
            self.too_deep.get_or_insert(span.start());
        }
        depth <= self.max
    }

    fn close(&mut self, array: bool) {
        if self.open.last().is_some_and(|(a, _)| *a == array) {
            self.open.pop();
        }
    }

    fn end_header(&mut self) {
        if let Some(levels) = self.header.take() {
            self.table = levels;
        }
    }
}

impl EventReceiver for TomlDepth {
    fn std_table_open(&mut self, _: Span, _: &mut dyn ErrorSink) {
        (self.header, self.keys) = (Some(0), 0);
    }
    fn std_table_close(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.end_header();
    }
    fn array_table_open(&mut self, _: Span, _: &mut dyn ErrorSink) {
        (self.header, self.keys) = (Some(1), 0);
    }
    fn array_table_close(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.end_header();
    }
    fn inline_table_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.open.push((false, 0));
        self.check(span)
    }
    fn inline_table_close(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.close(false);
    }
    fn array_open(&mut self, span: Span, _: &mut dyn ErrorSink) -> bool {
        self.open.push((true, 0));
        self.check(span)
    }
    fn array_close(&mut self, _: Span, _: &mut dyn ErrorSink) {
        self.close(true);
    }
    fn simple_key(&mut self, span: Span, _: Option<toml_parser::decoder::Encoding>, _: &mut dyn ErrorSink) {
        match (&mut self.header, self.open.last_mut()) {
            (Some(levels), _) => *levels += 1,
            (None, Some((_, keys))) => *keys += 1,
            (None, None) => self.keys += 1,
        }
        self.check(span);
    }
    fn value_sep(&mut self, _: Span, _: &mut dyn ErrorSink) {
        if let Some((_, keys)) = self.open.last_mut() {
            *keys = 0;
        }
    }
    fn newline(&mut self, _: Span, _: &mut dyn ErrorSink) {
        if self.open.is_empty() {
            self.keys = 0;
            // A header left unclosed (an error) still counts for what follows, conservatively.
            if let Some(levels) = self.header.take() {
                self.table = self.table.max(levels);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_world_is_valid_and_stable() {
        let w = WorldSpec::builtin();
        w.validate().unwrap();
        assert_eq!(w, WorldSpec::builtin());
        assert!(w.contacts.len() >= 30);
        assert!(w.rooms.len() >= 5);
        assert!(w.contacts.iter().any(|c| c.kind == ContactType::Official));
    }

    #[test]
    fn the_example_world_file_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/worlds/small.toml");
        let w = WorldSpec::load(&path).unwrap();
        assert_eq!(w.me.id.as_str(), "wxid_bot");
        assert_eq!(w.rooms[0].member_aliases[&ContactId::from("wxid_alice")], "Host");
    }

    #[test]
    fn a_json_world_file_loads_too() {
        let path = std::env::temp_dir().join(format!("puppet-world-{}.json", std::process::id()));
        std::fs::write(&path, serde_json::to_string(&WorldSpec::builtin()).unwrap()).unwrap();
        let loaded = WorldSpec::load(&path);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(loaded.unwrap(), WorldSpec::builtin());
    }

    /// No refusal of a world is longer than this, whatever the file held.
    const MAX_MESSAGE: usize = 400;

    fn short_and_plain(message: &str) -> bool {
        message.chars().count() < MAX_MESSAGE && !message.contains(|c: char| c.is_control())
    }

    /// `levels` of `{k0.k1… = …}` around a value, `keys` keys each.
    fn dotted_inline_tables(keys: usize, levels: usize) -> String {
        let key = (0..keys).map(|i| format!("k{i}")).collect::<Vec<_>>().join(".");
        format!("{}1{}", format!("{{{key} = ").repeat(levels), "}".repeat(levels))
    }

    #[test]
    fn deep_toml_is_refused_before_it_can_overflow_the_stack() {
        // 79 levels of 79-key dotted keys (6 320 levels, 24 KiB) pass toml's own guards, and
        // dropping or skipping that tree overflowed the stack: the server aborted on it.
        for (keys, levels) in [(79, 79), (10, 79), (1, 10_000)] {
            let text = format!("[self]\nid = \"b\"\n[x]\ny = {}\n", dotted_inline_tables(keys, levels));
            let e = WorldSpec::from_toml(&text).unwrap_err();
            assert!(e.contains("nested deeper than 32 levels at line 4, column"), "{e}");
        }
        let arrays = format!("x = {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(WorldSpec::from_toml(&arrays).unwrap_err().contains("nested deeper"));
        let header = format!("[{}]\ny = 1\n", (0..79).map(|i| format!("k{i}")).collect::<Vec<_>>().join("."));
        assert!(WorldSpec::from_toml(&header).unwrap_err().contains("at line 1, column"));
    }

    #[test]
    fn the_depth_counts_headers_dotted_keys_and_brackets() {
        let depth = |text: &str| (1..64).find(|max| toml_depth(text, *max).is_ok()).expect("shallower than 64");
        assert_eq!(depth("a = 1"), 1);
        assert_eq!(depth("a.b.c = 1"), 3);
        assert_eq!(depth("[a.b]\nc = 1"), 3);
        assert_eq!(depth("[[a.b]]\nc.d = [1]"), 6);
        assert_eq!(depth("a = [{b.c = [1.5, 2.5]}, {d = 1}]"), 6);
        assert_eq!(depth("[a.b.c.d]\n[e]\nf = 1"), 4, "a header replaces the one before");
        assert_eq!(depth("a.b = {c = 1,\n d.e.f = 2}"), 6, "inline tables span lines");
        assert!(
            WorldSpec::from_toml(
                &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/worlds/small.toml"))
                    .unwrap()
            )
            .is_ok()
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_endless_world_file_is_refused_after_16_mib() {
        let e = WorldSpec::load(Path::new("/dev/zero")).unwrap_err().to_string();
        assert!(e.contains("larger than 16 MiB"), "{e}");
    }

    #[test]
    fn refusals_quote_the_file_briefly() {
        let name = "\u{1b}[31m".repeat(10_000);
        let mut w = WorldSpec::builtin();
        w.contacts.push(Contact { name: name.clone(), ..Default::default() });
        assert!(short_and_plain(&w.validate().unwrap_err()));
        let mut w = WorldSpec::builtin();
        w.rooms.push(RoomSpec { room: Room { topic: name.clone(), ..Default::default() }, ..Default::default() });
        assert!(short_and_plain(&w.validate().unwrap_err()));
        let json = serde_json::json!({ "self": { "id": "b", "type": name } }).to_string();
        let e = WorldSpec::from_json(&json).unwrap_err();
        assert!(short_and_plain(&e) && e.contains("unknown variant"), "{e}");
        let toml = format!("[self]\nid = \"b\"\ntype = \"{}\"\n", "z".repeat(100_000));
        let e = WorldSpec::from_toml(&toml).unwrap_err();
        assert!(short_and_plain(&e) && e.contains("at line 3, column 8"), "{e}");
    }

    /// Every file in `tests/fixtures/hostile/world/` (inputs that once crashed or misbehaved) is
    /// loaded or refused with a short message.
    #[test]
    fn hostile_fixtures_are_loaded_or_refused() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile/world");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if let Err(e) = WorldSpec::load(&path) {
                let e = e.to_string();
                let e = e.trim_start_matches(&format!("world file {}", path.display()));
                assert!(short_and_plain(e), "{}: {e}", path.display());
            }
            seen += 1;
        }
        assert!(seen > 0, "no fixtures in {}", dir.display());
    }

    #[test]
    fn bad_worlds_are_refused_with_a_reason() {
        let mut w = WorldSpec::builtin();
        w.rooms[0].room.member_ids.push("wxid_nobody".into());
        assert!(w.validate().unwrap_err().contains("wxid_nobody"));
        let mut w = WorldSpec::builtin();
        w.contacts.push(w.contacts[0].clone());
        assert!(w.validate().unwrap_err().contains("twice"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;
        use serde_json::Value;

        /// One level of nesting: an array, or an inline table under a `keys`-long dotted key.
        #[derive(Clone, Debug)]
        enum Layer {
            Array,
            Table(usize),
        }

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<String>().prop_map(Value::from),
            ];
            leaf.prop_recursive(3, 12, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map("[a-zA-Z]{1,8}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Changes one node of `v`, found by following `path`: removed, or replaced by `new`.
        fn mutate(v: &mut Value, path: &[prop::sample::Index], new: Option<Value>) {
            let (step, rest) = match path.split_first() {
                Some(split) => split,
                None => {
                    *v = new.unwrap_or(Value::Null);
                    return;
                }
            };
            match v {
                Value::Array(items) if !items.is_empty() => {
                    let i = step.index(items.len());
                    if rest.is_empty() && new.is_none() {
                        items.remove(i);
                    } else {
                        mutate(&mut items[i], rest, new);
                    }
                }
                Value::Object(map) if !map.is_empty() => {
                    let key = step.get(&map.keys().cloned().collect::<Vec<_>>()).clone();
                    if rest.is_empty() && new.is_none() {
                        map.remove(&key);
                    } else {
                        mutate(map.get_mut(&key).expect("a key of the map"), rest, new);
                    }
                }
                _ => *v = new.unwrap_or(Value::Null),
            }
        }

        /// Ids from a small pool, so that duplicates and unknown members are common; one is long
        /// and full of control characters.
        fn pool_id() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                prop::sample::select(vec!["a", "b", "c", "d"]).prop_map(str::to_owned),
                Just("\u{1b}[2J".repeat(20_000)),
            ]
        }

        fn world() -> impl Strategy<Value = WorldSpec> {
            let contact =
                || {
                    (pool_id(), prop_oneof![any::<String>(), Just("\u{7}".repeat(50_000))])
                        .prop_map(|(id, name)| Contact { id: id.into(), name, ..Default::default() })
                };
            let ids = || prop::collection::vec(pool_id().prop_map(ContactId::from), 0..4);
            let room = (pool_id(), any::<String>(), pool_id(), ids(), ids()).prop_map(
                |(id, topic, owner, member_ids, admin_ids)| RoomSpec {
                    room: Room {
                        id: id.into(),
                        topic,
                        owner_id: owner.into(),
                        member_ids,
                        admin_ids,
                        ..Default::default()
                    },
                    ..Default::default()
                },
            );
            (
                contact(),
                prop::collection::vec(contact(), 0..5),
                prop::collection::vec(room, 0..3),
                prop::collection::btree_map(pool_id().prop_map(TagId::from), ids(), 0..3),
            )
                .prop_map(|(me, contacts, rooms, tags)| WorldSpec { me, contacts, rooms, tags })
        }

        /// What `validate` must decide, written independently of it.
        fn is_valid(w: &WorldSpec) -> bool {
            let mut known = std::collections::HashSet::new();
            let people_ok = !w.me.id.is_empty()
                && std::iter::once(&w.me).chain(&w.contacts).all(|c| !c.id.is_empty() && known.insert(c.id.as_str()));
            let mut rooms = std::collections::HashSet::new();
            let rooms_ok = w.rooms.iter().all(|r| {
                !r.room.id.is_empty()
                    && rooms.insert(r.room.id.as_str())
                    && r.room
                        .member_ids
                        .iter()
                        .chain(&r.room.admin_ids)
                        .chain([&r.room.owner_id])
                        .all(|m| m.is_empty() || known.contains(m.as_str()))
            });
            let tags_ok = w.tags.values().flatten().all(|m| known.contains(m.as_str()));
            people_ok && rooms_ok && tags_ok
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            #[test]
            fn arbitrary_text_is_loaded_or_refused_briefly(
                text in prop_oneof![any::<String>(), "[\\[\\]{}=.,\"'a-z0-9 \n#:-]{0,200}"],
            ) {
                for parsed in [WorldSpec::from_toml(&text), WorldSpec::from_json(&text)] {
                    match parsed {
                        Ok(w) => prop_assert!(w.validate().is_ok()),
                        Err(e) => prop_assert!(short_and_plain(&e), "{}", e),
                    }
                }
            }

            #[test]
            fn deep_toml_is_refused_exactly_past_the_limit(
                layers in prop::collection::vec(prop_oneof![Just(Layer::Array), (1usize..80).prop_map(Layer::Table)], 1..120),
                header in 0usize..80,
            ) {
                let mut value = "1".to_owned();
                for layer in layers.iter().rev() {
                    value = match layer {
                        Layer::Array => format!("[{value}]"),
                        Layer::Table(keys) => {
                            let key = (0..*keys).map(|i| format!("k{i}")).collect::<Vec<_>>().join(".");
                            format!("{{{key} = {value}}}")
                        }
                    };
                }
                let table = (0..header).map(|i| format!("h{i}")).collect::<Vec<_>>().join(".");
                let text = if header == 0 {
                    format!("x = {value}\n[self]\nid = \"b\"\n")
                } else {
                    format!("[self]\nid = \"b\"\n[{table}]\nx = {value}\n")
                };
                let depth: usize = header + 1 + layers.iter().map(|l| match l { Layer::Array => 1, Layer::Table(k) => 1 + k }).sum::<usize>();
                match WorldSpec::from_toml(&text) {
                    Ok(_) => prop_assert!(depth <= MAX_WORLD_DEPTH as usize, "depth {} accepted", depth),
                    Err(e) => {
                        prop_assert!(depth > MAX_WORLD_DEPTH as usize, "depth {} refused: {}", depth, e);
                        prop_assert!(e.contains("nested deeper than 32 levels"), "{}", e);
                    }
                }
            }

            #[test]
            fn deep_json_never_overflows(depth in 1usize..5_000, object in any::<bool>(), place in 0usize..3) {
                let (open, close) = if object { ("{\"k\":", "}") } else { ("[", "]") };
                let deep = format!("{}1{}", open.repeat(depth), close.repeat(depth));
                let text = match place {
                    0 => format!(r#"{{"self":{{"id":"b"}},"x":{deep}}}"#),
                    1 => format!(r#"{{"self":{{"id":"b","x":{deep}}}}}"#),
                    _ => format!(r#"{{"self":{{"id":"b"}},"rooms":[{{"id":"r","x":{deep}}}]}}"#),
                };
                match WorldSpec::from_json(&text) {
                    Ok(w) => prop_assert_eq!(w.me.id.as_str(), "b"),
                    Err(e) => {
                        prop_assert!(depth > 120, "refused at depth {}: {}", depth, e);
                        prop_assert!(short_and_plain(&e) && e.contains("recursion limit"), "{}", e);
                    }
                }
            }

            #[test]
            fn near_valid_worlds_are_loaded_or_refused_briefly(
                path in prop::collection::vec(any::<prop::sample::Index>(), 0..6),
                new in prop::option::of(json_value()),
            ) {
                let mut value = serde_json::to_value(WorldSpec::builtin()).unwrap();
                mutate(&mut value, &path, new);
                let json = value.to_string();
                let toml = toml::to_string(&value).ok();
                let parsed = std::iter::once(WorldSpec::from_json(&json)).chain(toml.map(|t| WorldSpec::from_toml(&t)));
                for result in parsed {
                    match result {
                        Ok(w) => {
                            prop_assert!(w.validate().is_ok());
                            let again = WorldSpec::from_json(&serde_json::to_string(&w).unwrap());
                            prop_assert_eq!(again, Ok(w));
                        }
                        Err(e) => prop_assert!(short_and_plain(&e), "{}", e),
                    }
                }
            }

            #[test]
            fn garbled_toml_worlds_are_loaded_or_refused_briefly(
                at in any::<prop::sample::Index>(),
                cut in 0usize..40,
                insert in "[\\[\\]{}=.,\"'a-z0-9 \n#]{0,12}",
            ) {
                let text = toml::to_string(&WorldSpec::builtin()).unwrap();
                let chars: Vec<char> = text.chars().collect();
                let i = at.index(chars.len());
                let garbled: String = chars[..i].iter().chain(insert.chars().collect::<Vec<_>>().iter()).chain(chars[(i + cut).min(chars.len())..].iter()).collect();
                match WorldSpec::from_toml(&garbled) {
                    Ok(w) => prop_assert!(w.validate().is_ok()),
                    Err(e) => prop_assert!(short_and_plain(&e), "{}", e),
                }
            }

            #[test]
            fn validation_decides_like_the_rules_and_says_why_briefly(w in world()) {
                match w.validate() {
                    Ok(()) => prop_assert!(is_valid(&w)),
                    Err(e) => {
                        prop_assert!(!is_valid(&w), "refused a valid world: {}", e);
                        prop_assert!(short_and_plain(&e), "{}", e);
                    }
                }
            }
        }
    }
}
