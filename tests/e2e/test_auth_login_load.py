"""Password hashing never blocks the auth service's event loop: while a burst of sign-ins is
being hashed, cheap requests to the same process keep answering quickly.

The cheap requests come from another client connection (another till), as they would in a
restaurant: on the burst's own HTTP/2 connection the test client's stream handling, not the
server, would be what is measured."""

from __future__ import annotations

import asyncio
import statistics
import time


from posmesh.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.support.accounts import login, register_and_login

BURST = 24


async def test_a_burst_of_logins_does_not_block_other_requests_to_the_auth_service(edge, edge_http1, stack):
    account = await register_and_login(edge)
    done = asyncio.Event()

    async def burst() -> float:
        started = time.perf_counter()
        replies = await asyncio.gather(*[login(edge, account.email, account.password)
                                         for _ in range(BURST)])
        assert [reply.status_code for reply in replies] == [200] * BURST
        done.set()
        return time.perf_counter() - started

    async def repeatedly(call) -> list[float]:
        latencies = []
        while not done.is_set():
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.01)
        return latencies

    async def jwks_through_edge() -> None:
        reply = await edge_http1.get("/.well-known/jwks.json")
        assert reply.status_code == 200

    async with stack.channel("auth") as channel:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)  # connected before the burst

        async def jwks_direct() -> None:
            await stub.GetJwks(auth_pb2.GetJwksRequest(), timeout=5)

        burst_seconds, via_edge, direct = await asyncio.gather(
            burst(), repeatedly(jwks_through_edge), repeatedly(jwks_direct))

    summary = (f"burst of {BURST} logins: {burst_seconds:.2f}s; GetJwks meanwhile: "
               f"edge median {statistics.median(via_edge) * 1000:.0f} ms "
               f"max {max(via_edge) * 1000:.0f} ms (n={len(via_edge)}), "
               f"direct median {statistics.median(direct) * 1000:.0f} ms "
               f"max {max(direct) * 1000:.0f} ms (n={len(direct)})")
    print(summary)
    assert len(direct) >= 3 and len(via_edge) >= 2, summary
    # Were hashing on the event loop, every cheap request would wait for the hashes queued
    # before it (about BURST x 30 ms, more on a busy machine). Off the loop it waits for none.
    assert statistics.median(direct) < 0.05, summary
    assert statistics.median(via_edge) < 0.15, summary
    assert max(direct) < burst_seconds / 2, summary
