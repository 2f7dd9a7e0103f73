//! The PostgreSQL backend, for any number of stateless server replicas that
//! share one database.
//!
//! - **No visible gap in sequences.** Sequences are assigned under the
//!   `event_log_head` row lock, held until commit. Sequence N+1 is therefore
//!   assigned only after N has committed, and a reader can never see N+1
//!   without N.
//! - **Group commit, as on SQLite.** Each replica's writes queue for one
//!   writer task, which runs every write waiting at that moment in one
//!   transaction, each after the first in a savepoint of its own (a refused
//!   write rolls back to it; a refused first write rolls the transaction
//!   back and is answered at once, having seen only committed state), and
//!   commits them together: one WAL flush and one hold of the log-head lock
//!   for the whole batch instead of one per write. Every other write,
//!   refused or not, is answered only after the commit; a failed commit
//!   fails the whole batch as retryable. The end of the log is kept in
//!   memory during the batch and written back once. The batch takes the log-head lock first,
//!   before any model lock: with every replica taking its locks in that
//!   order, two replicas' batches can never deadlock (a batch that took model
//!   locks first could hold one another replica's batch waits for, while
//!   waiting for the head that batch holds).
//! - **Changes to one model serialize** on that model's row lock
//!   (`SELECT … FOR UPDATE`), so "read the production version, then move"
//!   cannot interleave between replicas.
//! - **Cross-replica wake-up.** Each commit sends `NOTIFY modelreg_events`
//!   with its last sequence; every replica LISTENs and wakes its watchers.
//!   The events table stays the source of truth: a dropped LISTEN connection
//!   or a missed notification only delays a watcher until the next poll of
//!   the log head, which runs every `poll_interval` and after each reconnect.

use prometheus_client::metrics::histogram::Histogram;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgArguments, PgConnectOptions, PgListener, PgPoolOptions, PgQueryResult};
use sqlx::query::Query;
use sqlx::{PgPool, QueryBuilder};
use tokio::sync::{mpsc, watch};

use super::StoreOptions;
use crate::clock::Clock;
use crate::domain::Event;
use crate::error::{Error, Result};
use crate::store::batch::{self, Staged};
use crate::store::cache::VersionCache;
use crate::store::sql::{Engine, SqlStore, SqlTx, db_err};

/// Most writes committed together.
const MAX_BATCH: usize = 256;
/// Writes queued for the writer before callers wait to enqueue.
const QUEUE: usize = 4096;

/// The notification channel that carries "committed up to sequence N".
pub const CHANNEL: &str = "modelreg_events";
/// The `application_name` of each replica's LISTEN connection, so operators
/// (and tests) can find it in `pg_stat_activity`.
pub const LISTENER_APPLICATION_NAME: &str = "modelreg-listener";

/// The PostgreSQL store.
#[derive(Clone)]
pub struct PgStore {
    /// Connections for reads and writes.
    pool: PgPool,
    /// The LISTEN/poll task; aborted on close.
    follower: Arc<tokio::task::JoinHandle<()>>,
    /// Writes queued for this replica's writer task.
    jobs: mpsc::Sender<batch::Job<PgTx>>,
    /// Writes per commit, for `/metrics`.
    pub(super) batch_sizes: Histogram,
    /// "Now" for every write and read that needs it.
    clock: Clock,
}

/// One batch's transaction. It holds the `event_log_head` row lock from its
/// start, so the end of the log is kept here and written back once, with the
/// notification, just before the commit.
pub struct PgTx {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    clock: Clock,
    /// The end of the log: read (and locked) at the batch's start, moved by
    /// each append.
    head: (u64, String),
    /// Whether `head` moved since it was read.
    moved: bool,
}

impl PgStore {
    /// Connects, migrates, and starts following other replicas' commits.
    pub async fn open(
        url: &str,
        options: &StoreOptions,
    ) -> Result<(PgStore, watch::Receiver<u64>)> {
        let connect = PgConnectOptions::from_str(url)
            .map_err(|e| Error::invalid("database_url", format!("not a PostgreSQL URL: {e}")))?
            .application_name("modelreg-server");
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections.max(2))
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(connect.clone())
            .await
            .map_err(|e| Error::Unavailable(format!("cannot connect to PostgreSQL: {e}")))?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| Error::Internal(format!("migration failed: {e}")))?;
        let latest = read_head(&pool).await?;
        let (tx, rx) = watch::channel(latest);
        let latest = Arc::new(tx);

        // The LISTEN connection comes from its own pool so it carries its own
        // application_name and never starves request handling.
        let listen_pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(connect.application_name(LISTENER_APPLICATION_NAME));
        let follower = tokio::spawn(follow(
            pool.clone(),
            listen_pool,
            latest.clone(),
            options.poll_interval,
        ));
        let (jobs, queue) = mpsc::channel(QUEUE);
        let batch_sizes = super::sqlite::batch_size_histogram();
        tokio::spawn(write_batches(
            pool.clone(),
            queue,
            latest.clone(),
            batch_sizes.clone(),
            options.clock.clone(),
        ));
        Ok((
            PgStore {
                pool,
                follower: Arc::new(follower),
                jobs,
                batch_sizes,
                clock: options.clock.clone(),
            },
            rx,
        ))
    }

    /// Stops following and closes every connection.
    pub async fn close(&self) {
        self.follower.abort();
        self.pool.close().await;
    }
}

/// Reads on the pool, writes queued for the replica's writer task.
impl SqlStore for PgStore {
    type Engine = sqlx::Postgres;
    type Tx = PgTx;

    fn readers(&self) -> &PgPool {
        &self.pool
    }

    /// No cache: another replica's writes would not invalidate it.
    fn version_cache(&self) -> Option<&VersionCache> {
        None
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Queues `write` for the writer task and waits for its durable answer
    /// (see the module documentation).
    async fn run_write<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut PgTx) -> crate::store::WriteFuture<'t, R> + Send + 'static,
    {
        batch::enqueue(&self.jobs, write).await
    }
}

/// Opens a batch's transaction and takes the end of the log first.
async fn begin_batch(pool: &PgPool, clock: &Clock) -> Result<PgTx> {
    let mut tx = pool.begin().await.map_err(db_err)?;
    let (last, hash): (i64, String) = sqlx::query_as(
        "SELECT last_sequence, last_hash FROM event_log_head WHERE id = 1 FOR UPDATE",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(PgTx {
        tx,
        clock: clock.clone(),
        head: (last as u64, hash),
        moved: false,
    })
}

impl PgTx {
    /// Writes the end of the log back (queueing the notification other
    /// replicas receive at commit) and commits.
    async fn finish(mut self) -> Result<()> {
        if self.moved {
            let (sequence, hash) = &self.head;
            sqlx::query(
                "UPDATE event_log_head SET last_sequence = $1, last_hash = $2 WHERE id = 1",
            )
            .bind(*sequence as i64)
            .bind(hash.as_str())
            .execute(&mut *self.tx)
            .await
            .map_err(db_err)?;
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(sequence.to_string())
                .execute(&mut *self.tx)
                .await
                .map_err(db_err)?;
        }
        self.tx.commit().await.map_err(db_err)
    }
}

/// Runs savepoint statements in one round trip (the simple query protocol
/// takes several statements at once), turning failure into the batch's poison.
async fn savepoint(tx: &mut PgTx, sql: &'static str) -> std::result::Result<(), String> {
    // A plain string carries no arguments: sent with the simple protocol.
    sqlx::Executor::execute(&mut *tx.tx, sql)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Runs one queued write inside the batch's transaction.
async fn job_in(job: batch::Job<PgTx>, tx: &mut PgTx) -> Staged {
    job(Ok(tx)).await
}

/// The writer task: commits queued writes in batches (see the module docs).
async fn write_batches(
    pool: PgPool,
    mut queue: mpsc::Receiver<batch::Job<PgTx>>,
    latest: Arc<watch::Sender<u64>>,
    batch_sizes: Histogram,
    clock: Clock,
) {
    while let Some(first) = queue.recv().await {
        let mut tx = match begin_batch(&pool, &clock).await {
            Ok(tx) => tx,
            Err(e) => {
                batch::fail_queued(first, &mut queue, &e.to_string()).await;
                continue;
            }
        };
        // The first write needs no savepoint: when it fails, the whole
        // transaction is rolled back and its refusal rests on committed state
        // only, so it is answered at once.
        let done = job_in(first, &mut tx).await;
        if !done.ok {
            let _ = tx.tx.rollback().await;
            done.answer(None);
            continue;
        }
        let mut last_sequence = done.last_sequence;
        let mut staged: Vec<Staged> = vec![done];
        let mut poison: Option<String> = None;
        // Whether the last write's savepoint is still to be released.
        let mut unreleased = false;
        while staged.len() < MAX_BATCH {
            let Ok(job) = queue.try_recv() else { break };
            if let Err(e) = savepoint(&mut tx, batch::open_savepoint(unreleased)).await {
                poison = Some(e);
                batch::abandon(job).await;
                break;
            }
            unreleased = false;
            let head_before = (tx.head.clone(), tx.moved);
            let done = job_in(job, &mut tx).await;
            if done.ok {
                unreleased = true;
                last_sequence = done.last_sequence.or(last_sequence);
            } else {
                (tx.head, tx.moved) = head_before;
                if let Err(e) = savepoint(&mut tx, batch::UNDO_SAVEPOINT).await {
                    poison = Some(e);
                }
            }
            staged.push(done);
            if poison.is_some() {
                break;
            }
        }
        let failure = match poison {
            Some(e) => {
                let _ = tx.tx.rollback().await;
                Some(e)
            }
            None => tx.finish().await.err().map(|e| e.to_string()),
        };
        match &failure {
            Some(e) => {
                tracing::error!(error = %e, writes = staged.len(), "a batch of writes failed to commit")
            }
            None => {
                batch_sizes.observe(staged.len() as f64);
                if let Some(sequence) = last_sequence {
                    publish(&latest, sequence);
                }
            }
        }
        for done in staged {
            done.answer(failure.as_deref());
        }
    }
}

fn publish(latest: &watch::Sender<u64>, sequence: u64) {
    latest.send_if_modified(|cur| {
        let newer = sequence > *cur;
        if newer {
            *cur = sequence;
        }
        newer
    });
}

async fn read_head(pool: &PgPool) -> Result<u64> {
    let last: i64 = sqlx::query_scalar("SELECT last_sequence FROM event_log_head WHERE id = 1")
        .fetch_one(pool)
        .await
        .map_err(db_err)?;
    Ok(last as u64)
}

/// Learns of commits made by other replicas: LISTEN for notifications, and
/// poll the log head on a timer and after every reconnect, so a lost
/// connection or notification costs latency, never an event.
async fn follow(
    pool: PgPool,
    listen_pool: PgPool,
    latest: Arc<watch::Sender<u64>>,
    poll_interval: Duration,
) {
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        if listener.is_none() {
            match PgListener::connect_with(&listen_pool).await {
                Ok(mut l) => match l.listen(CHANNEL).await {
                    Ok(()) => {
                        // Anything committed while we were not listening.
                        if let Ok(seq) = read_head(&pool).await {
                            publish(&latest, seq);
                        }
                        listener = Some(l);
                    }
                    Err(e) => tracing::warn!(error = %e, "LISTEN failed; polling until it works"),
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open the LISTEN connection; polling until it works")
                }
            }
        }
        tokio::select! {
            received = async {
                match listener.as_mut() {
                    Some(l) => l.try_recv().await,
                    None => std::future::pending().await,
                }
            } => match received {
                Ok(Some(n)) => {
                    if let Ok(seq) = n.payload().parse::<u64>() {
                        publish(&latest, seq);
                    }
                }
                Ok(None) => {
                    // The connection dropped; notifications may have been lost.
                    tracing::warn!("LISTEN connection lost; reconnecting");
                    listener = None;
                    if let Ok(seq) = read_head(&pool).await {
                        publish(&latest, seq);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "LISTEN failed; reconnecting");
                    listener = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            },
            _ = poll.tick() => {
                if let Ok(seq) = read_head(&pool).await {
                    publish(&latest, seq);
                }
            }
        }
    }
}

/// PostgreSQL's SQL where it differs from SQLite's: `json_agg` aggregates,
/// a row lock per model and an advisory lock per key, since other replicas
/// write too.
impl Engine for sqlx::Postgres {
    const MODEL_ALIASES: &'static str = "COALESCE((SELECT json_object_agg(a.alias, a.version)::text FROM aliases a WHERE a.model = m.name), '{}')";
    const MODEL_DEPLOYMENTS: &'static str = "COALESCE((SELECT json_agg(json_build_object('version', d.version, \
        'environment', d.environment, 'status', d.status, 'endpoint', d.endpoint, 'message', d.message, \
        'reported_by', d.reported_by, 'report_time', d.report_time) ORDER BY d.environment)::text \
        FROM deployments d JOIN versions p ON p.model = d.model AND p.version = d.version \
        WHERE p.model = m.name AND p.stage = 'PRODUCTION'), '[]')";
    const VERSION_ALIASES: &'static str = "COALESCE((SELECT json_agg(a.alias ORDER BY a.alias)::text FROM aliases a \
        WHERE a.model = v.model AND a.version = v.version), '[]')";
    const VERSION_EVALUATIONS: &'static str = "COALESCE((SELECT json_agg(json_build_object('set_name', e.set_name, \
        'set_version', e.set_version, 'evaluator_version', e.evaluator_version, 'metrics', e.metrics::json, \
        'report_uri', e.report_uri, 'created_by', e.created_by, 'create_time', e.create_time) \
        ORDER BY e.create_time, e.set_name, e.set_version, e.evaluator_version)::text \
        FROM evaluations e WHERE e.model = v.model AND e.version = v.version), '[]')";
    const VERSION_DEPLOYMENTS: &'static str = "COALESCE((SELECT json_agg(json_build_object('version', d.version, \
        'environment', d.environment, 'status', d.status, 'endpoint', d.endpoint, 'message', d.message, \
        'reported_by', d.reported_by, 'report_time', d.report_time) ORDER BY d.environment)::text \
        FROM deployments d WHERE d.model = v.model AND d.version = v.version), '[]')";
    // PostgreSQL streams rows in batches already.
    const EVENT_PAGE_AS_JSON: Option<&'static str> = None;
    const LOCK_MODEL: Option<&'static str> =
        Some("SELECT name FROM models WHERE name = $1 FOR UPDATE");
    const LOCK_KEY: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(hashtext($1))");
    const SNAPSHOT_READ: &'static str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY";

    fn build<'q>(q: &'q mut QueryBuilder<'_, Self>) -> Query<'q, Self, PgArguments> {
        q.build()
    }

    fn rows_affected(result: &PgQueryResult) -> u64 {
        result.rows_affected()
    }
}

impl SqlTx for PgTx {
    type Engine = sqlx::Postgres;

    fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    fn clock(&self) -> &Clock {
        &self.clock
    }

    /// Events need no bookkeeping here: replicas learn of them from the log.
    fn note_event(&mut self, _event: &Event) {}

    /// The end of the log, locked since the batch began: no other
    /// transaction can assign a sequence until this one has committed.
    async fn head(&mut self) -> Result<(u64, String)> {
        Ok(self.head.clone())
    }

    /// Moves the end of the log; [`PgTx::finish`] writes it back.
    async fn set_head(&mut self, sequence: u64, hash: &str) -> Result<()> {
        self.head = (sequence, hash.to_owned());
        self.moved = true;
        Ok(())
    }

    async fn commit(self) -> Result<()> {
        self.finish().await
    }
}
