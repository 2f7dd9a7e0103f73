//! The one implementation of [`Tx`], for every backend that fulfils
//! [`SqlTx`]: the statements of one write transaction.
//!
//! It must not decide anything (that is [`crate::app`]) nor know which engine
//! it runs on: locks come from [`Engine`], the end of the log from the
//! backend's [`SqlTx`]. Errors leave only through [`db_err`] and [`json_err`];
//! a constraint violation becomes a domain answer only where a caller asks
//! for one (a taken name, a request id in use).
//!
//! The `where` clause repeats [`super::db`]'s: Rust does not carry bounds
//! from a trait to its users.

use std::collections::BTreeMap;

use sqlx::{ColumnIndex, Executor, IntoArguments, QueryBuilder};

use crate::domain::{DeadLetterRecord, ModelSlot};
use crate::domain::{
    Deployment, Evaluation, EvaluationSet, Event, LiveObservation, Model, SetRef, Stage, Version,
};
use crate::domain::{LiveMetricRule, Readings, StageSince, StageStep, TransitionRequest};
use crate::error::{Error, Result};
use crate::store::consumers::ConsumerSql;
use crate::store::db::Reads;
use crate::store::rows::{
    EVALUATION_COLUMNS, EVALUATION_SET_COLUMNS, EVENT_COLUMNS, EvaluationRow, EventRow,
    REQUEST_COLUMNS, RequestRow, StageStepRow, StoredRequestRow, convert,
};
use crate::store::sql::{Column, Engine, Param, SqlTx, db_err, json_err};
use crate::store::{ConsumerChanges, ConsumerState, Slots, StoredRequest, Tx};

// The statements' texts, each named after what it does: the sqlx
// statements below and the SQLite writer's ([`super::lite`]) run the same
// text.
pub(super) const PRODUCTION_VERSION: &str =
    "SELECT version FROM versions WHERE model = $1 AND stage = 'PRODUCTION'";
pub(super) const FIND_REQUEST: &str = r#"SELECT fingerprint, model, version, response FROM idempotency
               WHERE method = $1 AND request_id = $2"#;
pub(super) const REMEMBER_REQUEST: &str = r#"INSERT INTO idempotency (method, request_id, fingerprint, model, version, create_time, response)
               VALUES ($1, $2, $3, $4, $5, $6, $7)"#;
pub(super) const INSERT_MODEL: &str = r#"INSERT INTO models (name, description, tags, revision, latest_version, created_by, create_time, update_time, policy)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#;
pub(super) const UPDATE_MODEL: &str = r#"UPDATE models SET description = $1, tags = $2, policy = $3, revision = revision + 1, update_time = $4
               WHERE name = $5"#;
pub(super) const INSERT_VERSION: &str = r#"INSERT INTO versions (model, version, artifact_uri, artifact_digest, source, training_metrics,
                   tags, description, stage, revision, created_by, create_time, update_time, stage_update_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"#;
pub(super) const BUMP_LATEST_VERSION: &str = "UPDATE models SET latest_version = $1, revision = revision + 1, update_time = $2 WHERE name = $3";
pub(super) const UPDATE_VERSION: &str = r#"UPDATE versions SET tags = $1, description = $2, revision = revision + 1, update_time = $3
               WHERE model = $4 AND version = $5"#;
pub(super) const MOVE_STAGE: &str = r#"UPDATE versions SET stage = $1, revision = revision + 1, update_time = $2, stage_update_time = $2
               WHERE model = $3 AND version = $4 AND stage = $5"#;
pub(super) const TOUCH_MODEL: &str =
    "UPDATE models SET revision = revision + 1, update_time = $1 WHERE name = $2";
pub(super) const TOUCH_VERSION: &str = "UPDATE versions SET revision = revision + 1, update_time = $1 WHERE model = $2 AND version = $3";
pub(super) const UPSERT_ALIAS: &str = r#"INSERT INTO aliases (model, alias, version) VALUES ($1, $2, $3)
               ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version"#;
pub(super) const REMOVE_ALIAS: &str = "DELETE FROM aliases WHERE model = $1 AND alias = $2";
pub(super) const NEXT_REQUEST_NUMBER: &str =
    "SELECT COALESCE(MAX(number), 0) + 1 FROM transition_requests WHERE model = $1";
pub(super) const UPDATE_REQUEST: &str = r#"UPDATE transition_requests SET approvals = $1, status = $2, update_time = $3,
                   resolved_by = $4, resolution_comment = $5
               WHERE model = $6 AND number = $7"#;
pub(super) const STAGE_HISTORY: &str = r#"SELECT version, to_stage, cause FROM events
               WHERE model = $1 AND type = 'STAGE_CHANGED' ORDER BY sequence"#;
pub(super) const RECORD_BREACH: &str = r#"INSERT INTO live_metric_breaches (model, version, metric, bad_since, report_time)
               VALUES ($1, $2, $3, $4, $5)"#;
pub(super) const UPSERT_DEPLOYMENT: &str = r#"INSERT INTO deployments (model, version, environment, status, endpoint, message, reported_by, report_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (model, version, environment) DO UPDATE SET status = excluded.status,
                   endpoint = excluded.endpoint, message = excluded.message,
                   reported_by = excluded.reported_by, report_time = excluded.report_time"#;
pub(super) const UPSERT_OBSERVATION: &str = r#"INSERT INTO live_metrics (model, version, metric, observe_time, value)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (model, version, metric, observe_time) DO UPDATE SET value = excluded.value"#;
pub(super) const DELETE_TAGS: &str = "DELETE FROM model_tags WHERE model = $1";

/// Most events in one INSERT: 14 parameters each stays far below either
/// engine's limit on parameters per statement.
const EVENTS_PER_INSERT: usize = 256;

impl<T, DB> Tx for T
where
    T: SqlTx<Engine = DB>,
    DB: Engine,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    for<'q> Option<&'q str>: Param<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    f64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
{
    fn now(&self) -> i64 {
        self.clock().now_micros()
    }

    async fn lock_model(&mut self, name: &str) -> Result<Option<Model>> {
        if let Some(lock) = DB::LOCK_MODEL {
            sqlx::query(lock)
                .bind(name)
                .execute(self.conn())
                .await
                .map_err(db_err)?;
        }
        Reads::model(self.conn(), name).await
    }

    async fn lock_key(&mut self, key: &str) -> Result<()> {
        if let Some(lock) = DB::LOCK_KEY {
            sqlx::query(lock)
                .bind(key)
                .execute(self.conn())
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn fetch_model(&mut self, name: &str) -> Result<Option<Model>> {
        Reads::model(self.conn(), name).await
    }

    async fn fetch_version(&mut self, model: &str, version: i64) -> Result<Option<Version>> {
        Reads::version(self.conn(), model, version).await
    }

    async fn production_version(&mut self, model: &str) -> Result<Option<i64>> {
        sqlx::query_scalar(PRODUCTION_VERSION)
            .bind(model)
            .fetch_optional(self.conn())
            .await
            .map_err(db_err)
    }

    async fn find_request(
        &mut self,
        method: &str,
        request_id: &str,
    ) -> Result<Option<StoredRequest>> {
        let row: Option<StoredRequestRow> = sqlx::query_as(FIND_REQUEST)
            .bind(method)
            .bind(request_id)
            .fetch_optional(self.conn())
            .await
            .map_err(db_err)?;
        Ok(row.map(StoredRequest::from))
    }

    async fn remember_request(
        &mut self,
        method: &str,
        request_id: &str,
        stored: &StoredRequest,
    ) -> Result<()> {
        let inserted = sqlx::query(REMEMBER_REQUEST)
            .bind(method)
            .bind(request_id)
            .bind(stored.fingerprint.as_str())
            .bind(stored.model.as_str())
            .bind(stored.version)
            .bind(self.now())
            .bind(stored.response.as_deref())
            .execute(self.conn())
            .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                Err(request_id_in_use(method))
            }
            other => other.map(|_| ()).map_err(db_err),
        }
    }

    async fn insert_model(&mut self, model: &Model) -> Result<bool> {
        let inserted = sqlx::query(INSERT_MODEL)
            .bind(model.name.as_str())
            .bind(model.description.as_str())
            .bind(serde_json::to_string(&model.tags).map_err(json_err)?)
            .bind(model.revision)
            .bind(model.latest_version)
            .bind(model.created_by.as_str())
            .bind(model.create_time)
            .bind(model.update_time)
            .bind(serde_json::to_vec(&model.policy).map_err(json_err)?)
            .execute(self.conn())
            .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
            other => {
                other.map_err(db_err)?;
            }
        }
        replace_tags(self.conn(), &model.name, &model.tags).await?;
        Ok(true)
    }

    async fn update_model(&mut self, model: &Model) -> Result<()> {
        sqlx::query(UPDATE_MODEL)
            .bind(model.description.as_str())
            .bind(serde_json::to_string(&model.tags).map_err(json_err)?)
            .bind(serde_json::to_vec(&model.policy).map_err(json_err)?)
            .bind(model.update_time)
            .bind(model.name.as_str())
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        replace_tags(self.conn(), &model.name, &model.tags).await
    }

    async fn insert_version(&mut self, v: &Version) -> Result<()> {
        sqlx::query(INSERT_VERSION)
            .bind(v.model.as_str())
            .bind(v.version)
            .bind(v.artifact_uri.as_str())
            .bind(v.artifact_digest.as_str())
            .bind(serde_json::to_string(&v.source).map_err(json_err)?)
            .bind(serde_json::to_string(&v.training_metrics).map_err(json_err)?)
            .bind(serde_json::to_string(&v.tags).map_err(json_err)?)
            .bind(v.description.as_str())
            .bind(v.stage.as_str())
            .bind(v.revision)
            .bind(v.created_by.as_str())
            .bind(v.create_time)
            .bind(v.update_time)
            .bind(v.stage_update_time)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        sqlx::query(BUMP_LATEST_VERSION)
            .bind(v.version)
            .bind(v.create_time)
            .bind(v.model.as_str())
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn update_version(&mut self, v: &Version) -> Result<()> {
        sqlx::query(UPDATE_VERSION)
            .bind(serde_json::to_string(&v.tags).map_err(json_err)?)
            .bind(v.description.as_str())
            .bind(v.update_time)
            .bind(v.model.as_str())
            .bind(v.version)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
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
        let moved = sqlx::query(MOVE_STAGE)
            .bind(to.as_str())
            .bind(now)
            .bind(model)
            .bind(version)
            .bind(from.as_str())
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        moved_one(DB::rows_affected(&moved), model, version, from, to)
    }

    async fn touch_model(&mut self, model: &str, now: i64) -> Result<()> {
        sqlx::query(TOUCH_MODEL)
            .bind(now)
            .bind(model)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn touch_version(&mut self, model: &str, version: i64, now: i64) -> Result<()> {
        sqlx::query(TOUCH_VERSION)
            .bind(now)
            .bind(model)
            .bind(version)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn upsert_alias(&mut self, model: &str, alias: &str, version: i64) -> Result<()> {
        sqlx::query(UPSERT_ALIAS)
            .bind(model)
            .bind(alias)
            .bind(version)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn remove_alias(&mut self, model: &str, alias: &str) -> Result<()> {
        sqlx::query(REMOVE_ALIAS)
            .bind(model)
            .bind(alias)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn log_head(&mut self) -> Result<(u64, String)> {
        self.head().await
    }

    async fn insert_events(&mut self, events: &[Event]) -> Result<()> {
        for chunk in events.chunks(EVENTS_PER_INSERT) {
            for e in chunk {
                self.note_event(e);
            }
            let mut q = QueryBuilder::<DB>::new(format!("INSERT INTO events ({EVENT_COLUMNS}) "));
            q.push_values(chunk, |mut row, e| {
                row.push_bind(e.sequence as i64)
                    .push_bind(e.kind.as_str())
                    .push_bind(e.model.as_str())
                    .push_bind(e.version)
                    .push_bind(e.from_stage.map(|s| s.as_str()))
                    .push_bind(e.to_stage.map(|s| s.as_str()))
                    .push_bind(e.cause.map(|c| c.as_str()))
                    .push_bind(e.actor.as_str())
                    .push_bind(e.comment.as_str())
                    .push_bind(e.occur_time)
                    .push_bind(e.details.to_string())
                    .push_bind(e.transition_request_id.as_str())
                    .push_bind(e.prev_hash.as_str())
                    .push_bind(e.hash.as_str());
            });
            DB::build(&mut q)
                .execute(self.conn())
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }

    async fn set_log_head(&mut self, sequence: u64, hash: &str) -> Result<()> {
        self.set_head(sequence, hash).await
    }

    async fn fetch_evaluation_set(&mut self, set: &SetRef) -> Result<Option<EvaluationSet>> {
        Reads::evaluation_set(self.conn(), set).await
    }

    async fn insert_evaluation_set(&mut self, set: &EvaluationSet) -> Result<()> {
        let sql = insert_evaluation_set_sql();
        sqlx::query(&sql)
            .bind(set.id.name.as_str())
            .bind(set.id.version.as_str())
            .bind(set.uri.as_str())
            .bind(set.digest.as_str())
            .bind(serde_json::to_string(&set.metrics).map_err(json_err)?)
            .bind(set.description.as_str())
            .bind(set.created_by.as_str())
            .bind(set.create_time)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn fetch_evaluation(
        &mut self,
        model: &str,
        version: i64,
        set: &SetRef,
        evaluator_version: &str,
    ) -> Result<Option<Evaluation>> {
        let sql = fetch_evaluation_sql();
        let row: Option<EvaluationRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(version)
            .bind(set.name.as_str())
            .bind(set.version.as_str())
            .bind(evaluator_version)
            .fetch_optional(self.conn())
            .await
            .map_err(db_err)?;
        row.map(Evaluation::try_from).transpose()
    }

    async fn insert_evaluation(&mut self, e: &Evaluation) -> Result<()> {
        let sql = insert_evaluation_sql();
        sqlx::query(&sql)
            .bind(e.model.as_str())
            .bind(e.version)
            .bind(e.set.name.as_str())
            .bind(e.set.version.as_str())
            .bind(e.evaluator_version.as_str())
            .bind(serde_json::to_string(&e.metrics).map_err(json_err)?)
            .bind(e.report_uri.as_str())
            .bind(e.created_by.as_str())
            .bind(e.create_time)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn next_request_number(&mut self, model: &str) -> Result<i64> {
        sqlx::query_scalar(NEXT_REQUEST_NUMBER)
            .bind(model)
            .fetch_one(self.conn())
            .await
            .map_err(db_err)
    }

    async fn insert_request(&mut self, r: &TransitionRequest) -> Result<()> {
        let sql = insert_request_sql();
        sqlx::query(&sql)
            .bind(r.model.as_str())
            .bind(r.number)
            .bind(r.version)
            .bind(r.from_stage.as_str())
            .bind(r.to_stage.as_str())
            .bind(r.rollback)
            .bind(r.requester.as_str())
            .bind(r.comment.as_str())
            .bind(serde_json::to_string(&r.gate_results).map_err(json_err)?)
            .bind(serde_json::to_string(&r.approvals).map_err(json_err)?)
            .bind(r.status.as_str())
            .bind(r.create_time)
            .bind(r.update_time)
            .bind(r.resolved_by.as_str())
            .bind(r.resolution_comment.as_str())
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn update_request(&mut self, r: &TransitionRequest) -> Result<()> {
        sqlx::query(UPDATE_REQUEST)
            .bind(serde_json::to_string(&r.approvals).map_err(json_err)?)
            .bind(r.status.as_str())
            .bind(r.update_time)
            .bind(r.resolved_by.as_str())
            .bind(r.resolution_comment.as_str())
            .bind(r.model.as_str())
            .bind(r.number)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn fetch_request(
        &mut self,
        model: &str,
        number: i64,
    ) -> Result<Option<TransitionRequest>> {
        Reads::request(self.conn(), model, number).await
    }

    async fn pending_requests_of(
        &mut self,
        model: &str,
        version: i64,
    ) -> Result<Vec<TransitionRequest>> {
        let sql = pending_requests_sql();
        let rows: Vec<RequestRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(version)
            .fetch_all(self.conn())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn stage_history(&mut self, model: &str) -> Result<Vec<StageStep>> {
        let rows: Vec<StageStepRow> = sqlx::query_as(STAGE_HISTORY)
            .bind(model)
            .fetch_all(self.conn())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn production_since(&mut self, model: &str) -> Result<Option<StageSince>> {
        Reads::production_since(self.conn(), model).await
    }

    async fn passed_over(&mut self, model: &str, below: i64) -> Result<Vec<StageSince>> {
        Reads::passed_over(self.conn(), model, below).await
    }

    async fn live_readings(
        &mut self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        Reads::live_readings(self.conn(), (model, version), rule, since, now).await
    }

    async fn breach_recorded(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        Reads::breach_recorded(self.conn(), (model, version), metric, bad_since).await
    }

    async fn record_breach(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(RECORD_BREACH)
            .bind(model)
            .bind(version)
            .bind(metric)
            .bind(bad_since)
            .bind(now)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn upsert_deployment(&mut self, d: &Deployment) -> Result<()> {
        sqlx::query(UPSERT_DEPLOYMENT)
            .bind(d.model.as_str())
            .bind(d.version)
            .bind(d.environment.as_str())
            .bind(d.status.as_str())
            .bind(d.endpoint.as_str())
            .bind(d.message.as_str())
            .bind(d.reported_by.as_str())
            .bind(d.report_time)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn upsert_observation(&mut self, o: &LiveObservation) -> Result<()> {
        sqlx::query(UPSERT_OBSERVATION)
            .bind(o.model.as_str())
            .bind(o.version)
            .bind(o.metric.as_str())
            .bind(o.observe_time)
            .bind(o.value)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn fetch_event(&mut self, sequence: u64) -> Result<Option<Event>> {
        let Ok(sequence) = i64::try_from(sequence) else {
            return Ok(None);
        };
        let sql = fetch_event_sql();
        let row: Option<EventRow> = sqlx::query_as(&sql)
            .bind(sequence)
            .fetch_optional(self.conn())
            .await
            .map_err(db_err)?;
        row.map(Event::try_from).transpose()
    }

    async fn load_consumer(
        &mut self,
        name: &str,
        slots: Slots<'_>,
    ) -> Result<Option<ConsumerState>> {
        ConsumerSql::<DB>::load(self.conn(), name, slots).await
    }

    async fn consumer_slot(&mut self, name: &str, model: &str) -> Result<Option<ModelSlot>> {
        ConsumerSql::<DB>::slot(self.conn(), name, model).await
    }

    async fn dead_letter(&mut self, name: &str, sequence: u64) -> Result<Option<DeadLetterRecord>> {
        ConsumerSql::<DB>::dead_letter(self.conn(), name, sequence).await
    }

    async fn save_consumer(&mut self, name: &str, changes: &ConsumerChanges) -> Result<()> {
        ConsumerSql::<DB>::save(self.conn(), name, changes).await
    }

    async fn delete_consumer(&mut self, name: &str) -> Result<bool> {
        ConsumerSql::<DB>::delete(self.conn(), name).await
    }
}

/// Replaces a model's rows in `model_tags`, the index that tag filters use.
async fn replace_tags<DB: Engine>(
    conn: &mut DB::Connection,
    model: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
{
    sqlx::query(DELETE_TAGS)
        .bind(model)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?;
    if tags.is_empty() {
        return Ok(());
    }
    let mut q = QueryBuilder::<DB>::new("INSERT INTO model_tags (model, key, value) ");
    q.push_values(tags, |mut row, (key, value)| {
        row.push_bind(model)
            .push_bind(key.as_str())
            .push_bind(value.as_str());
    });
    DB::build(&mut q).execute(conn).await.map_err(db_err)?;
    Ok(())
}

/// Inserts an evaluation set (`$1`..`$8`, in its columns' order).
/// Its text is shared with [`super::lite`].
pub(super) fn insert_evaluation_set_sql() -> String {
    format!(
        "INSERT INTO evaluation_sets ({EVALUATION_SET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
    )
}

/// One evaluation of a version by set and evaluator version.
/// Its text is shared with [`super::lite`].
pub(super) fn fetch_evaluation_sql() -> String {
    format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations
             WHERE model = $1 AND version = $2 AND set_name = $3 AND set_version = $4 AND evaluator_version = $5"
        )
}

/// Inserts an evaluation (`$1`..`$9`, in its columns' order).
/// Its text is shared with [`super::lite`].
pub(super) fn insert_evaluation_sql() -> String {
    format!(
        "INSERT INTO evaluations ({EVALUATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
    )
}

/// Inserts a transition request (`$1`..`$15`, in its columns' order).
/// Its text is shared with [`super::lite`].
pub(super) fn insert_request_sql() -> String {
    format!(
        "INSERT INTO transition_requests ({REQUEST_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
    )
}

/// A version's pending transition requests, by number.
/// Its text is shared with [`super::lite`].
pub(super) fn pending_requests_sql() -> String {
    format!(
        "SELECT {REQUEST_COLUMNS} FROM transition_requests
             WHERE model = $1 AND version = $2 AND status = 'PENDING' ORDER BY number"
    )
}

/// One event by sequence.
/// Its text is shared with [`super::lite`].
pub(super) fn fetch_event_sql() -> String {
    format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence = $1")
}

/// A request id taken by a concurrent request of the same method.
pub(super) fn request_id_in_use(method: &str) -> Error {
    Error::invalid(
        "request_id",
        format!(
            "this request id is being used by another {method} request at this moment; use a new request id for a new request"
        ),
    )
}

/// A stage move must change exactly its one version.
pub(super) fn moved_one(
    rows: u64,
    model: &str,
    version: i64,
    from: Stage,
    to: Stage,
) -> Result<()> {
    if rows != 1 {
        return Err(Error::Internal(format!(
            "{model}/{version} was not in {from} when moving it to {to}"
        )));
    }
    Ok(())
}
