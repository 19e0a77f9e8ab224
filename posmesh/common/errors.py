"""Errors with a stable machine-readable reason, raised where the rule lives and turned into
google.rpc.Status (with an ErrorInfo) in one place: posmesh.common.interceptors."""

from __future__ import annotations

import grpc

ERROR_DOMAIN = "posmesh.dev"


class ApiError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, reason: str, message: str, **metadata: object) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.metadata = {key: str(value) for key, value in metadata.items() if value is not None}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.reason!r}, {self.message!r})"


class InvalidArgument(ApiError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class Unauthenticated(ApiError):
    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(ApiError):
    code = grpc.StatusCode.PERMISSION_DENIED


class NotFound(ApiError):
    code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(ApiError):
    code = grpc.StatusCode.ALREADY_EXISTS


class Aborted(ApiError):
    code = grpc.StatusCode.ABORTED


class FailedPrecondition(ApiError):
    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(ApiError):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(ApiError):
    code = grpc.StatusCode.UNAVAILABLE


class Internal(ApiError):
    code = grpc.StatusCode.INTERNAL


class DeadlineExceeded(ApiError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED


def version_conflict(resource: str, expected: int, actual: int) -> Aborted:
    return Aborted(
        "VERSION_CONFLICT",
        f"{resource} was changed by someone else: you sent version {expected}, it is now at "
        f"version {actual}; reload and retry",
        expected_version=expected,
        current_version=actual,
    )
