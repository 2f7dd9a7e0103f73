//! Regression tests for the holes found when the registry was attacked as an
//! outsider would: each test is named after the defect it guards against and
//! failed before its fix. Together with `tests/hostile_input.rs` they are the
//! bad-input campaign (docs/RELIABILITY.md lists each class and its test).

use std::collections::HashMap;

use modelreg_client::errors::violated_fields;
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    DIGEST, TestDb, all_events, all_pages, auc_gated, carried, conformance, create_holdout,
    create_model, create_model_with, evaluate, register, spawn_app, stages, transition_requests,
    watch_after,
};
use pb::{Stage, TransitionRequestStatus as Status};
use tonic::Code;

conformance!(
    registering_into_a_stage_that_needs_approval_opens_a_request,
    compare_versions_reports_the_gates_it_judged,
    transition_requests_are_listed_newest_first,
    control_characters_are_refused_in_every_text_field,
    cursors_at_and_beyond_two_to_the_63_never_wrap,
    long_model_filters_are_refused_at_the_term_cap,
    only_http_links_are_accepted_as_pipeline_urls,
    request_ids_are_scoped_to_the_caller,
);

async fn pending_requests(c: &mut RegistryClient, model: &str) -> Vec<pb::TransitionRequest> {
    transition_requests(c, model, Status::Pending).await
}

/// Defect 1 (approval bypass on registration): with STAGING among the stages
/// that need approval, `RegisterVersion(target_stage=STAGING)` registers the
/// version in NONE and opens the same request TransitionStage would, instead
/// of putting it straight into STAGING.
async fn registering_into_a_stage_that_needs_approval_opens_a_request(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    let governed = pb::Policy {
        approval_required_for: stages(&[Stage::Staging, Stage::Production]),
        ..Default::default()
    };
    create_model_with(&mut c, "m", governed)
        .await
        .expect("create governed model");
    let before = all_events(&mut c).await.len();

    // Act
    let resp = c
        .register_version(pb::RegisterVersionRequest {
            model: "m".into(),
            artifact_uri: "s3://x/1".into(),
            target_stage: Stage::Staging as i32,
            request_id: "ci-run-1".into(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner();
    let retry = c
        .register_version(pb::RegisterVersionRequest {
            model: "m".into(),
            artifact_uri: "s3://x/1".into(),
            target_stage: Stage::Staging as i32,
            request_id: "ci-run-1".into(),
            ..Default::default()
        })
        .await
        .expect("retry register")
        .into_inner();

    // Assert
    let version = resp.version.expect("version");
    assert_eq!(
        version.stage,
        Stage::None as i32,
        "the version must wait in NONE for approval, not enter STAGING: {version:?}"
    );
    let pending = pending_requests(&mut c, "m").await;
    assert_eq!(pending.len(), 1, "one request is opened: {pending:?}");
    assert_eq!(pending[0].to_stage, Stage::Staging as i32);
    assert_eq!(pending[0].version, version.version);
    let request = resp.request.expect("the response names the opened request");
    assert_eq!(request.id, pending[0].id);
    assert_eq!(retry.version.map(|v| v.version), Some(version.version));
    assert_eq!(retry.request.map(|r| r.id), Some(request.id));
    let types: Vec<i32> = all_events(&mut c).await[before..]
        .iter()
        .map(|e| e.r#type)
        .collect();
    assert_eq!(
        types,
        vec![
            pb::EventType::VersionRegistered as i32,
            pb::EventType::TransitionRequested as i32
        ],
        "no STAGE_CHANGED event: the move waits"
    );
    // The same decision as TransitionStage for a registered NONE version.
    let v2 = register(&mut c, "m", Stage::None).await;
    let asked = c
        .transition_stage(pb::TransitionStageRequest {
            model: "m".into(),
            version: v2.version,
            target_stage: Stage::Staging as i32,
            ..Default::default()
        })
        .await
        .expect("transition")
        .into_inner();
    assert!(asked.version.is_none() && asked.request.is_some());
}

/// Defect 2 (CompareVersions reported gates it never judged): the comparison
/// carries the policy's gates as TransitionStage judges them, so a candidate
/// under an `auc >= 0.8` gate with auc 0.5 does not compare as "gates passed".
async fn compare_versions_reports_the_gates_it_judged(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_holdout(&mut c).await;
    let gated = pb::Policy {
        approval_required_for: stages(&[]),
        ..auc_gated(0.8)
    };
    create_model_with(&mut c, "fraud", gated)
        .await
        .expect("create model");
    for (auc, stage) in [
        (0.9, Stage::Production),
        (0.5, Stage::Staging),
        (0.95, Stage::Staging),
    ] {
        let v = register(&mut c, "fraud", Stage::Staging).await;
        evaluate(&mut c, "fraud", v.version, auc).await;
        if stage == Stage::Production {
            modelreg_tests::transition(&mut c, "fraud", v.version, Stage::Production)
                .await
                .expect("promote v1");
        }
    }
    let compare = |candidate: i64| {
        let mut c = c.clone();
        let req = pb::CompareVersionsRequest {
            model: "fraud".into(),
            candidate_version: candidate,
            ..Default::default()
        };
        async move { carried(c.compare_versions(req).await, |r| r.comparison).expect("compare") }
    };

    // Act
    let weak = compare(2).await;
    let strong = compare(3).await;

    // Assert
    assert!(!weak.gates_passed, "auc 0.5 fails auc >= 0.8: {weak:?}");
    assert_eq!(weak.gate_results.len(), 1, "{:?}", weak.gate_results);
    assert_eq!(weak.gate_results[0].metric, "auc");
    assert!(!weak.gate_results[0].passed);
    assert_eq!(weak.gate_results[0].candidate_value, 0.5);
    assert!(strong.gates_passed, "{strong:?}");
    assert!(strong.gate_results.iter().all(|g| g.passed));
    assert_eq!(strong.gate_results.len(), 1);
    // TransitionStage agrees with the comparison.
    let refused = modelreg_tests::transition(&mut c, "fraud", 2, Stage::Production)
        .await
        .expect_err("gates refuse v2");
    assert_eq!(refused.code(), Code::FailedPrecondition);
}

/// Defect 3 (ListTransitionRequests listed oldest first): requests come
/// newest first, across models and across pages.
async fn transition_requests_are_listed_newest_first(db: TestDb) {
    // Arrange: requests opened alternately on two models.
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    for m in ["alpha", "beta"] {
        let governed = pb::Policy {
            approval_required_for: stages(&[Stage::Staging]),
            ..Default::default()
        };
        create_model_with(&mut c, m, governed)
            .await
            .expect("create model");
    }
    let mut opened = Vec::new();
    for i in 0..7 {
        let m = if i % 2 == 0 { "beta" } else { "alpha" };
        let v = register(&mut c, m, Stage::None).await;
        let r = c
            .transition_stage(pb::TransitionStageRequest {
                model: m.into(),
                version: v.version,
                target_stage: Stage::Staging as i32,
                ..Default::default()
            })
            .await
            .expect("ask")
            .into_inner()
            .request
            .expect("request");
        opened.push(r.id);
    }

    // Act: pages of two.
    let two_a_page = pb::ListTransitionRequestsRequest {
        page_size: 2,
        ..Default::default()
    };
    let listed: Vec<String> = all_pages(|page_token| {
        let (mut c, mut req) = (c.clone(), two_a_page.clone());
        req.page_token = page_token;
        async move {
            let r = c.list_transition_requests(req).await.unwrap().into_inner();
            (r.requests, r.next_page_token)
        }
    })
    .await
    .into_iter()
    .map(|r| r.id)
    .collect();

    // Assert
    opened.reverse();
    assert_eq!(listed, opened, "newest first");
    // One model's inbox too.
    let alpha: Vec<String> = pending_requests(&mut c, "alpha")
        .await
        .into_iter()
        .map(|r| r.id)
        .collect();
    let expected: Vec<String> = opened
        .iter()
        .filter(|id| id.starts_with("alpha:"))
        .cloned()
        .collect();
    assert_eq!(alpha, expected);
}

/// The control characters a terminal acts on: ESC, CR, BEL, BS, DEL and C1.
const CONTROLS: [&str; 7] = [
    "\u{1b}[2K",
    "\r",
    "\u{7}",
    "\u{8}",
    "\u{7f}",
    "\u{9b}",
    "\u{85}",
];

/// Defect 10 (terminal escape injection), the server half: every free-text
/// field refuses C0/C1 control characters other than newline and tab,
/// naming the field, and nothing changes; newline and tab stay allowed.
async fn control_characters_are_refused_in_every_text_field(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "m").await;
    create_holdout(&mut c).await;
    let v = register(&mut c, "m", Stage::Staging).await;
    let before = all_events(&mut c).await;

    for ctl in CONTROLS {
        let text = format!("all gates pass{ctl}");
        let mut refused: Vec<(String, tonic::Status)> = Vec::new();
        let mut expect = |field: &str, r: Result<(), tonic::Status>| match r {
            Ok(()) => panic!("{field} accepted {text:?}"),
            Err(s) => refused.push((field.to_owned(), s)),
        };

        // Act
        expect(
            "description",
            c.create_model(pb::CreateModelRequest {
                name: "n".into(),
                description: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        expect(
            "tags[team]",
            c.create_model(pb::CreateModelRequest {
                name: "n".into(),
                tags: HashMap::from([("team".into(), text.clone())]),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        expect(
            "description",
            c.update_model(pb::UpdateModelRequest {
                name: "m".into(),
                description: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        for (field, source) in [
            (
                "source.commit",
                pb::Source {
                    commit: text.clone(),
                    ..Default::default()
                },
            ),
            (
                "source.run_id",
                pb::Source {
                    run_id: text.clone(),
                    ..Default::default()
                },
            ),
            (
                "source.repository",
                pb::Source {
                    repository: text.clone(),
                    ..Default::default()
                },
            ),
        ] {
            expect(
                field,
                c.register_version(pb::RegisterVersionRequest {
                    model: "m".into(),
                    artifact_uri: "s3://x/2".into(),
                    source: Some(source),
                    ..Default::default()
                })
                .await
                .map(drop),
            );
        }
        expect(
            "description",
            c.register_version(pb::RegisterVersionRequest {
                model: "m".into(),
                artifact_uri: "s3://x/2".into(),
                description: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        expect(
            "comment",
            c.transition_stage(pb::TransitionStageRequest {
                model: "m".into(),
                version: v.version,
                target_stage: Stage::Archived as i32,
                comment: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        expect(
            "reason",
            c.rollback(pb::RollbackRequest {
                model: "m".into(),
                reason: text.clone(),
                ..Default::default()
            })
            .await
            .map(drop),
        );
        expect(
            "comment",
            c.reject_transition(pb::RejectTransitionRequest {
                request_id: "m:1".into(),
                comment: text.clone(),
            })
            .await
            .map(drop),
        );
        expect(
            "description",
            c.create_evaluation_set(pb::CreateEvaluationSetRequest {
                name: "other".into(),
                version: "v1".into(),
                uri: "s3://d/other".into(),
                digest: DIGEST.into(),
                metrics: vec![pb::MetricDefinition {
                    name: "auc".into(),
                    higher_is_better: true,
                }],
                description: text.clone(),
            })
            .await
            .map(drop),
        );
        for (field, endpoint, message) in [
            ("endpoint", text.clone(), String::new()),
            ("message", String::new(), text.clone()),
        ] {
            expect(
                field,
                c.report_deployment(pb::ReportDeploymentRequest {
                    model: "m".into(),
                    version: v.version,
                    environment: "prod".into(),
                    status: pb::DeploymentStatus::Succeeded as i32,
                    endpoint,
                    message,
                    ..Default::default()
                })
                .await
                .map(drop),
            );
        }
        expect(
            "error",
            c.report_worker_failure(pb::ReportWorkerFailureRequest {
                model: "m".into(),
                version: v.version,
                worker: "evaluate".into(),
                event_sequence: 1,
                error: text.clone(),
                attempts: 1,
                ..Default::default()
            })
            .await
            .map(drop),
        );

        // Assert
        for (field, status) in &refused {
            assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
            assert_eq!(
                violated_fields(status),
                vec![field.clone()],
                "{field} with {text:?}"
            );
        }
    }
    assert_eq!(all_events(&mut c).await, before, "nothing changed");

    // Newline and tab are text, not controls.
    c.update_model(pb::UpdateModelRequest {
        name: "m".into(),
        description: "line one\n\tline two".into(),
        ..Default::default()
    })
    .await
    .expect("newline and tab are allowed");
}

/// Defect 11 (cursors of 2^63 and more wrapped): `after_sequence` values at
/// and beyond the signed range mean "nothing after it", never the whole log.
async fn cursors_at_and_beyond_two_to_the_63_never_wrap(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "m").await;
    register(&mut c, "m", Stage::None).await;
    let latest = all_events(&mut c).await.last().unwrap().sequence;

    for after in [
        latest,
        (1 << 63) - 1,
        1 << 63,
        (1 << 63) + 1,
        u64::MAX - 1,
        u64::MAX,
    ] {
        // Act
        let page = c
            .list_events(pb::ListEventsRequest {
                after_sequence: after,
                ..Default::default()
            })
            .await
            .expect("list events")
            .into_inner();

        // Assert
        assert!(
            page.events.is_empty(),
            "after_sequence {after} returned {} events",
            page.events.len()
        );
        assert!(page.next_page_token.is_empty());
        let watch = watch_after(&mut c, after.max(latest + 1))
            .await
            .expect_err("a cursor beyond the log is refused");
        assert_eq!(watch.code(), Code::InvalidArgument);
        let failure = c
            .report_worker_failure(pb::ReportWorkerFailureRequest {
                model: "m".into(),
                version: 1,
                worker: "evaluate".into(),
                event_sequence: after.max(latest + 1),
                error: "boom".into(),
                attempts: 1,
                ..Default::default()
            })
            .await
            .expect_err("an event beyond the log is refused");
        assert_eq!(failure.code(), Code::InvalidArgument, "{failure:?}");
    }
    let audit = c
        .verify_audit_log(pb::VerifyAuditLogRequest {
            anchors: vec![pb::AuditAnchor {
                sequence: u64::MAX,
                hash: "0".repeat(64),
            }],
        })
        .await
        .expect("verify")
        .into_inner();
    assert!(
        !audit.ok,
        "an anchor beyond the log is a problem, not a pass"
    );
}

/// The documented cap on ListModels filter terms.
const MAX_FILTER_TERMS: usize = 32;

/// Defect 12 (long filters crashed into INTERNAL): a filter at the term cap
/// works; one term more, and 1,000 terms, are INVALID_ARGUMENT on `filter`.
async fn long_model_filters_are_refused_at_the_term_cap(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "m").await;
    let filter = |n: usize| {
        (0..n)
            .map(|i| format!("tags.k{i}:*"))
            .collect::<Vec<_>>()
            .join(" AND ")
    };

    // Act
    let at_cap = c
        .list_models(pb::ListModelsRequest {
            filter: filter(MAX_FILTER_TERMS),
            ..Default::default()
        })
        .await;
    let mut refused = Vec::new();
    for n in [MAX_FILTER_TERMS + 1, 1000] {
        refused.push(
            c.list_models(pb::ListModelsRequest {
                filter: filter(n),
                ..Default::default()
            })
            .await
            .expect_err("over the cap"),
        );
    }

    // Assert
    assert!(at_cap.expect("at the cap").into_inner().models.is_empty());
    for status in refused {
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert_eq!(violated_fields(&status), vec!["filter".to_string()]);
    }
}

/// "In the same spirit": a pipeline URL (shown as a link on the dashboard)
/// must be `http` or `https`; `javascript:` and friends are refused.
async fn only_http_links_are_accepted_as_pipeline_urls(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "m").await;
    let register_with = |url: &str| {
        let mut c = c.clone();
        let url = url.to_owned();
        async move {
            c.register_version(pb::RegisterVersionRequest {
                model: "m".into(),
                artifact_uri: "s3://x/1".into(),
                source: Some(pb::Source {
                    pipeline_url: url,
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
        }
    };

    for bad in [
        "javascript:alert(1)",
        "JavaScript:alert(1)",
        " javascript:alert(1)",
        "data:text/html,<script>alert(1)</script>",
        "vbscript:msgbox",
        "file:///etc/passwd",
        "//evil.example/x",
        "/relative/path",
        "http://",
        "https:evil.example",
    ] {
        // Act
        let status = register_with(bad).await.expect_err(bad);

        // Assert
        assert_eq!(status.code(), Code::InvalidArgument, "{bad}: {status:?}");
        assert_eq!(
            violated_fields(&status),
            vec!["source.pipeline_url".to_string()]
        );
    }
    for good in [
        "https://ci.example/runs/1",
        "http://jenkins.local:8080/job/9",
        "",
    ] {
        register_with(good).await.expect(good);
    }
}

/// "In the same spirit": request ids are scoped to the calling identity
/// (AIP-155), so one publisher cannot claim another pipeline's id in advance;
/// the same caller retrying still gets its original version.
async fn request_ids_are_scoped_to_the_caller(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut mallory = app.client_as("mallory").await;
    let mut ci = app.client_as("ci").await;
    create_model(&mut ci, "m").await;
    let req = |uri: &str| pb::RegisterVersionRequest {
        model: "m".into(),
        artifact_uri: uri.into(),
        request_id: "pipeline-42".into(),
        ..Default::default()
    };

    // Act: mallory claims the id first, with another artifact.
    let squatted = mallory
        .register_version(req("s3://evil/1"))
        .await
        .expect("mallory registers")
        .into_inner()
        .version
        .unwrap();
    let real = ci
        .register_version(req("s3://ci/1"))
        .await
        .expect("the pipeline's registration is not blocked by another caller's id")
        .into_inner()
        .version
        .unwrap();
    let retry = ci
        .register_version(req("s3://ci/1"))
        .await
        .expect("retry")
        .into_inner()
        .version
        .unwrap();
    let reuse = ci
        .register_version(req("s3://ci/other"))
        .await
        .expect_err("same caller, same id, different request");

    // Assert
    assert_ne!(squatted.version, real.version);
    assert_eq!(real.artifact_uri, "s3://ci/1");
    assert_eq!(real.created_by, "ci");
    assert_eq!(retry.version, real.version, "a retry returns the original");
    assert_eq!(reuse.code(), Code::InvalidArgument);
    assert_eq!(violated_fields(&reuse), vec!["request_id".to_string()]);
}
