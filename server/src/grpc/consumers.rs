//! The durable consumers' RPCs: the `Consume` stream (join, then heartbeats
//! and a leave in; assignments and deliveries out), acknowledgements and
//! rejections, and the reads and admin calls. Parsing and conversion only;
//! the rules are [`crate::app::consumers`]'s, the member task
//! [`crate::consume`]'s.

use std::time::Duration;

use modelreg_api::v1 as pb;
use prost_types::Duration as PbDuration;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

use crate::app::{self, ConsumerView, Join, Settle};
use crate::consume::{self, Member, MemberSays, ToMember};
use crate::domain::{
    self, Actor, ConsumerSpec, DeadLetterRecord, DeadLetterState, Event, ModelSlot, Name,
    OnDeadLetter, Violations,
};
use crate::error::{Error, Result};
use crate::grpc::convert::{self, event_to_pb, micros_to_pb};
use crate::grpc::page_token::{Keyed, Pager};
use crate::grpc::parse::parse_stage_field;

use super::{ModelRegistryService, RegistryService, actor};

/// How long a new stream may take to send its join.
const JOIN_WAIT: Duration = Duration::from_secs(30);

impl Keyed for ConsumerView {
    fn page_key(&self) -> String {
        self.state.record.name.clone()
    }
}

impl Keyed for (DeadLetterRecord, Event) {
    fn page_key(&self) -> String {
        self.0.sequence.to_string()
    }
}

fn millis(field: &str, d: &PbDuration, v: &mut Violations) -> Option<i64> {
    if d.seconds < 0 || d.nanos < 0 || d.seconds > 3600 {
        v.add(field, "must be a duration of 0 to 1 hour");
        return None;
    }
    Some(d.seconds * 1000 + i64::from(d.nanos) / 1_000_000)
}

fn spec_from_pb(s: pb::ConsumerSpec) -> Result<ConsumerSpec> {
    let mut v = Violations::default();
    let mut spec = ConsumerSpec::default();
    for (i, m) in s.models.iter().enumerate() {
        if let Some(name) = v.take(Name::parse(&format!("spec.models[{i}]"), m)) {
            spec.models.push(name.to_string());
        }
    }
    if s.models.len() > super::MAX_WATCHED_MODELS {
        v.add(
            "spec.models",
            format!("at most {} models", super::MAX_WATCHED_MODELS),
        );
    }
    spec.kinds = convert::event_kinds_from_pb("spec.types", &s.types, &mut v);
    for (i, st) in s.to_stages.iter().enumerate() {
        if let Some(stage) = v.take(parse_stage_field(&format!("spec.to_stages[{i}]"), *st)) {
            spec.to_stages.push(stage);
        }
    }
    spec.start_after = s.start_after;
    spec.lease_ms = s
        .lease
        .as_ref()
        .and_then(|d| millis("spec.lease", d, &mut v));
    spec.backoff_ms = s
        .backoff
        .as_ref()
        .and_then(|d| millis("spec.backoff", d, &mut v));
    if s.max_deliveries < 0 {
        v.add("spec.max_deliveries", "must not be negative");
    } else if s.max_deliveries > 0 {
        spec.max_deliveries = Some(s.max_deliveries as u32);
    }
    spec.on_dead_letter = match pb::OnDeadLetter::try_from(s.on_dead_letter) {
        Ok(pb::OnDeadLetter::Unspecified) => None,
        Ok(pb::OnDeadLetter::Block) => Some(OnDeadLetter::Block),
        Ok(pb::OnDeadLetter::Skip) => Some(OnDeadLetter::Skip),
        Err(_) => {
            v.add("spec.on_dead_letter", "is not a valid value");
            None
        }
    };
    v.finish()?;
    spec.validate()?;
    Ok(spec)
}

fn duration_pb(ms: i64) -> PbDuration {
    PbDuration {
        seconds: ms / 1000,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn spec_to_pb(s: &domain::ConsumerSettings, start: u64) -> pb::ConsumerSpec {
    let filter = s.filter();
    pb::ConsumerSpec {
        models: s.models.clone(),
        types: filter
            .kinds
            .iter()
            .map(|k| convert::event_kind_to_pb(*k) as i32)
            .collect(),
        to_stages: filter
            .to_stages
            .iter()
            .map(|st| convert::stage_to_pb(*st) as i32)
            .collect(),
        start_after: Some(start),
        lease: Some(duration_pb(s.lease_ms)),
        max_deliveries: s.max_deliveries as i32,
        backoff: Some(duration_pb(s.backoff_ms)),
        on_dead_letter: match s.on_dead_letter {
            OnDeadLetter::Block => pb::OnDeadLetter::Block,
            OnDeadLetter::Skip => pb::OnDeadLetter::Skip,
        } as i32,
    }
}

fn assignment_to_pb(s: ModelSlot) -> pb::ConsumerAssignment {
    pb::ConsumerAssignment {
        model: s.model,
        member: s.owner.unwrap_or_default(),
        epoch: s.epoch,
        acked_sequence: s.acked,
        pending: s.pending,
        in_flight_sequence: s.inflight,
        deliveries: s.deliveries as i32,
        blocked: s.blocked,
        last_error: s.last_error,
    }
}

fn consumer_to_pb(v: ConsumerView) -> pb::Consumer {
    let r = v.state.record;
    let members = v
        .state
        .members
        .iter()
        .filter(|m| m.expire_time >= v.now)
        .map(|m| pb::ConsumerMember {
            member: m.member.clone(),
            identity: m.identity.clone(),
            join_time: Some(micros_to_pb(m.join_time)),
            lease_expire_time: Some(micros_to_pb(m.expire_time)),
            models: v
                .state
                .slots
                .iter()
                .filter(|s| s.owner.as_deref() == Some(m.member.as_str()))
                .count() as i32,
        })
        .collect();
    pb::Consumer {
        spec: Some(spec_to_pb(&r.settings, r.start_sequence)),
        name: r.name,
        creator: r.creator,
        create_time: Some(micros_to_pb(r.create_time)),
        lag_events: v.lag,
        dead_letters: v.state.parked as i32,
        members,
        assignments: v.state.slots.into_iter().map(assignment_to_pb).collect(),
        scanned_sequence: r.scanned_sequence,
    }
}

fn dead_letter_to_pb((d, e): (DeadLetterRecord, Event)) -> pb::DeadLetter {
    pb::DeadLetter {
        consumer: d.consumer,
        event: Some(event_to_pb(e)),
        deliveries: d.deliveries as i32,
        reason: d.reason,
        park_time: Some(micros_to_pb(d.park_time)),
        dead_letter_sequence: d.event_sequence,
        state: match d.state {
            DeadLetterState::Parked => pb::DeadLetterState::Parked,
            DeadLetterState::Retrying => pb::DeadLetterState::Retrying,
            DeadLetterState::Resolved => pb::DeadLetterState::Resolved,
        } as i32,
    }
}

fn to_member_pb(item: ToMember) -> pb::ConsumeResponse {
    use pb::consume_response::Kind;
    let kind = match item {
        ToMember::Delivery(d) => Kind::Delivery(pb::ConsumerDelivery {
            event: Some(event_to_pb(d.event)),
            epoch: d.epoch,
            delivery_attempt: d.attempt as i32,
            max_deliveries: d.max_deliveries as i32,
        }),
        ToMember::Assignment {
            held,
            lease_ms,
            lease_expire,
        } => Kind::Assignment(pb::MemberAssignment {
            assignments: held.into_iter().map(assignment_to_pb).collect(),
            lease: Some(duration_pb(lease_ms)),
            lease_expire_time: Some(micros_to_pb(lease_expire)),
        }),
    };
    pb::ConsumeResponse { kind: Some(kind) }
}

fn member_says(m: std::result::Result<pb::ConsumeRequest, Status>) -> Result<MemberSays> {
    use pb::consume_request::Kind;
    match m {
        Ok(pb::ConsumeRequest {
            kind: Some(Kind::Heartbeat(_)),
        }) => Ok(MemberSays::Heartbeat),
        Ok(pb::ConsumeRequest {
            kind: Some(Kind::Leave(_)),
        }) => Ok(MemberSays::Leave),
        Ok(pb::ConsumeRequest {
            kind: Some(Kind::Join(_)),
        }) => Err(Error::invalid(
            "join",
            "is only the first message of a stream",
        )),
        Ok(pb::ConsumeRequest { kind: None }) => Err(Error::invalid(
            "kind",
            "a message must be a heartbeat or a leave",
        )),
        // The client went away mid-message: the stream ends.
        Err(s) => Err(Error::Unavailable(s.message().to_owned())),
    }
}

fn join_from_pb(j: pb::ConsumeJoin, identity: Actor) -> Result<Join> {
    let (consumer, member, spec) = domain::all((
        Name::parse("join.consumer", &j.consumer),
        domain::parse_member("join.member", &j.member),
        spec_from_pb(j.spec.unwrap_or_default()),
    ))?;
    Ok(Join {
        consumer,
        member,
        spec,
        identity,
    })
}

/// Consume: reads the join, joins, and hands the rest of the stream to a
/// member task.
pub(super) async fn consume(
    svc: &RegistryService,
    req: Request<Streaming<pb::ConsumeRequest>>,
) -> std::result::Result<Response<<RegistryService as ModelRegistryService>::ConsumeStream>, Status>
{
    let identity = actor(&req)?;
    let mut inbound = req.into_inner();
    let first = match tokio::time::timeout(JOIN_WAIT, inbound.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => {
            return Err(Error::invalid("join", "the stream ended before its join").into());
        }
        Ok(Err(s)) => return Err(s),
        Err(_) => return Err(Error::invalid("join", "no join within 30 seconds").into()),
    };
    let Some(pb::consume_request::Kind::Join(join)) = first.kind else {
        return Err(Error::invalid("join", "the first message must be a join").into());
    };
    let join = join_from_pb(join, identity.clone())?;
    let (record, session) = app::join_consumer(&svc.store, join.clone()).await?;
    svc.consumers.poke(record.name.as_str());
    let member = Member {
        consumer: record.name,
        member: join.member,
        session,
        identity,
        lease_ms: record.settings.lease_ms,
    };
    let inbound = Box::pin(inbound.map(member_says));
    let stream = consume::spawn(
        svc.store.clone(),
        svc.consumers.clone(),
        member,
        inbound,
        svc.shutdown.clone(),
    );
    Ok(Response::new(Box::pin(
        stream.map(|item| item.map(to_member_pb).map_err(Status::from)),
    )))
}

fn settle(
    identity: Actor,
    consumer: &str,
    member: &str,
    model: &str,
    sequence: u64,
    epoch: u64,
) -> Result<Settle> {
    let (consumer, member, model) = domain::all((
        Name::parse("consumer", consumer),
        domain::parse_member("member", member),
        Name::parse("model", model),
    ))?;
    if sequence == 0 {
        return Err(Error::invalid("sequence", "must be 1 or more"));
    }
    Ok(Settle {
        consumer,
        member,
        model,
        sequence,
        epoch,
        identity,
    })
}

/// The caller and the delivery an AckEvent or RejectEvent names (`key`
/// picks consumer, member, model, sequence and epoch), and the request.
fn settle_request<R>(
    req: Request<R>,
    key: fn(&R) -> (&str, &str, &str, u64, u64),
) -> Result<(Settle, R)> {
    let identity = actor(&req).map_err(|s| Error::invalid("actor", s.message()))?;
    let r = req.into_inner();
    let (consumer, member, model, sequence, epoch) = key(&r);
    let s = settle(identity, consumer, member, model, sequence, epoch)?;
    Ok((s, r))
}

/// AckEvent.
pub(super) async fn ack(
    svc: &RegistryService,
    req: Request<pb::AckEventRequest>,
) -> Result<pb::AckEventResponse> {
    let (s, _) = settle_request(req, |r| {
        (&r.consumer, &r.member, &r.model, r.sequence, r.epoch)
    })?;
    let (name, member) = (s.consumer.to_string(), s.member.clone());
    app::ack_event(&svc.store, s).await?;
    svc.consumers.poke_member(&name, &member);
    Ok(pb::AckEventResponse {})
}

/// RejectEvent.
pub(super) async fn reject(
    svc: &RegistryService,
    req: Request<pb::RejectEventRequest>,
) -> Result<pb::RejectEventResponse> {
    let (s, r) = settle_request(req, |r| {
        (&r.consumer, &r.member, &r.model, r.sequence, r.epoch)
    })?;
    let (name, member) = (s.consumer.to_string(), s.member.clone());
    let out = app::reject_event(&svc.store, s, r.reason).await?;
    svc.consumers.poke_member(&name, &member);
    Ok(pb::RejectEventResponse {
        dead_lettered: out.dead_lettered,
        redeliver_time: out.redeliver_time.map(micros_to_pb),
        deliveries: out.deliveries as i32,
    })
}

/// GetConsumer.
pub(super) async fn get(
    svc: &RegistryService,
    r: pb::GetConsumerRequest,
) -> Result<pb::GetConsumerResponse> {
    let name = Name::parse("name", &r.name)?;
    let view = app::get_consumer(&svc.store, name.as_str()).await?;
    Ok(pb::GetConsumerResponse {
        consumer: Some(consumer_to_pb(view)),
    })
}

/// ListConsumers.
pub(super) async fn list(
    svc: &RegistryService,
    r: pb::ListConsumersRequest,
) -> Result<pb::ListConsumersResponse> {
    let pager = Pager::new("consumers", "");
    let (size, after) = domain::all((
        domain::parse_page_size("page_size", r.page_size),
        pager.after(&r.page_token),
    ))?;
    let after = after.unwrap_or_default();
    let (views, more) = app::list_consumers(&svc.store, &after, size).await?;
    let (consumers, next_page_token) = pager.page(views, more, consumer_to_pb);
    Ok(pb::ListConsumersResponse {
        consumers,
        next_page_token,
    })
}

/// DeleteConsumer.
pub(super) async fn delete(
    svc: &RegistryService,
    r: pb::DeleteConsumerRequest,
) -> Result<pb::DeleteConsumerResponse> {
    let name = Name::parse("name", &r.name)?;
    app::delete_consumer(&svc.store, &name).await?;
    svc.consumers.poke(name.as_str());
    Ok(pb::DeleteConsumerResponse {})
}

/// ListDeadLetters.
pub(super) async fn dead_letters(
    svc: &RegistryService,
    r: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse> {
    let pager = Pager::new(
        "dead_letters",
        format!("{}\u{1e}{}", r.consumer, r.include_resolved),
    );
    let (name, size, after) = domain::all((
        Name::parse("consumer", &r.consumer),
        domain::parse_page_size("page_size", r.page_size),
        pager.after_key(&r.page_token, |k| k.parse::<u64>().ok()),
    ))?;
    let (rows, more) = app::list_dead_letters(
        &svc.store,
        name.as_str(),
        r.include_resolved,
        after.unwrap_or(0),
        size,
    )
    .await?;
    let (dead_letters, next_page_token) = pager.page(rows, more, dead_letter_to_pb);
    Ok(pb::ListDeadLettersResponse {
        dead_letters,
        next_page_token,
    })
}

/// RetryDeadLetter.
pub(super) async fn retry(
    svc: &RegistryService,
    req: Request<pb::RetryDeadLetterRequest>,
) -> Result<pb::RetryDeadLetterResponse> {
    let who = actor(&req).map_err(|s| Error::invalid("actor", s.message()))?;
    let r = req.into_inner();
    let name = Name::parse("consumer", &r.consumer)?;
    if r.sequence == 0 {
        return Err(Error::invalid("sequence", "must be 1 or more"));
    }
    let d = app::retry_dead_letter(&svc.store, &name, r.sequence, who).await?;
    svc.consumers.poke(name.as_str());
    let (rows, _) =
        app::list_dead_letters(&svc.store, name.as_str(), true, d.sequence - 1, 1).await?;
    let dead_letter = rows.into_iter().next().map(dead_letter_to_pb);
    Ok(pb::RetryDeadLetterResponse { dead_letter })
}
