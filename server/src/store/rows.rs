//! The rows the statements read, each next to the column list that selects
//! it, and their conversion into domain types. One struct serves both
//! engines: `#[derive(sqlx::FromRow)]` decodes from either's rows.
//!
//! A conversion refuses what the schema does not allow (an unknown stage, a
//! JSON column that does not parse) as an internal error; it must not decide
//! anything else, nor run a statement.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::domain::TransitionRequest;
use crate::domain::{
    Cause, Deployment, DeploymentStatus, Evaluation, EvaluationSet, Event, EventKind, Model,
    SetRef, Stage, Version,
};
use crate::domain::{Observation, Readings, RequestStatus, StageSince, StageStep};
use crate::error::{Error, Result};
use crate::store::StoredRequest;
use crate::store::sql::{Engine, json_err};

/// Converts every row.
pub fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

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
const MODEL_COLUMNS: &str = r#"
SELECT m.name, m.description, m.tags, m.policy, m.revision, m.latest_version, m.created_by, m.create_time, m.update_time,
       COALESCE((SELECT v.version FROM versions v WHERE v.model = m.name AND v.stage = 'PRODUCTION'), 0)
           AS production_version,"#;

/// A model select with `DB`'s aggregates, before its WHERE.
pub fn model_select<DB: Engine>() -> String {
    format!(
        "{MODEL_COLUMNS} {} AS aliases, {} AS deployments FROM models m",
        DB::MODEL_ALIASES,
        DB::MODEL_DEPLOYMENTS
    )
}

/// A model with its aliases and its production deployments as JSON.
#[derive(sqlx::FromRow, Deserialize)]
pub struct ModelRow {
    /// Its unique name.
    name: String,
    /// Free text.
    description: String,
    /// Its labels as a JSON object (`model_tags` indexes them for filters).
    tags: String,
    /// Its policy as JSON bytes; NULL for a model created before policies.
    policy: Option<Vec<u8>>,
    /// The etag.
    revision: i64,
    /// The highest version number assigned.
    latest_version: i64,
    /// The version in PRODUCTION, 0 when none.
    production_version: i64,
    /// Alias → version as a JSON object.
    aliases: String,
    /// The production version's deployments as a JSON array.
    deployments: String,
    /// Who created it.
    created_by: String,
    /// When it was created (µs).
    create_time: i64,
    /// When it last changed (µs).
    update_time: i64,
}

impl TryFrom<ModelRow> for Model {
    type Error = Error;

    /// Refuses JSON columns that do not parse.
    fn try_from(row: ModelRow) -> Result<Model> {
        let deployments = deployments(&row.deployments, &row.name)?;
        Ok(Model {
            name: row.name,
            description: row.description,
            tags: json(&row.tags)?,
            revision: row.revision,
            latest_version: row.latest_version,
            production_version: row.production_version,
            aliases: json::<Option<BTreeMap<String, i64>>>(&row.aliases)?.unwrap_or_default(),
            policy: match row.policy {
                Some(bytes) => serde_json::from_slice(&bytes).map_err(json_err)?,
                None => Default::default(),
            },
            created_by: row.created_by,
            create_time: row.create_time,
            update_time: row.update_time,
            deployments,
        })
    }
}

/// The SELECT list of a version, before the engine's aggregates
/// ([`super::sql::Engine::VERSION_ALIASES`] and the others of `v`).
const VERSION_COLUMNS: &str = r#"
SELECT v.model, v.version, v.artifact_uri, v.artifact_digest, v.source, v.training_metrics, v.tags,
       v.description, v.stage, v.revision, v.created_by, v.create_time, v.update_time, v.stage_update_time,"#;

/// A version select with `DB`'s aggregates, before its WHERE.
pub fn version_select<DB: Engine>() -> String {
    format!(
        "{VERSION_COLUMNS} {} AS aliases, {} AS evaluations, {} AS deployments FROM versions v",
        DB::VERSION_ALIASES,
        DB::VERSION_EVALUATIONS,
        DB::VERSION_DEPLOYMENTS
    )
}

/// A version with its aliases, evaluations and deployments as JSON.
#[derive(sqlx::FromRow, Deserialize)]
pub struct VersionRow {
    /// The model's name.
    model: String,
    /// The version number.
    version: i64,
    /// Where the artifact lives.
    artifact_uri: String,
    /// The artifact's digest, or empty.
    artifact_digest: String,
    /// Where it came from, as a JSON object.
    source: String,
    /// Training metrics as a JSON object.
    training_metrics: String,
    /// Labels as a JSON object.
    tags: String,
    /// Free text.
    description: String,
    /// Its stage, by name.
    stage: String,
    /// The etag.
    revision: i64,
    /// Who registered it.
    created_by: String,
    /// When it was registered (µs).
    create_time: i64,
    /// When it last changed (µs).
    update_time: i64,
    /// When it entered its stage (µs).
    stage_update_time: i64,
    /// The aliases pointing at it, as a sorted JSON array.
    aliases: String,
    /// Its evaluations as a JSON array, oldest first.
    evaluations: String,
    /// Its deployments as a JSON array, in environment order.
    deployments: String,
}

/// One evaluation as a version select aggregates it into JSON.
#[derive(Deserialize)]
struct EvaluationJson {
    /// The evaluation set's name.
    set_name: String,
    /// The evaluation set's version.
    set_version: String,
    /// The version of the metric code.
    evaluator_version: String,
    /// Metric values.
    metrics: BTreeMap<String, f64>,
    /// Where a full report lives.
    report_uri: String,
    /// Who attached it.
    created_by: String,
    /// When (µs).
    create_time: i64,
}

impl TryFrom<VersionRow> for Version {
    type Error = Error;

    /// Refuses an unknown stage and JSON columns that do not parse.
    fn try_from(row: VersionRow) -> Result<Version> {
        let evaluations = json::<Vec<EvaluationJson>>(&row.evaluations)?
            .into_iter()
            .map(|e| Evaluation {
                model: row.model.clone(),
                version: row.version,
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
        let deployments = deployments(&row.deployments, &row.model)?;
        Ok(Version {
            model: row.model,
            version: row.version,
            artifact_uri: row.artifact_uri,
            artifact_digest: row.artifact_digest,
            source: json(&row.source)?,
            training_metrics: json(&row.training_metrics)?,
            tags: json(&row.tags)?,
            description: row.description,
            stage: stage(&row.stage)?,
            aliases: json::<Option<Vec<String>>>(&row.aliases)?.unwrap_or_default(),
            revision: row.revision,
            created_by: row.created_by,
            create_time: row.create_time,
            update_time: row.update_time,
            stage_update_time: row.stage_update_time,
            evaluations,
            deployments,
        })
    }
}

/// One deployment as a model or version select aggregates it into JSON.
#[derive(Deserialize)]
struct DeploymentJson {
    /// The version deployed.
    version: i64,
    /// Where.
    environment: String,
    /// The reported state.
    status: DeploymentStatus,
    /// Where it serves, if known.
    endpoint: String,
    /// Detail from the worker.
    message: String,
    /// Who reported.
    reported_by: String,
    /// When (µs).
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
    /// Its gap-free position (stored as i64).
    sequence: i64,
    /// What happened, by name (the column is `type`, a Rust keyword).
    #[sqlx(rename = "type")]
    #[serde(rename = "type")]
    kind: String,
    /// The model.
    model: String,
    /// The version, 0 for model-level events.
    version: i64,
    /// Stage left, by name.
    from_stage: Option<String>,
    /// Stage entered, by name.
    to_stage: Option<String>,
    /// Why a stage changed, by name.
    cause: Option<String>,
    /// Who caused it.
    actor: String,
    /// The call's comment.
    comment: String,
    /// Commit time (µs).
    occur_time: i64,
    /// Details as JSON text (hashed as stored).
    details: String,
    /// The transition request concerned.
    transition_request_id: String,
    /// The previous event's hash.
    prev_hash: String,
    /// This event's hash.
    hash: String,
}

impl TryFrom<EventRow> for Event {
    type Error = Error;

    /// Refuses an unknown type, stage or cause, and details that do not parse.
    fn try_from(row: EventRow) -> Result<Event> {
        Ok(Event {
            sequence: row.sequence as u64,
            kind: EventKind::from_db(&row.kind)
                .ok_or_else(|| Error::Internal(format!("unknown event type {:?}", row.kind)))?,
            model: row.model,
            version: row.version,
            from_stage: maybe_stage(row.from_stage)?,
            to_stage: maybe_stage(row.to_stage)?,
            cause: row
                .cause
                .map(|c| {
                    Cause::from_db(&c)
                        .ok_or_else(|| Error::Internal(format!("unknown cause {c:?}")))
                })
                .transpose()?,
            actor: row.actor,
            comment: row.comment,
            occur_time: row.occur_time,
            details: json(&row.details)?,
            transition_request_id: row.transition_request_id,
            prev_hash: row.prev_hash,
            hash: row.hash,
        })
    }
}

/// One stage change of a model's history (a STAGE_CHANGED event).
#[derive(sqlx::FromRow, Deserialize)]
pub struct StageStepRow {
    /// The version moved.
    version: i64,
    /// Where it went, by name.
    to_stage: Option<String>,
    /// Why, by name.
    cause: Option<String>,
}

impl TryFrom<StageStepRow> for StageStep {
    type Error = Error;

    /// Refuses a stage change without a target stage.
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
#[derive(sqlx::FromRow, Deserialize)]
pub struct RequestRow {
    /// The model.
    model: String,
    /// Its number within the model.
    number: i64,
    /// The version to move.
    version: i64,
    /// Its stage when requested, by name.
    from_stage: String,
    /// Where it goes when approved, by name.
    to_stage: String,
    /// Whether it is a rollback waiting for approval.
    rollback: bool,
    /// Who asked.
    requester: String,
    /// Their comment.
    comment: String,
    /// Gate results at request time, as a JSON array.
    gate_results: String,
    /// Approvals so far, as a JSON array.
    approvals: String,
    /// Its status, by name.
    status: String,
    /// When it was asked for (µs).
    create_time: i64,
    /// When it last changed (µs).
    update_time: i64,
    /// Who closed it.
    resolved_by: String,
    /// The closing comment.
    resolution_comment: String,
}

impl TryFrom<RequestRow> for TransitionRequest {
    type Error = Error;

    /// Refuses an unknown stage or status and JSON that does not parse.
    fn try_from(row: RequestRow) -> Result<TransitionRequest> {
        Ok(TransitionRequest {
            model: row.model,
            number: row.number,
            version: row.version,
            from_stage: stage(&row.from_stage)?,
            to_stage: stage(&row.to_stage)?,
            rollback: row.rollback,
            requester: row.requester,
            comment: row.comment,
            gate_results: json(&row.gate_results)?,
            approvals: json(&row.approvals)?,
            status: RequestStatus::from_db(&row.status).ok_or_else(|| {
                Error::Internal(format!("unknown request status {:?}", row.status))
            })?,
            create_time: row.create_time,
            update_time: row.update_time,
            resolved_by: row.resolved_by,
            resolution_comment: row.resolution_comment,
        })
    }
}

/// An earlier request with the same request id.
#[derive(sqlx::FromRow, Deserialize)]
pub struct StoredRequestRow {
    /// The digest of what it asked for.
    fingerprint: String,
    /// The model it concerned.
    model: String,
    /// The version it created, 0 for model-level requests.
    version: i64,
    /// Its first answer as JSON, where that cannot be read back.
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
#[derive(sqlx::FromRow, Deserialize)]
pub struct EvaluationSetRow {
    /// The set's name.
    name: String,
    /// The set's version.
    version: String,
    /// Where the data lives.
    uri: String,
    /// The data's content digest.
    digest: String,
    /// Its metric definitions as a JSON array, in definition order.
    metrics: String,
    /// Free text.
    description: String,
    /// Who created it.
    created_by: String,
    /// When (µs).
    create_time: i64,
}

impl TryFrom<EvaluationSetRow> for EvaluationSet {
    type Error = Error;

    /// Refuses metric definitions that do not parse.
    fn try_from(row: EvaluationSetRow) -> Result<EvaluationSet> {
        let id = SetRef {
            name: row.name,
            version: row.version,
        };
        Ok(EvaluationSet {
            id,
            uri: row.uri,
            digest: row.digest,
            metrics: json(&row.metrics)?,
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
#[derive(sqlx::FromRow, Deserialize)]
pub struct EvaluationRow {
    /// The model.
    model: String,
    /// The version evaluated.
    version: i64,
    /// The evaluation set's name.
    set_name: String,
    /// The evaluation set's version.
    set_version: String,
    /// The version of the metric code.
    evaluator_version: String,
    /// Metric values as a JSON object.
    metrics: String,
    /// Where a full report lives.
    report_uri: String,
    /// Who attached it.
    created_by: String,
    /// When (µs).
    create_time: i64,
}

impl TryFrom<EvaluationRow> for Evaluation {
    type Error = Error;

    /// Refuses metric values that do not parse.
    fn try_from(row: EvaluationRow) -> Result<Evaluation> {
        let metrics = json(&row.metrics)?;
        Ok(Evaluation {
            model: row.model,
            version: row.version,
            set: SetRef {
                name: row.set_name,
                version: row.set_version,
            },
            evaluator_version: row.evaluator_version,
            metrics,
            report_uri: row.report_uri,
            created_by: row.created_by,
            create_time: row.create_time,
        })
    }
}

/// A version's stage and when it entered it.
#[derive(sqlx::FromRow, Deserialize)]
pub struct StageSinceRow {
    /// The version.
    version: i64,
    /// Its stage, by name.
    stage: String,
    /// When it entered that stage (µs).
    stage_update_time: i64,
}

impl TryFrom<StageSinceRow> for StageSince {
    type Error = Error;

    /// Refuses an unknown stage.
    fn try_from(row: StageSinceRow) -> Result<StageSince> {
        Ok(StageSince {
            version: row.version,
            stage: stage(&row.stage)?,
            since: row.stage_update_time,
        })
    }
}

/// The live monitor's readings of one metric in one statement (see
/// [`crate::domain::Readings`]). Parameters: $1 model, $2 version,
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
#[derive(sqlx::FromRow, Deserialize)]
pub struct ReadingsRow {
    /// The latest observation at or before `now - window`: when…
    anchor_time: Option<i64>,
    /// …and its value.
    anchor_value: Option<f64>,
    /// The latest observation: when…
    latest_time: Option<i64>,
    /// …and its value.
    latest_value: Option<f64>,
    /// Observations later than `now - window`.
    in_window: i64,
    /// Of those, the good ones.
    good_in_window: i64,
    /// When the current bad run began.
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
