//! `modelreg-bench`: the load generator behind docs/PERFORMANCE.md.
//!
//! It drives a running server over real gRPC with a closed loop of
//! `--concurrency` requests in flight, spread over `--connections` HTTP/2
//! connections, and reports throughput and latency percentiles per scenario.
//! Every scenario creates its own uniquely named models, so runs can repeat
//! against the same server; `list` and `replay` seed a fixed data set once and
//! reuse it; `consume` pre-fills its own events on every run.
#![forbid(unsafe_code)]

#[path = "modelreg-bench/consume.rs"]
mod consume;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::{Parser, ValueEnum};
use modelreg_client::{ConnectOptions, RegistryClient, pb};
use tokio::sync::Mutex;
use tonic::transport::{Channel, Endpoint};

/// Load generator for modelreg.
#[derive(Parser, Clone)]
#[command(
    name = "modelreg-bench",
    version,
    about = "The load generator behind modelreg's published performance figures (docs/PERFORMANCE.md)"
)]
struct Args {
    /// The server to load.
    #[arg(long, env = "MODELREG_SERVER", default_value = modelreg_client::DEFAULT_SERVER)]
    server: String,
    /// A bearer token, for a server started with --auth-tokens (an admin
    /// token covers every scenario).
    #[arg(long, env = "MODELREG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Requests in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// HTTP/2 connections the requests are spread over.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Seconds each scenario runs (ignored with --count).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Operations each scenario runs, instead of a duration.
    #[arg(long)]
    count: Option<u64>,
    /// One JSON object per scenario instead of a table.
    #[arg(long)]
    json: bool,
    /// Watchers in the watch scenario.
    #[arg(long, default_value_t = 1000)]
    watchers: usize,
    /// Changes per second the watch scenario's writer makes.
    #[arg(long, default_value_t = 50.0)]
    rate: f64,
    /// Events the replay scenario needs in the log (seeded when missing).
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    /// Events the consume scenario pre-fills and reads.
    #[arg(long, default_value_t = 20_000)]
    consume_events: u64,
    /// Models the consume scenario's events are spread over.
    #[arg(long, default_value_t = 64)]
    consume_models: usize,
    /// Member counts the consume scenario measures, one consumer each.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    consume_members: Vec<usize>,
    /// The consumer's lease in the consume scenario's takeover, seconds.
    #[arg(long, default_value_t = 2.0)]
    consume_lease: f64,
    /// The server's process id, to report its resident memory (watch).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Scenarios to run, in order.
    #[arg(required = true, value_enum)]
    scenarios: Vec<Scenario>,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
enum Scenario {
    /// grpc.health.v1 Check: the transport ceiling.
    Health,
    /// GetVersion on a pre-seeded model.
    Read,
    /// RegisterVersion, each acknowledged when durable.
    Register,
    /// Register → stage → evaluate → read → promote, each call one op.
    Workflow,
    /// ListVersions and filtered ListModels pages on 2,000 models × 50 versions.
    List,
    /// Watchers on WatchTransitions while a writer makes changes at --rate.
    Watch,
    /// One watcher replaying the log from sequence 0.
    Replay,
    /// One durable consumer with 1, 2, 4 members acknowledging pre-filled
    /// events, then a member dropped without a leave (takeover time).
    Consume,
}

/// One scenario's measurements.
#[derive(Default)]
struct Report {
    scenario: String,
    ops: u64,
    errors: u64,
    elapsed: Duration,
    /// Latencies in microseconds.
    latencies: Vec<u64>,
    /// Extra figures (deliveries_per_sec, rss_mib, …).
    extra: Vec<(&'static str, f64)>,
}

impl Report {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return 0.0;
        }
        let idx = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[idx] as f64 / 1000.0
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn print(&mut self, json: bool) {
        self.latencies.sort_unstable();
        if json {
            let mut obj = serde_json::json!({
                "scenario": self.scenario,
                "ops_per_sec": round(self.ops_per_sec()),
                "p50_ms": round(self.percentile_ms(0.50)),
                "p99_ms": round(self.percentile_ms(0.99)),
                "p999_ms": round(self.percentile_ms(0.999)),
                "errors": self.errors,
                "ops": self.ops,
            });
            for (k, v) in &self.extra {
                obj[*k] = serde_json::json!(round(*v));
            }
            println!("{obj}");
        } else {
            let extra: Vec<String> = self
                .extra
                .iter()
                .map(|(k, v)| format!("{k}={}", round(*v)))
                .collect();
            println!(
                "{:<22} {:>10.0} ops/s  p50 {:>8.3} ms  p99 {:>8.3} ms  p99.9 {:>8.3} ms  errors {}  {}",
                self.scenario,
                self.ops_per_sec(),
                self.percentile_ms(0.50),
                self.percentile_ms(0.99),
                self.percentile_ms(0.999),
                self.errors,
                extra.join("  ")
            );
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn unique() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}{:06}", t.as_secs(), t.subsec_micros())
}

/// The load: a pool of clients over distinct connections.
struct Load {
    args: Args,
    clients: Vec<RegistryClient>,
    channels: Vec<Channel>,
}

impl Load {
    async fn connect(args: &Args) -> Result<Load, String> {
        let mut clients = Vec::new();
        let mut channels = Vec::new();
        for _ in 0..args.connections.max(1) {
            let channel = Endpoint::from_shared(args.server.clone())
                .map_err(|e| e.to_string())?
                .tcp_nodelay(true)
                .connect()
                .await
                .map_err(|e| format!("cannot connect to {}: {e}", args.server))?;
            let mut opts = ConnectOptions::new(args.server.clone()).actor("bench");
            opts.token = args.token.clone();
            clients.push(
                modelreg_client::with_channel(channel.clone(), &opts).map_err(|e| e.to_string())?,
            );
            channels.push(channel);
        }
        Ok(Load {
            args: args.clone(),
            clients,
            channels,
        })
    }

    fn client(&self, i: usize) -> RegistryClient {
        self.clients[i % self.clients.len()].clone()
    }

    /// Runs `op(worker, iteration)` in a closed loop with `--concurrency`
    /// workers until the duration or count is reached.
    async fn closed_loop<F, Fut>(&self, name: &str, ops_per_call: u64, op: F) -> Report
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
    {
        let op = Arc::new(op);
        let issued = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let first_error: Arc<Mutex<Option<String>>> = Arc::new(Mutex::new(None));
        let deadline = Instant::now() + Duration::from_secs_f64(self.args.duration);
        let count = self.args.count.map(|c| c.div_ceil(ops_per_call));
        let start = Instant::now();
        let mut tasks = Vec::new();
        for worker in 0..self.args.concurrency.max(1) {
            let (op, issued, errors, first_error) = (
                op.clone(),
                issued.clone(),
                errors.clone(),
                first_error.clone(),
            );
            tasks.push(tokio::spawn(async move {
                let mut latencies = Vec::new();
                loop {
                    let n = issued.fetch_add(1, Ordering::Relaxed);
                    if count.is_some_and(|c| n >= c)
                        || (count.is_none() && Instant::now() >= deadline)
                    {
                        return latencies;
                    }
                    let t = Instant::now();
                    match op(worker, n).await {
                        Ok(()) => {
                            let us = t.elapsed().as_micros() as u64;
                            // A multi-call op records one latency per call, evenly.
                            for _ in 0..ops_per_call {
                                latencies.push(us / ops_per_call);
                            }
                        }
                        Err(status) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                            let mut slot = first_error.lock().await;
                            if slot.is_none() {
                                *slot = Some(modelreg_client::errors::describe(&status));
                            }
                        }
                    }
                }
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.extend(t.await.unwrap_or_default());
        }
        let elapsed = start.elapsed();
        if let Some(e) = first_error.lock().await.take() {
            eprintln!("{name}: first error: {e}");
        }
        Report {
            scenario: name.to_owned(),
            ops: latencies.len() as u64,
            errors: errors.load(Ordering::Relaxed),
            elapsed,
            latencies,
            extra: Vec::new(),
        }
    }

    /// [`Load::closed_loop`] named `"{scenario} c={concurrency}"`, giving
    /// `op(client, worker, iteration)` each worker's registry client.
    async fn client_loop<F, Fut>(&self, scenario: &str, ops_per_call: u64, op: F) -> Report
    where
        F: Fn(RegistryClient, usize, u64) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), tonic::Status>> + Send,
    {
        let clients = self.clients.clone();
        let name = format!("{scenario} c={}", self.args.concurrency);
        self.closed_loop(&name, ops_per_call, move |w, n| {
            op(clients[w % clients.len()].clone(), w, n)
        })
        .await
    }
}

/// Creates `n` models named `{prefix}-{run}-{i}` for this run and returns their names.
async fn create_models(load: &Load, prefix: &str, n: usize) -> Result<Vec<String>, tonic::Status> {
    let run = unique();
    let models: Vec<String> = (0..n).map(|i| format!("{prefix}-{run}-{i}")).collect();
    let mut c = load.client(0);
    for m in &models {
        create_model(&mut c, m, HashMap::new()).await?;
    }
    Ok(models)
}

fn version_req(model: &str, stage: pb::Stage) -> pb::RegisterVersionRequest {
    pb::RegisterVersionRequest {
        model: model.to_owned(),
        artifact_uri: format!("s3://bench/{model}/artifact"),
        training_metrics: HashMap::from([("auc".to_string(), 0.9)]),
        target_stage: stage as i32,
        ..Default::default()
    }
}

async fn create_model(
    c: &mut RegistryClient,
    name: &str,
    tags: HashMap<String, String>,
) -> Result<(), tonic::Status> {
    match c
        .create_model(pb::CreateModelRequest {
            name: name.to_owned(),
            tags,
            // The scenarios measure the registry's own work: promotions apply
            // at once instead of waiting for a second person's approval.
            policy: Some(pb::Policy {
                approval_required_for: Some(pb::StageList { stages: vec![] }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
    {
        Ok(_) => Ok(()),
        Err(s) if s.code() == tonic::Code::AlreadyExists => Ok(()),
        Err(s) => Err(s),
    }
}

async fn health(load: &Load) -> Report {
    let clients: Vec<_> = load
        .channels
        .iter()
        .map(|ch| tonic_health::pb::health_client::HealthClient::new(ch.clone()))
        .collect();
    load.closed_loop("health", 1, move |w, _| {
        let mut c = clients[w % clients.len()].clone();
        async move {
            c.check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(|_| ())
        }
    })
    .await
}

async fn read(load: &Load) -> Result<Report, tonic::Status> {
    let model = format!("bench-read-{}", unique());
    let mut c = load.client(0);
    create_model(&mut c, &model, HashMap::new()).await?;
    c.register_version(version_req(&model, pb::Stage::Staging))
        .await?;
    Ok(load
        .client_loop("read", 1, move |mut c, _, _| {
            let model = model.clone();
            async move {
                c.get_version(pb::GetVersionRequest {
                    model,
                    version: 1,
                    alias: String::new(),
                })
                .await
                .map(|_| ())
            }
        })
        .await)
}

async fn register(load: &Load) -> Result<Report, tonic::Status> {
    // A few models, so writers to different models do not share one row lock (PostgreSQL).
    let models = create_models(load, "bench-reg", 8).await?;
    Ok(load
        .client_loop("register", 1, move |mut c, w, _| {
            let req = version_req(&models[w % models.len()], pb::Stage::None);
            async move { c.register_version(req).await.map(|_| ()) }
        })
        .await)
}

async fn workflow(load: &Load) -> Result<Report, tonic::Status> {
    let set = pb::EvaluationSetRef {
        name: "bench-holdout".into(),
        version: "v1".into(),
    };
    let mut c = load.client(0);
    c.create_evaluation_set(pb::CreateEvaluationSetRequest {
        name: set.name.clone(),
        version: set.version.clone(),
        uri: "s3://bench/holdout".into(),
        digest: format!("sha256:{}", "0".repeat(64)),
        metrics: vec![pb::MetricDefinition {
            name: "auc".into(),
            higher_is_better: true,
        }],
        description: String::new(),
    })
    .await?;
    let models = create_models(load, "bench-wf", load.args.concurrency.max(1)).await?;
    Ok(load
        .client_loop("workflow", 5, move |mut c, w, _| {
            let model = models[w].clone();
            let set = set.clone();
            async move {
                let v = c
                    .register_version(version_req(&model, pb::Stage::None))
                    .await?
                    .into_inner()
                    .version
                    .unwrap_or_default();
                let stage = |target: pb::Stage| pb::TransitionStageRequest {
                    model: model.clone(),
                    version: v.version,
                    target_stage: target as i32,
                    ..Default::default()
                };
                c.transition_stage(stage(pb::Stage::Staging)).await?;
                c.attach_evaluation(pb::AttachEvaluationRequest {
                    model: model.clone(),
                    version: v.version,
                    evaluation_set: Some(set),
                    evaluator_version: "1.0".into(),
                    metrics: HashMap::from([("auc".to_string(), 0.91)]),
                    ..Default::default()
                })
                .await?;
                c.get_version(pb::GetVersionRequest {
                    model: model.clone(),
                    version: v.version,
                    alias: String::new(),
                })
                .await?;
                c.transition_stage(stage(pb::Stage::Production)).await?;
                Ok(())
            }
        })
        .await)
}

const LIST_MODELS: usize = 2000;
const LIST_VERSIONS: usize = 50;

/// Seeds 2,000 models × 50 versions once (models `bench-list-0000` …).
async fn seed_list(load: &Load) -> Result<(), tonic::Status> {
    let mut c = load.client(0);
    let last = format!("bench-list-{:04}", LIST_MODELS - 1);
    if let Ok(m) = c.get_model(pb::GetModelRequest { name: last }).await
        && m.into_inner().model.unwrap_or_default().latest_version >= LIST_VERSIONS as i64
    {
        return Ok(());
    }
    eprintln!("list: seeding {LIST_MODELS} models × {LIST_VERSIONS} versions (once)");
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..load.args.concurrency.clamp(1, 64) {
        let mut c = load.client(w);
        let next = next.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= LIST_MODELS {
                    return Ok::<(), tonic::Status>(());
                }
                let name = format!("bench-list-{i:04}");
                let tags = HashMap::from([("team".to_string(), format!("t{}", i % 20))]);
                create_model(&mut c, &name, tags).await?;
                let have = c
                    .get_model(pb::GetModelRequest { name: name.clone() })
                    .await?
                    .into_inner()
                    .model
                    .unwrap_or_default()
                    .latest_version;
                for _ in have..LIST_VERSIONS as i64 {
                    c.register_version(version_req(&name, pb::Stage::None))
                        .await?;
                }
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| tonic::Status::internal(e.to_string()))??;
    }
    Ok(())
}

async fn list(load: &Load) -> Result<Report, tonic::Status> {
    seed_list(load).await?;
    Ok(load
        .client_loop("list", 1, move |mut c, _, n| async move {
            if n % 2 == 0 {
                let model = format!("bench-list-{:04}", (n as usize * 7919) % LIST_MODELS);
                c.list_versions(pb::ListVersionsRequest {
                    model,
                    page_size: 50,
                    ..Default::default()
                })
                .await
                .map(|_| ())
            } else {
                c.list_models(pb::ListModelsRequest {
                    page_size: 50,
                    filter: format!("tags.team=t{}", n % 20),
                    ..Default::default()
                })
                .await
                .map(|_| ())
            }
        })
        .await)
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// W watchers on one model's events while a writer registers versions at a
/// fixed rate; latency is commit time (the event's occur_time) to receipt.
async fn watch(load: &Load) -> Result<Report, tonic::Status> {
    let model = format!("bench-watch-{}", unique());
    let mut c = load.client(0);
    create_model(&mut c, &model, HashMap::new()).await?;
    let watchers = load.args.watchers.max(1);
    let latencies = Arc::new(Mutex::new(Vec::<u64>::new()));
    let delivered = Arc::new(AtomicU64::new(0));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut ready = Vec::new();
    let mut tasks = Vec::new();
    for w in 0..watchers {
        let mut c = load.client(w);
        let model = model.clone();
        let latencies = latencies.clone();
        let delivered = delivered.clone();
        let mut stop = stop_rx.clone();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        ready.push(ready_rx);
        tasks.push(tokio::spawn(async move {
            let mut stream = c
                .watch_transitions(pb::WatchTransitionsRequest {
                    models: vec![model],
                    ..Default::default()
                })
                .await?
                .into_inner();
            let _ = ready_tx.send(());
            let mut mine = Vec::new();
            let mut seen = 0u64;
            loop {
                tokio::select! {
                    msg = stream.message() => match msg? {
                        Some(pb::WatchTransitionsResponse { kind: Some(pb::watch_transitions_response::Kind::Event(e)) }) => {
                            let commit = e.occur_time.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1000).unwrap_or(0);
                            mine.push((now_micros() - commit).max(0) as u64);
                            seen += 1;
                            delivered.fetch_add(1, Ordering::Relaxed);
                        }
                        Some(_) => {}
                        None => break,
                    },
                    _ = stop.changed() => break,
                }
            }
            latencies.lock().await.extend(mine);
            Ok::<u64, tonic::Status>(seen)
        }));
    }
    for r in ready {
        let _ = r.await;
    }
    let rss_before = load.args.server_pid.and_then(rss_mib);
    let interval = Duration::from_secs_f64(1.0 / load.args.rate.max(0.1));
    let mut ticker = tokio::time::interval(interval);
    let start = Instant::now();
    let mut written = 0u64;
    let total = load
        .args
        .count
        .unwrap_or((load.args.duration * load.args.rate) as u64);
    let mut rss_peak = rss_before.unwrap_or(0.0);
    while written < total {
        ticker.tick().await;
        c.register_version(version_req(&model, pb::Stage::None))
            .await?;
        written += 1;
        if let Some(r) = load.args.server_pid.and_then(rss_mib) {
            rss_peak = rss_peak.max(r);
        }
    }
    // Let the last events arrive: wait until every watcher has them, at most 10 s.
    let expected = written * watchers as u64;
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < drain_deadline && delivered.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed();
    let _ = stop_tx.send(true);
    let mut errors = 0;
    for t in tasks {
        if !matches!(t.await, Ok(Ok(_))) {
            errors += 1;
        }
    }
    let got = delivered.load(Ordering::Relaxed);
    let latencies = std::mem::take(&mut *latencies.lock().await);
    let mut extra = vec![
        ("deliveries_per_sec", got as f64 / elapsed.as_secs_f64()),
        ("watchers", watchers as f64),
        ("events", written as f64),
        ("missing_deliveries", expected.saturating_sub(got) as f64),
    ];
    if load.args.server_pid.is_some() {
        extra.push(("server_rss_mib", rss_peak));
    }
    Ok(Report {
        scenario: format!("watch w={watchers} rate={}", load.args.rate),
        ops: got,
        errors,
        elapsed,
        latencies,
        extra,
    })
}

/// Seeds the log to --replay-events, then times one watcher reading it all
/// from sequence 0.
async fn replay(load: &Load) -> Result<Report, tonic::Status> {
    let mut c = load.client(0);
    let end = |resp: tonic::Response<tonic::Streaming<pb::WatchTransitionsResponse>>| async move {
        let mut s = resp.into_inner();
        while let Some(m) = s.message().await? {
            if let Some(pb::watch_transitions_response::Kind::Heartbeat(h)) = m.kind {
                return Ok::<u64, tonic::Status>(h.sequence);
            }
        }
        Ok(0)
    };
    let latest = end(c
        .watch_transitions(pb::WatchTransitionsRequest::default())
        .await?)
    .await?;
    if latest < load.args.replay_events {
        let missing = load.args.replay_events - latest;
        eprintln!("replay: seeding {missing} events (once)");
        let model = format!("bench-replay-{}", unique());
        create_model(&mut c, &model, HashMap::new()).await?;
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for w in 0..load.args.concurrency.clamp(1, 256) {
            let mut c = load.client(w);
            let (next, model) = (next.clone(), model.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < missing {
                    c.register_version(version_req(&model, pb::Stage::None))
                        .await?;
                }
                Ok::<(), tonic::Status>(())
            }));
        }
        for t in tasks {
            t.await
                .map_err(|e| tonic::Status::internal(e.to_string()))??;
        }
    }
    let start = Instant::now();
    let mut stream = c
        .watch_transitions(pb::WatchTransitionsRequest {
            after_sequence: Some(0),
            ..Default::default()
        })
        .await?
        .into_inner();
    let mut events = 0u64;
    while let Some(m) = stream.message().await? {
        match m.kind {
            Some(pb::watch_transitions_response::Kind::Event(_)) => events += 1,
            Some(pb::watch_transitions_response::Kind::Heartbeat(_)) => break,
            None => {}
        }
    }
    let elapsed = start.elapsed();
    Ok(Report {
        scenario: "replay".into(),
        ops: events,
        errors: 0,
        elapsed,
        latencies: Vec::new(),
        extra: vec![("events_per_sec", events as f64 / elapsed.as_secs_f64())],
    })
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let load = match Load::connect(&args).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let mut failed = false;
    for scenario in &args.scenarios {
        let reports = match scenario {
            Scenario::Health => Ok(vec![health(&load).await]),
            Scenario::Read => read(&load).await.map(|r| vec![r]),
            Scenario::Register => register(&load).await.map(|r| vec![r]),
            Scenario::Workflow => workflow(&load).await.map(|r| vec![r]),
            Scenario::List => list(&load).await.map(|r| vec![r]),
            Scenario::Watch => watch(&load).await.map(|r| vec![r]),
            Scenario::Replay => replay(&load).await.map(|r| vec![r]),
            Scenario::Consume => consume::consume(&load).await,
        };
        match reports {
            Ok(reports) => reports.into_iter().for_each(|mut r| r.print(args.json)),
            Err(status) => {
                eprintln!(
                    "{scenario:?}: setup failed: {}",
                    modelreg_client::errors::describe(&status)
                );
                failed = true;
            }
        }
    }
    if failed {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    }
}
