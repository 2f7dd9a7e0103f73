//! The consumers' half of the event log's tail: one task per member stream
//! of a durable consumer (`Consume`). Each round it keeps the consumer's
//! assignment current and claims the next events of the member's models
//! ([`crate::app::consumers`] decides both), sends them, and waits for a new
//! commit, an acknowledgement on this server ([`Hub::poke`]), a heartbeat, a
//! redelivery coming due, or a short tick (what other replicas changed, and
//! leases running out, are seen on that tick).
//!
//! It holds no state of its own beyond the stream: everything a member has
//! is in the database, so a member that reconnects, here or on another
//! replica, carries on where it was.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;

use crate::app::{self, Claimed};
use crate::domain::{Actor, ModelSlot};
use crate::error::Error;
use crate::store::Store;

/// Messages buffered per member stream before its task waits.
const CHANNEL: usize = 64;

/// What a member sends after its join.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberSays {
    /// Renew my lease.
    Heartbeat,
    /// I stop: give my models to the others.
    Leave,
}

/// What a member is sent.
#[derive(Debug, Clone)]
pub enum ToMember {
    /// An event to handle.
    Delivery(Claimed),
    /// Its models and lease.
    Assignment {
        /// The models it holds, with their epochs.
        held: Vec<ModelSlot>,
        /// The consumer's lease, ms.
        lease_ms: i64,
        /// When its lease ends, µs.
        lease_expire: i64,
    },
}

/// Wakes the member tasks of a consumer on this server when something they
/// wait for changed here (an acknowledgement, a rejection, a retry, a member
/// leaving), so the next event goes out at once rather than on the tick.
#[derive(Debug, Default)]
pub struct Hub {
    pokes: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl Hub {
    /// Wakes every member task of `consumer` (members changed, a dead
    /// letter was retried).
    pub fn poke(&self, consumer: &str) {
        self.wake(consumer);
    }

    /// Wakes the task of one member (its model's event was settled: the
    /// next one is its to claim), not the others.
    pub fn poke_member(&self, consumer: &str, member: &str) {
        self.wake(&format!("{consumer}\u{0}{member}"));
    }

    fn wake(&self, key: &str) {
        let pokes = self.pokes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = pokes.get(key) {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    fn subscribe(&self, key: &str) -> watch::Receiver<u64> {
        let mut pokes = self.pokes.lock().unwrap_or_else(|e| e.into_inner());
        pokes
            .entry(key.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }
}

/// One member stream, joined already.
pub struct Member {
    /// The consumer.
    pub consumer: String,
    /// The member id.
    pub member: String,
    /// The session the join gave.
    pub session: String,
    /// Who it is.
    pub identity: Actor,
    /// The consumer's lease, ms.
    pub lease_ms: i64,
}

/// Starts a member's task; its stream ends with the member (a leave, the
/// client gone, the consumer deleted, a newer stream of the same member) or
/// with `UNAVAILABLE` at shutdown.
pub fn spawn<S>(
    store: Store,
    hub: Arc<Hub>,
    member: Member,
    inbound: S,
    shutdown: CancellationToken,
) -> ReceiverStream<Result<ToMember, Error>>
where
    S: Stream<Item = Result<MemberSays, Error>> + Send + Unpin + 'static,
{
    let (tx, rx) = mpsc::channel(CHANNEL);
    tokio::spawn(async move {
        if let Err(e) = run(&store, &hub, &member, inbound, &shutdown, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
        hub.poke(&member.consumer);
    });
    ReceiverStream::new(rx)
}

/// Whether an error ends the member's stream (rather than being retried on
/// the next round).
fn ends_stream(e: &Error) -> bool {
    !matches!(e, Error::Unavailable(_) | Error::Internal(_))
}

async fn run<S>(
    store: &Store,
    hub: &Hub,
    m: &Member,
    mut inbound: S,
    shutdown: &CancellationToken,
    tx: &mpsc::Sender<Result<ToMember, Error>>,
) -> Result<(), Error>
where
    S: Stream<Item = Result<MemberSays, Error>> + Send + Unpin + 'static,
{
    let mut latest = store.subscribe();
    let mut poked = hub.subscribe(&m.consumer);
    let mut mine = hub.subscribe(&format!("{}\u{0}{}", m.consumer, m.member));
    let mut seen = app::Seen::default();
    let tick = Duration::from_millis((m.lease_ms / 4).clamp(100, 1000) as u64);
    let mut resend = true;
    let mut told: Option<Vec<(String, u64)>> = None;
    let mut lease_expire = 0;
    loop {
        if let Err(e) = app::maintain_consumer(store, &m.consumer, &mut seen).await {
            if ends_stream(&e) {
                return Err(e);
            }
            tracing::warn!(consumer = %m.consumer, error = %e, "cannot rebalance; retrying");
        }
        let mut wait = tick;
        match app::claim_deliveries(store, &m.consumer, &m.member, &m.session, resend).await {
            Ok(claim) => {
                resend = false;
                let held: Vec<(String, u64)> = claim
                    .held
                    .iter()
                    .map(|s| (s.model.clone(), s.epoch))
                    .collect();
                if told.as_ref() != Some(&held) || claim.lease_expire != lease_expire {
                    lease_expire = claim.lease_expire;
                    told = Some(held);
                    let assignment = ToMember::Assignment {
                        held: claim.held,
                        lease_ms: claim.lease_ms,
                        lease_expire,
                    };
                    if tx.send(Ok(assignment)).await.is_err() {
                        return Ok(());
                    }
                }
                for d in claim.deliveries {
                    if tx.send(Ok(ToMember::Delivery(d))).await.is_err() {
                        return Ok(());
                    }
                }
                if let Some(due) = claim.next_due {
                    let now = store.clock().now_micros();
                    wait = wait.min(Duration::from_micros((due - now).max(0) as u64));
                }
            }
            Err(e) if ends_stream(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(consumer = %m.consumer, error = %e, "cannot claim deliveries; retrying")
            }
        }
        tokio::select! {
            said = inbound.next() => match said {
                Some(Ok(MemberSays::Heartbeat)) => {
                    match app::renew_member(store, &m.consumer, &m.member, &m.session, &m.identity).await {
                        // The next round tells the member its new expiry.
                        Ok(_) => {}
                        Err(e) if ends_stream(&e) => return Err(e),
                        Err(e) => tracing::warn!(consumer = %m.consumer, error = %e, "cannot renew a lease"),
                    }
                }
                Some(Ok(MemberSays::Leave)) => {
                    app::leave_consumer(store, &m.consumer, &m.member, &m.session).await?;
                    return Ok(());
                }
                Some(Err(e)) => return Err(e),
                // The client is gone without a leave: its lease runs out.
                None => return Ok(()),
            },
            _ = latest.changed() => {}
            _ = poked.changed() => {}
            _ = mine.changed() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return Ok(()),
            _ = shutdown.cancelled() => return Err(Error::ShuttingDown),
        }
    }
}
