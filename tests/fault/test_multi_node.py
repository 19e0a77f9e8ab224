"""The multi-node rehearsal: two "nodes" (network namespaces with their own addresses, each running
`posmesh run`: Envoy and the four services) and a third with PostgreSQL, Redis and the mail
server (tests/support/netns.py). What a cluster promises, shown on this machine:

- a kitchen screen on node A gets, once and in order, the events of orders created through
  node B's edge (realtime needs no sticky sessions: the feed is shared, not per node);
- node B killed mid-load (SIGKILL to every process of the node): no order is lost or duplicated
  (clients retry on node A with the same request id), and its screens reconnect to node A and
  resume from their last event id with no gap. The figures are printed (`-s`) and recorded as
  the test's properties: events delivered, gaps, duplicates, reconnect time.

Not shown here (docs/deploy.md): a node that vanishes silently (power loss: no reset, clients
wait for their timeouts), Kubernetes itself (DNS, kube-proxy, rescheduling).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import datetime
from dataclasses import dataclass, field

import httpx
import pytest
import pytest_asyncio

from tests.fault.subscriber import ResumingScreen
from tests.support.mail import Mailbox, mailbox_in_use
from tests.support.netns import Lab
from tests.support.orders import add_menu_item, line, open_restaurant, order_body
from tests.support.realtime import new_session, signed_in

pytestmark = pytest.mark.fault

ORDERS_THROUGH_B = 12
LOAD_RATE = 8.0  # order creations per second, all through node B until it dies
LOAD_BEFORE_KILL, LOAD_AFTER_KILL = 2.5, 3.0  # seconds
BURST_AT_KILL = 12  # creations sent together just before node B dies


@dataclass(frozen=True)
class Edge:
    """What the screen helpers need of a stack: where its edge is and whom to trust."""

    edge_url: str
    ca_file: object


@pytest_asyncio.fixture(scope="module")
async def lab():
    async with Lab.create() as lab:
        await lab.start_stores()
        migrated = await lab.migrate()
        assert "every schema migrated" in migrated
        await asyncio.gather(*(lab.start_node(node) for node in ("a", "b")))
        with mailbox_in_use(Mailbox(lab.mail_dir)):
            yield lab


@pytest_asyncio.fixture(scope="module")
async def clients(lab):
    async with lab.client("a") as a, lab.client("b") as b:
        yield {"a": a, "b": b}


def edge(lab: Lab, node: str) -> Edge:
    return Edge(lab.edge_url(node), lab.ca_file)


@dataclass
class FailoverScreen(ResumingScreen):
    """A screen that knows every node's edge (as an app knows every address of its API's name):
    when its socket dies it reconnects to the next edge that answers, resuming from its last
    event id. Each reconnection's duration is kept."""

    edges: list[Edge] = field(default_factory=list)
    reconnect_seconds: list[float] = field(default_factory=list)
    resumed_on: list[str] = field(default_factory=list)

    @classmethod
    async def start_on(cls, edges: list[Edge], member) -> "FailoverScreen":
        screen = cls(edges[0], member, "kitchen", edges=edges)
        screen._sock = await signed_in(edges[0], member, "kitchen")
        screen._task = asyncio.ensure_future(screen._run())
        return screen

    async def _connect(self):
        lost_at = time.monotonic()
        delay = 0.05
        for attempt in range(200):
            target = self.edges[attempt % len(self.edges)]
            try:
                sock = await signed_in(target, self.member, self.connection_type,
                                       last_event_id=self.last_event_id)
            except Exception as exc:  # refused, reset, timed out: the next edge
                self.connect_errors.append(f"{target.edge_url} {type(exc).__name__} after "
                                           f"{time.monotonic() - lost_at:.3f}s")
                if attempt % len(self.edges) == len(self.edges) - 1:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 1.0)
                continue
            self.stack = target
            self.reconnect_seconds.append(time.monotonic() - lost_at)
            self.resumed_on.append(target.edge_url)
            return sock
        raise AssertionError(f"no edge took the screen back: {self.connect_errors[-4:]}")


@dataclass
class Creation:
    request_id: str
    due: float
    status: int | None = None
    order_id: str = ""
    answered_by: str = ""
    attempts: list[str] = field(default_factory=list)


async def create_with_failover(clients: dict[str, httpx.AsyncClient], order: dict, member,
                               creation: Creation, nodes: list[str]) -> None:
    """POST the order to the first node; on no answer or a 5xx, the same body (same request id)
    to the next: the app's retry. The request id makes a retry of a committed order return it."""
    for node in nodes * 2:
        creation.attempts.append(node)
        try:
            reply = await clients[node].post("/api/v1/orders", headers=member.headers,
                                             json=order, timeout=10)
        except httpx.TransportError as exc:
            creation.attempts[-1] += f" {type(exc).__name__}"
            continue
        if reply.status_code >= 500:
            creation.attempts[-1] += f" {reply.status_code}"
            continue
        creation.status, creation.answered_by = reply.status_code, node
        if reply.status_code == 200:
            creation.order_id = reply.json()["id"]
        return


async def all_orders(client: httpx.AsyncClient, member) -> list[dict]:
    orders, token = [], ""
    while True:
        reply = await client.get("/api/v1/orders", headers=member.headers,
                                 params={"page_size": 100, **({"page_token": token} if token else {})})
        assert reply.status_code == 200, reply.text
        page = reply.json()
        orders += page["orders"]
        token = page.get("next_page_token", "")
        if not token:
            return orders


def event_figures(screen: ResumingScreen) -> dict:
    ids = [int(e["id"]) for e in screen.events]
    gaps = sum(1 for before, after in zip(ids, ids[1:]) if after > before + 1)
    return {"events": len(ids), "duplicates": len(ids) - len(set(ids)), "gaps": gaps,
            "out_of_order": sum(1 for before, after in zip(ids, ids[1:]) if after < before),
            "resyncs": screen.resyncs}


async def test_a_screen_on_node_a_gets_once_and_in_order_the_orders_created_through_node_b(
        lab, clients):
    party = await open_restaurant(clients["b"])
    dish = await add_menu_item(clients["a"], party.manager, price_minor=500)
    screen = await ResumingScreen.start(edge(lab, "a"), await new_session(clients["a"], party.staff))
    try:
        created = []
        for _ in range(ORDERS_THROUGH_B):
            reply = await clients["b"].post("/api/v1/orders", headers=party.staff.headers,
                                            json=order_body([line(dish)]))
            assert reply.status_code == 200, reply.text
            created.append(reply.json()["id"])
        await screen.wait_for_orders(created, timeout=15)
    finally:
        await screen.stop()

    assert screen.order_ids() == created  # each once, in the order they were created
    screen.assert_no_gap_no_duplicate()
    assert screen.reconnects == 0


async def test_the_services_health_answers_the_kubernetes_probe_command_over_mutual_tls(lab):
    for service in ("auth", "staff", "orders", "realtime"):
        code, output = await lab.probe("a", service)

        assert code == 0, output
        assert f"{service} at " in output and "SERVING" in output


async def test_node_b_killed_under_load_loses_no_order_and_its_screens_resume_on_node_a(
        lab, clients, record_property):
    party = await open_restaurant(clients["a"])
    dish = await add_menu_item(clients["a"], party.manager, price_minor=700)
    member = party.staff
    on_a = await ResumingScreen.start(edge(lab, "a"), await new_session(clients["a"], member))
    on_b = await FailoverScreen.start_on([edge(lab, "b"), edge(lab, "a")],
                                         await new_session(clients["b"], member))
    creations: list[Creation] = []
    tasks = []

    def send(due: float) -> Creation:
        creation = Creation(str(uuid.uuid4()), due)
        creations.append(creation)
        tasks.append(asyncio.ensure_future(create_with_failover(
            clients, order_body([line(dish)], request_id=creation.request_id), member,
            creation, ["b", "a"])))
        return creation

    try:
        started = time.monotonic()
        killed_at = None
        total = int(LOAD_RATE * (LOAD_BEFORE_KILL + LOAD_AFTER_KILL))
        for index in range(total):
            due = started + index / LOAD_RATE
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if killed_at is None and due - started >= LOAD_BEFORE_KILL:
                # A burst, and the kill while it is in flight: some of it B answers, the rest
                # fails there and is retried on A. (Committed by B but never answered: a window
                # of about a millisecond, rarely hit; counted below when it is. A retry of a
                # committed order returning it is tests/e2e/test_orders_create.py's.)
                burst = [send(time.monotonic()) for _ in range(BURST_AT_KILL)]
                await asyncio.sleep(0.05)
                killed_wall = time.time()
                killed = await asyncio.to_thread(lab.kill_node, "b")
                killed_at = time.monotonic()
            send(due)
        await asyncio.gather(*tasks)
        created = [c.order_id for c in creations]
        await on_a.wait_for_orders(created, timeout=20)
        await on_b.wait_for_orders(created, timeout=20)
    finally:
        for task in tasks:
            task.cancel()
        await on_a.stop()
        await on_b.stop()

    figures = {
        "processes_killed_on_b": killed,
        "orders_requested": len(creations),
        "orders_answered_by_b": sum(c.answered_by == "b" for c in creations),
        "orders_retried_on_a": sum(len(c.attempts) > 1 for c in creations),
        # Sent to B just before it died and unanswered by it, then retried on A...
        "orders_in_flight_at_kill": sum(c.answered_by == "a" for c in burst),
        "screen_on_a": event_figures(on_a),
        "screen_from_b_to_a": {**event_figures(on_b),
                               "reconnect_seconds": [round(s, 3) for s in on_b.reconnect_seconds],
                               "resumed_on": on_b.resumed_on,
                               "failed_attempts": on_b.connect_errors},
    }
    print("multi-node rehearsal:", json.dumps(figures))
    for key, value in figures.items():
        record_property(key, value)

    # No order lost: every creation was answered 200 (through B, or through A on retry)...
    unanswered = [c for c in creations if c.status != 200]
    assert not unanswered, [(c.request_id, c.status, c.attempts) for c in unanswered]
    assert figures["orders_answered_by_b"] > 0 and figures["orders_in_flight_at_kill"] > 0
    # ...and exists exactly once, whichever node committed it.
    stored = [o for o in await all_orders(clients["a"], member)
              if o["request_id"] in {c.request_id for c in creations}]
    in_flight = {c.request_id for c in burst if c.answered_by == "a"}
    # ...of which B had committed (before it died) this many: the retry returned them.
    figures["in_flight_committed_by_b"] = sum(
        o["request_id"] in in_flight
        and datetime.fromisoformat(o["create_time"].replace("Z", "+00:00")).timestamp()
        < killed_wall for o in stored)
    print("multi-node rehearsal, orders B committed but never answered:",
          figures["in_flight_committed_by_b"])
    record_property("in_flight_committed_by_b", figures["in_flight_committed_by_b"])
    assert sorted(o["request_id"] for o in stored) == sorted(c.request_id for c in creations)
    assert {o["id"] for o in stored} == {c.order_id for c in creations}
    # Both screens: every order's event once, in order, no gap, no resync.
    for screen in (on_a, on_b):
        assert sorted(screen.order_ids()) == sorted(created)
        screen.assert_no_gap_no_duplicate()
    # The screen that was on B came back through A, resuming where it was.
    assert on_b.reconnects == 1 and on_b.resumed_on == [lab.edge_url("a")]
    assert on_b.reconnect_seconds[0] < 5.0
    assert on_a.reconnects == 0
    # And the probe a Kubernetes node would run says so about the dead node's service.
    code, output = await lab.probe("b", "orders")
    assert code == 1 and "UNAVAILABLE" in output, output
