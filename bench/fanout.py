"""Order-event fan-out: orders created one at a time in a restaurant whose sockets are held by
bench.sockets; latency is from the create call's response to each socket's receipt.

`create_orders` runs in a load-generator process. It calls CreateOrder through the edge (JSON
over HTTP/2 + TLS), or, when every one of the edge's downstream connections is taken by a socket
(Envoy's overload manager admits 10,000), over gRPC straight to the orders service with the same
token: the origin of the measurement is the response either way.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass

from bench.h2client import H2Pool, tls_context
from bench.openloop import percentile
from bench.scenarios import JSON, bearer, error_kind
from bench.world import Target


@dataclass
class Trigger:
    target: Target
    token: str
    menu_item_ids: list[str]
    count: int
    spacing: float  # seconds between creates (0: back to back, one in flight)
    via: str = "edge"  # or "grpc"
    orders_addr: str = ""
    mesh_dir: str = ""  # the mesh certificates ("grpc" calls hold the edge's); "": plaintext


def create_orders(trigger: Trigger) -> list[tuple[str, float, float]]:
    """[(order id, monotonic time the create was sent, time its response arrived)]"""
    import uvloop

    return uvloop.run(_create_orders(trigger))


async def _create_orders(trigger: Trigger) -> list[tuple[str, float, float]]:
    rng = random.Random(7)
    made: list[tuple[str, float, float]] = []
    if trigger.via == "grpc":
        import grpc

        from posmesh.orders.v1 import orders_pb2 as pb
        from posmesh.orders.v1 import orders_pb2_grpc

        if trigger.mesh_dir:
            from pathlib import Path

            folder = Path(trigger.mesh_dir)
            credentials = grpc.ssl_channel_credentials(
                (folder / "ca.pem").read_bytes(), (folder / "edge-key.pem").read_bytes(),
                (folder / "edge.pem").read_bytes())
            channel = grpc.aio.secure_channel(
                trigger.orders_addr, credentials,
                options=[("grpc.ssl_target_name_override", "orders.posmesh.local")])
        else:
            channel = grpc.aio.insecure_channel(trigger.orders_addr)
        async with channel:
            stub = orders_pb2_grpc.OrderServiceStub(channel)
            metadata = (("authorization", f"Bearer {trigger.token}"),)
            for _ in range(trigger.count):
                request = pb.CreateOrderRequest(
                    request_id=str(uuid.uuid4()), order_type=pb.TAKEAWAY,
                    lines=[pb.OrderLineInput(menu_item_id=rng.choice(trigger.menu_item_ids),
                                             quantity=1)])
                sent = time.monotonic()
                order = await stub.CreateOrder(request, metadata=metadata, timeout=15)
                made.append((order.id, sent, time.monotonic()))
                await asyncio.sleep(trigger.spacing)
        return made
    target = trigger.target
    pool = H2Pool(target.host, target.port, tls_context(target.ca_file), connections=1,
                  server_hostname=target.server_hostname)
    await pool.start()
    headers = [bearer(trigger.token), JSON]
    try:
        for _ in range(trigger.count):
            body = json.dumps({"request_id": str(uuid.uuid4()), "order_type": "TAKEAWAY",
                               "lines": [{"menu_item_id": rng.choice(trigger.menu_item_ids),
                                          "quantity": 1}]}).encode()
            sent = time.monotonic()
            status, reply = await pool.request("POST", "/api/v1/orders", headers, body)
            arrived = time.monotonic()
            if status != 200:
                raise RuntimeError(f"create failed: {error_kind(status, reply)}")
            made.append((json.loads(reply)["id"], sent, arrived))
            await asyncio.sleep(trigger.spacing)
    finally:
        await pool.close()
    return made


def analyse(created: list[tuple[str, float, float]], receipts: dict[str, list[float]],
            sockets: int) -> dict:
    """Per event: time from the create response to the last socket's receipt; per delivery:
    to each receipt. Missing deliveries are counted, never silently dropped."""
    last_receipt, deliveries = [], []
    missing = duplicates = 0
    for order_id, _sent, responded in created:
        times = receipts.get(order_id, [])
        if len(times) < sockets:
            missing += sockets - len(times)
        elif len(times) > sockets:
            duplicates += len(times) - sockets
        if times:
            # A socket may read an event before the create response is processed: clamp at 0.
            deliveries.extend(max(0.0, t - responded) for t in times)
            last_receipt.append(max(0.0, max(times) - responded))
    last_receipt.sort()
    deliveries.sort()
    return {
        "events": len(created),
        "sockets": sockets,
        "deliveries": len(deliveries),
        "missing_deliveries": missing,
        "duplicate_deliveries": duplicates,
        "last_socket_p50_ms": round(percentile(last_receipt, .50) * 1000, 2),
        "last_socket_p99_ms": round(percentile(last_receipt, .99) * 1000, 2),
        "last_socket_max_ms": round(last_receipt[-1] * 1000, 2) if last_receipt else 0.0,
        "delivery_p50_ms": round(percentile(deliveries, .50) * 1000, 2),
        "delivery_p99_ms": round(percentile(deliveries, .99) * 1000, 2),
    }
