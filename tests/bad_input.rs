//! Bad input: every malformed request gets its status code and the exact
//! field violation, and the database is unchanged afterwards.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use modelreg_client::errors::violated_fields;
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::{
    TestDb, all_events, conformance, create_model, list_models, list_versions, register, spawn_app,
};

conformance!(
    malformed_requests_are_refused_with_field_violations_and_change_nothing,
    every_violation_of_a_request_is_reported,
    missing_and_duplicate_resources,
);
use tonic::{Code, Status};
use tonic_types::StatusExt;

type Call = Box<dyn Fn(RegistryClient) -> Pin<Box<dyn Future<Output = Result<(), Status>> + Send>>>;

fn boxed<F, Fut, T>(f: F) -> Call
where
    F: Fn(RegistryClient) -> Fut + 'static,
    Fut: Future<Output = Result<T, Status>> + Send + 'static,
{
    Box::new(move |c| {
        let fut = f(c);
        Box::pin(async move { fut.await.map(|_| ()) })
    })
}

macro_rules! call {
    (|$c:ident| $body:expr) => {
        boxed(|mut $c: RegistryClient| async move { $body.await })
    };
}

fn create(name: &str) -> pb::CreateModelRequest {
    pb::CreateModelRequest {
        name: name.into(),
        ..Default::default()
    }
}

fn reg() -> pb::RegisterVersionRequest {
    pb::RegisterVersionRequest {
        model: "known".into(),
        artifact_uri: "s3://bucket/known/1".into(),
        ..Default::default()
    }
}

fn many_tags(n: usize) -> HashMap<String, String> {
    (0..n).map(|i| (format!("k{i}"), "v".into())).collect()
}

/// A snapshot of everything a refused call could have changed.
async fn snapshot(
    c: &mut RegistryClient,
) -> (
    Vec<pb::RegistryEvent>,
    Vec<pb::Model>,
    Vec<pb::ModelVersion>,
) {
    let events = all_events(c).await;
    let models = list_models(c).await;
    let versions = list_versions(c, "known").await.versions;
    (events, models, versions)
}

/// A table of 27 malformed requests across the API: each is INVALID_ARGUMENT
/// naming exactly the bad field in google.rpc.BadRequest, and nothing in the
/// database changed.
async fn malformed_requests_are_refused_with_field_violations_and_change_nothing(db: TestDb) {
    // Arrange
    let mut app = spawn_app(&db).await;
    create_model(&mut app.client, "known").await;
    register(&mut app.client, "known", pb::Stage::Staging).await;
    let before = snapshot(&mut app.client).await;
    let cases: Vec<(&str, &str, Call)> = vec![
        (
            "empty model name",
            "name",
            call!(|c| c.create_model(create(""))),
        ),
        (
            "upper-case name",
            "name",
            call!(|c| c.create_model(create("Fraud"))),
        ),
        (
            "name with a space",
            "name",
            call!(|c| c.create_model(create("fraud model"))),
        ),
        (
            "name of 129 characters",
            "name",
            call!(|c| c.create_model(create(&"a".repeat(129)))),
        ),
        (
            "injection-looking name",
            "name",
            call!(|c| c.create_model(create("x'; DROP TABLE models;--"))),
        ),
        (
            "65 tags",
            "tags",
            call!(|c| c.create_model(pb::CreateModelRequest {
                tags: many_tags(65),
                ..create("tagged")
            })),
        ),
        (
            "5 KiB tag",
            "tags[big]",
            call!(|c| c.create_model(pb::CreateModelRequest {
                tags: HashMap::from([("big".to_string(), "x".repeat(5000))]),
                ..create("tagged")
            })),
        ),
        (
            "5 KiB description",
            "description",
            call!(|c| c.create_model(pb::CreateModelRequest {
                description: "d".repeat(5000),
                ..create("described")
            })),
        ),
        (
            "empty artifact URI",
            "artifact_uri",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                artifact_uri: String::new(),
                ..reg()
            })),
        ),
        (
            "artifact URI without scheme",
            "artifact_uri",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                artifact_uri: "model.pkl".into(),
                ..reg()
            })),
        ),
        (
            "NaN metric",
            "training_metrics[auc]",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                training_metrics: HashMap::from([("auc".to_string(), f64::NAN)]),
                ..reg()
            })),
        ),
        (
            "infinite metric",
            "training_metrics[loss]",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                training_metrics: HashMap::from([("loss".to_string(), f64::INFINITY)]),
                ..reg()
            })),
        ),
        (
            "malformed digest",
            "artifact_digest",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                artifact_digest: "md5:abc".into(),
                ..reg()
            })),
        ),
        (
            "register into production",
            "target_stage",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                target_stage: pb::Stage::Production as i32,
                ..reg()
            })),
        ),
        (
            "unknown stage number",
            "target_stage",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                target_stage: 99,
                ..reg()
            })),
        ),
        (
            "request id with spaces",
            "request_id",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                request_id: "my request".into(),
                ..reg()
            })),
        ),
        (
            "65 version tags",
            "tags",
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                tags: many_tags(65),
                ..reg()
            })),
        ),
        (
            "version 0 without alias",
            "version",
            call!(|c| c.get_version(pb::GetVersionRequest {
                model: "known".into(),
                version: 0,
                alias: String::new()
            })),
        ),
        (
            "negative version",
            "version",
            call!(|c| c.get_version(pb::GetVersionRequest {
                model: "known".into(),
                version: -3,
                alias: String::new()
            })),
        ),
        (
            "transition to unknown stage",
            "target_stage",
            call!(|c| c.transition_stage(pb::TransitionStageRequest {
                model: "known".into(),
                version: 1,
                target_stage: 42,
                ..Default::default()
            })),
        ),
        (
            "transition version 0",
            "version",
            call!(|c| c.transition_stage(pb::TransitionStageRequest {
                model: "known".into(),
                version: 0,
                target_stage: pb::Stage::Archived as i32,
                ..Default::default()
            })),
        ),
        (
            "negative page size",
            "page_size",
            call!(|c| c.list_models(pb::ListModelsRequest {
                page_size: -1,
                ..Default::default()
            })),
        ),
        (
            "unparsable filter",
            "filter",
            call!(|c| c.list_models(pb::ListModelsRequest {
                filter: "owner == me".into(),
                ..Default::default()
            })),
        ),
        (
            "forged page token",
            "page_token",
            call!(|c| c.list_versions(pb::ListVersionsRequest {
                model: "known".into(),
                page_token: "deadbeef".into(),
                ..Default::default()
            })),
        ),
        (
            "numeric alias",
            "alias",
            call!(|c| c.set_alias(pb::SetAliasRequest {
                model: "known".into(),
                alias: "7".into(),
                version: 1
            })),
        ),
        (
            "etag not issued by the server",
            "etag",
            call!(|c| c.update_model(pb::UpdateModelRequest {
                name: "known".into(),
                description: "new".into(),
                etag: "W/abc".into(),
                ..Default::default()
            })),
        ),
        (
            "unknown update mask path",
            "update_mask",
            call!(|c| c.update_model(pb::UpdateModelRequest {
                name: "known".into(),
                update_mask: Some(prost_types::FieldMask {
                    paths: vec!["latest_version".into()]
                }),
                ..Default::default()
            })),
        ),
        (
            "unknown event type filter",
            "types[0]",
            call!(|c| c.list_events(pb::ListEventsRequest {
                types: vec![999],
                ..Default::default()
            })),
        ),
        (
            "bad model in watch filter",
            "models[0]",
            call!(|c| c.watch_transitions(pb::WatchTransitionsRequest {
                models: vec!["Not A Name".into()],
                ..Default::default()
            })),
        ),
    ];
    assert!(cases.len() >= 15);

    for (what, field, call) in &cases {
        // Act
        let status = call(app.client.clone()).await.expect_err(what);

        // Assert
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert_eq!(violated_fields(&status), vec![field.to_string()], "{what}");
    }
    assert_eq!(
        snapshot(&mut app.client).await,
        before,
        "a refused call changed the database"
    );
}

/// One request with several problems reports all of them at once.
async fn every_violation_of_a_request_is_reported(db: TestDb) {
    let mut app = spawn_app(&db).await;
    create_model(&mut app.client, "known").await;
    let status = app
        .client
        .register_version(pb::RegisterVersionRequest {
            artifact_uri: String::new(),
            training_metrics: HashMap::from([("auc".to_string(), f64::NAN)]),
            artifact_digest: "sha256:xyz".into(),
            ..reg()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&status);
    fields.sort();
    assert_eq!(
        fields,
        vec!["artifact_digest", "artifact_uri", "training_metrics[auc]"]
    );
}

/// Missing resources are NOT_FOUND with ResourceInfo naming them; duplicates
/// are ALREADY_EXISTS; unimplemented RPCs say so. Nothing changes.
async fn missing_and_duplicate_resources(db: TestDb) {
    let mut app = spawn_app(&db).await;
    create_model(&mut app.client, "known").await;
    let before = snapshot(&mut app.client).await;
    let c = &mut app.client;

    let s = c
        .get_model(pb::GetModelRequest {
            name: "ghost".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    let info = s.get_details_resource_info().expect("resource info");
    assert_eq!(
        (info.resource_type.as_str(), info.resource_name.as_str()),
        ("modelreg.v1.Model", "ghost")
    );

    let s = c
        .get_version(pb::GetVersionRequest {
            model: "known".into(),
            version: 9,
            alias: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::NotFound);
    assert_eq!(
        s.get_details_resource_info().unwrap().resource_name,
        "known/9"
    );

    let s = c
        .rollback(pb::RollbackRequest {
            model: "known".into(),
            version: 0,
            reason: "test".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::FailedPrecondition, "{s:?}");
    assert!(s.message().contains("no production version"), "{s:?}");

    let cases: Vec<(&str, Code, Call)> = vec![
        (
            "a version of a missing model",
            Code::NotFound,
            call!(|c| c.register_version(pb::RegisterVersionRequest {
                model: "ghost".into(),
                ..reg()
            })),
        ),
        (
            "a missing alias",
            Code::NotFound,
            call!(|c| c.get_version(pb::GetVersionRequest {
                model: "known".into(),
                version: 0,
                alias: "champion".into(),
            })),
        ),
        (
            "deleting a missing alias",
            Code::NotFound,
            call!(|c| c.delete_alias(pb::DeleteAliasRequest {
                model: "known".into(),
                alias: "champion".into(),
            })),
        ),
        (
            "an alias to a missing version",
            Code::NotFound,
            call!(|c| c.set_alias(pb::SetAliasRequest {
                model: "known".into(),
                alias: "champion".into(),
                version: 4,
            })),
        ),
        (
            "a duplicate model",
            Code::AlreadyExists,
            call!(|c| c.create_model(create("known"))),
        ),
        (
            "approving a missing request",
            Code::NotFound,
            call!(|c| c.approve_transition(pb::ApproveTransitionRequest {
                request_id: "known:7".into(),
                comment: String::new(),
            })),
        ),
    ];
    for (what, code, call) in &cases {
        let s = call(c.clone()).await.expect_err(what);
        assert_eq!(s.code(), *code, "{what}: {s:?}");
    }

    assert_eq!(snapshot(c).await, before);
}
