//! Shared helpers for the end-to-end tests: a real server on `127.0.0.1:0`
//! with its own SQLite file, driven through the real client.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, pb};
use modelreg_server::{Application, Settings, StartError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A running server and what a test needs to reach it.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    /// The database URL, to restart on the same data.
    pub database_url: String,
    /// The folder holding the database; deleted when the last holder drops it.
    pub dir: Arc<tempfile::TempDir>,
    /// A client acting as `tester`.
    pub client: RegistryClient,
    /// Fires the server's shutdown.
    shutdown: Option<oneshot::Sender<()>>,
    /// The server task.
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

/// Heartbeats come fast in tests so bookmark checks do not wait long.
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(200);

/// Starts a server with a fresh database in a new temporary folder.
pub async fn spawn_app() -> TestApp {
    let dir = Arc::new(tempfile::tempdir().expect("temp dir"));
    spawn_app_in(dir).await
}

/// Starts a server on the database in `dir` (created if missing).
pub async fn spawn_app_in(dir: Arc<tempfile::TempDir>) -> TestApp {
    let path: PathBuf = dir.path().join("registry.db");
    let database_url = format!("sqlite://{}", path.display());
    let mut settings = Settings::for_database(database_url.clone());
    settings.heartbeat_interval = TEST_HEARTBEAT;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let app = Application::build(settings).await.expect("server builds");
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(listener, async {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}");
    let client = client_for(&url, "tester").await;
    TestApp {
        addr,
        url,
        database_url,
        dir,
        client,
        shutdown: Some(tx),
        handle: Some(handle),
    }
}

/// A new connection to `url` acting as `actor`.
pub async fn client_for(url: &str, actor: &str) -> RegistryClient {
    modelreg_client::connect(&ConnectOptions::new(url).actor(actor))
        .await
        .expect("connect to test server")
}

impl TestApp {
    /// A new connection acting as `actor`.
    pub async fn client_as(&self, actor: &str) -> RegistryClient {
        client_for(&self.url, actor).await
    }

    /// Shuts the server down gracefully and waits for it; the database stays.
    pub async fn stop(mut self) -> Arc<tempfile::TempDir> {
        self.shutdown_and_wait().await;
        self.dir.clone()
    }

    async fn shutdown_and_wait(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// Creates a model named `name`.
pub async fn create_model(client: &mut RegistryClient, name: &str) -> pb::Model {
    client
        .create_model(pb::CreateModelRequest {
            name: name.into(),
            description: format!("{name} for tests"),
            ..Default::default()
        })
        .await
        .expect("create model")
        .into_inner()
        .model
        .expect("model")
}

/// Registers a version of `model` in `stage` (NONE or STAGING).
pub async fn register(
    client: &mut RegistryClient,
    model: &str,
    stage: pb::Stage,
) -> pb::ModelVersion {
    client
        .register_version(pb::RegisterVersionRequest {
            model: model.into(),
            artifact_uri: format!("s3://models/{model}/artifact"),
            target_stage: stage as i32,
            ..Default::default()
        })
        .await
        .expect("register version")
        .into_inner()
        .version
        .expect("version")
}

/// Moves a version, returning the result of the call.
pub async fn transition(
    client: &mut RegistryClient,
    model: &str,
    version: i64,
    stage: pb::Stage,
) -> Result<pb::ModelVersion, tonic::Status> {
    client
        .transition_stage(pb::TransitionStageRequest {
            model: model.into(),
            version,
            target_stage: stage as i32,
            comment: format!("to {}", stage.as_str_name()),
            etag: String::new(),
        })
        .await
        .map(|r| {
            r.into_inner()
                .version
                .expect("applied move returns the version")
        })
}

/// Every event of the log, through ListEvents pages.
pub async fn all_events(client: &mut RegistryClient) -> Vec<pb::RegistryEvent> {
    list_events(client, pb::ListEventsRequest::default()).await
}

/// Every event matching `req`, through ListEvents pages of 1000.
pub async fn list_events(
    client: &mut RegistryClient,
    mut req: pb::ListEventsRequest,
) -> Vec<pb::RegistryEvent> {
    let mut out = Vec::new();
    req.page_size = 1000;
    loop {
        let resp = client
            .list_events(req.clone())
            .await
            .expect("list events")
            .into_inner();
        out.extend(resp.events);
        if resp.next_page_token.is_empty() {
            return out;
        }
        req.page_token = resp.next_page_token;
    }
}

/// A small deterministic random generator (xorshift64*), so test runs repeat.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed` (non-zero).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next number in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1)
    }
}
