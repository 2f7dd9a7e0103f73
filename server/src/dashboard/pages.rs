//! The dashboard's HTML: one function per page, from data the handlers
//! fetched through the service. maud escapes every value it interpolates.
//!
//! Element ids and `data-` attributes are the pages' contract with the
//! browser test and with `live.js`; keep them.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use hyper::StatusCode;
use maud::{DOCTYPE, Markup, html};
use modelreg_api::v1 as pb;

use super::chart::{self, Point};
use super::{Visit, encode_component, may_decide, roles};
use crate::auth::Identity;
use crate::domain;

/// What every page's frame needs.
#[derive(Clone)]
pub struct Page {
    title: String,
    who: Option<Identity>,
    csrf: String,
    local: bool,
    /// The local-mode name last used in this session.
    actor: Option<String>,
    /// The SSE URL that tells this page to refresh.
    live: Option<String>,
    /// The newest sequence when the page's data was read.
    since: u64,
}

impl Page {
    /// The frame for `visit`.
    pub fn new(visit: &Visit, title: &str) -> Page {
        Page {
            title: title.to_owned(),
            who: visit.who.clone(),
            csrf: visit.session.csrf.clone(),
            local: visit.local,
            actor: visit.session.actor.clone(),
            live: None,
            since: 0,
        }
    }

    /// With a title.
    pub fn titled(mut self, title: &str) -> Page {
        self.title = title.to_owned();
        self
    }

    /// Read at sequence `since`: the live stream resumes after it.
    pub fn since(mut self, since: u64) -> Page {
        self.since = since;
        self
    }

    /// Refreshed by events from `url` (an `/events` URL).
    pub fn live(mut self, url: &str) -> Page {
        let sep = if url.contains('?') { '&' } else { '?' };
        self.live = Some(format!("{url}{sep}after={}", self.since));
        self
    }

    /// Shown as acting as `who` (the local-mode form names its actor).
    pub fn acting_as(mut self, who: &Identity) -> Page {
        self.who = Some(who.clone());
        self
    }
}

/// The frame around every page.
fn layout(page: &Page, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (page.title) " · modelreg" }
                link rel="stylesheet" href="/assets/style.css";
                script src="/assets/live.js" defer {}
            }
            body data-live=[page.live.as_deref()] {
                header.top {
                    a.brand href="/" { "modelreg" }
                    nav {
                        a href="/" { "Models" }
                        a href="/requests" { "Approvals" }
                        a href="/audit" { "Audit log" }
                    }
                    div #whoami {
                        @match &page.who {
                            Some(who) if page.local => {
                                span { "Local mode · " strong { (who.name) } }
                            }
                            Some(who) => {
                                span { strong { (who.name) } " · " (roles(who)) }
                                form.inline method="post" action="/signout" {
                                    input type="hidden" name="csrf" value=(page.csrf);
                                    button.link type="submit" { "Sign out" }
                                }
                            }
                            None => { a href="/signin" { "Sign in" } }
                        }
                    }
                }
                main {
                    h1 { (page.title) }
                    (body)
                }
                div #live-status hidden { "Updated elsewhere: " a href="" { "reload" } }
            }
        }
    }
}

/// An error page.
pub fn failure(page: &Page, status: StatusCode, message: &str) -> Markup {
    let page = Page {
        title: status.canonical_reason().unwrap_or("Error").to_owned(),
        live: None,
        ..page.clone()
    };
    layout(
        &page,
        html! {
            div #outcome.error {
                p { (message) }
            }
            p { a href="/" { "Back to the models" } }
        },
    )
}

/// The sign-in form.
pub fn signin(page: &Page, next: &str, error: Option<&str>) -> Markup {
    layout(
        page,
        html! {
            @if let Some(error) = error {
                p #outcome.error { (error) }
            }
            form #signin.card method="post" action="/signin" {
                input type="hidden" name="csrf" value=(page.csrf);
                input type="hidden" name="next" value=(next);
                @if page.local {
                    p.note { "Local mode: this server has no token file, so say who you are. Only this machine can reach it." }
                    label for="actor" { "Your name" }
                    input #actor type="text" name="actor" required maxlength="128" value=[page.actor.as_deref()] autofocus;
                } @else {
                    label for="token" { "Bearer token" }
                    input #token type="password" name="token" required autocomplete="current-password" autofocus;
                    p.note { "The token you use with " code { "modelreg --token" } "; it stays in this server's memory for the session (12 hours), never in the browser." }
                }
                button.primary type="submit" { "Sign in" }
            }
        },
    )
}

/// Models, each with its production version, deployment state and pending requests.
pub fn models(page: &Page, models: &[pb::Model], pending: &[pb::TransitionRequest]) -> Markup {
    let mut waiting: HashMap<&str, Vec<&pb::TransitionRequest>> = HashMap::new();
    for r in pending {
        waiting.entry(r.model.as_str()).or_default().push(r);
    }
    layout(
        page,
        html! {
            @if models.is_empty() {
                p.empty { "No models yet. Create one with " code { "modelreg model create NAME" } "." }
            } @else {
                table #models {
                    thead { tr { th { "Model" } th { "Production" } th { "Deployment" } th { "Latest" } th { "Pending requests" } th { "Updated" } } }
                    tbody {
                        @for m in models {
                            tr data-model=(m.name) {
                                td { a href=(format!("/models/{}", m.name)) { (m.name) } }
                                td { @if m.production_version > 0 { span.stage.production { "v" (m.production_version) } } @else { span.muted { "none" } } }
                                td { (deployments(&m.deployments, m.production_version)) }
                                td { "v" (m.latest_version) }
                                td {
                                    @for r in waiting.get(m.name.as_str()).map(Vec::as_slice).unwrap_or(&[]) {
                                        a.pill href=(request_href(&r.id)) { (r.id) " → " (stage_name(r.to_stage)) }
                                        " "
                                    }
                                }
                                td { (when(&m.update_time)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Deployment states of `version` (every version's when 0), one per environment.
fn deployments(list: &[pb::Deployment], version: i64) -> Markup {
    let shown: Vec<&pb::Deployment> = list
        .iter()
        .filter(|d| version == 0 || d.version == version)
        .collect();
    html! {
        @if shown.is_empty() {
            span.muted { "—" }
        }
        @for d in shown {
            span class=(format!("deploy {}", deployment_status(d.status))) title=(d.message) {
                (d.environment) ": " (deployment_status(d.status))
                @if version == 0 { " (v" (d.version) ")" }
            }
            " "
        }
    }
}

/// The standard evaluation set's latest metrics of a version.
fn standard_metrics<'a>(
    v: &'a pb::ModelVersion,
    set: Option<&pb::EvaluationSetRef>,
) -> BTreeMap<&'a str, f64> {
    let mut out = BTreeMap::new();
    let Some(set) = set else { return out };
    let mut evaluations: Vec<&pb::Evaluation> = v
        .evaluations
        .iter()
        .filter(|e| {
            e.evaluation_set
                .as_ref()
                .is_some_and(|s| s.name == set.name && s.version == set.version)
        })
        .collect();
    evaluations.sort_by_key(|e| e.create_time.as_ref().map(|t| (t.seconds, t.nanos)));
    for e in evaluations {
        for (k, value) in &e.metrics {
            out.insert(k.as_str(), *value);
        }
    }
    out
}

/// One model: versions, pending requests, the production timeline and a metric chart.
pub fn model(
    page: &Page,
    model: &pb::Model,
    versions: &[pb::ModelVersion],
    pending: &[pb::TransitionRequest],
    timeline: &[pb::RegistryEvent],
    metric: Option<&str>,
) -> Markup {
    let set = model
        .policy
        .as_ref()
        .and_then(|p| p.standard_evaluation_set.as_ref())
        .filter(|s| !s.name.is_empty());
    let by_version: Vec<(i64, BTreeMap<&str, f64>)> = versions
        .iter()
        .map(|v| (v.version, standard_metrics(v, set)))
        .collect();
    let names: BTreeSet<&str> = by_version
        .iter()
        .flat_map(|(_, m)| m.keys().copied())
        .collect();
    let chosen = metric
        .filter(|m| names.contains(m))
        .or_else(|| names.iter().next().copied());
    let mut points: Vec<Point> = match chosen {
        Some(name) => by_version
            .iter()
            .filter_map(|(v, m)| {
                m.get(name).map(|value| Point {
                    version: *v,
                    value: *value,
                })
            })
            .collect(),
        None => Vec::new(),
    };
    points.sort_by_key(|p| p.version);
    let mut newest_first: Vec<&pb::ModelVersion> = versions.iter().collect();
    newest_first.sort_by_key(|v| std::cmp::Reverse(v.version));
    layout(
        page,
        html! {
            @if !model.description.is_empty() { p.lead { (model.description) } }
            dl.facts {
                dt { "Production" }
                dd { @if model.production_version > 0 { span.stage.production { "v" (model.production_version) } } @else { span.muted { "none" } } }
                dt { "Deployments" }
                dd { (deployments(&model.deployments, 0)) }
                dt { "Latest version" }
                dd { "v" (model.latest_version) }
                dt { "Standard evaluation set" }
                dd { @if let Some(s) = set { (s.name) "@" (s.version) } @else { span.muted { "none in the policy" } } }
                dt { "Audit" }
                dd { a href=(format!("/audit?model={}", encode_component(&model.name))) { "this model's events" } }
            }
            @if !pending.is_empty() {
                h2 { "Pending requests" }
                ul #pending {
                    @for r in pending {
                        li { a href=(request_href(&r.id)) { (r.id) } ": v" (r.version) " → " (stage_name(r.to_stage)) ", asked by " (r.requester) " " (when(&r.create_time)) }
                    }
                }
            }
            h2 { "Versions" }
            table #versions {
                thead { tr { th { "Version" } th { "Stage" } th { "Aliases" } th { "Evaluation" } th { "Deployments" } th { "Registered" } } }
                tbody {
                    @for v in &newest_first {
                        tr data-version=(v.version) {
                            td { "v" (v.version) }
                            td.stage { span class=(format!("stage {}", stage_class(v.stage))) { (stage_name(v.stage)) } }
                            td { @for a in &v.aliases { span.pill { (a) } " " } }
                            td {
                                @let m = standard_metrics(v, set);
                                @if m.is_empty() {
                                    @if v.evaluations.is_empty() { span.muted { "—" } } @else { span.muted { (v.evaluations.len()) " on other sets" } }
                                }
                                @for (k, value) in &m { span.metric { (k) " " strong { (num(*value)) } } " " }
                            }
                            td { (deployments(&v.deployments, 0)) }
                            td { (when(&v.create_time)) " by " (v.created_by) }
                        }
                    }
                }
            }
            h2 { "Production timeline" }
            @if timeline.is_empty() {
                p.empty { "No version has been in production yet." }
            } @else {
                ol #timeline {
                    @for e in timeline.iter().rev() {
                        @let entered = e.to_stage == pb::Stage::Production as i32;
                        li class=(if entered { "entered" } else { "left" }) data-sequence=(e.sequence) {
                            span.time { (when(&e.occur_time)) }
                            " v" (e.version)
                            @if entered { " entered Production" } @else { " left Production for " (stage_name(e.to_stage)) }
                            " (" (cause_name(e.cause)) ", " (e.actor) ")"
                            @if !e.comment.is_empty() { span.comment { " — " (e.comment) } }
                        }
                    }
                }
            }
            h2 { "Metric across versions" }
            @if names.is_empty() {
                p.empty { "No evaluations on the standard evaluation set yet." }
            } @else {
                form.inline #chart-metric method="get" action=(format!("/models/{}", model.name)) {
                    label for="metric" { "Metric " }
                    select #metric name="metric" {
                        @for n in &names { option value=(n) selected[Some(*n) == chosen] { (n) } }
                    }
                    " "
                    button type="submit" { "Show" }
                }
                @if let Some(svg) = chart::metric_chart(chosen.unwrap_or(""), &points, model.production_version) {
                    figure.chart { (svg) figcaption { (chosen.unwrap_or("")) " on " (set.map(|s| format!("{}@{}", s.name, s.version)).unwrap_or_default()) "; the ringed point is in production." } }
                }
            }
        },
    )
}

/// Pending approvals across models.
pub fn requests(page: &Page, pending: &[pb::TransitionRequest]) -> Markup {
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
                            tr data-request=(r.id) {
                                td { a href=(request_href(&r.id)) { (r.id) } }
                                td { a href=(format!("/models/{}", r.model)) { (r.model) } }
                                td { "v" (r.version) }
                                td { (stage_name(r.from_stage)) " → " (stage_name(r.to_stage)) @if r.rollback { " (rollback)" } }
                                td { (r.requester) }
                                td { (gate_summary(&r.gate_results)) }
                                td { (when(&r.create_time)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn gate_summary(gates: &[pb::GateResult]) -> Markup {
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
    pub request: pb::TransitionRequest,
    /// Its model (policy, production version).
    pub model: pb::Model,
    /// The version it would move.
    pub version: pb::ModelVersion,
    /// The policy's standard evaluation set.
    pub standard: Option<pb::EvaluationSetRef>,
    /// The candidate against production on the standard set, or why not.
    pub comparison: Option<Result<pb::VersionComparison, String>>,
}

/// One transition request with its evidence and, for those who may decide,
/// Approve / Reject.
pub fn request(page: &Page, ev: &Evidence) -> Markup {
    let r = &ev.request;
    let v = &ev.version;
    let pending = r.status == pb::TransitionRequestStatus::Pending as i32;
    let policy = ev.model.policy.clone().unwrap_or_default();
    let min_approvals = policy.min_approvals.unwrap_or(1).max(1);
    let self_ok = policy.allow_self_approval.unwrap_or(false);
    let candidate = standard_metrics(v, ev.standard.as_ref());
    let source = v.source.clone().unwrap_or_default();
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
                    dt { "Requested by" } dd { (r.requester) " " span.muted { (when(&r.create_time)) } }
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
                        li { "Approved by " strong { (a.approver) } " " span.muted { (when(&a.approve_time)) } @if !a.comment.is_empty() { " — " (a.comment) } }
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
                    " " span.muted { (when(&r.update_time)) }
                    @if !r.resolution_comment.is_empty() { " — " (r.resolution_comment) }
                }
            }
        },
    )
}

/// The candidate's metrics beside production's.
fn metrics_table(ev: &Evidence, candidate: &BTreeMap<&str, f64>) -> Markup {
    let r = &ev.request;
    html! {
        @match &ev.comparison {
            Some(Ok(c)) => {
                table #metrics {
                    thead { tr { th { "Metric" } th { "v" (c.candidate_version) " (this)" } th { "v" (c.baseline_version) " (production)" } th { "Change" } th { "" } } }
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
fn decision_form(page: &Page, r: &pb::TransitionRequest, self_ok: bool) -> Markup {
    let Some(who) = &page.who else {
        return html! {};
    };
    let action = format!("/requests/{}/decide", r.id);
    html! {
        @if !page.local && !may_decide(who) {
            p.note #no-decision { "You can read this request. Deciding needs the approver role; " (who.name) " has " (roles(who)) "." }
        } @else if !page.local && who.name == r.requester && !self_ok {
            p.note #no-decision { "You asked for this move, and the policy wants another approver (four-eyes). You can withdraw it with " code { "modelreg cancel " (r.id) } "." }
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
pub fn decided(
    page: &Page,
    decision: Decision,
    r: &pb::TransitionRequest,
    v: &pb::ModelVersion,
) -> Markup {
    let page = Page {
        title: format!("Request {}", r.id),
        live: None,
        ..page.clone()
    };
    let still_pending = r.status == pb::TransitionRequestStatus::Pending as i32;
    layout(
        &page,
        html! {
            div #outcome.ok {
                @match decision {
                    Decision::Approve if still_pending => p { "Approval recorded for " (r.id) ": " (r.approvals.len()) " given; the request still waits for another approver." },
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

fn next_links(r: &pb::TransitionRequest) -> Markup {
    html! {
        ul.links {
            li { a href=(request_href(&r.id)) { "The request" } }
            li { a #model-link href=(format!("/models/{}", r.model)) { "Model " (r.model) } }
            li { a href=(format!("/audit?model={}", encode_component(&r.model))) { "Audit log of " (r.model) } }
            li { a href="/requests" { "Other pending approvals" } }
        }
    }
}

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
pub fn audit(
    page: &Page,
    f: &AuditFilters,
    events: &[pb::RegistryEvent],
    chain: &pb::VerifyAuditLogResponse,
) -> Markup {
    let types: Vec<&str> = (1..)
        .map_while(|i| pb::EventType::try_from(i).ok())
        .map(|t| event_type_name(t as i32))
        .collect();
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
                    "Hash chain verified: " (chain.events_checked) " events, each linked to the one before."
                    @if let Some(head) = &chain.head {
                        br;
                        span.muted { "Head: record " }
                        code #head { (head.sequence) ":" (head.hash) }
                        span.muted { " outside the registry; " code { "modelreg audit verify --anchor " (head.sequence) ":…" } " proves later that nothing up to it was rewritten or cut." }
                    }
                }
            } @else {
                div #chain.broken { "Hash chain BROKEN at sequence " (chain.first_bad_sequence) ": " (chain.problem) }
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
                            tr data-sequence=(e.sequence) data-type=(event_type_name(e.r#type)) {
                                td.num { (e.sequence) }
                                td { (when(&e.occur_time)) }
                                td { code { (event_type_name(e.r#type)) } }
                                td { @if !e.model.is_empty() { a href=(format!("/models/{}", e.model)) { (e.model) } @if e.version > 0 { " v" (e.version) } } }
                                td {
                                    @if e.from_stage != e.to_stage && e.to_stage != 0 { (stage_name(e.from_stage)) " → " (stage_name(e.to_stage)) " " }
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

fn request_href(id: &str) -> String {
    format!("/requests/{id}")
}

/// `STAGE_CHANGED` for `EVENT_TYPE_STAGE_CHANGED`.
pub fn event_type_name(t: i32) -> &'static str {
    pb::EventType::try_from(t)
        .map(|t| t.as_str_name())
        .unwrap_or("EVENT_TYPE_UNSPECIFIED")
        .trim_start_matches("EVENT_TYPE_")
}

fn stage_name(s: i32) -> &'static str {
    match pb::Stage::try_from(s) {
        Ok(pb::Stage::Staging) => "Staging",
        Ok(pb::Stage::Production) => "Production",
        Ok(pb::Stage::Archived) => "Archived",
        Ok(pb::Stage::None) => "None",
        _ => "—",
    }
}

fn stage_class(s: i32) -> &'static str {
    match pb::Stage::try_from(s) {
        Ok(pb::Stage::Staging) => "staging",
        Ok(pb::Stage::Production) => "production",
        Ok(pb::Stage::Archived) => "archived",
        _ => "none",
    }
}

fn cause_name(c: i32) -> String {
    pb::StageChangeCause::try_from(c)
        .map(|c| c.as_str_name())
        .unwrap_or("")
        .trim_start_matches("STAGE_CHANGE_CAUSE_")
        .to_lowercase()
}

fn request_status(s: i32) -> String {
    let name = pb::TransitionRequestStatus::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("")
        .trim_start_matches("TRANSITION_REQUEST_STATUS_")
        .to_lowercase();
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => "Unknown".into(),
    }
}

fn deployment_status(s: i32) -> String {
    pb::DeploymentStatus::try_from(s)
        .map(|s| s.as_str_name())
        .unwrap_or("")
        .trim_start_matches("DEPLOYMENT_STATUS_")
        .to_lowercase()
}

fn outcome_name(o: i32) -> &'static str {
    match pb::Outcome::try_from(o) {
        Ok(pb::Outcome::Better) => "better",
        Ok(pb::Outcome::Worse) => "worse",
        Ok(pb::Outcome::Equal) => "equal",
        _ => "",
    }
}

fn outcome_class(o: i32) -> &'static str {
    match pb::Outcome::try_from(o) {
        Ok(pb::Outcome::Better) => "pass",
        Ok(pb::Outcome::Worse) => "fail",
        _ => "muted",
    }
}

/// A metric value: up to six decimals, no trailing zeros.
fn num(v: f64) -> String {
    domain::decimal(v, 6)
}

/// A relative change as a percentage with two decimals.
fn percent(ratio: f64) -> String {
    let p = ratio * 100.0;
    let text = format!("{p:+.2}%");
    if text == "-0.00%" || text == "+0.00%" {
        "0%".into()
    } else {
        text
    }
}

fn signed(v: f64) -> String {
    if v > 0.0 {
        format!("+{}", num(v))
    } else {
        num(v)
    }
}

/// A timestamp as `2026-11-27 04:33:25 UTC`.
fn when(t: &Option<prost_types::Timestamp>) -> String {
    let Some(t) = t else { return String::new() };
    let micros = t.seconds.saturating_mul(1_000_000);
    let text = domain::rfc3339(micros);
    format!("{} UTC", text.trim_end_matches('Z').replacen('T', " ", 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_read_well() {
        assert_eq!(
            event_type_name(pb::EventType::TransitionApproved as i32),
            "TRANSITION_APPROVED"
        );
        assert_eq!(event_type_name(999), "UNSPECIFIED");
        assert_eq!(num(0.9300000001), "0.93");
        assert_eq!(num(-0.0), "0");
        assert_eq!(signed(0.02), "+0.02");
        assert_eq!(
            request_status(pb::TransitionRequestStatus::Pending as i32),
            "Pending"
        );
        let t = prost_types::Timestamp {
            seconds: 1_795_000_000,
            nanos: 5,
        };
        assert_eq!(when(&Some(t)), "2026-11-18 11:06:40 UTC");
    }
}
