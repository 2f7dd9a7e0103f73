//! Writes cut short by the client: a deadline far too short for the call
//! (the server cancels the handler) or a future dropped mid-flight (the
//! stream is reset). Each is retried with the same request id and no
//! deadline; every write must end applied exactly once, never doubled and
//! never half-applied.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use modelreg_client::{RegistryClient, pb, pb::Stage};
use modelreg_tests::{
    Rng, TestDb, all_versions, checked_log, conformance, create_model, evaluation_set, spawn_app,
};
use tonic::{Code, Status};

conformance!(cancelled_and_timed_out_writes_apply_exactly_once);

/// Concurrent clients, each on a model of its own.
const CLIENTS: u64 = 4;
/// Rounds per client: a registration, an evaluation and a promotion each.
const ROUNDS: u64 = 40;

/// How the first attempt of a write ended.
#[derive(Debug, Default)]
struct Attempts {
    /// Finished inside its deadline.
    completed: u64,
    /// Ended by its deadline (DEADLINE_EXCEEDED or CANCELLED).
    deadline: u64,
    /// Dropped by the client mid-flight.
    dropped: u64,
    /// Promotions whose retry found the cut-short attempt had applied.
    applied_anyway: u64,
}

/// Makes one attempt that is cut short after `limit`: by a deadline sent
/// with the call, or by dropping the call's future (chosen by `rng`).
async fn cut_short<T, F, Fut>(rng: &mut Rng, attempts: &mut Attempts, call: F)
where
    F: FnOnce(Option<Duration>) -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let micros = [1, 10, 100, 300, 1000, 2000, 5000][rng.below(7) as usize];
    let limit = Duration::from_micros(micros);
    let result = if rng.below(2) == 0 {
        call(Some(limit)).await
    } else {
        match tokio::time::timeout(limit, call(None)).await {
            Ok(result) => result,
            Err(_) => {
                attempts.dropped += 1;
                return;
            }
        }
    };
    match result {
        Ok(_) => attempts.completed += 1,
        Err(s) if matches!(s.code(), Code::DeadlineExceeded | Code::Cancelled) => {
            attempts.deadline += 1
        }
        Err(s) => panic!("a cut-short write failed otherwise: {s}"),
    }
}

fn with_deadline<T>(msg: T, deadline: Option<Duration>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(d) = deadline {
        req.set_timeout(d);
    }
    req
}

fn set_ref() -> pb::EvaluationSetRef {
    pb::EvaluationSetRef {
        name: "cancel-set".into(),
        version: "v1".into(),
    }
}

/// One client: registers, evaluates and promotes, each write first cut
/// short, then retried with the same request id and no deadline.
async fn client_rounds(c: RegistryClient, model: String, seed: u64) -> Attempts {
    let mut rng = Rng::new(seed);
    let mut attempts = Attempts::default();
    for n in 1..=ROUNDS {
        let rid = format!("{model}-{n}");
        let register = pb::RegisterVersionRequest {
            model: model.clone(),
            artifact_uri: format!("s3://cancel/{rid}"),
            request_id: rid.clone(),
            target_stage: Stage::Staging as i32,
            ..Default::default()
        };
        cut_short(&mut rng, &mut attempts, |d| {
            let (mut c, r) = (c.clone(), register.clone());
            async move { c.register_version(with_deadline(r, d)).await }
        })
        .await;
        let v = c
            .clone()
            .register_version(register.clone())
            .await
            .expect("retried registration")
            .into_inner()
            .version
            .expect("version");
        assert_eq!(v.artifact_uri, register.artifact_uri, "{rid}");

        let attach = pb::AttachEvaluationRequest {
            model: model.clone(),
            version: v.version,
            evaluation_set: Some(set_ref()),
            evaluator_version: format!("e-{rid}"),
            metrics: HashMap::from([("accuracy".to_string(), 0.9)]),
            report_uri: String::new(),
            request_id: format!("{rid}-eval"),
        };
        cut_short(&mut rng, &mut attempts, |d| {
            let (mut c, r) = (c.clone(), attach.clone());
            async move { c.attach_evaluation(with_deadline(r, d)).await }
        })
        .await;
        c.clone()
            .attach_evaluation(attach)
            .await
            .expect("retried evaluation");

        // A promotion supersedes the previous production version in the
        // same transaction: both happen or neither.
        let promote = pb::TransitionStageRequest {
            model: model.clone(),
            version: v.version,
            target_stage: Stage::Production as i32,
            comment: rid.clone(),
            etag: String::new(),
        };
        cut_short(&mut rng, &mut attempts, |d| {
            let (mut c, r) = (c.clone(), promote.clone());
            async move { c.transition_stage(with_deadline(r, d)).await }
        })
        .await;
        match c.clone().transition_stage(promote).await {
            Ok(v) => {
                let v = v
                    .into_inner()
                    .version
                    .expect("applied move returns the version");
                assert_eq!(v.stage, Stage::Production as i32, "{rid}");
            }
            // The cut-short attempt applied: PRODUCTION → PRODUCTION is no
            // move. (On SQLite this refusal can come before the cut-short
            // write's batch has committed, so a read right after it may still
            // see STAGING; the log and the final stages are checked below.)
            Err(s) if s.code() == Code::FailedPrecondition => attempts.applied_anyway += 1,
            Err(s) => panic!("{rid}: retried promotion: {s}"),
        }
    }
    attempts
}

/// Four clients register, evaluate and promote 40 times each with every
/// first attempt cut short (a 1 µs – 5 ms deadline, or the future dropped),
/// then retried with the same request id: each version exists once with
/// one registration event, each evaluation once, each promotion logged once
/// together with the superseding of its predecessor in the same
/// transaction, the stages match the log, and the log is 1..N and verifies.
async fn cancelled_and_timed_out_writes_apply_exactly_once(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    c.create_evaluation_set(pb::CreateEvaluationSetRequest {
        uri: "s3://datasets/cancel/v1".into(),
        ..evaluation_set("cancel-set", "v1", &[("accuracy", true)])
    })
    .await
    .expect("create evaluation set");
    let models: Vec<String> = (0..CLIENTS).map(|i| format!("cancel-{i}")).collect();
    for m in &models {
        create_model(&mut c, m).await;
    }

    // Act
    let clients: Vec<_> = models
        .iter()
        .enumerate()
        .map(|(i, m)| tokio::spawn(client_rounds(app.client.clone(), m.clone(), 77 + i as u64)))
        .collect();
    let mut totals = Attempts::default();
    for t in clients {
        let a = t.await.expect("client");
        totals.completed += a.completed;
        totals.deadline += a.deadline;
        totals.dropped += a.dropped;
        totals.applied_anyway += a.applied_anyway;
    }

    // Assert
    // Every answer, refusals included, comes after the commit it rests on,
    // so the clients' last answers prove everything they caused is visible.
    let (log, _) = checked_log(&mut c).await;
    let count = |t: pb::EventType, model: &str, version: i64| {
        log.iter()
            .filter(|e| e.r#type == t as i32 && e.model == model && e.version == version)
            .count()
    };
    for m in &models {
        let versions = all_versions(&mut c, m).await;
        let uris: Vec<String> = versions.iter().map(|v| v.artifact_uri.clone()).collect();
        let expected: Vec<String> = (1..=ROUNDS)
            .map(|n| format!("s3://cancel/{m}-{n}"))
            .collect();
        assert_eq!(
            uris, expected,
            "{m}: each registration exactly once, in order"
        );
        for v in &versions {
            let n = v.version;
            assert_eq!(count(pb::EventType::VersionRegistered, m, n), 1, "{m} {n}");
            assert_eq!(count(pb::EventType::EvaluationAttached, m, n), 1, "{m} {n}");
            let promotions: Vec<&pb::RegistryEvent> = log
                .iter()
                .filter(|e| {
                    e.model == *m
                        && e.version == n
                        && e.r#type == pb::EventType::StageChanged as i32
                        && e.to_stage == Stage::Production as i32
                })
                .collect();
            assert_eq!(promotions.len(), 1, "{m} {n}: promoted once");
            if n > 1 {
                // The predecessor's superseding is the event just before, in
                // the same transaction.
                let before = &log[promotions[0].sequence as usize - 2];
                assert_eq!(
                    (before.model.as_str(), before.version, before.cause),
                    (m.as_str(), n - 1, pb::StageChangeCause::Superseded as i32),
                    "{m} {n}: promotion without its superseding"
                );
            }
            let last = log
                .iter()
                .rfind(|e| {
                    e.model == *m
                        && e.version == n
                        && e.r#type == pb::EventType::StageChanged as i32
                })
                .expect("stage events");
            assert_eq!(
                v.stage, last.to_stage,
                "{m} {n}: stage differs from the log"
            );
            let want = if n == ROUNDS as i64 {
                Stage::Production
            } else {
                Stage::Archived
            };
            assert_eq!(v.stage, want as i32, "{m} {n}");
        }
    }
    assert!(
        totals.deadline + totals.dropped > 0,
        "no write was cut short: {totals:?}"
    );
    eprintln!(
        "cancellation ({:?}): {} writes cut short by a deadline, {} dropped mid-flight, \
         {} finished in time, {} cut-short promotions applied before the retry; \
         {} events checked",
        db.engine,
        totals.deadline,
        totals.dropped,
        totals.completed,
        totals.applied_anyway,
        log.len()
    );
}
