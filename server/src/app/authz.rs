//! Every resource-level permission rule, in one place. The auth layer checks
//! the role an RPC needs before any handler runs; what depends on the
//! resource (who may set a policy, approve a given request, cancel it) is
//! decided here, by the use cases, whatever edge the call came through.

use crate::domain::{Policy, TransitionRequest};
use crate::error::{Error, Result};

use super::Caller;

/// Only admins set a model's policy (at creation or later): a call that
/// `sets_policy` needs the admin role.
pub(crate) fn may_set_policy(caller: &Caller, sets_policy: bool) -> Result<()> {
    if caller.admin || !sets_policy {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "{} lacks the role \"admin\" needed to set a model policy",
            caller.actor.0
        )))
    }
}

/// Four eyes: the requester may not approve their own request unless the
/// model's policy allows it, and nobody approves the same request twice.
pub(crate) fn may_approve(
    policy: &Policy,
    request: &TransitionRequest,
    approver: &str,
) -> Result<()> {
    let (id, model) = (request.id(), &request.model);
    if request.requester == approver && !policy.allow_self_approval() {
        return Err(Error::precondition(
            "SELF_APPROVAL",
            id.clone(),
            format!(
                "{approver} requested {id} and the policy of model {model:?} forbids approving one's own request; another approver must approve it"
            ),
        ));
    }
    if request.approvals.iter().any(|a| a.approver == approver) {
        return Err(Error::precondition(
            "DUPLICATE_APPROVAL",
            id.clone(),
            format!(
                "{approver} has already approved {id}; it needs {} distinct approvers",
                policy.min_approvals()
            ),
        ));
    }
    Ok(())
}

/// A request is cancelled by its requester or an admin.
pub(crate) fn may_cancel(caller: &Caller, request: &TransitionRequest) -> Result<()> {
    let who = &caller.actor.0;
    if *who == request.requester || caller.admin {
        Ok(())
    } else {
        Err(Error::PermissionDenied(format!(
            "only the requester ({}) or an admin may cancel {}; {who} is neither",
            request.requester,
            request.id()
        )))
    }
}
