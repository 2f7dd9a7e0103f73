//! The SQLite backend: one writer connection (`BEGIN IMMEDIATE`, so no caller
//! ever sees `database is locked`) and a pool of read-only connections, over a
//! WAL database with `synchronous=FULL` so an acknowledged write survives a
//! crash or power loss.
//!
//! Sequence numbers are gap-free by construction: the single writer assigns
//! them inside its transaction and commits in that order, and watchers are
//! woken only after the commit.
//!
//! **Group commit.** Writes queue for the writer task, which runs every write
//! waiting at that moment inside one `BEGIN IMMEDIATE` transaction, each in a
//! savepoint of its own, and commits them with one fsync. A write that fails
//! rolls back to its savepoint. Each call to the connection is a round trip
//! to sqlx's SQLite thread, so savepoint statements travel together (a
//! write's RELEASE with the next one's SAVEPOINT; COMMIT releases the last). Every write, refused or not, is answered only
//! after the batch's commit is durable: an acknowledged write is never lost,
//! and a refusal never rests on state that was not committed (a refusal can
//! depend on an earlier write of the same batch). A failed commit fails every
//! write of the batch, refusals included, as retryable.

use std::str::FromStr;
use std::sync::Arc;
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
use crate::domain::Event;
use crate::error::{Error, Result};
use crate::store::WriteFuture;
use crate::store::batch::{self, Staged};
use crate::store::cache::VersionCache;
use crate::store::sql::{Engine, SqlStore, SqlTx, db_err};

/// Readers in the pool: enough for concurrent RPCs and watchers on 2 cores.
const READERS: u32 = 8;
/// Most writes committed together.
const MAX_BATCH: usize = 256;
/// Writes queued for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

type Job = batch::Job<SqliteTx>;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// The one connection that writes, owned by the writer task.
    writer: SqlitePool,
    /// Read-only connections for every query outside a write.
    readers: SqlitePool,
    /// Writes per committed batch, for `/metrics`.
    pub(super) batch_sizes: Histogram,
    /// The writer task's queue.
    jobs: mpsc::Sender<Job>,
    /// Versions read recently; the writer invalidates what it changes.
    cache: Arc<VersionCache>,
    /// "Now" for every write and read that needs it.
    clock: Clock,
}

/// One write transaction on the writer connection, with the end of the log
/// (last sequence and hash) as this transaction sees it. The one writer keeps
/// the end of the log in memory instead of in a table: no other process
/// writes, so it saves two statements per write.
pub struct SqliteTx(
    sqlx::Transaction<'static, sqlx::Sqlite>,
    (u64, String),
    /// The models this transaction's events name, to invalidate on commit.
    Vec<String>,
    /// "Now" for this transaction.
    Clock,
);

impl SqlTx for SqliteTx {
    type Engine = sqlx::Sqlite;

    fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        &mut self.0
    }

    fn clock(&self) -> &Clock {
        &self.3
    }

    fn note_event(&mut self, event: &Event) {
        if !self.2.contains(&event.model) {
            self.2.push(event.model.clone());
        }
    }

    /// The end of the log as kept in memory: the one writer needs no lock.
    async fn head(&mut self) -> Result<(u64, String)> {
        Ok(self.1.clone())
    }

    async fn set_head(&mut self, sequence: u64, hash: &str) -> Result<()> {
        self.1 = (sequence, hash.to_owned());
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.0.commit().await.map_err(db_err)
    }
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

        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(120))
            .connect_with(
                base.clone()
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Full),
            )
            .await
            .map_err(db_err)?;
        sqlx::migrate!("./migrations/sqlite")
            .run(&writer)
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
        let (tx, rx) = watch::channel(head.0);
        let (jobs, queue) = mpsc::channel(QUEUE);
        let cache = Arc::new(VersionCache::default());
        let batch_sizes = batch_size_histogram();
        tokio::spawn(write_batches(
            writer.clone(),
            queue,
            Arc::new(tx),
            head,
            cache.clone(),
            batch_sizes.clone(),
            clock.clone(),
        ));
        Ok((
            SqliteStore {
                writer,
                readers,
                jobs,
                cache,
                batch_sizes,
                clock,
            },
            rx,
        ))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }
}

/// Reads on the read-only pool, writes queued for the one writer task.
impl SqlStore for SqliteStore {
    type Engine = sqlx::Sqlite;
    type Tx = SqliteTx;

    /// The writer invalidates what it changes before anyone learns of a commit.
    fn version_cache(&self) -> Option<&VersionCache> {
        Some(&self.cache)
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The read-only connections; the writer task owns the one that writes.
    fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    /// Queues `write` for the writer task and waits for its durable answer.
    async fn run_write<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut SqliteTx) -> WriteFuture<'t, R> + Send + 'static,
    {
        batch::enqueue(&self.jobs, write).await
    }
}

/// Runs savepoint statements (one round trip to the connection's thread for
/// all of them), turning failure into the batch's poison.
async fn savepoint(tx: &mut SqliteTx, sql: &'static str) -> std::result::Result<(), String> {
    sqlx::query(sql)
        .execute(&mut *tx.0)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Closes the writer's connection so the pool opens a fresh one. SQLite may
/// roll a transaction back by itself when its COMMIT fails (disk full, I/O
/// error) while sqlx still counts it as open, and would then refuse every
/// later BEGIN on that connection: writes would never recover.
async fn replace_writer_connection(pool: &SqlitePool) {
    if let Ok(conn) = pool.acquire().await {
        let _ = sqlx::Connection::close(conn.detach()).await;
    }
}

/// Buckets for writes per batch: 1, 2, 4 … 256 (MAX_BATCH bounds it).
pub(super) fn batch_size_histogram() -> Histogram {
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        1.0, 2.0, 9,
    ))
}

/// The writer task: commits queued writes in batches (see the module docs).
async fn write_batches(
    pool: SqlitePool,
    mut queue: mpsc::Receiver<Job>,
    latest: Arc<watch::Sender<u64>>,
    mut head: (u64, String),
    cache: Arc<VersionCache>,
    batch_sizes: Histogram,
    clock: Clock,
) {
    while let Some(first) = queue.recv().await {
        let mut tx = match pool.begin_with("BEGIN IMMEDIATE").await {
            Ok(tx) => SqliteTx(tx, head.clone(), Vec::new(), clock.clone()),
            Err(e) => {
                batch::fail_queued(first, &mut queue, &e.to_string()).await;
                continue;
            }
        };
        let mut staged: Vec<Staged> = Vec::new();
        // Refused writes, answered with the others once the batch is durable.
        let mut refused: Vec<Staged> = Vec::new();
        let mut last_sequence = None;
        let mut poison: Option<String> = None;
        // Whether the last write's savepoint is still to be released.
        let mut unreleased = false;
        let mut next = Some(first);
        while let Some(job) = next.take() {
            if let Err(e) = savepoint(&mut tx, batch::open_savepoint(unreleased)).await {
                poison = Some(e);
                batch::abandon(job).await;
                break;
            }
            unreleased = false;
            let head_before = tx.1.clone();
            let done = job(Ok(&mut tx)).await;
            if done.ok {
                unreleased = true;
                last_sequence = done.last_sequence.or(last_sequence);
                staged.push(done);
            } else {
                tx.1 = head_before;
                let undone = savepoint(&mut tx, batch::UNDO_SAVEPOINT).await;
                refused.push(done);
                if let Err(e) = undone {
                    poison = Some(e);
                }
            }
            if poison.is_some() || staged.len() + refused.len() >= MAX_BATCH {
                break;
            }
            next = queue.try_recv().ok();
        }
        let batch_head = tx.1.clone();
        let touched = std::mem::take(&mut tx.2);
        let failure = match poison {
            Some(e) => {
                if tx.0.rollback().await.is_err() {
                    replace_writer_connection(&pool).await;
                }
                Some(e)
            }
            None => match tx.0.commit().await {
                Ok(()) => None,
                Err(e) => {
                    replace_writer_connection(&pool).await;
                    Some(e.to_string())
                }
            },
        };
        if failure.is_none() {
            batch_sizes.observe((staged.len() + refused.len()) as f64);
            head = batch_head;
            // Before anyone learns of the commit, so no one can read it stale.
            cache.invalidate(touched.iter().map(String::as_str));
        }
        if let Some(e) = &failure {
            tracing::error!(error = %e, writes = staged.len(), "a batch of writes failed to commit");
        } else if let Some(seq) = last_sequence {
            latest.send_if_modified(|cur| {
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

    fn build<'q>(q: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, SqliteArguments<'q>> {
        q.build()
    }

    fn rows_affected(result: &SqliteQueryResult) -> u64 {
        result.rows_affected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer merges savepoint statements into one call; sqlx must run
    /// every statement of such a string, not only the first.
    #[tokio::test]
    async fn one_call_runs_every_savepoint_statement() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/t.db", dir.path().display());
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                SqliteConnectOptions::from_str(&url)
                    .unwrap()
                    .create_if_missing(true),
            )
            .await
            .unwrap();
        let tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let mut tx = SqliteTx(tx, (0, String::new()), Vec::new(), Clock::system());
        savepoint(&mut tx, "SAVEPOINT write").await.unwrap();
        savepoint(&mut tx, "RELEASE SAVEPOINT write; SAVEPOINT write")
            .await
            .unwrap();
        // Only a savepoint opened by the second statement can be rolled back
        // to and released now; after both, none is left.
        savepoint(
            &mut tx,
            "ROLLBACK TO SAVEPOINT write; RELEASE SAVEPOINT write",
        )
        .await
        .unwrap();
        let gone = savepoint(&mut tx, "RELEASE SAVEPOINT write").await;
        assert!(
            gone.is_err(),
            "the second RELEASE ran too: no savepoint is left"
        );
    }
}
