//! The statements of [`Db`] and [`Tx`], written once for SQLite and
//! PostgreSQL: one generic implementation of each trait, for every backend
//! that fulfils [`SqlStore`] and [`SqlTx`]. The SQL text that differs comes
//! from the backend's [`Engine`]; rows and their conversions from
//! [`super::rows`].
//!
//! It must not decide anything (that is [`super::ops`]) nor know which
//! engine it runs on. Errors leave only through [`db_err`] and [`json_err`]:
//! database text never reaches a caller.
//!
//! Each generic `impl` below repeats one `where` clause: "`DB` can run a
//! statement, and binds and reads the column types we use". Rust does not
//! carry such bounds from a trait to its users, so each `impl` says them.

use std::marker::PhantomData;

use sqlx::{ColumnIndex, Executor, FromRow, IntoArguments, QueryBuilder, Row};

use crate::domain::{
    Deployment, Evaluation, EvaluationSet, Event, EventFilter, LiveObservation, Model, SetRef,
    Stage, Version,
};
use crate::error::{Error, Result};
use crate::governance::{
    LiveMetricRule, Readings, RequestStatus, StageSince, StageStep, TransitionRequest,
};
use crate::store::rows::{
    EVALUATION_COLUMNS, EVALUATION_SET_COLUMNS, EVENT_COLUMNS, EvaluationRow, EvaluationSetRow,
    EventRow, LIVE_READINGS, MODEL_COLUMNS, ModelRow, REQUEST_COLUMNS, ReadingsRow, RequestRow,
    StageSinceRow, StageStepRow, StoredRequestRow, VERSION_COLUMNS, VersionRow,
};
use crate::store::sql::{Column, Engine, Param, SqlStore, SqlTx, db_err, json_err};
use crate::store::{Db, ModelFilter, RequestCursor, StoredRequest, Tx, WriteFuture};

/// Most events in one INSERT: 14 parameters each stays far below either
/// engine's limit on parameters per statement.
const EVENTS_PER_INSERT: usize = 256;

/// A model select with `DB`'s aggregates, before its WHERE.
fn model_select<DB: Engine>() -> String {
    format!(
        "{MODEL_COLUMNS} {} AS aliases, {} AS deployments FROM models m",
        DB::MODEL_ALIASES,
        DB::MODEL_DEPLOYMENTS
    )
}

/// A version select with `DB`'s aggregates, before its WHERE.
fn version_select<DB: Engine>() -> String {
    format!(
        "{VERSION_COLUMNS} {} AS aliases, {} AS evaluations, {} AS deployments FROM versions v",
        DB::VERSION_ALIASES,
        DB::VERSION_EVALUATIONS,
        DB::VERSION_DEPLOYMENTS
    )
}

/// Converts every row.
fn convert<R, T: TryFrom<R, Error = Error>>(rows: Vec<R>) -> Result<Vec<T>> {
    rows.into_iter().map(T::try_from).collect()
}

/// Statements more than one method runs: the reads that [`Db`] runs on the
/// read pool and [`Tx`] inside a write, and the tag index of a model.
struct Shared<DB>(PhantomData<DB>);

impl<DB> Shared<DB>
where
    DB: Engine,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB> + ColumnIndex<DB::Row>,
    usize: ColumnIndex<DB::Row>,
    i64: Column<DB>,
    f64: Column<DB>,
    bool: Column<DB>,
    String: Column<DB>,
    Vec<u8>: Column<DB>,
{
    async fn model<'c>(ex: impl Executor<'c, Database = DB>, name: &str) -> Result<Option<Model>> {
        let sql = format!("{} WHERE m.name = $1", model_select::<DB>());
        let row: Option<ModelRow> = sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(Model::try_from).transpose()
    }

    async fn version<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        version: i64,
    ) -> Result<Option<Version>> {
        let sql = format!(
            "{} WHERE v.model = $1 AND v.version = $2",
            version_select::<DB>()
        );
        let row: Option<VersionRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(version)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(Version::try_from).transpose()
    }

    async fn request<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        number: i64,
    ) -> Result<Option<TransitionRequest>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM transition_requests WHERE model = $1 AND number = $2"
        );
        let row: Option<RequestRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(number)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(TransitionRequest::try_from).transpose()
    }

    async fn evaluation_set<'c>(
        ex: impl Executor<'c, Database = DB>,
        set: &SetRef,
    ) -> Result<Option<EvaluationSet>> {
        let sql = format!(
            "SELECT {EVALUATION_SET_COLUMNS} FROM evaluation_sets WHERE name = $1 AND version = $2"
        );
        let row: Option<EvaluationSetRow> = sqlx::query_as(&sql)
            .bind(set.name.as_str())
            .bind(set.version.as_str())
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(EvaluationSet::try_from).transpose()
    }

    async fn production_since<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
    ) -> Result<Option<StageSince>> {
        let row: Option<StageSinceRow> = sqlx::query_as(
            r#"SELECT version, stage, stage_update_time FROM versions
               WHERE model = $1 AND stage = 'PRODUCTION'"#,
        )
        .bind(model)
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
        row.map(StageSince::try_from).transpose()
    }

    async fn passed_over<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        below: i64,
    ) -> Result<Vec<StageSince>> {
        let rows: Vec<StageSinceRow> = sqlx::query_as(
            r#"SELECT version, stage, stage_update_time FROM versions
               WHERE model = $1 AND stage IN ('NONE', 'STAGING') AND version < $2 ORDER BY version"#,
        )
        .bind(model)
        .bind(below)
        .fetch_all(ex)
        .await
        .map_err(db_err)?;
        convert(rows)
    }

    async fn live_readings<'c>(
        ex: impl Executor<'c, Database = DB>,
        (model, version): (&str, i64),
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        let sign: f64 = if rule.higher_is_better { 1.0 } else { -1.0 };
        let row: ReadingsRow = sqlx::query_as(LIVE_READINGS)
            .bind(model)
            .bind(version)
            .bind(rule.metric.as_str())
            .bind(since)
            .bind(now.saturating_sub(rule.window_micros))
            .bind(now)
            .bind(sign)
            .bind(rule.threshold * sign)
            .bind(since.saturating_sub(1))
            .fetch_one(ex)
            .await
            .map_err(db_err)?;
        Ok(row.into())
    }

    async fn breach_recorded<'c>(
        ex: impl Executor<'c, Database = DB>,
        (model, version): (&str, i64),
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(
            r#"SELECT bad_since FROM live_metric_breaches
               WHERE model = $1 AND version = $2 AND metric = $3 AND bad_since = $4"#,
        )
        .bind(model)
        .bind(version)
        .bind(metric)
        .bind(bad_since)
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
        Ok(found.is_some())
    }

    /// Replaces a model's rows in `model_tags`, the index that tag filters use.
    async fn replace_tags(
        conn: &mut DB::Connection,
        model: &str,
        tags: &std::collections::BTreeMap<String, String>,
    ) -> Result<()> {
        sqlx::query("DELETE FROM model_tags WHERE model = $1")
            .bind(model)
            .execute(&mut *conn)
            .await
            .map_err(db_err)?;
        for (k, v) in tags {
            sqlx::query("INSERT INTO model_tags (model, key, value) VALUES ($1, $2, $3)")
                .bind(model)
                .bind(k.as_str())
                .bind(v.as_str())
                .execute(&mut *conn)
                .await
                .map_err(db_err)?;
        }
        Ok(())
    }
}

impl<S, DB> Db for S
where
    S: SqlStore<Engine = DB>,
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
    type Tx = S::Tx;

    async fn write<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut S::Tx) -> WriteFuture<'t, R> + Send + 'static,
    {
        self.run_write(write).await
    }

    async fn fetch_model(&self, name: &str) -> Result<Option<Model>> {
        Shared::model(self.readers(), name).await
    }

    async fn fetch_version(&self, model: &str, version: i64) -> Result<Option<Version>> {
        let cache = self.version_cache();
        if let Some(v) = cache.and_then(|c| c.get(model, version)) {
            return Ok(Some(v));
        }
        let generation = cache.map(|c| c.generation(model));
        let found = Shared::version(self.readers(), model, version).await?;
        if let (Some(cache), Some(generation), Some(v)) = (cache, generation, &found) {
            cache.insert(generation, v.clone());
        }
        Ok(found)
    }

    async fn alias_target(&self, model: &str, alias: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT version FROM aliases WHERE model = $1 AND alias = $2")
            .bind(model)
            .bind(alias)
            .fetch_optional(self.readers())
            .await
            .map_err(db_err)
    }

    async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Model>> {
        let mut q = QueryBuilder::<DB>::new(model_select::<DB>());
        q.push(" WHERE 1 = 1");
        if let Some(after) = after {
            q.push(" AND m.name > ").push_bind(after);
        }
        if let Some(name) = &filter.name_equals {
            q.push(" AND m.name = ").push_bind(name.as_str());
        }
        if let Some(prefix) = &filter.name_prefix {
            // '_' and '%' are LIKE wildcards; escape them so a prefix is literal.
            let escaped = prefix
                .replace('\\', r"\\")
                .replace('_', r"\_")
                .replace('%', r"\%");
            q.push(" AND m.name LIKE ")
                .push_bind(format!("{escaped}%"))
                .push(r" ESCAPE '\'");
        }
        for (key, value) in &filter.tag_equals {
            q.push(" AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = ")
                .push_bind(key.as_str())
                .push(" AND t.value = ")
                .push_bind(value.as_str())
                .push(")");
        }
        for key in &filter.tag_present {
            q.push(" AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = ")
                .push_bind(key.as_str())
                .push(")");
        }
        q.push(" ORDER BY m.name LIMIT ").push_bind(limit as i64);
        let rows: Vec<ModelRow> = DB::build(&mut q)
            .try_map(|row| ModelRow::from_row(&row))
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn list_versions(
        &self,
        model: &str,
        stage: Option<Stage>,
        after: i64,
        limit: usize,
    ) -> Result<Vec<Version>> {
        let sql = format!(
            "{} WHERE v.model = $1 AND v.version > $2 AND (CAST($3 AS TEXT) IS NULL OR v.stage = $3)
             ORDER BY v.version LIMIT $4",
            version_select::<DB>()
        );
        let rows: Vec<VersionRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(after)
            .bind(stage.map(|s| s.as_str()))
            .bind(limit as i64)
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let mut q = QueryBuilder::<DB>::new("");
        // The whole page as one JSON row where that is cheaper: one
        // hand-off from the driver's thread instead of one per event.
        if let Some(head) = DB::EVENT_PAGE_AS_JSON {
            q.push(head);
        }
        q.push(format_args!(
            "SELECT {EVENT_COLUMNS} FROM events WHERE sequence > "
        ));
        // Sequences are stored as i64: a cursor beyond i64::MAX means
        // "after everything", never a wrapped negative number.
        q.push_bind(i64::try_from(after).unwrap_or(i64::MAX));
        if let Some(upto) = upto {
            q.push(" AND sequence <= ")
                .push_bind(i64::try_from(upto).unwrap_or(i64::MAX));
        }
        push_in(
            &mut q,
            " AND model IN (",
            filter.models.iter().map(String::as_str),
        );
        if filter.version != 0 {
            q.push(" AND version = ").push_bind(filter.version);
        }
        if let Some(actor) = &filter.actor {
            q.push(" AND actor = ").push_bind(actor.as_str());
        }
        push_in(
            &mut q,
            " AND type IN (",
            filter.kinds.iter().map(|k| k.as_str()),
        );
        push_in(
            &mut q,
            " AND to_stage IN (",
            filter.to_stages.iter().map(|s| s.as_str()),
        );
        if let Some(start) = filter.start_time {
            q.push(" AND occur_time >= ").push_bind(start);
        }
        if let Some(end) = filter.end_time {
            q.push(" AND occur_time < ").push_bind(end);
        }
        q.push(" ORDER BY sequence LIMIT ").push_bind(limit as i64);
        if DB::EVENT_PAGE_AS_JSON.is_none() {
            let rows: Vec<EventRow> = DB::build(&mut q)
                .try_map(|row| EventRow::from_row(&row))
                .fetch_all(self.readers())
                .await
                .map_err(db_err)?;
            return convert(rows);
        }
        q.push(")");
        let page: Option<String> = DB::build(&mut q)
            .try_map(|row| row.try_get(0))
            .fetch_one(self.readers())
            .await
            .map_err(db_err)?;
        let Some(page) = page else {
            return Ok(Vec::new());
        };
        let rows: Vec<EventRow> = serde_json::from_str(&page).map_err(json_err)?;
        let mut events: Vec<Event> = convert(rows)?;
        events.sort_by_key(|e| e.sequence);
        Ok(events)
    }

    async fn fetch_request(&self, model: &str, number: i64) -> Result<Option<TransitionRequest>> {
        Shared::request(self.readers(), model, number).await
    }

    async fn list_requests(
        &self,
        model: Option<&str>,
        status: Option<RequestStatus>,
        after: Option<RequestCursor>,
        limit: usize,
    ) -> Result<Vec<TransitionRequest>> {
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT {REQUEST_COLUMNS} FROM transition_requests WHERE 1 = 1"
        ));
        if let Some(m) = model {
            q.push(" AND model = ").push_bind(m);
        }
        if let Some(s) = status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        // Newest first: an inbox wants the latest request on top. Ties of
        // create_time fall back to model and number, so the order is total
        // and a page cursor never skips or repeats.
        if let Some(RequestCursor {
            create_time,
            model,
            number,
        }) = after
        {
            q.push(" AND (create_time < ").push_bind(create_time);
            q.push(" OR (create_time = ").push_bind(create_time);
            q.push(" AND (model < ").push_bind(model.clone());
            q.push(" OR (model = ").push_bind(model);
            q.push(" AND number < ").push_bind(number).push("))))");
        }
        q.push(" ORDER BY create_time DESC, model DESC, number DESC LIMIT ")
            .push_bind(limit as i64);
        let rows: Vec<RequestRow> = DB::build(&mut q)
            .try_map(|row| RequestRow::from_row(&row))
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(self.readers())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn fetch_evaluation_set(&self, set: &SetRef) -> Result<Option<EvaluationSet>> {
        Shared::evaluation_set(self.readers(), set).await
    }

    async fn list_evaluation_sets(
        &self,
        name: Option<&str>,
        after: Option<&SetRef>,
        limit: usize,
    ) -> Result<Vec<EvaluationSet>> {
        let sql = format!(
            "SELECT {EVALUATION_SET_COLUMNS} FROM evaluation_sets
             WHERE (CAST($1 AS TEXT) IS NULL OR name = $1)
               AND (CAST($2 AS TEXT) IS NULL OR name > $2 OR (name = $2 AND version > $3))
             ORDER BY name, version LIMIT $4"
        );
        let rows: Vec<EvaluationSetRow> = sqlx::query_as(&sql)
            .bind(name)
            .bind(after.map(|a| a.name.as_str()))
            .bind(after.map(|a| a.version.as_str()).unwrap_or(""))
            .bind(limit as i64)
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn evaluations_of(&self, model: &str, versions: &[i64]) -> Result<Vec<Evaluation>> {
        if versions.is_empty() {
            return Ok(Vec::new());
        }
        let mut q = QueryBuilder::<DB>::new(format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE model = "
        ));
        q.push_bind(model);
        push_in(&mut q, " AND version IN (", versions.iter().copied());
        q.push(" ORDER BY version, create_time, set_name, set_version, evaluator_version");
        let rows: Vec<EvaluationRow> = DB::build(&mut q)
            .try_map(|row| EvaluationRow::from_row(&row))
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn list_evaluations(
        &self,
        model: &str,
        set: &SetRef,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> Result<Vec<Evaluation>> {
        let (after_version, after_evaluator) = after.unwrap_or((0, String::new()));
        let sql = format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations
             WHERE model = $1 AND set_name = $2 AND set_version = $3
               AND (version > $4 OR (version = $4 AND evaluator_version > $5))
             ORDER BY version, evaluator_version LIMIT $6"
        );
        let rows: Vec<EvaluationRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(set.name.as_str())
            .bind(set.version.as_str())
            .bind(after_version)
            .bind(after_evaluator)
            .bind(limit as i64)
            .fetch_all(self.readers())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn production_since(&self, model: &str) -> Result<Option<StageSince>> {
        Shared::production_since(self.readers(), model).await
    }

    async fn passed_over(&self, model: &str, below: i64) -> Result<Vec<StageSince>> {
        Shared::passed_over(self.readers(), model, below).await
    }

    async fn live_readings(
        &self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        Shared::live_readings(self.readers(), (model, version), rule, since, now).await
    }

    async fn breach_recorded(
        &self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        Shared::breach_recorded(self.readers(), (model, version), metric, bad_since).await
    }
}

/// Pushes `head` and one bound parameter per value, closed by `)`; nothing
/// when there are no values (an empty list matches everything).
fn push_in<'a, DB, T>(q: &mut QueryBuilder<'a, DB>, head: &str, values: impl Iterator<Item = T>)
where
    DB: sqlx::Database,
    T: Param<'a, DB>,
{
    let mut values = values.peekable();
    if values.peek().is_none() {
        return;
    }
    q.push(head);
    let mut list = q.separated(", ");
    for value in values {
        list.push_bind(value);
    }
    list.push_unseparated(")");
}

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
    async fn lock_model(&mut self, name: &str) -> Result<Option<Model>> {
        if let Some(lock) = DB::LOCK_MODEL {
            sqlx::query(lock)
                .bind(name)
                .execute(self.conn())
                .await
                .map_err(db_err)?;
        }
        Shared::model(self.conn(), name).await
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
        Shared::model(self.conn(), name).await
    }

    async fn fetch_version(&mut self, model: &str, version: i64) -> Result<Option<Version>> {
        Shared::version(self.conn(), model, version).await
    }

    async fn production_version(&mut self, model: &str) -> Result<Option<i64>> {
        sqlx::query_scalar("SELECT version FROM versions WHERE model = $1 AND stage = 'PRODUCTION'")
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
        let row: Option<StoredRequestRow> = sqlx::query_as(
            r#"SELECT fingerprint, model, version, response FROM idempotency
               WHERE method = $1 AND request_id = $2"#,
        )
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
        let inserted = sqlx::query(
            r#"INSERT INTO idempotency (method, request_id, fingerprint, model, version, create_time, response)
               VALUES ($1, $2, $3, $4, $5, $6, $7)"#,
        )
        .bind(method)
        .bind(request_id)
        .bind(stored.fingerprint.as_str())
        .bind(stored.model.as_str())
        .bind(stored.version)
        .bind(crate::domain::now_micros())
        .bind(stored.response.as_deref())
        .execute(self.conn())
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::invalid(
                "request_id",
                format!(
                    "this request id is being used by another {method} request at this moment; use a new request id for a new request"
                ),
            )),
            other => other.map(|_| ()).map_err(db_err),
        }
    }

    async fn insert_model(&mut self, model: &Model) -> Result<bool> {
        let inserted = sqlx::query(
            r#"INSERT INTO models (name, description, tags, revision, latest_version, created_by, create_time, update_time, policy)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"#,
        )
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
        Shared::replace_tags(self.conn(), &model.name, &model.tags).await?;
        Ok(true)
    }

    async fn update_model(&mut self, model: &Model) -> Result<()> {
        sqlx::query(
            r#"UPDATE models SET description = $1, tags = $2, policy = $3, revision = revision + 1, update_time = $4
               WHERE name = $5"#,
        )
        .bind(model.description.as_str())
        .bind(serde_json::to_string(&model.tags).map_err(json_err)?)
        .bind(serde_json::to_vec(&model.policy).map_err(json_err)?)
        .bind(model.update_time)
        .bind(model.name.as_str())
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Shared::replace_tags(self.conn(), &model.name, &model.tags).await
    }

    async fn insert_version(&mut self, v: &Version) -> Result<()> {
        sqlx::query(
            r#"INSERT INTO versions (model, version, artifact_uri, artifact_digest, source, training_metrics,
                   tags, description, stage, revision, created_by, create_time, update_time, stage_update_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)"#,
        )
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
        sqlx::query(
            "UPDATE models SET latest_version = $1, revision = revision + 1, update_time = $2 WHERE name = $3",
        )
        .bind(v.version)
        .bind(v.create_time)
        .bind(v.model.as_str())
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
        let moved = sqlx::query(
            r#"UPDATE versions SET stage = $1, revision = revision + 1, update_time = $2, stage_update_time = $2
               WHERE model = $3 AND version = $4 AND stage = $5"#,
        )
        .bind(to.as_str())
        .bind(now)
        .bind(model)
        .bind(version)
        .bind(from.as_str())
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        if DB::rows_affected(&moved) != 1 {
            return Err(Error::Internal(format!(
                "{model}/{version} was not in {from} when moving it to {to}"
            )));
        }
        Ok(())
    }

    async fn touch_model(&mut self, model: &str, now: i64) -> Result<()> {
        sqlx::query("UPDATE models SET revision = revision + 1, update_time = $1 WHERE name = $2")
            .bind(now)
            .bind(model)
            .execute(self.conn())
            .await
            .map_err(db_err)?;
        Ok(())
    }

    async fn touch_version(&mut self, model: &str, version: i64, now: i64) -> Result<()> {
        sqlx::query(
            "UPDATE versions SET revision = revision + 1, update_time = $1 WHERE model = $2 AND version = $3",
        )
        .bind(now)
        .bind(model)
        .bind(version)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn upsert_alias(&mut self, model: &str, alias: &str, version: i64) -> Result<()> {
        sqlx::query(
            r#"INSERT INTO aliases (model, alias, version) VALUES ($1, $2, $3)
               ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version"#,
        )
        .bind(model)
        .bind(alias)
        .bind(version)
        .execute(self.conn())
        .await
        .map_err(db_err)?;
        Ok(())
    }

    async fn remove_alias(&mut self, model: &str, alias: &str) -> Result<()> {
        sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2")
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
        Shared::evaluation_set(self.conn(), set).await
    }

    async fn insert_evaluation_set(&mut self, set: &EvaluationSet) -> Result<()> {
        let sql = format!(
            "INSERT INTO evaluation_sets ({EVALUATION_SET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        );
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
        let sql = format!(
            "SELECT {EVALUATION_COLUMNS} FROM evaluations
             WHERE model = $1 AND version = $2 AND set_name = $3 AND set_version = $4 AND evaluator_version = $5"
        );
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
        let sql = format!(
            "INSERT INTO evaluations ({EVALUATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
        );
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
        sqlx::query_scalar(
            "SELECT COALESCE(MAX(number), 0) + 1 FROM transition_requests WHERE model = $1",
        )
        .bind(model)
        .fetch_one(self.conn())
        .await
        .map_err(db_err)
    }

    async fn insert_request(&mut self, r: &TransitionRequest) -> Result<()> {
        let sql = format!(
            "INSERT INTO transition_requests ({REQUEST_COLUMNS})
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)"
        );
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
        sqlx::query(
            r#"UPDATE transition_requests SET approvals = $1, status = $2, update_time = $3,
                   resolved_by = $4, resolution_comment = $5
               WHERE model = $6 AND number = $7"#,
        )
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
        Shared::request(self.conn(), model, number).await
    }

    async fn pending_requests_of(
        &mut self,
        model: &str,
        version: i64,
    ) -> Result<Vec<TransitionRequest>> {
        let sql = format!(
            "SELECT {REQUEST_COLUMNS} FROM transition_requests
             WHERE model = $1 AND version = $2 AND status = 'PENDING' ORDER BY number"
        );
        let rows: Vec<RequestRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(version)
            .fetch_all(self.conn())
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    async fn stage_history(&mut self, model: &str) -> Result<Vec<StageStep>> {
        let rows: Vec<StageStepRow> = sqlx::query_as(
            r#"SELECT version, to_stage, cause FROM events
               WHERE model = $1 AND type = 'STAGE_CHANGED' ORDER BY sequence"#,
        )
        .bind(model)
        .fetch_all(self.conn())
        .await
        .map_err(db_err)?;
        convert(rows)
    }

    async fn production_since(&mut self, model: &str) -> Result<Option<StageSince>> {
        Shared::production_since(self.conn(), model).await
    }

    async fn passed_over(&mut self, model: &str, below: i64) -> Result<Vec<StageSince>> {
        Shared::passed_over(self.conn(), model, below).await
    }

    async fn live_readings(
        &mut self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        Shared::live_readings(self.conn(), (model, version), rule, since, now).await
    }

    async fn breach_recorded(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        Shared::breach_recorded(self.conn(), (model, version), metric, bad_since).await
    }

    async fn record_breach(
        &mut self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
        now: i64,
    ) -> Result<()> {
        sqlx::query(
            r#"INSERT INTO live_metric_breaches (model, version, metric, bad_since, report_time)
               VALUES ($1, $2, $3, $4, $5)"#,
        )
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
        sqlx::query(
            r#"INSERT INTO deployments (model, version, environment, status, endpoint, message, reported_by, report_time)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
               ON CONFLICT (model, version, environment) DO UPDATE SET status = excluded.status,
                   endpoint = excluded.endpoint, message = excluded.message,
                   reported_by = excluded.reported_by, report_time = excluded.report_time"#,
        )
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
        sqlx::query(
            r#"INSERT INTO live_metrics (model, version, metric, observe_time, value)
               VALUES ($1, $2, $3, $4, $5)
               ON CONFLICT (model, version, metric, observe_time) DO UPDATE SET value = excluded.value"#,
        )
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
        let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence = $1");
        let row: Option<EventRow> = sqlx::query_as(&sql)
            .bind(sequence)
            .fetch_optional(self.conn())
            .await
            .map_err(db_err)?;
        row.map(Event::try_from).transpose()
    }

    async fn commit(self) -> Result<()> {
        SqlTx::commit(self).await
    }
}
