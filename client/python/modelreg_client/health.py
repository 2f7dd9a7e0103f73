"""The standard ``grpc.health.v1.Health/Check`` call, without another dependency.

The two messages of the health protocol are built at import time from their
descriptor (into a private descriptor pool, so this never clashes with
``grpcio-health-checking`` if that is also loaded). A readiness wait polls
``Check`` until it answers ``SERVING``.
"""

from __future__ import annotations

import enum
from typing import Optional

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

__all__ = ["ServingStatus", "check"]


class ServingStatus(enum.IntEnum):
    """``grpc.health.v1.HealthCheckResponse.ServingStatus``."""

    UNKNOWN = 0
    SERVING = 1
    NOT_SERVING = 2
    SERVICE_UNKNOWN = 3


def _build_messages():
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="grpc/health/v1/health.proto", package="grpc.health.v1", syntax="proto3"
    )
    request = file.message_type.add(name="HealthCheckRequest")
    request.field.add(name="service", number=1, type=f.TYPE_STRING, label=f.LABEL_OPTIONAL)
    response = file.message_type.add(name="HealthCheckResponse")
    status = response.enum_type.add(name="ServingStatus")
    for member in ServingStatus:
        status.value.add(name=member.name, number=member.value)
    response.field.add(
        name="status",
        number=1,
        type=f.TYPE_ENUM,
        type_name=".grpc.health.v1.HealthCheckResponse.ServingStatus",
        label=f.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckRequest")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("grpc.health.v1.HealthCheckResponse")),
    )


HealthCheckRequest, HealthCheckResponse = _build_messages()


def check(
    channel: grpc.Channel,
    service: str = "",
    *,
    timeout: Optional[float] = None,
    metadata=None,
) -> ServingStatus:
    """Calls ``grpc.health.v1.Health/Check`` for ``service`` ("" is the whole server).

    Raises ``grpc.RpcError`` when the call fails (``UNAVAILABLE`` while
    nothing listens, ``NOT_FOUND`` for a service the server does not know).
    """
    call = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=HealthCheckRequest.SerializeToString,
        response_deserializer=HealthCheckResponse.FromString,
    )
    reply = call(HealthCheckRequest(service=service), timeout=timeout, metadata=metadata)
    return ServingStatus(reply.status)
