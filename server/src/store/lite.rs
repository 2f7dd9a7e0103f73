//! The SQLite writer's transaction: [`Tx`] on one connection that rusqlite
//! drives synchronously on the writer's own thread ([`super::sqlite`]).
//!
//! sqlx runs each SQLite connection on a thread of its own and hands every
//! statement (and every row) across to it and back; for a write of five
//! statements that hand-over, not SQLite, was most of the cost. Here a
//! statement is a function call on the thread that holds the connection.
//! Reads outside a write stay on sqlx's read-only pool ([`super::db`]).
//!
//! The statements are the same text as [`super::tx`]'s (shared constants, `$n`
//! parameters, which SQLite reads as `?n`), and the rows decode into the same
//! structs, by column name ([`serde_rusqlite`]). It must not decide anything;
//! errors leave only through [`lite_err`] and [`json_err`], so no database text
//! reaches a caller.

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use rusqlite::types::FromSql;
use rusqlite::{Connection, ErrorCode, OpenFlags, Params, params};
use serde::de::DeserializeOwned;

use crate::clock::Clock;
use crate::domain::{
    ConsumerRecord, DeadLetterRecord, Deployment, Evaluation, EvaluationSet, Event, LiveMetricRule,
    LiveObservation, MemberRecord, Model, ModelSlot, Readings, SetRef, Stage, StageSince,
    StageStep, TransitionRequest, Version,
};
use crate::error::{Error, Result};
use crate::store::consumers::{
    self as csql, ConsumerRow, DeadLetterRow, MemberRow, SlotRow, slots_sql,
};
use crate::store::rows::{
    EVENT_COLUMNS, EvaluationRow, EvaluationSetRow, EventRow, LIVE_READINGS, ModelRow, ReadingsRow,
    RequestRow, StageSinceRow, StageStepRow, StoredRequestRow, VersionRow, convert,
};
use crate::store::sql::json_err;
use crate::store::{ConsumerChanges, ConsumerState, Slots, StoredRequest, Tx, db, tx as sql};

/// Prepared statements kept per connection: every statement a write runs.
const STATEMENT_CACHE: usize = 128;

/// Maps a rusqlite error: a busy, locked, full or failing disk may be
/// retried, anything else is a bug to log and hide.
pub fn lite_err(e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(
            ErrorCode::DatabaseBusy
            | ErrorCode::DatabaseLocked
            | ErrorCode::DiskFull
            | ErrorCode::SystemIoFailure
            | ErrorCode::CannotOpen
            | ErrorCode::OutOfMemory,
        ) => Error::Unavailable(e.to_string()),
        _ => Error::Internal(e.to_string()),
    }
}

/// Whether `e` is a UNIQUE or PRIMARY KEY constraint's refusal.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    const SQLITE_CONSTRAINT_PRIMARYKEY: i32 = 1555;
    const SQLITE_CONSTRAINT_UNIQUE: i32 = 2067;
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if f.extended_code == SQLITE_CONSTRAINT_UNIQUE || f.extended_code == SQLITE_CONSTRAINT_PRIMARYKEY)
}

/// `$n` parameters as `?n`: SQLite numbers `?n` by its digits, whereas it
/// numbers `$n` by first appearance, which differs when a statement names
/// `$2` before `$1`.
fn numbered(sql: &str) -> Cow<'_, str> {
    if !sql.contains('$') {
        return Cow::Borrowed(sql);
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('?');
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One write transaction on the writer's connection, with the end of the log
/// (last sequence and hash) as this transaction sees it: no other process
/// writes, so the one writer keeps it in memory instead of in a table.
pub struct LiteTx {
    /// The writer's connection.
    conn: Connection,
    /// The database file, to open the connection again.
    path: PathBuf,
    /// The end of the log as this transaction sees it.
    pub(super) head: (u64, String),
    /// The models this transaction's events name, to invalidate on commit.
    pub(super) touched: Vec<String>,
    /// "Now" for this transaction.
    clock: Clock,
    /// Statement texts as SQLite reads them, by the address of their text.
    texts: RefCell<HashMap<(usize, usize), Text>>,
}

/// What names a statement text kept for the life of the process: where it
/// starts and how long it is (two texts may start at one address when one
/// is the other's beginning).
fn key(sql: &'static str) -> (usize, usize) {
    (sql.as_ptr() as usize, sql.len())
}

/// A statement's text as SQLite reads it, and its result columns once known.
#[derive(Clone)]
struct Text {
    sql: Arc<str>,
    columns: Option<Arc<[String]>>,
}

/// The statements whose text is built from column lists, built once.
static MODEL_BY_NAME: LazyLock<String> = LazyLock::new(db::model_by_name_sql::<sqlx::Sqlite>);
static VERSION_BY_NUMBER: LazyLock<String> =
    LazyLock::new(db::version_by_number_sql::<sqlx::Sqlite>);
static REQUEST_BY_NUMBER: LazyLock<String> = LazyLock::new(db::request_by_number_sql);
static EVALUATION_SET_BY_REF: LazyLock<String> = LazyLock::new(db::evaluation_set_by_ref_sql);
static INSERT_EVALUATION_SET: LazyLock<String> = LazyLock::new(sql::insert_evaluation_set_sql);
static FETCH_EVALUATION: LazyLock<String> = LazyLock::new(sql::fetch_evaluation_sql);
static INSERT_EVALUATION: LazyLock<String> = LazyLock::new(sql::insert_evaluation_sql);
static INSERT_REQUEST: LazyLock<String> = LazyLock::new(sql::insert_request_sql);
static PENDING_REQUESTS: LazyLock<String> = LazyLock::new(sql::pending_requests_sql);
static FETCH_EVENT: LazyLock<String> = LazyLock::new(sql::fetch_event_sql);
static LOAD_CONSUMER: LazyLock<String> = LazyLock::new(csql::load_consumer_sql);
static DEAD_LETTERS_IN: LazyLock<String> = LazyLock::new(csql::dead_letters_in_sql);
static SLOT: LazyLock<String> = LazyLock::new(csql::slot_sql);
static DEAD_LETTER: LazyLock<String> = LazyLock::new(csql::dead_letter_sql);
static INSERT_EVENT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO events ({EVENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"
    )
});
static DELETE_CONSUMER_ROWS: LazyLock<Vec<String>> = LazyLock::new(|| {
    csql::CONSUMER_TABLES
        .iter()
        .map(|table| format!("DELETE FROM {table} WHERE consumer = $1"))
        .collect()
});

/// Opens the writer's connection: WAL, `synchronous=FULL` (a commit is on
/// disk when it returns), foreign keys on, and a wait rather than a refusal
/// while a checkpoint holds the file.
fn connect(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(lite_err)?;
    conn.busy_timeout(Duration::from_secs(30))
        .map_err(lite_err)?;
    conn.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
    )
    .map_err(lite_err)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

impl LiteTx {
    /// Opens the writer's connection to the database at `path`, whose log
    /// ends at `head`.
    pub fn open(path: &Path, head: (u64, String), clock: Clock) -> Result<LiteTx> {
        Ok(LiteTx {
            conn: connect(path)?,
            path: path.to_owned(),
            head,
            touched: Vec::new(),
            clock,
            texts: RefCell::new(HashMap::new()),
        })
    }

    /// Runs statements that take no parameters (BEGIN, savepoints, COMMIT).
    pub fn batch(&self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(lite_err)
    }

    /// Whether a transaction is open: SQLite may roll one back by itself
    /// when its COMMIT fails.
    pub fn in_transaction(&self) -> bool {
        !self.conn.is_autocommit()
    }

    /// Opens the connection again: after a failed COMMIT whose rollback
    /// failed too, the old one cannot be trusted to start a transaction.
    pub fn reconnect(&mut self) -> Result<()> {
        self.conn = connect(&self.path)?;
        Ok(())
    }

    /// The statement `sql` as SQLite reads it (`?n` for `$n`), with its
    /// result columns once known: worked out once per text, which is kept
    /// for the life of the process, so its address names it ([`key`]).
    fn text(&self, sql: &'static str) -> Text {
        self.texts
            .borrow_mut()
            .entry(key(sql))
            .or_insert_with(|| Text {
                sql: numbered(sql).into(),
                columns: None,
            })
            .clone()
    }

    /// Runs one statement; how many rows it changed.
    fn exec(&self, sql: &'static str, params: impl Params) -> rusqlite::Result<usize> {
        self.conn
            .prepare_cached(&self.text(sql).sql)?
            .execute(params)
    }

    /// Runs one statement, mapping its error.
    fn run(&self, sql: &'static str, params: impl Params) -> Result<usize> {
        self.exec(sql, params).map_err(lite_err)
    }

    /// Every row of a select, decoded by column name.
    fn all<T: DeserializeOwned>(&self, sql: &'static str, params: impl Params) -> Result<Vec<T>> {
        let text = self.text(sql);
        let mut stmt = self.conn.prepare_cached(&text.sql).map_err(lite_err)?;
        let columns = match text.columns {
            Some(columns) => columns,
            None => {
                let columns: Arc<[String]> = serde_rusqlite::columns_from_statement(&stmt).into();
                if let Some(kept) = self.texts.borrow_mut().get_mut(&key(sql)) {
                    kept.columns = Some(columns.clone());
                }
                columns
            }
        };
        let mut rows = stmt.query(params).map_err(lite_err)?;
        let mut out = Vec::new();
        while let Some(row) = rows.next().map_err(lite_err)? {
            out.push(
                serde_rusqlite::from_row_with_columns(row, &columns)
                    .map_err(|e| Error::Internal(format!("undecodable row: {e}")))?,
            );
        }
        Ok(out)
    }

    /// The first row of a select, if any, decoded by column name.
    fn one<T: DeserializeOwned>(
        &self,
        sql: &'static str,
        params: impl Params,
    ) -> Result<Option<T>> {
        Ok(self.all(sql, params)?.into_iter().next())
    }

    /// The first column of the first row, if any.
    fn scalar<T: FromSql>(&self, sql: &'static str, params: impl Params) -> Result<Option<T>> {
        let mut stmt = self
            .conn
            .prepare_cached(&self.text(sql).sql)
            .map_err(lite_err)?;
        let mut rows = stmt.query(params).map_err(lite_err)?;
        match rows.next().map_err(lite_err)? {
            Some(row) => row.get(0).map(Some).map_err(lite_err),
            None => Ok(None),
        }
    }

    /// Replaces a model's rows in `model_tags`, the index that tag filters use.
    fn replace_tags(&self, model: &str, tags: &BTreeMap<String, String>) -> Result<()> {
        self.run(sql::DELETE_TAGS, params![model])?;
        for (key, value) in tags {
            self.run(
                "INSERT INTO model_tags (model, key, value) VALUES ($1, $2, $3)",
                params![model, key, value],
            )?;
        }
        Ok(())
    }

    /// A consumer's dead letters in `state`, by sequence.
    fn dead_letters_in(&self, name: &str, state: &str) -> Result<Vec<DeadLetterRecord>> {
        let rows: Vec<DeadLetterRow> = self.all(&DEAD_LETTERS_IN, params![name, state])?;
        convert(rows)
    }

    /// One model's place in a consumer.
    fn save_slot(&self, name: &str, s: &ModelSlot) -> Result<()> {
        self.run(
            csql::UPSERT_SLOT,
            params![
                name,
                s.model,
                s.owner,
                s.epoch as i64,
                s.acked as i64,
                s.latest as i64,
                s.pending as i64,
                s.inflight as i64,
                i64::from(s.deliveries),
                s.redeliver_time,
                s.last_error,
                s.blocked
            ],
        )?;
        Ok(())
    }
}

/// Serializes a value for a JSON text column.
fn text<T: serde::Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value).map_err(json_err)
}

impl Tx for LiteTx {
    fn now(&self) -> i64 {
        self.clock.now_micros()
    }

    /// `BEGIN IMMEDIATE` already holds the database's one write lock.
    async fn lock_model(&mut self, name: &str) -> Result<Option<Model>> {
        self.fetch_model(name).await
    }

    /// Likewise: the one writer excludes every other.
    async fn lock_key(&mut self, _key: &str) -> Result<()> {
        Ok(())
    }

    async fn fetch_model(&mut self, name: &str) -> Result<Option<Model>> {
        let row: Option<ModelRow> = self.one(&MODEL_BY_NAME, params![name])?;
        row.map(Model::try_from).transpose()
    }

    async fn fetch_version(&mut self, model: &str, version: i64) -> Result<Option<Version>> {
        let row: Option<VersionRow> = self.one(&VERSION_BY_NUMBER, params![model, version])?;
        row.map(Version::try_from).transpose()
    }

    async fn production_version(&mut self, model: &str) -> Result<Option<i64>> {
        self.scalar(sql::PRODUCTION_VERSION, params![model])
    }

    async fn find_request(
        &mut self,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>> {
        let row: Option<StoredRequestRow> =
            self.one(sql::FIND_REQUEST, params![method, request_id])?;
        Ok(row.map(StoredRequest::from))
    }

    async fn remember_request(
        &mut self,
        method: &str,
        request_id: &str,
        stored: &StoredRequest,
    ) -> Result<()> {
        let inserted = self.exec(
            sql::REMEMBER_REQUEST,
            params![
                method,
                request_id,
                stored.fingerprint,
                stored.model,
                stored.version,
                self.now(),
                stored.response
            ],
        );
        match inserted {
            Err(e) if is_unique_violation(&e) => Err(sql::request_id_in_use(method)),
            other => other.map(|_| ()).map_err(lite_err),
        }
    }

    async fn insert_model(&mut self, model: &Model) -> Result<bool> {
        let inserted = self.exec(
            sql::INSERT_MODEL,
            params![
                model.name,
                model.description,
                text(&model.tags)?,
                model.revision,
                model.latest_version,
                model.created_by,
                model.create_time,
                model.update_time,
                serde_json::to_vec(&model.policy).map_err(json_err)?
            ],
        );
        match inserted {
            Err(e) if is_unique_violation(&e) => return Ok(false),
            other => {
                other.map_err(lite_err)?;
            }
        }
        self.replace_tags(&model.name, &model.tags)?;
        Ok(true)
    }

    async fn update_model(&mut self, model: &Model) -> Result<()> {
        self.run(
            sql::UPDATE_MODEL,
            params![
                model.description,
                text(&model.tags)?,
                serde_json::to_vec(&model.policy).map_err(json_err)?,
                model.update_time,
                model.name
            ],
        )?;
        self.replace_tags(&model.name, &model.tags)
    }

    async fn insert_version(&mut self, v: &Version) -> Result<()> {
        self.run(
            sql::INSERT_VERSION,
            params![
                v.model,
                v.version,
                v.artifact_uri,
                v.artifact_digest,
                text(&v.source)?,
                text(&v.training_metrics)?,
                text(&v.tags)?,
                v.description,
                v.stage.as_str(),
                v.revision,
                v.created_by,
                v.create_time,
                v.update_time,
                v.stage_update_time
            ],
        )?;
        self.run(
            sql::BUMP_LATEST_VERSION,
            params![v.version, v.create_time, v.model],
        )?;
        Ok(())
    }

    async fn update_version(&mut self, v: &Version) -> Result<()> {
        self.run(
            sql::UPDATE_VERSION,
            params![
                text(&v.tags)?,
                v.description,
                v.update_time,
                v.model,
                v.version
            ],
        )?;
        Ok(())
    }

    async fn move_stage(
        &mut self,
        model: &str,
        version: i64,
        from: Stage,
        to: Stage,
        now: i64,
    ) -> Result<()> {
        let moved = self.run(
            sql::MOVE_STAGE,
            params![to.as_str(), now, model, version, from.as_str()],
        )?;
        sql::moved_one(moved as u64, model, version, from, to)
    }

    async fn touch_model(&mut self, model: &str, now: i64) -> Result<()> {
        self.run(sql::TOUCH_MODEL, params![now, model])?;
        Ok(())
    }

    async fn touch_version(&mut self, model: &str, version: i64, now: i64) -> Result<()> {
        self.run(sql::TOUCH_VERSION, params![now, model, version])?;
        Ok(())
    }

    async fn upsert_alias(&mut self, model: &str, alias: &str, version: i64) -> Result<()> {
        self.run(sql::UPSERT_ALIAS, params![model, alias, version])?;
        Ok(())
    }

    async fn remove_alias(&mut self, model: &str, alias: &str) -> Result<()> {
        self.run(sql::REMOVE_ALIAS, params![model, alias])?;
        Ok(())
    }

    async fn log_head(&mut self) -> Result<(u64, String)> {
        Ok(self.head.clone())
    }

    /// One cached single-row INSERT per event: with no hop per statement a
    /// multi-row INSERT saves nothing, and its text would differ per count.
    async fn insert_events(&mut self, events: &[Event]) -> Result<()> {
        for e in events {
            if !self.touched.contains(&e.model) {
                self.touched.push(e.model.clone());
            }
            self.run(
                &INSERT_EVENT,
                params![
                    e.sequence as i64,
                    e.kind.as_str(),
                    e.model,
                    e.version,
                    e.from_stage.map(|s| s.as_str()),
                    e.to_stage.map(|s| s.as_str()),
                    e.cause.map(|c| c.as_str()),
                    e.actor,
                    e.comment,
                    e.occur_time,
                    e.details.to_string(),
                    e.transition_request_id,
                    e.prev_hash,
                    e.hash
                ],
            )?;
        }
        Ok(())
    }

    async fn set_log_head(&mut self, sequence: u64, hash: &str) -> Result<()> {
        self.head = (sequence, hash.to_owned());
        Ok(())
    }

    async fn fetch_evaluation_set(&mut self, set: &SetRef) -> Result<Option<EvaluationSet>> {
        let row: Option<EvaluationSetRow> =
            self.one(&EVALUATION_SET_BY_REF, params![set.name, set.version])?;
        row.map(EvaluationSet::try_from).transpose()
    }

    async fn insert_evaluation_set(&mut self, set: &EvaluationSet) -> Result<()> {
        self.run(
            &INSERT_EVALUATION_SET,
            params![
                set.id.name,
                set.id.version,
                set.uri,
                set.digest,
                text(&set.metrics)?,
                set.description,
                set.created_by,
                set.create_time
            ],
        )?;
        Ok(())
    }

    async fn fetch_evaluation(
        &mut self,
        model: &str,
        version: i64,
        set: &SetRef,
        evaluator_version: &str,
    ) -> Result<Option<Evaluation>> {
        let row: Option<EvaluationRow> = self.one(
            &FETCH_EVALUATION,
            params![model, version, set.name, set.version, evaluator_version],
        )?;
        row.map(Evaluation::try_from).transpose()
    }

    async fn insert_evaluation(&mut self, e: &Evaluation) -> Result<()> {
        self.run(
            &INSERT_EVALUATION,
            params![
                e.model,
                e.version,
                e.set.name,
                e.set.version,
                e.evaluator_version,
                text(&e.metrics)?,
                e.report_uri,
                e.created_by,
                e.create_time
            ],
        )?;
        Ok(())
    }

    async fn next_request_number(&mut self, model: &str) -> Result<i64> {
        self.scalar(sql::NEXT_REQUEST_NUMBER, params![model])?
            .ok_or_else(|| Error::Internal("MAX() returned no row".into()))
    }

    async fn insert_request(&mut self, r: &TransitionRequest) -> Result<()> {
        self.run(
            &INSERT_REQUEST,
            params![
                r.model,
                r.number,
                r.version,
                r.from_stage.as_str(),
                r.to_stage.as_str(),
                r.rollback,
                r.requester,
                r.comment,
                text(&r.gate_results)?,
                text(&r.approvals)?,
                r.status.as_str(),
                r.create_time,
                r.update_time,
                r.resolved_by,
                r.resolution_comment
            ],
        )?;
        Ok(())
    }

    async fn update_request(&mut self, r: &TransitionRequest) -> Result<()> {
        self.run(
            sql::UPDATE_REQUEST,
            params![
                text(&r.approvals)?,
                r.status.as_str(),
                r.update_time,
                r.resolved_by,
                r.resolution_comment,
                r.model,
                r.number
            ],
        )?;
        Ok(())
    }

    async fn fetch_request(
        &mut self,
        model: &str,
        number: i64,
    ) -> Result<Option<TransitionRequest>> {
        let row: Option<RequestRow> = self.one(&REQUEST_BY_NUMBER, params![model, number])?;
        row.map(TransitionRequest::try_from).transpose()
    }

    async fn pending_requests_of(
        &mut self,
        model: &str,
        version: i64,
    ) -> Result<Vec<TransitionRequest>> {
        let rows: Vec<RequestRow> = self.all(&PENDING_REQUESTS, params![model, version])?;
        convert(rows)
    }

    async fn stage_history(&mut self, model: &str) -> Result<Vec<StageStep>> {
        let rows: Vec<StageStepRow> = self.all(sql::STAGE_HISTORY, params![model])?;
        convert(rows)
    }

    async fn production_since(&mut self, model: &str) -> Result<Option<StageSince>> {
        let row: Option<StageSinceRow> = self.one(db::PRODUCTION_SINCE, params![model])?;
        row.map(StageSince::try_from).transpose()
    }

    async fn passed_over(&mut self, model: &str, below: i64) -> Result<Vec<StageSince>> {
        let rows: Vec<StageSinceRow> = self.all(db::PASSED_OVER, params![model, below])?;
        convert(rows)
    }

    async fn live_readings(
        &mut self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        let sign: f64 = if rule.higher_is_better { 1.0 } else { -1.0 };
        let row: Option<ReadingsRow> = self.one(
            LIVE_READINGS,
            params![
                model,
                version,
                rule.metric,
                since,
                now.saturating_sub(rule.window_micros),
                now,
                sign,
                rule.threshold * sign,
                since.saturating_sub(1)
            ],
        )?;
        row.map(Readings::from)
            .ok_or_else(|| Error::Internal("the readings query returned no row".into()))
    }

    async fn breach_recorded(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        let found: Option<i64> = self.scalar(
            db::BREACH_RECORDED,
            params![model, version, metric, bad_since],
        )?;
        Ok(found.is_some())
    }

    async fn record_breach(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
        now: i64,
    ) -> Result<()> {
        self.run(
            sql::RECORD_BREACH,
            params![model, version, metric, bad_since, now],
        )?;
        Ok(())
    }

    async fn upsert_deployment(&mut self, d: &Deployment) -> Result<()> {
        self.run(
            sql::UPSERT_DEPLOYMENT,
            params![
                d.model,
                d.version,
                d.environment,
                d.status.as_str(),
                d.endpoint,
                d.message,
                d.reported_by,
                d.report_time
            ],
        )?;
        Ok(())
    }

    async fn upsert_observation(&mut self, o: &LiveObservation) -> Result<()> {
        self.run(
            sql::UPSERT_OBSERVATION,
            params![
                o.model.as_str(),
                o.version,
                o.metric.as_str(),
                o.observe_time,
                o.value
            ],
        )?;
        Ok(())
    }

    async fn fetch_event(&mut self, sequence: u64) -> Result<Option<Event>> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(None);
        };
        let row: Option<EventRow> = self.one(&FETCH_EVENT, params![sequence])?;
        row.map(Event::try_from).transpose()
    }

    async fn load_consumer(
        &mut self,
        name: &str,
        which: Slots<'_>,
    ) -> Result<Option<ConsumerState>> {
        let Some(row): Option<ConsumerRow> = self.one(&LOAD_CONSUMER, params![name])? else {
            return Ok(None);
        };
        let members: Vec<MemberRow> = self.all(csql::LOAD_MEMBERS, params![name])?;
        let slots: Vec<SlotRow> = match slots_sql(which) {
            None => vec![],
            Some((sql, key)) => self.all(sql, params![name, key])?,
        };
        let retrying = self.dead_letters_in(name, "RETRYING")?;
        let parked: i64 = self
            .scalar(csql::COUNT_PARKED, params![name])?
            .ok_or_else(|| Error::Internal("COUNT() returned no row".into()))?;
        Ok(Some(ConsumerState {
            record: ConsumerRecord::try_from(row)?,
            members: members.into_iter().map(MemberRecord::from).collect(),
            slots: slots.into_iter().map(ModelSlot::from).collect(),
            retrying,
            parked: parked as u64,
        }))
    }

    async fn consumer_slot(&mut self, name: &str, model: &str) -> Result<Option<ModelSlot>> {
        let row: Option<SlotRow> = self.one(&SLOT, params![name, model])?;
        Ok(row.map(ModelSlot::from))
    }

    async fn dead_letter(&mut self, name: &str, sequence: u64) -> Result<Option<DeadLetterRecord>> {
        let row: Option<DeadLetterRow> = self.one(&DEAD_LETTER, params![name, sequence as i64])?;
        row.map(DeadLetterRecord::try_from).transpose()
    }

    async fn save_consumer(&mut self, name: &str, c: &ConsumerChanges) -> Result<()> {
        if let Some(r) = &c.create {
            self.run(
                csql::INSERT_CONSUMER,
                params![
                    r.name,
                    text(&r.settings)?,
                    r.start_sequence as i64,
                    r.scanned_sequence as i64,
                    r.creator,
                    r.create_time
                ],
            )?;
        }
        if let Some(s) = c.scanned {
            self.run(csql::SET_SCANNED, params![name, s as i64])?;
        }
        for m in &c.removed {
            self.run(csql::REMOVE_MEMBER, params![name, m])?;
        }
        for m in &c.members {
            self.run(
                csql::UPSERT_MEMBER,
                params![
                    name,
                    m.member,
                    m.identity,
                    m.session,
                    m.join_time,
                    m.expire_time
                ],
            )?;
        }
        for s in &c.slots {
            self.save_slot(name, s)?;
        }
        for d in &c.dead_letters {
            self.run(
                csql::UPSERT_DEAD_LETTER,
                params![
                    name,
                    d.sequence as i64,
                    d.model,
                    i64::from(d.deliveries),
                    d.reason,
                    d.park_time,
                    d.event_sequence as i64,
                    d.state.as_str()
                ],
            )?;
        }
        Ok(())
    }

    async fn delete_consumer(&mut self, name: &str) -> Result<bool> {
        for delete in DELETE_CONSUMER_ROWS.iter() {
            self.run(delete, params![name])?;
        }
        let found: Option<i64> = self.scalar(csql::DELETE_CONSUMER, params![name])?;
        Ok(found.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollar_parameters_become_numbered_ones() {
        assert_eq!(
            numbered("UPDATE c SET s = $2 WHERE name = $1 AND x = '$'"),
            "UPDATE c SET s = ?2 WHERE name = ?1 AND x = '$'"
        );
        assert!(matches!(numbered("SELECT 1"), Cow::Borrowed(_)));
    }

    /// `$2` named before `$1` binds by number, not by order of appearance:
    /// the statement that moves a consumer's scanned sequence is written so.
    #[test]
    fn parameters_bind_by_number() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE consumers (name TEXT, scanned_sequence INTEGER); INSERT INTO consumers VALUES ('a', 0)",
        )
            .unwrap();
        conn.prepare(&numbered(csql::SET_SCANNED))
            .unwrap()
            .execute(params!["a", 7])
            .unwrap();
        let s: i64 = conn
            .query_row("SELECT scanned_sequence FROM consumers", [], |r| r.get(0))
            .unwrap();
        assert_eq!(s, 7);
    }
}
