//! Persistence: one transaction per change, with the change's events appended
//! in that same transaction, and the wake-up signal for watchers.
//!
//! The service layer talks only to [`Store`]; which database sits behind it is
//! chosen by the URL at start. SQL lives in the backend modules and nowhere
//! else. Every write runs on a spawned task, so a caller that disconnects
//! mid-call cannot cancel a transaction half way: it is applied whole or not
//! at all, and a retry with the same request id finds it.

mod sqlite;

use std::future::Future;

use tokio::sync::watch;

use crate::domain::{
    Actor, AliasName, Event, EventFilter, Model, ModelUpdate, Name, NewModel, NewVersion, Stage,
    StageChange, Version,
};
use crate::error::{Error, Result};

pub use sqlite::SqliteStore;

/// How a version is named in a lookup.
#[derive(Debug, Clone)]
pub enum VersionRef {
    /// By number.
    Number(i64),
    /// By alias.
    Alias(AliasName),
}

/// The ListModels filter, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelFilter {
    /// `tags.KEY=VALUE` terms.
    pub tag_equals: Vec<(String, String)>,
    /// `tags.KEY:*` terms.
    pub tag_present: Vec<String>,
    /// `name=NAME`.
    pub name_equals: Option<String>,
    /// `name:PREFIX*`.
    pub name_prefix: Option<String>,
}

/// The outcome of re-computing the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events read.
    pub checked: u64,
    /// The first broken sequence, 0 when ok.
    pub first_bad: u64,
}

/// The registry's storage, shared by every handler.
#[derive(Clone)]
pub struct Store {
    /// The backend in use.
    backend: Backend,
    /// The highest committed sequence; watchers wait on it. A signal only:
    /// subscribers read the events themselves, so none can miss one.
    latest: watch::Receiver<u64>,
}

#[derive(Clone)]
enum Backend {
    Sqlite(SqliteStore),
}

/// Runs a write on its own task so that dropping the caller's future (a
/// client that hangs up) cannot interrupt the transaction.
async fn detached<T, F>(fut: F) -> Result<T>
where
    F: Future<Output = Result<T>> + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(fut)
        .await
        .map_err(|e| Error::Internal(format!("write task failed: {e}")))?
}

macro_rules! write_op {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        match &$self.backend {
            Backend::Sqlite(db) => {
                let db = db.clone();
                detached(async move { db.$method($($arg),*).await }).await
            }
        }
    }};
}

macro_rules! read_op {
    ($self:ident, $method:ident ( $($arg:expr),* )) => {{
        match &$self.backend {
            Backend::Sqlite(db) => db.$method($($arg),*).await,
        }
    }};
}

impl Store {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let (db, latest) = SqliteStore::open(url).await?;
            Ok(Store {
                backend: Backend::Sqlite(db),
                latest,
            })
        } else {
            Err(Error::invalid(
                "database_url",
                format!(
                    "unsupported database URL {:?}: use sqlite:///absolute/path.db or sqlite://relative/path.db",
                    crate::domain::truncate(url, 80)
                ),
            ))
        }
    }

    /// The highest committed sequence, 0 for an empty log.
    pub fn latest_sequence(&self) -> u64 {
        *self.latest.borrow()
    }

    /// A receiver that changes whenever events are committed.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.clone()
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<()> {
        read_op!(self, ping())
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(db) => db.close().await,
        }
    }

    /// Creates a model.
    pub async fn create_model(&self, new: NewModel, actor: Actor) -> Result<Model> {
        write_op!(self, create_model(new, actor))
    }

    /// Reads a model.
    pub async fn get_model(&self, name: &Name) -> Result<Model> {
        read_op!(self, get_model(name))
    }

    /// One page of models in name order, after `after`.
    pub async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Model>, bool)> {
        read_op!(self, list_models(filter, after, limit))
    }

    /// Changes a model's description or tags.
    pub async fn update_model(&self, update: ModelUpdate, actor: Actor) -> Result<Model> {
        write_op!(self, update_model(update, actor))
    }

    /// Registers a version (or returns the original on a request-id retry).
    pub async fn register_version(&self, new: NewVersion, actor: Actor) -> Result<Version> {
        write_op!(self, register_version(new, actor))
    }

    /// Reads a version.
    pub async fn get_version(&self, model: &Name, which: &VersionRef) -> Result<Version> {
        read_op!(self, get_version(model, which))
    }

    /// One page of versions in ascending order, after version `after`.
    pub async fn list_versions(
        &self,
        model: &Name,
        stage: Option<Stage>,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Version>, bool)> {
        read_op!(self, list_versions(model, stage, after, limit))
    }

    /// Points an alias at a version.
    pub async fn set_alias(
        &self,
        model: Name,
        alias: AliasName,
        version: i64,
        actor: Actor,
    ) -> Result<Model> {
        write_op!(self, set_alias(model, alias, version, actor))
    }

    /// Removes an alias.
    pub async fn delete_alias(&self, model: Name, alias: AliasName, actor: Actor) -> Result<Model> {
        write_op!(self, delete_alias(model, alias, actor))
    }

    /// Applies a stage move under the lifecycle rules.
    pub async fn transition(&self, change: StageChange, actor: Actor) -> Result<Version> {
        write_op!(self, transition(change, actor))
    }

    /// Events matching `filter` with sequence in `(after, upto]`, at most
    /// `limit`, in sequence order. `upto = None` means the end of the log.
    pub async fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>> {
        read_op!(self, events(filter, after, upto, limit))
    }

    /// Re-computes the whole hash chain.
    pub async fn verify_chain(&self) -> Result<ChainReport> {
        read_op!(self, verify_chain())
    }
}
