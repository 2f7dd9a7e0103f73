//! `registered-models/…`: create, get, search, update, tags,
//! get-latest-versions and aliases, each through its `app::` use case.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::app;
use crate::domain::{self, AliasName, Model, ModelUpdate, Name, NewModel, Stage, Version};
use crate::error::Error;
use crate::store::{ModelFilter, VersionRef};

use super::search::{Filter, Order, Sortable, Subject};
use super::{Call, Facade, Refusal, max_results, page, search, shapes};

/// How often a tag change is retried when the resource changed between its
/// read and its write (the write is conditional on the etag read).
pub(super) const TAG_RETRIES: usize = 8;

/// Most models or versions read per store call while collecting.
const BATCH: usize = 1000;

impl Facade {
    pub(super) async fn create_model(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let (name, description, tags) = domain::all((
            Name::parse("name", &p.required("name")?),
            domain::parse_text("description", &p.text("description")?.unwrap_or_default()),
            domain::parse_tags("tags", &p.tags("tags")?),
        ))?;
        let new = NewModel {
            name,
            description,
            tags,
            policy: None,
            request_id: None,
        };
        let model = app::create_model(&self.store, new, c.caller()?).await?;
        Ok(json!({"registered_model": shapes::model(&model, &[])}))
    }

    pub(super) async fn get_model(&self, c: &Call) -> Result<Value, Refusal> {
        let name = Name::parse("name", &c.params.required("name")?)?;
        let model = app::get_model(&self.store, name.as_str()).await?;
        let latest = self.latest_of(&model.name, &Stage::ALL).await?;
        Ok(json!({"registered_model": shapes::model(&model, &latest)}))
    }

    pub(super) async fn search_models(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let raw_filter = p.text("filter")?.unwrap_or_default();
        let filter = Filter::parse(&raw_filter, false)?;
        let order_by = p.texts("order_by")?;
        let order = Order::parse(&order_by, &["name ASC"], false)?;
        let max = max_results(p, 100, 1000)?;
        let query = format!("models\n{raw_filter}\n{}", order_by.join("\n"));
        let offset = search::decode_token(p.text("page_token")?.as_deref(), &query)?;
        let mut models: Vec<Model> = self
            .every_model(filter.exact_name())
            .await?
            .into_iter()
            .filter(|m| {
                filter.admits(&Subject {
                    name: &m.name,
                    run_id: None,
                    tags: &m.tags,
                })
            })
            .collect();
        models.sort_by(|a, b| order.compare(&sortable(a), &sortable(b)));
        let (models, next) = page(models, offset, max, &query);
        let mut out = Vec::with_capacity(models.len());
        for m in &models {
            out.push(shapes::model(
                m,
                &self.latest_of(&m.name, &Stage::ALL).await?,
            ));
        }
        Ok(json!({"registered_models": out, "next_page_token": next}))
    }

    pub(super) async fn update_model(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let name = Name::parse("name", &p.required("name")?)?;
        let description = p
            .text("description")?
            .map(|d| domain::parse_text("description", &d))
            .transpose()?;
        let model = match description {
            // Nothing to change: the model as it is, as MLflow answers.
            None => app::get_model(&self.store, name.as_str()).await?,
            Some(d) => {
                let update = ModelUpdate {
                    name,
                    description: Some(d),
                    tags: None,
                    policy: None,
                    etag: None,
                };
                app::update_model(&self.store, update, c.caller()?).await?
            }
        };
        let latest = self.latest_of(&model.name, &Stage::ALL).await?;
        Ok(json!({"registered_model": shapes::model(&model, &latest)}))
    }

    /// `set-tag` (`set`) or `delete-tag`: the model's tags with one changed,
    /// written only if the model is still as read.
    pub(super) async fn set_model_tag(&self, c: &Call, set: bool) -> Result<Value, Refusal> {
        let p = &c.params;
        let name = Name::parse("name", &p.required("name")?)?;
        let key = p.required("key")?;
        let value = if set {
            Some(p.text("value")?.unwrap_or_default())
        } else {
            None
        };
        let caller = c.caller()?;
        for _ in 0..TAG_RETRIES {
            let model = app::get_model(&self.store, name.as_str()).await?;
            let tags = retagged(&model.tags, &key, value.as_deref(), &model.name)?;
            let update = ModelUpdate {
                name: name.clone(),
                description: None,
                tags: Some(tags),
                policy: None,
                etag: Some(model.revision),
            };
            match app::update_model(&self.store, update, caller.clone()).await {
                Err(e) if is_stale(&e) => continue,
                done => return done.map(|_| json!({})).map_err(Refusal::from),
            }
        }
        Err(kept_changing(&name))
    }

    pub(super) async fn latest_versions(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let name = Name::parse("name", &p.required("name")?)?;
        let stages = p
            .texts("stages")?
            .iter()
            .map(|s| shapes::parse_stage("stages", s))
            .collect::<Result<Vec<Stage>, Refusal>>()?;
        let stages = if stages.is_empty() {
            Stage::ALL.to_vec()
        } else {
            stages
        };
        // An unknown model is RESOURCE_DOES_NOT_EXIST, not an empty list.
        app::get_model(&self.store, name.as_str()).await?;
        let latest = self.latest_of(name.as_str(), &stages).await?;
        let versions: Vec<Value> = latest.iter().map(shapes::version).collect();
        Ok(json!({"model_versions": versions}))
    }

    /// `alias` POST (`set`) or DELETE.
    pub(super) async fn set_alias(&self, c: &Call, set: bool) -> Result<Value, Refusal> {
        let p = &c.params;
        let (name, alias) = domain::all((
            Name::parse("name", &p.required("name")?),
            AliasName::parse("alias", &p.required("alias")?),
        ))?;
        let to = if set {
            Some(p.version("version")?)
        } else {
            None
        };
        let actor = c.caller()?.actor;
        app::change_alias(&self.store, name, alias, to, actor).await?;
        Ok(json!({}))
    }

    pub(super) async fn get_by_alias(&self, c: &Call) -> Result<Value, Refusal> {
        let p = &c.params;
        let (name, alias) = domain::all((
            Name::parse("name", &p.required("name")?),
            AliasName::parse("alias", &p.required("alias")?),
        ))?;
        let which = VersionRef::Alias(alias);
        let version = app::get_version(&self.store, name.as_str(), &which).await?;
        Ok(json!({"model_version": shapes::version(&version)}))
    }

    /// Every model (only `name` when the filter pins one down).
    async fn every_model(&self, name: Option<&str>) -> Result<Vec<Model>, Refusal> {
        let filter = ModelFilter {
            name_equals: name.map(str::to_owned),
            ..ModelFilter::default()
        };
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|m: &Model| m.name.clone());
            let (batch, more) =
                app::list_models(&self.store, &filter, after.as_deref(), BATCH).await?;
            all.extend(batch);
            if !more {
                return Ok(all);
            }
        }
    }

    /// Every version of `model`, in number order.
    pub(super) async fn every_version(&self, model: &str) -> Result<Vec<Version>, Refusal> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map_or(0, |v: &Version| v.version);
            let (batch, more) = app::list_versions(&self.store, model, None, after, BATCH).await?;
            all.extend(batch);
            if !more {
                return Ok(all);
            }
        }
    }

    /// The newest version in each of `stages`, in number order.
    async fn latest_of(&self, model: &str, stages: &[Stage]) -> Result<Vec<Version>, Refusal> {
        let mut latest: BTreeMap<i64, Version> = BTreeMap::new();
        let versions = self.every_version(model).await?;
        for stage in stages {
            if let Some(v) = versions.iter().rev().find(|v| v.stage == *stage) {
                latest.insert(v.version, v.clone());
            }
        }
        Ok(latest.into_values().collect())
    }
}

fn sortable(m: &Model) -> Sortable<'_> {
    Sortable {
        name: &m.name,
        version: 0,
        created: m.create_time,
        updated: m.update_time,
    }
}

/// `tags` with `key` set to `value`, or removed when `value` is `None`
/// (a tag that is not there is RESOURCE_DOES_NOT_EXIST, as in MLflow).
pub(super) fn retagged(
    tags: &BTreeMap<String, String>,
    key: &str,
    value: Option<&str>,
    owner: &str,
) -> Result<BTreeMap<String, String>, Refusal> {
    let mut tags = tags.clone();
    match value {
        Some(v) => {
            tags.insert(key.to_owned(), v.to_owned());
        }
        None => {
            if tags.remove(key).is_none() {
                return Err(Refusal::new(
                    StatusCode::NOT_FOUND,
                    "RESOURCE_DOES_NOT_EXIST",
                    format!("{owner} has no tag {key:?}"),
                ));
            }
        }
    }
    let tags = domain::parse_tags("tags", &tags)?;
    Ok(tags)
}

/// Whether a conditional write failed only because the resource changed.
pub(super) fn is_stale(e: &Error) -> bool {
    matches!(e, Error::FailedPrecondition(vs) if vs.iter().all(|v| v.kind == "ETAG"))
}

pub(super) fn kept_changing(what: &impl std::fmt::Display) -> Refusal {
    Refusal::new(
        StatusCode::CONFLICT,
        "RESOURCE_CONFLICT",
        format!("{what} kept changing while its tags were written; try again"),
    )
}
