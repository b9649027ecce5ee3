//! Media downloads (spec §3): `webwxgetmsgimg` (images, emoticons), `webwxgetvoice`,
//! `webwxgetvideo` (with `Range`, as every client sends it), `webwxgetmedia` on the file host
//! (attachments), `webwxgeticon`/`webwxgetheadimg` (avatars). All need the session's cookies, so the
//! bytes go to the blob store and clients get a FileBox they can `Download`.

use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::ids::MessageId;
use puppet_proto::model::ImageType;

use super::WebBackend;
use crate::backend::{BackendError, BackendResult};

impl WebBackend {
    async fn keep_file(&self, name: String, bytes: Vec<u8>) -> BackendResult<FileBox> {
        if bytes.is_empty() {
            return Err(BackendError::Unavailable(format!(
                "web WeChat sent no bytes for `{name}` (expired, or the session changed since the message came)"
            )));
        }
        let meta = self.inner.blobs.put(&bytes).await.map_err(BackendError::from)?;
        let mut fb = FileBox::new(name, FileBoxSource::Uuid(meta.id));
        fb.size = Some(meta.size);
        Ok(fb)
    }

    pub(super) async fn download_image(&self, id: &MessageId, kind: ImageType) -> BackendResult<FileBox> {
        let s = self.stored(id).await?;
        if !matches!(s.msg_type, 3 | 47) {
            return Err(BackendError::FailedPrecondition(format!("message `{id}` is not an image")));
        }
        let session = self.session()?;
        let mut q = vec![("MsgID", id.as_str().to_owned()), ("skey", session.skey.clone())];
        match kind {
            ImageType::Thumbnail => q.push(("type", "slave".into())),
            ImageType::Hd | ImageType::Artwork => q.push(("type", "big".into())),
            ImageType::Unknown => {}
        }
        let url = format!("{}/webwxgetmsgimg", session.endpoints.base);
        let (_, bytes) = self.inner.wire.get_bytes("webwxgetmsgimg", &url, &q, &session, false).await?;
        let ext = if s.msg_type == 47 { "gif" } else { "jpg" };
        self.keep_file(format!("{id}.{ext}"), bytes).await
    }

    pub(super) async fn download_file(&self, id: &MessageId) -> BackendResult<FileBox> {
        let s = self.stored(id).await?;
        let session = self.session()?;
        let base = &session.endpoints.base;
        let (what, url, q, range, name): (&'static str, String, Vec<(&str, String)>, bool, String) =
            match (s.msg_type, s.app_msg_type) {
                (34, _) => (
                    "webwxgetvoice",
                    format!("{base}/webwxgetvoice"),
                    vec![("msgid", id.as_str().to_owned()), ("skey", session.skey.clone())],
                    false,
                    format!("{id}.mp3"),
                ),
                (43 | 62, _) => (
                    "webwxgetvideo",
                    format!("{base}/webwxgetvideo"),
                    vec![("msgid", id.as_str().to_owned()), ("skey", session.skey.clone())],
                    true,
                    format!("{id}.mp4"),
                ),
                (3 | 47, _) => return self.download_image(id, ImageType::Hd).await,
                (49, 6) => {
                    if s.media_id.is_empty() {
                        return Err(BackendError::FailedPrecondition(format!("message `{id}` names no MediaId")));
                    }
                    let q = vec![
                        ("sender", s.from.clone()),
                        ("mediaid", s.media_id.clone()),
                        ("encryfilename", s.encry_file_name.clone()),
                        ("fromuser", session.uin.clone()),
                        ("pass_ticket", session.pass_ticket.clone()),
                        ("webwx_data_ticket", session.cookies.get("webwx_data_ticket").cloned().unwrap_or_default()),
                    ];
                    let name =
                        if s.message.filename.is_empty() { format!("{id}.bin") } else { s.message.filename.clone() };
                    ("webwxgetmedia", format!("{}/webwxgetmedia", session.endpoints.file), q, false, name)
                }
                _ => return Err(BackendError::FailedPrecondition(format!("message `{id}` carries no file"))),
            };
        let (_, bytes) = self.inner.wire.get_bytes(what, &url, &q, &session, range).await?;
        self.keep_file(name, bytes).await
    }

    pub(super) async fn avatar(&self, user_name: &str, id: &str) -> BackendResult<FileBox> {
        let session = self.session()?;
        let path = {
            let st = self.state();
            let c =
                st.contacts.get(user_name).cloned().or_else(|| (st.me["UserName"] == user_name).then(|| st.me.clone()));
            c.and_then(|c| c["HeadImgUrl"].as_str().map(str::to_owned))
        }
        .filter(|p| p.starts_with("/cgi-bin/"))
        .ok_or_else(|| BackendError::FailedPrecondition(format!("`{id}` has no avatar in this session")))?;
        // HeadImgUrl is a path on the main host, with its query.
        let origin = session.endpoints.base.trim_end_matches("/cgi-bin/mmwebwx-bin");
        let url = format!("{origin}{path}");
        let (_, bytes) = self.inner.wire.get_bytes("webwxgeticon", &url, &[], &session, false).await?;
        self.keep_file(format!("{id}.jpg"), bytes).await
    }
}
