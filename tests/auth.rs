//! Authentication, roles and TLS end to end (SPEC §7), on the real server
//! over real TCP with SQLite: every RPC checks the caller's role, calls
//! without a valid bearer token are refused, the token names the actor,
//! health and reflection stay open, local mode only serves loopback, SIGHUP
//! reloads the token file, and TLS works with a CA generated at test time.

use std::collections::{BTreeSet, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use modelreg_client::{ConnectOptions, connect, pb};
use modelreg_server::auth::{Identity, Role, required_role};
use modelreg_server::{Application, Settings, StartError};
use modelreg_tests::{
    TEST_HEARTBEAT, TestDb, events_by_actor, events_of_model, get_model, spawn_app_with,
    update_policy,
};
use pb::model_registry_service_client::ModelRegistryServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::transport::Channel;
use tonic::{Code, Status};

#[path = "support/pki.rs"]
mod pki;
use pki::Pki;

/// Every method of `ModelRegistryService` with the role it needs, written
/// out from the documented table (not read from the server's), so the matrix
/// catches a wrong entry; `the_method_list_is_complete` checks the names
/// against the proto, so a new RPC cannot skip the matrix.
const METHODS: [(&str, Role); 37] = [
    ("CreateModel", Role::Publisher),
    ("GetModel", Role::Reader),
    ("ListModels", Role::Reader),
    ("UpdateModel", Role::Publisher),
    ("RegisterVersion", Role::Publisher),
    ("GetVersion", Role::Reader),
    ("ListVersions", Role::Reader),
    ("UpdateVersion", Role::Publisher),
    ("SetAlias", Role::Publisher),
    ("DeleteAlias", Role::Publisher),
    ("TransitionStage", Role::Publisher),
    ("ApproveTransition", Role::Approver),
    ("RejectTransition", Role::Approver),
    ("CancelTransition", Role::Publisher),
    ("ListTransitionRequests", Role::Reader),
    ("Rollback", Role::Approver),
    ("CreateEvaluationSet", Role::Admin),
    ("GetEvaluationSet", Role::Reader),
    ("ListEvaluationSets", Role::Reader),
    ("AttachEvaluation", Role::Evaluator),
    ("ListEvaluations", Role::Reader),
    ("CompareVersions", Role::Reader),
    ("ReportDeployment", Role::Deployer),
    ("ReportLiveMetric", Role::Deployer),
    ("ReportWorkerFailure", Role::Evaluator),
    ("ListEvents", Role::Reader),
    ("VerifyAuditLog", Role::Reader),
    ("WatchTransitions", Role::Reader),
    ("ImportVersion", Role::Admin),
    ("Consume", Role::Reader),
    ("AckEvent", Role::Reader),
    ("RejectEvent", Role::Reader),
    ("GetConsumer", Role::Reader),
    ("ListConsumers", Role::Reader),
    ("DeleteConsumer", Role::Admin),
    ("ListDeadLetters", Role::Reader),
    ("RetryDeadLetter", Role::Approver),
];

/// One caller of the token file: a name, its single role, its token.
struct Caller {
    name: &'static str,
    role: Role,
}

impl Caller {
    fn token(&self) -> String {
        format!("secret-token-of-{}", self.name)
    }

    fn identity(&self) -> Identity {
        Identity {
            name: self.name.into(),
            roles: BTreeSet::from([self.role]),
            local: false,
        }
    }
}

/// One identity per role.
const CALLERS: [Caller; 6] = [
    Caller {
        name: "rita",
        role: Role::Reader,
    },
    Caller {
        name: "paul",
        role: Role::Publisher,
    },
    Caller {
        name: "eve",
        role: Role::Evaluator,
    },
    Caller {
        name: "dora",
        role: Role::Deployer,
    },
    Caller {
        name: "april",
        role: Role::Approver,
    },
    Caller {
        name: "ada",
        role: Role::Admin,
    },
];

fn caller(name: &str) -> &'static Caller {
    CALLERS.iter().find(|c| c.name == name).expect("a caller")
}

/// The text of a token file granting `entries` (name, role names, token).
fn token_file_text(entries: &[(&str, &[&str], &str)]) -> String {
    entries
        .iter()
        .map(|(name, roles, token)| {
            let roles: Vec<String> = roles.iter().map(|r| format!("{r:?}")).collect();
            format!(
                "[[tokens]]\nidentity = {name:?}\nroles = [{}]\ntoken_sha256 = {:?}\n\n",
                roles.join(", "),
                modelreg_server::domain::audit::sha256_hex(token.as_bytes())
            )
        })
        .collect()
}

/// Writes `text` to `path` atomically (write aside, rename), as an
/// administrator should before SIGHUP, so the server never reads half a file.
fn write_atomically(path: &Path, text: &str) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, text).expect("write token file");
    std::fs::rename(&aside, path).expect("rename token file");
}

/// A token file (in `dir`) with every caller of [`CALLERS`].
fn callers_token_file(dir: &Path) -> PathBuf {
    let tokens: Vec<String> = CALLERS.iter().map(Caller::token).collect();
    let entries: Vec<(&str, &[&str], &str)> = CALLERS
        .iter()
        .zip(&tokens)
        .map(|(c, t)| {
            let roles: &[&str] = match c.role {
                Role::Reader => &["reader"],
                Role::Publisher => &["publisher"],
                Role::Evaluator => &["evaluator"],
                Role::Deployer => &["deployer"],
                Role::Approver => &["approver"],
                Role::Admin => &["admin"],
            };
            (c.name, roles, t.as_str())
        })
        .collect();
    let path = dir.join("tokens.toml");
    write_atomically(&path, &token_file_text(&entries));
    path
}

/// A generated client with no metadata of its own: each call carries what the test gives it.
async fn plain_client(url: &str) -> ModelRegistryServiceClient<Channel> {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    ModelRegistryServiceClient::new(channel)
}

/// `msg` with `authorization: <auth>` when given.
fn with_auth<T>(msg: T, auth: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(auth) = auth {
        req.metadata_mut()
            .insert("authorization", auth.parse().expect("header text"));
    }
    req
}

/// Calls `method` with an empty request. For WatchTransitions the code
/// arrives either at call time or as the first stream item; both count.
async fn call(
    c: &mut ModelRegistryServiceClient<Channel>,
    method: &str,
    auth: Option<&str>,
) -> Result<(), Status> {
    macro_rules! unary {
        ($f:ident, $req:ident) => {
            c.$f(with_auth(pb::$req::default(), auth)).await.map(|_| ())
        };
    }
    match method {
        "CreateModel" => unary!(create_model, CreateModelRequest),
        "GetModel" => unary!(get_model, GetModelRequest),
        "ListModels" => unary!(list_models, ListModelsRequest),
        "UpdateModel" => unary!(update_model, UpdateModelRequest),
        "RegisterVersion" => unary!(register_version, RegisterVersionRequest),
        "GetVersion" => unary!(get_version, GetVersionRequest),
        "ListVersions" => unary!(list_versions, ListVersionsRequest),
        "UpdateVersion" => unary!(update_version, UpdateVersionRequest),
        "SetAlias" => unary!(set_alias, SetAliasRequest),
        "DeleteAlias" => unary!(delete_alias, DeleteAliasRequest),
        "TransitionStage" => unary!(transition_stage, TransitionStageRequest),
        "ApproveTransition" => unary!(approve_transition, ApproveTransitionRequest),
        "RejectTransition" => unary!(reject_transition, RejectTransitionRequest),
        "CancelTransition" => unary!(cancel_transition, CancelTransitionRequest),
        "ListTransitionRequests" => {
            unary!(list_transition_requests, ListTransitionRequestsRequest)
        }
        "Rollback" => unary!(rollback, RollbackRequest),
        "CreateEvaluationSet" => unary!(create_evaluation_set, CreateEvaluationSetRequest),
        "GetEvaluationSet" => unary!(get_evaluation_set, GetEvaluationSetRequest),
        "ListEvaluationSets" => unary!(list_evaluation_sets, ListEvaluationSetsRequest),
        "AttachEvaluation" => unary!(attach_evaluation, AttachEvaluationRequest),
        "ListEvaluations" => unary!(list_evaluations, ListEvaluationsRequest),
        "CompareVersions" => unary!(compare_versions, CompareVersionsRequest),
        "ReportDeployment" => unary!(report_deployment, ReportDeploymentRequest),
        "ReportLiveMetric" => unary!(report_live_metric, ReportLiveMetricRequest),
        "ReportWorkerFailure" => unary!(report_worker_failure, ReportWorkerFailureRequest),
        "ListEvents" => unary!(list_events, ListEventsRequest),
        "VerifyAuditLog" => unary!(verify_audit_log, VerifyAuditLogRequest),
        "ImportVersion" => unary!(import_version, ImportVersionRequest),
        "AckEvent" => unary!(ack_event, AckEventRequest),
        "RejectEvent" => unary!(reject_event, RejectEventRequest),
        "GetConsumer" => unary!(get_consumer, GetConsumerRequest),
        "ListConsumers" => unary!(list_consumers, ListConsumersRequest),
        "DeleteConsumer" => unary!(delete_consumer, DeleteConsumerRequest),
        "ListDeadLetters" => unary!(list_dead_letters, ListDeadLettersRequest),
        "RetryDeadLetter" => unary!(retry_dead_letter, RetryDeadLetterRequest),
        // An empty join: refused by role, or past it and refused as invalid.
        "Consume" => {
            let join = pb::ConsumeRequest {
                kind: Some(pb::consume_request::Kind::Join(pb::ConsumeJoin::default())),
            };
            c.consume(with_auth(tokio_stream::iter(vec![join]), auth))
                .await
                .map(|_| ())
        }
        "WatchTransitions" => {
            let mut stream = c
                .watch_transitions(with_auth(pb::WatchTransitionsRequest::default(), auth))
                .await?
                .into_inner();
            // An accepted stream sends a heartbeat within TEST_HEARTBEAT; a
            // refusal would be the first item.
            match tokio::time::timeout(TEST_HEARTBEAT * 10, stream.message()).await {
                Ok(Err(status)) => Err(status),
                _ => Ok(()),
            }
        }
        other => panic!("the test has no call for {other}"),
    }
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// The method list above is exactly the proto's `ModelRegistryService`, so
/// the role matrix covers every RPC.
#[test]
fn the_method_list_is_complete() {
    use prost::Message as _;
    let set = prost_types::FileDescriptorSet::decode(modelreg_api::FILE_DESCRIPTOR_SET)
        .expect("descriptor set");
    let in_proto: BTreeSet<String> = set
        .file
        .iter()
        .filter(|f| f.package() == "modelreg.v1")
        .flat_map(|f| &f.service)
        .filter(|s| s.name() == "ModelRegistryService")
        .flat_map(|s| &s.method)
        .map(|m| m.name().to_owned())
        .collect();
    let listed: BTreeSet<String> = METHODS.iter().map(|(m, _)| m.to_string()).collect();
    assert_eq!(listed, in_proto);
}

/// Role × RPC: every identity, on every method, is let through exactly when
/// it holds the role the method needs, and is otherwise refused with
/// PERMISSION_DENIED naming the role, the identity and the method. The
/// server's published table (`required_role`) agrees with the documented one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_checks_the_callers_role() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let tokens = callers_token_file(dir.path());
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(tokens)).await;
    let mut c = plain_client(&app.url).await;

    for (method, role) in METHODS {
        assert_eq!(required_role(method), role, "{method}");
    }

    let mut allowed = 0;
    let mut denied = 0;
    for who in &CALLERS {
        let auth = bearer(&who.token());
        for (method, role) in METHODS {
            // Act
            let result = call(&mut c, method, Some(&auth)).await;

            // Assert
            let code = result.as_ref().err().map(Status::code);
            if who.identity().has(role) {
                allowed += 1;
                assert!(
                    !matches!(code, Some(Code::Unauthenticated | Code::PermissionDenied)),
                    "{} ({}) must reach {method}: {result:?}",
                    who.name,
                    who.role
                );
            } else {
                denied += 1;
                let status = result.expect_err("must be refused");
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{} ({}) calling {method}: {status:?}",
                    who.name,
                    who.role
                );
                let msg = status.message();
                assert!(
                    msg.contains(&format!("\"{role}\""))
                        && msg.contains(who.name)
                        && msg.contains(method),
                    "the refusal must name the role, the identity and the method: {msg}"
                );
            }
        }
    }
    // The matrix has both outcomes for every role but admin's.
    assert_eq!(allowed + denied, CALLERS.len() * METHODS.len());
    assert!(allowed > METHODS.len() && denied > METHODS.len());
    for (method, role) in METHODS {
        assert!(
            caller("ada").identity().has(role),
            "admin may call {method}"
        );
    }
}

/// Without a token, with an unknown token, or with an authorization header
/// that is not `Bearer <token>`, every method answers UNAUTHENTICATED, says
/// how to authenticate, and never echoes what was sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_without_a_valid_token_are_unauthenticated() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let tokens = callers_token_file(dir.path());
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(tokens)).await;
    let mut c = plain_client(&app.url).await;
    let ada = caller("ada").token();
    let attempts: Vec<Option<String>> = vec![
        None,
        Some(bearer("not-a-known-token")),
        Some(bearer(&format!("{ada}x"))),
        Some("Bearer".into()),
        Some("Bearer ".into()),
        Some(format!("Basic {ada}")),
        // The admin's token itself, without the scheme.
        Some(ada.clone()),
        Some("Bearer garbage with spaces".into()),
    ];

    for (method, _) in METHODS {
        for auth in &attempts {
            // Act
            let status = call(&mut c, method, auth.as_deref())
                .await
                .expect_err("must be refused");

            // Assert
            assert_eq!(
                status.code(),
                Code::Unauthenticated,
                "{method} with {auth:?}: {status:?}"
            );
            assert!(status.message().contains("Bearer"), "{status:?}");
            assert!(!status.message().contains("secret-token"), "{status:?}");
            assert!(!status.message().contains("not-a-known"), "{status:?}");
        }
    }
    // The same channel works with a valid token: the refusals were about the tokens.
    call(&mut c, "ListModels", Some(&bearer(&ada)))
        .await
        .expect("admin lists models");
}

/// With a token, the token's identity is the actor of the events a call
/// causes, whatever `x-modelreg-actor` the caller declares.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_names_the_actor() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let tokens = callers_token_file(dir.path());
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(tokens)).await;
    let paul = connect(
        &ConnectOptions::new(app.url.clone())
            .actor("mallory")
            .token(caller("paul").token()),
    )
    .await
    .unwrap();

    // Act
    paul.clone()
        .create_model(pb::CreateModelRequest {
            name: "audited".into(),
            ..Default::default()
        })
        .await
        .expect("publisher creates a model");

    // Assert
    let events = events_of_model(&mut paul.clone(), "audited").await;
    assert!(!events.is_empty(), "CreateModel records an event");
    for e in &events {
        assert_eq!(e.actor, "paul", "{e:?}");
    }
    let by_mallory = events_by_actor(&mut paul.clone(), "mallory").await;
    assert!(by_mallory.is_empty(), "{by_mallory:?}");
}

/// With a token file, health checks and reflection answer without a token
/// (load balancers and `grpcurl list`), while the registry does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_need_no_token() {
    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let tokens = callers_token_file(dir.path());
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(tokens)).await;
    let channel = tonic::transport::Endpoint::from_shared(app.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Act
    let health = tonic_health::pb::health_client::HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "modelreg.v1.ModelRegistryService".into(),
        })
        .await
        .expect("health needs no token")
        .into_inner();
    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let reflected = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection needs no token")
        .into_inner()
        .message()
        .await
        .expect("a reflection answer")
        .expect("a reflection response");
    let registry = call(
        &mut ModelRegistryServiceClient::new(channel),
        "ListModels",
        None,
    )
    .await;

    // Assert
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let Some(MessageResponse::ListServicesResponse(list)) = reflected.message_response else {
        panic!("expected a service list");
    };
    let names: HashSet<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains("modelreg.v1.ModelRegistryService"),
        "{names:?}"
    );
    assert_eq!(registry.unwrap_err().code(), Code::Unauthenticated);
}

/// A server started by a test on a listener of its own.
struct Running {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    handle: JoinHandle<Result<(), StartError>>,
}

impl Running {
    async fn start(settings: Settings, listener: tokio::net::TcpListener) -> Running {
        let addr = listener.local_addr().unwrap();
        let app = Application::build(settings)
            .await
            .unwrap_or_else(|e| panic!("server builds: {e}"));
        let (stop, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(app.run_until_stopped(listener, async {
            let _ = rx.await;
        }));
        Running { addr, stop, handle }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.handle
            .await
            .expect("server task")
            .expect("server stops cleanly");
    }
}

/// The message of a refused build.
async fn build_error(settings: Settings) -> String {
    match Application::build(settings).await {
        Ok(_) => panic!("the server must refuse to start"),
        Err(e) => e.0,
    }
}

/// Without a token file the server refuses a non-loopback address, telling
/// the operator to pass --auth-tokens; with one it serves there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_loopback_without_a_token_file() {
    // Arrange
    let db = TestDb::sqlite();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let app = Application::build(Settings::for_database(db.url.clone()))
        .await
        .unwrap();

    // Act
    let refused = tokio::time::timeout(
        Duration::from_secs(30),
        app.run_until_stopped(listener, std::future::pending()),
    )
    .await
    .expect("refused at once, not served")
    .expect_err("local mode on 0.0.0.0 must be refused");

    // Assert
    assert!(refused.0.contains("--auth-tokens"), "{refused}");

    // Arrange: the same address with a token file.
    let dir = tempfile::tempdir().unwrap();
    let mut settings = Settings::for_database(db.url.clone());
    settings.auth_tokens = Some(callers_token_file(dir.path()));
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let server = Running::start(settings, listener).await;

    // Act
    let url = format!("http://127.0.0.1:{}", server.addr.port());
    let got = call(
        &mut plain_client(&url).await,
        "GetModel",
        Some(&bearer(&caller("rita").token())),
    )
    .await;

    // Assert: served and authenticated (the empty name is a bad argument).
    assert_eq!(got.unwrap_err().code(), Code::InvalidArgument);
    server.stop().await;
}

/// A bad token file or incomplete or unreadable TLS files stop the start
/// with a message naming the problem.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configurations_stop_the_start() {
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let settings = || Settings::for_database(db.url.clone());

    let tokens = dir.path().join("bad-tokens.toml");
    std::fs::write(
        &tokens,
        "[[tokens]]\nidentity = \"zed\"\nroles = [\"superuser\"]\ntoken_sha256 = \"00\"\n",
    )
    .unwrap();
    let msg = build_error(Settings {
        auth_tokens: Some(tokens.clone()),
        ..settings()
    })
    .await;
    assert!(
        msg.contains("bad-tokens.toml") && msg.contains("entry 1") && msg.contains("superuser"),
        "{msg}"
    );

    let msg = build_error(Settings {
        auth_tokens: Some(dir.path().join("missing.toml")),
        ..settings()
    })
    .await;
    assert!(msg.contains("missing.toml"), "{msg}");

    let pki = Pki::generate(dir.path());
    let msg = build_error(Settings {
        tls_cert: Some(pki.cert.clone()),
        ..settings()
    })
    .await;
    assert!(msg.contains("--tls-key"), "{msg}");
    let msg = build_error(Settings {
        tls_key: Some(pki.key.clone()),
        ..settings()
    })
    .await;
    assert!(msg.contains("--tls-cert"), "{msg}");

    let msg = build_error(Settings {
        tls_cert: Some(dir.path().join("nope.pem")),
        tls_key: Some(pki.key.clone()),
        ..settings()
    })
    .await;
    assert!(
        msg.contains("nope.pem") && msg.contains("cannot read"),
        "{msg}"
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let msg = build_error(Settings {
        tls_cert: Some(pki.cert.clone()),
        tls_key: Some(garbage),
        ..settings()
    })
    .await;
    assert!(msg.contains("garbage.pem"), "{msg}");
}

/// SIGHUP makes the running server re-read its token file: a new token is
/// accepted and a removed one refused, without a restart.
#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_token_file() {
    // Arrange
    let _hangups = modelreg_tests::catch_hangups();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    write_atomically(
        &path,
        &token_file_text(&[("old", &["reader"], "old-token")]),
    );
    let tokens = path.clone();
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(tokens)).await;
    let mut c = plain_client(&app.url).await;
    let old = bearer("old-token");
    let new = bearer("new-token");
    call(&mut c, "ListModels", Some(&old))
        .await
        .expect("the old token works");
    let refused = call(&mut c, "ListModels", Some(&new)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // Act
    write_atomically(
        &path,
        &token_file_text(&[("new", &["reader"], "new-token")]),
    );
    modelreg_tests::send_hangup();

    // Assert: the signal is handled asynchronously; wait for it, bounded.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match call(&mut c, "ListModels", Some(&new)).await {
            Ok(()) => break,
            Err(s) if s.code() == Code::Unauthenticated => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the new token was never accepted"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(s) => panic!("unexpected {s:?}"),
        }
    }
    let refused = call(&mut c, "ListModels", Some(&old)).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
}

/// With --tls-cert/--tls-key the server speaks TLS: the client library
/// trusting the CA connects to https://localhost and https://127.0.0.1 and
/// works; a plaintext client, a client trusting another CA, and an https
/// URL without a CA all fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_round_trip_with_a_generated_ca() {
    // Arrange
    let db = TestDb::sqlite();
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::generate(dir.path());
    let mut settings = Settings::for_database(db.url.clone());
    settings.tls_cert = Some(pki.cert.clone());
    settings.tls_key = Some(pki.key.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Running::start(settings, listener).await;
    let port = server.addr.port();

    // Act
    let mut c = connect(
        &ConnectOptions::new(format!("https://localhost:{port}"))
            .actor("tls-user")
            .ca_cert(&pki.ca),
    )
    .await
    .expect("connect over TLS");
    c.create_model(pb::CreateModelRequest {
        name: "secure".into(),
        ..Default::default()
    })
    .await
    .expect("create over TLS");
    let mut by_ip =
        connect(&ConnectOptions::new(format!("https://127.0.0.1:{port}")).ca_cert(&pki.ca))
            .await
            .expect("connect over TLS by IP");
    let model = get_model(&mut by_ip, "secure").await;

    // Assert
    assert_eq!(model.name, "secure");

    let plaintext = async {
        let mut c = connect(&ConnectOptions::new(format!("http://127.0.0.1:{port}")))
            .await
            .map_err(|e| e.to_string())?;
        c.list_models(pb::ListModelsRequest::default())
            .await
            .map_err(|e| e.to_string())
    };
    let plaintext = tokio::time::timeout(Duration::from_secs(30), plaintext)
        .await
        .expect("the plaintext attempt ends");
    assert!(plaintext.is_err(), "plaintext must not reach a TLS server");

    let other = Pki::generate(dir.path());
    let untrusted = async {
        let mut c =
            connect(&ConnectOptions::new(format!("https://localhost:{port}")).ca_cert(&other.ca))
                .await
                .map_err(|e| e.to_string())?;
        c.list_models(pb::ListModelsRequest::default())
            .await
            .map_err(|e| e.to_string())
    };
    let untrusted = tokio::time::timeout(Duration::from_secs(30), untrusted)
        .await
        .expect("the untrusted attempt ends");
    assert!(
        untrusted.is_err(),
        "a certificate from another CA must be refused"
    );

    let err = match connect(&ConnectOptions::new(format!("https://localhost:{port}"))).await {
        Ok(_) => panic!("https without a CA must be refused"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("--ca-cert"), "{err}");

    server.stop().await;
}

/// The governed path with real tokens: a publisher who is also an approver
/// requests production and may not approve it herself; another approver
/// does; a publisher may not cancel someone else's request nor set a policy,
/// an admin may; every event names the token's identity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_governed_path_with_tokens() {
    // Arrange: alice publishes and approves, bob approves, carol publishes, ada administers.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    write_atomically(
        &path,
        &token_file_text(&[
            ("alice", &["publisher", "approver"], "alice-token"),
            ("bob", &["approver"], "bob-token"),
            ("carol", &["publisher"], "carol-token"),
            ("ada", &["admin"], "ada-token"),
        ]),
    );
    let app = spawn_app_with(&TestDb::sqlite(), |s| s.auth_tokens = Some(path)).await;
    let opts = |token: &str| {
        ConnectOptions::new(app.url.clone())
            .actor("mallory")
            .token(token)
    };
    let mut alice = connect(&opts("alice-token")).await.unwrap();
    let mut bob = connect(&opts("bob-token")).await.unwrap();
    let mut carol = connect(&opts("carol-token")).await.unwrap();
    let mut ada = connect(&opts("ada-token")).await.unwrap();

    // A publisher may create a model with the default policy, not set one.
    let refused = carol
        .create_model(pb::CreateModelRequest {
            name: "fraud".into(),
            policy: Some(pb::Policy {
                min_approvals: Some(2),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("admin"), "{refused:?}");
    alice
        .create_model(pb::CreateModelRequest {
            name: "fraud".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let refused = update_policy(&mut alice, "fraud", pb::Policy::default(), "")
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    for _ in 0..2 {
        alice
            .register_version(pb::RegisterVersionRequest {
                model: "fraud".into(),
                artifact_uri: "s3://m/fraud".into(),
                target_stage: pb::Stage::Staging as i32,
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let ask = |version: i64| pb::TransitionStageRequest {
        model: "fraud".into(),
        version,
        target_stage: pb::Stage::Production as i32,
        comment: "ship it".into(),
        etag: String::new(),
    };

    // Act and assert: the requester cannot approve; another approver can.
    let r1 = alice.transition_stage(ask(1)).await.unwrap().into_inner();
    let id = r1.request.unwrap().id;
    let own = alice
        .approve_transition(pb::ApproveTransitionRequest {
            request_id: id.clone(),
            comment: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(own.code(), Code::FailedPrecondition, "{own:?}");
    let done = bob
        .approve_transition(pb::ApproveTransitionRequest {
            request_id: id.clone(),
            comment: "ok".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(done.version.unwrap().stage, pb::Stage::Production as i32);

    // Someone else's request: carol may not cancel it, an admin may.
    let r2 = alice.transition_stage(ask(2)).await.unwrap().into_inner();
    let id2 = r2.request.unwrap().id;
    let cancel = |id: &str| pb::CancelTransitionRequest {
        request_id: id.to_owned(),
        comment: "no".into(),
    };
    let refused = carol.cancel_transition(cancel(&id2)).await.unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("alice"), "{refused:?}");
    ada.cancel_transition(cancel(&id2)).await.unwrap();

    let events = events_of_model(&mut ada, "fraud").await;
    let who: Vec<(String, &str)> = events
        .iter()
        .map(|e| {
            let kind = pb::EventType::try_from(e.r#type).unwrap().as_str_name();
            (e.actor.clone(), kind.trim_start_matches("EVENT_TYPE_"))
        })
        .collect();
    let expected = [
        ("alice", "MODEL_CREATED"),
        ("alice", "VERSION_REGISTERED"),
        ("alice", "STAGE_CHANGED"),
        ("alice", "VERSION_REGISTERED"),
        ("alice", "STAGE_CHANGED"),
        ("alice", "TRANSITION_REQUESTED"),
        ("bob", "TRANSITION_APPROVED"),
        ("bob", "STAGE_CHANGED"),
        ("alice", "TRANSITION_REQUESTED"),
        ("ada", "TRANSITION_CANCELLED"),
    ];
    let expected: Vec<(String, &str)> = expected.iter().map(|(a, k)| (a.to_string(), *k)).collect();
    assert_eq!(who, expected);
}
