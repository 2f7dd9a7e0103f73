//! The SQLite backend: one writer connection (`BEGIN IMMEDIATE`, so no caller
//! ever sees `database is locked`) and a pool of read-only connections, over a
//! WAL database with `synchronous=FULL` so an acknowledged write survives a
//! crash or power loss.
//!
//! Sequence numbers are gap-free by construction: the single writer assigns
//! them inside its transaction and commits in that order, and watchers are
//! woken only after the commit.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use tokio::sync::watch;

/// Readers in the pool: enough for concurrent RPCs and watchers on 2 cores.
const READERS: u32 = 8;

/// The SQLite store.
#[derive(Clone)]
pub struct SqliteStore {
    /// The one connection that writes; its pool size of 1 queues writers.
    writer: SqlitePool,
    /// Read-only connections for every query outside a write.
    readers: SqlitePool,
    /// Publishes the highest committed sequence after each commit.
    latest: Arc<watch::Sender<u64>>,
}

/// One write transaction on the writer connection.
pub struct SqliteTx(sqlx::Transaction<'static, sqlx::Sqlite>);

impl SqliteStore {
    /// Opens the database, creating its file and folder, and migrates it.
    pub async fn open(url: &str) -> Result<(SqliteStore, watch::Receiver<u64>)> {
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

        let latest: i64 =
            sqlx::query_scalar("SELECT last_sequence FROM event_log_head WHERE id = 1")
                .fetch_one(&readers)
                .await
                .map_err(db_err)?;
        let (tx, rx) = watch::channel(latest as u64);
        Ok((
            SqliteStore {
                writer,
                readers,
                latest: Arc::new(tx),
            },
            rx,
        ))
    }

    /// Closes every connection.
    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    fn readers(&self) -> &SqlitePool {
        &self.readers
    }

    async fn begin_tx(&self) -> Result<SqliteTx> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map(SqliteTx)
            .map_err(db_err)
    }

    fn publish_sequence(&self, sequence: u64) {
        self.latest.send_if_modified(|cur| {
            let newer = sequence > *cur;
            if newer {
                *cur = sequence;
            }
            newer
        });
    }
}

sql_backend! {
    store: SqliteStore,
    tx: SqliteTx,
    db: sqlx::Sqlite,
    row: sqlx::sqlite::SqliteRow,
    model_aliases: "COALESCE((SELECT json_group_object(a.alias, a.version) FROM aliases a WHERE a.model = m.name), '{}')",
    version_aliases: "COALESCE((SELECT json_group_array(a.alias) FROM \
        (SELECT alias FROM aliases a WHERE a.model = v.model AND a.version = v.version ORDER BY alias) a), '[]')",
    // BEGIN IMMEDIATE already holds the database's one write lock.
    lock_model: None,
    lock_key: None,
    lock_head: "SELECT last_sequence, last_hash FROM event_log_head WHERE id = 1",
    notify: None,
}
