//! Requests into domain values: each `TryFrom` (or, where the answer is
//! not one domain type, each function named after its RPC) checks every
//! field of one request and reports all bad fields at once
//! (`google.rpc.BadRequest`).

use std::collections::{BTreeMap, HashMap};

use modelreg_api::v1 as pb;

use crate::app::{Caller, RollbackOrder};
use crate::domain::evaluation;
use crate::domain::{
    self, AliasName, CompareRequest, Evaluation, EvaluationSet, LiveObservation, ModelUpdate, Name,
    NewDeployment, NewEvaluation, NewImport, NewModel, NewVersion, SetRef, Source, Stage,
    StageChange, VersionUpdate, Violations, WorkerFailure,
};
use crate::error::{Error, Result};
use crate::grpc::convert;
use crate::store::VersionRef;

/// How far in the future a live metric's observe_time may lie (clock skew).
const MAX_OBSERVATION_LEAD_MICROS: i64 = 5 * 60 * 1_000_000;

/// Parses a stage field; UNSPECIFIED and unknown numbers are refused.
pub(super) fn parse_stage_field(field: &str, raw: i32) -> Result<Stage> {
    convert::stage_from_pb(raw).ok_or_else(|| {
        Error::invalid(
            field,
            format!(
                "{} is not a valid stage: use STAGE_NONE, STAGE_STAGING, STAGE_PRODUCTION or STAGE_ARCHIVED",
                pb::Stage::try_from(raw)
                    .map(|s| s.as_str_name().to_owned())
                    .unwrap_or_else(|_| raw.to_string())
            ),
        )
    })
}

/// Parses an optional `EvaluationSetRef` field; `Ok(None)` when unset.
pub(super) fn parse_set_ref(
    field: &str,
    raw: Option<&pb::EvaluationSetRef>,
) -> Result<Option<SetRef>> {
    match raw {
        None => Ok(None),
        Some(r) if r.name.is_empty() && r.version.is_empty() => Ok(None),
        Some(r) => SetRef::parse(field, &r.name, &r.version).map(Some),
    }
}

/// Parses a required `EvaluationSetRef` field.
pub(super) fn required_set_ref(field: &str, raw: Option<&pb::EvaluationSetRef>) -> Result<SetRef> {
    parse_set_ref(field, raw)?.ok_or_else(|| {
        Error::invalid(
            field,
            "is required: name the evaluation set and its version",
        )
    })
}

/// An optional name field: `Ok(None)` when empty.
pub(super) fn optional_name(field: &str, raw: &str) -> Result<Option<Name>> {
    match raw {
        "" => Ok(None),
        raw => Name::parse(field, raw).map(Some),
    }
}

/// A protobuf map, in the order the domain keeps.
fn to_btree<V: Clone>(map: &HashMap<String, V>) -> BTreeMap<String, V> {
    map.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

impl TryFrom<pb::CreateModelRequest> for NewModel {
    type Error = Error;

    fn try_from(r: pb::CreateModelRequest) -> Result<NewModel> {
        let policy = match r.policy {
            Some(p) if p != pb::Policy::default() => convert::policy_from_pb("policy", p).map(Some),
            _ => Ok(None),
        };
        let (name, description, tags, request_id, policy) = domain::all((
            Name::parse("name", &r.name),
            domain::parse_text("description", &r.description),
            domain::parse_tags("tags", &to_btree(&r.tags)),
            domain::parse_request_id("request_id", &r.request_id),
            policy,
        ))?;
        Ok(NewModel {
            name,
            description,
            tags,
            policy,
            request_id,
        })
    }
}

impl TryFrom<pb::UpdateModelRequest> for ModelUpdate {
    type Error = Error;

    fn try_from(r: pb::UpdateModelRequest) -> Result<ModelUpdate> {
        let mut v = Violations::default();
        let name = v.take(Name::parse("name", &r.name));
        let etag = v.take(domain::parse_etag("etag", &r.etag));
        let set = [
            (!r.description.is_empty(), "description"),
            (!r.tags.is_empty(), "tags"),
            (r.policy.is_some(), "policy"),
        ];
        let (mut description, mut tags, mut policy) = (None, None, None);
        for path in update_paths(r.update_mask.as_ref(), &set, &mut v) {
            match path {
                "description" => {
                    description = v.take(domain::parse_text("description", &r.description))
                }
                "tags" => tags = v.take(domain::parse_tags("tags", &to_btree(&r.tags))),
                _ => {
                    // In the mask but unset: back to the defaults (AIP-134).
                    policy = v.take(convert::policy_from_pb(
                        "policy",
                        r.policy.clone().unwrap_or_default(),
                    ))
                }
            }
        }
        v.finish()?;
        Ok(ModelUpdate {
            name: name.expect("checked"),
            description,
            tags,
            policy,
            etag: etag.expect("checked"),
        })
    }
}

impl TryFrom<pb::UpdateVersionRequest> for VersionUpdate {
    type Error = Error;

    fn try_from(r: pb::UpdateVersionRequest) -> Result<VersionUpdate> {
        let mut v = Violations::default();
        let model = v.take(Name::parse("model", &r.model));
        let version = v.take(domain::parse_version_number("version", r.version));
        let etag = v.take(domain::parse_etag("etag", &r.etag));
        let set = [
            (!r.description.is_empty(), "description"),
            (!r.tags.is_empty(), "tags"),
        ];
        let (mut description, mut tags) = (None, None);
        for path in update_paths(r.update_mask.as_ref(), &set, &mut v) {
            match path {
                "description" => {
                    description = v.take(domain::parse_text("description", &r.description))
                }
                _ => tags = v.take(domain::parse_tags("tags", &to_btree(&r.tags))),
            }
        }
        v.finish()?;
        Ok(VersionUpdate {
            model: model.expect("checked"),
            version: version.expect("checked"),
            description,
            tags,
            etag: etag.expect("checked"),
        })
    }
}

/// The fields an update changes (AIP-134): those `mask` names, or without a
/// mask every field `set` in the request. A path that is not one of `set`'s
/// fields, or an update that names none, is recorded in `v`; only known
/// paths are returned.
fn update_paths(
    mask: Option<&prost_types::FieldMask>,
    set: &[(bool, &'static str)],
    v: &mut Violations,
) -> Vec<&'static str> {
    let named: Vec<String> = match mask {
        Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
        _ => set
            .iter()
            .filter(|(is_set, _)| *is_set)
            .map(|(_, path)| path.to_string())
            .collect(),
    };
    if named.is_empty() {
        v.add(
            "update_mask",
            "names no field and the request sets none: nothing to update",
        );
    }
    let fields: Vec<&str> = set.iter().map(|(_, f)| *f).collect();
    let mut paths = Vec::new();
    for path in &named {
        match fields.iter().find(|f| **f == path.as_str()) {
            Some(f) => paths.push(*f),
            None => v.add(
                "update_mask",
                format!(
                    "{:?} cannot be updated: use {}",
                    domain::truncate(path, 64),
                    fields
                        .join(" or ")
                        .replacen(" or ", ", ", fields.len().saturating_sub(2))
                ),
            ),
        }
    }
    paths
}

/// The stage a registration asks for: UNSPECIFIED means NONE; the rule of
/// which stages are allowed is the domain's.
fn registration_stage(raw: i32) -> Result<Stage> {
    let stage = match pb::Stage::try_from(raw) {
        Ok(pb::Stage::Unspecified) => Some(Stage::None),
        _ => convert::stage_from_pb(raw),
    };
    domain::check_registration_target("target_stage", stage)
}

impl TryFrom<pb::RegisterVersionRequest> for NewVersion {
    type Error = Error;

    fn try_from(r: pb::RegisterVersionRequest) -> Result<NewVersion> {
        // Where a version was imported from is recorded by ImportVersion
        // (admins) alone, so the field can be trusted.
        let imported = r
            .source
            .as_ref()
            .is_some_and(|s| !s.imported_from.is_empty() || s.original_create_time.is_some());
        let (new, ()) = domain::all((
            version_fields(r),
            require(
                !imported,
                "source.imported_from",
                "imported_from and original_create_time are set only by ImportVersion; RegisterVersion records versions made here",
            ),
        ))?;
        Ok(new)
    }
}

/// The fields RegisterVersion and ImportVersion share, checked by the one
/// set of rules (ImportVersion's are passed in a RegisterVersionRequest).
fn version_fields(r: pb::RegisterVersionRequest) -> Result<NewVersion> {
    let source = r.source.map_or(Ok(Source::default()), |s| {
        convert::source_from_pb("source", s).and_then(|s| Source::parse("source", s))
    });
    let (
        model,
        artifact_uri,
        artifact_digest,
        source,
        training_metrics,
        tags,
        description,
        request_id,
        target_stage,
    ) = domain::all((
        Name::parse("model", &r.model),
        domain::parse_artifact_uri("artifact_uri", &r.artifact_uri),
        domain::parse_digest("artifact_digest", &r.artifact_digest),
        source,
        domain::parse_metrics("training_metrics", &to_btree(&r.training_metrics)),
        domain::parse_tags("tags", &to_btree(&r.tags)),
        domain::parse_text("description", &r.description),
        domain::parse_request_id("request_id", &r.request_id),
        registration_stage(r.target_stage),
    ))?;
    Ok(NewVersion {
        model,
        artifact_uri,
        artifact_digest,
        source,
        training_metrics,
        tags,
        description,
        request_id,
        target_stage,
    })
}

impl TryFrom<pb::ImportVersionRequest> for NewImport {
    type Error = Error;

    fn try_from(r: pb::ImportVersionRequest) -> Result<NewImport> {
        let shared = pb::RegisterVersionRequest {
            model: r.model,
            artifact_uri: r.artifact_uri,
            artifact_digest: r.artifact_digest,
            source: r.source,
            training_metrics: r.training_metrics,
            tags: r.tags,
            request_id: r.request_id,
            target_stage: pb::Stage::None as i32,
            description: r.description,
        };
        let number = require(
            r.version >= 0,
            "version",
            format!(
                "is the number to keep, or 0 for the next number; got {}",
                r.version
            ),
        );
        let stage = match pb::Stage::try_from(r.stage) {
            Ok(pb::Stage::Unspecified) => Ok(Stage::None),
            _ => parse_stage_field("stage", r.stage),
        };
        let (version, (), stage) = domain::all((version_fields(shared), number, stage))?;
        Ok(NewImport {
            version,
            number: r.version,
            stage,
        })
    }
}

impl TryFrom<pb::ReportDeploymentRequest> for NewDeployment {
    type Error = Error;

    fn try_from(r: pb::ReportDeploymentRequest) -> Result<NewDeployment> {
        let (model, version, environment, status, endpoint, message, request_id, fence) =
            domain::all((
                Name::parse("model", &r.model),
                domain::parse_version_number("version", r.version),
                Name::parse("environment", &r.environment),
                convert::deployment_status_from_pb("status", r.status),
                domain::parse_text("endpoint", &r.endpoint),
                domain::parse_text("message", &r.message),
                domain::parse_request_id("request_id", &r.request_id),
                r.fence.map(parse_fence).transpose(),
            ))?;
        Ok(NewDeployment {
            model,
            version,
            environment,
            status,
            endpoint,
            message,
            request_id,
            fence,
        })
    }
}

/// A ConsumerFence, checked.
pub(super) fn parse_fence(f: pb::ConsumerFence) -> Result<domain::Fence> {
    let (consumer, member) = domain::all((
        Name::parse("fence.consumer", &f.consumer),
        domain::parse_member("fence.member", &f.member),
    ))?;
    require(f.sequence > 0, "fence.sequence", "must be 1 or more")?;
    Ok(domain::Fence {
        consumer: consumer.to_string(),
        member,
        sequence: f.sequence,
        epoch: f.epoch,
    })
}

/// Checks a condition of one field: `Ok(())`, or its violation.
pub(super) fn require(ok: bool, field: &str, description: impl Into<String>) -> Result<()> {
    if ok {
        Ok(())
    } else {
        Err(Error::invalid(field, description))
    }
}

/// A live reading, checked against the server's time `now`.
pub(super) fn live_observation(
    r: pb::ReportLiveMetricRequest,
    now: i64,
) -> Result<LiveObservation> {
    let observe_time = match &r.observe_time {
        None => Ok(now),
        Some(t) => convert::micros_from_pb("observe_time", t).and_then(|t| {
            require(
                t <= now + MAX_OBSERVATION_LEAD_MICROS,
                "observe_time",
                format!(
                    "{} is more than 5 minutes in the future (the server's time is {})",
                    domain::rfc3339(t),
                    domain::rfc3339(now)
                ),
            )
            .map(|()| t)
        }),
    };
    let (model, version, metric, (), observe_time) = domain::all((
        Name::parse("model", &r.model),
        domain::parse_version_number("version", r.version),
        domain::parse_short_text("metric", &r.metric),
        require(
            r.value.is_finite(),
            "value",
            format!("must be a finite number; got {}", r.value),
        ),
        observe_time,
    ))?;
    Ok(LiveObservation {
        model,
        version,
        metric,
        value: r.value,
        observe_time,
    })
}

impl TryFrom<pb::ReportWorkerFailureRequest> for WorkerFailure {
    type Error = Error;

    fn try_from(r: pb::ReportWorkerFailureRequest) -> Result<WorkerFailure> {
        let error = domain::parse_text("error", &r.error).and_then(|e| {
            require(
                !e.trim().is_empty(),
                "error",
                "is required: say what went wrong",
            )
            .map(|()| e)
        });
        let (model, version, worker, (), error, (), request_id) = domain::all((
            Name::parse("model", &r.model),
            domain::parse_version_number("version", r.version),
            domain::parse_short_text("worker", &r.worker),
            require(
                r.event_sequence != 0,
                "event_sequence",
                "is required: the sequence of the event the worker was handling",
            ),
            error,
            require(
                r.attempts >= 1,
                "attempts",
                format!("must be at least 1; got {}", r.attempts),
            ),
            domain::parse_request_id("request_id", &r.request_id),
        ))?;
        Ok(WorkerFailure {
            model,
            version,
            worker,
            event_sequence: r.event_sequence,
            error,
            attempts: r.attempts as u32,
            request_id,
        })
    }
}

impl TryFrom<pb::TransitionStageRequest> for StageChange {
    type Error = Error;

    fn try_from(r: pb::TransitionStageRequest) -> Result<StageChange> {
        let (model, version, target, comment, etag) = domain::all((
            Name::parse("model", &r.model),
            domain::parse_version_number("version", r.version),
            parse_stage_field("target_stage", r.target_stage),
            domain::parse_text("comment", &r.comment),
            domain::parse_etag("etag", &r.etag),
        ))?;
        Ok(StageChange {
            model,
            version,
            target,
            comment,
            etag,
        })
    }
}

/// Reports the request's own field names, not those of the nested message.
fn unnest(prefix: &str, e: Error) -> Error {
    match e {
        Error::InvalidArgument(mut vs) => {
            for x in &mut vs {
                x.field = x.field.trim_start_matches(prefix).to_owned();
            }
            Error::InvalidArgument(vs)
        }
        other => other,
    }
}

impl TryFrom<pb::CreateEvaluationSetRequest> for EvaluationSet {
    type Error = Error;

    fn try_from(r: pb::CreateEvaluationSetRequest) -> Result<EvaluationSet> {
        let (id, uri, digest, metrics, description) = domain::all((
            SetRef::parse("evaluation_set", &r.name, &r.version)
                .map_err(|e| unnest("evaluation_set.", e)),
            domain::parse_artifact_uri("uri", &r.uri),
            domain::parse_required_digest("digest", &r.digest),
            evaluation::parse_definitions("metrics", convert::definitions_from_pb(r.metrics)),
            domain::parse_text("description", &r.description),
        ))?;
        Ok(EvaluationSet {
            id,
            uri,
            digest,
            metrics,
            description,
            created_by: String::new(),
            create_time: 0,
        })
    }
}

impl TryFrom<pb::AttachEvaluationRequest> for NewEvaluation {
    type Error = Error;

    fn try_from(r: pb::AttachEvaluationRequest) -> Result<NewEvaluation> {
        let (model, version, set, evaluator_version, metrics, report_uri, request_id) =
            domain::all((
                Name::parse("model", &r.model),
                domain::parse_version_number("version", r.version),
                required_set_ref("evaluation_set", r.evaluation_set.as_ref()),
                domain::parse_evaluator_version("evaluator_version", &r.evaluator_version),
                domain::parse_metrics("metrics", &to_btree(&r.metrics)),
                domain::parse_optional_uri("report_uri", &r.report_uri),
                domain::parse_request_id("request_id", &r.request_id),
            ))?;
        Ok(NewEvaluation {
            evaluation: Evaluation {
                model: model.to_string(),
                version,
                set,
                evaluator_version,
                metrics,
                report_uri,
                created_by: String::new(),
                create_time: 0,
            },
            request_id,
        })
    }
}

impl TryFrom<pb::CompareVersionsRequest> for CompareRequest {
    type Error = Error;

    fn try_from(r: pb::CompareVersionsRequest) -> Result<CompareRequest> {
        let evaluator_version = match r.evaluator_version.as_str() {
            "" => Ok(None),
            raw => domain::parse_evaluator_version("evaluator_version", raw).map(Some),
        };
        let (model, candidate, (), set, evaluator_version) = domain::all((
            Name::parse("model", &r.model),
            domain::parse_version_number("candidate_version", r.candidate_version),
            require(
                r.baseline_version >= 0,
                "baseline_version",
                "must be 0 (the production version) or a version number",
            ),
            parse_set_ref("evaluation_set", r.evaluation_set.as_ref()),
            evaluator_version,
        ))?;
        Ok(CompareRequest {
            model,
            candidate,
            baseline: r.baseline_version,
            set,
            evaluator_version,
        })
    }
}

/// GetVersion: the model and which of its versions, by number or by alias
/// (exactly one of the two).
pub(super) fn get_version(r: pb::GetVersionRequest) -> Result<(Name, VersionRef)> {
    let model = Name::parse("model", &r.model);
    let which = match (r.version, r.alias.is_empty()) {
        (0, true) => Err(Error::invalid(
            "version",
            "give a version number (1, 2, …) or an alias",
        )),
        (n, true) => domain::parse_version_number("version", n).map(VersionRef::Number),
        (0, false) => AliasName::parse("alias", &r.alias).map(VersionRef::Alias),
        (_, false) => Err(Error::invalid(
            "alias",
            "give either a version number or an alias, not both",
        )),
    };
    domain::all((model, which))
}

/// SetAlias: the model, the alias and the version it is to point at.
pub(super) fn set_alias(r: pb::SetAliasRequest) -> Result<(Name, AliasName, i64)> {
    domain::all((
        Name::parse("model", &r.model),
        AliasName::parse("alias", &r.alias),
        domain::parse_version_number("version", r.version),
    ))
}

/// DeleteAlias: the model and the alias to remove.
pub(super) fn delete_alias(r: pb::DeleteAliasRequest) -> Result<(Name, AliasName)> {
    domain::all((
        Name::parse("model", &r.model),
        AliasName::parse("alias", &r.alias),
    ))
}

/// Rollback by `caller`: the model, the version to restore (0: the previous
/// production version) and why, which is required.
pub(super) fn rollback(r: pb::RollbackRequest, caller: Caller) -> Result<RollbackOrder> {
    let reason = domain::parse_text("reason", &r.reason).and_then(|reason| {
        require(
            !reason.trim().is_empty(),
            "reason",
            "is required: say why production is rolled back",
        )
        .map(|()| reason)
    });
    let (model, (), reason) = domain::all((
        Name::parse("model", &r.model),
        require(
            r.version >= 0,
            "version",
            "must be a version number, or 0 for the previous production version",
        ),
        reason,
    ))?;
    Ok(RollbackOrder {
        model,
        version: r.version,
        reason,
        caller,
    })
}

/// GetEvaluationSet: the set's name and version.
pub(super) fn get_evaluation_set(r: pb::GetEvaluationSetRequest) -> Result<SetRef> {
    let (name, version) = domain::all((
        Name::parse("name", &r.name),
        domain::parse_set_version("version", &r.version),
    ))?;
    Ok(SetRef {
        name: name.to_string(),
        version,
    })
}
