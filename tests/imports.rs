//! ImportVersion: what `modelreg import mlflow` records. Admins only; the
//! number is kept above the latest (0 = the next), a taken one refused; a
//! retry replays; the stage arrives with cause IMPORT and the admin as
//! actor, without approval or gates, and at most one version stays in
//! production; bad input changes nothing.

use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    DIGEST, TestApp, TestDb, all_events, client_with_token, conformance, get_model, get_version,
    invalid_fields, precondition_violations, spawn_app_with, stage_changes, token_file,
    transition_requests,
};
use pb::{EventType, Stage, StageChangeCause as Cause};

conformance!(
    only_admins_import,
    numbers_are_kept_above_the_latest_or_the_next,
    a_retry_replays_and_a_reused_id_is_refused,
    imported_stages_arrive_with_cause_import_without_approval,
    a_second_production_import_supersedes_the_first,
    bad_input_changes_nothing,
);

/// The model every test imports into; it has the default policy, which
/// needs approval for PRODUCTION: an import asks none.
const MODEL: &str = "fraud";

/// A server with a token file (`ada` the admin, `paul` a publisher) and
/// [`MODEL`] created by ada; the server, ada's and paul's clients.
async fn start(db: TestDb) -> (TestApp, RegistryClient, RegistryClient, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let tokens = token_file(dir.path(), &[("ada", "admin"), ("paul", "publisher")]);
    let app = spawn_app_with(&db, |s| s.auth_tokens = Some(tokens)).await;
    let mut admin = client_with_token(&app.url, "ada").await;
    let publisher = client_with_token(&app.url, "paul").await;
    admin
        .create_model(pb::CreateModelRequest {
            name: MODEL.into(),
            ..Default::default()
        })
        .await
        .expect("create the model");
    (app, admin, publisher, dir)
}

/// An import of version `version` of [`MODEL`] in `stage`, from MLflow.
fn import(version: i64, stage: Stage) -> pb::ImportVersionRequest {
    pb::ImportVersionRequest {
        model: MODEL.into(),
        version,
        artifact_uri: format!("s3://mlflow/fraud/{version}"),
        artifact_digest: DIGEST.into(),
        source: Some(pb::Source {
            run_id: format!("run-{version}"),
            imported_from: format!("mlflow:http://mlflow:5000/fraud/{version}"),
            original_create_time: Some(prost_types::Timestamp {
                seconds: 1_700_000_000 + version,
                nanos: 0,
            }),
            ..Default::default()
        }),
        tags: [("team".to_string(), "risk".to_string())].into(),
        description: format!("version {version} as trained"),
        stage: stage as i32,
        ..Default::default()
    }
}

async fn imported(
    c: &mut RegistryClient,
    req: pb::ImportVersionRequest,
) -> Result<pb::ImportVersionResponse, tonic::Status> {
    c.import_version(req).await.map(|r| r.into_inner())
}

/// A publisher (who may register) may not import: PERMISSION_DENIED, and
/// nothing is recorded; the admin may.
async fn only_admins_import(db: TestDb) {
    // Arrange
    let (_app, mut admin, mut publisher, _dir) = start(db).await;
    let before = all_events(&mut admin).await.len();

    // Act
    let refused = imported(&mut publisher, import(1, Stage::None)).await;

    // Assert
    let status = refused.expect_err("a publisher may not import");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert_eq!(all_events(&mut admin).await.len(), before);
    assert_eq!(get_model(&mut admin, MODEL).await.latest_version, 0);
    let done = imported(&mut admin, import(1, Stage::None)).await.unwrap();
    assert!(done.created);
    assert_eq!(done.version.unwrap().created_by, "ada");
}

/// A number above the latest is kept (gaps allowed), 0 takes the next, and
/// a number at or below the latest is FAILED_PRECONDITION saying 0 gives
/// the next number; the refused import records nothing.
async fn numbers_are_kept_above_the_latest_or_the_next(db: TestDb) {
    // Arrange
    let (_app, mut c, _, _dir) = start(db).await;

    // Act
    let kept = imported(&mut c, import(3, Stage::None)).await.unwrap();
    let next = imported(&mut c, import(0, Stage::None)).await.unwrap();
    let before = all_events(&mut c).await.len();
    let taken = imported(&mut c, import(4, Stage::None)).await;
    let below = imported(&mut c, import(2, Stage::None)).await;

    // Assert
    let kept = kept.version.unwrap();
    assert_eq!(kept.version, 3);
    assert_eq!(kept.artifact_uri, "s3://mlflow/fraud/3");
    let source = kept.source.unwrap();
    assert_eq!(source.imported_from, "mlflow:http://mlflow:5000/fraud/3");
    assert_eq!(source.original_create_time.unwrap().seconds, 1_700_000_003);
    assert_eq!(next.version.unwrap().version, 4);
    for refused in [taken, below] {
        let status = refused.expect_err("a taken number is refused");
        let violations = precondition_violations(&status);
        assert_eq!(violations[0].r#type, "VERSION_NUMBER_TAKEN");
        assert!(
            status.message().contains("0 for the next number (5)"),
            "{status:?}"
        );
    }
    assert_eq!(all_events(&mut c).await.len(), before);
    assert_eq!(get_model(&mut c, MODEL).await.latest_version, 4);
}

/// A retry with the same request id returns the version it recorded with
/// `created` false and appends nothing, even after later imports moved the
/// latest number past it; the same id with another request is
/// INVALID_ARGUMENT on request_id.
async fn a_retry_replays_and_a_reused_id_is_refused(db: TestDb) {
    // Arrange
    let (_app, mut c, _, _dir) = start(db).await;
    let first = pb::ImportVersionRequest {
        request_id: "mlflow-fraud-2".into(),
        ..import(2, Stage::Staging)
    };
    let recorded = imported(&mut c, first.clone()).await.unwrap();
    imported(&mut c, import(0, Stage::None)).await.unwrap();
    let before = all_events(&mut c).await.len();

    // Act
    let retry = imported(&mut c, first.clone()).await.unwrap();
    let reused = imported(
        &mut c,
        pb::ImportVersionRequest {
            artifact_uri: "s3://elsewhere/2".into(),
            ..first
        },
    )
    .await;

    // Assert
    assert!(recorded.created);
    assert!(!retry.created, "a retry records nothing");
    let (recorded, retry) = (recorded.version.unwrap(), retry.version.unwrap());
    assert_eq!((retry.version, retry.stage), (2, Stage::Staging as i32));
    assert_eq!(retry.create_time, recorded.create_time);
    let status = reused.expect_err("another request under a used id");
    assert_eq!(invalid_fields(&status), ["request_id"]);
    assert_eq!(all_events(&mut c).await.len(), before);
}

/// PRODUCTION and ARCHIVED arrive as STAGE_CHANGED from NONE with cause
/// IMPORT and the admin as actor, in the default policy that needs approval
/// for PRODUCTION, yet no transition request is opened.
async fn imported_stages_arrive_with_cause_import_without_approval(db: TestDb) {
    // Arrange
    let (_app, mut c, _, _dir) = start(db).await;

    // Act
    let production = imported(&mut c, import(1, Stage::Production)).await;
    let archived = imported(&mut c, import(2, Stage::Archived)).await;

    // Assert
    assert_eq!(
        production.unwrap().version.unwrap().stage,
        Stage::Production as i32
    );
    assert_eq!(
        archived.unwrap().version.unwrap().stage,
        Stage::Archived as i32
    );
    for (version, stage) in [(1, Stage::Production), (2, Stage::Archived)] {
        let changes = stage_changes(&mut c, MODEL, version).await;
        assert_eq!(changes.len(), 1, "{changes:?}");
        let e = &changes[0];
        assert_eq!(
            (e.from_stage, e.to_stage),
            (Stage::None as i32, stage as i32)
        );
        assert_eq!(e.cause, Cause::Import as i32);
        assert_eq!(e.actor, "ada");
    }
    assert_eq!(get_model(&mut c, MODEL).await.production_version, 1);
    assert!(
        transition_requests(&mut c, MODEL, pb::TransitionRequestStatus::Unspecified)
            .await
            .is_empty()
    );
    let events = all_events(&mut c).await;
    assert!(
        !events
            .iter()
            .any(|e| e.r#type == EventType::TransitionRequested as i32)
    );
}

/// Importing a second PRODUCTION version archives the first with cause
/// SUPERSEDED in the same call: one version stays in production.
async fn a_second_production_import_supersedes_the_first(db: TestDb) {
    // Arrange
    let (_app, mut c, _, _dir) = start(db).await;
    imported(&mut c, import(1, Stage::Production))
        .await
        .unwrap();

    // Act
    imported(&mut c, import(2, Stage::Production))
        .await
        .unwrap();

    // Assert
    assert_eq!(
        get_version(&mut c, MODEL, 1).await.stage,
        Stage::Archived as i32
    );
    assert_eq!(
        get_version(&mut c, MODEL, 2).await.stage,
        Stage::Production as i32
    );
    assert_eq!(get_model(&mut c, MODEL).await.production_version, 2);
    let left = stage_changes(&mut c, MODEL, 1).await;
    let last = left.last().unwrap();
    assert_eq!(
        (last.to_stage, last.cause),
        (Stage::Archived as i32, Cause::Superseded as i32)
    );
    assert_eq!(last.actor, "ada");
}

/// A bad URI, a NaN metric, a negative number, a stage that is no stage, an
/// unknown model, and provenance given to RegisterVersion are each refused
/// naming the field (NOT_FOUND for the model), and change nothing.
async fn bad_input_changes_nothing(db: TestDb) {
    // Arrange
    let (_app, mut c, _, _dir) = start(db).await;
    let before = all_events(&mut c).await.len();
    let bad: Vec<(pb::ImportVersionRequest, &str)> = vec![
        (
            pb::ImportVersionRequest {
                artifact_uri: "not a uri".into(),
                ..import(1, Stage::None)
            },
            "artifact_uri",
        ),
        (
            pb::ImportVersionRequest {
                training_metrics: [("auc".to_string(), f64::NAN)].into(),
                ..import(1, Stage::None)
            },
            "training_metrics",
        ),
        (import(-1, Stage::None), "version"),
        (
            pb::ImportVersionRequest {
                stage: 99,
                ..import(1, Stage::None)
            },
            "stage",
        ),
    ];

    // Act / Assert
    for (req, field) in bad {
        let status = imported(&mut c, req).await.expect_err(field);
        let fields = invalid_fields(&status);
        assert!(
            fields.iter().all(|f| f.starts_with(field)),
            "{field}: {fields:?}"
        );
    }
    let unknown = imported(
        &mut c,
        pb::ImportVersionRequest {
            model: "nope".into(),
            ..import(1, Stage::None)
        },
    )
    .await
    .expect_err("no such model");
    assert_eq!(unknown.code(), tonic::Code::NotFound);
    let claimed = c
        .register_version(pb::RegisterVersionRequest {
            model: MODEL.into(),
            artifact_uri: "s3://m/1".into(),
            source: import(1, Stage::None).source,
            ..Default::default()
        })
        .await
        .expect_err("only ImportVersion records provenance");
    assert_eq!(invalid_fields(&claimed), ["source.imported_from"]);
    assert_eq!(all_events(&mut c).await.len(), before);
    assert_eq!(get_model(&mut c, MODEL).await.latest_version, 0);
}
