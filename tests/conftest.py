"""Session fixtures: the whole system, started once on free ports in a temporary data dir.

    async def test_something(stack, edge, mailbox):
        reply = await edge.get("/api/v1/health")          # httpx over TLS through Envoy
        channel = stack.channel("auth")  # a service directly, with the edge's mesh certificate
        await stack.stop_service("auth"); await stack.start_service("auth")
        await stack.stop_redis(); await stack.start_redis(); await stack.restart_postgres()
        await stack.stop_mail_server(); await stack.start_mail_server()     # same port and store
        print(stack.service_log("orders"))
        await mailbox.wait_for(to=email, subject_contains="Confirm")  # what the stack really sent

Real PostgreSQL (embedded, or a fresh database on DATABASE_URL's server), real Redis (embedded, or
REDIS_URL), the dev mail server (real SMTP, every mail stored), two processes each of auth,
staff and orders (`stack.replicas("orders")` names them), two realtime processes, and Envoy. Nothing starts unless a test asks for `stack` (or `edge`,
`mailbox`), so unit-test runs stay fast.
"""

from __future__ import annotations

import os
import signal
import ssl
from typing import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio

from stack.supervisor import Stack
from tests.harness import create_database, data_dir, drop_database, stack_settings
from tests.support.mail import Mailbox, default_mailbox, use_mailbox


def pytest_configure(config: pytest.Config) -> None:
    # `timeout 600 pytest` and CI cancellations send SIGTERM: treat it like Ctrl-C so the
    # session's teardown still stops the stack (PostgreSQL is a daemon and would outlive us).
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupt)


@pytest_asyncio.fixture(scope="session")
async def stack() -> AsyncIterator[Stack]:
    external_db = os.environ.get("DATABASE_URL")
    database_url = await create_database(external_db) if external_db else None
    with data_dir() as path:
        settings, extra_realtime = stack_settings(path, database_url=database_url)
        system = Stack(settings, extra_realtime_addrs=extra_realtime)
        try:
            await system.start()
            use_mailbox(Mailbox(system.mail_dir))
            yield system
        finally:
            await system.stop()
            if external_db and database_url:
                await drop_database(external_db, database_url)


@pytest.fixture(autouse=True)
def _stack_stays_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """A service that crashes during a test fails that test loudly, with its last log lines
    (also when the supervisor started it again; a test that crashes one on purpose takes its
    crash out of `stack.crashes`)."""
    system = request.getfixturevalue("stack") if "stack" in request.fixturenames else None
    crashes_before = len(system.crashes) if system is not None else 0
    yield
    if system is not None:
        died = system.failure or next(iter(system.crashes[crashes_before:]), None)
        if died is not None:
            pytest.fail(str(died), pytrace=False)


def tls_context(stack: Stack, *, http2: bool = True) -> ssl.SSLContext:
    """Trusts the dev CA. One context per client: httpx sets ALPN on the context it is given,
    and a WebSocket client on an h2-negotiating context would then fail its handshake."""
    context = ssl.create_default_context(cafile=str(stack.ca_file))
    context.set_alpn_protocols(["h2", "http/1.1"] if http2 else ["http/1.1"])
    return context


@pytest.fixture(scope="session")
def mailbox(stack: Stack) -> Mailbox:
    """The mail the stack's services sent, as its dev mail server stored it."""
    return default_mailbox()


@pytest_asyncio.fixture(scope="session")
async def edge(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP/2 (TLS) client of the edge, verifying the dev CA."""
    async with httpx.AsyncClient(base_url=stack.edge_url, verify=tls_context(stack),
                                 http2=True, timeout=15) as client:
        yield client


@pytest_asyncio.fixture(scope="session")
async def edge_http1(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    """HTTP/1.1 (TLS) client of the edge: what older apps and curl use."""
    async with httpx.AsyncClient(base_url=stack.edge_url, verify=tls_context(stack, http2=False),
                                 http2=False, timeout=15) as client:
        yield client
