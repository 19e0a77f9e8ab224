import asyncio, json
import httpx

async def probe(c, label, method, url, **kw):
    try:
        r = await asyncio.wait_for(c.request(method, url, **kw), 12)
        print("PROBE", label, r.status_code, r.headers.get("content-type"), r.text[:250].replace("\n"," "))
    except Exception as e:
        print("PROBE", label, "EXC", repr(e)[:200])

async def test_scratch(stack, edge, edge_http1, fuzz_world):
    w = fuzz_world
    h = w.a.owner.headers
    for name, c in (("h1", edge_http1), ("h2", edge)):
        for ct in ("application/grpc", "text/plain", "", "application/x-www-form-urlencoded", "application/json; charset=latin1"):
            await probe(c, f"{name} GET ct={ct}", "GET", f"/api/v1/orders/{w.a_order['id']}", headers={**h, "content-type": ct})
            await probe(c, f"{name} POST ct={ct}", "POST", "/api/v1/restaurants", content=b'{"name": 1}', headers={**h, "content-type": ct})
        for xff in ("garbage", "1.2.3.4", "::1", "127.0.0.1, 10.0.0.1"):
            await probe(c, f"{name} xff={xff}", "GET", f"/api/v1/orders/{w.a_order['id']}", headers={**h, "x-forwarded-for": xff})
        await probe(c, f"{name} accept sse", "GET", f"/api/v1/orders/{w.a_order['id']}", headers={**h, "accept": "text/event-stream"})
        await probe(c, f"{name} traceparent junk", "GET", f"/api/v1/orders/{w.a_order['id']}", headers={**h, "traceparent": "x"*20000})
