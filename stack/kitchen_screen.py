"""The reference kitchen screen (web/kitchen/), served by the edge itself at /kitchen/ like the
API documents (stack/api_docs.py): static files from the repository, no build step, nothing from
a CDN. docs/realtime.md#the-reference-kitchen-screen."""

from __future__ import annotations

from pathlib import Path

FOLDER = Path(__file__).resolve().parent.parent / "web" / "kitchen"
PAGE = "/kitchen/"
MAX_AGE = 60  # the screen reloads rarely; a deployment reaches it within a minute
# Its own script and styles, and the API and the WebSocket of this origin only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")
# (URL path, file in web/kitchen, content type, CSP)
FILES = (
    (PAGE, "index.html", "text/html; charset=utf-8", CSP),
    ("/kitchen", "index.html", "text/html; charset=utf-8", CSP),
    (f"{PAGE}kitchen.js", "kitchen.js", "text/javascript; charset=utf-8", ""),
    (f"{PAGE}kitchen.css", "kitchen.css", "text/css; charset=utf-8", ""),
)


def contents() -> dict[str, bytes]:
    """The files, keyed as the published folder holds them (kitchen/<name>)."""
    return {f"kitchen/{name}": (FOLDER / name).read_bytes() for _, name, _, _ in FILES}
