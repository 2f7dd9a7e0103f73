//! Events: what the log records, the filters readers ask with, and an
//! event as appended and as stored.

use super::*;
use strum::{Display, EnumString, IntoStaticStr};

/// What an event records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
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
    /// A version's description or tags changed.
    VersionUpdated,
    /// A consumer parked an event as a dead letter.
    DeadLettered,
    /// A dead letter was retried.
    DeadLetterRetried,
}

impl EventKind {
    /// Every kind.
    pub const ALL: [EventKind; 19] = [
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
        EventKind::VersionUpdated,
        EventKind::DeadLettered,
        EventKind::DeadLetterRetried,
    ];

    /// The stored name (the proto enum value without its prefix).
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The inverse of [`EventKind::as_str`].
    pub fn from_db(s: &str) -> Option<EventKind> {
        s.parse().ok()
    }
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
