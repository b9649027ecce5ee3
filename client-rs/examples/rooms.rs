//! Rooms: welcome newcomers, answer "topic?" with the room's topic, and let "rename <x>" change it.
//! `WECHATY_PUPPET_SERVICE_TOKEN=… cargo run -p puppet-client --example rooms`
use puppet_client::bot::Bot;

#[tokio::main]
async fn main() -> Result<(), puppet_client::Error> {
    Bot::from_env()?
        .on_room_join(|join| async move {
            let ids: Vec<_> = join.invitees.iter().map(|c| c.id().clone()).collect();
            join.room.say("welcome!", &ids).await.map(drop)
        })
        .on_text("topic?", |msg| async move {
            let Some(room) = msg.room() else { return Ok(()) };
            msg.reply(&room.topic().await?).await.map(drop)
        })
        .on_regex(r"^rename (.+)$", |msg, caps| async move {
            match msg.room() {
                Some(room) => room.set_topic(&caps[1]).await,
                None => msg.say("rename works in rooms only").await.map(drop),
            }
        })
        .run()
        .await
}
