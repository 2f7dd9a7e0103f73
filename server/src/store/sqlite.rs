//! The SQLite backend: one writer connection (`BEGIN IMMEDIATE`, so no caller
//! ever sees `database is locked`) and a pool of read-only connections, over a
//! WAL database with `synchronous=FULL` so an acknowledged write survives a
//! crash or power loss.
//!
//! Sequence numbers are gap-free by construction: the single writer assigns
//! `max + 1` inside its transaction and commits in that order, and watchers
//! are woken only after the commit.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::time::Duration;

use serde_json::json;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};
use tokio::sync::watch;

use super::{ChainReport, ModelFilter, VersionRef};
use crate::audit::{ChainVerifier, GENESIS_HASH, event_hash};
use crate::domain::{
    Actor, AliasName, Cause, Event, EventFilter, EventKind, Model, ModelUpdate, Name, NewEvent,
    NewModel, NewVersion, Stage, StageChange, Version, etag, now_micros,
};
use crate::error::{Error, Result};
use crate::lifecycle;

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
    latest: std::sync::Arc<watch::Sender<u64>>,
}

fn db_err(e: sqlx::Error) -> Error {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
            Error::Unavailable(e.to_string())
        }
        other => Error::Internal(other.to_string()),
    }
}

fn json_err(e: serde_json::Error) -> Error {
    Error::Internal(format!("corrupt JSON column: {e}"))
}

fn model_not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Model",
        name: name.to_owned(),
    }
}

fn version_not_found(model: &str, which: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.ModelVersion",
        name: format!("{model}/{which}"),
    }
}

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

        let latest: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(sequence), 0) FROM events")
            .fetch_one(&readers)
            .await
            .map_err(db_err)?;
        let (tx, rx) = watch::channel(latest as u64);
        Ok((
            SqliteStore {
                writer,
                readers,
                latest: std::sync::Arc::new(tx),
            },
            rx,
        ))
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.readers)
            .await
            .map_err(db_err)?;
        Ok(())
    }

    pub async fn close(&self) {
        self.readers.close().await;
        self.writer.close().await;
    }

    async fn begin(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        self.writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_err)
    }

    /// Commits and wakes watchers.
    async fn commit(
        &self,
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        last_sequence: Option<u64>,
    ) -> Result<()> {
        tx.commit().await.map_err(db_err)?;
        if let Some(seq) = last_sequence {
            self.latest.send_if_modified(|cur| {
                if seq > *cur {
                    *cur = seq;
                    true
                } else {
                    false
                }
            });
        }
        Ok(())
    }

    // ---- models -------------------------------------------------------

    pub async fn create_model(&self, new: NewModel, actor: Actor) -> Result<Model> {
        let mut tx = self.begin().await?;
        let fingerprint = crate::audit::sha256_hex(
            json!({"name": new.name.as_str(), "description": new.description, "tags": new.tags})
                .to_string()
                .as_bytes(),
        );
        if let Some(request_id) = &new.request_id
            && let Some((model, _)) =
                find_request(&mut tx, "CreateModel", request_id, &fingerprint).await?
        {
            let m = fetch_model(&mut *tx, &model).await?;
            return m.ok_or_else(|| model_not_found(&model));
        }
        let now = now_micros();
        let inserted = sqlx::query(
            r#"INSERT INTO models (name, description, tags, revision, latest_version, created_by, create_time, update_time)
               VALUES (?, ?, ?, 1, 0, ?, ?, ?)"#,
        )
        .bind(new.name.as_str())
        .bind(&new.description)
        .bind(serde_json::to_string(&new.tags).map_err(json_err)?)
        .bind(&actor.0)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(Error::AlreadyExists {
                    kind: "modelreg.v1.Model",
                    name: new.name.to_string(),
                });
            }
            other => {
                other.map_err(db_err)?;
            }
        }
        replace_tags(&mut tx, new.name.as_str(), &new.tags).await?;
        if let Some(request_id) = &new.request_id {
            remember_request(
                &mut tx,
                "CreateModel",
                request_id,
                &fingerprint,
                new.name.as_str(),
                0,
            )
            .await?;
        }
        let event = NewEvent::new(
            EventKind::ModelCreated,
            new.name.as_str(),
            0,
            json!({"description": new.description, "tags": new.tags}),
        );
        let seq = append_events(&mut tx, &actor, vec![event]).await?;
        let model = fetch_model(&mut *tx, new.name.as_str())
            .await?
            .ok_or_else(|| Error::Internal("model vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(model)
    }

    pub async fn get_model(&self, name: &Name) -> Result<Model> {
        fetch_model(&self.readers, name.as_str())
            .await?
            .ok_or_else(|| model_not_found(name.as_str()))
    }

    pub async fn list_models(
        &self,
        filter: &ModelFilter,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<Model>, bool)> {
        let mut sql = format!("{MODEL_SELECT} WHERE 1 = 1");
        let mut binds: Vec<String> = Vec::new();
        if let Some(after) = after {
            sql.push_str(" AND m.name > ?");
            binds.push(after.to_owned());
        }
        if let Some(name) = &filter.name_equals {
            sql.push_str(" AND m.name = ?");
            binds.push(name.clone());
        }
        if let Some(prefix) = &filter.name_prefix {
            // Names never contain LIKE wildcards except '_', which we escape.
            sql.push_str(r" AND m.name LIKE ? ESCAPE '\'");
            binds.push(format!("{}%", prefix.replace('_', r"\_")));
        }
        for (key, value) in &filter.tag_equals {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = ? AND t.value = ?)",
            );
            binds.push(key.clone());
            binds.push(value.clone());
        }
        for key in &filter.tag_present {
            sql.push_str(
                " AND EXISTS (SELECT 1 FROM model_tags t WHERE t.model = m.name AND t.key = ?)",
            );
            binds.push(key.clone());
        }
        sql.push_str(" ORDER BY m.name LIMIT ?");
        let mut query = sqlx::query(&sql);
        for b in &binds {
            query = query.bind(b);
        }
        let rows = query
            .bind((limit + 1) as i64)
            .fetch_all(&self.readers)
            .await
            .map_err(db_err)?;
        let more = rows.len() > limit;
        let models = rows
            .iter()
            .take(limit)
            .map(model_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((models, more))
    }

    pub async fn update_model(&self, update: ModelUpdate, actor: Actor) -> Result<Model> {
        let mut tx = self.begin().await?;
        let model = fetch_model(&mut *tx, update.name.as_str())
            .await?
            .ok_or_else(|| model_not_found(update.name.as_str()))?;
        check_etag(update.etag, model.revision, "model", update.name.as_str())?;
        let mut before = serde_json::Map::new();
        let mut after = serde_json::Map::new();
        if let Some(d) = &update.description
            && *d != model.description
        {
            before.insert("description".into(), json!(model.description));
            after.insert("description".into(), json!(d));
        }
        if let Some(t) = &update.tags
            && *t != model.tags
        {
            before.insert("tags".into(), json!(model.tags));
            after.insert("tags".into(), json!(t));
        }
        if after.is_empty() {
            // Nothing changes: no write, no event, same etag.
            return Ok(model);
        }
        let description = update.description.unwrap_or(model.description);
        let tags = update.tags.unwrap_or(model.tags);
        sqlx::query(
            "UPDATE models SET description = ?, tags = ?, revision = revision + 1, update_time = ? WHERE name = ?",
        )
        .bind(&description)
        .bind(serde_json::to_string(&tags).map_err(json_err)?)
        .bind(now_micros())
        .bind(update.name.as_str())
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        replace_tags(&mut tx, update.name.as_str(), &tags).await?;
        let event = NewEvent::new(
            EventKind::ModelUpdated,
            update.name.as_str(),
            0,
            json!({"before": before, "after": after}),
        );
        let seq = append_events(&mut tx, &actor, vec![event]).await?;
        let model = fetch_model(&mut *tx, update.name.as_str())
            .await?
            .ok_or_else(|| Error::Internal("model vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(model)
    }

    // ---- versions -----------------------------------------------------

    pub async fn register_version(&self, new: NewVersion, actor: Actor) -> Result<Version> {
        let mut tx = self.begin().await?;
        let fingerprint = format!("{}:{}", new.model, new.fingerprint());
        if let Some(request_id) = &new.request_id
            && let Some((model, version)) =
                find_request(&mut tx, "RegisterVersion", request_id, &fingerprint).await?
        {
            return fetch_version(&mut *tx, &model, version)
                .await?
                .ok_or_else(|| version_not_found(&model, &version.to_string()));
        }
        let model = new.model.as_str();
        let latest: Option<i64> =
            sqlx::query_scalar("SELECT latest_version FROM models WHERE name = ?")
                .bind(model)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db_err)?;
        let number = latest.ok_or_else(|| model_not_found(model))? + 1;
        let stage = new.target_stage;
        let now = now_micros();
        sqlx::query(
            r#"INSERT INTO versions (model, version, artifact_uri, artifact_digest, source, training_metrics,
                   tags, description, stage, revision, created_by, create_time, update_time, stage_update_time)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 1, ?, ?, ?, ?)"#,
        )
        .bind(model)
        .bind(number)
        .bind(&new.artifact_uri)
        .bind(&new.artifact_digest)
        .bind(serde_json::to_string(&new.source).map_err(json_err)?)
        .bind(serde_json::to_string(&new.training_metrics).map_err(json_err)?)
        .bind(serde_json::to_string(&new.tags).map_err(json_err)?)
        .bind(&new.description)
        .bind(stage.as_str())
        .bind(&actor.0)
        .bind(now)
        .bind(now)
        .bind(now)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        sqlx::query(
            "UPDATE models SET latest_version = ?, revision = revision + 1, update_time = ? WHERE name = ?",
        )
        .bind(number)
        .bind(now)
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        if let Some(request_id) = &new.request_id {
            remember_request(
                &mut tx,
                "RegisterVersion",
                request_id,
                &fingerprint,
                model,
                number,
            )
            .await?;
        }
        let mut events = vec![NewEvent::new(
            EventKind::VersionRegistered,
            model,
            number,
            json!({
                "artifact_uri": new.artifact_uri,
                "artifact_digest": new.artifact_digest,
                "source": new.source,
                "training_metrics": new.training_metrics,
                "tags": new.tags,
            }),
        )];
        if stage != Stage::None {
            // Registering straight into a stage is the NONE→stage move, by the same rules.
            for mv in lifecycle::plan_transition(model, number, Stage::None, stage, 0)? {
                events.push(stage_event(model, &mv, String::new(), json!({})));
            }
        }
        let seq = append_events(&mut tx, &actor, events).await?;
        let version = fetch_version(&mut *tx, model, number)
            .await?
            .ok_or_else(|| Error::Internal("version vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(version)
    }

    pub async fn get_version(&self, model: &Name, which: &VersionRef) -> Result<Version> {
        let number = match which {
            VersionRef::Number(n) => *n,
            VersionRef::Alias(alias) => {
                let found: Option<i64> =
                    sqlx::query_scalar("SELECT version FROM aliases WHERE model = ? AND alias = ?")
                        .bind(model.as_str())
                        .bind(alias.as_str())
                        .fetch_optional(&self.readers)
                        .await
                        .map_err(db_err)?;
                match found {
                    Some(n) => n,
                    None => {
                        self.get_model(model).await?;
                        return Err(Error::NotFound {
                            kind: "modelreg.v1.Alias",
                            name: format!("{model}@{}", alias.as_str()),
                        });
                    }
                }
            }
        };
        match fetch_version(&self.readers, model.as_str(), number).await? {
            Some(v) => Ok(v),
            None => {
                self.get_model(model).await?;
                Err(version_not_found(model.as_str(), &number.to_string()))
            }
        }
    }

    pub async fn list_versions(
        &self,
        model: &Name,
        stage: Option<Stage>,
        after: i64,
        limit: usize,
    ) -> Result<(Vec<Version>, bool)> {
        // Existence check first so an unknown model is NOT_FOUND, not an empty page.
        self.get_model(model).await?;
        let sql = format!(
            "{VERSION_SELECT} WHERE v.model = ? AND v.version > ? AND (? IS NULL OR v.stage = ?) ORDER BY v.version LIMIT ?"
        );
        let stage = stage.map(|s| s.as_str());
        let rows = sqlx::query(&sql)
            .bind(model.as_str())
            .bind(after)
            .bind(stage)
            .bind(stage)
            .bind((limit + 1) as i64)
            .fetch_all(&self.readers)
            .await
            .map_err(db_err)?;
        let more = rows.len() > limit;
        let versions = rows
            .iter()
            .take(limit)
            .map(version_from_row)
            .collect::<Result<Vec<_>>>()?;
        Ok((versions, more))
    }

    // ---- aliases ------------------------------------------------------

    pub async fn set_alias(
        &self,
        model: Name,
        alias: AliasName,
        version: i64,
        actor: Actor,
    ) -> Result<Model> {
        let mut tx = self.begin().await?;
        let current = fetch_model(&mut *tx, model.as_str())
            .await?
            .ok_or_else(|| model_not_found(model.as_str()))?;
        if fetch_version(&mut *tx, model.as_str(), version)
            .await?
            .is_none()
        {
            return Err(version_not_found(model.as_str(), &version.to_string()));
        }
        let previous = current.aliases.get(alias.as_str()).copied();
        if previous == Some(version) {
            return Ok(current);
        }
        let now = now_micros();
        sqlx::query(
            "INSERT INTO aliases (model, alias, version) VALUES (?, ?, ?)
             ON CONFLICT (model, alias) DO UPDATE SET version = excluded.version",
        )
        .bind(model.as_str())
        .bind(alias.as_str())
        .bind(version)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        touch_model(&mut tx, model.as_str(), now).await?;
        touch_version(&mut tx, model.as_str(), version, now).await?;
        if let Some(prev) = previous {
            touch_version(&mut tx, model.as_str(), prev, now).await?;
        }
        let event = NewEvent::new(
            EventKind::AliasSet,
            model.as_str(),
            version,
            json!({"alias": alias.as_str(), "previous_version": previous.unwrap_or(0)}),
        );
        let seq = append_events(&mut tx, &actor, vec![event]).await?;
        let updated = fetch_model(&mut *tx, model.as_str())
            .await?
            .ok_or_else(|| Error::Internal("model vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(updated)
    }

    pub async fn delete_alias(&self, model: Name, alias: AliasName, actor: Actor) -> Result<Model> {
        let mut tx = self.begin().await?;
        let current = fetch_model(&mut *tx, model.as_str())
            .await?
            .ok_or_else(|| model_not_found(model.as_str()))?;
        let Some(version) = current.aliases.get(alias.as_str()).copied() else {
            return Err(Error::NotFound {
                kind: "modelreg.v1.Alias",
                name: format!("{model}@{}", alias.as_str()),
            });
        };
        let now = now_micros();
        sqlx::query("DELETE FROM aliases WHERE model = ? AND alias = ?")
            .bind(model.as_str())
            .bind(alias.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        touch_model(&mut tx, model.as_str(), now).await?;
        touch_version(&mut tx, model.as_str(), version, now).await?;
        let event = NewEvent::new(
            EventKind::AliasDeleted,
            model.as_str(),
            version,
            json!({"alias": alias.as_str()}),
        );
        let seq = append_events(&mut tx, &actor, vec![event]).await?;
        let updated = fetch_model(&mut *tx, model.as_str())
            .await?
            .ok_or_else(|| Error::Internal("model vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(updated)
    }

    // ---- stages -------------------------------------------------------

    pub async fn transition(&self, change: StageChange, actor: Actor) -> Result<Version> {
        let mut tx = self.begin().await?;
        let model = change.model.as_str();
        let Some(current) = fetch_version(&mut *tx, model, change.version).await? else {
            if fetch_model(&mut *tx, model).await?.is_none() {
                return Err(model_not_found(model));
            }
            return Err(version_not_found(model, &change.version.to_string()));
        };
        check_etag(
            change.etag,
            current.revision,
            "version",
            &format!("{model}/{}", change.version),
        )?;
        let production: Option<i64> = sqlx::query_scalar(
            "SELECT version FROM versions WHERE model = ? AND stage = 'PRODUCTION'",
        )
        .bind(model)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
        let moves = lifecycle::plan_transition(
            model,
            change.version,
            current.stage,
            change.target,
            production.unwrap_or(0),
        )?;
        let now = now_micros();
        let mut events = Vec::with_capacity(moves.len());
        for mv in &moves {
            sqlx::query(
                "UPDATE versions SET stage = ?, revision = revision + 1, update_time = ?, stage_update_time = ?
                 WHERE model = ? AND version = ? AND stage = ?",
            )
            .bind(mv.to.as_str())
            .bind(now)
            .bind(now)
            .bind(model)
            .bind(mv.version)
            .bind(mv.from.as_str())
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
            let (comment, details) = if mv.cause == Cause::Superseded {
                (String::new(), json!({"superseded_by": change.version}))
            } else {
                (change.comment.clone(), json!({}))
            };
            events.push(stage_event(model, mv, comment, details));
        }
        touch_model(&mut tx, model, now).await?;
        let seq = append_events(&mut tx, &actor, events).await?;
        let version = fetch_version(&mut *tx, model, change.version)
            .await?
            .ok_or_else(|| Error::Internal("version vanished inside its transaction".into()))?;
        self.commit(tx, Some(seq)).await?;
        Ok(version)
    }

    // ---- events -------------------------------------------------------

    pub async fn events(
        &self,
        filter: &EventFilter,
        after: u64,
        upto: Option<u64>,
        limit: usize,
    ) -> Result<Vec<Event>> {
        let mut sql = String::from(
            "SELECT sequence, type, model, version, from_stage, to_stage, cause, actor, comment, occur_time,
                    details, transition_request_id, prev_hash, hash
             FROM events WHERE sequence > ?",
        );
        enum Bind {
            Int(i64),
            Text(String),
        }
        let mut binds = vec![Bind::Int(after as i64)];
        if let Some(upto) = upto {
            sql.push_str(" AND sequence <= ?");
            binds.push(Bind::Int(upto as i64));
        }
        if !filter.models.is_empty() {
            sql.push_str(&format!(
                " AND model IN ({})",
                placeholders(filter.models.len())
            ));
            binds.extend(filter.models.iter().cloned().map(Bind::Text));
        }
        if filter.version != 0 {
            sql.push_str(" AND version = ?");
            binds.push(Bind::Int(filter.version));
        }
        if let Some(actor) = &filter.actor {
            sql.push_str(" AND actor = ?");
            binds.push(Bind::Text(actor.clone()));
        }
        if !filter.kinds.is_empty() {
            sql.push_str(&format!(
                " AND type IN ({})",
                placeholders(filter.kinds.len())
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
                placeholders(filter.to_stages.len())
            ));
            binds.extend(
                filter
                    .to_stages
                    .iter()
                    .map(|s| Bind::Text(s.as_str().to_owned())),
            );
        }
        if let Some(start) = filter.start_time {
            sql.push_str(" AND occur_time >= ?");
            binds.push(Bind::Int(start));
        }
        if let Some(end) = filter.end_time {
            sql.push_str(" AND occur_time < ?");
            binds.push(Bind::Int(end));
        }
        sql.push_str(" ORDER BY sequence LIMIT ?");
        binds.push(Bind::Int(limit as i64));
        let mut query = sqlx::query(&sql);
        for b in binds {
            query = match b {
                Bind::Int(i) => query.bind(i),
                Bind::Text(s) => query.bind(s),
            };
        }
        let rows = query.fetch_all(&self.readers).await.map_err(db_err)?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn verify_chain(&self) -> Result<ChainReport> {
        let mut verifier = ChainVerifier::default();
        let mut after = 0u64;
        let all = EventFilter::default();
        loop {
            let page = self.events(&all, after, None, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.sequence;
            for e in &page {
                if !verifier.check(e) {
                    return Ok(ChainReport {
                        ok: false,
                        checked: verifier.checked,
                        first_bad: verifier.first_bad.unwrap_or(e.sequence),
                    });
                }
            }
        }
        Ok(ChainReport {
            ok: true,
            checked: verifier.checked,
            first_bad: 0,
        })
    }
}

// ---- helpers used inside transactions ------------------------------------

fn placeholders(n: usize) -> String {
    vec!["?"; n].join(", ")
}

fn check_etag(expected: Option<i64>, actual: i64, kind: &str, subject: &str) -> Result<()> {
    match expected {
        Some(e) if e != actual => Err(Error::precondition(
            "ETAG",
            subject,
            format!(
                "the {kind} {subject} has changed since it was read: etag {} is stale, the current etag is {}; read it again and retry",
                etag(e),
                etag(actual)
            ),
        )),
        _ => Ok(()),
    }
}

fn stage_event(
    model: &str,
    mv: &lifecycle::Move,
    comment: String,
    details: serde_json::Value,
) -> NewEvent {
    NewEvent {
        kind: EventKind::StageChanged,
        model: model.to_owned(),
        version: mv.version,
        from_stage: Some(mv.from),
        to_stage: Some(mv.to),
        cause: Some(mv.cause),
        comment,
        details,
        transition_request_id: String::new(),
    }
}

async fn touch_model(tx: &mut SqliteConnection, model: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE models SET revision = revision + 1, update_time = ? WHERE name = ?")
        .bind(now)
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    Ok(())
}

async fn touch_version(
    tx: &mut SqliteConnection,
    model: &str,
    version: i64,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE versions SET revision = revision + 1, update_time = ? WHERE model = ? AND version = ?",
    )
    .bind(now)
    .bind(model)
    .bind(version)
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

async fn replace_tags(
    tx: &mut SqliteConnection,
    model: &str,
    tags: &BTreeMap<String, String>,
) -> Result<()> {
    sqlx::query("DELETE FROM model_tags WHERE model = ?")
        .bind(model)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
    for (k, v) in tags {
        sqlx::query("INSERT INTO model_tags (model, key, value) VALUES (?, ?, ?)")
            .bind(model)
            .bind(k)
            .bind(v)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
    }
    Ok(())
}

/// Looks up an earlier request with this id: `Some((model, version))` for a
/// retry of the same request, an error for a different request reusing the id.
async fn find_request(
    tx: &mut SqliteConnection,
    method: &str,
    request_id: &str,
    fingerprint: &str,
) -> Result<Option<(String, i64)>> {
    let row = sqlx::query(
        "SELECT fingerprint, model, version FROM idempotency WHERE method = ? AND request_id = ?",
    )
    .bind(method)
    .bind(request_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db_err)?;
    let Some(row) = row else { return Ok(None) };
    let stored: String = row.try_get("fingerprint").map_err(db_err)?;
    if stored != fingerprint {
        return Err(Error::invalid(
            "request_id",
            format!(
                "{request_id:?} was already used for a different {method} request; use a new request id for a new request"
            ),
        ));
    }
    Ok(Some((
        row.try_get("model").map_err(db_err)?,
        row.try_get("version").map_err(db_err)?,
    )))
}

async fn remember_request(
    tx: &mut SqliteConnection,
    method: &str,
    request_id: &str,
    fingerprint: &str,
    model: &str,
    version: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO idempotency (method, request_id, fingerprint, model, version, create_time) VALUES (?, ?, ?, ?, ?, ?)",
    )
    .bind(method)
    .bind(request_id)
    .bind(fingerprint)
    .bind(model)
    .bind(version)
    .bind(now_micros())
    .execute(&mut *tx)
    .await
    .map_err(db_err)?;
    Ok(())
}

/// Appends events with the next sequences and chained hashes; returns the last
/// sequence written. Must run inside the write transaction of the change.
async fn append_events(
    tx: &mut SqliteConnection,
    actor: &Actor,
    events: Vec<NewEvent>,
) -> Result<u64> {
    let last = sqlx::query("SELECT sequence, hash FROM events ORDER BY sequence DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_err)?;
    let (mut sequence, mut prev_hash) = match last {
        Some(row) => (
            row.try_get::<i64, _>("sequence").map_err(db_err)? as u64,
            row.try_get::<String, _>("hash").map_err(db_err)?,
        ),
        None => (0, GENESIS_HASH.to_owned()),
    };
    let now = now_micros();
    for ne in events {
        sequence += 1;
        let mut e = Event {
            sequence,
            kind: ne.kind,
            model: ne.model,
            version: ne.version,
            from_stage: ne.from_stage,
            to_stage: ne.to_stage,
            cause: ne.cause,
            actor: actor.0.clone(),
            comment: ne.comment,
            occur_time: now,
            details: ne.details,
            transition_request_id: ne.transition_request_id,
            prev_hash,
            hash: String::new(),
        };
        e.hash = event_hash(&e);
        sqlx::query(
            r#"INSERT INTO events (sequence, type, model, version, from_stage, to_stage, cause, actor, comment,
                   occur_time, details, transition_request_id, prev_hash, hash)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"#,
        )
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
        .bind(&e.hash)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?;
        prev_hash = e.hash;
    }
    Ok(sequence)
}

// ---- row mapping -----------------------------------------------------------

const MODEL_SELECT: &str = r#"
SELECT m.name, m.description, m.tags, m.revision, m.latest_version, m.created_by, m.create_time, m.update_time,
       COALESCE((SELECT v.version FROM versions v WHERE v.model = m.name AND v.stage = 'PRODUCTION'), 0)
           AS production_version,
       COALESCE((SELECT json_group_object(a.alias, a.version) FROM aliases a WHERE a.model = m.name), '{}')
           AS aliases
FROM models m"#;

const VERSION_SELECT: &str = r#"
SELECT v.model, v.version, v.artifact_uri, v.artifact_digest, v.source, v.training_metrics, v.tags,
       v.description, v.stage, v.revision, v.created_by, v.create_time, v.update_time, v.stage_update_time,
       COALESCE((SELECT json_group_array(a.alias) FROM
                    (SELECT alias FROM aliases a WHERE a.model = v.model AND a.version = v.version ORDER BY alias) a),
                '[]') AS aliases
FROM versions v"#;

async fn fetch_model<'c, E>(ex: E, name: &str) -> Result<Option<Model>>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let sql = format!("{MODEL_SELECT} WHERE m.name = ?");
    let row = sqlx::query(&sql)
        .bind(name)
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
    row.as_ref().map(model_from_row).transpose()
}

async fn fetch_version<'c, E>(ex: E, model: &str, version: i64) -> Result<Option<Version>>
where
    E: sqlx::Executor<'c, Database = sqlx::Sqlite>,
{
    let sql = format!("{VERSION_SELECT} WHERE v.model = ? AND v.version = ?");
    let row = sqlx::query(&sql)
        .bind(model)
        .bind(version)
        .fetch_optional(ex)
        .await
        .map_err(db_err)?;
    row.as_ref().map(version_from_row).transpose()
}

fn json_col<T: serde::de::DeserializeOwned>(row: &SqliteRow, col: &str) -> Result<T> {
    let text: String = row.try_get(col).map_err(db_err)?;
    serde_json::from_str(&text).map_err(json_err)
}

fn model_from_row(row: &SqliteRow) -> Result<Model> {
    Ok(Model {
        name: row.try_get("name").map_err(db_err)?,
        description: row.try_get("description").map_err(db_err)?,
        tags: json_col(row, "tags")?,
        revision: row.try_get("revision").map_err(db_err)?,
        latest_version: row.try_get("latest_version").map_err(db_err)?,
        production_version: row.try_get("production_version").map_err(db_err)?,
        aliases: json_col(row, "aliases")?,
        created_by: row.try_get("created_by").map_err(db_err)?,
        create_time: row.try_get("create_time").map_err(db_err)?,
        update_time: row.try_get("update_time").map_err(db_err)?,
    })
}

fn version_from_row(row: &SqliteRow) -> Result<Version> {
    let stage: String = row.try_get("stage").map_err(db_err)?;
    Ok(Version {
        model: row.try_get("model").map_err(db_err)?,
        version: row.try_get("version").map_err(db_err)?,
        artifact_uri: row.try_get("artifact_uri").map_err(db_err)?,
        artifact_digest: row.try_get("artifact_digest").map_err(db_err)?,
        source: json_col(row, "source")?,
        training_metrics: json_col(row, "training_metrics")?,
        tags: json_col(row, "tags")?,
        description: row.try_get("description").map_err(db_err)?,
        stage: Stage::from_db(&stage)
            .ok_or_else(|| Error::Internal(format!("unknown stage {stage:?} in database")))?,
        aliases: json_col(row, "aliases")?,
        revision: row.try_get("revision").map_err(db_err)?,
        created_by: row.try_get("created_by").map_err(db_err)?,
        create_time: row.try_get("create_time").map_err(db_err)?,
        update_time: row.try_get("update_time").map_err(db_err)?,
        stage_update_time: row.try_get("stage_update_time").map_err(db_err)?,
    })
}

fn event_from_row(row: &SqliteRow) -> Result<Event> {
    let kind: String = row.try_get("type").map_err(db_err)?;
    let stage = |col: &str| -> Result<Option<Stage>> {
        let s: Option<String> = row.try_get(col).map_err(db_err)?;
        s.map(|s| Stage::from_db(&s).ok_or_else(|| Error::Internal(format!("unknown stage {s:?}"))))
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
                Cause::from_db(&c).ok_or_else(|| Error::Internal(format!("unknown cause {c:?}")))
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
