"""The running system answers as its OpenAPI document says: schemathesis generates positive and
negative requests for every operation of the document the edge serves and sends them through the
edge with an owner's token. No answer is a 5xx, every status and content type is documented, and
every body conforms to its schema (errors: a Status whose reason is one the operation lists)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import requests

from stack import api_docs
from tests.fuzz import conformance
from tests.fuzz.conftest import report
from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.restaurants import PASSWORD, ok

pytestmark = pytest.mark.fuzz

EXAMPLES = 8  # per operation and set of cases
# Signing out ends the session used (or all of its user's); switching restaurant replaces it:
# each such case gets a new session of another member, never the owner's.
SESSION_ENDING = frozenset({"AuthService_Logout", "AuthService_SwitchRestaurant"})
SUMMARY_FILE = Path(__file__).resolve().parents[2] / "build" / "schemathesis-summary.txt"


async def test_every_operation_answers_as_the_openapi_document_says(
        stack, edge, no_unhandled_errors):
    party = await open_restaurant(edge)
    owner = party.owner
    category = ok(await edge.post(f"/api/v1/restaurants/{party.restaurant_id}/menu/categories",
                                  headers=owner.headers, json={"name": "Mains"}))
    dish = await add_menu_item(edge, owner, category_id=category["id"])
    order = await place_order(edge, party.staff, [line(dish)])
    document = ok(await edge.get(api_docs.OPENAPI))

    def fresh_token(session: requests.Session) -> str:
        reply = session.post(f"{stack.edge_url}/api/v1/auth/login", json={
            "email": party.manager.email, "password": PASSWORD,
            "restaurant_id": party.restaurant_id})
        reply.raise_for_status()
        return reply.json()["access_token"]

    target = conformance.Target(
        base_url=stack.edge_url, ca_file=str(stack.ca_file), token=owner.access_token,
        real_ids={"restaurant_id": party.restaurant_id, "employee_id": party.staff.employee_id,
                  "order_id": order["id"], "line_id": order["lines"][0]["id"],
                  "item_id": dish["id"], "category_id": category["id"]},
        fresh_token=fresh_token, session_ending=SESSION_ENDING)
    # Blocking HTTP and Hypothesis: off the event loop that supervises the stack.
    summary = await asyncio.to_thread(conformance.run, document, target, EXAMPLES)
    lines = summary.lines()
    report(lines)
    SUMMARY_FILE.parent.mkdir(parents=True, exist_ok=True)
    SUMMARY_FILE.write_text("\n".join([*lines, *summary.per_operation(), *summary.failures]) + "\n")

    assert not summary.failures, f"{len(summary.failures)} failures:\n" + "\n".join(
        summary.failures[:15])
    assert summary.operations == sum(len(item) for item in document["paths"].values())
    assert summary.cases >= summary.operations * EXAMPLES
    assert summary.statuses[200] > summary.operations  # the real ids reach real records
