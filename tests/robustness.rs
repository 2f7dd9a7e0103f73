//! Resource hygiene under churn: 10,000 WatchTransitions streams opened and
//! dropped leave no subscriber task behind and give their memory back. The
//! server runs in this test process, so the process's RSS is the server's;
//! this file holds this one test so nothing else moves the figures.

use std::time::Duration;

use modelreg_client::pb::{self, Stage, watch_transitions_response::Kind};
use modelreg_server::watch::open_watch_streams;
use modelreg_tests::{TestDb, client_for, create_model, register, register_many, spawn_app};
use tokio_stream::StreamExt;

/// Streams opened in all.
const STREAMS: usize = 10_000;
/// Streams open at once.
const BATCH: usize = 500;
/// Connections the streams are spread over.
const CONNECTIONS: usize = 8;
/// How much the settled RSS may exceed the starting one.
const RSS_SLACK_KIB: u64 = 64 * 1024;

/// The resident set size of this process, in KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// Waits until every subscriber task has ended; panics with the count left
/// if some never do.
async fn until_no_streams() {
    for _ in 0..600 {
        if open_watch_streams() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{} watch subscriber tasks still alive after their streams were dropped",
        open_watch_streams()
    );
}

/// Opens `BATCH` streams at a time, reads the first message of each (the
/// heartbeat saying where the log ends), and drops it.
async fn churn(clients: &[modelreg_client::RegistryClient], streams: usize) -> usize {
    let mut opened = 0;
    while opened < streams {
        let n = BATCH.min(streams - opened);
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                let mut c = clients[i % clients.len()].clone();
                tokio::spawn(async move {
                    let mut s = c
                        .watch_transitions(pb::WatchTransitionsRequest::default())
                        .await
                        .expect("open watch")
                        .into_inner();
                    let first = s.next().await.expect("a first message").expect("ok");
                    assert!(
                        matches!(first.kind, Some(Kind::Heartbeat(ref h)) if h.sequence > 0),
                        "a stream without cursor starts with a heartbeat at the end: {first:?}"
                    );
                    // Dropped here, mid-stream.
                })
            })
            .collect();
        for t in tasks {
            t.await.expect("stream task");
        }
        opened += n;
    }
    opened
}

/// 10,000 WatchTransitions streams, 500 open at a time over 8 connections,
/// each read to its first heartbeat and dropped: afterwards no subscriber
/// task is left on the server and the process's RSS is back within 64 MiB
/// of where it started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_dropped_watch_streams_leave_no_task_or_memory() {
    // Arrange
    let db = TestDb::sqlite();
    let app = spawn_app(&db).await;
    let mut c = app.client.clone();
    create_model(&mut c, "churn").await;
    register_many(&mut c, "churn", 10, Stage::Staging).await;
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(client_for(&app.url, "watcher").await);
    }
    // Warm up once so allocator pools and connection buffers count as the start.
    churn(&clients, BATCH).await;
    until_no_streams().await;
    let start = vm_rss_kib();

    // Act
    let opened = churn(&clients, STREAMS).await;
    let end = vm_rss_kib();
    until_no_streams().await;
    // A writer after the churn: live subscribers would have to wake for it.
    register(&mut c, "churn", Stage::Staging).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let settled = vm_rss_kib();

    // Assert
    assert_eq!(opened, STREAMS);
    assert_eq!(open_watch_streams(), 0, "subscriber tasks left behind");
    eprintln!(
        "watch churn: {opened} streams opened and dropped; RSS {} MiB at start, {} MiB right \
         after, {} MiB settled; 0 subscriber tasks left",
        start / 1024,
        end / 1024,
        settled / 1024
    );
    assert!(
        settled < start + RSS_SLACK_KIB,
        "RSS grew from {start} KiB to {settled} KiB"
    );
}
