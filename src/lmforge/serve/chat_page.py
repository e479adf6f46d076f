"""The chat page at `/`: one HTML page, its script and its style sheet, read from the package's
static/ folder and served with a Content-Security-Policy that lets nothing else run.

The page talks to the same server's /v1 API from the browser. It needs no API key to load (the
gate lets these paths through, see gate.py) so that the user can type the key into it.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import Response

# path -> (file in static/, media type)
ASSETS = {
    "/": ("chat.html", "text/html; charset=utf-8"),
    "/chat.js": ("chat.js", "text/javascript; charset=utf-8"),
    "/chat.css": ("chat.css", "text/css; charset=utf-8"),
}
PAGE_PATHS = frozenset(ASSETS)

# Script and style only from this server's own files: no inline script, no inline event handler
# (so model output that slipped into the DOM as HTML still could not run), no other origin.
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # the files are small and change with the package: always revalidate, never run a stale page
    "Cache-Control": "no-cache",
}


def asset_bytes(name: str) -> bytes:
    return resources.files("lmforge.serve").joinpath("static", name).read_bytes()


def add_chat_page(app: FastAPI) -> None:
    """GET /, /chat.js and /chat.css; the files are read once, when the app is built."""
    for path, (name, media_type) in ASSETS.items():
        app.add_api_route(path, _endpoint(asset_bytes(name), media_type), include_in_schema=False)


def _endpoint(body: bytes, media_type: str):
    # a closure, not default arguments: FastAPI would read those as query parameters
    async def asset() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return asset
