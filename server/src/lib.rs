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
//!   cases every `--policy-interval`.
//! - [`domain`]: the pure vocabulary and rules: names and input limits,
//!   models and versions, the lifecycle, events and the hash chain
//!   ([`domain::audit`]), policies and gates, transition requests,
//!   evaluations. No I/O, no protobuf, no SQL.
//! - [`store`]: statements only, on SQLite or PostgreSQL: one write
//!   transaction, reads, the event append, and the "new commit" signal.
//! - [`watch`]: the event log's shared tail → each WatchTransitions
//!   subscriber and each live dashboard page.
//! - Around them: [`startup`] (build, serve, stop; TLS; the health
//!   monitor), [`clock`] (the only source of "now", which tests replace),
//!   [`error`] (one error type, one mapping to gRPC and HTTP codes), [`telemetry`]
//!   (logging, redaction), [`metrics`], [`settings`], [`ready`]
//!   (`--ready-file`), [`transport`].
//!
//! # The path of a RegisterVersion call
//!
//! 1. `auth/mod.rs`: the tower layer maps the bearer token to an `Identity`
//!    and checks the role `auth/actions.rs` gives `RegisterVersion`
//!    (publisher).
//! 2. `grpc/mod.rs` `register_version` (the service's one handler per RPC)
//!    names the actor and parses the request with `grpc/parse.rs` into a
//!    `domain::NewVersion` (`domain/names.rs`, `domain/model.rs` check every
//!    field; all bad fields are reported at once).
//! 3. `app/versions.rs` `register_version` runs one write transaction
//!    (`write_tx!`): it locks the model, replays a retried request id
//!    (`app/idempotency.rs`), builds the version at the store's [`clock`], asks
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
pub mod clock;
pub mod consume;
pub mod dashboard;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod http;
pub mod metrics;
pub mod mlflow;
pub mod policy;
pub mod ready;
pub mod settings;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod transport;
pub mod watch;

pub use settings::Settings;
pub use startup::{Application, MAX_MESSAGE_BYTES, StartError, run};
pub use telemetry::init_logging;
