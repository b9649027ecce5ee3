//! puppetctl: poke a puppet service from the shell.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use base64::Engine;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use puppet_client::{Client, Error};
use puppet_proto::event::EventKind;
use puppet_proto::filebox::{FileBox, FileBoxSource};
use puppet_proto::pb::puppet_rs::v1 as ext;
use puppet_proto::pb::wechaty::puppet as pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Talk to a puppet service (puppet-rs or any wechaty.Puppet server) from the shell.
///
/// Endpoint and token come from the flags or from the environment variables the Wechaty clients
/// use, so a shell set up for a bot works as is.
#[derive(Parser)]
#[command(name = "puppetctl", version)]
struct Cli {
    /// Server address (host:port or http://host:port).
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_ENDPOINT", default_value = "127.0.0.1:8788", global = true)]
    endpoint: String,
    /// The server's token (printed by puppet-server at start-up).
    #[arg(long, env = "WECHATY_PUPPET_SERVICE_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the server's version.
    Version,
    /// Check the server's health (grpc.health.v1); exits 1 unless SERVING.
    Health,
    /// List contacts (a table, or JSON with --json).
    Contacts {
        /// One JSON array of full payloads.
        #[arg(long)]
        json: bool,
    },
    /// List the rooms the bot is in (a table, or JSON with --json).
    Rooms {
        /// One JSON array of full payloads.
        #[arg(long)]
        json: bool,
    },
    /// Show one contact as JSON.
    Contact {
        /// The contact id.
        id: String,
    },
    /// Show one room (and its members) as JSON.
    Room {
        /// The room id.
        id: String,
    },
    /// Send a text message to a contact or room id.
    Say {
        /// Contact id or room id.
        conversation: String,
        /// The text.
        text: String,
    },
    /// Upload a file (with a progress bar) and send it to a contact or room.
    SendFile {
        /// Contact id or room id.
        conversation: String,
        /// The file to send.
        path: PathBuf,
    },
    /// Save the file of a message (with a progress bar).
    Download {
        /// The message id.
        message_id: String,
        /// Where to write it (default: the file's own name, in the current directory).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Drive the mock backend's simulated world.
    #[command(subcommand)]
    Mock(Mock),
    /// List the accounts the server holds (name, backend, login state), through the Admin service.
    /// Needs the server's admin token (--admin-token or PUPPET_ADMIN_TOKEN).
    Accounts {
        /// The server's admin token (puppet-server --admin-token).
        #[arg(long, env = "PUPPET_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: Option<String>,
        /// Reread the server's accounts file first (as SIGHUP does) and print what changed.
        #[arg(long)]
        reload: bool,
        /// One JSON object instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Follow events: JSON lines {"seq", "type", "payload"}, or readable lines with --text.
    Events {
        /// One readable line per event instead of JSON.
        #[arg(long)]
        text: bool,
        /// Start after this sequence number (resume) instead of with live events.
        #[arg(long)]
        since: Option<u64>,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
}

#[derive(Subcommand)]
enum Mock {
    /// A contact says something to the bot (or into a room).
    Say {
        /// Who speaks.
        from: String,
        /// What they say.
        text: String,
        /// Say it in this room instead of to the bot.
        #[arg(long)]
        room: Option<String>,
        /// @-mention these members (repeatable).
        #[arg(long = "mention")]
        mentions: Vec<String>,
    },
    /// A contact sends a file to the bot (or into a room).
    SendFile {
        /// Who sends it.
        from: String,
        /// The file; its name decides the message type.
        path: PathBuf,
        /// Send it in this room instead of to the bot.
        #[arg(long)]
        room: Option<String>,
    },
    /// Someone asks the bot to be friends (an unknown id becomes a new stranger).
    FriendRequest {
        /// Who asks.
        contact: String,
        /// Their greeting.
        #[arg(long, default_value = "")]
        hello: String,
    },
    /// Contacts join a room.
    Join {
        /// The room.
        room: String,
        /// Who invites them.
        #[arg(long)]
        inviter: String,
        /// Who joins.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// Members leave a room, or an owner/admin removes them.
    Leave {
        /// The room.
        room: String,
        /// Who removes them (default: they leave).
        #[arg(long)]
        remover: Option<String>,
        /// Who leaves.
        #[arg(required = true)]
        contacts: Vec<String>,
    },
    /// The platform logs the bot out.
    Logout {
        /// Why.
        #[arg(default_value = "")]
        reason: String,
    },
    /// A conversation as the world saw it, one JSON line per message.
    Messages {
        /// A contact id (its chat with the bot) or a room id.
        conversation: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("puppetctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Error> {
    if let Command::Accounts { admin_token, reload, json } = cli.command {
        let token = admin_token.ok_or_else(|| {
            Error::Config(
                "no admin token: pass --admin-token or set PUPPET_ADMIN_TOKEN (puppet-server --admin-token)".into(),
            )
        })?;
        return accounts(&cli.endpoint, &token, reload, json).await;
    }
    let token = cli.token.ok_or_else(|| {
        Error::Config("no token: pass --token or set WECHATY_PUPPET_SERVICE_TOKEN (puppet-server prints it)".into())
    })?;
    let client = Client::connect(&cli.endpoint, &token).await?;
    match cli.command {
        Command::Version => println!("{}", client.version().await?),
        Command::Health => {
            use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
            let r = HealthClient::new(client.channel()).check(HealthCheckRequest { service: String::new() }).await?;
            let status = r.into_inner().status();
            println!("{}", status.as_str_name());
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
                return Err(Error::Handler(format!("the server is {}", status.as_str_name())));
            }
        }
        Command::Contacts { json } => {
            let mut all = Vec::new();
            for id in client.contact_list().await? {
                all.push(client.contact(&id).await?);
            }
            if json {
                println!("{}", to_json(&all));
            } else {
                println!("{:<24} {:<20} {:<20} TYPE", "ID", "NAME", "ALIAS");
                for c in all {
                    println!("{:<24} {:<20} {:<20} {:?}", c.id, c.name, c.alias, c.kind);
                }
            }
        }
        Command::Rooms { json } => {
            let mut all = Vec::new();
            for id in client.room_list().await? {
                all.push(client.room(&id).await?);
            }
            if json {
                println!("{}", to_json(&all));
            } else {
                println!("{:<24} {:<30} MEMBERS", "ID", "TOPIC");
                for r in all {
                    println!("{:<24} {:<30} {}", r.id, r.topic, r.member_ids.len());
                }
            }
        }
        Command::Contact { id } => println!("{}", to_json(&client.contact(&id.into()).await?)),
        Command::Room { id } => println!("{}", to_json(&client.room(&id.into()).await?)),
        Command::Say { conversation, text } => {
            let req = pb::MessageSendTextRequest { conversation_id: conversation, text, mentional_ids: vec![] };
            println!("{}", client.puppet().message_send_text(req).await?.into_inner().id);
        }
        Command::SendFile { conversation, path } => send_file(&client, conversation, path).await?,
        Command::Download { message_id, output } => download(&client, message_id, output).await?,
        Command::Events { since, count, text } => events(&client, since, count, text).await?,
        Command::Mock(m) => mock(&client, m).await?,
        Command::Accounts { .. } => unreachable!("handled above"),
    }
    Ok(())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn bar(len: u64, what: &str) -> ProgressBar {
    // indicatif draws on stderr only when it is a terminal.
    let bar = ProgressBar::new(len);
    let style = ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style.progress_chars("=> "));
    bar.set_message(what.to_owned());
    bar
}

fn io(what: &str, path: &std::path::Path, e: std::io::Error) -> Error {
    Error::Config(format!("{what} {}: {e}", path.display()))
}

async fn send_file(client: &Client, conversation: String, path: PathBuf) -> Result<(), Error> {
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| io("cannot open", &path, e))?;
    let size = file.metadata().await.map_err(|e| io("cannot stat", &path, e))?.len();
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
    let progress = bar(size, "upload");
    let (tx, rx) = mpsc::channel(4);
    let reader = {
        let progress = progress.clone();
        tokio::spawn(async move {
            loop {
                let mut chunk = vec![0u8; 256 * 1024];
                let n = file.read(&mut chunk).await?;
                if n == 0 {
                    return Ok::<(), std::io::Error>(());
                }
                chunk.truncate(n);
                progress.inc(n as u64);
                if tx.send(pb::UploadRequest { chunk }).await.is_err() {
                    return Ok(());
                }
            }
        })
    };
    let id = client.puppet().upload(ReceiverStream::new(rx)).await?.into_inner().id;
    reader.await.map_err(|e| Error::Config(e.to_string()))?.map_err(|e| io("cannot read", &path, e))?;
    progress.finish_and_clear();
    let mut fb = FileBox::new(name, FileBoxSource::Uuid(id));
    fb.size = Some(size);
    let req = pb::MessageSendFileRequest { conversation_id: conversation, file_box: fb.to_json() };
    println!("{}", client.puppet().message_send_file(req).await?.into_inner().id);
    Ok(())
}

async fn download(client: &Client, message_id: String, output: Option<PathBuf>) -> Result<(), Error> {
    let json = client.puppet().message_file(pb::MessageFileRequest { id: message_id }).await?.into_inner().file_box;
    let fb = FileBox::from_json(&json).map_err(|e| Error::Config(format!("the server sent {e}")))?;
    let path = output.unwrap_or_else(|| PathBuf::from(if fb.name.is_empty() { "download" } else { &fb.name }));
    let mut out = tokio::fs::File::create(&path).await.map_err(|e| io("cannot create", &path, e))?;
    let written = match &fb.source {
        FileBoxSource::Base64(b) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| Error::Config(format!("the server sent bad base64: {e}")))?;
            out.write_all(&bytes).await.map_err(|e| io("cannot write", &path, e))?;
            bytes.len() as u64
        }
        FileBoxSource::Uuid(id) => {
            let progress = bar(fb.size.unwrap_or(0), "download");
            let mut stream = client.puppet().download(pb::DownloadRequest { id: id.clone() }).await?.into_inner();
            let mut n = 0u64;
            while let Some(m) = stream.message().await? {
                out.write_all(&m.chunk).await.map_err(|e| io("cannot write", &path, e))?;
                n += m.chunk.len() as u64;
                progress.inc(m.chunk.len() as u64);
            }
            progress.finish_and_clear();
            n
        }
        FileBoxSource::Url { url, .. } => {
            return Err(Error::Config(format!("this file is at a URL, fetch it directly: {url}")));
        }
        FileBoxSource::QrCode(q) => return Err(Error::Config(format!("this is a QR code, not a file: {q}"))),
    };
    out.flush().await.map_err(|e| io("cannot write", &path, e))?;
    println!("{} ({written} bytes)", path.display());
    Ok(())
}

async fn events(client: &Client, since: Option<u64>, count: Option<u64>, text: bool) -> Result<(), Error> {
    let req = ext::SubscribeRequest { after_seq: since, replay_state: since.is_none(), ..Default::default() };
    let mut stream = client.feed().subscribe(req).await?.into_inner();
    let mut seen = 0;
    let mut stdout = std::io::stdout().lock();
    while let Some(e) = stream.message().await? {
        if e.seq == 0 {
            continue; // heartbeat
        }
        let kind = EventKind::from_wire(e.r#type).map(EventKind::name).unwrap_or("unknown");
        let payload: serde_json::Value =
            serde_json::from_str(&e.payload).unwrap_or(serde_json::Value::String(e.payload));
        let line = if text {
            format!("#{:<6} {:<12} {payload}", e.seq, kind)
        } else {
            serde_json::json!({ "seq": e.seq, "type": kind, "payload": payload }).to_string()
        };
        if writeln!(stdout, "{line}").and_then(|_| stdout.flush()).is_err() {
            return Ok(()); // stdout closed (e.g. piped into head)
        }
        seen += 1;
        if count.is_some_and(|c| seen >= c) {
            return Ok(());
        }
    }
    Ok(())
}

async fn mock(client: &Client, command: Mock) -> Result<(), Error> {
    let mut world = client.world();
    match command {
        Mock::Say { from, text, room, mentions } => {
            let req = ext::SayRequest { from_id: from, room_id: room.unwrap_or_default(), text, mention_ids: mentions };
            println!("{}", world.say(req).await?.into_inner().message_id);
        }
        Mock::SendFile { from, path, room } => {
            let data = tokio::fs::read(&path).await.map_err(|e| io("cannot read", &path, e))?;
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "file".into());
            let req = ext::SendFileRequest { from_id: from, room_id: room.unwrap_or_default(), name, data };
            println!("{}", world.send_file(req).await?.into_inner().message_id);
        }
        Mock::FriendRequest { contact, hello } => {
            let req = ext::RequestFriendshipRequest { contact_id: contact, name: String::new(), hello };
            println!("{}", world.request_friendship(req).await?.into_inner().friendship_id);
        }
        Mock::Join { room, inviter, contacts } => {
            world.join_room(ext::JoinRoomRequest { room_id: room, contact_ids: contacts, inviter_id: inviter }).await?;
        }
        Mock::Leave { room, remover, contacts } => {
            let req =
                ext::LeaveRoomRequest { room_id: room, contact_ids: contacts, remover_id: remover.unwrap_or_default() };
            world.leave_room(req).await?;
        }
        Mock::Logout { reason } => {
            world.force_logout(ext::ForceLogoutRequest { reason }).await?;
        }
        Mock::Messages { conversation } => {
            let messages = world.list_messages(ext::ListMessagesRequest { conversation_id: conversation }).await?;
            for m in messages.into_inner().messages {
                let line = serde_json::json!({
                    "id": m.id, "type": m.r#type, "talkerId": m.talker_id, "listenerId": m.listener_id,
                    "roomId": m.room_id, "text": m.text, "filename": m.filename, "mentionIds": m.mention_ids,
                });
                println!("{line}");
            }
        }
    }
    Ok(())
}

/// `puppetctl accounts`: the Admin service's list (after a reload with `reload`).
async fn accounts(endpoint: &str, admin_token: &str, reload: bool, json: bool) -> Result<(), Error> {
    use puppet_proto::pb::puppet_rs::v1::admin_client::AdminClient;
    // The admin token is not an account's: connect without the client's account handshake.
    let client = Client::connect_with(puppet_client::ConnectOptions::new(endpoint.to_owned(), admin_token)).await?;
    let auth: tonic::metadata::MetadataValue<_> = format!("Wechaty {admin_token}")
        .parse()
        .map_err(|_| Error::Config("the admin token may hold only letters, digits and - _ . ~".into()))?;
    fn request<T>(msg: T, auth: &tonic::metadata::MetadataValue<tonic::metadata::Ascii>) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert("authorization", auth.clone());
        r
    }
    let mut admin = AdminClient::new(client.channel());
    if reload {
        let done = admin.reload_accounts(request(ext::ReloadAccountsRequest {}, &auth)).await?.into_inner();
        eprintln!(
            "reloaded: added {:?}, removed {:?}, restarted {:?}, {} unchanged",
            done.added, done.removed, done.restarted, done.unchanged
        );
    }
    let list = admin.list_accounts(request(ext::ListAccountsRequest {}, &auth)).await?.into_inner();
    if json {
        let accounts: Vec<_> = list
            .accounts
            .iter()
            .map(|a| {
                serde_json::json!({
                    "name": a.name, "backend": a.backend, "loggedIn": a.logged_in,
                    "contactId": a.contact_id, "lastSeq": a.last_seq,
                })
            })
            .collect();
        let out = serde_json::json!({ "accounts": accounts, "ordinal": list.ordinal, "replicas": list.replicas });
        println!("{out}");
        return Ok(());
    }
    println!("{:<20} {:<18} {:<10} {:<24} {:>10}", "NAME", "BACKEND", "LOGIN", "CONTACT", "LAST SEQ");
    for a in &list.accounts {
        let login = if a.logged_in { "logged in" } else { "-" };
        println!("{:<20} {:<18} {:<10} {:<24} {:>10}", a.name, a.backend, login, a.contact_id, a.last_seq);
    }
    if list.replicas > 1 {
        println!("(pod {} of {}: the accounts this pod serves)", list.ordinal, list.replicas);
    }
    Ok(())
}
