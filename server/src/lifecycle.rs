//! The lifecycle rules: which stage moves are allowed and what else a move
//! implies. Pure functions over domain values; the store applies the plan in
//! one transaction and never decides a rule itself.

use crate::domain::{Cause, Stage};
use crate::error::{Error, Result};

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
    let mut moves = Vec::with_capacity(2);
    if to == Stage::Production && production_version != 0 && production_version != version {
        moves.push(Move {
            version: production_version,
            from: Stage::Production,
            to: Stage::Archived,
            cause: Cause::Superseded,
        });
    }
    moves.push(Move {
        version,
        from,
        to,
        cause: Cause::Request,
    });
    Ok(moves)
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
    fn entering_production_supersedes_the_old_one_first() {
        let plan = plan_transition("m", 2, Stage::Staging, Stage::Production, 1).unwrap();
        assert_eq!(plan.len(), 2);
        assert_eq!(plan[0].version, 1);
        assert_eq!(plan[0].cause, Cause::Superseded);
        assert_eq!(plan[1].to, Stage::Production);
    }
}
