//! Durable consumers: joining and leaving, lease renewal, keeping the
//! assignment current (expired members out, new models in, balance), handing
//! out each model's next event, acknowledgements, rejections, dead letters,
//! and the fence a write made for a delivery passes through.
//!
//! Every change is one transaction that first locks the consumer (the key
//! `consumer/NAME`), so two members, or two replicas, never interleave their
//! changes of one consumer. Reads that decide whether a change is needed run
//! outside, and the transaction checks again what it changes.

use serde_json::json;

use crate::domain::{
    Actor, ConsumerRecord, ConsumerSpec, DeadLetterRecord, DeadLetterState, Event, EventKind,
    MemberRecord, ModelSlot, Name, NewEvent, OUT_WITH_MEMBER, OnDeadLetter, rebalance,
};
use crate::error::{Error, Result};
use crate::store::{ConsumerChanges, ConsumerState, Db, Slots, Store, Tx};

use super::*;

/// Events read per scan of the log for new models.
const SCAN_PAGE: usize = 1000;

/// A worker joining a consumer.
#[derive(Debug, Clone)]
pub struct Join {
    /// The consumer.
    pub consumer: Name,
    /// The member id.
    pub member: String,
    /// The spec it brings.
    pub spec: ConsumerSpec,
    /// Who it is.
    pub identity: Actor,
}

/// One event handed to a member.
#[derive(Debug, Clone)]
pub struct Claimed {
    /// The event.
    pub event: Event,
    /// The assignment's epoch.
    pub epoch: u64,
    /// Which delivery of it this is.
    pub attempt: u32,
    /// The consumer's max_deliveries.
    pub max_deliveries: u32,
}

/// What a member's session learns from one round of claiming.
#[derive(Debug, Clone, Default)]
pub struct Claim {
    /// Events to send now.
    pub deliveries: Vec<Claimed>,
    /// The member's models (with epochs), for the assignment message.
    pub held: Vec<ModelSlot>,
    /// When, µs, a rejected event of this member becomes due again.
    pub next_due: Option<i64>,
    /// When its lease ends, µs.
    pub lease_expire: i64,
    /// The consumer's lease, ms.
    pub lease_ms: i64,
}

/// An acknowledgement or rejection, as a member sends it.
#[derive(Debug, Clone)]
pub struct Settle {
    /// The consumer.
    pub consumer: Name,
    /// The member.
    pub member: String,
    /// The event's model.
    pub model: Name,
    /// The event's sequence.
    pub sequence: u64,
    /// The delivery's epoch.
    pub epoch: u64,
    /// Who sends it.
    pub identity: Actor,
}

/// What became of a rejected event.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    /// Parked as a dead letter.
    pub dead_lettered: bool,
    /// When it will be delivered again, µs (when not parked).
    pub redeliver_time: Option<i64>,
    /// Deliveries so far.
    pub deliveries: u32,
}

/// A consumer as GetConsumer shows it.
#[derive(Debug, Clone)]
pub struct ConsumerView {
    /// Its state.
    pub state: ConsumerState,
    /// Matching events not yet done.
    pub lag: u64,
    /// "Now" when it was read, µs (which members are live).
    pub now: i64,
}

pub(crate) fn consumer_not_found(name: &str) -> Error {
    Error::NotFound {
        kind: "modelreg.v1.Consumer",
        name: name.to_owned(),
    }
}

fn lock_name(name: &str) -> String {
    format!("consumer/{name}")
}

async fn locked<T: Tx>(tx: &mut T, name: &str, slots: Slots<'_>) -> Result<ConsumerState> {
    tx.lock_key(&lock_name(name)).await?;
    tx.load_consumer(name, slots)
        .await?
        .ok_or_else(|| consumer_not_found(name))
}

fn session_id() -> String {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).expect("the operating system's random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn superseded(member: &str) -> Error {
    Error::precondition(
        "CONSUMER_SESSION",
        member,
        format!("member {member} joined again on another stream; this one ends"),
    )
}

/// Joins (creating the consumer on its first join): the member gets a lease
/// and a new session, superseding any older stream of the same member.
/// Returns the consumer and the session.
pub async fn join_consumer(store: &Store, join: Join) -> Result<(ConsumerRecord, String)> {
    join.spec.validate()?;
    let start = watch_start(store, "spec.start_after", join.spec.start_after)?;
    let session = session_id();
    let s = session.clone();
    write_tx!(store, |tx| -> (ConsumerRecord, String) {
        let name = join.consumer.as_str();
        tx.lock_key(&lock_name(name)).await?;
        let now = tx.now();
        let mut changes = ConsumerChanges::default();
        let (record, members) = match tx.load_consumer(name, Slots::None).await? {
            Some(state) => {
                let diff = join.spec.differences(&state.record.settings);
                if !diff.is_empty() {
                    return Err(Error::precondition(
                        "CONSUMER_SPEC",
                        name,
                        format!(
                            "consumer {name} exists with another spec: {}",
                            diff.join("; ")
                        ),
                    ));
                }
                (state.record, state.members)
            }
            None => {
                let record = ConsumerRecord {
                    name: name.to_owned(),
                    settings: join.spec.settings(),
                    start_sequence: start,
                    scanned_sequence: start,
                    creator: join.identity.0.clone(),
                    create_time: now,
                };
                changes.create = Some(record.clone());
                (record, vec![])
            }
        };
        let lease = record.settings.lease_ms * 1000;
        let join_time = match members.iter().find(|m| m.member == join.member) {
            Some(m) if m.expire_time >= now && m.identity != join.identity.0 => {
                return Err(Error::PermissionDenied(format!(
                    "member {} of consumer {name} belongs to {} while its lease lasts",
                    join.member, m.identity
                )));
            }
            // The same member reconnecting within its lease keeps its models.
            Some(m) if m.expire_time >= now => m.join_time,
            _ => now,
        };
        changes.members.push(MemberRecord {
            member: join.member.clone(),
            identity: join.identity.0.clone(),
            session: s,
            join_time,
            expire_time: now + lease,
        });
        tx.save_consumer(name, &changes).await?;
        Ok(((record, session), None))
    })
}

/// Renews a member's lease; its expiry, µs. A member removed meanwhile (its
/// lease ran out and others took its models) joins again, empty-handed.
pub async fn renew_member(
    store: &Store,
    consumer: &str,
    member: &str,
    session: &str,
    identity: &Actor,
) -> Result<i64> {
    let (consumer, member, session, identity) = (
        consumer.to_owned(),
        member.to_owned(),
        session.to_owned(),
        identity.0.clone(),
    );
    write_tx!(store, |tx| -> i64 {
        let state = locked(tx, &consumer, Slots::None).await?;
        let now = tx.now();
        let join_time = match state.members.iter().find(|m| m.member == member) {
            Some(m) if m.session != session => return Err(superseded(&member)),
            Some(m) => m.join_time,
            None => now,
        };
        let expire = now + state.record.settings.lease_ms * 1000;
        let changes = ConsumerChanges {
            members: vec![MemberRecord {
                member: member.clone(),
                identity: identity.clone(),
                session: session.clone(),
                join_time,
                expire_time: expire,
            }],
            ..Default::default()
        };
        tx.save_consumer(&consumer, &changes).await?;
        Ok((expire, None))
    })
}

/// Ends a membership: its models go to the others at the next rebalance.
pub async fn leave_consumer(
    store: &Store,
    consumer: &str,
    member: &str,
    session: &str,
) -> Result<()> {
    let (consumer, member, session) = (consumer.to_owned(), member.to_owned(), session.to_owned());
    write_tx!(store, |tx| -> () {
        let mut state = locked(tx, &consumer, Slots::All).await?;
        if !state
            .members
            .iter()
            .any(|m| m.member == member && m.session == session)
        {
            return Ok(((), None));
        }
        state.members.retain(|m| m.member != member);
        let live = live_members(&state, tx.now());
        let mut changes = ConsumerChanges {
            removed: vec![member.clone()],
            ..Default::default()
        };
        for i in rebalance(&live, &mut state.slots) {
            changes.slots.push(state.slots[i].clone());
        }
        tx.save_consumer(&consumer, &changes).await?;
        Ok(((), None))
    })
}

fn live_members(state: &ConsumerState, now: i64) -> Vec<String> {
    state
        .members
        .iter()
        .filter(|m| m.expire_time >= now)
        .map(|m| m.member.clone())
        .collect()
}

/// What a member's task saw at its last full look at the assignment. Another
/// look is needed only when the members changed, one's lease ran out, new
/// events came, or the models were left unbalanced (a member joined while
/// the others' models all had events in flight).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Seen {
    members: Vec<String>,
    settled: bool,
}

/// Whether no live member holds two or more models more than another.
fn balanced(live: &[String], slots: &[ModelSlot]) -> bool {
    let loads: Vec<usize> = live
        .iter()
        .map(|m| {
            slots
                .iter()
                .filter(|s| s.owner.as_deref() == Some(m.as_str()))
                .count()
        })
        .collect();
    match (loads.iter().max(), loads.iter().min()) {
        (Some(hi), Some(lo)) => hi - lo < 2,
        _ => true,
    }
}

/// Keeps a consumer's assignment current: removes members whose lease ran
/// out, gives models seen in new events a place, and rebalances. Looks at
/// every model only when `seen` says something may have changed, and
/// writes only when something did.
pub async fn maintain_consumer(store: &Store, name: &str, seen: &mut Seen) -> Result<()> {
    let head = store.latest_sequence();
    let now = store.clock().now_micros();
    let light = read_db!(store, |db| db.consumer_state(name, Slots::None))?
        .ok_or_else(|| consumer_not_found(name))?;
    let members: Vec<String> = light.members.iter().map(|m| m.member.clone()).collect();
    let expired = light.members.iter().any(|m| m.expire_time < now);
    if seen.settled && seen.members == members && !expired && light.record.scanned_sequence >= head
    {
        return Ok(());
    }
    let state = read_db!(store, |db| db.consumer_state(name, Slots::All))?
        .ok_or_else(|| consumer_not_found(name))?;
    let from = state.record.scanned_sequence;
    let (found, scanned_to) = if from < head {
        let filter = state.record.settings.filter();
        let found = read_db!(store, |db| db.events(&filter, from, Some(head), SCAN_PAGE))?;
        let to = if found.len() == SCAN_PAGE {
            found.last().map_or(head, |e| e.sequence)
        } else {
            head
        };
        (found, to)
    } else {
        (vec![], from)
    };
    let live = live_members(&state, now);
    let mut probe = state.slots.clone();
    let movable = !rebalance(&live, &mut probe).is_empty();
    *seen = Seen {
        members,
        settled: scanned_to == head && balanced(&live, &probe),
    };
    if scanned_to == from && !expired && !movable {
        return Ok(());
    }
    let name = name.to_owned();
    let settled = write_tx!(store, |tx| -> bool {
        let mut state = locked(tx, &name, Slots::All).await?;
        let now = tx.now();
        let mut changed: Vec<usize> = Vec::new();
        let mut changes = ConsumerChanges::default();
        // Another member may have scanned meanwhile: count each event once.
        if state.record.scanned_sequence == from && scanned_to > from {
            for e in &found {
                let i = match state.slots.iter().position(|s| s.model == e.model) {
                    Some(i) => i,
                    None => {
                        let start = state.record.start_sequence;
                        state.slots.push(ModelSlot::new(&e.model, start));
                        state.slots.len() - 1
                    }
                };
                let slot = &mut state.slots[i];
                if e.sequence > slot.acked {
                    slot.pending += 1;
                    slot.latest = slot.latest.max(e.sequence);
                    changed.push(i);
                }
            }
            changes.scanned = Some(scanned_to);
        }
        let (live, gone): (Vec<_>, Vec<_>) =
            state.members.iter().partition(|m| m.expire_time >= now);
        changes.removed = gone.iter().map(|m| m.member.clone()).collect();
        let live: Vec<String> = live.iter().map(|m| m.member.clone()).collect();
        changed.extend(rebalance(&live, &mut state.slots));
        changed.sort_unstable();
        changed.dedup();
        changes.slots = changed.iter().map(|&i| state.slots[i].clone()).collect();
        if !changes.is_empty() {
            tx.save_consumer(&name, &changes).await?;
        }
        Ok((balanced(&live, &state.slots), None))
    })?;
    seen.settled &= settled;
    Ok(())
}

/// The next event of `slot`'s model after its acknowledged position.
async fn next_event(
    store: &Store,
    state: &ConsumerState,
    slot: &ModelSlot,
) -> Result<Option<Event>> {
    let mut filter = state.record.settings.filter();
    filter.models = vec![slot.model.clone()];
    let found = read_db!(store, |db| db.events(&filter, slot.acked, None, 1))?;
    Ok(found.into_iter().next())
}

async fn event_at(store: &Store, sequence: u64) -> Result<Option<Event>> {
    let filter = crate::domain::EventFilter::default();
    let found = read_db!(store, |db| db.events(
        &filter,
        sequence - 1,
        Some(sequence),
        1
    ))?;
    Ok(found.into_iter().next())
}

/// One planned delivery: the slot as read, and the event.
struct Plan {
    slot: ModelSlot,
    event: Event,
    /// A resend of an event already out with this member (same attempt).
    resend: bool,
}

/// Hands `member` the next event of each of its models that has none out
/// (or whose rejected event is due again); with `resend`, also the events
/// already out with it (a new stream of the same member). Each is marked
/// out in one transaction that checks the member still holds the model
/// under the same epoch.
pub async fn claim_deliveries(
    store: &Store,
    name: &str,
    member: &str,
    session: &str,
    resend: bool,
) -> Result<Claim> {
    let state = read_db!(store, |db| db.consumer_state(name, Slots::HeldBy(member)))?
        .ok_or_else(|| consumer_not_found(name))?;
    let now = store.clock().now_micros();
    let Some(me) = state.members.iter().find(|m| m.member == member) else {
        return Ok(Claim::default());
    };
    if me.session != session {
        return Err(superseded(member));
    }
    let mut claim = Claim {
        lease_expire: me.expire_time,
        lease_ms: state.record.settings.lease_ms,
        ..Claim::default()
    };
    let mut plans = Vec::new();
    for slot in state
        .slots
        .iter()
        .filter(|s| s.owner.as_deref() == Some(member))
    {
        claim.held.push(slot.clone());
        if slot.inflight != 0 {
            let out = slot.redeliver_time == OUT_WITH_MEMBER;
            if (out && resend) || (!out && slot.redeliver_time <= now) {
                if let Some(event) = event_at(store, slot.inflight).await? {
                    plans.push(Plan {
                        slot: slot.clone(),
                        event,
                        resend: out,
                    });
                }
            } else if !out {
                claim.next_due = Some(
                    claim
                        .next_due
                        .map_or(slot.redeliver_time, |d: i64| d.min(slot.redeliver_time)),
                );
            }
            continue;
        }
        let retry = state.retrying.iter().find(|d| d.model == slot.model);
        let event = match retry {
            Some(d) => event_at(store, d.sequence).await?,
            None if slot.blocked || slot.pending == 0 => None,
            None => next_event(store, &state, slot).await?,
        };
        if let Some(event) = event {
            plans.push(Plan {
                slot: slot.clone(),
                event,
                resend: false,
            });
        }
    }
    if plans.is_empty() {
        return Ok(claim);
    }
    let (name, member, session) = (name.to_owned(), member.to_owned(), session.to_owned());
    let max = state.record.settings.max_deliveries;
    let deliveries = write_tx!(store, |tx| -> Vec<Claimed> {
        let state = locked(tx, &name, Slots::HeldBy(&member)).await?;
        if !state
            .members
            .iter()
            .any(|m| m.member == member && m.session == session)
        {
            return Ok((vec![], None));
        }
        let mut changes = ConsumerChanges::default();
        let mut out = Vec::new();
        for plan in plans {
            let Some(now_slot) = state.slots.iter().find(|s| s.model == plan.slot.model) else {
                continue;
            };
            // Anything changed since it was read (an ack, a takeover): skip;
            // the next round sees the new state.
            if *now_slot != plan.slot {
                continue;
            }
            let mut slot = now_slot.clone();
            if !plan.resend {
                slot.deliveries = if slot.inflight == plan.event.sequence {
                    slot.deliveries + 1
                } else {
                    1
                };
            }
            slot.inflight = plan.event.sequence;
            slot.redeliver_time = OUT_WITH_MEMBER;
            out.push(Claimed {
                event: plan.event,
                epoch: slot.epoch,
                attempt: slot.deliveries,
                max_deliveries: max,
            });
            changes.slots.push(slot);
        }
        if !changes.is_empty() {
            tx.save_consumer(&name, &changes).await?;
        }
        Ok((out, None))
    })?;
    claim.deliveries = deliveries;
    Ok(claim)
}

/// The slot a settle names, after the fencing checks: the member holds the
/// model under that epoch, and the caller is that member's identity.
fn fenced<'s>(state: &'s ConsumerState, s: &Settle) -> Result<&'s ModelSlot> {
    let name = s.consumer.as_str();
    let subject = format!("{name}/{}", s.model.as_str());
    let Some(slot) = state.slots.iter().find(|x| x.model == s.model.as_str()) else {
        return Err(Error::precondition(
            "CONSUMER_EPOCH",
            subject,
            format!(
                "consumer {name} has delivered no event of model {}",
                s.model.as_str()
            ),
        ));
    };
    if slot.epoch != s.epoch || slot.owner.as_deref() != Some(s.member.as_str()) {
        return Err(Error::precondition(
            "CONSUMER_EPOCH",
            subject,
            format!(
                "the assignment of model {} in consumer {name} has moved on: it is at epoch {}, held by {}; this delivery was epoch {} to {}",
                slot.model,
                slot.epoch,
                slot.owner.as_deref().unwrap_or("no member"),
                s.epoch,
                s.member
            ),
        ));
    }
    if let Some(m) = state.members.iter().find(|m| m.member == s.member)
        && m.identity != s.identity.0
    {
        return Err(Error::PermissionDenied(format!(
            "member {} of consumer {name} belongs to {}",
            s.member, m.identity
        )));
    }
    Ok(slot)
}

fn not_in_flight(s: &Settle, slot: &ModelSlot) -> Error {
    Error::precondition(
        "CONSUMER_DELIVERY",
        format!("{}/{}", s.consumer.as_str(), s.model.as_str()),
        format!(
            "event {} of model {} is not the one in flight (that is {})",
            s.sequence,
            slot.model,
            if slot.inflight == 0 {
                "none".to_owned()
            } else {
                slot.inflight.to_string()
            }
        ),
    )
}

/// Acknowledges a delivery: the model moves past it.
pub async fn ack_event(store: &Store, s: Settle) -> Result<()> {
    write_tx!(store, |tx| -> () {
        let name = s.consumer.as_str();
        let state = locked(tx, name, Slots::Of(s.model.as_str())).await?;
        let slot = fenced(&state, &s)?;
        if slot.inflight != s.sequence {
            // A repeat of an acknowledgement already applied.
            if s.sequence <= slot.acked && !state.retrying.iter().any(|d| d.sequence == s.sequence)
            {
                return Ok(((), None));
            }
            return Err(not_in_flight(&s, slot));
        }
        let mut slot = slot.clone();
        if s.sequence > slot.acked {
            slot.acked = s.sequence;
            slot.pending = slot.pending.saturating_sub(1);
        }
        slot.inflight = 0;
        slot.deliveries = 0;
        slot.redeliver_time = 0;
        slot.last_error.clear();
        let mut changes = ConsumerChanges::default();
        if let Some(d) = state.retrying.iter().find(|d| d.sequence == s.sequence) {
            changes.dead_letters.push(DeadLetterRecord {
                state: DeadLetterState::Resolved,
                ..d.clone()
            });
        }
        changes.slots.push(slot);
        tx.save_consumer(name, &changes).await?;
        Ok(((), None))
    })
}

/// Rejects a delivery: due again after the backoff, or parked as a dead
/// letter once delivered `max_deliveries` times.
pub async fn reject_event(store: &Store, s: Settle, reason: String) -> Result<Rejected> {
    let reason = crate::domain::parse_text("reason", &reason)?;
    if reason.is_empty() {
        return Err(Error::invalid("reason", "must say what went wrong"));
    }
    write_tx!(store, |tx| -> Rejected {
        let name = s.consumer.as_str();
        let state = locked(tx, name, Slots::Of(s.model.as_str())).await?;
        let slot = fenced(&state, &s)?;
        if slot.inflight != s.sequence {
            return Err(not_in_flight(&s, slot));
        }
        let settings = &state.record.settings;
        let mut slot = slot.clone();
        let now = tx.now();
        slot.last_error = reason.clone();
        let mut changes = ConsumerChanges::default();
        if slot.deliveries < settings.max_deliveries {
            slot.redeliver_time = now + settings.backoff_before(slot.deliveries + 1) * 1000;
            let out = Rejected {
                dead_lettered: false,
                redeliver_time: Some(slot.redeliver_time),
                deliveries: slot.deliveries,
            };
            changes.slots.push(slot);
            tx.save_consumer(name, &changes).await?;
            return Ok((out, None));
        }
        let event = tx
            .fetch_event(s.sequence)
            .await?
            .ok_or_else(|| vanished("delivered event"))?;
        let deliveries = slot.deliveries;
        let dead = NewEvent::new(
            EventKind::DeadLettered,
            &event.model,
            event.version,
            json!({
                "consumer": name,
                "event_sequence": s.sequence,
                "event_type": event.kind.as_str(),
                "deliveries": deliveries,
                "reason": reason,
                "on_dead_letter": settings.on_dead_letter.to_string(),
            }),
        );
        slot.inflight = 0;
        slot.deliveries = 0;
        slot.redeliver_time = 0;
        match settings.on_dead_letter {
            OnDeadLetter::Block => slot.blocked = true,
            OnDeadLetter::Skip if s.sequence > slot.acked => {
                slot.acked = s.sequence;
                slot.pending = slot.pending.saturating_sub(1);
            }
            OnDeadLetter::Skip => {}
        }
        changes.slots.push(slot);
        let seq = append_events(tx, &s.identity, vec![dead]).await?;
        changes.dead_letters.push(DeadLetterRecord {
            consumer: name.to_owned(),
            sequence: s.sequence,
            model: event.model.clone(),
            deliveries,
            reason: reason.clone(),
            park_time: now,
            event_sequence: seq,
            state: DeadLetterState::Parked,
        });
        tx.save_consumer(name, &changes).await?;
        let out = Rejected {
            dead_lettered: true,
            redeliver_time: None,
            deliveries,
        };
        Ok((out, Some(seq)))
    })
}

/// Delivers a parked dead letter again, before its model's later events.
pub async fn retry_dead_letter(
    store: &Store,
    consumer: &Name,
    sequence: u64,
    actor: Actor,
) -> Result<DeadLetterRecord> {
    let name = consumer.as_str().to_owned();
    write_tx!(store, |tx| -> DeadLetterRecord {
        locked(tx, &name, Slots::None).await?;
        let Some(d) = tx.dead_letter(&name, sequence).await? else {
            return Err(Error::NotFound {
                kind: "modelreg.v1.DeadLetter",
                name: format!("{name}/{sequence}"),
            });
        };
        if d.state != DeadLetterState::Parked {
            return Err(Error::precondition(
                "DEAD_LETTER_STATE",
                format!("{name}/{sequence}"),
                format!(
                    "dead letter {sequence} of consumer {name} is {}, not PARKED",
                    d.state
                ),
            ));
        }
        let mut changes = ConsumerChanges::default();
        if let Some(mut slot) = tx.consumer_slot(&name, &d.model).await? {
            slot.blocked = false;
            changes.slots.push(slot);
        }
        let d = DeadLetterRecord {
            state: DeadLetterState::Retrying,
            ..d
        };
        changes.dead_letters.push(d.clone());
        let event = tx
            .fetch_event(sequence)
            .await?
            .ok_or_else(|| vanished("dead letter's event"))?;
        let retried = NewEvent::new(
            EventKind::DeadLetterRetried,
            &event.model,
            event.version,
            json!({ "consumer": name, "event_sequence": sequence }),
        );
        tx.save_consumer(&name, &changes).await?;
        let seq = append_events(tx, &actor, vec![retried]).await?;
        Ok((d, Some(seq)))
    })
}

/// Checks, inside a write made for a consumer's delivery, that the delivery
/// is still the model's event in flight under that epoch.
pub(crate) async fn check_fence<T: Tx>(
    tx: &mut T,
    fence: &crate::domain::Fence,
    model: &str,
    identity: &Actor,
) -> Result<()> {
    let state = locked(tx, &fence.consumer, Slots::Of(model)).await?;
    let s = Settle {
        consumer: Name::parse("fence.consumer", &fence.consumer)?,
        member: fence.member.clone(),
        model: Name::parse("model", model)?,
        sequence: fence.sequence,
        epoch: fence.epoch,
        identity: identity.clone(),
    };
    let slot = fenced(&state, &s)?;
    if slot.inflight != fence.sequence {
        return Err(not_in_flight(&s, slot));
    }
    Ok(())
}

/// A consumer, with its lag.
pub async fn get_consumer(store: &Store, name: &str) -> Result<ConsumerView> {
    let state = read_db!(store, |db| db.consumer_state(name, Slots::All))?
        .ok_or_else(|| consumer_not_found(name))?;
    let head = store.latest_sequence();
    let unscanned = if state.record.scanned_sequence < head {
        let filter = state.record.settings.filter();
        let from = state.record.scanned_sequence;
        read_db!(store, |db| db.events(
            &filter,
            from,
            Some(head),
            10 * SCAN_PAGE
        ))?
        .len() as u64
    } else {
        0
    };
    let lag = state.slots.iter().map(|s| s.pending).sum::<u64>() + unscanned;
    Ok(ConsumerView {
        state,
        lag,
        now: store.clock().now_micros(),
    })
}

/// Up to `limit` consumers after `after`, and whether more follow.
pub async fn list_consumers(
    store: &Store,
    after: &str,
    limit: usize,
) -> Result<(Vec<ConsumerView>, bool)> {
    let records = read_db!(store, |db| db.list_consumers(after, limit + 1))?;
    let (records, more) = page(records, limit);
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        match get_consumer(store, &r.name).await {
            Ok(v) => out.push(v),
            // Deleted between the two reads.
            Err(Error::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
    }
    Ok((out, more))
}

/// Up to `limit` dead letters of a consumer after `after`, with their
/// events, and whether more follow.
pub async fn list_dead_letters(
    store: &Store,
    name: &str,
    include_resolved: bool,
    after: u64,
    limit: usize,
) -> Result<(Vec<(DeadLetterRecord, Event)>, bool)> {
    if read_db!(store, |db| db.consumer_state(name, Slots::None))?.is_none() {
        return Err(consumer_not_found(name));
    }
    let rows = read_db!(store, |db| db.list_dead_letters(
        name,
        include_resolved,
        after,
        limit + 1
    ))?;
    let (rows, more) = page(rows, limit);
    let mut out = Vec::with_capacity(rows.len());
    for d in rows {
        let event = event_at(store, d.sequence)
            .await?
            .ok_or_else(|| Error::Internal(format!("dead letter {} has no event", d.sequence)))?;
        out.push((d, event));
    }
    Ok((out, more))
}

/// Deletes a consumer and its state.
pub async fn delete_consumer(store: &Store, name: &Name) -> Result<()> {
    let name = name.as_str().to_owned();
    write_tx!(store, |tx| -> () {
        tx.lock_key(&lock_name(&name)).await?;
        if !tx.delete_consumer(&name).await? {
            return Err(consumer_not_found(&name));
        }
        Ok(((), None))
    })
}
