//! The rows the statements read, each next to the column list that selects
//! it, and their conversion into domain types. One struct serves both
//! engines: `#[derive(sqlx::FromRow)]` decodes from either's rows.
//!
//! A conversion refuses what the schema does not allow (an unknown stage, a
//! JSON column that does not parse) as an internal error; it must not decide
//! anything else, nor run a statement.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::{
    Cause, Deployment, DeploymentStatus, Evaluation, EvaluationSet, Event, EventKind, Model,
    SetRef, Stage, Version,
};
use crate::error::{Error, Result};
use crate::governance::TransitionRequest;
use crate::governance::{Observation, Readings, RequestStatus, StageSince, StageStep};
use crate::store::StoredRequest;
use crate::store::sql::json_err;

/// Parses a JSON text column.
fn json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T> {
    serde_json::from_str(text).map_err(json_err)
}

/// Parses a stage column.
fn stage(s: &str) -> Result<Stage> {
    Stage::from_db(s).ok_or_else(|| Error::Internal(format!("unknown stage {s:?} in database")))
}

/// Parses a nullable stage column.
fn maybe_stage(s: Option<String>) -> Result<Option<Stage>> {
    s.as_deref().map(stage).transpose()
}

/// The SELECT list of a model, before the engine's aggregates
/// ([`super::sql::Engine::MODEL_ALIASES`], `MODEL_DEPLOYMENTS`).
pub const MODEL_COLUMNS: &str = r#"
SELECT m.name, m.description, m.tags, m.policy, m.revision, m.latest_version, m.created_by, m.create_time, m.update_time,
       COALESCE((SELECT v.version FROM versions v WHERE v.model = m.name AND v.stage = 'PRODUCTION'), 0)
           AS production_version,"#;

/// A model with its aliases and its production deployments as JSON.
#[derive(sqlx::FromRow)]
pub struct ModelRow {
    name: String,
    description: String,
    tags: String,
    policy: Option<Vec<u8>>,
    revision: i64,
    latest_version: i64,
    production_version: i64,
    aliases: String,
    deployments: String,
    created_by: String,
    create_time: i64,
    update_time: i64,
}

impl TryFrom<ModelRow> for Model {
    type Error = Error;

    fn try_from(row: ModelRow) -> Result<Model> {
        Ok(Model {
            deployments: deployments(&row.deployments, &row.name)?,
            aliases: json::<Option<BTreeMap<String, i64>>>(&row.aliases)?.unwrap_or_default(),
            tags: json(&row.tags)?,
            policy: match row.policy {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(json_err)?,
                None => Default::default(),
            },
            name: row.name,
            description: row.description,
            revision: row.revision,
            latest_version: row.latest_version,
            production_version: row.production_version,
            created_by: row.created_by,
            create_time: row.create_time,
            update_time: row.update_time,
        })
    }
}

/// The SELECT list of a version, before the engine's aggregates
/// ([`super::sql::Engine::VERSION_ALIASES`] and the others of `v`).
pub const VERSION_COLUMNS: &str = r#"
SELECT v.model, v.version, v.artifact_uri, v.artifact_digest, v.source, v.training_metrics, v.tags,
       v.description, v.stage, v.revision, v.created_by, v.create_time, v.update_time, v.stage_update_time,"#;

/// A version with its aliases, evaluations and deployments as JSON.
#[derive(sqlx::FromRow)]
pub struct VersionRow {
    model: String,
    version: i64,
    artifact_uri: String,
    artifact_digest: String,
    source: String,
    training_metrics: String,
    tags: String,
    description: String,
    stage: String,
    revision: i64,
    created_by: String,
    create_time: i64,
    update_time: i64,
    stage_update_time: i64,
    aliases: String,
    evaluations: String,
    deployments: String,
}

/// One evaluation as a version select aggregates it into JSON.
#[derive(Deserialize)]
struct EvaluationJson {
    set_name: String,
    set_version: String,
    evaluator_version: String,
    metrics: BTreeMap<String, f64>,
    report_uri: String,
    created_by: String,
    create_time: i64,
}

impl TryFrom<VersionRow> for Version {
    type Error = Error;

    fn try_from(row: VersionRow) -> Result<Version> {
        let (model, version) = (row.model, row.version);
        let evaluations = json::<Vec<EvaluationJson>>(&row.evaluations)?
            .into_iter()
            .map(|e| Evaluation {
                model: model.clone(),
                version,
                set: SetRef {
                    name: e.set_name,
                    version: e.set_version,
                },
                evaluator_version: e.evaluator_version,
                metrics: e.metrics,
                report_uri: e.report_uri,
                created_by: e.created_by,
                create_time: e.create_time,
            })
            .collect();
        Ok(Version {
            deployments: deployments(&row.deployments, &model)?,
            evaluations,
            source: json(&row.source)?,
            training_metrics: json(&row.training_metrics)?,
            tags: json(&row.tags)?,
            stage: stage(&row.stage)?,
            aliases: json::<Option<Vec<String>>>(&row.aliases)?.unwrap_or_default(),
            model,
            version,
            artifact_uri: row.artifact_uri,
            artifact_digest: row.artifact_digest,
            description: row.description,
            revision: row.revision,
            created_by: row.created_by,
            create_time: row.create_time,
            update_time: row.update_time,
            stage_update_time: row.stage_update_time,
        })
    }
}

/// One deployment as a model or version select aggregates it into JSON.
#[derive(Deserialize)]
struct DeploymentJson {
    version: i64,
    environment: String,
    status: DeploymentStatus,
    endpoint: String,
    message: String,
    reported_by: String,
    report_time: i64,
}

/// The deployments of `model` in a JSON aggregate column.
fn deployments(text: &str, model: &str) -> Result<Vec<Deployment>> {
    Ok(json::<Vec<DeploymentJson>>(text)?
        .into_iter()
        .map(|d| Deployment {
            model: model.to_owned(),
            version: d.version,
            environment: d.environment,
            status: d.status,
            endpoint: d.endpoint,
            message: d.message,
            reported_by: d.reported_by,
            report_time: d.report_time,
        })
        .collect())
}

/// The columns of `events`, in the order an INSERT binds them.
pub const EVENT_COLUMNS: &str = "sequence, type, model, version, from_stage, to_stage, cause, actor, comment, \
     occur_time, details, transition_request_id, prev_hash, hash";

/// An event of the log. It also deserializes from the JSON object of a page
/// read as one row ([`super::sql::Engine::EVENT_PAGE_AS_JSON`]), whose keys
/// are the column names.
#[derive(sqlx::FromRow, Deserialize)]
pub struct EventRow {
    sequence: i64,
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    kind: String,
    model: String,
    version: i64,
    from_stage: Option<String>,
    to_stage: Option<String>,
    cause: Option<String>,
    actor: String,
    comment: String,
    occur_time: i64,
    details: String,
    transition_request_id: String,
    prev_hash: String,
    hash: String,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Event> {
        Ok(Event {
            sequence: row.sequence as u64,
            kind: EventKind::from_db(&row.kind)
                .ok_or_else(|| Error::Internal(format!("unknown event type {:?}", row.kind)))?,
            from_stage: maybe_stage(row.from_stage)?,
            to_stage: maybe_stage(row.to_stage)?,
            cause: row
                .cause
                .map(|c| {
                    Cause::from_db(&c)
                        .ok_or_else(|| Error::Internal(format!("unknown cause {c:?}")))
                })
                .transpose()?,
            details: json(&row.details)?,
            model: row.model,
            version: row.version,
            actor: row.actor,
            comment: row.comment,
            occur_time: row.occur_time,
            transition_request_id: row.transition_request_id,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

/// One stage change of a model's history (a STAGE_CHANGED event).
#[derive(sqlx::FromRow)]
pub struct StageStepRow {
    version: i64,
    to_stage: Option<String>,
    cause: Option<String>,
}

impl TryFrom<StageStepRow> for StageStep {
    type Error = Error;

    fn try_from(row: StageStepRow) -> Result<StageStep> {
        Ok(StageStep {
            version: row.version,
            to: row
                .to_stage
                .as_deref()
                .and_then(Stage::from_db)
                .ok_or_else(|| Error::Internal("stage change without a stage".into()))?,
            // A cause this build does not know reads as none: history only
            // steers the choice of a rollback target.
            cause: row.cause.as_deref().and_then(Cause::from_db),
        })
    }
}

/// The columns of a transition request, in insert order.
pub const REQUEST_COLUMNS: &str = "model, number, version, from_stage, to_stage, rollback, requester, comment, \
     gate_results, approvals, status, create_time, update_time, resolved_by, resolution_comment";

/// A transition request, its gate results and approvals as JSON.
#[derive(sqlx::FromRow)]
pub struct RequestRow {
    model: String,
    number: i64,
    version: i64,
    from_stage: String,
    to_stage: String,
    rollback: bool,
    requester: String,
    comment: String,
    gate_results: String,
    approvals: String,
    status: String,
    create_time: i64,
    update_time: i64,
    resolved_by: String,
    resolution_comment: String,
}

impl TryFrom<RequestRow> for TransitionRequest {
    type Error = Error;

    fn try_from(row: RequestRow) -> Result<TransitionRequest> {
        Ok(TransitionRequest {
            from_stage: stage(&row.from_stage)?,
            to_stage: stage(&row.to_stage)?,
            gate_results: json(&row.gate_results)?,
            approvals: json(&row.approvals)?,
            status: RequestStatus::from_db(&row.status).ok_or_else(|| {
                Error::Internal(format!("unknown request status {:?}", row.status))
            })?,
            model: row.model,
            number: row.number,
            version: row.version,
            rollback: row.rollback,
            requester: row.requester,
            comment: row.comment,
            create_time: row.create_time,
            update_time: row.update_time,
            resolved_by: row.resolved_by,
            resolution_comment: row.resolution_comment,
        })
    }
}

/// An earlier request with the same request id.
#[derive(sqlx::FromRow)]
pub struct StoredRequestRow {
    fingerprint: String,
    model: String,
    version: i64,
    response: Option<String>,
}

impl From<StoredRequestRow> for StoredRequest {
    fn from(row: StoredRequestRow) -> StoredRequest {
        StoredRequest {
            fingerprint: row.fingerprint,
            model: row.model,
            version: row.version,
            response: row.response,
        }
    }
}

/// The columns of an evaluation set, in insert order.
pub const EVALUATION_SET_COLUMNS: &str =
    "name, version, uri, digest, metrics, description, created_by, create_time";

/// An evaluation set version, its metric definitions as JSON.
#[derive(sqlx::FromRow)]
pub struct EvaluationSetRow {
    name: String,
    version: String,
    uri: String,
    digest: String,
    metrics: String,
    description: String,
    created_by: String,
    create_time: i64,
}

impl TryFrom<EvaluationSetRow> for EvaluationSet {
    type Error = Error;

    fn try_from(row: EvaluationSetRow) -> Result<EvaluationSet> {
        Ok(EvaluationSet {
            id: SetRef {
                name: row.name,
                version: row.version,
            },
            metrics: json(&row.metrics)?,
            uri: row.uri,
            digest: row.digest,
            description: row.description,
            created_by: row.created_by,
            create_time: row.create_time,
        })
    }
}

/// The columns of an evaluation, in insert order.
pub const EVALUATION_COLUMNS: &str = "model, version, set_name, set_version, evaluator_version, \
     metrics, report_uri, created_by, create_time";

/// An evaluation, its metric values as JSON.
#[derive(sqlx::FromRow)]
pub struct EvaluationRow {
    model: String,
    version: i64,
    set_name: String,
    set_version: String,
    evaluator_version: String,
    metrics: String,
    report_uri: String,
    created_by: String,
    create_time: i64,
}

impl TryFrom<EvaluationRow> for Evaluation {
    type Error = Error;

    fn try_from(row: EvaluationRow) -> Result<Evaluation> {
        Ok(Evaluation {
            set: SetRef {
                name: row.set_name,
                version: row.set_version,
            },
            metrics: json(&row.metrics)?,
            model: row.model,
            version: row.version,
            evaluator_version: row.evaluator_version,
            report_uri: row.report_uri,
            created_by: row.created_by,
            create_time: row.create_time,
        })
    }
}

/// A version's stage and when it entered it.
#[derive(sqlx::FromRow)]
pub struct StageSinceRow {
    version: i64,
    stage: String,
    stage_update_time: i64,
}

impl TryFrom<StageSinceRow> for StageSince {
    type Error = Error;

    fn try_from(row: StageSinceRow) -> Result<StageSince> {
        Ok(StageSince {
            version: row.version,
            stage: stage(&row.stage)?,
            since: row.stage_update_time,
        })
    }
}

/// The live monitor's readings of one metric in one statement (see
/// [`crate::governance::Readings`]). Parameters: $1 model, $2 version,
/// $3 metric, $4 since (entry into production), $5 now − window, $6 now,
/// $7 the sign that makes "good" mean `value * $7 >= $8`, $8 threshold × $7,
/// $9 since − 1. Every subquery walks the live_metrics primary key.
pub const LIVE_READINGS: &str = r#"
SELECT
  (SELECT observe_time FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $5 ORDER BY observe_time DESC LIMIT 1) AS anchor_time,
  (SELECT value FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $5 ORDER BY observe_time DESC LIMIT 1) AS anchor_value,
  (SELECT observe_time FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6 ORDER BY observe_time DESC LIMIT 1) AS latest_time,
  (SELECT value FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6 ORDER BY observe_time DESC LIMIT 1) AS latest_value,
  (SELECT COUNT(*) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time > $5 AND observe_time <= $6) AS in_window,
  (SELECT COUNT(*) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time > $5 AND observe_time <= $6 AND value * $7 >= $8) AS good_in_window,
  (SELECT MIN(observe_time) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6
     AND observe_time > COALESCE((SELECT MAX(observe_time) FROM live_metrics
         WHERE model = $1 AND version = $2 AND metric = $3
           AND observe_time >= $4 AND observe_time <= $6 AND value * $7 >= $8), $9)) AS bad_since
"#;

/// The row of [`LIVE_READINGS`].
#[derive(sqlx::FromRow)]
pub struct ReadingsRow {
    anchor_time: Option<i64>,
    anchor_value: Option<f64>,
    latest_time: Option<i64>,
    latest_value: Option<f64>,
    in_window: i64,
    good_in_window: i64,
    bad_since: Option<i64>,
}

impl From<ReadingsRow> for Readings {
    fn from(row: ReadingsRow) -> Readings {
        let observation = |time: Option<i64>, value: Option<f64>| {
            time.zip(value)
                .map(|(time, value)| Observation { time, value })
        };
        Readings {
            anchor: observation(row.anchor_time, row.anchor_value),
            in_window: row.in_window as u64,
            good_in_window: row.good_in_window as u64,
            latest: observation(row.latest_time, row.latest_value),
            bad_since: row.bad_since,
        }
    }
}
