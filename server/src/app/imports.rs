//! Importing: recording a version that exists in another registry (MLflow),
//! with its number and its stage there. It records the past, so it asks no
//! approval and judges no gate ([`decide_move`] is for moves asked of this
//! registry); the one rule every path keeps still holds: at most one version
//! is in PRODUCTION. Who may import (admins) is the auth layer's table.

use serde_json::json;

use crate::domain::{self, Actor, EventKind, NewEvent, NewImport, Version};
use crate::error::Result;
use crate::store::Store;

use super::*;

/// What ImportVersion did.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The version as recorded (on a retry: as it is now).
    pub version: Version,
    /// Whether this call recorded it; false for a retry of an earlier import.
    pub created: bool,
}

pub async fn import_version(store: &Store, import: NewImport, actor: Actor) -> Result<Imported> {
    write_tx!(store, |tx| -> Imported {
        let new = &import.version;
        let model = new.model.as_str();
        // As for RegisterVersion: the model lock serializes the numbering and
        // the request-id check of one model.
        let current = tx.lock_model(model).await?;
        let fingerprint = format!("{model}:{}", import.fingerprint());
        let id = RequestId::new("ImportVersion", &actor, &new.request_id, fingerprint);
        if let Some(stored) = id.retry(tx).await? {
            let before = registered_before(tx, &stored).await?;
            let version = before.version;
            return Ok((
                Imported {
                    version,
                    created: false,
                },
                None,
            ));
        }
        let current = current.ok_or_else(|| model_not_found(model))?;
        let number = domain::import_number(model, import.number, current.latest_version)?;
        tx.insert_version(&new.version(number, &actor, tx.now()))
            .await?;
        let mut events = vec![NewEvent::new(
            EventKind::VersionRegistered,
            model,
            number,
            new.registered_details(),
        )];
        let production = match import.stage {
            domain::Stage::Production => tx.production_version(model).await?.unwrap_or(0),
            _ => 0,
        };
        let moves = domain::plan_import(number, import.stage, production);
        if !moves.is_empty() {
            let from = &new.source.imported_from;
            let comment = match from.as_str() {
                "" => "imported".to_owned(),
                from => format!("imported from {from}"),
            };
            let details = json!({"imported_from": from});
            events.extend(apply_moves(tx, model, &moves, &comment, details, "", None).await?);
        }
        id.remember(tx, model, number, None).await?;
        let seq = append_events(tx, &actor, events).await?;
        let version = tx
            .fetch_version(model, number)
            .await?
            .ok_or_else(|| vanished("version"))?;
        Ok((
            Imported {
                version,
                created: true,
            },
            Some(seq),
        ))
    })
}
