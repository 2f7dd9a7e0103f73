//! The Slack-compatible message `modelreg notify` posts for an event: a
//! `text` summary in Slack's mrkdwn and the same text as `blocks`. It owns
//! Slack's markup and escaping rule; the wording is [`crate::summary`]'s,
//! delivery and signing are [`crate::webhook`]'s.

use crate::names::event_type_label;
use crate::pb;
use crate::summary::{Markup, escape_with, summary};

/// Slack's mrkdwn: `*bold*`, `` `code` ``, bare URLs (Slack links them).
const MRKDWN: Markup = Markup {
    escape,
    strong: |t| format!("*{t}*"),
    code: |t| format!("`{t}`"),
    link: str::to_owned,
};

/// The Slack body for event `e` (`details` is its `details` as JSON);
/// `link_base` is the dashboard's base URL for links to requests.
pub fn message(
    e: &pb::RegistryEvent,
    details: &serde_json::Value,
    link_base: Option<&str>,
) -> serde_json::Value {
    let text = summary(e, details, link_base, &MRKDWN).join("\n");
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
    escape_with(text, &[('&', "&amp;"), ('<', "&lt;"), ('>', "&gt;")])
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
            "consumer": text,
            "reason": text,
            "event_sequence": 7,
            "deliveries": 3,
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
            T::DeadLettered,
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
