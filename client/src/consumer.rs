//! A member of a durable consumer: the worker side of `Consume`.
//!
//! [`Membership::open`] joins the consumer and keeps the membership alive in
//! a background task: heartbeats every third of the lease, and, when the
//! stream breaks (server restart, another replica), a reconnect under the
//! same member id with capped backoff, so the member keeps its models. The
//! server re-sends unacknowledged deliveries on a new stream; one this
//! member already handed out and has not settled is not handed out twice.
//!
//! Each [`Delivery`] carries its epoch: [`Membership::ack`] and
//! [`Membership::reject`] send it, and [`Delivery::fence`] puts it on a
//! `ReportDeployment`, so a member whose models moved on (it was paused past
//! its lease) is refused with `FAILED_PRECONDITION` instead of overwriting
//! its successor's work.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio_stream::StreamExt;
use tonic::{Code, Status};

use crate::watch::is_transient;
use crate::webhook::backoff;
use crate::{RegistryClient, pb};

/// One event handed to this member.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The event.
    pub event: pb::RegistryEvent,
    /// The assignment's epoch.
    pub epoch: u64,
    /// 1 for the first delivery of the event, 2 for the next…
    pub attempt: i32,
    /// The consumer's max_deliveries.
    pub max_deliveries: i32,
    consumer: String,
    member: String,
}

impl Delivery {
    /// The fence a write made for this delivery carries.
    pub fn fence(&self) -> pb::ConsumerFence {
        pb::ConsumerFence {
            consumer: self.consumer.clone(),
            member: self.member.clone(),
            sequence: self.event.sequence,
            epoch: self.epoch,
        }
    }

    /// Whether this is the last delivery before the event is parked.
    pub fn is_last_attempt(&self) -> bool {
        self.attempt >= self.max_deliveries
    }
}

/// A live membership.
pub struct Membership {
    client: RegistryClient,
    consumer: String,
    member: String,
    deliveries: mpsc::Receiver<Result<Delivery, Status>>,
    in_hand: Arc<Mutex<HashSet<(String, u64)>>>,
    leave: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The default member id: host name and process id.
pub fn default_member_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "host".into());
    let host: String = host
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .take(100)
        .collect();
    format!("{host}-{}", std::process::id())
}

impl Membership {
    /// Joins `consumer` as `member` with `spec` (which creates the consumer
    /// on its first join) and starts keeping the membership alive. Errors
    /// of the join (a bad spec, another member's id) come from
    /// [`Membership::next`].
    pub fn open(
        client: RegistryClient,
        consumer: &str,
        member: &str,
        spec: pb::ConsumerSpec,
    ) -> Membership {
        let (tx, rx) = mpsc::channel(256);
        let (leave_tx, leave_rx) = oneshot::channel();
        let in_hand = Arc::new(Mutex::new(HashSet::new()));
        let keeper = Keeper {
            client: client.clone(),
            join: pb::ConsumeJoin {
                consumer: consumer.to_owned(),
                member: member.to_owned(),
                spec: Some(spec),
            },
            tx,
            in_hand: in_hand.clone(),
        };
        let task = tokio::spawn(keeper.run(leave_rx));
        Membership {
            client,
            consumer: consumer.to_owned(),
            member: member.to_owned(),
            deliveries: rx,
            in_hand,
            leave: Some(leave_tx),
            task: Some(task),
        }
    }

    /// The member id.
    pub fn member(&self) -> &str {
        &self.member
    }

    /// The next delivery; an error is permanent (the join was refused, the
    /// consumer was deleted).
    pub async fn next(&mut self) -> Result<Delivery, Status> {
        match self.deliveries.recv().await {
            Some(d) => d,
            None => Err(Status::cancelled("the membership has ended")),
        }
    }

    fn settled(&self, d: &Delivery) {
        self.in_hand
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&(d.event.model.clone(), d.event.sequence));
    }

    /// Acknowledges `d`, retrying while the server is unreachable.
    /// `FAILED_PRECONDITION` means the model moved on to another member.
    pub async fn ack(&self, d: &Delivery) -> Result<(), Status> {
        let req = pb::AckEventRequest {
            consumer: self.consumer.clone(),
            member: self.member.clone(),
            model: d.event.model.clone(),
            sequence: d.event.sequence,
            epoch: d.epoch,
        };
        let out = retrying(|| {
            let mut c = self.client.clone();
            let req = req.clone();
            async move { c.ack_event(req).await.map(|_| ()) }
        })
        .await;
        self.settled(d);
        out
    }

    /// Rejects `d` with `reason`: redelivered after the backoff, or parked.
    pub async fn reject(
        &self,
        d: &Delivery,
        reason: &str,
    ) -> Result<pb::RejectEventResponse, Status> {
        let req = pb::RejectEventRequest {
            consumer: self.consumer.clone(),
            member: self.member.clone(),
            model: d.event.model.clone(),
            sequence: d.event.sequence,
            epoch: d.epoch,
            reason: reason.to_owned(),
        };
        let out = retrying(|| {
            let mut c = self.client.clone();
            let req = req.clone();
            async move { c.reject_event(req).await.map(|r| r.into_inner()) }
        })
        .await;
        self.settled(d);
        out
    }

    /// Forgets a delivery without settling it (its model moved on).
    pub fn drop_delivery(&self, d: &Delivery) {
        self.settled(d);
    }

    /// Leaves the consumer: its models go to the other members at once.
    pub async fn leave(mut self) {
        if let Some(l) = self.leave.take() {
            let _ = l.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), t).await;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// Retries `call` while its failures are transient.
async fn retrying<T, F, Fut>(mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, Status>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(s) if is_transient(&s) && attempt < 60 => {
                attempt += 1;
                tokio::time::sleep(backoff(attempt, Duration::from_secs(5), None)).await;
            }
            other => return other,
        }
    }
}

/// The background task of a membership.
struct Keeper {
    client: RegistryClient,
    join: pb::ConsumeJoin,
    tx: mpsc::Sender<Result<Delivery, Status>>,
    in_hand: Arc<Mutex<HashSet<(String, u64)>>>,
}

/// How one stream ended.
enum Ended {
    /// The member left.
    Left,
    /// The stream broke; connect again.
    Broken(Status),
    /// A permanent refusal.
    Refused(Status),
    /// Nobody reads deliveries any more.
    Gone,
}

impl Keeper {
    async fn run(self, mut leave: oneshot::Receiver<()>) {
        let mut attempt = 0u32;
        loop {
            match self.stream_once(&mut leave).await {
                Ended::Left | Ended::Gone => return,
                Ended::Refused(s) => {
                    let _ = self.tx.send(Err(s)).await;
                    return;
                }
                Ended::Broken(s) => {
                    attempt += 1;
                    let _ = (s, attempt);
                    let wait = backoff(attempt.min(6), Duration::from_secs(5), None);
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = &mut leave => return,
                    }
                }
            }
        }
    }

    async fn stream_once(&self, leave: &mut oneshot::Receiver<()>) -> Ended {
        let (out_tx, out_rx) = mpsc::channel::<pb::ConsumeRequest>(8);
        let join = pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Join(self.join.clone())),
        };
        if out_tx.send(join).await.is_err() {
            return Ended::Gone;
        }
        let mut client = self.client.clone();
        let outbound = tokio_stream::wrappers::ReceiverStream::new(out_rx);
        let mut inbound = match client.consume(outbound).await {
            Ok(r) => r.into_inner(),
            Err(s) if is_transient(&s) => return Ended::Broken(s),
            Err(s) => return Ended::Refused(s),
        };
        let lease = self
            .join
            .spec
            .as_ref()
            .and_then(|s| s.lease)
            .map(|d| {
                Duration::from_millis(
                    (d.seconds * 1000 + i64::from(d.nanos) / 1_000_000).max(1000) as u64,
                )
            })
            .unwrap_or(Duration::from_secs(10));
        let mut beat = tokio::time::interval(lease / 3);
        beat.tick().await;
        loop {
            tokio::select! {
                msg = inbound.next() => match msg {
                    Some(Ok(pb::ConsumeResponse { kind: Some(kind) })) => match kind {
                        pb::consume_response::Kind::Delivery(d) => {
                            let Some(event) = d.event else { continue };
                            let key = (event.model.clone(), event.sequence);
                            let fresh = self
                                .in_hand
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .insert(key);
                            if !fresh {
                                continue;
                            }
                            let delivery = Delivery {
                                event,
                                epoch: d.epoch,
                                attempt: d.delivery_attempt,
                                max_deliveries: d.max_deliveries,
                                consumer: self.join.consumer.clone(),
                                member: self.join.member.clone(),
                            };
                            if self.tx.send(Ok(delivery)).await.is_err() {
                                return Ended::Gone;
                            }
                        }
                        pb::consume_response::Kind::Assignment(a) => {
                            if let Some(l) = a.lease {
                                let ms = (l.seconds * 1000 + i64::from(l.nanos) / 1_000_000).max(1000);
                                let period = Duration::from_millis(ms as u64) / 3;
                                if period != beat.period() {
                                    beat = tokio::time::interval(period);
                                    beat.tick().await;
                                }
                            }
                        }
                    },
                    Some(Ok(_)) => {}
                    Some(Err(s)) if is_transient(&s) || s.code() == Code::Unknown => return Ended::Broken(s),
                    Some(Err(s)) => return Ended::Refused(s),
                    None => return Ended::Broken(Status::unavailable("the stream ended")),
                },
                _ = beat.tick() => {
                    let hb = pb::ConsumeRequest {
                        kind: Some(pb::consume_request::Kind::Heartbeat(pb::ConsumeHeartbeat {})),
                    };
                    if out_tx.send(hb).await.is_err() {
                        return Ended::Broken(Status::unavailable("the stream closed"));
                    }
                }
                _ = &mut *leave => {
                    let bye = pb::ConsumeRequest {
                        kind: Some(pb::consume_request::Kind::Leave(pb::ConsumeLeave {})),
                    };
                    let _ = out_tx.send(bye).await;
                    // The server ends the stream once the leave is applied.
                    let _ = tokio::time::timeout(Duration::from_secs(5), async {
                        while let Some(Ok(_)) = inbound.next().await {}
                    })
                    .await;
                    return Ended::Left;
                }
            }
        }
    }
}
