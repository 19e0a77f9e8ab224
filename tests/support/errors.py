"""Reading the machine-readable reason of an error, as a client would."""

from __future__ import annotations

import json

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


def grpc_reason(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed gRPC call ('' when there is none)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status else []:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info.reason
    return ""


def json_reason(body: bytes) -> str:
    """The ErrorInfo reason of a JSON error body ('' when it is not one)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return ""
    for detail in parsed.get("details", []) if isinstance(parsed, dict) else []:
        if isinstance(detail, dict) and detail.get("reason"):
            return detail["reason"]
    return ""
