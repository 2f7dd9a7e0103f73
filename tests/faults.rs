//! Faults: the PostgreSQL server stopped (`pg_ctl stop -m immediate`) and
//! started again under write load. Calls fail with UNAVAILABLE within their
//! deadline (never INTERNAL, never SQL text), health turns NOT_SERVING and
//! back to SERVING by itself, and every write acknowledged before, during
//! and after the outage is present exactly once (unknown outcomes are
//! retried with the same request id), with a contiguous, verified log.
//!
//! The test runs its own throwaway cluster (initdb into a temporary folder,
//! reached by a Unix socket in that folder, no TCP port) so stopping it
//! disturbs no other test. Without PostgreSQL
//! binaries it is skipped with a notice, unless `MODELREG_REQUIRE_POSTGRES=1`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    Engine, REQUIRE_POSTGRES_VAR, TestApp, TestDb, all_events, create_model, spawn_app,
    verify_audit,
};
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

/// The deadline of every write: a call must end by then, one way or another.
const CALL_DEADLINE: Duration = Duration::from_secs(15);
const WRITERS: usize = 4;

/// The port number in the name of the cluster's socket file. It names no TCP
/// port: the cluster listens only on a Unix socket in a folder of its own,
/// so no other process can take its address between a stop and a start.
const SOCKET_PORT: u16 = 5432;

/// A PostgreSQL cluster of this test's own, stopped when dropped.
struct Cluster {
    /// The PostgreSQL binaries.
    bin: PathBuf,
    /// The data directory (inside `_dir`).
    data: PathBuf,
    /// Holds the folder (data, socket and log) until the end.
    _dir: tempfile::TempDir,
}

/// The newest installed PostgreSQL's `bin` folder.
fn postgres_bin() -> Option<PathBuf> {
    let mut dirs: Vec<(Vec<u32>, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|e| {
            let e = e.ok()?;
            let version = e
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((version, bin))
        })
        .collect();
    dirs.sort();
    dirs.pop().map(|(_, bin)| bin)
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

impl Cluster {
    /// A PostgreSQL command: as the `postgres` user when this runs as root
    /// (initdb and the server refuse root).
    fn command(&self, tool: &str) -> Command {
        cluster_command(&self.bin, tool)
    }

    /// Initialises and starts a cluster; `None` when PostgreSQL is not installed.
    fn start_new() -> Option<Cluster> {
        let bin = postgres_bin()?;
        let dir = tempfile::tempdir().expect("temp dir");
        if is_root() {
            let ok = Command::new("chown")
                .arg("postgres:")
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown the cluster folder to postgres");
        }
        let data = dir.path().join("data");
        let out = cluster_command(&bin, "initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Cluster {
            bin,
            data,
            _dir: dir,
        };
        cluster.start();
        Some(cluster)
    }

    /// The folder of the cluster's Unix socket (and its log).
    fn socket_dir(&self) -> &Path {
        self.data.parent().expect("folder")
    }

    /// The URL of the `postgres` database over the cluster's socket.
    fn url(&self) -> String {
        format!(
            "postgres://postgres@localhost/postgres?host={}&port={SOCKET_PORT}",
            self.socket_dir().display()
        )
    }

    /// `pg_ctl start`, waiting until it accepts connections.
    fn start(&self) {
        let socket_dir = self.socket_dir();
        let log = socket_dir.join("server.log");
        let out = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .arg("-o")
            .arg(format!(
                "-p {SOCKET_PORT} -k {} -c listen_addresses='' -c fsync=on",
                socket_dir.display()
            ))
            .args(["-w", "-t", "60", "start"])
            .output()
            .expect("pg_ctl start runs");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `pg_ctl stop -m immediate`: every backend killed, no checkpoint, as
    /// in a crash of the database server.
    fn stop_immediately(&self) -> bool {
        self.command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "stop"])
            .output()
            .is_ok_and(|o| o.status.success())
    }
}

fn cluster_command(bin: &Path, tool: &str) -> Command {
    let program = bin.join(tool);
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.stop_immediately();
    }
}

/// What the writers have seen.
#[derive(Default)]
struct Ledger {
    /// Request id → the version number the server acknowledged.
    acked: BTreeMap<String, i64>,
    /// Refusals during the outage: (code, message, time the call took).
    failures: Vec<(Code, String, Duration)>,
    /// Codes no outage may produce, with their messages.
    wrong: Vec<String>,
}

/// Registers versions with request ids until `stop`; a call that fails is
/// retried with the same request id until it is acknowledged.
async fn writer(
    mut c: RegistryClient,
    id: usize,
    ledger: Arc<Mutex<Ledger>>,
    acks: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) {
    let mut n = 0;
    while !stop.load(Ordering::SeqCst) {
        let request_id = format!("w{id}-{n}");
        loop {
            let mut req = tonic::Request::new(pb::RegisterVersionRequest {
                model: "faulty".into(),
                artifact_uri: format!("s3://models/faulty/{request_id}"),
                request_id: request_id.clone(),
                ..Default::default()
            });
            req.set_timeout(CALL_DEADLINE);
            let t = Instant::now();
            match c.register_version(req).await {
                Ok(resp) => {
                    let version = resp.into_inner().version.expect("version").version;
                    ledger
                        .lock()
                        .unwrap()
                        .acked
                        .insert(request_id.clone(), version);
                    acks.fetch_add(1, Ordering::SeqCst);
                    break;
                }
                Err(status) => {
                    let took = t.elapsed();
                    let message = status.message().to_lowercase();
                    let leaks = ["select", "insert", "sqlx", "postgres", "syntax", "relation"]
                        .iter()
                        .any(|m| message.contains(m));
                    {
                        let mut ledger = ledger.lock().unwrap();
                        if !matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded)
                            || leaks
                        {
                            ledger.wrong.push(format!(
                                "{request_id}: {:?} {:?}",
                                status.code(),
                                status.message()
                            ));
                        }
                        ledger
                            .failures
                            .push((status.code(), status.message().to_owned(), took));
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        n += 1;
    }
}

/// Polls health until it is `want`, for at most `within`; returns how long it took.
async fn wait_health(app: &TestApp, want: ServingStatus, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if app.health("modelreg.v1.ModelRegistryService").await == want as i32 {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "health did not turn {want:?} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_acks(acks: &AtomicU64, at_least: u64, within: Duration, what: &str) {
    let start = Instant::now();
    while acks.load(Ordering::SeqCst) < at_least {
        assert!(
            start.elapsed() < within,
            "{what}: only {} of {at_least} writes acknowledged within {within:?}",
            acks.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// PostgreSQL stopped and started under write load: fast UNAVAILABLE, health
/// NOT_SERVING then SERVING again by itself, nothing acknowledged lost or
/// doubled, the log contiguous and verified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_and_started_under_load_loses_nothing() {
    // Arrange
    let Some(cluster) = Cluster::start_new() else {
        if std::env::var(REQUIRE_POSTGRES_VAR).as_deref() == Ok("1") {
            panic!("{REQUIRE_POSTGRES_VAR}=1 but no PostgreSQL binaries under /usr/lib/postgresql");
        }
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: the PostgreSQL fault test (no PostgreSQL binaries under /usr/lib/postgresql)\n"
        );
        return;
    };
    let db = TestDb::external(cluster.url(), Engine::Postgres);
    let mut app = spawn_app(&db).await;
    create_model(&mut app.client, "faulty").await;
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let acks = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for i in 0..WRITERS {
        let c = app.client_as(&format!("writer-{i}")).await;
        writers.push(tokio::spawn(writer(
            c,
            i,
            ledger.clone(),
            acks.clone(),
            stop.clone(),
        )));
    }
    wait_acks(&acks, 100, Duration::from_secs(60), "before the outage").await;

    // Act 1: the database goes away mid-load.
    assert!(cluster.stop_immediately(), "pg_ctl stop -m immediate");
    let acked_at_stop = acks.load(Ordering::SeqCst);
    let not_serving_after =
        wait_health(&app, ServingStatus::NotServing, Duration::from_secs(40)).await;
    // Every writer has had its calls refused by now.
    let outage_start = Instant::now();
    while ledger.lock().unwrap().failures.len() < WRITERS * 2 {
        assert!(
            outage_start.elapsed() < CALL_DEADLINE * 3,
            "writes did not fail while the database was down"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let acked_while_down = acks.load(Ordering::SeqCst) - acked_at_stop;

    // Act 2: the database comes back; nobody restarts the server.
    cluster.start();
    let serving_after = wait_health(&app, ServingStatus::Serving, Duration::from_secs(40)).await;
    let acked_at_start = acks.load(Ordering::SeqCst);
    wait_acks(
        &acks,
        acked_at_start + 100,
        Duration::from_secs(60),
        "after the restart",
    )
    .await;
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }

    // Assert: the refusals were the right ones.
    let ledger = Arc::try_unwrap(ledger).ok().unwrap().into_inner().unwrap();
    assert!(
        ledger.wrong.is_empty(),
        "wrong refusals: {:#?}",
        ledger.wrong
    );
    let unavailable: Vec<Duration> = ledger
        .failures
        .iter()
        .filter(|(code, _, _)| *code == Code::Unavailable)
        .map(|(_, _, took)| *took)
        .collect();
    assert!(
        !unavailable.is_empty(),
        "at least some calls ended with UNAVAILABLE rather than only at their deadline: {:?}",
        ledger.failures.iter().map(|f| f.0).collect::<Vec<_>>()
    );

    // Assert: every acknowledged write is there once; retries doubled none.
    let versions = modelreg_tests::all_versions(&mut app.client, "faulty").await;
    let acked: Vec<i64> = {
        let mut v: Vec<i64> = ledger.acked.values().copied().collect();
        v.sort();
        v
    };
    let stored: Vec<i64> = versions.iter().map(|v| v.version).collect();
    assert_eq!(
        stored,
        acked,
        "the stored versions are exactly the acknowledged ones ({} acknowledged)",
        acked.len()
    );
    for (request_id, version) in ledger.acked.iter().step_by(7) {
        // Request ids are scoped to the caller: the retry comes from the
        // writer that sent `w{i}-{n}` first.
        let writer = request_id
            .strip_prefix('w')
            .and_then(|rest| rest.split_once('-'))
            .map(|(i, _)| i)
            .expect("request ids are w{i}-{n}");
        let again = app
            .client_as(&format!("writer-{writer}"))
            .await
            .register_version(pb::RegisterVersionRequest {
                model: "faulty".into(),
                artifact_uri: format!("s3://models/faulty/{request_id}"),
                request_id: request_id.clone(),
                ..Default::default()
            })
            .await
            .expect("retry")
            .into_inner()
            .version
            .unwrap();
        assert_eq!(
            again.version, *version,
            "a retry of {request_id} returns the original"
        );
    }
    let events = all_events(&mut app.client).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "events are contiguous");
    }
    assert_eq!(
        events.len(),
        acked.len() + 1,
        "one event per version, plus the model's"
    );
    let audit = verify_audit(&mut app.client).await;
    assert!(audit.ok, "audit log verifies: {audit:?}");

    let fastest = unavailable.iter().min().unwrap();
    let slowest = unavailable.iter().max().unwrap();
    eprintln!(
        "postgres fault: {} writes acknowledged ({} while down), {} refusals during the outage \
         (UNAVAILABLE after {fastest:?} to {slowest:?}; {} at the {CALL_DEADLINE:?} deadline); \
         NOT_SERVING {not_serving_after:?} after the stop, SERVING {serving_after:?} after the start",
        acked.len(),
        acked_while_down,
        ledger.failures.len(),
        ledger
            .failures
            .iter()
            .filter(|f| f.0 == Code::DeadlineExceeded)
            .count(),
    );
    drop(app);
    drop(cluster);
}

/// A small tmpfs mounted for one test, unmounted when dropped.
struct TinyDisk {
    /// The mount point (a temporary folder).
    dir: tempfile::TempDir,
}

impl TinyDisk {
    /// Mounts a tmpfs of `size` (e.g. `16m`); `None` where mounting is not
    /// permitted (not root, or a container without the capability).
    fn mount(size: &str) -> Option<TinyDisk> {
        if !is_root() {
            return None;
        }
        let dir = tempfile::tempdir().ok()?;
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then_some(TinyDisk { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes a file until the disk is full; returns its path.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).and_then(|_| f.sync_data()).is_ok() {}
        // The last partial chunk: byte by byte until nothing fits.
        while f.write_all(&[0]).and_then(|_| f.sync_data()).is_ok() {}
        path
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        // Lazily: a server still closing its files must not keep it mounted.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// A version whose 64 tags of 4 KiB make every write need fresh disk space.
fn heavy_version(request_id: &str) -> pb::RegisterVersionRequest {
    pb::RegisterVersionRequest {
        model: "full".into(),
        artifact_uri: format!("s3://models/full/{request_id}"),
        request_id: request_id.into(),
        tags: (0..64)
            .map(|i| {
                (
                    format!("t{i}"),
                    format!("{request_id}-{i}-").repeat(1000)[..4000].to_owned(),
                )
            })
            .collect(),
        ..Default::default()
    }
}

/// The SQLite database's disk full: writes fail with UNAVAILABLE (never
/// INTERNAL, never SQL text) and change nothing, reads go on, and once space
/// returns the same requests succeed; every acknowledged write is there once
/// and the log verifies. Skipped with a notice where tmpfs cannot be mounted.
/// (It found that the SQLite writer never recovered: after a failed COMMIT
/// SQLite had rolled back by itself while sqlx still counted the transaction
/// open, refusing every later BEGIN; the writer now replaces its connection.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_refuses_writes_and_recovers() {
    // Arrange
    let Some(disk) = TinyDisk::mount("16m") else {
        let _ = writeln!(
            std::io::stderr(),
            "\nSKIPPED: the SQLite disk-full test (mounting a tmpfs needs root and the mount capability)\n"
        );
        return;
    };
    let db = TestDb::external(
        format!("sqlite://{}", disk.path().join("registry.db").display()),
        Engine::Sqlite,
    );
    let mut app = spawn_app(&db).await;
    create_model(&mut app.client, "full").await;
    let mut acked = BTreeMap::new();
    for i in 0..3 {
        let id = format!("before-{i}");
        let v = app
            .client
            .register_version(heavy_version(&id))
            .await
            .expect("room left");
        acked.insert(id, v.into_inner().version.unwrap().version);
    }

    // Act 1: the disk fills up.
    let filler = disk.fill();
    let before = all_events(&mut app.client).await.len();
    let mut refused = Vec::new();
    for i in 0..40 {
        let id = format!("full-{i}");
        match app.client.register_version(heavy_version(&id)).await {
            Ok(v) => {
                acked.insert(id, v.into_inner().version.unwrap().version);
            }
            Err(status) => refused.push((id, status)),
        }
        if refused.len() >= 5 {
            break;
        }
    }

    // Assert: clear refusals, reads go on.
    assert!(!refused.is_empty(), "no write failed on a full disk");
    for (id, status) in &refused {
        let message = status.message().to_lowercase();
        assert!(
            matches!(status.code(), Code::Unavailable | Code::ResourceExhausted),
            "{id}: a full disk is not a server fault: {status:?}"
        );
        assert!(
            !["sqlite", "select", "insert", "disk i/o"]
                .iter()
                .any(|m| message.contains(m)),
            "{id}: database text in {status:?}"
        );
    }
    let during = all_events(&mut app.client).await;
    assert!(during.len() >= before, "reads go on while the disk is full");
    app.client
        .get_model(pb::GetModelRequest {
            name: "full".into(),
        })
        .await
        .expect("reads go on while the disk is full");

    // Act 2: space returns; the refused requests are retried as they were.
    std::fs::remove_file(filler).expect("free the disk");
    let recovery = Instant::now();
    for (id, _) in &refused {
        let v = loop {
            match app.client.register_version(heavy_version(id)).await {
                Ok(v) => break v,
                Err(s) => {
                    assert!(
                        recovery.elapsed() < Duration::from_secs(20),
                        "{id} still refused 20 s after space returned: {s:?}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        acked.insert(id.clone(), v.into_inner().version.unwrap().version);
    }
    let recovered_after = recovery.elapsed();

    // Assert: each acknowledged write once, the log contiguous and verified.
    let versions = modelreg_tests::all_versions(&mut app.client, "full").await;
    let mut want: Vec<i64> = acked.values().copied().collect();
    want.sort();
    assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), want);
    let events = all_events(&mut app.client).await;
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.sequence, i as u64 + 1, "events are contiguous");
    }
    assert_eq!(events.len(), want.len() + 1);
    let audit = verify_audit(&mut app.client).await;
    assert!(audit.ok, "{audit:?}");
    eprintln!(
        "sqlite disk full: {} writes acknowledged, {} refused while full ({:?}), all accepted again {recovered_after:?} after space returned",
        acked.len(),
        refused.len(),
        refused.iter().map(|(_, s)| s.code()).collect::<Vec<_>>()
    );
    app.stop().await;
    drop(disk);
}
