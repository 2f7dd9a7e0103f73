//! The models page and a model's page: versions, stages, metrics, deployments, the production timeline.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use maud::{Markup, html};

use crate::domain::{
    Deployment, Evaluation, Event, Model, SetRef, Stage, TransitionRequest, Version,
};

use super::chart::{self, Point};
use super::encode_component;

use super::*;

/// Models, each with its production version, deployment state and pending requests.
pub fn models(page: &Page, models: &[Model], pending: &[TransitionRequest]) -> Markup {
    let mut waiting: HashMap<&str, Vec<&TransitionRequest>> = HashMap::new();
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
                                        a.pill href=(request_href(&r.id())) { (r.id()) " → " (stage_name(r.to_stage)) }
                                        " "
                                    }
                                }
                                td { (when(m.update_time)) }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// Deployment states of `version` (every version's when 0), one per environment.
pub(super) fn deployments(list: &[Deployment], version: i64) -> Markup {
    let shown: Vec<&Deployment> = list
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
pub(super) fn standard_metrics<'a>(v: &'a Version, set: Option<&SetRef>) -> BTreeMap<&'a str, f64> {
    let mut out = BTreeMap::new();
    let Some(set) = set else { return out };
    let mut evaluations: Vec<&Evaluation> =
        v.evaluations.iter().filter(|e| e.set == *set).collect();
    evaluations.sort_by_key(|e| e.create_time);
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
    model: &Model,
    versions: &[Version],
    pending: &[TransitionRequest],
    timeline: &[Event],
    metric: Option<&str>,
) -> Markup {
    let set = model.policy.standard_evaluation_set.as_ref();
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
    layout(
        page,
        html! {
            @if !model.description.is_empty() { p.lead { (model.description) } }
            (facts(model, set))
            @if !pending.is_empty() {
                h2 { "Pending requests" }
                ul #pending {
                    @for r in pending {
                        li { a href=(request_href(&r.id())) { (r.id()) } ": v" (r.version) " → " (stage_name(r.to_stage)) ", asked by " (r.requester) " " (when(r.create_time)) }
                    }
                }
            }
            h2 { "Versions" }
            (versions_table(versions, set))
            h2 { "Production timeline" }
            (production_timeline(timeline))
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

/// The model's facts: production, deployments, latest version, standard
/// set, reviewers and its audit link.
fn facts(model: &Model, set: Option<&SetRef>) -> Markup {
    html! {
        dl.facts {
            dt { "Production" }
            dd { @if model.production_version > 0 { span.stage.production { "v" (model.production_version) } } @else { span.muted { "none" } } }
            dt { "Deployments" }
            dd { (deployments(&model.deployments, 0)) }
            dt { "Latest version" }
            dd { "v" (model.latest_version) }
            dt { "Standard evaluation set" }
            dd { @if let Some(s) = set { (s.name) "@" (s.version) } @else { span.muted { "none in the policy" } } }
            dt { "Reviewers" }
            dd #reviewers {
                @for r in model.policy.reviewers() {
                    span.pill { (r.email) @if let Some(who) = &r.identity { " (" (who) ")" } } " "
                }
                @if model.policy.reviewers().is_empty() { span.muted { "none in the policy" } }
            }
            dt { "Audit" }
            dd { a href=(format!("/audit?model={}", encode_component(&model.name))) { "this model's events" } }
        }
    }
}

/// Every version, newest first, with its stage and standard-set metrics.
fn versions_table(versions: &[Version], set: Option<&SetRef>) -> Markup {
    let mut newest_first: Vec<&Version> = versions.iter().collect();
    newest_first.sort_by_key(|v| std::cmp::Reverse(v.version));
    html! {
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
                        td { (when(v.create_time)) " by " (v.created_by) }
                    }
                }
            }
    }
    }
}

/// Every entry into and exit from production, newest first.
fn production_timeline(timeline: &[Event]) -> Markup {
    html! {
        @if timeline.is_empty() {
            p.empty { "No version has been in production yet." }
        } @else {
            ol #timeline {
                @for e in timeline.iter().rev() {
                    @let entered = e.to_stage == Some(Stage::Production);
                    li class=(if entered { "entered" } else { "left" }) data-sequence=(e.sequence) {
                        span.time { (when(e.occur_time)) }
                        " v" (e.version)
                        @if entered { " entered Production" } @else { " left Production for " (event_stage_name(e.to_stage)) }
                        " (" (cause_name(e.cause)) ", " (e.actor) ")"
                        @if !e.comment.is_empty() { span.comment { " — " (e.comment) } }
                    }
                }
            }
    }
    }
}
