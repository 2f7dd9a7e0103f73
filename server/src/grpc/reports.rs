//! Handlers of what workers report: deployments, live metrics, failures.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app::{self};
use crate::domain::{self, LiveObservation, Name, NewDeployment, Violations, WorkerFailure};
use crate::grpc::convert::{self, deployment_to_pb, event_to_pb};

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, environment = %req.get_ref().environment))]
pub(super) async fn report_deployment(
    svc: &RegistryService,
    req: Request<pb::ReportDeploymentRequest>,
) -> Result<Response<pb::ReportDeploymentResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let version = v.take(domain::parse_version_number("version", r.version));
    let environment = v.take(Name::parse("environment", &r.environment));
    let status = v.take(convert::deployment_status_from_pb("status", r.status));
    let endpoint = v.take(domain::parse_text("endpoint", &r.endpoint));
    let message = v.take(domain::parse_text("message", &r.message));
    let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
    v.finish()?;
    let new = NewDeployment {
        model: model.expect("checked"),
        version: version.expect("checked"),
        environment: environment.expect("checked"),
        status: status.expect("checked"),
        endpoint: endpoint.expect("checked"),
        message: message.expect("checked"),
        request_id: request_id.expect("checked"),
    };
    let deployment = app::report_deployment(&svc.store, new, actor).await?;
    Ok(Response::new(pb::ReportDeploymentResponse {
        deployment: Some(deployment_to_pb(deployment)),
    }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, metric = %req.get_ref().metric))]
pub(super) async fn report_live_metric(
    svc: &RegistryService,
    req: Request<pb::ReportLiveMetricRequest>,
) -> Result<Response<pb::ReportLiveMetricResponse>, Status> {
    let r = req.into_inner();
    let now = svc.clock.now_micros();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let version = v.take(domain::parse_version_number("version", r.version));
    let metric = v.take(domain::parse_short_text("metric", &r.metric));
    if !r.value.is_finite() {
        v.add("value", format!("must be a finite number; got {}", r.value));
    }
    let observe_time = match &r.observe_time {
        None => Some(now),
        Some(t) => v
            .take(convert::micros_from_pb("observe_time", t))
            .and_then(|t| {
                if t > now + MAX_OBSERVATION_LEAD_MICROS {
                    v.add(
                        "observe_time",
                        format!(
                            "{} is more than 5 minutes in the future (the server's time is {})",
                            domain::rfc3339(t),
                            domain::rfc3339(now)
                        ),
                    );
                    None
                } else {
                    Some(t)
                }
            }),
    };
    v.finish()?;
    app::report_live_metric(
        &svc.store,
        LiveObservation {
            model: model.expect("checked"),
            version: version.expect("checked"),
            metric: metric.expect("checked"),
            value: r.value,
            observe_time: observe_time.expect("checked"),
        },
    )
    .await?;
    Ok(Response::new(pb::ReportLiveMetricResponse {}))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, worker = %req.get_ref().worker))]
pub(super) async fn report_worker_failure(
    svc: &RegistryService,
    req: Request<pb::ReportWorkerFailureRequest>,
) -> Result<Response<pb::ReportWorkerFailureResponse>, Status> {
    let actor = actor(&req)?;
    let r = req.into_inner();
    let mut v = Violations::default();
    let model = v.take(Name::parse("model", &r.model));
    let version = v.take(domain::parse_version_number("version", r.version));
    let worker = v.take(domain::parse_short_text("worker", &r.worker));
    if r.event_sequence == 0 {
        v.add(
            "event_sequence",
            "is required: the sequence of the event the worker was handling",
        );
    }
    let error = v.take(domain::parse_text("error", &r.error));
    if r.error.trim().is_empty() {
        v.add("error", "is required: say what went wrong");
    }
    if r.attempts < 1 {
        v.add(
            "attempts",
            format!("must be at least 1; got {}", r.attempts),
        );
    }
    let request_id = v.take(domain::parse_request_id("request_id", &r.request_id));
    v.finish()?;
    let failure = WorkerFailure {
        model: model.expect("checked"),
        version: version.expect("checked"),
        worker: worker.expect("checked"),
        event_sequence: r.event_sequence,
        error: error.expect("checked"),
        attempts: r.attempts as u32,
        request_id: request_id.expect("checked"),
    };
    let event = app::report_worker_failure(&svc.store, failure, actor).await?;
    Ok(Response::new(pb::ReportWorkerFailureResponse {
        event: Some(event_to_pb(event)),
    }))
}
