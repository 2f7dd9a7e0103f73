//! The use cases: one async function per thing a caller can ask of the
//! registry, and the only place where rules are put in order. Every edge
//! (gRPC, the dashboard, the policy engine) calls these functions with domain
//! values; they lock what a change depends on, ask the pure rules of
//! [`crate::domain`], apply the statements of [`crate::store`] in one
//! transaction with the change's events, and return domain values.
//!
//! Each write is one function whose body `write_tx!` runs in a
//! transaction of whichever backend the store uses; reads likewise, generic
//! over `Db`, through `read_db!`. Nothing here knows about protobuf,
//! tonic or HTTP.

use crate::domain::audit::event_hash;
use crate::domain::lifecycle;
use crate::domain::{Actor, Event, EventKind, Model, NewEvent, SetRef, etag};
use crate::error::{Error, Result};
use crate::store::{Db, Tx, WriteFuture};

/// Runs a use case's write transaction on the store's backend and waits for
/// its commit: `write_tx!(store, |tx| -> Answer { body })`. The body is
/// written once and compiled for each backend's transaction; it returns
/// `Result<(Answer, Option<u64>)>`, the answer and the last sequence it
/// appended (`None` when it appended nothing).
macro_rules! write_tx {
    ($store:expr, |$tx:ident| -> $out:ty $body:block) => {
        match $store.backend() {
            $crate::store::Backend::Sqlite(db) => {
                write_tx!(@on db, $crate::store::SqliteStore, |$tx| -> $out $body)
            }
            $crate::store::Backend::Postgres(db) => {
                write_tx!(@on db, $crate::store::PgStore, |$tx| -> $out $body)
            }
        }
    };
    (@on $db:ident, $backend:ty, |$tx:ident| -> $out:ty $body:block) => {
        $crate::store::Db::write($db, move |$tx: &mut <$backend as $crate::store::Db>::Tx| {
            let out: $crate::store::WriteFuture<'_, $out> = Box::pin(async move $body);
            out
        })
        .await
    };
}

/// Runs a read, `|db| body`, on the store's backend. The body is a call of a
/// function generic over [`Db`].
macro_rules! read_db {
    ($store:expr, |$db:ident| $body:expr) => {
        match $store.backend() {
            $crate::store::Backend::Sqlite($db) => $body.await,
            $crate::store::Backend::Postgres($db) => $body.await,
        }
    };
}

pub mod approvals;
pub mod audit;
pub mod authz;
pub mod consumers;
pub mod deployments;
pub mod evaluations;
pub mod events;
pub mod gates;
pub mod idempotency;
pub mod imports;
pub mod models;
pub mod policy_engine;
pub mod transitions;
pub mod versions;

pub use approvals::*;
pub use audit::*;
pub use consumers::*;
pub use deployments::*;
pub use evaluations::*;
pub use events::*;
pub(crate) use gates::*;
pub(crate) use idempotency::*;
pub use imports::*;
pub use models::*;
pub use policy_engine::*;
pub use transitions::*;
pub use versions::*;

/// Locks a model that must exist (see [`Tx::lock_model`]) and returns it.
pub(crate) async fn lock_existing<T: Tx>(tx: &mut T, name: &str) -> Result<Model> {
    tx.lock_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))
}

/// Reads a model that must exist, outside a transaction.
pub(crate) async fn get_model_on<D: Db>(db: &D, name: &str) -> Result<Model> {
    db.fetch_model(name)
        .await?
        .ok_or_else(|| model_not_found(name))
}

pub(crate) fn model_not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Model",
        name: name.to_owned(),
    }
}

pub(crate) fn version_not_found(model: &str, which: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.ModelVersion",
        name: format!("{model}/{which}"),
    }
}

pub(crate) fn alias_not_found(model: &str, alias: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Alias",
        name: format!("{model}@{alias}"),
    }
}

pub(crate) fn vanished(what: &str) -> Error {
    Error::Internal(format!("{what} vanished inside its own transaction"))
}

pub(crate) fn check_etag(
    expected: Option<i64>,
    actual: i64,
    kind: &str,
    subject: &str,
) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::precondition(
            "ETAG",
            subject,
            format!(
                "the {kind} {subject} has changed since it was read: etag {} is stale, the current etag is {}; read it again and retry",
                etag(e),
                etag(actual)
            ),
        )),
        _ => Ok(()),
    }
}

/// Appends events with the next sequences and chained hashes; returns the
/// last sequence. Runs last in each transaction: the log head stays locked
/// from here to commit, so sequences commit in order and never show a gap.
pub(crate) async fn append_events<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    events: Vec<NewEvent>,
) -> Result<u64> {
    let (mut sequence, mut prev_hash) = tx.log_head().await?;
    let now = tx.now();
    let mut chained = Vec::with_capacity(events.len());
    for ne in events {
        sequence += 1;
        let mut e = Event {
            sequence,
            kind: ne.kind,
            model: ne.model,
            version: ne.version,
            from_stage: ne.from_stage,
            to_stage: ne.to_stage,
            cause: ne.cause,
            actor: actor.0.clone(),
            comment: ne.comment,
            occur_time: now,
            details: ne.details,
            transition_request_id: ne.transition_request_id,
            prev_hash,
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        prev_hash = e.hash.clone();
        chained.push(e);
    }
    tx.insert_events(&chained).await?;
    tx.set_log_head(sequence, &prev_hash).await?;
    Ok(sequence)
}

/// Appends the events of a model-level change and reads the model back as
/// the transaction left it.
pub(crate) async fn finish_with_model<T: Tx>(
    tx: &mut T,
    actor: &Actor,
    events: Vec<NewEvent>,
    name: &str,
) -> Result<(Model, Option<u64>)> {
    let seq = append_events(tx, actor, events).await?;
    let model = tx
        .fetch_model(name)
        .await?
        .ok_or_else(|| vanished("model"))?;
    Ok((model, Some(seq)))
}

/// Splits one extra row off a page read with `limit + 1`: the page, and
/// whether more rows follow.
pub(crate) fn page<T>(mut rows: Vec<T>, limit: usize) -> (Vec<T>, bool) {
    let more = rows.len() > limit;
    rows.truncate(limit);
    (rows, more)
}

/// Types a write closure for [`Db::write`]: the closure gets the open
/// transaction and returns its result with the last sequence it appended.
pub(crate) fn job<T, R, F>(f: F) -> F
where
    F: for<'t> FnOnce(&'t mut T) -> WriteFuture<'t, R>,
{
    f
}

pub(crate) fn stage_event(
    model: &str,
    mv: &lifecycle::Move,
    comment: String,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        kind: EventKind::StageChanged,
        model: model.to_owned(),
        version: mv.version,
        from_stage: Some(mv.from),
        to_stage: Some(mv.to),
        cause: Some(mv.cause),
        comment,
        details,
        transition_request_id: String::new(),
    }
}

pub(crate) fn request_not_found(model: &str, number: i64) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.TransitionRequest",
        name: format!("{model}:{number}"),
    }
}

pub(crate) fn set_not_found(set: &SetRef) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.EvaluationSet",
        name: set.to_string(),
    }
}
