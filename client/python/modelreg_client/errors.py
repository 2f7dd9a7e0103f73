"""Reading the rich error details (AIP-193) that modelreg puts on a failed call.

The server sends a ``google.rpc.Status`` in the ``grpc-status-details-bin``
trailer; its ``details`` hold ``google.rpc.BadRequest`` (one violation per bad
field) on ``INVALID_ARGUMENT``, and may hold ``PreconditionFailure`` or
``ResourceInfo`` on other codes. These helpers decode them with
``grpcio-status`` and ``googleapis-common-protos`` so callers can assert on
fields instead of parsing message text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, TypeVar

import grpc
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "FieldViolation",
    "bad_request",
    "detail",
    "field_violations",
    "rich_status",
]

M = TypeVar("M", bound=Message)


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request: its path (``name``, ``source.commit``) and why."""

    field: str
    description: str


def rich_status(err: grpc.RpcError) -> Optional[status_pb2.Status]:
    """The ``google.rpc.Status`` carried by a failed call, or None when it has none.

    ``err`` is what a stub call raised (a ``grpc.RpcError`` that is also a
    ``grpc.Call``). A trailer that contradicts the call's own code is treated
    as absent rather than raising, since a caller asking for details of an
    error should not get a second, different error.
    """
    if not isinstance(err, grpc.Call):
        return None
    try:
        return rpc_status.from_call(err)
    except ValueError:
        return None


def detail(err: grpc.RpcError, kind: type[M]) -> Optional[M]:
    """The first detail of message type ``kind`` on a failed call, unpacked, or None.

    For example ``detail(err, error_details_pb2.PreconditionFailure)``.
    """
    status = rich_status(err)
    if status is None:
        return None
    for any_detail in status.details:
        if any_detail.Is(kind.DESCRIPTOR):
            out = kind()
            any_detail.Unpack(out)
            return out
    return None


def bad_request(err: grpc.RpcError) -> Optional[error_details_pb2.BadRequest]:
    """The ``google.rpc.BadRequest`` of a failed call, or None."""
    return detail(err, error_details_pb2.BadRequest)


def field_violations(err: grpc.RpcError) -> list[FieldViolation]:
    """Every field violation of a failed call, in the server's order; empty when none."""
    found = bad_request(err)
    if found is None:
        return []
    return [FieldViolation(v.field, v.description) for v in found.field_violations]
