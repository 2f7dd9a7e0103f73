//! Use cases of models: create, read, list, update (description, tags,
//! policy), and aliases.

use serde_json::json;

use crate::domain::{
    self, Actor, AliasName, EventKind, Model, ModelUpdate, Name, NewEvent, NewModel, Policy,
};
use crate::error::{Error, Result};
use crate::store::{Db, ModelFilter, Store, Tx};

use super::*;

/// Creates a model; a policy may be set only by an admin.
pub async fn create_model(store: &Store, new: NewModel, caller: Caller) -> Result<Model> {
    authz::may_set_policy(&caller, new.policy.is_some())?;
    let actor = caller.actor;
    write_tx!(store, |tx| -> Model {
        let name = new.name.as_str();
        tx.lock_key(&format!("model:{name}")).await?;
        let id = RequestId::new("CreateModel", &actor, &new.request_id, new.fingerprint());
        if let Some(stored) = id.retry(tx).await? {
            return tx
                .fetch_model(&stored.model)
                .await?
                .ok_or_else(|| model_not_found(&stored.model))
                .map(|v| (v, None));
        }
        let policy = new.policy.clone().unwrap_or_default();
        check_policy(tx, &policy).await?;
        let now = tx.now();
        let model = Model {
            name: name.to_owned(),
            description: new.description.clone(),
            tags: new.tags.clone(),
            policy: policy.clone(),
            revision: 1,
            latest_version: 0,
            production_version: 0,
            aliases: Default::default(),
            created_by: actor.0.clone(),
            create_time: now,
            update_time: now,
            deployments: Vec::new(),
        };
        if !tx.insert_model(&model).await? {
            return Err(Error::AlreadyExists {
                kind: "modelreg.v1.Model",
                name: name.to_owned(),
            });
        }
        id.remember(tx, name, 0, None).await?;
        let event = NewEvent::new(
            EventKind::ModelCreated,
            name,
            0,
            json!({"description": new.description, "tags": new.tags, "policy": policy.effective()}),
        );
        finish_with_model(tx, &actor, vec![event], name).await
    })
}

pub async fn get_model(store: &Store, name: &str) -> Result<Model> {
    read_db!(store, |db| get_model_on(db, name))
}

pub async fn list_models(
    store: &Store,
    filter: &ModelFilter,
    after: Option<&str>,
    limit: usize,
) -> Result<(Vec<Model>, bool)> {
    read_db!(store, |db| async {
        Ok(page(db.list_models(filter, after, limit + 1).await?, limit))
    })
}

/// Updates a model's description, tags or policy (the policy by admins only).
pub async fn update_model(store: &Store, update: ModelUpdate, caller: Caller) -> Result<Model> {
    authz::may_set_policy(&caller, update.policy.is_some())?;
    let actor = caller.actor;
    write_tx!(store, |tx| -> Model {
        let name = update.name.as_str();
        let current = lock_existing(tx, name).await?;
        check_etag(update.etag, current.revision, "model", name)?;
        let mut before = serde_json::Map::new();
        let mut after = serde_json::Map::new();
        let mut next = current.clone();
        if let Some(d) = update.description
            && d != current.description
        {
            before.insert("description".into(), json!(current.description));
            after.insert("description".into(), json!(d));
            next.description = d;
        }
        if let Some(t) = update.tags
            && t != current.tags
        {
            before.insert("tags".into(), json!(current.tags));
            after.insert("tags".into(), json!(t));
            next.tags = t;
        }
        if let Some(p) = update.policy
            && p != current.policy
        {
            check_policy(tx, &p).await?;
            before.insert("policy".into(), json!(current.policy.effective()));
            after.insert("policy".into(), json!(p.effective()));
            next.policy = p;
        }
        if after.is_empty() {
            // Nothing changes: no write, no event, same etag.
            return Ok((current, None));
        }
        next.update_time = tx.now();
        tx.update_model(&next).await?;
        let event = NewEvent::new(
            EventKind::ModelUpdated,
            name,
            0,
            json!({"before": before, "after": after}),
        );
        finish_with_model(tx, &actor, vec![event], name).await
    })
}

/// Points `alias` at version `to`, or removes it when `to` is `None`. Setting
/// an alias where it already points changes nothing and appends no event.
pub async fn change_alias(
    store: &Store,
    model: Name,
    alias: AliasName,
    to: Option<i64>,
    actor: Actor,
) -> Result<Model> {
    write_tx!(store, |tx| -> Model {
        let name = model.as_str();
        let current = lock_existing(tx, name).await?;
        let previous = current.aliases.get(alias.as_str()).copied();
        let now = tx.now();
        let event = match (to, previous) {
            (Some(version), _) => {
                if tx.fetch_version(name, version).await?.is_none() {
                    return Err(version_not_found(name, &version.to_string()));
                }
                if previous == Some(version) {
                    return Ok((current, None));
                }
                tx.upsert_alias(name, alias.as_str(), version).await?;
                tx.touch_version(name, version, now).await?;
                let details =
                    json!({"alias": alias.as_str(), "previous_version": previous.unwrap_or(0)});
                NewEvent::new(EventKind::AliasSet, name, version, details)
            }
            (None, Some(version)) => {
                tx.remove_alias(name, alias.as_str()).await?;
                let details = json!({"alias": alias.as_str()});
                NewEvent::new(EventKind::AliasDeleted, name, version, details)
            }
            (None, None) => return Err(alias_not_found(name, alias.as_str())),
        };
        tx.touch_model(name, now).await?;
        if let Some(prev) = previous {
            tx.touch_version(name, prev, now).await?;
        }
        finish_with_model(tx, &actor, vec![event], name).await
    })
}

/// Checks a policy against the evaluation set it names.
pub(crate) async fn check_policy<T: Tx>(tx: &mut T, policy: &Policy) -> Result<()> {
    let set = match &policy.standard_evaluation_set {
        Some(r) => Some(tx.fetch_evaluation_set(r).await?.ok_or_else(|| {
            Error::invalid(
                "policy.standard_evaluation_set",
                format!("evaluation set {r} does not exist; create it first"),
            )
        })?),
        None => None,
    };
    domain::check_policy_against_set("policy", policy, set.as_ref())
}
