//! Reads for the pages: every page of a list, the events of a range, the
//! audit chain's verification, each an `app::` call as the visitor.

use std::time::Instant;

use crate::app;
use crate::auth::{Action, Identity};
use crate::domain::{Event, EventFilter, Model, RequestStatus, TransitionRequest, Version};
use crate::error::Error;
use crate::store::{ChainReport, ModelFilter, RequestCursor};

use super::*;

impl Dashboard {
    pub(super) async fn all_models(&self, who: &Identity) -> Result<Vec<Model>, Error> {
        permit(who, Action::ListModels)?;
        let all = ModelFilter::default();
        let mut out: Vec<Model> = Vec::new();
        loop {
            let after = out.last().map(|m| m.name.clone());
            let (models, more) =
                app::list_models(self.store(), &all, after.as_deref(), PAGE).await?;
            out.extend(models);
            if !more {
                return Ok(out);
            }
        }
    }

    pub(super) async fn all_versions(
        &self,
        who: &Identity,
        model: &str,
    ) -> Result<Vec<Version>, Error> {
        permit(who, Action::ListVersions)?;
        let mut out: Vec<Version> = Vec::new();
        loop {
            let after = out.last().map_or(0, |v| v.version);
            let (versions, more) =
                app::list_versions(self.store(), model, None, after, PAGE).await?;
            out.extend(versions);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Transition requests of one model (or all), with one status (or any).
    pub(super) async fn all_requests(
        &self,
        who: &Identity,
        model: Option<&str>,
        status: Option<RequestStatus>,
    ) -> Result<Vec<TransitionRequest>, Error> {
        permit(who, Action::ListTransitionRequests)?;
        let mut out: Vec<TransitionRequest> = Vec::new();
        loop {
            let after = out.last().map(|r| RequestCursor {
                create_time: r.create_time,
                model: r.model.clone(),
                number: r.number,
            });
            let (requests, more) =
                app::list_requests(self.store(), model, status, after, PAGE).await?;
            out.extend(requests);
            if !more {
                return Ok(out);
            }
        }
    }

    /// Events matching `filter` with sequence in (`after`, `before`).
    pub(super) async fn events_between(
        &self,
        who: &Identity,
        filter: &EventFilter,
        after: u64,
        before: u64,
    ) -> Result<Vec<Event>, Error> {
        permit(who, Action::ListEvents)?;
        let Some(upto) = before.checked_sub(1) else {
            return Ok(Vec::new());
        };
        let mut out: Vec<Event> = Vec::new();
        loop {
            let from = out.last().map_or(after, |e| e.sequence);
            let (events, more) =
                app::list_events(self.store(), filter, from, Some(upto), PAGE).await?;
            out.extend(events);
            if !more {
                return Ok(out);
            }
        }
    }

    /// The newest `want` events matching `filter` before sequence `before`:
    /// looks back through ever wider windows, so a busy log is not read
    /// whole to show its last page.
    pub(super) async fn newest_events(
        &self,
        who: &Identity,
        filter: &EventFilter,
        before: u64,
        want: usize,
    ) -> Result<Vec<Event>, Error> {
        let mut window = (want as u64).saturating_mul(2).max(64);
        loop {
            let after = before.saturating_sub(window);
            let mut events = self.events_between(who, filter, after, before).await?;
            if events.len() >= want || after == 0 {
                let skip = events.len().saturating_sub(want);
                events.drain(..skip);
                return Ok(events);
            }
            window = window.saturating_mul(4);
        }
    }

    /// The chain's verification, reused for [`CHAIN_CHECK_REUSE`]; one
    /// verification runs at a time however many pages ask.
    pub(super) async fn verified_chain(&self, who: &Identity) -> Result<ChainReport, Error> {
        permit(who, Action::VerifyAuditLog)?;
        let mut last = self.chain.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < CHAIN_CHECK_REUSE
        {
            return Ok(report.clone());
        }
        let report = app::verify_chain(self.store(), &[]).await?;
        *last = Some((Instant::now(), report.clone()));
        Ok(report)
    }
}
