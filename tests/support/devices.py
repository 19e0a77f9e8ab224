"""Paired devices and PIN sign-ins for e2e tests, over the public JSON API through Envoy.

    till = await pair_device(edge, party.manager, "TILL")
    await set_pin(edge, party.staff, "2580")
    clerk = await pin_login(edge, till, party.staff, "2580")      # a staff session on the till
    await edge.get("/api/v1/orders:active", headers=clerk.headers)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx

from tests.support.restaurants import Session, ok


@dataclass(frozen=True)
class Device:
    device_id: str
    device_type: str
    restaurant_id: str
    access_token: str
    refresh_token: str
    record: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


@dataclass(frozen=True)
class StaffOnDevice:
    """A person signed in on a device with their PIN."""
    user_id: str
    device_id: str
    session_id: str
    access_token: str
    refresh_token: str
    role: str
    restaurant_id: str
    body: dict[str, Any]

    @property
    def headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.access_token}"}


async def pairing_code(edge: httpx.AsyncClient, manager: Session, device_type: str,
                       name: str = "") -> dict[str, Any]:
    return ok(await edge.post("/api/v1/devices:createPairingCode", headers=manager.headers,
                              json={"device_type": device_type, "name": name}))


async def pair_device(edge: httpx.AsyncClient, manager: Session, device_type: str,
                      name: str = "") -> Device:
    code = await pairing_code(edge, manager, device_type, name)
    body = ok(await edge.post("/api/v1/devices:pair", json={"code": code["code"]}))
    device = body["device"]
    return Device(device["id"], device["device_type"], device["restaurant_id"],
                  body["access_token"], body["refresh_token"], device)


async def set_pin(edge: httpx.AsyncClient, member: Session, pin: str) -> None:
    ok(await edge.post("/api/v1/pin:set", headers=member.headers, json={"pin": pin}))


def _staff(body: dict[str, Any]) -> StaffOnDevice:
    return StaffOnDevice(body["user"]["id"], body["device_id"], body["session_id"],
                         body["access_token"], body["refresh_token"], body["user"]["role"],
                         body["user"]["restaurant_id"], body)


async def pin_login(edge: httpx.AsyncClient, device: Device, member: Session | str,
                    pin: str) -> StaffOnDevice:
    user_id = member if isinstance(member, str) else member.user_id
    return _staff(ok(await edge.post("/api/v1/devices:pinLogin", headers=device.headers,
                                     json={"user_id": user_id, "pin": pin})))


async def setup_pin(edge: httpx.AsyncClient, device: Device, user_id: str, setup_code: str,
                    new_pin: str) -> StaffOnDevice:
    return _staff(ok(await edge.post("/api/v1/devices:setupPin", headers=device.headers, json={
        "user_id": user_id, "setup_code": setup_code, "new_pin": new_pin})))
