//! Starting and stopping the server: [`Application::build`] opens the
//! database and binds the listeners, [`Application::run_until_stopped`] serves
//! gRPC (with health, reflection and the auth layer), the HTTP listener and
//! the policy engine until shutdown; TLS material and the database health
//! monitor live here too.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use modelreg_api::v1::model_registry_service_server::ModelRegistryServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use crate::auth::{AuthLayer, TokenStore};
use crate::grpc::RegistryService;
use crate::policy::PolicyEngine;
use crate::settings::Settings;
use crate::store::Store;
use crate::telemetry::redact;
use crate::{auth, dashboard, http, metrics, ready, store, transport, watch};

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
    /// The bearer tokens from `--auth-tokens`; `None` is local mode.
    tokens: Option<TokenStore>,
    /// TLS from `--tls-cert`/`--tls-key`, already checked to load.
    tls: Option<ServerTlsConfig>,
    /// The HTTP listener of `--http-listen`, bound by `build`; `None` when off.
    http: Option<HttpListener>,
}

/// The bound HTTP listener and its TLS.
struct HttpListener {
    /// Bound at build time, so a busy port stops the start.
    listener: TcpListener,
    /// The address it is bound to (the real port when 0 was asked for).
    addr: SocketAddr,
    /// The same certificate as the gRPC port, for HTTPS.
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl Application {
    /// Loads the token file and TLS files named by `settings`, then opens
    /// (creating and migrating) the database. A bad token file or unreadable
    /// certificate is an error before the database is touched.
    pub async fn build(settings: Settings) -> Result<Application, StartError> {
        if let Some(path) = &settings.ready_file {
            ready::clear(path).map_err(|e| {
                StartError(format!(
                    "cannot remove the old ready file {} (--ready-file, MODELREG_READY_FILE): {e}",
                    path.display()
                ))
            })?;
        }
        let tokens = match &settings.auth_tokens {
            Some(path) => Some(TokenStore::open(path).map_err(|e| StartError(e.to_string()))?),
            None => None,
        };
        let tls = load_tls(&settings)?;
        let http = match settings.http_listen.addr() {
            None => None,
            Some(addr) => {
                let pems = tls.as_ref().map(|(_, pems)| pems);
                Some(bind_http(addr, &settings, tokens.is_some(), pems).await?)
            }
        };
        let options = store::StoreOptions {
            max_connections: settings.database_max_connections,
            clock: settings.clock.clone(),
            ..Default::default()
        };
        let store = Store::open(&settings.database_url, &options)
            .await
            .map_err(|e| StartError(format!("cannot open the database: {e}")))?;
        Ok(Application {
            store,
            settings,
            tokens,
            tls: tls.map(|(config, _)| config),
            http,
        })
    }

    /// Where the HTTP listener (`/metrics`) is bound; `None` when
    /// `--http-listen off`.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().map(|h| h.addr)
    }

    /// A handle that runs policy ticks on this application's database at a
    /// chosen time, so tests move days ahead without waiting. The server
    /// runs its own ticks every `--policy-interval` as well.
    pub fn policy_engine(&self) -> PolicyEngine {
        PolicyEngine::new(self.store.clone())
    }

    /// Serves on `listener` until `shutdown` completes, then ends watch
    /// streams with `UNAVAILABLE`, finishes in-flight calls and closes the
    /// database.
    ///
    /// Without a token file it refuses a listener on any address but
    /// loopback: local mode trusts whatever name a caller declares.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartError> {
        let Application {
            store,
            settings,
            tokens,
            tls,
            http,
        } = self;
        let local = listener
            .local_addr()
            .map_err(|e| StartError(e.to_string()))?;
        if let Err(e) = check_start(&settings, tokens.is_some(), local, http.as_ref()) {
            store.close().await;
            return Err(e);
        }
        // Fired once at shutdown: every stream, listener and loop ends.
        let stop = CancellationToken::new();

        let auth = auth_layer(tokens.as_ref(), &stop)?;

        let health = HealthReporter::new();
        set_health(&health, ServingStatus::Serving).await;
        let monitor = tokio::spawn(monitor_database(
            store.clone(),
            health.clone(),
            stop.clone(),
        ));

        let policy = tokio::spawn(
            PolicyEngine::new(store.clone()).run(settings.policy_interval, stop.clone()),
        );

        // One tail of the event log, read by gRPC watchers and the dashboard's
        // live pages alike.
        let tail = watch::Tail::spawn(store.clone(), stop.clone());
        let service = RegistryService::new(
            store.clone(),
            tail.clone(),
            stop.clone(),
            settings.heartbeat_interval,
        );
        let metrics = metrics::Metrics::new(store.clone(), tail.watchers());
        let registry = dashboard::Registry {
            store: store.clone(),
            tail,
            heartbeat: settings.heartbeat_interval,
            shutdown: stop.clone(),
        };
        let http_task = http.map(|h| {
            let serve = HttpServe {
                tokens: tokens.clone(),
                metrics: metrics.clone(),
                registry,
                stop: stop.clone(),
            };
            spawn_http(h, &settings, serve)
        });
        let registry = ModelRegistryServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let signal_health = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: ending watch streams and finishing calls");
            set_health(&signal_health, ServingStatus::NotServing).await;
            stop.cancel();
        };
        tracing::info!(address = %local, tls = tls.is_some(), database = %redact(&settings.database_url), "modelreg-server serving");
        let layers = (metrics.grpc_layer(), auth);
        let served = serve_grpc(listener, tls, layers, health, registry, signal).await;
        wind_down(http_task, [monitor, policy], &store).await;
        served
    }
}

/// Serves gRPC on `listener` until `signal` completes: the registry behind
/// the metrics, auth and decoder-status layers; health and reflection open.
async fn serve_grpc(
    listener: TcpListener,
    tls: Option<ServerTlsConfig>,
    (metrics, auth): (metrics::GrpcMetricsLayer, AuthLayer),
    health: HealthReporter,
    registry: ModelRegistryServiceServer<RegistryService>,
    signal: impl Future<Output = ()>,
) -> Result<(), StartError> {
    let mut builder = Server::builder();
    if let Some(tls) = tls {
        builder = builder
            .tls_config(tls)
            .map_err(|e| StartError(format!("TLS: {e}")))?;
    }
    let reflection_v1 = reflection().build_v1();
    let reflection_v1alpha = reflection().build_v1alpha();
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    builder
        // Reap connections of watchers that vanished without closing.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        // Outermost, so refused and rewritten calls are counted as answered.
        .layer(metrics)
        // Only ModelRegistryService paths are checked; health and
        // reflection stay open.
        .layer(auth)
        .layer(transport::HookLayer(transport::DecodeErrorCodes))
        .add_service(HealthServer::new(HealthService::from_health_reporter(
            health,
        )))
        .add_service(reflection_v1.map_err(|e| StartError(format!("reflection: {e}")))?)
        .add_service(reflection_v1alpha.map_err(|e| StartError(format!("reflection: {e}")))?)
        .add_service(registry)
        .serve_with_incoming_shutdown(incoming, signal)
        .await
        .map_err(|e| StartError(format!("server failed: {e}")))
}

/// What the HTTP listener serves with.
struct HttpServe {
    /// The bearer tokens; `None` is local mode.
    tokens: Option<TokenStore>,
    /// `/metrics`.
    metrics: Arc<metrics::Metrics>,
    /// What the dashboard's pages call.
    registry: dashboard::Registry,
    /// Fired at shutdown.
    stop: CancellationToken,
}

/// Serves the dashboard and `/metrics` on the bound HTTP listener.
fn spawn_http(h: HttpListener, settings: &Settings, serve: HttpServe) -> JoinHandle<()> {
    tracing::info!(address = %h.addr, tls = h.tls.is_some(), "serving the dashboard and /metrics over HTTP");
    let hosts = http::AllowedHosts::new(
        h.addr.port(),
        settings.public_url.clone(),
        serve.tokens.is_none(),
    );
    tokio::spawn(http::serve(
        h.listener,
        h.tls,
        serve.tokens,
        hosts,
        serve.metrics,
        serve.registry,
        serve.stop,
    ))
}

/// After the gRPC server has stopped: lets the HTTP listener finish its open
/// scrapes (it saw the stop signal with everyone else), stops the background
/// tasks and closes the database. A policy tick in flight is cut short
/// between transactions: each write is detached and commits whole or not at
/// all.
async fn wind_down(http: Option<JoinHandle<()>>, tasks: [JoinHandle<()>; 2], store: &Store) {
    if let Some(http) = http {
        let _ = http.await;
    }
    for task in tasks {
        task.abort();
    }
    store.close().await;
    tracing::info!("modelreg-server stopped");
}

/// What must hold before serving: authentication unless on loopback, and
/// the ready file written (both listeners are bound, so connections queue
/// until serving starts).
fn check_start(
    settings: &Settings,
    authenticated: bool,
    local: SocketAddr,
    http: Option<&HttpListener>,
) -> Result<(), StartError> {
    if !authenticated && !local.ip().to_canonical().is_loopback() {
        return Err(StartError(format!(
            "refusing to serve on {local} without authentication: pass --auth-tokens FILE \
             (MODELREG_AUTH_TOKENS) with the callers' bearer tokens, or listen on a loopback \
             address such as 127.0.0.1:50051 for local mode"
        )));
    }
    if let Some(path) = &settings.ready_file {
        let text = ready::render(local, http.map(|h| h.addr));
        ready::write(path, &text).map_err(|e| {
            StartError(format!(
                "cannot write the ready file {} (--ready-file, MODELREG_READY_FILE): {e}",
                path.display()
            ))
        })?;
    }
    Ok(())
}

/// The auth layer: bearer tokens (reloaded on SIGHUP until `stop`), or local mode.
fn auth_layer(
    tokens: Option<&TokenStore>,
    stop: &CancellationToken,
) -> Result<AuthLayer, StartError> {
    let Some(tokens) = tokens else {
        tracing::warn!(
            "local mode (no --auth-tokens): anyone on this machine can act as anyone, \
             with every role; only loopback addresses are served"
        );
        return Ok(AuthLayer::local());
    };
    #[cfg(unix)]
    auth::reload_on_sighup(tokens.clone(), stop.clone())
        .map_err(|e| StartError(format!("cannot watch for SIGHUP: {e}")))?;
    tracing::info!(
        file = %tokens.path().display(),
        tokens = tokens.current().len(),
        "bearer tokens required; SIGHUP reloads the token file"
    );
    Ok(AuthLayer::tokens(tokens.clone()))
}

/// Server reflection over the registry, health and the google.rpc error
/// details, so grpcurl can decode BadRequest and friends.
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(modelreg_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
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

/// Binds the `--http-listen` address, with the gRPC port's rules: without
/// tokens only loopback, and the same certificate when TLS is on.
async fn bind_http(
    addr: SocketAddr,
    settings: &Settings,
    authenticated: bool,
    pems: Option<&TlsPems>,
) -> Result<HttpListener, StartError> {
    if !authenticated && !addr.ip().to_canonical().is_loopback() {
        return Err(StartError(format!(
            "refusing to serve HTTP on {addr} without authentication: pass --auth-tokens FILE \
             (MODELREG_AUTH_TOKENS), listen on a loopback address such as 127.0.0.1:8080 \
             (--http-listen, MODELREG_HTTP_LISTEN), or turn it off with --http-listen off"
        )));
    }
    let tls = match pems {
        Some(pems) => Some(http_tls(settings, pems)?),
        None => None,
    };
    let listener = TcpListener::bind(addr).await.map_err(|e| {
        StartError(format!(
            "cannot listen for HTTP on {addr} (--http-listen, MODELREG_HTTP_LISTEN; `off` \
             disables it): {e}"
        ))
    })?;
    let addr = listener
        .local_addr()
        .map_err(|e| StartError(e.to_string()))?;
    Ok(HttpListener {
        listener,
        addr,
        tls,
    })
}

/// The certificate and key as read from their PEM files.
struct TlsPems {
    cert: Vec<u8>,
    key: Vec<u8>,
}

/// The HTTP listener's rustls configuration, from the gRPC port's PEM bytes.
fn http_tls(settings: &Settings, pems: &TlsPems) -> Result<tokio_rustls::TlsAcceptor, StartError> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let named = |e: &dyn std::fmt::Display| {
        StartError(format!(
            "TLS certificate {} or key {} is not usable for HTTP: {e}",
            settings.tls_cert.clone().unwrap_or_default().display(),
            settings.tls_key.clone().unwrap_or_default().display()
        ))
    };
    let certs = CertificateDer::pem_slice_iter(&pems.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| named(&e))?;
    let key = PrivateKeyDer::from_pem_slice(&pems.key).map_err(|e| named(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| named(&e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| named(&e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The TLS configuration named by `--tls-cert` and `--tls-key`: both or
/// neither, readable, and accepted by rustls; with the PEM bytes it was made of.
fn load_tls(settings: &Settings) -> Result<Option<(ServerTlsConfig, TlsPems)>, StartError> {
    let (cert, key) = match (&settings.tls_cert, &settings.tls_key) {
        (None, None) => return Ok(None),
        (Some(cert), Some(key)) => (cert, key),
        (Some(_), None) => {
            return Err(StartError(
                "--tls-cert needs --tls-key (MODELREG_TLS_KEY): the certificate's private key in PEM".into(),
            ));
        }
        (None, Some(_)) => {
            return Err(StartError(
                "--tls-key needs --tls-cert (MODELREG_TLS_CERT): the certificate chain in PEM"
                    .into(),
            ));
        }
    };
    let read = |what: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| {
            StartError(format!(
                "cannot read the TLS {what} {}: {e}",
                path.display()
            ))
        })
    };
    let pems = TlsPems {
        cert: read("certificate", cert)?,
        key: read("key", key)?,
    };
    let identity = tonic::transport::Identity::from_pem(&pems.cert, &pems.key);
    let config = ServerTlsConfig::new().identity(identity);
    // Build once now so a bad PEM stops the start with its file names.
    Server::builder().tls_config(config.clone()).map_err(|e| {
        StartError(format!(
            "TLS certificate {} or key {} is not usable: {e}",
            cert.display(),
            key.display()
        ))
    })?;
    Ok(Some((config, pems)))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(SERVICE_NAME, status).await;
}

/// Turns health NOT_SERVING while the database does not answer, and back.
async fn monitor_database(store: Store, health: HealthReporter, stop: CancellationToken) {
    let mut healthy = true;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = stop.cancelled() => return,
        }
        // A database that does not answer within 2 s counts as down, even
        // while the pool is still waiting out its connection timeout.
        let ok = matches!(
            tokio::time::timeout(Duration::from_secs(2), store.ping()).await,
            Ok(Ok(()))
        );
        if ok != healthy && !stop.is_cancelled() {
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
