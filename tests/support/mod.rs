//! Shared helpers for the end-to-end tests: a real server on `127.0.0.1:0`
//! with a database of its own (a SQLite file, or a fresh PostgreSQL
//! database), driven through the real client; and the [`conformance!`] macro
//! that runs every test on both engines.

use std::io::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Once};
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, pb};
use modelreg_server::policy::PolicyEngine;
use modelreg_server::{Application, Settings, StartError};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub mod calls;
pub mod consumers;
pub mod fixtures;
pub mod http;
pub mod tokens;

pub use calls::*;
pub use fixtures::*;
pub use tokens::*;

/// The variable naming a PostgreSQL server (the URL of a role with
/// CREATEDB: each test creates a database of its own and drops it) for the
/// PostgreSQL half of the conformance suite; `scripts/test.sh` sets it.
pub const POSTGRES_URL_VAR: &str = "MODELREG_TEST_POSTGRES_URL";
/// When set to 1 (as in CI), a missing PostgreSQL fails the tests instead of
/// skipping their PostgreSQL half.
pub const REQUIRE_POSTGRES_VAR: &str = "MODELREG_REQUIRE_POSTGRES";

/// Runs each named test function (`async fn name(db: TestDb)`) once on
/// SQLite and once on PostgreSQL, as the tests `name::sqlite` and
/// `name::postgres`.
#[macro_export]
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    super::$name($crate::TestDb::sqlite()).await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(db) = $crate::TestDb::postgres().await {
                        super::$name(db).await
                    }
                }
            }
        )*
    };
}

/// Which database engine a test database lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// A SQLite file in a temporary folder.
    Sqlite,
    /// A fresh database on the PostgreSQL server of the environment.
    Postgres,
}

/// A database of its own for one test; removed when the last clone drops.
#[derive(Clone)]
pub struct TestDb {
    /// The URL the server is started with.
    pub url: String,
    /// The engine.
    pub engine: Engine,
    /// Removes the database at the end.
    _guard: Arc<DbGuard>,
}

enum DbGuard {
    Dir(#[allow(dead_code)] tempfile::TempDir),
    Postgres {
        admin_url: String,
        name: String,
    },
    /// A database the test manages itself (see [`TestDb::external`]).
    External,
}

impl Drop for DbGuard {
    fn drop(&mut self) {
        if let DbGuard::Postgres { admin_url, name } = self {
            let (admin_url, name) = (admin_url.clone(), name.clone());
            // Best effort, on a thread of its own: Drop cannot await.
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                if let Ok(rt) = rt {
                    rt.block_on(async {
                        use sqlx::Connection;
                        if let Ok(mut c) = sqlx::PgConnection::connect(&admin_url).await {
                            let _ = sqlx::query(&format!(
                                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                            ))
                            .execute(&mut c)
                            .await;
                        }
                    });
                }
            })
            .join();
        }
    }
}

static SKIP_NOTICE: Once = Once::new();

impl TestDb {
    /// A new SQLite file in a new temporary folder.
    pub fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = format!("sqlite://{}", dir.path().join("registry.db").display());
        TestDb {
            url,
            engine: Engine::Sqlite,
            _guard: Arc::new(DbGuard::Dir(dir)),
        }
    }

    /// A new database on the PostgreSQL server named by
    /// `MODELREG_TEST_POSTGRES_URL`; `None` (with a notice on stderr) when
    /// there is none, unless `MODELREG_REQUIRE_POSTGRES=1`.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(admin_url) = std::env::var(POSTGRES_URL_VAR) else {
            if std::env::var(REQUIRE_POSTGRES_VAR).as_deref() == Ok("1") {
                panic!("{REQUIRE_POSTGRES_VAR}=1 but {POSTGRES_URL_VAR} is not set");
            }
            SKIP_NOTICE.call_once(|| {
                // Written past the test harness's capture so a person sees it.
                let _ = writeln!(
                    std::io::stderr(),
                    "\nSKIPPED: the PostgreSQL half of the conformance suite ({POSTGRES_URL_VAR} is not set; `bash scripts/test.sh` starts PostgreSQL and sets it)\n"
                );
            });
            return None;
        };
        use sqlx::Connection;
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let name = format!(
            "modelreg_test_{}_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            modelreg_server::clock::now_micros() % 1_000_000
        );
        let mut admin = sqlx::PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at {POSTGRES_URL_VAR}: {e}"));
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        let (base, _) = admin_url.rsplit_once('/').expect("URL with a database");
        Some(TestDb {
            url: format!("{base}/{name}"),
            engine: Engine::Postgres,
            _guard: Arc::new(DbGuard::Postgres { admin_url, name }),
        })
    }

    /// A database at `url` that the caller owns and removes itself: a
    /// throwaway PostgreSQL cluster of a fault test, say.
    pub fn external(url: String, engine: Engine) -> TestDb {
        TestDb {
            url,
            engine,
            _guard: Arc::new(DbGuard::External),
        }
    }

    /// Runs one SQL statement directly on the database, behind the server's back.
    pub async fn execute(&self, sql: &str) -> Result<(), sqlx::Error> {
        use sqlx::Connection;
        match self.engine {
            Engine::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url).await?;
                sqlx::query(sql).execute(&mut c).await.map(|_| ())
            }
            Engine::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url).await?;
                sqlx::query(sql).execute(&mut c).await.map(|_| ())
            }
        }
    }
}

/// The `modelreg` CLI, built next to the running test (`target/debug/modelreg`
/// by `cargo build --workspace --bins`), for the tests that run it.
pub fn modelreg_bin() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/dashboard-… → target/debug/modelreg
    exe.ancestors()
        .skip(1)
        .map(|dir| dir.join(format!("modelreg{}", std::env::consts::EXE_SUFFIX)))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "the modelreg binary was not found near {}: run cargo build --workspace --bins",
                exe.display()
            )
        })
}

/// A running server and what a test needs to reach it.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://addr`.
    pub url: String,
    /// Where the HTTP listener (`/metrics`) listens, when the settings turned it on.
    pub http_addr: Option<SocketAddr>,
    /// Its database.
    pub db: TestDb,
    /// A client acting as `tester`.
    pub client: RegistryClient,
    /// Runs the server's policy rules at a time the test chooses.
    pub policy: PolicyEngine,
    /// Fires the server's shutdown.
    shutdown: Option<oneshot::Sender<()>>,
    /// The server task.
    handle: Option<JoinHandle<Result<(), StartError>>>,
}

/// Heartbeats come fast in tests so bookmark checks do not wait long.
pub const TEST_HEARTBEAT: Duration = Duration::from_millis(200);

/// The policy loop's interval in tests: never within a test, which runs
/// ticks itself through [`TestApp::policy`] (a test of the loop sets its own).
pub const TEST_POLICY_INTERVAL: Duration = Duration::from_secs(86_400);

/// Starts a server on `db` on 127.0.0.1:0.
pub async fn spawn_app(db: &TestDb) -> TestApp {
    spawn_app_with(db, |_| {}).await
}

/// Starts a server on `db` on 127.0.0.1:0 with the settings changed by
/// `configure` (a token file, say). Its `client` acts as `tester` with no
/// token, so with a token file tests make clients of their own.
pub async fn spawn_app_with(db: &TestDb, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let mut settings = Settings::for_database(db.url.clone());
    settings.heartbeat_interval = TEST_HEARTBEAT;
    settings.policy_interval = TEST_POLICY_INTERVAL;
    configure(&mut settings);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local addr");
    let app = Application::build(settings).await.expect("server builds");
    let http_addr = app.http_addr();
    let policy = app.policy_engine();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(app.run_until_stopped(listener, async {
        let _ = rx.await;
    }));
    let url = format!("http://{addr}");
    let client = client_for(&url, "tester").await;
    TestApp {
        addr,
        url,
        http_addr,
        db: db.clone(),
        client,
        policy,
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

    /// The status health checking reports for `service` ("" for the whole
    /// server), over a connection of its own.
    pub async fn health(&self, service: &str) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("server URL")
            .connect()
            .await
            .expect("health connects: the server itself stays up");
        tonic_health::pb::health_client::HealthClient::new(channel)
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner()
            .status
    }

    /// Shuts the server down gracefully and waits for it; the database stays.
    pub async fn stop(mut self) -> TestDb {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(handle) = self.handle.take() {
            handle
                .await
                .expect("server task")
                .expect("server stops cleanly");
        }
        self.db.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// The policy of models whose tests are about the lifecycle itself: no
/// stage needs approval, so every allowed move applies at once. Governance
/// tests create models with the default policy (or their own).
pub fn ungoverned() -> pb::Policy {
    pb::Policy {
        approval_required_for: Some(pb::StageList { stages: vec![] }),
        ..Default::default()
    }
}

/// Creates a model with the [`ungoverned`] policy.
pub async fn create_model(client: &mut RegistryClient, name: &str) -> pb::Model {
    let req = pb::CreateModelRequest {
        name: name.into(),
        description: format!("{name} for tests"),
        policy: Some(ungoverned()),
        ..Default::default()
    };
    let created = client.create_model(req).await.expect("create model");
    created.into_inner().model.expect("model")
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

/// Registers `count` versions of `model` in `stage`.
pub async fn register_many(
    client: &mut RegistryClient,
    model: &str,
    count: usize,
    stage: pb::Stage,
) {
    for _ in 0..count {
        register(client, model, stage).await;
    }
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

/// Every event of the log, checked as a long run of writes must leave it:
/// the sequences are exactly 1..N and the hash chain verifies. Returns the
/// log and the audit's verdict.
pub async fn checked_log(
    client: &mut RegistryClient,
) -> (Vec<pb::RegistryEvent>, pb::VerifyAuditLogResponse) {
    let log = all_events(client).await;
    let seqs: Vec<u64> = log.iter().map(|e| e.sequence).collect();
    assert_eq!(
        seqs,
        (1..=log.len() as u64).collect::<Vec<_>>(),
        "event sequences are not exactly 1..N"
    );
    let audit = verify_audit(client).await;
    assert!(audit.ok, "audit log broken at {}", audit.first_bad_sequence);
    (log, audit)
}

/// Every event matching `req`, through ListEvents pages of 1000.
pub async fn list_events(
    client: &mut RegistryClient,
    mut req: pb::ListEventsRequest,
) -> Vec<pb::RegistryEvent> {
    req.page_size = 1000;
    all_pages(|page_token| {
        let mut client = client.clone();
        let req = pb::ListEventsRequest {
            page_token,
            ..req.clone()
        };
        async move {
            let resp = client
                .list_events(req)
                .await
                .expect("list events")
                .into_inner();
            (resp.events, resp.next_page_token)
        }
    })
    .await
}

/// Every item of a paged list, first page to last: `fetch(page_token)`
/// returns one page and the next page token (empty on the last page).
pub async fn all_pages<T, F, Fut>(mut fetch: F) -> Vec<T>
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = (Vec<T>, String)>,
{
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (page, next) = fetch(token).await;
        items.extend(page);
        if next.is_empty() {
            return items;
        }
        token = next;
    }
}

/// Listens for SIGHUP in this process, so that the signal a test sends with
/// [`send_hangup`] never takes its default action (ending the test binary).
/// Keep it until the test ends.
#[cfg(unix)]
pub fn catch_hangups() -> tokio::signal::unix::Signal {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .expect("listen for SIGHUP")
}

/// Sends SIGHUP to this process: a server running in it re-reads its token
/// file.
#[cfg(unix)]
pub fn send_hangup() {
    let kill = std::process::Command::new("sh")
        .args(["-c", "kill -HUP \"$1\"", "sh"])
        .arg(std::process::id().to_string())
        .status()
        .expect("run sh");
    assert!(kill.success());
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

/// Makes `changes` mutating calls on the models `models`, mixing
/// registrations, stage moves (some superseding: two events in one
/// transaction) and alias moves.
pub async fn write_changes(mut c: RegistryClient, models: Vec<String>, changes: usize, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut done = 0;
    while done < changes {
        let model = &models[rng.below(models.len() as u64) as usize];
        let v = register(&mut c, model, pb::Stage::Staging).await.version;
        done += 1;
        if done < changes {
            // Promotions race across writers on the same model; each applies.
            transition(&mut c, model, v, pb::Stage::Production)
                .await
                .expect("promote");
            done += 1;
        }
        if done < changes && rng.below(3) == 0 {
            c.set_alias(pb::SetAliasRequest {
                model: model.clone(),
                alias: "champion".into(),
                version: v,
            })
            .await
            .expect("alias");
            done += 1;
        }
    }
}
