//! modelreg-server: a model registry that drives the life of ML models.
//!
//! A tonic gRPC server holds models and their versions, moves versions through
//! lifecycle stages, keeps an append-only, hash-chained event log and streams
//! it to workers with WatchTransitions.
//!
//! # Layout
//!
//! Data flows one way: edges → use cases → pure rules and statements →
//! the watch tail. Nothing calls back up.
//!
//! - Edges, which speak a protocol and hold no rule:
//!   - [`grpc`]: `ModelRegistryService`, a handler per RPC that identifies
//!     the caller, parses the request into domain values, calls one [`app`]
//!     function and converts the answer ([`grpc::convert`]).
//!   - [`http`]: the HTTP listener (`--http-listen`): `/metrics` and the
//!     [`dashboard`] (server-rendered pages, sign-in, CSRF-checked decisions,
//!     live refresh by SSE), to loopback names and `--public-url`'s host only.
//!     The dashboard calls [`app`] like the gRPC handlers do, never them.
//!   - [`auth`]: bearer tokens, the one action → role table both edges
//!     enforce, and the tower layer that checks it before any gRPC handler
//!     runs (local mode without a token file, loopback only).
//! - [`app`]: one async function per use case, the only place where rules
//!   are put in order; [`app::transitions`]'s `decide_move` is the one
//!   answer to "applies now, needs approval, or refused by gates" for every
//!   path that moves a version. [`policy`] runs the policy engine's use
//!   cases every `--policy-interval` on an injectable clock.
//! - [`domain`]: the pure vocabulary and rules: names and input limits,
//!   models and versions, the lifecycle, events and the hash chain
//!   ([`domain::audit`]), policies and gates, transition requests,
//!   evaluations. No I/O, no protobuf, no SQL.
//! - [`store`]: statements only, on SQLite or PostgreSQL: one write
//!   transaction, reads, the event append, and the "new commit" signal.
//! - [`watch`]: the event log's shared tail → each WatchTransitions
//!   subscriber and each live dashboard page.
//! - Around them: [`error`] (one error type, one mapping to gRPC and HTTP codes),
//!   [`metrics`], [`settings`], [`ready`] (`--ready-file`), [`transport`].
//!
//! # The path of a RegisterVersion call
//!
//! 1. `auth.rs`: the tower layer maps the bearer token to an `Identity` and
//!    checks the role `RegisterVersion` needs (publisher).
//! 2. `grpc/mod.rs` routes the RPC to `grpc/versions.rs`, which parses the
//!    request into a `domain::NewVersion` (`domain/names.rs`, `domain/model.rs`
//!    check every field) and names the actor.
//! 3. `app/versions.rs` `register_version` runs one write transaction: it locks
//!    the model, replays a retried request id (`app/idempotency.rs`), asks
//!    `app/transitions.rs` `decide_move` about a target stage (gates from
//!    `app/gates.rs` and `domain/policy.rs`), inserts the version, opens a
//!    request if one is needed, and appends the events (`app/mod.rs`, hash
//!    chain from `domain/audit.rs`).
//! 4. `store/` executes those statements and commits (group commit on
//!    SQLite), then signals the new sequence.
//! 5. `watch.rs` reads the new events once into its tail and feeds every
//!    subscriber whose filter matches; `grpc/convert.rs` turns the answer
//!    into a `RegisterVersionResponse`.
//!
//! [`run`] takes a bound listener and a shutdown future, so tests bind
//! `127.0.0.1:0` and never sleep.
#![forbid(unsafe_code)]

pub mod app;
pub mod auth;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod policy;
pub mod ready;
pub mod settings;
pub mod store;
pub mod transport;
pub mod watch;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use modelreg_api::v1::model_registry_service_server::ModelRegistryServiceServer;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Server, ServerTlsConfig};
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

pub use settings::Settings;

use crate::auth::{AuthLayer, TokenStore};
use crate::grpc::RegistryService;
use crate::policy::PolicyEngine;
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
        PolicyEngine::new(self.store.clone(), self.settings.clock.clone())
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
        if tokens.is_none() && !local.ip().to_canonical().is_loopback() {
            store.close().await;
            return Err(StartError(format!(
                "refusing to serve on {local} without authentication: pass --auth-tokens FILE \
                 (MODELREG_AUTH_TOKENS) with the callers' bearer tokens, or listen on a loopback \
                 address such as 127.0.0.1:50051 for local mode"
            )));
        }
        if let Some(path) = &settings.ready_file {
            // Both listeners are bound: connections queue until serving starts.
            let text = ready::render(local, http.as_ref().map(|h| h.addr));
            if let Err(e) = ready::write(path, &text) {
                store.close().await;
                return Err(StartError(format!(
                    "cannot write the ready file {} (--ready-file, MODELREG_READY_FILE): {e}",
                    path.display()
                )));
            }
        }
        // Fired once at shutdown: every stream, listener and loop ends.
        let stop = CancellationToken::new();

        let auth = match &tokens {
            Some(tokens) => {
                #[cfg(unix)]
                auth::reload_on_sighup(tokens.clone(), stop.clone())
                    .map_err(|e| StartError(format!("cannot watch for SIGHUP: {e}")))?;
                tracing::info!(
                    file = %tokens.path().display(),
                    tokens = tokens.current().len(),
                    "bearer tokens required; SIGHUP reloads the token file"
                );
                AuthLayer::tokens(tokens.clone())
            }
            None => {
                tracing::warn!(
                    "local mode (no --auth-tokens): anyone on this machine can act as anyone, \
                     with every role; only loopback addresses are served"
                );
                AuthLayer::local()
            }
        };

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::Serving).await;
        let monitor = tokio::spawn(monitor_database(
            store.clone(),
            health.clone(),
            stop.clone(),
        ));

        let policy = tokio::spawn(
            PolicyEngine::new(store.clone(), settings.clock.clone())
                .run(settings.policy_interval, stop.clone()),
        );

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

        // One tail of the event log, read by gRPC watchers and the dashboard's
        // live pages alike.
        let tail = watch::Tail::spawn(store.clone(), stop.clone());
        let service = RegistryService::new(
            store.clone(),
            tail.clone(),
            stop.clone(),
            settings.heartbeat_interval,
            settings.clock.clone(),
        );
        let metrics = metrics::Metrics::new(store.clone(), tail.watchers());
        let registry = dashboard::Registry {
            store: store.clone(),
            tail,
            heartbeat: settings.heartbeat_interval,
            shutdown: stop.clone(),
        };
        let http_task = http.map(|h| {
            tracing::info!(address = %h.addr, tls = h.tls.is_some(), "serving the dashboard and /metrics over HTTP");
            let hosts = http::AllowedHosts::new(
                h.addr.port(),
                settings.public_url.clone(),
                tokens.is_none(),
            );
            tokio::spawn(http::serve(
                h.listener,
                h.tls,
                tokens.clone(),
                hosts,
                metrics.clone(),
                registry,
                stop.clone(),
            ))
        });
        let registry = ModelRegistryServiceServer::new(service)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);

        let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
        let signal_health = health.clone();
        let signal = async move {
            shutdown.await;
            tracing::info!("shutting down: ending watch streams and finishing calls");
            set_health(&signal_health, ServingStatus::NotServing).await;
            stop.cancel();
        };
        tracing::info!(address = %local, tls = tls.is_some(), database = %redact(&settings.database_url), "modelreg-server serving");
        let mut builder = Server::builder();
        if let Some(tls) = tls {
            builder = builder
                .tls_config(tls)
                .map_err(|e| StartError(format!("TLS: {e}")))?;
        }
        let served = builder
            // Reap connections of watchers that vanished without closing.
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            // Outermost, so refused and rewritten calls are counted as answered.
            .layer(metrics.grpc_layer())
            // Only ModelRegistryService paths are checked; health and
            // reflection stay open.
            .layer(auth)
            .layer(transport::DecodeErrorCodes)
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha)
            .add_service(registry)
            .serve_with_incoming_shutdown(incoming, signal)
            .await;
        if let Some(http_task) = http_task {
            // It saw the stop signal with everyone else; open scrapes finish.
            let _ = http_task.await;
        }
        monitor.abort();
        // A tick in flight is cut short between transactions: each write is
        // detached and commits whole or not at all.
        policy.abort();
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
