//! Models, versions and what is reported about them (deployments, worker
//! failures, live metrics), as stored and as checked requests.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use strum::{Display, EnumString, IntoStaticStr};

use crate::error::Result;

use super::*;

/// Where a version came from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Source {
    /// The commit.
    pub commit: String,
    /// The pipeline run's URL.
    pub pipeline_url: String,
    /// The training run id.
    pub run_id: String,
    /// The repository.
    pub repository: String,
    /// Where an imported version came from (`mlflow:URL/NAME/VERSION`);
    /// empty for a version registered here. Left out of the stored JSON
    /// when empty, so the rows, events and request fingerprints of
    /// registered versions read as before.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub imported_from: String,
    /// When an imported version was created where it came from, µs since
    /// the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_create_time: Option<i64>,
}

impl Source {
    /// Checks each field against [`MAX_TEXT_BYTES`].
    pub fn parse(field: &str, raw: Source) -> Result<Source> {
        let mut v = Violations::default();
        v.take(parse_text(&format!("{field}.commit"), &raw.commit));
        v.take(parse_link(
            &format!("{field}.pipeline_url"),
            &raw.pipeline_url,
        ));
        v.take(parse_text(&format!("{field}.run_id"), &raw.run_id));
        v.take(parse_text(&format!("{field}.repository"), &raw.repository));
        v.take(parse_text(
            &format!("{field}.imported_from"),
            &raw.imported_from,
        ));
        v.finish()?;
        Ok(raw)
    }
}

/// A model as stored.
#[derive(Debug, Clone)]
pub struct Model {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// Bumped by every change; the etag.
    pub revision: i64,
    /// Highest version number assigned.
    pub latest_version: i64,
    /// The version in production, 0 when none.
    pub production_version: i64,
    /// Alias → version.
    pub aliases: BTreeMap<String, i64>,
    /// The policy as set (defaults not filled in).
    pub policy: crate::domain::Policy,
    /// Who created it.
    pub created_by: String,
    /// Microseconds since the Unix epoch.
    pub create_time: i64,
    /// Microseconds since the Unix epoch.
    pub update_time: i64,
    /// The production version's deployments, one per environment, so
    /// GetModel answers "where does production run?" in one call.
    pub deployments: Vec<Deployment>,
}

/// A model version as stored.
#[derive(Debug, Clone)]
pub struct Version {
    /// The model's name.
    pub model: String,
    /// The version number.
    pub version: i64,
    /// Where the artifact lives.
    pub artifact_uri: String,
    /// The artifact's digest, or empty.
    pub artifact_digest: String,
    /// Where it came from.
    pub source: Source,
    /// Training metrics.
    pub training_metrics: BTreeMap<String, f64>,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// Current stage.
    pub stage: Stage,
    /// Aliases pointing here.
    pub aliases: Vec<String>,
    /// Bumped by every change; the etag.
    pub revision: i64,
    /// Who registered it.
    pub created_by: String,
    /// Microseconds since the Unix epoch.
    pub create_time: i64,
    /// Microseconds since the Unix epoch.
    pub update_time: i64,
    /// When it entered its current stage.
    pub stage_update_time: i64,
    /// Its evaluations, oldest first (filled in by reads that show them).
    pub evaluations: Vec<Evaluation>,
    /// The latest deployment report per environment, in environment order.
    pub deployments: Vec<Deployment>,
}

/// A checked CreateModel.
#[derive(Debug, Clone)]
pub struct NewModel {
    /// The name.
    pub name: Name,
    /// Free text.
    pub description: String,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// The policy, if one is set.
    pub policy: Option<crate::domain::Policy>,
    /// AIP-155 request id.
    pub request_id: Option<String>,
}

impl NewModel {
    /// A digest of what the request asks for, so a reused request id with a
    /// different request is told apart from a retry.
    pub fn fingerprint(&self) -> String {
        digest(serde_json::json!({
            "name": self.name.as_str(),
            "description": self.description,
            "tags": self.tags,
            "policy": self.policy
        }))
    }
}

/// A checked UpdateModel: `None` fields stay as they are.
#[derive(Debug, Clone)]
pub struct ModelUpdate {
    /// The model.
    pub name: Name,
    /// New description.
    pub description: Option<String>,
    /// New tags (replacing all).
    pub tags: Option<BTreeMap<String, String>>,
    /// New policy (replacing the whole policy).
    pub policy: Option<crate::domain::Policy>,
    /// Expected revision.
    pub etag: Option<i64>,
}

/// A checked change of a version's description or tags (what may change of
/// a version besides its stage and aliases).
#[derive(Debug, Clone, PartialEq)]
pub struct VersionUpdate {
    /// The model.
    pub model: Name,
    /// The version number.
    pub version: i64,
    /// New description.
    pub description: Option<String>,
    /// New tags (replacing all).
    pub tags: Option<BTreeMap<String, String>>,
    /// Expected revision.
    pub etag: Option<i64>,
}

/// A checked RegisterVersion.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVersion {
    /// The model.
    pub model: Name,
    /// Artifact location.
    pub artifact_uri: String,
    /// Artifact digest.
    pub artifact_digest: String,
    /// Provenance.
    pub source: Source,
    /// Training metrics.
    pub training_metrics: BTreeMap<String, f64>,
    /// Labels.
    pub tags: BTreeMap<String, String>,
    /// Free text.
    pub description: String,
    /// AIP-155 request id.
    pub request_id: Option<String>,
    /// Stage to enter right after registration (NONE or STAGING).
    pub target_stage: Stage,
}

impl NewVersion {
    /// A digest of everything the request asks for, so a reused request id
    /// with a different request is told apart from a retry.
    pub fn fingerprint(&self) -> String {
        let body = serde_json::json!({
            "artifact_uri": self.artifact_uri,
            "artifact_digest": self.artifact_digest,
            "source": self.source,
            "training_metrics": self.training_metrics,
            "tags": self.tags,
            "description": self.description,
            "target_stage": self.target_stage.as_str(),
        });
        crate::domain::audit::sha256_hex(body.to_string().as_bytes())
    }

    /// The version it registers as number `number`, by `actor` at `now`, in
    /// NONE until a move says otherwise.
    pub fn version(&self, number: i64, actor: &Actor, now: i64) -> Version {
        Version {
            model: self.model.to_string(),
            version: number,
            artifact_uri: self.artifact_uri.clone(),
            artifact_digest: self.artifact_digest.clone(),
            source: self.source.clone(),
            training_metrics: self.training_metrics.clone(),
            tags: self.tags.clone(),
            description: self.description.clone(),
            stage: Stage::None,
            aliases: Vec::new(),
            revision: 1,
            created_by: actor.0.clone(),
            create_time: now,
            update_time: now,
            stage_update_time: now,
            evaluations: Vec::new(),
            deployments: Vec::new(),
        }
    }

    /// The details of its VERSION_REGISTERED event.
    pub fn registered_details(&self) -> serde_json::Value {
        serde_json::json!({
            "artifact_uri": self.artifact_uri,
            "artifact_digest": self.artifact_digest,
            "source": self.source,
            "training_metrics": self.training_metrics,
            "tags": self.tags,
        })
    }
}

/// A checked ImportVersion: a version that exists in another registry.
#[derive(Debug, Clone, PartialEq)]
pub struct NewImport {
    /// Its fields, checked by RegisterVersion's rules (target stage NONE).
    pub version: NewVersion,
    /// The number to keep; 0 for the next one.
    pub number: i64,
    /// Its stage in the registry it comes from.
    pub stage: Stage,
}

impl NewImport {
    /// A digest of everything the request asks for, as for
    /// [`NewVersion::fingerprint`].
    pub fn fingerprint(&self) -> String {
        digest(serde_json::json!([
            self.number,
            self.stage.as_str(),
            self.version.fingerprint()
        ]))
    }
}

/// The number an imported version gets: `requested` when it is above the
/// model's `latest` (numbers are never reused; gaps are fine), the next one
/// for 0. A taken number is FAILED_PRECONDITION saying which are taken.
pub fn import_number(model: &str, requested: i64, latest: i64) -> Result<i64> {
    match requested {
        0 => Ok(latest + 1),
        n if n > latest => Ok(n),
        n => Err(crate::error::Error::precondition(
            "VERSION_NUMBER_TAKEN",
            format!("{model}/{n}"),
            format!(
                "version {n} of model {model:?} cannot be imported under its number: numbers up to {latest} are taken (numbers are never reused); import it as a number above {latest}, or as 0 for the next number ({})",
                latest + 1
            ),
        )),
    }
}

/// A checked TransitionStage.
#[derive(Debug, Clone)]
pub struct StageChange {
    /// The model.
    pub model: Name,
    /// The version.
    pub version: i64,
    /// Where to.
    pub target: Stage,
    /// Why.
    pub comment: String,
    /// Expected revision of the version.
    pub etag: Option<i64>,
}

/// The state a deployment worker reported.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, EnumString, Display, Serialize, Deserialize,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DeploymentStatus {
    /// Rollout under way.
    Deploying,
    /// Serving.
    Succeeded,
    /// The rollout failed.
    Failed,
    /// Taken down.
    Undeployed,
}

impl DeploymentStatus {
    /// Every status.
    pub const ALL: [DeploymentStatus; 4] = [
        DeploymentStatus::Deploying,
        DeploymentStatus::Succeeded,
        DeploymentStatus::Failed,
        DeploymentStatus::Undeployed,
    ];

    /// The stored name (the proto enum value without its prefix).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The inverse of [`DeploymentStatus::as_str`].
    pub fn from_db(s: &str) -> Option<DeploymentStatus> {
        s.parse().ok()
    }
}

/// The latest report of one version in one environment. Serializable because
/// an idempotent retry answers with the deployment as first recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    /// The model.
    pub model: String,
    /// The version number.
    pub version: i64,
    /// The environment, named like a model.
    pub environment: String,
    /// The reported state.
    pub status: DeploymentStatus,
    /// Where the version serves, if known.
    pub endpoint: String,
    /// Detail from the worker (an error tail, say).
    pub message: String,
    /// Who reported.
    pub reported_by: String,
    /// µs since the epoch.
    pub report_time: i64,
}

/// A checked ReportDeployment.
#[derive(Debug, Clone)]
pub struct NewDeployment {
    /// The model.
    pub model: Name,
    /// The version number.
    pub version: i64,
    /// The environment.
    pub environment: Name,
    /// The state reached.
    pub status: DeploymentStatus,
    /// Where it serves.
    pub endpoint: String,
    /// Detail.
    pub message: String,
    /// AIP-155 request id.
    pub request_id: Option<String>,
    /// The consumer delivery the report is made for.
    pub fence: Option<Fence>,
}

/// A checked ReportWorkerFailure.
#[derive(Debug, Clone)]
pub struct WorkerFailure {
    /// The model.
    pub model: Name,
    /// The version the failed event concerns.
    pub version: i64,
    /// Which worker gave up (`evaluate`, say).
    pub worker: String,
    /// The event it was handling.
    pub event_sequence: u64,
    /// What went wrong.
    pub error: String,
    /// How many times it tried.
    pub attempts: u32,
    /// AIP-155 request id.
    pub request_id: Option<String>,
}

impl NewDeployment {
    /// A digest of the report, so a reused request id with a different
    /// report is told apart from a retry.
    pub fn fingerprint(&self) -> String {
        digest(serde_json::json!([
            self.model.as_str(),
            self.version,
            self.environment.as_str(),
            self.status.as_str(),
            self.endpoint,
            self.message
        ]))
    }
}

impl WorkerFailure {
    /// A digest of the report, as for [`NewDeployment::fingerprint`].
    pub fn fingerprint(&self) -> String {
        digest(serde_json::json!([
            self.model.as_str(),
            self.version,
            self.worker,
            self.event_sequence,
            self.error,
            self.attempts
        ]))
    }
}

/// The SHA-256 of a value's JSON text, in hex.
fn digest(value: serde_json::Value) -> String {
    crate::domain::audit::sha256_hex(value.to_string().as_bytes())
}

/// A checked ReportLiveMetric.
#[derive(Debug, Clone)]
pub struct LiveObservation {
    /// The model.
    pub model: Name,
    /// The version observed.
    pub version: i64,
    /// The metric.
    pub metric: String,
    /// The value; finite.
    pub value: f64,
    /// When it was observed, µs since the epoch.
    pub observe_time: i64,
}
