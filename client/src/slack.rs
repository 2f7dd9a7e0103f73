//! The Slack-compatible message `modelreg notify` posts for an event: a
//! `text` summary in Slack's mrkdwn and the same text as `blocks`. It owns
//! the wording and the escaping of every user-supplied string in it;
//! delivery and signing are [`crate::webhook`]'s.

use crate::names::{cause_label, event_type_label};
use crate::pb;

/// The Slack body for event `e` (`details` is its `details` as JSON);
/// `link_base` is the dashboard's base URL for links to requests.
pub fn message(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
) -> serde_json::Value {
    // The summary reads user-supplied text only from these escaped copies.
    let text = summary(
        &escape_event(e),
        &escape_json(details),
        link_base.map(escape).as_deref(),
    );
    serde_json::json!({
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("modelreg event {} · {}", e.sequence, event_type_label(e.r#type))}]},
        ],
    })
}

/// `text` as Slack shows it literally: `&`, `<` and `>` become `&amp;`,
/// `&lt;` and `&gt;`, Slack's own escaping rule. Unescaped, a comment could
/// mention `<!channel>` or show `<https://evil.example|a trusted URL>`;
/// the rest of mrkdwn (`*bold*`, `_italic_`) only styles text.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// `value` with every string in it, object keys included, escaped for Slack.
fn escape_json(value: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Value::String(s) => Value::String(escape(s)),
        Value::Array(items) => Value::Array(items.iter().map(escape_json).collect()),
        Value::Object(fields) => Value::Object(
            fields
                .iter()
                .map(|(k, v)| (escape(k), escape_json(v)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// The event with each of its strings escaped for Slack.
fn escape_event(e: &pb::RegistryEvent) -> pb::RegistryEvent {
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

/// A one-paragraph account of an event for people, in mrkdwn, from an event
/// and details already escaped: its own markup is `*…*` and backticks only.
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

#[cfg(test)]
mod tests {
    use super::*;
    use pb::EventType as T;

    /// A comment that, sent raw, pings the whole channel and shows a link
    /// to one place under the text of another.
    const HOSTILE: &str = "<!channel> approve here: <https://evil.example/approve|https://modelreg.example/requests/m:1>";
    /// [`HOSTILE`] as Slack must receive it to show it as typed.
    const ESCAPED: &str = "&lt;!channel&gt; approve here: &lt;https://evil.example/approve|https://modelreg.example/requests/m:1&gt;";

    fn event(kind: T, text: &str) -> pb::RegistryEvent {
        pb::RegistryEvent {
            sequence: 7,
            r#type: kind as i32,
            model: "m".into(),
            version: 1,
            to_stage: pb::Stage::Production as i32,
            actor: format!("mallory {text}"),
            comment: text.into(),
            transition_request_id: "m:1".into(),
            ..Default::default()
        }
    }

    /// Every user-supplied field of the event types the notifier forwards.
    fn details(text: &str) -> serde_json::Value {
        serde_json::json!({
            "to_stage": "PRODUCTION",
            "artifact_uri": format!("s3://models/{text}"),
            "metrics": {"holdout@v1": {text: 0.9}},
            "comparison": {
                "baseline_version": 1,
                "metrics": [{"metric": text, "baseline": 0.8, "candidate": 0.9, "outcome": "OUTCOME_BETTER"}],
            },
            "gate_results": [{"check": format!("{text} >= 0.8"), "passed": true}],
            "worker": text,
            "attempts": 2,
            "error": text,
            "environment": text,
            "message": text,
            "status": "DEPLOYMENT_STATUS_FAILED",
        })
    }

    /// Slack markup in user-supplied text (comments, actors, artifact URIs,
    /// metric names, gate checks, worker errors, environments, deployment
    /// messages) reaches Slack escaped by Slack's rule (`&amp;`, `&lt;`,
    /// `&gt;`), so it is shown as typed: no mention, no disguised link. The
    /// notifier's own link to the request still stands alone on its line.
    #[test]
    fn slack_markup_in_user_text_is_escaped() {
        let kinds = [
            T::TransitionRequested,
            T::TransitionApproved,
            T::TransitionRejected,
            T::StageChanged,
            T::WorkerFailed,
            T::DeploymentReported,
            T::LiveMetricBreach,
        ];
        for kind in kinds {
            let body = message(
                &event(kind, HOSTILE),
                &details(HOSTILE),
                Some("https://modelreg.example"),
            );
            let text = body["text"].as_str().unwrap();
            assert!(
                !text.contains(['<', '>']),
                "{kind:?}: raw Slack markup in {text:?}"
            );
            for (at, _) in text.match_indices('&') {
                assert!(
                    ["&amp;", "&lt;", "&gt;"]
                        .iter()
                        .any(|e| text[at..].starts_with(e)),
                    "{kind:?}: a bare & in {text:?}"
                );
            }
            assert!(text.contains(ESCAPED), "{kind:?}: {text}");
            assert_eq!(body["blocks"][0]["text"]["text"].as_str(), Some(text));
        }

        let body = message(
            &event(T::TransitionRequested, HOSTILE),
            &details(HOSTILE),
            Some("https://modelreg.example/"),
        );
        let text = body["text"].as_str().unwrap();
        assert!(
            text.lines()
                .any(|l| l == "https://modelreg.example/requests/m:1"),
            "{text}"
        );
        assert!(text.contains("`modelreg approve m:1`"), "{text}");
        assert!(text.contains("gate pass: &lt;!channel&gt;"), "{text}");
        let plain = message(
            &event(T::TransitionRejected, "fine & dandy"),
            &details(""),
            None,
        );
        assert!(
            plain["text"]
                .as_str()
                .unwrap()
                .contains("“fine &amp; dandy”"),
            "{plain}"
        );
    }
}
