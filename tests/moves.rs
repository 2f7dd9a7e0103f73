//! Every path that moves a version asks one rule (`app::transitions::
//! decide_move`) "applies now, needs approval, or refused by gates", so for
//! the same policy each path reaches the same outcome: registration with a
//! target stage, TransitionStage, approval, rollback and the policy engine
//! (the dashboard's decision is `tests/dashboard_http.rs`
//! `a_dashboard_decision_is_decided_like_an_rpc_approval`).

use std::time::Duration;

use modelreg_client::{RegistryClient, pb};
use modelreg_server::error::Error;
use modelreg_server::policy::ManualClock;
use modelreg_server::store::{Store, StoreOptions};
use modelreg_server::{app, domain};
use modelreg_tests::{
    TestApp, TestDb, auc_gate, auc_gated, conformance, create_holdout, create_model_with, evaluate,
    get_model, holdout, precondition_violations, register, spawn_app, spawn_app_with, stage_of,
    stages, update_policy,
};
use pb::{Stage, StageChangeCause as Cause};

conformance!(
    registration_with_a_target_stage_decides_by_the_rule,
    transition_decides_by_the_rule,
    approval_decides_again_when_it_applies,
    rollback_decides_by_the_rule_without_gates,
    the_policy_engine_decides_by_the_rule,
    a_registration_enters_only_none_or_staging_by_any_way_in,
);

/// What a move came to.
#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// The version is in its target stage.
    Applied,
    /// A request waits for approval.
    Pending,
    /// Refused, with the precondition violations' types.
    Refused(Vec<String>),
}

fn refused(status: &tonic::Status) -> Outcome {
    let mut kinds: Vec<String> = precondition_violations(status)
        .into_iter()
        .map(|v| v.r#type)
        .collect();
    kinds.dedup();
    Outcome::Refused(kinds)
}

/// Three policies of the same move into STAGING of a version without an
/// evaluation, and what the rule makes of it under each.
fn staging_policies() -> Vec<(&'static str, pb::Policy, Outcome)> {
    let governed = pb::Policy {
        approval_required_for: stages(&[Stage::Staging, Stage::Production]),
        ..Default::default()
    };
    vec![
        (
            "open",
            pb::Policy {
                approval_required_for: stages(&[]),
                ..Default::default()
            },
            Outcome::Applied,
        ),
        ("governed", governed.clone(), Outcome::Pending),
        (
            "gated",
            pb::Policy {
                approval_required_for: governed.approval_required_for,
                ..auc_gated(0.8)
            },
            Outcome::Refused(vec!["GATE_FAILED".into()]),
        ),
    ]
}

/// A server with the holdout set and a model under each of the
/// [`staging_policies`], named after it; each name with its outcome.
async fn staging_models(db: &TestDb) -> (TestApp, RegistryClient, Vec<(&'static str, Outcome)>) {
    let app = spawn_app(db).await;
    let mut c = app.client.clone();
    create_holdout(&mut c).await;
    let mut cases = Vec::new();
    for (name, policy, expected) in staging_policies() {
        create(&mut c, name, policy).await;
        cases.push((name, expected));
    }
    (app, c, cases)
}

async fn create(c: &mut RegistryClient, name: &str, policy: pb::Policy) {
    create_model_with(c, name, policy)
        .await
        .expect("create model");
}

async fn set_policy(c: &mut RegistryClient, name: &str, policy: pb::Policy) {
    update_policy(c, name, policy, "")
        .await
        .expect("set policy");
}

/// Asks TransitionStage for `to`; the outcome and the request, if one waits.
async fn ask(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
    to: Stage,
) -> (Outcome, Option<pb::TransitionRequest>) {
    match c
        .transition_stage(pb::TransitionStageRequest {
            model: model.into(),
            version,
            target_stage: to as i32,
            ..Default::default()
        })
        .await
    {
        Ok(r) => match r.into_inner() {
            pb::TransitionStageResponse {
                version: Some(_), ..
            } => (Outcome::Applied, None),
            pb::TransitionStageResponse { request, .. } => (Outcome::Pending, request),
        },
        Err(s) => (refused(&s), None),
    }
}

async fn approve(c: &mut RegistryClient, id: &str) -> Outcome {
    match c
        .approve_transition(pb::ApproveTransitionRequest {
            request_id: id.into(),
            comment: "ok".into(),
        })
        .await
    {
        Ok(_) => Outcome::Applied,
        Err(s) => refused(&s),
    }
}

/// The cause of the newest STAGE_CHANGED event that moved `version`.
async fn last_cause(c: &mut RegistryClient, model: &str, version: i64) -> i32 {
    modelreg_tests::stage_changes(c, model, version)
        .await
        .last()
        .expect("a stage change")
        .cause
}

/// RegisterVersion(target_stage=STAGING) under each policy: applied, pending
/// (registered in NONE), or refused by the gates (nothing registered).
async fn registration_with_a_target_stage_decides_by_the_rule(db: TestDb) {
    // Arrange
    let (_app, mut c, cases) = staging_models(&db).await;

    for (name, expected) in cases {
        // Act
        let outcome = match c
            .register_version(pb::RegisterVersionRequest {
                model: name.into(),
                artifact_uri: format!("s3://m/{name}/1"),
                target_stage: Stage::Staging as i32,
                ..Default::default()
            })
            .await
        {
            Ok(r) => match r.into_inner() {
                pb::RegisterVersionResponse {
                    request: Some(_),
                    version: Some(v),
                } => {
                    assert_eq!(v.stage, Stage::None as i32, "{name}");
                    Outcome::Pending
                }
                pb::RegisterVersionResponse {
                    version: Some(v), ..
                } => {
                    assert_eq!(v.stage, Stage::Staging as i32, "{name}");
                    Outcome::Applied
                }
                other => panic!("{name}: {other:?}"),
            },
            Err(s) => refused(&s),
        };

        // Assert
        assert_eq!(outcome, expected, "policy {name}");
    }
}

/// TransitionStage(NONE→STAGING) of an unevaluated version under the same
/// policies: the same outcomes as registration.
async fn transition_decides_by_the_rule(db: TestDb) {
    // Arrange
    let (_app, mut c, cases) = staging_models(&db).await;

    for (name, expected) in cases {
        let v = register(&mut c, name, Stage::None).await;

        // Act
        let (outcome, _) = ask(&mut c, name, v.version, Stage::Staging).await;

        // Assert
        assert_eq!(outcome, expected, "policy {name}");
        let stage = stage_of(&mut c, name, v.version).await;
        let moved = expected == Outcome::Applied;
        assert_eq!(stage == Stage::Staging as i32, moved, "policy {name}");
    }
}

/// Approval decides again when it applies: a request whose gates passed when
/// it was opened is refused at approval, with the same checks TransitionStage
/// now gives, once production moved ahead; a request whose gates still pass
/// applies with cause APPROVAL.
async fn approval_decides_again_when_it_applies(db: TestDb) {
    // Arrange: auc may not regress by more than 0.01 against production.
    let no_regression = pb::Policy {
        standard_evaluation_set: Some(holdout()),
        gates: auc_gate(pb::MetricGate {
            max_regression: Some(0.01),
            ..Default::default()
        }),
        ..Default::default()
    };
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut alice).await;
    create(&mut alice, "fraud", no_regression).await;
    let mut pending = Vec::new();
    for auc in [0.85, 0.86, 0.95] {
        let v = register(&mut alice, "fraud", Stage::Staging).await;
        evaluate(&mut alice, "fraud", v.version, auc).await;
        if v.version == 1 {
            let (_, r) = ask(&mut alice, "fraud", 1, Stage::Production).await;
            assert_eq!(approve(&mut bob, &r.unwrap().id).await, Outcome::Applied);
        } else {
            let (outcome, r) = ask(&mut alice, "fraud", v.version, Stage::Production).await;
            assert_eq!(outcome, Outcome::Pending, "v{}", v.version);
            pending.push(r.unwrap().id);
        }
    }

    // Act: v3 (0.95) goes first; v2 (0.86) now regresses against it.
    let v3 = approve(&mut bob, &pending[1]).await;
    let v2 = approve(&mut bob, &pending[0]).await;
    let (fresh, _) = ask(&mut alice, "fraud", 2, Stage::Production).await;

    // Assert
    assert_eq!(v3, Outcome::Applied);
    assert_eq!(
        last_cause(&mut alice, "fraud", 3).await,
        Cause::Approval as i32
    );
    assert_eq!(v2, Outcome::Refused(vec!["GATE_FAILED".into()]));
    assert_eq!(v2, fresh, "approval and TransitionStage decide alike");
    assert_eq!(
        stage_of(&mut alice, "fraud", 2).await,
        Stage::Staging as i32
    );
}

/// Rollback under a policy whose gates the rollback target fails: no gates
/// stop it; it applies at once, or waits where the policy says rollbacks
/// need approval — and that request, approved, applies without gates.
async fn rollback_decides_by_the_rule_without_gates(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut alice).await;
    for (name, needs_approval, expected) in [
        ("quick", false, Outcome::Applied),
        ("careful", true, Outcome::Pending),
    ] {
        create(
            &mut alice,
            name,
            pb::Policy {
                approval_required_for: stages(&[]),
                ..Default::default()
            },
        )
        .await;
        for v in [1, 2] {
            register(&mut alice, name, Stage::Staging).await;
            let (outcome, _) = ask(&mut alice, name, v, Stage::Production).await;
            assert_eq!(outcome, Outcome::Applied);
        }
        // Now gates version 1 cannot pass (it has no evaluation at all).
        set_policy(
            &mut alice,
            name,
            pb::Policy {
                rollback_requires_approval: Some(needs_approval),
                ..auc_gated(0.99)
            },
        )
        .await;

        // Act
        let outcome = match alice
            .rollback(pb::RollbackRequest {
                model: name.into(),
                reason: "latency spike".into(),
                ..Default::default()
            })
            .await
        {
            Ok(r) => match r.into_inner() {
                pb::RollbackResponse {
                    request: Some(r), ..
                } => {
                    assert_eq!(approve(&mut bob, &r.id).await, Outcome::Applied);
                    Outcome::Pending
                }
                _ => Outcome::Applied,
            },
            Err(s) => refused(&s),
        };

        // Assert
        assert_eq!(outcome, expected, "{name}");
        assert_eq!(
            stage_of(&mut alice, name, 1).await,
            Stage::Production as i32,
            "{name}: back in production"
        );
        assert_eq!(
            last_cause(&mut alice, name, 1).await,
            Cause::Rollback as i32
        );
    }
}

/// The policy engine's live-monitor rollback is the model's own policy
/// acting: it applies even where people's rollbacks need approval and the
/// target fails the gates.
async fn the_policy_engine_decides_by_the_rule(db: TestDb) {
    // Arrange
    let clock = ManualClock::at(modelreg_server::clock::now_micros());
    let app = spawn_app_with(&db, |s| s.clock = clock.clock()).await;
    let mut c = app.client_as("alice").await;
    create_holdout(&mut c).await;
    create(
        &mut c,
        "ads",
        pb::Policy {
            approval_required_for: stages(&[]),
            ..Default::default()
        },
    )
    .await;
    for v in [1, 2] {
        register(&mut c, "ads", Stage::Staging).await;
        assert_eq!(
            ask(&mut c, "ads", v, Stage::Production).await.0,
            Outcome::Applied
        );
    }
    set_policy(
        &mut c,
        "ads",
        pb::Policy {
            rollback_requires_approval: Some(true),
            archival: Some(pb::ArchivalPolicy {
                archive_superseded_after_days: None,
                live_metric: Some(pb::LiveMetricRule {
                    metric: "ctr".into(),
                    threshold: 0.02,
                    higher_is_better: true,
                    window: Some(prost_types::Duration {
                        seconds: Duration::from_secs(600).as_secs() as i64,
                        nanos: 0,
                    }),
                    action: pb::LiveMetricAction::Rollback as i32,
                }),
            }),
            ..auc_gated(0.99)
        },
    )
    .await;
    let t = clock.now_micros();
    clock.set(t + 3_600_000_000);
    for (minutes, value) in [(1, 0.01), (6, 0.015), (11, 0.005)] {
        c.report_live_metric(pb::ReportLiveMetricRequest {
            model: "ads".into(),
            version: 2,
            metric: "ctr".into(),
            value,
            observe_time: Some(prost_types::Timestamp {
                seconds: (t + minutes * 60_000_000) / 1_000_000,
                nanos: 0,
            }),
        })
        .await
        .expect("observe");
    }

    // Act
    let report = app.policy.tick(t + 11 * 60_000_000).await.expect("tick");

    // Assert
    assert_eq!((report.breaches, report.rollbacks), (1, 1));
    assert_eq!(stage_of(&mut c, "ads", 1).await, Stage::Production as i32);
    assert_eq!(last_cause(&mut c, "ads", 1).await, Cause::Rollback as i32);
}

/// "A new version enters NONE or STAGING" is the use case's rule, not only
/// the gRPC parser's: a registration straight into a later stage is refused
/// by `app::register_version` itself, and nothing is written.
async fn a_registration_enters_only_none_or_staging_by_any_way_in(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client_as("alice").await;
    create_model_with(&mut c, "direct", pb::Policy::default())
        .await
        .expect("create model");
    let store = Store::open(&db.url, &StoreOptions::default())
        .await
        .expect("open the store");

    for target in [domain::Stage::Production, domain::Stage::Archived] {
        // Act
        let new = domain::NewVersion {
            model: domain::Name::parse("model", "direct").unwrap(),
            artifact_uri: "s3://models/direct/artifact".into(),
            artifact_digest: String::new(),
            source: Default::default(),
            training_metrics: Default::default(),
            tags: Default::default(),
            description: String::new(),
            request_id: None,
            target_stage: target,
        };
        let err = app::register_version(&store, new, domain::Actor("alice".into()))
            .await
            .expect_err("a registration into a later stage is refused");

        // Assert
        assert!(
            matches!(&err, Error::InvalidArgument(v) if v[0].field == "target_stage"),
            "{target}: {err:?}"
        );
    }
    let model = get_model(&mut c, "direct").await;
    assert_eq!(model.latest_version, 0, "nothing was registered");
}
