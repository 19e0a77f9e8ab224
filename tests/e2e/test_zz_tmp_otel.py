import asyncio
from tests.support.orders import *
from tests.e2e.test_watch_orders import GrpcWatch
async def test_probe(stack, edge):
    party = await open_restaurant(edge)
    for _ in range(3):
        w = GrpcWatch(stack, party.staff, "0")
        await asyncio.sleep(0.3)
        await w.close()
    s = feed_stub(stack)
    from posmesh.orders.v1 import orders_pb2 as pb
    for _ in range(3):
        call = s.WatchRestaurantOrders(pb.WatchRestaurantOrdersRequest(restaurant_id=party.restaurant_id, after_event_id="0"))
        await asyncio.sleep(0.3); call.cancel()
    await asyncio.sleep(0.5)
    log = stack.service_log("orders")
    print("detach errors:", log.count("Failed to detach context"))
    item = await add_menu_item(edge, party.manager)
    await place_order(edge, party.staff, [line(item)])
    assert "Failed to detach context" not in log
