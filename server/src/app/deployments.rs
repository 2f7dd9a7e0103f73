//! What workers report: deployments, worker failures, live metrics.

use serde_json::json;

use crate::domain::{
    Actor, Deployment, Event, EventKind, LiveObservation, NewDeployment, NewEvent, WorkerFailure,
};
use crate::error::{Error, Result};
use crate::store::{Store, Tx};

use super::*;

pub async fn report_deployment(
    store: &Store,
    new: NewDeployment,
    actor: Actor,
) -> Result<Deployment> {
    let fingerprint = new.fingerprint();
    write_tx!(store, |tx| -> Deployment {
        let name = new.model.as_str();
        let id = RequestId::new("ReportDeployment", &actor, &new.request_id, fingerprint);
        // A member whose delivery moved on records nothing, not even a retry.
        if let Some(fence) = &new.fence {
            check_fence(tx, fence, name, &actor).await?;
        }
        if let Some(stored) = begin_version_write(tx, name, new.version, &id).await? {
            // The deployment as first recorded, even if later reports moved it on.
            return Ok((stored_response(&stored)?, None));
        }
        let now = tx.now();
        let deployment = Deployment {
            model: name.to_owned(),
            version: new.version,
            environment: new.environment.to_string(),
            status: new.status,
            endpoint: new.endpoint,
            message: new.message,
            reported_by: actor.0.clone(),
            report_time: now,
        };
        tx.upsert_deployment(&deployment).await?;
        tx.touch_version(name, deployment.version, now).await?;
        id.remember(
            tx,
            name,
            deployment.version,
            Some(json_response(&deployment)?),
        )
        .await?;
        let event = NewEvent::new(
            EventKind::DeploymentReported,
            name,
            deployment.version,
            json!({
                "environment": deployment.environment,
                "status": deployment.status.as_str(),
                "endpoint": deployment.endpoint,
                "message": deployment.message,
            }),
        );
        let seq = append_events(tx, &actor, vec![event]).await?;
        Ok((deployment, Some(seq)))
    })
}

pub async fn report_worker_failure(
    store: &Store,
    failure: WorkerFailure,
    actor: Actor,
) -> Result<Event> {
    let f = failure;
    let fingerprint = f.fingerprint();
    write_tx!(store, |tx| -> Event {
        let name = f.model.as_str();
        let id = RequestId::new("ReportWorkerFailure", &actor, &f.request_id, fingerprint);
        if let Some(stored) = begin_version_write(tx, name, f.version, &id).await? {
            let sequence: u64 = stored_response(&stored)?;
            let event = tx
                .fetch_event(sequence)
                .await?
                .ok_or_else(|| vanished("reported event"))?;
            return Ok((event, None));
        }
        let (latest, _) = tx.log_head().await?;
        if f.event_sequence > latest {
            return Err(Error::invalid(
                "event_sequence",
                format!(
                    "{} is beyond the end of the log (the latest sequence is {latest})",
                    f.event_sequence
                ),
            ));
        }
        let event = NewEvent::new(
            EventKind::WorkerFailed,
            name,
            f.version,
            json!({
                "worker": f.worker,
                "event_sequence": f.event_sequence,
                "error": f.error,
                "attempts": f.attempts,
            }),
        );
        let seq = append_events(tx, &actor, vec![event]).await?;
        id.remember(tx, name, f.version, Some(seq.to_string()))
            .await?;
        let event = tx
            .fetch_event(seq)
            .await?
            .ok_or_else(|| vanished("appended event"))?;
        Ok((event, Some(seq)))
    })
}

/// Stores an observation. No model lock and no event: observations are
/// facts about the outside world, not changes the log must order, and one
/// event each would flood it.
pub async fn report_live_metric(store: &Store, o: LiveObservation) -> Result<()> {
    write_tx!(store, |tx| -> () {
        let name = o.model.as_str();
        if tx.fetch_version(name, o.version).await?.is_none() {
            return Err(match tx.fetch_model(name).await? {
                None => model_not_found(name),
                Some(_) => version_not_found(name, &o.version.to_string()),
            });
        }
        tx.upsert_observation(&o).await?;
        Ok(((), None))
    })
}
