"""The realtime gateway in process: a real websockets server on loopback and the app's client
(tests/support/ws_client.py), with real signed tokens and a real local revocation set; Redis-backed
parts (presence, IP window) and the orders feed are in-memory fakes. The same behaviours are checked
end to end through Envoy in tests/e2e/test_realtime_*.py; these run in a second and pin the
connection logic down precisely (timings, close codes, floods).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import pytest
from websockets.exceptions import InvalidStatus

from posmesh.common.revocations import SessionRevocation
from services.realtime.revocations import Revocation
from tests.support.gateway_rig import ALLOWED_ORIGIN, RESTAURANT, Rig


@pytest.fixture(scope="module")
async def rig():
    rig = Rig()
    await rig.start()
    yield rig
    await rig.stop()


async def test_the_apps_authenticate_with_top_level_fields_gets_auth_success(rig):
    sock = await rig.open()
    hello = await sock.authenticate(rig.token(user="u-top"), "u-top")
    assert hello["type"] == "auth_success"
    assert set(hello) == {"id", "type", "data", "restaurant_id", "timestamp"}
    data = hello["data"]
    assert data["user_id"] == "u-top" and data["restaurant_id"] == RESTAURANT
    assert data["role"] == "staff" and data["connection_id"]
    assert 590 <= data["expires_in"] <= 600
    pong = await sock.ping()
    assert pong["type"] == "pong"
    await sock.close()


async def test_authenticate_fields_under_data_work_too(rig):
    sock = await rig.open()
    hello = await sock.authenticate(rig.token(user="u-data"), "u-data", under_data=True)
    assert hello["type"] == "auth_success"
    await sock.close()


async def test_bearer_header_authenticates_without_a_message(rig):
    sock = await rig.open(headers={"Authorization": f"Bearer {rig.token(user='u-hdr')}"})
    hello = await sock.next("auth_success", "auth_error")
    assert hello["type"] == "auth_success" and hello["data"]["user_id"] == "u-hdr"
    await sock.close()


async def test_no_authenticate_within_the_timeout_is_auth_error_then_4001(rig):
    sock = await rig.open()
    error = await sock.next("auth_error", timeout=3)
    assert error["data"]["code"] == "AUTH_TIMEOUT"
    assert await sock.closed() == (4001, "AUTH_TIMEOUT")


async def test_an_expired_token_is_token_expired_with_refresh_token_and_counted_apart(rig):
    sock = await rig.open()
    before = len(rig.window.hits)
    error = await sock.authenticate(rig.token(user="u-exp", ttl=-60), "u-exp")
    assert error["type"] == "auth_error"
    assert error["data"]["code"] == "TOKEN_EXPIRED"
    assert error["data"]["action"] == "REFRESH_TOKEN"
    assert (await sock.closed())[0] == 4001
    assert rig.window.hits[before:] == [("127.0.0.1", True)]


async def test_a_user_id_other_than_the_tokens_is_user_id_mismatch(rig):
    sock = await rig.open()
    error = await sock.authenticate(rig.token(user="u-real"), "someone-else")
    assert error["type"] == "auth_error"
    assert error["data"]["code"] == "USER_ID_MISMATCH"
    assert (await sock.closed())[0] == 4001
    # The process is fine: the next client gets in.
    ok = await rig.signed_in(user="u-after-mismatch")
    await ok.close()


@pytest.mark.parametrize("sent_user", ["0", 0, "", None])
async def test_a_zero_or_missing_user_id_means_the_tokens_user(rig, sent_user):
    sock = await rig.open()
    welcome = await sock.authenticate(rig.token(user="u-from-token"), sent_user)
    assert welcome["type"] == "auth_success"
    assert welcome["data"]["user_id"] == "u-from-token"
    await sock.close()


async def test_a_token_for_another_restaurant_is_closed_with_4003(rig):
    sock = await rig.open()
    error = await sock.authenticate(rig.token(user="u-wrong", restaurant="elsewhere"), "u-wrong")
    assert error["data"]["code"] == "TENANT_MISMATCH"
    assert error["data"]["action"] == "SWITCH_RESTAURANT"
    assert await sock.closed() == (4003, "TENANT_MISMATCH")


async def test_management_connections_need_owner_or_manager(rig):
    sock = await rig.open("management")
    error = await sock.authenticate(rig.token(user="u-staff"), "u-staff")
    assert error["data"]["code"] == "ROLE_FORBIDDEN"
    assert (await sock.closed())[0] == 4003
    manager = await rig.open("management")
    hello = await manager.authenticate(rig.token(user="u-mgr", role="manager"), "u-mgr")
    assert hello["type"] == "auth_success"
    await manager.close()


async def test_a_revoked_session_is_refused_at_connect(rig):
    sid = uuid.uuid4().hex
    rig.revoke(sid)
    sock = await rig.open()
    error = await sock.authenticate(rig.token(user="u-rev", sid=sid), "u-rev")
    assert error["data"]["code"] == "SESSION_REVOKED" and error["data"]["action"] == "LOGIN"
    assert (await sock.closed())[0] == 4001


async def test_connections_over_the_per_user_cap_are_4029_with_retry_after(rig):
    socks = [await rig.signed_in(user="u-cap") for _ in range(3)]
    extra = await rig.open()
    error = await extra.authenticate(rig.token(user="u-cap"), "u-cap")
    assert error["data"]["code"] == "TOO_MANY_CONNECTIONS"
    assert error["data"]["retry_after_ms"] > 0
    assert (await extra.closed())[0] == 4029
    for sock in socks:
        await sock.close()


async def test_an_address_over_its_window_is_4029(rig):
    rig.window.refuse = True
    try:
        sock = await rig.open()
        error = await sock.authenticate(rig.token(user="u-ip"), "u-ip")
        assert error["data"]["code"] == "RATE_LIMITED"
        assert error["data"]["retry_after_ms"] == 30000
        assert (await sock.closed())[0] == 4029
    finally:
        rig.window.refuse = False


async def test_token_expired_warning_then_reauth_keeps_the_connection(rig):
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-re", ttl=3), "u-re",
                                    capabilities=["reauth"]))["type"] == "auth_success"
    warning = await sock.next("token_expired", timeout=3)
    assert 0 < warning["data"]["seconds_until_expiry"] <= 2
    hello = await sock.reauth(rig.token(user="u-re", ttl=600))
    assert hello["type"] == "auth_success" and hello["data"]["expires_in"] > 500
    await asyncio.sleep(2.0)  # past the first token's expiry
    assert (await sock.ping())["type"] == "pong"
    await sock.close()


async def test_reauth_with_another_users_token_is_refused_and_the_socket_stays(rig):
    sock = await rig.signed_in(user="u-keep")
    error = await sock.reauth(rig.token(user="intruder"))
    assert error["type"] == "auth_error" and error["data"]["code"] == "USER_ID_MISMATCH"
    assert (await sock.ping())["type"] == "pong"
    await sock.close()


async def test_a_reauth_client_without_a_reauth_is_warned_then_closed_at_expiry_with_4001(rig):
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-noreauth", ttl=2), "u-noreauth",
                                    capabilities=["reauth"]))["type"] == "auth_success"
    assert (await sock.next("token_expired", timeout=2))["type"] == "token_expired"
    error = await sock.next("auth_error", timeout=4)
    assert error["data"]["code"] == "TOKEN_EXPIRED"
    assert (await sock.closed())[0] == 4001


async def test_warning_reauth_clients_only_a_legacy_client_is_not_warned_and_closed_at_expiry(
        rig, monkeypatch):
    monkeypatch.setattr(rig.settings, "ws_token_warning_to", "reauth-clients")
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-legacy", ttl=2), "u-legacy"))[
        "type"] == "auth_success"
    error = await sock.next("auth_error", "token_expired", timeout=4)
    assert error["type"] == "auth_error" and error["data"]["code"] == "TOKEN_EXPIRED"
    assert (await sock.closed())[0] == 4001
    assert not [m for m in sock.received if m["type"] == "token_expired"]


async def test_by_default_a_legacy_client_is_warned_too(rig):
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-all", ttl=2), "u-all"))[
        "type"] == "auth_success"
    assert (await sock.next("token_expired", timeout=2))["type"] == "token_expired"
    await sock.close()


async def test_a_revocation_closes_the_sessions_sockets_at_once(rig):
    sid = uuid.uuid4().hex
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-out", sid=sid), "u-out"))[
        "type"] == "auth_success"
    other = await rig.signed_in(user="u-out")
    started = time.monotonic()
    rig.gateway.on_revocation(Revocation(sid, "u-out", RESTAURANT, "logout"))
    assert await sock.closed(timeout=1) == (4001, "LOGOUT")
    assert time.monotonic() - started < 1
    assert (await other.ping())["type"] == "pong", "another session of the user stays"
    rig.gateway.on_revocation(Revocation("", "u-out", RESTAURANT, "membership_revoked"))
    assert await other.closed(timeout=1) == (4003, "MEMBERSHIP_REVOKED")


async def test_a_revocation_the_process_learns_of_closes_the_sessions_sockets(rig):
    sid = uuid.uuid4().hex
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-learnt", sid=sid), "u-learnt"))[
        "type"] == "auth_success"

    rig.gateway.on_revoked_session(SessionRevocation(sid, "u-learnt", RESTAURANT, "LOGOUT"))

    assert await sock.closed(timeout=1) == (4001, "LOGOUT")


async def test_the_sweep_closes_sockets_of_sessions_in_the_revocation_set(rig):
    sid = uuid.uuid4().hex
    sock = await rig.open()
    assert (await sock.authenticate(rig.token(user="u-swept", sid=sid), "u-swept"))[
        "type"] == "auth_success"
    bystander = await rig.signed_in(user="u-stays")
    rig.revoke(sid, "MEMBERSHIP_REVOKED")

    rig.gateway.sweep_revoked()

    assert await sock.closed(timeout=1) == (4003, "MEMBERSHIP_REVOKED")
    assert (await bystander.ping())["type"] == "pong"
    await bystander.close()


async def test_order_events_reach_every_socket_of_the_restaurant_in_order(rig):
    socks = [await rig.signed_in(user=f"u-fan-{n}") for n in range(3)]
    sequences = rig.orders.commit(RESTAURANT, 3)
    for sock in socks:
        events = await sock.events(3)
        assert [int(e["id"]) for e in events] == sequences
        assert events[0]["type"] == "order.created" and events[0]["data"]["order"]["id"]
        await sock.close()


async def test_resume_with_last_event_id_gets_every_missed_event_once(rig):
    restaurant = "rest-resume"
    sock = await rig.open(restaurant=restaurant)
    await sock.authenticate(rig.token(user="u-res", restaurant=restaurant), "u-res")
    first = rig.orders.commit(restaurant, 2)
    seen = [int(e["id"]) for e in await sock.events(2)]
    assert seen == first
    await sock.close()
    missed = rig.orders.commit(restaurant, 3)
    await asyncio.sleep(0.4)  # past the feed's linger: the resume needs a catch-up stream
    again = await rig.open(restaurant=restaurant)
    hello = await again.authenticate(rig.token(user="u-res", restaurant=restaurant), "u-res",
                                     last_event_id=str(seen[-1]))
    assert hello["type"] == "auth_success"
    live = rig.orders.commit(restaurant, 2)
    got = [int(e["id"]) for e in await again.events(5)]
    assert got == missed + live
    with pytest.raises(TimeoutError):
        await again.next("order.created", timeout=0.3)
    await again.close()


async def test_garbage_binary_and_unknown_messages_get_errors_and_the_socket_survives(rig):
    sock = await rig.signed_in(user="u-garbage")
    for raw in ("not json", b"\x00\xff binary", '{"type": "launch_missiles"}', "[]"):
        await sock.send_raw(raw)
        error = await sock.next("error")
        assert error["data"]["code"] in {"INVALID_JSON", "BINARY_NOT_SUPPORTED", "UNKNOWN_TYPE",
                                         "INVALID_MESSAGE"}
        assert error["data"]["message"]
    assert (await sock.ping())["type"] == "pong"
    await sock.close()


async def test_an_oversized_frame_closes_with_1009_and_others_are_unaffected(rig):
    bystander = await rig.signed_in(user="u-by")
    sock = await rig.signed_in(user="u-big")
    await sock.send_raw(json.dumps({"type": "ping", "data": {"pad": "x" * 10000}}))
    assert (await sock.closed())[0] == 1009
    assert (await bystander.ping())["type"] == "pong"
    await bystander.close()


async def test_invalid_utf8_closes_with_1007(rig):
    sock = await rig.signed_in(user="u-utf8")
    # A text frame whose payload is not UTF-8, written below the client's own checks.
    sock.ws.protocol.send_text(b'{"type":"ping","x":"\xc3\x28"}')
    sock.ws.send_data()
    assert (await sock.closed())[0] == 1007


async def test_a_message_flood_is_throttled_then_closed_with_1008(rig):
    bystander = await rig.signed_in(user="u-calm")
    sock = await rig.signed_in(user="u-flood")
    ping = json.dumps({"type": "ping", "data": {}})
    for _ in range(400):
        await sock.send_raw(ping)
    code, reason = await sock.closed()
    assert (code, reason) == (1008, "MESSAGE_FLOOD")
    assert any(m["data"].get("code") == "RATE_LIMITED" for m in sock.messages("error"))
    assert (await bystander.ping())["type"] == "pong"
    await bystander.close()


async def test_a_disallowed_origin_is_refused_with_403_and_an_allowed_one_passes(rig):
    with pytest.raises(InvalidStatus) as refused:
        await rig.open(origin="https://evil.example")
    assert refused.value.response.status_code == 403
    sock = await rig.open(origin=ALLOWED_ORIGIN)
    hello = await sock.authenticate(rig.token(user="u-origin"), "u-origin")
    assert hello["type"] == "auth_success"
    await sock.close()


async def test_unknown_paths_are_404_and_the_query_string_is_ignored(rig):
    with pytest.raises(InvalidStatus) as missing:
        await rig.open("dashboard")
    assert missing.value.response.status_code == 404
    sock = await rig.open(query="token=forged&user_id=1")
    error = await sock.authenticate("", "1")
    assert error["data"]["code"] == "TOKEN_INVALID", "the URL's token is never used"
    await sock.closed()


async def test_server_pings_are_sent_and_a_silent_client_is_dropped(rig):
    sock = await rig.signed_in(user="u-silent")
    ping = await sock.next("ping", timeout=2)
    assert ping["type"] == "ping"
    # Stop reading (and so answering): after 3 intervals of silence the server closes.
    await asyncio.sleep(3.6)
    assert (await sock.closed())[0] == 4002


async def test_health_reports_presence_and_metrics_count_sockets_by_type_only(rig):
    sock = await rig.signed_in(user="u-metrics", kind="kitchen")
    health = rig.gateway.health()
    assert health["status"] == "SERVING"
    assert health["presence"][RESTAURANT]["kitchen"] >= 1
    families = {family.name: family for family in rig.gateway.metric_families()}
    kitchen = [sample.value for sample in families["posmesh_realtime_connections"].samples
               if sample.labels == {"connection_type": "kitchen"}]
    assert kitchen and kitchen[0] >= 1
    labels = {name for family in families.values() for sample in family.samples
              for name in sample.labels}
    assert not labels & {"restaurant_id", "user_id", "session_id"}, "unbounded label"
    await sock.close()
