"""How the staff service reads the auth service's answers: reasons pass through (SERVER_BUSY too,
with when to retry), an unreachable auth is a retryable AUTH_UNAVAILABLE (the channel retried
already), a timeout is an unknown outcome."""

from __future__ import annotations

import grpc
import pytest

from posmesh.auth.v1 import auth_pb2
from posmesh.common import errors
from posmesh.common.interceptors import to_status
from services.staff.accounts import AuthAccounts, translate


def rpc_error(code: grpc.StatusCode, error: errors.ApiError | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if error is not None:
        for key, value in to_status(error).trailing_metadata:
            trailing.add(key, value)
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing,
                                details=error.message if error else "peer went away")


def test_auth_reasons_pass_through_with_their_status_and_metadata():
    translated = translate(rpc_error(grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument(
        "WEAK_PASSWORD", "the password must be at least 10 characters long", min_length=10)), "ClaimAccount")
    assert isinstance(translated, errors.InvalidArgument)
    assert (translated.reason, translated.metadata) == ("WEAK_PASSWORD", {"min_length": "10"})
    assert "10 characters" in translated.message


def test_an_unreachable_auth_is_unavailable_and_known_not_applied():
    translated = translate(rpc_error(grpc.StatusCode.UNAVAILABLE), "GrantMembership")
    assert isinstance(translated, errors.Unavailable) and translated.reason == "AUTH_UNAVAILABLE"
    assert translated.metadata["auth_outcome"] == "not_applied"


def test_auths_server_busy_reaches_the_client_as_it_is_with_when_to_retry():
    busy = errors.Unavailable("SERVER_BUSY", "too many new passwords are being processed; retry "
                              "shortly", retryable="true", retry_after_seconds=1)
    translated = translate(rpc_error(grpc.StatusCode.UNAVAILABLE, busy), "ClaimAccount")
    assert isinstance(translated, errors.Unavailable) and translated.reason == "SERVER_BUSY"
    assert translated.metadata == {"retryable": "true", "retry_after_seconds": "1"}
    assert translated.message == busy.message


def test_auths_other_unavailable_answers_are_auth_unavailable_and_known_not_applied():
    limiter_down = errors.Unavailable("RATE_LIMITER_UNAVAILABLE", "the limiter is down")
    translated = translate(rpc_error(grpc.StatusCode.UNAVAILABLE, limiter_down), "ClaimAccount")
    assert translated.reason == "AUTH_UNAVAILABLE"
    assert translated.metadata["auth_outcome"] == "not_applied"


def test_a_timeout_is_unavailable_with_an_unknown_outcome_and_says_so():
    translated = translate(rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED), "GrantMembership")
    assert translated.reason == "AUTH_UNAVAILABLE" and translated.metadata["auth_outcome"] == "unknown"
    assert "nothing was changed" not in translated.message
    assert "unknown" in translated.message and "retrying the same request" in translated.message


class RecordingStub:
    def __init__(self) -> None:
        self.timeouts: dict[str, float] = {}

    async def ClaimAccount(self, request, timeout):
        self.timeouts["ClaimAccount"] = timeout
        return auth_pb2.ClaimAccountResponse(user=auth_pb2.User(id="u", email=request.email))

    async def GrantMembership(self, request, timeout):
        self.timeouts["GrantMembership"] = timeout
        return auth_pb2.GrantMembershipResponse()


async def test_claim_account_waits_longer_than_other_calls_for_auths_new_password_queue():
    from posmesh.common.settings import Settings

    settings = Settings()
    queue_seconds = (settings.enrollment_hash_max_pending
                     / settings.enrollment_hashes_per_second)
    accounts = AuthAccounts(grpc.aio.insecure_channel("127.0.0.1:9"))
    accounts._stub = RecordingStub()
    await accounts.claim_account("sam@example.com", "Sam", "correct horse battery", "")
    await accounts.grant_membership("u", "r", "Name", "staff")

    timeouts = accounts._stub.timeouts
    claim, grant = timeouts["ClaimAccount"], timeouts["GrantMembership"]
    assert claim >= queue_seconds + grant  # a full queue, then an ordinary call's time
    assert claim < settings.edge_request_timeout_seconds  # answered before the edge gives up


def test_an_unexpected_code_is_internal_not_a_leak_of_the_peer_message():
    translated = translate(rpc_error(grpc.StatusCode.DATA_LOSS), "ClaimAccount")
    assert translated.reason == "INTERNAL" and "peer" not in translated.message


class FlakyStub:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def GrantMembership(self, request, timeout):
        self.calls += 1
        if self.calls <= self.failures:
            raise rpc_error(grpc.StatusCode.UNAVAILABLE)
        return auth_pb2.GrantMembershipResponse(previous_role="staff", revoked_sessions=2)


async def test_an_unavailable_auth_is_not_retried_here_but_answered_auth_unavailable():
    accounts = AuthAccounts(grpc.aio.insecure_channel("127.0.0.1:9"))
    accounts._stub = FlakyStub(failures=5)
    with pytest.raises(errors.Unavailable) as caught:
        await accounts.grant_membership("u", "r", "Name", "manager")
    assert caught.value.reason == "AUTH_UNAVAILABLE" and accounts._stub.calls == 1


def test_the_one_retry_policy_is_the_channels():
    import json

    from posmesh.common import clients

    (default,) = [config for config in json.loads(clients._SERVICE_CONFIG)["methodConfig"]
                  if config["name"] == [{}]]
    assert default["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert default["retryPolicy"]["maxAttempts"] >= 2
