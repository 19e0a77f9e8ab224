"""`posmesh run --demo`: a demo restaurant, its owner, a manager, staff and a menu, created through
the public JSON API (the same path a POS app takes), and the logins printed.

Every login is verified the way a person does it: the owner uses the verification link, the
others accept their invitation and choose their password, each link read from the dev mail
server's store (so the demo needs the embedded mail server: SMTP_URL unset).

Passwords are random per data dir and kept in `<data dir>/demo-credentials.json` (git-ignored), so
a second `--demo` run on the same data prints the same logins instead of failing.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import ssl
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from stack.mail_store import MailStore

RESTAURANT_NAME = "posmesh Demo Bistro"
PEOPLE = (  # (email, full name, access role, job title)
    ("owner@demo.posmesh.test", "Olivia Owner", "owner", "general manager"),
    ("manager@demo.posmesh.test", "Max Manager", "manager", "floor manager"),
    ("server@demo.posmesh.test", "Sam Server", "staff", "server"),
    ("cook@demo.posmesh.test", "Casey Cook", "staff", "cook"),
)
MENU = {  # category -> [(name, price in pence, tax rate in parts per million: 20 % = 200000)]
    "Mains": [("Fish and chips", 1450, 200_000), ("Halloumi burger", 1295, 200_000)],
    "Sides": [("Chunky chips", 395, 200_000), ("House salad", 450, 200_000)],
    "Drinks": [("Lemonade", 325, 200_000), ("Flat white", 310, 200_000)],
}


@dataclass
class DemoLogin:
    email: str
    password: str
    role: str


class DemoError(RuntimeError):
    pass


def _check(response: httpx.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise DemoError(f"{what}: HTTP {response.status_code} {response.text[:300]}")
    return response.json()


def _credentials_file(data_dir: Path) -> Path:
    return data_dir / "demo-credentials.json"


def _load_or_make_logins(data_dir: Path) -> list[DemoLogin]:
    path = _credentials_file(data_dir)
    if path.exists():
        return [DemoLogin(**entry) for entry in json.loads(path.read_text())["logins"]]
    return [DemoLogin(email, secrets.token_urlsafe(12), role) for email, _, role, _ in PEOPLE]


async def _login(client: httpx.AsyncClient, login: DemoLogin, restaurant_id: str = "") -> dict:
    return _check(await client.post("/api/v1/auth/login", json={
        "email": login.email, "password": login.password, "restaurant_id": restaurant_id}),
        f"log in as {login.email}")


async def _mailed_token(mail: MailStore, to: str, subject_contains: str,
                       timeout: float = 15.0) -> str:
    """The `token` of the link in the newest such mail to `to` in the dev mail store."""
    deadline = time.monotonic() + timeout
    while True:
        for message in await asyncio.to_thread(mail.messages, to=to):
            if subject_contains in message.subject:
                for word in message.text.split():
                    if word.startswith("http") and "token=" in word:
                        return parse_qs(urlsplit(word).query)["token"][0]
        if time.monotonic() > deadline:
            raise DemoError(f"no mail {subject_contains!r} to {to} arrived in {mail.folder}")
        await asyncio.sleep(0.1)


async def _owner_session(client: httpx.AsyncClient, owner: DemoLogin, mail: MailStore) -> dict:
    """Signed in as the owner: registered and verified first when the owner cannot sign in yet
    (registration answers the same for an address that has an account: then sign-in fails)."""
    first = await client.post("/api/v1/auth/login", json={"email": owner.email,
                                                          "password": owner.password})
    if first.status_code == 200:
        return first.json()
    _check(await client.post("/api/v1/auth/register", json={
        "email": owner.email, "password": owner.password, "full_name": PEOPLE[0][1]}),
        "register the demo owner")
    session = await _login(client, owner)
    if not session["user"].get("email_verified"):
        token = await _mailed_token(mail, owner.email, "Confirm your email")
        _check(await client.post("/api/v1/auth/email:verify", json={"token": token}),
               "verify the demo owner's address")
    return session


async def _find_or_create_restaurant(client: httpx.AsyncClient, headers: dict) -> tuple[str, bool]:
    listed = _check(await client.get("/api/v1/restaurants", headers=headers), "list restaurants")
    for restaurant in listed.get("restaurants", []):
        if restaurant["name"] == RESTAURANT_NAME:
            return restaurant["id"], False
    created = _check(await client.post("/api/v1/restaurants", headers=headers, json={
        "name": RESTAURANT_NAME, "timezone": "Europe/London", "currency": "GBP",
        "address": {"line1": "1 Harbour Street", "city": "Whitby", "postal_code": "YO21 3PN",
                    "country": "GB"}}), "create the demo restaurant")
    return created["id"], True


async def seed(edge_url: str, ca_file: Path, data_dir: Path,
               mail_dir: Path) -> tuple[str, list[DemoLogin]]:
    """Creates (or finds) the demo restaurant; returns its id and the logins."""
    logins = _load_or_make_logins(data_dir)
    owner = logins[0]
    mail = MailStore(mail_dir)
    tls = ssl.create_default_context(cafile=str(ca_file))
    async with httpx.AsyncClient(base_url=edge_url, verify=tls, timeout=30) as client:
        session = await _owner_session(client, owner, mail)
        restaurant_id, created = await _find_or_create_restaurant(
            client, {"authorization": f"Bearer {session['access_token']}"})
        if created:
            switched = _check(await client.post(
                "/api/v1/auth/switch-restaurant",
                headers={"authorization": f"Bearer {session['access_token']}"},
                json={"restaurant_id": restaurant_id}), "switch to the demo restaurant")
            headers = {"authorization": f"Bearer {switched['access_token']}"}
            for login, (_, full_name, role, job_title) in zip(logins[1:], PEOPLE[1:]):
                first, last = full_name.split(" ", 1)
                _check(await client.post("/api/v1/employees", headers=headers, json={
                    "first_name": first, "last_name": last, "email": login.email,
                    "access_role": role, "job_title": job_title, "hourly_rate_minor": "1250",
                    "start_date": "2026-01-05"}), f"invite {login.email}")
                # As the invited person: the link from the mail, a password of their own.
                token = await _mailed_token(mail, login.email, "invited you")
                _check(await client.post("/api/v1/invitations:accept", json={
                    "token": token, "password": login.password, "full_name": full_name}),
                    f"accept the invitation of {login.email}")
            menu_path = f"/api/v1/restaurants/{restaurant_id}/menu"
            for position, (category, items) in enumerate(MENU.items()):
                made = _check(await client.post(f"{menu_path}/categories", headers=headers, json={
                    "name": category, "position": position}), f"add category {category}")
                for name, price, tax in items:
                    _check(await client.post(f"{menu_path}/items", headers=headers, json={
                        "category_id": made["id"], "name": name, "price_minor": str(price),
                        "tax_rate_ppm": tax, "available": True}), f"add menu item {name}")
    path = _credentials_file(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"restaurant_id": restaurant_id,
                                "logins": [asdict(login) for login in logins]}, indent=2))
    path.chmod(0o600)
    return restaurant_id, logins


def describe(edge_url: str, ca_file: str, restaurant_id: str, logins: list[DemoLogin],
             mail_dir: str) -> str:
    owner = logins[0]
    rows = "\n".join(f"  {login.role:<8} {login.email:<28} {login.password}" for login in logins)
    return (
        f"\nDemo restaurant {RESTAURANT_NAME!r} ({restaurant_id}); logins:\n{rows}\n"
        f"Try it:\n"
        f"  curl --cacert {ca_file} {edge_url}/api/v1/auth/login -H 'content-type: application/json' \\\n"
        f"       -d '{{\"email\": \"{owner.email}\", \"password\": \"{owner.password}\"}}'\n"
        f"  curl --cacert {ca_file} {edge_url}/api/v1/restaurants/{restaurant_id}/menu "
        f"-H 'authorization: Bearer <access_token>'\n"
        f"Mail the system sent (verification links, invitations, password resets) is kept in "
        f"{mail_dir}:\n"
        f"  .venv/bin/posmesh mail            # list it, newest first\n"
        f"  .venv/bin/posmesh mail show 1     # print the newest (click its link)\n"
    )
