//! Models, versions, aliases, idempotency, event listing, the audit chain,
//! health and reflection, through the real server.

use std::collections::{HashMap, HashSet};

use modelreg_client::pb::{self, Stage};
use modelreg_tests::{
    Engine, TestDb, all_events, all_pages, carried, conformance, create_holdout, create_model,
    delete_alias, evaluate, events_after, events_by_actor, events_of_type, events_of_version,
    get_model, get_version, list_models, list_versions, list_versions_in, register, set_alias,
    spawn_app, verify_audit, version_by_alias,
};

conformance!(
    register_version_is_idempotent_under_concurrent_retries,
    create_model_retries_with_a_request_id,
    list_models_paginates_and_filters,
    update_model_honours_etags,
    update_version_changes_description_and_tags_only,
    aliases_point_at_versions,
    list_versions_and_events_filter_and_page,
    the_audit_chain_detects_tampering,
    health_and_reflection_are_served,
    refused_writes_among_concurrent_ones_change_nothing,
    reads_reflect_every_committed_write,
);
use tonic::Code;

/// The same RegisterVersion request_id sent 20 times concurrently creates
/// exactly one version and one VERSION_REGISTERED event; every caller gets
/// that version back. Reusing the id for a different request is refused.
async fn register_version_is_idempotent_under_concurrent_retries(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "idem").await;
    let request = pb::RegisterVersionRequest {
        model: "idem".into(),
        artifact_uri: "s3://bucket/idem/a".into(),
        request_id: "7d1c8a52-3f0e-4b8e-9a8e-0c2f5f0f7b11".into(),
        target_stage: Stage::Staging as i32,
        training_metrics: HashMap::from([("auc".to_string(), 0.91)]),
        ..Default::default()
    };

    // Act
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let mut c = app.client.clone();
            let r = request.clone();
            tokio::spawn(async move {
                c.register_version(r)
                    .await
                    .map(|r| r.into_inner().version.unwrap())
            })
        })
        .collect();
    let mut versions = HashSet::new();
    for t in tasks {
        versions.insert(t.await.unwrap().expect("every retry succeeds").version);
    }

    // Assert
    assert_eq!(versions, HashSet::from([1]));
    let listed = list_versions(&mut c, "idem").await.versions;
    assert_eq!(listed.len(), 1);
    let registered = all_events(&mut c)
        .await
        .into_iter()
        .filter(|e| e.r#type == pb::EventType::VersionRegistered as i32)
        .count();
    assert_eq!(registered, 1);

    let mut different = request.clone();
    different.artifact_uri = "s3://bucket/idem/b".into();
    let err = c.register_version(different).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        modelreg_client::errors::violated_fields(&err),
        vec!["request_id"]
    );
}

/// CreateModel with a request_id returns the original model on retry instead
/// of ALREADY_EXISTS; without one, a duplicate name is ALREADY_EXISTS.
async fn create_model_retries_with_a_request_id(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let req = pb::CreateModelRequest {
        name: "once".into(),
        request_id: "req-1".into(),
        ..Default::default()
    };
    let first = carried(app.client.create_model(req.clone()).await, |r| r.model).unwrap();
    let again = carried(app.client.create_model(req).await, |r| r.model).unwrap();
    assert_eq!(first, again);
    let err = app
        .client
        .create_model(pb::CreateModelRequest {
            name: "once".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists);
}

/// ListModels pages through every model exactly once in name order, and the
/// tag and name filters select exactly the matching models across pages.
async fn list_models_paginates_and_filters(db: TestDb) {
    // Arrange
    let mut app = spawn_app(&db).await;
    for i in 0..23 {
        app.client
            .create_model(pb::CreateModelRequest {
                name: format!("model-{i:02}"),
                tags: HashMap::from([(
                    "team".to_string(),
                    if i % 3 == 0 { "fraud" } else { "search" }.to_string(),
                )]),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    create_model(&mut app.client, "other").await;

    // Act
    let page = |filter: &str| pb::ListModelsRequest {
        page_size: 5,
        page_token: String::new(),
        filter: filter.into(),
    };
    let mut names = Vec::new();
    let mut req = page("");
    loop {
        let resp = app
            .client
            .list_models(req.clone())
            .await
            .unwrap()
            .into_inner();
        assert!(resp.models.len() <= 5);
        names.extend(resp.models.into_iter().map(|m| m.name));
        if resp.next_page_token.is_empty() {
            break;
        }
        req.page_token = resp.next_page_token;
    }

    // Assert
    let mut expected: Vec<String> = (0..23).map(|i| format!("model-{i:02}")).collect();
    expected.push("other".into());
    assert_eq!(names, expected);

    let fraud: Vec<String> = all_pages(|page_token| {
        let mut c = app.client.clone();
        let req = pb::ListModelsRequest {
            page_token,
            ..page("tags.team=fraud AND name:model-*")
        };
        async move {
            let resp = c.list_models(req).await.unwrap().into_inner();
            (
                resp.models.into_iter().map(|m| m.name).collect(),
                resp.next_page_token,
            )
        }
    })
    .await;
    let expected: Vec<String> = (0..23)
        .filter(|i| i % 3 == 0)
        .map(|i| format!("model-{i:02}"))
        .collect();
    assert_eq!(fraud, expected);

    // A token is bound to its filter.
    let first = app
        .client
        .list_models(page("tags.team=fraud"))
        .await
        .unwrap()
        .into_inner();
    let err = app
        .client
        .list_models(pb::ListModelsRequest {
            page_token: first.next_page_token,
            ..page("tags.team=search")
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

/// UpdateModel changes description and tags under an etag: a stale etag is
/// FAILED_PRECONDITION and changes nothing; each change is one MODEL_UPDATED
/// event with before and after.
async fn update_model_honours_etags(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    let created = create_model(c, "upd").await;
    let change = pb::UpdateModelRequest {
        name: "upd".into(),
        description: "new words".into(),
        tags: HashMap::from([("tier".to_string(), "gold".to_string())]),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["description".into(), "tags".into()],
        }),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let updated = carried(c.update_model(change).await, |r| r.model).unwrap();
    assert_eq!(updated.description, "new words");
    assert_eq!(updated.tags.get("tier").map(String::as_str), Some("gold"));
    assert_ne!(updated.etag, created.etag);

    let stale = pb::UpdateModelRequest {
        name: "upd".into(),
        description: "stale write".into(),
        etag: created.etag.clone(),
        ..Default::default()
    };
    let err = c.update_model(stale).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let now = get_model(c, "upd").await;
    assert_eq!(now, updated);

    let events = events_of_type(c, pb::EventType::ModelUpdated).await;
    assert_eq!(events.len(), 1);
    let details = events[0].details.as_ref().expect("details");
    assert!(details.fields.contains_key("before") && details.fields.contains_key("after"));
}

/// UpdateVersion changes a version's description and tags and nothing else,
/// honours etags, writes one VERSION_UPDATED event per change (none when
/// nothing changes), and refuses a mask naming another field.
async fn update_version_changes_description_and_tags_only(db: TestDb) {
    // Arrange
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    create_model(c, "vupd").await;
    let registered = register(c, "vupd", Stage::Staging).await;
    let change = pb::UpdateVersionRequest {
        model: "vupd".into(),
        version: 1,
        description: "validated on holdout".into(),
        tags: HashMap::from([("owner".to_string(), "risk".to_string())]),
        etag: registered.etag.clone(),
        ..Default::default()
    };

    // Act
    let updated = carried(c.update_version(change.clone()).await, |r| r.version).unwrap();
    let again = carried(
        c.update_version(pb::UpdateVersionRequest {
            etag: String::new(),
            ..change.clone()
        })
        .await,
        |r| r.version,
    )
    .unwrap();
    let stale = c.update_version(change).await.unwrap_err();
    let bad_mask = c
        .update_version(pb::UpdateVersionRequest {
            model: "vupd".into(),
            version: 1,
            update_mask: Some(prost_types::FieldMask {
                paths: vec!["artifact_uri".into()],
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();

    // Assert
    assert_eq!(updated.description, "validated on holdout");
    assert_eq!(updated.tags.get("owner").map(String::as_str), Some("risk"));
    assert_eq!(
        (&updated.artifact_uri, updated.stage),
        (&registered.artifact_uri, registered.stage)
    );
    assert_ne!(updated.etag, registered.etag);
    assert_eq!(
        again, updated,
        "an update that changes nothing keeps the etag"
    );
    assert_eq!(stale.code(), Code::FailedPrecondition);
    assert_eq!(bad_mask.code(), Code::InvalidArgument);
    assert!(
        bad_mask.message().contains("artifact_uri"),
        "{}",
        bad_mask.message()
    );
    assert_eq!(get_version(c, "vupd", 1).await, updated);
    let events = events_of_type(c, pb::EventType::VersionUpdated).await;
    assert_eq!(events.len(), 1);
    assert_eq!((events[0].model.as_str(), events[0].version), ("vupd", 1));
    let details = events[0].details.as_ref().expect("details");
    let after = details.fields["after"].kind.as_ref();
    assert!(
        matches!(after, Some(prost_types::value::Kind::StructValue(s)) if s.fields.contains_key("description") && s.fields.contains_key("tags")),
        "{details:?}"
    );
}

/// Aliases: set, resolve with GetVersion, move, delete; the model and the
/// versions show them; each change is an event.
async fn aliases_point_at_versions(db: TestDb) {
    let mut app = spawn_app(&db).await;
    let c = &mut app.client;
    create_model(c, "ali").await;
    register(c, "ali", Stage::None).await;
    register(c, "ali", Stage::None).await;
    let m = set_alias(c, "ali", "champion", 1).await.unwrap();
    assert_eq!(m.aliases.get("champion"), Some(&1));
    let v = version_by_alias(c, "ali", "champion").await;
    assert_eq!(
        (v.version, v.aliases.clone()),
        (1, vec!["champion".to_string()])
    );

    set_alias(c, "ali", "champion", 2).await.unwrap();
    let v = version_by_alias(c, "ali", "champion").await;
    assert_eq!(v.version, 2);
    let v1 = get_version(c, "ali", 1).await;
    assert!(v1.aliases.is_empty());

    let m = delete_alias(c, "ali", "champion").await.unwrap();
    assert!(m.aliases.is_empty());
    let kinds: Vec<i32> = all_events(c).await.into_iter().map(|e| e.r#type).collect();
    assert_eq!(
        kinds[kinds.len() - 3..],
        [
            pb::EventType::AliasSet as i32,
            pb::EventType::AliasSet as i32,
            pb::EventType::AliasDeleted as i32
        ]
    );
}

/// ListVersions filters by stage and pages; ListEvents filters by model,
/// version, actor, type and sequence, and pages without gaps or repeats.
async fn list_versions_and_events_filter_and_page(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut alice = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    create_model(&mut alice, "lv").await;
    for i in 0..12 {
        let c = if i % 2 == 0 { &mut alice } else { &mut bob };
        register(
            c,
            "lv",
            if i % 3 == 0 {
                Stage::Staging
            } else {
                Stage::None
            },
        )
        .await;
    }
    let staged: Vec<i64> = list_versions_in(&mut alice, "lv", Stage::Staging)
        .await
        .versions
        .into_iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(staged, vec![1, 4, 7, 10]);

    let paged = all_pages(|page_token| {
        let mut c = alice.clone();
        async move {
            let req = pb::ListEventsRequest {
                page_size: 4,
                page_token,
                ..Default::default()
            };
            let resp = c.list_events(req).await.unwrap().into_inner();
            (resp.events, resp.next_page_token)
        }
    })
    .await;
    assert_eq!(paged, all_events(&mut alice).await);

    let bobs = events_by_actor(&mut alice, "bob").await;
    assert_eq!(bobs.len(), 8, "six registrations, two of them staged");
    assert!(bobs.iter().all(|e| e.actor == "bob"));
    let v4 = events_of_version(&mut alice, "lv", 4).await;
    assert_eq!(v4.len(), 2, "registered and staged");
    let after = events_after(&mut alice, 10).await;
    assert_eq!(after.first().map(|e| e.sequence), Some(11));
}

/// VerifyAuditLog is green on an untouched log; the log refuses edits; and an
/// edit made behind the server's back (triggers dropped) is found at its
/// sequence.
async fn the_audit_chain_detects_tampering(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "audit").await;
    register(&mut c, "audit", Stage::Staging).await;
    let ok = verify_audit(&mut c).await;
    assert!(ok.ok);
    assert_eq!(ok.events_checked, 3);
    let db = app.stop().await;

    let refused = db
        .execute("UPDATE events SET actor = 'mallory' WHERE sequence = 2")
        .await;
    assert!(refused.is_err(), "the event log must refuse updates");
    let drop_trigger = match db.engine {
        Engine::Sqlite => "DROP TRIGGER events_are_append_only_update",
        Engine::Postgres => "DROP TRIGGER events_are_append_only_update ON events",
    };
    db.execute(drop_trigger).await.unwrap();
    db.execute("UPDATE events SET actor = 'mallory' WHERE sequence = 2")
        .await
        .unwrap();

    let app = spawn_app(&db).await;
    let report = verify_audit(&mut app.client.clone()).await;
    assert!(!report.ok);
    assert_eq!(report.first_bad_sequence, 2);
}

/// Health reports SERVING for the server and the registry service, and
/// reflection lists every service.
async fn health_and_reflection_are_served(db: TestDb) {
    let app = spawn_app(&db).await;
    let channel = tonic::transport::Endpoint::from_shared(app.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "modelreg.v1.ModelRegistryService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut stream = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .unwrap()
        .into_inner();
    let resp = stream
        .message()
        .await
        .unwrap()
        .expect("a reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = resp.message_response else {
        panic!("expected a service list");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    for expected in ["modelreg.v1.ModelRegistryService", "grpc.health.v1.Health"] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
}

/// Writes refused inside the store (unknown model, illegal move) racing with
/// valid ones, which the SQLite writer may commit in the same batch: every
/// valid write is applied exactly once, every refused one leaves no trace,
/// and the log stays gap-free with an intact hash chain.
async fn refused_writes_among_concurrent_ones_change_nothing(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "mixed").await;
    let before = all_events(&mut c).await.len();

    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let mut c = app.client.clone();
            tokio::spawn(async move {
                match i % 3 {
                    0 => register(&mut c, "mixed", Stage::None).await.version > 0,
                    1 => {
                        let err = c
                            .register_version(pb::RegisterVersionRequest {
                                model: "ghost".into(),
                                artifact_uri: "s3://x/y".into(),
                                ..Default::default()
                            })
                            .await
                            .unwrap_err();
                        assert_eq!(err.code(), Code::NotFound);
                        false
                    }
                    _ => {
                        let err = c
                            .transition_stage(pb::TransitionStageRequest {
                                model: "mixed".into(),
                                version: 1_000,
                                target_stage: Stage::Staging as i32,
                                ..Default::default()
                            })
                            .await
                            .unwrap_err();
                        assert_eq!(err.code(), Code::NotFound);
                        false
                    }
                }
            })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        if t.await.unwrap() {
            applied += 1;
        }
    }

    assert_eq!(applied, 20);
    let versions = list_versions(&mut c, "mixed").await.versions;
    assert_eq!(
        versions.iter().map(|v| v.version).collect::<Vec<_>>(),
        (1..=20).collect::<Vec<_>>()
    );
    let events = all_events(&mut c).await;
    assert_eq!(events.len(), before + 20);
    assert!(
        events
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence == i as u64 + 1)
    );
    let verify = verify_audit(&mut c).await;
    assert!(verify.ok);
    let models = list_models(&mut c).await;
    assert_eq!(models.len(), 1, "no model was created by a refused write");
}

/// A version read before a write is never served stale after it: stage
/// moves (its own and a superseding one), alias moves and evaluations all
/// show in the next read (the SQLite server caches versions).
async fn reads_reflect_every_committed_write(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "fresh").await;
    register(&mut c, "fresh", Stage::None).await;
    register(&mut c, "fresh", Stage::Staging).await;
    let get = |c: &mut modelreg_client::RegistryClient, version: i64| {
        let mut c = c.clone();
        async move { get_version(&mut c, "fresh", version).await }
    };
    assert_eq!(get(&mut c, 1).await.stage, Stage::None as i32);

    modelreg_tests::transition(&mut c, "fresh", 1, Stage::Staging)
        .await
        .unwrap();
    assert_eq!(get(&mut c, 1).await.stage, Stage::Staging as i32);

    set_alias(&mut c, "fresh", "champion", 1).await.unwrap();
    assert_eq!(get(&mut c, 1).await.aliases, vec!["champion".to_string()]);

    create_holdout(&mut c).await;
    evaluate(&mut c, "fresh", 1, 0.8).await;
    assert_eq!(get(&mut c, 1).await.evaluations.len(), 1);

    modelreg_tests::transition(&mut c, "fresh", 1, Stage::Production)
        .await
        .unwrap();
    assert_eq!(get(&mut c, 1).await.stage, Stage::Production as i32);
    modelreg_tests::transition(&mut c, "fresh", 2, Stage::Production)
        .await
        .unwrap();
    assert_eq!(
        get(&mut c, 1).await.stage,
        Stage::Archived as i32,
        "superseded"
    );

    set_alias(&mut c, "fresh", "champion", 2).await.unwrap();
    assert!(get(&mut c, 1).await.aliases.is_empty());
    assert_eq!(get(&mut c, 2).await.aliases, vec!["champion".to_string()]);
}
