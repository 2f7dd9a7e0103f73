"""A thin, typed layer over the generated ``ModelRegistryService`` stub.

What the plain stub makes awkward, and this adds:

- ``connect()`` builds the channel (plaintext, or TLS with a CA certificate)
  and attaches the caller's identity to every call (``authorization: Bearer``
  for a token, ``x-modelreg-actor`` for local mode).
- Methods take keyword arguments and return the resource itself
  (``create_model`` returns a ``Model``, not a ``CreateModelResponse``); list
  methods iterate over every page.
- ``watch()`` resumes a ``WatchTransitions`` stream after ``UNAVAILABLE``
  (a restart, a network cut) from the last sequence it saw, so a worker never
  misses or repeats an event.
- ``consume()`` joins a durable consumer as one of its members and yields
  its deliveries (see ``consumer.py``): heartbeats, reconnects under the same
  member id, acknowledgements fenced by epoch, a leave on ``close()``.

Everything else is the generated code: ``client.stub`` is the raw stub and
``client.metadata`` the metadata to pass it; ``client.call("Rollback", req)``
calls any unary RPC with that metadata.
"""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from datetime import timedelta
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

import grpc

from . import health as _health
from . import pb
from .consumer import Consumer

__all__ = ["RegistryClient", "Watch", "Consumer", "connect", "default_member", "ACTOR_HEADER"]

#: The metadata key naming the caller while the server runs without tokens.
ACTOR_HEADER = "x-modelreg-actor"

#: Channel options used unless the caller passes its own. gRPC's default
#: reconnect backoff grows to two minutes; a watch that resumes after a server
#: restart should not sit that long on a server that is already back.
DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 5000),
)

Metadata = Sequence[tuple[str, str]]
EvaluationSet = Union[pb.EvaluationSetRef, tuple[str, str]]


def connect(
    target: str,
    token: Optional[str] = None,
    actor: Optional[str] = None,
    ca_cert: Union[str, bytes, os.PathLike, None] = None,
    *,
    tls: Optional[bool] = None,
    timeout: Optional[float] = 30.0,
    options: Optional[Sequence[tuple[str, object]]] = None,
) -> "RegistryClient":
    """Opens a client to the registry at ``target`` (``host:port``).

    - ``token``: a bearer token, sent as ``authorization: Bearer TOKEN``.
    - ``actor``: the identity to act as on a server in local mode (no tokens),
      sent as ``x-modelreg-actor``.
    - ``ca_cert``: PEM bytes, or the path of a PEM file, of the CA that signed
      the server's certificate; implies TLS.
    - ``tls``: force TLS on (with the system's roots when ``ca_cert`` is None)
      or off. Default: TLS exactly when ``ca_cert`` is given.
    - ``timeout``: the deadline in seconds of every unary call (None: none).
      Streams are never given a deadline.
    - ``options``: gRPC channel options, replacing ``DEFAULT_CHANNEL_OPTIONS``.
    """
    root_certificates: Optional[bytes] = None
    if ca_cert is not None:
        if isinstance(ca_cert, bytes):
            root_certificates = ca_cert
        else:
            with open(ca_cert, "rb") as f:
                root_certificates = f.read()
    use_tls = tls if tls is not None else root_certificates is not None
    if root_certificates is not None and not use_tls:
        raise ValueError("ca_cert was given with tls=False")
    opts = list(DEFAULT_CHANNEL_OPTIONS if options is None else options)
    if use_tls:
        creds = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.secure_channel(target, creds, options=opts)
    else:
        channel = grpc.insecure_channel(target, options=opts)
    return RegistryClient(channel, token=token, actor=actor, timeout=timeout, target=target)


class RegistryClient:
    """A ``ModelRegistryService`` client that adds identity metadata to every call.

    Use ``connect()`` to make one; it is also a context manager that closes
    its channel. Thread-safe, as the gRPC channel underneath is.
    """

    def __init__(
        self,
        channel: grpc.Channel,
        *,
        token: Optional[str] = None,
        actor: Optional[str] = None,
        timeout: Optional[float] = 30.0,
        target: str = "",
    ) -> None:
        metadata: list[tuple[str, str]] = []
        if token:
            metadata.append(("authorization", f"Bearer {token}"))
        if actor:
            metadata.append((ACTOR_HEADER, actor))
        #: The channel every call goes through.
        self.channel = channel
        #: The generated stub, for RPCs and options this layer does not cover.
        self.stub = pb.ModelRegistryServiceStub(channel)
        #: The identity metadata; pass it when calling ``stub`` directly.
        self.metadata: tuple[tuple[str, str], ...] = tuple(metadata)
        #: The default deadline of unary calls, in seconds.
        self.timeout = timeout
        #: The address this client talks to, for messages.
        self.target = target

    # -- plumbing ---------------------------------------------------------

    def __enter__(self) -> "RegistryClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel; calls in flight end with ``CANCELLED``."""
        self.channel.close()

    def call(self, method: str, request, *, timeout: Optional[float] = None, metadata: Metadata = ()):
        """Calls the unary RPC ``method`` (its proto name, e.g. ``"Rollback"``) with ``request``.

        Returns the response message; raises ``grpc.RpcError`` on failure.
        """
        rpc = getattr(self.stub, method)
        return rpc(
            request,
            timeout=self.timeout if timeout is None else timeout,
            metadata=self.metadata + tuple(metadata),
        )

    def _every_page(self, method: str, request, items: str) -> Iterator:
        """Every item of a paged list: calls ``method`` with ``request`` for
        page after page, following ``next_page_token``, and yields each page's
        ``items`` field."""
        while True:
            page = self.call(method, request)
            yield from getattr(page, items)
            if not page.next_page_token:
                return
            request.page_token = page.next_page_token

    def health(self, service: str = "", *, timeout: Optional[float] = None) -> _health.ServingStatus:
        """The server's ``grpc.health.v1`` status for ``service`` ("" for the server)."""
        return _health.check(self.channel, service, timeout=self.timeout if timeout is None else timeout)

    def wait_until_serving(self, timeout: float = 30.0, *, poll_interval: float = 0.05) -> None:
        """Blocks until ``grpc.health.v1.Health/Check`` answers ``SERVING``.

        Raises ``TimeoutError`` with the last answer or error after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        last: object = None
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{self.target or 'server'} not SERVING after {timeout}s (last: {last!r})")
            try:
                last = self.health(timeout=min(remaining, 2.0))
                if last == _health.ServingStatus.SERVING:
                    return
            except grpc.RpcError as err:
                last = err.code()
            time.sleep(min(poll_interval, max(deadline - time.monotonic(), 0)))

    # -- models -----------------------------------------------------------

    def create_model(
        self,
        name: str,
        *,
        description: str = "",
        tags: Optional[Mapping[str, str]] = None,
        policy: Optional[pb.Policy] = None,
        request_id: str = "",
    ) -> pb.Model:
        """Creates a model; ``ALREADY_EXISTS`` if the name is taken."""
        req = pb.CreateModelRequest(
            name=name, description=description, tags=tags or {}, policy=policy, request_id=request_id
        )
        return self.call("CreateModel", req).model

    def get_model(self, name: str) -> pb.Model:
        """Returns one model; ``NOT_FOUND`` if there is none by that name."""
        return self.call("GetModel", pb.GetModelRequest(name=name)).model

    def list_models(self, *, filter: str = "", page_size: int = 0) -> Iterator[pb.Model]:
        """Every model matching ``filter``, in name order, fetching page after page."""
        req = pb.ListModelsRequest(filter=filter, page_size=page_size)
        yield from self._every_page("ListModels", req, "models")

    def update_model(
        self,
        name: str,
        *,
        description: Optional[str] = None,
        tags: Optional[Mapping[str, str]] = None,
        policy: Optional[pb.Policy] = None,
        etag: str = "",
    ) -> pb.Model:
        """Changes exactly the fields given (not None); ``etag`` guards against lost updates."""
        req = pb.UpdateModelRequest(name=name, etag=etag)
        if description is not None:
            req.description = description
            req.update_mask.paths.append("description")
        if tags is not None:
            req.tags.update(tags)
            req.update_mask.paths.append("tags")
        if policy is not None:
            req.policy.CopyFrom(policy)
            req.update_mask.paths.append("policy")
        return self.call("UpdateModel", req).model

    # -- versions ---------------------------------------------------------

    def register_version(
        self,
        model: str,
        artifact_uri: str,
        *,
        artifact_digest: str = "",
        source: Union[pb.Source, Mapping[str, str], None] = None,
        training_metrics: Optional[Mapping[str, float]] = None,
        tags: Optional[Mapping[str, str]] = None,
        request_id: str = "",
        target_stage: int = pb.STAGE_UNSPECIFIED,
        description: str = "",
    ) -> pb.ModelVersion:
        """Registers a version; a retry with the same ``request_id`` returns the same version."""
        if isinstance(source, Mapping):
            source = pb.Source(**source)
        req = pb.RegisterVersionRequest(
            model=model,
            artifact_uri=artifact_uri,
            artifact_digest=artifact_digest,
            source=source,
            training_metrics=training_metrics or {},
            tags=tags or {},
            request_id=request_id,
            target_stage=target_stage,
            description=description,
        )
        return self.call("RegisterVersion", req).version

    def get_version(self, model: str, version: int = 0, *, alias: str = "") -> pb.ModelVersion:
        """Returns one version by number, or by ``alias`` when ``version`` is 0."""
        return self.call("GetVersion", pb.GetVersionRequest(model=model, version=version, alias=alias)).version

    def list_versions(
        self, model: str, *, stage: int = pb.STAGE_UNSPECIFIED, page_size: int = 0
    ) -> Iterator[pb.ModelVersion]:
        """Every version of ``model`` (only those in ``stage`` if given), in version order."""
        req = pb.ListVersionsRequest(model=model, stage=stage, page_size=page_size)
        yield from self._every_page("ListVersions", req, "versions")

    def set_alias(self, model: str, alias: str, version: int) -> pb.Model:
        """Points ``alias`` at ``version``, creating or moving it."""
        return self.call("SetAlias", pb.SetAliasRequest(model=model, alias=alias, version=version)).model

    def delete_alias(self, model: str, alias: str) -> pb.Model:
        """Removes ``alias``."""
        return self.call("DeleteAlias", pb.DeleteAliasRequest(model=model, alias=alias)).model

    def transition_stage(
        self, model: str, version: int, target_stage: int, *, comment: str = "", etag: str = ""
    ) -> pb.TransitionStageResponse:
        """Moves a version; the response has ``version`` when applied, ``request`` when pending."""
        req = pb.TransitionStageRequest(
            model=model, version=version, target_stage=target_stage, comment=comment, etag=etag
        )
        return self.call("TransitionStage", req)

    def list_transition_requests(
        self, *, model: str = "", status: int = pb.TRANSITION_REQUEST_STATUS_UNSPECIFIED, page_size: int = 0
    ) -> Iterator[pb.TransitionRequest]:
        """Every transition request (of ``model``, with ``status``, if given), by model and number."""
        req = pb.ListTransitionRequestsRequest(model=model, status=status, page_size=page_size)
        yield from self._every_page("ListTransitionRequests", req, "requests")

    def approve_transition(self, request_id: str, *, comment: str = "") -> pb.ApproveTransitionResponse:
        """Approves a pending request; the move applies once enough approvers agree."""
        return self.call("ApproveTransition", pb.ApproveTransitionRequest(request_id=request_id, comment=comment))

    def reject_transition(self, request_id: str, *, comment: str) -> pb.RejectTransitionResponse:
        """Rejects a pending request; the comment (why) is required."""
        return self.call("RejectTransition", pb.RejectTransitionRequest(request_id=request_id, comment=comment))

    def cancel_transition(self, request_id: str, *, comment: str = "") -> pb.CancelTransitionResponse:
        """Withdraws a pending request (its requester, or an admin)."""
        return self.call("CancelTransition", pb.CancelTransitionRequest(request_id=request_id, comment=comment))

    def rollback(self, model: str, *, reason: str, version: int = 0) -> pb.RollbackResponse:
        """Returns the previous good production version (or ``version``) to production."""
        return self.call("Rollback", pb.RollbackRequest(model=model, version=version, reason=reason))

    def attach_evaluation(
        self,
        model: str,
        version: int,
        evaluation_set: EvaluationSet,
        evaluator_version: str,
        metrics: Mapping[str, float],
        *,
        report_uri: str = "",
        request_id: str = "",
    ) -> pb.Evaluation:
        """Attaches the metrics of a version on an evaluation set version ``(name, version)``."""
        if not isinstance(evaluation_set, pb.EvaluationSetRef):
            name, set_version = evaluation_set
            evaluation_set = pb.EvaluationSetRef(name=name, version=set_version)
        req = pb.AttachEvaluationRequest(
            model=model,
            version=version,
            evaluation_set=evaluation_set,
            evaluator_version=evaluator_version,
            metrics=dict(metrics),
            report_uri=report_uri,
            request_id=request_id,
        )
        return self.call("AttachEvaluation", req).evaluation

    # -- events -----------------------------------------------------------

    def list_events(
        self,
        *,
        model: str = "",
        version: int = 0,
        actor: str = "",
        types: Iterable[int] = (),
        after_sequence: int = 0,
        page_size: int = 0,
    ) -> Iterator[pb.RegistryEvent]:
        """Every matching event of the log after ``after_sequence``, in sequence order."""
        req = pb.ListEventsRequest(
            model=model,
            version=version,
            actor=actor,
            types=list(types),
            after_sequence=after_sequence,
            page_size=page_size,
        )
        yield from self._every_page("ListEvents", req, "events")

    def verify_audit_log(
        self, anchors: Iterable[tuple[int, str]] = ()
    ) -> pb.VerifyAuditLogResponse:
        """Re-computes the event log's hash chain on the server. Each anchor,
        a ``(sequence, hash)`` recorded from an earlier response's ``head``,
        must still be in the log with that hash."""
        request = pb.VerifyAuditLogRequest(
            anchors=[pb.AuditAnchor(sequence=s, hash=h) for s, h in anchors]
        )
        return self.call("VerifyAuditLog", request)

    def watch(
        self,
        models: Iterable[str] = (),
        types: Iterable[int] = (),
        after_sequence: Optional[int] = None,
        *,
        to_stages: Iterable[int] = (),
        max_reconnects: Optional[int] = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> "Watch":
        """Subscribes to the event log; iterate the result for events and heartbeats.

        ``after_sequence``: None starts at the current end of the log (only new
        events); 0 replays from the beginning; N resumes after event N. After
        ``UNAVAILABLE`` the stream is reopened from the last sequence seen
        (an event's or a heartbeat's), waiting ``initial_backoff`` doubling to
        ``max_backoff`` seconds between tries, at most ``max_reconnects`` times
        in a row (None: forever). A watch from now that fails before its first
        message (the heartbeat the server sends at once) restarts from now.
        """
        request = pb.WatchTransitionsRequest(models=list(models), types=list(types), to_stages=list(to_stages))
        return Watch(
            self.stub,
            request,
            after_sequence,
            metadata=self.metadata,
            max_reconnects=max_reconnects,
            initial_backoff=initial_backoff,
            max_backoff=max_backoff,
        )


    # -- durable consumers ------------------------------------------------

    def consume(
        self,
        consumer: str,
        *,
        member: Optional[str] = None,
        models: Iterable[str] = (),
        types: Iterable[int] = (),
        to_stages: Iterable[int] = (),
        start_after: Optional[int] = None,
        lease: Optional[float] = None,
        max_deliveries: int = 0,
        backoff: Optional[float] = None,
        on_dead_letter: Optional[int] = None,
        initial_reconnect_backoff: float = 0.1,
        max_reconnect_backoff: float = 5.0,
    ) -> Consumer:
        """Joins the durable consumer ``consumer`` as ``member`` and returns the
        member: an iterator of ``Delivery`` objects, and a context manager.

        The consumer is created by its first join with this spec; a later
        join must give the same filter (``models``, ``types``, ``to_stages``)
        and settings that are unset or equal, else the iteration raises
        ``FAILED_PRECONDITION``.

        - ``member``: this worker's id, stable across reconnects (default:
          host name and pid). A member that comes back under the same id
          within its lease keeps its models.
        - ``start_after``: where a new consumer starts: None at the end of
          the log, 0 at its beginning, N after event N. Ignored when the
          consumer exists.
        - ``lease``: seconds a member keeps its models without a heartbeat
          (1 to 300; None: the server's 10). Heartbeats go every third of it.
        - ``max_deliveries``: deliveries of an event before it is parked as a
          dead letter (1 to 100; 0: the server's 5).
        - ``backoff``: seconds before the first redelivery of a rejected
          event, doubled for each further one (None: the server's 1).
        - ``on_dead_letter``: ``pb.ON_DEAD_LETTER_BLOCK`` (the default) or
          ``pb.ON_DEAD_LETTER_SKIP``: whether a model's later events wait for
          a parked one.
        - ``initial_reconnect_backoff``, ``max_reconnect_backoff``: the wait
          in seconds before reopening the stream after ``UNAVAILABLE``,
          doubling from the first to the second.

        Each event of a model comes after the previous one is settled:
        ``delivery.ack()`` when done, ``delivery.reject(reason)`` to have it
        delivered again later. ``close()`` leaves, handing the models to the
        other members at once.
        """
        spec = pb.ConsumerSpec(
            models=list(models),
            types=list(types),
            to_stages=list(to_stages),
            max_deliveries=max_deliveries,
            on_dead_letter=on_dead_letter or pb.ON_DEAD_LETTER_UNSPECIFIED,
        )
        if start_after is not None:
            spec.start_after = start_after
        if lease is not None:
            spec.lease.FromTimedelta(timedelta(seconds=lease))
        if backoff is not None:
            spec.backoff.FromTimedelta(timedelta(seconds=backoff))
        return Consumer(
            self,
            consumer,
            member if member is not None else default_member(),
            spec,
            initial_backoff=initial_reconnect_backoff,
            max_backoff=max_reconnect_backoff,
        )

    def get_consumer(self, name: str) -> pb.Consumer:
        """Returns one consumer with its spec, live members, assignments and lag; ``NOT_FOUND`` if none."""
        return self.call("GetConsumer", pb.GetConsumerRequest(name=name)).consumer

    def list_consumers(self, *, page_size: int = 0) -> Iterator[pb.Consumer]:
        """Every consumer, in name order, fetching page after page."""
        yield from self._every_page("ListConsumers", pb.ListConsumersRequest(page_size=page_size), "consumers")

    def delete_consumer(self, name: str) -> None:
        """Deletes a consumer and its state (admins); its live members' streams end with ``NOT_FOUND``."""
        self.call("DeleteConsumer", pb.DeleteConsumerRequest(name=name))

    def list_dead_letters(
        self, consumer: str, *, include_resolved: bool = False, page_size: int = 0
    ) -> Iterator[pb.DeadLetter]:
        """Every dead letter of ``consumer`` in event order: the parked and
        retrying ones, and with ``include_resolved`` those acknowledged since."""
        req = pb.ListDeadLettersRequest(consumer=consumer, include_resolved=include_resolved, page_size=page_size)
        yield from self._every_page("ListDeadLetters", req, "dead_letters")

    def retry_dead_letter(self, consumer: str, sequence: int) -> pb.DeadLetter:
        """Delivers the parked event ``sequence`` again, before its model's
        later events and with a fresh count of deliveries (approvers and
        admins); ``FAILED_PRECONDITION`` unless it is parked."""
        req = pb.RetryDeadLetterRequest(consumer=consumer, sequence=sequence)
        return self.call("RetryDeadLetter", req).dead_letter


def default_member() -> str:
    """The default member id of this process: ``HOSTNAME-PID``, as the CLI workers use."""
    host = "".join(c if (c.isascii() and c.isalnum()) or c in "._:-" else "-" for c in socket.gethostname()) or "host"
    return f"{host[:100]}-{os.getpid()}"


class Watch(Iterator[pb.WatchTransitionsResponse]):
    """A resuming ``WatchTransitions`` subscription.

    Iterating yields every ``WatchTransitionsResponse`` (check
    ``item.WhichOneof("kind")`` for ``"event"`` or ``"heartbeat"``);
    ``events()`` yields only the events. ``cursor`` is the last sequence seen,
    to store and pass back as ``after_sequence`` after a process restart.
    ``cancel()`` (from any thread) ends the iteration; ``with`` closes it.

    The client trusts the server's guarantees (ordered, unique, gap-free):
    it does not filter duplicates, so a server bug stays visible.
    """

    def __init__(
        self,
        stub: pb.ModelRegistryServiceStub,
        request: pb.WatchTransitionsRequest,
        after_sequence: Optional[int],
        *,
        metadata: Metadata = (),
        max_reconnects: Optional[int] = None,
        initial_backoff: float = 0.1,
        max_backoff: float = 5.0,
    ) -> None:
        #: The last sequence seen (event or heartbeat), starting at after_sequence.
        #: None only while a watch "from now" has not received its first message
        #: (the server sends a heartbeat at once, so that window is short).
        self.cursor: Optional[int] = after_sequence
        #: How many times the stream was reopened after UNAVAILABLE.
        self.reconnects = 0
        self._stub = stub
        self._request = request
        self._metadata = tuple(metadata)
        self._max_reconnects = max_reconnects
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._cancelled = threading.Event()
        self._lock = threading.Lock()
        self._call = None
        self._items = self._run()

    def __iter__(self) -> "Watch":
        return self

    def __enter__(self) -> "Watch":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __next__(self) -> pb.WatchTransitionsResponse:
        return next(self._items)

    def events(self) -> Iterator[pb.RegistryEvent]:
        """The events of this subscription, skipping heartbeats (which still move ``cursor``)."""
        for item in self:
            if item.WhichOneof("kind") == "event":
                yield item.event

    def cancel(self) -> None:
        """Ends the subscription: iteration stops, now or at the next item."""
        self._cancelled.set()
        with self._lock:
            if self._call is not None:
                self._call.cancel()

    def close(self) -> None:
        """Cancels the subscription and releases its generator."""
        self.cancel()
        try:
            self._items.close()
        except ValueError:
            pass  # being iterated on another thread, which cancel() already stops

    def _open(self):
        request = pb.WatchTransitionsRequest()
        request.CopyFrom(self._request)
        if self.cursor is not None:
            request.after_sequence = self.cursor
        with self._lock:
            if self._cancelled.is_set():
                return None
            self._call = self._stub.WatchTransitions(request, metadata=self._metadata)
            return self._call

    def _run(self) -> Iterator[pb.WatchTransitionsResponse]:
        failures = 0
        try:
            while not self._cancelled.is_set():
                call = self._open()
                if call is None:
                    return
                try:
                    for item in call:
                        failures = 0
                        kind = item.WhichOneof("kind")
                        if kind == "event":
                            self.cursor = item.event.sequence
                        elif kind == "heartbeat":
                            # A bookmark never moves the cursor backwards.
                            self.cursor = max(self.cursor or 0, item.heartbeat.sequence)
                        yield item
                    return  # the server ended the stream with OK
                except grpc.RpcError as err:
                    if self._cancelled.is_set():
                        return
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    if self._max_reconnects is not None and failures >= self._max_reconnects:
                        raise
                    failures += 1
                    self.reconnects += 1
                    backoff = min(self._max_backoff, self._initial_backoff * 2 ** (failures - 1))
                    # Jitter spreads the reconnects of many workers after a restart.
                    if self._cancelled.wait(backoff * random.uniform(0.5, 1.0)):
                        return
        finally:
            with self._lock:
                if self._call is not None:
                    self._call.cancel()
                    self._call = None
