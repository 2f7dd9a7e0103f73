//! The one implementation of [`Db`], for every backend that fulfils
//! [`SqlStore`]: reads on the read pool (and the version cache where the
//! backend keeps one), and handing a write to the backend. [`Reads`] holds
//! the reads that [`super::Tx`] offers too, so each is written once.
//!
//! It must not decide anything (that is [`crate::app`]) nor know which engine
//! it runs on: the SQL text that differs comes from [`Engine`]. Errors leave
//! only through [`db_err`] and [`json_err`].
//!
//! The `where` clauses say what `DB` must bind and read; Rust does not carry
//! such bounds from a trait to its users, so each generic `impl` (and
//! [`super::tx`]) says them again.

use std::marker::PhantomData;

use sqlx::{ColumnIndex, Executor, FromRow, IntoArguments, QueryBuilder, Row};

use crate::domain::{ConsumerRecord, DeadLetterRecord};
use crate::domain::{Evaluation, EvaluationSet, Event, EventFilter, Model, SetRef, Stage, Version};
use crate::domain::{LiveMetricRule, Readings, RequestStatus, StageSince, TransitionRequest};
use crate::error::Result;
use crate::store::consumers::ConsumerSql;
use crate::store::rows::{
    self, EVALUATION_COLUMNS, EVALUATION_SET_COLUMNS, EVENT_COLUMNS, EvaluationRow,
    EvaluationSetRow, EventRow, LIVE_READINGS, ModelRow, REQUEST_COLUMNS, ReadingsRow, RequestRow,
    StageSinceRow, VersionRow, convert,
};
use crate::store::sql::{Column, Engine, Param, SqlStore, db_err, json_err};
use crate::store::{ConsumerState, Db, ModelFilter, RequestCursor, Slots, WriteFuture};

// The statements' texts, each named after what it does: the sqlx
// statements below and the SQLite writer's ([`super::lite`]) run the same
// text.
pub(super) const PRODUCTION_SINCE: &str = r#"SELECT version, stage, stage_update_time FROM versions
               WHERE model = $1 AND stage = 'PRODUCTION'"#;
pub(super) const PASSED_OVER: &str = r#"SELECT version, stage, stage_update_time FROM versions
               WHERE model = $1 AND stage IN ('NONE', 'STAGING') AND version < $2 ORDER BY version"#;
pub(super) const BREACH_RECORDED: &str = r#"SELECT bad_since FROM live_metric_breaches
               WHERE model = $1 AND version = $2 AND metric = $3 AND bad_since = $4"#;

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

    fn now(&self) -> i64 {
        self.clock().now_micros()
    }

    async fn write<R, F>(&self, write: F) -> Result<R>
    where
        R: Send + 'static,
        F: for<'t> FnOnce(&'t mut S::Tx) -> WriteFuture<'t, R> + Send + 'static,
    {
        self.run_write(write).await
    }

    async fn fetch_model(&self, name: &str) -> Result<Option<Model>> {
        Reads::model(self.readers(), name).await
    }

    async fn fetch_version(&self, model: &str, version: i64) -> Result<Option<Version>> {
        let cache = self.version_cache();
        if let Some(v) = cache.and_then(|c| c.get(model, version)) {
            return Ok(Some(v));
        }
        let generation = cache.map(|c| c.generation(model));
        let found = Reads::version(self.readers(), model, version).await?;
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
        let mut q = QueryBuilder::<DB>::new(rows::model_select::<DB>());
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
            rows::version_select::<DB>()
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
        Reads::request(self.readers(), model, number).await
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
        Reads::evaluation_set(self.readers(), set).await
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
        Reads::production_since(self.readers(), model).await
    }

    async fn passed_over(&self, model: &str, below: i64) -> Result<Vec<StageSince>> {
        Reads::passed_over(self.readers(), model, below).await
    }

    async fn live_readings(
        &self,
        model: &str,
        version: i64,
        rule: &LiveMetricRule,
        since: i64,
        now: i64,
    ) -> Result<Readings> {
        Reads::live_readings(self.readers(), (model, version), rule, since, now).await
    }

    /// In one snapshot: a scan committed between reading the consumer's
    /// scanned sequence and its model places would count an event both as
    /// pending and as not yet scanned in its lag.
    async fn consumer_state(&self, name: &str, slots: Slots<'_>) -> Result<Option<ConsumerState>> {
        let mut tx = self
            .readers()
            .begin_with(DB::SNAPSHOT_READ)
            .await
            .map_err(db_err)?;
        let state = ConsumerSql::<DB>::load(&mut tx, name, slots).await?;
        tx.rollback().await.map_err(db_err)?;
        Ok(state)
    }

    async fn list_consumers(&self, after: &str, limit: usize) -> Result<Vec<ConsumerRecord>> {
        let mut conn = self.readers().acquire().await.map_err(db_err)?;
        ConsumerSql::<DB>::list(&mut conn, after, limit).await
    }

    async fn list_dead_letters(
        &self,
        name: &str,
        include_resolved: bool,
        after: u64,
        limit: usize,
    ) -> Result<Vec<DeadLetterRecord>> {
        let mut conn = self.readers().acquire().await.map_err(db_err)?;
        ConsumerSql::<DB>::dead_letters(&mut conn, name, include_resolved, after, limit).await
    }

    async fn breach_recorded(
        &self,
        model: &str,
        version: i64,
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        Reads::breach_recorded(self.readers(), (model, version), metric, bad_since).await
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

/// The reads that [`Db`] runs on the read pool and [`Tx`](super::Tx) runs
/// inside a write, written once over any executor.
pub struct Reads<DB>(PhantomData<DB>);

impl<DB> Reads<DB>
where
    DB: Engine,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Param<'q, DB>,
    i64: Column<DB>,
    f64: Column<DB>,
    ModelRow: for<'r> FromRow<'r, DB::Row>,
    VersionRow: for<'r> FromRow<'r, DB::Row>,
    RequestRow: for<'r> FromRow<'r, DB::Row>,
    EvaluationSetRow: for<'r> FromRow<'r, DB::Row>,
    StageSinceRow: for<'r> FromRow<'r, DB::Row>,
    ReadingsRow: for<'r> FromRow<'r, DB::Row>,
    (i64,): for<'r> FromRow<'r, DB::Row>,
{
    pub async fn model<'c>(
        ex: impl Executor<'c, Database = DB>,
        name: &str,
    ) -> Result<Option<Model>> {
        let sql = model_by_name_sql::<DB>();
        let row: Option<ModelRow> = sqlx::query_as(&sql)
            .bind(name)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(Model::try_from).transpose()
    }

    pub async fn version<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        version: i64,
    ) -> Result<Option<Version>> {
        let sql = version_by_number_sql::<DB>();
        let row: Option<VersionRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(version)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(Version::try_from).transpose()
    }

    pub async fn request<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        number: i64,
    ) -> Result<Option<TransitionRequest>> {
        let sql = request_by_number_sql();
        let row: Option<RequestRow> = sqlx::query_as(&sql)
            .bind(model)
            .bind(number)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(TransitionRequest::try_from).transpose()
    }

    pub async fn evaluation_set<'c>(
        ex: impl Executor<'c, Database = DB>,
        set: &SetRef,
    ) -> Result<Option<EvaluationSet>> {
        let sql = evaluation_set_by_ref_sql();
        let row: Option<EvaluationSetRow> = sqlx::query_as(&sql)
            .bind(set.name.as_str())
            .bind(set.version.as_str())
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(EvaluationSet::try_from).transpose()
    }

    pub async fn production_since<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
    ) -> Result<Option<StageSince>> {
        let row: Option<StageSinceRow> = sqlx::query_as(PRODUCTION_SINCE)
            .bind(model)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        row.map(StageSince::try_from).transpose()
    }

    pub async fn passed_over<'c>(
        ex: impl Executor<'c, Database = DB>,
        model: &str,
        below: i64,
    ) -> Result<Vec<StageSince>> {
        let rows: Vec<StageSinceRow> = sqlx::query_as(PASSED_OVER)
            .bind(model)
            .bind(below)
            .fetch_all(ex)
            .await
            .map_err(db_err)?;
        convert(rows)
    }

    pub async fn live_readings<'c>(
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

    pub async fn breach_recorded<'c>(
        ex: impl Executor<'c, Database = DB>,
        (model, version): (&str, i64),
        metric: &str,
        bad_since: i64,
    ) -> Result<bool> {
        let found: Option<i64> = sqlx::query_scalar(BREACH_RECORDED)
            .bind(model)
            .bind(version)
            .bind(metric)
            .bind(bad_since)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
        Ok(found.is_some())
    }
}

/// A model by name, with its aliases and production deployments.
/// Its text is shared with [`super::lite`].
pub(super) fn model_by_name_sql<DB: Engine>() -> String {
    format!("{} WHERE m.name = $1", rows::model_select::<DB>())
}

/// A version by model and number, with its aliases, evaluations and deployments.
/// Its text is shared with [`super::lite`].
pub(super) fn version_by_number_sql<DB: Engine>() -> String {
    format!(
        "{} WHERE v.model = $1 AND v.version = $2",
        rows::version_select::<DB>()
    )
}

/// A transition request by model and number.
/// Its text is shared with [`super::lite`].
pub(super) fn request_by_number_sql() -> String {
    format!("SELECT {REQUEST_COLUMNS} FROM transition_requests WHERE model = $1 AND number = $2")
}

/// An evaluation set by name and version.
/// Its text is shared with [`super::lite`].
pub(super) fn evaluation_set_by_ref_sql() -> String {
    format!("SELECT {EVALUATION_SET_COLUMNS} FROM evaluation_sets WHERE name = $1 AND version = $2")
}
