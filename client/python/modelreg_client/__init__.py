"""modelreg_client: the Python client of the modelreg model registry.

The message and stub modules are generated from ``proto/`` by
``generate.py`` into ``modelreg_client._gen`` (never edited by hand); this
package adds a thin typed layer on top:

- ``connect(target, token=None, actor=None, ca_cert=None)`` returns a
  ``RegistryClient`` whose methods add the caller's identity to every call;
- ``RegistryClient.watch(...)`` is a ``WatchTransitions`` subscription that
  resumes after ``UNAVAILABLE`` from the last sequence it saw;
- ``RegistryClient.consume(name, ...)`` joins a durable consumer and yields
  ``Delivery`` objects to ``ack()`` or ``reject(reason)``;
- ``field_violations(err)`` decodes the ``google.rpc.BadRequest`` of an
  ``INVALID_ARGUMENT`` error;
- ``pb`` holds every generated message and enum (``pb.STAGE_STAGING``).

Example::

    import modelreg_client
    from modelreg_client import pb

    with modelreg_client.connect("127.0.0.1:50051", actor="alice") as registry:
        registry.create_model("fraud-detector", description="card fraud")
        v = registry.register_version("fraud-detector", "s3://models/fraud/1/",
                                      request_id="ci-run-42")
        registry.transition_stage("fraud-detector", v.version, pb.STAGE_STAGING)
"""

try:
    from . import pb
except ImportError as err:  # pragma: no cover - only before generation
    if "_gen" not in str(err):
        raise
    raise ImportError(
        "modelreg_client's generated modules are missing: run "
        "`python client/python/generate.py` (needs grpcio-tools) before using "
        "or installing the package"
    ) from err

from .client import ACTOR_HEADER, RegistryClient, Watch, connect
from .consumer import Consumer, Delivery
from .errors import FieldViolation, bad_request, detail, field_violations, rich_status
from .health import ServingStatus

__all__ = [
    "ACTOR_HEADER",
    "Consumer",
    "Delivery",
    "FieldViolation",
    "RegistryClient",
    "ServingStatus",
    "Watch",
    "bad_request",
    "connect",
    "detail",
    "field_violations",
    "pb",
    "rich_status",
]

__version__ = "0.1.0"
