//! The Slack-compatible message `modelreg notify` posts for an event: a
//! `text` summary in Slack's mrkdwn and the same text as `blocks`. It owns
//! the wording; delivery and signing are [`crate::webhook`]'s.

use crate::names::{cause_label, event_type_label};
use crate::pb;

/// The Slack body for event `e` (`details` is its `details` as JSON);
/// `link_base` is the dashboard's base URL for links to requests.
pub fn message(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
) -> serde_json::Value {
    let text = summary(e, details, link_base);
    serde_json::json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("modelreg event {} · {}", e.sequence, event_type_label(e.r#type))}]},
        ],
    })
}

/// A one-paragraph account of an event for people.
fn summary(e: &pb::RegistryEvent, details: &serde_json::Value, link_base: Option<&str>) -> String {
    use pb::EventType as T;
    let subject = format!("*{}* version {}", e.model, e.version);
    let id = &e.transition_request_id;
    let mut lines = Vec::new();
    match T::try_from(e.r#type).unwrap_or(T::Unspecified) {
        T::TransitionRequested => {
            lines.push(format!(
                "{} requests {} for {subject}{}",
                e.actor,
                details["to_stage"].as_str().unwrap_or("?"),
                if e.comment.is_empty() {
                    String::new()
                } else {
                    format!(": “{}”", e.comment)
                }
            ));
            if let Some(uri) = details["artifact_uri"].as_str() {
                lines.push(format!("artifact: {uri}"));
            }
            if let Some(metrics) = details["metrics"].as_object() {
                for (set, values) in metrics {
                    lines.push(format!("metrics on {set}: {values}"));
                }
            }
            if let Some(rows) = details["comparison"]["metrics"].as_array() {
                let parts: Vec<String> = rows
                    .iter()
                    .map(|m| {
                        format!(
                            "{} {} → {} ({})",
                            m["metric"].as_str().unwrap_or("?"),
                            m["baseline"],
                            m["candidate"],
                            m["outcome"].as_str().unwrap_or("?").to_lowercase()
                        )
                    })
                    .collect();
                lines.push(format!(
                    "vs production version {}: {}",
                    details["comparison"]["baseline_version"],
                    parts.join(", ")
                ));
            }
            if let Some(gates) = details["gate_results"].as_array() {
                for g in gates {
                    let mark = if g["passed"].as_bool() == Some(true) {
                        "pass"
                    } else {
                        "FAIL"
                    };
                    lines.push(format!(
                        "gate {mark}: {}",
                        g["check"].as_str().unwrap_or("?")
                    ));
                }
            }
            lines.push(format!(
                "approve: `modelreg approve {id}`   reject: `modelreg reject {id} --comment WHY`"
            ));
            if let Some(base) = link_base {
                lines.push(format!("{}/requests/{id}", base.trim_end_matches('/')));
            }
        }
        T::TransitionApproved => lines.push(format!("{} approved {id} ({subject})", e.actor)),
        T::TransitionRejected => lines.push(format!(
            "{} rejected {id} ({subject}): “{}”",
            e.actor, e.comment
        )),
        T::StageChanged => {
            let cause = cause_label(e.cause);
            let verb = if cause == "ROLLBACK" {
                "rolled back to"
            } else {
                "is now in"
            };
            lines.push(format!(
                "{subject} {verb} PRODUCTION ({cause}, by {}){}",
                e.actor,
                if e.comment.is_empty() {
                    String::new()
                } else {
                    format!(": “{}”", e.comment)
                }
            ));
        }
        T::WorkerFailed => lines.push(format!(
            "worker {} gave up on {subject} after {} attempts: {}",
            details["worker"].as_str().unwrap_or("?"),
            details["attempts"],
            details["error"].as_str().unwrap_or("?")
        )),
        T::DeploymentReported => lines.push(format!(
            "deployment of {subject} to {} FAILED: {}",
            details["environment"].as_str().unwrap_or("?"),
            details["message"].as_str().unwrap_or("")
        )),
        other => lines.push(format!(
            "{}: {subject} ({})",
            event_type_label(other as i32),
            e.actor
        )),
    }
    lines.join("\n")
}
