//! AIP-155 request ids, one mechanism for every create and report: a retry
//! by the same caller with the same id replays the first answer; the same id
//! with a different request is INVALID_ARGUMENT. Ids are scoped to the
//! calling identity, so one caller can never claim another's.

use crate::domain::Actor;
use crate::error::{Error, Result};
use crate::store::{StoredRequest, Tx};

/// The key a request id is stored under: AIP-155 scopes request ids to the
/// principal, so one caller can never claim (or replay) another's id.
pub(crate) fn scoped_request_id(actor: &Actor, request_id: &str) -> String {
    format!("{}\u{1f}{request_id}", actor.0)
}

/// Looks up an earlier request of `actor` with this id: `Some` for a retry of
/// the same request, an error for a different request reusing the id.
pub(crate) async fn find_retry<T: Tx>(
    tx: &mut T,
    method: &str,
    actor: &Actor,
    request_id: &str,
    fingerprint: &str,
) -> Result<Option<StoredRequest>> {
    match tx
        .find_request(method, &scoped_request_id(actor, request_id))
        .await?
    {
        Some(stored) if stored.fingerprint != fingerprint => Err(Error::invalid(
            "request_id",
            format!(
                "{request_id:?} was already used for a different {method} request; use a new request id for a new request"
            ),
        )),
        other => Ok(other),
    }
}

/// Records the first answer to `actor`'s request id, for [`find_retry`].
pub(crate) async fn remember_request<T: Tx>(
    tx: &mut T,
    method: &str,
    actor: &Actor,
    request_id: &str,
    stored: &StoredRequest,
) -> Result<()> {
    tx.remember_request(method, &scoped_request_id(actor, request_id), stored)
        .await
}

/// The first answer of an idempotent call, stored as JSON with its request id.
pub(crate) fn stored_response<T: serde::de::DeserializeOwned>(stored: &StoredRequest) -> Result<T> {
    let text = stored
        .response
        .as_deref()
        .ok_or_else(|| Error::Internal("a stored request without its response".into()))?;
    serde_json::from_str(text).map_err(|e| Error::Internal(format!("stored response: {e}")))
}
