//! modelreg-server: a model registry that drives the life of ML models.
//!
//! A tonic gRPC server holds models and their versions, moves versions through
//! lifecycle stages, keeps an append-only, hash-chained event log and streams
//! it to workers with WatchTransitions.
//!
//! # Layout
//!
//! Modules follow the data's path through a call:
//!
//! - [`service`]: the gRPC edge. Parses requests into domain values, calls the
//!   store, converts back ([`convert`] holds the mappings).
//! - [`domain`]: names, stages, versions, events and the input limits.
//! - [`lifecycle`]: which stage moves are allowed and what they imply.
//! - [`store`]: one transaction per change, its events appended in the same
//!   transaction, on SQLite or PostgreSQL; the "new commit" signal for watchers.
//! - [`watch`]: event log → one subscriber, by sequence.
//! - [`audit`]: the hash chain over the event log.
//! - [`error`]: the one mapping from failures to gRPC status codes.
//! - [`settings`]: flags and their `MODELREG_*` environment variables.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and never sleep.
#![forbid(unsafe_code)]

pub mod audit;
pub mod convert;
pub mod domain;
pub mod error;
pub mod evaluation;
pub mod lifecycle;
pub mod service;
pub mod settings;
pub mod store;
pub mod watch;

use std::future::Future;
use std::time::Duration;

use modelreg_api::v1::model_registry_service_server::ModelRegistryServiceServer;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use settings::Settings;

use crate::service::RegistryService;
use crate::store::Store;

/// The largest request or response message, in bytes (documented limit).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// The gRPC service name reported by the health service.
const SERVICE_NAME: &str = "modelreg.v1.ModelRegistryService";

/// Why the server could not start or stopped with an error.
#[derive(Debug)]
pub struct StartError(pub String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StartError {}

/// A registry whose database is open and migrated, ready to serve.
pub struct Application {
    /// The open store.
    store: Store,
    /// The configuration it was built with.
    settings: Settings,
}

impl Application {
    /// Opens (creating and migrating) the database named by `settings`.
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        let options = store::StoreOptions {
            max_connections: settings.database_max_connections,
            ..Default::default()
        };
        let store = Store::open(&settings.database_url, &options)
            .await
            .map_err(|e| StartError(format!("cannot open the database: {e}")))?;
        Ok(Application { store, settings })
    }

    /// Serves on `listener` until `shutdown` completes, then ends watch
    /// streams with `UNAVAILABLE`, finishes in-flight calls and closes the
    /// database.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Application { store, settings } = self;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let monitor = tokio::spawn(monitor_database(
            store.clone(),
            health.clone(),
            stop_rx.clone(),
        ));

        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(modelreg_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can decode BadRequest and friends.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .map_err(|e| StartError(format!("reflection: {e}")))?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(modelreg_api::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            // google.rpc error details, so grpcurl can decode BadRequest and friends.
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .map_err(|e| StartError(format!("reflection: {e}")))?;

        let registry = ModelRegistryServiceServer::new(RegistryService::new(
            store.clone(),
            stop_rx,
            settings.heartbeat_interval,
        ))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let local = listener
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let signal_health = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: ending watch streams and finishing calls");
            set_health(&signal_health, ServingStatus::NotServing).await;
            let _ = stop_tx.send(true);
            // Keep the sender alive so streams see `true`, not a closed channel.
            std::mem::forget(stop_tx);
        };
        tracing::info!(address = %local, database = %redact(&settings.database_url), "modelreg-server serving");
        let served = Server::builder()
            // Reap connections of watchers that vanished without closing.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(registry)
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        monitor.abort();
        store.close().await;
        tracing::info!("modelreg-server stopped");
        served.map_err(|e| StartError(format!("server failed: {e}")))
    }
}

/// Opens the database, then serves on `listener` until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StartError> {
    Application::build(settings)
        .await?
        .run_until_stopped(listener, shutdown)
        .await
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Turns health NOT_SERVING while the database does not answer, and back.
async fn monitor_database(
    store: Store,
    health: HealthReporter,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.changed() => return,
        }
        let ok = store.ping().await.is_ok();
        if ok != healthy && !*stop.borrow() {
            healthy = ok;
            if ok {
                tracing::info!("database reachable again");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                tracing::error!("database unreachable");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

/// A database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let creds = &url[scheme + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Installs the tracing subscriber for the binary.
pub fn init_logging(format: settings::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MODELREG_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        settings::LogFormat::Text => builder.init(),
        settings::LogFormat::Json => builder.json().init(),
    }
}
