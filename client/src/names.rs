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

/// A stage as people read it: `STAGING`.
pub fn stage_label(raw: i32) -> String {
    pb::Stage::try_from(raw)
        .map(|s| s.as_str_name().trim_start_matches("STAGE_").to_owned())
        .unwrap_or_else(|_| raw.to_string())
}

/// An event type as people read it: `STAGE_CHANGED`.
pub fn event_type_label(raw: i32) -> String {
    pb::EventType::try_from(raw)
        .map(|s| s.as_str_name().trim_start_matches("EVENT_TYPE_").to_owned())
        .unwrap_or_else(|_| raw.to_string())
}

/// A stage-change cause as people read it: `SUPERSEDED`.
pub fn cause_label(raw: i32) -> String {
    pb::StageChangeCause::try_from(raw)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("STAGE_CHANGE_CAUSE_")
                .to_owned()
        })
        .unwrap_or_else(|_| raw.to_string())
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
}
