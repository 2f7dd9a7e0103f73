//! One-line forms of the calls the suites make over and over to arrange
//! state or read it back. Those a test checks the outcome of return the
//! call's `Result`, so the check stays in the test.

use modelreg_client::{RegistryClient, pb};

use crate::all_pages;

/// Creates the model `name` under `policy`.
pub async fn create_model_with(
    c: &mut RegistryClient,
    name: &str,
    policy: pb::Policy,
) -> Result<pb::Model, tonic::Status> {
    c.create_model(pb::CreateModelRequest {
        name: name.into(),
        policy: Some(policy),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().model.expect("model"))
}

/// Replaces the policy of the model `name`, on `etag` when it is not empty.
pub async fn update_policy(
    c: &mut RegistryClient,
    name: &str,
    policy: pb::Policy,
    etag: &str,
) -> Result<pb::Model, tonic::Status> {
    c.update_model(pb::UpdateModelRequest {
        name: name.into(),
        policy: Some(policy),
        update_mask: Some(prost_types::FieldMask {
            paths: vec!["policy".into()],
        }),
        etag: etag.into(),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().model.expect("model"))
}

/// The version `version` of `model`.
pub async fn get_version(c: &mut RegistryClient, model: &str, version: i64) -> pb::ModelVersion {
    c.get_version(pb::GetVersionRequest {
        model: model.into(),
        version,
        alias: String::new(),
    })
    .await
    .expect("get version")
    .into_inner()
    .version
    .expect("version")
}

/// The stage of `model` `version`, as its number.
pub async fn stage_of(c: &mut RegistryClient, model: &str, version: i64) -> i32 {
    get_version(c, model, version).await.stage
}

/// The first page of the versions of `model`.
pub async fn list_versions(c: &mut RegistryClient, model: &str) -> pb::ListVersionsResponse {
    list_versions_in(c, model, pb::Stage::Unspecified).await
}

/// The first page of the versions of `model` in `stage` (every stage for
/// UNSPECIFIED).
pub async fn list_versions_in(
    c: &mut RegistryClient,
    model: &str,
    stage: pb::Stage,
) -> pb::ListVersionsResponse {
    c.list_versions(pb::ListVersionsRequest {
        model: model.into(),
        stage: stage as i32,
        ..Default::default()
    })
    .await
    .expect("list versions")
    .into_inner()
}

/// Every version of `model`, through ListVersions pages of 1000.
pub async fn all_versions(c: &mut RegistryClient, model: &str) -> Vec<pb::ModelVersion> {
    all_pages(|page_token| {
        let mut c = c.clone();
        let model = model.to_string();
        async move {
            let r = c
                .list_versions(pb::ListVersionsRequest {
                    model,
                    page_size: 1000,
                    page_token,
                    ..Default::default()
                })
                .await
                .expect("list versions")
                .into_inner();
            (r.versions, r.next_page_token)
        }
    })
    .await
}

/// The audit log's verdict on itself, with no anchors.
pub async fn verify_audit(c: &mut RegistryClient) -> pb::VerifyAuditLogResponse {
    c.verify_audit_log(pb::VerifyAuditLogRequest::default())
        .await
        .expect("verify")
        .into_inner()
}

/// The transition requests of `model` in `status`, one page of 1000.
pub async fn transition_requests(
    c: &mut RegistryClient,
    model: &str,
    status: pb::TransitionRequestStatus,
) -> Vec<pb::TransitionRequest> {
    c.list_transition_requests(pb::ListTransitionRequestsRequest {
        model: model.into(),
        status: status as i32,
        page_size: 1000,
        ..Default::default()
    })
    .await
    .expect("list requests")
    .into_inner()
    .requests
}

/// Opens WatchTransitions on every model from after `after_sequence`.
pub async fn watch_after(
    c: &mut RegistryClient,
    after_sequence: u64,
) -> Result<tonic::Streaming<pb::WatchTransitionsResponse>, tonic::Status> {
    c.watch_transitions(pb::WatchTransitionsRequest {
        after_sequence: Some(after_sequence),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner())
}

/// The first page of the models.
pub async fn list_models(c: &mut RegistryClient) -> Vec<pb::Model> {
    c.list_models(pb::ListModelsRequest::default())
        .await
        .expect("list models")
        .into_inner()
        .models
}

/// Every event of `model`.
pub async fn events_of_model(c: &mut RegistryClient, model: &str) -> Vec<pb::RegistryEvent> {
    events_where(c, |q| q.model = model.into()).await
}

/// Every event of type `t`.
pub async fn events_of_type(c: &mut RegistryClient, t: pb::EventType) -> Vec<pb::RegistryEvent> {
    events_where(c, |q| q.types = vec![t as i32]).await
}

/// The model `name`.
pub async fn get_model(c: &mut RegistryClient, name: &str) -> pb::Model {
    c.get_model(pb::GetModelRequest { name: name.into() })
        .await
        .expect("get model")
        .into_inner()
        .model
        .expect("model")
}

/// The version of `model` that `alias` points at.
pub async fn version_by_alias(
    c: &mut RegistryClient,
    model: &str,
    alias: &str,
) -> pb::ModelVersion {
    c.get_version(pb::GetVersionRequest {
        model: model.into(),
        version: 0,
        alias: alias.into(),
    })
    .await
    .expect("get version by alias")
    .into_inner()
    .version
    .expect("version")
}

/// Points `alias` of `model` at `version`; the model as it is then.
pub async fn set_alias(
    c: &mut RegistryClient,
    model: &str,
    alias: &str,
    version: i64,
) -> Result<pb::Model, tonic::Status> {
    c.set_alias(pb::SetAliasRequest {
        model: model.into(),
        alias: alias.into(),
        version,
    })
    .await
    .map(|r| r.into_inner().model.expect("model"))
}

/// Every event `actor` caused.
pub async fn events_by_actor(c: &mut RegistryClient, actor: &str) -> Vec<pb::RegistryEvent> {
    events_where(c, |q| q.actor = actor.into()).await
}

/// Every event of `model` `version`.
pub async fn events_of_version(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
) -> Vec<pb::RegistryEvent> {
    events_where(c, |q| {
        q.model = model.into();
        q.version = version;
    })
    .await
}

/// The STAGE_CHANGED events of `model` `version`, oldest first.
pub async fn stage_changes(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
) -> Vec<pb::RegistryEvent> {
    let mut events = events_of_version(c, model, version).await;
    events.retain(|e| e.r#type == pb::EventType::StageChanged as i32);
    events
}

/// Every event after `sequence`.
pub async fn events_after(c: &mut RegistryClient, sequence: u64) -> Vec<pb::RegistryEvent> {
    events_where(c, |q| q.after_sequence = sequence).await
}

/// Every event matching the filter `filter` sets on a ListEvents request.
pub async fn events_where(
    c: &mut RegistryClient,
    filter: impl FnOnce(&mut pb::ListEventsRequest),
) -> Vec<pb::RegistryEvent> {
    let mut req = pb::ListEventsRequest::default();
    filter(&mut req);
    crate::list_events(c, req).await
}

/// Checks that `policy` is refused as INVALID_ARGUMENT with a violation on
/// exactly `fields` (in any order) as a change to `model`'s policy, and
/// also as the policy of a new model.
pub async fn assert_policy_refused(
    c: &mut RegistryClient,
    model: &str,
    policy: pb::Policy,
    fields: &[&str],
) {
    let s = update_policy(c, model, policy.clone(), "")
        .await
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
    let mut got = modelreg_client::errors::violated_fields(&s);
    got.sort();
    assert_eq!(got, fields, "{policy:?}: {s:?}");
    let s = create_model_with(c, "other", policy).await.unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument, "{s:?}");
}
