//! Use cases of versions: register (with a target stage, decided like any
//! other move), update (description, tags), read and list.

use serde_json::json;

use crate::domain::{
    Actor, EventKind, NewEvent, NewVersion, Stage, TransitionRequest, Version, VersionUpdate,
};
use crate::error::Result;
use crate::store::{Db, Store, StoredRequest, Tx, VersionRef};

use super::*;

/// What RegisterVersion did.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The version (in its target stage, or in NONE while a request waits).
    pub version: Version,
    /// The request opened because the target stage needs approval.
    pub request: Option<TransitionRequest>,
}

pub async fn register_version(store: &Store, new: NewVersion, actor: Actor) -> Result<Registered> {
    crate::domain::check_registration_target("target_stage", Some(new.target_stage))?;
    // Worked out before the write: the one writer's time is the scarce one.
    let fingerprint = format!("{}:{}", new.model, new.fingerprint());
    write_tx!(store, |tx| -> Registered {
        let model = new.model.as_str();
        // The model lock serializes registrations of one model, so version numbers
        // and request-id checks never race.
        let current = tx.lock_model(model).await?;
        let id = RequestId::new("RegisterVersion", &actor, &new.request_id, fingerprint);
        if let Some(stored) = id.retry(tx).await? {
            return registered_before(tx, &stored).await.map(|r| (r, None));
        }
        let current = current.ok_or_else(|| model_not_found(model))?;
        let number = current.latest_version + 1;
        let mut version = new.version(number, &actor, tx.now());
        // Registering straight into a stage is the NONE→stage move, decided by
        // the same rule as every other move (approval, gates).
        let decision = match new.target_stage {
            Stage::None => MoveDecision::Apply(Vec::new()),
            target => decide_move(tx, &current, &version, target, MovePath::Request).await?,
        };
        if let MoveDecision::Apply(moves) = &decision
            && let Some(last) = moves.last()
        {
            version.stage = last.to;
        }
        tx.insert_version(&version).await?;
        let details = new.registered_details();
        let mut events = vec![NewEvent::new(
            EventKind::VersionRegistered,
            model,
            number,
            details,
        )];
        let request = match decision {
            MoveDecision::Apply(moves) => {
                for mv in moves {
                    events.push(stage_event(model, &mv, String::new(), json!({})));
                }
                None
            }
            MoveDecision::NeedsApproval(judgement) => {
                let ask = Ask {
                    to: new.target_stage,
                    rollback: false,
                    comment: "",
                    judgement,
                };
                let (request, event) = open_request(tx, &current, &version, &actor, ask).await?;
                events.extend(event);
                Some(request)
            }
        };
        id.remember(
            tx,
            model,
            number,
            request.as_ref().map(|r| r.number.to_string()),
        )
        .await?;
        let seq = append_events(tx, &actor, events).await?;
        // Just inserted: no aliases, no evaluations; nothing to read back.
        Ok((Registered { version, request }, Some(seq)))
    })
}

/// The answer to a retried registration: the version and the request it
/// opened, both as they are now.
pub(crate) async fn registered_before<T: Tx>(
    tx: &mut T,
    stored: &StoredRequest,
) -> Result<Registered> {
    let version = tx
        .fetch_version(&stored.model, stored.version)
        .await?
        .ok_or_else(|| version_not_found(&stored.model, &stored.version.to_string()))?;
    let request = match stored.response.as_deref().map(str::parse::<i64>) {
        Some(Ok(number)) => tx.fetch_request(&stored.model, number).await?,
        _ => None,
    };
    Ok(Registered { version, request })
}

/// Changes a version's description or tags. The artifact, its source and
/// metrics stay as registered; the stage moves only by transitions.
pub async fn update_version(store: &Store, update: VersionUpdate, actor: Actor) -> Result<Version> {
    write_tx!(store, |tx| -> Version {
        let (name, number) = (update.model.as_str(), update.version);
        lock_existing(tx, name).await?;
        let current = tx
            .fetch_version(name, number)
            .await?
            .ok_or_else(|| version_not_found(name, &number.to_string()))?;
        check_etag(
            update.etag,
            current.revision,
            "version",
            &format!("{name}/{number}"),
        )?;
        let mut before = serde_json::Map::new();
        let mut after = serde_json::Map::new();
        let mut next = current.clone();
        if let Some(d) = &update.description
            && *d != current.description
        {
            before.insert("description".into(), json!(current.description));
            after.insert("description".into(), json!(d));
            next.description = d.clone();
        }
        if let Some(t) = &update.tags
            && *t != current.tags
        {
            before.insert("tags".into(), json!(current.tags));
            after.insert("tags".into(), json!(t));
            next.tags = t.clone();
        }
        if after.is_empty() {
            // Nothing changes: no write, no event, same etag.
            return Ok((current, None));
        }
        let now = tx.now();
        next.update_time = now;
        tx.update_version(&next).await?;
        tx.touch_model(name, now).await?;
        let details = json!({"before": before, "after": after});
        let event = NewEvent::new(EventKind::VersionUpdated, name, number, details);
        let seq = append_events(tx, &actor, vec![event]).await?;
        let version = tx
            .fetch_version(name, number)
            .await?
            .ok_or_else(|| vanished("version"))?;
        Ok((version, Some(seq)))
    })
}

pub async fn get_version(store: &Store, model: &str, which: &VersionRef) -> Result<Version> {
    read_db!(store, |db| async {
        let number = match which {
            VersionRef::Number(n) => *n,
            VersionRef::Alias(alias) => match db.alias_target(model, alias.as_str()).await? {
                Some(n) => n,
                None => {
                    get_model_on(db, model).await?;
                    return Err(alias_not_found(model, alias.as_str()));
                }
            },
        };
        match db.fetch_version(model, number).await? {
            Some(v) => Ok(v),
            None => {
                get_model_on(db, model).await?;
                Err(version_not_found(model, &number.to_string()))
            }
        }
    })
}

pub async fn list_versions(
    store: &Store,
    model: &str,
    stage: Option<Stage>,
    after: i64,
    limit: usize,
) -> Result<(Vec<Version>, bool)> {
    read_db!(store, |db| async {
        let versions = db.list_versions(model, stage, after, limit + 1).await?;
        if versions.is_empty() {
            // An unknown model is NOT_FOUND, not an empty page.
            get_model_on(db, model).await?;
        }
        Ok(page(versions, limit))
    })
}
