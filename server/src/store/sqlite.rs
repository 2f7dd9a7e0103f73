//! The SQLite backend: one writer connection (`BEGIN IMMEDIATE`, so no caller
//! ever sees `database is locked`) and a pool of read-only connections, over a
//! WAL database with `synchronous=FULL` so an acknowledged write survives a
//! crash or power loss.
//!
//! Sequence numbers are gap-free by construction: the single writer assigns
//! them inside its transaction and commits in that order, and watchers are
//! woken only after the commit.
//!
//! **The writer** is a thread of its own that owns the one writing
//! connection and drives it synchronously ([`LiteTx`], rusqlite): a write's
//! statements are function calls on that thread, not hops to sqlx's
//! connection thread and back. The writes themselves are the same futures as
//! on PostgreSQL; the thread runs them on a runtime of its own, where every
//! statement completes at once. Reads stay on sqlx's read-only pool.
//!
//! **Group commit.** Writes queue for the writer, which runs every write
//! waiting at that moment inside one `BEGIN IMMEDIATE` transaction, each in a
//! savepoint of its own, and commits them with one fsync. A write that fails
//! rolls back to its savepoint. Every write, refused or not, is answered only
//! after the batch's commit is durable: an acknowledged write is never lost,
//! and a refusal never rests on state that was not committed (a refusal can
//! depend on an earlier write of the same batch). A failed commit fails every
//! write of the batch, refusals included, as retryable.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::metrics::histogram::Histogram;
use sqlx::query::Query;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};
use sqlx::{QueryBuilder, SqlitePool};
use tokio::sync::{mpsc, watch};

use crate::clock::Clock;
use crate::error::{Error, Result};
use crate::store::WriteFuture;
use crate::store::batch::{self, Staged};
use crate::store::cache::VersionCache;
use crate::store::lite::LiteTx;
use crate::store::sql::{Engine, SqlStore, db_err};

/// Readers in the pool: enough for concurrent RPCs and watchers on 2 cores.
const READERS: u32 = 8;
/// Most writes committed together.
const MAX_BATCH: usize = 256;
/// Writes queued for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

type Job = batch::Job<LiteTx>;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// Read-only connections for every query outside a write.
    readers: SqlitePool,
    /// Writes per committed batch, for `/metrics`.
    pub(super) batch_sizes: Histogram,
    /// The writer's queue.
    jobs: mpsc::Sender<Job>,
    /// Tells the writer to stop after its next batch ([`SqliteStore::close`]).
    closing: Arc<AtomicBool>,
    /// The writer thread, joined by [`SqliteStore::close`].
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    /// Versions read recently; the writer invalidates what it changes.
    cache: Arc<VersionCache>,
    /// "Now" for every write and read that needs it.
    clock: Clock,
}

/// What the writer thread owns besides its connection.
struct Writer {
    queue: mpsc::Receiver<Job>,
    latest: watch::Sender<u64>,
    cache: Arc<VersionCache>,
    batch_sizes: Histogram,
    closing: Arc<AtomicBool>,
}

impl SqliteStore {
    /// Opens the database, creating its file and folder, and migrates it.
    pub async fn open(url: &str, clock: Clock) -> Result<(SqliteStore, watch::Receiver<u64>)> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(Error::invalid(
                "database_url",
                "in-memory SQLite is not supported: the registry must be durable; give a file path",
            ));
        }
        let base = SqliteConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", format!("not a SQLite URL: {e}")))?
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let path = base.get_filename().to_owned();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| {
                Error::Unavailable(format!("cannot create folder {}: {e}", dir.display()))
            })?;
        }

        // Creates the file in WAL mode and migrates it, then steps aside for
        // the writer thread's own connection: closed only once the others
        // are open, so that its close is not the last one, which would copy
        // the whole log into the database file before anyone could start.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(db_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&setup)
            .await
            .map_err(|e| Error::Internal(format!("migration failed: {e}")))?;

        let readers = SqlitePoolOptions::new()
            .max_connections(READERS)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(base.read_only(true))
            .await
            .map_err(db_err)?;

        let head: Option<(i64, String)> =
            sqlx::query_as("SELECT sequence, hash FROM events ORDER BY sequence DESC LIMIT 1")
                .fetch_optional(&readers)
                .await
                .map_err(db_err)?;
        let head = head
            .map(|(seq, hash)| (seq as u64, hash))
            .unwrap_or((0, crate::domain::audit::GENESIS_HASH.to_owned()));
        let tx = open_writer(path.clone(), head.clone(), clock.clone()).await?;
        setup.close().await;
        let (latest, rx) = watch::channel(head.0);
        let (jobs, queue) = mpsc::channel(QUEUE);
        let cache = Arc::new(VersionCache::default());
        let batch_sizes = batch_size_histogram();
        let closing = Arc::new(AtomicBool::new(false));
        let writer = Writer {
            queue,
            latest,
            cache: cache.clone(),
            batch_sizes: batch_sizes.clone(),
            closing: closing.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || writer.run(tx))
            .map_err(|e| Error::Internal(format!("cannot start the SQLite writer: {e}")))?;
        Ok((
            SqliteStore {
                readers,
                jobs,
                closing,
                thread: Arc::new(Mutex::new(Some(thread))),
                cache,
                batch_sizes,
                clock,
            },
            rx,
        ))
    }

    /// Lets the writer finish what is queued, stops it, and closes every
    /// connection. Writes after this fail as unavailable.
    pub async fn close(&self) {
        self.closing.store(true, Ordering::SeqCst);
        // Wakes a writer that waits for work; it stops after this batch.
        let _ = batch::enqueue(&self.jobs, |_: &mut LiteTx| -> WriteFuture<'_, ()> {
            Box::pin(async { Ok(((), None)) })
        })
        .await;
        let thread = self.thread.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(thread) = thread {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.readers.close().await;
    }
}

/// Opens the writer's connection off the async runtime (opening a file and
/// setting the journal mode touch the disk).
async fn open_writer(path: PathBuf, head: (u64, String), clock: Clock) -> Result<LiteTx> {
    tokio::task::spawn_blocking(move || LiteTx::open(&path, head, clock))
        .await
        .map_err(|e| Error::Internal(format!("opening the SQLite writer panicked: {e}")))?
}

/// Reads on the read-only pool, writes queued for the one writer thread.
impl SqlStore for SqliteStore {
    type Engine = sqlx::Sqlite;
    type Tx = LiteTx;

    /// The writer invalidates what it changes before anyone learns of a commit.
    fn version_cache(&self) -> Option<&VersionCache> {
        Some(&self.cache)
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The read-only connections; the writer thread owns the one that writes.
    fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Queues `write` for the writer thread and waits for its durable answer.
    async fn run_write<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut LiteTx) -> WriteFuture<'t, R> + Send + 'static,
    {
        batch::enqueue(&self.jobs, write).await
    }
}

/// Buckets for writes per batch: 1, 2, 4 … 256 (MAX_BATCH bounds it).
pub(super) fn batch_size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 9,
    ))
}

impl Writer {
    /// The writer thread: runs the writes' futures on a runtime of its own,
    /// where each statement completes at once, until the store closes.
    fn run(self, tx: LiteTx) {
        // Timers only: a write does no I/O of its own, and without an I/O
        // driver the idle thread sleeps on a futex rather than in epoll.
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                tracing::error!(error = %e, "the SQLite writer cannot start its runtime");
                return;
            }
        };
        runtime.block_on(self.write_batches(tx));
    }

    /// Commits queued writes in batches (see the module docs).
    async fn write_batches(mut self, mut tx: LiteTx) {
        while let Some(first) = self.queue.recv().await {
            if let Err(e) = tx.batch("BEGIN IMMEDIATE") {
                batch::fail_queued(first, &mut self.queue, &e.to_string()).await;
                recover(&mut tx);
                continue;
            }
            let committed_head = tx.head.clone();
            let mut staged: Vec<Staged> = Vec::new();
            // Refused writes, answered with the others once the batch is durable.
            let mut refused: Vec<Staged> = Vec::new();
            let mut last_sequence = None;
            let mut poison: Option<String> = None;
            // Whether the last write's savepoint is still to be released.
            let mut unreleased = false;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                if let Err(e) = tx.batch(batch::open_savepoint(unreleased)) {
                    poison = Some(e.to_string());
                    batch::abandon(job).await;
                    break;
                }
                unreleased = false;
                let head_before = tx.head.clone();
                let touched_before = tx.touched.len();
                let done = job(Ok(&mut tx)).await;
                if done.ok {
                    unreleased = true;
                    last_sequence = done.last_sequence.or(last_sequence);
                    staged.push(done);
                } else {
                    tx.head = head_before;
                    tx.touched.truncate(touched_before);
                    let undone = tx.batch(batch::UNDO_SAVEPOINT);
                    refused.push(done);
                    if let Err(e) = undone {
                        poison = Some(e.to_string());
                    }
                }
                if poison.is_some() || staged.len() + refused.len() >= MAX_BATCH {
                    break;
                }
                next = self.queue.try_recv().ok();
            }
            let touched = std::mem::take(&mut tx.touched);
            let failure = match poison {
                Some(e) => Some(e),
                None => tx.batch("COMMIT").err().map(|e| e.to_string()),
            };
            if failure.is_none() {
                self.batch_sizes
                    .observe((staged.len() + refused.len()) as f64);
                // Before anyone learns of the commit, so no one can read it stale.
                self.cache.invalidate(touched.iter().map(String::as_str));
            } else {
                tx.head = committed_head;
                recover(&mut tx);
            }
            if let Some(e) = &failure {
                tracing::error!(error = %e, writes = staged.len(), "a batch of writes failed to commit");
            } else if let Some(seq) = last_sequence {
                self.latest.send_if_modified(|cur| {
                    let newer = seq > *cur;
                    if newer {
                        *cur = seq;
                    }
                    newer
                });
            }
            for done in staged.into_iter().chain(refused) {
                done.answer(failure.as_deref());
            }
            if self.closing.load(Ordering::SeqCst) {
                // Writes queued behind the close are refused, not dropped.
                self.queue.close();
                while let Some(job) = self.queue.recv().await {
                    batch::abandon_with(job, "the database is closing").await;
                }
                break;
            }
        }
    }
}

/// Leaves the writer's connection ready for the next batch after a failed
/// one: rolls back what SQLite did not already roll back by itself (a failed
/// COMMIT, on a full or failing disk, may or may not), and opens the
/// connection again if even that fails, since a connection left inside a
/// transaction would refuse every later BEGIN: writes would never recover.
fn recover(tx: &mut LiteTx) {
    if !tx.in_transaction() {
        return;
    }
    if let Err(e) = tx.batch("ROLLBACK") {
        tracing::warn!(error = %e, "rollback failed; opening the writer's connection again");
        if let Err(e) = tx.reconnect() {
            tracing::error!(error = %e, "cannot open the writer's connection again");
        }
    }
}

/// SQLite's SQL where it differs from PostgreSQL's: `json_group_*`
/// aggregates, and no locks (`BEGIN IMMEDIATE` already holds the database's
/// one write lock).
impl Engine for sqlx::Sqlite {
    const MODEL_ALIASES: &'static str = "COALESCE((SELECT json_group_object(a.alias, a.version) FROM aliases a WHERE a.model = m.name), '{}')";
    const MODEL_DEPLOYMENTS: &'static str = "COALESCE((SELECT json_group_array(json_object('version', d.version, \
        'environment', d.environment, 'status', d.status, 'endpoint', d.endpoint, 'message', d.message, \
        'reported_by', d.reported_by, 'report_time', d.report_time)) FROM \
        (SELECT d.* FROM deployments d JOIN versions p ON p.model = d.model AND p.version = d.version \
         WHERE p.model = m.name AND p.stage = 'PRODUCTION' ORDER BY d.environment) d), '[]')";
    const VERSION_ALIASES: &'static str = "COALESCE((SELECT json_group_array(a.alias) FROM \
        (SELECT alias FROM aliases a WHERE a.model = v.model AND a.version = v.version ORDER BY alias) a), '[]')";
    const VERSION_EVALUATIONS: &'static str = "COALESCE((SELECT json_group_array(json_object('set_name', e.set_name, \
        'set_version', e.set_version, 'evaluator_version', e.evaluator_version, 'metrics', json(e.metrics), \
        'report_uri', e.report_uri, 'created_by', e.created_by, 'create_time', e.create_time)) FROM \
        (SELECT * FROM evaluations e WHERE e.model = v.model AND e.version = v.version \
         ORDER BY e.create_time, e.set_name, e.set_version, e.evaluator_version) e), '[]')";
    const VERSION_DEPLOYMENTS: &'static str = "COALESCE((SELECT json_group_array(json_object('version', d.version, \
        'environment', d.environment, 'status', d.status, 'endpoint', d.endpoint, 'message', d.message, \
        'reported_by', d.reported_by, 'report_time', d.report_time)) FROM \
        (SELECT * FROM deployments d WHERE d.model = v.model AND d.version = v.version \
         ORDER BY d.environment) d), '[]')";
    // `details` stays text: the page's objects read like rows of `events`.
    const EVENT_PAGE_AS_JSON: Option<&'static str> = Some(
        "SELECT json_group_array(json_object('sequence', sequence, 'type', type, \
        'model', model, 'version', version, 'from_stage', from_stage, 'to_stage', to_stage, 'cause', cause, \
        'actor', actor, 'comment', comment, 'occur_time', occur_time, 'details', details, \
        'transition_request_id', transition_request_id, 'prev_hash', prev_hash, 'hash', hash)) FROM (",
    );
    const LOCK_MODEL: Option<&'static str> = None;
    const LOCK_KEY: Option<&'static str> = None;
    /// A deferred transaction takes its snapshot at its first read.
    const SNAPSHOT_READ: &'static str = "BEGIN";

    fn build<'q>(q: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, SqliteArguments<'q>> {
        q.build()
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The writer merges savepoint statements into one call; every
    /// statement of such a string must run, not only the first.
    #[test]
    fn one_call_runs_every_savepoint_statement() {
        let dir = tempfile::tempdir().unwrap();
        let path: &Path = &dir.path().join("t.db");
        rusqlite::Connection::open(path).unwrap();
        let tx = LiteTx::open(path, (0, String::new()), Clock::system()).unwrap();
        tx.batch("BEGIN IMMEDIATE").unwrap();
        tx.batch("SAVEPOINT write").unwrap();
        tx.batch("RELEASE SAVEPOINT write; SAVEPOINT write")
            .unwrap();
        // Only a savepoint opened by the second statement can be rolled back
        // to and released now; after both, none is left.
        tx.batch("ROLLBACK TO SAVEPOINT write; RELEASE SAVEPOINT write")
            .unwrap();
        let gone = tx.batch("RELEASE SAVEPOINT write");
        assert!(
            gone.is_err(),
            "the second RELEASE ran too: no savepoint is left"
        );
    }

    /// A write still queued when the writer stops for a close is answered as
    /// unavailable (retry elsewhere, or later), never dropped unanswered.
    #[tokio::test]
    async fn writes_queued_behind_the_close_are_refused_not_dropped() {
        // Arrange: one more write queued than a batch takes, the store closing.
        let dir = tempfile::tempdir().unwrap();
        let path: &Path = &dir.path().join("t.db");
        rusqlite::Connection::open(path).unwrap();
        let tx = LiteTx::open(path, (0, String::new()), Clock::system()).unwrap();
        let (jobs, queue) = mpsc::channel(QUEUE);
        let writes: Vec<_> = (0..=MAX_BATCH)
            .map(|_| {
                let jobs = jobs.clone();
                tokio::spawn(async move {
                    batch::enqueue(&jobs, |_: &mut LiteTx| -> WriteFuture<'_, ()> {
                        Box::pin(async { Ok(((), None)) })
                    })
                    .await
                })
            })
            .collect();
        while jobs.max_capacity() - jobs.capacity() <= MAX_BATCH {
            tokio::task::yield_now().await;
        }
        let writer = Writer {
            queue,
            latest: watch::channel(0).0,
            cache: Arc::new(VersionCache::default()),
            batch_sizes: batch_size_histogram(),
            closing: Arc::new(AtomicBool::new(true)),
        };

        // Act: the writer commits one batch and stops.
        std::thread::spawn(move || writer.run(tx));
        let mut answers = Vec::new();
        for write in writes {
            answers.push(write.await.unwrap());
        }

        // Assert
        assert_eq!(answers.iter().filter(|a| a.is_ok()).count(), MAX_BATCH);
        let refused: Vec<_> = answers.into_iter().filter_map(Result::err).collect();
        assert_eq!(refused.len(), 1);
        assert!(
            matches!(refused[0], Error::Unavailable(_)),
            "{:?}",
            refused[0]
        );
    }
}
