//! The crash campaign: the real `modelreg-server` binary is killed with
//! SIGKILL at random moments while clients write and watchers follow, and is
//! restarted each time on the same database. A checker then proves that every
//! acknowledged write is present exactly once, that retries with the same
//! request id doubled nothing, that the event log is gap-free and verifies,
//! and that every watcher saw exactly the log (the etcd watch properties).
//!
//! At least 20 kills per engine by default (CI); `MODELREG_CRASH_KILLS=N`
//! runs a longer campaign by hand. The summary line on stderr gives the figures.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use modelreg_client::watch::{ResumingWatch, WatchItem, is_transient};
use modelreg_client::{ConnectOptions, RegistryClient, pb, pb::Stage};
use modelreg_tests::{
    Engine, Rng, TestDb, all_versions, checked_log, conformance, create_model_with, evaluation_set,
    ungoverned,
};
use tokio::process::{Child, Command};
use tonic::{Code, Status};

conformance!(acknowledged_writes_survive_random_sigkills);

/// Kills per engine when `MODELREG_CRASH_KILLS` is not set.
const DEFAULT_KILLS: u64 = 20;
/// Concurrent writing clients.
const WORKERS: u64 = 6;
/// The ungoverned model: every allowed move applies at once.
const FREE: &str = "crash-free";
/// The governed model: PRODUCTION needs a second person's approval.
const GOVERNED: &str = "crash-governed";
/// How long one call may take before it counts as unknown.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a retried write may keep failing before the test gives up.
const RETRY_LIMIT: Duration = Duration::from_secs(120);

/// The server binary, built next to this test (`target/debug/modelreg-server`).
fn server_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    // target/debug/deps/crash-… → target/debug/modelreg-server
    let bin = exe
        .ancestors()
        .skip(1)
        .map(|dir| dir.join(format!("modelreg-server{}", std::env::consts::EXE_SUFFIX)))
        .find(|p| p.is_file());
    bin.unwrap_or_else(|| {
        panic!(
            "modelreg-server binary not found near {}: run cargo build -p modelreg-server",
            exe.display()
        )
    })
}

/// The server process, restarted on the same port and database.
struct Server {
    /// The running process, if any.
    child: Option<Child>,
    /// `--listen`: the address the first start reported in its ready file,
    /// kept for every restart so clients reconnect to the same place;
    /// `None` before the first start, which binds port 0.
    addr: Option<String>,
    /// `--database-url`.
    database_url: String,
    /// Where the server's log goes (one file across restarts).
    log: PathBuf,
    /// The process's starts so far.
    starts: u64,
}

/// The address on the `grpc=` line of a ready file.
fn ready_grpc(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix("grpc="))
        .map(str::to_owned)
}

impl Server {
    fn new(db: &TestDb, log: PathBuf) -> Server {
        Server {
            child: None,
            addr: None,
            database_url: db.url.clone(),
            log,
            starts: 0,
        }
    }

    fn url(&self) -> String {
        let addr = self.addr.as_deref().expect("the server was started once");
        format!("http://{addr}")
    }

    /// Starts the process and waits until it answers a read. The first
    /// start binds port 0 and reads the port from the ready file.
    async fn start(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        'spawn: loop {
            assert!(Instant::now() < deadline, "the server did not come up");
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.log)
                .expect("server log");
            // A new name per start: an old file must never pass for this start's.
            let ready = self.log.with_file_name(format!("ready-{}", self.starts));
            let listen = self.addr.clone().unwrap_or_else(|| "127.0.0.1:0".into());
            let mut child = Command::new(server_bin())
                .args(["--listen", &listen, "--database-url", &self.database_url])
                .arg("--ready-file")
                .arg(&ready)
                .args(["--heartbeat-interval", "200ms", "--policy-interval", "24h"])
                // Parallel servers must not fight over the /metrics port 8080.
                .args(["--http-listen", "off"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .expect("spawn modelreg-server");
            self.starts += 1;
            let bound = loop {
                if let Some(addr) = std::fs::read_to_string(&ready)
                    .ok()
                    .and_then(|t| ready_grpc(&t))
                {
                    break addr;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    assert!(
                        self.addr.is_some(),
                        "modelreg-server exited at its first start ({status}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                    // The port may linger a moment after a kill: start again.
                    eprintln!("modelreg-server exited at start ({status}); starting again");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue 'spawn;
                }
                assert!(Instant::now() < deadline, "the server wrote no ready file");
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            assert_eq!(
                *self.addr.get_or_insert_with(|| bound.clone()),
                bound,
                "a restart serves where the first start did"
            );
            let probe = modelreg_client::connect_lazy(&ConnectOptions::new(self.url()))
                .expect("probe client");
            loop {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "modelreg-server exited after it was ready ({status}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                let mut req = tonic::Request::new(pb::ListModelsRequest {
                    page_size: 1,
                    ..Default::default()
                });
                req.set_timeout(Duration::from_secs(2));
                if probe.clone().list_models(req).await.is_ok() {
                    self.child = Some(child);
                    return;
                }
                assert!(Instant::now() < deadline, "the server did not answer");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }

    /// SIGKILL, and wait for the process to be gone.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL");
            child.wait().await.expect("reap the server");
        }
    }
}

/// How one call ended.
#[derive(Debug, Clone, PartialEq)]
enum Outcome<T> {
    /// An OK response, with what it returned.
    Acked(T),
    /// A definite refusal: nothing was applied.
    Refused(Code),
    /// The connection broke or the server went away: it may or may not have applied.
    Unknown,
}

/// Whether a failure leaves the call's fate unknown (the server may have
/// committed it before it died) rather than being a definite answer: every
/// failure the client's watch retries, but ABORTED, a definite refusal.
fn is_unknown(status: &Status) -> bool {
    is_transient(status) && status.code() != Code::Aborted
}

fn outcome<T>(result: Result<T, Status>) -> Outcome<T> {
    match result {
        Ok(v) => Outcome::Acked(v),
        Err(s) if is_unknown(&s) => Outcome::Unknown,
        Err(s) => Outcome::Refused(s.code()),
    }
}

fn timed<T>(msg: T) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    req.set_timeout(CALL_TIMEOUT);
    req
}

/// Calls until the answer is definite; `call` must send the same request
/// (the same request id) each time. Returns the answer and how many
/// attempts ended unknown.
async fn until_definite<T, F, Fut>(mut call: F) -> (Result<T, Status>, u64)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut unknown = 0;
    loop {
        match call().await {
            Err(s) if is_unknown(&s) => {
                unknown += 1;
                assert!(
                    started.elapsed() < RETRY_LIMIT,
                    "a retried write kept failing: {s}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return (other, unknown),
        }
    }
}

/// What one client did, for the checker.
#[derive(Default)]
struct History {
    /// The client's actor name.
    actor: String,
    /// Acknowledged registrations: (model, artifact URI, version returned).
    registered: Vec<(String, String, i64)>,
    /// Direct moves on the ungoverned model: (version, target, outcome).
    moves: Vec<(i64, Stage, Outcome<i32>)>,
    /// Acknowledged evaluations: (version, evaluator version).
    evaluations: Vec<(i64, String)>,
    /// Acknowledged transition requests on the governed model: (version, request id).
    requests: Vec<(i64, String)>,
    /// Approvals: (request id, outcome, whether an earlier attempt was unknown).
    approvals: Vec<(String, Outcome<i64>, bool)>,
    /// Alias moves: (version, outcome).
    aliases: Vec<(i64, Outcome<()>)>,
    /// Calls answered OK.
    acked: u64,
    /// Attempts whose fate was unknown.
    unknown: u64,
}

impl History {
    fn count<T>(&mut self, o: &Outcome<T>) {
        match o {
            Outcome::Acked(_) => self.acked += 1,
            Outcome::Unknown => self.unknown += 1,
            Outcome::Refused(code) => assert!(
                matches!(code, Code::FailedPrecondition | Code::AlreadyExists),
                "{}: a write refused with {code:?} is a test bug",
                self.actor
            ),
        }
    }
}

/// One writing client: a deterministic mix of registrations, direct moves,
/// evaluations, alias moves and requested-then-approved promotions, until
/// `stop`. Retries writes that take a request id with the same id.
async fn worker(url: String, index: u64, stop: Arc<AtomicBool>) -> History {
    let actor = format!("w{index}");
    let connect = |actor: &str| {
        modelreg_client::connect_lazy(&ConnectOptions::new(url.clone()).actor(actor))
            .expect("client")
    };
    let c = connect(&actor);
    let requester = connect(&format!("req-{index}"));
    let approver = connect(&format!("appr-{index}"));
    let mut rng = Rng::new(100 + index);
    let mut h = History {
        actor: actor.clone(),
        ..Default::default()
    };
    let mut mine: Vec<i64> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let rid = format!("{actor}-{n}");
        let pick = rng.below(10);
        let target = if mine.is_empty() { 0 } else { pick };
        match target {
            0..=2 => {
                let (model, stage) = (FREE, Stage::None);
                let v = register(&c, &mut h, model, &rid, stage).await;
                mine.push(v);
            }
            3 | 4 => {
                let v = mine[rng.below(mine.len() as u64) as usize];
                let to = [
                    Stage::Staging,
                    Stage::Production,
                    Stage::Archived,
                    Stage::None,
                ][rng.below(4) as usize];
                let o = outcome(
                    c.clone()
                        .transition_stage(timed(pb::TransitionStageRequest {
                            model: FREE.into(),
                            version: v,
                            target_stage: to as i32,
                            comment: rid.clone(),
                            etag: String::new(),
                        }))
                        .await
                        .map(|r| r.into_inner().version.expect("applied").stage),
                );
                h.count(&o);
                if let Outcome::Acked(stage) = o {
                    assert_eq!(stage, to as i32, "the move returned another stage");
                }
                h.moves.push((v, to, o));
            }
            5 | 6 => {
                let v = mine[rng.below(mine.len() as u64) as usize];
                let evaluator = format!("e-{rid}");
                let req = pb::AttachEvaluationRequest {
                    model: FREE.into(),
                    version: v,
                    evaluation_set: Some(set_ref()),
                    evaluator_version: evaluator.clone(),
                    metrics: HashMap::from([("accuracy".to_string(), 0.5)]),
                    report_uri: String::new(),
                    request_id: rid.clone(),
                };
                let (result, unknown) = until_definite(|| {
                    let (mut c, r) = (c.clone(), req.clone());
                    async move { c.attach_evaluation(timed(r)).await }
                })
                .await;
                h.unknown += unknown;
                let o = outcome(result.map(|r| r.into_inner().evaluation.expect("evaluation")));
                h.count(&o);
                let Outcome::Acked(e) = o else {
                    panic!("{rid}: evaluation refused: {o:?}");
                };
                assert_eq!((e.version, &e.evaluator_version), (v, &evaluator));
                h.evaluations.push((v, evaluator));
            }
            7 => {
                let v = mine[rng.below(mine.len() as u64) as usize];
                let o = outcome(
                    c.clone()
                        .set_alias(timed(pb::SetAliasRequest {
                            model: FREE.into(),
                            alias: actor.clone(),
                            version: v,
                        }))
                        .await
                        .map(|_| ()),
                );
                h.count(&o);
                h.aliases.push((v, o));
            }
            _ => {
                // Register on the governed model, request PRODUCTION as one
                // person, approve as another.
                let v = register(&c, &mut h, GOVERNED, &rid, Stage::Staging).await;
                let ask = pb::TransitionStageRequest {
                    model: GOVERNED.into(),
                    version: v,
                    target_stage: Stage::Production as i32,
                    comment: rid.clone(),
                    etag: String::new(),
                };
                // Asking again returns the same pending request.
                let (result, unknown) = until_definite(|| {
                    let (mut c, r) = (requester.clone(), ask.clone());
                    async move { c.transition_stage(timed(r)).await }
                })
                .await;
                h.unknown += unknown;
                let o = outcome(result.map(|r| r.into_inner()));
                h.count(&o);
                let Outcome::Acked(resp) = o else {
                    continue; // refused: nothing to approve
                };
                let request = resp.request.expect("a governed move waits for approval");
                h.requests.push((v, request.id.clone()));
                let approve = pb::ApproveTransitionRequest {
                    request_id: request.id.clone(),
                    comment: rid.clone(),
                };
                let (result, unknown) = until_definite(|| {
                    let (mut c, r) = (approver.clone(), approve.clone());
                    async move { c.approve_transition(timed(r)).await }
                })
                .await;
                h.unknown += unknown;
                let o = outcome(result.map(|r| r.into_inner().version.expect("version").version));
                h.count(&o);
                h.approvals.push((request.id, o, unknown > 0));
            }
        }
    }
    h
}

/// Registers with a request id, retrying with the same id until acknowledged.
async fn register(
    c: &RegistryClient,
    h: &mut History,
    model: &str,
    rid: &str,
    stage: Stage,
) -> i64 {
    let uri = format!("s3://crash/{model}/{rid}");
    let req = pb::RegisterVersionRequest {
        model: model.into(),
        artifact_uri: uri.clone(),
        request_id: rid.into(),
        target_stage: stage as i32,
        ..Default::default()
    };
    let (result, unknown) = until_definite(|| {
        let (mut c, r) = (c.clone(), req.clone());
        async move { c.register_version(timed(r)).await }
    })
    .await;
    h.unknown += unknown;
    let o = outcome(result.map(|r| r.into_inner().version.expect("version")));
    h.count(&o);
    let Outcome::Acked(v) = o else {
        panic!("{rid}: registration refused: {o:?}");
    };
    assert_eq!(v.artifact_uri, uri, "{rid}: another request's version");
    h.registered.push((model.into(), uri, v.version));
    v.version
}

fn set_ref() -> pb::EvaluationSetRef {
    pb::EvaluationSetRef {
        name: "crash-set".into(),
        version: "v1".into(),
    }
}

/// A watcher that resumes across every crash: every item, with how many
/// events it had received when each heartbeat came.
struct Watched {
    filter: pb::WatchTransitionsRequest,
    events: Vec<pb::RegistryEvent>,
    /// (heartbeat sequence, events received before it).
    bookmarks: Vec<(u64, usize)>,
}

async fn watcher(
    url: String,
    filter: pb::WatchTransitionsRequest,
    target: tokio::sync::watch::Receiver<Option<u64>>,
) -> Watched {
    let client =
        modelreg_client::connect_lazy(&ConnectOptions::new(url).actor("watcher")).expect("client");
    let mut w = ResumingWatch::new(client, filter.clone()).max_backoff(Duration::from_millis(300));
    let mut out = Watched {
        filter,
        events: Vec::new(),
        bookmarks: Vec::new(),
    };
    loop {
        match w
            .next()
            .await
            .expect("a resuming watch only fails on bad input")
        {
            WatchItem::Event(e) => out.events.push(e),
            WatchItem::Heartbeat(s) => out.bookmarks.push((s, out.events.len())),
        }
        if let Some(t) = *target.borrow()
            && w.cursor().unwrap_or(0) >= t
        {
            return out;
        }
    }
}

fn matches(filter: &pb::WatchTransitionsRequest, e: &pb::RegistryEvent) -> bool {
    (filter.models.is_empty() || filter.models.contains(&e.model))
        && (filter.types.is_empty() || filter.types.contains(&e.r#type))
        && (filter.to_stages.is_empty() || filter.to_stages.contains(&e.to_stage))
}

/// Pairs (s, s + 1) of events written by one transaction: a superseded
/// production version and the promotion that displaced it; an approval and
/// the move it applied.
fn same_transaction(a: &pb::RegistryEvent, b: &pb::RegistryEvent) -> bool {
    b.sequence == a.sequence + 1
        && (a.cause == pb::StageChangeCause::Superseded as i32
            || (a.r#type == pb::EventType::TransitionApproved as i32
                && b.transition_request_id == a.transition_request_id))
}

/// SIGKILLs the server at random moments under six writers and three
/// resuming watchers, restarting it on the same database each time: every
/// acknowledged write is present exactly once (retries with the same
/// request id created no duplicates), unknown ones at most once, the log is
/// 1..N and verifies, and each watcher saw exactly the matching part of the
/// log, with true bookmarks and whole transactions.
async fn acknowledged_writes_survive_random_sigkills(db: TestDb) {
    let kills: u64 = std::env::var("MODELREG_CRASH_KILLS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_KILLS);
    let started = Instant::now();
    let logs = tempfile::tempdir().expect("temp dir");
    let mut server = Server::new(&db, logs.path().join("server.log"));
    server.start().await;
    let url = server.url();

    // Arrange
    let mut admin = modelreg_client::connect_lazy(&ConnectOptions::new(url.clone()).actor("admin"))
        .expect("client");
    create_model_with(&mut admin, FREE, ungoverned())
        .await
        .expect("create model");
    admin
        .create_model(pb::CreateModelRequest {
            name: GOVERNED.into(),
            ..Default::default()
        })
        .await
        .expect("create governed model");
    let set = pb::CreateEvaluationSetRequest {
        uri: "s3://datasets/crash/v1".into(),
        ..evaluation_set("crash-set", "v1", &[("accuracy", true)])
    };
    admin
        .create_evaluation_set(set)
        .await
        .expect("create evaluation set");
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let filters = [
        pb::WatchTransitionsRequest {
            after_sequence: Some(0),
            ..Default::default()
        },
        pb::WatchTransitionsRequest {
            models: vec![GOVERNED.into()],
            after_sequence: Some(0),
            ..Default::default()
        },
        pb::WatchTransitionsRequest {
            types: vec![pb::EventType::StageChanged as i32],
            to_stages: vec![Stage::Production as i32, Stage::Archived as i32],
            after_sequence: Some(0),
            ..Default::default()
        },
    ];
    let watchers: Vec<_> = filters
        .iter()
        .map(|f| tokio::spawn(watcher(url.clone(), f.clone(), target_rx.clone())))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|i| tokio::spawn(worker(url.clone(), i, stop.clone())))
        .collect();

    // Act: kill at random moments, restart on the same database.
    let mut rng = Rng::new(match db.engine {
        modelreg_tests::Engine::Sqlite => 0x5eed_0001,
        modelreg_tests::Engine::Postgres => 0x5eed_0002,
    });
    for _ in 0..kills {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(1000))).await;
        server.kill().await;
        if rng.below(4) == 0 {
            // Sometimes stay down a while, so clients fail and queue retries.
            tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
        }
        server.start().await;
    }
    // A last stretch of load with no kill, then stop the writers.
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut histories = Vec::new();
    for w in workers {
        histories.push(w.await.expect("worker"));
    }

    // Assert
    let mut c = admin.clone();
    // One last acknowledged write; the watchers run until they have seen the
    // end of the log it leaves.
    c.create_model(pb::CreateModelRequest {
        name: "crash-barrier".into(),
        ..Default::default()
    })
    .await
    .expect("a write after the campaign");
    let (log, audit) = checked_log(&mut c).await;
    target_tx
        .send(Some(log.len() as u64))
        .expect("watchers listening");
    assert_eq!(audit.events_checked, log.len() as u64);

    let of_type = |t: pb::EventType| log.iter().filter(move |e| e.r#type == t as i32);

    // Versions: each acknowledged registration exactly once, no request
    // producing two, each version registered by exactly one event.
    let mut versions = Vec::new();
    for model in [FREE, GOVERNED] {
        let page = all_versions(&mut c, model).await;
        versions.extend(page);
    }
    let mut by_uri: HashMap<&str, Vec<&pb::ModelVersion>> = HashMap::new();
    for v in &versions {
        by_uri.entry(&v.artifact_uri).or_default().push(v);
    }
    for (uri, vs) in &by_uri {
        assert_eq!(vs.len(), 1, "{uri} was registered {} times", vs.len());
    }
    let mut registered = 0;
    for h in &histories {
        for (model, uri, number) in &h.registered {
            registered += 1;
            let v = by_uri
                .get(uri.as_str())
                .unwrap_or_else(|| panic!("acknowledged {uri} is missing"))[0];
            assert_eq!((&v.model, v.version), (model, *number), "{uri}");
        }
    }
    assert_eq!(
        versions.len(),
        registered,
        "every version comes from an acknowledged registration"
    );
    let mut registered_events: HashMap<(&str, i64), usize> = HashMap::new();
    for e in of_type(pb::EventType::VersionRegistered) {
        *registered_events.entry((&e.model, e.version)).or_default() += 1;
    }
    assert_eq!(registered_events.len(), versions.len());
    assert!(
        registered_events.values().all(|n| *n == 1),
        "a version registered twice"
    );

    // Direct moves: acknowledged ones happened, unknown ones at most once.
    let mut moved: HashMap<(&str, i64, i32), usize> = HashMap::new();
    for e in of_type(pb::EventType::StageChanged) {
        if e.model == FREE && e.cause == pb::StageChangeCause::Request as i32 {
            *moved.entry((&e.actor, e.version, e.to_stage)).or_default() += 1;
        }
    }
    for h in &histories {
        let mut expected: HashMap<(i64, i32), (usize, usize)> = HashMap::new();
        for (v, to, o) in &h.moves {
            let entry = expected.entry((*v, *to as i32)).or_default();
            match o {
                Outcome::Acked(_) => entry.0 += 1,
                Outcome::Unknown => entry.1 += 1,
                Outcome::Refused(_) => {}
            }
        }
        for ((v, to), (acked, unknown)) in expected {
            let got = moved.remove(&(h.actor.as_str(), v, to)).unwrap_or(0);
            assert!(
                acked <= got && got <= acked + unknown,
                "{}: version {v} → {to}: {acked} acknowledged, {unknown} unknown, {got} in the log",
                h.actor
            );
        }
    }
    assert!(moved.is_empty(), "moves nobody asked for: {moved:?}");

    // Stages: each version's stage is where its stage events leave it, and
    // at most one version per model is in production.
    let mut last_stage: HashMap<(&str, i64), i32> = HashMap::new();
    for e in of_type(pb::EventType::StageChanged) {
        last_stage.insert((&e.model, e.version), e.to_stage);
    }
    for model in [FREE, GOVERNED] {
        let mut production = 0;
        for v in versions.iter().filter(|v| v.model == model) {
            let replayed = last_stage
                .get(&(model, v.version))
                .copied()
                .unwrap_or(Stage::None as i32);
            assert_eq!(
                v.stage, replayed,
                "{model} {}: stage differs from its events",
                v.version
            );
            production += usize::from(v.stage == Stage::Production as i32);
        }
        assert!(
            production <= 1,
            "{model}: {production} versions in production"
        );
    }

    // Evaluations: exactly the acknowledged ones, once each.
    let mut evaluated: HashMap<(&str, i64), usize> = HashMap::new();
    for e in of_type(pb::EventType::EvaluationAttached) {
        *evaluated.entry((&e.actor, e.version)).or_default() += 1;
    }
    let mut expected_evals: HashMap<(&str, i64), usize> = HashMap::new();
    for h in &histories {
        for (v, _) in &h.evaluations {
            *expected_evals.entry((&h.actor, *v)).or_default() += 1;
        }
    }
    assert_eq!(evaluated, expected_evals, "evaluation events");

    // Governed promotions: one request per version however often it was
    // asked, each acknowledged approval applied exactly once.
    let mut requested: HashMap<&str, usize> = HashMap::new();
    for e in of_type(pb::EventType::TransitionRequested) {
        *requested.entry(&e.transition_request_id).or_default() += 1;
    }
    let mut approved: HashMap<&str, usize> = HashMap::new();
    for e in of_type(pb::EventType::TransitionApproved) {
        *approved.entry(&e.transition_request_id).or_default() += 1;
    }
    let mut applied: HashMap<&str, usize> = HashMap::new();
    for e in of_type(pb::EventType::StageChanged) {
        if e.cause == pb::StageChangeCause::Approval as i32 {
            *applied.entry(&e.transition_request_id).or_default() += 1;
        }
    }
    assert!(
        requested.values().all(|n| *n == 1),
        "a request logged twice"
    );
    assert!(
        approved.values().all(|n| *n == 1),
        "an approval logged twice"
    );
    assert_eq!(approved, applied, "approvals and the moves they applied");
    let mut requests = 0;
    for h in &histories {
        for (_, id) in &h.requests {
            requests += 1;
            assert_eq!(requested.get(id.as_str()), Some(&1), "request {id}");
        }
        for (id, o, retried) in &h.approvals {
            match o {
                Outcome::Acked(_) => {
                    assert_eq!(approved.get(id.as_str()), Some(&1), "approval of {id}")
                }
                // Refused after an unknown attempt: the first may have applied.
                Outcome::Refused(_) if *retried => {}
                Outcome::Refused(_) => assert_eq!(approved.get(id.as_str()), None, "{id}"),
                Outcome::Unknown => unreachable!("approvals are retried until definite"),
            }
        }
    }
    assert_eq!(requested.len(), requests, "requests nobody acknowledged");

    // Aliases: each points where the last acknowledged move (or a later
    // unknown one) put it; no more moves logged than were made (setting an
    // alias to where it already points logs nothing).
    let free = c
        .get_model(pb::GetModelRequest { name: FREE.into() })
        .await
        .expect("get model")
        .into_inner()
        .model
        .expect("model");
    for h in &histories {
        let made = h
            .aliases
            .iter()
            .filter(|a| !matches!(a.1, Outcome::Refused(_)))
            .count();
        let got = of_type(pb::EventType::AliasSet)
            .filter(|e| e.actor == h.actor)
            .count();
        assert!(
            got <= made,
            "{}: {made} alias moves made, {got} logged",
            h.actor
        );
        let last_acked = h.aliases.iter().rposition(|a| a.1 == Outcome::Acked(()));
        if let Some(k) = last_acked {
            let allowed: Vec<i64> = h.aliases[k..]
                .iter()
                .filter(|a| !matches!(a.1, Outcome::Refused(_)))
                .map(|a| a.0)
                .collect();
            let now = free.aliases.get(&h.actor).copied();
            assert!(
                now.is_some_and(|v| allowed.contains(&v)),
                "{}: alias at {now:?}, expected one of {allowed:?}",
                h.actor
            );
        }
    }

    // Watchers: exactly the matching log, true bookmarks, whole transactions.
    let mut events_checked = 0;
    let splits: Vec<u64> = log
        .windows(2)
        .filter(|w| same_transaction(&w[0], &w[1]))
        .map(|w| w[0].sequence)
        .collect();
    for (i, w) in watchers.into_iter().enumerate() {
        let w = w.await.expect("watcher");
        let expected: Vec<&pb::RegistryEvent> =
            log.iter().filter(|e| matches(&w.filter, e)).collect();
        let got: Vec<&pb::RegistryEvent> = w.events.iter().collect();
        assert!(!expected.is_empty(), "watcher {i} has nothing to check");
        assert_eq!(got, expected, "watcher {i}: differs from ListEvents");
        events_checked += got.len();
        let positions: BTreeMap<u64, usize> = expected
            .iter()
            .enumerate()
            .map(|(n, e)| (e.sequence, n + 1))
            .collect();
        for (seq, received) in &w.bookmarks {
            assert!(
                *seq <= log.len() as u64,
                "watcher {i}: heartbeat {seq} beyond the log's end {}",
                log.len()
            );
            let due = positions.range(..=*seq).next_back().map_or(0, |(_, n)| *n);
            assert_eq!(
                *received, due,
                "watcher {i}: heartbeat {seq} was not a bookmark"
            );
            assert!(
                !splits.contains(seq),
                "watcher {i}: heartbeat {seq} splits a transaction"
            );
        }
    }

    let acked: u64 = histories.iter().map(|h| h.acked).sum();
    let unknown: u64 = histories.iter().map(|h| h.unknown).sum();
    server.kill().await;
    eprintln!(
        "crash campaign ({:?}): {kills} kills ({} starts), {acked} acknowledged writes \
         ({registered} versions, {requests} approval requests), {unknown} unknown attempts, \
         {} events in the log, {events_checked} watched events checked, {:.1}s",
        db.engine,
        server.starts,
        log.len(),
        started.elapsed().as_secs_f64()
    );
}

/// A start after a crash serves from the log where it lies: opening the
/// store must not first copy the log into the database file. (It did: the
/// connection that runs the migrations closed before any other was open,
/// so it was the last one, and SQLite checkpoints and removes the log when
/// its last connection closes; on a 1,000,000-event database a start took
/// 350 ms instead of about 20.)
#[tokio::test]
async fn a_start_after_a_crash_leaves_the_sqlite_log_in_place() {
    // Arrange: writes in the log, then a SIGKILL, so no close checkpoints them.
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("registry.db");
    let db = TestDb::external(format!("sqlite://{}", file.display()), Engine::Sqlite);
    let mut server = Server::new(&db, dir.path().join("server.log"));
    server.start().await;
    let mut client =
        modelreg_client::connect_lazy(&ConnectOptions::new(server.url()).actor("admin"))
            .expect("client");
    create_model_with(&mut client, FREE, ungoverned())
        .await
        .expect("create model");
    for i in 0..20 {
        client
            .register_version(pb::RegisterVersionRequest {
                model: FREE.into(),
                artifact_uri: format!("s3://crash/{FREE}/{i}"),
                ..Default::default()
            })
            .await
            .expect("register");
    }
    server.kill().await;
    let log = dir.path().join("registry.db-wal");
    let written = std::fs::metadata(&log)
        .expect("the log after the crash")
        .len();
    assert!(written > 0, "the writes are in the log");

    // Act
    server.start().await;

    // Assert
    let at_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    assert!(
        at_start >= written,
        "the log was copied away at start: {written} bytes before, {at_start} after"
    );
    let versions = all_versions(&mut client, FREE).await;
    assert_eq!(versions.len(), 20, "every acknowledged version is served");
    server.kill().await;
}
