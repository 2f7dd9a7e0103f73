//! A WatchTransitions stream that survives server restarts and network
//! failures: it reconnects with capped exponential backoff and jitter and
//! resumes after the last sequence it saw (events and heartbeats both move
//! the cursor), so the caller sees every matching event exactly once.

use std::time::Duration;

use tonic::{Code, Status, Streaming};

use crate::RegistryClient;
use crate::pb;

/// One item of the stream.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // events dominate; boxing would only add an allocation
pub enum WatchItem {
    /// A matching event.
    Event(pb::RegistryEvent),
    /// Every matching event up to this sequence was delivered.
    Heartbeat(u64),
}

/// A resuming subscription.
pub struct ResumingWatch {
    /// The client used to (re)open the stream.
    client: RegistryClient,
    /// The filters; `after_sequence` is replaced by the cursor on reconnect.
    request: pb::WatchTransitionsRequest,
    /// The last sequence seen, if any.
    cursor: Option<u64>,
    /// The open stream, if any.
    stream: Option<Streaming<pb::WatchTransitionsResponse>>,
    /// Failed attempts in a row, for the backoff.
    failures: u32,
    /// Longest wait between attempts.
    max_backoff: Duration,
}

/// Whether a stream failure is worth a retry.
pub fn is_transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Unknown
            | Code::Cancelled
            | Code::DeadlineExceeded
            | Code::Aborted
            | Code::Internal
    )
}

impl ResumingWatch {
    /// A subscription with `request`'s filters, starting at its `after_sequence`.
    pub fn new(client: RegistryClient, request: pb::WatchTransitionsRequest) -> Self {
        ResumingWatch {
            client,
            cursor: request.after_sequence,
            request,
            stream: None,
            failures: 0,
            max_backoff: Duration::from_secs(10),
        }
    }

    /// Caps the wait between reconnection attempts.
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// The last sequence seen (the value to resume from).
    pub fn cursor(&self) -> Option<u64> {
        self.cursor
    }

    /// The next event or heartbeat. Transient failures are retried forever;
    /// a permanent one (bad filter, no permission) is returned.
    pub async fn next(&mut self) -> Result<WatchItem, Status> {
        loop {
            if self.stream.is_none() {
                let mut req = self.request.clone();
                req.after_sequence = self.cursor;
                match self.client.watch_transitions(req).await {
                    Ok(resp) => self.stream = Some(resp.into_inner()),
                    Err(status) if is_transient(&status) => {
                        self.backoff().await;
                        continue;
                    }
                    Err(status) => return Err(status),
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match stream.message().await {
                Ok(Some(msg)) => {
                    self.failures = 0;
                    match msg.kind {
                        Some(pb::watch_transitions_response::Kind::Event(e)) => {
                            if self.cursor.is_some_and(|c| e.sequence <= c) {
                                continue; // never hand out a duplicate
                            }
                            self.cursor = Some(e.sequence);
                            return Ok(WatchItem::Event(e));
                        }
                        Some(pb::watch_transitions_response::Kind::Heartbeat(h)) => {
                            if self.cursor.is_none_or(|c| h.sequence > c) {
                                self.cursor = Some(h.sequence);
                            }
                            return Ok(WatchItem::Heartbeat(h.sequence));
                        }
                        None => continue,
                    }
                }
                Ok(None) => {
                    // The server closed the stream without an error: reopen.
                    self.stream = None;
                    self.backoff().await;
                }
                Err(status) if is_transient(&status) => {
                    self.stream = None;
                    self.backoff().await;
                }
                Err(status) => {
                    self.stream = None;
                    return Err(status);
                }
            }
        }
    }

    async fn backoff(&mut self) {
        self.failures = self.failures.saturating_add(1);
        let base = Duration::from_millis(100) * 2u32.saturating_pow(self.failures.min(10));
        let capped = base.min(self.max_backoff);
        // Jitter from the clock: spreads reconnecting watchers without a RNG crate.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let jitter = capped.mul_f64(f64::from(nanos % 1000) / 2000.0);
        tokio::time::sleep(capped / 2 + jitter).await;
    }
}
