//! Standard evaluation sets, attached evaluations, comparisons and metric
//! history, on both engines.

use std::collections::HashMap;

use modelreg_client::errors::violated_fields;
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    TestDb, all_events, all_pages, carried, conformance, create_model, events_of_type, get_version,
    precondition_violations, register, register_many, spawn_app, transition,
};
use tonic::Code;

conformance!(
    evaluation_sets_are_immutable_and_idempotent,
    evaluation_sets_are_validated,
    evaluations_are_validated_immutable_and_shown_on_versions,
    comparisons_are_direction_aware_and_default_to_production,
    incomparable_versions_are_refused_with_every_reason,
    metric_history_is_ordered_by_version,
);

const DIGEST: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn holdout(version: &str) -> pb::CreateEvaluationSetRequest {
    pb::CreateEvaluationSetRequest {
        name: "holdout".into(),
        version: version.into(),
        uri: format!("s3://datasets/holdout/{version}"),
        digest: DIGEST.into(),
        metrics: vec![
            pb::MetricDefinition {
                name: "accuracy".into(),
                higher_is_better: true,
            },
            pb::MetricDefinition {
                name: "latency_ms".into(),
                higher_is_better: false,
            },
        ],
        description: "held-out transactions".into(),
    }
}

fn set_ref(version: &str) -> Option<pb::EvaluationSetRef> {
    Some(pb::EvaluationSetRef {
        name: "holdout".into(),
        version: version.into(),
    })
}

fn attach_req(
    version: i64,
    set: &str,
    evaluator: &str,
    acc: f64,
    lat: f64,
) -> pb::AttachEvaluationRequest {
    pb::AttachEvaluationRequest {
        model: "fraud".into(),
        version,
        evaluation_set: set_ref(set),
        evaluator_version: evaluator.into(),
        metrics: HashMap::from([
            ("accuracy".to_string(), acc),
            ("latency_ms".to_string(), lat),
        ]),
        report_uri: String::new(),
        request_id: String::new(),
    }
}

/// The model `fraud` with `count` versions in `stage`, and the holdout set
/// in each of the versions `sets`.
async fn arrange_fraud(c: &mut RegistryClient, sets: &[&str], count: usize, stage: pb::Stage) {
    create_model(c, "fraud").await;
    for set in sets {
        c.create_evaluation_set(holdout(set)).await.unwrap();
    }
    register_many(c, "fraud", count, stage).await;
}

async fn attach(
    c: &mut RegistryClient,
    version: i64,
    set: &str,
    evaluator: &str,
    acc: f64,
    lat: f64,
) {
    c.attach_evaluation(attach_req(version, set, evaluator, acc, lat))
        .await
        .expect("attach");
}

fn compare_req(candidate: i64, baseline: i64, set: Option<&str>) -> pb::CompareVersionsRequest {
    pb::CompareVersionsRequest {
        model: "fraud".into(),
        candidate_version: candidate,
        baseline_version: baseline,
        evaluation_set: set.and_then(set_ref),
        evaluator_version: String::new(),
    }
}

/// Whether every metric of `comparison` has the verdict `outcome`.
fn every_metric_is(comparison: &pb::VersionComparison, outcome: pb::Outcome) -> bool {
    comparison
        .metrics
        .iter()
        .all(|m| m.outcome == outcome as i32)
}

/// Compares `fraud` `candidate` with `baseline` (0: the production version)
/// on holdout@`set` (`None`: the model's standard set).
async fn compare(
    c: &mut RegistryClient,
    candidate: i64,
    baseline: i64,
    set: Option<&str>,
) -> Result<pb::VersionComparison, tonic::Status> {
    c.compare_versions(compare_req(candidate, baseline, set))
        .await
        .map(|r| r.into_inner().comparison.expect("comparison"))
}

/// Re-creating an identical set returns the original and writes no event;
/// a different set under the same name@version is ALREADY_EXISTS; Get and
/// List (with a name filter and pages) return what was created.
async fn evaluation_sets_are_immutable_and_idempotent(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    let first = carried(c.create_evaluation_set(holdout("v1")).await, |r| {
        r.evaluation_set
    })
    .unwrap();
    assert_eq!(first.created_by, "tester");
    let again = carried(c.create_evaluation_set(holdout("v1")).await, |r| {
        r.evaluation_set
    })
    .unwrap();
    assert_eq!(again, first);
    let created = events_of_type(c, pb::EventType::EvaluationSetCreated).await;
    assert_eq!(created.len(), 1);

    let mut different = holdout("v1");
    different.uri = "s3://datasets/other".into();
    let err = c.create_evaluation_set(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    let mut different = holdout("v1");
    different.metrics[1].higher_is_better = true;
    assert_eq!(
        c.create_evaluation_set(different).await.unwrap_err().code(),
        Code::AlreadyExists
    );

    c.create_evaluation_set(holdout("v2")).await.unwrap();
    c.create_evaluation_set(pb::CreateEvaluationSetRequest {
        name: "canary".into(),
        ..holdout("v1")
    })
    .await
    .unwrap();
    let get = |version: &str| pb::GetEvaluationSetRequest {
        name: "holdout".into(),
        version: version.into(),
    };
    let got = carried(c.get_evaluation_set(get("v1")).await, |r| r.evaluation_set).unwrap();
    assert_eq!(got, first);
    let err = c.get_evaluation_set(get("v9")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let one_a_page = pb::ListEvaluationSetsRequest {
        page_size: 1,
        ..Default::default()
    };
    let names = listed_sets(c, one_a_page).await;
    assert_eq!(names, ["canary@v1", "holdout@v1", "holdout@v2"]);
    let only_holdout = pb::ListEvaluationSetsRequest {
        name: "holdout".into(),
        ..Default::default()
    };
    assert_eq!(listed_sets(c, only_holdout).await.len(), 2);
}

/// `name@version` of every set `req` lists, through pages of its size.
async fn listed_sets(c: &mut RegistryClient, req: pb::ListEvaluationSetsRequest) -> Vec<String> {
    all_pages(|page_token| {
        let (mut c, mut req) = (c.clone(), req.clone());
        req.page_token = page_token;
        async move {
            let resp = c.list_evaluation_sets(req).await.unwrap().into_inner();
            let names = resp
                .evaluation_sets
                .iter()
                .map(|s| format!("{}@{}", s.name, s.version));
            (names.collect(), resp.next_page_token)
        }
    })
    .await
}

/// A set needs a valid name, version, URI, digest and at least one metric
/// with distinct names; each problem names its field and nothing is created.
async fn evaluation_sets_are_validated(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    let cases: Vec<(pb::CreateEvaluationSetRequest, &str)> = vec![
        (
            pb::CreateEvaluationSetRequest {
                metrics: vec![],
                ..holdout("v1")
            },
            "metrics",
        ),
        (
            pb::CreateEvaluationSetRequest {
                metrics: vec![
                    pb::MetricDefinition {
                        name: "auc".into(),
                        higher_is_better: true,
                    },
                    pb::MetricDefinition {
                        name: "auc".into(),
                        higher_is_better: true,
                    },
                ],
                ..holdout("v1")
            },
            "metrics[1].name",
        ),
        (
            pb::CreateEvaluationSetRequest {
                digest: String::new(),
                ..holdout("v1")
            },
            "digest",
        ),
        (
            pb::CreateEvaluationSetRequest {
                uri: String::new(),
                ..holdout("v1")
            },
            "uri",
        ),
        (
            pb::CreateEvaluationSetRequest {
                version: "v 1".into(),
                ..holdout("v1")
            },
            "version",
        ),
        (
            pb::CreateEvaluationSetRequest {
                name: "Holdout".into(),
                ..holdout("v1")
            },
            "name",
        ),
    ];
    for (req, field) in cases {
        let err = c.create_evaluation_set(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}");
        assert_eq!(violated_fields(&err), vec![field.to_string()]);
    }
    assert!(all_events(c).await.is_empty());
}

/// An evaluation must report exactly the set's metrics as finite numbers, on
/// an existing version and set; one result per (version, set version,
/// evaluator version): the same again is idempotent, a different one
/// ALREADY_EXISTS. It emits EVALUATION_ATTACHED and GetVersion shows it.
async fn evaluations_are_validated_immutable_and_shown_on_versions(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    create_model(c, "fraud").await;
    register(c, "fraud", pb::Stage::Staging).await;
    c.create_evaluation_set(holdout("v1")).await.unwrap();
    let before = all_events(c).await.len();

    let mut unknown = attach_req(1, "v1", "1.0", 0.9, 40.0);
    unknown.metrics.insert("f1".into(), 0.5);
    let err = c.attach_evaluation(unknown).await.unwrap_err();
    assert_eq!(
        (err.code(), violated_fields(&err)),
        (Code::InvalidArgument, vec!["metrics[f1]".to_string()])
    );
    let mut missing = attach_req(1, "v1", "1.0", 0.9, 40.0);
    missing.metrics.remove("latency_ms");
    let err = c.attach_evaluation(missing).await.unwrap_err();
    assert_eq!(
        (err.code(), violated_fields(&err)),
        (Code::InvalidArgument, vec!["metrics".to_string()])
    );
    let err = c
        .attach_evaluation(attach_req(1, "v1", "1.0", f64::NAN, 40.0))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["metrics[accuracy]".to_string()]);
    let err = c
        .attach_evaluation(attach_req(1, "v1", "", 0.9, 40.0))
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["evaluator_version".to_string()]);
    let err = c
        .attach_evaluation(attach_req(1, "v7", "1.0", 0.9, 40.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = c
        .attach_evaluation(attach_req(5, "v1", "1.0", 0.9, 40.0))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        all_events(c).await.len(),
        before,
        "refused attachments wrote events"
    );

    let mut req = attach_req(1, "v1", "1.0", 0.9, 40.0);
    req.request_id = "eval-run-17".into();
    let first = carried(c.attach_evaluation(req.clone()).await, |r| r.evaluation).unwrap();
    let retry = carried(c.attach_evaluation(req.clone()).await, |r| r.evaluation).unwrap();
    assert_eq!(retry, first);
    let same = attach_req(1, "v1", "1.0", 0.9, 40.0);
    assert_eq!(
        carried(c.attach_evaluation(same).await, |r| r.evaluation).unwrap(),
        first
    );
    let different = attach_req(1, "v1", "1.0", 0.95, 40.0);
    let err = c.attach_evaluation(different).await.unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
    c.attach_evaluation(attach_req(1, "v1", "1.1", 0.91, 41.0))
        .await
        .unwrap();

    let attached = events_of_type(c, pb::EventType::EvaluationAttached).await;
    assert_eq!(attached.len(), 2, "one event per distinct evaluation");
    assert_eq!(
        (attached[0].model.as_str(), attached[0].version),
        ("fraud", 1)
    );

    let v = get_version(c, "fraud", 1).await;
    let evaluators: Vec<&str> = v
        .evaluations
        .iter()
        .map(|e| e.evaluator_version.as_str())
        .collect();
    assert_eq!(evaluators, ["1.0", "1.1"]);
    assert_eq!(v.evaluations[0], first);
}

/// Per-metric values, deltas and verdicts honour each metric's direction
/// (lower latency is better), and the baseline defaults to the current
/// production version.
async fn comparisons_are_direction_aware_and_default_to_production(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    arrange_fraud(c, &["v1"], 3, pb::Stage::Staging).await;
    transition(c, "fraud", 1, pb::Stage::Production)
        .await
        .unwrap();
    attach(c, 1, "v1", "1.0", 0.90, 50.0).await;
    attach(c, 2, "v1", "1.0", 0.93, 40.0).await;
    attach(c, 3, "v1", "1.0", 0.88, 60.0).await;

    let better = compare(c, 2, 0, Some("v1")).await.unwrap();
    assert_eq!((better.candidate_version, better.baseline_version), (2, 1));
    assert_eq!(better.evaluator_version, "1.0");
    let by_name: HashMap<&str, &pb::MetricComparison> = better
        .metrics
        .iter()
        .map(|m| (m.metric.as_str(), m))
        .collect();
    assert_eq!(by_name["accuracy"].outcome, pb::Outcome::Better as i32);
    assert_eq!(
        by_name["latency_ms"].outcome,
        pb::Outcome::Better as i32,
        "lower latency is better"
    );
    assert!((by_name["latency_ms"].delta + 10.0).abs() < 1e-9);
    assert!((by_name["latency_ms"].relative_delta + 0.2).abs() < 1e-9);
    assert!(!by_name["latency_ms"].higher_is_better);

    let worse = compare(c, 3, 0, Some("v1")).await.unwrap();
    assert!(every_metric_is(&worse, pb::Outcome::Worse), "{worse:?}");

    let explicit = compare(c, 3, 2, Some("v1")).await.unwrap();
    assert_eq!(explicit.baseline_version, 2);
    let equal = compare(c, 2, 2, Some("v1")).await.unwrap();
    assert!(every_metric_is(&equal, pb::Outcome::Equal), "{equal:?}");

    // After promoting version 2, "production" means version 2.
    transition(c, "fraud", 2, pb::Stage::Production)
        .await
        .unwrap();
    let now = compare(c, 3, 0, Some("v1")).await.unwrap();
    assert_eq!(now.baseline_version, 2);
}

fn precondition_kinds(status: &tonic::Status) -> Vec<(String, String)> {
    precondition_violations(status)
        .into_iter()
        .map(|v| (v.r#type, v.subject))
        .collect()
}

/// Comparing `fraud` `candidate` with the production version on
/// holdout@`set` is refused for exactly the `expected` (type, subject)
/// preconditions, in that order.
async fn assert_incomparable(
    c: &mut RegistryClient,
    candidate: i64,
    set: Option<&str>,
    expected: &[(&str, &str)],
) {
    let err = compare(c, candidate, 0, set).await.unwrap_err();
    let expected: Vec<(String, String)> = expected
        .iter()
        .map(|(kind, subject)| (kind.to_string(), subject.to_string()))
        .collect();
    assert_eq!(precondition_kinds(&err), expected);
}

/// Every case where two versions are not comparable is FAILED_PRECONDITION
/// naming what is missing or mismatched: a side without an evaluation on the
/// set version (both named when both lack one), another set version,
/// different evaluator versions, no production version, no set.
async fn incomparable_versions_are_refused_with_every_reason(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    arrange_fraud(c, &["v1", "v2"], 4, pb::Stage::Staging).await;

    assert_incomparable(c, 2, Some("v1"), &[("NO_PRODUCTION_VERSION", "fraud")]).await;
    transition(c, "fraud", 1, pb::Stage::Production)
        .await
        .unwrap();

    let both_missing = [
        ("EVALUATION_MISSING", "fraud/2"),
        ("EVALUATION_MISSING", "fraud/1"),
    ];
    assert_incomparable(c, 2, Some("v1"), &both_missing).await;
    attach(c, 1, "v1", "1.0", 0.9, 50.0).await;
    assert_incomparable(c, 2, Some("v1"), &[("EVALUATION_MISSING", "fraud/2")]).await;

    // Scored on another version of the set: not comparable with v1 numbers.
    attach(c, 2, "v2", "1.0", 0.95, 45.0).await;
    assert_incomparable(c, 2, Some("v1"), &[("EVALUATION_MISSING", "fraud/2")]).await;
    assert_incomparable(c, 2, Some("v2"), &[("EVALUATION_MISSING", "fraud/1")]).await;

    // Same set version, different metric code.
    attach(c, 3, "v1", "2.0", 0.95, 45.0).await;
    assert_incomparable(c, 3, Some("v1"), &[("NOT_COMPARABLE", "fraud/3")]).await;
    let mut pinned = compare_req(3, 0, Some("v1"));
    pinned.evaluator_version = "1.0".into();
    let err = c.compare_versions(pinned).await.unwrap_err();
    assert_eq!(
        precondition_kinds(&err),
        [("EVALUATION_MISSING".into(), "fraud/3".into())]
    );

    assert_incomparable(c, 2, None, &[("NO_STANDARD_EVALUATION_SET", "fraud")]).await;
    for (candidate, set) in [(9, "v1"), (2, "v3")] {
        let err = compare(c, candidate, 0, Some(set)).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{candidate} on {set}");
    }
    let err = compare(c, 0, 0, Some("v1")).await.unwrap_err();
    assert_eq!(violated_fields(&err), vec!["candidate_version".to_string()]);
}

/// ListEvaluations returns a model's evaluations on one set oldest version
/// first whatever the order they were attached in, pages through them, and
/// narrows each to one metric on request.
async fn metric_history_is_ordered_by_version(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    arrange_fraud(c, &["v1", "v2"], 4, pb::Stage::None).await;
    attach(c, 3, "v1", "1.0", 0.93, 41.0).await;
    attach(c, 1, "v1", "1.0", 0.90, 50.0).await;
    attach(c, 4, "v2", "1.0", 0.99, 10.0).await;
    attach(c, 2, "v1", "1.0", 0.91, 45.0).await;

    let history = all_pages(|page_token| {
        let mut c = c.clone();
        async move {
            let resp = c
                .list_evaluations(pb::ListEvaluationsRequest {
                    model: "fraud".into(),
                    evaluation_set: set_ref("v1"),
                    metric: "accuracy".into(),
                    page_size: 2,
                    page_token,
                })
                .await
                .unwrap()
                .into_inner();
            (resp.evaluations, resp.next_page_token)
        }
    })
    .await;
    let points: Vec<(i64, f64)> = history
        .iter()
        .map(|e| (e.version, e.metrics["accuracy"]))
        .collect();
    assert_eq!(points, [(1, 0.90), (2, 0.91), (3, 0.93)]);
    assert!(
        history.iter().all(|e| e.metrics.len() == 1),
        "narrowed to one metric"
    );

    let all = c
        .list_evaluations(pb::ListEvaluationsRequest {
            model: "fraud".into(),
            evaluation_set: set_ref("v1"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .evaluations;
    assert!(all.iter().all(|e| e.metrics.len() == 2));

    let err = c
        .list_evaluations(pb::ListEvaluationsRequest {
            model: "fraud".into(),
            evaluation_set: set_ref("v1"),
            metric: "f1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["metric".to_string()]);
    let err = c
        .list_evaluations(pb::ListEvaluationsRequest {
            model: "fraud".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(violated_fields(&err), vec!["evaluation_set".to_string()]);
}
