//! `modelreg notify --smtp` against a real SMTP server: aiosmtpd
//! (`tests/smtp/server.py`), started by the test on a port of its own,
//! speaking STARTTLS or implicit TLS with a throwaway CA and requiring AUTH.
//! The server reports every recipient it turns away and every message it
//! accepts (parsed: headers, the plain-text and the HTML part) as JSON lines.
//!
//! Needs `tests/smtp/.venv` (`bash scripts/smtp.sh` makes it); without it
//! the tests are skipped with a notice, or fail when `MODELREG_REQUIRE_SMTP=1`
//! (CI). They run the `modelreg` binary, which `cargo build --workspace
//! --bins` builds.

#[path = "support/pki.rs"]
mod pki;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelreg_client::subscription::CursorFile;
use modelreg_client::{RegistryClient, pb};
use modelreg_tests::fixtures::{auc_gated, create_holdout, evaluate, reviewers};
use modelreg_tests::{TestApp, TestDb, all_events, modelreg_bin, register, spawn_app};
use pki::Pki;
use serde_json::Value;
use tokio::io::AsyncBufReadExt;
use tokio::process::{Child, Command};

/// When set to 1 (as in CI), a missing SMTP server fails the tests instead of skipping them.
const REQUIRE_SMTP_VAR: &str = "MODELREG_REQUIRE_SMTP";
/// The account the notifier logs in as.
const USER: &str = "notifier";
/// Its password: characters a URL must percent-encode.
const PASSWORD: &str = "s3cret:/@pass";
/// The notifier's dashboard links start here.
const LINK_BASE: &str = "https://modelreg.example";
/// A comment that would run in a mail client that rendered it as HTML.
const HOSTILE: &str = "<script>alert('x')</script> ship it";

/// The virtual environment's Python, or `None` (after a notice) when the
/// test must be skipped.
fn smtp_python() -> Option<PathBuf> {
    let python = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/.venv/bin/python");
    if python.is_file() {
        return Some(python);
    }
    assert!(
        std::env::var(REQUIRE_SMTP_VAR).as_deref() != Ok("1"),
        "{} is missing and {REQUIRE_SMTP_VAR}=1: run `bash scripts/smtp.sh`",
        python.display()
    );
    eprintln!("\nSKIPPED: the mail test (no aiosmtpd; `bash scripts/smtp.sh` installs it)\n");
    None
}

/// Waits until `check` finds what it looks for; the bound only stops a broken run.
async fn until<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    for _ in 0..1200 {
        if let Some(found) = check() {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gave up waiting for {what}");
}

/// The aiosmtpd process and what it reported so far.
struct SmtpServer {
    /// Killed when the test ends.
    _child: Child,
    port: u16,
    records: Arc<Mutex<Vec<Value>>>,
}

impl SmtpServer {
    /// Starts `tests/smtp/server.py` with `tls` (`starttls` or `implicit`)
    /// and waits for the port it bound.
    async fn start(python: &Path, pki: &Pki, tls: &str) -> SmtpServer {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("smtp/server.py");
        let mut child = Command::new(python)
            .arg(script)
            .args(["--tls", tls, "--user", USER, "--password", PASSWORD])
            .arg("--cert")
            .arg(&pki.cert)
            .arg("--key")
            .arg(&pki.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the SMTP server");
        let records = Arc::new(Mutex::new(Vec::new()));
        let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let sink = records.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let record: Value = serde_json::from_str(&line).expect("a JSON line");
                sink.lock().unwrap().push(record);
            }
        });
        let port = until("the SMTP server's port", || {
            records
                .lock()
                .unwrap()
                .iter()
                .find_map(|r| r["port"].as_u64())
        })
        .await;
        SmtpServer {
            _child: child,
            port: port as u16,
            records,
        }
    }

    /// The accepted messages so far.
    fn messages(&self) -> Vec<Value> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter_map(|r| r.get("message").cloned())
            .collect()
    }

    /// The first accepted message to `rcpt`, once there is one.
    async fn message_to(&self, rcpt: &str) -> Value {
        until(&format!("a message to {rcpt}"), || {
            self.messages()
                .into_iter()
                .find(|m| m["rcpt_tos"].as_array().unwrap().iter().any(|r| r == rcpt))
        })
        .await
    }

    /// The refusals with `code` so far.
    fn refusals(&self, code: u64) -> Vec<Value> {
        let records = self.records.lock().unwrap();
        records
            .iter()
            .filter(|r| r["refused"].as_u64() == Some(code))
            .cloned()
            .collect()
    }
}

/// A `modelreg notify --smtp` process, its stderr in `log`.
struct Notifier {
    child: Child,
    log: PathBuf,
}

impl Notifier {
    /// Starts the notifier against `app`, mailing through `url` (the
    /// password from the environment), resuming from `cursor` or after
    /// sequence `after`; `run` names its log file.
    fn start(app: &TestApp, dir: &Path, url: &str, ca: &Path, after: u64, run: &str) -> Notifier {
        let log = dir.join(format!("notify-{run}.log"));
        let mut command = Command::new(modelreg_bin());
        // A URL without a password takes it from the environment.
        if !url.contains(&format!("{USER}:")) {
            command.env("MODELREG_SMTP_PASSWORD", PASSWORD);
        }
        let child = command
            .args([
                "--server", &app.url, "--actor", "notifier", "notify", "--smtp", url,
            ])
            .args(["--email-from", "modelreg <modelreg@example.com>"])
            .args(["--email-to", "oncall@example.com", "--link-base", LINK_BASE])
            .args(["--max-backoff", "1s", "--after", &after.to_string()])
            .arg("--smtp-ca-cert")
            .arg(ca)
            .arg("--cursor-file")
            .arg(dir.join("notify.cursor"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("start modelreg notify");
        Notifier { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A model with `list` (email, identity) as its reviewers, gated on
/// `auc >= 0.8` on holdout@v1.
async fn model_with_reviewers(c: &mut RegistryClient, name: &str, list: &[(&str, &str)]) {
    c.create_model(pb::CreateModelRequest {
        name: name.into(),
        policy: Some(pb::Policy {
            reviewers: reviewers(list),
            ..auc_gated(0.8)
        }),
        ..Default::default()
    })
    .await
    .expect("create model");
}

/// What both tests start from: a temporary directory with a throwaway CA,
/// the SMTP server speaking `tls`, and a registry with holdout@v1 (and a
/// client acting as ada).
struct Stage {
    dir: tempfile::TempDir,
    pki: Pki,
    smtp: SmtpServer,
    app: TestApp,
    ada: RegistryClient,
}

impl Stage {
    /// `None` when the test must be skipped (see [`smtp_python`]).
    async fn set(tls: &str) -> Option<Stage> {
        let python = smtp_python()?;
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::generate(dir.path());
        let smtp = SmtpServer::start(&python, &pki, tls).await;
        let app = spawn_app(&TestDb::sqlite()).await;
        let mut ada = app.client_as("ada").await;
        create_holdout(&mut ada).await;
        Some(Stage {
            dir,
            pki,
            smtp,
            app,
            ada,
        })
    }
}

/// `who` asks for `model` `version` in PRODUCTION with `comment`; the
/// request's id.
async fn request_production(
    c: &mut RegistryClient,
    model: &str,
    version: i64,
    comment: &str,
) -> String {
    c.transition_stage(pb::TransitionStageRequest {
        model: model.into(),
        version,
        target_stage: pb::Stage::Production as i32,
        comment: comment.into(),
        etag: String::new(),
    })
    .await
    .expect("request production")
    .into_inner()
    .request
    .expect("a pending request")
    .id
}

/// A staged version of `model` evaluated at `auc`.
async fn staged(c: &mut RegistryClient, model: &str, auc: f64) -> i64 {
    let v = register(c, model, pb::Stage::Staging).await.version;
    evaluate(c, model, v, auc).await;
    v
}

async fn last_sequence(c: &mut RegistryClient) -> u64 {
    all_events(c).await.last().map_or(0, |e| e.sequence)
}

/// Each request reaches the right people with its evidence, survives a
/// greylisting server, is skipped with a log line when refused for good,
/// and is mailed once even across a notifier killed and restarted: a
/// request for a model with two reviewers reaches both (one message, both
/// parts carrying the model, version, requester, comment, metrics beside
/// production's, the gate, the approve command and the dashboard link),
/// the comment's `<script>` escaped in the HTML part; a model without
/// reviewers goes to `--email-to`; 451 answers delay a message (the same
/// Message-ID on every attempt) without losing it; a 550 is logged and
/// skipped; after a restart no accepted event is mailed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_are_mailed_to_each_models_reviewers_once() {
    // Arrange: a mail server with STARTTLS and AUTH, a registry, and four models.
    let Some(mut s) = Stage::set("starttls").await else {
        return;
    };
    let mut alice = s.app.client_as("alice").await;
    model_with_reviewers(
        &mut s.ada,
        "fraud",
        &[("ana@example.com", "ana"), ("ben@example.com", "")],
    )
    .await;
    model_with_reviewers(&mut s.ada, "churn", &[]).await;
    model_with_reviewers(&mut s.ada, "risk", &[("tempfail-risk@example.com", "")]).await;
    model_with_reviewers(&mut s.ada, "legacy", &[("reject-legacy@example.com", "")]).await;
    // fraud v1 in production, v2 and one version of each other model staged.
    let v1 = staged(&mut alice, "fraud", 0.9).await;
    let id = request_production(&mut alice, "fraud", v1, "first").await;
    s.app
        .client_as("bob")
        .await
        .approve_transition(pb::ApproveTransitionRequest {
            request_id: id,
            comment: String::new(),
        })
        .await
        .expect("approve v1");
    let v2 = staged(&mut alice, "fraud", 0.95).await;
    for model in ["churn", "risk", "legacy"] {
        staged(&mut alice, model, 0.9).await;
    }
    let after = last_sequence(&mut s.ada).await;
    let url = format!("smtp://{USER}@127.0.0.1:{}", s.smtp.port);
    let mut notifier = Notifier::start(&s.app, s.dir.path(), &url, &s.pki.ca, after, "first");

    // Act: four requests.
    let fraud_id = request_production(&mut alice, "fraud", v2, HOSTILE).await;
    request_production(&mut alice, "churn", 1, "churn please").await;
    request_production(&mut alice, "risk", 1, "risk please").await;
    request_production(&mut alice, "legacy", 1, "legacy please").await;
    let last_request = last_sequence(&mut s.ada).await;

    // Assert: one message reached both of fraud's reviewers, with the evidence.
    let fraud = s.smtp.message_to("ana@example.com").await;
    assert_eq!(
        fraud["rcpt_tos"],
        serde_json::json!(["ana@example.com", "ben@example.com"])
    );
    assert_eq!(
        fraud["subject"],
        "[modelreg] fraud v2 → PRODUCTION needs your approval"
    );
    assert_eq!(
        fraud["login"], USER,
        "logged in with the password from the environment"
    );
    assert_eq!(fraud["content_type"], "multipart/alternative");
    let link = format!("{LINK_BASE}/requests/{fraud_id}");
    let evidence = [
        "version 2",
        "alice requests PRODUCTION",
        "s3://models/fraud/artifact",
        "metrics on holdout@v1",
        "vs production version 1: auc 0.9 → 0.95 (better)",
        "gate pass: auc >= 0.8",
        "modelreg approve fraud:2",
        &link,
    ];
    let (text, html) = (
        fraud["text"].as_str().unwrap(),
        fraud["html"].as_str().unwrap(),
    );
    for needle in evidence {
        assert!(
            text.contains(needle),
            "plain text lacks {needle:?}:\n{text}"
        );
        let escaped = modelreg_client::email::escape_html(needle);
        assert!(html.contains(&escaped), "HTML lacks {escaped:?}:\n{html}");
    }
    assert!(
        text.contains("fraud") && html.contains("<strong>fraud</strong>"),
        "{html}"
    );
    assert!(html.contains(&format!("<a href=\"{link}\">")), "{html}");
    assert!(
        text.contains(HOSTILE),
        "plain text shows the comment as typed:\n{text}"
    );
    assert!(
        html.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; ship it")
            && !html.contains("<script"),
        "HTML escapes the comment:\n{html}"
    );

    // A model without reviewers goes to --email-to.
    let churn = s.smtp.message_to("oncall@example.com").await;
    assert_eq!(
        churn["subject"],
        "[modelreg] churn v1 → PRODUCTION needs your approval"
    );

    // Greylisted twice, then accepted: delayed, not lost, one Message-ID throughout.
    let risk = s.smtp.message_to("tempfail-risk@example.com").await;
    let greylisted = s.smtp.refusals(451);
    assert_eq!(greylisted.len(), 2, "{greylisted:?}");
    for attempt in &greylisted {
        assert_eq!(attempt["message_id"], risk["message_id"], "{attempt}");
    }

    // The 550 is logged and skipped: the cursor moves past it.
    until("the cursor past every request", || {
        CursorFile::new(s.dir.path().join("notify.cursor"))
            .load()
            .unwrap()
            .filter(|s| *s >= last_request)
    })
    .await;
    assert_eq!(s.smtp.refusals(550).len(), 1);
    let log = notifier.log();
    assert!(
        log.lines().any(
            |l| l.contains("NOT delivered to mail to reject-legacy@example.com")
                && l.contains("550")
        ),
        "{log}"
    );

    // Act: the notifier dies after the mail was accepted; a new one starts.
    notifier.child.kill().await.unwrap();
    let mut second = Notifier::start(&s.app, s.dir.path(), &url, &s.pki.ca, after, "second");
    let v2_churn = staged(&mut alice, "churn", 0.9).await;
    request_production(&mut alice, "churn", v2_churn, "again").await;

    // Assert: the new request is mailed; nothing accepted before is mailed again.
    until("the second churn request's mail", || {
        s.smtp
            .messages()
            .into_iter()
            .find(|m| m["subject"] == "[modelreg] churn v2 → PRODUCTION needs your approval")
    })
    .await;
    let ids: Vec<String> = s
        .smtp
        .messages()
        .iter()
        .map(|m| m["message_id"].as_str().unwrap().to_owned())
        .collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(ids.len(), 4, "fraud, churn, risk, churn again: {ids:?}");
    assert_eq!(unique.len(), ids.len(), "each event mailed once: {ids:?}");
    second.child.kill().await.unwrap();
}

/// `smtps://` speaks TLS from the first byte, with the password in the URL
/// (percent-encoded); bad mail settings stop the notifier before it reads
/// anything: an unparsable URL, another scheme, a password from the
/// environment without a user to log in as.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn implicit_tls_works_and_bad_mail_settings_change_nothing() {
    let Some(mut s) = Stage::set("implicit").await else {
        return;
    };
    model_with_reviewers(&mut s.ada, "fraud", &[("ana@example.com", "")]).await;
    let v1 = staged(&mut s.ada, "fraud", 0.9).await;
    let after = last_sequence(&mut s.ada).await;

    // Bad settings: a clear error, no cursor, no mail.
    let cursor = s.dir.path().join("bad.cursor");
    let bad = [
        ("smtp//notifier:hunter2@127.0.0.1:25", "--smtp: not a URL"),
        (
            "http://notifier:hunter2@127.0.0.1:25",
            "use smtp:// (STARTTLS) or smtps://",
        ),
        (
            "smtp://127.0.0.1:25",
            "MODELREG_SMTP_PASSWORD is set but the URL names no user",
        ),
    ];
    for (url, says) in bad {
        let out = Command::new(modelreg_bin())
            .args(["--server", &s.app.url, "notify", "--smtp", url])
            .args(["--email-from", "modelreg@example.com", "--cursor-file"])
            .arg(&cursor)
            .env("MODELREG_SMTP_PASSWORD", "from-env")
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{url}: {stderr}");
        assert!(stderr.contains(says), "{url}: {stderr}");
        assert!(
            !stderr.contains("hunter2"),
            "the password is never shown: {stderr}"
        );
        assert!(!cursor.exists(), "{url}: nothing was read");
    }

    // smtps:// with the password in the URL.
    let password = percent_encode(PASSWORD);
    let url = format!("smtps://{USER}:{password}@127.0.0.1:{}", s.smtp.port);
    let mut notifier = Notifier::start(&s.app, s.dir.path(), &url, &s.pki.ca, after, "tls");
    request_production(&mut s.ada, "fraud", v1, "over TLS").await;
    let mail = s.smtp.message_to("ana@example.com").await;
    assert_eq!(mail["login"], USER);
    assert_eq!(
        mail["subject"],
        "[modelreg] fraud v1 → PRODUCTION needs your approval"
    );
    notifier.child.kill().await.unwrap();
}

/// Every byte outside `[A-Za-z0-9]` as `%XX`.
fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
