//! The `consume` scenario: throughput of one durable consumer and the time a
//! survivor takes over a killed member's models.
//!
//! It pre-fills the log with `--consume-events` registrations spread over
//! `--consume-models` models, then reads exactly those events (a new
//! consumer per measurement, starting after the end of the log as it was
//! before the pre-fill, filtered on `VERSION_REGISTERED`) with 1, 2 and 4
//! members, each acknowledging every delivery as soon as it arrives, until
//! all are acknowledged. The takeover measurement then drops one of two
//! members' streams without a leave, as a killed worker would, and times
//! how long its models wait for the survivor.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use modelreg_client::{RegistryClient, pb};
use pb::consume_request::Kind as Says;
use pb::consume_response::Kind as Told;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_stream::wrappers::ReceiverStream;

use super::{Load, Report, create_models, unique, version_req};

/// How long one measurement may take before it is reported as incomplete.
const DEADLINE: Duration = Duration::from_secs(300);

/// The pre-filled events one run of the scenario reads.
struct Prefill {
    /// The end of the log before the pre-fill: the consumers start after it.
    after: u64,
    /// How many matching events were written.
    events: u64,
}

/// The end of the log, from the heartbeat a watcher is sent once caught up.
async fn log_end(c: &mut RegistryClient) -> Result<u64, tonic::Status> {
    let mut s = c
        .watch_transitions(pb::WatchTransitionsRequest::default())
        .await?
        .into_inner();
    while let Some(m) = s.message().await? {
        if let Some(pb::watch_transitions_response::Kind::Heartbeat(h)) = m.kind {
            return Ok(h.sequence);
        }
    }
    Ok(0)
}

/// Creates the models (their MODEL_CREATED events fall outside the filter),
/// then registers `--consume-events` versions round-robin over them.
async fn prefill(load: &Load) -> Result<Prefill, tonic::Status> {
    let models = Arc::new(create_models(load, "bench-consume", load.args.consume_models).await?);
    let after = log_end(&mut load.client(0)).await?;
    let events = load.args.consume_events;
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for w in 0..load.args.concurrency.clamp(1, 64) {
        let (mut c, next, models) = (load.client(w), next.clone(), models.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return Ok::<(), tonic::Status>(());
                }
                let model = &models[i as usize % models.len()];
                c.register_version(version_req(model, pb::Stage::None))
                    .await?;
            }
        });
    }
    while let Some(t) = tasks.join_next().await {
        t.map_err(|e| tonic::Status::internal(e.to_string()))??;
    }
    eprintln!(
        "consume: pre-filled {events} events over {} models in {:.1} s",
        models.len(),
        started.elapsed().as_secs_f64()
    );
    Ok(Prefill { after, events })
}

/// What every member of one measurement shares.
struct Shared {
    consumer: String,
    spec: pb::ConsumerSpec,
    /// Sequences acknowledged (a redelivered event counts once).
    acked: Mutex<HashSet<u64>>,
    /// The number of events to acknowledge.
    target: u64,
    /// Set once every event is acknowledged.
    done: watch::Sender<bool>,
    /// Acknowledgements refused, and the first refusal.
    errors: Mutex<(u64, Option<String>)>,
    /// Deliveries with delivery_attempt > 1.
    redeliveries: std::sync::atomic::AtomicU64,
    /// Set when a member is dropped: when, and the models it held.
    killed: Mutex<Option<(Instant, HashSet<String>)>>,
    /// Drop to the survivor's first delivery of a dropped member's model.
    takeover: Mutex<Option<Duration>>,
}

impl Shared {
    fn acked(&self, sequence: u64) {
        let mut acked = self.acked.lock().unwrap_or_else(|e| e.into_inner());
        acked.insert(sequence);
        if acked.len() as u64 >= self.target {
            self.done.send_replace(true);
        }
    }

    fn refused(&self, status: &tonic::Status) {
        let mut errors = self.errors.lock().unwrap_or_else(|e| e.into_inner());
        errors.0 += 1;
        errors
            .1
            .get_or_insert_with(|| modelreg_client::errors::describe(status));
    }
}

/// One member's stream until the measurement is done (it then leaves) or
/// `kill` fires (it then drops its stream without a leave). Returns the
/// member's delivery-to-next-delivery times per model, µs, and the models it
/// held last.
async fn member(
    mut c: RegistryClient,
    member: String,
    shared: Arc<Shared>,
    mut kill: watch::Receiver<bool>,
) -> Result<(Vec<u64>, HashSet<String>), tonic::Status> {
    let (tx, rx) = mpsc::channel(8);
    let join = pb::ConsumeJoin {
        consumer: shared.consumer.clone(),
        member: member.clone(),
        spec: Some(shared.spec.clone()),
    };
    let say = |kind| pb::ConsumeRequest { kind: Some(kind) };
    let _ = tx.send(say(Says::Join(join))).await;
    let mut stream = c.consume(ReceiverStream::new(rx)).await?.into_inner();
    let lease = shared
        .spec
        .lease
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or(Duration::from_secs(10));
    let mut heartbeat = tokio::time::interval(lease / 3);
    let mut done = shared.done.subscribe();
    let mut held = HashSet::new();
    let mut last: HashMap<String, Instant> = HashMap::new();
    let mut cycles = Vec::new();
    let mut acks = JoinSet::new();
    loop {
        tokio::select! {
            msg = stream.message() => match msg? {
                Some(pb::ConsumeResponse { kind: Some(Told::Delivery(d)) }) => {
                    let now = Instant::now();
                    let e = d.event.unwrap_or_default();
                    if let Some(prev) = last.insert(e.model.clone(), now) {
                        cycles.push((now - prev).as_micros() as u64);
                    }
                    if d.delivery_attempt > 1 {
                        shared.redeliveries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    took_over(&shared, &e.model, now);
                    let req = pb::AckEventRequest {
                        consumer: shared.consumer.clone(),
                        member: member.clone(),
                        model: e.model,
                        sequence: e.sequence,
                        epoch: d.epoch,
                    };
                    let (mut c, shared) = (c.clone(), shared.clone());
                    acks.spawn(async move {
                        match c.ack_event(req).await {
                            Ok(_) => shared.acked(e.sequence),
                            Err(s) => shared.refused(&s),
                        }
                    });
                }
                Some(pb::ConsumeResponse { kind: Some(Told::Assignment(a)) }) => {
                    held = a.assignments.into_iter().map(|s| s.model).collect();
                }
                Some(_) => {}
                None => return Err(tonic::Status::aborted(format!("{member}: the server ended the stream"))),
            },
            Some(_) = acks.join_next() => {}
            _ = heartbeat.tick() => {
                let _ = tx.send(say(Says::Heartbeat(pb::ConsumeHeartbeat {}))).await;
            }
            _ = async { let _ = done.wait_for(|d| *d).await; } => {
                let _ = tx.send(say(Says::Leave(pb::ConsumeLeave {}))).await;
                // The server ends the stream once the leave is applied.
                while let Ok(Some(_)) = stream.message().await {}
                return Ok((cycles, held));
            }
            _ = async { let _ = kill.wait_for(|k| *k).await; } => {
                // Acknowledgements already sent may still land, as a killed
                // worker's could: they are counted when they do.
                acks.detach_all();
                return Ok((cycles, held));
            }
        }
    }
}

/// Records the takeover time at the first delivery of a dropped member's
/// model to another member.
fn took_over(shared: &Shared, model: &str, now: Instant) {
    let killed = shared.killed.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, models)) = killed.as_ref()
        && models.contains(model)
    {
        let mut t = shared.takeover.lock().unwrap_or_else(|e| e.into_inner());
        t.get_or_insert(now - *at);
    }
}

/// One consumer read by `members` members until every pre-filled event is
/// acknowledged; with `kill_after`, member 1 is dropped without a leave once
/// that many events are acknowledged.
async fn measure(
    load: &Load,
    pre: &Prefill,
    members: usize,
    lease: Option<Duration>,
    kill_after: Option<u64>,
) -> Report {
    let consumer = format!("bench-consume-{}-m{members}", unique());
    let spec = pb::ConsumerSpec {
        types: vec![pb::EventType::VersionRegistered as i32],
        start_after: Some(pre.after),
        lease: lease.and_then(|l| prost_types::Duration::try_from(l).ok()),
        ..Default::default()
    };
    let shared = Arc::new(Shared {
        consumer,
        spec,
        acked: Mutex::new(HashSet::new()),
        target: pre.events,
        done: watch::channel(false).0,
        errors: Mutex::new((0, None)),
        redeliveries: Default::default(),
        killed: Mutex::new(None),
        takeover: Mutex::new(None),
    });
    let run = unique();
    let start = Instant::now();
    let mut kills = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..members {
        let (kill_tx, kill_rx) = watch::channel(false);
        kills.push(kill_tx);
        let name = format!("bench-{run}-{i}");
        tasks.push(tokio::spawn(member(
            load.client(i),
            name,
            shared.clone(),
            kill_rx,
        )));
    }
    let mut done = shared.done.subscribe();
    let deadline = tokio::time::sleep(DEADLINE);
    tokio::pin!(deadline);
    if let Some(n) = kill_after {
        let mut poll = tokio::time::interval(Duration::from_millis(5));
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                _ = &mut deadline => break,
            }
            if shared.acked.lock().map_or(0, |a| a.len() as u64) >= n {
                break;
            }
        }
        let _ = kills[1].send(true);
        let victim = tasks.remove(1).await;
        let held = match victim {
            Ok(Ok((_, held))) => held,
            _ => HashSet::new(),
        };
        eprintln!("consume: dropped member 1 holding {} models", held.len());
        *shared.killed.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), held));
    }
    tokio::select! {
        _ = done.wait_for(|d| *d) => {}
        _ = &mut deadline => {}
    }
    let elapsed = start.elapsed();
    shared.done.send_replace(true);
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        match t.await {
            Ok(Ok((cycles, _))) => latencies.extend(cycles),
            Ok(Err(s)) => {
                eprintln!(
                    "consume: a member failed: {}",
                    modelreg_client::errors::describe(&s)
                );
                errors += 1;
            }
            Err(_) => errors += 1,
        }
    }
    let (refused, first) =
        std::mem::take(&mut *shared.errors.lock().unwrap_or_else(|e| e.into_inner()));
    if let Some(first) = first {
        eprintln!("consume: first refused acknowledgement: {first}");
    }
    let acked = shared.acked.lock().map_or(0, |a| a.len() as u64);
    let mut extra = vec![
        ("events_per_sec", acked as f64 / elapsed.as_secs_f64()),
        ("members", members as f64),
        ("missing", pre.events.saturating_sub(acked) as f64),
        (
            "redeliveries",
            shared
                .redeliveries
                .load(std::sync::atomic::Ordering::Relaxed) as f64,
        ),
    ];
    let mut scenario = format!("consume m={members}");
    if let Some(l) = lease {
        let takeover = *shared.takeover.lock().unwrap_or_else(|e| e.into_inner());
        extra.push(("lease_ms", l.as_millis() as f64));
        extra.push((
            "takeover_ms",
            takeover.map_or(-1.0, |t| t.as_secs_f64() * 1000.0),
        ));
        scenario = format!("consume takeover m={members} lease={}s", l.as_secs_f64());
    }
    Report {
        scenario,
        ops: acked,
        errors: errors + refused,
        elapsed,
        latencies,
        extra,
    }
}

/// The whole scenario: one report per member count, then the takeover.
pub(super) async fn consume(load: &Load) -> Result<Vec<Report>, tonic::Status> {
    let pre = prefill(load).await?;
    let mut reports = Vec::new();
    for &members in &load.args.consume_members {
        reports.push(measure(load, &pre, members.max(1), None, None).await);
    }
    let lease = Duration::from_secs_f64(load.args.consume_lease.max(1.0));
    reports.push(measure(load, &pre, 2, Some(lease), Some(pre.events / 10)).await);
    Ok(reports)
}
