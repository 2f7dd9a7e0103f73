//! The real `modelreg` binary driven end to end against a real server on
//! 127.0.0.1:0: the walk-through of the README, JSON output for scripts,
//! tables for people, and errors with a non-zero exit.

use std::process::Output;

use modelreg_server::{Application, Settings};
use tokio::process::Command;

struct Server {
    url: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("registry.db").display());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Application::build(Settings::for_database(url))
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(app.run_until_stopped(listener, async {
        let _ = rx.await;
    }));
    Server {
        url: format!("http://{addr}"),
        _dir: dir,
        _stop: tx,
    }
}

async fn modelreg(server: &Server, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_modelreg"))
        .arg("--server")
        .arg(&server.url)
        .args(["--actor", "cli-user"])
        .args(args)
        .output()
        .await
        .expect("run modelreg")
}

fn ok_json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "modelreg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// The README walk-through through the binary: create, register straight into
/// staging, promote, alias, read back by alias, list events, and watch from
/// the beginning as JSON lines.
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

    let moved = ok_json(
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
    assert_eq!(moved["stage"], "STAGE_PRODUCTION");

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
            "EVENT_TYPE_STAGE_CHANGED",
            "EVENT_TYPE_ALIAS_SET",
        ]
    );

    let watched = modelreg(&server, &["watch", "--after", "0", "--count", "5"]).await;
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
    assert_eq!(sequences, [1, 2, 3, 4, 5]);

    let table = modelreg(&server, &["version", "list", "fraud-detector"]).await;
    let text = String::from_utf8(table.stdout).unwrap();
    assert!(text.starts_with("VERSION"), "{text}");
    assert!(text.contains("PRODUCTION"), "{text}");

    let audit = modelreg(&server, &["audit", "verify"]).await;
    assert!(audit.status.success());
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
