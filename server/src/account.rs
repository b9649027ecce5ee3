//! The accounts a process serves, running: each [`Account`] has its own backend, event bus, store,
//! blobs, metrics, background tasks and MQTT bridge, and the gRPC services built over them.
//! [`Accounts`] finds an account from the token a client presents (every front door asks it), knows
//! which pod owns every token when sharded (discovery), and reloads the accounts file.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use std::time::Duration;

use puppet_proto::pb::puppet_rs::v1::event_feed_server::EventFeedServer;
use puppet_proto::pb::puppet_rs::v1::ilink_server::IlinkServer;
use puppet_proto::pb::puppet_rs::v1::mock_world_server::MockWorldServer;
use puppet_proto::pb::puppet_rs::v1::official_account_server::OfficialAccountServer;
use puppet_proto::pb::wechaty::puppet_server::PuppetServer;
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tonic::Status;
use tonic::server::NamedService;
use tower::{Layer, Service, ServiceExt};

use crate::accounts::{AccountSpec, AccountsError, Shard, TokenKey};
use crate::backend::Backend;
use crate::blobs::BlobStore;
use crate::config::Config;
use crate::events::EventBus;
use crate::grpc::durable::{DurableWrites, DurableWritesLayer};
use crate::grpc::ilink::IlinkService;
use crate::grpc::mock_world::MockWorldService;
use crate::grpc::official_account::OfficialAccountService;
use crate::grpc::{EventFeedService, PuppetService};
use crate::metrics::AccountMetrics;
use crate::net::AuthThrottle;
use crate::store::Store;
use crate::tasks::Tasks;

/// How long an account's background tasks get to stop when it is removed or the process stops.
const ACCOUNT_GRACE: Duration = Duration::from_secs(5);

/// How long a restarted account waits for calls to its old instance to finish.
const RELEASE_WAIT: Duration = Duration::from_secs(30);

/// The gRPC services of one account, each behind its store's write guard.
#[derive(Clone)]
pub struct Services {
    /// `wechaty.Puppet`.
    pub puppet: DurableWrites<PuppetServer<PuppetService>>,
    /// `puppet_rs.v1.EventFeed`.
    pub feed: EventFeedServer<EventFeedService>,
    /// `puppet_rs.v1.MockWorld`, for a mock account.
    pub mock: Option<DurableWrites<MockWorldServer<MockWorldService>>>,
    /// `puppet_rs.v1.OfficialAccount`, for an Official Account.
    pub oa: Option<DurableWrites<OfficialAccountServer<OfficialAccountService>>>,
    /// `puppet_rs.v1.Ilink`, for an iLink account.
    pub ilink: Option<DurableWrites<IlinkServer<IlinkService>>>,
}

/// What every account of a process shares.
#[derive(Clone)]
pub struct Shared {
    /// Largest gRPC message, in bytes.
    pub max_message: usize,
    /// Cancelled when the process's front doors stop (long Official Account calls end then).
    pub front_stop: tokio_util::sync::CancellationToken,
    /// Told whenever an account's login state changes or the set of accounts does.
    pub changed: watch::Sender<u64>,
}

/// One running account.
pub struct Account {
    /// Its name (logs, metrics, paths; never the token).
    pub name: String,
    /// `None` for the single account the flags make (its metrics stay unlabelled).
    pub label: Option<String>,
    /// Its settings.
    pub config: Config,
    token: Arc<str>,
    /// A digest of everything that defines it: a reload restarts it when this changes.
    fingerprint: [u8; 32],
    /// Its backend.
    pub backend: Arc<dyn Backend>,
    /// Its event bus.
    pub bus: EventBus,
    /// Its store.
    pub store: Store,
    /// Its blobs.
    pub blobs: BlobStore,
    /// Its metrics.
    pub metrics: Arc<AccountMetrics>,
    /// Its gRPC services.
    pub services: Services,
    /// The Official Account's webhook: its path on the side port and its routes.
    pub webhook: Option<(String, axum::Router)>,
    /// The Official Account's webhook mode, for the banner.
    pub webhook_mode: Option<&'static str>,
    /// The MQTT bridge's settings, when it has one.
    pub mqtt: Option<crate::mqtt::MqttConfig>,
    /// Its loops (backend, readiness).
    background: Tasks,
    /// Its own front doors: the MQTT bridge and the OneBot transports.
    front: Tasks,
}

impl std::fmt::Debug for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Account").field("name", &self.name).field("backend", &self.backend.name()).finish()
    }
}

fn fingerprint(spec: &AccountSpec) -> [u8; 32] {
    // Config's Debug holds every setting (the token too: hashed here, never shown).
    Sha256::digest(format!("{}\0{}\0{:?}", spec.name, spec.token, spec.config)).into()
}

impl Account {
    /// Opens the account's store and blobs and starts its backend (and MQTT bridge). `label` is
    /// `None` for the single account the flags make.
    pub async fn open(spec: &AccountSpec, label: Option<String>, shared: &Shared) -> anyhow::Result<Arc<Self>> {
        let config = spec.config.clone();
        let name = spec.name.clone();
        // The single account of the flags reports as the server always did; a file's names itself.
        let whose = |e: String| if label.is_some() { format!("account `{}`: {e}", spec.name) } else { e };
        let opening = config.clone();
        let (store, blobs) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let config = opening;
            let dir = config.data_dir();
            let store = Store::open(&dir, config.store_options())
                .map_err(|e| anyhow::anyhow!("cannot open the store in {}: {e}", dir.display()))?;
            let blob_dir = config.blob_dir();
            let blobs = BlobStore::open(&blob_dir, config.blob_limits())
                .map_err(|e| anyhow::anyhow!("cannot open the blob store at {}: {e}", blob_dir.display()))?;
            Ok((store, blobs))
        })
        .await
        .map_err(|e| anyhow::anyhow!("opening the store failed: {e}"))
        .and_then(|opened| opened)
        .map_err(|e| anyhow::anyhow!(whose(format!("{e:#}"))))?;
        let bus = EventBus::with_store(&store, config.bus_limits());
        let metrics = Arc::new(AccountMetrics::new());
        let background = Tasks::new();
        let front = Tasks::new();
        let built = match crate::build_backend(&config, bus.sink(), blobs.clone(), &metrics, background.clone(), &store)
        {
            Ok(b) => b,
            Err(e) => {
                close_store(store).await;
                return Err(anyhow::anyhow!(whose(format!("{e:#}"))));
            }
        };
        let crate::Built { backend, mock, official_account, ilink } = built;
        let heartbeat = Duration::from_secs(config.heartbeat_secs);
        let durable = DurableWritesLayer { store: store.clone() };
        let puppet = durable.layer(
            PuppetServer::new(PuppetService::new(backend.clone(), bus.clone(), blobs.clone(), heartbeat))
                .max_decoding_message_size(shared.max_message)
                .max_encoding_message_size(shared.max_message),
        );
        let feed = EventFeedServer::new(EventFeedService::new(bus.clone(), heartbeat));
        let mock_service = mock.map(|m| durable.layer(MockWorldServer::new(MockWorldService::new(m))));
        let oa_service = official_account.clone().map(|oa| {
            durable.layer(OfficialAccountServer::new(OfficialAccountService::new(oa, shared.front_stop.clone())))
        });
        let ilink_service = ilink.map(|i| durable.layer(IlinkServer::new(IlinkService::new(i))));
        let webhook = official_account.as_ref().map(|oa| {
            (oa.settings().webhook_path.clone(), crate::backend::official_account::webhook::router(oa.clone()))
        });
        let webhook_mode = official_account.as_ref().map(|oa| oa.settings().mode.describe());

        let mqtt = match mqtt_config(&config) {
            Ok(m) => m,
            Err(e) => {
                background.stop(ACCOUNT_GRACE).await;
                close_store(store).await;
                return Err(anyhow::anyhow!(whose(format!("{e:#}"))));
            }
        };
        let onebot = crate::onebot::settings::Settings::from_flags(&config.onebot);
        let onebot = match onebot {
            Ok(Some(settings)) => {
                crate::onebot::start(settings, backend.clone(), bus.clone(), store.clone(), blobs.clone(), &front).await
            }
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = onebot {
            front.stop(ACCOUNT_GRACE).await;
            background.stop(ACCOUNT_GRACE).await;
            close_store(store).await;
            return Err(anyhow::anyhow!(whose(format!("{e:#}"))));
        }
        if let Some(m) = mqtt.clone() {
            let (backend, bus) = (backend.clone(), bus.clone());
            front.spawn("mqtt-bridge", |stop| async move {
                if let Err(e) = crate::mqtt::run(m, backend, bus, stop).await {
                    tracing::error!(error = %e, "MQTT bridge stopped");
                }
            });
        }
        {
            // The process's readiness follows every account's login (and its backend's reach).
            let (mut login, changed) = (bus.login_state(), shared.changed.clone());
            let mut serving = backend.serving();
            background.spawn("login-watch", |stop| async move {
                loop {
                    changed.send_modify(|g| *g += 1);
                    let serving_changed = async {
                        match serving.as_mut() {
                            Some(s) => s.changed().await.is_ok(),
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        c = login.changed() => if c.is_err() { return },
                        ok = serving_changed => if !ok { return },
                    }
                }
            });
        }
        Ok(Arc::new(Self {
            name,
            label,
            fingerprint: fingerprint(spec),
            token: spec.token.as_str().into(),
            config,
            backend,
            bus,
            store,
            blobs,
            metrics,
            services: Services { puppet, feed, mock: mock_service, oa: oa_service, ilink: ilink_service },
            webhook,
            webhook_mode,
            mqtt,
            background,
            front,
        }))
    }

    /// Begins the login (`--autostart`, on by default), so the account is online before any client
    /// connects. Separate from [`Account::open`]: at start-up the banner comes first, then the QR.
    pub fn autostart(&self) {
        if !self.config.autostart {
            return;
        }
        let (backend, name) = (self.backend.clone(), self.name.clone());
        self.background.spawn_cancellable("autostart", async move {
            if let Err(e) = backend.start().await {
                tracing::error!(account = %name, error = %e, "autostart failed; a client's Start call will retry");
            }
        });
    }

    /// Whether `token` is this account's (constant time).
    pub fn token_is(&self, token: &str) -> bool {
        bool::from(subtle::ConstantTimeEq::ct_eq(token.as_bytes(), self.token.as_bytes()))
    }

    /// The account's token, for the banner only.
    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// Whether the account counts as ready (logged in, or `--ready-when started`).
    pub fn ready(&self) -> bool {
        let reachable = self.backend.serving().is_none_or(|s| *s.borrow());
        reachable && (self.config.ready_when == crate::config::ReadyWhen::Started || self.bus.logged_in())
    }

    /// Stops the account in order: its event streams end, its MQTT bridge answers what it took,
    /// its loops stop, the backend saves, and the store commits what is queued and closes.
    pub async fn close(&self) {
        self.bus.close();
        if !self.front.stop(ACCOUNT_GRACE).await {
            tracing::warn!(account = %self.name, "the MQTT bridge still runs after the grace period");
        }
        if !self.background.stop(ACCOUNT_GRACE).await {
            tracing::warn!(account = %self.name, "background tasks still running after the grace period; saving anyway");
        }
        if let Err(e) = self.backend.shutdown().await {
            tracing::error!(account = %self.name, error = %e, "saving state at shutdown failed");
        }
        close_store(self.store.clone()).await;
    }
}

async fn close_store(store: Store) {
    if tokio::task::spawn_blocking(move || store.close()).await.is_err() {
        tracing::error!("closing the store failed");
    }
}

fn mqtt_config(config: &Config) -> anyhow::Result<Option<crate::mqtt::MqttConfig>> {
    let Some(url) = config.mqtt_url.clone() else { return Ok(None) };
    let client_id = match &config.mqtt_client_id {
        Some(id) => id.clone(),
        None => crate::mqtt::default_client_id(&config.data_dir())?,
    };
    let m = crate::mqtt::MqttConfig {
        url,
        client_id,
        events: config
            .mqtt_events
            .as_ref()
            .map(|e| e.split(',').map(|s| s.trim().to_owned()).filter(|s| !s.is_empty()).collect()),
        secret: config.mqtt_secret.clone().filter(|s| !s.is_empty()),
    };
    crate::mqtt::validate(&m)?;
    Ok(Some(m))
}

/// Where a token's account is served.
#[derive(Debug)]
pub enum Found {
    /// Here.
    Here(Arc<Account>),
    /// By the pod with this ordinal.
    Elsewhere(u32),
    /// Nowhere in this deployment.
    Unknown,
}

#[derive(Default)]
struct State {
    by_digest: HashMap<[u8; 32], Arc<Account>>,
    by_name: BTreeMap<String, Arc<Account>>,
    /// Tokens of the file that other pods serve, with their owner.
    elsewhere: HashMap<[u8; 32], u32>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Accounts started.
    pub added: Vec<String>,
    /// Accounts stopped.
    pub removed: Vec<String>,
    /// Accounts stopped and started again with new settings.
    pub restarted: Vec<String>,
    /// Accounts left running as they were.
    pub unchanged: usize,
}

/// Why a reload changed nothing (or not everything).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The process was started without `--accounts`.
    #[error("the server was started without --accounts: there is no accounts file to reload")]
    NoFile,
    /// The file is refused: nothing changed.
    #[error("{0}; the running accounts are unchanged")]
    Invalid(AccountsError),
    /// A new account could not be started: nothing changed.
    #[error("{0}")]
    Start(String),
    /// Changed accounts could not be started again with their new settings: they are stopped now
    /// (the rest of the reload went through).
    #[error("{0} (these accounts are stopped now; fix the file and reload)")]
    Restart(String),
}

struct Inner {
    key: TokenKey,
    shard: Option<Shard>,
    file: Option<PathBuf>,
    process_args: Vec<OsString>,
    shared: Shared,
    state: RwLock<State>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
}

/// The accounts this process serves; cheap to clone.
#[derive(Clone)]
pub struct Accounts {
    inner: Arc<Inner>,
}

impl Accounts {
    /// An empty set. `file` and `process_args` are what reloads read; `shard` says which accounts
    /// of the file are this process's.
    pub fn new(file: Option<PathBuf>, process_args: Vec<OsString>, shard: Option<Shard>, shared: Shared) -> Self {
        Self {
            inner: Arc::new(Inner {
                key: TokenKey::random(),
                shard,
                file,
                process_args,
                shared,
                state: RwLock::new(State::default()),
                reloading: tokio::sync::Mutex::new(()),
            }),
        }
    }

    fn state(&self) -> std::sync::RwLockReadGuard<'_, State> {
        self.inner.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn state_mut(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.inner.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The sharding, when the process is one of several.
    pub fn shard(&self) -> Option<&Shard> {
        self.inner.shard.as_ref()
    }

    /// Whether the accounts came from a file (their metrics are labelled, their pages named).
    pub fn from_file(&self) -> bool {
        self.inner.file.is_some()
    }

    /// Where `token`'s account is served. The token is hashed with a key drawn at start and the
    /// digest looked up: the time taken says nothing about how close a guess was.
    pub fn find(&self, token: &str) -> Found {
        let digest = self.inner.key.digest(token);
        let state = self.state();
        if let Some(a) = state.by_digest.get(&digest) {
            return Found::Here(a.clone());
        }
        match state.elsewhere.get(&digest) {
            Some(k) => Found::Elsewhere(*k),
            None => Found::Unknown,
        }
    }

    /// The account served here for `token`.
    pub fn by_token(&self, token: &str) -> Option<Arc<Account>> {
        match self.find(token) {
            Found::Here(a) => Some(a),
            _ => None,
        }
    }

    /// The account served here named `name`.
    pub fn by_name(&self, name: &str) -> Option<Arc<Account>> {
        self.state().by_name.get(name).cloned()
    }

    /// Every account served here, by name.
    pub fn all(&self) -> Vec<Arc<Account>> {
        self.state().by_name.values().cloned().collect()
    }

    /// The account whose Official Account webhook is at `path`.
    pub fn webhook(&self, path: &str) -> Option<axum::Router> {
        self.state()
            .by_name
            .values()
            .find_map(|a| a.webhook.as_ref().filter(|(p, _)| p == path).map(|(_, r)| r.clone()))
    }

    /// A receiver told whenever an account's login state or the set of accounts changes.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.shared.changed.subscribe()
    }

    /// Whether this process owns `spec`.
    fn owns(&self, spec: &AccountSpec) -> Result<(), u32> {
        match &self.inner.shard {
            Some(shard) => match shard.owner(&spec.token) {
                k if k == shard.ordinal => Ok(()),
                k => Err(k),
            },
            None => Ok(()),
        }
    }

    fn insert(&self, account: Arc<Account>) {
        let digest = self.inner.key.digest(&account.token);
        let mut state = self.state_mut();
        state.by_digest.insert(digest, account.clone());
        state.by_name.insert(account.name.clone(), account);
        drop(state);
        self.inner.shared.changed.send_modify(|g| *g += 1);
    }

    fn remove(&self, name: &str) -> Option<Arc<Account>> {
        let mut state = self.state_mut();
        let account = state.by_name.remove(name)?;
        let digest = self.inner.key.digest(&account.token);
        // A renamed account (same token, new name) was started first and already holds the digest.
        if state.by_digest.get(&digest).is_some_and(|a| Arc::ptr_eq(a, &account)) {
            state.by_digest.remove(&digest);
        }
        drop(state);
        self.inner.shared.changed.send_modify(|g| *g += 1);
        Some(account)
    }

    /// Opens the accounts of `specs` this process owns and records which pod owns the others (their
    /// logins begin with [`Account::autostart`]). On an error, the accounts opened so far are
    /// stopped again.
    pub async fn start(&self, specs: &[AccountSpec], label: bool) -> anyhow::Result<()> {
        match self.apply(specs, label, false).await {
            Ok(_) => Ok(()),
            Err(ReloadError::Start(e) | ReloadError::Restart(e)) => Err(anyhow::anyhow!(e)),
            Err(e) => Err(anyhow::anyhow!("{e}")),
        }
    }

    /// Rereads the accounts file: starts new accounts, stops removed ones, restarts changed ones;
    /// the others keep running untouched. A bad file changes nothing.
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let Some(file) = self.inner.file.clone() else { return Err(ReloadError::NoFile) };
        let args = self.inner.process_args.clone();
        let specs = tokio::task::spawn_blocking(move || crate::accounts::load(&file, &args))
            .await
            .map_err(|e| ReloadError::Start(format!("reading the accounts file failed: {e}")))?
            .map_err(ReloadError::Invalid)?;
        self.apply(&specs, true, true).await.map_err(|e| match e {
            ReloadError::Start(e) => ReloadError::Start(format!("{e}; the running accounts are unchanged")),
            e => e,
        })
    }

    /// Brings the running set to `specs`; accounts it starts log in at once when `autostart`
    /// (a reload), or when the caller says so (start-up, after the banner).
    async fn apply(&self, specs: &[AccountSpec], label: bool, autostart: bool) -> Result<Reloaded, ReloadError> {
        let _one_at_a_time = self.inner.reloading.lock().await;
        let mut elsewhere = HashMap::new();
        let mut wanted: BTreeMap<&str, &AccountSpec> = BTreeMap::new();
        for spec in specs {
            match self.owns(spec) {
                Ok(()) => _ = wanted.insert(spec.name.as_str(), spec),
                Err(k) => _ = elsewhere.insert(self.inner.key.digest(&spec.token), k),
            }
        }
        let running: BTreeMap<String, Arc<Account>> = self.state().by_name.clone();
        let mut done = Reloaded::default();
        // New accounts first: if one cannot start, the others started for it are stopped again
        // and the running set is as it was.
        let mut started = Vec::new();
        for (name, spec) in &wanted {
            if running.contains_key(*name) {
                continue;
            }
            let label = label.then(|| name.to_string());
            match Account::open(spec, label, &self.inner.shared).await {
                Ok(a) => started.push(a),
                Err(e) => {
                    for a in started {
                        a.close().await;
                    }
                    return Err(ReloadError::Start(format!("{e:#}")));
                }
            }
        }
        for a in started {
            tracing::info!(account = %a.name, backend = a.backend.name(), "account started");
            done.added.push(a.name.clone());
            if autostart {
                a.autostart();
            }
            self.insert(a);
        }
        self.state_mut().elsewhere = elsewhere;
        let mut failures = Vec::new();
        for (name, old) in running {
            match wanted.get(name.as_str()) {
                None => {
                    if let Some(a) = self.remove(&name) {
                        a.close().await;
                    }
                    tracing::info!(account = %name, "account stopped");
                    done.removed.push(name);
                }
                Some(spec) if fingerprint(spec) != old.fingerprint => {
                    // The store is the account's own file: the old instance lets go of it (calls
                    // in flight finish) before the new one opens it.
                    let (label, released) = (old.label.clone(), old.store.on_release());
                    drop(old);
                    if let Some(a) = self.remove(&name) {
                        a.close().await;
                    }
                    if tokio::time::timeout(RELEASE_WAIT, released).await.is_err() {
                        failures.push(format!(
                            "account `{name}`: its old instance was still in use after {RELEASE_WAIT:?}"
                        ));
                        continue;
                    }
                    match Account::open(spec, label, &self.inner.shared).await {
                        Ok(a) => {
                            tracing::info!(account = %name, "account restarted with new settings");
                            a.autostart();
                            self.insert(a);
                            done.restarted.push(name);
                        }
                        Err(e) => {
                            failures.push(format!("{e:#}"));
                            tracing::error!(account = %name, error = %format!("{e:#}"), "account could not restart");
                        }
                    }
                }
                Some(_) => done.unchanged += 1,
            }
        }
        if failures.is_empty() { Ok(done) } else { Err(ReloadError::Restart(failures.join("; "))) }
    }

    /// Stops every account (the process is stopping).
    pub async fn close_all(&self) {
        let all: Vec<Arc<Account>> = {
            let mut state = self.state_mut();
            state.by_digest.clear();
            std::mem::take(&mut state.by_name).into_values().collect()
        };
        let mut closing = tokio::task::JoinSet::new();
        for a in all {
            closing.spawn(async move { a.close().await });
        }
        while closing.join_next().await.is_some() {}
    }
}

/// The specs of `config`'s accounts — the file's, or the one account the flags make — and where
/// the single account's token came from (a file's tokens are given). Reads files: blocking.
pub fn specs_of(
    config: &Config,
    process_args: &[OsString],
) -> anyhow::Result<(Vec<AccountSpec>, crate::config::TokenSource)> {
    match &config.accounts {
        Some(file) => Ok((
            crate::accounts::load(file, process_args).map_err(|e| anyhow::anyhow!("{e}"))?,
            crate::config::TokenSource::Given,
        )),
        None => {
            let (token, source) = config.resolve_token()?;
            Ok((vec![AccountSpec { name: "default".into(), token, config: config.clone(), line: 0 }], source))
        }
    }
}

/// A gRPC service routed to the account the call's token names: `pick` takes the account's own
/// instance (or `None` when its backend has no such service).
pub struct Routed<S> {
    accounts: Accounts,
    throttle: AuthThrottle,
    pick: fn(&Account) -> Option<S>,
}

impl<S> Clone for Routed<S> {
    fn clone(&self) -> Self {
        Self { accounts: self.accounts.clone(), throttle: self.throttle.clone(), pick: self.pick }
    }
}

impl<S> Routed<S> {
    /// Routes to `pick(account)`; failed tokens count toward `throttle`.
    pub fn new(accounts: Accounts, throttle: AuthThrottle, pick: fn(&Account) -> Option<S>) -> Self {
        Self { accounts, throttle, pick }
    }
}

impl<S: NamedService> NamedService for Routed<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> Service<http::Request<B>> for Routed<S>
where
    S: NamedService,
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is the account's service's: asked in `call`, once the account is known.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let answer = |status: Status| -> Self::Future { Box::pin(std::future::ready(Ok(status.into_http()))) };
        let account = match crate::grpc::auth::authenticate(&req, &self.throttle, |t| self.accounts.by_token(t)) {
            Ok(a) => a,
            Err(status) => return answer(status),
        };
        match (self.pick)(&account) {
            Some(service) => Box::pin(service.oneshot(req)),
            None => answer(Status::unimplemented(format!(
                "{} is not served for account `{}`: its backend is {}",
                S::NAME,
                account.name,
                account.backend.name()
            ))),
        }
    }
}

/// Discovery's answer for a token: the owner's host and port.
pub fn discover(accounts: &Accounts, token: &str, here: &str, port: u16) -> Option<(String, u16)> {
    match accounts.find(token) {
        Found::Here(_) => Some((here.to_owned(), port)),
        Found::Elsewhere(k) => accounts.shard().map(|s| (s.host_of(k), port)),
        Found::Unknown => None,
    }
}
