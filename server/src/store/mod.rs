//! Persistence: one transaction per change, with the change's events appended
//! in that same transaction, and the wake-up signal for watchers.
//!
//! Statements only: the use cases ([`crate::app`]) run on [`Store`], whose
//! database is chosen by the URL at start (`sqlite:` or `postgres:`), through
//! two small traits: [`Db`] (reads and starting a write) and [`Tx`] (the
//! statements of one write). Those are
//! implemented once for both engines, generically, in [`db`] and [`tx`]
//! (rows in [`rows`]). Each backend's module holds only what truly differs,
//! behind the contracts of [`sql`]: connecting, a few bits of SQL text,
//! locking, the end of the log, and how other processes learn of new commits.
//!
//! Every write runs on a spawned task, so a caller that disconnects mid-call
//! cannot cancel a transaction half way: it is applied whole or not at all,
//! and a retry with the same request id finds it.

mod batch;
mod cache;
mod consumers;
mod db;
mod lite;
mod postgres;
mod rows;
mod sql;
mod sqlite;
mod tx;

use std::future::Future;

use tokio::sync::watch;

use crate::clock::Clock;
use crate::domain::{
    AliasName, Deployment, Evaluation, EvaluationSet, Event, EventFilter, LiveObservation, Model,
    SetRef, Stage, Version,
};
use crate::domain::{ConsumerRecord, DeadLetterRecord, ModelSlot};
use crate::domain::{
    LiveMetricRule, Readings, RequestStatus, StageSince, StageStep, TransitionRequest,
};
use crate::error::{Error, Result};

pub use consumers::{ConsumerChanges, ConsumerState, Slots};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use sql::SqlStore as _;

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

/// Where a page of transition requests (newest first) ended: the last
/// request's creation time, model and number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestCursor {
    /// The last request's create_time (microseconds).
    pub create_time: i64,
    /// Its model.
    pub model: String,
    /// Its number within the model.
    pub number: i64,
}

/// The outcome of re-computing the hash chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// Whether every link holds.
    pub ok: bool,
    /// Events read.
    pub checked: u64,
    /// The first broken sequence (or failed anchor), 0 when ok.
    pub first_bad: u64,
    /// The newest event's sequence and hash, if any event exists.
    pub head: Option<(u64, String)>,
    /// Why `ok` is false, in words; empty when ok.
    pub problem: String,
}

/// An earlier request with the same AIP-155 request id.
#[derive(Debug, Clone)]
pub struct StoredRequest {
    /// The digest of what that request asked for.
    pub fingerprint: String,
    /// The model it concerned.
    pub model: String,
    /// The version it created (0 for model-level requests).
    pub version: i64,
    /// The first answer as JSON, for calls whose answer cannot be read back
    /// from the resource (a deployment reported again since, an event).
    pub response: Option<String>,
}

/// How much of a connection pool is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUse {
    /// Connections open.
    pub open: u32,
    /// Of those, idle.
    pub idle: u32,
}

/// Connection sizing and other knobs that are not part of the URL.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// Most connections one server holds to a PostgreSQL database.
    pub max_connections: u32,
    /// How often a PostgreSQL replica polls for commits of other replicas,
    /// in case a notification was missed.
    pub poll_interval: std::time::Duration,
    /// Where every "now" comes from.
    pub clock: Clock,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            max_connections: 10,
            poll_interval: std::time::Duration::from_secs(1),
            clock: Clock::system(),
        }
    }
}

/// The future of one write: its result and the last sequence it appended
/// (`None` when it changed nothing).
pub type WriteFuture<'t, R> =
    std::pin::Pin<Box<dyn Future<Output = Result<(R, Option<u64>)>> + Send + 't>>;

/// Reads, and writes, on one backend.
pub trait Db: Clone + Send + Sync + 'static {
    /// One write transaction.
    type Tx: Tx + 'static;
    /// "Now" from the store's clock, µs since the epoch.
    fn now(&self) -> i64;
    /// Runs `write` in a transaction and commits it (the SQLite backend may
    /// commit several writes together, answering each only once all are
    /// durable). Watchers are woken after the commit. The write runs to its
    /// end even if the caller stops waiting.
    fn write<R, F>(&self, write: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx) -> WriteFuture<'t, R> + Send + 'static;
    /// A model, if it exists.
    fn fetch_model(&self, name: &str) -> impl Future<Output = Result<Option<Model>>> + Send;
    /// A version, if it exists.
    fn fetch_version(
        &self,
        model: &str,
        version: i64,
    ) -> impl Future<Output = Result<Option<Version>>> + Send;
    /// The version an alias points at, if the alias exists.
    fn alias_target(
        &self,
        model: &str,
        alias: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// Up to `limit` models in name order after `after`.
    fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&str>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Model>>> + Send;
    /// Up to `limit` versions of `model` in ascending order after `after`.
    fn list_versions(
        &self,
        model: &str,
        stage: Option<Stage>,
        after: i64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Version>>> + Send;
    /// Up to `limit` events matching `filter` in `(after, upto]`, in order.
    fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Event>>> + Send;
    /// Checks that the database answers.
    fn ping(&self) -> impl Future<Output = Result<()>> + Send;
    /// A transition request, if it exists.
    fn fetch_request(
        &self,
        model: &str,
        number: i64,
    ) -> impl Future<Output = Result<Option<TransitionRequest>>> + Send;
    /// Up to `limit` transition requests (of one model, with one status, if
    /// given), newest first, after `after`.
    fn list_requests(
        &self,
        model: Option<&str>,
        status: Option<RequestStatus>,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<TransitionRequest>>> + Send;
    /// An evaluation set version, if it exists.
    fn fetch_evaluation_set(
        &self,
        set: &SetRef,
    ) -> impl Future<Output = Result<Option<EvaluationSet>>> + Send;
    /// Up to `limit` evaluation sets (of one name, if given) after `after`,
    /// ordered by name and version.
    fn list_evaluation_sets(
        &self,
        name: Option<&str>,
        after: Option<&SetRef>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<EvaluationSet>>> + Send;
    /// Every evaluation of the given versions of `model`, by version, oldest first.
    fn evaluations_of(
        &self,
        model: &str,
        versions: &[i64],
    ) -> impl Future<Output = Result<Vec<Evaluation>>> + Send;
    /// Up to `limit` evaluations of `model` on `set`, ordered by version and
    /// evaluator version, after `after`.
    fn list_evaluations(
        &self,
        model: &str,
        set: &SetRef,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Evaluation>>> + Send;
    /// The model's production version and when it entered production.
    fn production_since(
        &self,
        model: &str,
    ) -> impl Future<Output = Result<Option<StageSince>>> + Send;
    /// The versions below `below` still in NONE or STAGING, in order.
    fn passed_over(
        &self,
        model: &str,
        below: i64,
    ) -> impl Future<Output = Result<Vec<StageSince>>> + Send;
    /// What the live monitor needs to judge `rule` on `version` at `now`,
    /// counting observations made since `since`.
    fn live_readings(
        &self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> impl Future<Output = Result<Readings>> + Send;
    /// A consumer's state.
    fn consumer_state(
        &self,
        name: &str,
        slots: Slots<'_>,
    ) -> impl Future<Output = Result<Option<ConsumerState>>> + Send;
    /// Up to `limit` consumers by name after `after`.
    fn list_consumers(
        &self,
        after: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<ConsumerRecord>>> + Send;
    /// Up to `limit` dead letters of consumer `name` after sequence `after`.
    fn list_dead_letters(
        &self,
        name: &str,
        include_resolved: bool,
        after: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<DeadLetterRecord>>> + Send;
    /// Whether the breach episode that began at `bad_since` was reported.
    fn breach_recorded(
        &self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
}

/// The statements of one write transaction. Dropping it uncommitted rolls back.
pub trait Tx: Send {
    /// "Now" from the store's clock, µs since the epoch: what this
    /// transaction stamps on what it writes.
    fn now(&self) -> i64;
    /// Locks the model's row until commit and returns it.
    fn lock_model(&mut self, name: &str) -> impl Future<Output = Result<Option<Model>>> + Send;
    /// Serializes transactions that use the same key (creates of one name).
    fn lock_key(&mut self, key: &str) -> impl Future<Output = Result<()>> + Send;
    /// A model as this transaction sees it.
    fn fetch_model(&mut self, name: &str) -> impl Future<Output = Result<Option<Model>>> + Send;
    /// A version as this transaction sees it.
    fn fetch_version(
        &mut self,
        model: &str,
        version: i64,
    ) -> impl Future<Output = Result<Option<Version>>> + Send;
    /// The model's production version, if any.
    fn production_version(
        &mut self,
        model: &str,
    ) -> impl Future<Output = Result<Option<i64>>> + Send;
    /// An earlier request with this id.
    fn find_request(
        &mut self,
        method: &str,
        request_id: &str,
    ) -> impl Future<Output = Result<Option<StoredRequest>>> + Send;
    /// Records a request id and what it produced.
    fn remember_request(
        &mut self,
        method: &str,
        request_id: &str,
        stored: &StoredRequest,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Inserts a model; `false` when the name is taken.
    fn insert_model(&mut self, model: &Model) -> impl Future<Output = Result<bool>> + Send;
    /// Replaces description and tags, bumping the revision.
    fn update_model(&mut self, model: &Model) -> impl Future<Output = Result<()>> + Send;
    /// Replaces a version's description and tags, bumping its revision.
    fn update_version(&mut self, version: &Version) -> impl Future<Output = Result<()>> + Send;
    /// Inserts a version and makes it the model's latest.
    fn insert_version(&mut self, version: &Version) -> impl Future<Output = Result<()>> + Send;
    /// Moves a version between stages, bumping its revision.
    fn move_stage(
        &mut self,
        model: &str,
        version: i64,
        from: Stage,
        to: Stage,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Bumps a model's revision and update time.
    fn touch_model(&mut self, model: &str, now: i64) -> impl Future<Output = Result<()>> + Send;
    /// Bumps a version's revision and update time.
    fn touch_version(
        &mut self,
        model: &str,
        version: i64,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Creates or moves an alias.
    fn upsert_alias(
        &mut self,
        model: &str,
        alias: &str,
        version: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Removes an alias.
    fn remove_alias(&mut self, model: &str, alias: &str)
    -> impl Future<Output = Result<()>> + Send;
    /// The last sequence and hash of the log, locked until commit so that
    /// sequences are assigned and committed in one order.
    fn log_head(&mut self) -> impl Future<Output = Result<(u64, String)>> + Send;
    /// Appends events, in order, with as few statements as possible (one
    /// change's events go in together).
    fn insert_events(&mut self, events: &[Event]) -> impl Future<Output = Result<()>> + Send;
    /// Moves the log head and tells other processes, on commit, of the new end.
    fn set_log_head(
        &mut self,
        sequence: u64,
        hash: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// An evaluation set version as this transaction sees it.
    fn fetch_evaluation_set(
        &mut self,
        set: &SetRef,
    ) -> impl Future<Output = Result<Option<EvaluationSet>>> + Send;
    /// Inserts an evaluation set version.
    fn insert_evaluation_set(
        &mut self,
        set: &EvaluationSet,
    ) -> impl Future<Output = Result<()>> + Send;
    /// The evaluation of a version on a set by an evaluator version, if any.
    fn fetch_evaluation(
        &mut self,
        model: &str,
        version: i64,
        set: &SetRef,
        evaluator_version: &str,
    ) -> impl Future<Output = Result<Option<Evaluation>>> + Send;
    /// Inserts an evaluation.
    fn insert_evaluation(&mut self, e: &Evaluation) -> impl Future<Output = Result<()>> + Send;
    /// The number the model's next transition request gets.
    fn next_request_number(&mut self, model: &str) -> impl Future<Output = Result<i64>> + Send;
    /// Inserts a transition request.
    fn insert_request(
        &mut self,
        request: &TransitionRequest,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Stores a request's approvals, status and resolution.
    fn update_request(
        &mut self,
        request: &TransitionRequest,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A transition request as this transaction sees it.
    fn fetch_request(
        &mut self,
        model: &str,
        number: i64,
    ) -> impl Future<Output = Result<Option<TransitionRequest>>> + Send;
    /// The pending requests of one version, oldest first.
    fn pending_requests_of(
        &mut self,
        model: &str,
        version: i64,
    ) -> impl Future<Output = Result<Vec<TransitionRequest>>> + Send;
    /// Every stage change of a model, in sequence order.
    fn stage_history(&mut self, model: &str)
    -> impl Future<Output = Result<Vec<StageStep>>> + Send;
    /// [`Db::production_since`], as this transaction sees it.
    fn production_since(
        &mut self,
        model: &str,
    ) -> impl Future<Output = Result<Option<StageSince>>> + Send;
    /// [`Db::passed_over`], as this transaction sees it.
    fn passed_over(
        &mut self,
        model: &str,
        below: i64,
    ) -> impl Future<Output = Result<Vec<StageSince>>> + Send;
    /// [`Db::live_readings`], as this transaction sees it.
    fn live_readings(
        &mut self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> impl Future<Output = Result<Readings>> + Send;
    /// [`Db::breach_recorded`], as this transaction sees it.
    fn breach_recorded(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> impl Future<Output = Result<bool>> + Send;
    /// Records that the breach episode that began at `bad_since` was reported.
    fn record_breach(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
        now: i64,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Stores a deployment as the latest of its version and environment.
    fn upsert_deployment(&mut self, d: &Deployment) -> impl Future<Output = Result<()>> + Send;
    /// Stores an observation (replacing one of the same metric and time).
    fn upsert_observation(
        &mut self,
        o: &LiveObservation,
    ) -> impl Future<Output = Result<()>> + Send;
    /// One event of the log, as this transaction sees it.
    fn fetch_event(&mut self, sequence: u64) -> impl Future<Output = Result<Option<Event>>> + Send;
    /// A consumer's state as this transaction sees it (lock it first with
    /// [`Tx::lock_key`] on `consumer/NAME`).
    fn load_consumer(
        &mut self,
        name: &str,
        slots: Slots<'_>,
    ) -> impl Future<Output = Result<Option<ConsumerState>>> + Send;
    /// One model's place in a consumer.
    fn consumer_slot(
        &mut self,
        name: &str,
        model: &str,
    ) -> impl Future<Output = Result<Option<ModelSlot>>> + Send;
    /// One dead letter of a consumer.
    fn dead_letter(
        &mut self,
        name: &str,
        sequence: u64,
    ) -> impl Future<Output = Result<Option<DeadLetterRecord>>> + Send;
    /// Writes what a use case changed in consumer `name`.
    fn save_consumer(
        &mut self,
        name: &str,
        changes: &ConsumerChanges,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Deletes a consumer and its state; false when it did not exist.
    fn delete_consumer(&mut self, name: &str) -> impl Future<Output = Result<bool>> + Send;
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

/// The database behind a [`Store`]; [`crate::app`] runs each use case on it.
#[derive(Clone)]
pub enum Backend {
    /// SQLite: one writer, a pool of readers.
    Sqlite(SqliteStore),
    /// PostgreSQL: any number of replicas on one database.
    Postgres(PgStore),
}

impl Store {
    /// Opens (creating if needed) the database at `url` and migrates it.
    pub async fn open(url: &str, options: &StoreOptions) -> Result<Store> {
        if url.starts_with("sqlite:") {
            let (db, latest) = SqliteStore::open(url, options.clock.clone()).await?;
            Ok(Store {
                backend: Backend::Sqlite(db),
                latest,
            })
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let (db, latest) = PgStore::open(url, options).await?;
            Ok(Store {
                backend: Backend::Postgres(db),
                latest,
            })
        } else {
            Err(Error::invalid(
                "database_url",
                format!(
                    "unsupported database URL {:?}: use sqlite:///absolute/path.db, sqlite://relative/path.db or postgres://user:password@host/database",
                    crate::domain::truncate(url, 80)
                ),
            ))
        }
    }

    /// The clock every timestamp and time-based rule reads.
    pub fn clock(&self) -> &Clock {
        match &self.backend {
            Backend::Sqlite(db) => sql::SqlStore::clock(db),
            Backend::Postgres(db) => sql::SqlStore::clock(db),
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
        match &self.backend {
            Backend::Sqlite(db) => db.ping().await,
            Backend::Postgres(db) => db.ping().await,
        }
    }

    /// Connections of the pool that serves reads (SQLite's readers; the one
    /// pool on PostgreSQL): how many are open and how many of those are idle.
    pub fn pool_connections(&self) -> PoolUse {
        let (size, idle) = match &self.backend {
            Backend::Sqlite(db) => (db.readers().size(), db.readers().num_idle()),
            Backend::Postgres(db) => (db.readers().size(), db.readers().num_idle()),
        };
        PoolUse {
            open: size,
            idle: u32::try_from(idle).unwrap_or(u32::MAX).min(size),
        }
    }

    /// Writes per committed batch: SQLite's group commit observes each
    /// batch; PostgreSQL commits every write alone and observes 1.
    pub fn write_batch_sizes(&self) -> prometheus_client::metrics::histogram::Histogram {
        match &self.backend {
            Backend::Sqlite(db) => db.batch_sizes.clone(),
            Backend::Postgres(db) => db.batch_sizes.clone(),
        }
    }

    /// How many transition requests are PENDING, in one query.
    pub async fn count_pending_requests(&self) -> Result<u64> {
        const SQL: &str = "SELECT COUNT(*) FROM transition_requests WHERE status = 'PENDING'";
        let count: i64 = match &self.backend {
            Backend::Sqlite(db) => sqlx::query_scalar(SQL).fetch_one(db.readers()).await,
            Backend::Postgres(db) => sqlx::query_scalar(SQL).fetch_one(db.readers()).await,
        }
        .map_err(|e| Error::Internal(format!("counting pending requests: {e}")))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        match &self.backend {
            Backend::Sqlite(db) => db.close().await,
            Backend::Postgres(db) => db.close().await,
        }
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
        match &self.backend {
            Backend::Sqlite(db) => db.events(filter, after, upto, limit).await,
            Backend::Postgres(db) => db.events(filter, after, upto, limit).await,
        }
    }

    /// The backend, for [`crate::app`] to run a use case on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }
}
