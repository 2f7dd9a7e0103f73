//! Stage and event-type names as people type them: `staging`, `STAGING` and
//! `STAGE_STAGING` all mean the same stage.

use crate::pb;

fn normalize(raw: &str, prefix: &str) -> String {
    let upper = raw.trim().to_ascii_uppercase().replace('-', "_");
    if upper.starts_with(prefix) {
        upper
    } else {
        format!("{prefix}{upper}")
    }
}

/// Parses a stage name.
pub fn parse_stage(raw: &str) -> Result<pb::Stage, String> {
    match pb::Stage::from_str_name(&normalize(raw, "STAGE_")) {
        Some(pb::Stage::Unspecified) | None => Err(format!(
            "{raw:?} is not a stage: use none, staging, production or archived"
        )),
        Some(s) => Ok(s),
    }
}

/// Parses an event type name.
pub fn parse_event_type(raw: &str) -> Result<pb::EventType, String> {
    match pb::EventType::from_str_name(&normalize(raw, "EVENT_TYPE_")) {
        Some(pb::EventType::Unspecified) | None => Err(format!(
            "{raw:?} is not an event type: use e.g. stage_changed, version_registered, model_created"
        )),
        Some(t) => Ok(t),
    }
}

/// An enum value's proto name without its `prefix`, or the number when
/// the value is unknown to this client.
fn label(name: Option<&str>, prefix: &str, raw: i32) -> String {
    name.map_or_else(
        || raw.to_string(),
        |n| n.trim_start_matches(prefix).to_owned(),
    )
}

/// A stage as people read it: `STAGING`.
pub fn stage_label(raw: i32) -> String {
    let name = pb::Stage::try_from(raw).ok().map(|s| s.as_str_name());
    label(name, "STAGE_", raw)
}

/// An event type as people read it: `STAGE_CHANGED`.
pub fn event_type_label(raw: i32) -> String {
    let name = pb::EventType::try_from(raw).ok().map(|t| t.as_str_name());
    label(name, "EVENT_TYPE_", raw)
}

/// A stage-change cause as people read it: `SUPERSEDED`.
pub fn cause_label(raw: i32) -> String {
    let name = pb::StageChangeCause::try_from(raw)
        .ok()
        .map(|c| c.as_str_name());
    label(name, "STAGE_CHANGE_CAUSE_", raw)
}

/// A transition request's status as people read it: `PENDING`.
pub fn status_label(raw: i32) -> String {
    let name = pb::TransitionRequestStatus::try_from(raw)
        .ok()
        .map(|s| s.as_str_name());
    label(name, "TRANSITION_REQUEST_STATUS_", raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_parse_in_every_spelling() {
        for s in ["staging", "STAGING", "stage_staging", "STAGE_STAGING"] {
            assert_eq!(parse_stage(s).unwrap(), pb::Stage::Staging);
        }
        assert!(parse_stage("unspecified").is_err());
        assert!(parse_stage("prod").is_err());
        assert_eq!(
            parse_event_type("stage-changed").unwrap(),
            pb::EventType::StageChanged
        );
    }

    #[test]
    fn labels_drop_the_prefix_and_show_unknown_values_as_numbers() {
        assert_eq!(stage_label(pb::Stage::Staging as i32), "STAGING");
        assert_eq!(
            cause_label(pb::StageChangeCause::Superseded as i32),
            "SUPERSEDED"
        );
        assert_eq!(
            status_label(pb::TransitionRequestStatus::Pending as i32),
            "PENDING"
        );
        assert_eq!(event_type_label(999), "999");
    }
}
