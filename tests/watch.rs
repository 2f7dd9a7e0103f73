//! WatchTransitions' six guarantees (ordered, unique, reliable, atomic,
//! resumable, bookmarkable) under concurrent writers and disconnecting or
//! stalled watchers, checked against ListEvents.

use std::collections::BTreeMap;

use modelreg_client::RegistryClient;
use modelreg_client::pb::{self, Stage, watch_transitions_response::Kind};
use modelreg_tests::{
    Rng, TestDb, all_events, conformance, create_model, register, spawn_app, watch_after,
    write_changes,
};

conformance!(
    concurrent_writers_and_resuming_watchers_see_exactly_the_log,
    a_stalled_watcher_loses_nothing_and_blocks_no_writer,
    a_stream_without_cursor_starts_at_the_end,
    shutdown_ends_streams_with_unavailable,
    the_resuming_client_crosses_a_restart,
);
use tokio_stream::StreamExt;
use tonic::Code;

/// A watcher that disconnects after a random number of messages and resumes
/// from the last sequence it saw, until it has reached `target`.
async fn flaky_watcher(
    mut c: RegistryClient,
    seed: u64,
    target: tokio::sync::watch::Receiver<Option<u64>>,
) -> (Vec<pb::RegistryEvent>, usize) {
    let mut rng = Rng::new(seed);
    let mut received = Vec::new();
    let mut cursor = 0u64;
    let mut reconnects = 0;
    loop {
        let mut stream = watch_after(&mut c, cursor).await.expect("watch");
        let budget = 1 + rng.below(120);
        let mut taken = 0;
        while taken < budget {
            let Some(msg) = stream.next().await else {
                break;
            };
            let msg = msg.expect("stream error");
            taken += 1;
            match msg.kind.expect("kind") {
                Kind::Event(e) => {
                    cursor = e.sequence;
                    received.push(e);
                }
                Kind::Heartbeat(h) => {
                    // Bookmark: nothing matching at or below h.sequence is still to come.
                    assert!(
                        h.sequence >= cursor,
                        "heartbeat {} behind cursor {cursor}",
                        h.sequence
                    );
                    cursor = h.sequence;
                }
            }
            if let Some(t) = *target.borrow()
                && cursor >= t
            {
                return (received, reconnects);
            }
        }
        drop(stream); // disconnect
        reconnects += 1;
    }
}

fn assert_exact_log(name: &str, got: &[pb::RegistryEvent], log: &[pb::RegistryEvent]) {
    let seqs: Vec<u64> = got.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (1..=log.len() as u64).collect();
    assert_eq!(seqs, expected, "{name}: not exactly 1..N in order");
    assert_eq!(got, log, "{name}: events differ from ListEvents");
}

/// 8 writers make 1,600 changes while 3 watchers disconnect at random and
/// resume from their last sequence: each ends with exactly 1..N, in order,
/// without duplicates, identical to ListEvents; a filtered watcher gets
/// exactly the matching subset, and each of its heartbeats is a true bookmark.
async fn concurrent_writers_and_resuming_watchers_see_exactly_the_log(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    let models: Vec<String> = (0..4).map(|i| format!("model-{i}")).collect();
    for m in &models {
        create_model(&mut c, m).await;
    }
    let (target_tx, target_rx) = tokio::sync::watch::channel(None);
    let watchers: Vec<_> = (0..3)
        .map(|i| {
            let c = app.client.clone();
            let rx = target_rx.clone();
            tokio::spawn(flaky_watcher(c, 1000 + i, rx))
        })
        .collect();
    // A filtered watcher that never disconnects and records its bookmarks.
    let mut filtered = app
        .client
        .clone()
        .watch_transitions(pb::WatchTransitionsRequest {
            models: vec!["model-1".into()],
            types: vec![pb::EventType::StageChanged as i32],
            to_stages: vec![Stage::Production as i32],
            after_sequence: Some(0),
        })
        .await
        .unwrap()
        .into_inner();
    let filtered_rx = target_rx.clone();
    let filtered_task = tokio::spawn(async move {
        let mut got = Vec::new();
        let mut bookmarks = Vec::new(); // (heartbeat sequence, events received so far)
        while let Some(msg) = filtered.next().await {
            match msg.unwrap().kind.unwrap() {
                Kind::Event(e) => got.push(e),
                Kind::Heartbeat(h) => {
                    bookmarks.push((h.sequence, got.len()));
                    if filtered_rx.borrow().is_some_and(|t| h.sequence >= t) {
                        break;
                    }
                }
            }
        }
        (got, bookmarks)
    });

    // Act
    let writers: Vec<_> = (0..8)
        .map(|i| {
            tokio::spawn(write_changes(
                app.client.clone(),
                models.clone(),
                200,
                7 + i,
            ))
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let log = all_events(&mut c).await;
    target_tx.send(Some(log.len() as u64)).unwrap();

    // Assert
    assert!(
        log.len() >= 1604,
        "1,600 changes and 4 models: got {} events",
        log.len()
    );
    for (i, w) in watchers.into_iter().enumerate() {
        let (got, reconnects) = w.await.unwrap();
        assert!(
            reconnects >= 3,
            "watcher {i} reconnected only {reconnects} times"
        );
        assert_exact_log(&format!("watcher {i}"), &got, &log);
    }
    let matching: Vec<pb::RegistryEvent> = log
        .iter()
        .filter(|e| {
            e.model == "model-1"
                && e.r#type == pb::EventType::StageChanged as i32
                && e.to_stage == Stage::Production as i32
        })
        .cloned()
        .collect();
    let (got, bookmarks) = filtered_task.await.unwrap();
    assert!(!matching.is_empty());
    assert_eq!(got, matching, "filtered watcher");
    for (seq, received) in bookmarks {
        let due = matching.iter().filter(|e| e.sequence <= seq).count();
        assert_eq!(
            received, due,
            "heartbeat {seq} was sent before every matching event up to it"
        );
    }
    // Atomic: a superseding promotion's two events are adjacent in every stream.
    let by_seq: BTreeMap<u64, &pb::RegistryEvent> = log.iter().map(|e| (e.sequence, e)).collect();
    for e in &log {
        if e.cause == pb::StageChangeCause::Superseded as i32 {
            let next = by_seq[&(e.sequence + 1)];
            assert_eq!(next.to_stage, Stage::Production as i32);
            assert_eq!(next.occur_time, e.occur_time);
        }
    }
}

/// A watcher that stops reading while 3,000 events are written neither blocks
/// the writers nor loses anything: when it reads again it receives every
/// event, in order.
async fn a_stalled_watcher_loses_nothing_and_blocks_no_writer(db: TestDb) {
    // Arrange
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "stall").await;
    let mut stream = watch_after(&mut c, 0).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first.kind, Some(Kind::Event(ref e)) if e.sequence == 1));

    // Act: the watcher reads nothing while writers work; they must finish.
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let mut c = app.client.clone();
            tokio::spawn(async move {
                for _ in 0..750 {
                    register(&mut c, "stall", Stage::None).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let log = all_events(&mut c).await;
    assert_eq!(log.len(), 3001);

    // Assert
    let mut got = vec![match first.kind {
        Some(Kind::Event(e)) => e,
        _ => unreachable!(),
    }];
    while got.len() < log.len() {
        match stream.next().await.unwrap().unwrap().kind.unwrap() {
            Kind::Event(e) => got.push(e),
            Kind::Heartbeat(h) => assert!(h.sequence <= log.len() as u64),
        }
    }
    assert_exact_log("stalled watcher", &got, &log);

    // A late watcher replays the whole long log from any cursor: first from
    // the server's in-memory tail, then, after a restart (which starts the
    // tail at the end), from the database in pages.
    replay_matches_log(&app.client, &log).await;
    let db = app.stop().await;
    let app = spawn_app(&db).await;
    replay_matches_log(&app.client, &log).await;
}

/// Watches from sequence 0 and from 1,234 and checks each stream replays
/// exactly the rest of `log` before its first heartbeat.
async fn replay_matches_log(client: &RegistryClient, log: &[pb::RegistryEvent]) {
    for start in [0u64, 1234] {
        let mut late = watch_after(&mut client.clone(), start).await.unwrap();
        let mut replayed = Vec::new();
        while replayed.len() < log.len() - start as usize {
            match late.next().await.unwrap().unwrap().kind.unwrap() {
                Kind::Event(e) => replayed.push(e),
                Kind::Heartbeat(h) => panic!("heartbeat {} before the replay finished", h.sequence),
            }
        }
        assert_eq!(replayed, log[start as usize..], "replay after {start}");
    }
}

/// Without after_sequence a stream starts at the current end: its first
/// message is a heartbeat carrying the latest sequence, and it then sees only
/// new events. A cursor beyond the end is refused.
async fn a_stream_without_cursor_starts_at_the_end(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "tail").await;
    register(&mut c, "tail", Stage::None).await;
    let latest = all_events(&mut c).await.len() as u64;

    let mut stream = c
        .watch_transitions(pb::WatchTransitionsRequest::default())
        .await
        .unwrap()
        .into_inner();
    match stream.next().await.unwrap().unwrap().kind.unwrap() {
        Kind::Heartbeat(h) => assert_eq!(h.sequence, latest),
        other => panic!("expected a heartbeat first, got {other:?}"),
    }
    let v = register(&mut c, "tail", Stage::None).await;
    loop {
        match stream.next().await.unwrap().unwrap().kind.unwrap() {
            Kind::Event(e) => {
                assert_eq!(e.sequence, latest + 1);
                assert_eq!(e.version, v.version);
                break;
            }
            Kind::Heartbeat(h) => assert_eq!(h.sequence, latest),
        }
    }

    let err = watch_after(&mut c, latest + 100).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        modelreg_client::errors::violated_fields(&err),
        vec!["after_sequence"]
    );
}

/// Shutting the server down ends open streams with UNAVAILABLE, so clients
/// know to resume elsewhere.
async fn shutdown_ends_streams_with_unavailable(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    let mut stream = watch_after(&mut c, 0).await.unwrap();
    // The first heartbeat proves the stream is live.
    assert!(matches!(
        stream.next().await.unwrap().unwrap().kind,
        Some(Kind::Heartbeat(_))
    ));
    let stopping = tokio::spawn(app.stop());
    let mut code = None;
    while let Some(msg) = stream.next().await {
        if let Err(status) = msg {
            code = Some(status.code());
            break;
        }
    }
    assert_eq!(code, Some(Code::Unavailable));
    stopping.await.unwrap();
}

/// The client library's resuming watch crosses a server restart on the same
/// database without a gap or a duplicate.
async fn the_resuming_client_crosses_a_restart(db: TestDb) {
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "restart").await;
    let before = all_events(&mut c).await;
    let db = app.stop().await;

    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    let mut watch = modelreg_client::watch::ResumingWatch::new(
        c.clone(),
        pb::WatchTransitionsRequest {
            after_sequence: Some(0),
            ..Default::default()
        },
    );
    let mut got = Vec::new();
    while got.len() < before.len() {
        if let modelreg_client::watch::WatchItem::Event(e) = watch.next().await.unwrap() {
            got.push(e);
        }
    }
    // Restart again; the new server listens on a new port, so resume there
    // from the cursor, and events written after the restart come through.
    let db = app.stop().await;
    let app = spawn_app(&db).await;
    let mut watch = modelreg_client::watch::ResumingWatch::new(
        app.client.clone(),
        pb::WatchTransitionsRequest {
            after_sequence: watch.cursor(),
            ..Default::default()
        },
    );
    c = app.client.clone();
    register(&mut c, "restart", Stage::None).await;
    let log = all_events(&mut c).await;
    while got.len() < log.len() {
        if let modelreg_client::watch::WatchItem::Event(e) = watch.next().await.unwrap() {
            got.push(e);
        }
    }
    assert_exact_log("resuming client", &got, &log);
}
