//! A member of a durable consumer driven by hand over the raw `Consume`
//! stream, for tests that need a consumer in a given state: a live member,
//! a delivery in hand, a dead letter parked.

use std::time::Duration;

use modelreg_client::{RegistryClient, pb};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// How long a test waits for a delivery before it fails.
const DELIVERY_WAIT: Duration = Duration::from_secs(30);

/// One member's open `Consume` stream: the member stays live while this is
/// held (its lease is the longest a spec may ask for, so no heartbeat is due
/// within a test).
pub struct Member {
    /// The consumer it joined.
    pub consumer: String,
    /// Its member id.
    pub member: String,
    /// What it sends; dropping it ends the stream.
    pub requests: mpsc::Sender<pb::ConsumeRequest>,
    /// What the server sends it.
    pub responses: tonic::Streaming<pb::ConsumeResponse>,
}

/// The spec of a consumer that reads `model`'s VERSION_REGISTERED events
/// from the start of the log and parks an event at its first rejection.
pub fn parks_at_first_rejection(model: &str) -> pb::ConsumerSpec {
    pb::ConsumerSpec {
        models: vec![model.to_owned()],
        types: vec![pb::EventType::VersionRegistered as i32],
        start_after: Some(0),
        max_deliveries: 1,
        lease: Some(prost_types::Duration {
            seconds: 300,
            nanos: 0,
        }),
        ..Default::default()
    }
}

impl Member {
    /// Joins `consumer` as `member` with `spec`, as the identity `client` calls as.
    pub async fn join(
        client: &mut RegistryClient,
        consumer: &str,
        member: &str,
        spec: pb::ConsumerSpec,
    ) -> Member {
        let (requests, rx) = mpsc::channel(8);
        let join = pb::ConsumeRequest {
            kind: Some(pb::consume_request::Kind::Join(pb::ConsumeJoin {
                consumer: consumer.to_owned(),
                member: member.to_owned(),
                spec: Some(spec),
            })),
        };
        requests.send(join).await.expect("queue the join");
        let responses = client
            .consume(ReceiverStream::new(rx))
            .await
            .expect("Consume opens")
            .into_inner();
        Member {
            consumer: consumer.to_owned(),
            member: member.to_owned(),
            requests,
            responses,
        }
    }

    /// The next delivery, skipping assignment messages.
    pub async fn next_delivery(&mut self) -> pb::ConsumerDelivery {
        let wait = async {
            loop {
                let msg = self
                    .responses
                    .message()
                    .await
                    .expect("the Consume stream stays healthy")
                    .expect("the Consume stream stays open");
                if let Some(pb::consume_response::Kind::Delivery(d)) = msg.kind {
                    return d;
                }
            }
        };
        tokio::time::timeout(DELIVERY_WAIT, wait)
            .await
            .expect("a delivery arrives")
    }

    /// Rejects delivery `d` with `reason`.
    pub async fn reject(
        &self,
        client: &mut RegistryClient,
        d: &pb::ConsumerDelivery,
        reason: &str,
    ) -> pb::RejectEventResponse {
        let event = d.event.as_ref().expect("the delivered event");
        client
            .reject_event(pb::RejectEventRequest {
                consumer: self.consumer.clone(),
                member: self.member.clone(),
                model: event.model.clone(),
                sequence: event.sequence,
                epoch: d.epoch,
                reason: reason.to_owned(),
            })
            .await
            .expect("RejectEvent")
            .into_inner()
    }
}

/// Joins `consumer` as member `m1` reading [`parks_at_first_rejection`] of
/// `model` (which must exist), registers a version of it, and rejects its
/// delivery with `reason`: the event is parked as a dead letter, and the
/// model's later events wait behind it. Returns the member (keep it to keep
/// it live) and the parked event's sequence.
pub async fn park_dead_letter(
    client: &mut RegistryClient,
    consumer: &str,
    model: &str,
    reason: &str,
) -> (Member, u64) {
    let spec = parks_at_first_rejection(model);
    let mut member = Member::join(client, consumer, "m1", spec).await;
    crate::register(client, model, pb::Stage::None).await;
    let delivery = member.next_delivery().await;
    let rejected = member.reject(client, &delivery, reason).await;
    assert!(rejected.dead_lettered, "{rejected:?}");
    let sequence = delivery.event.expect("the delivered event").sequence;
    (member, sequence)
}

/// The dead letters of `consumer`, resolved ones included.
pub async fn dead_letters(client: &mut RegistryClient, consumer: &str) -> Vec<pb::DeadLetter> {
    client
        .list_dead_letters(pb::ListDeadLettersRequest {
            consumer: consumer.to_owned(),
            include_resolved: true,
            ..Default::default()
        })
        .await
        .expect("ListDeadLetters")
        .into_inner()
        .dead_letters
}
