//! The only source of "now" in the server. Every timestamp the registry
//! writes (events, versions, requests, live readings) and every time-based
//! rule (archival after N days, live-metric windows, the limit on future
//! observations) reads the store's [`Clock`]. Tests replace it with a
//! [`ManualClock`] to run "40 days later" in milliseconds, and the service
//! and the policy engine then agree on what time it is.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// The system time in µs since the Unix epoch: what [`Clock::system`] reads.
/// Code that writes to the registry asks its store's clock instead.
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Where the server reads the time (µs since the Unix epoch).
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> i64 + Send + Sync>);

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock(Arc::new(now_micros))
    }

    /// A clock reading `now` each time.
    pub fn from_fn(now: impl Fn() -> i64 + Send + Sync + 'static) -> Clock {
        Clock(Arc::new(now))
    }

    /// The current time, µs since the Unix epoch.
    pub fn now_micros(&self) -> i64 {
        (self.0)()
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock(now = {})", self.now_micros())
    }
}

/// A clock that stands still until told to move: for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    /// A clock standing at `micros`.
    pub fn at(micros: i64) -> ManualClock {
        ManualClock(Arc::new(AtomicI64::new(micros)))
    }

    /// Moves it to `micros`.
    pub fn set(&self, micros: i64) {
        self.0.store(micros, Ordering::SeqCst);
    }

    /// Moves it on by `by`.
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as i64, Ordering::SeqCst);
    }

    /// The time it shows.
    pub fn now_micros(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }

    /// A [`Clock`] reading this one, to put in the settings.
    pub fn clock(&self) -> Clock {
        let inner = self.0.clone();
        Clock::from_fn(move || inner.load(Ordering::SeqCst))
    }
}
