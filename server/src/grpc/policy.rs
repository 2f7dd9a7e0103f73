//! Policies on the wire and back: presence-aware fields (unset means "use
//! the default", an empty list means "none"), each bad field reported with
//! its path.

use std::ops::RangeInclusive;

use modelreg_api::v1 as pb;

use super::convert::*;
use crate::domain::{
    ArchivalPolicy, Gate, LiveMetricAction, LiveMetricRule, MAX_ARCHIVE_AFTER_DAYS, MAX_GATES,
    MAX_LIVE_WINDOW_MICROS, MAX_MIN_APPROVALS, MIN_LIVE_WINDOW_MICROS, Policy, SetRef, Stage,
    Violations,
};
use crate::error::Result;

/// A policy on the wire, with presence kept as stored.
pub fn policy_to_pb(p: &Policy) -> pb::Policy {
    pb::Policy {
        approval_required_for: p
            .approval_required_for
            .as_ref()
            .map(|stages| pb::StageList {
                stages: stages.iter().map(|s| stage_to_pb(*s) as i32).collect(),
            }),
        min_approvals: p.min_approvals.map(|n| n as i32),
        allow_self_approval: p.allow_self_approval,
        standard_evaluation_set: p.standard_evaluation_set.clone().map(set_ref_to_pb),
        gates: p.gates.as_ref().map(|gates| pb::MetricGateList {
            gates: gates
                .iter()
                .map(|g| pb::MetricGate {
                    metric: g.metric.clone(),
                    min_value: g.min_value,
                    max_value: g.max_value,
                    max_regression: g.max_regression,
                    min_improvement: g.min_improvement,
                })
                .collect(),
        }),
        rollback_requires_approval: p.rollback_requires_approval,
        reviewers: p.reviewers.as_ref().map(|list| pb::ReviewerList {
            reviewers: list
                .iter()
                .map(|r| pb::Reviewer {
                    email: r.email.clone(),
                    identity: r.identity.clone().unwrap_or_default(),
                })
                .collect(),
        }),
        archival: p.archival.as_ref().map(|a| pb::ArchivalPolicy {
            archive_superseded_after_days: a.archive_superseded_after_days.map(|d| d as i32),
            live_metric: a.live_metric.as_ref().map(|r| pb::LiveMetricRule {
                metric: r.metric.clone(),
                threshold: r.threshold,
                higher_is_better: r.higher_is_better,
                window: Some(prost_types::Duration {
                    seconds: r.window_micros / 1_000_000,
                    nanos: (r.window_micros % 1_000_000 * 1000) as i32,
                }),
                action: match r.action {
                    LiveMetricAction::Alert => pb::LiveMetricAction::Alert,
                    LiveMetricAction::Rollback => pb::LiveMetricAction::Rollback,
                } as i32,
            }),
        }),
    }
}

/// An optional count (at `field`) that must lie within `range`; outside
/// it, `why` says so, given the number sent.
fn count_within(
    raw: Option<i32>,
    range: RangeInclusive<u32>,
    field: String,
    why: impl FnOnce(i32) -> String,
    v: &mut Violations,
) -> Option<u32> {
    let n = raw?;
    match u32::try_from(n) {
        Ok(count) if range.contains(&count) => Some(count),
        _ => {
            v.add(field, why(n));
            None
        }
    }
}

/// Checks the `archival` part of a wire policy (at `field`, e.g.
/// `policy.archival`). An empty message is the same as an unset one.
fn archival_from_pb(
    field: &str,
    raw: pb::ArchivalPolicy,
    v: &mut Violations,
) -> Option<ArchivalPolicy> {
    let days = count_within(
        raw.archive_superseded_after_days,
        0..=MAX_ARCHIVE_AFTER_DAYS,
        format!("{field}.archive_superseded_after_days"),
        |d| format!("must be between 0 (never archive) and {MAX_ARCHIVE_AFTER_DAYS} days; got {d}"),
        v,
    );
    let live_metric = raw
        .live_metric
        .and_then(|r| live_metric_from_pb(&format!("{field}.live_metric"), r, v));
    let policy = ArchivalPolicy {
        archive_superseded_after_days: days,
        live_metric,
    };
    (policy != ArchivalPolicy::default()).then_some(policy)
}

/// Checks the live-metric rule of an archival policy (at `field`).
fn live_metric_from_pb(
    field: &str,
    r: pb::LiveMetricRule,
    v: &mut Violations,
) -> Option<LiveMetricRule> {
    let at = field;
    let metric = v.take(crate::domain::parse_short_text(
        &format!("{at}.metric"),
        &r.metric,
    ));
    if !r.threshold.is_finite() {
        v.add(format!("{at}.threshold"), "must be a finite number");
    }
    let window = match r.window {
        None => {
            v.add(
                format!("{at}.window"),
                "is required: how long the metric must stay bad, from 1s to 30 days",
            );
            None
        }
        Some(w) => {
            let micros = i128::from(w.seconds) * 1_000_000 + i128::from(w.nanos) / 1000;
            let valid = (0..1_000_000_000).contains(&w.nanos)
                && (i128::from(MIN_LIVE_WINDOW_MICROS)..=i128::from(MAX_LIVE_WINDOW_MICROS))
                    .contains(&micros);
            if valid {
                Some(micros as i64)
            } else {
                v.add(format!("{at}.window"), "must be from 1 second to 30 days");
                None
            }
        }
    };
    let action = match pb::LiveMetricAction::try_from(r.action) {
        Ok(pb::LiveMetricAction::Unspecified | pb::LiveMetricAction::Alert) => {
            Some(LiveMetricAction::Alert)
        }
        Ok(pb::LiveMetricAction::Rollback) => Some(LiveMetricAction::Rollback),
        Err(_) => {
            v.add(
                format!("{at}.action"),
                format!(
                    "{} is not a valid action: use LIVE_METRIC_ACTION_ALERT or LIVE_METRIC_ACTION_ROLLBACK",
                    r.action
                ),
            );
            None
        }
    };
    Some(LiveMetricRule {
        metric: metric?,
        threshold: r.threshold,
        higher_is_better: r.higher_is_better,
        window_micros: window?,
        action: action?,
    })
}

/// Checks the stages that need approval (at `field`): known, each once.
fn stages_from_pb(field: &str, list: pb::StageList, v: &mut Violations) -> Vec<Stage> {
    let mut stages = Vec::new();
    for (i, s) in list.stages.iter().enumerate() {
        match stage_from_pb(*s) {
            Some(stage) if !stages.contains(&stage) => stages.push(stage),
            Some(stage) => v.add(
                format!("{field}.approval_required_for.stages[{i}]"),
                format!("{stage} is listed twice"),
            ),
            None => v.add(
                format!("{field}.approval_required_for.stages[{i}]"),
                format!("{s} is not a valid stage"),
            ),
        }
    }
    stages
}

/// Checks the gates of a wire policy (at `field`).
fn gates_from_pb(field: &str, list: pb::MetricGateList, v: &mut Violations) -> Vec<Gate> {
    if list.gates.len() > MAX_GATES {
        v.add(
            format!("{field}.gates.gates"),
            format!("at most {MAX_GATES} gates are allowed"),
        );
    }
    let mut gates = Vec::new();
    for (i, g) in list.gates.into_iter().enumerate() {
        let at = format!("{field}.gates.gates[{i}]");
        v.take(crate::domain::parse_short_text(
            &format!("{at}.metric"),
            &g.metric,
        ));
        let bounds = [
            ("min_value", g.min_value),
            ("max_value", g.max_value),
            ("max_regression", g.max_regression),
            ("min_improvement", g.min_improvement),
        ];
        if bounds.iter().all(|(_, b)| b.is_none()) {
            v.add(
                at.clone(),
                "a gate needs at least one of min_value, max_value, max_regression, min_improvement",
            );
        }
        for (name, bound) in bounds {
            match bound {
                Some(b) if !b.is_finite() => {
                    v.add(format!("{at}.{name}"), "must be a finite number")
                }
                Some(b) if b < 0.0 && (name == "max_regression" || name == "min_improvement") => v
                    .add(
                        format!("{at}.{name}"),
                        "is a distance in the metric's better direction and must not be negative",
                    ),
                _ => {}
            }
        }
        if let (Some(lo), Some(hi)) = (g.min_value, g.max_value)
            && lo > hi
        {
            v.add(
                format!("{at}.min_value"),
                format!("{lo} is above max_value {hi}: no value could pass"),
            );
        }
        gates.push(Gate {
            metric: g.metric,
            min_value: g.min_value,
            max_value: g.max_value,
            max_regression: g.max_regression,
            min_improvement: g.min_improvement,
        });
    }
    gates
}

/// Checks a wire policy (request field `field`), collecting every violation.
/// Whether the standard set exists and defines the gated metrics is checked
/// by the store, which can read it.
pub fn policy_from_pb(field: &str, raw: pb::Policy) -> Result<Policy> {
    let mut v = Violations::default();
    let approval_required_for = raw
        .approval_required_for
        .map(|list| stages_from_pb(field, list, &mut v));
    let min_approvals = count_within(
        raw.min_approvals,
        1..=MAX_MIN_APPROVALS,
        format!("{field}.min_approvals"),
        |_| {
            format!(
                "must be between 1 and {MAX_MIN_APPROVALS}; to need no approval, leave the stage out of approval_required_for"
            )
        },
        &mut v,
    );
    let standard_evaluation_set = raw.standard_evaluation_set.and_then(|s| {
        v.take(SetRef::parse(
            &format!("{field}.standard_evaluation_set"),
            &s.name,
            &s.version,
        ))
    });
    let gates = raw.gates.map(|list| gates_from_pb(field, list, &mut v));
    let archival = raw
        .archival
        .and_then(|a| archival_from_pb(&format!("{field}.archival"), a, &mut v));
    let reviewers = raw.reviewers.and_then(|list| {
        let raw = list.reviewers.into_iter().map(|r| (r.email, r.identity));
        v.take(crate::domain::parse_reviewers(field, raw.collect()))
    });
    v.finish()?;
    Ok(Policy {
        approval_required_for,
        min_approvals,
        allow_self_approval: raw.allow_self_approval,
        standard_evaluation_set,
        gates,
        rollback_requires_approval: raw.rollback_requires_approval,
        archival,
        reviewers,
    })
}
