//! WatchTransitions: from the event log to one subscriber.
//!
//! Each subscriber has its own task and its own cursor (the last sequence it
//! has considered). The task reads the log by sequence, sends what matches,
//! and waits for the store's "new commit" signal when it has caught up. There
//! is no separate live path, so replay and live tail cannot overlap or leave a
//! gap: the six guarantees follow from reading one ordered log.
//!
//! A subscriber that stops reading fills its small channel and its task waits
//! on the send; writers never wait for it and the server keeps at most one
//! page of events for it. It must not hold events in memory beyond that.

use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::domain::{Event, EventFilter};
use crate::store::Store;

/// Events read from the log per query.
const PAGE: usize = 256;
/// Messages buffered per subscriber before its task waits.
const CHANNEL: usize = 64;

/// What a subscriber receives, before conversion to the wire type.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A matching event.
    Event(Event),
    /// Every matching event up to this sequence has been sent.
    Heartbeat(u64),
}

/// One subscription's parameters.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// Which events to send.
    pub filter: EventFilter,
    /// Send events with a sequence greater than this.
    pub after: u64,
    /// How often to send a heartbeat while idle.
    pub heartbeat: Duration,
}

/// Starts a subscriber task and returns its stream. `convert` turns items into
/// the wire message; the stream ends with `UNAVAILABLE` when `shutdown` fires.
pub fn spawn<T, F>(
    store: Store,
    sub: Subscription,
    mut shutdown: watch::Receiver<bool>,
    convert: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(WatchItem) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        let mut latest = store.subscribe();
        let mut cursor = sub.after;
        let mut ticker = tokio::time::interval(sub.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset(); // the first heartbeat follows the first catch-up instead
        let mut caught_up_once = false;
        loop {
            if *shutdown.borrow() {
                end_with_unavailable(&tx).await;
                return;
            }
            // Everything committed up to `end` is visible: the signal is sent after commit.
            let end = *latest.borrow_and_update();
            while cursor < end {
                let page = match store.events(&sub.filter, cursor, Some(end), PAGE).await {
                    Ok(page) => page,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                // A short page means nothing else matches up to `end`.
                let next = if page.len() < PAGE {
                    end
                } else {
                    page.last().map(|e| e.sequence).unwrap_or(end)
                };
                for event in page {
                    tokio::select! {
                        sent = tx.send(Ok(convert(WatchItem::Event(event)))) => {
                            if sent.is_err() { return; }
                        }
                        _ = shutdown.changed() => {
                            end_with_unavailable(&tx).await;
                            return;
                        }
                    }
                }
                cursor = next;
            }
            if !caught_up_once {
                // Tells the subscriber where it stands, even on a quiet log.
                caught_up_once = true;
                if tx
                    .send(Ok(convert(WatchItem::Heartbeat(cursor))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                changed = latest.changed() => {
                    if changed.is_err() { return; }
                }
                _ = ticker.tick() => {
                    if tx.send(Ok(convert(WatchItem::Heartbeat(cursor)))).await.is_err() {
                        return;
                    }
                }
                stopped = shutdown.changed() => {
                    if stopped.is_err() {
                        end_with_unavailable(&tx).await;
                        return;
                    }
                }
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Ends a stream with `UNAVAILABLE` so clients know to resume. A subscriber
/// that is not reading gets a moment for room in its channel, then is dropped.
async fn end_with_unavailable<T>(tx: &mpsc::Sender<Result<T, Status>>) {
    let status = Status::unavailable("the server is shutting down; resume from your last sequence");
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}
