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
use std::path::Path;

use puppet_proto::ids::{ContactId, RoomId, TagId};
use puppet_proto::model::{Contact, ContactGender, ContactType, Room};
use serde::{Deserialize, Serialize};

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
    /// Reads a world file: TOML when the name ends in `.toml`, JSON otherwise.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read world file {}: {e}", path.display()))?;
        let spec: Self = if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml")) {
            toml::from_str(&text).map_err(|e| anyhow::anyhow!("world file {}: {e}", path.display()))?
        } else {
            serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("world file {}: {e}", path.display()))?
        };
        spec.validate().map_err(|e| anyhow::anyhow!("world file {}: {e}", path.display()))?;
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
                return Err(format!("a contact named {:?} has no id", c.name));
            }
            if known.insert(c.id.as_str(), ()).is_some() {
                return Err(format!("contact id `{}` appears twice", c.id));
            }
        }
        let mut rooms: HashMap<&str, ()> = HashMap::new();
        for r in &self.rooms {
            if r.room.id.is_empty() {
                return Err(format!("room {:?} has no id", r.room.topic));
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

    #[test]
    fn bad_worlds_are_refused_with_a_reason() {
        let mut w = WorldSpec::builtin();
        w.rooms[0].room.member_ids.push("wxid_nobody".into());
        assert!(w.validate().unwrap_err().contains("wxid_nobody"));
        let mut w = WorldSpec::builtin();
        w.contacts.push(w.contacts[0].clone());
        assert!(w.validate().unwrap_err().contains("twice"));
    }
}
