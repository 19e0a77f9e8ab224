"""The API documents and their explorer, as files the edge serves itself (direct responses):

    GET /api/v1/openapi.json    the JSON API, OpenAPI 3.1 (stack.openapi)
    GET /api/v1/asyncapi.json   the WebSocket protocol, AsyncAPI 3 (stack.asyncapi)
    GET /api/v1/docs            Swagger UI over openapi.json, its assets shipped by the
                                swagger-ui-py wheel (Swagger UI 5, which reads OpenAPI 3.1)

`write(folder, descriptor_set)` generates them and says how the edge serves each: stack.codegen
writes build/api, and every rendering of the Envoy config writes its own copy beside it (so the
edge serves what the current code generates, and a container serves what it was rendered with).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from stack import kitchen_screen

OPENAPI = "/api/v1/openapi.json"
ASYNCAPI = "/api/v1/asyncapi.json"
DOCS = "/api/v1/docs"
DOCUMENT_MAX_AGE = 300  # documents change with a deployment
ASSET_MAX_AGE = 86400  # Swagger UI's files change only with its package
# The explorer runs its own script and styles and fetches openapi.json, all from this origin;
# Swagger UI's stylesheet draws its icons from data: URIs.
EXPLORER_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'")


@dataclass(frozen=True)
class Published:
    """A file the edge answers a GET with."""

    path: str  # URL path
    file: str  # relative to the published folder
    content_type: str
    max_age: int
    csp: str = ""


PUBLISHED = (
    Published(OPENAPI, "openapi.json", "application/json", DOCUMENT_MAX_AGE),
    Published(ASYNCAPI, "asyncapi.json", "application/json", DOCUMENT_MAX_AGE),
    Published(DOCS, "docs/index.html", "text/html; charset=utf-8", DOCUMENT_MAX_AGE, EXPLORER_CSP),
    Published(f"{DOCS}/explorer.js", "docs/explorer.js", "text/javascript; charset=utf-8",
              DOCUMENT_MAX_AGE),
    Published(f"{DOCS}/swagger-ui.css", "docs/swagger-ui.css", "text/css; charset=utf-8",
              ASSET_MAX_AGE),
    Published(f"{DOCS}/swagger-ui-bundle.js", "docs/swagger-ui-bundle.js",
              "text/javascript; charset=utf-8", ASSET_MAX_AGE),
    Published(f"{DOCS}/favicon-32x32.png", "docs/favicon-32x32.png", "image/png", ASSET_MAX_AGE),
)
# The reference kitchen screen rides along: static files the edge serves the same way.
PUBLISHED += tuple(Published(path, f"kitchen/{name}", content_type, kitchen_screen.MAX_AGE, csp)
                   for path, name, content_type, csp in kitchen_screen.FILES)
SWAGGER_UI_ASSETS = ("swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png")

_PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>posmesh API</title>
<link rel="stylesheet" href="{DOCS}/swagger-ui.css">
<link rel="icon" type="image/png" href="{DOCS}/favicon-32x32.png">
</head>
<body>
<div id="explorer"></div>
<script src="{DOCS}/swagger-ui-bundle.js"></script>
<script src="{DOCS}/explorer.js"></script>
</body>
</html>
"""
# In a file of its own: the page's CSP allows no inline script.
_SCRIPT = f"""window.addEventListener("load", function () {{
  window.explorer = SwaggerUIBundle({{
    url: "{OPENAPI}",
    dom_id: "#explorer",
    deepLinking: true,
    persistAuthorization: false,
    tryItOutEnabled: false
  }});
}});
"""


@dataclass(frozen=True)
class Served:
    """A published file as the edge serves it."""

    path: str
    filename: Path
    content_type: str
    cache_control: str
    etag: str
    csp: str
    size: int


def swagger_ui_folder() -> Path:
    return Path(str(resources.files("swagger_ui") / "static"))


def _dump(document: dict) -> str:
    return json.dumps(document, ensure_ascii=False, separators=(",", ":")) + "\n"


def _replace(target: Path, content: bytes) -> None:
    """Whole or not at all: a stack starting meanwhile never copies half a file."""
    partial = target.with_name(target.name + ".partial")
    partial.write_bytes(content)
    os.replace(partial, target)


def write(folder: Path, descriptor_set: Path) -> list[Served]:
    """Generate the documents and the explorer into `folder`; how the edge serves each file."""
    from stack import asyncapi, contract, openapi  # they need the generated code

    loaded = contract.load(descriptor_set)
    contents = {
        "openapi.json": _dump(openapi.build(loaded)).encode(),
        "asyncapi.json": _dump(asyncapi.build(loaded)).encode(),
        "docs/index.html": _PAGE.encode(),
        "docs/explorer.js": _SCRIPT.encode(),
        **{f"docs/{name}": (swagger_ui_folder() / name).read_bytes() for name in SWAGGER_UI_ASSETS},
        **kitchen_screen.contents(),
    }
    served = []
    for item in PUBLISHED:
        target = folder / item.file
        target.parent.mkdir(parents=True, exist_ok=True)
        content = contents[item.file]
        _replace(target, content)
        served.append(Served(
            path=item.path, filename=target.resolve(), content_type=item.content_type,
            cache_control=f"public, max-age={item.max_age}",
            etag='"' + hashlib.sha256(content).hexdigest()[:32] + '"', csp=item.csp,
            size=len(content)))
    return served
