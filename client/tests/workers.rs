//! The whole loop with real binaries only: `modelreg-server` with tokens,
//! `modelreg worker evaluate` running a script, `modelreg notify` posting to
//! a local HTTP sink that checks every signature (and fails for a while),
//! `modelreg worker deploy` running a script, and the CLI as CI and people.
//! Workers are killed and restarted mid-stream; afterwards nothing is lost,
//! nothing is doubled, and the audit trail tells the story.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, connect, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

#[path = "../../tests/support/http.rs"]
mod http;
use http::read_request;
mod support;
use support::servers::{Bound, bin, wait_ready};

const SECRET: &str = "webhook-secret";

fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Starts `modelreg-server` on port 0 with its database, ready file and log
/// in `dir` and the flags `args`; returns it once it has reported where it
/// listens.
async fn start_server(dir: &Path, args: &[&str]) -> (Child, Bound) {
    let ready = dir.join("server.ready");
    let log = dir.join("server.log");
    let mut server = Command::new(bin("modelreg-server"))
        // Port 0: the server picks a free port itself and reports it.
        .args(["--listen", "127.0.0.1:0", "--ready-file"])
        .arg(&ready)
        .arg("--database-url")
        .arg(format!("sqlite://{}", dir.join("registry.db").display()))
        .args(args)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let bound = wait_ready(&mut server, &ready, &log).await;
    (server, bound)
}

/// The people and programs of the story, with their roles.
const PEOPLE: [(&str, &str); 7] = [
    ("ada", "\"admin\""),
    ("alice", "\"publisher\""),
    ("bob", "\"approver\""),
    ("oncall", "\"approver\""),
    ("evaluator", "\"evaluator\", \"publisher\""),
    ("deployer", "\"deployer\""),
    ("notifier", "\"reader\""),
];

fn token(who: &str) -> String {
    format!("token-of-{who}")
}

struct Env {
    dir: tempfile::TempDir,
    url: String,
    server: Child,
}

impl Env {
    async fn start() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let tokens: String = PEOPLE
            .iter()
            .map(|(who, roles)| {
                format!(
                    "[[tokens]]\nidentity = \"{who}\"\nroles = [{roles}]\ntoken_sha256 = \"{}\"\n\n",
                    sha256_hex(&token(who))
                )
            })
            .collect();
        let tokens_file = dir.path().join("tokens.toml");
        std::fs::write(&tokens_file, tokens).unwrap();
        let (server, bound) = start_server(
            dir.path(),
            &[
                "--auth-tokens",
                &tokens_file.display().to_string(),
                "--heartbeat-interval",
                "200ms",
                // Parallel servers must not fight over the /metrics port 8080.
                "--http-listen",
                "off",
            ],
        )
        .await;
        let env = Env {
            url: format!("http://{}", bound.grpc),
            dir,
            server,
        };
        env.wait_for("the server to serve", || async {
            connect(&env.opts("ada")).await.is_ok()
        })
        .await;
        env
    }

    fn opts(&self, who: &str) -> ConnectOptions {
        ConnectOptions::new(self.url.clone()).token(token(who))
    }

    async fn client(&self, who: &str) -> RegistryClient {
        connect(&self.opts(who)).await.unwrap()
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The CLI as `who`, with `args`.
    fn modelreg(&self, who: &str, args: &[&str]) -> Command {
        let mut command = Command::new(bin("modelreg"));
        command
            .args(["--server", &self.url, "--token", &token(who)])
            .args(args);
        command
    }

    /// Runs the CLI as `who`.
    async fn cli(&self, who: &str, args: &[&str]) -> Output {
        self.modelreg(who, args).output().await.unwrap()
    }

    async fn ok(&self, who: &str, args: &[&str]) -> String {
        let out = self.cli(who, args).await;
        assert!(
            out.status.success(),
            "{who}: modelreg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Starts a long-running CLI command (a worker) as `who`, in a process
    /// group of its own so that [`crash`] takes its commands down with it.
    fn spawn(&self, who: &str, log: &str, args: &[&str]) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path(log))
            .unwrap();
        self.modelreg(who, args)
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap_or_default()
    }

    /// Polls `check` until it holds; the deadline only bounds a broken run,
    /// whose panic shows what the server and the workers wrote.
    async fn wait_for<F, Fut>(&self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        for _ in 0..1200 {
            if check().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("gave up waiting for {what}\n{}", self.files());
    }

    /// [`Env::wait_for`] with a check that reads the registry through
    /// `client` (a clone of it each time).
    async fn wait_for_registry<F, Fut>(&self, what: &str, client: &RegistryClient, mut check: F)
    where
        F: FnMut(RegistryClient) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.wait_for(what, || check(client.clone())).await
    }

    /// Waits until the worker `name` (run as `who` with `args`) has started
    /// its command for version 2 (a line in `NAME.starts`), kills it there
    /// with [`crash`], and starts it again.
    async fn crash_in_version_2(
        &self,
        worker: &mut Child,
        who: &str,
        name: &str,
        args: &[String],
    ) -> Child {
        let starts = self.path(&format!("{name}.starts"));
        self.wait_for(&format!("the {name} run of version 2 to start"), || {
            let text = std::fs::read_to_string(&starts).unwrap_or_default();
            async move { text.lines().any(|l| l.starts_with("2 ")) }
        })
        .await;
        crash(worker).await;
        self.spawn(who, &format!("{name}.log"), &strs(args))
    }

    /// The logs, cursors and markers in the temporary directory (the end of
    /// each), for a failure message.
    fn files(&self) -> String {
        let mut names: Vec<String> = std::fs::read_dir(self.dir.path())
            .map(|entries| {
                entries
                    .filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with("registry.db") && n != "tokens.toml")
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
            .iter()
            .map(|name| {
                let text = self.log(name);
                let start = text.len().saturating_sub(8000);
                let start = (start..text.len())
                    .find(|&i| text.is_char_boundary(i))
                    .unwrap_or(text.len());
                format!("--- {name}\n{}", &text[start..])
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// One POST the sink received.
#[derive(Debug, Clone)]
struct Delivery {
    sequence: u64,
    body: serde_json::Value,
}

/// A webhook receiver: checks each signature, answers 500 to the first
/// `fail_first` requests, then 200.
struct Sink {
    url: String,
    received: Arc<Mutex<Vec<Delivery>>>,
    refused: Arc<Mutex<u32>>,
}

impl Sink {
    async fn start(fail_first: u32) -> Sink {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks/modelreg", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(0u32));
        let (r, f) = (received.clone(), refused.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let (r, f) = (r.clone(), f.clone());
                tokio::spawn(async move {
                    let Some((headers, body)) = read_request(&mut conn).await else {
                        return;
                    };
                    let header = |name: &str| {
                        headers
                            .get(&name.to_ascii_lowercase())
                            .cloned()
                            .unwrap_or_default()
                    };
                    let ts: i64 = header("x-modelreg-timestamp").parse().unwrap_or(0);
                    let expected =
                        modelreg_client::webhook::signature(SECRET.as_bytes(), ts, &body);
                    let signed = header("x-modelreg-signature") == expected;
                    let fail = {
                        let mut f = f.lock().unwrap();
                        if *f < fail_first {
                            *f += 1;
                            true
                        } else {
                            false
                        }
                    };
                    let status = if !signed {
                        "401 Unauthorized"
                    } else if fail {
                        "500 Internal Server Error"
                    } else {
                        r.lock().unwrap().push(Delivery {
                            sequence: header("x-modelreg-delivery").parse().unwrap_or(0),
                            body: serde_json::from_slice(&body).unwrap_or_default(),
                        });
                        "200 OK"
                    };
                    let _ = conn
                        .write_all(
                            format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .as_bytes(),
                        )
                        .await;
                });
            }
        });
        Sink {
            url,
            received,
            refused,
        }
    }

    fn deliveries(&self) -> Vec<Delivery> {
        self.received.lock().unwrap().clone()
    }
}

async fn events(c: &mut RegistryClient, model: &str) -> Vec<pb::RegistryEvent> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    loop {
        let r = c
            .list_events(pb::ListEventsRequest {
                model: model.into(),
                page_size: 1000,
                page_token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        out.extend(r.events);
        if r.next_page_token.is_empty() {
            return out;
        }
        page_token = r.next_page_token;
    }
}

async fn version(c: &mut RegistryClient, model: &str, v: i64) -> pb::ModelVersion {
    c.get_version(pb::GetVersionRequest {
        model: model.into(),
        version: v,
        alias: String::new(),
    })
    .await
    .unwrap()
    .into_inner()
    .version
    .unwrap()
}

async fn pending(c: &mut RegistryClient, model: &str) -> Vec<pb::TransitionRequest> {
    c.list_transition_requests(pb::ListTransitionRequestsRequest {
        model: model.into(),
        status: pb::TransitionRequestStatus::Pending as i32,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner()
    .requests
}

/// Deployments of `v` in `env` that SUCCEEDED, counted from the event log.
fn succeeded(events: &[pb::RegistryEvent], v: i64) -> usize {
    events
        .iter()
        .filter(|e| e.r#type == pb::EventType::DeploymentReported as i32 && e.version == v)
        .filter(|e| {
            let d = modelreg_client::json::to_json(*e, "modelreg.v1.RegistryEvent");
            d["details"]["status"]
                .as_str()
                .is_some_and(|s| s.ends_with("SUCCEEDED"))
        })
        .count()
}

/// Kills a worker together with the command it is running (SIGKILL to its
/// process group), as the crash of its machine or container would, and
/// reaps it. Killing the worker alone would leave the command running on.
async fn crash(worker: &mut Child) {
    let pid = worker.id().expect("the worker is running");
    let killed = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status()
        .await
        .unwrap();
    assert!(killed.success(), "kill -KILL -{pid}: {killed}");
    let _ = worker.wait().await;
}

/// The admin creates the evaluation set `holdout@v1` (stored at `uri`,
/// scoring auc) and the model `fraud`.
async fn holdout_and_fraud(env: &Env, uri: &str) {
    env.ok(
        "ada",
        &[
            "evalset",
            "create",
            "holdout",
            "v1",
            "--uri",
            uri,
            "--digest",
            "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
            "--metric",
            "auc:higher",
        ],
    )
    .await;
    env.ok("ada", &["model", "create", "fraud"]).await;
}

async fn register(env: &Env, run: &str, uri: &str) {
    let out = env
        .ok(
            "alice",
            &[
                "--json",
                "version",
                "register",
                "fraud",
                "--artifact-uri",
                uri,
                "--digest",
                "sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "--commit",
                "4f2a9c1",
                "--pipeline-url",
                "https://ci.example/runs/1",
                "--stage",
                "staging",
                "--request-id",
                run,
            ],
        )
        .await;
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["stage"], "STAGE_STAGING");
}

/// A worker's command line: `args`, then `--after 0` (the whole log) and
/// `--cursor-file` with the file `cursor` in the test's directory.
fn worker_args(env: &Env, args: &[&str], cursor: &str) -> Vec<String> {
    args.iter()
        .chain(&["--after", "0", "--cursor-file"])
        .map(|s| s.to_string())
        .chain([env.path(cursor).display().to_string()])
        .collect()
}

/// The fetch hook of the s3:// URIs in these tests: the bytes whose
/// SHA-256 the sets ("foo") and versions ("test") record.
const FETCH_S3: &str = r#"case "$MODELREG_FETCH_URI" in s3://models/*) printf test;; *) printf foo;; esac > "$MODELREG_FETCH_DEST""#;

/// `modelreg worker NAME` for the model fraud, with `options`, running
/// the shell `script`, its cursor in `NAME.cursor`, fetching s3:// inputs
/// with [`FETCH_S3`] into the test's cache.
fn fraud_worker_args(env: &Env, name: &str, options: &[&str], script: &str) -> Vec<String> {
    let mut args = vec!["worker", name, "--fetch", FETCH_S3, "--cache-dir", "cache"];
    args.extend(options);
    args.extend(["--model", "fraud", "--exec", script]);
    worker_args(env, &args, &format!("{name}.cursor"))
}

/// The script of the worker `name`: a log of every start (`NAME.starts`)
/// and of every finished run (`record` in `NAME.runs`), then `output` on
/// stdout. The first run for version 2 hangs, so the test can kill the
/// worker in the middle of it. Its marker is made (mkdir: test-and-set in
/// one step) before the start is logged, so once the test sees the start,
/// no later run can hang too.
fn hanging_script(name: &str, record: &str, output: &str) -> String {
    format!(
        r#"hang=; if [ "$MODELREG_VERSION" = 2 ] && mkdir {name}.hung 2>/dev/null; then hang=1; fi
echo "$MODELREG_VERSION $MODELREG_EVENT_SEQUENCE" >> {name}.starts
if [ "$hang" ]; then sleep 600; fi
echo "{record}" >> {name}.runs
echo "{output}""#
    )
}

fn evaluate_args(env: &Env) -> Vec<String> {
    // auc 0.91 for version 1, 0.92 for version 2.
    let script = hanging_script(
        "evaluate",
        "$MODELREG_MODEL $MODELREG_VERSION $MODELREG_EVAL_SET $MODELREG_ARTIFACT_URI",
        r#"{\"auc\": 0.9$MODELREG_VERSION}"#,
    );
    let options = [
        "--set",
        "holdout@v1",
        "--evaluator-version",
        "2.0",
        "--request",
        "production",
    ];
    fraud_worker_args(env, "evaluate", &options, &script)
}

fn deploy_args(env: &Env) -> Vec<String> {
    let script = hanging_script(
        "deploy",
        "$MODELREG_VERSION $MODELREG_EVENT_SEQUENCE $MODELREG_ENVIRONMENT",
        "https://serve.example/fraud/$MODELREG_VERSION",
    );
    fraud_worker_args(env, "deploy", &["--environment", "prod"], &script)
}

fn notify_args(env: &Env, sink: &Sink) -> Vec<String> {
    let args = [
        "notify",
        "--webhook",
        &sink.url,
        "--secret",
        SECRET,
        "--link-base",
        "https://registry.example",
        "--max-backoff",
        "300ms",
    ];
    worker_args(env, &args, "notify.cursor")
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_ci_commit_to_a_live_deployment_and_back() {
    let env = Env::start().await;
    let sink = Sink::start(3).await;
    let mut ada = env.client("ada").await;

    // The admin sets up the standard set and the model's policy.
    holdout_and_fraud(&env, "s3://datasets/holdout/v1").await;
    env.ok(
        "ada",
        &[
            "model",
            "policy",
            "fraud",
            "--standard-set",
            "holdout@v1",
            "--gate",
            "auc:min_value=0.8,max_regression=0.05",
        ],
    )
    .await;

    let mut evaluate = env.spawn("evaluator", "evaluate.log", &strs(&evaluate_args(&env)));
    let mut notify = env.spawn("notifier", "notify.log", &strs(&notify_args(&env, &sink)));
    let mut deploy = env.spawn("deployer", "deploy.log", &strs(&deploy_args(&env)));

    // CI registers version 1 into staging; a retried CI step changes nothing.
    register(&env, "run-1", "s3://models/fraud/1").await;
    register(&env, "run-1", "s3://models/fraud/1").await;

    // The evaluation worker scores it and asks for production.
    env.wait_for_registry("request fraud:1", &ada, |mut c| async move {
        !pending(&mut c, "fraud").await.is_empty()
    })
    .await;
    let asked = pending(&mut ada, "fraud").await.remove(0);
    assert_eq!(asked.id, "fraud:1");
    assert_eq!(asked.requester, "evaluator");

    // The notification arrives signed, after the sink's failures, with how to approve.
    env.wait_for("the request's notification", || {
        let s = sink.deliveries();
        async move {
            s.iter().any(|d| {
                d.body["text"]
                    .as_str()
                    .unwrap_or("")
                    .contains("modelreg approve fraud:1")
            })
        }
    })
    .await;
    assert_eq!(
        *sink.refused.lock().unwrap(),
        3,
        "the sink failed three times first"
    );
    let note = sink
        .deliveries()
        .into_iter()
        .find(|d| d.body["text"].as_str().unwrap_or("").contains("fraud:1"))
        .unwrap();
    let text = note.body["text"].as_str().unwrap();
    assert!(
        text.contains("https://registry.example/requests/fraud:1"),
        "{text}"
    );
    // Slack's escaping: shown as `auc >= 0.8`.
    assert!(text.contains("gate pass: auc &gt;= 0.8"), "{text}");
    assert!(note.body["blocks"].is_array());

    // Nobody may approve without the approver role; bob may.
    let out = env.cli("alice", &["approve", "fraud:1"]).await;
    assert_eq!(out.status.code(), Some(7), "PERMISSION_DENIED exits 7");
    env.ok(
        "bob",
        &["approve", "fraud:1", "--comment", "metrics checked"],
    )
    .await;

    env.wait_for_registry("version 1 deployed", &ada, |mut c| async move {
        version(&mut c, "fraud", 1)
            .await
            .deployments
            .iter()
            .any(|d| d.environment == "prod" && d.status == pb::DeploymentStatus::Succeeded as i32)
    })
    .await;
    let v1 = version(&mut ada, "fraud", 1).await;
    assert_eq!(v1.deployments[0].endpoint, "https://serve.example/fraud/1");

    // Version 2: the notifier is down while it goes through; the evaluation
    // worker is killed in the middle of its command and restarted, and so is
    // the deploy worker. Each event is handled again after the restart.
    crash(&mut notify).await;
    register(&env, "run-2", "s3://models/fraud/2").await;
    let args = evaluate_args(&env);
    let mut evaluate = env
        .crash_in_version_2(&mut evaluate, "evaluator", "evaluate", &args)
        .await;
    env.wait_for_registry("request fraud:2", &ada, |mut c| async move {
        pending(&mut c, "fraud")
            .await
            .iter()
            .any(|r| r.version == 2)
    })
    .await;
    let id2 = pending(&mut ada, "fraud").await.remove(0).id;
    env.ok("bob", &["approve", &id2]).await;
    let args = deploy_args(&env);
    let mut deploy = env
        .crash_in_version_2(&mut deploy, "deployer", "deploy", &args)
        .await;
    let mut notify = env.spawn("notifier", "notify.log", &strs(&notify_args(&env, &sink)));
    env.wait_for_registry("version 2 deployed", &ada, |mut c| async move {
        succeeded(&events(&mut c, "fraud").await, 2) == 1
    })
    .await;

    // On-call rolls back: the deploy worker redeploys version 1.
    env.ok(
        "oncall",
        &["rollback", "fraud", "--reason", "error rate up"],
    )
    .await;
    env.wait_for_registry("version 1 redeployed", &ada, |mut c| async move {
        succeeded(&events(&mut c, "fraud").await, 1) == 2
    })
    .await;

    // Every notification-worthy event was delivered, none lost.
    let log = events(&mut ada, "fraud").await;
    let worth: BTreeSet<u64> = log
        .iter()
        .filter(|e| {
            use pb::EventType as T;
            let t = e.r#type;
            t == T::TransitionRequested as i32
                || t == T::TransitionApproved as i32
                || (t == T::StageChanged as i32 && e.to_stage == pb::Stage::Production as i32)
        })
        .map(|e| e.sequence)
        .collect();
    assert_eq!(
        worth.len(),
        7,
        "2 requests, 2 approvals, 3 entries into production"
    );
    env.wait_for("every notification", || {
        let got: BTreeSet<u64> = sink.deliveries().iter().map(|d| d.sequence).collect();
        let worth = worth.clone();
        async move { worth.is_subset(&got) }
    })
    .await;
    let delivered = sink.deliveries();
    let extra = delivered.len() - worth.len();
    assert!(
        extra <= 1,
        "at most the message in flight at the kill repeats: {delivered:?}"
    );
    let rollback = delivered
        .iter()
        .filter_map(|d| d.body["text"].as_str())
        .find(|t| t.contains("rolled back"))
        .expect("a rollback message");
    assert!(
        rollback.contains("oncall") && rollback.contains("error rate up"),
        "{rollback}"
    );

    // Nothing doubled on the registry: one evaluation per version, one
    // successful deployment per entry into production.
    let count = |t: pb::EventType, v: i64| {
        log.iter()
            .filter(|e| e.r#type == t as i32 && e.version == v)
            .count()
    };
    assert_eq!(count(pb::EventType::EvaluationAttached, 1), 1);
    assert_eq!(count(pb::EventType::EvaluationAttached, 2), 1);
    assert_eq!(
        count(pb::EventType::VersionRegistered, 3),
        0,
        "the CI retry made no version 3"
    );
    assert_eq!((succeeded(&log, 1), succeeded(&log, 2)), (2, 1));
    let reports_of_2 = log
        .iter()
        .filter(|e| e.r#type == pb::EventType::DeploymentReported as i32 && e.version == 2)
        .count();
    assert_eq!(
        reports_of_2, 2,
        "DEPLOYING once (its retry was idempotent), SUCCEEDED once"
    );
    let runs = env.log("deploy.runs");
    let runs: Vec<&str> = runs.lines().collect();
    assert_eq!(
        runs.len(),
        3,
        "each entry into production deployed once: {runs:?}"
    );
    let unique: BTreeSet<&&str> = runs.iter().collect();
    assert_eq!(unique.len(), 3, "{runs:?}");
    // The killed runs were started again (at least once), and finished once.
    let starts = env.log("deploy.starts");
    assert_eq!(
        starts.lines().filter(|l| l.starts_with("2 ")).count(),
        2,
        "{starts}"
    );
    let starts = env.log("evaluate.starts");
    assert_eq!(
        starts.lines().filter(|l| l.starts_with("2 ")).count(),
        2,
        "{starts}"
    );
    assert_eq!(env.log("evaluate.runs").lines().count(), 2);

    // The audit trail tells the story with the right actors.
    let story: Vec<(String, String, i64)> = log
        .iter()
        .filter(|e| e.r#type != pb::EventType::DeploymentReported as i32)
        .map(|e| {
            let t = pb::EventType::try_from(e.r#type).unwrap().as_str_name();
            (
                e.actor.clone(),
                t.trim_start_matches("EVENT_TYPE_").to_owned(),
                e.version,
            )
        })
        .collect();
    let expect = |actor: &str, kind: &str, v: i64| {
        assert!(
            story.contains(&(actor.into(), kind.into(), v)),
            "{actor} {kind} {v} missing from {story:?}"
        );
    };
    expect("alice", "VERSION_REGISTERED", 1);
    expect("evaluator", "EVALUATION_ATTACHED", 1);
    expect("evaluator", "TRANSITION_REQUESTED", 1);
    expect("bob", "TRANSITION_APPROVED", 1);
    expect("bob", "STAGE_CHANGED", 1);
    expect("bob", "TRANSITION_APPROVED", 2);
    expect("oncall", "STAGE_CHANGED", 1);
    assert!(
        log.iter()
            .filter(|e| e.r#type == pb::EventType::DeploymentReported as i32)
            .all(|e| e.actor == "deployer")
    );
    assert!(
        !delivered.iter().any(|d| d.sequence == 0),
        "every POST named its event"
    );
    let audit = env.ok("ada", &["audit", "verify"]).await;
    assert!(audit.contains("audit log intact"), "{audit}");
    let history = env.ok("ada", &["history", "fraud"]).await;
    assert!(history.contains("ROLLBACK by oncall"), "{history}");

    // SIGTERM stops each worker gracefully.
    for child in [&mut evaluate, &mut deploy, &mut notify] {
        let pid = child.id().unwrap();
        Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .unwrap();
        let status = child.wait().await.unwrap();
        assert!(
            status.success(),
            "a worker stopped by SIGTERM exits 0: {status}"
        );
    }
    drop(env.server);
}

/// A command that keeps failing is retried, then reported as WORKER_FAILED
/// (which the notifier forwards); the worker goes on with the next event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_evaluation_is_retried_then_reported() {
    let env = Env::start().await;
    let sink = Sink::start(0).await;
    holdout_and_fraud(&env, "s3://d/h").await;
    let cursor = env.path("eval.cursor").display().to_string();
    let mut worker = env.spawn(
        "evaluator",
        "evaluate.log",
        &[
            "worker",
            "evaluate",
            "--set",
            "holdout@v1",
            "--evaluator-version",
            "1",
            "--after",
            "0",
            "--retries",
            "1",
            "--timeout",
            "5s",
            "--cursor-file",
            &cursor,
            "--fetch",
            FETCH_S3,
            "--cache-dir",
            "cache",
            "--exec",
            "echo 'out of memory' >&2; exit 3",
        ],
    );
    let mut notify = env.spawn("notifier", "notify.log", &strs(&notify_args(&env, &sink)));
    register(&env, "run-1", "s3://models/fraud/1").await;
    let mut ada = env.client("ada").await;
    env.wait_for_registry("the failure event", &ada, |mut c| async move {
        events(&mut c, "fraud")
            .await
            .iter()
            .any(|e| e.r#type == pb::EventType::WorkerFailed as i32)
    })
    .await;
    let failed = events(&mut ada, "fraud")
        .await
        .into_iter()
        .find(|e| e.r#type == pb::EventType::WorkerFailed as i32)
        .unwrap();
    assert_eq!(failed.actor, "evaluator");
    let d = modelreg_client::json::to_json(&failed, "modelreg.v1.RegistryEvent");
    assert_eq!(d["details"]["attempts"], 2.0);
    assert!(
        d["details"]["error"]
            .as_str()
            .unwrap()
            .contains("out of memory"),
        "{d}"
    );
    env.wait_for("the failure's notification", || {
        let s = sink.deliveries();
        let seq = failed.sequence;
        async move { s.iter().any(|d| d.sequence == seq) }
    })
    .await;
    let log = env.log("evaluate.log");
    assert!(
        log.contains("attempt 1/2 failed") && log.contains("attempt 2/2 failed"),
        "{log}"
    );
    crash(&mut worker).await;
    crash(&mut notify).await;
    assert!(
        Path::new(&cursor).is_file(),
        "the cursor moved past the reported event"
    );
}

/// Started on port 0 for gRPC and for HTTP, the server binds ports of its
/// own and reports both in its `--ready-file`, where they answer: no test
/// needs to pick a "free" port that another process may take first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_port_zero_reports_the_addresses_it_bound() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();

    // Act
    let (_server, bound) = start_server(dir.path(), &["--http-listen", "127.0.0.1:0"]).await;

    // Assert: real ports, each serving what it should.
    let grpc: std::net::SocketAddr = bound.grpc.parse().unwrap();
    assert_ne!(grpc.port(), 0, "{}", bound.grpc);
    let mut client = connect(&ConnectOptions::new(format!("http://{grpc}")))
        .await
        .unwrap();
    client
        .list_models(pb::ListModelsRequest::default())
        .await
        .unwrap();
    let http: std::net::SocketAddr = bound
        .http
        .expect("an http= line while the HTTP listener is on")
        .parse()
        .unwrap();
    assert_ne!(http.port(), 0);
    let mut conn = tokio::net::TcpStream::connect(http).await.unwrap();
    conn.write_all(
        format!("GET /metrics HTTP/1.1\r\nhost: {http}\r\nconnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    // Written whole under its final name: no temporary file is left beside it.
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("server.ready"))
        .collect();
    assert_eq!(names, ["server.ready"]);
}

/// The error of the WORKER_FAILED event about version `v` of fraud, if any.
async fn worker_failure(c: &mut RegistryClient, v: i64) -> Option<String> {
    let failed = events(c, "fraud")
        .await
        .into_iter()
        .find(|e| e.r#type == pb::EventType::WorkerFailed as i32 && e.version == v)?;
    let json = modelreg_client::json::to_json(&failed, "modelreg.v1.RegistryEvent");
    json["details"]["error"].as_str().map(str::to_owned)
}

/// Waits until `v` of fraud has an evaluation attached.
async fn wait_evaluated(env: &Env, c: &RegistryClient, v: i64) {
    env.wait_for_registry(
        &format!("an evaluation of version {v}"),
        c,
        |mut c| async move { !version(&mut c, "fraud", v).await.evaluations.is_empty() },
    )
    .await;
}

/// Waits until a WORKER_FAILED event about `v` of fraud is there; its error.
async fn wait_worker_failure(env: &Env, c: &mut RegistryClient, v: i64) -> String {
    let what = format!("a worker failure on version {v}");
    env.wait_for_registry(&what, c, |mut c| async move {
        worker_failure(&mut c, v).await.is_some()
    })
    .await;
    worker_failure(c, v).await.unwrap()
}

/// An evaluation worker for fraud on holdout@v1 that fetches s3:// with
/// [`FETCH_S3`] (or `fetch`), retries `retries` times, and runs a command
/// that logs `VERSION CONTENT PATH` of the verified set to `evaluate.runs`.
fn verifying_evaluator(env: &Env, fetch: &str, retries: &str) -> Vec<String> {
    let exec = r#"echo "$MODELREG_VERSION $(cat "$MODELREG_EVAL_SET_PATH") $MODELREG_EVAL_SET_PATH" >> evaluate.runs; echo '{"auc": 0.9}'"#;
    let options = [
        "--set",
        "holdout@v1",
        "--evaluator-version",
        "1",
        "--retries",
        retries,
    ];
    let mut args = fraud_worker_args(env, "evaluate", &options, exec);
    if !fetch.is_empty() {
        let at = args.iter().position(|a| a == FETCH_S3).unwrap();
        args[at] = fetch.to_owned();
    }
    args
}

/// The SHA-256 digest of `content`, as the registry writes it.
fn digest(content: &str) -> String {
    format!("sha256:{}", sha256_hex(content))
}

/// Asserts that `message` reports a digest mismatch for `what`: expected
/// the digest of `registered`, got that of `found`.
fn assert_mismatch(message: &str, what: &str, registered: &str, found: &str) {
    let expected = format!(
        "digest mismatch for {what}: expected {}, got {}",
        digest(registered),
        digest(found)
    );
    assert!(message.contains(&expected), "{message}");
}

/// The evaluate worker gives its command a verified copy of the set; once
/// one byte of the set's file changes, the next evaluation fails naming the
/// set and both digests, its command does not run and nothing is attached.
/// Put back, the file is accepted again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_evaluation_file_fails_the_evaluation_and_attaches_nothing() {
    // Arrange: the set's file holds "foo", whose digest the set records.
    let env = Env::start().await;
    let data = env.path("holdout.csv");
    std::fs::write(&data, "foo").unwrap();
    holdout_and_fraud(&env, &format!("file://{}", data.display())).await;
    let args = verifying_evaluator(&env, "", "0");
    let mut worker = env.spawn("evaluator", "evaluate.log", &strs(&args));
    let mut ada = env.client("ada").await;
    register(&env, "run-1", "s3://models/fraud/1").await;
    wait_evaluated(&env, &ada, 1).await;
    let runs = env.log("evaluate.runs");
    let (content, path) = runs
        .trim()
        .strip_prefix("1 ")
        .unwrap()
        .split_once(' ')
        .unwrap();
    assert_eq!(content, "foo");
    assert!(
        path.starts_with(&env.path("cache").display().to_string()),
        "the command reads the verified copy in the cache, not the source: {path}"
    );

    // Act: one byte of the set's file changes; version 2 enters staging.
    std::fs::write(&data, "fop").unwrap();
    register(&env, "run-2", "s3://models/fraud/2").await;
    let error = wait_worker_failure(&env, &mut ada, 2).await;

    // Assert
    assert_mismatch(&error, "evaluation set holdout@v1", "foo", "fop");
    assert!(version(&mut ada, "fraud", 2).await.evaluations.is_empty());
    assert_eq!(
        env.log("evaluate.runs").lines().count(),
        1,
        "the command never ran for 2"
    );

    // The file put back is verified afresh and accepted.
    std::fs::write(&data, "foo").unwrap();
    register(&env, "run-3", "s3://models/fraud/3").await;
    wait_evaluated(&env, &ada, 3).await;
    assert!(env.log("evaluate.runs").contains("3 foo "));
    crash(&mut worker).await;
}

/// A fetch hook that writes other bytes than the set's digest promises
/// fails the evaluation at once (a mismatch is not retried), nothing is
/// attached, and nothing is left in the cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_command_that_writes_the_wrong_bytes_fails_the_evaluation() {
    // Arrange
    let env = Env::start().await;
    holdout_and_fraud(&env, "s3://datasets/holdout/v1").await;
    let hook = r#"echo "$MODELREG_FETCH_URI" >> fetch.log; printf bar > "$MODELREG_FETCH_DEST""#;
    let args = verifying_evaluator(&env, hook, "2");
    let mut worker = env.spawn("evaluator", "evaluate.log", &strs(&args));
    let mut ada = env.client("ada").await;

    // Act
    register(&env, "run-1", "s3://models/fraud/1").await;
    let error = wait_worker_failure(&env, &mut ada, 1).await;

    // Assert
    assert_mismatch(&error, "evaluation set holdout@v1", "foo", "bar");
    assert!(version(&mut ada, "fraud", 1).await.evaluations.is_empty());
    assert_eq!(env.log("evaluate.runs"), "", "the command never ran");
    assert_eq!(
        env.log("fetch.log"),
        "s3://datasets/holdout/v1\n",
        "fetched once"
    );
    let cached = std::fs::read_dir(env.path("cache/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(cached, 0, "nothing kept");
    crash(&mut worker).await;
}

/// A tiny HTTP server: `/moved` redirects to `/holdout`, which serves
/// `body`; counts the GETs of `/holdout`.
async fn serve_file(body: &'static str) -> (String, Arc<Mutex<u32>>) {
    use tokio::io::AsyncBufReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(Mutex::new(0u32));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let counted = counted.clone();
            tokio::spawn(async move {
                let mut conn = tokio::io::BufReader::new(conn);
                let mut first = String::new();
                conn.read_line(&mut first).await.ok()?;
                let mut line = String::new();
                while conn.read_line(&mut line).await.ok()? > 2 {
                    line.clear();
                }
                let answer = if first.starts_with("GET /holdout ") {
                    *counted.lock().unwrap() += 1;
                    format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    "HTTP/1.1 302 Found\r\nlocation: /holdout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_owned()
                };
                conn.get_mut().write_all(answer.as_bytes()).await.ok()
            });
        }
    });
    (format!("{base}/moved"), hits)
}

/// An http:// set is downloaded (following a redirect) once, verified, and
/// then served from the cache to every later evaluation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_set_is_downloaded_once_and_reused_from_the_cache() {
    // Arrange
    let env = Env::start().await;
    let (url, hits) = serve_file("foo").await;
    holdout_and_fraud(&env, &url).await;
    let args = verifying_evaluator(&env, "", "0");
    let mut worker = env.spawn("evaluator", "evaluate.log", &strs(&args));
    let ada = env.client("ada").await;

    // Act
    register(&env, "run-1", "s3://models/fraud/1").await;
    wait_evaluated(&env, &ada, 1).await;
    register(&env, "run-2", "s3://models/fraud/2").await;
    wait_evaluated(&env, &ada, 2).await;

    // Assert
    let runs = env.log("evaluate.runs");
    assert!(runs.contains("1 foo ") && runs.contains("2 foo "), "{runs}");
    assert_eq!(
        *hits.lock().unwrap(),
        1,
        "the second evaluation used the cache"
    );
    crash(&mut worker).await;
}

/// Waits until `v` of fraud has a deployment report with `status`.
async fn wait_deployed(env: &Env, c: &RegistryClient, v: i64, status: pb::DeploymentStatus) {
    let what = format!("version {v} {status:?}");
    env.wait_for_registry(&what, c, |mut c| async move {
        version(&mut c, "fraud", v)
            .await
            .deployments
            .iter()
            .any(|d| d.status == status as i32)
    })
    .await;
}

/// The deploy worker deploys an artifact only as registered: unchanged,
/// its command gets the verified copy; changed after registration, the
/// deployment is FAILED naming both digests and the command never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_artifact_fails_the_deployment_and_deploys_nothing() {
    // Arrange: two versions whose artifacts held "test" when registered.
    let env = Env::start().await;
    env.ok("ada", &["model", "create", "fraud"]).await;
    for v in ["1", "2"] {
        let file = env.path(&format!("model-{v}.bin"));
        std::fs::write(&file, "test").unwrap();
        register(
            &env,
            &format!("run-{v}"),
            &format!("file://{}", file.display()),
        )
        .await;
    }
    let exec = r#"echo "$MODELREG_VERSION $(cat "$MODELREG_ARTIFACT_PATH")" >> deploy.runs; echo "https://serve.example/$MODELREG_VERSION""#;
    let args = fraud_worker_args(
        &env,
        "deploy",
        &["--environment", "prod", "--retries", "0"],
        exec,
    );
    let mut worker = env.spawn("deployer", "deploy.log", &strs(&args));
    let mut ada = env.client("ada").await;
    env.ok("alice", &["transition", "fraud", "1", "production"])
        .await;
    env.ok("bob", &["approve", "fraud:1"]).await;
    wait_deployed(&env, &ada, 1, pb::DeploymentStatus::Succeeded).await;
    assert_eq!(env.log("deploy.runs"), "1 test\n");

    // Act: version 2's artifact changes after registration; it is approved.
    std::fs::write(env.path("model-2.bin"), "tesT").unwrap();
    env.ok("alice", &["transition", "fraud", "2", "production"])
        .await;
    env.ok("bob", &["approve", "fraud:2"]).await;
    wait_deployed(&env, &ada, 2, pb::DeploymentStatus::Failed).await;

    // Assert
    let v2 = version(&mut ada, "fraud", 2).await;
    assert_mismatch(
        &v2.deployments[0].message,
        "artifact of fraud/2",
        "test",
        "tesT",
    );
    assert_eq!(env.log("deploy.runs"), "1 test\n", "nothing deployed for 2");
    assert_eq!(succeeded(&events(&mut ada, "fraud").await, 2), 0);
    crash(&mut worker).await;
}
