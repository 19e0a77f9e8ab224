"""The reference kitchen screen (web/kitchen/, served by the edge at /kitchen/) in a real browser:
Debian's Chromium driven by playwright-core (tests/browser/kitchen_screen.mjs) against the stack.
It pairs with a code (and says why a wrong one is refused), shows a ticket curled in live over the
WebSocket, bumps it through the API, resumes from its last event id after a network drop, and
shows that a manager revoked it. Chromium and Node come from Debian (installed when missing);
playwright-core is installed into build/browser on first run (npm)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from pathlib import Path

from tests.support.debian import ensure_debian_package
from tests.support.devices import pairing_code
from tests.support.orders import add_menu_item, open_restaurant

ROOT = Path(__file__).resolve().parents[2]
BROWSER_DIR = ROOT / "build" / "browser"
SCRIPT = ROOT / "tests" / "browser" / "kitchen_screen.mjs"


async def _run(*command: str, env: dict | None = None, timeout: float) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    out, err = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode, out.decode(), err.decode()


async def _playwright() -> str:
    """Chromium's path, once it and playwright-core are installed."""
    chromium, _ = await asyncio.to_thread(ensure_debian_package, "chromium", "chromium", "node")
    if not shutil.which("npm"):
        await asyncio.to_thread(ensure_debian_package, "npm", "npm")
    if not (BROWSER_DIR / "node_modules" / "playwright-core").exists():
        code, out, err = await _run("npm", "install", "--no-save", "--no-audit", "--no-fund",
                                    "--prefix", str(BROWSER_DIR), "playwright-core@1",
                                    timeout=300)
        assert code == 0, f"npm install playwright-core failed: {err or out}"
    return chromium


async def test_the_kitchen_screen_pairs_shows_tickets_live_bumps_resumes_and_shows_revocation(
        stack, edge):
    chromium = await _playwright()
    party = await open_restaurant(edge)
    dish = await add_menu_item(edge, party.manager, name="Kitchen burger")
    code = await pairing_code(edge, party.manager, "KITCHEN_SCREEN", "Pass")
    page = await edge.get("/kitchen/")
    assert page.status_code == 200 and "script-src 'self'" in page.headers["content-security-policy"]

    env = {**os.environ, "EDGE_URL": stack.edge_url, "PAIRING_CODE": code["code"],
           "STAFF_TOKEN": party.staff.access_token, "MANAGER_TOKEN": party.manager.access_token,
           "MENU_ITEM_ID": dish["id"], "RESTAURANT_ID": party.restaurant_id,
           "NODE_EXTRA_CA_CERTS": str(stack.ca_file), "NODE_PATH": str(BROWSER_DIR / "node_modules"),
           "CHROMIUM": chromium}
    script = BROWSER_DIR / "kitchen_screen.mjs"  # beside its node_modules, so the import resolves
    shutil.copyfile(SCRIPT, script)
    code_, out, err = await _run("node", str(script), env=env, timeout=120)

    assert code_ == 0, err
    seen = json.loads(out.strip().splitlines()[-1])
    assert "error" not in seen, json.dumps(seen, indent=1)
    assert "PAIRING_CODE_INVALID" in seen["refusal"]
    assert seen["title"] == "Kitchen: Pass"
    assert "2 × Kitchen burger (no onions)" in seen["ticket"]
    assert seen["bumped"] == "PREPARING"
    # After the drop it reconnected from the last event it had applied.
    assert seen["lastBeforeDrop"] and seen["resumedFrom"] == seen["lastBeforeDrop"]
    assert "DEVICE_REVOKED" in seen["revoked"] and seen["tickets_after_revoke"] == 0
