//! The policy engine: a background task of the server that applies each
//! model's archival policy by itself, every `--policy-interval`.
//!
//! Each tick runs two rules over every model, as at one instant `now` (see
//! [`crate::domain::policy`] for the rules themselves):
//!
//! - the **live monitor** reports a breached live-metric rule of the
//!   production version once per breach episode (EVENT_TYPE_LIVE_METRIC_BREACH,
//!   actor `policy:live-monitor`), and with action ROLLBACK also rolls back to
//!   the previous good production version in the same transaction;
//! - the **archival rule** archives passed-over candidates (cause POLICY,
//!   actor `policy:archival`).
//!
//! The engine owns no state: whether a rule is due is read from the database
//! and judged again under the model's lock inside the transaction that acts,
//! so several replicas ticking at once (PostgreSQL) act once. What "now" is
//! comes from the store's [`Clock`] (see [`crate::clock`]), which tests replace with a [`ManualClock`] to run
//! "40 days later" in milliseconds, calling [`PolicyEngine::tick`] themselves.
//! This module must not decide rules or write SQL.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

pub use crate::clock::{Clock, ManualClock};

use crate::app::TickReport;
use crate::error::Result;
use crate::store::Store;

/// Runs policy ticks on one store. Cheap to clone.
#[derive(Clone)]
pub struct PolicyEngine {
    /// Where the models live.
    store: Store,
}

impl PolicyEngine {
    /// An engine over `store`, ticking by the store's clock.
    pub fn new(store: Store) -> PolicyEngine {
        PolicyEngine { store }
    }

    /// Runs every model's rules once, as at `now` (µs since the epoch).
    pub async fn tick(&self, now: i64) -> Result<TickReport> {
        let report = crate::app::policy_tick(&self.store, now).await?;
        if report.archived + report.breaches + report.rollbacks + report.failures > 0 {
            tracing::info!(
                models = report.models,
                archived = report.archived,
                breaches = report.breaches,
                rollbacks = report.rollbacks,
                failures = report.failures,
                "policy tick"
            );
        }
        Ok(report)
    }

    /// Ticks every `interval` (the first one after a full interval, so a
    /// server starting up serves before it judges) until `stop` turns true.
    pub async fn run(self, interval: Duration, stop: CancellationToken) {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A slow tick delays the next one instead of causing a burst.
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                _ = stop.cancelled() => return,
            }
            if stop.is_cancelled() {
                return;
            }
            if let Err(e) = self.tick(self.store.clock().now_micros()).await {
                tracing::warn!(error = %e, "policy tick failed; retrying at the next interval");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told() {
        let manual = ManualClock::at(1_000);
        let clock = manual.clock();
        assert_eq!(clock.now_micros(), 1_000);
        manual.advance(Duration::from_secs(2));
        assert_eq!(clock.now_micros(), 2_001_000);
        manual.set(5);
        assert_eq!(clock.now_micros(), 5);
    }
}
