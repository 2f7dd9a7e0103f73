//! Automation on both engines, on the real server over TCP: deployment
//! reports and the deployment state GetVersion and GetModel show, worker
//! failures as events, live metrics, and the policy engine's archival rule
//! and live monitor driven with a manual clock (days pass in milliseconds;
//! nothing sleeps).

use std::time::Duration;

use modelreg_client::errors::violated_fields;
use modelreg_client::{RegistryClient, pb};
use modelreg_server::policy::ManualClock;
use modelreg_tests::{
    Engine, TestApp, TestDb, all_events, assert_policies_refused, carried, conformance,
    create_model, create_model_with, get_model, get_version, invalid_fields, list_events, register,
    spawn_app, spawn_app_with, transition, transition_requests, ungoverned, update_policy,
    verify_audit,
};
use pb::{DeploymentStatus, EventType, Stage, StageChangeCause as Cause};
use tokio_stream::StreamExt;
use tonic::Code;

conformance!(
    deployments_are_recorded_and_shown_on_the_version_and_the_model,
    a_retried_deployment_report_is_recorded_once,
    bad_deployment_reports_change_nothing,
    worker_failures_become_events_a_notifier_can_forward,
    live_metrics_are_validated_and_append_no_event,
    passed_over_candidates_are_archived_after_their_days,
    zero_days_never_archive,
    an_alerting_rule_reports_each_breach_episode_once,
    a_rollback_rule_returns_the_previous_production_version,
    without_an_earlier_version_a_rollback_rule_only_alerts,
    concurrent_ticks_act_once,
    archival_policies_are_validated_and_shown_with_their_defaults,
    the_policy_loop_ticks_by_itself_until_the_server_stops,
    the_service_stamps_by_the_clock_the_policy_engine_reads,
);

const MINUTE: i64 = 60 * 1_000_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;

fn micros(t: &Option<prost_types::Timestamp>) -> i64 {
    let t = t.as_ref().expect("timestamp");
    t.seconds * 1_000_000 + i64::from(t.nanos) / 1000
}

fn timestamp(micros: i64) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1000) as i32,
    }
}

fn details(e: &pb::RegistryEvent) -> serde_json::Value {
    modelreg_client::json::to_json(e, "modelreg.v1.RegistryEvent")["details"].clone()
}

/// A server on `db` whose clock stands still at the real time of the start.
async fn app_with_clock(db: &TestDb) -> (TestApp, ManualClock) {
    let clock = ManualClock::at(modelreg_server::clock::now_micros());
    let app = spawn_app_with(db, |s| s.clock = clock.clock()).await;
    (app, clock)
}

/// A version promoted straight to production (ungoverned model).
async fn in_production(c: &mut RegistryClient, model: &str) -> pb::ModelVersion {
    let v = register(c, model, Stage::Staging).await;
    transition(c, model, v.version, Stage::Production)
        .await
        .expect("promote")
}

async fn create_with_policy(c: &mut RegistryClient, name: &str, policy: pb::Policy) -> pb::Model {
    create_model_with(c, name, policy)
        .await
        .expect("create model")
}

/// The stages of versions 1..=n.
async fn stages(c: &mut RegistryClient, model: &str, n: i64) -> Vec<Stage> {
    let mut out = Vec::new();
    for v in 1..=n {
        let stage = get_version(c, model, v).await.stage;
        out.push(Stage::try_from(stage).unwrap());
    }
    out
}

fn report(
    model: &str,
    version: i64,
    environment: &str,
    status: DeploymentStatus,
) -> pb::ReportDeploymentRequest {
    pb::ReportDeploymentRequest {
        model: model.into(),
        version,
        environment: environment.into(),
        status: status as i32,
        ..Default::default()
    }
}

async fn deploy(
    c: &mut RegistryClient,
    req: pb::ReportDeploymentRequest,
) -> Result<pb::Deployment, tonic::Status> {
    carried(c.report_deployment(req).await, |r| r.deployment)
}

async fn observe(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
    metric: &str,
    at: i64,
    value: f64,
) {
    c.report_live_metric(pb::ReportLiveMetricRequest {
        model: model.into(),
        version,
        metric: metric.into(),
        value,
        observe_time: Some(timestamp(at)),
    })
    .await
    .expect("report live metric");
}

/// The events of `kinds` after `after`.
async fn events_of(
    c: &mut RegistryClient,
    kinds: &[EventType],
    after: u64,
) -> Vec<pb::RegistryEvent> {
    list_events(
        c,
        pb::ListEventsRequest {
            types: kinds.iter().map(|k| *k as i32).collect(),
            after_sequence: after,
            ..Default::default()
        },
    )
    .await
}

fn live_rule(
    metric: &str,
    threshold: f64,
    higher_is_better: bool,
    window: Duration,
    action: pb::LiveMetricAction,
) -> pb::Policy {
    pb::Policy {
        archival: Some(pb::ArchivalPolicy {
            archive_superseded_after_days: None,
            live_metric: Some(pb::LiveMetricRule {
                metric: metric.into(),
                threshold,
                higher_is_better,
                window: Some(prost_types::Duration {
                    seconds: window.as_secs() as i64,
                    nanos: 0,
                }),
                action: action as i32,
            }),
        }),
        ..ungoverned()
    }
}

/// A deployment worker's DEPLOYING then SUCCEEDED (and another environment's
/// FAILED) are each one DEPLOYMENT_REPORTED event by the reporter; GetVersion
/// shows the latest state per environment, and GetModel shows the current
/// production version's, following production when it changes.
async fn deployments_are_recorded_and_shown_on_the_version_and_the_model(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("publisher").await;
    let mut worker = app.client_as("deploy-bot").await;
    create_model(&mut c, "fraud").await;
    let v1 = in_production(&mut c, "fraud").await.version;
    let before = all_events(&mut c).await.len();

    // Act
    let deploying = deploy(
        &mut worker,
        report("fraud", v1, "prod-eu", DeploymentStatus::Deploying),
    )
    .await
    .unwrap();
    let succeeded = deploy(
        &mut worker,
        pb::ReportDeploymentRequest {
            endpoint: "https://fraud.prod-eu.example/v1".into(),
            message: "rolled out to 12 pods".into(),
            ..report("fraud", v1, "prod-eu", DeploymentStatus::Succeeded)
        },
    )
    .await
    .unwrap();
    deploy(
        &mut worker,
        pb::ReportDeploymentRequest {
            message: "Error: ImagePullBackOff\n".into(),
            ..report("fraud", v1, "prod-us", DeploymentStatus::Failed)
        },
    )
    .await
    .unwrap();

    // Assert
    assert_eq!(deploying.status, DeploymentStatus::Deploying as i32);
    assert_eq!(deploying.reported_by, "deploy-bot");
    assert_eq!(succeeded.endpoint, "https://fraud.prod-eu.example/v1");
    let version = get_version(&mut c, "fraud", v1).await;
    let shown: Vec<(&str, i32, &str)> = version
        .deployments
        .iter()
        .map(|d| (d.environment.as_str(), d.status, d.endpoint.as_str()))
        .collect();
    assert_eq!(
        shown,
        [
            (
                "prod-eu",
                DeploymentStatus::Succeeded as i32,
                "https://fraud.prod-eu.example/v1"
            ),
            ("prod-us", DeploymentStatus::Failed as i32, ""),
        ]
    );
    assert_eq!(version.deployments[1].message, "Error: ImagePullBackOff\n");
    assert_eq!(version.deployments[0], succeeded);
    let model = get_model(&mut c, "fraud").await;
    assert_eq!(model.deployments, version.deployments);

    let events = all_events(&mut c).await;
    let reported: Vec<&pb::RegistryEvent> = events[before..].iter().collect();
    assert_eq!(reported.len(), 3);
    for e in &reported {
        assert_eq!(e.r#type, EventType::DeploymentReported as i32);
        assert_eq!((e.model.as_str(), e.version), ("fraud", v1));
        assert_eq!(e.actor, "deploy-bot");
    }
    let d = details(reported[1]);
    assert_eq!(d["environment"], "prod-eu");
    assert_eq!(d["status"], "SUCCEEDED");
    assert_eq!(d["endpoint"], "https://fraud.prod-eu.example/v1");
    assert_eq!(d["message"], "rolled out to 12 pods");
    assert_eq!(details(reported[2])["status"], "FAILED");

    // A new production version has no deployments yet; the old one keeps its own.
    let v2 = in_production(&mut c, "fraud").await.version;
    assert!(get_model(&mut c, "fraud").await.deployments.is_empty());
    assert_eq!(get_version(&mut c, "fraud", v1).await.deployments.len(), 2);
    deploy(
        &mut worker,
        report("fraud", v2, "prod-eu", DeploymentStatus::Succeeded),
    )
    .await
    .unwrap();
    let model = get_model(&mut c, "fraud").await;
    assert_eq!(model.deployments.len(), 1);
    assert_eq!(model.deployments[0].version, v2);
}

/// A worker retrying a report with the same request id gets the original
/// answer (even after a later report moved the state on) and records nothing
/// twice; the same id with other content is refused.
async fn a_retried_deployment_report_is_recorded_once(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("deploy-bot").await;
    create_model(&mut c, "fraud").await;
    let v1 = in_production(&mut c, "fraud").await.version;
    let deploying = pb::ReportDeploymentRequest {
        request_id: "seq-7:deploying".into(),
        ..report("fraud", v1, "prod", DeploymentStatus::Deploying)
    };
    let first = deploy(&mut c, deploying.clone()).await.unwrap();
    let count = all_events(&mut c).await.len();

    // Act
    let retry = deploy(&mut c, deploying.clone()).await.unwrap();

    // Assert
    assert_eq!(retry, first);
    assert_eq!(all_events(&mut c).await.len(), count);

    // A later report moves the state on; retrying the first still answers as the first time.
    deploy(
        &mut c,
        pb::ReportDeploymentRequest {
            request_id: "seq-7:succeeded".into(),
            ..report("fraud", v1, "prod", DeploymentStatus::Succeeded)
        },
    )
    .await
    .unwrap();
    let late_retry = deploy(&mut c, deploying.clone()).await.unwrap();
    assert_eq!(late_retry, first);
    assert_eq!(all_events(&mut c).await.len(), count + 1);
    let shown = get_version(&mut c, "fraud", v1).await.deployments;
    assert_eq!(shown.len(), 1);
    assert_eq!(shown[0].status, DeploymentStatus::Succeeded as i32);

    let reused = deploy(
        &mut c,
        pb::ReportDeploymentRequest {
            message: "something else".into(),
            ..deploying
        },
    )
    .await
    .unwrap_err();
    assert_eq!(reused.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&reused), ["request_id"]);
    assert_eq!(all_events(&mut c).await.len(), count + 1);
}

/// Bad reports are refused with every bad field named, unknown models and
/// versions are NOT_FOUND, and none of them changes anything.
async fn bad_deployment_reports_change_nothing(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("deploy-bot").await;
    create_model(&mut c, "fraud").await;
    let v1 = in_production(&mut c, "fraud").await.version;
    let before = all_events(&mut c).await.len();
    let big = "x".repeat(4097);

    // Act
    let all_bad = deploy(
        &mut c,
        pb::ReportDeploymentRequest {
            model: "Fraud".into(),
            version: 0,
            environment: "Prod EU".into(),
            status: DeploymentStatus::Unspecified as i32,
            endpoint: big.clone(),
            message: big.clone(),
            request_id: "r".repeat(129),
            fence: None,
        },
    )
    .await
    .unwrap_err();

    // Assert
    assert_eq!(
        invalid_fields(&all_bad),
        [
            "endpoint",
            "environment",
            "message",
            "model",
            "request_id",
            "status",
            "version"
        ]
    );
    for (req, field) in [
        (
            pb::ReportDeploymentRequest {
                status: 99,
                ..report("fraud", v1, "prod", DeploymentStatus::Deploying)
            },
            "status",
        ),
        (
            report("fraud", v1, "", DeploymentStatus::Deploying),
            "environment",
        ),
        (
            report("fraud", v1, &"e".repeat(129), DeploymentStatus::Deploying),
            "environment",
        ),
    ] {
        let s = deploy(&mut c, req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert_eq!(violated_fields(&s), [field]);
    }
    for req in [
        report("nope", 1, "prod", DeploymentStatus::Deploying),
        report("fraud", 9, "prod", DeploymentStatus::Deploying),
    ] {
        let s = deploy(&mut c, req).await.unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }
    assert_eq!(all_events(&mut c).await.len(), before);
    assert!(
        get_version(&mut c, "fraud", v1)
            .await
            .deployments
            .is_empty()
    );
    assert!(get_model(&mut c, "fraud").await.deployments.is_empty());
}

/// A worker that gave up reports it: one WORKER_FAILED event by the worker
/// with worker, event sequence, error and attempts in its details, returned
/// by the call; a retry with the same request id returns that event again
/// and appends nothing; bad reports are refused field by field.
async fn worker_failures_become_events_a_notifier_can_forward(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("publisher").await;
    let mut worker = app.client_as("eval-bot").await;
    create_model(&mut c, "fraud").await;
    let v1 = register(&mut c, "fraud", Stage::Staging).await.version;
    let staged = all_events(&mut c).await.last().unwrap().sequence;
    let failure = pb::ReportWorkerFailureRequest {
        model: "fraud".into(),
        version: v1,
        worker: "evaluate".into(),
        event_sequence: staged,
        error: "exit status 2: KeyError: 'label'".into(),
        attempts: 3,
        request_id: format!("evaluate:{staged}:failed"),
    };

    // Act
    let event = carried(worker.report_worker_failure(failure.clone()).await, |r| {
        r.event
    })
    .unwrap();

    // Assert
    assert_eq!(event.r#type, EventType::WorkerFailed as i32);
    assert_eq!((event.model.as_str(), event.version), ("fraud", v1));
    assert_eq!(event.actor, "eval-bot");
    assert_eq!(event.sequence, staged + 1);
    let d = details(&event);
    assert_eq!(d["worker"], "evaluate");
    assert_eq!(d["event_sequence"].as_f64(), Some(staged as f64));
    assert_eq!(d["error"], "exit status 2: KeyError: 'label'");
    assert_eq!(d["attempts"].as_f64(), Some(3.0));
    let logged = events_of(&mut c, &[EventType::WorkerFailed], 0).await;
    assert_eq!(logged.len(), 1);
    assert_eq!(logged[0], event);

    let retry = carried(worker.report_worker_failure(failure.clone()).await, |r| {
        r.event
    })
    .unwrap();
    assert_eq!(retry, event);
    let count = all_events(&mut c).await.len();
    assert_eq!(count as u64, event.sequence);

    let all_bad = pb::ReportWorkerFailureRequest {
        model: "fraud".into(),
        version: v1,
        worker: String::new(),
        event_sequence: 0,
        error: " ".into(),
        attempts: 0,
        request_id: String::new(),
    };
    let bad = worker.report_worker_failure(all_bad).await.unwrap_err();
    assert_eq!(
        invalid_fields(&bad),
        ["attempts", "error", "event_sequence", "worker"]
    );
    let beyond_the_log = pb::ReportWorkerFailureRequest {
        event_sequence: 1_000,
        request_id: String::new(),
        ..failure.clone()
    };
    let beyond = worker
        .report_worker_failure(beyond_the_log)
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&beyond), ["event_sequence"]);
    let unknown_version = pb::ReportWorkerFailureRequest {
        version: 7,
        request_id: String::new(),
        ..failure
    };
    let missing = worker
        .report_worker_failure(unknown_version)
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    assert_eq!(all_events(&mut c).await.len(), count);
}

/// Observations need a finite value, a printable metric name and a time at
/// most 5 minutes ahead of the server's clock; unknown models and versions
/// are NOT_FOUND; accepted or refused, none appends an event.
async fn live_metrics_are_validated_and_append_no_event(db: TestDb) {
    // Arrange
    let (app, clock) = app_with_clock(&db).await;
    let mut c = app.client_as("monitor").await;
    create_model(&mut c, "fraud").await;
    let v1 = in_production(&mut c, "fraud").await.version;
    let before = all_events(&mut c).await.len();
    let now = clock.now_micros();
    let ok = |value: f64, at: Option<i64>| pb::ReportLiveMetricRequest {
        model: "fraud".into(),
        version: v1,
        metric: "p99_latency_ms".into(),
        value,
        observe_time: at.map(timestamp),
    };

    // Act + Assert
    for req in [
        ok(120.0, None),
        ok(130.0, Some(now - DAY)),
        ok(125.0, Some(now + 4 * MINUTE)),
        ok(-1.5, Some(now)),
    ] {
        c.report_live_metric(req).await.expect("accepted");
    }
    for (req, field) in [
        (ok(f64::NAN, None), "value"),
        (ok(f64::INFINITY, None), "value"),
        (ok(1.0, Some(now + 6 * MINUTE)), "observe_time"),
        (
            pb::ReportLiveMetricRequest {
                metric: String::new(),
                ..ok(1.0, None)
            },
            "metric",
        ),
        (
            pb::ReportLiveMetricRequest {
                metric: "bad\nname".into(),
                ..ok(1.0, None)
            },
            "metric",
        ),
        (
            pb::ReportLiveMetricRequest {
                metric: "m".repeat(129),
                ..ok(1.0, None)
            },
            "metric",
        ),
        (
            pb::ReportLiveMetricRequest {
                version: 0,
                ..ok(1.0, None)
            },
            "version",
        ),
    ] {
        let s = c.report_live_metric(req).await.unwrap_err();
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert_eq!(violated_fields(&s), [field]);
    }
    // The limit follows the server's clock, not the test machine's.
    clock.advance(Duration::from_secs(3600));
    c.report_live_metric(ok(1.0, Some(now + 50 * MINUTE)))
        .await
        .expect("accepted once the clock moved on");
    for req in [
        pb::ReportLiveMetricRequest {
            model: "nope".into(),
            ..ok(1.0, None)
        },
        pb::ReportLiveMetricRequest {
            version: 5,
            ..ok(1.0, None)
        },
    ] {
        let s = c.report_live_metric(req).await.unwrap_err();
        assert_eq!(s.code(), Code::NotFound, "{s:?}");
    }
    assert_eq!(all_events(&mut c).await.len(), before);
}

/// With the default policy (30 days), the candidates passed over when
/// version 3 entered production (one in STAGING with a pending request, one
/// in NONE) are archived exactly 30 days after that, with cause POLICY and
/// actor policy:archival, their pending request SUPERSEDED; a version newer
/// than production is left alone, and a second tick does nothing more.
async fn passed_over_candidates_are_archived_after_their_days(db: TestDb) {
    // Arrange
    let (app, _clock) = app_with_clock(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    // The default policy: entering PRODUCTION needs a second person.
    create_with_policy(&mut alice, "ranker", pb::Policy::default()).await;
    let shown = get_model(&mut alice, "ranker").await.policy.unwrap();
    assert_eq!(
        shown.archival.unwrap().archive_superseded_after_days,
        Some(30)
    );
    register(&mut alice, "ranker", Stage::Staging).await; // 1
    register(&mut alice, "ranker", Stage::None).await; // 2
    register(&mut alice, "ranker", Stage::Staging).await; // 3
    let ask = |v: i64| pb::TransitionStageRequest {
        model: "ranker".into(),
        version: v,
        target_stage: Stage::Production as i32,
        ..Default::default()
    };
    let r3 = alice
        .transition_stage(ask(3))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    bob.approve_transition(pb::ApproveTransitionRequest {
        request_id: r3.id,
        comment: "ship it".into(),
    })
    .await
    .unwrap();
    let r1 = alice
        .transition_stage(ask(1))
        .await
        .unwrap()
        .into_inner()
        .request
        .unwrap();
    register(&mut alice, "ranker", Stage::Staging).await; // 4, newer than production
    let since = micros(&get_version(&mut alice, "ranker", 3).await.stage_update_time);
    let before = all_events(&mut alice).await.len();

    // Act: one microsecond early, then on the day.
    let early = app.policy.tick(since + 30 * DAY - 1).await.unwrap();
    let early_events = all_events(&mut alice).await.len();
    let due = app.policy.tick(since + 30 * DAY).await.unwrap();

    // Assert
    assert_eq!((early.archived, early.failures), (0, 0));
    assert_eq!(early_events, before);
    assert_eq!((due.archived, due.failures), (2, 0));
    let events = all_events(&mut alice).await;
    let new = &events[before..];
    let archived: Vec<&pb::RegistryEvent> = new
        .iter()
        .filter(|e| e.r#type == EventType::StageChanged as i32)
        .collect();
    let moves: Vec<(i64, i32)> = archived.iter().map(|e| (e.version, e.from_stage)).collect();
    assert_eq!(moves, [(1, Stage::Staging as i32), (2, Stage::None as i32)]);
    for e in &archived {
        assert_eq!(e.to_stage, Stage::Archived as i32);
        assert_eq!(e.cause, Cause::Policy as i32);
        assert_eq!(e.actor, "policy:archival");
        assert!(e.comment.contains("version 3"), "{}", e.comment);
        let d = details(e);
        assert_eq!(d["rule"], "archive_superseded_after_days");
        assert_eq!(d["days"].as_f64(), Some(30.0));
        assert_eq!(d["production_version"].as_f64(), Some(3.0));
    }
    let superseded: Vec<&pb::RegistryEvent> = new
        .iter()
        .filter(|e| e.r#type == EventType::TransitionSuperseded as i32)
        .collect();
    assert_eq!(superseded.len(), 1);
    assert_eq!(superseded[0].transition_request_id, r1.id);
    let requests = transition_requests(
        &mut alice,
        "ranker",
        pb::TransitionRequestStatus::Unspecified,
    )
    .await;
    let r1_now = requests.iter().find(|r| r.id == r1.id).unwrap();
    assert_eq!(
        r1_now.status,
        pb::TransitionRequestStatus::Superseded as i32
    );
    assert_eq!(
        stages(&mut alice, "ranker", 4).await,
        [
            Stage::Archived,
            Stage::Archived,
            Stage::Production,
            Stage::Staging
        ]
    );

    let again = app.policy.tick(since + 31 * DAY).await.unwrap();
    assert_eq!((again.archived, again.failures), (0, 0));
    assert_eq!(all_events(&mut alice).await.len(), events.len());
    let audit = verify_audit(&mut alice).await;
    assert!(audit.ok);
}

/// `archive_superseded_after_days = 0` turns the rule off for that model
/// only: ten years later its passed-over candidate is still in STAGING,
/// while a model with 1 day in the same tick is archived.
async fn zero_days_never_archive(db: TestDb) {
    // Arrange
    let (app, _clock) = app_with_clock(&db).await;
    let mut c = app.client_as("alice").await;
    for (name, days) in [("keep", 0), ("short", 1)] {
        create_with_policy(
            &mut c,
            name,
            pb::Policy {
                archival: Some(pb::ArchivalPolicy {
                    archive_superseded_after_days: Some(days),
                    live_metric: None,
                }),
                ..ungoverned()
            },
        )
        .await;
        register(&mut c, name, Stage::Staging).await;
        in_production(&mut c, name).await;
    }
    let since = micros(&get_version(&mut c, "keep", 2).await.stage_update_time).max(micros(
        &get_version(&mut c, "short", 2).await.stage_update_time,
    ));

    // Act
    let report = app.policy.tick(since + 3650 * DAY).await.unwrap();

    // Assert
    assert_eq!((report.archived, report.failures), (1, 0));
    assert_eq!(
        stages(&mut c, "keep", 2).await,
        [Stage::Staging, Stage::Production]
    );
    assert_eq!(
        stages(&mut c, "short", 2).await,
        [Stage::Archived, Stage::Production]
    );
}

/// An ALERT rule (error rate at most 0.05 over 1 hour) fires exactly when
/// the metric has been bad for a whole window since the production version
/// entered production: not a microsecond early, not on observations from
/// before production, once per episode however often the engine looks, and
/// again after a good value ended the episode and a new one lasted a window.
async fn an_alerting_rule_reports_each_breach_episode_once(db: TestDb) {
    // Arrange
    let (app, clock) = app_with_clock(&db).await;
    let mut c = app.client_as("monitor").await;
    create_with_policy(
        &mut c,
        "search",
        live_rule(
            "error_rate",
            0.05,
            false,
            Duration::from_secs(3600),
            pb::LiveMetricAction::Unspecified,
        ),
    )
    .await;
    let v1 = in_production(&mut c, "search").await;
    let t = micros(&v1.stage_update_time);
    clock.set(t + 10 * HOUR);
    let before = all_events(&mut c).await.len();
    let tick = |at: i64| {
        let policy = app.policy.clone();
        async move {
            let report = policy.tick(at).await.unwrap();
            assert_eq!(report.failures, 0, "{report:?}");
            report.breaches
        }
    };

    // Act + Assert: bad before production does not count.
    observe(&mut c, "search", 1, "error_rate", t - 10 * MINUTE, 0.3).await;
    observe(&mut c, "search", 1, "error_rate", t + 30 * MINUTE, 0.3).await;
    assert_eq!(tick(t + 50 * MINUTE).await, 0);

    observe(&mut c, "search", 1, "error_rate", t + HOUR, 0.01).await;
    for (at, value) in [
        (2 * HOUR, 0.2),
        (2 * HOUR + 30 * MINUTE, 0.3),
        (3 * HOUR, 0.25),
    ] {
        observe(&mut c, "search", 1, "error_rate", t + at, value).await;
    }
    // Bad since t+2h: one window later, not a microsecond before.
    assert_eq!(tick(t + 3 * HOUR - 1).await, 0);
    assert_eq!(all_events(&mut c).await.len(), before);
    assert_eq!(tick(t + 3 * HOUR).await, 1);
    // The same episode is not reported again.
    assert_eq!(tick(t + 3 * HOUR).await, 0);
    assert_eq!(tick(t + 3 * HOUR + 30 * MINUTE).await, 0);

    let breaches = events_of(&mut c, &[EventType::LiveMetricBreach], 0).await;
    assert_eq!(breaches.len(), 1);
    let e = &breaches[0];
    assert_eq!((e.model.as_str(), e.version), ("search", 1));
    assert_eq!(e.actor, "policy:live-monitor");
    let d = details(e);
    assert_eq!(d["metric"], "error_rate");
    assert_eq!(d["threshold"].as_f64(), Some(0.05));
    assert_eq!(d["window"], "1h");
    assert_eq!(d["window_seconds"].as_f64(), Some(3600.0));
    assert_eq!(d["last_value"].as_f64(), Some(0.25));
    assert_eq!(d["observations_in_window"].as_f64(), Some(2.0));
    assert_eq!(d["action"], "ALERT");
    assert_eq!(d["rolled_back_to"].as_f64(), Some(0.0));
    assert!(e.comment.contains("error_rate"), "{}", e.comment);

    // A good value ends the episode; a new bad run lasting a window is a new one.
    observe(
        &mut c,
        "search",
        1,
        "error_rate",
        t + 3 * HOUR + 45 * MINUTE,
        0.01,
    )
    .await;
    assert_eq!(tick(t + 4 * HOUR).await, 0);
    for at in [4 * HOUR, 4 * HOUR + 30 * MINUTE, 5 * HOUR] {
        observe(&mut c, "search", 1, "error_rate", t + at, 0.5).await;
    }
    assert_eq!(tick(t + 5 * HOUR - 1).await, 0);
    assert_eq!(tick(t + 5 * HOUR).await, 1);
    let breaches = events_of(&mut c, &[EventType::LiveMetricBreach], 0).await;
    assert_eq!(breaches.len(), 2);
    assert_eq!(details(&breaches[1])["last_value"].as_f64(), Some(0.5));
    // Alerts move nothing.
    assert!(
        events_of(&mut c, &[EventType::StageChanged], breaches[0].sequence - 1)
            .await
            .is_empty()
    );
    assert_eq!(get_model(&mut c, "search").await.production_version, 1);
}

/// A ROLLBACK rule (click-through rate at least 0.02 over 10 minutes) that
/// fires returns the previous production version in the same transaction as
/// its breach event: three consecutive events by policy:live-monitor, both
/// moves with cause ROLLBACK and a comment naming the rule.
async fn a_rollback_rule_returns_the_previous_production_version(db: TestDb) {
    // Arrange
    let (app, clock) = app_with_clock(&db).await;
    let mut c = app.client_as("monitor").await;
    create_with_policy(
        &mut c,
        "ads",
        live_rule(
            "ctr",
            0.02,
            true,
            Duration::from_secs(600),
            pb::LiveMetricAction::Rollback,
        ),
    )
    .await;
    in_production(&mut c, "ads").await;
    let v2 = in_production(&mut c, "ads").await;
    let t = micros(&v2.stage_update_time);
    clock.set(t + HOUR);
    for (at, value) in [(MINUTE, 0.01), (6 * MINUTE, 0.015), (11 * MINUTE, 0.005)] {
        observe(&mut c, "ads", 2, "ctr", t + at, value).await;
    }
    let before = all_events(&mut c).await.last().unwrap().sequence;

    // Act
    let early = app.policy.tick(t + 11 * MINUTE - 1).await.unwrap();
    let fired = app.policy.tick(t + 11 * MINUTE).await.unwrap();

    // Assert
    assert_eq!((early.breaches, early.rollbacks, early.failures), (0, 0, 0));
    assert_eq!((fired.breaches, fired.rollbacks, fired.failures), (1, 1, 0));
    let new = events_of(&mut c, &[], before).await;
    let summary: Vec<(i32, i64, i32, i32, i32)> = new
        .iter()
        .map(|e| (e.r#type, e.version, e.from_stage, e.to_stage, e.cause))
        .collect();
    assert_eq!(
        summary,
        [
            (EventType::LiveMetricBreach as i32, 2, 0, 0, 0),
            (
                EventType::StageChanged as i32,
                2,
                Stage::Production as i32,
                Stage::Archived as i32,
                Cause::Rollback as i32
            ),
            (
                EventType::StageChanged as i32,
                1,
                Stage::Archived as i32,
                Stage::Production as i32,
                Cause::Rollback as i32
            ),
        ]
    );
    for (i, e) in new.iter().enumerate() {
        assert_eq!(e.sequence, before + 1 + i as u64);
        assert_eq!(e.actor, "policy:live-monitor");
    }
    assert!(new[1].comment.contains("ctr"), "{}", new[1].comment);
    let d = details(&new[0]);
    assert_eq!(d["action"], "ROLLBACK");
    assert_eq!(d["rolled_back_to"].as_f64(), Some(1.0));
    assert_eq!(d["observations_in_window"].as_f64(), Some(2.0));
    assert_eq!(get_model(&mut c, "ads").await.production_version, 1);

    // Version 1 has no observations: nothing more happens.
    let later = app.policy.tick(t + 30 * MINUTE).await.unwrap();
    assert_eq!((later.breaches, later.rollbacks, later.failures), (0, 0, 0));
    assert_eq!(
        all_events(&mut c).await.last().unwrap().sequence,
        before + 3
    );
    let audit = verify_audit(&mut c).await;
    assert!(audit.ok);
}

/// A ROLLBACK rule on a model whose first production version misbehaves has
/// nowhere to go back to: it alerts, says so, and moves nothing.
async fn without_an_earlier_version_a_rollback_rule_only_alerts(db: TestDb) {
    // Arrange
    let (app, clock) = app_with_clock(&db).await;
    let mut c = app.client_as("monitor").await;
    create_with_policy(
        &mut c,
        "solo",
        live_rule(
            "ctr",
            0.02,
            true,
            Duration::from_secs(60),
            pb::LiveMetricAction::Rollback,
        ),
    )
    .await;
    let v1 = in_production(&mut c, "solo").await;
    let t = micros(&v1.stage_update_time);
    clock.set(t + HOUR);
    observe(&mut c, "solo", 1, "ctr", t + MINUTE, 0.001).await;
    observe(&mut c, "solo", 1, "ctr", t + 2 * MINUTE, 0.001).await;
    let before = all_events(&mut c).await.last().unwrap().sequence;

    // Act
    let report = app.policy.tick(t + 2 * MINUTE).await.unwrap();

    // Assert
    assert_eq!(
        (report.breaches, report.rollbacks, report.failures),
        (1, 0, 0)
    );
    let new = events_of(&mut c, &[], before).await;
    assert_eq!(new.len(), 1);
    assert_eq!(new[0].r#type, EventType::LiveMetricBreach as i32);
    let d = details(&new[0]);
    assert_eq!(d["action"], "ROLLBACK");
    assert_eq!(d["rolled_back_to"].as_f64(), Some(0.0));
    assert!(d["outcome"].as_str().unwrap().contains("alert only"), "{d}");
    assert_eq!(get_model(&mut c, "solo").await.production_version, 1);
}

/// Ticks running at once (two replicas each ticking twice on PostgreSQL;
/// one server on SQLite) archive a candidate once and report a breach once:
/// each acts under the model's lock after judging again.
async fn concurrent_ticks_act_once(db: TestDb) {
    // Arrange
    let (app, clock) = app_with_clock(&db).await;
    let replica = match db.engine {
        Engine::Postgres => Some(spawn_app_with(&db, |s| s.clock = clock.clock()).await),
        Engine::Sqlite => None,
    };
    let mut c = app.client_as("monitor").await;
    create_with_policy(
        &mut c,
        "twin",
        live_rule(
            "error_rate",
            0.05,
            false,
            Duration::from_secs(3600),
            pb::LiveMetricAction::Alert,
        ),
    )
    .await;
    register(&mut c, "twin", Stage::Staging).await;
    let v2 = in_production(&mut c, "twin").await;
    let now = micros(&v2.stage_update_time) + 30 * DAY;
    clock.set(now);
    observe(&mut c, "twin", 2, "error_rate", now - 2 * HOUR, 0.4).await;
    observe(&mut c, "twin", 2, "error_rate", now - MINUTE, 0.4).await;
    let engines = [
        app.policy.clone(),
        app.policy.clone(),
        replica.as_ref().unwrap_or(&app).policy.clone(),
        replica.as_ref().unwrap_or(&app).policy.clone(),
    ];

    // Act
    let ticks = engines.map(|e| tokio::spawn(async move { e.tick(now).await.unwrap() }));
    let (mut archived, mut breaches, mut failures) = (0, 0, 0);
    for t in ticks {
        let r = t.await.unwrap();
        archived += r.archived;
        breaches += r.breaches;
        failures += r.failures;
    }

    // Assert: none acted twice, and none tried and failed.
    assert_eq!((archived, breaches, failures), (1, 1, 0));
    let acted = events_of(
        &mut c,
        &[EventType::StageChanged, EventType::LiveMetricBreach],
        v2.version as u64,
    )
    .await;
    let policy_moves = acted
        .iter()
        .filter(|e| e.cause == Cause::Policy as i32)
        .count();
    let alerts = acted
        .iter()
        .filter(|e| e.r#type == EventType::LiveMetricBreach as i32)
        .count();
    assert_eq!((policy_moves, alerts), (1, 1));
}

/// GetModel shows the archival policy with its defaults; an admin sets days
/// and a live rule (an unset action shows as ALERT); bad values are refused
/// field by field and change nothing.
async fn archival_policies_are_validated_and_shown_with_their_defaults(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("root").await;
    create_model(&mut c, "plain").await;
    let shown = get_model(&mut c, "plain").await.policy.unwrap().archival;
    assert_eq!(
        shown,
        Some(pb::ArchivalPolicy {
            archive_superseded_after_days: Some(30),
            live_metric: None,
        })
    );
    let mut good = live_rule(
        "error_rate",
        0.05,
        false,
        Duration::from_secs(600),
        pb::LiveMetricAction::Unspecified,
    );
    good.archival
        .as_mut()
        .unwrap()
        .archive_superseded_after_days = Some(7);

    // Act
    let updated = update_policy(&mut c, "plain", good.clone(), "")
        .await
        .unwrap();

    // Assert
    let archival = updated.policy.unwrap().archival.unwrap();
    assert_eq!(archival.archive_superseded_after_days, Some(7));
    let rule = archival.live_metric.unwrap();
    assert_eq!(rule.action, pb::LiveMetricAction::Alert as i32);
    assert_eq!(rule.window.unwrap().seconds, 600);
    assert_eq!(rule.metric, "error_rate");
    let last = all_events(&mut c).await.pop().unwrap();
    assert_eq!(last.r#type, EventType::ModelUpdated as i32);
    assert_eq!(
        details(&last)["after"]["policy"]["archival"]["archive_superseded_after_days"].as_f64(),
        Some(7.0)
    );

    let before = all_events(&mut c).await.len();
    let with_rule = |f: &dyn Fn(&mut pb::LiveMetricRule)| {
        let mut p = good.clone();
        f(p.archival.as_mut().unwrap().live_metric.as_mut().unwrap());
        p
    };
    let with_days = |days: i32| {
        let mut p = good.clone();
        p.archival.as_mut().unwrap().archive_superseded_after_days = Some(days);
        p
    };
    let bad: Vec<(pb::Policy, Vec<&str>)> = vec![
        (
            with_days(-1),
            vec!["policy.archival.archive_superseded_after_days"],
        ),
        (
            with_days(3651),
            vec!["policy.archival.archive_superseded_after_days"],
        ),
        (
            with_rule(&|r| {
                r.metric = String::new();
                r.threshold = f64::NAN;
                r.window = None;
                r.action = 7;
            }),
            vec![
                "policy.archival.live_metric.action",
                "policy.archival.live_metric.metric",
                "policy.archival.live_metric.threshold",
                "policy.archival.live_metric.window",
            ],
        ),
        (
            with_rule(&|r| {
                r.window = Some(prost_types::Duration {
                    seconds: 0,
                    nanos: 500_000_000,
                })
            }),
            vec!["policy.archival.live_metric.window"],
        ),
        (
            with_rule(&|r| {
                r.window = Some(prost_types::Duration {
                    seconds: 31 * 86_400,
                    nanos: 0,
                })
            }),
            vec!["policy.archival.live_metric.window"],
        ),
    ];
    assert_policies_refused(&mut c, "plain", bad).await;
    assert_eq!(all_events(&mut c).await.len(), before);
}

/// The server ticks by itself every --policy-interval on its clock: with
/// the clock moved 31 days on, a passed-over candidate is archived without
/// any call, seen on WatchTransitions; then the server stops cleanly.
async fn the_policy_loop_ticks_by_itself_until_the_server_stops(db: TestDb) {
    // Arrange
    let clock = ManualClock::at(modelreg_server::clock::now_micros());
    let app = spawn_app_with(&db, |s| {
        s.clock = clock.clock();
        s.policy_interval = Duration::from_millis(50);
    })
    .await;
    let mut c = app.client_as("alice").await;
    create_model(&mut c, "loop").await;
    let mut stream = c
        .watch_transitions(pb::WatchTransitionsRequest {
            models: vec!["loop".into()],
            types: vec![EventType::StageChanged as i32],
            to_stages: vec![Stage::Archived as i32],
            after_sequence: None,
        })
        .await
        .unwrap()
        .into_inner();

    // Act
    register(&mut c, "loop", Stage::Staging).await;
    in_production(&mut c, "loop").await;
    clock.advance(Duration::from_micros(31 * DAY as u64));

    // Assert
    let archived = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(item) = stream.next().await {
            if let Some(pb::watch_transitions_response::Kind::Event(e)) = item.unwrap().kind {
                return e;
            }
        }
        panic!("the stream ended");
    })
    .await
    .expect("the loop archives within 30 s");
    assert_eq!(archived.version, 1);
    assert_eq!(archived.cause, Cause::Policy as i32);
    assert_eq!(archived.actor, "policy:archival");
    drop(stream);
    app.stop().await;
}

/// One clock: what the service writes is stamped by the same clock the
/// policy engine judges by, so a test's manual clock moves both.
async fn the_service_stamps_by_the_clock_the_policy_engine_reads(db: TestDb) {
    // Arrange: a clock standing at 2020-01-01T00:00:00Z.
    let then = 1_577_836_800 * 1_000_000;
    let clock = ManualClock::at(then);
    let app = spawn_app_with(&db, |s| s.clock = clock.clock()).await;
    let mut c = app.client_as("alice").await;

    // Act
    create_model(&mut c, "stamped").await;
    let version = register(&mut c, "stamped", Stage::None).await;

    // Assert
    let at = |t: Option<prost_types::Timestamp>| t.map(|t| t.seconds * 1_000_000);
    assert_eq!(
        at(version.create_time),
        Some(then),
        "the version's create_time"
    );
    let events = list_events(
        &mut c,
        pb::ListEventsRequest {
            model: "stamped".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!events.is_empty());
    for e in events {
        assert_eq!(at(e.occur_time), Some(then), "{:?} occur_time", e.r#type);
    }
}
