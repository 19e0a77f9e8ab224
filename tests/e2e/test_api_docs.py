"""The API documents as the edge serves them: public, typed, cacheable and revalidated by ETag,
the explorer under its own CSP with everything from this origin, the served OpenAPI document the
generated one, and a live socket's messages conforming to the AsyncAPI document."""

from __future__ import annotations

import re

import jsonschema
import pytest
from openapi_spec_validator import validate

from stack import api_docs, codegen, contract, openapi
from tests.support.orders import add_menu_item, line, open_restaurant, place_order
from tests.support.realtime import signed_in

PAGE = api_docs.DOCS


@pytest.mark.parametrize("item", api_docs.PUBLISHED, ids=lambda item: item.path)
async def test_every_document_is_served_without_a_token_typed_and_cacheable(edge, item):
    reply = await edge.get(item.path)

    assert reply.status_code == 200, reply.text[:200]
    assert reply.headers["content-type"] == item.content_type
    assert reply.headers["cache-control"] == f"public, max-age={item.max_age}"
    assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["etag"])
    assert len(reply.content) == int(reply.headers["content-length"]) > 100


async def test_a_client_holding_the_current_etag_gets_304_without_a_body(edge):
    first = await edge.get(api_docs.OPENAPI)
    again = await edge.get(api_docs.OPENAPI, headers={"if-none-match": first.headers["etag"]})
    stale = await edge.get(api_docs.OPENAPI, headers={"if-none-match": '"0123"'})

    assert (again.status_code, again.content) == (304, b"")
    assert again.headers["etag"] == first.headers["etag"]
    assert "location" not in again.headers
    assert stale.status_code == 200 and stale.content == first.content


async def test_head_is_answered_and_other_methods_are_not_served(edge):
    head = await edge.head(api_docs.OPENAPI)
    post = await edge.post(api_docs.OPENAPI, json={})

    assert head.status_code == 200
    assert post.status_code == 404 and post.json()["details"][0]["reason"] == "NOT_FOUND"


async def test_the_served_openapi_document_is_valid_and_the_one_generated_from_the_contract(edge):
    served = (await edge.get(api_docs.OPENAPI)).json()

    validate(served)
    assert served == openapi.build(contract.load(codegen.DESCRIPTOR_SET))


async def test_the_explorer_loads_only_its_own_scripts_and_styles_under_a_strict_csp(edge):
    page = await edge.get(PAGE)
    csp = page.headers["content-security-policy"]
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)

    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert "unsafe" not in csp and "frame-ancestors 'none'" in csp
    assert "<script>" not in page.text  # no inline script: the CSP would refuse it
    assert sources and all(source.startswith(f"{PAGE}/") for source in sources)
    for source in sources:
        assert (await edge.get(source)).status_code == 200, source
    explorer = (await edge.get(f"{PAGE}/explorer.js")).text
    assert f'url: "{api_docs.OPENAPI}"' in explorer


async def test_a_live_sockets_messages_conform_to_the_asyncapi_document(stack, edge):
    document = (await edge.get(api_docs.ASYNCAPI)).json()

    def conforms(name: str, message: dict) -> None:
        payload = document["components"]["messages"][name]["payload"]
        jsonschema.Draft7Validator({**payload, "components": document["components"]}).validate(message)

    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager)
    sock = await signed_in(stack, party.staff, "kitchen")
    try:
        conforms("auth_success", sock.messages("auth_success")[0])
        conforms("serverPong", await sock.ping())
        order = await place_order(edge, party.staff, [line(dish)])
        event = await sock.next("order.created", timeout=10)
        conforms("order.created", event)
        assert event["data"]["order"]["id"] == order["id"]
        await sock.send({"type": "no-such-type"})
        conforms("error", await sock.next("error"))
    finally:
        await sock.close()
