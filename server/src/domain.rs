//! The registry's own vocabulary: names, stages, versions, events and the
//! limits every input must meet. Nothing here knows about protobuf or SQL.
//!
//! Validation follows "parse, don't validate": a [`Name`] or a checked
//! [`NewVersion`] can only exist once its input met the documented limits, so
//! the store never has to doubt what it is given.

use std::collections::BTreeMap;
use std::fmt;

use crate::error::{Error, FieldViolation, Result};

/// Most tags a model or version may carry.
pub const MAX_TAGS: usize = 64;
/// Largest tag, key and value together, in bytes.
pub const MAX_TAG_BYTES: usize = 4096;
/// Largest free-text field (description, comment, URI), in bytes.
pub const MAX_TEXT_BYTES: usize = 4096;
/// Most metrics one version may carry.
pub const MAX_METRICS: usize = 256;
/// Page size used when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page a caller may ask for.
pub const MAX_PAGE_SIZE: usize = 1000;
/// Longest request id (AIP-155).
pub const MAX_REQUEST_ID_BYTES: usize = 128;

/// Collects every problem of a request so the caller learns them all at once.
#[derive(Debug, Default)]
pub struct Violations(Vec<FieldViolation>);

impl Violations {
    /// Records one bad field.
    pub fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation {
            field: field.into(),
            description: description.into(),
        });
    }

    /// Runs a parser and keeps its value, or records its violations.
    pub fn take<T>(&mut self, result: Result<T>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(Error::InvalidArgument(mut v)) => {
                self.0.append(&mut v);
                None
            }
            Err(other) => {
                self.add("", other.to_string());
                None
            }
        }
    }

    /// `Ok(())` when nothing was recorded, else the `InvalidArgument` error.
    pub fn finish(self) -> Result<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(Error::InvalidArgument(self.0))
        }
    }
}

/// A model, evaluation set or environment name: `[a-z0-9][a-z0-9._-]{0,127}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Name(String);

impl Name {
    /// Parses `raw` as the value of request field `field`.
    pub fn parse(field: &str, raw: &str) -> Result<Name> {
        let valid = !raw.is_empty()
            && raw.len() <= 128
            && raw
                .bytes()
                .next()
                .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
            && raw.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if valid {
            Ok(Name(raw.to_owned()))
        } else if raw.is_empty() {
            Err(Error::invalid(field, "is required"))
        } else {
            Err(Error::invalid(
                field,
                format!(
                    "{:?} is not a valid name: use 1 to 128 characters of [a-z0-9._-], starting with a letter or digit",
                    truncate(raw, 64)
                ),
            ))
        }
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An alias: `[a-z][a-z0-9._-]{0,63}`. It starts with a letter so that it is
/// never mistaken for a version number.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct AliasName(String);

impl AliasName {
    /// Parses `raw` as the value of request field `field`.
    pub fn parse(field: &str, raw: &str) -> Result<AliasName> {
        let valid = !raw.is_empty()
            && raw.len() <= 64
            && raw.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && raw.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
            });
        if valid {
            Ok(AliasName(raw.to_owned()))
        } else if raw.is_empty() {
            Err(Error::invalid(field, "is required"))
        } else {
            Err(Error::invalid(
                field,
                format!(
                    "{:?} is not a valid alias: use 1 to 64 characters of [a-z0-9._-], starting with a letter",
                    truncate(raw, 64)
                ),
            ))
        }
    }

    /// The alias as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a version number field: at least 1.
pub fn parse_version_number(field: &str, raw: i64) -> Result<i64> {
    if raw >= 1 {
        Ok(raw)
    } else {
        Err(Error::invalid(
            field,
            format!("version numbers start at 1; got {raw}"),
        ))
    }
}

/// Checks a free-text field against [`MAX_TEXT_BYTES`] and refuses control
/// characters other than newline and tab: C0 (ESC, CR, BEL, …), DEL and C1
/// would let a stored comment rewrite the terminal of whoever lists it.
pub fn parse_text(field: &str, raw: &str) -> Result<String> {
    if raw.len() > MAX_TEXT_BYTES {
        return Err(Error::invalid(
            field,
            format!(
                "is {} bytes; at most {MAX_TEXT_BYTES} are allowed",
                raw.len()
            ),
        ));
    }
    if let Some(c) = forbidden_control(raw) {
        return Err(Error::invalid(
            field,
            format!(
                "must not contain control characters other than newline and tab; found U+{:04X}",
                u32::from(c)
            ),
        ));
    }
    Ok(raw.to_owned())
}

/// The first C0/C1 control character (or DEL) other than newline and tab.
pub fn forbidden_control(raw: &str) -> Option<char> {
    raw.chars()
        .find(|&c| c.is_control() && c != '\n' && c != '\t')
}

/// Checks a tag map: at most [`MAX_TAGS`] entries, keys 1 to 256 bytes without
/// control characters, key and value together at most [`MAX_TAG_BYTES`].
pub fn parse_tags(field: &str, raw: &BTreeMap<String, String>) -> Result<BTreeMap<String, String>> {
    let mut v = Violations::default();
    if raw.len() > MAX_TAGS {
        v.add(
            field,
            format!("has {} tags; at most {MAX_TAGS} are allowed", raw.len()),
        );
    }
    for (key, value) in raw {
        let path = format!("{field}[{}]", truncate(key, 64));
        if key.is_empty() || key.len() > 256 || key.chars().any(|c| c.is_control() || c == '=') {
            v.add(
                &path,
                "tag keys must be 1 to 256 bytes without control characters or '='",
            );
        } else if key.len() + value.len() > MAX_TAG_BYTES {
            v.add(
                &path,
                format!(
                    "is {} bytes; a tag's key and value may have at most {MAX_TAG_BYTES} together",
                    key.len() + value.len()
                ),
            );
        } else if forbidden_control(value).is_some() {
            v.add(
                &path,
                "tag values must not contain control characters other than newline and tab",
            );
        }
    }
    v.finish()?;
    Ok(raw.clone())
}

/// Checks a metric map: finite numbers, names like [`Name`] but also allowing
/// upper case and '/', at most [`MAX_METRICS`] entries.
pub fn parse_metrics(field: &str, raw: &BTreeMap<String, f64>) -> Result<BTreeMap<String, f64>> {
    let mut v = Violations::default();
    if raw.len() > MAX_METRICS {
        v.add(
            field,
            format!(
                "has {} metrics; at most {MAX_METRICS} are allowed",
                raw.len()
            ),
        );
    }
    for (name, value) in raw {
        let path = format!("{field}[{}]", truncate(name, 64));
        let name_ok = !name.is_empty()
            && name.len() <= 128
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/'));
        if !name_ok {
            v.add(
                &path,
                "metric names must be 1 to 128 characters of [A-Za-z0-9._/-]",
            );
        } else if !value.is_finite() {
            v.add(
                &path,
                format!("metric values must be finite numbers; got {value}"),
            );
        }
    }
    v.finish()?;
    Ok(raw.clone())
}

/// Whether `hex` is a SHA-256 as 64 lowercase hex digits.
pub fn is_sha256_hex(hex: &str) -> bool {
    hex.len() == 64
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks an artifact digest: empty, or `sha256:` and 64 lowercase hex digits.
pub fn parse_digest(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let ok = raw.strip_prefix("sha256:").is_some_and(is_sha256_hex);
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(Error::invalid(
            field,
            "must be empty or \"sha256:\" followed by 64 lowercase hex digits",
        ))
    }
}

/// Checks an artifact URI: required, at most [`MAX_TEXT_BYTES`], no whitespace
/// or control characters, and with a scheme or an absolute path.
pub fn parse_artifact_uri(field: &str, raw: &str) -> Result<String> {
    if raw.trim().is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    let uri = parse_text(field, raw)?;
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(Error::invalid(
            field,
            "must not contain whitespace or control characters",
        ));
    }
    let has_scheme = uri
        .split_once("://")
        .is_some_and(|(scheme, rest)| !scheme.is_empty() && !rest.is_empty());
    if !has_scheme && !uri.starts_with('/') {
        return Err(Error::invalid(
            field,
            "must be a URI with a scheme (s3://…, gs://…, file:///…) or an absolute path",
        ));
    }
    Ok(uri)
}

/// Checks an AIP-155 request id: empty, or 1 to 128 printable ASCII characters.
pub fn parse_request_id(field: &str, raw: &str) -> Result<Option<String>> {
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.len() > MAX_REQUEST_ID_BYTES || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::invalid(
            field,
            format!(
                "must be 1 to {MAX_REQUEST_ID_BYTES} printable ASCII characters (a UUID is ideal)"
            ),
        ));
    }
    Ok(Some(raw.to_owned()))
}

/// Checks a page size: negative is refused, 0 means the default, larger than
/// the maximum is clamped to it (AIP-158).
pub fn parse_page_size(field: &str, raw: i32) -> Result<usize> {
    match raw {
        n if n < 0 => Err(Error::invalid(
            field,
            format!("must not be negative; got {n}"),
        )),
        0 => Ok(DEFAULT_PAGE_SIZE),
        n => Ok((n as usize).min(MAX_PAGE_SIZE)),
    }
}

/// Checks an etag: empty (no check) or the revision number this server issued.
pub fn parse_etag(field: &str, raw: &str) -> Result<Option<i64>> {
    if raw.is_empty() {
        return Ok(None);
    }
    raw.trim_matches('"')
        .parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .map(Some)
        .ok_or_else(|| Error::invalid(field, "is not an etag issued by this server"))
}

/// Formats a revision as the etag callers see.
pub fn etag(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// Shortens text quoted back in error messages.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// A lifecycle stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    /// Registered, not under evaluation.
    None,
    /// Under evaluation.
    Staging,
    /// Serving; at most one version per model.
    Production,
    /// Retired.
    Archived,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 4] = [
        Stage::None,
        Stage::Staging,
        Stage::Production,
        Stage::Archived,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::None => "NONE",
            Stage::Staging => "STAGING",
            Stage::Production => "PRODUCTION",
            Stage::Archived => "ARCHIVED",
        }
    }

    /// The inverse of [`Stage::as_str`].
    pub fn from_db(s: &str) -> Option<Stage> {
        Stage::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Stage, D::Error> {
        let s = String::deserialize(d)?;
        Stage::from_db(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown stage {s:?}")))
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a version changed stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A direct call.
    Request,
    /// An approved transition request.
    Approval,
    /// Another version entered production.
    Superseded,
    /// A rollback.
    Rollback,
    /// The policy engine.
    Policy,
}

impl Cause {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Request => "REQUEST",
            Cause::Approval => "APPROVAL",
            Cause::Superseded => "SUPERSEDED",
            Cause::Rollback => "ROLLBACK",
            Cause::Policy => "POLICY",
        }
    }

    /// The inverse of [`Cause::as_str`].
    pub fn from_db(s: &str) -> Option<Cause> {
        [
            Cause::Request,
            Cause::Approval,
            Cause::Superseded,
            Cause::Rollback,
            Cause::Policy,
        ]
        .into_iter()
        .find(|c| c.as_str() == s)
    }
}

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A model was created.
    ModelCreated,
    /// A model's description, tags or policy changed.
    ModelUpdated,
    /// A version was registered.
    VersionRegistered,
    /// A version changed stage.
    StageChanged,
    /// A transition was requested.
    TransitionRequested,
    /// A transition was approved.
    TransitionApproved,
    /// A transition was rejected.
    TransitionRejected,
    /// A transition was cancelled.
    TransitionCancelled,
    /// An evaluation was attached.
    EvaluationAttached,
    /// A deployment was reported.
    DeploymentReported,
    /// An alias was set.
    AliasSet,
    /// An alias was deleted.
    AliasDeleted,
    /// An evaluation set was created.
    EvaluationSetCreated,
    /// A worker gave up on an event.
    WorkerFailed,
    /// A pending transition request was closed because its version moved.
    TransitionSuperseded,
    /// A live-metric rule was breached by the production version.
    LiveMetricBreach,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 16] = [
        EventKind::ModelCreated,
        EventKind::ModelUpdated,
        EventKind::VersionRegistered,
        EventKind::StageChanged,
        EventKind::TransitionRequested,
        EventKind::TransitionApproved,
        EventKind::TransitionRejected,
        EventKind::TransitionCancelled,
        EventKind::EvaluationAttached,
        EventKind::DeploymentReported,
        EventKind::AliasSet,
        EventKind::AliasDeleted,
        EventKind::EvaluationSetCreated,
        EventKind::WorkerFailed,
        EventKind::TransitionSuperseded,
        EventKind::LiveMetricBreach,
    ];

    /// The stored name (the proto enum value without its prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::ModelCreated => "MODEL_CREATED",
            EventKind::ModelUpdated => "MODEL_UPDATED",
            EventKind::VersionRegistered => "VERSION_REGISTERED",
            EventKind::StageChanged => "STAGE_CHANGED",
            EventKind::TransitionRequested => "TRANSITION_REQUESTED",
            EventKind::TransitionApproved => "TRANSITION_APPROVED",
            EventKind::TransitionRejected => "TRANSITION_REJECTED",
            EventKind::TransitionCancelled => "TRANSITION_CANCELLED",
            EventKind::EvaluationAttached => "EVALUATION_ATTACHED",
            EventKind::DeploymentReported => "DEPLOYMENT_REPORTED",
            EventKind::AliasSet => "ALIAS_SET",
            EventKind::AliasDeleted => "ALIAS_DELETED",
            EventKind::EvaluationSetCreated => "EVALUATION_SET_CREATED",
            EventKind::WorkerFailed => "WORKER_FAILED",
            EventKind::TransitionSuperseded => "TRANSITION_SUPERSEDED",
            EventKind::LiveMetricBreach => "LIVE_METRIC_BREACH",
        }
    }

    /// The inverse of [`EventKind::as_str`].
    pub fn from_db(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where a version came from.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Source {
    /// The commit.
    pub commit: String,
    /// The pipeline run's URL.
    pub pipeline_url: String,
    /// The training run id.
    pub run_id: String,
    /// The repository.
    pub repository: String,
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
    pub policy: crate::governance::Policy,
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
    pub policy: Option<crate::governance::Policy>,
    /// AIP-155 request id.
    pub request_id: Option<String>,
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
    pub policy: Option<crate::governance::Policy>,
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
        crate::audit::sha256_hex(body.to_string().as_bytes())
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

/// Which events a reader wants. Empty lists match everything.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Models.
    pub models: Vec<String>,
    /// A single version (with one model); 0 for all.
    pub version: i64,
    /// Actor.
    pub actor: Option<String>,
    /// Kinds.
    pub kinds: Vec<EventKind>,
    /// Target stages.
    pub to_stages: Vec<Stage>,
    /// Occurred at or after (µs).
    pub start_time: Option<i64>,
    /// Occurred before (µs).
    pub end_time: Option<i64>,
}

impl EventFilter {
    /// Whether `e` passes every part of the filter (the same test the SQL
    /// of [`crate::store::Db::events`] applies).
    pub fn matches(&self, e: &Event) -> bool {
        (self.models.is_empty() || self.models.contains(&e.model))
            && (self.version == 0 || self.version == e.version)
            && self.actor.as_ref().is_none_or(|a| *a == e.actor)
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
            && (self.to_stages.is_empty()
                || e.to_stage.is_some_and(|s| self.to_stages.contains(&s)))
            && self.start_time.is_none_or(|t| e.occur_time >= t)
            && self.end_time.is_none_or(|t| e.occur_time < t)
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// What happened.
    pub kind: EventKind,
    /// The model.
    pub model: String,
    /// The version, 0 for model-level events.
    pub version: i64,
    /// Stage left.
    pub from_stage: Option<Stage>,
    /// Stage entered.
    pub to_stage: Option<Stage>,
    /// Why a stage changed.
    pub cause: Option<Cause>,
    /// The comment of the call.
    pub comment: String,
    /// Type-specific details.
    pub details: serde_json::Value,
    /// The transition request concerned.
    pub transition_request_id: String,
}

impl NewEvent {
    /// An event with no stage fields.
    pub fn new(kind: EventKind, model: &str, version: i64, details: serde_json::Value) -> Self {
        NewEvent {
            kind,
            model: model.to_owned(),
            version,
            from_stage: None,
            to_stage: None,
            cause: None,
            comment: String::new(),
            details,
            transition_request_id: String::new(),
        }
    }
}

/// An event of the log.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Gap-free position in commit order.
    pub sequence: u64,
    /// What happened.
    pub kind: EventKind,
    /// The model.
    pub model: String,
    /// The version, 0 for model-level events.
    pub version: i64,
    /// Stage left.
    pub from_stage: Option<Stage>,
    /// Stage entered.
    pub to_stage: Option<Stage>,
    /// Why a stage changed.
    pub cause: Option<Cause>,
    /// Who caused it.
    pub actor: String,
    /// The call's comment.
    pub comment: String,
    /// Commit time, µs since the epoch.
    pub occur_time: i64,
    /// Details.
    pub details: serde_json::Value,
    /// The transition request concerned.
    pub transition_request_id: String,
    /// The previous event's hash.
    pub prev_hash: String,
    /// This event's hash.
    pub hash: String,
}

/// The caller, as recorded in events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor(pub String);

impl Actor {
    /// The identity used when a caller names none.
    pub fn anonymous() -> Actor {
        Actor("anonymous".into())
    }
}

/// µs since the epoch as RFC 3339 in UTC (`2026-06-01T12:00:00.250Z`), for
/// the sentences of event details and comments people read.
pub fn rfc3339(micros: i64) -> String {
    let secs = micros.div_euclid(1_000_000);
    let frac = micros.rem_euclid(1_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    let frac = if frac == 0 {
        String::new()
    } else {
        format!(".{frac:06}").trim_end_matches('0').to_owned()
    };
    format!("{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}{frac}Z")
}

/// A number as people read it: at most `places` decimals, no trailing zeros
/// (`0.0010000000000000009` → `0.001`, `12.0` → `12`, never `-0`).
pub fn decimal(x: f64, places: usize) -> String {
    let s = format!("{x:.places$}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".to_owned()
    } else {
        s.to_owned()
    }
}

/// A duration in µs as people write it: `90s`, `2h`, `30d`, `1h30m`.
pub fn human_duration(micros: i64) -> String {
    let mut secs = micros / 1_000_000;
    if secs == 0 {
        return format!("{micros}µs");
    }
    let mut out = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

/// Current time in microseconds since the Unix epoch.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_documented_pattern() {
        for ok in ["a", "fraud-detector", "0x.model_v2", &"a".repeat(128)] {
            assert!(Name::parse("name", ok).is_ok(), "{ok}");
        }
        for bad in ["", "Fraud", "-a", ".a", "a b", "ä", &"a".repeat(129), "a/b"] {
            assert!(Name::parse("name", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn aliases_never_look_like_numbers() {
        assert!(AliasName::parse("alias", "champion").is_ok());
        assert!(AliasName::parse("alias", "7").is_err());
        assert!(AliasName::parse("alias", "7a").is_err());
    }

    #[test]
    fn metrics_must_be_finite() {
        let mut m = BTreeMap::new();
        m.insert("auc".to_string(), f64::NAN);
        assert!(parse_metrics("training_metrics", &m).is_err());
        m.insert("auc".to_string(), 0.9);
        assert!(parse_metrics("training_metrics", &m).is_ok());
    }

    #[test]
    fn page_sizes_clamp_and_refuse_negatives() {
        assert_eq!(parse_page_size("p", 0).unwrap(), DEFAULT_PAGE_SIZE);
        assert_eq!(parse_page_size("p", 5000).unwrap(), MAX_PAGE_SIZE);
        assert!(parse_page_size("p", -1).is_err());
    }

    #[test]
    fn times_read_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400_250_000), "2000-02-29T00:00:00.25Z");
        assert_eq!(rfc3339(1_780_315_200_000_000), "2026-06-01T12:00:00Z");
        assert_eq!(human_duration(90 * 1_000_000), "1m30s");
        assert_eq!(human_duration(30 * 86_400 * 1_000_000), "30d");
    }

    #[test]
    fn etags_round_trip() {
        assert_eq!(parse_etag("etag", &etag(7)).unwrap(), Some(7));
        assert!(parse_etag("etag", "abc").is_err());
        assert_eq!(parse_etag("etag", "").unwrap(), None);
    }
}

/// A standard evaluation set version's identity: `name@version`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct SetRef {
    /// The set name, like a model name.
    pub name: String,
    /// The set version, e.g. `2026-06` or `v3`.
    pub version: String,
}

impl SetRef {
    /// Parses the two parts of a set reference in request field `field`.
    pub fn parse(field: &str, name: &str, version: &str) -> Result<SetRef> {
        let mut v = Violations::default();
        let name = v.take(Name::parse(&format!("{field}.name"), name));
        let version = v.take(parse_set_version(&format!("{field}.version"), version));
        v.finish()?;
        Ok(SetRef {
            name: name.expect("checked").to_string(),
            version: version.expect("checked"),
        })
    }
}

impl fmt::Display for SetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.version)
    }
}

/// Checks an evaluation set version: `[A-Za-z0-9][A-Za-z0-9._-]{0,63}`.
pub fn parse_set_version(field: &str, raw: &str) -> Result<String> {
    parse_label(
        field,
        raw,
        "an evaluation set version such as 2026-06 or v3",
    )
}

/// Checks an evaluator version (the version of the metric code):
/// `[A-Za-z0-9][A-Za-z0-9._+-]{0,63}`.
pub fn parse_evaluator_version(field: &str, raw: &str) -> Result<String> {
    parse_label(field, raw, "an evaluator version such as 1.4.2")
}

fn parse_label(field: &str, raw: &str, what: &str) -> Result<String> {
    let valid = !raw.is_empty()
        && raw.len() <= 64
        && raw
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'+'));
    if valid {
        Ok(raw.to_owned())
    } else if raw.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else {
        Err(Error::invalid(
            field,
            format!(
                "{:?} is not {what}: use 1 to 64 characters of [A-Za-z0-9._+-], starting with a letter or digit",
                truncate(raw, 64)
            ),
        ))
    }
}

/// Checks a required content digest: `sha256:` and 64 lowercase hex digits.
pub fn parse_required_digest(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Err(Error::invalid(field, "is required"));
    }
    parse_digest(field, raw)
}

/// Checks a URL that is shown to people as a link: empty, or an absolute
/// `http`/`https` URL with a host. Any other scheme (`javascript:`, `data:`,
/// `file:`) could run or read something where the link is clicked.
pub fn parse_link(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        return Ok(String::new());
    }
    let text = parse_text(field, raw)?;
    let bad = || {
        Error::invalid(
            field,
            "must be an absolute http:// or https:// URL with a host",
        )
    };
    let (scheme, rest) = text.split_once("://").ok_or_else(bad)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let scheme_ok = scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https");
    if !scheme_ok || host.is_empty() || text.chars().any(|c| c.is_whitespace() || c == '\\') {
        return Err(bad());
    }
    Ok(text)
}

/// Checks an optional URI (report links): empty, or like an artifact URI.
pub fn parse_optional_uri(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        Ok(String::new())
    } else {
        parse_artifact_uri(field, raw)
    }
}

/// One metric an evaluation set is scored with.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MetricDefinition {
    /// The metric's name.
    pub name: String,
    /// Whether a higher value is better.
    pub higher_is_better: bool,
}

/// A standard, versioned evaluation set. Immutable once created.
#[derive(Debug, Clone, PartialEq)]
pub struct EvaluationSet {
    /// `name@version`.
    pub id: SetRef,
    /// Where the data lives.
    pub uri: String,
    /// The data's content digest.
    pub digest: String,
    /// The metrics it is scored with, in the order given at creation.
    pub metrics: Vec<MetricDefinition>,
    /// Free text.
    pub description: String,
    /// Who created it.
    pub created_by: String,
    /// µs since the epoch.
    pub create_time: i64,
}

impl EvaluationSet {
    /// Whether `other` asks for exactly this set (ignoring who and when).
    pub fn same_content(&self, other: &EvaluationSet) -> bool {
        self.id == other.id
            && self.uri == other.uri
            && self.digest == other.digest
            && self.metrics == other.metrics
            && self.description == other.description
    }
}

/// The metrics of one version on one evaluation set version, scored by one
/// evaluator version. Immutable.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// The model.
    pub model: String,
    /// The version number.
    pub version: i64,
    /// The evaluation set version.
    pub set: SetRef,
    /// The version of the metric code.
    pub evaluator_version: String,
    /// Metric values, exactly the set's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Where a full report lives.
    pub report_uri: String,
    /// Who attached it.
    pub created_by: String,
    /// µs since the epoch.
    pub create_time: i64,
}

impl Evaluation {
    /// Whether `other` carries the same result (ignoring who and when).
    pub fn same_content(&self, other: &Evaluation) -> bool {
        self.model == other.model
            && self.version == other.version
            && self.set == other.set
            && self.evaluator_version == other.evaluator_version
            && self.metrics == other.metrics
            && self.report_uri == other.report_uri
    }
}

/// A checked AttachEvaluation.
#[derive(Debug, Clone)]
pub struct NewEvaluation {
    /// The evaluation, with actor and time still to be filled in.
    pub evaluation: Evaluation,
    /// AIP-155 request id.
    pub request_id: Option<String>,
}

/// A checked CompareVersions.
#[derive(Debug, Clone)]
pub struct CompareRequest {
    /// The model.
    pub model: Name,
    /// The candidate version.
    pub candidate: i64,
    /// The baseline version; 0 for the current production version.
    pub baseline: i64,
    /// The evaluation set; `None` for the model's standard set.
    pub set: Option<SetRef>,
    /// The evaluator version; `None` for the one both sides share.
    pub evaluator_version: Option<String>,
}

/// How a candidate's metric compares with the baseline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Better in the metric's direction.
    Better,
    /// Worse in the metric's direction.
    Worse,
    /// Equal.
    Equal,
}

/// One metric of a comparison.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricComparison {
    /// The metric.
    pub metric: String,
    /// Its direction.
    pub higher_is_better: bool,
    /// The candidate's value.
    pub candidate: f64,
    /// The baseline's value.
    pub baseline: f64,
    /// candidate − baseline.
    pub delta: f64,
    /// delta / |baseline|, 0 when the baseline is 0.
    pub relative_delta: f64,
    /// Better, worse or equal.
    pub outcome: Outcome,
}

/// Two versions compared on one set version and evaluator version.
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The model.
    pub model: String,
    /// The candidate version.
    pub candidate: i64,
    /// The baseline version.
    pub baseline: i64,
    /// The set both were measured on.
    pub set: SetRef,
    /// The evaluator version both were scored by.
    pub evaluator_version: String,
    /// One entry per metric of the set, in the set's order.
    pub metrics: Vec<MetricComparison>,
}

/// Checks a short label (a live metric's name, a worker's name): 1 to 128
/// printable characters.
pub fn parse_short_text(field: &str, raw: &str) -> Result<String> {
    if raw.is_empty() {
        Err(Error::invalid(field, "is required"))
    } else if raw.len() > 128 || raw.chars().any(char::is_control) {
        Err(Error::invalid(
            field,
            "must be at most 128 printable characters",
        ))
    } else {
        Ok(raw.to_owned())
    }
}

/// The state a deployment worker reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        match self {
            DeploymentStatus::Deploying => "DEPLOYING",
            DeploymentStatus::Succeeded => "SUCCEEDED",
            DeploymentStatus::Failed => "FAILED",
            DeploymentStatus::Undeployed => "UNDEPLOYED",
        }
    }

    /// The inverse of [`DeploymentStatus::as_str`].
    pub fn from_db(s: &str) -> Option<DeploymentStatus> {
        DeploymentStatus::ALL.into_iter().find(|d| d.as_str() == s)
    }
}

impl serde::Serialize for DeploymentStatus {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for DeploymentStatus {
    fn deserialize<D: serde::Deserializer<'de>>(
        d: D,
    ) -> std::result::Result<DeploymentStatus, D::Error> {
        let s = String::deserialize(d)?;
        DeploymentStatus::from_db(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown deployment status {s:?}")))
    }
}

/// The latest report of one version in one environment. Serializable because
/// an idempotent retry answers with the deployment as first recorded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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
