"""`posmesh run --demo`, part two: a paired demo till and kitchen screen and a PIN for the demo's
server, so a newcomer can sign in on the till with curl.

The devices' refresh tokens are kept in `<data dir>/demo-devices.json` (git-ignored, 0600) and
rotated on each run, which prints a fresh access token of the till; a device revoked meanwhile
(or a data dir without the file) is paired again with a new code.
"""

from __future__ import annotations

import json
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx

from stack.demo import DemoError, DemoLogin, _check, _login
from services.auth.pins import is_trivial

DEVICES = (("TILL", "Demo till"), ("KITCHEN_SCREEN", "Demo kitchen screen"))


@dataclass
class DemoDevice:
    device_type: str
    name: str
    device_id: str
    access_token: str


@dataclass
class DemoTill:
    devices: list[DemoDevice]
    user_id: str  # the demo server's
    email: str
    pin: str
    browser_code: str = ""  # a fresh pairing code for the kitchen screen at /kitchen/


def _file(data_dir: Path) -> Path:
    return data_dir / "demo-devices.json"


def _new_pin() -> str:
    while True:
        pin = f"{secrets.randbelow(10 ** 4):04d}"
        if not is_trivial(pin):
            return pin


async def pair_demo_devices(edge_url: str, ca_file: Path, data_dir: Path, restaurant_id: str,
                            logins: list[DemoLogin]) -> DemoTill:
    """Pairs (or refreshes) the demo devices and sets the demo server's PIN."""
    path = _file(data_dir)
    kept = json.loads(path.read_text()) if path.exists() else {}
    pin = kept.get("pin") or _new_pin()
    manager, server = logins[1], logins[2]
    tls = ssl.create_default_context(cafile=str(ca_file))
    devices: list[DemoDevice] = []
    refresh_tokens: dict[str, str] = {}
    async with httpx.AsyncClient(base_url=edge_url, verify=tls, timeout=30) as client:
        managing = await _login(client, manager, restaurant_id)
        headers = {"authorization": f"Bearer {managing['access_token']}"}
        for device_type, name in DEVICES:
            credential = None
            refresh = kept.get("refresh_tokens", {}).get(device_type)
            if refresh:
                reply = await client.post("/api/v1/auth/refresh", json={"refresh_token": refresh})
                if reply.status_code == 200:
                    credential = reply.json()
                    device_id = credential["device_id"]
            if credential is None:
                code = _check(await client.post("/api/v1/devices:createPairingCode",
                                                headers=headers,
                                                json={"device_type": device_type, "name": name}),
                              f"create a pairing code for the {name}")
                credential = _check(await client.post("/api/v1/devices:pair",
                                                      json={"code": code["code"]}),
                                    f"pair the {name}")
                device_id = credential["device"]["id"]
            refresh_tokens[device_type] = credential["refresh_token"]
            devices.append(DemoDevice(device_type, name, device_id, credential["access_token"]))
        browser = _check(await client.post("/api/v1/devices:createPairingCode", headers=headers,
                                           json={"device_type": "KITCHEN_SCREEN",
                                                 "name": "Browser kitchen screen"}),
                         "create a pairing code for the browser's kitchen screen")
        serving = await _login(client, server, restaurant_id)
        _check(await client.post("/api/v1/pin:set", json={"pin": pin}, headers={
            "authorization": f"Bearer {serving['access_token']}"}), "set the demo server's PIN")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pin": pin, "refresh_tokens": refresh_tokens}, indent=2))
    path.chmod(0o600)
    if len(devices) != len(DEVICES):
        raise DemoError("the demo devices could not be paired")
    return DemoTill(devices, serving["user"]["id"], server.email, pin, browser["code"])


def describe(edge_url: str, ca_file: str, till: DemoTill) -> str:
    by_type = {device.device_type: device for device in till.devices}
    lines = [f"  {device.name:<20} {device.device_type:<15} {device.device_id}"
             for device in till.devices]
    return (
        "Paired devices:\n" + "\n".join(lines) + "\n"
        f"Sign in on the till as {till.email} with PIN {till.pin} (the till's access token below "
        "lasts a few minutes; run --demo again for a fresh one):\n"
        f"  TILL={by_type['TILL'].access_token}\n"
        f"  curl --cacert {ca_file} {edge_url}/api/v1/devices:pinLogin -H \"authorization: Bearer "
        f"$TILL\" \\\n       -H 'content-type: application/json' "
        f"-d '{{\"user_id\": \"{till.user_id}\", \"pin\": \"{till.pin}\"}}'\n"
        f"  curl --cacert {ca_file} {edge_url}/api/v1/devices:pinUsers -H \"authorization: "
        f"Bearer $TILL\"   # who can sign in there\n"
        f"Open {edge_url}/kitchen/ and pair it with the code {till.browser_code} (valid 10 "
        "minutes), then watch the orders you curl in arrive.\n"
    )
