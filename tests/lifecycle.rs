//! Lifecycle rules through the real server: every allowed and forbidden move,
//! one production version, archive-on-supersede in one transaction, and
//! racing transitions.

use modelreg_client::pb::{self, Stage};
use modelreg_tests::{
    TestDb, all_events, conformance, create_model, get_version, invalid_fields, list_versions,
    list_versions_in, register, register_many, spawn_app, transition,
};

conformance!(
    every_allowed_and_every_forbidden_move,
    promoting_archives_the_previous_production_version_atomically,
    racing_transitions_with_the_same_etag_have_one_winner,
    concurrent_promotions_leave_one_production_version,
    special_targets,
);
use tonic::Code;
use tonic_types::StatusExt;

const ALLOWED: [(Stage, Stage); 7] = [
    (Stage::None, Stage::Staging),
    (Stage::None, Stage::Archived),
    (Stage::Staging, Stage::Production),
    (Stage::Staging, Stage::Archived),
    (Stage::Staging, Stage::None),
    (Stage::Production, Stage::Archived),
    (Stage::Archived, Stage::Staging),
];

const STAGES: [Stage; 4] = [
    Stage::None,
    Stage::Staging,
    Stage::Production,
    Stage::Archived,
];

/// Brings a fresh version of `model` into `stage` by allowed moves.
async fn version_in(
    client: &mut modelreg_client::RegistryClient,
    model: &str,
    stage: Stage,
) -> i64 {
    let v = register(client, model, Stage::None).await.version;
    let path: &[Stage] = match stage {
        Stage::None => &[],
        Stage::Staging => &[Stage::Staging],
        Stage::Production => &[Stage::Staging, Stage::Production],
        Stage::Archived => &[Stage::Archived],
        Stage::Unspecified => unreachable!(),
    };
    for s in path {
        transition(client, model, v, *s).await.expect("setup move");
    }
    v
}

/// Every (from, to) pair: the seven allowed moves apply and emit one
/// STAGE_CHANGED with cause REQUEST; every other pair is FAILED_PRECONDITION
/// with a STAGE_TRANSITION violation and changes nothing.
async fn every_allowed_and_every_forbidden_move(db: TestDb) {
    // Arrange
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    for from in STAGES {
        for to in STAGES {
            // Each pair gets its own model so production versions do not interact.
            let model = format!(
                "m-{}-{}",
                from.as_str_name().to_lowercase().replace('_', "-"),
                to.as_str_name().to_lowercase().replace('_', "-")
            );
            create_model(c, &model).await;
            let v = version_in(c, &model, from).await;
            let before = get_version(c, &model, v).await;
            let events_before = all_events(c).await.len();

            // Act
            let result = transition(c, &model, v, to).await;

            // Assert
            if ALLOWED.contains(&(from, to)) {
                let moved = result.unwrap_or_else(|s| panic!("{from:?}->{to:?} refused: {s:?}"));
                assert_eq!(moved.stage, to as i32, "{from:?}->{to:?}");
                assert_ne!(moved.etag, before.etag, "a move changes the etag");
                let events = all_events(c).await;
                assert_eq!(
                    events.len(),
                    events_before + 1,
                    "{from:?}->{to:?}: one event"
                );
                let e = events.last().unwrap();
                assert_eq!(e.r#type, pb::EventType::StageChanged as i32);
                assert_eq!((e.model.as_str(), e.version), (model.as_str(), v));
                assert_eq!(e.from_stage, from as i32);
                assert_eq!(e.to_stage, to as i32);
                assert_eq!(e.cause, pb::StageChangeCause::Request as i32);
                assert_eq!(e.actor, "tester");
            } else {
                let status = result.expect_err(&format!("{from:?}->{to:?} must be refused"));
                assert_eq!(status.code(), Code::FailedPrecondition, "{from:?}->{to:?}");
                let pre = status
                    .get_details_precondition_failure()
                    .expect("precondition details");
                assert_eq!(pre.violations[0].r#type, "STAGE_TRANSITION");
                let after = get_version(c, &model, v).await;
                assert_eq!(
                    after, before,
                    "{from:?}->{to:?}: refused move changed the version"
                );
                assert_eq!(
                    all_events(c).await.len(),
                    events_before,
                    "refused move wrote an event"
                );
            }
        }
    }
}

/// Entering PRODUCTION archives the previous production version in the same
/// transaction: two adjacent events with one commit time, and exactly one
/// production version afterwards.
async fn promoting_archives_the_previous_production_version_atomically(db: TestDb) {
    // Arrange
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    create_model(c, "fraud").await;
    let v1 = register(c, "fraud", Stage::Staging).await.version;
    let v2 = register(c, "fraud", Stage::Staging).await.version;
    transition(c, "fraud", v1, Stage::Production).await.unwrap();

    // Act
    let promoted = transition(c, "fraud", v2, Stage::Production).await.unwrap();

    // Assert
    assert_eq!(promoted.stage, Stage::Production as i32);
    let old = get_version(c, "fraud", v1).await;
    assert_eq!(old.stage, Stage::Archived as i32);
    let model = c
        .get_model(pb::GetModelRequest {
            name: "fraud".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .model
        .unwrap();
    assert_eq!(model.production_version, v2);
    let prod = list_versions_in(c, "fraud", Stage::Production)
        .await
        .versions;
    assert_eq!(prod.iter().map(|v| v.version).collect::<Vec<_>>(), vec![v2]);

    let events = all_events(c).await;
    let n = events.len();
    let (superseded, entered) = (&events[n - 2], &events[n - 1]);
    assert_eq!(superseded.version, v1);
    assert_eq!(superseded.from_stage, Stage::Production as i32);
    assert_eq!(superseded.to_stage, Stage::Archived as i32);
    assert_eq!(superseded.cause, pb::StageChangeCause::Superseded as i32);
    assert_eq!(entered.version, v2);
    assert_eq!(entered.cause, pb::StageChangeCause::Request as i32);
    assert_eq!(entered.sequence, superseded.sequence + 1);
    assert_eq!(
        entered.occur_time, superseded.occur_time,
        "one transaction, one commit time"
    );
    assert_eq!(entered.prev_hash, superseded.hash);
}

/// Ten TransitionStage calls racing with the same etag: exactly one wins,
/// the others get FAILED_PRECONDITION (stale etag) and change nothing.
async fn racing_transitions_with_the_same_etag_have_one_winner(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "racy").await;
    let v = register(&mut c, "racy", Stage::Staging).await;

    // Act
    let mut tasks = Vec::new();
    for i in 0..10 {
        let mut c = app.client_as(&format!("racer-{i}")).await;
        let etag = v.etag.clone();
        let target = if i % 2 == 0 {
            Stage::Production
        } else {
            Stage::Archived
        };
        tasks.push(tokio::spawn(async move {
            c.transition_stage(pb::TransitionStageRequest {
                model: "racy".into(),
                version: 1,
                target_stage: target as i32,
                comment: String::new(),
                etag,
            })
            .await
        }));
    }
    let mut wins = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => wins += 1,
            Err(s) => {
                assert_eq!(s.code(), Code::FailedPrecondition);
                let pre = s.get_details_precondition_failure().expect("details");
                assert_eq!(pre.violations[0].r#type, "ETAG");
            }
        }
    }

    // Assert
    assert_eq!(wins, 1);
    let stage_changes = all_events(&mut c)
        .await
        .into_iter()
        .filter(|e| {
            e.r#type == pb::EventType::StageChanged as i32 && e.from_stage == Stage::Staging as i32
        })
        .count();
    assert_eq!(stage_changes, 1);
}

/// Versions of one model racing into PRODUCTION without etags: whatever the
/// interleaving, exactly one version is in production at the end and every
/// other promoted one was archived with cause SUPERSEDED.
async fn concurrent_promotions_leave_one_production_version(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "busy").await;
    register_many(&mut c, "busy", 8, Stage::Staging).await;

    // Act
    let mut tasks = Vec::new();
    for v in 1..=8 {
        let mut c = app.client.clone();
        tasks.push(tokio::spawn(async move {
            transition(&mut c, "busy", v, Stage::Production).await
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("each promotion applies");
    }

    // Assert
    let versions = list_versions(&mut c, "busy").await.versions;
    let prod: Vec<_> = versions
        .iter()
        .filter(|v| v.stage == Stage::Production as i32)
        .collect();
    assert_eq!(prod.len(), 1);
    assert_eq!(
        versions
            .iter()
            .filter(|v| v.stage == Stage::Archived as i32)
            .count(),
        7
    );
    let superseded = all_events(&mut c)
        .await
        .into_iter()
        .filter(|e| e.cause == pb::StageChangeCause::Superseded as i32)
        .count();
    assert_eq!(superseded, 7);
}

/// ARCHIVED→PRODUCTION is a rollback, refused by TransitionStage; an
/// unspecified target is INVALID_ARGUMENT; registering with target STAGING
/// records the NONE→STAGING move in the same transaction.
async fn special_targets(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    create_model(c, "special").await;
    let v = register(c, "special", Stage::Staging).await;
    assert_eq!(v.stage, Stage::Staging as i32);
    let events = all_events(c).await;
    let n = events.len();
    assert_eq!(
        events[n - 2].r#type,
        pb::EventType::VersionRegistered as i32
    );
    assert_eq!(events[n - 1].r#type, pb::EventType::StageChanged as i32);
    assert_eq!(events[n - 1].from_stage, Stage::None as i32);
    assert_eq!(events[n - 1].to_stage, Stage::Staging as i32);

    transition(c, "special", 1, Stage::Archived).await.unwrap();
    let err = transition(c, "special", 1, Stage::Production)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);

    let err = transition(c, "special", 1, Stage::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(invalid_fields(&err), ["target_stage"]);

    let err = c
        .register_version(pb::RegisterVersionRequest {
            model: "special".into(),
            artifact_uri: "s3://x/y".into(),
            target_stage: Stage::Production as i32,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(invalid_fields(&err), ["target_stage"]);
}
