//! Reading the audit trail as people ask about it: "who did what to this
//! model, and when?" ([`describe`]) and "which version was in production
//! from when to when, and why did it change?" ([`production_timeline`]).
//! Both work on events as ListEvents returns them, oldest first.

use prost_types::Timestamp;

use crate::json::to_json;
use crate::names::{cause_label, stage_label};
use crate::pb;

/// One stretch of time during which one version was in production.
#[derive(Debug, Clone, PartialEq)]
pub struct ProductionPeriod {
    /// The version.
    pub version: i64,
    /// When it entered production.
    pub since: Option<Timestamp>,
    /// Why it entered (REQUEST, APPROVAL, ROLLBACK, …).
    pub entered_by_cause: String,
    /// Who moved it in (for an approval: the approver).
    pub entered_by: String,
    /// The transition request that brought it in, if any.
    pub request_id: String,
    /// The comment of the move in (the reason, for a rollback).
    pub comment: String,
    /// When it left production; `None` while it is still there.
    pub until: Option<Timestamp>,
    /// Why it left (SUPERSEDED, ROLLBACK, …); empty while there.
    pub left_by_cause: String,
    /// Who caused it to leave.
    pub left_by: String,
}

/// The production timeline of one model from its STAGE_CHANGED events.
pub fn production_timeline(events: &[pb::RegistryEvent]) -> Vec<ProductionPeriod> {
    let production = pb::Stage::Production as i32;
    let mut periods: Vec<ProductionPeriod> = Vec::new();
    for e in events
        .iter()
        .filter(|e| e.r#type == pb::EventType::StageChanged as i32)
    {
        if e.from_stage == production
            && let Some(open) = periods
                .iter_mut()
                .rev()
                .find(|p| p.version == e.version && p.until.is_none())
        {
            open.until = e.occur_time;
            open.left_by_cause = cause_label(e.cause);
            open.left_by = e.actor.clone();
        }
        if e.to_stage == production {
            periods.push(ProductionPeriod {
                version: e.version,
                since: e.occur_time,
                entered_by_cause: cause_label(e.cause),
                entered_by: e.actor.clone(),
                request_id: e.transition_request_id.clone(),
                comment: e.comment.clone(),
                until: None,
                left_by_cause: String::new(),
                left_by: String::new(),
            });
        }
    }
    periods
}

/// The version that was in production at `at`, if any.
pub fn in_production_at(periods: &[ProductionPeriod], at: &Timestamp) -> Option<i64> {
    let key = |t: &Timestamp| (t.seconds, t.nanos);
    periods
        .iter()
        .find(|p| {
            p.since.as_ref().is_some_and(|s| key(s) <= key(at))
                && p.until.as_ref().is_none_or(|u| key(at) < key(u))
        })
        .map(|p| p.version)
}

/// What an event did, in one line: `STAGING → PRODUCTION (APPROVAL, request m:2)`,
/// `approved m:2 (1 of 1)`, `requested PRODUCTION as m:2`, ….
pub fn describe(e: &pb::RegistryEvent) -> String {
    use pb::EventType as T;
    let details = to_json(e, "modelreg.v1.RegistryEvent")["details"].clone();
    let text = |key: &str| details[key].as_str().unwrap_or_default().to_owned();
    let number = |key: &str| details[key].as_f64().unwrap_or_default();
    let request = if e.transition_request_id.is_empty() {
        String::new()
    } else {
        format!(", request {}", e.transition_request_id)
    };
    let line = match T::try_from(e.r#type).unwrap_or(T::Unspecified) {
        T::StageChanged => format!(
            "{} → {} ({}{request})",
            stage_label(e.from_stage),
            stage_label(e.to_stage),
            cause_label(e.cause)
        ),
        T::TransitionRequested => {
            let verb = if details["rollback"].as_bool() == Some(true) {
                "requested a rollback to"
            } else {
                "requested"
            };
            let gates = match details["gates_passed"].as_bool() {
                Some(true)
                    if details["gate_results"]
                        .as_array()
                        .is_some_and(|g| !g.is_empty()) =>
                {
                    ", gates passed"
                }
                _ => "",
            };
            format!(
                "{verb} {} as {}{gates}",
                text("to_stage"),
                e.transition_request_id
            )
        }
        T::TransitionApproved => format!(
            "approved {} ({} of {})",
            e.transition_request_id,
            number("approvals"),
            number("approvals_needed")
        ),
        T::TransitionRejected => format!("rejected {}", e.transition_request_id),
        T::TransitionCancelled => format!("cancelled {}", e.transition_request_id),
        T::TransitionSuperseded => format!(
            "{} closed: the version moved to {} first",
            e.transition_request_id,
            text("moved_to")
        ),
        T::EvaluationAttached => format!(
            "evaluated on {}@{} by evaluator {}",
            details["evaluation_set"]["name"]
                .as_str()
                .unwrap_or_default(),
            details["evaluation_set"]["version"]
                .as_str()
                .unwrap_or_default(),
            text("evaluator_version")
        ),
        T::VersionRegistered => format!("registered {}", text("artifact_uri")),
        T::ModelUpdated | T::VersionUpdated => {
            let after = details["after"].as_object();
            let fields: Vec<&str> = after
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!("changed {}", fields.join(", "))
        }
        T::AliasSet => format!("alias {} → version {}", text("alias"), e.version),
        T::AliasDeleted => format!("alias {} removed", text("alias")),
        other => other
            .as_str_name()
            .trim_start_matches("EVENT_TYPE_")
            .to_lowercase()
            .replace('_', " "),
    };
    if e.comment.is_empty() {
        line
    } else {
        format!("{line}: {:?}", e.comment)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp { seconds, nanos: 0 })
    }

    fn moved(
        version: i64,
        from: pb::Stage,
        to: pb::Stage,
        cause: pb::StageChangeCause,
        t: i64,
    ) -> pb::RegistryEvent {
        pb::RegistryEvent {
            r#type: pb::EventType::StageChanged as i32,
            version,
            from_stage: from as i32,
            to_stage: to as i32,
            cause: cause as i32,
            actor: format!("actor{t}"),
            occur_time: at(t),
            ..Default::default()
        }
    }

    #[test]
    fn the_timeline_follows_promotions_supersessions_and_rollbacks() {
        use pb::Stage::{Archived, Production, Staging};
        use pb::StageChangeCause::{Approval, Rollback, Superseded};
        let events = vec![
            moved(1, Staging, Production, Approval, 10),
            moved(1, Production, Archived, Superseded, 20),
            moved(2, Staging, Production, Approval, 20),
            moved(2, Production, Archived, Rollback, 30),
            moved(1, Archived, Production, Rollback, 30),
        ];
        let t = production_timeline(&events);
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].version, t[0].until), (1, at(20)));
        assert_eq!(t[0].left_by_cause, "SUPERSEDED");
        assert_eq!((t[1].version, t[1].left_by_cause.as_str()), (2, "ROLLBACK"));
        assert_eq!((t[2].version, t[2].until), (1, None));
        assert_eq!(t[2].entered_by_cause, "ROLLBACK");
        assert_eq!(in_production_at(&t, &at(5).unwrap()), None);
        assert_eq!(in_production_at(&t, &at(15).unwrap()), Some(1));
        assert_eq!(in_production_at(&t, &at(20).unwrap()), Some(2));
        assert_eq!(in_production_at(&t, &at(99).unwrap()), Some(1));
    }
}
