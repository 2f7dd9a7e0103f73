//! The words of a notification: what an event means for people, with the
//! evidence a reviewer needs for a request (artifact, metrics beside
//! production's, each gate's result, how to approve). One wording for every
//! channel; each channel brings its [`Markup`]: Slack's mrkdwn
//! ([`crate::slack`]), plain text and HTML ([`crate::email`]). It escapes
//! every user-supplied string with the channel's own rule before it is
//! placed, so no channel can forget to.

use crate::names::{cause_label, event_type_label};
use crate::pb;

/// How one channel writes text: its escaping rule and the few marks the
/// summary uses. The marks receive text that is already escaped.
pub struct Markup {
    /// Makes a user-supplied string show literally in this channel.
    pub escape: fn(&str) -> String,
    /// Emphasis for the model's name.
    pub strong: fn(&str) -> String,
    /// A command to copy.
    pub code: fn(&str) -> String,
    /// The link to a request on the dashboard.
    pub link: fn(&str) -> String,
}

/// `text` with each character found in `table` replaced by its entity:
/// the escaping rule of a channel, given as its table.
pub fn escape_with(text: &str, table: &[(char, &str)]) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match table.iter().find(|(from, _)| *from == c) {
            Some((_, to)) => out.push_str(to),
            None => out.push(c),
        }
    }
    out
}

/// A count or version number from event details, which carry numbers as
/// JSON floats: `3`, not `3.0`.
fn whole(value: &serde_json::Value) -> String {
    match value.as_f64() {
        Some(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", n as i64),
        _ => value.to_string(),
    }
}

/// `value` with every string in it, object keys included, made literal by `escape`.
fn escape_json(value: &serde_json::Value, escape: fn(&str) -> String) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(escape(s)),
        Value::Array(items) => Value::Array(items.iter().map(|v| escape_json(v, escape)).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (escape(k), escape_json(v, escape)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The event with each of its strings made literal by `escape`.
fn escape_event(e: &pb::RegistryEvent, escape: fn(&str) -> String) -> pb::RegistryEvent {
    pb::RegistryEvent {
        model: escape(&e.model),
        actor: escape(&e.actor),
        comment: escape(&e.comment),
        prev_hash: escape(&e.prev_hash),
        hash: escape(&e.hash),
        transition_request_id: escape(&e.transition_request_id),
        ..e.clone()
    }
}

/// A one-paragraph account of event `e` for people, one line per item, in
/// `markup` (`details` is the event's `details` as JSON; `link_base` the
/// dashboard's base URL for links to requests). Every string taken from the
/// event, and the link base, is escaped by `markup` before it is used.
pub fn summary(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
    markup: &Markup,
) -> Vec<String> {
    let escaped = escape_event(e, markup.escape);
    let details = &escape_json(details, markup.escape);
    let link_base = link_base.map(markup.escape);
    lines(&escaped, details, link_base.as_deref(), markup)
}

/// [`summary`] of an event and details already escaped.
fn lines(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
    markup: &Markup,
) -> Vec<String> {
    use pb::EventType as T;
    let subject = format!("{} version {}", (markup.strong)(&e.model), e.version);
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
                    whole(&details["comparison"]["baseline_version"]),
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
                "approve: {}   reject: {}",
                (markup.code)(&format!("modelreg approve {id}")),
                (markup.code)(&format!("modelreg reject {id} --comment WHY"))
            ));
            if let Some(base) = link_base {
                let url = format!("{}/requests/{id}", base.trim_end_matches('/'));
                lines.push((markup.link)(&url));
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
            whole(&details["attempts"]),
            details["error"].as_str().unwrap_or("?")
        )),
        T::DeadLettered => {
            let consumer = details["consumer"].as_str().unwrap_or("?");
            let sequence = whole(&details["event_sequence"]);
            lines.push(format!(
                "consumer {consumer} parked event {sequence} of {subject} as a dead letter after {} deliveries: {}",
                whole(&details["deliveries"]),
                details["reason"].as_str().unwrap_or("?")
            ));
            lines.push(format!(
                "retry: {}",
                (markup.code)(&format!("modelreg consumers retry {consumer} {sequence}"))
            ));
        }
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
    lines
}
