//! `/metrics` on the HTTP listener (`--http-listen`): scraped over real TCP
//! and parsed as Prometheus text; every documented series is there, the
//! counters move with traffic, each durable consumer has its lag and dead
//! letters, a token file guards it, `off` turns it off
//! and the gRPC port's start rules (loopback without tokens) hold for it.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use modelreg_client::{ConnectOptions, connect, pb};
use modelreg_server::settings::HttpListen;
use modelreg_server::{Application, Settings};
use modelreg_tests::consumers::{Member, park_dead_letter};
use modelreg_tests::{
    TestApp, TestDb, conformance, create_model, register, spawn_app_with, watch_after,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;

#[path = "support/pki.rs"]
mod pki;
use pki::Pki;

conformance!(
    the_series_are_served_and_move_with_traffic,
    consumer_lag_and_dead_letters_are_read_at_each_scrape,
);

/// Every family `/metrics` must carry, with its type.
const FAMILIES: [(&str, &str); 9] = [
    ("modelreg_grpc_requests", "counter"),
    ("modelreg_grpc_request_duration_seconds", "histogram"),
    ("modelreg_watch_streams_open", "gauge"),
    ("modelreg_events_appended", "counter"),
    ("modelreg_latest_sequence", "gauge"),
    ("modelreg_slowest_watcher_lag_events", "gauge"),
    ("modelreg_db_pool_connections", "gauge"),
    ("modelreg_write_batch_size", "histogram"),
    ("modelreg_transition_requests_pending", "gauge"),
];

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: the families' HELP and TYPE, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    help: HashMap<String, String>,
    types: HashMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// Parses the text format, panicking on any line it does not understand,
    /// on a sample of an undeclared family, and on a missing `# EOF`.
    fn parse(text: &str) -> Exposition {
        let mut out = Exposition::default();
        let mut eof = false;
        for line in text.lines() {
            assert!(!eof, "text after # EOF: {line:?}");
            if line == "# EOF" {
                eof = true;
            } else if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("HELP name text");
                assert!(!help.is_empty(), "empty HELP for {name}");
                out.help.insert(name.to_owned(), help.to_owned());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("TYPE name type");
                out.types.insert(name.to_owned(), kind.to_owned());
            } else if line.starts_with("# UNIT ") {
            } else {
                assert!(!line.starts_with('#'), "unknown comment {line:?}");
                let sample = parse_sample(line);
                assert!(
                    out.family_of(&sample.name).is_some(),
                    "sample of an undeclared family: {line:?}"
                );
                out.samples.push(sample);
            }
        }
        assert!(eof, "no # EOF at the end:\n{text}");
        out
    }

    /// The declared family a sample name belongs to.
    fn family_of(&self, sample: &str) -> Option<&str> {
        ["", "_total", "_bucket", "_sum", "_count", "_created"]
            .iter()
            .filter_map(|suffix| sample.strip_suffix(suffix))
            .find_map(|base| self.types.get_key_value(base).map(|(k, _)| k.as_str()))
    }

    /// The value of the sample `name` whose labels include `labels`; `None` if absent.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
    }

    /// Like [`Exposition::value`], with a missing sample counting as 0.
    fn value_or_zero(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels).unwrap_or(0.0)
    }

    /// The value of a sample that must be there.
    fn must(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.value(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.samples))
    }
}

/// Parses `name{k="v",…} value` (the value may be followed by a timestamp).
fn parse_sample(line: &str) -> Sample {
    let name_end = line
        .find(['{', ' '])
        .unwrap_or_else(|| panic!("no value: {line:?}"));
    let name = &line[..name_end];
    assert!(
        !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
        "bad metric name in {line:?}"
    );
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(mut inner) = rest.strip_prefix('{') {
        loop {
            if let Some(after) = inner.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = inner
                .split_once("=\"")
                .unwrap_or_else(|| panic!("label without a quoted value in {line:?}"));
            assert!(
                !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "bad label name {key:?} in {line:?}"
            );
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((_, '\\')) => value.push(match chars.next() {
                        Some((_, 'n')) => '\n',
                        Some((_, '"')) => '"',
                        Some((_, '\\')) => '\\',
                        other => panic!("bad escape {other:?} in {line:?}"),
                    }),
                    Some((i, '"')) => break i,
                    Some((_, c)) => value.push(c),
                    None => panic!("unterminated label value in {line:?}"),
                }
            };
            labels.insert(key.to_owned(), value);
            inner = &after[end + 1..];
            inner = inner.strip_prefix(',').unwrap_or(inner);
        }
    }
    assert!(
        rest.starts_with(' '),
        "no space before the value in {line:?}"
    );
    let mut parts = rest.split_whitespace();
    let raw = parts.next().unwrap_or_else(|| panic!("no value: {line:?}"));
    let value = match raw {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        raw => raw
            .parse()
            .unwrap_or_else(|_| panic!("bad value {raw:?} in {line:?}")),
    };
    if let Some(ts) = parts.next() {
        ts.parse::<f64>()
            .unwrap_or_else(|_| panic!("bad timestamp {ts:?} in {line:?}"));
    }
    assert!(parts.next().is_none(), "trailing text in {line:?}");
    Sample {
        name: name.to_owned(),
        labels,
        value,
    }
}

/// A raw HTTP/1.1 response: status code, lower-cased headers, body.
struct HttpResponse {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// GETs `path` from `addr` over plain HTTP/1.1, with `Authorization: Bearer token` if given.
async fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> HttpResponse {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the HTTP listener");
    get_over(stream, addr, path, token).await
}

/// GETs `path` over an open connection (plain or TLS) to `addr`.
async fn get_over<S>(
    mut stream: S,
    addr: SocketAddr,
    path: &str,
    token: Option<&str>,
) -> HttpResponse
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    // A TLS peer may close without close_notify after `Connection: close`;
    // what was read by then is the whole response.
    let _ = stream.read_to_end(&mut raw).await;
    let raw = String::from_utf8(raw).expect("UTF-8 response");
    let (head, body) = raw.split_once("\r\n\r\n").expect("head and body");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if let Some(len) = headers.get("content-length") {
        assert_eq!(len.parse::<usize>().unwrap(), body.len(), "content-length");
    }
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// Scrapes `/metrics`, checks the answer and parses it.
async fn scrape(addr: SocketAddr, token: Option<&str>) -> Exposition {
    let resp = get(addr, "/metrics", token).await;
    assert_eq!(resp.status, 200, "{}", resp.body);
    let kind = resp.headers.get("content-type").expect("content type");
    assert!(kind.contains("text"), "{kind}");
    Exposition::parse(&resp.body)
}

/// Every documented family is declared with HELP and its type, and each
/// scrape-time series has a sample. The gRPC families are only written
/// once a call has been counted (an empty labelled family has no lines), so
/// they are checked when `after_calls`.
fn assert_every_family(m: &Exposition, after_calls: bool) {
    for (family, kind) in FAMILIES {
        if !after_calls && family.starts_with("modelreg_grpc_") {
            continue;
        }
        assert_eq!(
            m.types.get(family).map(String::as_str),
            Some(kind),
            "TYPE of {family}"
        );
        assert!(m.help.contains_key(family), "HELP of {family}");
    }
    for name in [
        "modelreg_watch_streams_open",
        "modelreg_events_appended_total",
        "modelreg_latest_sequence",
        "modelreg_slowest_watcher_lag_events",
        "modelreg_write_batch_size_count",
        "modelreg_transition_requests_pending",
    ] {
        m.must(name, &[]);
    }
    m.must("modelreg_db_pool_connections", &[("state", "idle")]);
    m.must("modelreg_db_pool_connections", &[("state", "in_use")]);
}

fn http_on() -> HttpListen {
    HttpListen::On("127.0.0.1:0".parse().unwrap())
}

/// A server with the HTTP listener on and a token file of one identity,
/// `rita` (reader, token `rita-token`); the folder holds the file.
async fn app_with_a_reader_token() -> (tempfile::TempDir, TestApp) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            "[[tokens]]\nidentity = \"rita\"\nroles = [\"reader\"]\ntoken_sha256 = {:?}\n",
            modelreg_server::domain::audit::sha256_hex(b"rita-token")
        ),
    )
    .unwrap();
    let app = spawn_app_with(&TestDb::sqlite(), |s| {
        s.auth_tokens = Some(path);
        s.http_listen = http_on();
    })
    .await;
    (dir, app)
}

/// `/metrics` carries every documented series, and after traffic the
/// request counters (by method and code), the event counters, open watch
/// streams and pending requests have moved.
async fn the_series_are_served_and_move_with_traffic(db: TestDb) {
    // Arrange
    let app = spawn_app_with(&db, |s| s.http_listen = http_on()).await;
    let http = app.http_addr.expect("the HTTP listener is on");
    let mut c = app.client_as("alice").await;
    let mut bob = app.client_as("bob").await;
    let before = scrape(http, None).await;
    assert_every_family(&before, false);
    let ok = |m: &Exposition, method: &str| {
        m.value_or_zero(
            "modelreg_grpc_requests_total",
            &[("method", method), ("code", "OK")],
        )
    };

    // Act: a governed model (default policy: PRODUCTION needs approval),
    // two versions, a watcher, a missing model, a pending request.
    c.create_model(pb::CreateModelRequest {
        name: "churn".into(),
        ..Default::default()
    })
    .await
    .expect("create model");
    register(&mut c, "churn", pb::Stage::Staging).await;
    register(&mut c, "churn", pb::Stage::None).await;
    let mut watch = watch_after(&mut bob, 0).await.expect("watch");
    watch.message().await.expect("first message").expect("open");
    let missing = c
        .get_model(pb::GetModelRequest {
            name: "no-such-model".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::NotFound);
    let asked = c
        .transition_stage(pb::TransitionStageRequest {
            model: "churn".into(),
            version: 1,
            target_stage: pb::Stage::Production as i32,
            comment: "ship it".into(),
            ..Default::default()
        })
        .await
        .expect("request production")
        .into_inner();
    assert!(
        asked.request.is_some(),
        "the move waits for approval: {asked:?}"
    );
    let after = scrape(http, None).await;

    // Assert
    assert_every_family(&after, true);
    assert!(ok(&after, "RegisterVersion") >= ok(&before, "RegisterVersion") + 2.0);
    assert!(ok(&after, "CreateModel") >= 1.0);
    assert!(
        after.must(
            "modelreg_grpc_requests_total",
            &[("method", "GetModel"), ("code", "NOT_FOUND")]
        ) >= 1.0
    );
    assert!(
        after.must(
            "modelreg_grpc_request_duration_seconds_count",
            &[("method", "RegisterVersion")]
        ) >= 2.0
    );
    assert!(
        after.must(
            "modelreg_grpc_request_duration_seconds_bucket",
            &[("method", "RegisterVersion"), ("le", "+Inf")]
        ) >= 2.0
    );
    // Model created, two versions registered, one transition requested.
    let appended = after.must("modelreg_events_appended_total", &[])
        - before.must("modelreg_events_appended_total", &[]);
    assert!(appended >= 4.0, "{appended}");
    assert!(
        after.must("modelreg_latest_sequence", &[])
            >= before.must("modelreg_latest_sequence", &[]) + 4.0
    );
    assert!(after.must("modelreg_watch_streams_open", &[]) >= 1.0);
    assert!(after.must("modelreg_slowest_watcher_lag_events", &[]) >= 0.0);
    assert_eq!(after.must("modelreg_transition_requests_pending", &[]), 1.0);
    assert!(
        after.must("modelreg_write_batch_size_count", &[])
            > before.must("modelreg_write_batch_size_count", &[])
    );
    let open = after.must("modelreg_db_pool_connections", &[("state", "idle")])
        + after.must("modelreg_db_pool_connections", &[("state", "in_use")]);
    assert!(open >= 1.0, "{open}");
    drop(watch);
}

/// Each durable consumer has `modelreg_consumer_lag_events` and
/// `modelreg_consumer_dead_letters`, read at the scrape: a parked event and
/// the one blocked behind it are lag 2 with one dead letter; a consumer with
/// nothing to do is 0 and 0; a retry leaves no parked dead letter; a
/// deleted consumer's series are gone.
async fn consumer_lag_and_dead_letters_are_read_at_each_scrape(db: TestDb) {
    // Arrange: deploy-prod parks churn v1, v2 waits behind it; idle reads
    // a model no one registers.
    let app = spawn_app_with(&db, |s| s.http_listen = http_on()).await;
    let http = app.http_addr.expect("the HTTP listener is on");
    let mut c = app.client_as("ops").await;
    create_model(&mut c, "churn").await;
    let (member, parked) = park_dead_letter(&mut c, "deploy-prod", "churn", "no capacity").await;
    register(&mut c, "churn", pb::Stage::None).await;
    let nothing = pb::ConsumerSpec {
        models: vec!["no-such-model".into()],
        ..Default::default()
    };
    let idle = Member::join(&mut c, "idle", "m2", nothing).await;
    let lag = "modelreg_consumer_lag_events";
    let dead = "modelreg_consumer_dead_letters";

    // Act
    let first = scrape(http, None).await;

    // Assert
    assert_eq!(first.types.get(lag).map(String::as_str), Some("gauge"));
    assert_eq!(first.types.get(dead).map(String::as_str), Some("gauge"));
    assert!(first.help.contains_key(lag) && first.help.contains_key(dead));
    assert_eq!(first.must(lag, &[("consumer", "deploy-prod")]), 2.0);
    assert_eq!(first.must(dead, &[("consumer", "deploy-prod")]), 1.0);
    assert_eq!(first.must(lag, &[("consumer", "idle")]), 0.0);
    assert_eq!(first.must(dead, &[("consumer", "idle")]), 0.0);

    // A retried dead letter is no longer parked; the lag stays until it is acknowledged.
    c.retry_dead_letter(pb::RetryDeadLetterRequest {
        consumer: "deploy-prod".into(),
        sequence: parked,
    })
    .await
    .expect("retry");
    let retried = scrape(http, None).await;
    assert_eq!(retried.must(dead, &[("consumer", "deploy-prod")]), 0.0);
    assert_eq!(retried.must(lag, &[("consumer", "deploy-prod")]), 2.0);

    // A deleted consumer has no series left.
    c.delete_consumer(pb::DeleteConsumerRequest {
        name: "deploy-prod".into(),
    })
    .await
    .expect("delete");
    let deleted = scrape(http, None).await;
    assert_eq!(deleted.value(lag, &[("consumer", "deploy-prod")]), None);
    assert_eq!(deleted.value(dead, &[("consumer", "deploy-prod")]), None);
    assert_eq!(deleted.must(lag, &[("consumer", "idle")]), 0.0);
    drop((member, idle));
}

/// With a token file, `/metrics` needs a bearer token of any identity:
/// none or a wrong one is 401, a reader's is 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_a_token_when_the_server_has_tokens() {
    // Arrange
    let (_dir, app) = app_with_a_reader_token().await;
    let http = app.http_addr.expect("the HTTP listener is on");

    // The gRPC port takes the same token.
    let mut rita = connect(&ConnectOptions::new(app.url.clone()).token("rita-token"))
        .await
        .unwrap();
    rita.list_models(pb::ListModelsRequest::default())
        .await
        .expect("reader lists models");

    // Act
    let none = get(http, "/metrics", None).await;
    let wrong = get(http, "/metrics", Some("not-a-token")).await;
    let reader = scrape(http, Some("rita-token")).await;

    // Assert
    assert_eq!(none.status, 401, "{}", none.body);
    assert!(none.headers.contains_key("www-authenticate"));
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    assert_every_family(&reader, true);
    assert!(
        reader.must(
            "modelreg_grpc_requests_total",
            &[("method", "ListModels"), ("code", "OK")]
        ) >= 1.0
    );
}

/// Calls `path` (any gRPC path) with an empty message and `token`, if any.
async fn call_path(
    channel: &tonic::transport::Channel,
    path: &str,
    token: Option<&str>,
) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    let mut req = tonic::Request::new(pb::GetModelRequest::default());
    if let Some(t) = token {
        req.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<pb::GetModelRequest, pb::GetModelResponse>::default();
    grpc.unary(req, path.parse().expect("path"), codec)
        .await
        .map(drop)
}

/// The call series (method, code) of a scrape.
fn call_series(m: &Exposition) -> Vec<BTreeMap<String, String>> {
    m.samples
        .iter()
        .filter(|s| s.name == "modelreg_grpc_requests_total")
        .map(|s| s.labels.clone())
        .collect()
}

/// Hardening defect 4 (/metrics could be made to grow without bound): calls
/// to paths no service serves, refused before authentication or not, all
/// count under `method="unknown"`; 500 of them add at most the `unknown`
/// series for each code, never one per path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_never_add_series() {
    // Arrange: token mode, where the auth layer answers first.
    let (_dir, app) = app_with_a_reader_token().await;
    let http = app.http_addr.expect("the HTTP listener is on");
    let channel = tonic::transport::Endpoint::from_shared(app.url.clone())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    call_path(
        &channel,
        "/modelreg.v1.ModelRegistryService/GetModel",
        Some("rita-token"),
    )
    .await
    .expect_err("an empty name is refused");
    let before = call_series(&scrape(http, Some("rita-token")).await);

    // Act
    let junk = [
        "/modelreg.v1.ModelRegistryService/Junk",
        "/modelreg.v1.Other/GetModel",
        "/x/y",
        "/grpc.health.v1.Health/Junk",
    ];
    let mut codes = std::collections::BTreeSet::new();
    for i in 0..500 {
        let path = format!("{}{i}", junk[i % junk.len()]);
        let token = (i % 2 == 0).then_some("rita-token");
        let status = call_path(&channel, &path, token)
            .await
            .expect_err("no such method");
        codes.insert(format!("{:?}", status.code()));
    }
    let after = scrape(http, Some("rita-token")).await;

    // Assert
    let series = call_series(&after);
    let new: Vec<_> = series.iter().filter(|s| !before.contains(s)).collect();
    assert!(
        new.iter().all(|s| s["method"] == "unknown"),
        "only the unknown method may appear: {new:?}"
    );
    assert!(new.len() <= codes.len(), "{new:?} for codes {codes:?}");
    let unknown: f64 = after
        .samples
        .iter()
        .filter(|s| s.name == "modelreg_grpc_requests_total" && s.labels["method"] == "unknown")
        .map(|s| s.value)
        .sum();
    assert_eq!(
        unknown, 500.0,
        "every junk call is counted, under one label"
    );
    assert!(
        series.iter().any(|s| s["method"] == "GetModel"),
        "known methods keep their own series: {series:?}"
    );
}

/// Unknown paths are 404 (`/` is the dashboard's); `--http-listen off` (the
/// embedded default) binds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn off_disables_the_listener_and_other_paths_are_not_found() {
    let db = TestDb::sqlite();
    let on = spawn_app_with(&db, |s| s.http_listen = http_on()).await;
    let http = on.http_addr.expect("the HTTP listener is on");
    assert_eq!(get(http, "/", None).await.status, 200, "the dashboard");
    assert_eq!(get(http, "/metricsx", None).await.status, 404);
    assert_eq!(get(http, "/metrics/x", None).await.status, 404);
    on.stop().await;

    let mut settings = Settings::for_database(db.url.clone());
    assert_eq!(settings.http_listen, HttpListen::Off);
    settings.http_listen = modelreg_server::settings::parse_http_listen("off").unwrap();
    let app = Application::build(settings).await.expect("builds");
    assert_eq!(app.http_addr(), None);
}

/// The HTTP listener follows the gRPC port's start rules: without a token
/// file only loopback, and a port in use stops the start with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_refuses_to_start_where_it_must_not() {
    let db = TestDb::sqlite();
    let build_error = |http_listen: HttpListen| {
        let mut settings = Settings::for_database(db.url.clone());
        settings.http_listen = http_listen;
        async move {
            match Application::build(settings).await {
                Ok(_) => panic!("the server started"),
                Err(e) => e.to_string(),
            }
        }
    };

    let msg = build_error(HttpListen::On("0.0.0.0:0".parse().unwrap())).await;
    assert!(
        msg.contains("without authentication") && msg.contains("--http-listen"),
        "{msg}"
    );

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let msg = build_error(HttpListen::On(busy.local_addr().unwrap())).await;
    assert!(msg.contains("cannot listen for HTTP"), "{msg}");
}

/// With --tls-cert/--tls-key the HTTP listener speaks HTTPS with the same
/// certificate: a client trusting the CA scrapes `/metrics` and gets the
/// dashboard with a Secure cookie; plaintext HTTP gets no answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_uses_the_grpc_ports_certificate() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;

    // Arrange
    let dir = tempfile::tempdir().unwrap();
    let Pki { ca, cert, key } = Pki::generate(dir.path());
    let app = spawn_app_with(&TestDb::sqlite(), |s| {
        s.tls_cert = Some(cert);
        s.tls_key = Some(key);
        s.http_listen = http_on();
    })
    .await;
    let http = app.http_addr.expect("the HTTP listener is on");
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&ca).unwrap())
        .unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config));

    let handshake = || async {
        let tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        connector
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .expect("TLS handshake with the HTTP listener")
    };

    // Act
    let resp = get_over(handshake().await, http, "/metrics", None).await;
    // The dashboard on the same listener marks its session cookie Secure.
    let page = get_over(handshake().await, http, "/", None).await;
    let plain = {
        let mut tcp = tokio::net::TcpStream::connect(http).await.unwrap();
        tcp.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(30),
            tcp.read_to_end(&mut raw),
        )
        .await
        .expect("the plaintext attempt ends");
        raw
    };

    // Assert
    assert_eq!(resp.status, 200, "{}", resp.body);
    assert_every_family(&Exposition::parse(&resp.body), false);
    assert_eq!(page.status, 200, "{}", page.body);
    let cookie = page.headers.get("set-cookie").expect("a session cookie");
    assert!(
        cookie.contains("; Secure") && cookie.contains("HttpOnly"),
        "{cookie}"
    );
    assert!(
        !String::from_utf8_lossy(&plain).contains("modelreg_"),
        "plaintext must not be answered with metrics"
    );
}
