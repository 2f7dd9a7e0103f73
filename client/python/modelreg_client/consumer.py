"""A member of a durable consumer: the ``Consume`` stream kept alive, as an iterator of deliveries.

``RegistryClient.consume()`` makes a ``Consumer``; this module owns what the
raw bidirectional stream leaves to every caller:

- the lease: the request side of the stream is a generator over a
  thread-safe queue that sends a heartbeat whenever a third of the lease
  passes without another message;
- reconnecting: after ``UNAVAILABLE`` the stream is opened again under the
  same member id, with a capped, jittered backoff, so the member keeps its
  models (within its lease) and the server sends its unacknowledged
  deliveries again;
- deduplication: such a re-sent delivery that was already handed out and is
  not yet settled is dropped, so the caller sees each delivery once;
- settling: ``Delivery.ack()`` and ``Delivery.reject()`` call ``AckEvent`` /
  ``RejectEvent`` with the delivery's epoch (the server's fence);
- a clean stop: ``close()`` sends a leave and waits for the server to end the
  stream, so the member's models go to the others at once.

It must not decide anything the server decides (assignment, ordering,
retries): it forwards the server's deliveries in the order they arrive.
"""

from __future__ import annotations

import queue
import random
import threading
from collections import deque
from typing import Iterator, Optional

import grpc

from . import pb

__all__ = ["Consumer", "Delivery"]

#: The server's lease when the spec gives none (ConsumerSpec.lease).
DEFAULT_LEASE = 10.0

# Markers on the request queue, next to ConsumeRequest messages.
_END = object()  # ends the request stream (half-close)

# Markers on the delivery queue, next to Delivery objects.
_DONE = object()  # the stream ended for good: iteration stops


class Delivery:
    """One event handed to this member; settle it with ``ack()`` or ``reject(reason)``.

    ``epoch`` is the model's assignment epoch when it was delivered: the
    settle calls carry it, and the server answers ``FAILED_PRECONDITION``
    when the model has changed hands since (fencing). Pass it, with
    ``fence()``, to a ``ReportDeployment`` made for this delivery.
    """

    def __init__(self, consumer: "Consumer", message: pb.ConsumerDelivery) -> None:
        #: The event.
        self.event: pb.RegistryEvent = message.event
        #: The epoch of the model's assignment at delivery.
        self.epoch: int = message.epoch
        #: 1 for the first delivery of this event, 2 for the next, and so on.
        self.attempt: int = message.delivery_attempt
        #: The consumer's max_deliveries: at this attempt, a reject parks the event.
        self.max_deliveries: int = message.max_deliveries
        self._consumer = consumer
        self._settled = False

    @property
    def model(self) -> str:
        """The event's model."""
        return self.event.model

    @property
    def sequence(self) -> int:
        """The event's sequence in the log."""
        return self.event.sequence

    @property
    def settled(self) -> bool:
        """True once ``ack()`` or ``reject()`` was answered by the server (OK or FAILED_PRECONDITION)."""
        return self._settled

    @property
    def key(self) -> tuple[str, int, int, int]:
        """What identifies this delivery: ``(model, sequence, epoch, attempt)``."""
        return (self.model, self.sequence, self.epoch, self.attempt)

    def fence(self) -> pb.ConsumerFence:
        """The ``ConsumerFence`` naming this delivery, for a ``ReportDeployment`` made for it."""
        c = self._consumer
        return pb.ConsumerFence(consumer=c.name, member=c.member, sequence=self.sequence, epoch=self.epoch)

    def ack(self) -> None:
        """Acknowledges the event (``AckEvent``): the model's next event comes next.

        Raises ``grpc.RpcError``: ``FAILED_PRECONDITION`` when the model
        changed hands since (another member now has it, and this event again).
        Safe to repeat after an ``UNAVAILABLE``: the server accepts a repeat
        of an acknowledgement it already applied.
        """
        c = self._consumer
        req = pb.AckEventRequest(
            consumer=c.name, member=c.member, model=self.model, sequence=self.sequence, epoch=self.epoch
        )
        self._settle("AckEvent", req, acked=True)

    def reject(self, reason: str) -> pb.RejectEventResponse:
        """Rejects the event (``RejectEvent``) with ``reason`` (1 byte to 4 KiB).

        It is delivered again after the consumer's backoff, or parked as a
        dead letter when this was delivery ``max_deliveries``; the response
        says which (``dead_lettered``, ``redeliver_time``). Raises
        ``grpc.RpcError`` as ``ack()`` does.
        """
        c = self._consumer
        req = pb.RejectEventRequest(
            consumer=c.name,
            member=c.member,
            model=self.model,
            sequence=self.sequence,
            epoch=self.epoch,
            reason=reason,
        )
        return self._settle("RejectEvent", req, acked=False)

    def _settle(self, method: str, request, *, acked: bool):
        try:
            response = self._consumer._client.call(method, request)
        except grpc.RpcError as err:
            # FAILED_PRECONDITION is final for this delivery: the model moved on.
            if err.code() == grpc.StatusCode.FAILED_PRECONDITION:
                self._settled = True
                self._consumer._forget(self, acked=False)
            raise
        self._settled = True
        self._consumer._forget(self, acked=acked)
        return response

    def __repr__(self) -> str:
        return (
            f"Delivery(model={self.model!r}, sequence={self.sequence}, epoch={self.epoch}, "
            f"attempt={self.attempt}/{self.max_deliveries}, type={pb.EventType.Name(self.event.type)})"
        )


class Consumer(Iterator[Delivery]):
    """One member of a durable consumer; iterate it for ``Delivery`` objects.

    A reader thread keeps the ``Consume`` stream open (reconnecting after
    ``UNAVAILABLE``) and queues what the server sends; iteration blocks for
    the next delivery and ends after ``close()``. Any other error of the
    stream (``NOT_FOUND`` when the consumer is deleted,
    ``FAILED_PRECONDITION`` when another stream joined as the same member or
    the spec differs from the consumer's, ``PERMISSION_DENIED``) is raised
    from the iteration. ``with`` closes it.

    ``assignments`` (model name -> ``ConsumerAssignment``) and ``lease`` are
    the last ``MemberAssignment`` the server sent; ``wait_for_assignment()``
    blocks until it satisfies a condition.
    """

    def __init__(
        self,
        client,
        name: str,
        member: str,
        spec: pb.ConsumerSpec,
        *,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        #: The consumer's name.
        self.name = name
        #: This member's id; the same across reconnects, so the models stay.
        self.member = member
        #: The spec sent with every join.
        self.spec = spec
        #: The models this member holds, by name, from the last assignment.
        self.assignments: dict[str, pb.ConsumerAssignment] = {}
        #: The consumer's lease in seconds, from the last assignment (until
        #: then: the spec's, or the server's default).
        self.lease: float = spec.lease.ToTimedelta().total_seconds() if spec.HasField("lease") else DEFAULT_LEASE
        #: How many MemberAssignment messages the server has sent.
        self.assignment_count = 0
        #: How many times the stream was opened again after UNAVAILABLE.
        self.reconnects = 0
        self._client = client
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._closed = threading.Event()
        self._lock = threading.Condition()
        # Guarded by _lock: the open call and its request queue.
        self._call = None
        self._requests: Optional[queue.Queue] = None
        # Guarded by _lock: deliveries handed out and not settled, by key; and
        # the (model, sequence, epoch) of recent acknowledgements, so a resend
        # racing an acknowledgement is not handed out again.
        self._unsettled: set[tuple[str, int, int, int]] = set()
        self._acked: deque[tuple[str, int, int]] = deque(maxlen=1024)
        self._deliveries: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, name=f"consume-{name}-{member}", daemon=True)
        self._reader.start()

    # -- iteration ---------------------------------------------------------

    def __iter__(self) -> "Consumer":
        return self

    def __next__(self) -> Delivery:
        while True:
            item = self._deliveries.get()
            if item is _DONE:
                self._deliveries.put(_DONE)  # every later next() stops too
                raise StopIteration
            if isinstance(item, BaseException):
                self._deliveries.put(_DONE)
                raise item
            if self._closed.is_set():
                continue  # closed meanwhile: nothing more is handed out
            if self._hand_out(item):
                return item

    def __enter__(self) -> "Consumer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def models(self) -> set[str]:
        """The names of the models this member holds now."""
        with self._lock:
            return set(self.assignments)

    def wait_for_assignment(self, predicate, timeout: Optional[float] = None) -> bool:
        """Blocks until the server has sent an assignment and
        ``predicate(assignments)`` is true of the last one; returns False
        after ``timeout`` seconds."""
        with self._lock:
            return self._lock.wait_for(
                lambda: self.assignment_count > 0 and predicate(dict(self.assignments)), timeout
            )

    def close(self, timeout: float = 10.0) -> None:
        """Leaves the consumer: sends a ``ConsumeLeave`` and waits (at most
        ``timeout`` seconds) for the server to end the stream, by which time
        this member's models are the other members' and its unacknowledged
        events will be delivered to them. Iteration then stops. Idempotent;
        callable from any thread."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            requests, call = self._requests, self._call
        if requests is not None:
            requests.put(pb.ConsumeRequest(leave=pb.ConsumeLeave()))
            requests.put(_END)
        self._reader.join(timeout)
        if call is not None:
            call.cancel()  # a no-op once the server has ended the stream
        self._reader.join(timeout)
        self._deliveries.put(_DONE)

    # -- the stream --------------------------------------------------------

    def _request_stream(self, requests: queue.Queue) -> Iterator[pb.ConsumeRequest]:
        """The request side of one stream: the join, then whatever is queued,
        with a heartbeat whenever a third of the lease passes in silence."""
        yield pb.ConsumeRequest(join=pb.ConsumeJoin(consumer=self.name, member=self.member, spec=self.spec))
        while True:
            try:
                item = requests.get(timeout=max(self.lease / 3, 0.05))
            except queue.Empty:
                yield pb.ConsumeRequest(heartbeat=pb.ConsumeHeartbeat())
                continue
            if item is _END:
                return
            yield item

    def _open(self):
        requests: queue.Queue = queue.Queue()
        with self._lock:
            if self._closed.is_set():
                return None
            self._requests = requests
            self._call = self._client.stub.Consume(
                self._request_stream(requests), metadata=self._client.metadata
            )
            return self._call

    def _read(self) -> None:
        """The reader thread: opens the stream, reads it, reconnects after
        UNAVAILABLE; queues deliveries and errors for the iterating thread."""
        failures = 0
        try:
            while not self._closed.is_set():
                call = self._open()
                if call is None:
                    return
                try:
                    for message in call:
                        failures = 0
                        kind = message.WhichOneof("kind")
                        if kind == "assignment":
                            self._assigned(message.assignment)
                        elif kind == "delivery":
                            self._deliveries.put(Delivery(self, message.delivery))
                    return  # the server ended the stream: after our leave
                except grpc.RpcError as err:
                    if self._closed.is_set():
                        return
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        self._deliveries.put(err)
                        return
                    failures += 1
                    self.reconnects += 1
                    backoff = min(self._max_backoff, self._initial_backoff * 2 ** (failures - 1))
                    # Jitter spreads the reconnects of many members after a restart.
                    if self._closed.wait(backoff * random.uniform(0.5, 1.0)):
                        return
                finally:
                    with self._lock:
                        if self._requests is not None:
                            self._requests.put(_END)  # frees the old request generator
        except Exception as err:  # pragma: no cover - a bug here must not hang the iterator
            self._deliveries.put(err)
        finally:
            self._deliveries.put(_DONE)

    def _assigned(self, assignment: pb.MemberAssignment) -> None:
        lease = assignment.lease.ToTimedelta().total_seconds() if assignment.HasField("lease") else self.lease
        with self._lock:
            heartbeat_sooner = lease < self.lease
            self.lease = lease
            self.assignments = {a.model: a for a in assignment.assignments}
            self.assignment_count += 1
            # A delivery of a model this member no longer holds under the same
            # epoch can never be settled: forget it.
            self._unsettled = {
                k for k in self._unsettled if k[0] in self.assignments and self.assignments[k[0]].epoch == k[2]
            }
            if heartbeat_sooner and self._requests is not None:
                # The generator waits with the old, longer interval: renew now.
                self._requests.put(pb.ConsumeRequest(heartbeat=pb.ConsumeHeartbeat()))
            self._lock.notify_all()

    def _hand_out(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` is new to the caller (and then it counts as handed out)."""
        with self._lock:
            if delivery.key in self._unsettled or delivery.key[:3] in self._acked:
                return False  # sent again after a reconnect: the caller has it already
            self._unsettled.add(delivery.key)
            return True

    def _forget(self, delivery: Delivery, *, acked: bool) -> None:
        with self._lock:
            self._unsettled.discard(delivery.key)
            if acked:
                self._acked.append(delivery.key[:3])
