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

use std::convert::Infallible;

use crate::error::Error;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;

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
) -> ReceiverStream<Result<T, Error>>
where
    T: Send + 'static,
    F: Fn(WatchItem) -> T + Send + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL);
    let open = OpenStream::new();
    tokio::spawn(async move {
        let _open = open;
        let position = tail.watchers.register(sub.after);
        let mut subscriber = Subscriber {
            cursor: sub.after,
            credential: sub.credential,
            filter: sub.filter,
            store,
            tail,
            shutdown,
            convert,
            tx,
            position,
        };
        let Err(stop) = subscriber.run(sub.heartbeat).await;
        subscriber.end(stop).await;
    });
    ReceiverStream::new(rx)
}

/// Why a subscriber stopped.
enum Stop {
    /// The subscriber hung up: nothing more to send.
    Gone,
    /// The stream ends with this error (shutdown, revocation, a failed read).
    With(Error),
}

/// One subscriber's task state: where it stands and where it sends.
struct Subscriber<T, F> {
    /// The last sequence sent (or skipped as not matching).
    cursor: u64,
    /// The bearer token the stream was opened with, if any.
    credential: Option<Credential>,
    /// Which events it wants.
    filter: EventFilter,
    /// Where events older than the tail are read.
    store: Store,
    /// The shared tail of recent events.
    tail: Arc<Tail>,
    /// Fired when the server stops.
    shutdown: CancellationToken,
    /// Item → wire message.
    convert: F,
    /// The subscriber's channel.
    tx: mpsc::Sender<Result<T, Error>>,
    /// Its cursor as `/metrics` sees it.
    position: WatcherCursor,
}

impl<T, F> Subscriber<T, F>
where
    T: Send + 'static,
    F: Fn(WatchItem) -> T + Send + 'static,
{
    /// Catches up, then follows the log with a heartbeat every `heartbeat`,
    /// until the subscriber leaves or the stream must end.
    async fn run(&mut self, heartbeat: Duration) -> Result<Infallible, Stop> {
        let mut tail_end = self.tail.subscribe();
        // The first catch-up reaches at least what was committed when the
        // stream opened, even if the tail has not read it yet.
        let floor = self.store.latest_sequence();
        let mut ticker = tokio::time::interval(heartbeat);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.reset(); // the first heartbeat follows the first catch-up instead
        let mut caught_up_once = false;
        loop {
            if self.shutdown.is_cancelled() {
                return Err(Stop::With(Error::ShuttingDown));
            }
            self.check_credential()?;
            // Everything up to `end` is committed: the tail holds only committed events.
            let end = (*tail_end.borrow_and_update()).max(floor);
            self.catch_up(end).await?;
            if !caught_up_once {
                // Tells the subscriber where it stands, even on a quiet log.
                caught_up_once = true;
                self.heartbeat().await?;
            }
            tokio::select! {
                changed = tail_end.changed() => {
                    if changed.is_err() {
                        return Err(Stop::With(Error::ShuttingDown));
                    }
                }
                _ = ticker.tick() => self.heartbeat().await?,
                _ = revoked(&mut self.credential) => return Err(Stop::With(unauthenticated())),
                _ = self.shutdown.cancelled() => return Err(Stop::With(Error::ShuttingDown)),
                _ = self.tx.closed() => return Err(Stop::Gone),
            }
        }
    }

    /// Sends every matching event after the cursor up to `end`, from the
    /// tail where it still holds them, else from the store in pages.
    async fn catch_up(&mut self, end: u64) -> Result<(), Stop> {
        while self.cursor < end {
            let (page, next) = match self.tail.page_after(self.cursor, &self.filter, PAGE) {
                FromTail::Page(page, scanned) => (page, scanned),
                FromTail::Elsewhere => {
                    let page = (self
                        .store
                        .events(&self.filter, self.cursor, Some(end), PAGE))
                    .await
                    .map_err(Stop::With)?;
                    // A short page means nothing else matches up to `end`.
                    let next = if page.len() < PAGE {
                        end
                    } else {
                        page.last().map(|e| e.sequence).unwrap_or(end)
                    };
                    (page.into_iter().map(Arc::new).collect(), next)
                }
            };
            // Checked after reading: an event committed after the reload
            // that removed the token is in this page only if the check fails.
            self.check_credential()?;
            for event in page {
                tokio::select! {
                    sent = self.tx.send(Ok((self.convert)(WatchItem::Event(event)))) => {
                        if sent.is_err() { return Err(Stop::Gone); }
                    }
                    _ = self.shutdown.cancelled() => return Err(Stop::With(Error::ShuttingDown)),
                }
            }
            self.cursor = next;
            self.position.set(self.cursor);
        }
        Ok(())
    }

    /// A heartbeat at the cursor, if the token still holds.
    async fn heartbeat(&mut self) -> Result<(), Stop> {
        self.check_credential()?;
        let item = (self.convert)(WatchItem::Heartbeat(self.cursor));
        self.tx.send(Ok(item)).await.map_err(|_| Stop::Gone)
    }

    /// Whether the subscriber's token (if it has one) is still in force.
    fn check_credential(&self) -> Result<(), Stop> {
        if self.credential.as_ref().is_none_or(Credential::is_valid) {
            Ok(())
        } else {
            Err(Stop::With(unauthenticated()))
        }
    }

    /// Sends the last error. A subscriber that is not reading gets a moment
    /// for room in its channel, then is dropped.
    async fn end(self, stop: Stop) {
        let Stop::With(error) = stop else { return };
        if matches!(error, Error::Unauthenticated(_)) {
            tracing::info!("watch stream ended: its bearer token left the token file");
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.tx.send(Err(error))).await;
    }
}

/// The end of a stream whose bearer token was revoked.
fn unauthenticated() -> Error {
    Error::Unauthenticated(
        "the bearer token of this stream was removed from the server's token file; \
         resume from your last sequence with a valid token"
            .to_owned(),
    )
}

/// Completes when the subscriber's token is revoked; never without one.
async fn revoked(credential: &mut Option<Credential>) {
    match credential {
        Some(c) => c.revoked().await,
        None => std::future::pending().await,
    }
}
