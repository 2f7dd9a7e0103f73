//! AIP-155 request ids, one mechanism for every create and report: a retry
//! by the same caller with the same id replays the first answer; the same id
//! with a different request is INVALID_ARGUMENT. Ids are scoped to the
//! calling identity, so one caller can never claim another's.

use crate::app::{lock_existing, version_not_found};
use crate::domain::Actor;
use crate::error::{Error, Result};
use crate::store::{StoredRequest, Tx};

/// The key a request id is stored under: AIP-155 scopes request ids to the
/// principal, so one caller can never claim (or replay) another's id.
pub(crate) fn scoped_request_id(actor: &Actor, request_id: &str) -> String {
    format!("{}\u{1f}{request_id}", actor.0)
}

/// One call's request id, scoped to its caller, with the fingerprint of
/// what it asks: where a retry is recognised and the first answer kept.
pub(crate) struct RequestId<'a> {
    /// The RPC, e.g. `RegisterVersion`.
    method: &'static str,
    /// Who calls.
    actor: &'a Actor,
    /// The caller's id for the call, if it gave one.
    id: Option<&'a str>,
    /// A digest of the request, to tell a retry from a reuse of the id.
    fingerprint: String,
}

impl<'a> RequestId<'a> {
    pub(crate) fn new(
        method: &'static str,
        actor: &'a Actor,
        id: &'a Option<String>,
        fingerprint: String,
    ) -> Self {
        RequestId {
            method,
            actor,
            id: id.as_deref(),
            fingerprint,
        }
    }

    /// The record of an earlier call of the same caller with this id:
    /// `Some` for a retry of the same request, an error for a different
    /// request reusing the id, `None` for a first call or a call without id.
    pub(crate) async fn retry<T: Tx>(&self, tx: &mut T) -> Result<Option<StoredRequest>> {
        let Some(request_id) = self.id else {
            return Ok(None);
        };
        let method = self.method;
        match tx
            .find_request(method, &scoped_request_id(self.actor, request_id))
            .await?
        {
            Some(stored) if stored.fingerprint != self.fingerprint => Err(Error::invalid(
                "request_id",
                format!(
                    "{request_id:?} was already used for a different {method} request; use a new request id for a new request"
                ),
            )),
            other => Ok(other),
        }
    }

    /// Keeps the first answer (the model and version it concerns, and what
    /// [`stored_response`] reads back) for the call's retries; nothing for
    /// a call without id.
    pub(crate) async fn remember<T: Tx>(
        self,
        tx: &mut T,
        model: &str,
        version: i64,
        response: Option<String>,
    ) -> Result<()> {
        let Some(request_id) = self.id else {
            return Ok(());
        };
        let stored = StoredRequest {
            fingerprint: self.fingerprint,
            model: model.to_owned(),
            version,
            response,
        };
        let key = scoped_request_id(self.actor, request_id);
        tx.remember_request(self.method, &key, &stored).await
    }
}

/// Begins a write about an existing version of `model`: locks the model
/// (which must exist), answers a retry of `id` with its stored record, and
/// otherwise checks that the version exists.
pub(crate) async fn begin_version_write<T: Tx>(
    tx: &mut T,
    model: &str,
    version: i64,
    id: &RequestId<'_>,
) -> Result<Option<StoredRequest>> {
    lock_existing(tx, model).await?;
    if let Some(stored) = id.retry(tx).await? {
        return Ok(Some(stored));
    }
    if tx.fetch_version(model, version).await?.is_none() {
        return Err(version_not_found(model, &version.to_string()));
    }
    Ok(None)
}

/// An answer as JSON, to be kept for retries.
pub(crate) fn json_response<R: serde::Serialize>(answer: &R) -> Result<String> {
    serde_json::to_string(answer)
        .map_err(|e| Error::Internal(format!("cannot store a response: {e}")))
}

/// The first answer of an idempotent call, stored as JSON with its request id.
pub(crate) fn stored_response<T: serde::de::DeserializeOwned>(stored: &StoredRequest) -> Result<T> {
    let text = stored
        .response
        .as_deref()
        .ok_or_else(|| Error::Internal("a stored request without its response".into()))?;
    serde_json::from_str(text).map_err(|e| Error::Internal(format!("stored response: {e}")))
}
