//! Puppet ids for web WeChat's session ids.
//!
//! Web WeChat names everyone by a `UserName` (`@` + hex for people, `@@` + hex for rooms) that is
//! new on every login; only a hot reload of the same session keeps them (spec §4). A bot that stores
//! contact ids would lose them at each scan, so the puppet ids here are derived from what survives a
//! login, in this order: the bot's own `Uin`; a contact's remark (`RemarkName`, which the bot itself
//! can set: `ContactAlias`); its WeChat handle (`Alias`); its nickname with gender and region; for a
//! room its topic. Two contacts that would get the same id (same nickname, no remark) get
//! session-scoped ids instead, as does anything with none of these. Special accounts (`filehelper`,
//! …) keep their fixed names. What still changes: a renamed contact without a remark, a room whose
//! topic changed while the bot was logged out, and the ambiguous ones above.

use std::collections::HashMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The bidirectional map of one session.
#[derive(Default, Debug)]
pub struct IdMap {
    by_user_name: HashMap<String, String>,
    by_id: HashMap<String, String>,
}

fn digest(key: &str) -> String {
    let d = Sha256::digest(key.as_bytes());
    d[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether a `UserName` is a room.
pub fn is_room(user_name: &str) -> bool {
    user_name.starts_with("@@")
}

/// The key that survives a login, if the contact has one.
pub fn stable_key(contact: &Value, self_uin: Option<&str>) -> Option<String> {
    let s = |k: &str| contact[k].as_str().map(str::trim).filter(|v| !v.is_empty());
    let user_name = s("UserName")?;
    if let Some(uin) = self_uin {
        return Some(format!("uin:{uin}"));
    }
    if is_room(user_name) {
        return s("NickName").map(|t| format!("topic:{t}"));
    }
    if let Some(r) = s("RemarkName") {
        return Some(format!("remark:{r}"));
    }
    if let Some(a) = s("Alias") {
        return Some(format!("alias:{a}"));
    }
    let nick = s("NickName")?;
    let sex = contact["Sex"].as_u64().unwrap_or(0);
    Some(format!("nick:{nick}|{sex}|{}|{}", s("Province").unwrap_or(""), s("City").unwrap_or("")))
}

impl IdMap {
    /// The puppet id of `user_name`, assigned from `key` when new.
    pub fn assign(&mut self, user_name: &str, key: Option<String>) -> String {
        if let Some(id) = self.by_user_name.get(user_name) {
            return id.clone();
        }
        let id = if !user_name.starts_with('@') {
            user_name.to_owned()
        } else {
            let prefix = if is_room(user_name) { "wr_" } else { "wc_" };
            let candidate = key.map(|k| format!("{prefix}{}", digest(&k)));
            match candidate {
                Some(c) if !self.by_id.contains_key(&c) => c,
                _ => format!("{prefix}s{}", digest(&format!("session:{user_name}"))),
            }
        };
        self.by_user_name.insert(user_name.to_owned(), id.clone());
        self.by_id.insert(id.clone(), user_name.to_owned());
        id
    }

    /// The puppet id of a `UserName`, if assigned.
    pub fn id_of(&self, user_name: &str) -> Option<&str> {
        self.by_user_name.get(user_name).map(String::as_str)
    }

    /// The `UserName` behind a puppet id.
    pub fn user_name_of(&self, id: &str) -> Option<&str> {
        self.by_id.get(id).map(String::as_str)
    }

    /// Forgets everything (a new login).
    pub fn clear(&mut self) {
        self.by_user_name.clear();
        self.by_id.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_same_person_gets_the_same_id_in_a_new_session() {
        let mut a = IdMap::default();
        let mut b = IdMap::default();
        let old = json!({"UserName": "@aaa", "NickName": "Dave", "RemarkName": "dave-remark"});
        let new = json!({"UserName": "@bbb", "NickName": "Dave (new nick)", "RemarkName": "dave-remark"});
        assert_eq!(a.assign("@aaa", stable_key(&old, None)), b.assign("@bbb", stable_key(&new, None)));
        let room_old = json!({"UserName": "@@r1", "NickName": "Friends"});
        let room_new = json!({"UserName": "@@r2", "NickName": "Friends"});
        let id = a.assign("@@r1", stable_key(&room_old, None));
        assert!(id.starts_with("wr_"));
        assert_eq!(id, b.assign("@@r2", stable_key(&room_new, None)));
        assert_eq!(b.user_name_of(&id), Some("@@r2"));
    }

    #[test]
    fn ambiguous_keys_fall_back_to_session_ids() {
        let mut m = IdMap::default();
        let one = json!({"UserName": "@a1", "NickName": "Sam"});
        let two = json!({"UserName": "@a2", "NickName": "Sam"});
        let i1 = m.assign("@a1", stable_key(&one, None));
        let i2 = m.assign("@a2", stable_key(&two, None));
        assert_ne!(i1, i2);
        assert_eq!(m.assign("@a1", None), i1);
        assert_eq!(m.assign("filehelper", None), "filehelper");
        assert!(m.assign("@zz", None).starts_with("wc_s"));
    }
}
