//! The audit log page, newest first, with its filters and the chain's status.

use maud::{Markup, html};

use crate::domain::{Event, EventKind};
use crate::store::ChainReport;

use super::encode_component;

use super::*;

/// The audit page's filters.
pub struct AuditFilters {
    /// Model name, or empty.
    pub model: String,
    /// Actor, or empty.
    pub actor: String,
    /// Event type name without `EVENT_TYPE_`, or empty.
    pub kind: String,
}

/// The audit log, newest first, with filters and the chain's verification.
pub fn audit(page: &Page, f: &AuditFilters, events: &[Event], chain: &ChainReport) -> Markup {
    let types: Vec<&str> = EventKind::ALL.iter().map(|k| k.as_str()).collect();
    let older = (events.len() >= 100)
        .then(|| events.first())
        .flatten()
        .map(|first| {
            format!(
                "/audit?model={}&actor={}&type={}&before={}",
                encode_component(&f.model),
                encode_component(&f.actor),
                encode_component(&f.kind),
                first.sequence
            )
        });
    layout(
        page,
        html! {
            @if chain.ok {
                div #chain.verified {
                    "Hash chain verified: " (chain.checked) " events, each linked to the one before."
                    @if let Some((sequence, hash)) = &chain.head {
                        br;
                        span.muted { "Head: record " }
                        code #head { (sequence) ":" (hash) }
                        span.muted { " outside the registry; " code { "modelreg audit verify --anchor " (sequence) ":…" } " proves later that nothing up to it was rewritten or cut." }
                    }
                }
            } @else {
                div #chain.broken { "Hash chain BROKEN at sequence " (chain.first_bad) ": " (chain.problem) }
            }
            form #audit-filter.inline method="get" action="/audit" {
                label { "Model " input type="text" name="model" value=(f.model) size="14"; }
                label { "Actor " input type="text" name="actor" value=(f.actor) size="12"; }
                label { "Type "
                    select name="type" {
                        option value="" selected[f.kind.is_empty()] { "any" }
                        @for t in &types { option value=(t) selected[*t == f.kind] { (t) } }
                    }
                }
                button type="submit" { "Filter" }
            }
            @if events.is_empty() {
                p.empty { "No events match." }
            } @else {
                table #events {
                    thead { tr { th { "#" } th { "Time" } th { "Type" } th { "Model" } th { "Change" } th { "Actor" } th { "Comment" } th { "Hash" } } }
                    tbody {
                        @for e in events.iter().rev() {
                            tr data-sequence=(e.sequence) data-type=(e.kind.as_str()) {
                                td.num { (e.sequence) }
                                td { (when(e.occur_time)) }
                                td { code { (e.kind.as_str()) } }
                                td { @if !e.model.is_empty() { a href=(format!("/models/{}", e.model)) { (e.model) } @if e.version > 0 { " v" (e.version) } } }
                                td {
                                    @if e.from_stage != e.to_stage && e.to_stage.is_some() { (event_stage_name(e.from_stage)) " → " (event_stage_name(e.to_stage)) " " }
                                    @if !e.transition_request_id.is_empty() { a href=(request_href(&e.transition_request_id)) { (e.transition_request_id) } }
                                }
                                td { (e.actor) }
                                td { (e.comment) }
                                td { code.small title=(e.hash) { (e.hash.get(..12).unwrap_or(&e.hash)) } }
                            }
                        }
                    }
                }
                @if let Some(href) = older { p { a #older href=(href) { "Older events" } } }
            }
        },
    )
}
