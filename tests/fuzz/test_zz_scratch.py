import asyncio, json, time
from websockets.exceptions import ConnectionClosed
from tests.support.ws_client import AppSocket
from tests.support.realtime import signed_in

async def flood_one(sock):
    message = json.dumps({"type": "ping", "data": {"timestamp": 0}})
    sent = 0
    t = time.monotonic()
    try:
        while time.monotonic() - t < 8:
            for _ in range(100):
                await sock.ws.send(message); sent += 1
            await asyncio.sleep(0.01)
    except ConnectionClosed as exc:
        return ("closed", repr(exc), exc.rcvd, sent, round(time.monotonic()-t, 2))
    return ("not closed", sent)

async def test_scratch(stack, fuzz_world):
    m = fuzz_world.a.staff
    addr = stack.settings.realtime_ws_addrs[0]
    sock = await AppSocket.open(f"http://{addr}", "pos", m.restaurant_id)
    print("hello", (await sock.authenticate(m.access_token, m.user_id))["type"])
    print("DIRECT", await flood_one(sock))
    sock = await signed_in(stack, m, "pos")
    print("EDGE", await flood_one(sock))
