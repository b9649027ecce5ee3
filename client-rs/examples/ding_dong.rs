//! The shortest chatbot: print the login QR, the login and every message; answer "ding" with "dong".
//! `WECHATY_PUPPET_SERVICE_TOKEN=… cargo run -p puppet-client --example ding_dong`
use puppet_client::bot::Bot;

#[tokio::main]
async fn main() -> Result<(), puppet_client::Error> {
    Bot::from_env()?
        .on_scan(|qr, status| async move { println!("scan ({status:?}): {qr}") })
        .on_login(|me| async move { println!("logged in as {}", me.id()) })
        .on_message(|msg| async move { println!("{msg}") })
        .on_text("ding", |msg| async move { msg.say("dong").await.map(drop) })
        .run()
        .await
}
