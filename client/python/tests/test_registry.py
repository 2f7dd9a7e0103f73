"""End-to-end tests of the generated Python client against a real modelreg-server.

Every call goes through ``modelreg_client`` (the stubs generated from
``proto/`` plus the thin layer over them); the server is the cargo-built
binary on a fresh database (see conftest.py).
"""

from __future__ import annotations

import math
import signal
import threading
import uuid
from typing import Callable, Optional

import grpc
import pytest
from google.rpc import error_details_pb2

import modelreg_client
from modelreg_client import pb

MODEL = "fraud-detector"
# Lifecycle tests use a model whose policy needs no approval; the governed
# path has a test of its own.
UNGOVERNED = pb.Policy(approval_required_for=pb.StageList())


def unique_id() -> str:
    return uuid.uuid4().hex


# -- models and versions -------------------------------------------------


def test_create_model_then_read_it_back(registry):
    """A created model reads back with its fields and the caller's identity, and is listed."""
    # Act
    created = registry.create_model(MODEL, description="Card fraud classifier", tags={"team": "risk"})
    fetched = registry.get_model(MODEL)

    # Assert
    assert created.name == MODEL
    assert fetched.description == "Card fraud classifier"
    assert dict(fetched.tags) == {"team": "risk"}
    assert fetched.created_by == "alice"
    assert fetched.latest_version == 0 and fetched.production_version == 0
    assert [m.name for m in registry.list_models()] == [MODEL]


def test_register_version_retry_with_same_request_id_returns_the_same_version(registry):
    """A retried RegisterVersion with the same request_id returns the original version and creates no second one."""
    # Arrange
    registry.create_model(MODEL, policy=UNGOVERNED)
    request_id = unique_id()

    # Act
    first = registry.register_version(
        MODEL, "s3://models/fraud/1/", request_id=request_id, training_metrics={"accuracy": 0.93}
    )
    retry = registry.register_version(
        MODEL, "s3://models/fraud/1/", request_id=request_id, training_metrics={"accuracy": 0.93}
    )

    # Assert
    assert first.version == 1
    assert retry.version == first.version
    assert retry.create_time == first.create_time
    assert [v.version for v in registry.list_versions(MODEL)] == [1]
    registered = list(registry.list_events(model=MODEL, types=[pb.EVENT_TYPE_VERSION_REGISTERED]))
    assert len(registered) == 1
    # A different request id is a different registration: the dedup is by id, not by content.
    other = registry.register_version(MODEL, "s3://models/fraud/1/", request_id=unique_id())
    assert other.version == 2


def test_stage_transitions_and_a_second_production_version_archives_the_first(registry):
    """NONE→STAGING→PRODUCTION works, and promoting version 2 archives version 1 with cause SUPERSEDED."""
    # Arrange
    registry.create_model(MODEL, policy=UNGOVERNED)
    v1 = registry.register_version(MODEL, "s3://models/fraud/1/")
    assert v1.stage == pb.STAGE_NONE

    # Act: version 1 through staging into production.
    staged = registry.transition_stage(MODEL, v1.version, pb.STAGE_STAGING, comment="evaluate")
    promoted = registry.transition_stage(MODEL, v1.version, pb.STAGE_PRODUCTION, comment="ship it")

    # Assert
    assert staged.HasField("version") and not staged.HasField("request")
    assert staged.version.stage == pb.STAGE_STAGING
    assert promoted.version.stage == pb.STAGE_PRODUCTION
    assert registry.get_model(MODEL).production_version == 1

    # Act: version 2, registered straight into staging, then into production.
    v2 = registry.register_version(MODEL, "s3://models/fraud/2/", target_stage=pb.STAGE_STAGING)
    assert v2.stage == pb.STAGE_STAGING
    registry.transition_stage(MODEL, v2.version, pb.STAGE_PRODUCTION)

    # Assert: exactly one production version; version 1 archived because it was superseded.
    assert registry.get_version(MODEL, 1).stage == pb.STAGE_ARCHIVED
    assert registry.get_version(MODEL, 2).stage == pb.STAGE_PRODUCTION
    assert registry.get_model(MODEL).production_version == 2
    assert [v.version for v in registry.list_versions(MODEL, stage=pb.STAGE_PRODUCTION)] == [2]
    changes = [
        (e.version, e.from_stage, e.to_stage, e.cause)
        for e in registry.list_events(model=MODEL, types=[pb.EVENT_TYPE_STAGE_CHANGED])
    ]
    assert (1, pb.STAGE_PRODUCTION, pb.STAGE_ARCHIVED, pb.STAGE_CHANGE_CAUSE_SUPERSEDED) in changes
    verified = registry.verify_audit_log()
    assert verified.ok
    # The head, passed back as an anchor, holds; a forged hash at it does not.
    head = (verified.head.sequence, verified.head.hash)
    assert registry.verify_audit_log(anchors=[head]).ok
    forged = registry.verify_audit_log(anchors=[(head[0], "0" * 64)])
    assert not forged.ok and forged.first_bad_sequence == head[0]


def test_illegal_move_is_failed_precondition_and_changes_nothing(registry):
    """A move the lifecycle forbids (NONE→PRODUCTION) is FAILED_PRECONDITION with a PreconditionFailure
    naming the version, and leaves the version alone."""
    registry.create_model(MODEL, policy=UNGOVERNED)
    v1 = registry.register_version(MODEL, "s3://models/fraud/1/")
    before = len(list(registry.list_events()))

    with pytest.raises(grpc.RpcError) as caught:
        registry.transition_stage(MODEL, v1.version, pb.STAGE_PRODUCTION)

    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = modelreg_client.detail(caught.value, error_details_pb2.PreconditionFailure)
    assert failure is not None and [v.subject for v in failure.violations] == [f"{MODEL}/1"]
    assert registry.get_version(MODEL, 1).stage == pb.STAGE_NONE
    assert len(list(registry.list_events())) == before


# -- errors --------------------------------------------------------------


def test_invalid_model_name_is_invalid_argument_with_a_bad_request_violation_on_name(registry):
    """A bad model name is INVALID_ARGUMENT whose google.rpc.BadRequest names the field `name`, and nothing is created."""
    with pytest.raises(grpc.RpcError) as caught:
        registry.create_model("Not A Valid Name!")

    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = modelreg_client.field_violations(err)
    assert [v.field for v in violations] == ["name"]
    assert violations[0].description  # a human explanation is present
    assert list(registry.list_models()) == []
    assert list(registry.list_events()) == []


def test_every_bad_field_of_a_request_is_reported_at_once(registry):
    """A RegisterVersion with a missing artifact URI and a NaN metric reports both fields in one BadRequest."""
    registry.create_model(MODEL, policy=UNGOVERNED)

    with pytest.raises(grpc.RpcError) as caught:
        registry.register_version(MODEL, "", training_metrics={"accuracy": math.nan})

    err = caught.value
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    fields = [v.field for v in modelreg_client.field_violations(err)]
    assert "artifact_uri" in fields
    assert any(f.startswith("training_metrics") for f in fields), fields
    assert list(registry.list_versions(MODEL)) == []


def test_missing_model_is_not_found_without_bad_request_details(registry):
    """NOT_FOUND names the missing resource in a ResourceInfo, and the decoder finds no field violations on it."""
    with pytest.raises(grpc.RpcError) as caught:
        registry.get_model("no-such-model")

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert modelreg_client.field_violations(caught.value) == []
    info = modelreg_client.detail(caught.value, error_details_pb2.ResourceInfo)
    assert info is not None and info.resource_name == "no-such-model"


# -- watch ---------------------------------------------------------------


class Collector:
    """Drains a Watch on a background thread so the test can wait on what arrived."""

    def __init__(self, watch: modelreg_client.Watch) -> None:
        self.watch = watch
        self.items: list[pb.WatchTransitionsResponse] = []
        self.error: Optional[BaseException] = None
        self.finished = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        try:
            for item in self.watch:
                with self._cond:
                    self.items.append(item)
                    self._cond.notify_all()
        except BaseException as err:  # reported by the test, not lost in the thread
            self.error = err
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def events(self) -> list[pb.RegistryEvent]:
        with self._cond:
            return [i.event for i in self.items if i.WhichOneof("kind") == "event"]

    def wait_for(self, predicate: Callable[[list], bool], timeout: float = 30.0) -> None:
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self.items) or self.finished, timeout)
            if self.error is not None:
                raise AssertionError(f"watch failed: {self.error!r}") from self.error
            assert ok and predicate(self.items), f"watch did not get there in {timeout}s; finished={self.finished}"

    def wait_caught_up(self, sequence: int, timeout: float = 30.0) -> None:
        """Waits for a heartbeat bookmarking ``sequence``: every matching event up to it was sent."""
        self.wait_for(
            lambda items: any(
                i.WhichOneof("kind") == "heartbeat" and i.heartbeat.sequence >= sequence for i in items
            ),
            timeout,
        )

    def stop(self) -> None:
        self.watch.cancel()
        self._thread.join(timeout=10)
        assert not self._thread.is_alive(), "watch did not stop after cancel()"


def last_sequence(registry) -> int:
    events = list(registry.list_events())
    return events[-1].sequence if events else 0


def assert_same_events(watched: list[pb.RegistryEvent], logged: list[pb.RegistryEvent]) -> None:
    """The watch delivered exactly the log: same sequences, in order, no gap, no duplicate."""
    got = [e.sequence for e in watched]
    want = [e.sequence for e in logged]
    assert len(got) == len(set(got)), f"duplicates in watch: {got}"
    assert got == want, f"watch {got} != ListEvents {want}"
    assert [e.hash for e in watched] == [e.hash for e in logged]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_watch_resumes_after_server_restart_without_gap_or_duplicate(server, registry, stop_signal):
    """A watch whose server is stopped (gracefully or killed) and restarted on the same database reconnects
    by itself from its last sequence and delivers exactly the events of ListEvents: no gap, no duplicate,
    including events committed while it was disconnected."""
    # Arrange: history before the watch starts, and a watch replaying from the beginning.
    registry.create_model(MODEL, policy=UNGOVERNED)
    registry.register_version(MODEL, "s3://models/fraud/1/", target_stage=pb.STAGE_STAGING)
    collector = Collector(registry.watch(models=[MODEL], after_sequence=0, initial_backoff=0.05, max_backoff=0.5))
    collector.wait_caught_up(last_sequence(registry))
    registry.transition_stage(MODEL, 1, pb.STAGE_PRODUCTION)
    collector.wait_caught_up(last_sequence(registry))
    seen_before_restart = len(collector.events())

    # Act: stop the server under the stream, start it again on the same port and database,
    # and commit events at once, while the watch is still reconnecting.
    code = server.stop(stop_signal)
    if stop_signal == signal.SIGTERM:
        assert code == 0, f"graceful shutdown exited {code}:\n{server.log()}"
    server.start()
    registry.register_version(MODEL, "s3://models/fraud/2/", target_stage=pb.STAGE_STAGING)
    registry.transition_stage(MODEL, 2, pb.STAGE_PRODUCTION)
    registry.set_alias(MODEL, "champion", 2)
    collector.wait_caught_up(last_sequence(registry))
    collector.stop()

    # Assert
    assert collector.watch.reconnects >= 1
    assert seen_before_restart >= 4
    assert_same_events(collector.events(), list(registry.list_events(model=MODEL)))


def test_cancelled_watch_resumed_with_after_sequence_has_no_gap_or_duplicate(registry):
    """Cancelling a watch and opening a new one with after_sequence = the old cursor yields, together,
    exactly the events of ListEvents, even with events committed between the two."""
    # Arrange
    registry.create_model(MODEL, policy=UNGOVERNED)
    registry.register_version(MODEL, "s3://models/fraud/1/")
    first = Collector(registry.watch(models=[MODEL], after_sequence=0))
    first.wait_caught_up(last_sequence(registry))

    # Act: cancel, change things while nobody watches, resume from the saved cursor.
    first.stop()
    cursor = first.watch.cursor
    assert cursor == last_sequence(registry)
    registry.transition_stage(MODEL, 1, pb.STAGE_STAGING)
    registry.register_version(MODEL, "s3://models/fraud/2/", target_stage=pb.STAGE_STAGING)
    second = Collector(registry.watch(models=[MODEL], after_sequence=cursor))
    second.wait_caught_up(last_sequence(registry))
    registry.transition_stage(MODEL, 1, pb.STAGE_PRODUCTION)  # and one live event
    second.wait_caught_up(last_sequence(registry))
    second.stop()

    # Assert
    assert first.error is None and second.error is None
    assert_same_events(first.events() + second.events(), list(registry.list_events(model=MODEL)))


def test_watch_without_after_sequence_starts_at_the_end_of_the_log(registry):
    """With after_sequence absent the stream skips history: its first message is a heartbeat at the
    current end, and only events committed afterwards arrive."""
    registry.create_model(MODEL, policy=UNGOVERNED)
    registry.register_version(MODEL, "s3://models/fraud/1/")
    end = last_sequence(registry)

    collector = Collector(registry.watch(models=[MODEL]))
    collector.wait_caught_up(end)
    registry.transition_stage(MODEL, 1, pb.STAGE_STAGING)
    collector.wait_caught_up(end + 1)
    collector.stop()

    first = collector.items[0]
    assert first.WhichOneof("kind") == "heartbeat" and first.heartbeat.sequence == end
    assert [e.sequence for e in collector.events()] == [end + 1]


def test_watch_filters_by_type_and_target_stage(registry):
    """types and to_stages narrow the stream to STAGE_CHANGED into STAGING, and heartbeats still advance the cursor."""
    registry.create_model(MODEL, policy=UNGOVERNED)
    registry.register_version(MODEL, "s3://models/fraud/1/", target_stage=pb.STAGE_STAGING)
    registry.transition_stage(MODEL, 1, pb.STAGE_PRODUCTION)
    registry.register_version(MODEL, "s3://models/fraud/2/", target_stage=pb.STAGE_STAGING)
    end = last_sequence(registry)

    watch = registry.watch(
        models=[MODEL], types=[pb.EVENT_TYPE_STAGE_CHANGED], to_stages=[pb.STAGE_STAGING], after_sequence=0
    )
    collector = Collector(watch)
    collector.wait_caught_up(end)
    collector.stop()

    events = collector.events()
    assert [(e.version, e.to_stage) for e in events] == [(1, pb.STAGE_STAGING), (2, pb.STAGE_STAGING)]
    assert all(e.type == pb.EVENT_TYPE_STAGE_CHANGED for e in events)
    assert watch.cursor == end  # past the last matching event, thanks to the heartbeat


# -- governance ------------------------------------------------------------


def test_production_needs_a_second_person_by_default(server, registry):
    """With the default policy a promotion waits as a pending request; its requester cannot approve it
    (FAILED_PRECONDITION with a PreconditionFailure naming SELF_APPROVAL); another person's approval
    applies it."""
    # Arrange
    registry.create_model(MODEL)
    v = registry.register_version(MODEL, "s3://models/fraud/1/", target_stage=pb.STAGE_STAGING)

    # Act
    asked = registry.transition_stage(MODEL, v.version, pb.STAGE_PRODUCTION, comment="ship it")
    with pytest.raises(grpc.RpcError) as refused:
        registry.approve_transition(asked.request.id)
    with modelreg_client.connect(server.address, actor="bob") as bob:
        approved = bob.approve_transition(asked.request.id, comment="checked the metrics")

    # Assert
    assert not asked.HasField("version") and asked.request.status == pb.TRANSITION_REQUEST_STATUS_PENDING
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    failure = modelreg_client.detail(refused.value, error_details_pb2.PreconditionFailure)
    assert [x.type for x in failure.violations] == ["SELF_APPROVAL"]
    assert approved.request.status == pb.TRANSITION_REQUEST_STATUS_APPROVED
    assert approved.version.stage == pb.STAGE_PRODUCTION
    assert [r.id for r in registry.list_transition_requests(model=MODEL)] == [asked.request.id]
    last = list(registry.list_events(model=MODEL))[-1]
    assert (last.actor, last.cause) == ("bob", pb.STAGE_CHANGE_CAUSE_APPROVAL)
