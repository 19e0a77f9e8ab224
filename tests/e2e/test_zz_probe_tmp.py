import asyncio, time, httpx
from tests.support.orders import open_restaurant
from tests.support.realtime import signed_in, process_health

async def test_probe(stack, edge):
    own = await open_restaurant(edge)
    for round in range(3):
        socks = [await signed_in(stack, own.staff, "kitchen") for _ in range(6)]
        per = []
        for addr in stack.settings.realtime_ws_addrs:
            h = await process_health(addr)
            per.append(h["presence"].get(own.restaurant_id, {}).get("kitchen", 0))
        print("ROUND", round, per)
        for s in socks: await s.close()
        await asyncio.sleep(0.5)
    async with httpx.AsyncClient() as c:
        r = await c.get(f"http://127.0.0.1:{stack.settings.envoy_admin_port}/clusters")
        print("\n".join(l for l in r.text.splitlines() if l.startswith("realtime_ws") and ("outlier" in l or "health_flags" in l or "rq_" in l or "cx_" in l)))
        r = await c.get(f"http://127.0.0.1:{stack.settings.envoy_admin_port}/config_dump?resource=dynamic_active_clusters")
    print(open(stack.envoy_config).read().split("realtime_ws")[-1][:1500])
