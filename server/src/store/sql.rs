//! The SQL of every statement, written once with `$n` parameters (which both
//! SQLite and PostgreSQL accept) and instantiated per backend by
//! [`sql_backend!`]. What differs between the two is passed in: the
//! aggregate-to-JSON selects, how a model row is locked, how a key lock and
//! the commit notification are taken. Errors map to domain errors here and
//! nowhere else: database text never reaches a caller.

use crate::domain::{Cause, Event, EventKind, Stage};
use crate::error::Error;

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

/// `$first, $first+1, …` for `n` parameters.
pub fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value bound to a dynamically built query.
pub enum Bind {
    /// An integer.
    Int(i64),
    /// Text.
    Text(String),
}

/// The SELECT list of a model, before the backend's alias aggregate.
pub const MODEL_COLUMNS: &str = r#"
SELECT m.name, m.description, m.tags, m.policy, m.revision, m.latest_version, m.created_by, m.create_time, m.update_time,
       COALESCE((SELECT v.version FROM versions v WHERE v.model = m.name AND v.stage = 'PRODUCTION'), 0)
           AS production_version,"#;

/// The SELECT list of a version, before the backend's alias aggregate.
pub const VERSION_COLUMNS: &str = r#"
SELECT v.model, v.version, v.artifact_uri, v.artifact_digest, v.source, v.training_metrics, v.tags,
       v.description, v.stage, v.revision, v.created_by, v.create_time, v.update_time, v.stage_update_time,"#;

/// Most events in one INSERT: 14 parameters each stays far below either
/// engine's limit on parameters per statement.
pub const EVENTS_PER_INSERT: usize = 256;

/// The columns of `events`, in the order the INSERT binds them.
pub const EVENT_COLUMNS: &str = "sequence, type, model, version, from_stage, to_stage, cause, actor, comment, \
     occur_time, details, transition_request_id, prev_hash, hash";

/// One evaluation as a version select aggregates it into JSON.
#[derive(serde::Deserialize)]
pub struct EvaluationJson {
    pub set_name: String,
    pub set_version: String,
    pub evaluator_version: String,
    pub metrics: std::collections::BTreeMap<String, f64>,
    pub report_uri: String,
    pub created_by: String,
    pub create_time: i64,
}

/// One deployment as a model or version select aggregates it into JSON.
#[derive(serde::Deserialize)]
pub struct DeploymentJson {
    pub version: i64,
    pub environment: String,
    pub status: crate::domain::DeploymentStatus,
    pub endpoint: String,
    pub message: String,
    pub reported_by: String,
    pub report_time: i64,
}

impl DeploymentJson {
    /// The domain deployment of `model`.
    pub fn into_deployment(self, model: &str) -> crate::domain::Deployment {
        crate::domain::Deployment {
            model: model.to_owned(),
            version: self.version,
            environment: self.environment,
            status: self.status,
            endpoint: self.endpoint,
            message: self.message,
            reported_by: self.reported_by,
            report_time: self.report_time,
        }
    }
}

/// The live monitor's readings of one metric in one statement (see
/// [`crate::domain::Readings`]). Parameters: $1 model, $2 version,
/// $3 metric, $4 since (entry into production), $5 now − window, $6 now,
/// $7 the sign that makes "good" mean `value * $7 >= $8`, $8 threshold × $7,
/// $9 since − 1. Every subquery walks the live_metrics primary key.
pub const LIVE_READINGS: &str = r#"
SELECT
  (SELECT observe_time FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $5 ORDER BY observe_time DESC LIMIT 1) AS anchor_time,
  (SELECT value FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $5 ORDER BY observe_time DESC LIMIT 1) AS anchor_value,
  (SELECT observe_time FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6 ORDER BY observe_time DESC LIMIT 1) AS latest_time,
  (SELECT value FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6 ORDER BY observe_time DESC LIMIT 1) AS latest_value,
  (SELECT COUNT(*) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time > $5 AND observe_time <= $6) AS in_window,
  (SELECT COUNT(*) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time > $5 AND observe_time <= $6 AND value * $7 >= $8) AS good_in_window,
  (SELECT MIN(observe_time) FROM live_metrics WHERE model = $1 AND version = $2 AND metric = $3
     AND observe_time >= $4 AND observe_time <= $6
     AND observe_time > COALESCE((SELECT MAX(observe_time) FROM live_metrics
         WHERE model = $1 AND version = $2 AND metric = $3
           AND observe_time >= $4 AND observe_time <= $6 AND value * $7 >= $8), $9)) AS bad_since
"#;

/// One event as a page read in one row aggregates it into JSON.
#[derive(serde::Deserialize)]
pub struct EventJson {
    sequence: i64,
    r#type: String,
    model: String,
    version: i64,
    from_stage: Option<String>,
    to_stage: Option<String>,
    cause: Option<String>,
    actor: String,
    comment: String,
    occur_time: i64,
    details: serde_json::Value,
    transition_request_id: String,
    prev_hash: String,
    hash: String,
}

impl EventJson {
    /// The domain event, refusing values the schema does not allow.
    pub fn into_event(self) -> Result<Event, Error> {
        let stage = |s: Option<String>| -> Result<Option<Stage>, Error> {
            s.map(|s| {
                Stage::from_db(&s).ok_or_else(|| Error::Internal(format!("unknown stage {s:?}")))
            })
            .transpose()
        };
        Ok(Event {
            sequence: self.sequence as u64,
            kind: EventKind::from_db(&self.r#type)
                .ok_or_else(|| Error::Internal(format!("unknown event type {:?}", self.r#type)))?,
            model: self.model,
            version: self.version,
            from_stage: stage(self.from_stage)?,
            to_stage: stage(self.to_stage)?,
            cause: self
                .cause
                .map(|c| {
                    Cause::from_db(&c)
                        .ok_or_else(|| Error::Internal(format!("unknown cause {c:?}")))
                })
                .transpose()?,
            actor: self.actor,
            comment: self.comment,
            occur_time: self.occur_time,
            details: self.details,
            transition_request_id: self.transition_request_id,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// The columns of a transition request, in insert order.
pub const REQUEST_COLUMNS: &str = "model, number, version, from_stage, to_stage, rollback, requester, comment, \
     gate_results, approvals, status, create_time, update_time, resolved_by, resolution_comment";

/// The columns of an evaluation set, in insert order.
pub const EVALUATION_SET_COLUMNS: &str =
    "name, version, uri, digest, metrics, description, created_by, create_time";

/// The columns of an evaluation, in insert order.
pub const EVALUATION_COLUMNS: &str = "model, version, set_name, set_version, evaluator_version, \
     metrics, report_uri, created_by, create_time";

/// Implements [`super::Db`] for `$store` and [`super::Tx`] for `$tx` (a
/// newtype over `sqlx::Transaction<'static, $db>`).
///
/// `$store` must have `fn readers(&self) -> &sqlx::Pool<$db>`,
/// `fn version_cache(&self) -> Option<&VersionCache>` and
/// `async fn run_write(&self, write) -> Result<R>` (see [`super::Db::write`]);
/// `$tx` must have `fn note_event(&mut self, &Event)` (called for each event
/// appended) and
/// `async fn head(&mut self)` and `async fn set_head(&mut self,
/// sequence, hash)`, which read and move the end of the log in the way the
/// backend keeps it.
macro_rules! sql_backend {
    (
        store: $store:ty,
        tx: $tx:ident,
        db: $db:ty,
        row: $row:ty,
        model_aliases: $model_aliases:expr,
        version_aliases: $version_aliases:expr,
        version_evaluations: $version_evaluations:expr,
        model_deployments: $model_deployments:expr,
        version_deployments: $version_deployments:expr,
        events_as_one_row: $events_as_one_row:expr,
        lock_model: $lock_model:expr,
        lock_key: $lock_key:expr $(,)?
    ) => {
        use std::collections::BTreeMap;

        use sqlx::Row as _;

        use $crate::domain::{
            Cause, Deployment, Evaluation, EvaluationSet, Event, EventFilter, EventKind,
            LiveObservation, Model, SetRef, Stage, Version,
        };
        use $crate::error::{Error, Result};
        use $crate::store::sql::{
            Bind, DeploymentJson, EVALUATION_COLUMNS, EVALUATION_SET_COLUMNS, EVENT_COLUMNS,
            EVENTS_PER_INSERT,
            EvaluationJson, EventJson, LIVE_READINGS, MODEL_COLUMNS, VERSION_COLUMNS, db_err,
            json_err, placeholders,
        };
        use $crate::store::{Db, ModelFilter, RequestCursor, StoredRequest, Tx};
        use $crate::store::sql::REQUEST_COLUMNS;
        use $crate::domain::{
            LiveMetricRule, Observation, Readings, RequestStatus, StageSince, StageStep,
            TransitionRequest,
        };

        fn model_select() -> String {
            format!(
                "{MODEL_COLUMNS} {} AS aliases, {} AS deployments FROM models m",
                $model_aliases, $model_deployments
            )
        }

        fn version_select() -> String {
            format!(
                "{VERSION_COLUMNS} {} AS aliases, {} AS evaluations, {} AS deployments FROM versions v",
                $version_aliases, $version_evaluations, $version_deployments
            )
        }

        fn deployments_col(row: &$row, model: &str) -> Result<Vec<Deployment>> {
            Ok(json_col::<Vec<DeploymentJson>>(row, "deployments")?
                .into_iter()
                .map(|d| d.into_deployment(model))
                .collect())
        }


        fn json_col<T: serde::de::DeserializeOwned>(row: &$row, col: &str) -> Result<T> {
            let text: String = row.try_get(col).map_err(db_err)?;
            serde_json::from_str(&text).map_err(json_err)
        }

        fn model_from_row(row: &$row) -> Result<Model> {
            let name: String = row.try_get("name").map_err(db_err)?;
            Ok(Model {
                deployments: deployments_col(row, &name)?,
                name,
                description: row.try_get("description").map_err(db_err)?,
                tags: json_col(row, "tags")?,
                revision: row.try_get("revision").map_err(db_err)?,
                latest_version: row.try_get("latest_version").map_err(db_err)?,
                production_version: row.try_get("production_version").map_err(db_err)?,
                aliases: json_col::<Option<BTreeMap<String, i64>>>(row, "aliases")?
                    .unwrap_or_default(),
                policy: match row.try_get::<Option<Vec<u8>>, _>("policy").map_err(db_err)? {
                    Some(bytes) => serde_json::from_slice(&bytes).map_err(json_err)?,
                    None => Default::default(),
                },
                created_by: row.try_get("created_by").map_err(db_err)?,
                create_time: row.try_get("create_time").map_err(db_err)?,
                update_time: row.try_get("update_time").map_err(db_err)?,
            })
        }

        fn version_from_row(row: &$row) -> Result<Version> {
            let stage: String = row.try_get("stage").map_err(db_err)?;
            let model: String = row.try_get("model").map_err(db_err)?;
            let version: i64 = row.try_get("version").map_err(db_err)?;
            Ok(Version {
                model: model.clone(),
                version,
                artifact_uri: row.try_get("artifact_uri").map_err(db_err)?,
                artifact_digest: row.try_get("artifact_digest").map_err(db_err)?,
                source: json_col(row, "source")?,
                training_metrics: json_col(row, "training_metrics")?,
                tags: json_col(row, "tags")?,
                description: row.try_get("description").map_err(db_err)?,
                stage: Stage::from_db(&stage).ok_or_else(|| {
                    Error::Internal(format!("unknown stage {stage:?} in database"))
                })?,
                aliases: json_col::<Option<Vec<String>>>(row, "aliases")?.unwrap_or_default(),
                revision: row.try_get("revision").map_err(db_err)?,
                created_by: row.try_get("created_by").map_err(db_err)?,
                create_time: row.try_get("create_time").map_err(db_err)?,
                update_time: row.try_get("update_time").map_err(db_err)?,
                stage_update_time: row.try_get("stage_update_time").map_err(db_err)?,
                deployments: deployments_col(row, &model)?,
                evaluations: json_col::<Vec<EvaluationJson>>(row, "evaluations")?
                    .into_iter()
                    .map(|e| Evaluation {
                        model: model.clone(),
                        version,
                        set: SetRef {
                            name: e.set_name,
                            version: e.set_version,
                        },
                        evaluator_version: e.evaluator_version,
                        metrics: e.metrics,
                        report_uri: e.report_uri,
                        created_by: e.created_by,
                        create_time: e.create_time,
                    })
                    .collect(),
            })
        }

        fn event_from_row(row: &$row) -> Result<Event> {
            let kind: String = row.try_get("type").map_err(db_err)?;
            let stage = |col: &str| -> Result<Option<Stage>> {
                let s: Option<String> = row.try_get(col).map_err(db_err)?;
                s.map(|s| {
                    Stage::from_db(&s)
                        .ok_or_else(|| Error::Internal(format!("unknown stage {s:?}")))
                })
                .transpose()
            };
            let cause: Option<String> = row.try_get("cause").map_err(db_err)?;
            let details: String = row.try_get("details").map_err(db_err)?;
            Ok(Event {
                sequence: row.try_get::<i64, _>("sequence").map_err(db_err)? as u64,
                kind: EventKind::from_db(&kind)
                    .ok_or_else(|| Error::Internal(format!("unknown event type {kind:?}")))?,
                model: row.try_get("model").map_err(db_err)?,
                version: row.try_get("version").map_err(db_err)?,
                from_stage: stage("from_stage")?,
                to_stage: stage("to_stage")?,
                cause: cause
                    .map(|c| {
                        Cause::from_db(&c)
                            .ok_or_else(|| Error::Internal(format!("unknown cause {c:?}")))
                    })
                    .transpose()?,
                actor: row.try_get("actor").map_err(db_err)?,
                comment: row.try_get("comment").map_err(db_err)?,
                occur_time: row.try_get("occur_time").map_err(db_err)?,
                details: serde_json::from_str(&details).map_err(json_err)?,
                transition_request_id: row.try_get("transition_request_id").map_err(db_err)?,
                prev_hash: row.try_get("prev_hash").map_err(db_err)?,
                hash: row.try_get("hash").map_err(db_err)?,
            })
        }

        fn evaluation_set_from_row(row: &$row) -> Result<EvaluationSet> {
            Ok(EvaluationSet {
                id: SetRef {
                    name: row.try_get("name").map_err(db_err)?,
                    version: row.try_get("version").map_err(db_err)?,
                },
                uri: row.try_get("uri").map_err(db_err)?,
                digest: row.try_get("digest").map_err(db_err)?,
                metrics: json_col(row, "metrics")?,
                description: row.try_get("description").map_err(db_err)?,
                created_by: row.try_get("created_by").map_err(db_err)?,
                create_time: row.try_get("create_time").map_err(db_err)?,
            })
        }

        fn evaluation_from_row(row: &$row) -> Result<Evaluation> {
            Ok(Evaluation {
                model: row.try_get("model").map_err(db_err)?,
                version: row.try_get("version").map_err(db_err)?,
                set: SetRef {
                    name: row.try_get("set_name").map_err(db_err)?,
                    version: row.try_get("set_version").map_err(db_err)?,
                },
                evaluator_version: row.try_get("evaluator_version").map_err(db_err)?,
                metrics: json_col(row, "metrics")?,
                report_uri: row.try_get("report_uri").map_err(db_err)?,
                created_by: row.try_get("created_by").map_err(db_err)?,
                create_time: row.try_get("create_time").map_err(db_err)?,
            })
        }

        async fn fetch_evaluation_set_with<'c, E>(ex: E, set: &SetRef) -> Result<Option<EvaluationSet>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let sql = format!(
                "SELECT {EVALUATION_SET_COLUMNS} FROM evaluation_sets WHERE name = $1 AND version = $2"
            );
            let row = sqlx::query(&sql)
                .bind(&set.name)
                .bind(&set.version)
                .fetch_optional(ex)
                .await
                .map_err(db_err)?;
            row.as_ref().map(evaluation_set_from_row).transpose()
        }

        async fn fetch_model_with<'c, E>(ex: E, name: &str) -> Result<Option<Model>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let sql = format!("{} WHERE m.name = $1", model_select());
            let row = sqlx::query(&sql)
                .bind(name)
                .fetch_optional(ex)
                .await
                .map_err(db_err)?;
            row.as_ref().map(model_from_row).transpose()
        }

        async fn fetch_version_with<'c, E>(
            ex: E,
            model: &str,
            version: i64,
        ) -> Result<Option<Version>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let sql = format!("{} WHERE v.model = $1 AND v.version = $2", version_select());
            let row = sqlx::query(&sql)
                .bind(model)
                .bind(version)
                .fetch_optional(ex)
                .await
                .map_err(db_err)?;
            row.as_ref().map(version_from_row).transpose()
        }

        fn request_from_row(row: &$row) -> Result<TransitionRequest> {
            let stage = |col: &str| -> Result<Stage> {
                let s: String = row.try_get(col).map_err(db_err)?;
                Stage::from_db(&s).ok_or_else(|| Error::Internal(format!("unknown stage {s:?}")))
            };
            let status: String = row.try_get("status").map_err(db_err)?;
            Ok(TransitionRequest {
                model: row.try_get("model").map_err(db_err)?,
                number: row.try_get("number").map_err(db_err)?,
                version: row.try_get("version").map_err(db_err)?,
                from_stage: stage("from_stage")?,
                to_stage: stage("to_stage")?,
                rollback: row.try_get("rollback").map_err(db_err)?,
                requester: row.try_get("requester").map_err(db_err)?,
                comment: row.try_get("comment").map_err(db_err)?,
                gate_results: json_col(row, "gate_results")?,
                approvals: json_col(row, "approvals")?,
                status: RequestStatus::from_db(&status).ok_or_else(|| {
                    Error::Internal(format!("unknown request status {status:?}"))
                })?,
                create_time: row.try_get("create_time").map_err(db_err)?,
                update_time: row.try_get("update_time").map_err(db_err)?,
                resolved_by: row.try_get("resolved_by").map_err(db_err)?,
                resolution_comment: row.try_get("resolution_comment").map_err(db_err)?,
            })
        }

        async fn fetch_request_with<'c, E>(ex: E, model: &str, number: i64) -> Result<Option<TransitionRequest>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let sql = format!("SELECT {REQUEST_COLUMNS} FROM transition_requests WHERE model = $1 AND number = $2");
            let row = sqlx::query(&sql)
                .bind(model)
                .bind(number)
                .fetch_optional(ex)
                .await
                .map_err(db_err)?;
            row.as_ref().map(request_from_row).transpose()
        }

        fn stage_since_from_row(row: &$row) -> Result<StageSince> {
            let stage: String = row.try_get("stage").map_err(db_err)?;
            Ok(StageSince {
                version: row.try_get("version").map_err(db_err)?,
                stage: Stage::from_db(&stage)
                    .ok_or_else(|| Error::Internal(format!("unknown stage {stage:?}")))?,
                since: row.try_get("stage_update_time").map_err(db_err)?,
            })
        }

        async fn production_since_with<'c, E>(ex: E, model: &str) -> Result<Option<StageSince>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let row = sqlx::query(
                "SELECT version, stage, stage_update_time FROM versions WHERE model = $1 AND stage = 'PRODUCTION'",
            )
            .bind(model)
            .fetch_optional(ex)
            .await
            .map_err(db_err)?;
            row.as_ref().map(stage_since_from_row).transpose()
        }

        async fn passed_over_with<'c, E>(ex: E, model: &str, below: i64) -> Result<Vec<StageSince>>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let rows = sqlx::query(
                "SELECT version, stage, stage_update_time FROM versions
                 WHERE model = $1 AND stage IN ('NONE', 'STAGING') AND version < $2 ORDER BY version",
            )
            .bind(model)
            .bind(below)
            .fetch_all(ex)
            .await
            .map_err(db_err)?;
            rows.iter().map(stage_since_from_row).collect()
        }

        async fn live_readings_with<'c, E>(
            ex: E,
            model: &str,
            version: i64,
            rule: &LiveMetricRule,
            since: i64,
            now: i64,
        ) -> Result<Readings>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let sign: f64 = if rule.higher_is_better { 1.0 } else { -1.0 };
            let row = sqlx::query(LIVE_READINGS)
                .bind(model)
                .bind(version)
                .bind(&rule.metric)
                .bind(since)
                .bind(now.saturating_sub(rule.window_micros))
                .bind(now)
                .bind(sign)
                .bind(rule.threshold * sign)
                .bind(since.saturating_sub(1))
                .fetch_one(ex)
                .await
                .map_err(db_err)?;
            let observation = |time: &str, value: &str| -> Result<Option<Observation>> {
                let time: Option<i64> = row.try_get(time).map_err(db_err)?;
                let value: Option<f64> = row.try_get(value).map_err(db_err)?;
                Ok(time.zip(value).map(|(time, value)| Observation { time, value }))
            };
            Ok(Readings {
                anchor: observation("anchor_time", "anchor_value")?,
                in_window: row.try_get::<i64, _>("in_window").map_err(db_err)? as u64,
                good_in_window: row.try_get::<i64, _>("good_in_window").map_err(db_err)? as u64,
                latest: observation("latest_time", "latest_value")?,
                bad_since: row.try_get("bad_since").map_err(db_err)?,
            })
        }

        async fn breach_recorded_with<'c, E>(
            ex: E,
            model: &str,
            version: i64,
            metric: &str,
            bad_since: i64,
        ) -> Result<bool>
        where
            E: sqlx::Executor<'c, Database = $db>,
        {
            let found: Option<i64> = sqlx::query_scalar(
                "SELECT bad_since FROM live_metric_breaches
                 WHERE model = $1 AND version = $2 AND metric = $3 AND bad_since = $4",
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

        fn bind_all<'q>(
            mut query: sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>>,
            binds: Vec<Bind>,
        ) -> sqlx::query::Query<'q, $db, <$db as sqlx::Database>::Arguments<'q>> {
            for b in binds {
                query = match b {
                    Bind::Int(i) => query.bind(i),
                    Bind::Text(s) => query.bind(s),
                };
            }
            query
        }

        impl Db for $store {
            type Tx = $tx;

            async fn write<R, F>(&self, write: F) -> Result<R>
            where
                R: Send + 'static,
                F: for<'t> FnOnce(&'t mut $tx) -> $crate::store::WriteFuture<'t, R> + Send + 'static,
            {
                self.run_write(write).await
            }

            async fn fetch_model(&self, name: &str) -> Result<Option<Model>> {
                fetch_model_with(self.readers(), name).await
            }

            async fn fetch_version(&self, model: &str, version: i64) -> Result<Option<Version>> {
                let cache = self.version_cache();
                if let Some(v) = cache.and_then(|c| c.get(model, version)) {
                    return Ok(Some(v));
                }
                let generation = cache.map(|c| c.generation(model));
                let found = fetch_version_with(self.readers(), model, version).await?;
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
                let mut sql = format!("{} WHERE 1 = 1", model_select());
                let mut binds: Vec<Bind> = Vec::new();
                let param = |binds: &mut Vec<Bind>, b: Bind| {
                    binds.push(b);
                    format!("${}", binds.len())
                };
                if let Some(after) = after {
                    let p = param(&mut binds, Bind::Text(after.to_owned()));
                    sql.push_str(&format!(" AND m.name > {p}"));
                }
                if let Some(name) = &filter.name_equals {
                    let p = param(&mut binds, Bind::Text(name.clone()));
                    sql.push_str(&format!(" AND m.name = {p}"));
                }
                if let Some(prefix) = &filter.name_prefix {
                    // '_' and '%' are LIKE wildcards; escape them so a prefix is literal.
                    let escaped = prefix
                        .replace('\\', r"\\")
                        .replace('_', r"\_")
                        .replace('%', r"\%");
                    let p = param(&mut binds, Bind::Text(format!("{escaped}%")));
                    sql.push_str(&format!(r" AND m.name LIKE {p} ESCAPE '\'"));
                }
                for (key, value) in &filter.tag_equals {
                    let k = param(&mut binds, Bind::Text(key.clone()));
                    let v = param(&mut binds, Bind::Text(value.clone()));
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = {k} AND t.value = {v})"
                    ));
                }
                for key in &filter.tag_present {
                    let k = param(&mut binds, Bind::Text(key.clone()));
                    sql.push_str(&format!(
                        " AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = {k})"
                    ));
                }
                let l = param(&mut binds, Bind::Int(limit as i64));
                sql.push_str(&format!(" ORDER BY m.name LIMIT {l}"));
                let rows = bind_all(sqlx::query(&sql), binds)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(model_from_row).collect()
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
                    version_select()
                );
                let rows = sqlx::query(&sql)
                    .bind(model)
                    .bind(after)
                    .bind(stage.map(|s| s.as_str()))
                    .bind(limit as i64)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(version_from_row).collect()
            }

            async fn events(
                &self,
                filter: &EventFilter,
                after: u64,
                upto: Option<u64>,
                limit: usize,
            ) -> Result<Vec<Event>> {
                let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence > $1");
                // Sequences are stored as i64: a cursor beyond i64::MAX means
                // "after everything", never a wrapped negative number.
                let mut binds = vec![Bind::Int(i64::try_from(after).unwrap_or(i64::MAX))];
                if let Some(upto) = upto {
                    binds.push(Bind::Int(i64::try_from(upto).unwrap_or(i64::MAX)));
                    sql.push_str(&format!(" AND sequence <= ${}", binds.len()));
                }
                if !filter.models.is_empty() {
                    sql.push_str(&format!(
                        " AND model IN ({})",
                        placeholders(binds.len() + 1, filter.models.len())
                    ));
                    binds.extend(filter.models.iter().cloned().map(Bind::Text));
                }
                if filter.version != 0 {
                    binds.push(Bind::Int(filter.version));
                    sql.push_str(&format!(" AND version = ${}", binds.len()));
                }
                if let Some(actor) = &filter.actor {
                    binds.push(Bind::Text(actor.clone()));
                    sql.push_str(&format!(" AND actor = ${}", binds.len()));
                }
                if !filter.kinds.is_empty() {
                    sql.push_str(&format!(
                        " AND type IN ({})",
                        placeholders(binds.len() + 1, filter.kinds.len())
                    ));
                    binds.extend(
                        filter
                            .kinds
                            .iter()
                            .map(|k| Bind::Text(k.as_str().to_owned())),
                    );
                }
                if !filter.to_stages.is_empty() {
                    sql.push_str(&format!(
                        " AND to_stage IN ({})",
                        placeholders(binds.len() + 1, filter.to_stages.len())
                    ));
                    binds.extend(
                        filter
                            .to_stages
                            .iter()
                            .map(|s| Bind::Text(s.as_str().to_owned())),
                    );
                }
                if let Some(start) = filter.start_time {
                    binds.push(Bind::Int(start));
                    sql.push_str(&format!(" AND occur_time >= ${}", binds.len()));
                }
                if let Some(end) = filter.end_time {
                    binds.push(Bind::Int(end));
                    sql.push_str(&format!(" AND occur_time < ${}", binds.len()));
                }
                binds.push(Bind::Int(limit as i64));
                sql.push_str(&format!(" ORDER BY sequence LIMIT ${}", binds.len()));
                let one_row: Option<&str> = $events_as_one_row;
                if let Some(wrapper) = one_row {
                    // The whole page as one JSON row: one hand-off from the
                    // driver's thread instead of one per event.
                    let sql = wrapper.replace("{page}", &sql);
                    let page: Option<String> = bind_all(sqlx::query(&sql), binds)
                        .fetch_one(self.readers())
                        .await
                        .map_err(db_err)?
                        .try_get(0)
                        .map_err(db_err)?;
                    let Some(page) = page else {
                        return Ok(Vec::new());
                    };
                    let mut events = serde_json::from_str::<Vec<EventJson>>(&page)
                        .map_err(json_err)?
                        .into_iter()
                        .map(EventJson::into_event)
                        .collect::<Result<Vec<_>>>()?;
                    events.sort_by_key(|e| e.sequence);
                    return Ok(events);
                }
                let rows = bind_all(sqlx::query(&sql), binds)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(event_from_row).collect()
            }

            async fn fetch_request(&self, model: &str, number: i64) -> Result<Option<TransitionRequest>> {
                fetch_request_with(self.readers(), model, number).await
            }

            async fn list_requests(
                &self,
                model: Option<&str>,
                status: Option<RequestStatus>,
                after: Option<RequestCursor>,
                limit: usize,
            ) -> Result<Vec<TransitionRequest>> {
                let mut sql = format!("SELECT {REQUEST_COLUMNS} FROM transition_requests WHERE 1 = 1");
                let mut binds = Vec::new();
                if let Some(m) = model {
                    binds.push(Bind::Text(m.to_owned()));
                    sql.push_str(&format!(" AND model = ${}", binds.len()));
                }
                if let Some(s) = status {
                    binds.push(Bind::Text(s.as_str().to_owned()));
                    sql.push_str(&format!(" AND status = ${}", binds.len()));
                }
                // Newest first: an inbox wants the latest request on top.
                // Ties of create_time fall back to model and number, so the
                // order is total and a page cursor never skips or repeats.
                if let Some(RequestCursor { create_time, model, number }) = after {
                    binds.push(Bind::Int(create_time));
                    binds.push(Bind::Text(model));
                    binds.push(Bind::Int(number));
                    let (t, m, n) = (binds.len() - 2, binds.len() - 1, binds.len());
                    sql.push_str(&format!(
                        " AND (create_time < ${t} OR (create_time = ${t} AND (model < ${m} OR (model = ${m} AND number < ${n}))))"
                    ));
                }
                binds.push(Bind::Int(limit as i64));
                sql.push_str(&format!(
                    " ORDER BY create_time DESC, model DESC, number DESC LIMIT ${}",
                    binds.len()
                ));
                let rows = bind_all(sqlx::query(&sql), binds)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(request_from_row).collect()
            }

            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1")
                    .execute(self.readers())
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn fetch_evaluation_set(&self, set: &SetRef) -> Result<Option<EvaluationSet>> {
                fetch_evaluation_set_with(self.readers(), set).await
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
                let rows = sqlx::query(&sql)
                    .bind(name)
                    .bind(after.map(|a| a.name.as_str()))
                    .bind(after.map(|a| a.version.as_str()).unwrap_or(""))
                    .bind(limit as i64)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(evaluation_set_from_row).collect()
            }

            async fn evaluations_of(&self, model: &str, versions: &[i64]) -> Result<Vec<Evaluation>> {
                if versions.is_empty() {
                    return Ok(Vec::new());
                }
                let sql = format!(
                    "SELECT {EVALUATION_COLUMNS} FROM evaluations WHERE model = $1 AND version IN ({})
                     ORDER BY version, create_time, set_name, set_version, evaluator_version",
                    placeholders(2, versions.len())
                );
                let mut query = sqlx::query(&sql).bind(model);
                for v in versions {
                    query = query.bind(*v);
                }
                let rows = query.fetch_all(self.readers()).await.map_err(db_err)?;
                rows.iter().map(evaluation_from_row).collect()
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
                let rows = sqlx::query(&sql)
                    .bind(model)
                    .bind(&set.name)
                    .bind(&set.version)
                    .bind(after_version)
                    .bind(after_evaluator)
                    .bind(limit as i64)
                    .fetch_all(self.readers())
                    .await
                    .map_err(db_err)?;
                rows.iter().map(evaluation_from_row).collect()
            }

            async fn production_since(&self, model: &str) -> Result<Option<StageSince>> {
                production_since_with(self.readers(), model).await
            }

            async fn passed_over(&self, model: &str, below: i64) -> Result<Vec<StageSince>> {
                passed_over_with(self.readers(), model, below).await
            }

            async fn live_readings(
                &self,
                model: &str,
                version: i64,
                rule: &LiveMetricRule,
                since: i64,
                now: i64,
            ) -> Result<Readings> {
                live_readings_with(self.readers(), model, version, rule, since, now).await
            }

            async fn breach_recorded(
                &self,
                model: &str,
                version: i64,
                metric: &str,
                bad_since: i64,
            ) -> Result<bool> {
                breach_recorded_with(self.readers(), model, version, metric, bad_since).await
            }
        }

        impl Tx for $tx {
            async fn lock_model(&mut self, name: &str) -> Result<Option<Model>> {
                let lock: Option<&str> = $lock_model;
                if let Some(sql) = lock {
                    sqlx::query(sql)
                        .bind(name)
                        .execute(&mut *self.0)
                        .await
                        .map_err(db_err)?;
                }
                fetch_model_with(&mut *self.0, name).await
            }

            async fn lock_key(&mut self, key: &str) -> Result<()> {
                let lock: Option<&str> = $lock_key;
                if let Some(sql) = lock {
                    sqlx::query(sql)
                        .bind(key)
                        .execute(&mut *self.0)
                        .await
                        .map_err(db_err)?;
                }
                Ok(())
            }

            async fn fetch_model(&mut self, name: &str) -> Result<Option<Model>> {
                fetch_model_with(&mut *self.0, name).await
            }

            async fn fetch_version(&mut self, model: &str, version: i64) -> Result<Option<Version>> {
                fetch_version_with(&mut *self.0, model, version).await
            }

            async fn production_version(&mut self, model: &str) -> Result<Option<i64>> {
                sqlx::query_scalar(
                    "SELECT version FROM versions WHERE model = $1 AND stage = 'PRODUCTION'",
                )
                .bind(model)
                .fetch_optional(&mut *self.0)
                .await
                .map_err(db_err)
            }

            async fn find_request(
                &mut self,
                method: &str,
                request_id: &str,
            ) -> Result<Option<StoredRequest>> {
                let row = sqlx::query(
                    "SELECT fingerprint, model, version, response FROM idempotency WHERE method = $1 AND request_id = $2",
                )
                .bind(method)
                .bind(request_id)
                .fetch_optional(&mut *self.0)
                .await
                .map_err(db_err)?;
                row.map(|row| {
                    Ok(StoredRequest {
                        fingerprint: row.try_get("fingerprint").map_err(db_err)?,
                        model: row.try_get("model").map_err(db_err)?,
                        version: row.try_get("version").map_err(db_err)?,
                        response: row.try_get("response").map_err(db_err)?,
                    })
                })
                .transpose()
            }

            async fn remember_request(
                &mut self,
                method: &str,
                request_id: &str,
                stored: &StoredRequest,
            ) -> Result<()> {
                let inserted = sqlx::query(
                    "INSERT INTO idempotency (method, request_id, fingerprint, model, version, create_time, response)
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                )
                .bind(method)
                .bind(request_id)
                .bind(&stored.fingerprint)
                .bind(&stored.model)
                .bind(stored.version)
                .bind($crate::domain::now_micros())
                .bind(stored.response.as_deref())
                .execute(&mut *self.0)
                .await;
                match inserted {
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => Err(Error::invalid(
                        "request_id",
                        format!("this request id is being used by another {method} request at this moment; use a new request id for a new request"),
                    )),
                    other => other.map(|_| ()).map_err(db_err),
                }
            }

            async fn insert_model(&mut self, model: &Model) -> Result<bool> {
                let inserted = sqlx::query(
                    "INSERT INTO models (name, description, tags, revision, latest_version, created_by, create_time, update_time, policy)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&model.name)
                .bind(&model.description)
                .bind(serde_json::to_string(&model.tags).map_err(json_err)?)
                .bind(model.revision)
                .bind(model.latest_version)
                .bind(&model.created_by)
                .bind(model.create_time)
                .bind(model.update_time)
                .bind(serde_json::to_vec(&model.policy).map_err(json_err)?)
                .execute(&mut *self.0)
                .await;
                match inserted {
                    Err(sqlx::Error::Database(e)) if e.is_unique_violation() => return Ok(false),
                    other => {
                        other.map_err(db_err)?;
                    }
                }
                self.replace_tags(&model.name, &model.tags).await?;
                Ok(true)
            }

            async fn update_model(&mut self, model: &Model) -> Result<()> {
                sqlx::query(
                    "UPDATE models SET description = $1, tags = $2, policy = $3, revision = revision + 1, update_time = $4
                     WHERE name = $5",
                )
                .bind(&model.description)
                .bind(serde_json::to_string(&model.tags).map_err(json_err)?)
                .bind(serde_json::to_vec(&model.policy).map_err(json_err)?)
                .bind(model.update_time)
                .bind(&model.name)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                self.replace_tags(&model.name, &model.tags).await
            }

            async fn insert_version(&mut self, v: &Version) -> Result<()> {
                sqlx::query(
                    "INSERT INTO versions (model, version, artifact_uri, artifact_digest, source, training_metrics,
                         tags, description, stage, revision, created_by, create_time, update_time, stage_update_time)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
                )
                .bind(&v.model)
                .bind(v.version)
                .bind(&v.artifact_uri)
                .bind(&v.artifact_digest)
                .bind(serde_json::to_string(&v.source).map_err(json_err)?)
                .bind(serde_json::to_string(&v.training_metrics).map_err(json_err)?)
                .bind(serde_json::to_string(&v.tags).map_err(json_err)?)
                .bind(&v.description)
                .bind(v.stage.as_str())
                .bind(v.revision)
                .bind(&v.created_by)
                .bind(v.create_time)
                .bind(v.update_time)
                .bind(v.stage_update_time)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                sqlx::query(
                    "UPDATE models SET latest_version = $1, revision = revision + 1, update_time = $2 WHERE name = $3",
                )
                .bind(v.version)
                .bind(v.create_time)
                .bind(&v.model)
                .execute(&mut *self.0)
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
                    "UPDATE versions SET stage = $1, revision = revision + 1, update_time = $2, stage_update_time = $2
                     WHERE model = $3 AND version = $4 AND stage = $5",
                )
                .bind(to.as_str())
                .bind(now)
                .bind(model)
                .bind(version)
                .bind(from.as_str())
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                if moved.rows_affected() != 1 {
                    return Err(Error::Internal(format!(
                        "{model}/{version} was not in {from} when moving it to {to}"
                    )));
                }
                Ok(())
            }

            async fn touch_model(&mut self, model: &str, now: i64) -> Result<()> {
                sqlx::query(
                    "UPDATE models SET revision = revision + 1, update_time = $1 WHERE name = $2",
                )
                .bind(now)
                .bind(model)
                .execute(&mut *self.0)
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
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_alias(&mut self, model: &str, alias: &str, version: i64) -> Result<()> {
                sqlx::query(
                    "INSERT INTO aliases (model, alias, version) VALUES ($1, $2, $3)
                     ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
                )
                .bind(model)
                .bind(alias)
                .bind(version)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn remove_alias(&mut self, model: &str, alias: &str) -> Result<()> {
                sqlx::query("DELETE FROM aliases WHERE model = $1 AND alias = $2")
                    .bind(model)
                    .bind(alias)
                    .execute(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn log_head(&mut self) -> Result<(u64, String)> {
                self.head().await
            }

            async fn insert_events(&mut self, events: &[Event]) -> Result<()> {
                for chunk in events.chunks(EVENTS_PER_INSERT) {
                    let rows: Vec<String> = (0..chunk.len())
                        .map(|i| {
                            let p: Vec<String> =
                                (1..=14).map(|c| format!("${}", i * 14 + c)).collect();
                            format!("({})", p.join(", "))
                        })
                        .collect();
                    let sql = format!("INSERT INTO events ({EVENT_COLUMNS}) VALUES {}", rows.join(", "));
                    let mut query = sqlx::query(&sql);
                    for e in chunk {
                        self.note_event(e);
                        query = query
                            .bind(e.sequence as i64)
                            .bind(e.kind.as_str())
                            .bind(&e.model)
                            .bind(e.version)
                            .bind(e.from_stage.map(|s| s.as_str()))
                            .bind(e.to_stage.map(|s| s.as_str()))
                            .bind(e.cause.map(|c| c.as_str()))
                            .bind(&e.actor)
                            .bind(&e.comment)
                            .bind(e.occur_time)
                            .bind(e.details.to_string())
                            .bind(&e.transition_request_id)
                            .bind(&e.prev_hash)
                            .bind(&e.hash);
                    }
                    query.execute(&mut *self.0).await.map_err(db_err)?;
                }
                Ok(())
            }

            async fn set_log_head(&mut self, sequence: u64, hash: &str) -> Result<()> {
                self.set_head(sequence, hash).await
            }

            async fn fetch_evaluation_set(&mut self, set: &SetRef) -> Result<Option<EvaluationSet>> {
                fetch_evaluation_set_with(&mut *self.0, set).await
            }

            async fn insert_evaluation_set(&mut self, set: &EvaluationSet) -> Result<()> {
                let sql = format!(
                    "INSERT INTO evaluation_sets ({EVALUATION_SET_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                );
                sqlx::query(&sql)
                    .bind(&set.id.name)
                    .bind(&set.id.version)
                    .bind(&set.uri)
                    .bind(&set.digest)
                    .bind(serde_json::to_string(&set.metrics).map_err(json_err)?)
                    .bind(&set.description)
                    .bind(&set.created_by)
                    .bind(set.create_time)
                    .execute(&mut *self.0)
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
                let row = sqlx::query(&sql)
                    .bind(model)
                    .bind(version)
                    .bind(&set.name)
                    .bind(&set.version)
                    .bind(evaluator_version)
                    .fetch_optional(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(evaluation_from_row).transpose()
            }

            async fn insert_evaluation(&mut self, e: &Evaluation) -> Result<()> {
                let sql = format!(
                    "INSERT INTO evaluations ({EVALUATION_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
                );
                sqlx::query(&sql)
                    .bind(&e.model)
                    .bind(e.version)
                    .bind(&e.set.name)
                    .bind(&e.set.version)
                    .bind(&e.evaluator_version)
                    .bind(serde_json::to_string(&e.metrics).map_err(json_err)?)
                    .bind(&e.report_uri)
                    .bind(&e.created_by)
                    .bind(e.create_time)
                    .execute(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn next_request_number(&mut self, model: &str) -> Result<i64> {
                let n: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(number), 0) + 1 FROM transition_requests WHERE model = $1",
                )
                .bind(model)
                .fetch_one(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(n)
            }

            async fn insert_request(&mut self, r: &TransitionRequest) -> Result<()> {
                let sql = format!(
                    "INSERT INTO transition_requests ({REQUEST_COLUMNS}) VALUES ({})",
                    placeholders(1, 15)
                );
                sqlx::query(&sql)
                    .bind(&r.model)
                    .bind(r.number)
                    .bind(r.version)
                    .bind(r.from_stage.as_str())
                    .bind(r.to_stage.as_str())
                    .bind(r.rollback)
                    .bind(&r.requester)
                    .bind(&r.comment)
                    .bind(serde_json::to_string(&r.gate_results).map_err(json_err)?)
                    .bind(serde_json::to_string(&r.approvals).map_err(json_err)?)
                    .bind(r.status.as_str())
                    .bind(r.create_time)
                    .bind(r.update_time)
                    .bind(&r.resolved_by)
                    .bind(&r.resolution_comment)
                    .execute(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                Ok(())
            }

            async fn update_request(&mut self, r: &TransitionRequest) -> Result<()> {
                sqlx::query(
                    "UPDATE transition_requests SET approvals = $1, status = $2, update_time = $3,
                         resolved_by = $4, resolution_comment = $5
                     WHERE model = $6 AND number = $7",
                )
                .bind(serde_json::to_string(&r.approvals).map_err(json_err)?)
                .bind(r.status.as_str())
                .bind(r.update_time)
                .bind(&r.resolved_by)
                .bind(&r.resolution_comment)
                .bind(&r.model)
                .bind(r.number)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn fetch_request(&mut self, model: &str, number: i64) -> Result<Option<TransitionRequest>> {
                fetch_request_with(&mut *self.0, model, number).await
            }

            async fn pending_requests_of(&mut self, model: &str, version: i64) -> Result<Vec<TransitionRequest>> {
                let sql = format!(
                    "SELECT {REQUEST_COLUMNS} FROM transition_requests
                     WHERE model = $1 AND version = $2 AND status = 'PENDING' ORDER BY number"
                );
                let rows = sqlx::query(&sql)
                    .bind(model)
                    .bind(version)
                    .fetch_all(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                rows.iter().map(request_from_row).collect()
            }

            async fn stage_history(&mut self, model: &str) -> Result<Vec<StageStep>> {
                let rows = sqlx::query(
                    "SELECT version, to_stage, cause FROM events
                     WHERE model = $1 AND type = 'STAGE_CHANGED' ORDER BY sequence",
                )
                .bind(model)
                .fetch_all(&mut *self.0)
                .await
                .map_err(db_err)?;
                rows.iter()
                    .map(|row| {
                        let to: Option<String> = row.try_get("to_stage").map_err(db_err)?;
                        let cause: Option<String> = row.try_get("cause").map_err(db_err)?;
                        Ok(StageStep {
                            version: row.try_get("version").map_err(db_err)?,
                            to: to
                                .as_deref()
                                .and_then(Stage::from_db)
                                .ok_or_else(|| Error::Internal("stage change without a stage".into()))?,
                            cause: cause.as_deref().and_then(Cause::from_db),
                        })
                    })
                    .collect()
            }

            async fn production_since(&mut self, model: &str) -> Result<Option<StageSince>> {
                production_since_with(&mut *self.0, model).await
            }

            async fn passed_over(&mut self, model: &str, below: i64) -> Result<Vec<StageSince>> {
                passed_over_with(&mut *self.0, model, below).await
            }

            async fn live_readings(
                &mut self,
                model: &str,
                version: i64,
                rule: &LiveMetricRule,
                since: i64,
                now: i64,
            ) -> Result<Readings> {
                live_readings_with(&mut *self.0, model, version, rule, since, now).await
            }

            async fn breach_recorded(
                &mut self,
                model: &str,
                version: i64,
                metric: &str,
                bad_since: i64,
            ) -> Result<bool> {
                breach_recorded_with(&mut *self.0, model, version, metric, bad_since).await
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
                    "INSERT INTO live_metric_breaches (model, version, metric, bad_since, report_time)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(model)
                .bind(version)
                .bind(metric)
                .bind(bad_since)
                .bind(now)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_deployment(&mut self, d: &Deployment) -> Result<()> {
                sqlx::query(
                    "INSERT INTO deployments (model, version, environment, status, endpoint, message, reported_by, report_time)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (model, version, environment) DO UPDATE SET status = excluded.status,
                         endpoint = excluded.endpoint, message = excluded.message,
                         reported_by = excluded.reported_by, report_time = excluded.report_time",
                )
                .bind(&d.model)
                .bind(d.version)
                .bind(&d.environment)
                .bind(d.status.as_str())
                .bind(&d.endpoint)
                .bind(&d.message)
                .bind(&d.reported_by)
                .bind(d.report_time)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn upsert_observation(&mut self, o: &LiveObservation) -> Result<()> {
                sqlx::query(
                    "INSERT INTO live_metrics (model, version, metric, observe_time, value)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (model, version, metric, observe_time) DO UPDATE SET value = excluded.value",
                )
                .bind(o.model.as_str())
                .bind(o.version)
                .bind(&o.metric)
                .bind(o.observe_time)
                .bind(o.value)
                .execute(&mut *self.0)
                .await
                .map_err(db_err)?;
                Ok(())
            }

            async fn fetch_event(&mut self, sequence: u64) -> Result<Option<Event>> {
                let sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE sequence = $1");
                let Ok(sequence) = i64::try_from(sequence) else {
                    return Ok(None);
                };
                let row = sqlx::query(&sql)
                    .bind(sequence)
                    .fetch_optional(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                row.as_ref().map(event_from_row).transpose()
            }

            async fn commit(self) -> Result<()> {
                self.0.commit().await.map_err(db_err)
            }
        }

        impl $tx {
            async fn replace_tags(
                &mut self,
                model: &str,
                tags: &BTreeMap<String, String>,
            ) -> Result<()> {
                sqlx::query("DELETE FROM model_tags WHERE model = $1")
                    .bind(model)
                    .execute(&mut *self.0)
                    .await
                    .map_err(db_err)?;
                for (k, v) in tags {
                    sqlx::query("INSERT INTO model_tags (model, key, value) VALUES ($1, $2, $3)")
                        .bind(model)
                        .bind(k)
                        .bind(v)
                        .execute(&mut *self.0)
                        .await
                        .map_err(db_err)?;
                }
                Ok(())
            }
        }
    };
}
