//! Reading the event log: pages of events, its newest sequence, and where a
//! watch starts. Watching itself is [`crate::watch`]'s.

use crate::domain::{Event, EventFilter};
use crate::error::{Error, Result};
use crate::store::{Db, Store};

use super::page;

/// Up to `limit` events matching `filter` with sequences in `(after, upto]`
/// (`upto = None`: to the end of the log), in order, and whether more follow.
pub async fn list_events(
    store: &Store,
    filter: &EventFilter,
    after: u64,
    upto: Option<u64>,
    limit: usize,
) -> Result<(Vec<Event>, bool)> {
    read_db!(store, |db| async {
        Ok(page(
            db.events(filter, after, upto, limit + 1).await?,
            limit,
        ))
    })
}

/// The sequence of the newest committed event this server knows of: what
/// is read now shows everything up to it.
pub fn latest_sequence(store: &Store) -> u64 {
    store.latest_sequence()
}

/// Where a watch starts: after `after`, or after the newest event when the
/// caller names none. A sequence beyond the end of the log is refused,
/// naming `field`.
pub fn watch_start(store: &Store, field: &str, after: Option<u64>) -> Result<u64> {
    let latest = latest_sequence(store);
    match after {
        None => Ok(latest),
        Some(n) if n > latest => Err(Error::invalid(
            field,
            format!("{n} is beyond the end of the log (the latest sequence is {latest})"),
        )),
        Some(n) => Ok(n),
    }
}
