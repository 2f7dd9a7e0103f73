//! modelreg-client: a typed client library for the modelreg registry, and the
//! `modelreg` command-line tool built on it.
//!
//! # Layout
//!
//! - [`connect`] / [`ConnectOptions`]: a channel to the server (TLS for
//!   `https://` URLs, trusting the CA certificate given) with the caller's
//!   bearer token or local-mode name attached to every call.
//! - [`names`]: parsing of stage and event-type names as people type them.
//! - [`json`]: any modelreg message as canonical proto3 JSON, the same shape
//!   grpcurl and every generated client print.
//! - [`audit`]: the audit trail read as people ask about it: what each event
//!   did, and the production timeline of a model.
//! - [`errors`]: a status with its `BadRequest` / `PreconditionFailure`
//!   details, written for people.
//! - [`watch`]: a WatchTransitions stream that reconnects and resumes from the
//!   last sequence it saw.
//! - [`subscription`]: the workers' subscription: a durable cursor file,
//!   idempotency keys per event, graceful stop on SIGINT/SIGTERM.
//! - [`webhook`]: one signed HTTP POST to a webhook, and its retry policy.
//! - [`summary`]: the words of a notification, with the evidence for a
//!   request, in each channel's markup.
//! - [`verify`]: content digests (files and directories) and the workers'
//!   content-addressed cache of verified inputs.
//! - [`fetch`]: an evaluation set or artifact materialised from its URI
//!   (file, http(s), or a fetch hook) into that cache, checked against its
//!   digest.
//! - [`slack`]: the Slack-compatible message the notifier posts for an event.
//! - [`email`]: the mail the notifier sends for an event (subject, plain
//!   text and HTML, a Message-ID per event) and SMTP delivery.
//! - [`mlflow`]: an MLflow Model Registry read through MLflow's REST API,
//!   for `modelreg import mlflow`.
//! - [`terminal`]: text made safe to print for people (no terminal escapes).
//!
//! The generated stubs are re-exported as [`pb`]; this crate adds no second
//! set of types on top of them.
#![forbid(unsafe_code)]

pub mod audit;
pub mod consumer;
pub mod email;
pub mod errors;
pub mod fetch;
pub mod json;
pub mod mlflow;
pub mod names;
pub mod slack;
pub mod subscription;
pub mod summary;
pub mod terminal;
pub mod verify;
pub mod watch;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

pub use modelreg_api::v1 as pb;

/// The metadata key that names the caller in local mode (a server with a
/// token file takes the name from the bearer token instead).
pub use modelreg_api::ACTOR_HEADER;

/// The default server address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";

/// The generated client with the caller's metadata attached to each call.
pub type RegistryClient = pb::model_registry_service_client::ModelRegistryServiceClient<
    InterceptedService<Channel, CallMetadata>,
>;

/// Adds the caller's identity to every request.
#[derive(Clone, Default)]
pub struct CallMetadata {
    /// `x-modelreg-actor`, when set.
    actor: Option<MetadataValue<Ascii>>,
    /// `authorization: Bearer …`, when set.
    authorization: Option<MetadataValue<Ascii>>,
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(actor) = &self.actor {
            req.metadata_mut().insert(ACTOR_HEADER, actor.clone());
        }
        if let Some(auth) = &self.authorization {
            req.metadata_mut().insert("authorization", auth.clone());
        }
        Ok(req)
    }
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// The server URL, e.g. `http://127.0.0.1:50051`.
    pub server: String,
    /// The identity recorded as the actor of the caller's events.
    pub actor: Option<String>,
    /// A bearer token, sent as `authorization: Bearer …`.
    pub token: Option<String>,
    /// The PEM certificate of the CA that signed the server's certificate;
    /// needed for `https://` URLs, and the only root trusted.
    pub ca_cert: Option<PathBuf>,
}

impl ConnectOptions {
    /// Options for `server` with no identity.
    pub fn new(server: impl Into<String>) -> Self {
        ConnectOptions {
            server: server.into(),
            actor: None,
            token: None,
            ca_cert: None,
        }
    }

    /// Sets the actor.
    pub fn actor(mut self, actor: impl Into<String>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// Sets the bearer token.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets the CA certificate (PEM file) trusted for `https://` URLs.
    pub fn ca_cert(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_cert = Some(path.into());
        self
    }
}

/// Why a connection could not be made.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConnectError(pub String);

fn endpoint(opts: &ConnectOptions) -> Result<Endpoint, ConnectError> {
    let server = &opts.server;
    let url = if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map(|e| {
            e.tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(30))
                .keep_alive_timeout(Duration::from_secs(10))
        })
        .map_err(|e| ConnectError(format!("invalid server URL {url:?}: {e}")))?;
    let https = url.starts_with("https://");
    match (&opts.ca_cert, https) {
        (Some(path), true) => {
            let pem = std::fs::read(path).map_err(|e| {
                ConnectError(format!(
                    "cannot read the CA certificate {}: {e}",
                    path.display()
                ))
            })?;
            // Only this CA is trusted; no system or bundled roots are built in.
            let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem));
            endpoint.tls_config(tls).map_err(|e| {
                ConnectError(format!(
                    "TLS with the CA certificate {}: {e}",
                    path.display()
                ))
            })
        }
        (None, true) => Err(ConnectError(format!(
            "{url} uses TLS: pass --ca-cert FILE (MODELREG_CA_CERT), the PEM certificate of the CA that signed the server's certificate"
        ))),
        (Some(path), false) => Err(ConnectError(format!(
            "a CA certificate ({}) was given but {url} is not an https:// URL: use https://HOST:PORT for a TLS server",
            path.display()
        ))),
        (None, false) => Ok(endpoint),
    }
}

fn metadata(opts: &ConnectOptions) -> Result<CallMetadata, ConnectError> {
    let actor = opts
        .actor
        .as_deref()
        .map(|a| {
            a.parse()
                .map_err(|_| ConnectError(format!("actor {a:?} is not valid header text")))
        })
        .transpose()?;
    let authorization = opts
        .token
        .as_deref()
        .map(|t| {
            format!("Bearer {t}")
                .parse()
                .map_err(|_| ConnectError("the token is not valid header text".into()))
        })
        .transpose()?;
    Ok(CallMetadata {
        actor,
        authorization,
    })
}

/// Connects to the server now, failing if it cannot be reached.
pub async fn connect(opts: &ConnectOptions) -> Result<RegistryClient, ConnectError> {
    let channel = endpoint(opts)?
        .connect()
        .await
        .map_err(|e| ConnectError(format!("cannot connect to {}: {e}", opts.server)))?;
    with_channel(channel, opts)
}

/// A client that connects on first use and reconnects by itself.
pub fn connect_lazy(opts: &ConnectOptions) -> Result<RegistryClient, ConnectError> {
    let channel = endpoint(opts)?.connect_lazy();
    with_channel(channel, opts)
}

/// A client over an existing channel.
pub fn with_channel(
    channel: Channel,
    opts: &ConnectOptions,
) -> Result<RegistryClient, ConnectError> {
    Ok(
        pb::model_registry_service_client::ModelRegistryServiceClient::with_interceptor(
            channel,
            metadata(opts)?,
        )
        .max_decoding_message_size(4 * 1024 * 1024),
    )
}
