//! Handlers of what workers report: deployments, live metrics, failures.

use modelreg_api::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use crate::app;
use crate::domain::{NewDeployment, WorkerFailure};
use crate::grpc::convert::{deployment_to_pb, event_to_pb};

use super::*;

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, environment = %req.get_ref().environment))]
pub(super) async fn report_deployment(
    svc: &RegistryService,
    req: Request<pb::ReportDeploymentRequest>,
) -> Result<Response<pb::ReportDeploymentResponse>, Status> {
    let actor = actor(&req)?;
    let new = NewDeployment::try_from(req.into_inner())?;
    let deployment = Some(deployment_to_pb(
        app::report_deployment(&svc.store, new, actor).await?,
    ));
    Ok(Response::new(pb::ReportDeploymentResponse { deployment }))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, metric = %req.get_ref().metric))]
pub(super) async fn report_live_metric(
    svc: &RegistryService,
    req: Request<pb::ReportLiveMetricRequest>,
) -> Result<Response<pb::ReportLiveMetricResponse>, Status> {
    let reading = parse::live_observation(req.into_inner(), svc.store.clock().now_micros())?;
    app::report_live_metric(&svc.store, reading).await?;
    Ok(Response::new(pb::ReportLiveMetricResponse {}))
}

#[instrument(skip_all, fields(model = %req.get_ref().model, version = req.get_ref().version, worker = %req.get_ref().worker))]
pub(super) async fn report_worker_failure(
    svc: &RegistryService,
    req: Request<pb::ReportWorkerFailureRequest>,
) -> Result<Response<pb::ReportWorkerFailureResponse>, Status> {
    let actor = actor(&req)?;
    let failure = WorkerFailure::try_from(req.into_inner())?;
    let event = Some(event_to_pb(
        app::report_worker_failure(&svc.store, failure, actor).await?,
    ));
    Ok(Response::new(pb::ReportWorkerFailureResponse { event }))
}
