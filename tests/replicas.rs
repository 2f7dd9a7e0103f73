//! Several stateless server replicas on one PostgreSQL database: one ordered
//! event stream seen identically from every replica, no visible sequence gap
//! under concurrent writers, and watchers that survive a lost LISTEN
//! connection or a replica restart. PostgreSQL only: the SQLite engine has
//! one server per database by design.

use std::collections::HashMap;

use modelreg_client::pb::{self, watch_transitions_response::Kind};
use modelreg_client::watch::{ResumingWatch, WatchItem};
use modelreg_client::{RegistryClient, pb::Stage};
use modelreg_tests::{
    TestApp, TestDb, all_events, create_model, register, spawn_app, watch_after, write_changes,
};
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Reads one replica's stream from the start until `target` is known and
/// reached; returns the events.
async fn watch_until(
    client: RegistryClient,
    target: watch::Receiver<Option<u64>>,
) -> Vec<pb::RegistryEvent> {
    let mut watch = ResumingWatch::new(
        client,
        pb::WatchTransitionsRequest {
            after_sequence: Some(0),
            ..Default::default()
        },
    );
    let mut got = Vec::new();
    loop {
        match watch.next().await.expect("watch") {
            WatchItem::Event(e) => got.push(e),
            WatchItem::Heartbeat(_) => {}
        }
        if let Some(t) = *target.borrow()
            && watch.cursor().unwrap_or(0) >= t
        {
            return got;
        }
    }
}

/// Two replicas on one fresh PostgreSQL database; `None` (the test is
/// skipped) when there is no PostgreSQL.
async fn two_replicas() -> Option<(TestApp, TestApp)> {
    let db = TestDb::postgres().await?;
    Some((spawn_app(&db).await, spawn_app(&db).await))
}

/// Kills every LISTEN connection of the replicas on `db`; returns how many.
async fn kill_listeners(db: &TestDb) -> u64 {
    use sqlx::Connection;
    let name = db.url.rsplit('/').next().unwrap().to_owned();
    let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE application_name = 'modelreg-listener' AND datname = $1",
    )
    .bind(name)
    .fetch_all(&mut c)
    .await
    .unwrap();
    killed.into_iter().filter(|k| *k).count() as u64
}

/// Two replicas on one PostgreSQL, 8 writers spread over both making 2,000
/// changes: a watcher on each replica ends with the identical sequence
/// 1..N (no gap, no duplicate, equal to ListEvents) although the replicas'
/// LISTEN connections are killed several times during the run.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_share_one_ordered_stream_through_lost_listeners() {
    // Arrange
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let mut c = a.client.clone();
    let models: Vec<String> = (0..4).map(|i| format!("shared-{i}")).collect();
    for m in &models {
        create_model(&mut c, m).await;
    }
    let (target_tx, target_rx) = watch::channel(None);
    let watcher_a = tokio::spawn(watch_until(a.client.clone(), target_rx.clone()));
    let watcher_b = tokio::spawn(watch_until(b.client.clone(), target_rx.clone()));

    // Act: writers on both replicas; the LISTEN connections die meanwhile.
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            tokio::spawn(write_changes(client, models.clone(), 250, 31 + i))
        })
        .collect();
    let mut killed = 0;
    while killed < 3 {
        // Wait until the replicas have (re)connected, then cut them again.
        let n = kill_listeners(&a.db).await;
        killed += n;
        register(&mut c, "shared-0", Stage::None).await;
    }
    for w in writers {
        w.await.unwrap();
    }
    let log = all_events(&mut c).await;
    target_tx.send(Some(log.len() as u64)).unwrap();

    // Assert
    assert!(killed >= 3, "LISTEN connections killed: {killed}");
    let expected: Vec<u64> = (1..=log.len() as u64).collect();
    for (name, w) in [("replica a", watcher_a), ("replica b", watcher_b)] {
        let got = w.await.unwrap();
        let seqs: Vec<u64> = got.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, expected, "{name}: not exactly 1..N");
        assert_eq!(got, log, "{name}: differs from ListEvents");
    }
    let from_b = all_events(&mut b.client.clone()).await;
    assert_eq!(from_b, log, "ListEvents differs between replicas");
    assert!(log.len() >= 2004);
}

/// Writers on many models commit concurrently through two replicas while a
/// reader pages through ListEvents and a filtered watcher follows: no page
/// ever starts past the next expected sequence and none skips one, because a
/// sequence is assigned only after the previous one has committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commits_never_expose_a_sequence_gap() {
    // Arrange: one model per writer, so model locks do not serialize them and
    // only the log head orders their commits.
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let mut c = a.client.clone();
    for i in 0..12 {
        create_model(&mut c, &format!("gap-{i}")).await;
    }
    let base = all_events(&mut c).await.len() as u64;
    let (done_tx, done_rx) = watch::channel(false);

    // A reader that trusts `sequence > cursor`, as a naive consumer would.
    let mut reader = b.client.clone();
    let pager = tokio::spawn(async move {
        let mut cursor = 0u64;
        let mut pages = 0u64;
        loop {
            let finished = *done_rx.borrow();
            let page = reader
                .list_events(pb::ListEventsRequest {
                    after_sequence: cursor,
                    page_size: 37,
                    ..Default::default()
                })
                .await
                .unwrap()
                .into_inner()
                .events;
            for e in &page {
                assert_eq!(e.sequence, cursor + 1, "ListEvents skipped a sequence");
                cursor = e.sequence;
            }
            pages += 1;
            if finished && page.is_empty() {
                return (cursor, pages);
            }
        }
    });

    // Act
    let writers: Vec<_> = (0..12)
        .map(|i| {
            let mut client = if i % 2 == 0 {
                a.client.clone()
            } else {
                b.client.clone()
            };
            tokio::spawn(async move {
                for _ in 0..60 {
                    register(&mut client, &format!("gap-{i}"), Stage::Staging).await;
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    done_tx.send(true).unwrap();

    // Assert
    let (cursor, pages) = pager.await.unwrap();
    let total = all_events(&mut c).await.len() as u64;
    assert_eq!(total, base + 12 * 60 * 2);
    assert_eq!(cursor, total, "the reader reached the end without a gap");
    assert!(
        pages > 10,
        "the reader ran alongside the writers ({pages} pages)"
    );
}

/// A watcher on replica A resumes on replica B with its cursor after A goes
/// away, and receives exactly the events it missed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_watcher_moves_to_another_replica_with_its_cursor() {
    // Arrange
    let Some((a, b)) = two_replicas().await else {
        return;
    };
    let mut c = b.client.clone();
    create_model(&mut c, "moving").await;
    let mut on_a = watch_after(&mut a.client.clone(), 0).await.unwrap();
    let mut seen = Vec::new();
    let mut cursor = 0;
    while cursor < 1 {
        if let Kind::Event(e) = on_a.next().await.unwrap().unwrap().kind.unwrap() {
            cursor = e.sequence;
            seen.push(e);
        }
    }

    // Act: A stops; writes continue through B.
    a.stop().await;
    while let Some(Ok(_)) = on_a.next().await {}
    for _ in 0..5 {
        register(&mut c, "moving", Stage::Staging).await;
    }
    let mut on_b = watch_after(&mut c, cursor).await.unwrap();
    let log = all_events(&mut c).await;
    while seen.len() < log.len() {
        if let Kind::Event(e) = on_b.next().await.unwrap().unwrap().kind.unwrap() {
            seen.push(e);
        }
    }

    // Assert
    assert_eq!(seen, log);
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for e in &seen {
        *counts.entry(e.sequence).or_default() += 1;
    }
    assert!(
        counts.values().all(|n| *n == 1),
        "a duplicate crossed the move"
    );
}
