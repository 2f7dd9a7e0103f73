//! Model policies: which stages need approval, the metric gates they name
//! (judged in [`super::gates`]), and the archival rules the policy engine applies by itself
//! (passed-over candidates, live-metric breaches). Pure functions.

use crate::error::Result;
use strum::IntoStaticStr;

use serde::{Deserialize, Serialize};

use super::*;

/// Most approvals a policy may ask for.
pub const MAX_MIN_APPROVALS: u32 = 10;
/// Most gates one policy may hold.
pub const MAX_GATES: usize = 64;
/// Most reviewers one policy may name.
pub const MAX_REVIEWERS: usize = 64;
/// The longest reviewer address, in characters (RFC 5321's path limit less
/// its angle brackets).
pub const MAX_EMAIL_CHARS: usize = 254;
/// `archive_superseded_after_days` when the policy leaves it unset.
pub const DEFAULT_ARCHIVE_AFTER_DAYS: u32 = 30;
/// The largest `archive_superseded_after_days` (ten years).
pub const MAX_ARCHIVE_AFTER_DAYS: u32 = 3650;
/// One day in µs.
pub const DAY_MICROS: i64 = 86_400 * 1_000_000;
/// The shortest live-metric window, in µs (one second).
pub const MIN_LIVE_WINDOW_MICROS: i64 = 1_000_000;
/// The longest live-metric window, in µs (30 days).
pub const MAX_LIVE_WINDOW_MICROS: i64 = 30 * DAY_MICROS;
/// The actor of the archival rule's stage changes.
pub const ARCHIVAL_ACTOR: &str = "policy:archival";
/// The actor of the live monitor's breach events and rollbacks.
pub const LIVE_MONITOR_ACTOR: &str = "policy:live-monitor";

/// A model's policy as set by an admin. `None` means "not set: use the
/// default", which differs from an empty list; see `Policy` in the proto.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// Stages whose entry needs approval [PRODUCTION].
    pub approval_required_for: Option<Vec<Stage>>,
    /// Distinct approvals needed [1].
    pub min_approvals: Option<u32>,
    /// Whether a requester may approve their own request [false].
    pub allow_self_approval: Option<bool>,
    /// The evaluation set gates and comparisons use [none].
    pub standard_evaluation_set: Option<SetRef>,
    /// Metric gates [none].
    pub gates: Option<Vec<Gate>>,
    /// Whether a rollback waits for approval [false].
    pub rollback_requires_approval: Option<bool>,
    /// What the policy engine does by itself [archive passed-over candidates
    /// after 30 days; no live monitoring].
    pub archival: Option<ArchivalPolicy>,
    /// Who reviews this model's requests: the notifier mails them [none].
    pub reviewers: Option<Vec<Reviewer>>,
}

impl Policy {
    /// The stages that need approval, defaults applied.
    pub fn approval_stages(&self) -> Vec<Stage> {
        self.approval_required_for
            .clone()
            .unwrap_or_else(|| vec![Stage::Production])
    }

    /// Whether entering `stage` needs approval.
    pub fn needs_approval(&self, stage: Stage) -> bool {
        self.approval_stages().contains(&stage)
    }

    /// Distinct approvals needed.
    pub fn min_approvals(&self) -> u32 {
        self.min_approvals.unwrap_or(1)
    }

    /// Whether self-approval is allowed.
    pub fn allow_self_approval(&self) -> bool {
        self.allow_self_approval.unwrap_or(false)
    }

    /// The gates, none by default.
    pub fn gates(&self) -> &[Gate] {
        self.gates.as_deref().unwrap_or(&[])
    }

    /// Whether rollback waits for approval.
    pub fn rollback_requires_approval(&self) -> bool {
        self.rollback_requires_approval.unwrap_or(false)
    }

    /// The archival rules, defaults applied.
    pub fn archival(&self) -> ArchivalPolicy {
        let set = self.archival.clone().unwrap_or_default();
        ArchivalPolicy {
            archive_superseded_after_days: Some(set.archive_after_days()),
            live_metric: set.live_metric,
        }
    }

    /// The designated reviewers, none by default.
    pub fn reviewers(&self) -> &[Reviewer] {
        self.reviewers.as_deref().unwrap_or(&[])
    }

    /// Every field with its default filled in, as GetModel shows it.
    pub fn effective(&self) -> Policy {
        Policy {
            approval_required_for: Some(self.approval_stages()),
            min_approvals: Some(self.min_approvals()),
            allow_self_approval: Some(self.allow_self_approval()),
            standard_evaluation_set: self.standard_evaluation_set.clone(),
            gates: Some(self.gates().to_vec()),
            rollback_requires_approval: Some(self.rollback_requires_approval()),
            archival: Some(self.archival()),
            reviewers: Some(self.reviewers().to_vec()),
        }
    }
}

/// A person designated to review a model's transition requests.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reviewer {
    /// Where the notifier mails them (see [`parse_email`]).
    pub email: String,
    /// The identity they sign in as, when known: lets a reader match a
    /// reviewer to the approvals in the audit trail.
    pub identity: Option<String>,
}

/// Checks a mail address (at `field`): a plain addr-spec (`ana@example.com`)
/// of at most [`MAX_EMAIL_CHARS`] characters, without a display name or a
/// domain literal, which a notifier could not use as a recipient as is.
pub fn parse_email(field: &str, raw: &str) -> Result<String> {
    use email_address::{EmailAddress, Options};
    let options = Options::default()
        .without_display_text()
        .without_domain_literal();
    if raw.chars().count() > MAX_EMAIL_CHARS || raw.chars().any(char::is_control) {
        return Err(crate::error::Error::invalid(
            field,
            format!("must be at most {MAX_EMAIL_CHARS} printable characters"),
        ));
    }
    EmailAddress::parse_with_options(raw, options)
        .map(|a| a.as_str().to_owned())
        .map_err(|e| {
            crate::error::Error::invalid(
                field,
                format!("{raw:?} is not a mail address like ana@example.com ({e})"),
            )
        })
}

/// Checks a policy's reviewers (at `field`, e.g. `policy.reviewers`): at
/// most [`MAX_REVIEWERS`], each a valid address (named once, in any case)
/// with an optional valid identity.
pub fn parse_reviewers(field: &str, raw: Vec<(String, String)>) -> Result<Vec<Reviewer>> {
    let mut v = crate::domain::Violations::default();
    if raw.len() > MAX_REVIEWERS {
        v.add(
            format!("{field}.reviewers"),
            format!("at most {MAX_REVIEWERS} reviewers are allowed"),
        );
    }
    let mut reviewers: Vec<Reviewer> = Vec::new();
    for (i, (email, identity)) in raw.into_iter().enumerate() {
        let at = format!("{field}.reviewers[{i}]");
        let email = v.take(parse_email(&format!("{at}.email"), &email));
        let identity = match identity.as_str() {
            "" => Some(None),
            name => v
                .take(Actor::parse(&format!("{at}.identity"), name))
                .map(|a| Some(a.0)),
        };
        if let Some(e) = &email
            && reviewers.iter().any(|r| r.email.eq_ignore_ascii_case(e))
        {
            v.add(format!("{at}.email"), format!("{e} is listed twice"));
        }
        if let (Some(email), Some(identity)) = (email, identity) {
            reviewers.push(Reviewer { email, identity });
        }
    }
    v.finish()?;
    Ok(reviewers)
}

/// One metric gate. Bounds are in the metric's units; the relative bounds
/// compare with the current production version on the standard set and
/// follow the metric's direction (a regression of a lower-is-better metric
/// is an increase).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    /// The metric of the standard evaluation set.
    pub metric: String,
    /// The candidate must score at least this.
    pub min_value: Option<f64>,
    /// The candidate must score at most this.
    pub max_value: Option<f64>,
    /// The candidate may be worse than production by at most this.
    pub max_regression: Option<f64>,
    /// The candidate must be better than production by at least this.
    pub min_improvement: Option<f64>,
}

/// Checks a policy against the evaluation set it names (already looked up):
/// gates need a standard set, and each gate's metric must be one of its
/// metrics. Field paths are relative to the request's `policy`.
pub fn check_policy_against_set(
    field: &str,
    policy: &Policy,
    set: Option<&EvaluationSet>,
) -> Result<()> {
    let mut violations = crate::domain::Violations::default();
    for (i, gate) in policy.gates().iter().enumerate() {
        match set {
            None => violations.add(
                format!("{field}.gates.gates[{i}]"),
                "gates are judged on the standard evaluation set: set standard_evaluation_set too",
            ),
            Some(set) if !set.metrics.iter().any(|m| m.name == gate.metric) => violations.add(
                format!("{field}.gates.gates[{i}].metric"),
                format!(
                    "{:?} is not a metric of evaluation set {}; it defines {}",
                    gate.metric,
                    set.id,
                    set.metrics
                        .iter()
                        .map(|m| m.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ),
            Some(_) => {}
        }
    }
    violations.finish()
}

/// What the policy engine does by itself. `None` fields take their defaults.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ArchivalPolicy {
    /// Days after which a passed-over candidate is archived (see
    /// [`due_for_archival`]) [30]; 0 disables the rule.
    pub archive_superseded_after_days: Option<u32>,
    /// The live monitor's rule [none].
    pub live_metric: Option<LiveMetricRule>,
}

impl ArchivalPolicy {
    /// Days after which passed-over candidates are archived; 0 means never.
    pub fn archive_after_days(&self) -> u32 {
        self.archive_superseded_after_days
            .unwrap_or(DEFAULT_ARCHIVE_AFTER_DAYS)
    }
}

/// What the live monitor does on a breach.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, IntoStaticStr)]
#[serde(rename_all = "UPPERCASE")]
#[strum(serialize_all = "UPPERCASE")]
pub enum LiveMetricAction {
    /// Record the breach event only.
    #[default]
    Alert,
    /// Record it and roll back to the previous good production version.
    Rollback,
}

impl LiveMetricAction {
    /// The name in event details.
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// A live metric of the production version that must stay on the good side
/// of a threshold. See [`LiveMetricRule::breach`] for when it fires.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LiveMetricRule {
    /// The metric, as reported with ReportLiveMetric.
    pub metric: String,
    /// The boundary; a value equal to it is good.
    pub threshold: f64,
    /// Whether higher values are good.
    pub higher_is_better: bool,
    /// How long the metric must stay bad, in µs.
    pub window_micros: i64,
    /// What to do on a breach.
    #[serde(default)]
    pub action: LiveMetricAction,
}

/// One observation of a live metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Observation {
    /// When it was observed, µs since the epoch.
    pub time: i64,
    /// The value.
    pub value: f64,
}

/// What the live monitor reads about one metric of the production version at
/// time `now`, counting only observations made since the version entered
/// production and not after `now`. The store computes it in the database so
/// a long history is never loaded.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Readings {
    /// The latest observation at or before `now - window`.
    pub anchor: Option<Observation>,
    /// How many observations are later than `now - window`.
    pub in_window: u64,
    /// How many of those are good.
    pub good_in_window: u64,
    /// The latest observation.
    pub latest: Option<Observation>,
    /// The first bad observation after the last good one: when the current
    /// bad run began (`None` when the latest observation is good).
    pub bad_since: Option<i64>,
}

/// A breached live-metric rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Breach {
    /// When the bad run began; it names the breach episode, so one episode
    /// is reported once.
    pub bad_since: i64,
    /// The latest (bad) observation.
    pub last: Observation,
    /// How many (bad) observations lie within the window.
    pub in_window: u64,
}

impl LiveMetricRule {
    /// The breach said in words: which version, since when, and the rule.
    pub fn breach_condition(&self, version: i64, bad_since: i64) -> String {
        let (side, op) = if self.higher_is_better {
            ("below", ">=")
        } else {
            ("above", "<=")
        };
        format!(
            "live metric {} of version {version} has been {side} {} since {} (rule: {} {op} {} over {})",
            self.metric,
            self.threshold,
            rfc3339(bad_since),
            self.metric,
            self.threshold,
            human_duration(self.window_micros)
        )
    }

    /// The details of a LIVE_METRIC_BREACH event: the rule, the breach and
    /// what was done (`rolled_back_to` 0 when nothing was rolled back).
    pub fn breach_details(
        &self,
        breach: &Breach,
        rolled_back_to: i64,
        outcome: &str,
    ) -> serde_json::Value {
        serde_json::json!({
            "metric": self.metric,
            "threshold": self.threshold,
            "higher_is_better": self.higher_is_better,
            "window": human_duration(self.window_micros),
            "window_seconds": self.window_micros / 1_000_000,
            "last_value": breach.last.value,
            "last_observe_time": rfc3339(breach.last.time),
            "observations_in_window": breach.in_window,
            "bad_since": rfc3339(breach.bad_since),
            "action": self.action.as_str(),
            "rolled_back_to": rolled_back_to,
            "outcome": outcome,
        })
    }

    /// Whether `value` is on the wrong side of the threshold.
    pub fn is_bad(&self, value: f64) -> bool {
        if self.higher_is_better {
            value < self.threshold
        } else {
            value > self.threshold
        }
    }

    /// The rule is breached when the latest observation at or before
    /// `now - window` is bad, at least one observation is later than
    /// `now - window`, and all of those are bad: the metric has been bad for
    /// at least a whole window with no good value since, and is still
    /// reported. Only observations since the version entered production
    /// count, so it has been in production for at least the window too.
    pub fn breach(&self, r: &Readings) -> Option<Breach> {
        let anchor = r.anchor?;
        if !self.is_bad(anchor.value) || r.in_window == 0 || r.good_in_window > 0 {
            return None;
        }
        Some(Breach {
            bad_since: r.bad_since?,
            last: r.latest?,
            in_window: r.in_window,
        })
    }
}

/// A version's stage and when it entered it (µs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageSince {
    /// The version.
    pub version: i64,
    /// Its stage.
    pub stage: Stage,
    /// When it entered that stage.
    pub since: i64,
}

/// The passed-over candidates to archive at `now`: versions still in STAGING
/// or NONE whose number is lower than the production version's, once both
/// the production version has been in production and the candidate has been
/// in its stage for `days` days. (A candidate re-staged recently gets its
/// full `days` again.) `days = 0` archives nothing.
pub fn due_for_archival(
    days: u32,
    production: &StageSince,
    candidates: &[StageSince],
    now: i64,
) -> Vec<StageSince> {
    if days == 0 {
        return Vec::new();
    }
    let age = i64::from(days) * DAY_MICROS;
    candidates
        .iter()
        .filter(|c| {
            c.version < production.version
                && matches!(c.stage, Stage::Staging | Stage::None)
                && now >= production.since.max(c.since).saturating_add(age)
        })
        .copied()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::evaluation::fixtures::{evaluation, holdout};
    use crate::domain::{MetricComparison, Outcome};

    #[test]
    fn unset_policy_fields_stay_out_of_the_stored_json() {
        let policy = Policy {
            min_approvals: Some(2),
            gates: Some(Vec::new()),
            ..Default::default()
        };
        let json = serde_json::to_string(&policy).unwrap();
        assert_eq!(json, r#"{"min_approvals":2,"gates":[]}"#);
        assert_eq!(serde_json::from_str::<Policy>(&json).unwrap(), policy);
        assert_eq!(
            serde_json::from_str::<Policy>("{}").unwrap(),
            Policy::default()
        );
    }

    fn set() -> EvaluationSet {
        holdout(&[("auc", true), ("latency", false)])
    }

    fn eval(version: i64, auc: f64, latency: f64) -> Evaluation {
        evaluation(version, "1", &[("auc", auc), ("latency", latency)])
    }

    fn cmp(c: &Evaluation, b: &Evaluation) -> Comparison {
        Comparison {
            model: "m".into(),
            candidate: c.version,
            baseline: b.version,
            set: set().id,
            evaluator_version: "1".into(),
            metrics: ["auc", "latency"]
                .iter()
                .map(|m| MetricComparison {
                    metric: (*m).into(),
                    higher_is_better: *m == "auc",
                    candidate: c.metrics[*m],
                    baseline: b.metrics[*m],
                    delta: c.metrics[*m] - b.metrics[*m],
                    relative_delta: 0.0,
                    outcome: Outcome::Equal,
                })
                .collect(),
        }
    }

    #[test]
    fn regression_follows_the_metric_direction() {
        let policy = Policy {
            gates: Some(vec![
                Gate {
                    metric: "auc".into(),
                    max_regression: Some(0.01),
                    ..Default::default()
                },
                Gate {
                    metric: "latency".into(),
                    max_regression: Some(5.0),
                    ..Default::default()
                },
            ]),
            ..Default::default()
        };
        let s = set();
        let prod = eval(1, 0.90, 100.0);
        let gates_against_prod = |cand: &Evaluation| {
            let c = cmp(cand, &prod);
            run_gates(
                &policy,
                &GateInputs {
                    set: Some(&s),
                    candidate: 2,
                    candidate_evaluation: Some(cand),
                    production: 1,
                    comparison: Ok(&c),
                },
            )
        };
        // auc drops by 0.02 (fails), latency rises by 4 (within 5).
        let results = gates_against_prod(&eval(2, 0.88, 104.0));
        assert_eq!(results.len(), 2);
        assert!(!results[0].passed, "{:?}", results[0]);
        assert!(results[1].passed, "{:?}", results[1]);
        // Latency up by 6 breaks the lower-is-better gate.
        let results = gates_against_prod(&eval(2, 0.95, 106.0));
        assert!(results[0].passed);
        assert!(!results[1].passed);
    }

    #[test]
    fn missing_evaluation_fails_every_check() {
        let policy = Policy {
            gates: Some(vec![Gate {
                metric: "auc".into(),
                min_value: Some(0.8),
                min_improvement: Some(0.0),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let s = set();
        let results = run_gates(
            &policy,
            &GateInputs {
                set: Some(&s),
                candidate: 2,
                candidate_evaluation: None,
                production: 0,
                comparison: Err("none".into()),
            },
        );
        assert_eq!(results.len(), 2);
        assert!(results.iter().all(|r| !r.passed));
        assert!(results[0].message.contains("no evaluation"));
    }

    #[test]
    fn rollback_skips_versions_rolled_back_from() {
        let step = |version, to, cause| StageStep {
            version,
            to,
            cause: Some(cause),
        };
        let mut h = vec![
            step(1, Stage::Production, Cause::Request),
            step(1, Stage::Archived, Cause::Superseded),
            step(2, Stage::Production, Cause::Approval),
            step(2, Stage::Archived, Cause::Superseded),
            step(3, Stage::Production, Cause::Approval),
        ];
        assert_eq!(rollback_target(&h, 3), Some(2));
        h.push(step(3, Stage::Archived, Cause::Rollback));
        h.push(step(2, Stage::Production, Cause::Rollback));
        assert_eq!(rollback_target(&h, 2), Some(1));
        h.push(step(2, Stage::Archived, Cause::Rollback));
        h.push(step(1, Stage::Production, Cause::Rollback));
        assert_eq!(rollback_target(&h, 1), None);
    }

    #[test]
    fn passed_over_candidates_wait_their_days_after_the_later_of_both_entries() {
        let at = |version, stage, since| StageSince {
            version,
            stage,
            since,
        };
        let production = at(5, Stage::Production, 10 * DAY_MICROS);
        let candidates = [
            at(1, Stage::Staging, 0),
            at(2, Stage::None, 0),
            at(3, Stage::Archived, 0),
            // Re-staged two days after 5 entered production.
            at(4, Stage::Staging, 12 * DAY_MICROS),
            // Newer than production: a candidate still in the running.
            at(6, Stage::Staging, 0),
        ];
        let due = |now| -> Vec<i64> {
            due_for_archival(30, &production, &candidates, now)
                .iter()
                .map(|c| c.version)
                .collect()
        };
        assert!(due(40 * DAY_MICROS - 1).is_empty());
        assert_eq!(due(40 * DAY_MICROS), vec![1, 2]);
        assert_eq!(due(42 * DAY_MICROS), vec![1, 2, 4]);
        assert!(due_for_archival(0, &production, &candidates, i64::MAX).is_empty());
    }

    #[test]
    fn a_breach_needs_a_bad_anchor_and_only_bad_values_in_the_window() {
        let rule = LiveMetricRule {
            metric: "error_rate".into(),
            threshold: 0.05,
            higher_is_better: false,
            window_micros: 3_600_000_000,
            action: LiveMetricAction::Alert,
        };
        let obs = |time, value| Some(Observation { time, value });
        let breached = Readings {
            anchor: obs(10, 0.2),
            in_window: 3,
            good_in_window: 0,
            latest: obs(30, 0.3),
            bad_since: Some(5),
        };
        assert_eq!(
            rule.breach(&breached),
            Some(Breach {
                bad_since: 5,
                last: Observation {
                    time: 30,
                    value: 0.3
                },
                in_window: 3
            })
        );
        // Equal to the threshold is good.
        assert!(!rule.is_bad(0.05));
        let cases = [
            Readings {
                anchor: None,
                ..breached.clone()
            },
            Readings {
                anchor: obs(10, 0.05),
                ..breached.clone()
            },
            Readings {
                in_window: 0,
                good_in_window: 0,
                ..breached.clone()
            },
            Readings {
                good_in_window: 1,
                ..breached.clone()
            },
        ];
        for r in cases {
            assert_eq!(rule.breach(&r), None, "{r:?}");
        }
    }

    #[test]
    fn request_ids_round_trip() {
        let (m, n) = parse_transition_request_id("id", "fraud-detector:3").unwrap();
        assert_eq!((m.as_str(), n), ("fraud-detector", 3));
        for bad in ["", "x", "x:", "x:0", ":3", "Bad:1", "x:-1"] {
            assert!(parse_transition_request_id("id", bad).is_err(), "{bad}");
        }
    }
}
