//! Hostile input campaign: every RPC called with generated strings (empty,
//! up to 1 MiB, unicode confusables, control characters, NUL bytes,
//! injection-looking, path traversal) and numbers (negative, huge, NaN, ∞);
//! the token-file and policy parsers fed arbitrary input; garbage protobuf
//! bytes and an oversize message sent as raw gRPC frames.
//!
//! The server must never answer INTERNAL or UNKNOWN for a request it could
//! parse, never panic (the same connection keeps working and health stays
//! SERVING), never show SQL or database text in an error, and leave the
//! event log untouched by every refused call.
//!
//! Case counts are short for CI (`PROPTEST_CASES`, default 64); failures are
//! persisted as seeds in `tests/proptest-regressions/hostile_input.txt` and
//! replayed first on every run.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes};
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{TestApp, TestDb, create_model, register, spawn_app};
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestError, TestRunner};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

/// Where proptest keeps the seeds of failed cases; they are committed and
/// replayed before the generated cases.
const SEEDS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/proptest-regressions/hostile_input.txt"
);

/// Text that would betray a database error leaking through a status.
const LEAK_MARKERS: &[&str] = &[
    "select",
    "insert",
    "sqlite",
    "postgres",
    "syntax error",
    "sqlx",
    "error returned from database",
    "constraint",
];

/// The proptest configuration: `PROPTEST_CASES` cases (default `default`),
/// failures persisted to [`SEEDS`].
fn config(default: u32) -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(SEEDS))),
        ..Config::default()
    }
}

/// Runs `test` over `strategy`, panicking with proptest's minimal failing
/// input when a case fails.
fn check<S: Strategy>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) {
    let mut runner = TestRunner::new(config(default_cases));
    match runner.run(&strategy, test) {
        Ok(()) => {}
        Err(TestError::Fail(why, input)) => {
            let shown = format!("{input:?}");
            let shown: String = shown.chars().take(2000).collect();
            panic!("{name}: {why}\nminimal failing input (first 2000 characters): {shown}")
        }
        Err(e) => panic!("{name}: {e}"),
    }
}

/// Fragments a hostile string is assembled from.
const FRAGMENTS: &[&str] = &[
    "'; DROP TABLE events; --",
    "\" OR 1=1 --",
    "1; DELETE FROM models",
    "') UNION SELECT * FROM sqlite_master --",
    "$1",
    "?",
    "%",
    "_",
    "\\",
    "../../../../etc/passwd",
    "..\\..\\windows\\system32",
    "/",
    "fr\u{0430}ud",    // Cyrillic 'а' in place of Latin 'a'
    "\u{200d}",        // zero-width joiner
    "\u{200b}",        // zero-width space
    "\u{202e}gpj.exe", // right-to-left override
    "\u{feff}",        // byte order mark
    "\u{0}",           // NUL
    "\u{1b}[31m",      // terminal escape
    "\r\n",
    "\t",
    "é",
    "e\u{301}", // e + combining acute
    "😀",
    "\u{10ffff}",
    "fraud",
    "known",
    "champion",
    "s3://bucket/x",
    "sha256:",
    "a",
    "0",
    "-",
    ".",
    " ",
    "%00",
    "${jndi:ldap://x}",
    "<script>",
];

/// A hostile string: empty, huge, assembled from [`FRAGMENTS`], control
/// characters, or arbitrary code points.
fn hostile_string() -> impl Strategy<Value = String> {
    prop_oneof![
        1 => Just(String::new()),
        1 => (prop::sample::select(vec!['a', 'x', '\u{0}', 'а', '😀', '\'']), 4097usize..=(1 << 20))
            .prop_map(|(c, n)| std::iter::repeat_n(c, n / c.len_utf8()).collect()),
        5 => prop::collection::vec(prop::sample::select(FRAGMENTS), 1..6)
            .prop_map(|parts| parts.concat()),
        2 => prop::collection::vec((0u32..32).prop_map(|c| char::from_u32(c).unwrap()), 1..16)
            .prop_map(String::from_iter),
        3 => prop::collection::vec(any::<char>(), 0..48).prop_map(String::from_iter),
    ]
}

fn hostile_i64() -> impl Strategy<Value = i64> {
    prop_oneof![
        Just(i64::MIN),
        Just(-1),
        Just(0),
        Just(i64::MAX),
        Just(1 << 53),
        any::<i64>(),
    ]
}

fn hostile_i32() -> impl Strategy<Value = i32> {
    prop_oneof![
        Just(i32::MIN),
        Just(-1),
        Just(0),
        Just(1001),
        Just(i32::MAX),
        any::<i32>(),
    ]
}

fn hostile_f64() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(f64::NAN),
        Just(f64::INFINITY),
        Just(f64::NEG_INFINITY),
        Just(-0.0),
        Just(f64::MAX),
        Just(f64::MIN_POSITIVE),
        Just(-1e308),
        any::<f64>(),
    ]
}

/// One generated case: the values every RPC's fields are filled from.
#[derive(Debug, Clone)]
struct Hostile {
    /// For names and identifiers.
    a: String,
    /// For free text, URIs, tag values.
    b: String,
    /// For version numbers.
    n: i64,
    /// For page sizes and enum numbers.
    i: i32,
    /// For metric values and gate bounds.
    x: f64,
    /// For sequences.
    u: u64,
}

fn hostile() -> impl Strategy<Value = Hostile> {
    (
        hostile_string(),
        hostile_string(),
        hostile_i64(),
        hostile_i32(),
        hostile_f64(),
        prop_oneof![
            Just(0u64),
            Just(u64::MAX),
            Just(i64::MAX as u64 + 1),
            any::<u64>()
        ],
    )
        .prop_map(|(a, b, n, i, x, u)| Hostile { a, b, n, i, x, u })
}

type CallFuture = Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send>>;

/// Every unary RPC, named, called with the fields of `h`.
fn calls(c: &RegistryClient, h: &Hostile) -> Vec<(&'static str, CallFuture)> {
    let tags = HashMap::from([(h.a.clone(), h.b.clone())]);
    let metrics = HashMap::from([(h.a.clone(), h.x)]);
    let set = Some(pb::EvaluationSetRef {
        name: h.a.clone(),
        version: h.b.clone(),
    });
    let policy = pb::Policy {
        approval_required_for: Some(pb::StageList { stages: vec![h.i] }),
        min_approvals: Some(h.i),
        standard_evaluation_set: set.clone(),
        gates: Some(pb::MetricGateList {
            gates: vec![pb::MetricGate {
                metric: h.a.clone(),
                min_value: Some(h.x),
                max_value: None,
                max_regression: Some(h.x),
                min_improvement: None,
            }],
        }),
        ..Default::default()
    };
    macro_rules! rpc {
        ($name:literal, $method:ident, $req:expr) => {{
            let mut c = c.clone();
            let req = $req;
            let fut: CallFuture = Box::pin(async move { c.$method(req).await.map(|_| ()) });
            ($name, fut)
        }};
    }
    vec![
        rpc!(
            "CreateModel",
            create_model,
            pb::CreateModelRequest {
                name: h.a.clone(),
                description: h.b.clone(),
                tags: tags.clone(),
                policy: Some(policy.clone()),
                request_id: h.b.clone(),
            }
        ),
        rpc!(
            "CreateModel(name only)",
            create_model,
            pb::CreateModelRequest {
                name: h.a.clone(),
                ..Default::default()
            }
        ),
        rpc!(
            "GetModel",
            get_model,
            pb::GetModelRequest { name: h.a.clone() }
        ),
        rpc!(
            "ListModels",
            list_models,
            pb::ListModelsRequest {
                page_size: h.i,
                page_token: h.a.clone(),
                filter: h.b.clone(),
            }
        ),
        rpc!(
            "UpdateModel(known)",
            update_model,
            pb::UpdateModelRequest {
                name: "known".into(),
                description: h.b.clone(),
                tags: tags.clone(),
                policy: Some(policy.clone()),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec![h.a.clone()],
                }),
                etag: h.b.clone(),
            }
        ),
        rpc!(
            "UpdateModel",
            update_model,
            pb::UpdateModelRequest {
                name: h.a.clone(),
                description: h.b.clone(),
                ..Default::default()
            }
        ),
        rpc!(
            "RegisterVersion(known)",
            register_version,
            pb::RegisterVersionRequest {
                model: "known".into(),
                artifact_uri: h.b.clone(),
                artifact_digest: h.a.clone(),
                source: Some(pb::Source {
                    commit: h.a.clone(),
                    ..Default::default()
                }),
                training_metrics: metrics.clone(),
                tags: tags.clone(),
                request_id: h.a.clone(),
                target_stage: h.i,
                description: h.b.clone(),
            }
        ),
        rpc!(
            "RegisterVersion",
            register_version,
            pb::RegisterVersionRequest {
                model: h.a.clone(),
                artifact_uri: h.b.clone(),
                ..Default::default()
            }
        ),
        rpc!(
            "GetVersion",
            get_version,
            pb::GetVersionRequest {
                model: h.a.clone(),
                version: h.n,
                alias: h.b.clone(),
            }
        ),
        rpc!(
            "GetVersion(known)",
            get_version,
            pb::GetVersionRequest {
                model: "known".into(),
                version: h.n,
                alias: h.a.clone(),
            }
        ),
        rpc!(
            "ListVersions",
            list_versions,
            pb::ListVersionsRequest {
                model: h.a.clone(),
                stage: h.i,
                page_size: h.i,
                page_token: h.b.clone(),
            }
        ),
        rpc!(
            "SetAlias(known)",
            set_alias,
            pb::SetAliasRequest {
                model: "known".into(),
                alias: h.a.clone(),
                version: h.n,
            }
        ),
        rpc!(
            "DeleteAlias",
            delete_alias,
            pb::DeleteAliasRequest {
                model: h.a.clone(),
                alias: h.b.clone(),
            }
        ),
        rpc!(
            "TransitionStage(known)",
            transition_stage,
            pb::TransitionStageRequest {
                model: "known".into(),
                version: h.n,
                target_stage: h.i,
                comment: h.b.clone(),
                etag: h.a.clone(),
            }
        ),
        rpc!(
            "ApproveTransition",
            approve_transition,
            pb::ApproveTransitionRequest {
                request_id: h.a.clone(),
                comment: h.b.clone(),
            }
        ),
        rpc!(
            "RejectTransition",
            reject_transition,
            pb::RejectTransitionRequest {
                request_id: h.a.clone(),
                comment: h.b.clone(),
            }
        ),
        rpc!(
            "CancelTransition",
            cancel_transition,
            pb::CancelTransitionRequest {
                request_id: h.a.clone(),
                comment: h.b.clone(),
            }
        ),
        rpc!(
            "ListTransitionRequests",
            list_transition_requests,
            pb::ListTransitionRequestsRequest {
                model: h.a.clone(),
                status: h.i,
                page_size: h.i,
                page_token: h.b.clone(),
            }
        ),
        rpc!(
            "Rollback",
            rollback,
            pb::RollbackRequest {
                model: h.a.clone(),
                version: h.n,
                reason: h.b.clone(),
            }
        ),
        rpc!(
            "CreateEvaluationSet",
            create_evaluation_set,
            pb::CreateEvaluationSetRequest {
                name: h.a.clone(),
                version: h.b.clone(),
                uri: h.b.clone(),
                digest: h.a.clone(),
                metrics: vec![pb::MetricDefinition {
                    name: h.b.clone(),
                    ..Default::default()
                }],
                description: h.b.clone(),
            }
        ),
        rpc!(
            "GetEvaluationSet",
            get_evaluation_set,
            pb::GetEvaluationSetRequest {
                name: h.a.clone(),
                version: h.b.clone(),
            }
        ),
        rpc!(
            "ListEvaluationSets",
            list_evaluation_sets,
            pb::ListEvaluationSetsRequest {
                name: h.a.clone(),
                page_size: h.i,
                page_token: h.b.clone(),
            }
        ),
        rpc!(
            "AttachEvaluation(known)",
            attach_evaluation,
            pb::AttachEvaluationRequest {
                model: "known".into(),
                version: h.n,
                evaluation_set: set.clone(),
                evaluator_version: h.a.clone(),
                metrics: metrics.clone(),
                report_uri: h.b.clone(),
                request_id: h.b.clone(),
            }
        ),
        rpc!(
            "ListEvaluations",
            list_evaluations,
            pb::ListEvaluationsRequest {
                model: h.a.clone(),
                evaluation_set: set.clone(),
                metric: h.b.clone(),
                page_size: h.i,
                page_token: h.a.clone(),
            }
        ),
        rpc!(
            "CompareVersions",
            compare_versions,
            pb::CompareVersionsRequest {
                model: h.a.clone(),
                candidate_version: h.n,
                baseline_version: h.n.wrapping_neg(),
                evaluation_set: set.clone(),
                evaluator_version: h.b.clone(),
            }
        ),
        rpc!(
            "ReportDeployment(known)",
            report_deployment,
            pb::ReportDeploymentRequest {
                model: "known".into(),
                version: h.n,
                environment: h.a.clone(),
                status: h.i,
                endpoint: h.b.clone(),
                message: h.b.clone(),
                request_id: h.a.clone(),
                fence: None,
            }
        ),
        rpc!(
            "ReportLiveMetric(known)",
            report_live_metric,
            pb::ReportLiveMetricRequest {
                model: "known".into(),
                version: h.n,
                metric: h.a.clone(),
                value: h.x,
                observe_time: Some(prost_types::Timestamp {
                    seconds: h.n,
                    nanos: h.i,
                }),
            }
        ),
        rpc!(
            "ReportWorkerFailure",
            report_worker_failure,
            pb::ReportWorkerFailureRequest {
                model: h.a.clone(),
                version: h.n,
                worker: h.b.clone(),
                event_sequence: h.u,
                error: h.b.clone(),
                attempts: h.i,
                request_id: h.a.clone(),
            }
        ),
        rpc!(
            "ListEvents",
            list_events,
            pb::ListEventsRequest {
                model: h.a.clone(),
                version: h.n,
                actor: h.b.clone(),
                types: vec![h.i],
                after_sequence: h.u,
                start_time: Some(prost_types::Timestamp {
                    seconds: h.n,
                    nanos: h.i,
                }),
                end_time: None,
                page_size: h.i,
                page_token: h.a.clone(),
            }
        ),
        rpc!(
            "VerifyAuditLog",
            verify_audit_log,
            pb::VerifyAuditLogRequest::default()
        ),
    ]
}

/// The end of the event log as the caller sees it: (count, last sequence).
async fn log_end(c: &mut RegistryClient) -> Result<(u64, u64), String> {
    let resp = c
        .verify_audit_log(pb::VerifyAuditLogRequest::default())
        .await
        .map_err(|s| format!("VerifyAuditLog failed afterwards: {s:?}"))?
        .into_inner();
    if !resp.ok {
        return Err(format!(
            "the audit log is broken at {}",
            resp.first_bad_sequence
        ));
    }
    let page = c
        .list_events(pb::ListEventsRequest {
            after_sequence: resp.events_checked.saturating_sub(1),
            page_size: 10,
            ..Default::default()
        })
        .await
        .map_err(|s| format!("ListEvents failed afterwards: {s:?}"))?
        .into_inner();
    let last = page.events.last().map_or(0, |e| e.sequence);
    Ok((resp.events_checked, last))
}

/// Fails when `status` is a server fault or shows database internals that
/// were not part of the caller's own input.
fn check_status(what: &str, status: &tonic::Status, inputs: &[&str]) -> Result<(), String> {
    if matches!(
        status.code(),
        Code::Internal | Code::Unknown | Code::DataLoss
    ) {
        return Err(format!("{what}: server fault {status:?}"));
    }
    let message = status.message().to_lowercase();
    for marker in LEAK_MARKERS {
        let echoed = inputs.iter().any(|i| i.to_lowercase().contains(marker));
        if message.contains(marker) && !echoed {
            return Err(format!("{what}: error text shows {marker:?}: {status:?}"));
        }
    }
    Ok(())
}

/// One case: every RPC with `h`, checking each answer and the log after it.
async fn every_rpc(app: &TestApp, h: Hostile) -> Result<(), String> {
    let mut c = app.client.clone();
    let inputs = [h.a.as_str(), h.b.as_str()];
    let (mut count, mut last) = log_end(&mut c).await?;
    let mut calls = calls(&c, &h);
    // A watch stream is opened in a quarter of the cases (each waits for
    // its first message: a heartbeat at most 200 ms away).
    if h.n % 4 == 0 {
        let mut w = c.clone();
        let req = pb::WatchTransitionsRequest {
            models: vec![h.a.clone(), h.b.clone()],
            types: vec![h.i],
            to_stages: vec![h.i],
            after_sequence: h.u.is_multiple_of(2).then_some(h.u),
        };
        let fut: CallFuture = Box::pin(async move {
            let mut stream = w.watch_transitions(req).await?.into_inner();
            match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
                Ok(Some(Err(status))) => Err(status),
                Ok(Some(Ok(_))) => Ok(()),
                Ok(None) => Err(tonic::Status::unknown("stream ended without a message")),
                Err(_) => Err(tonic::Status::unknown("no message within 5 s")),
            }
        });
        calls.push(("WatchTransitions", fut));
    }
    for (name, call) in calls {
        let result = call.await;
        let (count_after, last_after) = log_end(&mut c).await?;
        match result {
            Err(status) => {
                check_status(name, &status, &inputs)?;
                if (count_after, last_after) != (count, last) {
                    return Err(format!(
                        "{name} was refused ({:?}: {}) but the log moved from {count}/{last} to {count_after}/{last_after}",
                        status.code(),
                        status.message().chars().take(200).collect::<String>()
                    ));
                }
            }
            Ok(()) => {
                // An accepted call may append its own events, contiguously.
                if count_after < count || last_after != count_after || count_after - count > 3 {
                    return Err(format!(
                        "{name} succeeded and the log went from {count}/{last} to {count_after}/{last_after}"
                    ));
                }
                (count, last) = (count_after, last_after);
            }
        }
    }
    // The same connection still answers.
    c.get_model(pb::GetModelRequest {
        name: "known".into(),
    })
    .await
    .map_err(|s| format!("the connection stopped working: {s:?}"))?;
    Ok(())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Health of the whole server, as a load balancer would ask.
async fn serving(app: &TestApp) -> bool {
    app.health("").await == tonic_health::pb::health_check_response::ServingStatus::Serving as i32
}

/// A server with a known model holding one staged version, for RPCs aimed
/// at something that exists.
fn arranged_app(rt: &tokio::runtime::Runtime) -> (TestDb, TestApp) {
    rt.block_on(async {
        let db = TestDb::sqlite();
        let mut app = spawn_app(&db).await;
        create_model(&mut app.client, "known").await;
        register(&mut app.client, "known", pb::Stage::Staging).await;
        (db, app)
    })
}

/// Every RPC with hostile strings and numbers: never INTERNAL or UNKNOWN,
/// never SQL text in an error, the log unchanged by every refused call, the
/// connection and health fine afterwards.
#[test]
fn every_rpc_survives_hostile_strings_and_numbers() {
    let rt = runtime();
    let (_db, app) = arranged_app(&rt);
    check("every RPC", 64, hostile(), |h| {
        rt.block_on(every_rpc(&app, h)).map_err(TestCaseError::fail)
    });
    assert!(rt.block_on(serving(&app)), "health is SERVING afterwards");
}

/// Token files of arbitrary text, and well-formed ones with hostile fields,
/// never panic the parser; every error names the file.
#[test]
fn the_token_file_parser_refuses_garbage_and_names_the_file() {
    let entry = (
        hostile_string(),
        prop::collection::vec(
            prop_oneof![hostile_string(), Just("reader".to_string())],
            0..3,
        ),
        prop_oneof![
            hostile_string(),
            Just("ab".repeat(32)),
            Just("AB".repeat(32)),
            Just("g".repeat(64)),
        ],
    );
    let text = prop_oneof![
        // Arbitrary text, TOML-looking fragments included.
        prop::collection::vec(
            prop_oneof![
                prop::sample::select(vec![
                    "[[tokens]]\n",
                    "[tokens]\n",
                    "identity = ",
                    "roles = [",
                    "]",
                    "\"",
                    "'",
                    "token_sha256 = ",
                    "=",
                    "\n",
                    "#",
                    "{",
                    "}",
                    ",",
                    "\"\"\"",
                    "\\u0000",
                    "\u{0}",
                    "1e999",
                    "nan",
                    "inf",
                ])
                .prop_map(str::to_string),
                hostile_string().prop_map(|s| s.chars().take(64).collect()),
            ],
            0..24
        )
        .prop_map(|parts| parts.concat()),
        // Well-formed TOML whose values are hostile.
        prop::collection::vec(entry, 0..3).prop_map(|entries| {
            entries
                .into_iter()
                .map(|(identity, roles, digest)| {
                    let toml_str = |s: &str| {
                        format!(
                            "\"{}\"",
                            s.chars().flat_map(char::escape_unicode).collect::<String>()
                        )
                    };
                    let roles: Vec<String> = roles.iter().map(|r| toml_str(r)).collect();
                    format!(
                        "[[tokens]]\nidentity = {}\nroles = [{}]\ntoken_sha256 = {}\n",
                        toml_str(&identity),
                        roles.join(", "),
                        toml_str(&digest)
                    )
                })
                .collect::<String>()
        }),
    ];
    let origin = prop_oneof![
        Just("/etc/modelreg/tokens.toml".to_string()),
        hostile_string().prop_map(|s| s.chars().take(200).collect()),
    ];
    check(
        "token file parser",
        256,
        (text, origin),
        |(text, origin)| {
            match modelreg_server::auth::TokenTable::parse(&text, &origin) {
                Ok(table) => prop_assert!(!table.is_empty(), "an accepted file has tokens"),
                Err(e) => prop_assert!(
                    e.0.starts_with(&format!("token file {origin}: ")),
                    "the error names the file: {e}"
                ),
            }
            Ok(())
        },
    );
}

/// Arbitrary wire policies never panic the policy parser; every refusal is
/// INVALID_ARGUMENT with violations on fields under `policy`.
#[test]
fn the_policy_parser_refuses_garbage_with_policy_field_paths() {
    let gate = (
        hostile_string().prop_map(|s| s.chars().take(300).collect::<String>()),
        prop::option::of(hostile_f64()),
        prop::option::of(hostile_f64()),
        prop::option::of(hostile_f64()),
        prop::option::of(hostile_f64()),
    )
        .prop_map(
            |(metric, min_value, max_value, max_regression, min_improvement)| pb::MetricGate {
                metric,
                min_value,
                max_value,
                max_regression,
                min_improvement,
            },
        );
    let policy = (
        prop::option::of(prop::collection::vec(
            prop_oneof![0i32..5, hostile_i32()],
            0..6,
        )),
        prop::option::of(hostile_i32()),
        prop::option::of(any::<bool>()),
        prop::option::of((hostile_string(), hostile_string())),
        prop::option::of(prop::collection::vec(gate, 0..40)),
        prop::option::of(any::<bool>()),
        prop::option::of((
            prop::option::of(hostile_i32()),
            prop::option::of((
                hostile_string().prop_map(|s| s.chars().take(300).collect::<String>()),
                hostile_f64(),
                any::<bool>(),
                prop::option::of((hostile_i64(), hostile_i32())),
                hostile_i32(),
            )),
        )),
        prop::option::of(prop::collection::vec(
            (hostile_string(), hostile_string()),
            0..70,
        )),
    )
        .prop_map(
            |(stages, min_approvals, self_approval, set, gates, rollback, archival, reviewers)| {
                pb::Policy {
                    reviewers: reviewers.map(|list| pb::ReviewerList {
                        reviewers: list
                            .into_iter()
                            .map(|(email, identity)| pb::Reviewer { email, identity })
                            .collect(),
                    }),
                    approval_required_for: stages.map(|stages| pb::StageList { stages }),
                    min_approvals,
                    allow_self_approval: self_approval,
                    standard_evaluation_set: set
                        .map(|(name, version)| pb::EvaluationSetRef { name, version }),
                    gates: gates.map(|gates| pb::MetricGateList { gates }),
                    rollback_requires_approval: rollback,
                    archival: archival.map(|(days, live)| pb::ArchivalPolicy {
                        archive_superseded_after_days: days,
                        live_metric: live.map(
                            |(metric, threshold, higher_is_better, window, action)| {
                                pb::LiveMetricRule {
                                    metric,
                                    threshold,
                                    higher_is_better,
                                    window: window.map(|(seconds, nanos)| prost_types::Duration {
                                        seconds,
                                        nanos,
                                    }),
                                    action,
                                }
                            },
                        ),
                    }),
                }
            },
        );
    check("policy parser", 256, policy, |raw| {
        use modelreg_server::error::Error;
        match modelreg_server::grpc::convert::policy_from_pb("policy", raw) {
            Ok(_) => {}
            Err(Error::InvalidArgument(violations)) => {
                prop_assert!(!violations.is_empty(), "a refusal names a field");
                for v in &violations {
                    prop_assert!(
                        v.field == "policy" || v.field.starts_with("policy."),
                        "violation outside policy: {v:?}"
                    );
                    prop_assert!(!v.description.is_empty());
                }
            }
            Err(other) => prop_assert!(false, "not INVALID_ARGUMENT: {other:?}"),
        }
        Ok(())
    });
}

/// Sends and receives message bodies as they are, so a test can put any
/// bytes in a gRPC frame.
#[derive(Clone, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, tonic::Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// Sends `body` as the request message of `method` (a ModelRegistryService RPC).
async fn raw_call(
    channel: &tonic::transport::Channel,
    method: &str,
    body: Bytes,
) -> Result<Bytes, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let path: tonic::codegen::http::uri::PathAndQuery =
        format!("/modelreg.v1.ModelRegistryService/{method}")
            .parse()
            .expect("path");
    let mut req = tonic::Request::new(body);
    req.metadata_mut()
        .insert(modelreg_client::ACTOR_HEADER, "hostile".parse().unwrap());
    grpc.unary(req, path, RawCodec)
        .await
        .map(tonic::Response::into_inner)
}

/// Methods whose request bodies are garbled.
const RAW_METHODS: &[&str] = &[
    "CreateModel",
    "GetModel",
    "RegisterVersion",
    "TransitionStage",
    "UpdateModel",
    "AttachEvaluation",
    "ListEvents",
    "ReportLiveMetric",
];

/// Garbage bytes where a request message belongs: refused without SQL text
/// (INVALID_ARGUMENT from the handler, or the protobuf decoder's own error),
/// the log unchanged, the server healthy afterwards.
#[test]
fn garbage_protobuf_bytes_are_refused_and_change_nothing() {
    let rt = runtime();
    let (_db, app) = arranged_app(&rt);
    let channel = rt.block_on(async {
        tonic::transport::Endpoint::from_shared(app.url.clone())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    });
    let body = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        // Valid-looking field keys with lengths pointing past the end.
        prop::collection::vec(
            prop_oneof![
                Just(vec![0x0a, 0xff, 0xff, 0xff, 0x0f]),
                Just(vec![0x12, 0x05, b'a']),
                Just(vec![0x0a, 0x03, 0xff, 0xfe, 0xfd]),
                Just(vec![0x08, 0x80, 0x80, 0x80]),
                prop::collection::vec(any::<u8>(), 1..8)
            ],
            1..8
        )
        .prop_map(|parts| parts.concat()),
    ];
    let case = (prop::sample::select(RAW_METHODS), body);
    let answers = std::sync::Mutex::new(std::collections::BTreeMap::<String, usize>::new());
    check("garbage protobuf", 256, case, |(method, body)| {
        rt.block_on(async {
            let mut c = app.client.clone();
            let before = log_end(&mut c).await?;
            let result = raw_call(&channel, method, Bytes::from(body)).await;
            let after = log_end(&mut c).await?;
            let answer = match &result {
                Ok(_) => "OK".to_string(),
                Err(s) => format!("{:?}", s.code()),
            };
            *answers.lock().unwrap().entry(answer).or_default() += 1;
            match result {
                Ok(_) => {
                    if after.0 > before.0 + 3 {
                        return Err(format!(
                            "{method}: one call added {} events",
                            after.0 - before.0
                        ));
                    }
                }
                Err(status) => {
                    garbage_status_ok(method, &status)?;
                    if after != before {
                        return Err(format!("{method} refused ({status:?}) but the log moved"));
                    }
                }
            }
            Ok(())
        })
        .map_err(TestCaseError::fail)
    });
    assert!(rt.block_on(serving(&app)), "health is SERVING afterwards");
    eprintln!(
        "garbage protobuf answers: {:?}",
        answers.into_inner().unwrap()
    );
}

/// A refusal of undecodable bytes: INVALID_ARGUMENT, either because the
/// bytes decoded into a bad request or, before any handler runs, from the
/// protobuf decoder ("failed to decode Protobuf message"; tonic says INTERNAL,
/// the server's transport layer says INVALID_ARGUMENT) — never anything that
/// names the database.
fn garbage_status_ok(method: &str, status: &tonic::Status) -> Result<(), String> {
    let decoder = status.code() == Code::InvalidArgument
        && status
            .message()
            .starts_with("failed to decode Protobuf message");
    if !decoder {
        check_status(method, status, &[])?;
    }
    let message = status.message().to_lowercase();
    if let Some(marker) = LEAK_MARKERS.iter().find(|m| message.contains(**m)) {
        return Err(format!("{method}: error text shows {marker:?}: {status:?}"));
    }
    Ok(())
}

/// A request message over the documented 4 MiB limit is refused before any
/// handler runs, changes nothing, and the server goes on serving; just under
/// the limit reaches the handler (which refuses the oversize description).
/// (tonic's decoder says OUT_OF_RANGE; the server's transport layer turns it
/// into the RESOURCE_EXHAUSTED of gRPC's status table.)
#[test]
fn an_oversize_message_is_refused_before_any_handler() {
    let rt = runtime();
    let (_db, app) = arranged_app(&rt);
    rt.block_on(async {
        // Arrange
        let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"))
            .expect("README");
        assert!(
            readme.contains("4 MiB"),
            "README documents the 4 MiB message limit"
        );
        assert_eq!(modelreg_server::MAX_MESSAGE_BYTES, 4 * 1024 * 1024);
        let channel = tonic::transport::Endpoint::from_shared(app.url.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut c = app.client.clone();
        let before = log_end(&mut c).await.unwrap();
        let message = |len: usize| {
            let req = pb::CreateModelRequest {
                name: "big".into(),
                description: "d".repeat(len),
                ..Default::default()
            };
            Bytes::from(prost::Message::encode_to_vec(&req))
        };

        // Act
        let over = raw_call(
            &channel,
            "CreateModel",
            message(modelreg_server::MAX_MESSAGE_BYTES + 1),
        )
        .await
        .expect_err("over the limit");
        let under = raw_call(
            &channel,
            "CreateModel",
            message(modelreg_server::MAX_MESSAGE_BYTES - 64),
        )
        .await
        .expect_err("a 4 MiB description is refused");
        let typed = c
            .create_model(pb::CreateModelRequest {
                name: "big".into(),
                description: "d".repeat(5 * 1024 * 1024),
                ..Default::default()
            })
            .await
            .expect_err("over the limit through the real client");

        // Assert
        assert!(too_large(&over), "{over:?}");
        assert!(too_large(&typed), "{typed:?}");
        assert_eq!(under.code(), Code::InvalidArgument, "{under:?}");
        assert_eq!(log_end(&mut c).await.unwrap(), before);
        c.get_model(pb::GetModelRequest {
            name: "known".into(),
        })
        .await
        .expect("the connection keeps working");
        assert!(serving(&app).await);
    });
}

/// The refusal of a message over the limit: RESOURCE_EXHAUSTED.
fn too_large(status: &tonic::Status) -> bool {
    status.code() == Code::ResourceExhausted
}
