//! `modelreg`: the command-line tool for people and CI scripts.
//!
//! Every command prints a table for people, or with `--json` the server's
//! resources as canonical proto3 JSON for scripts (one JSON document; `watch`
//! prints one JSON object per line). Errors go to stderr with the server's
//! code, message and field violations, and the exit status is non-zero.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use modelreg_client::json::to_json;
use modelreg_client::names::{
    cause_label, event_type_label, parse_event_type, parse_stage, stage_label,
};
use modelreg_client::terminal::printable;
use modelreg_client::watch::{ResumingWatch, WatchItem};
use modelreg_client::{ConnectOptions, RegistryClient, connect, errors, pb};

#[path = "modelreg/consumers.rs"]
mod consumers;
#[path = "modelreg/governance.rs"]
mod governance;
#[path = "modelreg/import.rs"]
mod import;
#[path = "modelreg/notify.rs"]
mod notify;
#[path = "modelreg/workers.rs"]
mod workers;

/// The modelreg command-line tool.
#[derive(Parser)]
#[command(
    name = "modelreg",
    version,
    about = "The modelreg command-line tool: every RPC as a subcommand (tables for people, --json for scripts), and workers that turn the event stream into evaluations, deployments and notifications"
)]
struct Cli {
    /// The registry server.
    #[arg(long, global = true, env = "MODELREG_SERVER", default_value = modelreg_client::DEFAULT_SERVER)]
    server: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Who you are, recorded as the actor of the events you cause (local
    /// mode only: a server with tokens takes your name from --token).
    #[arg(long, global = true, env = "MODELREG_ACTOR")]
    actor: Option<String>,
    /// Your bearer token, for a server started with --auth-tokens.
    #[arg(long, global = true, env = "MODELREG_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The PEM certificate of the CA that signed the server's certificate,
    /// for https:// servers.
    #[arg(long, global = true, env = "MODELREG_CA_CERT", value_name = "FILE")]
    ca_cert: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, show, list and update models.
    #[command(subcommand)]
    Model(ModelCmd),
    /// Register, show and list model versions.
    #[command(subcommand)]
    Version(VersionCmd),
    /// Move a version to another stage (none, staging, production, archived).
    Transition {
        /// The model.
        model: String,
        /// The version number.
        version: i64,
        /// The target stage.
        stage: String,
        /// Why, recorded in the event log.
        #[arg(long, default_value = "")]
        comment: String,
        /// Refuse the move if the version changed since this etag was read.
        #[arg(long, default_value = "")]
        etag: String,
    },
    /// Point aliases at versions.
    #[command(subcommand)]
    Alias(AliasCmd),
    /// List events of the audit log, oldest first.
    Events(EventsArgs),
    /// Stream events as JSON lines until interrupted; resumes after disconnects.
    Watch(WatchArgs),
    /// Who did what to a model, and when (`audit MODEL`); or check the
    /// whole log's hash chain (`audit verify`).
    Audit(AuditArgs),
    /// The production timeline of a model: which version was in production
    /// from when to when, and why it changed.
    History {
        /// The model.
        model: String,
        /// Only say which version was in production at this time (RFC 3339,
        /// e.g. 2026-11-27T10:00:00Z).
        #[arg(long)]
        at: Option<prost_types::Timestamp>,
    },
    /// The approval inbox: list transition requests.
    #[command(subcommand)]
    Requests(governance::RequestsCmd),
    /// Approve a pending transition request (MODEL:NUMBER).
    Approve(DecisionArgs),
    /// Reject a pending transition request.
    Reject {
        /// The request id.
        request_id: String,
        /// Why (required), recorded in the event log.
        #[arg(long)]
        comment: String,
    },
    /// Withdraw a pending transition request (its requester, or an admin).
    Cancel(DecisionArgs),
    /// Run a worker that turns lifecycle events into actions.
    #[command(subcommand)]
    Worker(workers::WorkerCmd),
    /// Post notifications (requests, approvals, production changes,
    /// failures) to a webhook.
    Notify(Box<workers::NotifyArgs>),
    /// Durable consumers: list, show, dead letters, retry, delete.
    #[command(subcommand)]
    Consumers(consumers::ConsumersCmd),
    /// Return the previous good production version (or --to N) to production.
    Rollback {
        /// The model.
        model: String,
        /// Why (required), recorded in the event log.
        #[arg(long)]
        reason: String,
        /// The version to restore; default: the previous good production version.
        #[arg(long, default_value_t = 0)]
        to: i64,
    },
    /// Report one observation of a live metric of a deployed version (what a
    /// monitor sends; a model's live-metric policy rule reads these).
    LiveMetric {
        /// The model.
        model: String,
        /// The version observed.
        version: i64,
        /// The metric, e.g. error_rate.
        metric: String,
        /// The observed value.
        value: f64,
    },
    /// Create, show and list standard evaluation sets.
    #[command(subcommand)]
    Evalset(EvalsetCmd),
    /// Attach evaluations and show a model's metric history.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Compare a candidate version with a baseline (default: production).
    Compare {
        /// The model.
        model: String,
        /// The candidate version.
        candidate: i64,
        /// The baseline version; default: the current production version.
        #[arg(long, default_value_t = 0)]
        baseline: i64,
        /// The evaluation set, NAME@VERSION; default: the model's standard set.
        #[arg(long, value_parser = parse_set_ref)]
        set: Option<pb::EvaluationSetRef>,
        /// Compare the scores of this evaluator version only.
        #[arg(long, default_value = "")]
        evaluator_version: String,
    },
    /// Copy another registry into this one (admins): `import mlflow --from URL`.
    #[command(subcommand)]
    Import(import::ImportCmd),
}

/// `approve` and `cancel`: a pending request, and why.
#[derive(Args)]
struct DecisionArgs {
    /// The request id, e.g. fraud-detector:3.
    request_id: String,
    /// Why, recorded in the event log.
    #[arg(long, default_value = "")]
    comment: String,
}

#[derive(Subcommand)]
enum EvalsetCmd {
    /// Create an evaluation set version (immutable; repeating it is harmless).
    Create {
        /// The set name.
        name: String,
        /// The set version, e.g. 2026-06 or v3.
        version: String,
        /// Where the data lives.
        #[arg(long)]
        uri: String,
        /// The data's digest, sha256:<64 hex>.
        #[arg(long)]
        digest: String,
        /// A metric NAME:higher or NAME:lower (repeatable, in display order).
        #[arg(long = "metric", value_parser = parse_definition, required = true)]
        metrics: Vec<pb::MetricDefinition>,
        /// A description.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Show one evaluation set version.
    Get {
        /// The set name.
        name: String,
        /// The set version.
        version: String,
    },
    /// List evaluation sets.
    List {
        /// Only versions of this set.
        #[arg(long, default_value = "")]
        name: String,
    },
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Attach the metrics of a version on an evaluation set.
    Attach {
        /// The model.
        model: String,
        /// The version number.
        version: i64,
        /// The evaluation set, NAME@VERSION.
        #[arg(long, value_parser = parse_set_ref)]
        set: pb::EvaluationSetRef,
        /// The version of the metric code.
        #[arg(long)]
        evaluator_version: String,
        /// A metric NAME=NUMBER (repeatable): exactly the set's metrics.
        #[arg(long = "metric", value_parser = parse_metric, required = true)]
        metrics: Vec<(String, f64)>,
        /// Where a full report lives.
        #[arg(long, default_value = "")]
        report_uri: String,
        /// An idempotency key.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// A model's metrics across its versions on one set, oldest first.
    History {
        /// The model.
        model: String,
        /// The evaluation set, NAME@VERSION.
        #[arg(long, value_parser = parse_set_ref)]
        set: pb::EvaluationSetRef,
        /// Only this metric.
        #[arg(long, default_value = "")]
        metric: String,
    },
}

#[derive(Subcommand)]
enum ModelCmd {
    /// Show a model's policy, or change parts of it (admins only).
    Policy(governance::PolicyArgs),
    /// Create a model.
    Create {
        /// The model name: [a-z0-9][a-z0-9._-]{0,127}.
        name: String,
        /// A description.
        #[arg(long, default_value = "")]
        description: String,
        /// A tag KEY=VALUE (repeatable).
        #[arg(long = "tag", value_parser = parse_key_value)]
        tags: Vec<(String, String)>,
        /// An idempotency key: a retry with the same key creates nothing new.
        #[arg(long, default_value = "")]
        request_id: String,
    },
    /// Show a model.
    Get {
        /// The model name.
        name: String,
    },
    /// List models.
    List {
        /// A filter such as `tags.team=fraud` or `name:fraud*`.
        #[arg(long, default_value = "")]
        filter: String,
        /// Models per request.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
    },
    /// Update a model's description or tags.
    Update {
        /// The model name.
        name: String,
        #[command(flatten)]
        change: UpdateArgs,
    },
}

/// What `model update` and `version update` change.
#[derive(Args)]
struct UpdateArgs {
    /// A new description.
    #[arg(long)]
    description: Option<String>,
    /// The new tags KEY=VALUE (repeatable; replaces all tags).
    #[arg(long = "tag", value_parser = parse_key_value)]
    tags: Vec<(String, String)>,
    /// Remove every tag.
    #[arg(long, conflicts_with = "tags")]
    clear_tags: bool,
    /// Refuse the update if it changed since this etag was read.
    #[arg(long, default_value = "")]
    etag: String,
}

impl UpdateArgs {
    /// The update mask: the fields given.
    fn mask(&self) -> Result<Option<prost_types::FieldMask>, Failure> {
        let mut paths = Vec::new();
        if self.description.is_some() {
            paths.push("description".to_owned());
        }
        if !self.tags.is_empty() || self.clear_tags {
            paths.push("tags".to_owned());
        }
        if paths.is_empty() {
            return Err(Failure::Local(
                "nothing to update: give --description, --tag or --clear-tags".into(),
            ));
        }
        Ok(Some(prost_types::FieldMask { paths }))
    }
}

#[derive(Subcommand)]
enum VersionCmd {
    /// Register a new version.
    Register(Box<RegisterArgs>),
    /// Show a version by number or alias.
    Get {
        /// The model.
        model: String,
        /// A version number or an alias.
        version: String,
    },
    /// List a model's versions.
    List {
        /// The model.
        model: String,
        /// Only versions in this stage.
        #[arg(long)]
        stage: Option<String>,
        /// Versions per request.
        #[arg(long, default_value_t = 100)]
        page_size: i32,
    },
    /// Update a version's description or tags (artifact, source and metrics
    /// stay as registered).
    Update {
        /// The model.
        model: String,
        /// The version number.
        version: i64,
        #[command(flatten)]
        change: UpdateArgs,
    },
}

#[derive(Args)]
struct RegisterArgs {
    /// The model.
    model: String,
    /// Where the artifact lives (s3://…, gs://…, file:///…).
    #[arg(long)]
    artifact_uri: String,
    /// The artifact digest, sha256:<64 hex>.
    #[arg(long, default_value = "")]
    digest: String,
    /// The source commit.
    #[arg(long, default_value = "")]
    commit: String,
    /// The source repository.
    #[arg(long, default_value = "")]
    repository: String,
    /// The pipeline run's URL.
    #[arg(long, default_value = "")]
    pipeline_url: String,
    /// The training run id.
    #[arg(long, default_value = "")]
    run_id: String,
    /// A training metric NAME=NUMBER (repeatable).
    #[arg(long = "metric", value_parser = parse_metric)]
    metrics: Vec<(String, f64)>,
    /// A tag KEY=VALUE (repeatable).
    #[arg(long = "tag", value_parser = parse_key_value)]
    tags: Vec<(String, String)>,
    /// A description.
    #[arg(long, default_value = "")]
    description: String,
    /// An idempotency key: retries with the same key return the same version.
    #[arg(long, default_value = "")]
    request_id: String,
    /// Stage to enter right away: none or staging.
    #[arg(long)]
    stage: Option<String>,
}

#[derive(Subcommand)]
enum AliasCmd {
    /// Point an alias at a version (creating or moving it).
    Set {
        /// The model.
        model: String,
        /// The alias: starts with a letter.
        alias: String,
        /// The version number.
        version: i64,
    },
    /// Remove an alias.
    Delete {
        /// The model.
        model: String,
        /// The alias.
        alias: String,
    },
}

#[derive(Args)]
struct EventsArgs {
    /// Only this model's events.
    #[arg(long)]
    model: Option<String>,
    /// Only this version's events (with --model).
    #[arg(long, default_value_t = 0)]
    version: i64,
    /// Only events caused by this identity.
    #[arg(long)]
    actor_filter: Option<String>,
    /// Only events of this type (repeatable), e.g. stage_changed.
    #[arg(long = "type", value_parser = parse_event_type)]
    types: Vec<pb::EventType>,
    /// Only events after this sequence.
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many events.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
}

#[derive(Args)]
struct WatchArgs {
    /// Only this model's events (repeatable).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_parser = parse_event_type)]
    types: Vec<pb::EventType>,
    /// Only events entering this stage (repeatable).
    #[arg(long = "stage", value_parser = parse_stage)]
    stages: Vec<pb::Stage>,
    /// Start after this sequence (0 = the whole log); default: only new events.
    #[arg(long)]
    after: Option<u64>,
    /// Also print heartbeats as {"heartbeat": {"sequence": N}}.
    #[arg(long)]
    heartbeats: bool,
    /// Stop after this many events (for scripts and tests).
    #[arg(long)]
    count: Option<u64>,
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct AuditArgs {
    #[command(subcommand)]
    cmd: Option<AuditCmd>,
    /// The model whose trail to show.
    model: Option<String>,
    /// Only this version's events.
    #[arg(long, default_value_t = 0)]
    version: i64,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Re-compute the event log's hash chain and print its head (SEQUENCE:HASH)
    /// to record outside the registry; later, `--anchor` proves nothing up
    /// to a recorded head was rewritten or cut from the end.
    Verify {
        /// A head recorded earlier, SEQUENCE:HASH (repeatable): it must still
        /// be in the log with the same hash.
        #[arg(long = "anchor", value_parser = parse_anchor)]
        anchors: Vec<pb::AuditAnchor>,
    },
}

/// `SEQUENCE:HASH`, as `audit verify` prints a head.
fn parse_anchor(raw: &str) -> Result<pb::AuditAnchor, String> {
    let (sequence, hash) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not SEQUENCE:HASH"))?;
    let sequence = sequence
        .trim()
        .parse::<u64>()
        .map_err(|_| format!("{sequence:?} is not a sequence number"))?;
    Ok(pb::AuditAnchor {
        sequence,
        hash: hash.trim().to_owned(),
    })
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not KEY=VALUE"))
}

fn parse_set_ref(raw: &str) -> Result<pb::EvaluationSetRef, String> {
    raw.split_once('@')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .map(|(n, v)| pb::EvaluationSetRef {
            name: n.to_owned(),
            version: v.to_owned(),
        })
        .ok_or_else(|| format!("{raw:?} is not NAME@VERSION"))
}

fn parse_definition(raw: &str) -> Result<pb::MetricDefinition, String> {
    let (name, direction) = raw
        .split_once(':')
        .ok_or_else(|| format!("{raw:?} is not NAME:higher or NAME:lower"))?;
    let higher_is_better = match direction {
        "higher" => true,
        "lower" => false,
        other => return Err(format!("{other:?} in {raw:?}: use higher or lower")),
    };
    Ok(pb::MetricDefinition {
        name: name.to_owned(),
        higher_is_better,
    })
}

fn parse_metric(raw: &str) -> Result<(String, f64), String> {
    let (k, v) = parse_key_value(raw)?;
    let n: f64 = v
        .parse()
        .map_err(|_| format!("{v:?} in {raw:?} is not a number"))?;
    Ok((k, n))
}

/// The exit status for a refused call, so a pipeline can tell "fix the
/// request" from "retry later" (documented in the README).
fn exit_code(code: tonic::Code) -> u8 {
    use tonic::Code as C;
    match code {
        C::InvalidArgument | C::OutOfRange => 3,
        C::NotFound => 4,
        C::AlreadyExists => 5,
        C::FailedPrecondition | C::Aborted => 6,
        C::Unauthenticated | C::PermissionDenied => 7,
        C::Unavailable | C::DeadlineExceeded | C::ResourceExhausted => 8,
        _ => 1,
    }
}

/// What went wrong in a command.
enum Failure {
    /// The server refused or failed the call.
    Status(tonic::Status),
    /// Something on this side.
    Local(String),
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        Failure::Status(s)
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let opts = ConnectOptions {
        server: cli.server.clone(),
        actor: cli.actor.clone(),
        token: cli.token.clone(),
        ca_cert: cli.ca_cert.clone(),
    };
    // Workers wait for the server (and ride out its restarts) instead of failing.
    let long_running = matches!(cli.command, Command::Worker(_) | Command::Notify(_));
    let connected = if long_running {
        modelreg_client::connect_lazy(&opts)
    } else {
        connect(&opts).await
    };
    let client = match connected {
        Ok(c) => c,
        Err(e) => {
            print_error(&e.to_string());
            return ExitCode::from(2);
        }
    };
    match run(cli, client).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Status(s)) => {
            print_error(&errors::describe(&s));
            ExitCode::from(exit_code(s.code()))
        }
        Err(Failure::Local(msg)) => {
            print_error(&msg);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, mut client: RegistryClient) -> Result<(), Failure> {
    let json = cli.json;
    match cli.command {
        Command::Model(cmd) => model_cmd(&mut client, cmd, json).await,
        Command::Version(cmd) => version_cmd(&mut client, cmd, json).await,
        Command::Transition {
            model,
            version,
            stage,
            comment,
            etag,
        } => {
            let stage = parse_stage(&stage).map_err(Failure::Local)?;
            let resp = client
                .transition_stage(pb::TransitionStageRequest {
                    model,
                    version,
                    target_stage: stage as i32,
                    comment,
                    etag,
                })
                .await?
                .into_inner();
            if let Some(v) = resp.version {
                print_version(&v, json);
            } else if let Some(r) = resp.request {
                if !json {
                    print_line(&format!(
                        "the policy needs approval: request {} waits",
                        r.id
                    ));
                }
                governance::print_request(&r, json);
            }
            Ok(())
        }
        Command::Alias(AliasCmd::Set {
            model,
            alias,
            version,
        }) => {
            let answer = client
                .set_alias(pb::SetAliasRequest {
                    model,
                    alias,
                    version,
                })
                .await?;
            print_model_answer(answer, json);
            Ok(())
        }
        Command::Alias(AliasCmd::Delete { model, alias }) => {
            let answer = client
                .delete_alias(pb::DeleteAliasRequest { model, alias })
                .await?;
            print_model_answer(answer, json);
            Ok(())
        }
        Command::Events(args) => events_cmd(&mut client, args, json).await,
        Command::Evalset(cmd) => evalset_cmd(&mut client, cmd, json).await,
        Command::Eval(cmd) => eval_cmd(&mut client, cmd, json).await,
        Command::Compare {
            model,
            candidate,
            baseline,
            set,
            evaluator_version,
        } => {
            let request = pb::CompareVersionsRequest {
                model,
                candidate_version: candidate,
                baseline_version: baseline,
                evaluation_set: set,
                evaluator_version,
            };
            compare_cmd(&mut client, request, json).await
        }
        Command::Watch(args) => watch_cmd(client, args).await,
        Command::Worker(cmd) => workers::worker_cmd(client, cmd).await,
        Command::Notify(args) => workers::notify(client, *args).await,
        Command::Consumers(cmd) => consumers::consumers_cmd(&mut client, cmd, json).await,
        Command::Audit(AuditArgs {
            cmd: None,
            model: Some(model),
            version,
        }) => governance::audit_model_cmd(&mut client, model, version, json).await,
        Command::Audit(AuditArgs { cmd: None, .. }) => Err(Failure::Local(
            "name a model (modelreg audit MODEL) or check the chain (modelreg audit verify)".into(),
        )),
        Command::History { model, at } => {
            governance::history_cmd(&mut client, model, at, json).await
        }
        Command::Requests(cmd) => governance::requests_cmd(&mut client, cmd, json).await,
        Command::Approve(a) => {
            let verdict = governance::Verdict::Approve;
            governance::decide_cmd(&mut client, verdict, a.request_id, a.comment, json).await
        }
        Command::Reject {
            request_id,
            comment,
        } => {
            let verdict = governance::Verdict::Reject;
            governance::decide_cmd(&mut client, verdict, request_id, comment, json).await
        }
        Command::Cancel(a) => {
            let verdict = governance::Verdict::Cancel;
            governance::decide_cmd(&mut client, verdict, a.request_id, a.comment, json).await
        }
        Command::LiveMetric {
            model,
            version,
            metric,
            value,
        } => {
            client
                .report_live_metric(pb::ReportLiveMetricRequest {
                    model,
                    version,
                    metric,
                    value,
                    observe_time: None,
                })
                .await?;
            Ok(())
        }
        Command::Rollback { model, reason, to } => {
            governance::rollback_cmd(&mut client, model, reason, to, json).await
        }
        Command::Audit(AuditArgs {
            cmd: Some(AuditCmd::Verify { anchors }),
            ..
        }) => {
            let anchored = anchors.len();
            let r = client
                .verify_audit_log(pb::VerifyAuditLogRequest { anchors })
                .await?
                .into_inner();
            if json {
                print_json(&to_json(&r, "modelreg.v1.VerifyAuditLogResponse"));
            } else if r.ok {
                println!("audit log intact: {} events checked", r.events_checked);
                if anchored > 0 {
                    println!("anchors hold: {anchored}");
                }
                if let Some(head) = &r.head {
                    print_line(&format!("head {}:{}", head.sequence, head.hash));
                }
            } else {
                print_line(&format!(
                    "audit log BROKEN at sequence {} ({} events checked): {}",
                    r.first_bad_sequence, r.events_checked, r.problem
                ));
            }
            if r.ok {
                Ok(())
            } else {
                Err(Failure::Local(
                    "the audit log's hash chain is broken".into(),
                ))
            }
        }
        Command::Import(cmd) => import::import_cmd(&mut client, cmd, json).await,
    }
}

async fn evalset_cmd(
    client: &mut RegistryClient,
    cmd: EvalsetCmd,
    json: bool,
) -> Result<(), Failure> {
    let sets = match cmd {
        EvalsetCmd::Create {
            name,
            version,
            uri,
            digest,
            metrics,
            description,
        } => vec![
            client
                .create_evaluation_set(pb::CreateEvaluationSetRequest {
                    name,
                    version,
                    uri,
                    digest,
                    metrics,
                    description,
                })
                .await?
                .into_inner()
                .evaluation_set
                .unwrap_or_default(),
        ],
        EvalsetCmd::Get { name, version } => vec![
            client
                .get_evaluation_set(pb::GetEvaluationSetRequest { name, version })
                .await?
                .into_inner()
                .evaluation_set
                .unwrap_or_default(),
        ],
        EvalsetCmd::List { name } => {
            let request = pb::ListEvaluationSetsRequest {
                name,
                page_size: 1000,
                ..Default::default()
            };
            let headers = ["SET", "METRICS", "URI", "CREATED"];
            print_all_pages(
                client,
                request,
                "modelreg.v1.EvaluationSet",
                json,
                &headers,
                |s| {
                    vec![
                        format!("{}@{}", s.name, s.version),
                        definitions_label(&s.metrics),
                        s.uri.clone(),
                        time_label(s.create_time.as_ref()),
                    ]
                },
            )
            .await?;
            return Ok(());
        }
    };
    for s in sets {
        if json {
            print_json(&to_json(&s, "modelreg.v1.EvaluationSet"));
        } else {
            print_fields(&[
                ("set", format!("{}@{}", s.name, s.version)),
                ("uri", s.uri.clone()),
                ("digest", s.digest.clone()),
                ("metrics", definitions_label(&s.metrics)),
                ("description", s.description.clone()),
                ("created by", s.created_by.clone()),
                ("created", time_label(s.create_time.as_ref())),
            ]);
        }
    }
    Ok(())
}

fn definitions_label(defs: &[pb::MetricDefinition]) -> String {
    defs.iter()
        .map(|m| {
            format!(
                "{} ({})",
                m.name,
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                }
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

async fn eval_cmd(client: &mut RegistryClient, cmd: EvalCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        EvalCmd::Attach {
            model,
            version,
            set,
            evaluator_version,
            metrics,
            report_uri,
            request_id,
        } => {
            let e = client
                .attach_evaluation(pb::AttachEvaluationRequest {
                    model,
                    version,
                    evaluation_set: Some(set),
                    evaluator_version,
                    metrics: metrics.into_iter().collect(),
                    report_uri,
                    request_id,
                })
                .await?
                .into_inner()
                .evaluation
                .unwrap_or_default();
            if json {
                print_json(&to_json(&e, "modelreg.v1.Evaluation"));
            } else {
                let set = e.evaluation_set.clone().unwrap_or_default();
                let metrics: HashMap<String, String> = e
                    .metrics
                    .iter()
                    .map(|(k, v)| (k.clone(), fmt_num(*v)))
                    .collect();
                print_fields(&[
                    ("model", e.model.clone()),
                    ("version", e.version.to_string()),
                    ("set", format!("{}@{}", set.name, set.version)),
                    ("evaluator", e.evaluator_version.clone()),
                    ("metrics", join_map(&metrics)),
                    ("report", e.report_uri.clone()),
                    ("attached by", e.created_by.clone()),
                    ("attached", time_label(e.create_time.as_ref())),
                ]);
            }
        }
        EvalCmd::History { model, set, metric } => {
            let request = pb::ListEvaluationsRequest {
                model,
                evaluation_set: Some(set),
                metric,
                page_size: 1000,
                ..Default::default()
            };
            let evaluations = all_pages(client, request).await?;
            if json {
                print_json_list(&evaluations, "modelreg.v1.Evaluation");
                return Ok(());
            }
            let mut names: Vec<String> = evaluations
                .iter()
                .flat_map(|e| e.metrics.keys().cloned())
                .collect();
            names.sort();
            names.dedup();
            let mut headers = vec!["VERSION".to_string(), "EVALUATOR".to_string()];
            headers.extend(names.iter().map(|n| n.to_uppercase()));
            let rows = evaluations
                .iter()
                .map(|e| {
                    let mut row = vec![e.version.to_string(), e.evaluator_version.clone()];
                    row.extend(
                        names
                            .iter()
                            .map(|n| e.metrics.get(n).map(|v| fmt_num(*v)).unwrap_or_default()),
                    );
                    row
                })
                .collect();
            let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
            print_table(&headers, rows);
        }
    }
    Ok(())
}

async fn compare_cmd(
    client: &mut RegistryClient,
    request: pb::CompareVersionsRequest,
    json: bool,
) -> Result<(), Failure> {
    let asked_for_production = request.baseline_version == 0;
    let c = client
        .compare_versions(request)
        .await?
        .into_inner()
        .comparison
        .unwrap_or_default();
    if json {
        print_json(&to_json(&c, "modelreg.v1.VersionComparison"));
        return Ok(());
    }
    let set = c.evaluation_set.clone().unwrap_or_default();
    print_line(&format!(
        "{}: version {} vs version {}{} on {}@{}, evaluator {}",
        c.model,
        c.candidate_version,
        c.baseline_version,
        if asked_for_production {
            " (production)"
        } else {
            ""
        },
        set.name,
        set.version,
        c.evaluator_version
    ));
    let rows = c
        .metrics
        .iter()
        .map(|m| {
            let verdict = match pb::Outcome::try_from(m.outcome) {
                Ok(pb::Outcome::Better) => "better",
                Ok(pb::Outcome::Worse) => "WORSE",
                Ok(pb::Outcome::Equal) => "equal",
                _ => "?",
            };
            vec![
                m.metric.clone(),
                if m.higher_is_better {
                    "higher"
                } else {
                    "lower"
                }
                .to_owned(),
                fmt_num(m.candidate),
                fmt_num(m.baseline),
                format!(
                    "{}{}",
                    if m.delta > 0.0 { "+" } else { "" },
                    fmt_num(m.delta)
                ),
                if m.baseline == 0.0 {
                    "-".to_owned()
                } else {
                    format!("{:+.2}%", m.relative_delta * 100.0)
                },
                verdict.to_owned(),
            ]
        })
        .collect();
    print_table(
        &[
            "METRIC",
            "BETTER",
            "CANDIDATE",
            "BASELINE",
            "DELTA",
            "CHANGE",
            "VERDICT",
        ],
        rows,
    );
    Ok(())
}

/// A number rounded to 6 decimals without trailing zeros: 0.03, not 0.030000000000000027.
fn fmt_num(x: f64) -> String {
    modelreg_api::display::decimal(x, 6)
}

async fn model_cmd(client: &mut RegistryClient, cmd: ModelCmd, json: bool) -> Result<(), Failure> {
    match cmd {
        ModelCmd::Policy(args) => return governance::policy_cmd(client, args, json).await,
        ModelCmd::Create {
            name,
            description,
            tags,
            request_id,
        } => {
            let answer = client
                .create_model(pb::CreateModelRequest {
                    name,
                    description,
                    tags: tags.into_iter().collect(),
                    policy: None,
                    request_id,
                })
                .await?;
            print_model_answer(answer, json);
        }
        ModelCmd::Get { name } => {
            let answer = client.get_model(pb::GetModelRequest { name }).await?;
            print_model_answer(answer, json);
        }
        ModelCmd::List { filter, page_size } => {
            let request = pb::ListModelsRequest {
                page_size,
                filter,
                ..Default::default()
            };
            let headers = ["NAME", "LATEST", "PRODUCTION", "ALIASES", "TAGS", "UPDATED"];
            print_all_pages(client, request, "modelreg.v1.Model", json, &headers, |m| {
                vec![
                    m.name.clone(),
                    m.latest_version.to_string(),
                    dash_if_zero(m.production_version),
                    join_map(&m.aliases),
                    join_map(&m.tags),
                    time_label(m.update_time.as_ref()),
                ]
            })
            .await?;
        }
        ModelCmd::Update { name, change } => {
            let answer = client
                .update_model(pb::UpdateModelRequest {
                    name,
                    update_mask: change.mask()?,
                    description: change.description.unwrap_or_default(),
                    tags: change.tags.into_iter().collect(),
                    policy: None,
                    etag: change.etag,
                })
                .await?;
            print_model_answer(answer, json);
        }
    }
    Ok(())
}

async fn version_cmd(
    client: &mut RegistryClient,
    cmd: VersionCmd,
    json: bool,
) -> Result<(), Failure> {
    match cmd {
        VersionCmd::Register(a) => {
            let target_stage = stage_or_unspecified(a.stage.as_deref())?;
            let resp = client
                .register_version(pb::RegisterVersionRequest {
                    model: a.model,
                    artifact_uri: a.artifact_uri,
                    artifact_digest: a.digest,
                    source: Some(pb::Source {
                        commit: a.commit,
                        pipeline_url: a.pipeline_url,
                        run_id: a.run_id,
                        repository: a.repository,
                        ..Default::default()
                    }),
                    training_metrics: a.metrics.into_iter().collect(),
                    tags: a.tags.into_iter().collect(),
                    request_id: a.request_id,
                    target_stage: target_stage as i32,
                    description: a.description,
                })
                .await?
                .into_inner();
            print_version(&resp.version.unwrap_or_default(), json);
            if let Some(r) = resp.request {
                // The version waits in NONE; say so where a script's log shows it.
                let note = format!(
                    "the policy needs approval for {}: request {} waits (modelreg approve {})",
                    stage_label(r.to_stage),
                    r.id,
                    r.id
                );
                if json {
                    eprintln!("{note}");
                } else {
                    println!("{note}");
                }
            }
        }
        VersionCmd::Update {
            model,
            version,
            change,
        } => {
            let v = client
                .update_version(pb::UpdateVersionRequest {
                    model,
                    version,
                    update_mask: change.mask()?,
                    description: change.description.unwrap_or_default(),
                    tags: change.tags.into_iter().collect(),
                    etag: change.etag,
                })
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            print_version(&v, json);
        }
        VersionCmd::Get { model, version } => {
            let (number, alias) = match version.parse::<i64>() {
                Ok(n) => (n, String::new()),
                Err(_) => (0, version),
            };
            let v = client
                .get_version(pb::GetVersionRequest {
                    model,
                    version: number,
                    alias,
                })
                .await?
                .into_inner()
                .version
                .unwrap_or_default();
            print_version(&v, json);
        }
        VersionCmd::List {
            model,
            stage,
            page_size,
        } => {
            let stage = stage_or_unspecified(stage.as_deref())? as i32;
            let request = pb::ListVersionsRequest {
                model,
                stage,
                page_size,
                ..Default::default()
            };
            let headers = ["VERSION", "STAGE", "ALIASES", "ARTIFACT", "BY", "CREATED"];
            print_all_pages(
                client,
                request,
                "modelreg.v1.ModelVersion",
                json,
                &headers,
                |v| {
                    vec![
                        v.version.to_string(),
                        stage_label(v.stage),
                        v.aliases.join(","),
                        v.artifact_uri.clone(),
                        v.created_by.clone(),
                        time_label(v.create_time.as_ref()),
                    ]
                },
            )
            .await?;
        }
    }
    Ok(())
}

async fn events_cmd(
    client: &mut RegistryClient,
    args: EventsArgs,
    json: bool,
) -> Result<(), Failure> {
    let mut events = Vec::new();
    let mut page_token = String::new();
    while events.len() < args.limit {
        let resp = client
            .list_events(pb::ListEventsRequest {
                model: args.model.clone().unwrap_or_default(),
                version: args.version,
                actor: args.actor_filter.clone().unwrap_or_default(),
                types: args.types.iter().map(|t| *t as i32).collect(),
                after_sequence: args.after,
                start_time: None,
                end_time: None,
                page_size: (args.limit - events.len()).min(1000) as i32,
                page_token,
            })
            .await?
            .into_inner();
        events.extend(resp.events);
        if resp.next_page_token.is_empty() {
            break;
        }
        page_token = resp.next_page_token;
    }
    let headers = [
        "SEQ", "TIME", "TYPE", "MODEL", "VERSION", "CHANGE", "ACTOR", "COMMENT",
    ];
    print_list(
        &events,
        "modelreg.v1.RegistryEvent",
        json,
        &headers,
        event_row,
    );
    Ok(())
}

async fn watch_cmd(client: RegistryClient, args: WatchArgs) -> Result<(), Failure> {
    let mut watch = ResumingWatch::new(
        client,
        pb::WatchTransitionsRequest {
            models: args.models,
            types: args.types.iter().map(|t| *t as i32).collect(),
            to_stages: args.stages.iter().map(|s| *s as i32).collect(),
            after_sequence: args.after,
        },
    );
    let mut seen = 0u64;
    loop {
        let item = tokio::select! {
            item = watch.next() => item?,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        match item {
            WatchItem::Event(e) => {
                println!("{}", to_json(&e, "modelreg.v1.RegistryEvent"));
                seen += 1;
                if args.count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
            WatchItem::Heartbeat(sequence) if args.heartbeats => {
                println!(
                    "{}",
                    serde_json::json!({"heartbeat": {"sequence": sequence}})
                );
            }
            WatchItem::Heartbeat(_) => {}
        }
    }
}

/// `--stage`, when given; STAGE_UNSPECIFIED otherwise.
fn stage_or_unspecified(raw: Option<&str>) -> Result<pb::Stage, Failure> {
    raw.map_or(Ok(pb::Stage::Unspecified), parse_stage)
        .map_err(Failure::Local)
}

/// A list RPC's request, which names the page it asks for.
trait PageRequest: Clone {
    /// The RPC's answer.
    type Response: Page;
    fn set_page_token(&mut self, token: String);
    /// Calls the list RPC with this request.
    async fn fetch(self, client: RegistryClient) -> Result<Self::Response, tonic::Status>;
}

/// One page of a list RPC's answer: its items and the next page token
/// (empty after the last page).
trait Page {
    type Item;
    fn into_page(self) -> (Vec<Self::Item>, String);
}

/// [`PageRequest`] and [`Page`] for the list RPCs:
/// `rpc: Request, Response => items_field: Item`.
macro_rules! impl_paging {
    ($($rpc:ident: $request:ident, $response:ident => $items:ident: $item:ident),* $(,)?) => {$(
        impl PageRequest for pb::$request {
            type Response = pb::$response;
            fn set_page_token(&mut self, token: String) {
                self.page_token = token;
            }
            async fn fetch(self, mut client: RegistryClient) -> Result<pb::$response, tonic::Status> {
                Ok(client.$rpc(self).await?.into_inner())
            }
        }
        impl Page for pb::$response {
            type Item = pb::$item;
            fn into_page(self) -> (Vec<pb::$item>, String) {
                (self.$items, self.next_page_token)
            }
        }
    )*};
}

impl_paging! {
    list_models: ListModelsRequest, ListModelsResponse => models: Model,
    list_versions: ListVersionsRequest, ListVersionsResponse => versions: ModelVersion,
    list_evaluation_sets: ListEvaluationSetsRequest, ListEvaluationSetsResponse => evaluation_sets: EvaluationSet,
    list_evaluations: ListEvaluationsRequest, ListEvaluationsResponse => evaluations: Evaluation,
    list_transition_requests: ListTransitionRequestsRequest, ListTransitionRequestsResponse => requests: TransitionRequest,
    list_events: ListEventsRequest, ListEventsResponse => events: RegistryEvent,
    list_consumers: ListConsumersRequest, ListConsumersResponse => consumers: Consumer,
    list_dead_letters: ListDeadLettersRequest, ListDeadLettersResponse => dead_letters: DeadLetter,
}

/// Asks for `request`'s first page, follows `next_page_token` to the last,
/// and returns every item.
async fn all_pages<Q: PageRequest>(
    client: &RegistryClient,
    mut request: Q,
) -> Result<Vec<<Q::Response as Page>::Item>, Failure> {
    let mut items = Vec::new();
    loop {
        let answer = request.clone().fetch(client.clone()).await?;
        let (page, next) = answer.into_page();
        items.extend(page);
        if next.is_empty() {
            return Ok(items);
        }
        request.set_page_token(next);
    }
}

// ---- output ------------------------------------------------------------------
//
// Human output goes through `print_fields`, `print_table`, `print_line` and
// `print_error`, which pass every value through `printable`: stored text may
// hold terminal escapes, and none may reach the terminal raw.

/// Prints one line for people.
fn print_line(text: &str) {
    println!("{}", printable(text));
}

/// Prints an error for people on stderr, each of its lines made printable.
fn print_error(text: &str) {
    for (i, line) in text.split('\n').enumerate() {
        let lead = if i == 0 { "error: " } else { "" };
        eprintln!("{lead}{}", printable(line));
    }
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

/// Prints messages of one type as a JSON array.
fn print_json_list<M: prost::Message>(items: &[M], full_name: &str) {
    print_json(&serde_json::Value::Array(
        items.iter().map(|m| to_json(m, full_name)).collect(),
    ));
}

/// Prints a list: with `--json` a JSON array of `full_name` messages,
/// otherwise a table of `headers` with a `row` for each item.
fn print_list<M: prost::Message>(
    items: &[M],
    full_name: &str,
    json: bool,
    headers: &[&str],
    row: impl Fn(&M) -> Vec<String>,
) {
    if json {
        print_json_list(items, full_name);
    } else {
        print_table(headers, items.iter().map(row).collect());
    }
}

/// Every item of a list RPC, from the first page to the last, printed as
/// [`print_list`] does.
async fn print_all_pages<Q: PageRequest>(
    client: &RegistryClient,
    request: Q,
    full_name: &str,
    json: bool,
    headers: &[&str],
    row: impl Fn(&<Q::Response as Page>::Item) -> Vec<String>,
) -> Result<(), Failure>
where
    <Q::Response as Page>::Item: prost::Message,
{
    let items = all_pages(client, request).await?;
    print_list(&items, full_name, json, headers, row);
    Ok(())
}

/// The answers of the RPCs that return a model.
trait ModelAnswer {
    fn into_model(self) -> Option<pb::Model>;
}

macro_rules! impl_model_answer {
    ($($response:ident),* $(,)?) => {$(
        impl ModelAnswer for pb::$response {
            fn into_model(self) -> Option<pb::Model> {
                self.model
            }
        }
    )*};
}

impl_model_answer!(
    CreateModelResponse,
    GetModelResponse,
    UpdateModelResponse,
    SetAliasResponse,
    DeleteAliasResponse,
);

/// Prints the model an RPC answered with.
fn print_model_answer(answer: tonic::Response<impl ModelAnswer>, json: bool) {
    print_model(&answer.into_inner().into_model().unwrap_or_default(), json);
}

fn print_model(m: &pb::Model, json: bool) {
    if json {
        print_json(&to_json(m, "modelreg.v1.Model"));
        return;
    }
    print_fields(&[
        ("name", m.name.clone()),
        ("description", m.description.clone()),
        ("latest version", m.latest_version.to_string()),
        ("production version", dash_if_zero(m.production_version)),
        ("aliases", join_map(&m.aliases)),
        ("tags", join_map(&m.tags)),
        ("etag", m.etag.clone()),
        ("created by", m.created_by.clone()),
        ("created", time_label(m.create_time.as_ref())),
        ("updated", time_label(m.update_time.as_ref())),
    ]);
}

fn print_version(v: &pb::ModelVersion, json: bool) {
    if json {
        print_json(&to_json(v, "modelreg.v1.ModelVersion"));
        return;
    }
    let source = v.source.clone().unwrap_or_default();
    let metrics: HashMap<String, String> = v
        .training_metrics
        .iter()
        .map(|(k, x)| (k.clone(), x.to_string()))
        .collect();
    print_fields(&[
        ("model", v.model.clone()),
        ("version", v.version.to_string()),
        ("stage", stage_label(v.stage)),
        ("aliases", v.aliases.join(", ")),
        ("artifact", v.artifact_uri.clone()),
        ("digest", v.artifact_digest.clone()),
        ("commit", source.commit),
        ("pipeline", source.pipeline_url),
        ("run id", source.run_id),
        ("metrics", join_map(&metrics)),
        ("tags", join_map(&v.tags)),
        ("etag", v.etag.clone()),
        ("created by", v.created_by.clone()),
        ("created", time_label(v.create_time.as_ref())),
        ("stage since", time_label(v.stage_update_time.as_ref())),
    ]);
}

fn event_row(e: &pb::RegistryEvent) -> Vec<String> {
    let change = if e.to_stage != 0 {
        let mut s = format!(
            "{} → {}",
            stage_label(e.from_stage),
            stage_label(e.to_stage)
        );
        if e.cause != 0 {
            s.push_str(&format!(" ({})", cause_label(e.cause)));
        }
        s
    } else {
        String::new()
    };
    vec![
        e.sequence.to_string(),
        time_label(e.occur_time.as_ref()),
        event_type_label(e.r#type),
        e.model.clone(),
        dash_if_zero(e.version),
        change,
        e.actor.clone(),
        e.comment.clone(),
    ]
}

fn print_fields(fields: &[(&str, String)]) {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in fields {
        if !v.is_empty() {
            println!("{k:<width$}  {}", printable(v));
        }
    }
}

fn print_table(headers: &[&str], rows: Vec<Vec<String>>) {
    // Escaped before measuring: each cell is one line of printable characters.
    let cell = |c: &str| printable(c).into_owned();
    let headers: Vec<String> = headers.iter().map(|h| cell(h)).collect();
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|row| row.iter().map(|c| cell(c)).collect())
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let pad = widths[i].saturating_sub(c.chars().count());
                format!("{c}{}", " ".repeat(pad))
            })
            .collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(headers);
    for row in rows {
        line(row);
    }
}

fn dash_if_zero(n: i64) -> String {
    if n == 0 { "-".into() } else { n.to_string() }
}

fn join_map<V: std::fmt::Display>(m: &HashMap<String, V>) -> String {
    let mut parts: Vec<String> = m.iter().map(|(k, v)| format!("{k}={v}")).collect();
    parts.sort();
    parts.join(",")
}

/// RFC 3339 in UTC, to the second.
fn time_label(t: Option<&prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let secs = t.seconds;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), Howard Hinnant's algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn numbers_print_without_float_noise() {
        assert_eq!(fmt_num(0.93 - 0.90), "0.03");
        assert_eq!(fmt_num(-10.0), "-10");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-0.0000001), "0");
    }

    #[test]
    fn dates_print_as_rfc3339() {
        let t = prost_types::Timestamp {
            seconds: 1_795_737_600,
            nanos: 0,
        };
        assert_eq!(time_label(Some(&t)), "2026-11-27T00:00:00Z");
    }
}
