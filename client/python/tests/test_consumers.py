"""Durable consumers through the Python client (``RegistryClient.consume``) against a real server.

Each test drives the ``Consume`` stream, ``AckEvent``/``RejectEvent`` and the
consumer reads only through ``modelreg_client``. Waits are bounded by
``WAIT`` seconds and end as soon as the awaited state is reached; none of
them is a guess at how long the server takes.
"""

from __future__ import annotations

import signal
import threading
from collections import defaultdict

import grpc
import pytest

from modelreg_client import pb

#: The bound on every wait for something the server does at once.
WAIT = 30.0
#: A lease far longer than any wait: a model that moves within WAIT moved
#: because of a leave or a join, never because a lease ran out.
LONG_LEASE = 300.0
VERSIONS = [pb.EVENT_TYPE_VERSION_REGISTERED]


def make_models(registry, names: list[str]) -> None:
    for name in names:
        registry.create_model(name)


def register(registry, model: str, n: int) -> None:
    for _ in range(n):
        registry.register_version(model, f"s3://models/{model}/")


def expected_sequences(registry, models: list[str]) -> dict[str, list[int]]:
    """The VERSION_REGISTERED events of each model, in log order."""
    out: dict[str, list[int]] = {m: [] for m in models}
    for e in registry.list_events(types=VERSIONS):
        if e.model in out:
            out[e.model].append(e.sequence)
    return out


def next_delivery(consumer, timeout: float = WAIT):
    """The consumer's next delivery, failing the test after ``timeout`` seconds; re-raises what the
    iteration raised."""
    box: list = []

    def take() -> None:
        try:
            box.append(next(consumer))
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread
            box.append(err)

    t = threading.Thread(target=take, daemon=True)
    t.start()
    t.join(timeout)
    assert box, f"no delivery within {timeout}s"
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def test_two_members_share_models_each_event_once_in_model_order(registry):
    """Two members of one consumer over four models: every event is delivered once and acknowledged, each
    model's events arrive in log order, both members get models, and no model is out with both at once."""
    # Arrange: the models exist and both members have joined before any matching event.
    models = [f"model-{i}" for i in range(4)]
    make_models(registry, models)
    a = registry.consume("deploy-prod", member="a", types=VERSIONS, lease=LONG_LEASE)
    b = registry.consume("deploy-prod", member="b", types=VERSIONS, lease=LONG_LEASE)
    for c in (a, b):
        assert c.wait_for_assignment(lambda _held: True, WAIT), f"{c.member} got no assignment"
    live = lambda: {m.member for m in registry.get_consumer("deploy-prod").members}  # noqa: E731
    assert live() == {"a", "b"}

    per_model = 3
    total = per_model * len(models)
    lock = threading.Lock()
    delivered: dict[str, list[int]] = defaultdict(list)
    by_member: dict[str, set[str]] = defaultdict(set)
    out_with: dict[str, str] = {}  # model -> member holding an unacknowledged delivery of it
    overlaps: list[str] = []
    acked = [0]
    done = threading.Event()
    errors: list[BaseException] = []

    def work(consumer) -> None:
        try:
            for d in consumer:
                assert d.attempt == 1, d
                with lock:
                    if d.model in out_with:
                        overlaps.append(f"{d.model}: {out_with[d.model]} and {consumer.member}")
                    out_with[d.model] = consumer.member
                    delivered[d.model].append(d.sequence)
                    by_member[consumer.member].add(d.model)
                    # Cleared before the ack: the server may hand the next event to the other member
                    # as soon as the ack is applied.
                    del out_with[d.model]
                d.ack()
                with lock:
                    acked[0] += 1
                    if acked[0] == total:
                        done.set()
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            errors.append(err)
            done.set()

    workers = [threading.Thread(target=work, args=(c,), daemon=True) for c in (a, b)]
    for w in workers:
        w.start()

    # Act: versions registered round-robin across the models.
    for _ in range(per_model):
        for m in models:
            register(registry, m, 1)
    assert done.wait(WAIT), f"acknowledged {acked[0]} of {total} events: {dict(delivered)}"
    a.close()
    b.close()
    for w in workers:
        w.join(WAIT)

    # Assert
    assert not errors, errors
    state = registry.get_consumer("deploy-prod")
    assert state.lag_events == 0 and all(s.in_flight_sequence == 0 for s in state.assignments)
    assert dict(delivered) == expected_sequences(registry, models)  # once each, in model order
    assert not overlaps
    assert by_member["a"] and by_member["b"], dict(by_member)
    assert not (by_member["a"] & by_member["b"]), "no model changed hands: no member left, no lease ran out"


def test_rejected_event_is_redelivered_then_dead_lettered_and_retried(registry):
    """A rejected event comes again with attempt 2; rejected at max_deliveries it is parked: a DEAD_LETTERED
    event is logged and ListDeadLetters lists it; RetryDeadLetter delivers it again, and its ack resolves it."""
    # Arrange
    make_models(registry, ["fraud"])
    register(registry, "fraud", 1)
    [event] = registry.list_events(types=VERSIONS)
    consumer = registry.consume(
        "evaluator", member="w1", types=VERSIONS, start_after=0, max_deliveries=2, backoff=0, lease=LONG_LEASE
    )
    with consumer:
        # Act: reject twice.
        first = next_delivery(consumer)
        assert (first.sequence, first.attempt, first.max_deliveries) == (event.sequence, 1, 2)
        answer = first.reject("metrics store down")
        assert not answer.dead_lettered and answer.deliveries == 1

        second = next_delivery(consumer)
        assert (second.sequence, second.attempt, second.epoch) == (event.sequence, 2, first.epoch)
        answer = second.reject("metrics store still down")

        # Assert: parked, logged, listed.
        assert answer.dead_lettered and answer.deliveries == 2
        [logged] = registry.list_events(types=[pb.EVENT_TYPE_DEAD_LETTERED])
        assert logged.model == "fraud"
        [parked] = registry.list_dead_letters("evaluator")
        assert parked.event.sequence == event.sequence
        assert parked.state == pb.DEAD_LETTER_STATE_PARKED
        assert parked.deliveries == 2 and parked.reason == "metrics store still down"
        assert parked.dead_letter_sequence == logged.sequence
        assert registry.get_consumer("evaluator").dead_letters == 1

        # Act: retry it.
        retried = registry.retry_dead_letter("evaluator", event.sequence)
        assert retried.state == pb.DEAD_LETTER_STATE_RETRYING
        again = next_delivery(consumer)
        assert (again.sequence, again.attempt) == (event.sequence, 1)
        again.ack()

    # Assert: resolved, and no longer listed without include_resolved.
    assert list(registry.list_dead_letters("evaluator")) == []
    [resolved] = registry.list_dead_letters("evaluator", include_resolved=True)
    assert resolved.state == pb.DEAD_LETTER_STATE_RESOLVED
    assert [e.type for e in registry.list_events(types=[pb.EVENT_TYPE_DEAD_LETTER_RETRIED])] == [
        pb.EVENT_TYPE_DEAD_LETTER_RETRIED
    ]


def test_ack_with_a_stale_epoch_is_failed_precondition(registry):
    """An acknowledgement naming another epoch than the model's assignment is FAILED_PRECONDITION (fencing),
    and leaves the delivery in flight for the right epoch."""
    # Arrange
    make_models(registry, ["fraud"])
    register(registry, "fraud", 1)
    with registry.consume("deploy-prod", member="w1", types=VERSIONS, start_after=0, lease=LONG_LEASE) as c:
        d = next_delivery(c)

        # Act
        wrong = pb.AckEventRequest(
            consumer="deploy-prod", member="w1", model=d.model, sequence=d.sequence, epoch=d.epoch + 1
        )
        with pytest.raises(grpc.RpcError) as err:
            registry.call("AckEvent", wrong)

        # Assert
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        [slot] = registry.get_consumer("deploy-prod").assignments
        assert slot.in_flight_sequence == d.sequence
        d.ack()
        [slot] = registry.get_consumer("deploy-prod").assignments
        assert slot.in_flight_sequence == 0 and slot.acked_sequence == d.sequence


def test_close_leaves_and_the_other_member_takes_over_at_once(registry):
    """close() sends a leave: once it returns the member is gone, the other member holds its models with a new
    epoch and gets their unacknowledged events again (long before the lease could run out), and the
    leaver's stale acknowledgement is FAILED_PRECONDITION."""
    # Arrange: member a holds both models, each with an event out and unacknowledged.
    models = ["fraud", "churn"]
    make_models(registry, models)
    for m in models:
        register(registry, m, 1)
    a = registry.consume("deploy-prod", member="a", types=VERSIONS, start_after=0, lease=LONG_LEASE)
    held_by_a = [next_delivery(a), next_delivery(a)]
    assert {d.model for d in held_by_a} == set(models)
    b = registry.consume("deploy-prod", member="b", types=VERSIONS, lease=LONG_LEASE)
    assert b.wait_for_assignment(lambda _held: True, WAIT)
    assert b.models == set(), "models with an event in flight stay with their member"

    # Act
    a.close()

    # Assert
    assert [m.member for m in registry.get_consumer("deploy-prod").members] == ["b"]
    assert b.wait_for_assignment(lambda held: set(held) == set(models), WAIT), b.assignments
    taken = {d.model: d for d in (next_delivery(b), next_delivery(b))}
    for old in held_by_a:
        new = taken[old.model]
        assert new.sequence == old.sequence and new.epoch > old.epoch
        with pytest.raises(grpc.RpcError) as err:
            old.ack()
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        new.ack()
    assert list(a) == [], "a closed consumer yields nothing more"
    b.close()
    assert registry.get_consumer("deploy-prod").members == []


def test_member_reconnects_after_a_server_restart_keeps_its_model_and_sees_no_duplicate(server, registry):
    """After the server is killed and restarted, the member reconnects under its id within its lease, keeps
    its model (same epoch, so its acknowledgement still counts), and the event the server sends again is not
    handed out a second time: the next delivery is the model's next event."""
    # Arrange
    make_models(registry, ["fraud"])
    register(registry, "fraud", 2)
    first_seq, second_seq = expected_sequences(registry, ["fraud"])["fraud"]
    with registry.consume("deploy-prod", member="w1", types=VERSIONS, start_after=0, lease=LONG_LEASE) as c:
        first = next_delivery(c)
        assert first.sequence == first_seq
        seen = c.assignment_count

        # Act
        server.stop(signal.SIGKILL)
        server.start()
        assert c.wait_for_assignment(lambda held: c.assignment_count > seen and "fraud" in held, WAIT)
        assert c.reconnects >= 1
        assert c.assignments["fraud"].epoch == first.epoch
        first.ack()

        # Assert
        second = next_delivery(c)
        assert (second.sequence, second.attempt) == (second_seq, 1)
        second.ack()


def test_heartbeats_keep_the_lease_while_a_delivery_is_worked_on(registry):
    """With a one-second lease, a member that holds a delivery across several leases keeps its model: the
    client's heartbeats (a third of the lease apart) renew it, so its late acknowledgement still counts."""
    # Arrange
    make_models(registry, ["fraud"])
    register(registry, "fraud", 1)
    with registry.consume("deploy-prod", member="w1", types=VERSIONS, start_after=0, lease=1.0) as c:
        d = next_delivery(c)
        assert c.lease == 1.0
        seen = c.assignment_count

        # Act: the server answers each heartbeat with an assignment; nine of them span three leases.
        assert c.wait_for_assignment(lambda _held: c.assignment_count >= seen + 9, WAIT)

        # Assert
        state = registry.get_consumer("deploy-prod")
        assert [m.member for m in state.members] == ["w1"]
        assert [(s.member, s.epoch) for s in state.assignments] == [("w1", d.epoch)]
        d.ack()


def test_list_consumers_pages_and_delete_ends_the_members_stream_with_not_found(registry):
    """list_consumers follows the pages (one consumer a page here) in name order; delete_consumer removes one,
    and its live member's iteration raises NOT_FOUND instead of waiting forever."""
    # Arrange
    members = [registry.consume(name, member="w1", lease=LONG_LEASE) for name in ("c-3", "c-1", "c-2")]
    for c in members:
        assert c.wait_for_assignment(lambda _held: True, WAIT)

    # Act
    listed = [c.name for c in registry.list_consumers(page_size=1)]
    registry.delete_consumer("c-3")

    # Assert
    assert listed == ["c-1", "c-2", "c-3"]
    with pytest.raises(grpc.RpcError) as err:
        next_delivery(members[0])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert [c.name for c in registry.list_consumers()] == ["c-1", "c-2"]
    for c in members[1:]:
        c.close()
