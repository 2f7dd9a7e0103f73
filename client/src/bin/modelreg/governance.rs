//! The governance commands of `modelreg`: model policies, transition
//! requests and their approval, rollback, and the audit trail read per model.

use clap::{Args, Subcommand};
use modelreg_client::audit::{describe, in_production_at, production_timeline};
use modelreg_client::json::{from_json, to_json};
use modelreg_client::names::{parse_stage, stage_label, status_label};
use modelreg_client::{RegistryClient, pb};

use super::{
    Failure, all_pages, dash_if_zero, fmt_num, parse_set_ref, print_all_pages, print_fields,
    print_json, print_line, print_list, print_table, print_version, time_label,
};

/// `model policy`: show a model's policy, or change parts of it.
#[derive(Args)]
pub struct PolicyArgs {
    /// The model.
    model: String,
    /// Stages whose entry needs approval, comma-separated (e.g.
    /// `production` or `staging,production`), or `none`.
    #[arg(long, value_parser = parse_stage_list)]
    approval_stages: Option<StageList>,
    /// Distinct approvers needed (1 to 10).
    #[arg(long)]
    min_approvals: Option<i32>,
    /// Whether a requester may approve their own request.
    #[arg(long)]
    allow_self_approval: Option<bool>,
    /// The standard evaluation set, NAME@VERSION, that gates and comparisons use.
    #[arg(long, value_parser = parse_set_ref)]
    standard_set: Option<pb::EvaluationSetRef>,
    /// A metric gate (repeatable; replaces every gate), e.g.
    /// `auc:min_value=0.9,max_regression=0.01` or `latency_ms:max_value=50`.
    #[arg(long = "gate", value_parser = parse_gate)]
    gates: Vec<pb::MetricGate>,
    /// Remove every gate.
    #[arg(long, conflicts_with = "gates")]
    no_gates: bool,
    /// Whether a rollback waits for approval.
    #[arg(long)]
    rollback_requires_approval: Option<bool>,
    /// Archive candidates passed over by production after this many days
    /// (0 = never).
    #[arg(long)]
    archive_after_days: Option<i32>,
    /// A live-metric rule METRIC:higher|lower:THRESHOLD:WINDOW[:rollback],
    /// e.g. `error_rate:lower:0.05:15m:rollback`; `none` removes it.
    #[arg(long, value_parser = parse_live_rule)]
    live_metric: Option<LiveRule>,
    /// A designated reviewer, EMAIL or EMAIL:IDENTITY (repeatable; replaces
    /// every reviewer), e.g. `ana@example.com:ana`; the notifier mails them.
    #[arg(long = "reviewer", value_parser = parse_reviewer)]
    reviewers: Vec<pb::Reviewer>,
    /// Remove every reviewer.
    #[arg(long, conflicts_with = "reviewers")]
    no_reviewers: bool,
    /// Replace the whole policy with this proto3 JSON file (a modelreg.v1.Policy).
    #[arg(long, conflicts_with_all = [
        "approval_stages", "min_approvals", "allow_self_approval", "standard_set",
        "gates", "no_gates", "rollback_requires_approval", "archive_after_days", "live_metric",
        "reviewers", "no_reviewers",
    ])]
    file: Option<std::path::PathBuf>,
    /// Refuse the change if the model changed since this etag was read.
    #[arg(long, default_value = "")]
    etag: String,
}

impl PolicyArgs {
    fn changes_anything(&self) -> bool {
        self.approval_stages.is_some()
            || self.min_approvals.is_some()
            || self.allow_self_approval.is_some()
            || self.standard_set.is_some()
            || !self.gates.is_empty()
            || self.no_gates
            || self.rollback_requires_approval.is_some()
            || self.archive_after_days.is_some()
            || self.live_metric.is_some()
            || !self.reviewers.is_empty()
            || self.no_reviewers
            || self.file.is_some()
    }
}

/// Stages given as one comma-separated flag value.
#[derive(Clone)]
struct StageList(Vec<pb::Stage>);

fn parse_stage_list(raw: &str) -> Result<StageList, String> {
    if raw.trim().eq_ignore_ascii_case("none") || raw.trim().is_empty() {
        return Ok(StageList(Vec::new()));
    }
    raw.split(',')
        .map(parse_stage)
        .collect::<Result<_, _>>()
        .map(StageList)
}

/// A live-metric rule as given on the command line; `None` removes it.
#[derive(Clone)]
struct LiveRule(Option<pb::LiveMetricRule>);

fn parse_live_rule(raw: &str) -> Result<LiveRule, String> {
    if raw.trim().eq_ignore_ascii_case("none") {
        return Ok(LiveRule(None));
    }
    let bad = || {
        format!(
            "{raw:?} is not METRIC:higher|lower:THRESHOLD:WINDOW[:rollback], e.g. error_rate:lower:0.05:15m"
        )
    };
    let parts: Vec<&str> = raw.split(':').collect();
    let (metric, direction, threshold, window) = match parts.as_slice() {
        [m, d, t, w] | [m, d, t, w, _] => (*m, *d, *t, *w),
        _ => return Err(bad()),
    };
    let higher_is_better = match direction {
        "higher" => true,
        "lower" => false,
        _ => return Err(bad()),
    };
    let threshold: f64 = threshold.parse().map_err(|_| bad())?;
    // Any positive window: the server judges the range (up to 30 days).
    let window = modelreg_api::duration::parse_at_most(window, std::time::Duration::MAX)?;
    let action = match parts.get(4) {
        None => pb::LiveMetricAction::Alert,
        Some(&"rollback") => pb::LiveMetricAction::Rollback,
        Some(&"alert") => pb::LiveMetricAction::Alert,
        Some(_) => return Err(bad()),
    };
    Ok(LiveRule(Some(pb::LiveMetricRule {
        metric: metric.to_owned(),
        threshold,
        higher_is_better,
        window: Some(prost_types::Duration {
            seconds: window.as_secs() as i64,
            nanos: window.subsec_nanos() as i32,
        }),
        action: action as i32,
    })))
}

fn parse_gate(raw: &str) -> Result<pb::MetricGate, String> {
    let (metric, bounds) = raw.split_once(':').ok_or_else(|| {
        format!("{raw:?} is not METRIC:BOUND=VALUE[,BOUND=VALUE…], e.g. auc:min_value=0.9")
    })?;
    let mut gate = pb::MetricGate {
        metric: metric.trim().to_owned(),
        ..Default::default()
    };
    for part in bounds.split(',') {
        let (key, value) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} in {raw:?} is not BOUND=VALUE"))?;
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("{value:?} in {raw:?} is not a number"))?;
        let slot = match key.trim() {
            "min_value" | "min" => &mut gate.min_value,
            "max_value" | "max" => &mut gate.max_value,
            "max_regression" => &mut gate.max_regression,
            "min_improvement" => &mut gate.min_improvement,
            other => {
                return Err(format!(
                    "{other:?} in {raw:?}: use min_value, max_value, max_regression or min_improvement"
                ));
            }
        };
        *slot = Some(value);
    }
    Ok(gate)
}

/// `EMAIL` or `EMAIL:IDENTITY` (an address has no colon); the server
/// judges both.
fn parse_reviewer(raw: &str) -> Result<pb::Reviewer, String> {
    let (email, identity) = raw.split_once(':').unwrap_or((raw, ""));
    Ok(pb::Reviewer {
        email: email.trim().to_owned(),
        identity: identity.trim().to_owned(),
    })
}

fn reviewer_label(r: &pb::Reviewer) -> String {
    match r.identity.as_str() {
        "" => r.email.clone(),
        who => format!("{} ({who})", r.email),
    }
}

fn gate_label(g: &pb::MetricGate) -> String {
    let m = &g.metric;
    let mut parts = Vec::new();
    if let Some(v) = g.min_value {
        parts.push(format!("{m} >= {}", fmt_num(v)));
    }
    if let Some(v) = g.max_value {
        parts.push(format!("{m} <= {}", fmt_num(v)));
    }
    if let Some(v) = g.max_regression {
        parts.push(format!(
            "{m} regresses at most {} vs production",
            fmt_num(v)
        ));
    }
    if let Some(v) = g.min_improvement {
        parts.push(format!(
            "{m} improves at least {} vs production",
            fmt_num(v)
        ));
    }
    parts.join(", ")
}

fn archival_label(a: Option<&pb::ArchivalPolicy>) -> String {
    let a = a.cloned().unwrap_or_default();
    let days = match a.archive_superseded_after_days.unwrap_or(30) {
        0 => "never archive passed-over candidates".to_owned(),
        n => format!("archive passed-over candidates after {n} days"),
    };
    match a.live_metric {
        None => days,
        Some(r) => {
            let side = if r.higher_is_better { "below" } else { "above" };
            let window = r.window.map(|w| w.seconds).unwrap_or(0);
            let action = if r.action == pb::LiveMetricAction::Rollback as i32 {
                "roll back"
            } else {
                "alert"
            };
            format!(
                "{days}; {action} when {} stays {side} {} for {window}s",
                r.metric,
                fmt_num(r.threshold)
            )
        }
    }
}

/// `items` joined by `sep`, or `none`.
fn joined_or_none(items: &[String], sep: &str) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(sep)
    }
}

fn print_policy(model: &pb::Model, json: bool) {
    let p = model.policy.clone().unwrap_or_default();
    if json {
        print_json(&to_json(&p, "modelreg.v1.Policy"));
        return;
    }
    let stages = p
        .approval_required_for
        .map(|l| {
            l.stages
                .iter()
                .map(|s| stage_label(*s))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".to_owned());
    let set = p
        .standard_evaluation_set
        .map(|s| format!("{}@{}", s.name, s.version))
        .unwrap_or_else(|| "-".to_owned());
    let gates: Vec<String> = p
        .gates
        .map(|g| g.gates.iter().map(gate_label).collect())
        .unwrap_or_default();
    let reviewers: Vec<String> = p
        .reviewers
        .map(|l| l.reviewers.iter().map(reviewer_label).collect())
        .unwrap_or_default();
    let yes_no = |b: Option<bool>| if b == Some(true) { "yes" } else { "no" }.to_owned();
    print_fields(&[
        ("model", model.name.clone()),
        ("approval required for", stages),
        ("approvals needed", p.min_approvals.unwrap_or(1).to_string()),
        ("self-approval", yes_no(p.allow_self_approval)),
        ("standard evaluation set", set),
        ("gates", joined_or_none(&gates, "; ")),
        (
            "rollback needs approval",
            yes_no(p.rollback_requires_approval),
        ),
        ("archival", archival_label(p.archival.as_ref())),
        ("reviewers", joined_or_none(&reviewers, ", ")),
        ("etag", model.etag.clone()),
    ]);
}

/// `model policy`.
pub async fn policy_cmd(
    client: &mut RegistryClient,
    args: PolicyArgs,
    json: bool,
) -> Result<(), Failure> {
    let current = client
        .get_model(pb::GetModelRequest {
            name: args.model.clone(),
        })
        .await?
        .into_inner()
        .model
        .unwrap_or_default();
    if !args.changes_anything() {
        print_policy(&current, json);
        return Ok(());
    }
    let policy = match &args.file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Failure::Local(format!("cannot read {}: {e}", path.display())))?;
            from_json::<pb::Policy>(&text, "modelreg.v1.Policy").map_err(|e| {
                Failure::Local(format!(
                    "{} is not a modelreg.v1.Policy: {e}",
                    path.display()
                ))
            })?
        }
        None => {
            let mut p = current.policy.clone().unwrap_or_default();
            if let Some(StageList(stages)) = args.approval_stages {
                p.approval_required_for = Some(pb::StageList {
                    stages: stages.into_iter().map(|s| s as i32).collect(),
                });
            }
            if args.min_approvals.is_some() {
                p.min_approvals = args.min_approvals;
            }
            if args.allow_self_approval.is_some() {
                p.allow_self_approval = args.allow_self_approval;
            }
            if args.standard_set.is_some() {
                p.standard_evaluation_set = args.standard_set;
            }
            if args.no_gates || !args.gates.is_empty() {
                p.gates = Some(pb::MetricGateList { gates: args.gates });
            }
            if args.no_reviewers || !args.reviewers.is_empty() {
                p.reviewers = Some(pb::ReviewerList {
                    reviewers: args.reviewers,
                });
            }
            if args.rollback_requires_approval.is_some() {
                p.rollback_requires_approval = args.rollback_requires_approval;
            }
            if args.archive_after_days.is_some() || args.live_metric.is_some() {
                let archival = p.archival.get_or_insert_with(Default::default);
                if args.archive_after_days.is_some() {
                    archival.archive_superseded_after_days = args.archive_after_days;
                }
                if let Some(LiveRule(rule)) = args.live_metric {
                    archival.live_metric = rule;
                }
            }
            p
        }
    };
    let updated = client
        .update_model(pb::UpdateModelRequest {
            name: args.model,
            policy: Some(policy),
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["policy".into()],
            }),
            etag: args.etag,
            ..Default::default()
        })
        .await?
        .into_inner()
        .model
        .unwrap_or_default();
    print_policy(&updated, json);
    Ok(())
}

/// `requests`: the approval inbox.
#[derive(Subcommand)]
pub enum RequestsCmd {
    /// List transition requests, oldest first per model.
    List {
        /// Only this model's requests.
        #[arg(long, default_value = "")]
        model: String,
        /// Only requests with this status: pending, approved, rejected,
        /// cancelled or superseded.
        #[arg(long, value_parser = parse_status)]
        status: Option<pb::TransitionRequestStatus>,
    },
}

fn parse_status(raw: &str) -> Result<pb::TransitionRequestStatus, String> {
    let name = format!(
        "TRANSITION_REQUEST_STATUS_{}",
        raw.trim()
            .to_ascii_uppercase()
            .trim_start_matches("TRANSITION_REQUEST_STATUS_")
    );
    match pb::TransitionRequestStatus::from_str_name(&name) {
        Some(pb::TransitionRequestStatus::Unspecified) | None => Err(format!(
            "{raw:?} is not a status: use pending, approved, rejected, cancelled or superseded"
        )),
        Some(s) => Ok(s),
    }
}

fn request_row(r: &pb::TransitionRequest) -> Vec<String> {
    let passed = r.gate_results.iter().filter(|g| g.passed).count();
    let approvers: Vec<&str> = r.approvals.iter().map(|a| a.approver.as_str()).collect();
    let what = if r.rollback {
        format!("rollback to {}", stage_label(r.to_stage))
    } else {
        format!(
            "{} → {}",
            stage_label(r.from_stage),
            stage_label(r.to_stage)
        )
    };
    vec![
        r.id.clone(),
        r.version.to_string(),
        what,
        status_label(r.status),
        r.requester.clone(),
        if approvers.is_empty() {
            "-".to_owned()
        } else {
            approvers.join(", ")
        },
        if r.gate_results.is_empty() {
            "-".to_owned()
        } else {
            format!("{passed}/{} passed", r.gate_results.len())
        },
        time_label(r.create_time.as_ref()),
        r.comment.clone(),
    ]
}

const REQUEST_HEADERS: [&str; 9] = [
    "ID",
    "VERSION",
    "MOVE",
    "STATUS",
    "REQUESTER",
    "APPROVED BY",
    "GATES",
    "CREATED",
    "COMMENT",
];

/// Prints a request, with each gate's result.
pub fn print_request(r: &pb::TransitionRequest, json: bool) {
    if json {
        print_json(&to_json(r, "modelreg.v1.TransitionRequest"));
        return;
    }
    print_table(&REQUEST_HEADERS, vec![request_row(r)]);
    if !r.gate_results.is_empty() {
        println!();
        let rows = r
            .gate_results
            .iter()
            .map(|g| {
                vec![
                    if g.passed { "pass" } else { "FAIL" }.to_owned(),
                    g.check.clone(),
                    g.message.clone(),
                ]
            })
            .collect();
        print_table(&["GATE", "CHECK", "RESULT"], rows);
    }
    if r.status == pb::TransitionRequestStatus::Pending as i32 {
        println!();
        print_line(&format!(
            "approve: modelreg approve {id}    reject: modelreg reject {id} --comment WHY",
            id = r.id
        ));
    }
}

/// `requests list`.
pub async fn requests_cmd(
    client: &mut RegistryClient,
    cmd: RequestsCmd,
    json: bool,
) -> Result<(), Failure> {
    let RequestsCmd::List { model, status } = cmd;
    let status = status.map(|s| s as i32).unwrap_or_default();
    let request = pb::ListTransitionRequestsRequest {
        model,
        status,
        page_size: 500,
        ..Default::default()
    };
    let full_name = "modelreg.v1.TransitionRequest";
    print_all_pages(
        client,
        request,
        full_name,
        json,
        &REQUEST_HEADERS,
        request_row,
    )
    .await
}

/// What to do with a pending request.
pub enum Verdict {
    /// Approve it.
    Approve,
    /// Reject it.
    Reject,
    /// Withdraw it.
    Cancel,
}

/// `approve`, `reject`, `cancel`.
pub async fn decide_cmd(
    client: &mut RegistryClient,
    verdict: Verdict,
    request_id: String,
    comment: String,
    json: bool,
) -> Result<(), Failure> {
    // The three RPCs take the same fields and answer the same fields.
    macro_rules! decide {
        ($rpc:ident, $request:ident) => {{
            let r = client
                .$rpc(pb::$request {
                    request_id,
                    comment,
                })
                .await?
                .into_inner();
            (r.request, r.version)
        }};
    }
    let (request, version) = match verdict {
        Verdict::Approve => decide!(approve_transition, ApproveTransitionRequest),
        Verdict::Reject => decide!(reject_transition, RejectTransitionRequest),
        Verdict::Cancel => decide!(cancel_transition, CancelTransitionRequest),
    };
    let request = request.unwrap_or_default();
    let version = version.unwrap_or_default();
    if json {
        print_json(&serde_json::json!({
            "request": to_json(&request, "modelreg.v1.TransitionRequest"),
            "version": to_json(&version, "modelreg.v1.ModelVersion"),
        }));
        return Ok(());
    }
    print_request(&request, false);
    println!();
    print_line(&format!(
        "{}/{} is in {}",
        version.model,
        version.version,
        stage_label(version.stage)
    ));
    Ok(())
}

/// `rollback`.
pub async fn rollback_cmd(
    client: &mut RegistryClient,
    model: String,
    reason: String,
    to: i64,
    json: bool,
) -> Result<(), Failure> {
    let r = client
        .rollback(pb::RollbackRequest {
            model,
            version: to,
            reason,
        })
        .await?
        .into_inner();
    match (r.version, r.request) {
        (Some(v), _) => print_version(&v, json),
        (None, Some(req)) => {
            if !json {
                print_line(&format!(
                    "the policy needs approval for rollbacks: request {} waits",
                    req.id
                ));
            }
            print_request(&req, json);
        }
        (None, None) => return Err(Failure::Local("the server answered nothing".into())),
    }
    Ok(())
}

/// `audit MODEL`: who did what to a model (or one version), and when.
pub async fn audit_model_cmd(
    client: &mut RegistryClient,
    model: String,
    version: i64,
    json: bool,
) -> Result<(), Failure> {
    let events = model_events(client, &model, version).await?;
    let headers = ["SEQ", "TIME", "VERSION", "WHO", "WHAT"];
    print_list(&events, "modelreg.v1.RegistryEvent", json, &headers, |e| {
        vec![
            e.sequence.to_string(),
            time_label(e.occur_time.as_ref()),
            dash_if_zero(e.version),
            e.actor.clone(),
            describe(e),
        ]
    });
    Ok(())
}

/// `history MODEL`: which version was in production from when to when, and why.
pub async fn history_cmd(
    client: &mut RegistryClient,
    model: String,
    at: Option<prost_types::Timestamp>,
    json: bool,
) -> Result<(), Failure> {
    let events = model_events(client, &model, 0).await?;
    let periods = production_timeline(&events);
    if let Some(at) = at {
        let version = in_production_at(&periods, &at);
        if json {
            print_json(&serde_json::json!({
                "model": model,
                "time": at.to_string(),
                "production_version": version.unwrap_or(0),
            }));
        } else {
            match version {
                Some(v) => print_line(&format!(
                    "{model}/{v} was in production at {}",
                    time_label(Some(&at))
                )),
                None => print_line(&format!(
                    "no version of {model} was in production at {}",
                    time_label(Some(&at))
                )),
            }
        }
        return Ok(());
    }
    if json {
        let list: Vec<serde_json::Value> = periods
            .iter()
            .map(|p| {
                serde_json::json!({
                    "version": p.version,
                    // Exact RFC 3339 times, so `--at` can be given one back.
                    "since": p.since.as_ref().map(ToString::to_string),
                    "until": p.until.as_ref().map(ToString::to_string),
                    "entered_by": p.entered_by,
                    "entered_cause": p.entered_by_cause,
                    "request_id": p.request_id,
                    "comment": p.comment,
                    "left_by": p.left_by,
                    "left_cause": p.left_by_cause,
                })
            })
            .collect();
        print_json(&serde_json::Value::Array(list));
        return Ok(());
    }
    let rows = periods
        .iter()
        .map(|p| {
            let entered = match p.request_id.as_str() {
                "" => format!("{} by {}", p.entered_by_cause, p.entered_by),
                id => format!("{} by {} ({id})", p.entered_by_cause, p.entered_by),
            };
            vec![
                p.version.to_string(),
                time_label(p.since.as_ref()),
                p.until
                    .as_ref()
                    .map(|t| time_label(Some(t)))
                    .unwrap_or_else(|| "now".to_owned()),
                entered,
                if p.left_by.is_empty() {
                    "-".to_owned()
                } else {
                    format!("{} by {}", p.left_by_cause, p.left_by)
                },
                p.comment.clone(),
            ]
        })
        .collect();
    print_table(
        &["VERSION", "FROM", "UNTIL", "ENTERED", "LEFT", "COMMENT"],
        rows,
    );
    Ok(())
}

/// Every event of one model (or one version), oldest first.
async fn model_events(
    client: &mut RegistryClient,
    model: &str,
    version: i64,
) -> Result<Vec<pb::RegistryEvent>, Failure> {
    // An unknown model is an error, not an empty trail.
    client
        .get_model(pb::GetModelRequest {
            name: model.to_owned(),
        })
        .await?;
    let request = pb::ListEventsRequest {
        model: model.to_owned(),
        version,
        page_size: 1000,
        ..Default::default()
    };
    all_pages(client, request).await
}
