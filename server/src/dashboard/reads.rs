//! Reads for the pages: every page of a list, the events of a range, the
//! audit chain's verification, each an `app::` call as the visitor.

use std::time::Instant;

use crate::app::{self, ConsumerView};
use crate::auth::{Action, Identity};
use crate::domain::{
    DeadLetterRecord, Event, EventFilter, Model, RequestStatus, TransitionRequest, Version,
};
use crate::error::Error;
use crate::store::{ChainReport, ModelFilter, RequestCursor};

use super::*;

/// Every item of a list, page after page: `fetch` gets the cursor of the
/// last item so far (`None` for the first page) and answers a page and
/// whether more follow.
async fn every_page<T, C, F, Fut>(cursor: impl Fn(&T) -> C, mut fetch: F) -> Result<Vec<T>, Error>
where
    F: FnMut(Option<C>) -> Fut,
    Fut: std::future::Future<Output = Result<(Vec<T>, bool), Error>>,
{
    let mut out = Vec::new();
    loop {
        let (page, more) = fetch(out.last().map(&cursor)).await?;
        out.extend(page);
        if !more {
            return Ok(out);
        }
    }
}

impl Dashboard {
    pub(super) async fn all_models(&self, who: &Identity) -> Result<Vec<Model>, Error> {
        permit(who, Action::ListModels)?;
        let all = &ModelFilter::default();
        every_page(
            |m: &Model| m.name.clone(),
            |after| async move {
                app::list_models(self.store(), all, after.as_deref(), PAGE).await
            },
        )
        .await
    }

    pub(super) async fn all_versions(
        &self,
        who: &Identity,
        model: &str,
    ) -> Result<Vec<Version>, Error> {
        permit(who, Action::ListVersions)?;
        every_page(
            |v: &Version| v.version,
            |after| app::list_versions(self.store(), model, None, after.unwrap_or(0), PAGE),
        )
        .await
    }

    /// The pending transition requests of one model (or all).
    pub(super) async fn pending_requests(
        &self,
        who: &Identity,
        model: Option<&str>,
    ) -> Result<Vec<TransitionRequest>, Error> {
        permit(who, Action::ListTransitionRequests)?;
        let pending = Some(RequestStatus::Pending);
        let cursor = |r: &TransitionRequest| RequestCursor {
            create_time: r.create_time,
            model: r.model.clone(),
            number: r.number,
        };
        every_page(cursor, |after| {
            app::list_requests(self.store(), model, pending, after, PAGE)
        })
        .await
    }

    /// Every consumer, by name, with its lag.
    pub(super) async fn all_consumers(&self, who: &Identity) -> Result<Vec<ConsumerView>, Error> {
        permit(who, Action::ListConsumers)?;
        every_page(
            |v: &ConsumerView| v.state.record.name.clone(),
            |after| async move {
                app::list_consumers(self.store(), after.as_deref().unwrap_or(""), PAGE).await
            },
        )
        .await
    }

    /// Every dead letter of consumer `name`, resolved ones included, in
    /// event order, with its event.
    pub(super) async fn all_dead_letters(
        &self,
        who: &Identity,
        name: &str,
    ) -> Result<Vec<(DeadLetterRecord, Event)>, Error> {
        permit(who, Action::ListDeadLetters)?;
        every_page(
            |(d, _): &(DeadLetterRecord, Event)| d.sequence,
            |after| app::list_dead_letters(self.store(), name, true, after.unwrap_or(0), PAGE),
        )
        .await
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
        every_page(
            |e: &Event| e.sequence,
            |from| {
                app::list_events(
                    self.store(),
                    filter,
                    from.unwrap_or(after),
                    Some(upto),
                    PAGE,
                )
            },
        )
        .await
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
