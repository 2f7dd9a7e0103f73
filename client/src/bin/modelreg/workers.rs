//! The workers of `modelreg`: `worker evaluate`, `worker deploy` and
//! `notify`. Each is a [`Subscription`] (durable cursor, resume, at-least-once)
//! plus a handler; whatever a handler writes to the registry carries the
//! event's idempotency key as its request id, so a redelivered event never
//! doubles an effect. SIGINT/SIGTERM stop a worker after the event in hand.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use clap::{Args, Subcommand, ValueEnum};
use modelreg_client::consumer::Membership;
use modelreg_client::json::to_json;
use modelreg_client::names::{parse_stage, stage_label};
use modelreg_client::slack;
use modelreg_client::subscription::{CursorFile, Delivery, Start, Subscription, stop_on_signals};
use modelreg_client::terminal::printable;
use modelreg_client::watch::is_transient;
use modelreg_client::webhook::{Webhook, backoff};
use modelreg_client::{RegistryClient, pb};
use tokio::io::AsyncReadExt as _;

use super::notify::{EmailArgs, Mailer, deliver};
use super::{Failure, parse_set_ref};
use modelreg_client::errors;
use modelreg_client::fetch::{Fetcher, Input, default_cache_dir};
use modelreg_client::verify::Cache;

/// Which events a worker or the notifier reads, and where it keeps its place:
/// in a durable consumer on the server (`--consumer`, for workers that keep
/// no local state: any number of replicas share the work), or in a local
/// cursor file.
#[derive(Args, Clone)]
pub struct SourceArgs {
    /// Join this durable consumer (created on first use): the registry
    /// keeps its place, hands each model's events to one member at a time,
    /// retries rejected events and parks them as dead letters.
    #[arg(
        long,
        required_unless_present = "cursor_file",
        conflicts_with = "cursor_file"
    )]
    consumer: Option<String>,
    /// This worker's member id in the consumer; default: host name and pid.
    #[arg(long, requires = "consumer")]
    member: Option<String>,
    /// With --consumer: deliveries of an event before it is parked as a
    /// dead letter (default 5; a new consumer's setting).
    #[arg(long, requires = "consumer")]
    max_deliveries: Option<u32>,
    /// With --consumer: how long a member keeps its models without a
    /// heartbeat (default 10s; a new consumer's setting).
    #[arg(long, requires = "consumer", value_parser = modelreg_api::duration::parse)]
    lease: Option<Duration>,
    /// With --consumer: the wait before the first redelivery of a rejected
    /// event, doubled for each further one (default 1s).
    #[arg(long, requires = "consumer", value_parser = modelreg_api::duration::parse)]
    backoff: Option<Duration>,
    /// With --consumer: what a parked event does to its model's later
    /// events: block (the default) or skip.
    #[arg(long, requires = "consumer", value_parser = ["block", "skip"])]
    on_dead_letter: Option<String>,
    /// The file that keeps this worker's place in the event log, written
    /// atomically after each handled event (the notifier's moves only past
    /// delivered messages).
    #[arg(long)]
    cursor_file: Option<PathBuf>,
    /// Only these models' events (repeatable); default: every model.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Where a new cursor file or consumer starts: after this sequence (0 =
    /// the whole log); default: only events from now on.
    #[arg(long)]
    after: Option<u64>,
}

/// Options every command-running worker shares.
#[derive(Args, Clone)]
pub struct CommonArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Longest a command may run (e.g. 10m, 30s).
    #[arg(long, default_value = "10m", value_parser = modelreg_api::duration::parse)]
    timeout: Duration,
    /// Attempts after the first when a command (or fetching an input) fails.
    #[arg(long, default_value_t = 2)]
    retries: u32,
    /// Where verified evaluation sets and artifacts are kept, by digest.
    #[arg(long, env = "MODELREG_CACHE_DIR", default_value_os_t = default_cache_dir())]
    cache_dir: PathBuf,
    /// The command (run by `sh -c`) that fetches URIs other than file://,
    /// http:// and https://: it writes MODELREG_FETCH_URI to the path
    /// MODELREG_FETCH_DEST.
    #[arg(long)]
    fetch: Option<String>,
}

impl CommonArgs {
    /// What materialises and verifies the command's inputs.
    fn fetcher(&self) -> Fetcher {
        // Absolute, so that the paths commands get hold wherever they run.
        let cache = Cache::new(
            std::path::absolute(&self.cache_dir).unwrap_or_else(|_| self.cache_dir.clone()),
        );
        Fetcher::new(cache, self.fetch.clone(), self.timeout, self.retries + 1)
    }
}

/// `worker …`.
#[derive(Subcommand)]
pub enum WorkerCmd {
    /// Evaluate every version that enters STAGING with a command, and attach
    /// the metrics it prints (its last stdout line: a JSON object of metric
    /// name → number).
    Evaluate(EvaluateArgs),
    /// Deploy every version that enters PRODUCTION (rollbacks included) with
    /// a command, reporting DEPLOYING, then SUCCEEDED (the last stdout line
    /// is the endpoint) or FAILED (the stderr tail).
    Deploy(DeployArgs),
}

/// `worker evaluate`.
#[derive(Args)]
pub struct EvaluateArgs {
    /// The evaluation set, NAME@VERSION.
    #[arg(long, value_parser = parse_set_ref)]
    set: pb::EvaluationSetRef,
    /// The version of the metric code the command runs.
    #[arg(long)]
    evaluator_version: String,
    /// The command (run by `sh -c`).
    #[arg(long)]
    exec: String,
    /// After attaching, ask for this stage (e.g. production); the gates then judge.
    #[arg(long)]
    request: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// `worker deploy`.
#[derive(Args)]
pub struct DeployArgs {
    /// The environment deployed to, e.g. prod-eu.
    #[arg(long)]
    environment: String,
    /// The deploy command (run by `sh -c`).
    #[arg(long)]
    exec: String,
    /// The command that takes a version out of service when it leaves
    /// PRODUCTION; reported as UNDEPLOYED.
    #[arg(long)]
    undeploy_exec: Option<String>,
    #[command(flatten)]
    common: CommonArgs,
}

/// How notifications are written.
#[derive(Clone, Copy, ValueEnum)]
pub enum Format {
    /// A Slack-compatible body: `text` and `blocks`.
    Slack,
    /// The event itself, as proto3 JSON.
    Json,
}

/// `notify`.
#[derive(Args)]
pub struct NotifyArgs {
    /// Where to POST (optional with --smtp).
    #[arg(long, required_unless_present = "smtp")]
    webhook: Option<String>,
    /// The body's shape.
    #[arg(long, value_enum, default_value = "slack")]
    format: Format,
    /// Sign each POST with HMAC-SHA256 of "<timestamp>.<body>" under this secret.
    #[arg(long, env = "MODELREG_WEBHOOK_SECRET")]
    secret: Option<String>,
    /// The dashboard's base URL, for links to each request (…/requests/ID).
    #[arg(long)]
    link_base: Option<String>,
    /// The PEM CA to trust for an https webhook instead of the public roots.
    #[arg(long)]
    webhook_ca_cert: Option<PathBuf>,
    /// Longest wait between delivery attempts.
    #[arg(long, default_value = "60s", value_parser = modelreg_api::duration::parse)]
    max_backoff: Duration,
    #[command(flatten)]
    email: EmailArgs,
    #[command(flatten)]
    source: SourceArgs,
}

/// One log line on stderr: event text, command output and server messages
/// in it are made printable, and it stays one line.
pub(super) fn log(worker: &str, msg: impl std::fmt::Display) {
    eprintln!("modelreg {worker}: {}", printable(&msg.to_string()));
}

/// Runs `call` until it succeeds or fails for a reason other than the
/// registry being unreachable for a moment.
pub(super) async fn with_retry<T, F, Fut>(worker: &str, mut call: F) -> Result<T, tonic::Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(s) if is_transient(&s) => {
                attempt += 1;
                log(
                    worker,
                    format!("registry unavailable ({}); retrying", s.message()),
                );
                tokio::time::sleep(backoff(attempt, Duration::from_secs(10), None)).await;
            }
            other => return other,
        }
    }
}

/// How a worker's log lines name an event's version: `fraud/2 (event 17)`.
fn event_subject(e: &pb::RegistryEvent) -> String {
    format!("{}/{} (event {})", e.model, e.version, e.sequence)
}

/// The version an event is about, as the registry has it now.
async fn current_version(
    worker: &str,
    client: &RegistryClient,
    e: &pb::RegistryEvent,
) -> Result<pb::ModelVersion, Failure> {
    let version = with_retry(worker, || {
        let mut c = client.clone();
        let req = pb::GetVersionRequest {
            model: e.model.clone(),
            version: e.version,
            alias: String::new(),
        };
        async move { c.get_version(req).await }
    })
    .await?
    .into_inner()
    .version
    .unwrap_or_default();
    Ok(version)
}

/// The environment of a worker's command: the event's model, version,
/// artifact and sequence, and the worker's own `extra` variables.
fn command_env(
    e: &pb::RegistryEvent,
    version: &pb::ModelVersion,
    extra: impl IntoIterator<Item = (&'static str, String)>,
) -> HashMap<&'static str, String> {
    let mut env = HashMap::from([
        ("MODELREG_MODEL", e.model.clone()),
        ("MODELREG_VERSION", e.version.to_string()),
        ("MODELREG_ARTIFACT_URI", version.artifact_uri.clone()),
        ("MODELREG_ARTIFACT_DIGEST", version.artifact_digest.clone()),
        ("MODELREG_EVENT_SEQUENCE", e.sequence.to_string()),
    ]);
    env.extend(extra);
    env
}

/// Logs a failed run of a worker's command and, unless it was the last
/// attempt, waits before the next one.
async fn attempt_failed(worker: &str, subject: &str, attempt: u32, attempts: u32, err: &str) {
    log(
        worker,
        format!("{subject}: attempt {attempt}/{attempts} failed: {err}"),
    );
    if attempt < attempts {
        tokio::time::sleep(backoff(attempt, Duration::from_secs(30), None)).await;
    }
}

/// The outcome of one command run.
struct Ran {
    /// The last non-empty line of stdout.
    last_line: String,
}

/// Runs `command` with `env` under `timeout`; the error carries the exit
/// status and the stderr tail.
async fn run_command(
    command: &str,
    env: &HashMap<&'static str, String>,
    timeout: Duration,
) -> Result<Ran, String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start `sh -c {command}`: {e}"))?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let run = async {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let (a, b, status) = tokio::join!(
            stdout.read_to_end(&mut out),
            stderr.read_to_end(&mut err),
            child.wait()
        );
        a.and(b).map_err(|e| e.to_string())?;
        Ok::<_, String>((status.map_err(|e| e.to_string())?, out, err))
    };
    let (status, out, err) = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r?,
        Err(_) => return Err(format!("timed out after {timeout:?}")),
    };
    let tail = tail(&String::from_utf8_lossy(&err), 2000);
    if !status.success() {
        return Err(format!("exited with {status}: {tail}"));
    }
    let out = String::from_utf8_lossy(&out);
    let last_line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or_default()
        .trim()
        .to_owned();
    Ok(Ran { last_line })
}

/// The last `max` bytes of `s`, on a character boundary.
fn tail(s: &str, max: usize) -> String {
    let s = s.trim();
    if s.len() <= max {
        return s.to_owned();
    }
    let mut start = s.len() - max;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &s[start..])
}

/// Parses a command's metrics line: a JSON object of finite numbers.
fn parse_metrics(line: &str) -> Result<HashMap<String, f64>, String> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        format!("the last stdout line is not a JSON object of metrics ({e}): {line:?}")
    })?;
    let object = value
        .as_object()
        .ok_or_else(|| format!("the last stdout line is not a JSON object: {line:?}"))?;
    object
        .iter()
        .map(|(k, v)| match v.as_f64() {
            Some(n) if n.is_finite() => Ok((k.clone(), n)),
            _ => Err(format!("metric {k:?} is not a finite number: {v}")),
        })
        .collect()
}

/// What a handler made of a delivery.
#[derive(Debug)]
pub(super) enum Handled {
    /// Done (or nothing to do): move past it.
    Done,
    /// It failed after the worker's own attempts, for this reason: a
    /// consumer delivers it again later (or parks it); a cursor file moves
    /// past it, the failure having been reported.
    Failed(String),
    /// Not finished (stopping): it stays to be handled.
    Stopped,
}

/// Hands each event of `source` to `handle` until a signal: from a durable
/// consumer, or from a watch with a cursor file.
async fn run_loop<H, Fut>(
    worker: &str,
    client: &RegistryClient,
    filter: pb::WatchTransitionsRequest,
    source: &SourceArgs,
    handle: H,
) -> Result<(), Failure>
where
    H: FnMut(Delivery) -> Fut,
    Fut: std::future::Future<Output = Result<Handled, Failure>>,
{
    match (&source.consumer, &source.cursor_file) {
        (Some(name), _) => consume_loop(worker, client, filter, source, name, handle).await,
        (None, Some(path)) => cursor_loop(worker, client, filter, source, path, handle).await,
        (None, None) => Err(Failure::Local(
            "name a --consumer or a --cursor-file".into(),
        )),
    }
}

/// With a cursor file: the cursor moves past each event handled (or given up on).
async fn cursor_loop<H, Fut>(
    worker: &str,
    client: &RegistryClient,
    filter: pb::WatchTransitionsRequest,
    source: &SourceArgs,
    path: &std::path::Path,
    mut handle: H,
) -> Result<(), Failure>
where
    H: FnMut(Delivery) -> Fut,
    Fut: std::future::Future<Output = Result<Handled, Failure>>,
{
    let mut stop = stop_on_signals();
    let start = source.after.map(Start::After).unwrap_or(Start::End);
    let cursor = CursorFile::new(path);
    let mut sub =
        Subscription::open(client.clone(), filter, cursor, start).map_err(Failure::Local)?;
    log(
        worker,
        match sub.saved() {
            Some(s) => format!("resuming after sequence {s}"),
            None => "starting".to_owned(),
        },
    );
    loop {
        let delivery = tokio::select! {
            d = sub.next() => d.map_err(|e| Failure::Local(e.to_string()))?,
            _ = stop.changed() => break,
        };
        // The event in hand is finished even if a signal arrives meanwhile.
        match handle(delivery.clone()).await? {
            Handled::Done | Handled::Failed(_) => sub
                .done(&delivery)
                .map_err(|e| Failure::Local(e.to_string()))?,
            // Not handled (stopping mid-delivery): the cursor stays before it.
            Handled::Stopped => break,
        }
        if *stop.borrow() {
            break;
        }
    }
    log(worker, "stopped");
    Ok(())
}

/// The spec a worker brings to its consumer.
fn consumer_spec(filter: pb::WatchTransitionsRequest, source: &SourceArgs) -> pb::ConsumerSpec {
    let duration = |d: Duration| prost_types::Duration {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    };
    pb::ConsumerSpec {
        models: filter.models,
        types: filter.types,
        to_stages: filter.to_stages,
        start_after: source.after,
        lease: source.lease.map(duration),
        max_deliveries: source.max_deliveries.unwrap_or(0) as i32,
        backoff: source.backoff.map(duration),
        on_dead_letter: match source.on_dead_letter.as_deref() {
            Some("skip") => pb::OnDeadLetter::Skip,
            Some(_) => pb::OnDeadLetter::Block,
            None => pb::OnDeadLetter::Unspecified,
        } as i32,
    }
}

/// As a member of a durable consumer: each event is acknowledged when
/// handled, rejected (to be delivered again, or parked) when it failed;
/// a write refused because the model moved to another member drops it.
async fn consume_loop<H, Fut>(
    worker: &str,
    client: &RegistryClient,
    filter: pb::WatchTransitionsRequest,
    source: &SourceArgs,
    name: &str,
    mut handle: H,
) -> Result<(), Failure>
where
    H: FnMut(Delivery) -> Fut,
    Fut: std::future::Future<Output = Result<Handled, Failure>>,
{
    let mut stop = stop_on_signals();
    let member = source
        .member
        .clone()
        .unwrap_or_else(modelreg_client::consumer::default_member_id);
    let spec = consumer_spec(filter, source);
    let mut membership = Membership::open(client.clone(), name, &member, spec);
    log(worker, format!("joining consumer {name} as {member}"));
    let refused = |what: &str, e: &pb::RegistryEvent, s: &tonic::Status| {
        log(
            worker,
            format!(
                "{}: {what} refused, the model moved to another member: {}",
                event_subject(e),
                errors::describe(s)
            ),
        )
    };
    loop {
        let d = tokio::select! {
            d = membership.next() => d.map_err(Failure::Status)?,
            _ = stop.changed() => break,
        };
        let delivery = Delivery {
            event: d.event.clone(),
            attempt: d.attempt.max(1) as u32,
            fence: Some(d.fence()),
        };
        if d.attempt > 1 {
            log(
                worker,
                format!(
                    "{}: delivery {} of {}",
                    event_subject(&d.event),
                    d.attempt,
                    d.max_deliveries
                ),
            );
        }
        let outcome = match handle(delivery).await {
            Err(Failure::Status(s)) if s.code() == tonic::Code::FailedPrecondition => {
                refused("a report", &d.event, &s);
                membership.drop_delivery(&d);
                continue;
            }
            other => other?,
        };
        let settled = match outcome {
            Handled::Done => membership.ack(&d).await.map(|_| ()),
            Handled::Failed(reason) => membership.reject(&d, &tail(&reason, 4000)).await.map(|r| {
                if r.dead_lettered {
                    log(
                        worker,
                        format!(
                            "{}: parked as a dead letter after {} deliveries",
                            event_subject(&d.event),
                            r.deliveries
                        ),
                    );
                }
            }),
            Handled::Stopped => break,
        };
        match settled {
            Ok(()) => {}
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                refused("the acknowledgement", &d.event, &s)
            }
            Err(s) => return Err(Failure::Status(s)),
        }
        if *stop.borrow() {
            break;
        }
    }
    membership.leave().await;
    log(worker, "stopped");
    Ok(())
}

/// The stage changes of `source`'s models into `to_stages` (into any
/// stage when it is empty).
fn stage_changes(source: &SourceArgs, to_stages: Vec<i32>) -> pb::WatchTransitionsRequest {
    pb::WatchTransitionsRequest {
        models: source.models.clone(),
        types: vec![pb::EventType::StageChanged as i32],
        to_stages,
        after_sequence: None,
    }
}

/// `worker evaluate` and `worker deploy`.
pub async fn worker_cmd(client: RegistryClient, cmd: WorkerCmd) -> Result<(), Failure> {
    match cmd {
        WorkerCmd::Evaluate(args) => evaluate(client, args).await,
        WorkerCmd::Deploy(args) => deploy(client, args).await,
    }
}

async fn evaluate(client: RegistryClient, args: EvaluateArgs) -> Result<(), Failure> {
    const WORKER: &str = "worker evaluate";
    let request_stage = args
        .request
        .as_deref()
        .map(parse_stage)
        .transpose()
        .map_err(Failure::Local)?;
    let set = with_retry(WORKER, || {
        let mut c = client.clone();
        let req = pb::GetEvaluationSetRequest {
            name: args.set.name.clone(),
            version: args.set.version.clone(),
        };
        async move { c.get_evaluation_set(req).await }
    })
    .await?
    .into_inner()
    .evaluation_set
    .unwrap_or_default();
    let set_label = format!("{}@{}", set.name, set.version);
    let filter = stage_changes(&args.common.source, vec![pb::Stage::Staging as i32]);
    let common = args.common.clone();
    run_loop(WORKER, &client, filter, &common.source, |d| {
        let client = client.clone();
        let set_ref = args.set.clone();
        let set_input = Input {
            what: format!("evaluation set {set_label}"),
            uri: set.uri.clone(),
            digest: set.digest.clone(),
            env: "MODELREG_EVAL_SET_PATH",
        };
        let set_uri = set.uri.clone();
        let set_label = set_label.clone();
        let exec = args.exec.clone();
        let evaluator_version = args.evaluator_version.clone();
        let common = common.clone();
        async move {
            let e = &d.event;
            let version = current_version(WORKER, &client, e).await?;
            let subject = event_subject(e);
            let mut last_error = String::new();
            let attempts = common.retries + 1;
            // The set (and the artifact, when it has a digest) verified first;
            // on a mismatch the command never runs and nothing is attached.
            let inputs: Vec<Input> = [set_input]
                .into_iter()
                .chain(Input::artifact(&e.model, &version))
                .collect();
            let (verified, runs) = match common
                .fetcher()
                .verified_env(&inputs, |m| log(WORKER, format!("{subject}: {m}")))
                .await
            {
                Ok(paths) => (paths, attempts),
                Err(err) => {
                    last_error = err.to_string();
                    log(WORKER, format!("{subject}: {last_error}"));
                    (vec![], 0)
                }
            };
            let env = command_env(
                e,
                &version,
                [
                    ("MODELREG_EVAL_SET", set_label.clone()),
                    ("MODELREG_EVAL_SET_URI", set_uri.clone()),
                ]
                .into_iter()
                .chain(verified),
            );
            let mut attached = false;
            for attempt in 1..=runs {
                let metrics = match run_command(&exec, &env, common.timeout).await {
                    Ok(ran) => parse_metrics(&ran.last_line),
                    Err(err) => Err(err),
                };
                let metrics = match metrics {
                    Ok(m) => m,
                    Err(err) => {
                        attempt_failed(WORKER, &subject, attempt, attempts, &err).await;
                        last_error = err;
                        continue;
                    }
                };
                let result = with_retry(WORKER, || {
                    let mut c = client.clone();
                    let req = pb::AttachEvaluationRequest {
                        model: e.model.clone(),
                        version: e.version,
                        evaluation_set: Some(set_ref.clone()),
                        evaluator_version: evaluator_version.clone(),
                        metrics: metrics.clone(),
                        report_uri: String::new(),
                        request_id: d.key("evaluate"),
                    };
                    async move { c.attach_evaluation(req).await }
                })
                .await;
                match result {
                    Ok(_) => {
                        log(
                            WORKER,
                            format!("{subject}: attached {metrics:?} on {set_label}"),
                        );
                        attached = true;
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::AlreadyExists => {
                        // Scored before by this evaluator version: the result stands.
                        log(
                            WORKER,
                            format!(
                                "{subject}: already evaluated on {set_label} by {evaluator_version}"
                            ),
                        );
                        attached = true;
                        break;
                    }
                    Err(s) if s.code() == tonic::Code::InvalidArgument => {
                        last_error =
                            format!("the registry refused the metrics: {}", errors::describe(&s));
                        log(
                            WORKER,
                            format!("{subject}: attempt {attempt}/{attempts} failed: {last_error}"),
                        );
                    }
                    Err(s) => return Err(Failure::Status(s)),
                }
            }
            if !attached {
                let report = with_retry(WORKER, || {
                    let mut c = client.clone();
                    let req = pb::ReportWorkerFailureRequest {
                        model: e.model.clone(),
                        version: e.version,
                        worker: "evaluate".into(),
                        event_sequence: e.sequence,
                        error: tail(&last_error, 4000),
                        attempts: runs.max(1) as i32,
                        request_id: d.key("evaluate-failed"),
                    };
                    async move { c.report_worker_failure(req).await }
                })
                .await;
                match report {
                    Ok(_) => log(
                        WORKER,
                        format!(
                            "{subject}: gave up after {} attempts; reported",
                            runs.max(1)
                        ),
                    ),
                    Err(s) => return Err(Failure::Status(s)),
                }
                return Ok(Handled::Failed(tail(&last_error, 4000)));
            }
            if let Some(stage) = request_stage {
                let asked = with_retry(WORKER, || {
                    let mut c = client.clone();
                    let req = pb::TransitionStageRequest {
                        model: e.model.clone(),
                        version: e.version,
                        target_stage: stage as i32,
                        comment: format!(
                            "evaluated on {set_label} by evaluator {evaluator_version}"
                        ),
                        etag: String::new(),
                    };
                    async move { c.transition_stage(req).await }
                })
                .await;
                match asked {
                    Ok(r) => {
                        let r = r.into_inner();
                        match (r.version, r.request) {
                            (Some(v), _) => log(
                                WORKER,
                                format!("{subject}: moved to {}", stage_label(v.stage)),
                            ),
                            (None, Some(req)) => log(
                                WORKER,
                                format!(
                                    "{subject}: requested {} as {}",
                                    stage_label(req.to_stage),
                                    req.id
                                ),
                            ),
                            _ => {}
                        }
                    }
                    // Gates refused, or the version moved on meanwhile: the
                    // registry's verdict, not the worker's failure.
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => log(
                        WORKER,
                        format!("{subject}: not requested: {}", errors::describe(&s)),
                    ),
                    Err(s) => return Err(Failure::Status(s)),
                }
            }
            Ok(Handled::Done)
        }
    })
    .await
}

async fn deploy(client: RegistryClient, args: DeployArgs) -> Result<(), Failure> {
    const WORKER: &str = "worker deploy";
    // Leaving PRODUCTION matters too when there is an undeploy command.
    let to_stages = if args.undeploy_exec.is_some() {
        vec![]
    } else {
        vec![pb::Stage::Production as i32]
    };
    let filter = stage_changes(&args.common.source, to_stages);
    let common = args.common.clone();
    run_loop(WORKER, &client, filter, &common.source, |d| {
        let client = client.clone();
        let environment = args.environment.clone();
        let exec = args.exec.clone();
        let undeploy = args.undeploy_exec.clone();
        let common = common.clone();
        async move {
            let e = &d.event;
            let production = pb::Stage::Production as i32;
            let (command, leaving) = if e.to_stage == production {
                (exec, false)
            } else if e.from_stage == production && undeploy.is_some() {
                (undeploy.unwrap_or_default(), true)
            } else {
                return Ok(Handled::Done);
            };
            let subject = event_subject(e);
            let version = current_version(WORKER, &client, e).await?;
            if !leaving && version.stage != production {
                log(
                    WORKER,
                    format!("{subject}: no longer in PRODUCTION; not deployed"),
                );
                return Ok(Handled::Done);
            }
            // A success newer than the event means it was handled already
            // (a failure is tried again when the event is delivered again).
            let handled = version.deployments.iter().any(|dep| {
                dep.environment == environment
                    && dep
                        .report_time
                        .as_ref()
                        .zip(e.occur_time.as_ref())
                        .is_some_and(|(r, o)| (r.seconds, r.nanos) >= (o.seconds, o.nanos))
                    && (dep.status == pb::DeploymentStatus::Succeeded as i32
                        || dep.status == pb::DeploymentStatus::Undeployed as i32)
            });
            if handled {
                log(
                    WORKER,
                    format!("{subject}: already handled in {environment}"),
                );
                return Ok(Handled::Done);
            }
            let report = |status: pb::DeploymentStatus,
                          endpoint: String,
                          message: String,
                          step: &'static str| {
                let client = client.clone();
                let req = pb::ReportDeploymentRequest {
                    model: e.model.clone(),
                    version: e.version,
                    environment: environment.clone(),
                    status: status as i32,
                    endpoint,
                    message,
                    request_id: d.key(&format!("deploy-{step}")),
                    fence: d.fence.clone(),
                };
                async move {
                    with_retry(WORKER, || {
                        let mut c = client.clone();
                        let req = req.clone();
                        async move { c.report_deployment(req).await }
                    })
                    .await
                    .map(|_| ())
                    .map_err(Failure::Status)
                }
            };
            // What is deployed is what was registered: a mismatch deploys nothing.
            let artifact = if leaving {
                None
            } else {
                Input::artifact(&e.model, &version)
            };
            let verified = match common
                .fetcher()
                .verified_env(artifact.as_slice(), |m| {
                    log(WORKER, format!("{subject}: {m}"))
                })
                .await
            {
                Ok(paths) => paths,
                Err(err) => {
                    let message = tail(&err.to_string(), 4000);
                    report(
                        pb::DeploymentStatus::Failed,
                        String::new(),
                        message.clone(),
                        "failed",
                    )
                    .await?;
                    log(WORKER, format!("{subject}: FAILED in {environment}: {err}"));
                    return Ok(Handled::Failed(message));
                }
            };
            if !leaving {
                report(
                    pb::DeploymentStatus::Deploying,
                    String::new(),
                    String::new(),
                    "deploying",
                )
                .await?;
            }
            let env = command_env(
                e,
                &version,
                [("MODELREG_ENVIRONMENT", environment.clone())]
                    .into_iter()
                    .chain(verified),
            );
            let attempts = common.retries + 1;
            let mut last_error = String::new();
            for attempt in 1..=attempts {
                match run_command(&command, &env, common.timeout).await {
                    Ok(ran) => {
                        let (status, step, endpoint) = if leaving {
                            (
                                pb::DeploymentStatus::Undeployed,
                                "undeployed",
                                String::new(),
                            )
                        } else {
                            (pb::DeploymentStatus::Succeeded, "succeeded", ran.last_line)
                        };
                        report(status, endpoint.clone(), String::new(), step).await?;
                        log(
                            WORKER,
                            format!("{subject}: {step} in {environment} {endpoint}"),
                        );
                        return Ok(Handled::Done);
                    }
                    Err(err) => {
                        attempt_failed(WORKER, &subject, attempt, attempts, &err).await;
                        last_error = err;
                    }
                }
            }
            let what = if leaving { "undeploy failed: " } else { "" };
            report(
                pb::DeploymentStatus::Failed,
                String::new(),
                tail(&format!("{what}{last_error}"), 4000),
                "failed",
            )
            .await?;
            log(WORKER, format!("{subject}: FAILED in {environment}"));
            Ok(Handled::Failed(format!("{what}{last_error}")))
        }
    })
    .await
}

/// The event types a notifier forwards.
fn notify_types() -> Vec<i32> {
    [
        "EVENT_TYPE_TRANSITION_REQUESTED",
        "EVENT_TYPE_TRANSITION_APPROVED",
        "EVENT_TYPE_TRANSITION_REJECTED",
        "EVENT_TYPE_STAGE_CHANGED",
        "EVENT_TYPE_WORKER_FAILED",
        "EVENT_TYPE_DEAD_LETTERED",
        "EVENT_TYPE_DEPLOYMENT_REPORTED",
        "EVENT_TYPE_LIVE_METRIC_BREACH",
    ]
    .iter()
    .filter_map(|n| pb::EventType::from_str_name(n))
    .map(|t| t as i32)
    .collect()
}

/// Whether an event of the forwarded types deserves a message.
fn worth_notifying(e: &pb::RegistryEvent, details: &serde_json::Value) -> bool {
    use pb::EventType as T;
    match T::try_from(e.r#type) {
        Ok(T::StageChanged) => e.to_stage == pb::Stage::Production as i32,
        Ok(T::DeploymentReported) => details["status"]
            .as_str()
            .is_some_and(|s| s.contains("FAILED")),
        Ok(_) => true,
        Err(_) => false,
    }
}

/// `notify`.
pub async fn notify(client: RegistryClient, args: NotifyArgs) -> Result<(), Failure> {
    const WORKER: &str = "notify";
    let ca = match &args.webhook_ca_cert {
        Some(p) => Some(
            std::fs::read(p)
                .map_err(|e| Failure::Local(format!("cannot read {}: {e}", p.display())))?,
        ),
        None => None,
    };
    let hook = args
        .webhook
        .as_deref()
        .map(|url| {
            Webhook::new(
                url,
                args.secret.as_deref(),
                ca.as_deref(),
                Duration::from_secs(10),
            )
        })
        .transpose()
        .map_err(Failure::Local)?;
    let mailer = Mailer::new(&args.email)?;
    let filter = pb::WatchTransitionsRequest {
        models: args.source.models.clone(),
        types: notify_types(),
        to_stages: vec![],
        after_sequence: None,
    };
    let stop = stop_on_signals();
    run_loop(WORKER, &client, filter, &args.source, |d| {
        let hook = hook.clone();
        let (client, mailer) = (client.clone(), &mailer);
        let link_base = args.link_base.clone();
        let format = args.format;
        let max_backoff = args.max_backoff;
        let mut stop = stop.clone();
        async move {
            let e = &d.event;
            let json = to_json(e, "modelreg.v1.RegistryEvent");
            let details = json["details"].clone();
            if !worth_notifying(e, &details) {
                return Ok(Handled::Done);
            }
            if let Some(hook) = &hook {
                let (body, content_type) = match format {
                    Format::Json => (json.to_string(), "application/json"),
                    Format::Slack => {
                        let body = slack::message(e, &details, link_base.as_deref());
                        (body.to_string(), "application/json")
                    }
                };
                let post = || hook.post(body.as_bytes(), content_type, e.sequence);
                if !deliver(e.sequence, "the webhook", max_backoff, &mut stop, post).await {
                    return Ok(Handled::Stopped);
                }
            }
            if let Some(mailer) = mailer {
                let link_base = link_base.as_deref();
                let sent = mailer
                    .send(&client, e, &details, link_base, max_backoff, &mut stop)
                    .await?;
                return Ok(if sent {
                    Handled::Done
                } else {
                    Handled::Stopped
                });
            }
            Ok(Handled::Done)
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_lines_must_be_objects_of_finite_numbers() {
        assert_eq!(parse_metrics(r#"{"auc": 0.9}"#).unwrap()["auc"], 0.9);
        assert!(parse_metrics("auc=0.9").is_err());
        assert!(parse_metrics("[1]").is_err());
        assert!(parse_metrics(r#"{"auc": "high"}"#).is_err());
    }

    #[test]
    fn tails_keep_the_end() {
        assert_eq!(tail("abc", 10), "abc");
        assert_eq!(tail("abcdef", 3), "…def");
    }
}
