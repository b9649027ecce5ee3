//! Files: save every file sent to the bot into ./received/, and answer "send me the readme" with
//! this crate's README. `WECHATY_PUPPET_SERVICE_TOKEN=… cargo run -p puppet-client --example files`
use puppet_client::bot::Bot;
use puppet_proto::model::MessageType;

#[tokio::main]
async fn main() -> Result<(), puppet_client::Error> {
    let save = |msg: puppet_client::bot::Message| async move {
        let bytes = msg.file_bytes().await?;
        std::fs::create_dir_all("received").map_err(|e| puppet_client::Error::Handler(e.to_string()))?;
        let path = std::path::Path::new("received").join(&msg.payload().filename);
        std::fs::write(&path, &bytes).map_err(|e| puppet_client::Error::Handler(e.to_string()))?;
        msg.say(&format!("saved {} ({} bytes)", path.display(), bytes.len())).await.map(drop)
    };
    Bot::from_env()?
        .on_kind(MessageType::Attachment, save)
        .on_kind(MessageType::Image, save)
        .on_text("send me the readme", |msg| async move {
            msg.talker().say_file(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).await.map(drop)
        })
        .run()
        .await
}
