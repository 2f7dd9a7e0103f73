//! The HTML dashboard in a real browser: a governed request is arranged
//! through gRPC, the real `modelreg notify` delivers its link to a local
//! webhook sink, and `tests/browser/dashboard.mjs` (headless Debian Chromium
//! through playwright-core) follows that link as the approver — sign-in
//! redirect, metrics and gates, forged posts refused, a reader without
//! buttons, the approval (and the reader's open page turning Approved by
//! itself), the model page and the verified audit trail. The outcome is then
//! checked through gRPC. It takes the screenshots of the README.
//!
//! Needs `/usr/bin/chromium`, `node` and `tests/browser/node_modules`
//! (`bash scripts/browser.sh` installs them); without them the test is
//! skipped with a notice, or fails when `MODELREG_REQUIRE_BROWSER=1` (CI).
//! It runs the `modelreg` binary, which `cargo build --workspace --bins`
//! builds (as `scripts/test.sh` does first).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use modelreg_client::{ConnectOptions, RegistryClient, connect, pb};
use modelreg_server::settings::HttpListen;
use modelreg_tests::http::read_request;
use modelreg_tests::{
    TestDb, auc_gate, evaluate, evaluation_set, events_of_model, holdout, register, spawn_app_with,
    stage_of, stages, token_file, token_of,
};
use pb::{EventType, Stage, TransitionRequestStatus};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::mpsc;

/// Where the screenshots go, relative to the workspace; the README's are
/// refreshed with `MODELREG_SCREENSHOTS=docs/screenshots`. Default:
/// `target/dashboard-screenshots`.
const SCREENSHOTS_VAR: &str = "MODELREG_SCREENSHOTS";
/// When set to 1 (as in CI), a missing browser fails the test instead of skipping it.
const REQUIRE_BROWSER_VAR: &str = "MODELREG_REQUIRE_BROWSER";
/// Debian's Chromium; the test never uses a browser Playwright downloaded.
const CHROMIUM: &str = "/usr/bin/chromium";
/// The comment the approver types in the dashboard.
const APPROVAL_COMMENT: &str = "metrics checked in the dashboard";
/// Safety net for waits on other processes; a healthy run takes seconds.
const PATIENCE: Duration = Duration::from_secs(120);

/// The people of the story and their one role each.
const PEOPLE: [(&str, &str); 5] = [
    ("ada", "admin"),
    ("alice", "publisher"),
    ("eve", "evaluator"),
    ("bob", "approver"),
    ("rita", "reader"),
];

/// The workspace root (this crate lives in `tests/`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

fn browser_dir() -> PathBuf {
    workspace().join("tests").join("browser")
}

/// What the browser test needs and is missing; empty when it can run.
fn missing_browser_parts() -> Vec<String> {
    let mut missing = Vec::new();
    if !Path::new(CHROMIUM).is_file() {
        missing.push(CHROMIUM.to_owned());
    }
    let playwright = browser_dir().join("node_modules").join("playwright-core");
    if !playwright.is_dir() {
        missing.push(playwright.display().to_string());
    }
    let node = std::process::Command::new("node")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !node.is_ok_and(|s| s.success()) {
        missing.push("node".to_owned());
    }
    missing
}

/// A connection to `url` with `who`'s token.
async fn client_for(url: &str, who: &str) -> RegistryClient {
    connect(&ConnectOptions::new(url).token(token_of(who)))
        .await
        .unwrap_or_else(|e| panic!("connect as {who}: {e}"))
}

/// Standard set holdout@v1, approval for production, auc ≥ 0.8 and no
/// regression of more than 0.05 against production.
fn fraud_policy() -> pb::Policy {
    pb::Policy {
        standard_evaluation_set: Some(holdout()),
        approval_required_for: stages(&[Stage::Production]),
        gates: auc_gate(pb::MetricGate {
            min_value: Some(0.8),
            max_regression: Some(0.05),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Asks for production; the policy makes it a pending request.
async fn request_production(alice: &mut RegistryClient, version: i64) -> pb::TransitionRequest {
    let resp = alice
        .transition_stage(pb::TransitionStageRequest {
            model: "fraud".into(),
            version,
            target_stage: Stage::Production as i32,
            comment: format!("version {version} beats production"),
            etag: String::new(),
        })
        .await
        .expect("request production")
        .into_inner();
    assert!(resp.version.is_none(), "a governed move waits: {resp:?}");
    let request = resp.request.expect("a pending request");
    assert_eq!(request.status, TransitionRequestStatus::Pending as i32);
    request
}

/// A webhook receiver on 127.0.0.1: answers 200 to every POST and passes on
/// each message's `text` (the Slack-shaped body's summary).
async fn start_sink() -> (String, mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the sink");
    let url = format!(
        "http://{}/hooks/modelreg",
        listener.local_addr().expect("sink addr")
    );
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let Some((_, body)) = read_request(&mut conn).await else {
                    return;
                };
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                    .await;
                let text = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["text"].as_str().map(str::to_owned))
                    .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
                let _ = tx.send(text);
            });
        }
    });
    (url, rx)
}

/// An approver follows the notification's link into the dashboard, signs in,
/// sees metrics and gates, cannot be tricked by forged posts, approves; the
/// version is then in production and the log names the approver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_approver_approves_from_the_notification_link() {
    let missing = missing_browser_parts();
    if !missing.is_empty() {
        let what = missing.join(", ");
        if std::env::var(REQUIRE_BROWSER_VAR).as_deref() == Ok("1") {
            panic!(
                "{REQUIRE_BROWSER_VAR}=1 but the browser test cannot run: missing {what} (bash scripts/browser.sh installs them)"
            );
        }
        eprintln!(
            "\nSKIPPED: the dashboard's browser test (missing {what}; `bash scripts/browser.sh` installs them)\n"
        );
        return;
    }

    // Arrange: a server with tokens and the HTTP listener (the dashboard).
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = token_file(dir.path(), &PEOPLE);
    let db = TestDb::sqlite();
    let app = spawn_app_with(&db, |s| {
        s.http_listen = HttpListen::On("127.0.0.1:0".parse().unwrap());
        s.auth_tokens = Some(tokens);
    })
    .await;
    let http_addr = app.http_addr.expect("the HTTP listener is on");
    let mut ada = client_for(&app.url, "ada").await;
    let mut alice = client_for(&app.url, "alice").await;
    let mut eve = client_for(&app.url, "eve").await;
    let mut bob = client_for(&app.url, "bob").await;

    // Arrange: the standard set and the governed model.
    ada.create_evaluation_set(pb::CreateEvaluationSetRequest {
        description: "the fraud holdout".into(),
        ..evaluation_set("holdout", "v1", &[("auc", true)])
    })
    .await
    .expect("create holdout@v1");
    ada.create_model(pb::CreateModelRequest {
        name: "fraud".into(),
        description: "card fraud scoring".into(),
        policy: Some(fraud_policy()),
        ..Default::default()
    })
    .await
    .expect("create fraud");

    // Arrange: version 1 goes to production through an approval by bob.
    let v1 = register(&mut alice, "fraud", Stage::Staging).await.version;
    evaluate(&mut eve, "fraud", v1, 0.91).await;
    let first = request_production(&mut alice, v1).await;
    bob.approve_transition(pb::ApproveTransitionRequest {
        request_id: first.id.clone(),
        comment: "first production version".into(),
    })
    .await
    .expect("bob approves version 1");
    assert_eq!(
        stage_of(&mut bob, "fraud", v1).await,
        Stage::Production as i32
    );

    // Arrange: version 2 is better and waits for approval.
    let v2 = register(&mut alice, "fraud", Stage::Staging).await.version;
    assert_eq!(v2, 2);
    evaluate(&mut eve, "fraud", v2, 0.93).await;
    let pending = request_production(&mut alice, v2).await;
    assert_eq!(pending.id, "fraud:2");

    // Act: the real notifier delivers the request; its text carries the link.
    let (sink_url, mut deliveries) = start_sink().await;
    let notify_log = dir.path().join("notify.log");
    let mut notifier = Command::new(modelreg_tests::modelreg_bin())
        .args(["--server", &app.url, "--token", &token_of("rita"), "notify"])
        .args(["--webhook", &sink_url])
        .args(["--link-base", &format!("http://{http_addr}")])
        .args(["--max-backoff", "1s", "--after", "0"])
        .arg("--cursor-file")
        .arg(dir.path().join("notify.cursor"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&notify_log).expect("notify log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start modelreg notify");
    let link_prefix = format!("http://{http_addr}/requests/");
    let wanted = format!("{link_prefix}{}", pending.id);
    let mut seen = Vec::new();
    let request_url = loop {
        let text = match tokio::time::timeout(PATIENCE, deliveries.recv()).await {
            Ok(Some(text)) => text,
            _ => panic!(
                "no notification linked to {wanted}; delivered: {seen:#?}\nnotifier log:\n{}",
                std::fs::read_to_string(&notify_log).unwrap_or_default()
            ),
        };
        let link = text
            .split_whitespace()
            .find(|w| w.starts_with(&link_prefix))
            .map(str::to_owned);
        seen.push(text);
        if let Some(link) = link.filter(|l| *l == wanted) {
            break link;
        }
    };
    notifier.kill().await.expect("stop the notifier");

    // Act: the browser test, as bob (and rita), from that link.
    // The README's pictures are refreshed on request only, so an ordinary
    // run leaves the working tree as it was.
    let screenshots = match std::env::var_os(SCREENSHOTS_VAR) {
        Some(dir) => workspace().join(dir),
        None => workspace().join("target").join("dashboard-screenshots"),
    };
    let failures = workspace().join("target").join("dashboard-failure");
    let run = Command::new("node")
        .arg(browser_dir().join("dashboard.mjs"))
        .current_dir(browser_dir())
        .env("BASE_URL", format!("http://{http_addr}"))
        .env("REQUEST_URL", &request_url)
        .env("APPROVER_TOKEN", token_of("bob"))
        .env("READER_TOKEN", token_of("rita"))
        .env("SCREENSHOT_DIR", &screenshots)
        .env("FAILURE_DIR", &failures)
        .env("MODEL", "fraud")
        .env("VERSION", v2.to_string())
        .env("CHROMIUM", CHROMIUM)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the browser test finished in time")
        .expect("run node tests/browser/dashboard.mjs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser test failed ({}); failure.png in {}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        failures.display()
    );
    eprintln!("{stdout}");

    // Assert: version 2 is in production, approved once, by bob, with the
    // comment typed in the browser; the forged posts left no trace.
    assert_eq!(
        stage_of(&mut bob, "fraud", v2).await,
        Stage::Production as i32
    );
    let events = events_of_model(&mut ada, "fraud").await;
    let approvals: Vec<&pb::RegistryEvent> = events
        .iter()
        .filter(|e| {
            e.r#type == EventType::TransitionApproved as i32 && e.transition_request_id == "fraud:2"
        })
        .collect();
    assert_eq!(approvals.len(), 1, "one approval of fraud:2: {events:#?}");
    assert_eq!(approvals[0].actor, "bob");
    assert_eq!(approvals[0].comment, APPROVAL_COMMENT);
    assert!(
        events.iter().all(|e| !e.comment.contains("forged")),
        "a forged post reached the log: {events:#?}"
    );
}
