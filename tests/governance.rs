//! Governance on both engines: policies, gates, the approval flow, rollback
//! and the audit trail. Callers are told apart by the actor header (local
//! mode); `tests/auth.rs` covers tokens and roles.

use modelreg_client::errors::violated_fields;
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    Engine, TestDb, all_events, assert_policies_refused, carried, conformance, create_model,
    create_model_with, evaluation, evaluation_set, get_model, holdout, last_event_of_type,
    precondition_violations, register, register_many, reviewers, spawn_app, stage_of, transition,
    transition_requests, update_policy,
};
use pb::{Stage, StageChangeCause as Cause, TransitionRequestStatus as Status};
use tonic::Code;

conformance!(
    policies_are_shown_validated_and_audited,
    reviewers_are_validated_shown_and_audited,
    the_governed_path_needs_a_second_person,
    gates_refuse_with_every_failing_check,
    gates_are_judged_again_at_approval,
    requests_are_rejected_cancelled_or_superseded,
    rollback_goes_back_one_good_version_at_a_time,
    rollback_can_require_approval,
    the_audit_chain_survives_a_long_history_and_catches_edits_and_deletions,
);

/// The standard set: `auc` (higher is better) and `latency_ms` (lower is better).
async fn create_holdout(c: &mut RegistryClient) {
    let metrics = [("auc", true), ("latency_ms", false)];
    c.create_evaluation_set(evaluation_set("holdout", "v1", &metrics))
        .await
        .expect("create holdout");
}

/// The policy of the governed tests: default approvals, gated on the
/// standard set (auc ≥ 0.8, auc may not regress by more than 0.01, latency
/// may not grow by more than 5 ms).
fn gated_policy() -> pb::Policy {
    pb::Policy {
        standard_evaluation_set: Some(holdout()),
        gates: Some(pb::MetricGateList {
            gates: vec![
                pb::MetricGate {
                    metric: "auc".into(),
                    min_value: Some(0.8),
                    max_regression: Some(0.01),
                    ..Default::default()
                },
                pb::MetricGate {
                    metric: "latency_ms".into(),
                    max_regression: Some(5.0),
                    ..Default::default()
                },
            ],
        }),
        ..Default::default()
    }
}

async fn create_governed(c: &mut RegistryClient, name: &str, policy: pb::Policy) -> pb::Model {
    create_model_with(c, name, policy)
        .await
        .expect("create governed model")
}

async fn evaluate(c: &mut RegistryClient, model: &str, version: i64, auc: f64, latency: f64) {
    let metrics = [("auc", auc), ("latency_ms", latency)];
    c.attach_evaluation(evaluation(model, version, &metrics))
        .await
        .expect("attach evaluation");
}

/// Asks for a move; returns the whole response.
async fn ask(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
    to: Stage,
) -> Result<pb::TransitionStageResponse, tonic::Status> {
    c.transition_stage(pb::TransitionStageRequest {
        model: model.into(),
        version,
        target_stage: to as i32,
        comment: format!("please move {version} to {}", to.as_str_name()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

async fn request(c: &mut RegistryClient, model: &str, version: i64) -> pb::TransitionRequest {
    let r = ask(c, model, version, Stage::Production)
        .await
        .expect("request production");
    assert!(r.version.is_none(), "a governed move waits: {r:?}");
    let req = r.request.expect("a pending request");
    assert_eq!(req.status, Status::Pending as i32);
    req
}

async fn approve(
    c: &mut RegistryClient,
    id: &str,
) -> Result<pb::ApproveTransitionResponse, tonic::Status> {
    c.approve_transition(pb::ApproveTransitionRequest {
        request_id: id.into(),
        comment: "looks good".into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// `(type, subject, description)` of each precondition violation.
fn preconditions(status: &tonic::Status) -> Vec<(String, String, String)> {
    precondition_violations(status)
        .into_iter()
        .map(|v| (v.r#type, v.subject, v.description))
        .collect()
}

/// An event's details as JSON.
fn details(e: &pb::RegistryEvent) -> serde_json::Value {
    modelreg_client::json::to_json(e, "modelreg.v1.RegistryEvent")["details"].clone()
}

async fn count_events(c: &mut RegistryClient) -> usize {
    all_events(c).await.len()
}

/// Each policy of `bad` is refused with violations on its fields, and the
/// log still holds `before` events.
async fn refused_changing_nothing(
    c: &mut RegistryClient,
    bad: Vec<(pb::Policy, Vec<&str>)>,
    before: usize,
) {
    assert_policies_refused(c, "plain", bad).await;
    assert_eq!(count_events(c).await, before, "refusals change nothing");
}

/// GetModel shows the policy with its defaults filled in; an admin's change
/// is one MODEL_UPDATED event with before and after; bad policies are
/// refused field by field and change nothing.
async fn policies_are_shown_validated_and_audited(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client_as("root").await;
    create_holdout(&mut c).await;
    let unset = pb::CreateModelRequest {
        name: "plain".into(),
        ..Default::default()
    };
    let plain = carried(c.create_model(unset).await, |r| r.model).unwrap();
    let p = plain.policy.expect("policy shown");
    assert_eq!(
        p.approval_required_for.unwrap().stages,
        vec![Stage::Production as i32]
    );
    assert_eq!(p.min_approvals, Some(1));
    assert_eq!(p.allow_self_approval, Some(false));
    assert_eq!(p.rollback_requires_approval, Some(false));
    assert!(p.standard_evaluation_set.is_none());

    let before = count_events(&mut c).await;
    let bad = vec![
        (
            pb::Policy {
                gates: gated_policy().gates,
                ..Default::default()
            },
            vec!["policy.gates.gates[0]", "policy.gates.gates[1]"],
        ),
        (
            pb::Policy {
                standard_evaluation_set: Some(holdout()),
                gates: Some(pb::MetricGateList {
                    gates: vec![
                        pb::MetricGate {
                            metric: "f1".into(),
                            min_value: Some(0.5),
                            ..Default::default()
                        },
                        pb::MetricGate {
                            metric: "auc".into(),
                            max_regression: Some(-0.1),
                            ..Default::default()
                        },
                        pb::MetricGate {
                            metric: "auc".into(),
                            ..Default::default()
                        },
                        pb::MetricGate {
                            metric: "auc".into(),
                            min_value: Some(f64::NAN),
                            ..Default::default()
                        },
                    ],
                }),
                ..Default::default()
            },
            vec![
                "policy.gates.gates[1].max_regression",
                "policy.gates.gates[2]",
                "policy.gates.gates[3].min_value",
            ],
        ),
        (
            pb::Policy {
                standard_evaluation_set: Some(holdout()),
                gates: Some(pb::MetricGateList {
                    gates: vec![pb::MetricGate {
                        metric: "f1".into(),
                        min_value: Some(0.5),
                        ..Default::default()
                    }],
                }),
                ..Default::default()
            },
            vec!["policy.gates.gates[0].metric"],
        ),
        (
            pb::Policy {
                min_approvals: Some(0),
                approval_required_for: Some(pb::StageList {
                    stages: vec![Stage::Unspecified as i32, 3, 3],
                }),
                ..Default::default()
            },
            vec![
                "policy.approval_required_for.stages[0]",
                "policy.approval_required_for.stages[2]",
                "policy.min_approvals",
            ],
        ),
        (
            pb::Policy {
                standard_evaluation_set: Some(pb::EvaluationSetRef {
                    name: "nope".into(),
                    version: "v9".into(),
                }),
                ..Default::default()
            },
            vec!["policy.standard_evaluation_set"],
        ),
        (
            pb::Policy {
                archival: Some(pb::ArchivalPolicy {
                    archive_superseded_after_days: Some(-3),
                    live_metric: None,
                }),
                ..Default::default()
            },
            vec!["policy.archival.archive_superseded_after_days"],
        ),
    ];
    refused_changing_nothing(&mut c, bad, before).await;

    let updated = update_policy(&mut c, "plain", gated_policy(), &plain.etag)
        .await
        .unwrap();
    let p = updated.policy.unwrap();
    assert_eq!(p.standard_evaluation_set, Some(holdout()));
    assert_eq!(p.gates.unwrap().gates.len(), 2);
    assert_ne!(updated.etag, plain.etag);
    let events = all_events(&mut c).await;
    let last = events.last().unwrap();
    assert_eq!(last.r#type, pb::EventType::ModelUpdated as i32);
    assert_eq!(last.actor, "root");
    let details = details(last);
    assert_eq!(
        details["before"]["policy"]["standard_evaluation_set"],
        serde_json::Value::Null
    );
    assert_eq!(
        details["after"]["policy"]["standard_evaluation_set"]["name"],
        "holdout"
    );
    // The same policy again changes nothing: no event, same etag.
    let again = update_policy(&mut c, "plain", gated_policy(), "")
        .await
        .unwrap();
    assert_eq!(again.etag, updated.etag);
    assert_eq!(all_events(&mut c).await.len(), events.len());
}

fn with_reviewers(list: &[(&str, &str)]) -> pb::Policy {
    pb::Policy {
        reviewers: reviewers(list),
        ..Default::default()
    }
}

/// A policy's reviewers: none by default; bad addresses, bad identities,
/// an address listed twice (in any case) and too many reviewers are
/// INVALID_ARGUMENT with a violation per field, on create and update alike,
/// and store nothing; valid ones are kept in order, shown, and audited.
async fn reviewers_are_validated_shown_and_audited(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client_as("root").await;
    let plain = create_model(&mut c, "plain").await;
    let shown = plain.policy.unwrap().reviewers;
    assert_eq!(shown, Some(pb::ReviewerList::default()), "none by default");

    let before = count_events(&mut c).await;
    let many: Vec<String> = (0..65).map(|i| format!("r{i}@example.com")).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|e| (e.as_str(), "")).collect();
    let bad = vec![
        (
            with_reviewers(&[
                ("ana@example.com", "ana"),
                ("not-an-address", ""),
                ("ANA@example.com", "bell\u{7}"),
                ("Ana <ana@example.com>", ""),
                ("root@[127.0.0.1]", ""),
            ]),
            vec![
                "policy.reviewers[1].email",
                "policy.reviewers[2].email",
                "policy.reviewers[2].identity",
                "policy.reviewers[3].email",
                "policy.reviewers[4].email",
            ],
        ),
        (with_reviewers(&many), vec!["policy.reviewers"]),
    ];
    refused_changing_nothing(&mut c, bad, before).await;

    let set = with_reviewers(&[("ana@example.com", "ana"), ("risk-team@example.com", "")]);
    let updated = update_policy(&mut c, "plain", set.clone(), &plain.etag)
        .await
        .unwrap();
    assert_eq!(updated.policy.unwrap().reviewers, set.reviewers);
    let got = get_model(&mut c, "plain").await;
    assert_eq!(got.policy.unwrap().reviewers, set.reviewers, "stored");
    let events = all_events(&mut c).await;
    let details = details(events.last().unwrap());
    assert_eq!(
        details["after"]["policy"]["reviewers"][0],
        serde_json::json!({"email": "ana@example.com", "identity": "ana"})
    );
    assert_eq!(
        details["before"]["policy"]["reviewers"],
        serde_json::json!([])
    );
}

/// The publisher asks, cannot approve their own request, a second person
/// approves: the version enters production with cause APPROVAL, the old
/// production version is archived as SUPERSEDED in the same commit, and every
/// event names who did it.
async fn the_governed_path_needs_a_second_person(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut root = app.client_as("root").await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut root).await;
    create_governed(&mut root, "fraud", gated_policy()).await;

    for (v, auc) in [(1, 0.90), (2, 0.905)] {
        register(&mut alice, "fraud", Stage::Staging).await;
        evaluate(&mut root, "fraud", v, auc, 40.0).await;
    }
    let r1 = request(&mut alice, "fraud", 1).await;
    assert_eq!(r1.id, "fraud:1");
    assert_eq!(r1.requester, "alice");
    assert!(r1.gate_results.iter().all(|g| g.passed), "{r1:?}");
    assert_eq!(r1.gate_results.len(), 3);
    assert_eq!(
        stage_of(&mut alice, "fraud", 1).await,
        Stage::Staging as i32
    );

    // Asking again returns the same open request.
    let again = request(&mut alice, "fraud", 1).await;
    assert_eq!(again.id, r1.id);
    assert_eq!(
        transition_requests(&mut root, "fraud", Status::Pending)
            .await
            .len(),
        1
    );

    let before = count_events(&mut root).await;
    let s = approve(&mut alice, &r1.id).await.unwrap_err();
    let v = preconditions(&s);
    assert_eq!(v[0].0, "SELF_APPROVAL", "{v:?}");
    assert_eq!(
        count_events(&mut root).await,
        before,
        "a refusal changes nothing"
    );

    let done = approve(&mut bob, &r1.id).await.unwrap();
    let req = done.request.unwrap();
    assert_eq!(req.status, Status::Approved as i32);
    assert_eq!(req.resolved_by, "bob");
    assert_eq!(req.approvals.len(), 1);
    assert_eq!(req.approvals[0].approver, "bob");
    assert_eq!(done.version.unwrap().stage, Stage::Production as i32);

    // Version 2 supersedes version 1 through the same path.
    let r2 = request(&mut alice, "fraud", 2).await;
    assert_eq!(r2.id, "fraud:2");
    // The request carries the comparison with production for the approver.
    let asked = last_event_of_type(&mut root, pb::EventType::TransitionRequested).await;
    assert_eq!(asked.actor, "alice");
    assert_eq!(asked.transition_request_id, "fraud:2");
    let d = details(&asked);
    assert_eq!(d["requester"], "alice");
    assert_eq!(d["to_stage"], "PRODUCTION");
    assert_eq!(d["artifact_uri"], "s3://models/fraud/artifact");
    assert_eq!(d["comparison"]["baseline_version"], 1.0);
    assert_eq!(d["metrics"]["holdout@v1 by eval-1"]["auc"], 0.905);
    assert_eq!(d["gate_results"].as_array().unwrap().len(), 3);
    assert_eq!(d["gates_passed"], true);

    approve(&mut bob, &r2.id).await.unwrap();
    assert_eq!(
        stage_of(&mut bob, "fraud", 2).await,
        Stage::Production as i32
    );
    assert_eq!(stage_of(&mut bob, "fraud", 1).await, Stage::Archived as i32);

    let events = all_events(&mut root).await;
    let tail: Vec<_> = events.iter().rev().take(3).rev().collect();
    assert_eq!(tail[0].r#type, pb::EventType::TransitionApproved as i32);
    assert_eq!(tail[0].actor, "bob");
    assert_eq!(tail[1].r#type, pb::EventType::StageChanged as i32);
    assert_eq!(
        (tail[1].version, tail[1].cause),
        (1, Cause::Superseded as i32)
    );
    assert_eq!(tail[2].r#type, pb::EventType::StageChanged as i32);
    assert_eq!(
        (tail[2].version, tail[2].cause),
        (2, Cause::Approval as i32)
    );
    assert_eq!(tail[2].actor, "bob");
    assert_eq!(tail[2].transition_request_id, "fraud:2");
    assert_eq!(tail[1].occur_time, tail[2].occur_time, "one commit");
    assert_eq!(
        transition_requests(&mut root, "fraud", Status::Approved)
            .await
            .len(),
        2
    );

    // Two approvers: the first approval records, the second applies.
    let mut two = gated_policy();
    two.min_approvals = Some(2);
    create_governed(&mut root, "twice", two).await;
    register(&mut alice, "twice", Stage::Staging).await;
    evaluate(&mut root, "twice", 1, 0.9, 10.0).await;
    let r = request(&mut alice, "twice", 1).await;
    let first = approve(&mut bob, &r.id).await.unwrap();
    assert_eq!(first.request.unwrap().status, Status::Pending as i32);
    assert_eq!(first.version.unwrap().stage, Stage::Staging as i32);
    let s = approve(&mut bob, &r.id).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "DUPLICATE_APPROVAL");
    let mut carol = app.client_as("carol").await;
    let second = approve(&mut carol, &r.id).await.unwrap();
    let req = second.request.unwrap();
    assert_eq!(req.status, Status::Approved as i32);
    assert_eq!(req.approvals.len(), 2);
    assert_eq!(second.version.unwrap().stage, Stage::Production as i32);
    // A closed request cannot be approved again.
    let s = approve(&mut root, &r.id).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "REQUEST_CLOSED");
}

/// A failing absolute bound, a regression against production, a missing
/// evaluation: each refused with its reason, all failing checks listed,
/// and no request created.
async fn gates_refuse_with_every_failing_check(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut c).await;
    create_governed(&mut c, "fraud", gated_policy()).await;
    for _ in 0..4 {
        register(&mut c, "fraud", Stage::Staging).await;
    }
    evaluate(&mut c, "fraud", 1, 0.90, 40.0).await;
    let r = request(&mut c, "fraud", 1).await;
    approve(&mut bob, &r.id).await.unwrap();

    let before = count_events(&mut c).await;
    // Version 2: below the absolute bound and a large regression; latency fine.
    evaluate(&mut c, "fraud", 2, 0.70, 41.0).await;
    let s = ask(&mut c, "fraud", 2, Stage::Production)
        .await
        .unwrap_err();
    let v = preconditions(&s);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(
        v.iter()
            .all(|(k, subject, _)| k == "GATE_FAILED" && subject == "fraud/2")
    );
    assert!(v[0].2.contains("auc >= 0.8"), "{v:?}");
    assert!(v[1].2.contains("auc regression"), "{v:?}");

    // Version 3: above the bound but regresses auc by 0.05 and latency by 9 ms.
    evaluate(&mut c, "fraud", 3, 0.85, 49.0).await;
    let s = ask(&mut c, "fraud", 3, Stage::Production)
        .await
        .unwrap_err();
    let v = preconditions(&s);
    assert_eq!(v.len(), 2, "{v:?}");
    assert!(v[0].2.contains("auc regression"), "{v:?}");
    assert!(v[1].2.contains("latency_ms regression"), "{v:?}");

    // Version 4: no evaluation at all.
    let s = ask(&mut c, "fraud", 4, Stage::Production)
        .await
        .unwrap_err();
    let v = preconditions(&s);
    assert_eq!(v.len(), 3, "{v:?}");
    assert!(
        v.iter()
            .all(|(_, _, d)| d.contains("no evaluation on holdout@v1"))
    );

    assert_eq!(
        count_events(&mut c).await,
        before + 2,
        "only the two evaluations"
    );
    assert_eq!(
        transition_requests(&mut c, "fraud", Status::Unspecified)
            .await
            .len(),
        1
    );
    for v in 2..=4 {
        assert_eq!(stage_of(&mut c, "fraud", v).await, Stage::Staging as i32);
    }

    // An ungoverned model's direct promotion is gated too.
    let mut direct = gated_policy();
    direct.approval_required_for = Some(pb::StageList { stages: vec![] });
    create_governed(&mut c, "direct", direct).await;
    register(&mut c, "direct", Stage::Staging).await;
    let s = ask(&mut c, "direct", 1, Stage::Production)
        .await
        .unwrap_err();
    assert_eq!(preconditions(&s).len(), 3);
    evaluate(&mut c, "direct", 1, 0.9, 1.0).await;
    let applied = ask(&mut c, "direct", 1, Stage::Production).await.unwrap();
    assert_eq!(applied.version.unwrap().stage, Stage::Production as i32);

    // CompareVersions now defaults to the standard set.
    let cmp = c
        .compare_versions(pb::CompareVersionsRequest {
            model: "fraud".into(),
            candidate_version: 3,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .comparison
        .unwrap();
    assert_eq!(cmp.evaluation_set, Some(holdout()));
    assert_eq!(cmp.baseline_version, 1);
}

/// A request whose gates pass when asked but fail when approved (production
/// improved meanwhile) is refused at approval and stays pending.
async fn gates_are_judged_again_at_approval(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut alice).await;
    create_governed(&mut alice, "fraud", gated_policy()).await;
    for (v, auc) in [(1, 0.90), (2, 0.91), (3, 0.95)] {
        register(&mut alice, "fraud", Stage::Staging).await;
        evaluate(&mut alice, "fraud", v, auc, 40.0).await;
    }
    let r1 = request(&mut alice, "fraud", 1).await;
    approve(&mut bob, &r1.id).await.unwrap();
    let r2 = request(&mut alice, "fraud", 2).await;
    assert!(r2.gate_results.iter().all(|g| g.passed));
    let r3 = request(&mut alice, "fraud", 3).await;
    approve(&mut bob, &r3.id).await.unwrap();

    let before = count_events(&mut alice).await;
    let s = approve(&mut bob, &r2.id).await.unwrap_err();
    let v = preconditions(&s);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].2.contains("production version 3"), "{v:?}");
    assert_eq!(count_events(&mut alice).await, before);
    let pending = transition_requests(&mut alice, "fraud", Status::Pending).await;
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].id, r2.id);
    assert!(pending[0].approvals.is_empty());
    assert_eq!(
        stage_of(&mut alice, "fraud", 2).await,
        Stage::Staging as i32
    );
}

/// Reject needs a comment; cancel closes; a pending request whose version
/// moves elsewhere is SUPERSEDED; each step is an event.
async fn requests_are_rejected_cancelled_or_superseded(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_governed(&mut alice, "m", pb::Policy::default()).await;
    register_many(&mut alice, "m", 3, Stage::Staging).await;
    let r1 = request(&mut alice, "m", 1).await;
    let s = bob
        .reject_transition(pb::RejectTransitionRequest {
            request_id: r1.id.clone(),
            comment: " ".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&s), vec!["comment"]);
    let rejected = bob
        .reject_transition(pb::RejectTransitionRequest {
            request_id: r1.id.clone(),
            comment: "latency is too high".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let req = rejected.request.unwrap();
    assert_eq!(req.status, Status::Rejected as i32);
    assert_eq!(req.resolved_by, "bob");
    assert_eq!(req.resolution_comment, "latency is too high");
    assert_eq!(rejected.version.unwrap().stage, Stage::Staging as i32);

    let r2 = request(&mut alice, "m", 2).await;
    let cancelled = alice
        .cancel_transition(pb::CancelTransitionRequest {
            request_id: r2.id.clone(),
            comment: "wrong version".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cancelled.request.unwrap().status, Status::Cancelled as i32);

    // Version 3 is requested, then archived directly (no approval needed):
    // its request is superseded in the same commit.
    let r3 = request(&mut alice, "m", 3).await;
    transition(&mut alice, "m", 3, Stage::Archived)
        .await
        .unwrap();
    let closed = transition_requests(&mut alice, "m", Status::Superseded).await;
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].id, r3.id);
    let s = approve(&mut bob, &r3.id).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "REQUEST_CLOSED");

    let kinds: Vec<i32> = all_events(&mut alice)
        .await
        .iter()
        .filter(|e| !e.transition_request_id.is_empty())
        .map(|e| e.r#type)
        .collect();
    use pb::EventType as E;
    assert_eq!(
        kinds,
        vec![
            E::TransitionRequested as i32,
            E::TransitionRejected as i32,
            E::TransitionRequested as i32,
            E::TransitionCancelled as i32,
            E::TransitionRequested as i32,
            E::TransitionSuperseded as i32,
        ]
    );
    assert_eq!(
        transition_requests(&mut alice, "m", Status::Unspecified)
            .await
            .len(),
        3
    );
    // Bad ids and unknown requests.
    let s = approve(&mut bob, "m-3").await.unwrap_err();
    assert_eq!(violated_fields(&s), vec!["request_id"]);
    let s = approve(&mut bob, "m:99").await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
}

/// Rolls `model` back to `version` (0: the previous good one) because the
/// error rate went up.
async fn rollback(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
) -> Result<pb::RollbackResponse, tonic::Status> {
    rollback_because(c, model, version, "error rate up").await
}

/// Rolls `model` back to `version` giving `reason`.
async fn rollback_because(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
    reason: &str,
) -> Result<pb::RollbackResponse, tonic::Status> {
    c.rollback(pb::RollbackRequest {
        model: model.into(),
        version,
        reason: reason.into(),
    })
    .await
    .map(|r| r.into_inner())
}

/// Rollback returns the previous good production version, archiving the
/// current one, both with cause ROLLBACK in one commit; twice in a row goes
/// two versions back; then there is nothing left to return to.
async fn rollback_goes_back_one_good_version_at_a_time(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client_as("oncall").await;
    create_model(&mut c, "m").await;
    for v in 1..=4 {
        register(&mut c, "m", Stage::Staging).await;
        if v < 4 {
            transition(&mut c, "m", v, Stage::Production).await.unwrap();
        }
    }
    // 1 → 2 → 3 were in production; 4 never was.
    let s = rollback(&mut c, "m", 4).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "ROLLBACK_TARGET");
    let s = rollback_because(&mut c, "m", 0, "").await.unwrap_err();
    assert_eq!(violated_fields(&s), vec!["reason"]);

    let back = rollback(&mut c, "m", 0).await.unwrap();
    assert_eq!(back.version.unwrap().version, 2);
    assert_eq!(stage_of(&mut c, "m", 2).await, Stage::Production as i32);
    assert_eq!(stage_of(&mut c, "m", 3).await, Stage::Archived as i32);
    let events = all_events(&mut c).await;
    let (a, b) = (&events[events.len() - 2], &events[events.len() - 1]);
    assert_eq!((a.version, a.to_stage), (3, Stage::Archived as i32));
    assert_eq!((b.version, b.to_stage), (2, Stage::Production as i32));
    for e in [a, b] {
        assert_eq!(e.r#type, pb::EventType::StageChanged as i32);
        assert_eq!(e.cause, Cause::Rollback as i32);
        assert_eq!(e.actor, "oncall");
        assert_eq!(e.comment, "error rate up");
    }
    assert_eq!(a.occur_time, b.occur_time, "one commit");

    let back = rollback(&mut c, "m", 0).await.unwrap();
    assert_eq!(back.version.unwrap().version, 1);
    assert_eq!(stage_of(&mut c, "m", 2).await, Stage::Archived as i32);
    let s = rollback(&mut c, "m", 0).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "NO_ROLLBACK_TARGET");
    // Naming a version that was in production still works.
    let named = rollback(&mut c, "m", 3).await.unwrap();
    assert_eq!(named.version.unwrap().version, 3);
    assert_eq!(stage_of(&mut c, "m", 1).await, Stage::Archived as i32);

    let s = rollback(&mut c, "nobody", 0).await.unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    create_model(&mut c, "fresh").await;
    let s = rollback(&mut c, "fresh", 0).await.unwrap_err();
    assert_eq!(preconditions(&s)[0].0, "NO_PRODUCTION_VERSION");
}

/// With `rollback_requires_approval`, Rollback opens a request; approving
/// it applies the rollback (cause ROLLBACK) without gates.
async fn rollback_can_require_approval(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    let policy = pb::Policy {
        approval_required_for: Some(pb::StageList { stages: vec![] }),
        rollback_requires_approval: Some(true),
        ..Default::default()
    };
    create_governed(&mut alice, "m", policy).await;
    for v in 1..=2 {
        register(&mut alice, "m", Stage::Staging).await;
        transition(&mut alice, "m", v, Stage::Production)
            .await
            .unwrap();
    }
    let asked = rollback(&mut alice, "m", 0).await.unwrap();
    assert!(asked.version.is_none());
    let req = asked.request.unwrap();
    assert!(req.rollback);
    assert_eq!((req.version, req.to_stage), (1, Stage::Production as i32));
    assert_eq!(req.comment, "error rate up");
    assert_eq!(stage_of(&mut alice, "m", 2).await, Stage::Production as i32);

    let done = approve(&mut bob, &req.id).await.unwrap();
    assert_eq!(done.version.unwrap().stage, Stage::Production as i32);
    assert_eq!(stage_of(&mut alice, "m", 2).await, Stage::Archived as i32);
    let events = all_events(&mut alice).await;
    let last = &events[events.len() - 1];
    assert_eq!(last.cause, Cause::Rollback as i32);
    assert_eq!(last.actor, "bob");
    assert_eq!(last.transition_request_id, req.id);
}

/// VerifyAuditLog is green over a long history of every kind of event, and
/// red at the right sequence after an event row is edited, or deleted,
/// directly in the database.
async fn the_audit_chain_survives_a_long_history_and_catches_edits_and_deletions(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_holdout(&mut alice).await;
    create_governed(&mut alice, "m", gated_policy()).await;
    for v in 1..=40 {
        register(&mut alice, "m", Stage::Staging).await;
        evaluate(&mut alice, "m", v, 0.9 + v as f64 * 0.001, 40.0).await;
        let r = request(&mut alice, "m", v).await;
        approve(&mut bob, &r.id).await.unwrap();
        if v % 10 == 0 {
            rollback(&mut bob, "m", 0).await.unwrap();
        }
    }
    let verify_with = |mut c: RegistryClient, anchors: Vec<pb::AuditAnchor>| async move {
        c.verify_audit_log(pb::VerifyAuditLogRequest { anchors })
            .await
            .map(|r| r.into_inner())
    };
    let verify = |c: RegistryClient| async move { verify_with(c, Vec::new()).await.unwrap() };
    let events = all_events(&mut alice).await;
    let total = events.len() as u64;
    let original_actor = events[119].actor.clone();
    assert!(total > 250, "{total}");
    let ok = verify(alice.clone()).await;
    assert!(
        ok.ok,
        "{ok:?}: {:?}",
        events.get(ok.first_bad_sequence as usize - 1)
    );
    assert_eq!(ok.events_checked, total);
    let head = ok.head.clone().expect("the head to record");
    assert_eq!(head.sequence, total);
    assert_eq!(head.hash, events.last().unwrap().hash);
    let db = app.stop().await;

    let drop_triggers: &[&str] = match db.engine {
        Engine::Sqlite => &[
            "DROP TRIGGER events_are_append_only_update",
            "DROP TRIGGER events_are_append_only_delete",
        ],
        Engine::Postgres => &[
            "DROP TRIGGER events_are_append_only_update ON events",
            "DROP TRIGGER events_are_append_only_delete ON events",
        ],
    };
    for sql in drop_triggers {
        db.execute(sql).await.unwrap();
    }
    // Who approved version 17? Someone rewrites it.
    db.execute("UPDATE events SET actor = 'mallory' WHERE sequence = 120")
        .await
        .unwrap();
    let app = spawn_app(&db).await;
    let report = verify(app.client.clone()).await;
    assert!(!report.ok);
    assert_eq!(report.first_bad_sequence, 120);
    let db = app.stop().await;

    // Put it back, then delete a row instead.
    let fix = format!("UPDATE events SET actor = '{original_actor}' WHERE sequence = 120");
    db.execute(&fix).await.unwrap();
    let app = spawn_app(&db).await;
    assert!(verify(app.client.clone()).await.ok);
    let db = app.stop().await;

    // Cut the last three events: the chain alone still holds; the head
    // recorded before, passed back as an anchor, does not.
    let cut = format!("DELETE FROM events WHERE sequence > {}", total - 3);
    db.execute(&cut).await.unwrap();
    let app = spawn_app(&db).await;
    let chain_only = verify(app.client.clone()).await;
    assert!(chain_only.ok, "{chain_only:?}");
    assert_eq!(chain_only.head.as_ref().unwrap().sequence, total - 3);
    let anchored = verify_with(app.client.clone(), vec![head.clone()])
        .await
        .unwrap();
    assert!(!anchored.ok);
    assert_eq!(anchored.first_bad_sequence, total);
    assert!(
        anchored.problem.contains("cut from its end"),
        "{}",
        anchored.problem
    );
    // An anchor whose hash no longer matches means a rewrite up to it.
    let wrong = pb::AuditAnchor {
        sequence: 10,
        hash: "0".repeat(64),
    };
    let report = verify_with(app.client.clone(), vec![wrong]).await.unwrap();
    assert!(!report.ok);
    assert_eq!(report.first_bad_sequence, 10);
    assert!(!report.problem.is_empty());
    let still = pb::AuditAnchor {
        sequence: 10,
        hash: events[9].hash.clone(),
    };
    assert!(
        verify_with(app.client.clone(), vec![still])
            .await
            .unwrap()
            .ok
    );
    // Malformed anchors are refused, naming the field.
    let bad = pb::AuditAnchor {
        sequence: 0,
        hash: "XYZ".into(),
    };
    let refused = verify_with(app.client.clone(), vec![bad])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(
        refused.message().contains("anchors[0]"),
        "{}",
        refused.message()
    );
    let db = app.stop().await;

    db.execute("DELETE FROM events WHERE sequence = 200")
        .await
        .unwrap();
    let app = spawn_app(&db).await;
    let report = verify(app.client.clone()).await;
    assert!(!report.ok);
    assert_eq!(report.first_bad_sequence, 200);
}
