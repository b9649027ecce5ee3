//! What an Official Account does beyond the puppet model (served as `puppet_rs.v1.OfficialAccount`):
//! menus, template messages, parametric QR codes, follower details and tags.

use serde_json::{Value, json};

use super::xml::Reply;
use super::{OfficialAccount, Outbound};
use crate::backend::{BackendError, BackendResult};

/// A template message to send.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TemplateMessage {
    /// The follower's openid.
    pub to_user: String,
    /// The template.
    pub template_id: String,
    /// Link opened on tap.
    pub url: Option<String>,
    /// Mini-program opened on tap: (appid, pagepath).
    pub mini_program: Option<(String, String)>,
    /// Fields: key → (value, colour).
    pub data: Vec<(String, String, Option<String>)>,
    /// Idempotency key.
    pub client_msg_id: Option<String>,
}

/// A parametric QR code's scene value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scene {
    /// A number.
    Id(u32),
    /// A string.
    Str(String),
}

/// A created QR code.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QrTicket {
    /// The ticket.
    pub ticket: String,
    /// What the QR code encodes.
    pub url: String,
    /// Where WeChat serves the image.
    pub image_url: String,
    /// Lifetime (0: permanent).
    pub expire_seconds: u32,
}

/// A tag of the account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TagInfo {
    /// Numeric id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Followers with it.
    pub count: u64,
}

/// A follower's details (`user/info`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FollowerInfo {
    /// Openid.
    pub openid: String,
    /// Still following.
    pub subscribed: bool,
    /// The account's remark for them.
    pub remark: String,
    /// Unix seconds.
    pub subscribe_time: u64,
    /// Language.
    pub language: String,
    /// Unionid, when the account is bound to an open platform.
    pub unionid: String,
    /// How they came.
    pub subscribe_scene: String,
    /// QR scene id.
    pub qr_scene: u64,
    /// QR scene string.
    pub qr_scene_str: String,
    /// Their tags (names resolved).
    pub tags: Vec<TagInfo>,
    /// Nickname, where WeChat still sends it.
    pub nickname: String,
}

fn text(v: &Value, k: &str) -> String {
    v.get(k).and_then(Value::as_str).unwrap_or_default().to_owned()
}

impl OfficialAccount {
    /// Answers a follower: passively when a push of theirs is waiting, else through the
    /// customer-service API. True when it went passively.
    pub async fn reply(&self, openid: &str, reply: Reply) -> BackendResult<bool> {
        let openid = self.follower(openid, "reply")?;
        if let Reply::News(articles) = &reply
            && !(1..=8).contains(&articles.len())
        {
            return Err(BackendError::InvalidArgument(format!(
                "a news reply has 1 to 8 articles, not {}",
                articles.len()
            )));
        }
        self.deliver(&openid, Outbound::Reply(reply)).await
    }

    /// Replaces the custom menu with WeChat's menu JSON (`{"button": [...]}`).
    pub async fn create_menu(&self, menu: Value) -> BackendResult<()> {
        let buttons = menu.get("button").and_then(Value::as_array).ok_or_else(|| {
            BackendError::InvalidArgument("the menu JSON needs a `button` array: {\"button\": [...]}".into())
        })?;
        if buttons.is_empty() || buttons.len() > 3 {
            return Err(BackendError::InvalidArgument(format!(
                "a menu has 1 to 3 top-level buttons, not {}",
                buttons.len()
            )));
        }
        if let Some(b) =
            buttons.iter().find(|b| b.get("sub_button").and_then(Value::as_array).is_some_and(|s| s.len() > 5))
        {
            return Err(BackendError::InvalidArgument(format!(
                "button `{}` has more than 5 sub-buttons",
                text(b, "name")
            )));
        }
        self.api().post("/cgi-bin/menu/create", &menu).await.map_err(|e| e.into_backend("menu/create"))?;
        Ok(())
    }

    /// The current menu, as WeChat answers it.
    pub async fn menu(&self) -> BackendResult<Value> {
        self.api().get("/cgi-bin/menu/get", &[]).await.map_err(|e| e.into_backend("menu/get"))
    }

    /// Removes the menu.
    pub async fn delete_menu(&self) -> BackendResult<()> {
        self.api().get("/cgi-bin/menu/delete", &[]).await.map_err(|e| e.into_backend("menu/delete"))?;
        Ok(())
    }

    /// Sends a template message; its `msgid`.
    pub async fn send_template(&self, t: TemplateMessage) -> BackendResult<u64> {
        if t.to_user.is_empty() || t.template_id.is_empty() {
            return Err(BackendError::InvalidArgument("`to_user` and `template_id` are required".into()));
        }
        let data: serde_json::Map<String, Value> = t
            .data
            .iter()
            .map(|(k, v, color)| {
                let mut field = json!({ "value": v });
                if let Some(c) = color {
                    field["color"] = json!(c);
                }
                (k.clone(), field)
            })
            .collect();
        let mut body = json!({ "touser": t.to_user, "template_id": t.template_id, "data": data });
        if let Some(url) = t.url {
            body["url"] = json!(url);
        }
        if let Some((appid, pagepath)) = t.mini_program {
            body["miniprogram"] = json!({ "appid": appid, "pagepath": pagepath });
        }
        if let Some(id) = t.client_msg_id {
            body["client_msg_id"] = json!(id);
        }
        let v = self
            .api()
            .post("/cgi-bin/message/template/send", &body)
            .await
            .map_err(|e| e.into_backend("message/template/send"))?;
        v.get("msgid")
            .and_then(Value::as_u64)
            .ok_or_else(|| BackendError::Internal("message/template/send answered without `msgid`".into()))
    }

    /// Creates a parametric QR code.
    pub async fn create_qrcode(&self, scene: Scene, permanent: bool, expire_seconds: u32) -> BackendResult<QrTicket> {
        let (action, scene) = match (&scene, permanent) {
            (Scene::Id(id), true) if !(1..=100_000).contains(id) => {
                return Err(BackendError::InvalidArgument("a permanent scene_id is 1..=100000".into()));
            }
            (Scene::Str(s), _) if s.is_empty() || s.chars().count() > 64 => {
                return Err(BackendError::InvalidArgument("a scene_str is 1 to 64 characters".into()));
            }
            (Scene::Id(id), true) => ("QR_LIMIT_SCENE", json!({ "scene_id": id })),
            (Scene::Id(id), false) => ("QR_SCENE", json!({ "scene_id": id })),
            (Scene::Str(s), true) => ("QR_LIMIT_STR_SCENE", json!({ "scene_str": s })),
            (Scene::Str(s), false) => ("QR_STR_SCENE", json!({ "scene_str": s })),
        };
        if expire_seconds > 2_592_000 {
            return Err(BackendError::InvalidArgument("`expire_seconds` is at most 2592000 (30 days)".into()));
        }
        let mut body = json!({ "action_name": action, "action_info": { "scene": scene } });
        if !permanent && expire_seconds > 0 {
            body["expire_seconds"] = json!(expire_seconds);
        }
        let v = self.api().post("/cgi-bin/qrcode/create", &body).await.map_err(|e| e.into_backend("qrcode/create"))?;
        let ticket = text(&v, "ticket");
        if ticket.is_empty() {
            return Err(BackendError::Internal("qrcode/create answered without `ticket`".into()));
        }
        let image_url =
            reqwest::Url::parse_with_params("https://mp.weixin.qq.com/cgi-bin/showqrcode", &[("ticket", &ticket)])
                .map(String::from)
                .unwrap_or_default();
        Ok(QrTicket {
            url: text(&v, "url"),
            image_url,
            expire_seconds: v.get("expire_seconds").and_then(Value::as_u64).unwrap_or(0) as u32,
            ticket,
        })
    }

    /// Every tag.
    pub async fn list_tags(&self) -> BackendResult<Vec<TagInfo>> {
        Ok(self.tags().await?.into_iter().map(|(id, name, count)| TagInfo { id, name, count }).collect())
    }

    /// A follower's details with tag names.
    pub async fn follower_info(&self, openid: &str) -> BackendResult<FollowerInfo> {
        if openid.is_empty() {
            return Err(BackendError::InvalidArgument("`openid` is required".into()));
        }
        let v = self
            .api()
            .get("/cgi-bin/user/info", &[("openid", openid), ("lang", "zh_CN")])
            .await
            .map_err(|e| e.into_backend("user/info"))?;
        let tag_ids: Vec<i64> = v
            .get("tagid_list")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_i64).collect())
            .unwrap_or_default();
        let tags = if tag_ids.is_empty() {
            vec![]
        } else {
            let all = self.list_tags().await?;
            tag_ids
                .iter()
                .map(|id| {
                    all.iter().find(|t| t.id == *id).cloned().unwrap_or(TagInfo { id: *id, ..Default::default() })
                })
                .collect()
        };
        Ok(FollowerInfo {
            openid: openid.to_owned(),
            subscribed: v.get("subscribe").and_then(Value::as_i64) == Some(1),
            remark: text(&v, "remark"),
            subscribe_time: v.get("subscribe_time").and_then(Value::as_u64).unwrap_or(0),
            language: text(&v, "language"),
            unionid: text(&v, "unionid"),
            subscribe_scene: text(&v, "subscribe_scene"),
            qr_scene: v.get("qr_scene").and_then(Value::as_u64).unwrap_or(0),
            qr_scene_str: text(&v, "qr_scene_str"),
            tags,
            nickname: text(&v, "nickname"),
        })
    }
}
