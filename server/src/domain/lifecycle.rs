//! The lifecycle: stages, why a version changed stage, which moves are
//! allowed and what else a move implies, and where a rollback returns to.
//! Pure functions; the use cases apply a plan in one transaction.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use strum::{Display, EnumString, IntoStaticStr};

/// A lifecycle stage.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    IntoStaticStr,
    EnumString,
    Display,
    Serialize,
    Deserialize,
)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Stage {
    /// Registered, not under evaluation.
    None,
    /// Under evaluation.
    Staging,
    /// Serving; at most one version per model.
    Production,
    /// Retired.
    Archived,
}

impl Stage {
    /// Every stage, in lifecycle order.
    pub const ALL: [Stage; 4] = [
        Stage::None,
        Stage::Staging,
        Stage::Production,
        Stage::Archived,
    ];

    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The inverse of [`Stage::as_str`].
    pub fn from_db(s: &str) -> Option<Stage> {
        s.parse().ok()
    }
}

/// Why a version changed stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum Cause {
    /// A direct call.
    Request,
    /// An approved transition request.
    Approval,
    /// Another version entered production.
    Superseded,
    /// A rollback.
    Rollback,
    /// The policy engine.
    Policy,
    /// ImportVersion: the stage the version had where it was imported from.
    Import,
}

impl Cause {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The inverse of [`Cause::as_str`].
    pub fn from_db(s: &str) -> Option<Cause> {
        s.parse().ok()
    }
}

/// The stages a new version may be registered into: NONE, or STAGING by
/// the NONE→STAGING move. Later stages are reached by moves of their own;
/// `None` (a number that names no stage) is refused alike.
pub fn check_registration_target(field: &str, target: Option<Stage>) -> Result<Stage> {
    match target {
        Some(stage @ (Stage::None | Stage::Staging)) => Ok(stage),
        _ => Err(Error::invalid(
            field,
            "a new version may only enter STAGE_NONE or STAGE_STAGING; promote it with TransitionStage",
        )),
    }
}

/// Where a stage may go by TransitionStage. ARCHIVED→PRODUCTION is a
/// rollback and is not offered here.
pub fn allowed_targets(from: Stage) -> &'static [Stage] {
    match from {
        Stage::None => &[Stage::Staging, Stage::Archived],
        Stage::Staging => &[Stage::Production, Stage::Archived, Stage::None],
        Stage::Production => &[Stage::Archived],
        Stage::Archived => &[Stage::Staging],
    }
}

/// One stage change the store must apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The version that moves.
    pub version: i64,
    /// Its stage before.
    pub from: Stage,
    /// Its stage after.
    pub to: Stage,
    /// Why.
    pub cause: Cause,
}

/// Plans a requested move of `version` from `from` to `to`, given the model's
/// current production version (0 when none). Entering production archives
/// the previous production version in the same plan (cause SUPERSEDED).
pub fn plan_transition(
    model: &str,
    version: i64,
    from: Stage,
    to: Stage,
    production_version: i64,
) -> Result<Vec<Move>> {
    if !allowed_targets(from).contains(&to) {
        let allowed: Vec<&str> = allowed_targets(from).iter().map(|s| s.as_str()).collect();
        let rollback_hint = if from == Stage::Archived && to == Stage::Production {
            " (an archived version returns to PRODUCTION only by Rollback)"
        } else {
            ""
        };
        return Err(Error::precondition(
            "STAGE_TRANSITION",
            format!("{model}/{version}"),
            format!(
                "version {version} of model {model:?} cannot move from {from} to {to}{rollback_hint}; allowed targets from {from}: {}",
                allowed.join(", ")
            ),
        ));
    }
    Ok(entering(
        version,
        from,
        to,
        production_version,
        Cause::Request,
    ))
}

/// The moves of `version` from `from` into `to` (for `cause`), after the
/// archival of the production version it supersedes, if it enters
/// production: at most one version stays in PRODUCTION on every path.
fn entering(version: i64, from: Stage, to: Stage, production: i64, cause: Cause) -> Vec<Move> {
    let mut moves = Vec::with_capacity(2);
    if to == Stage::Production && production != 0 && production != version {
        moves.push(Move {
            version: production,
            from: Stage::Production,
            to: Stage::Archived,
            cause: Cause::Superseded,
        });
    }
    moves.push(Move {
        version,
        from,
        to,
        cause,
    });
    moves
}

/// Plans recording that an imported `version` (just inserted in NONE) is in
/// `stage` where it comes from: no move for NONE, else NONE→stage with
/// cause IMPORT, superseding the production version like any entry into
/// PRODUCTION. Any stage is allowed: the move already happened elsewhere.
pub fn plan_import(version: i64, stage: Stage, production_version: i64) -> Vec<Move> {
    if stage == Stage::None {
        return Vec::new();
    }
    entering(
        version,
        Stage::None,
        stage,
        production_version,
        Cause::Import,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pair_is_either_allowed_or_refused_with_the_allowed_targets() {
        let allowed = [
            (Stage::None, Stage::Staging),
            (Stage::None, Stage::Archived),
            (Stage::Staging, Stage::Production),
            (Stage::Staging, Stage::Archived),
            (Stage::Staging, Stage::None),
            (Stage::Production, Stage::Archived),
            (Stage::Archived, Stage::Staging),
        ];
        for from in Stage::ALL {
            for to in Stage::ALL {
                let plan = plan_transition("m", 2, from, to, 0);
                assert_eq!(plan.is_ok(), allowed.contains(&(from, to)), "{from}->{to}");
            }
        }
    }

    #[test]
    fn an_import_records_its_stage_and_supersedes_production() {
        assert!(plan_import(3, Stage::None, 1).is_empty());
        let archived = plan_import(3, Stage::Archived, 1);
        assert_eq!(archived.len(), 1);
        assert_eq!(
            (archived[0].from, archived[0].to),
            (Stage::None, Stage::Archived)
        );
        assert_eq!(archived[0].cause, Cause::Import);
        let plan = plan_import(3, Stage::Production, 1);
        assert_eq!(plan.len(), 2);
        assert_eq!((plan[0].version, plan[0].cause), (1, Cause::Superseded));
        assert_eq!((plan[1].version, plan[1].to), (3, Stage::Production));
        assert_eq!(plan[1].cause, Cause::Import);
    }

    #[test]
    fn entering_production_supersedes_the_old_one_first() {
        let plan = plan_transition("m", 2, Stage::Staging, Stage::Production, 1).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].version, 1);
        assert_eq!(plan[0].cause, Cause::Superseded);
        assert_eq!(plan[1].to, Stage::Production);
    }
}

/// One stage change of a model's history, as the rollback choice needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct StageStep {
    /// The version.
    pub version: i64,
    /// Where it went.
    pub to: Stage,
    /// Why.
    pub cause: Option<Cause>,
}

/// The version a rollback returns to: the most recent version that was in
/// production before the current one and was not itself rolled back from
/// (so two rollbacks in a row go two good versions back). `None` when there
/// is none.
pub fn rollback_target(history: &[StageStep], current: i64) -> Option<i64> {
    let rolled_back: std::collections::BTreeSet<i64> = history
        .iter()
        .filter(|s| s.cause == Some(Cause::Rollback) && s.to != Stage::Production)
        .map(|s| s.version)
        .collect();
    history
        .iter()
        .rev()
        .filter(|s| s.to == Stage::Production)
        .map(|s| s.version)
        .find(|v| *v != current && !rolled_back.contains(v))
}

/// Whether `version` has ever been in production.
pub fn was_in_production(history: &[StageStep], version: i64) -> bool {
    history
        .iter()
        .any(|s| s.version == version && s.to == Stage::Production)
}
