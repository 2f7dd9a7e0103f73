//! The subscription every worker uses: WatchTransitions with a durable
//! cursor, so a worker that is stopped, killed or disconnected resumes where
//! it left off, and handles each event at least once.
//!
//! - The cursor is a file holding the last handled sequence, replaced
//!   atomically (written aside, synced, renamed, directory synced) after each
//!   handled event; heartbeats advance it too, so a filtered worker does not
//!   replay a long stretch of events it never wanted.
//! - Reconnection uses [`ResumingWatch`]: capped exponential backoff with
//!   jitter, resuming after the cursor.
//! - Each event comes with an idempotency key derived from its sequence: a
//!   handler passes it as the `request_id` of what it writes to the
//!   registry, so a redelivered event (a crash between the effect and the
//!   cursor write) never doubles an effect.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use tonic::Status;

use crate::watch::{ResumingWatch, WatchItem};
use crate::{RegistryClient, pb};

/// A file that remembers the last handled sequence.
#[derive(Debug, Clone)]
pub struct CursorFile {
    path: PathBuf,
}

impl CursorFile {
    /// The cursor kept at `path` (created on first store).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        CursorFile { path: path.into() }
    }

    /// Where it lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored sequence; `None` when the file does not exist yet.
    pub fn load(&self) -> Result<Option<u64>, String> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse::<u64>().map(Some).map_err(|_| {
                format!(
                    "cursor file {} does not hold a sequence number: {:?}",
                    self.path.display(),
                    text.trim()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!(
                "cannot read cursor file {}: {e}",
                self.path.display()
            )),
        }
    }

    /// Replaces the stored sequence atomically and durably.
    pub fn store(&self, sequence: u64) -> Result<(), String> {
        let fail = |what: &str, e: std::io::Error| {
            format!("cannot {what} cursor file {}: {e}", self.path.display())
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "cursor".into());
        let aside = dir.join(format!(".{name}.tmp"));
        let mut f = std::fs::File::create(&aside).map_err(|e| fail("write", e))?;
        writeln!(f, "{sequence}").map_err(|e| fail("write", e))?;
        f.sync_all().map_err(|e| fail("sync", e))?;
        std::fs::rename(&aside, &self.path).map_err(|e| fail("replace", e))?;
        // The rename itself must survive a power loss too.
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }
}

/// The idempotency key of handling event `sequence` in worker `worker`; the
/// same event always gets the same key.
pub fn idempotency_key(worker: &str, sequence: u64) -> String {
    format!("{worker}:event-{sequence}")
}

/// One event to handle.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: pb::RegistryEvent,
    /// Which delivery of the event this is (1 from a cursor file; a
    /// consumer counts redeliveries).
    pub attempt: u32,
    /// For a consumer's delivery, the fence its writes carry.
    pub fence: Option<pb::ConsumerFence>,
}

impl Delivery {
    /// An event read with a cursor file.
    pub fn of(event: pb::RegistryEvent) -> Delivery {
        Delivery {
            event,
            attempt: 1,
            fence: None,
        }
    }

    /// The idempotency key of this delivery for `worker`: the same for
    /// every delivery of the event from a cursor file; a consumer's
    /// redelivery (after a rejection) gets its own, since what it reports
    /// may differ.
    pub fn key(&self, worker: &str) -> String {
        match self.attempt {
            0 | 1 => idempotency_key(worker, self.event.sequence),
            n => format!("{}-{n}", idempotency_key(worker, self.event.sequence)),
        }
    }
}

/// A durable, resuming subscription.
pub struct Subscription {
    watch: ResumingWatch,
    cursor: CursorFile,
    /// The sequence last written to the cursor file.
    saved: Option<u64>,
}

/// Where a subscription without a cursor file starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only events committed from now on.
    End,
    /// After this sequence (0 = the whole log).
    After(u64),
}

impl Subscription {
    /// Opens a subscription with `filter`'s models, types and stages. It
    /// resumes after the sequence in `cursor` if the file exists, else
    /// starts at `start`.
    pub fn open(
        client: RegistryClient,
        mut filter: pb::WatchTransitionsRequest,
        cursor: CursorFile,
        start: Start,
    ) -> Result<Subscription, String> {
        let saved = cursor.load()?;
        filter.after_sequence = match (saved, start) {
            (Some(s), _) => Some(s),
            (None, Start::End) => None,
            (None, Start::After(s)) => Some(s),
        };
        Ok(Subscription {
            watch: ResumingWatch::new(client, filter),
            cursor,
            saved,
        })
    }

    /// The next event to handle. Heartbeats are consumed here and advance
    /// the cursor file; transient failures are retried; a permanent one
    /// (bad filter, no permission) is returned.
    pub async fn next(&mut self) -> Result<Delivery, SubscriptionError> {
        loop {
            match self.watch.next().await.map_err(SubscriptionError::Status)? {
                WatchItem::Event(event) => return Ok(Delivery::of(event)),
                WatchItem::Heartbeat(sequence) => {
                    if self.saved.is_none_or(|s| sequence > s) {
                        self.cursor
                            .store(sequence)
                            .map_err(SubscriptionError::Cursor)?;
                        self.saved = Some(sequence);
                    }
                }
            }
        }
    }

    /// Records that `delivery` was handled: the cursor moves past it.
    pub fn done(&mut self, delivery: &Delivery) -> Result<(), SubscriptionError> {
        let sequence = delivery.event.sequence;
        if self.saved.is_none_or(|s| sequence > s) {
            self.cursor
                .store(sequence)
                .map_err(SubscriptionError::Cursor)?;
            self.saved = Some(sequence);
        }
        Ok(())
    }

    /// The last sequence written to the cursor file.
    pub fn saved(&self) -> Option<u64> {
        self.saved
    }
}

/// Why a subscription stopped.
#[derive(Debug)]
pub enum SubscriptionError {
    /// The server refused the subscription for good.
    Status(Status),
    /// The cursor file could not be written.
    Cursor(String),
}

impl std::fmt::Display for SubscriptionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SubscriptionError::Status(s) => write!(f, "{}", crate::errors::describe(s)),
            SubscriptionError::Cursor(m) => f.write_str(m),
        }
    }
}

/// A flag that turns true on SIGINT or SIGTERM, so a worker finishes the
/// event in hand and stops.
pub fn stop_on_signals() -> tokio::sync::watch::Receiver<bool> {
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(true);
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cursor_file_round_trips_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let c = CursorFile::new(dir.path().join("worker.cursor"));
        assert_eq!(c.load().unwrap(), None);
        c.store(41).unwrap();
        c.store(42).unwrap();
        assert_eq!(c.load().unwrap(), Some(42));
        std::fs::write(c.path(), "forty-two").unwrap();
        assert!(c.load().unwrap_err().contains("does not hold a sequence"));
        assert_eq!(idempotency_key("deploy", 7), "deploy:event-7");
    }
}
