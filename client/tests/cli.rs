//! The real `modelreg` binary driven end to end against a real server on
//! 127.0.0.1:0: the walk-through of the README, JSON output for scripts,
//! tables for people, and errors with a non-zero exit.

use std::process::Output;

use modelreg_server::{Application, Settings};
use tokio::process::Command;

struct Server {
    url: String,
    /// The server's SQLite database, for tests that change rows behind its back.
    database_url: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Application::build(Settings::for_database(url.clone()))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(listener, async {
        let _ = rx.await;
    }));
    Server {
        url: format!("http://{addr}"),
        database_url: url,
        _dir: dir,
        _stop: tx,
    }
}

async fn modelreg(server: &Server, args: &[&str]) -> Output {
    modelreg_as(server, "cli-user", args).await
}

async fn modelreg_as(server: &Server, actor: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelreg"))
        .arg("--server")
        .arg(&server.url)
        .args(["--actor", actor])
        .args(args)
        .output()
        .await
        .expect("run modelreg")
}

/// The stdout of a run that must have succeeded.
fn ok_stdout(out: &Output) -> &[u8] {
    assert!(
        out.status.success(),
        "modelreg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    &out.stdout
}

fn ok_text(out: &Output) -> String {
    String::from_utf8(ok_stdout(out).to_vec()).unwrap()
}

fn ok_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(ok_stdout(out)).expect("JSON output")
}

/// The README walk-through through the binary: create, register straight into
/// staging, ask for production (a pending request under the default policy),
/// the requester's own approval refused, a second person's approval, alias,
/// read back by alias, list events, and watch from the beginning as JSON lines.
#[tokio::test]
async fn the_cli_walks_a_model_to_production() {
    let server = start_server().await;

    let model = ok_json(
        &modelreg(
            &server,
            &[
                "--json",
                "model",
                "create",
                "fraud-detector",
                "--description",
                "card fraud",
                "--tag",
                "team=risk",
            ],
        )
        .await,
    );
    assert_eq!(model["name"], "fraud-detector");
    assert_eq!(model["tags"]["team"], "risk");

    let v = ok_json(
        &modelreg(
            &server,
            &[
                "--json",
                "version",
                "register",
                "fraud-detector",
                "--artifact-uri",
                "s3://models/fraud/1",
                "--metric",
                "auc=0.93",
                "--commit",
                "4f2a9c1",
                "--stage",
                "staging",
                "--request-id",
                "ci-run-1",
            ],
        )
        .await,
    );
    assert_eq!(v["version"], 1);
    assert_eq!(v["stage"], "STAGE_STAGING");
    assert_eq!(v["created_by"], "cli-user");
    assert_eq!(v["training_metrics"]["auc"], 0.93);

    let asked = ok_json(
        &modelreg(
            &server,
            &[
                "--json",
                "transition",
                "fraud-detector",
                "1",
                "production",
                "--comment",
                "ship it",
            ],
        )
        .await,
    );
    assert_eq!(asked["id"], "fraud-detector:1");
    assert_eq!(asked["status"], "TRANSITION_REQUEST_STATUS_PENDING");

    let own = modelreg(&server, &["approve", "fraud-detector:1"]).await;
    assert!(!own.status.success());
    let stderr = String::from_utf8_lossy(&own.stderr);
    assert!(stderr.contains("SELF_APPROVAL"), "{stderr}");

    let approved = ok_json(
        &modelreg_as(
            &server,
            "bob",
            &[
                "--json",
                "approve",
                "fraud-detector:1",
                "--comment",
                "checked",
            ],
        )
        .await,
    );
    assert_eq!(
        approved["request"]["status"],
        "TRANSITION_REQUEST_STATUS_APPROVED"
    );
    assert_eq!(approved["version"]["stage"], "STAGE_PRODUCTION");

    ok_json(
        &modelreg(
            &server,
            &["--json", "alias", "set", "fraud-detector", "champion", "1"],
        )
        .await,
    );
    let by_alias = ok_json(
        &modelreg(
            &server,
            &["--json", "version", "get", "fraud-detector", "champion"],
        )
        .await,
    );
    assert_eq!(by_alias["version"], 1);

    let events =
        ok_json(&modelreg(&server, &["--json", "events", "--model", "fraud-detector"]).await);
    let types: Vec<&str> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "EVENT_TYPE_MODEL_CREATED",
            "EVENT_TYPE_VERSION_REGISTERED",
            "EVENT_TYPE_STAGE_CHANGED",
            "EVENT_TYPE_TRANSITION_REQUESTED",
            "EVENT_TYPE_TRANSITION_APPROVED",
            "EVENT_TYPE_STAGE_CHANGED",
            "EVENT_TYPE_ALIAS_SET",
        ]
    );

    let watched = modelreg(&server, &["watch", "--after", "0", "--count", "7"]).await;
    assert!(watched.status.success());
    let lines: Vec<serde_json::Value> = String::from_utf8(watched.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    let sequences: Vec<u64> = lines
        .iter()
        .map(|e| e["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(sequences, [1, 2, 3, 4, 5, 6, 7]);

    let table = modelreg(&server, &["version", "list", "fraud-detector"]).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("VERSION"), "{text}");
    assert!(text.contains("PRODUCTION"), "{text}");

    let audit = modelreg(&server, &["audit", "verify"]).await;
    assert!(audit.status.success());
    // The printed head, passed back as an anchor, holds; a forged one fails.
    let text = String::from_utf8(audit.stdout).unwrap();
    let head = text
        .lines()
        .find_map(|l| l.strip_prefix("head "))
        .unwrap_or_else(|| panic!("no head in {text}"))
        .to_owned();
    assert!(head.starts_with("7:"), "{head}");
    let held = modelreg(&server, &["audit", "verify", "--anchor", &head]).await;
    assert!(held.status.success());
    assert!(
        String::from_utf8(held.stdout)
            .unwrap()
            .contains("anchors hold: 1")
    );
    let forged = format!("7:{}", "0".repeat(64));
    let broken = modelreg(&server, &["audit", "verify", "--anchor", &forged]).await;
    assert!(!broken.status.success());
    let said = String::from_utf8(broken.stdout).unwrap();
    assert!(
        said.contains("BROKEN at sequence 7") && said.contains("rewritten"),
        "{said}"
    );
    let garbled = modelreg(&server, &["audit", "verify", "--anchor", "seven"]).await;
    assert_eq!(garbled.status.code(), Some(2), "a usage error");
}

/// `version update` changes a version's description and tags, and nothing
/// else; without a field to change it refuses before calling.
#[tokio::test]
async fn the_cli_updates_a_versions_description_and_tags() {
    let server = start_server().await;
    ok_json(&modelreg(&server, &["--json", "model", "create", "fraud-detector"]).await);
    let args = ["--json", "version", "register", "fraud-detector"];
    ok_json(
        &modelreg(
            &server,
            &[&args[..], &["--artifact-uri", "s3://models/fraud/1"]].concat(),
        )
        .await,
    );

    let updated = ok_json(
        &modelreg(
            &server,
            &[
                "--json",
                "version",
                "update",
                "fraud-detector",
                "1",
                "--description",
                "retrained on June data",
                "--tag",
                "validated=yes",
            ],
        )
        .await,
    );
    assert_eq!(updated["description"], "retrained on June data");
    assert_eq!(updated["tags"]["validated"], "yes");
    assert_eq!(updated["artifact_uri"], "s3://models/fraud/1");
    let nothing = modelreg(&server, &["version", "update", "fraud-detector", "1"]).await;
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("nothing to update"));
}
/// A refused call exits non-zero and prints the server's code and the field
/// violation; nothing goes to stdout.
#[tokio::test]
async fn errors_exit_non_zero_with_the_servers_reason() {
    let server = start_server().await;
    let out = modelreg(&server, &["model", "create", "Not Valid"]).await;
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("InvalidArgument"), "{stderr}");
    assert!(stderr.contains("field name"), "{stderr}");

    let out = modelreg(&server, &["transition", "ghost", "1", "production"]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("NotFound"));

    let out = modelreg(&server, &["transition", "ghost", "1", "prod"]).await;
    assert!(
        !out.status.success(),
        "an unknown stage name is refused locally"
    );
}

/// Evaluation sets, evaluations, comparison and history through the binary:
/// the comparison table shows each metric's direction, values, delta and
/// verdict (a lower-is-better metric that rose is WORSE).
#[tokio::test]
async fn the_cli_compares_versions_on_an_evaluation_set() {
    let server = start_server().await;
    let run = |args: Vec<&'static str>| {
        let server = &server;
        async move {
            let out = modelreg(server, &args).await;
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8(out.stdout).unwrap()
        }
    };
    run(vec!["model", "create", "fraud"]).await;
    run(vec![
        "model",
        "policy",
        "fraud",
        "--approval-stages",
        "none",
    ])
    .await;
    run(vec![
        "evalset",
        "create",
        "holdout",
        "2026-06",
        "--uri",
        "s3://datasets/holdout/2026-06",
        "--digest",
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "--metric",
        "accuracy:higher",
        "--metric",
        "latency_ms:lower",
    ])
    .await;
    for uri in ["s3://m/1", "s3://m/2"] {
        run(vec![
            "version",
            "register",
            "fraud",
            "--artifact-uri",
            uri,
            "--stage",
            "staging",
        ])
        .await;
    }
    run(vec!["transition", "fraud", "1", "production"]).await;
    for (v, acc, lat) in [
        ("1", "accuracy=0.91", "latency_ms=48"),
        ("2", "accuracy=0.934", "latency_ms=52.5"),
    ] {
        run(vec![
            "eval",
            "attach",
            "fraud",
            v,
            "--set",
            "holdout@2026-06",
            "--evaluator-version",
            "1.4.0",
            "--metric",
            acc,
            "--metric",
            lat,
        ])
        .await;
    }

    let table = run(vec!["compare", "fraud", "2", "--set", "holdout@2026-06"]).await;
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].contains("version 2 vs version 1 (production)"),
        "{table}"
    );
    let accuracy: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(
        accuracy,
        [
            "accuracy", "higher", "0.934", "0.91", "+0.024", "+2.64%", "better"
        ]
    );
    let latency: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(
        latency,
        [
            "latency_ms",
            "lower",
            "52.5",
            "48",
            "+4.5",
            "+9.38%",
            "WORSE"
        ]
    );

    let history = run(vec![
        "eval",
        "history",
        "fraud",
        "--set",
        "holdout@2026-06",
        "--metric",
        "accuracy",
    ])
    .await;
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows,
        [vec!["1", "1.4.0", "0.91"], vec!["2", "1.4.0", "0.934"]]
    );

    let out = modelreg(
        &server,
        &["compare", "fraud", "2", "--set", "holdout@2026-07"],
    )
    .await;
    assert!(!out.status.success());
}

/// Governance through the binary: a policy set with flags and shown as a
/// table, a gate that refuses, the approval inbox, reject and cancel, a
/// rollback, and the audit trail and production timeline that tell it all.
#[tokio::test]
async fn the_cli_governs_policies_requests_rollbacks_and_the_audit_trail() {
    let server = start_server().await;
    let alice = |args: Vec<&'static str>| {
        let server = &server;
        async move { ok_text(&modelreg_as(server, "alice", &args).await) }
    };
    let bob = |args: Vec<&'static str>| {
        let server = &server;
        async move { ok_text(&modelreg_as(server, "bob", &args).await) }
    };
    alice(vec!["model", "create", "churn"]).await;
    alice(vec![
        "evalset",
        "create",
        "holdout",
        "v1",
        "--uri",
        "s3://d/holdout/v1",
        "--digest",
        "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae",
        "--metric",
        "auc:higher",
    ])
    .await;
    let shown = alice(vec![
        "model",
        "policy",
        "churn",
        "--standard-set",
        "holdout@v1",
        "--gate",
        "auc:min_value=0.8,max_regression=0.01",
    ])
    .await;
    assert!(shown.contains("holdout@v1"), "{shown}");
    assert!(
        shown.contains("auc >= 0.8, auc regresses at most 0.01 vs production"),
        "{shown}"
    );
    assert!(
        shown.contains("archive passed-over candidates after 30 days"),
        "{shown}"
    );
    let archival = alice(vec![
        "model",
        "policy",
        "churn",
        "--archive-after-days",
        "14",
        "--live-metric",
        "error_rate:lower:0.05:15m:rollback",
    ])
    .await;
    assert!(
        archival.contains("after 14 days; roll back when error_rate stays above 0.05 for 900s"),
        "{archival}"
    );
    assert!(
        archival.contains("holdout@v1"),
        "flags change only what they name: {archival}"
    );
    let reviewers = alice(vec![
        "model",
        "policy",
        "churn",
        "--reviewer",
        "ana@example.com:ana",
        "--reviewer",
        "ben@example.com",
    ])
    .await;
    let line = reviewers.lines().find(|l| l.starts_with("reviewers"));
    assert!(
        line.unwrap()
            .ends_with(" ana@example.com (ana), ben@example.com"),
        "{reviewers}"
    );
    assert!(reviewers.contains("holdout@v1"), "{reviewers}");
    let refused = modelreg_as(
        &server,
        "alice",
        &["model", "policy", "churn", "--reviewer", "ana"],
    )
    .await;
    assert_eq!(
        refused.status.code(),
        Some(3),
        "INVALID_ARGUMENT: {refused:?}"
    );
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("policy.reviewers[0].email"),
        "{refused:?}"
    );
    let approval = shown
        .lines()
        .find(|l| l.starts_with("approval required for"));
    assert!(approval.unwrap().ends_with(" PRODUCTION"), "{shown}");

    for (v, auc) in [("1", "auc=0.9"), ("2", "auc=0.95"), ("3", "auc=0.5")] {
        alice(vec![
            "version",
            "register",
            "churn",
            "--artifact-uri",
            "s3://m/churn",
            "--stage",
            "staging",
        ])
        .await;
        alice(vec![
            "eval",
            "attach",
            "churn",
            v,
            "--set",
            "holdout@v1",
            "--evaluator-version",
            "1",
            "--metric",
            auc,
        ])
        .await;
    }
    // Version 3 fails its gate: the CLI shows why and exits non-zero.
    let refused = modelreg_as(
        &server,
        "alice",
        &["transition", "churn", "3", "production"],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("GATE_FAILED") && stderr.contains("auc >= 0.8"),
        "{stderr}"
    );

    let asked = alice(vec![
        "transition",
        "churn",
        "1",
        "production",
        "--comment",
        "first",
    ])
    .await;
    assert!(asked.contains("request churn:1 waits"), "{asked}");
    assert!(asked.contains("pass  auc >= 0.8"), "{asked}");
    assert!(asked.contains("modelreg approve churn:1"), "{asked}");
    let inbox = bob(vec!["requests", "list", "--status", "pending"]).await;
    assert_eq!(inbox.lines().count(), 2, "{inbox}");
    assert!(
        inbox.lines().nth(1).unwrap().starts_with("churn:1"),
        "{inbox}"
    );
    bob(vec!["approve", "churn:1"]).await;

    alice(vec!["transition", "churn", "2", "production"]).await;
    let out = modelreg_as(&server, "bob", &["reject", "churn:2"]).await;
    assert!(!out.status.success(), "reject needs --comment");
    bob(vec!["reject", "churn:2", "--comment", "not this week"]).await;
    alice(vec!["transition", "churn", "2", "production"]).await;
    alice(vec!["cancel", "churn:3"]).await;
    alice(vec!["transition", "churn", "2", "production"]).await;
    bob(vec!["approve", "churn:4", "--comment", "ok now"]).await;
    let back = bob(vec!["rollback", "churn", "--reason", "latency spike"]).await;
    assert!(back.contains("PRODUCTION"), "{back}");

    let requests = bob(vec!["--json", "requests", "list", "--model", "churn"]).await;
    let requests: serde_json::Value = serde_json::from_str(&requests).unwrap();
    let statuses: Vec<&str> = requests
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    // Newest first, as the contract says (churn:4 … churn:1).
    assert_eq!(
        statuses,
        [
            "TRANSITION_REQUEST_STATUS_APPROVED",
            "TRANSITION_REQUEST_STATUS_CANCELLED",
            "TRANSITION_REQUEST_STATUS_REJECTED",
            "TRANSITION_REQUEST_STATUS_APPROVED",
        ]
    );

    let audit = alice(vec!["audit", "churn", "--version", "2"]).await;
    assert!(audit.lines().next().unwrap().starts_with("SEQ"), "{audit}");
    for expected in [
        "alice  requested PRODUCTION as churn:2",
        "bob    rejected churn:2: \"not this week\"",
        "bob    approved churn:4 (1 of 1)",
        "bob    STAGING → PRODUCTION (APPROVAL, request churn:4)",
        "bob    PRODUCTION → ARCHIVED (ROLLBACK): \"latency spike\"",
    ] {
        assert!(
            audit.contains(expected),
            "{expected:?} missing from\n{audit}"
        );
    }

    let history = alice(vec!["history", "churn"]).await;
    let rows: Vec<Vec<&str>> = history
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{history}");
    assert_eq!(rows[0][0], "1");
    assert!(history.contains("APPROVAL by bob (churn:1)"), "{history}");
    assert!(history.contains("SUPERSEDED by bob"), "{history}");
    assert!(history.contains("ROLLBACK by bob"), "{history}");
    assert_eq!(rows[2][0], "1");
    assert!(rows[2].contains(&"now"), "{history}");

    let json = alice(vec!["--json", "history", "churn"]).await;
    let periods: serde_json::Value = serde_json::from_str(&json).unwrap();
    let since = periods[1]["since"].as_str().unwrap().to_owned();
    let at = modelreg_as(&server, "alice", &["history", "churn", "--at", &since]).await;
    assert!(ok_text(&at).starts_with("churn/2 was in production at "));
    let early = modelreg_as(
        &server,
        "alice",
        &["history", "churn", "--at", "2000-01-01T00:00:00Z"],
    )
    .await;
    assert!(ok_text(&early).starts_with("no version of churn"));

    let verify = alice(vec!["audit", "verify"]).await;
    assert!(verify.contains("audit log intact"), "{verify}");
    let out = modelreg(&server, &["audit"]).await;
    assert!(!out.status.success());
}

/// Stored text that plays tricks on a terminal: colour, clear screen, a new
/// window title ended by BEL, a carriage return that overwrites the line, a
/// C1 CSI that moves the cursor up, a right-to-left override, DEL.
const TERMINAL_TRICKS: &str =
    "looks fine\u{1b}[31m\u{1b}[2J\u{1b}]0;pwned\u{7}\rhidden\u{9b}1A\u{202e}gpj.exe\u{7f}";

/// What a person sees must hold no character that acts on the terminal
/// (line ends aside).
fn assert_no_terminal_controls(what: &str, out: &Output) {
    let text = ok_text(out);
    let bad: Vec<char> = text
        .chars()
        .filter(|c| (c.is_control() && *c != '\n') || ('\u{202a}'..='\u{202e}').contains(c))
        .collect();
    assert!(bad.is_empty(), "{what} printed raw {bad:?}:\n{text}");
}

/// Comments and descriptions already stored with terminal escapes (written
/// here behind the server's back, as data from before the server refused
/// them), and a comment with a newline and a tab (which the server keeps),
/// are shown escaped by every human listing: tables, field lists and the
/// request view; `--json` still carries the exact text.
#[tokio::test]
async fn terminal_escapes_in_stored_text_are_not_printed_raw() {
    // Arrange
    let server = start_server().await;
    ok_text(&modelreg(&server, &["model", "create", "esc"]).await);
    ok_text(
        &modelreg(
            &server,
            &[
                "version",
                "register",
                "esc",
                "--artifact-uri",
                "s3://models/esc/1",
                "--stage",
                "staging",
            ],
        )
        .await,
    );
    ok_text(
        &modelreg(
            &server,
            &[
                "transition",
                "esc",
                "1",
                "production",
                "--comment",
                "first line\nsecond\tcolumn",
            ],
        )
        .await,
    );
    {
        use sqlx::Connection;
        let mut db = sqlx::SqliteConnection::connect(&server.database_url)
            .await
            .unwrap();
        sqlx::query("UPDATE models SET description = ?1 WHERE name = 'esc'")
            .bind(TERMINAL_TRICKS)
            .execute(&mut db)
            .await
            .unwrap();
        sqlx::query("UPDATE transition_requests SET comment = ?1 WHERE model = 'esc'")
            .bind(TERMINAL_TRICKS)
            .execute(&mut db)
            .await
            .unwrap();
    }

    // Act and assert
    let shown = modelreg(&server, &["model", "get", "esc"]).await;
    assert_no_terminal_controls("model get", &shown);
    assert!(
        ok_text(&shown).contains("looks fine\\u{1b}[31m\\u{1b}[2J"),
        "{}",
        ok_text(&shown)
    );
    let listed = modelreg(&server, &["requests", "list", "--model", "esc"]).await;
    assert_no_terminal_controls("requests list", &listed);
    assert!(ok_text(&listed).contains("\\rhidden\\u{9b}1A"));
    let events = modelreg(&server, &["events", "--model", "esc"]).await;
    assert_no_terminal_controls("events", &events);
    assert!(ok_text(&events).contains("first line\\nsecond\\tcolumn"));
    let cancelled = modelreg(&server, &["cancel", "esc:1"]).await;
    assert_no_terminal_controls("cancel", &cancelled);

    let json = ok_json(&modelreg(&server, &["--json", "model", "get", "esc"]).await);
    assert_eq!(json["description"], TERMINAL_TRICKS);
}
