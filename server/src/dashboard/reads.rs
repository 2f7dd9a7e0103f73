//! Reads for the pages: every page of a list, the events of a range, the
//! audit chain's verification, each through the service as the visitor.

use std::future::Future;
use std::time::Instant;

use modelreg_api::v1 as pb;
use modelreg_api::v1::model_registry_service_server::ModelRegistryService;
use tonic::Status;

use crate::auth::{self, Identity};

use super::*;

impl Dashboard {
    pub(super) async fn all_models(&self, who: &Identity) -> Result<Vec<pb::Model>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListModelsRequest {
                page_size: PAGE,
                page_token,
                filter: String::new(),
            };
            let page = self
                .call(who, "ListModels", req, |s, r| async move {
                    s.list_models(r).await
                })
                .await?;
            Ok((page.models, page.next_page_token))
        })
        .await
    }

    pub(super) async fn all_versions(
        &self,
        who: &Identity,
        model: &str,
    ) -> Result<Vec<pb::ModelVersion>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListVersionsRequest {
                model: model.to_owned(),
                stage: pb::Stage::Unspecified as i32,
                page_size: PAGE,
                page_token,
            };
            let page = self
                .call(who, "ListVersions", req, |s, r| async move {
                    s.list_versions(r).await
                })
                .await?;
            Ok((page.versions, page.next_page_token))
        })
        .await
    }

    /// Transition requests of one model (or all), with one status (or any).
    pub(super) async fn all_requests(
        &self,
        who: &Identity,
        model: &str,
        status: pb::TransitionRequestStatus,
    ) -> Result<Vec<pb::TransitionRequest>, Status> {
        every_page(|page_token| async move {
            let req = pb::ListTransitionRequestsRequest {
                model: model.to_owned(),
                status: status as i32,
                page_size: PAGE,
                page_token,
            };
            let page = self
                .call(who, "ListTransitionRequests", req, |s, r| async move {
                    s.list_transition_requests(r).await
                })
                .await?;
            Ok((page.requests, page.next_page_token))
        })
        .await
    }

    /// Events matching `filter` with sequence in (`after`, `before`).
    pub(super) async fn events_between(
        &self,
        who: &Identity,
        filter: &pb::ListEventsRequest,
        after: u64,
        before: u64,
    ) -> Result<Vec<pb::RegistryEvent>, Status> {
        let mut out = Vec::new();
        let mut token = String::new();
        loop {
            let req = pb::ListEventsRequest {
                after_sequence: after,
                page_size: PAGE,
                page_token: token,
                ..filter.clone()
            };
            let page = self
                .call(who, "ListEvents", req, |s, r| async move {
                    s.list_events(r).await
                })
                .await?;
            let done = page.next_page_token.is_empty()
                || page.events.last().is_some_and(|e| e.sequence >= before);
            out.extend(page.events.into_iter().filter(|e| e.sequence < before));
            if done {
                return Ok(out);
            }
            token = page.next_page_token;
        }
    }

    /// The newest `want` events matching `filter` before sequence `before`:
    /// looks back through ever wider windows, so a busy log is not read
    /// whole to show its last page.
    pub(super) async fn newest_events(
        &self,
        who: &Identity,
        filter: &pb::ListEventsRequest,
        before: u64,
        want: usize,
    ) -> Result<Vec<pb::RegistryEvent>, Status> {
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

    /// VerifyAuditLog, reused for [`CHAIN_CHECK_REUSE`]; one verification
    /// runs at a time however many pages ask.
    pub(super) async fn verified_chain(
        &self,
        who: &Identity,
    ) -> Result<pb::VerifyAuditLogResponse, Status> {
        let mut last = self.chain.lock().await;
        if let Some((at, report)) = last.as_ref()
            && at.elapsed() < CHAIN_CHECK_REUSE
            && who.has(auth::required_role("VerifyAuditLog"))
        {
            return Ok(report.clone());
        }
        let report = self
            .call(
                who,
                "VerifyAuditLog",
                pb::VerifyAuditLogRequest::default(),
                |s, r| async move { s.verify_audit_log(r).await },
            )
            .await?;
        *last = Some((Instant::now(), report.clone()));
        Ok(report)
    }
}

/// Every item of a paged list: `fetch` takes a page token and returns a
/// page and the next token (empty after the last page).
async fn every_page<T, F, Fut>(mut fetch: F) -> Result<Vec<T>, Status>
where
    F: FnMut(String) -> Fut,
    Fut: Future<Output = Result<(Vec<T>, String), Status>>,
{
    let mut out = Vec::new();
    let mut token = String::new();
    loop {
        let (items, next) = fetch(token).await?;
        out.extend(items);
        if next.is_empty() {
            return Ok(out);
        }
        token = next;
    }
}
