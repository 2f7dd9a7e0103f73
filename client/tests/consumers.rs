//! Durable consumers with the real binaries: `modelreg-server` (SQLite, or
//! two replicas on PostgreSQL) and several `modelreg worker deploy
//! --consumer` members, each in a process group of its own so a kill takes
//! its command down with it, as a rescheduled pod's would be.
//!
//! The deploy command records `start`/`end` lines (model, version, event
//! sequence, member) in one file; the checks read that record and the
//! registry: every event handled, each model's events in order, no model
//! handled by two members at once, nothing skipped after a kill, a paused
//! member fenced, dead letters parked, forwarded, listed and retried, and a
//! server restart losing no acknowledgement. No check is on a timing.
//! Servers bind port 0 and report the port they got; a restarted one binds
//! the port it had, freed by its own death.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, connect, pb};
use tokio::process::{Child, Command};

#[path = "../../tests/support/http.rs"]
mod http;
mod support;
use support::servers::{bin, wait_ready};

struct Server {
    child: Child,
    url: String,
    port: u16,
    database: String,
}

impl Server {
    /// Starts a server on `port` (0: one the server picks and reports, as
    /// a restart must come back where its clients look for it).
    async fn start(dir: &Path, database: &str, port: u16, name: &str) -> Server {
        let ready = dir.join(format!("{name}.ready"));
        let _ = std::fs::remove_file(&ready);
        let log = dir.join(format!("{name}.log"));
        let output = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let mut child = Command::new(bin("modelreg-server"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--ready-file"])
            .arg(&ready)
            .args(["--database-url", database, "--http-listen", "off"])
            .stdout(Stdio::null())
            .stderr(output)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let addr = wait_ready(&mut child, &ready, &log).await.grpc;
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        Server {
            child,
            url: format!("http://{addr}"),
            port,
            database: database.to_owned(),
        }
    }
}

struct Env {
    dir: tempfile::TempDir,
    servers: Vec<Server>,
}

/// The deploy command: records its start and end, taking `DELAY` seconds.
const RECORD: &str = r#"echo "start $MODELREG_MODEL $MODELREG_VERSION $MODELREG_EVENT_SEQUENCE $MEMBER" >> "$RECORDS"
if [ -e "$FAIL_UNLESS" ] || [ -z "$FAIL_UNLESS" ]; then :; else echo "not fixed yet" >&2; exit 3; fi
sleep "$DELAY"
echo "end $MODELREG_MODEL $MODELREG_VERSION $MODELREG_EVENT_SEQUENCE $MEMBER" >> "$RECORDS"
echo "http://serve/$MODELREG_MODEL/$MODELREG_VERSION""#;

impl Env {
    /// One server on SQLite.
    async fn sqlite() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("registry.db").display());
        let server = Server::start(dir.path(), &db, 0, "server-a").await;
        Env::ready(dir, vec![server]).await
    }

    /// Two replicas on a new PostgreSQL database; `None` without PostgreSQL.
    async fn postgres_replicas() -> Option<Env> {
        let Ok(admin) = std::env::var("MODELREG_TEST_POSTGRES_URL") else {
            if std::env::var("MODELREG_REQUIRE_POSTGRES").as_deref() == Ok("1") {
                panic!("MODELREG_REQUIRE_POSTGRES=1 but MODELREG_TEST_POSTGRES_URL is not set");
            }
            eprintln!(
                "SKIPPED: the PostgreSQL consumer test (MODELREG_TEST_POSTGRES_URL is not set)"
            );
            return None;
        };
        use sqlx::Connection;
        let name = format!("modelreg_consumers_{}", std::process::id());
        let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .unwrap();
        let (base, _) = admin.rsplit_once('/').unwrap();
        let db = format!("{base}/{name}");
        let dir = tempfile::tempdir().unwrap();
        let a = Server::start(dir.path(), &db, 0, "server-a").await;
        let b = Server::start(dir.path(), &db, 0, "server-b").await;
        Some(Env::ready(dir, vec![a, b]).await)
    }

    async fn ready(dir: tempfile::TempDir, servers: Vec<Server>) -> Env {
        std::fs::write(dir.path().join("record.sh"), RECORD).unwrap();
        let env = Env { dir, servers };
        let mut c = env.client().await;
        for i in 0..100 {
            if c.list_models(pb::ListModelsRequest::default())
                .await
                .is_ok()
            {
                break;
            }
            assert!(i < 99, "the server does not answer");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        env
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    async fn client(&self) -> RegistryClient {
        connect(&ConnectOptions::new(self.servers[0].url.clone()).actor("ci"))
            .await
            .unwrap()
    }

    /// Starts a deploy worker, member `member` of consumer `deploy-prod`,
    /// on replica `replica`, in a process group of its own.
    fn member(
        &self,
        member: &str,
        replica: usize,
        extra: &[&str],
        env: &[(&str, String)],
    ) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(&format!("{member}.log")))
            .unwrap();
        let record = self.path("record.sh").display().to_string();
        Command::new(bin("modelreg"))
            .args([
                "--server",
                &self.servers[replica].url,
                "--actor",
                "deployer",
            ])
            .args(["worker", "deploy", "--environment", "prod", "--exec"])
            .arg(format!("sh {record}"))
            .args([
                "--consumer",
                "deploy-prod",
                "--member",
                member,
                "--retries",
                "0",
            ])
            .args(extra)
            .env("RECORDS", self.path("records"))
            .env("MEMBER", member)
            .env("DELAY", "0.2")
            .env("FAIL_UNLESS", "")
            .envs(env.iter().map(|(k, v)| (*k, v.clone())))
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    fn records(&self) -> Vec<Record> {
        std::fs::read_to_string(self.path("records"))
            .unwrap_or_default()
            .lines()
            .enumerate()
            .filter_map(|(at, l)| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.len() == 5).then(|| Record {
                    at,
                    start: f[0] == "start",
                    model: f[1].to_owned(),
                    version: f[2].parse().unwrap(),
                    sequence: f[3].parse().unwrap(),
                    member: f[4].to_owned(),
                })
            })
            .collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for entry in std::fs::read_dir(self.dir.path()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".log") || name == "records" {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                let start = text.len().saturating_sub(6000);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                out.push_str(&format!("--- {name}\n{}\n", &text[start..]));
            }
        }
        out
    }

    /// Polls `check` until it holds; the deadline only bounds a broken run.
    async fn wait_for(&self, what: &str, mut check: impl FnMut(&Env) -> bool) {
        for _ in 0..2400 {
            if check(self) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gave up waiting for {what}\n{}", self.logs());
    }
}

#[derive(Debug, Clone)]
struct Record {
    /// Line number: the order of the record.
    at: usize,
    start: bool,
    model: String,
    version: i64,
    sequence: u64,
    member: String,
}

/// Creates `n` models (with version 1) with no approval step, and
/// registers version `v` of each into STAGING.
async fn stage_all(c: &mut RegistryClient, n: usize, v: i64) {
    for i in 0..n {
        let model = format!("m{i:02}");
        if v == 1 {
            c.create_model(pb::CreateModelRequest {
                name: model.clone(),
                policy: Some(pb::Policy {
                    approval_required_for: Some(pb::StageList { stages: vec![] }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        c.register_version(pb::RegisterVersionRequest {
            model: model.clone(),
            artifact_uri: format!("s3://models/{model}/{v}"),
            target_stage: pb::Stage::Staging as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

/// [`stage_all`], then version `v` of each model into PRODUCTION.
async fn promote_all(c: &mut RegistryClient, n: usize, v: i64) {
    stage_all(c, n, v).await;
    for i in 0..n {
        c.transition_stage(pb::TransitionStageRequest {
            model: format!("m{i:02}"),
            version: v,
            target_stage: pb::Stage::Production as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    }
}

async fn production_events(c: &mut RegistryClient) -> Vec<pb::RegistryEvent> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_events(pb::ListEventsRequest {
                types: vec![pb::EventType::StageChanged as i32],
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(
            r.events
                .into_iter()
                .filter(|e| e.to_stage == pb::Stage::Production as i32),
        );
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

/// The newest production event of each model: the one a deploy must have
/// run for (an older one may be handled by finding its version no longer
/// in production).
fn newest(events: &[pb::RegistryEvent]) -> Vec<pb::RegistryEvent> {
    let mut by_model: BTreeMap<String, pb::RegistryEvent> = BTreeMap::new();
    for e in events {
        by_model.insert(e.model.clone(), e.clone());
    }
    by_model.into_values().collect()
}

/// Waits until the consumer has nothing left: no lag, nothing in flight.
async fn drained(env: &Env, c: &mut RegistryClient) -> pb::Consumer {
    for _ in 0..2400 {
        let state = consumer(c).await;
        if state.lag_events == 0 && state.assignments.iter().all(|a| a.in_flight_sequence == 0) {
            return state;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the consumer never drained\n{}", env.logs());
}

/// Checks the record: every event in `events` has an end; each model's
/// runs never overlap (runs of killed members, with no end, excluded) and
/// its events end in sequence order.
fn check_records(records: &[Record], events: &[pb::RegistryEvent], killed: &[&str]) {
    let ended: BTreeSet<u64> = records
        .iter()
        .filter(|r| !r.start)
        .map(|r| r.sequence)
        .collect();
    for e in events {
        assert!(
            ended.contains(&e.sequence),
            "event {} ({}/{}) was never handled to its end",
            e.sequence,
            e.model,
            e.version
        );
    }
    let mut by_model: BTreeMap<&str, Vec<&Record>> = BTreeMap::new();
    for r in records {
        by_model.entry(&r.model).or_default().push(r);
    }
    for (model, rs) in by_model {
        // Runs as (start line, end line); a start without an end belongs to
        // a killed member and ends at the kill.
        let mut open: Option<&Record> = None;
        let mut last_end_sequence = 0;
        for r in rs {
            if r.start {
                if let Some(o) = open {
                    assert!(
                        killed.contains(&o.member.as_str()),
                        "{model}: {} started event {} (version {}) while {} was still handling event {}",
                        r.member,
                        r.sequence,
                        r.version,
                        o.member,
                        o.sequence
                    );
                }
                open = Some(r);
            } else {
                let o = open
                    .take()
                    .unwrap_or_else(|| panic!("{model}: an end without a start at line {}", r.at));
                assert_eq!(
                    (o.member.as_str(), o.sequence),
                    (r.member.as_str(), r.sequence),
                    "{model}: runs overlap"
                );
                assert!(
                    r.sequence >= last_end_sequence,
                    "{model}: event {} ended after the later event {last_end_sequence}",
                    r.sequence
                );
                last_end_sequence = r.sequence;
            }
        }
    }
}

async fn kill_group(child: &mut Child) {
    let pid = child.id().expect("running");
    let status = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let _ = child.wait().await;
}

async fn consumer(c: &mut RegistryClient) -> pb::Consumer {
    c.get_consumer(pb::GetConsumerRequest {
        name: "deploy-prod".into(),
    })
    .await
    .unwrap()
    .into_inner()
    .consumer
    .unwrap()
}

/// Three members over twenty models; one is killed mid-deploy, its models
/// move to the others and the interrupted event is handled again.
async fn failover(env: Env) {
    let mut c = env.client().await;
    let lease = ["--lease", "2s", "--after", "0"];
    let replicas = env.servers.len();
    // w0's deploys take long enough that it is surely in one when killed.
    let mut members: Vec<Child> = (0..3)
        .map(|i| {
            let delay = if i == 0 { "30" } else { "0.2" };
            env.member(
                &format!("w{i}"),
                i % replicas,
                &lease,
                &[("DELAY", delay.to_owned())],
            )
        })
        .collect();
    promote_all(&mut c, 20, 1).await;
    // Kill w0 in the middle of one of its deploys.
    env.wait_for("w0 to start a deploy", |env| {
        let rs = env.records();
        rs.iter().any(|r| r.start && r.member == "w0")
    })
    .await;
    kill_group(&mut members[0]).await;
    let killed_at = env.records().len();
    promote_all(&mut c, 20, 2).await;
    let events = production_events(&mut c).await;
    assert_eq!(events.len(), 40);
    let state = drained(&env, &mut c).await;
    let records = env.records();
    check_records(&records, &newest(&events), &["w0"]);
    // Every event was acknowledged: each model is past its newest event.
    for e in newest(&events) {
        let a = state
            .assignments
            .iter()
            .find(|a| a.model == e.model)
            .unwrap();
        assert!(a.acked_sequence >= e.sequence, "{a:?} {e:?}");
    }
    // The event w0 was handling when killed was handled again by another.
    let interrupted: Vec<&Record> = records[..killed_at]
        .iter()
        .filter(|r| r.member == "w0" && r.start)
        .filter(|s| {
            !records[..killed_at]
                .iter()
                .any(|e| !e.start && e.sequence == s.sequence && e.member == "w0")
        })
        .collect();
    assert!(!interrupted.is_empty(), "w0 was killed in a deploy");
    let survivors = format!(
        "{}{}",
        std::fs::read_to_string(env.path("w1.log")).unwrap_or_default(),
        std::fs::read_to_string(env.path("w2.log")).unwrap_or_default()
    );
    for s in interrupted {
        assert!(
            survivors.contains(&format!("(event {})", s.sequence)),
            "event {} interrupted by the kill was not delivered again\n{}",
            s.sequence,
            env.logs()
        );
    }
    // w0 holds nothing any more; the survivors hold every model.
    assert!(
        state
            .assignments
            .iter()
            .all(|a| a.member != "w0" && a.in_flight_sequence == 0)
    );
    assert_eq!(state.members.len(), 2, "{:?}", state.members);
    for m in &mut members[1..] {
        kill_group(m).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_members_share_twenty_models_and_survive_a_kill() {
    failover(Env::sqlite().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_on_two_postgresql_replicas_survive_a_kill() {
    if let Some(env) = Env::postgres_replicas().await {
        failover(env).await;
    }
}

/// A member paused past its lease, then resumed, is refused: its report and
/// its acknowledgement, so the deployment is recorded once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_member_is_fenced() {
    let env = Env::sqlite().await;
    let mut c = env.client().await;
    let slow = [("DELAY", "3".to_owned())];
    let opts = ["--lease", "1s", "--after", "0"];
    let mut a = env.member("pa", 0, &opts, &slow);
    env.wait_for("pa to join", |env| {
        std::fs::read_to_string(env.path("pa.log")).is_ok_and(|l| l.contains("joining"))
    })
    .await;
    promote_all(&mut c, 1, 1).await;
    env.wait_for("pa to start", |env| env.records().iter().any(|r| r.start))
        .await;
    let pid = a.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    let mut b = env.member("pb", 0, &opts, &[("DELAY", "0.1".to_owned())]);
    env.wait_for("pb to deploy in pa's place", |env| {
        env.records().iter().any(|r| !r.start && r.member == "pb")
    })
    .await;
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .await
            .unwrap()
            .success()
    );
    env.wait_for("pa to be refused", |env| {
        std::fs::read_to_string(env.path("pa.log")).is_ok_and(|l| l.contains("refused"))
    })
    .await;
    let succeeded: Vec<pb::RegistryEvent> = c
        .list_events(pb::ListEventsRequest {
            types: vec![pb::EventType::DeploymentReported as i32],
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .events
        .into_iter()
        .filter(|e| {
            e.details
                .as_ref()
                .and_then(|d| d.fields.get("status"))
                .and_then(|v| v.kind.clone())
                == Some(prost_types::value::Kind::StringValue("SUCCEEDED".into()))
        })
        .collect();
    assert_eq!(succeeded.len(), 1, "{succeeded:?}\n{}", env.logs());
    let state = consumer(&mut c).await;
    let slot = &state.assignments[0];
    assert_eq!((slot.member.as_str(), slot.in_flight_sequence), ("pb", 0));
    kill_group(&mut a).await;
    kill_group(&mut b).await;
}

/// A command that always fails is tried max_deliveries times, parked as a
/// dead letter the notifier forwards and the CLI lists, and once fixed and
/// retried, handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_parked_forwarded_listed_and_retried() {
    let env = Env::sqlite().await;
    let mut c = env.client().await;
    let fixed = env.path("fixed");
    let opts = [
        "--max-deliveries",
        "3",
        "--backoff",
        "100ms",
        "--after",
        "0",
    ];
    let mut w = env.member(
        "dl",
        0,
        &opts,
        &[("FAIL_UNLESS", fixed.display().to_string())],
    );
    // The notifier, itself a consumer member, posts to a local sink.
    let sink = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", sink.local_addr().unwrap());
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let got = bodies.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = sink.accept().await else {
                return;
            };
            let got = got.clone();
            tokio::spawn(async move {
                if let Some((_, body)) = http::read_request(&mut s).await {
                    got.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&body).into_owned());
                }
                use tokio::io::AsyncWriteExt;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                    .await;
            });
        }
    });
    let mut notifier = Command::new(bin("modelreg"))
        .args(["--server", &env.servers[0].url, "--actor", "notifier"])
        .args([
            "notify",
            "--webhook",
            &hook,
            "--format",
            "json",
            "--consumer",
            "notify",
            "--after",
            "0",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(env.path("notify.log")).unwrap())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    promote_all(&mut c, 1, 1).await;
    env.wait_for("the event to be parked", |env| {
        std::fs::read_to_string(env.path("dl.log"))
            .is_ok_and(|l| l.contains("parked as a dead letter"))
    })
    .await;
    let starts = env.records().iter().filter(|r| r.start).count();
    assert_eq!(starts, 3, "tried max_deliveries times");
    let dead = production_events(&mut c).await[0].sequence;
    let b2 = bodies.clone();
    env.wait_for("the notifier to forward the dead letter", move |_| {
        b2.lock()
            .unwrap()
            .iter()
            .any(|b| b.contains("EVENT_TYPE_DEAD_LETTERED"))
    })
    .await;
    // Listed by the CLI.
    let cli = |args: &[&str]| {
        let mut cmd = Command::new(bin("modelreg"));
        cmd.args(["--server", &env.servers[0].url, "--actor", "oncall"])
            .args(args);
        cmd
    };
    let listed = cli(&["--json", "consumers", "dead-letters", "deploy-prod"])
        .output()
        .await
        .unwrap();
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(
        listed[0]["event"]["sequence"].to_string().trim_matches('"'),
        dead.to_string()
    );
    assert_eq!(listed[0]["state"], "DEAD_LETTER_STATE_PARKED");
    // Blocked: nothing is delivered while it is parked.
    let state = consumer(&mut c).await;
    assert!(state.assignments[0].blocked);
    // Fixed, then retried: handled.
    std::fs::write(&fixed, "").unwrap();
    let retried = cli(&["consumers", "retry", "deploy-prod", &dead.to_string()])
        .output()
        .await
        .unwrap();
    assert!(
        retried.status.success(),
        "{}",
        String::from_utf8_lossy(&retried.stderr)
    );
    env.wait_for("the retried event to be handled", |env| {
        env.records().iter().any(|r| !r.start && r.sequence == dead)
    })
    .await;
    let mut resolved = false;
    for _ in 0..100 {
        let all = c
            .list_dead_letters(pb::ListDeadLettersRequest {
                consumer: "deploy-prod".into(),
                include_resolved: true,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .dead_letters;
        if all
            .iter()
            .any(|d| d.state == pb::DeadLetterState::Resolved as i32)
        {
            resolved = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(resolved, "{}", env.logs());
    kill_group(&mut w).await;
    kill_group(&mut notifier).await;
}

/// The server is killed and restarted under its members: every event is
/// handled, and no event acknowledged before the restart runs again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_loses_no_acknowledgement() {
    let mut env = Env::sqlite().await;
    let mut c = env.client().await;
    let opts = ["--lease", "3s", "--after", "0"];
    let mut members: Vec<Child> = (0..2)
        .map(|i| env.member(&format!("r{i}"), 0, &opts, &[]))
        .collect();
    promote_all(&mut c, 10, 1).await;
    env.wait_for("some events to be handled", |env| {
        env.records().iter().filter(|r| !r.start).count() >= 3
    })
    .await;
    // Kill the server; what it acknowledged is in the database.
    let old = env.servers.remove(0);
    let (port, database) = (old.port, old.database.clone());
    let mut child = old.child;
    child.kill().await.unwrap();
    let _ = child.wait().await;
    let before = env.records().len();
    let server = Server::start(env.dir.path(), &database, port, "server-a").await;
    env.servers.push(server);
    let mut c = env.client().await;
    let acked: BTreeMap<String, u64> = consumer(&mut c)
        .await
        .assignments
        .into_iter()
        .map(|a| (a.model, a.acked_sequence))
        .collect();
    promote_all(&mut c, 10, 2).await;
    let events = production_events(&mut c).await;
    drained(&env, &mut c).await;
    let records = env.records();
    check_records(&records, &newest(&events), &[]);
    for r in records[before..].iter().filter(|r| r.start) {
        let done = acked.get(&r.model).copied().unwrap_or(0);
        assert!(
            r.sequence > done,
            "event {} of {} was acknowledged before the restart and ran again",
            r.sequence,
            r.model
        );
    }
    for m in &mut members {
        kill_group(m).await;
    }
}

/// `worker evaluate` as two members of one consumer: each version entering
/// STAGING is evaluated once, and the consumer drains.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn evaluate_workers_share_a_consumer() {
    let env = Env::sqlite().await;
    let mut c = env.client().await;
    let set = env.path("holdout.csv");
    std::fs::write(&set, "foo").unwrap();
    c.create_evaluation_set(pb::CreateEvaluationSetRequest {
        name: "holdout".into(),
        version: "v1".into(),
        uri: format!("file://{}", set.display()),
        // sha256 of "foo"
        digest: "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(),
        metrics: vec![pb::MetricDefinition {
            name: "auc".into(),
            higher_is_better: true,
        }],
        ..Default::default()
    })
    .await
    .unwrap();
    let mut members: Vec<Child> = (0..2)
        .map(|i| {
            let log = std::fs::File::create(env.path(&format!("e{i}.log"))).unwrap();
            Command::new(bin("modelreg"))
                .args(["--server", &env.servers[0].url, "--actor", "evaluator"])
                .args([
                    "worker",
                    "evaluate",
                    "--set",
                    "holdout@v1",
                    "--evaluator-version",
                    "1",
                ])
                .args(["--exec", "echo '{\"auc\": 0.9}'", "--cache-dir"])
                .arg(env.path("cache"))
                .args([
                    "--consumer",
                    "evaluate-staging",
                    "--member",
                    &format!("e{i}"),
                    "--after",
                    "0",
                ])
                .stdout(Stdio::null())
                .stderr(log)
                .process_group(0)
                .kill_on_drop(true)
                .spawn()
                .unwrap()
        })
        .collect();
    stage_all(&mut c, 4, 1).await;
    for i in 0..4 {
        let model = format!("m{i:02}");
        let mut found = false;
        for _ in 0..1200 {
            let evaluations = c
                .list_evaluations(pb::ListEvaluationsRequest {
                    model: model.clone(),
                    evaluation_set: Some(pb::EvaluationSetRef {
                        name: "holdout".into(),
                        version: "v1".into(),
                    }),
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .evaluations;
            if !evaluations.is_empty() {
                assert_eq!(evaluations.len(), 1);
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(found, "{model} was not evaluated\n{}", env.logs());
    }
    let state = c
        .get_consumer(pb::GetConsumerRequest {
            name: "evaluate-staging".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .consumer
        .unwrap();
    assert_eq!(state.assignments.len(), 4);
    for m in &mut members {
        kill_group(m).await;
    }
}
