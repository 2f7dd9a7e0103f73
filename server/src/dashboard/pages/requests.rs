//! Pending approvals, a request's evidence and its decision form, and what a decision came to.

use std::collections::BTreeMap;

use maud::{Markup, html};

use crate::domain::{
    Comparison, GateResult, Model, RequestStatus, SetRef, TransitionRequest, Version,
};

use super::{encode_component, may_decide, roles};

use super::*;

/// Pending approvals across models.
pub fn requests(page: &Page, pending: &[TransitionRequest]) -> Markup {
    layout(
        page,
        html! {
            @if pending.is_empty() {
                p.empty { "Nothing waits for approval." }
            } @else {
                table #requests {
                    thead { tr { th { "Request" } th { "Model" } th { "Version" } th { "Move" } th { "Requester" } th { "Gates" } th { "Requested" } } }
                    tbody {
                        @for r in pending {
                            tr data-request=(r.id()) {
                                td { a href=(request_href(&r.id())) { (r.id()) } }
                                td { a href=(format!("/models/{}", r.model)) { (r.model) } }
                                td { "v" (r.version) }
                                td { (stage_name(r.from_stage)) " → " (stage_name(r.to_stage)) @if r.rollback { " (rollback)" } }
                                td { (r.requester) }
                                td { (gate_summary(&r.gate_results)) }
                                td { (when(r.create_time)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

pub(super) fn gate_summary(gates: &[GateResult]) -> Markup {
    let failed = gates.iter().filter(|g| !g.passed).count();
    html! {
        @if gates.is_empty() { span.muted { "none" } }
        @else if failed == 0 { span.pass { "all " (gates.len()) " pass" } }
        @else { span.fail { (failed) " of " (gates.len()) " fail" } }
    }
}

/// What the request page shows.
pub struct Evidence {
    /// The request.
    pub request: TransitionRequest,
    /// Its model (policy, production version).
    pub model: Model,
    /// The version it would move.
    pub version: Version,
    /// The policy's standard evaluation set.
    pub standard: Option<SetRef>,
    /// The candidate against production on the standard set, or why not.
    pub comparison: Option<Result<Comparison, String>>,
}

/// One transition request with its evidence and, for those who may decide,
/// Approve / Reject.
pub fn request(page: &Page, ev: &Evidence) -> Markup {
    let r = &ev.request;
    let v = &ev.version;
    let pending = r.status == RequestStatus::Pending;
    let policy = &ev.model.policy;
    let min_approvals = policy.min_approvals().max(1);
    let self_ok = policy.allow_self_approval();
    let candidate = standard_metrics(v, ev.standard.as_ref());
    let source = &v.source;
    layout(
        page,
        html! {
            section #evidence {
                dl.facts {
                    dt { "Model" } dd { a href=(format!("/models/{}", r.model)) { (r.model) } }
                    dt { "Version" } dd { "v" (r.version) @if !v.description.is_empty() { " — " (v.description) } }
                    dt { "Move" } dd { span.stage { (stage_name(r.from_stage)) } " → " span class=(format!("stage {}", stage_class(r.to_stage))) { (stage_name(r.to_stage)) } @if r.rollback { " (rollback)" } }
                    dt { "Status" } dd #status { (request_status(r.status)) }
                    dt { "Artifact" } dd { code { (v.artifact_uri) } br; code.small { (v.artifact_digest) } }
                    @if !source.commit.is_empty() || !source.pipeline_url.is_empty() {
                        dt { "Source" }
                        dd {
                            @if !source.repository.is_empty() { (source.repository) " " }
                            @if !source.commit.is_empty() { code { (source.commit) } " " }
                            // Links only where the server would accept the URL today: one
                            // stored before http(s) was required is shown as text.
                            @if crate::domain::parse_link("pipeline_url", &source.pipeline_url).is_ok_and(|u| !u.is_empty()) {
                                a href=(source.pipeline_url) rel="noreferrer" { "pipeline" }
                            } @else if !source.pipeline_url.is_empty() { code { (source.pipeline_url) } }
                        }
                    }
                    dt { "Requested by" } dd { (r.requester) " " span.muted { (when(r.create_time)) } }
                    dt { "Comment" } dd { @if r.comment.is_empty() { span.muted { "—" } } @else { (r.comment) } }
                }
            }
            h2 { "Evaluation" }
            @match &ev.standard {
                None => p.empty { "The policy names no standard evaluation set." },
                Some(set) => p.note { "On " (set.name) "@" (set.version) "." },
            }
            (metrics_table(ev, &candidate))
            h2 { "Gates" }
            @if r.gate_results.is_empty() {
                p.empty { "The policy has no metric gates." }
            } @else {
                p.note { "As checked when the request was made; approving checks them again." }
                ul #gates {
                    @for g in &r.gate_results {
                        li class=(if g.passed { "gate pass" } else { "gate fail" }) {
                            strong { (if g.passed { "pass" } else { "FAIL" }) } " "
                            (g.check)
                            ": " (num(g.candidate_value))
                            @if let Some(b) = g.baseline_value { " vs production " (num(b)) }
                            @if !g.message.is_empty() { span.muted { " — " (g.message) } }
                        }
                    }
                }
            }
            h2 { "Decision" }
            @if !r.approvals.is_empty() {
                ul #approvals {
                    @for a in &r.approvals {
                        li { "Approved by " strong { (a.approver) } " " span.muted { (when(a.approve_time)) } @if !a.comment.is_empty() { " — " (a.comment) } }
                    }
                }
            }
            @if pending {
                p.note { (r.approvals.len()) " of " (min_approvals) " approval" @if min_approvals > 1 { "s" } " given." }
                (decision_form(page, r, self_ok))
            } @else {
                p #resolution {
                    (request_status(r.status))
                    @if !r.resolved_by.is_empty() { " by " strong { (r.resolved_by) } }
                    " " span.muted { (when(r.update_time)) }
                    @if !r.resolution_comment.is_empty() { " — " (r.resolution_comment) }
                }
            }
        },
    )
}

/// The candidate's metrics beside production's.
pub(super) fn metrics_table(ev: &Evidence, candidate: &BTreeMap<&str, f64>) -> Markup {
    let r = &ev.request;
    html! {
        @match &ev.comparison {
            Some(Ok(c)) => {
                table #metrics {
                    thead { tr { th { "Metric" } th { "v" (c.candidate) " (this)" } th { "v" (c.baseline) " (production)" } th { "Change" } th { "" } } }
                    tbody {
                        @for m in &c.metrics {
                            tr data-metric=(m.metric) {
                                td { (m.metric) span.muted { @if m.higher_is_better { " ↑" } @else { " ↓" } } }
                                td.num { (num(m.candidate)) }
                                td.num { (num(m.baseline)) }
                                td.num { (signed(m.delta)) " (" (percent(m.relative_delta)) ")" }
                                td class=(outcome_class(m.outcome)) { (outcome_name(m.outcome)) }
                            }
                        }
                    }
                }
            }
            other => {
                @if let Some(Err(why)) = other {
                    p.note { "No comparison with production: " (why) }
                }
                @if candidate.is_empty() {
                    p.empty #no-metrics { "No metrics on the standard set for v" (r.version) "." }
                } @else {
                    table #metrics {
                        thead { tr { th { "Metric" } th { "v" (r.version) " (this)" } th { "Production" } } }
                        tbody {
                            @for (k, value) in candidate {
                                tr data-metric=(k) {
                                    td { (k) }
                                    td.num { (num(*value)) }
                                    td.num.muted { @if ev.model.production_version > 0 && ev.model.production_version != r.version { "not evaluated" } @else { "none" } }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Approve / Reject for those whose click would be accepted; otherwise why not.
pub(super) fn decision_form(page: &Page, r: &TransitionRequest, self_ok: bool) -> Markup {
    let Some(who) = &page.who else {
        return html! {};
    };
    let action = format!("/requests/{}/decide", r.id());
    html! {
        @if !page.local && !may_decide(who) {
            p.note #no-decision { "You can read this request. Deciding needs the approver role; " (who.name) " has " (roles(who)) "." }
        } @else if !page.local && who.name == r.requester && !self_ok {
            p.note #no-decision { "You asked for this move, and the policy wants another approver (four-eyes). You can withdraw it with " code { "modelreg cancel " (r.id()) } "." }
        } @else if !page.local && r.approvals.iter().any(|a| a.approver == who.name) {
            p.note #no-decision { "You approved this already; it waits for another approver." }
        } @else {
            form #decide.card method="post" action=(action) {
                input type="hidden" name="csrf" value=(page.csrf);
                @if page.local {
                    label for="actor" { "Acting as" }
                    input #actor type="text" name="actor" required maxlength="128" value=[page.actor.as_deref()];
                }
                label for="comment" { "Comment" }
                textarea #comment name="comment" rows="3" placeholder="What you checked, or why not" {}
                div.buttons {
                    button.approve type="submit" name="decision" value="approve" { "Approve" }
                    button.reject type="submit" name="decision" value="reject" { "Reject" }
                }
            }
        }
    }
}

/// What a decision did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Approve was pressed.
    Approve,
    /// Reject was pressed.
    Reject,
}

/// The page after a decision the registry accepted.
pub fn decided(page: &Page, decision: Decision, r: &TransitionRequest, v: &Version) -> Markup {
    let page = Page {
        title: format!("Request {}", r.id()),
        live: None,
        ..page.clone()
    };
    let still_pending = r.status == RequestStatus::Pending;
    layout(
        &page,
        html! {
            div #outcome.ok {
                @match decision {
                    Decision::Approve if still_pending => p { "Approval recorded for " (r.id()) ": " (r.approvals.len()) " given; the request still waits for another approver." },
                    Decision::Approve => p { "Approved: " (r.model) " version " (r.version) " is now in " strong { (stage_name(v.stage)) } "." },
                    Decision::Reject => p { "Rejected: " (r.model) " version " (r.version) " stays in " strong { (stage_name(v.stage)) } "." },
                }
            }
            (next_links(r))
        },
    )
}

/// The page after a decision the registry refused.
pub fn refused(page: &Page, id: &str, message: &str) -> Markup {
    let page = Page {
        title: format!("Request {id}"),
        live: None,
        ..page.clone()
    };
    layout(
        &page,
        html! {
            div #outcome.error { p { "Not done: " (message) } }
            p { a href=(request_href(id)) { "Back to the request" } }
        },
    )
}

pub(super) fn next_links(r: &TransitionRequest) -> Markup {
    html! {
        ul.links {
            li { a href=(request_href(&r.id())) { "The request" } }
            li { a #model-link href=(format!("/models/{}", r.model)) { "Model " (r.model) } }
            li { a href=(format!("/audit?model={}", encode_component(&r.model))) { "Audit log of " (r.model) } }
            li { a href="/requests" { "Other pending approvals" } }
        }
    }
}
