//! What the SQLite and PostgreSQL backends have in common, as contracts:
//! [`Engine`] (the bits of SQL text that differ), [`SqlStore`] and [`SqlTx`]
//! (how a backend reads, runs a write and keeps the end of the log), and the
//! mapping of database errors to domain errors.
//!
//! The statements themselves are written once, generic over these contracts,
//! in [`super::db`] and [`super::tx`]; their rows in [`super::rows`]. This
//! module must hold no statement; every database failure goes through
//! [`db_err`] or [`json_err`], so no database text reaches a caller.

use std::future::Future;

use sqlx::query::Query;
use sqlx::{Database, Decode, Encode, Pool, QueryBuilder, Type};

use crate::clock::Clock;
use crate::domain::Event;
use crate::error::{Error, Result};
use crate::store::WriteFuture;
use crate::store::cache::VersionCache;

/// Maps a database error: connection-level failures may be retried, anything
/// else is a bug to log and hide.
pub fn db_err(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Error::Unavailable(e.to_string())
        }
        sqlx::Error::Database(ref d)
            if d.code().is_some_and(|c| {
                // PostgreSQL: admin shutdown, cannot connect now, connection failures.
                c.starts_with("57P") || c.starts_with("08")
            }) =>
        {
            Error::Unavailable(e.to_string())
        }
        other => Error::Internal(other.to_string()),
    }
}

/// A JSON column that does not parse is a corrupt database, not a bad request.
pub fn json_err(e: serde_json::Error) -> Error {
    Error::Internal(format!("corrupt JSON column: {e}"))
}

/// A Rust type that binds as, and reads from, one column on engine `DB`
/// (`i64`, `f64`, `bool`, `String`, `Vec<u8>`). Naming it once keeps the
/// bounds of the generic statements one line per type.
pub trait Column<DB: Database>:
    for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

impl<DB: Database, T> Column<DB> for T where
    T: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB> + Send
{
}

/// A borrowed value that binds on engine `DB` for as long as `'q` (`&str`,
/// `Option<&str>`).
pub trait Param<'q, DB: Database>: Encode<'q, DB> + Type<DB> + Send + 'q {}

impl<'q, DB: Database, T> Param<'q, DB> for T where T: Encode<'q, DB> + Type<DB> + Send + 'q {}

/// The SQL text that differs between SQLite and PostgreSQL. Every other
/// statement is written once, with `$n` parameters, which both accept.
pub trait Engine: Database {
    /// The model's aliases as a JSON object of alias → version (`m` is the model).
    const MODEL_ALIASES: &'static str;
    /// The deployments of the model's production version as a JSON array,
    /// in environment order (`m` is the model).
    const MODEL_DEPLOYMENTS: &'static str;
    /// The version's aliases as a sorted JSON array (`v` is the version).
    const VERSION_ALIASES: &'static str;
    /// The version's evaluations as a JSON array, oldest first (`v` is the version).
    const VERSION_EVALUATIONS: &'static str;
    /// The version's deployments as a JSON array, in environment order
    /// (`v` is the version).
    const VERSION_DEPLOYMENTS: &'static str;
    /// The head of a select that reads a whole page of events as one JSON
    /// row (closed by `)`), where that is cheaper than a row per event.
    const EVENT_PAGE_AS_JSON: Option<&'static str>;
    /// Locks a model's row until commit (`$1` is its name), where a
    /// transaction does not already exclude every other writer.
    const LOCK_MODEL: Option<&'static str>;
    /// Serializes the transactions that take the same key (`$1`), likewise.
    const LOCK_KEY: Option<&'static str>;
    /// Begins a read-only transaction whose statements all see one snapshot.
    const SNAPSHOT_READ: &'static str;

    /// [`QueryBuilder::build`], where the engine is known: only then can Rust
    /// see that the query's arguments may live shorter than the builder, so
    /// that generic code can run the query and drop the builder after.
    fn build<'q>(q: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, Self::Arguments<'q>>;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;
}

/// A backend's store: what the one implementation of [`super::Db`] needs.
pub trait SqlStore: Clone + Send + Sync + 'static {
    /// SQLite or PostgreSQL.
    type Engine: Engine;
    /// Its write transaction.
    type Tx: super::Tx + 'static;
    /// The connections for reads outside a write.
    fn readers(&self) -> &Pool<Self::Engine>;
    /// Versions read recently, where the backend can keep them coherent.
    fn version_cache(&self) -> Option<&VersionCache>;
    /// "Now", for reads that judge time.
    fn clock(&self) -> &Clock;
    /// Runs `write` in a transaction and commits it (see [`super::Db::write`]).
    fn run_write<R, F>(&self, write: F) -> impl Future<Output = Result<R>> + Send
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut Self::Tx) -> WriteFuture<'t, R> + Send + 'static;
}

/// A backend's write transaction: what the one implementation of
/// [`super::Tx`] needs.
pub trait SqlTx: Send {
    /// SQLite or PostgreSQL.
    type Engine: Engine;
    /// The transaction's connection.
    fn conn(&mut self) -> &mut <Self::Engine as Database>::Connection;
    /// "Now", for everything this transaction stamps.
    fn clock(&self) -> &Clock;
    /// Called for each event appended, before its statement runs.
    fn note_event(&mut self, event: &Event);
    /// The end of the log (last sequence and hash), as this transaction
    /// sees it and, where other writers exist, locked until commit.
    fn head(&mut self) -> impl Future<Output = Result<(u64, String)>> + Send;
    /// Moves the end of the log, and tells whoever must know, on commit.
    fn set_head(&mut self, sequence: u64, hash: &str) -> impl Future<Output = Result<()>> + Send;
    /// Commits.
    fn commit(self) -> impl Future<Output = Result<()>> + Send;
}
