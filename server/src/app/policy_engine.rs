//! The policy engine's rules as use cases: the live monitor and the archival
//! rule over every model, each acting only under the model's lock.

use serde_json::json;

use crate::domain::lifecycle;
use crate::domain::{
    self, Actor, Cause, EventKind, LiveMetricAction, Model, NewEvent, Stage, StageSince, rfc3339,
};
use crate::error::Result;
use crate::store::{Db, ModelFilter, Store, Tx};

use super::*;

/// What one policy tick did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Models looked at.
    pub models: usize,
    /// Versions archived by the archival rule.
    pub archived: usize,
    /// Breach episodes reported by the live monitor.
    pub breaches: usize,
    /// Rollbacks made by the live monitor.
    pub rollbacks: usize,
    /// Models whose rules failed to run (logged; retried next tick).
    pub failures: usize,
}

impl TickReport {
    fn add(&mut self, other: TickReport) {
        self.models += other.models;
        self.archived += other.archived;
        self.breaches += other.breaches;
        self.rollbacks += other.rollbacks;
        self.failures += other.failures;
    }
}

/// Models read per page by a tick.
pub(crate) const TICK_PAGE: usize = 500;

/// Runs the live monitor and the archival rule over every model, as at time
/// `now`. Each model is first judged on plain reads; only a model with
/// something to do gets a write, which locks it and judges again, so
/// replicas ticking at once never act twice. A model that fails is logged
/// and skipped; the next tick tries again.
pub async fn policy_tick(store: &Store, now: i64) -> Result<TickReport> {
    read_db!(store, |db| async {
        let mut report = TickReport::default();
        let mut after: Option<String> = None;
        loop {
            let models = db
                .list_models(&ModelFilter::default(), after.as_deref(), TICK_PAGE)
                .await?;
            for model in &models {
                report.models += 1;
                match policy_for_model(db, model, now).await {
                    Ok(r) => report.add(r),
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(model = %model.name, error = %e, "policy rules failed; retrying next tick");
                    }
                }
            }
            match models.last() {
                Some(last) if models.len() == TICK_PAGE => after = Some(last.name.clone()),
                _ => return Ok(report),
            }
        }
    })
}

pub(crate) async fn policy_for_model<D: Db>(db: &D, model: &Model, now: i64) -> Result<TickReport> {
    let mut report = TickReport::default();
    let name = model.name.clone();
    let archival = model.policy.archival();
    if model.production_version == 0 {
        return Ok(report);
    }
    // The live monitor first: a rollback changes which candidates are passed over.
    if let Some(rule) = &archival.live_metric
        && let Some(production) = db.production_since(&name).await?
    {
        let readings = db
            .live_readings(&name, production.version, rule, production.since, now)
            .await?;
        if let Some(breach) = rule.breach(&readings)
            && !db
                .breach_recorded(&name, production.version, &rule.metric, breach.bad_since)
                .await?
        {
            let model = name.clone();
            report.add(
                db.write(job(move |tx| Box::pin(live_monitor_in(tx, model, now))))
                    .await?,
            );
        }
    }
    let days = archival.archive_after_days();
    if days > 0
        && let Some(production) = db.production_since(&name).await?
    {
        let candidates = db.passed_over(&name, production.version).await?;
        if !domain::due_for_archival(days, &production, &candidates, now).is_empty() {
            let model = name.clone();
            report.add(
                db.write(job(move |tx| {
                    Box::pin(archive_passed_over_in(tx, model, now))
                }))
                .await?,
            );
        }
    }
    Ok(report)
}

/// Locks `name` and reads since when its production version has served:
/// `None` when the model is gone or has no production version. Both rules
/// judge only a model that has one, under its lock.
async fn lock_with_production<T: Tx>(
    tx: &mut T,
    name: &str,
) -> Result<Option<(Model, StageSince)>> {
    let Some(model) = tx.lock_model(name).await? else {
        return Ok(None);
    };
    Ok(tx.production_since(name).await?.map(|p| (model, p)))
}

/// The live monitor's write: under the model lock, judges the rule again
/// and reports a breach episode not reported yet, rolling back in the same
/// transaction when the rule says so and a target exists.
pub(crate) async fn live_monitor_in<T: Tx>(
    tx: &mut T,
    name: String,
    now: i64,
) -> Result<(TickReport, Option<u64>)> {
    let nothing = Ok((TickReport::default(), None));
    let Some((model, production)) = lock_with_production(tx, &name).await? else {
        return nothing;
    };
    let Some(rule) = model.policy.archival().live_metric else {
        return nothing;
    };
    let readings = tx
        .live_readings(&name, production.version, &rule, production.since, now)
        .await?;
    let Some(breach) = rule.breach(&readings) else {
        return nothing;
    };
    if tx
        .breach_recorded(&name, production.version, &rule.metric, breach.bad_since)
        .await?
    {
        return nothing;
    }
    tx.record_breach(
        &name,
        production.version,
        &rule.metric,
        breach.bad_since,
        now,
    )
    .await?;
    let condition = rule.breach_condition(production.version, breach.bad_since);
    let mut report = TickReport {
        breaches: 1,
        ..Default::default()
    };
    let mut moves_events = Vec::new();
    let (rolled_back_to, outcome) = match rule.action {
        LiveMetricAction::Alert => (0, "alert only (action ALERT)".to_owned()),
        LiveMetricAction::Rollback => {
            match monitor_rollback(tx, &name, production.version, &rule, &condition).await? {
                None => (
                    0,
                    format!(
                        "alert only: action ROLLBACK, but model {name:?} has no earlier good production version to roll back to"
                    ),
                ),
                Some((target, events)) => {
                    moves_events = events;
                    report.rollbacks = 1;
                    (
                        target,
                        format!(
                            "rolled back from version {} to version {target}",
                            production.version
                        ),
                    )
                }
            }
        }
    };
    let details = rule.breach_details(&breach, rolled_back_to, &outcome);
    let mut breach_event = NewEvent::new(
        EventKind::LiveMetricBreach,
        &name,
        production.version,
        details,
    );
    breach_event.comment = format!("{condition}: {outcome}");
    let mut events = vec![breach_event];
    events.extend(moves_events);
    let seq = append_events(tx, &Actor(domain::LIVE_MONITOR_ACTOR.into()), events).await?;
    Ok((report, Some(seq)))
}

/// The live monitor's rollback of `name` from production version `from` to
/// the previous good one, decided as the policy's own move: the target and
/// the events of the moves, or `None` when there is no version to go back to.
async fn monitor_rollback<T: Tx>(
    tx: &mut T,
    name: &str,
    from: i64,
    rule: &domain::LiveMetricRule,
    condition: &str,
) -> Result<Option<(i64, Vec<NewEvent>)>> {
    let history = tx.stage_history(name).await?;
    let Some(target) = domain::rollback_target(&history, from) else {
        return Ok(None);
    };
    let version = tx
        .fetch_version(name, target)
        .await?
        .ok_or_else(|| vanished("rollback target"))?;
    let model = tx
        .fetch_model(name)
        .await?
        .ok_or_else(|| vanished("model"))?;
    let MoveDecision::Apply(moves) =
        decide_move(tx, &model, &version, Stage::Production, MovePath::Policy).await?
    else {
        return Err(Error::Internal(
            "the policy engine's rollback was sent for approval".into(),
        ));
    };
    let comment = format!("rolled back by the live monitor: {condition}");
    let details = json!({
        "rolled_back_from": from,
        "rolled_back_to": target,
        "rule": "live_metric",
        "metric": rule.metric,
    });
    let events = apply_moves(tx, name, &moves, &comment, details, "", None).await?;
    Ok(Some((target, events)))
}

/// The archival rule's write: under the model lock, finds the passed-over
/// candidates due at `now` again and archives them with cause POLICY.
pub(crate) async fn archive_passed_over_in<T: Tx>(
    tx: &mut T,
    name: String,
    now: i64,
) -> Result<(TickReport, Option<u64>)> {
    let Some((model, production)) = lock_with_production(tx, &name).await? else {
        return Ok((TickReport::default(), None));
    };
    let days = model.policy.archival().archive_after_days();
    let candidates = tx.passed_over(&name, production.version).await?;
    let due = domain::due_for_archival(days, &production, &candidates, now);
    if due.is_empty() {
        return Ok((TickReport::default(), None));
    }
    let mut events = Vec::new();
    for c in &due {
        let mut moves = lifecycle::plan_transition(
            &name,
            c.version,
            c.stage,
            Stage::Archived,
            production.version,
        )?;
        for mv in &mut moves {
            mv.cause = Cause::Policy;
        }
        let comment = format!(
            "archived by policy: version {} stayed in {} while version {} has been in production since {} (archive_superseded_after_days = {days})",
            c.version,
            c.stage,
            production.version,
            rfc3339(production.since)
        );
        let details = json!({
            "rule": "archive_superseded_after_days",
            "days": days,
            "production_version": production.version,
            "production_since": rfc3339(production.since),
            "stage_since": rfc3339(c.since),
        });
        events.extend(apply_moves(tx, &name, &moves, &comment, details, "", None).await?);
    }
    let seq = append_events(tx, &Actor(domain::ARCHIVAL_ACTOR.into()), events).await?;
    Ok((
        TickReport {
            archived: due.len(),
            ..Default::default()
        },
        Some(seq),
    ))
}
