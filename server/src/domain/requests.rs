//! Transition requests: their status, approvals, and ids `MODEL:NUMBER`.

use crate::error::{Error, Result};
use strum::{Display, EnumString, IntoStaticStr};

use serde::{Deserialize, Serialize};

use super::*;

/// The status of a transition request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, IntoStaticStr, EnumString, Display)]
#[strum(serialize_all = "SCREAMING_SNAKE_CASE")]
pub enum RequestStatus {
    /// Waiting for approvals.
    Pending,
    /// Approved and applied.
    Approved,
    /// Rejected by an approver.
    Rejected,
    /// Withdrawn by the requester or an admin.
    Cancelled,
    /// The version moved elsewhere first.
    Superseded,
}

impl RequestStatus {
    /// Every status.
    pub const ALL: [RequestStatus; 5] = [
        RequestStatus::Pending,
        RequestStatus::Approved,
        RequestStatus::Rejected,
        RequestStatus::Cancelled,
        RequestStatus::Superseded,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// The inverse of [`RequestStatus::as_str`].
    pub fn from_db(s: &str) -> Option<RequestStatus> {
        s.parse().ok()
    }
}

/// One approval of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Approval {
    /// Who approved.
    pub approver: String,
    /// Their comment.
    pub comment: String,
    /// When, µs since the epoch.
    pub approve_time: i64,
}

/// A move waiting for sign-off.
#[derive(Debug, Clone, PartialEq)]
pub struct TransitionRequest {
    /// The model.
    pub model: String,
    /// Per-model number; the id is `model:number`.
    pub number: i64,
    /// The version to move.
    pub version: i64,
    /// Its stage when requested.
    pub from_stage: Stage,
    /// Where it goes when approved.
    pub to_stage: Stage,
    /// True for a rollback waiting for approval.
    pub rollback: bool,
    /// Who asked.
    pub requester: String,
    /// Their comment (the reason, for a rollback).
    pub comment: String,
    /// Gate results at request time.
    pub gate_results: Vec<GateResult>,
    /// Approvals so far, oldest first.
    pub approvals: Vec<Approval>,
    /// Status.
    pub status: RequestStatus,
    /// µs since the epoch.
    pub create_time: i64,
    /// µs since the epoch.
    pub update_time: i64,
    /// Who closed it (the last approver, the rejecter, the canceller).
    pub resolved_by: String,
    /// The closing comment.
    pub resolution_comment: String,
}

impl TransitionRequest {
    /// The request's id: `MODEL:NUMBER`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.model, self.number)
    }

    /// Counts `approver`'s approval at `now`; with `needed` approvals the
    /// request is approved (resolved by the last approver). Whether they may
    /// approve at all is [`crate::app::authz`]'s question, asked first.
    pub fn record_approval(
        &mut self,
        approver: &str,
        comment: &str,
        now: i64,
        needed: usize,
    ) -> bool {
        self.approvals.push(Approval {
            approver: approver.to_owned(),
            comment: comment.to_owned(),
            approve_time: now,
        });
        self.update_time = now;
        let complete = self.approvals.len() >= needed;
        if complete {
            self.status = RequestStatus::Approved;
            self.resolved_by = approver.to_owned();
            self.resolution_comment = comment.to_owned();
        }
        complete
    }
}

/// Parses a request id `MODEL:NUMBER`.
pub fn parse_transition_request_id(field: &str, raw: &str) -> Result<(crate::domain::Name, i64)> {
    let bad = || {
        Error::invalid(
            field,
            format!(
                "{:?} is not a transition request id: ids look like MODEL:NUMBER, e.g. fraud-detector:3",
                crate::domain::truncate(raw, 80)
            ),
        )
    };
    let (model, number) = raw.rsplit_once(':').ok_or_else(bad)?;
    let number: i64 = number.parse().map_err(|_| bad())?;
    if number < 1 {
        return Err(bad());
    }
    let model = crate::domain::Name::parse(field, model).map_err(|_| bad())?;
    Ok((model, number))
}
