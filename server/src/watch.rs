//! WatchTransitions: from the event log to each subscriber.
//!
//! Every subscriber has its own task and its own cursor (the last sequence it
//! has considered), and reads the one ordered log by sequence. There is no
//! separate live path, so replay and live tail cannot overlap or leave a gap:
//! the six guarantees follow from reading one ordered log.
//!
//! One [`Tail`] per server reads each newly committed event from the database
//! once and keeps the most recent ones in memory; subscribers that are caught
//! up are served from it, so a thousand watchers cost one query per commit,
//! not a thousand. A subscriber that has fallen further behind than the tail
//! holds reads the log in pages until it catches up, then rejoins the tail.
//!
//! A subscriber that stops reading fills its small channel and its task waits
//! on the send; writers never wait for it and the server keeps at most one
//! page of events for it. It must not hold events in memory beyond that.
//!
//! A subscriber that authenticated with a bearer token ends with
//! `UNAUTHENTICATED` once a reload of the token file removes the token, and
//! is sent nothing committed after that reload.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::auth::Credential;
use crate::domain::{Event, EventFilter};
use crate::store::Store;

/// Events read from the log per query.
const PAGE: usize = 256;
/// Messages buffered per subscriber before its task waits.
const CHANNEL: usize = 64;
/// Most recent events the tail keeps in memory.
const TAIL_CAPACITY: usize = 8192;

/// Subscriber tasks alive in this process, so tests can prove that streams
/// which were opened and dropped leave no task behind.
static OPEN_STREAMS: AtomicUsize = AtomicUsize::new(0);

/// How many WatchTransitions subscriber tasks are alive in this process
/// (every server in it): each ends once its client has gone or at shutdown.
pub fn open_watch_streams() -> usize {
    OPEN_STREAMS.load(Ordering::Relaxed)
}

/// Counts one subscriber task for as long as it lives, however it ends.
struct OpenStream;

impl OpenStream {
    fn new() -> OpenStream {
        OPEN_STREAMS.fetch_add(1, Ordering::Relaxed);
        OpenStream
    }
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        OPEN_STREAMS.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cursors of one server's open subscribers, for the slowest watcher's
/// lag in `/metrics`. A subscriber moves its own cursor with one atomic
/// store; the lock is taken only when a stream opens or ends, and by a scrape.
#[derive(Debug, Default)]
pub struct Watchers {
    /// The id the next subscriber gets.
    next: AtomicU64,
    /// Each open subscriber's cursor (the last sequence it has considered).
    cursors: Mutex<HashMap<u64, Arc<AtomicU64>>>,
}

impl Watchers {
    /// Adds a subscriber at `cursor`; it leaves when the handle drops.
    fn register(self: &Arc<Self>, cursor: u64) -> WatcherCursor {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let at = Arc::new(AtomicU64::new(cursor));
        self.cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, at.clone());
        WatcherCursor {
            watchers: self.clone(),
            id,
            at,
        }
    }

    /// The lowest cursor among open subscribers; `None` when there are none.
    pub fn slowest_cursor(&self) -> Option<u64> {
        self.cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
    }
}

/// One subscriber's entry in [`Watchers`], removed on drop.
struct WatcherCursor {
    /// The registry it is listed in.
    watchers: Arc<Watchers>,
    /// Its key there.
    id: u64,
    /// The cursor, shared with the registry.
    at: Arc<AtomicU64>,
}

impl WatcherCursor {
    fn set(&self, cursor: u64) {
        self.at.store(cursor, Ordering::Relaxed);
    }
}

impl Drop for WatcherCursor {
    fn drop(&mut self) {
        self.watchers
            .cursors
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.id);
    }
}

/// What a subscriber receives, before conversion to the wire type.
#[derive(Debug, Clone)]
pub enum WatchItem {
    /// A matching event.
    Event(Arc<Event>),
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
    /// The subscriber's bearer token, when it has one: the stream ends
    /// when the token file in force no longer lists it.
    pub credential: Option<Credential>,
}

/// The most recent committed events, shared by every subscriber of this server.
pub struct Tail {
    /// The events with sequences `(start, start + events.len()]`, all of them.
    state: RwLock<TailState>,
    /// The highest sequence held; changes wake subscribers.
    end: watch::Sender<u64>,
    /// Where this server's subscribers are, for `/metrics`.
    watchers: Arc<Watchers>,
}

struct TailState {
    /// The sequence just before the first event held.
    start: u64,
    /// The events, in sequence order, without gaps.
    events: VecDeque<Arc<Event>>,
}

/// What the tail can give a subscriber at some cursor.
enum FromTail {
    /// The tail holds nothing after the cursor (it is older than what the
    /// tail holds, or newer than what it has read yet): read the log instead.
    Elsewhere,
    /// Matching events after the cursor, and the last sequence considered.
    Page(Vec<Arc<Event>>, u64),
}

impl Tail {
    /// Starts following `store` from its current end until `shutdown`.
    pub fn spawn(store: Store, shutdown: CancellationToken) -> Arc<Tail> {
        let start = store.latest_sequence();
        let tail = Arc::new(Tail {
            state: RwLock::new(TailState {
                start,
                events: VecDeque::new(),
            }),
            end: watch::channel(start).0,
            watchers: Arc::default(),
        });
        tokio::spawn(follow(tail.clone(), store, shutdown));
        tail
    }

    /// The cursors of the subscribers this tail feeds.
    pub fn watchers(&self) -> Arc<Watchers> {
        self.watchers.clone()
    }

    fn subscribe(&self) -> watch::Receiver<u64> {
        self.end.subscribe()
    }

    fn page_after(&self, cursor: u64, filter: &EventFilter, limit: usize) -> FromTail {
        let state = self.state.read().unwrap_or_else(|e| e.into_inner());
        if cursor < state.start || cursor >= state.start + state.events.len() as u64 {
            return FromTail::Elsewhere;
        }
        let skip = (cursor - state.start) as usize;
        let mut matched = Vec::new();
        let mut scanned = cursor;
        for e in state.events.iter().skip(skip) {
            scanned = e.sequence;
            if filter.matches(e) {
                matched.push(e.clone());
                if matched.len() >= limit {
                    break;
                }
            }
        }
        FromTail::Page(matched, scanned)
    }

    fn push(&self, page: Vec<Event>) -> u64 {
        let mut state = self.state.write().unwrap_or_else(|e| e.into_inner());
        for e in page {
            state.events.push_back(Arc::new(e));
        }
        while state.events.len() > TAIL_CAPACITY {
            state.events.pop_front();
            state.start += 1;
        }
        state.start + state.events.len() as u64
    }
}

/// Reads each committed event once, in order, into the tail.
async fn follow(tail: Arc<Tail>, store: Store, shutdown: CancellationToken) {
    let mut latest = store.subscribe();
    let all = EventFilter::default();
    let mut end = *tail.end.borrow();
    loop {
        let target = *latest.borrow_and_update();
        while end < target {
            match store.events(&all, end, Some(target), 1024).await {
                // The log has no gaps, so an unfiltered page continues exactly at end + 1.
                Ok(page) if page.first().is_some_and(|e| e.sequence == end + 1) => {
                    end = tail.push(page);
                    tail.end.send_replace(end);
                }
                Ok(_) => {
                    tracing::error!(end, target, "the event log did not continue where expected");
                    break;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read new events; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = shutdown.cancelled() => return,
                    }
                }
            }
        }
        tokio::select! {
            changed = latest.changed() => if changed.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Starts a subscriber task and returns its stream. `convert` turns items into
/// the wire message; the stream ends with `UNAVAILABLE` when `shutdown` fires.
pub fn spawn<T, F>(
    store: Store,
    tail: Arc<Tail>,
    sub: Subscription,
    shutdown: CancellationToken,
    convert: F,
) -> ReceiverStream<Result<T, Status>>
where
    T: Send + 'static,
    F: Fn(WatchItem) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL);
    let open = OpenStream::new();
    tokio::spawn(async move {
        let _open = open;
        let mut credential = sub.credential;
        let position = tail.watchers.register(sub.after);
        let mut tail_end = tail.subscribe();
        // The first catch-up reaches at least what was committed when the
        // stream opened, even if the tail has not read it yet.
        let floor = store.latest_sequence();
        let mut cursor = sub.after;
        let mut ticker = tokio::time::interval(sub.heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset(); // the first heartbeat follows the first catch-up instead
        let mut caught_up_once = false;
        loop {
            if shutdown.is_cancelled() {
                end_with_unavailable(&tx).await;
                return;
            }
            if !still_valid(&credential) {
                end_with_unauthenticated(&tx).await;
                return;
            }
            // Everything up to `end` is committed: the tail holds only committed events.
            let end = (*tail_end.borrow_and_update()).max(floor);
            while cursor < end {
                let (page, next) = match tail.page_after(cursor, &sub.filter, PAGE) {
                    FromTail::Page(page, scanned) => (page, scanned),
                    FromTail::Elsewhere => {
                        match store.events(&sub.filter, cursor, Some(end), PAGE).await {
                            // A short page means nothing else matches up to `end`.
                            Ok(page) => {
                                let next = if page.len() < PAGE {
                                    end
                                } else {
                                    page.last().map(|e| e.sequence).unwrap_or(end)
                                };
                                (page.into_iter().map(Arc::new).collect(), next)
                            }
                            Err(e) => {
                                let _ = tx.send(Err(Status::from(e))).await;
                                return;
                            }
                        }
                    }
                };
                // Checked after reading: an event committed after the reload
                // that removed the token is in this page only if the check fails.
                if !still_valid(&credential) {
                    end_with_unauthenticated(&tx).await;
                    return;
                }
                for event in page {
                    tokio::select! {
                        sent = tx.send(Ok(convert(WatchItem::Event(event)))) => {
                            if sent.is_err() { return; }
                        }
                        _ = shutdown.cancelled() => {
                            end_with_unavailable(&tx).await;
                            return;
                        }
                    }
                }
                cursor = next;
                position.set(cursor);
            }
            if !caught_up_once {
                // Tells the subscriber where it stands, even on a quiet log.
                caught_up_once = true;
                if !still_valid(&credential) {
                    end_with_unauthenticated(&tx).await;
                    return;
                }
                if tx
                    .send(Ok(convert(WatchItem::Heartbeat(cursor))))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            tokio::select! {
                changed = tail_end.changed() => {
                    if changed.is_err() {
                        end_with_unavailable(&tx).await;
                        return;
                    }
                }
                _ = ticker.tick() => {
                    if !still_valid(&credential) {
                        end_with_unauthenticated(&tx).await;
                        return;
                    }
                    if tx.send(Ok(convert(WatchItem::Heartbeat(cursor)))).await.is_err() {
                        return;
                    }
                }
                _ = revoked(&mut credential) => {
                    end_with_unauthenticated(&tx).await;
                    return;
                }
                _ = shutdown.cancelled() => {
                    end_with_unavailable(&tx).await;
                    return;
                }
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Ends a stream with `UNAVAILABLE` so clients know to resume.
async fn end_with_unavailable<T>(tx: &mpsc::Sender<Result<T, Status>>) {
    let status = Status::unavailable("the server is shutting down; resume from your last sequence");
    end_with(tx, status).await;
}

/// Ends a stream whose bearer token was revoked.
async fn end_with_unauthenticated<T>(tx: &mpsc::Sender<Result<T, Status>>) {
    tracing::info!("watch stream ended: its bearer token left the token file");
    let status = Status::unauthenticated(
        "the bearer token of this stream was removed from the server's token file; \
         resume from your last sequence with a valid token",
    );
    end_with(tx, status).await;
}

/// Sends the last status. A subscriber that is not reading gets a moment
/// for room in its channel, then is dropped.
async fn end_with<T>(tx: &mpsc::Sender<Result<T, Status>>, status: Status) {
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.send(Err(status))).await;
}

/// Whether the subscriber's token (if it has one) is still in force.
fn still_valid(credential: &Option<Credential>) -> bool {
    credential.as_ref().is_none_or(Credential::is_valid)
}

/// Completes when the subscriber's token is revoked; never without one.
async fn revoked(credential: &mut Option<Credential>) {
    match credential {
        Some(c) => c.revoked().await,
        None => std::future::pending().await,
    }
}
