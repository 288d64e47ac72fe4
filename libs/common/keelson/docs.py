"""Swagger UI and ReDoc served with their assets from the service itself, no CDN.

FastAPI's own `/docs` and `/redoc` load their scripts and styles from a third-party CDN:
on a machine without internet access (an air-gapped cluster) they are blank pages, and
the Content-Security-Policy has to allow that CDN. The assets here come from the pinned
`fastapi-offline` package (its package data: Swagger UI's bundle and CSS, ReDoc's
standalone bundle), served under `/docs/assets/`.
"""

from __future__ import annotations

from importlib.resources import as_file, files

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "DOCS_CSP", "DOCS_PATH", "REDOC_PATH", "install_docs"]

DOCS_PATH = "/docs"
REDOC_PATH = "/redoc"
ASSETS_PATH = "/docs/assets"
_REDIRECT_PATH = "/docs/oauth2-redirect"

# What the two pages need, all from the service's own origin: their bundles and styles,
# the inline script that starts Swagger UI, inline styles, data: images, ReDoc's worker.
DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; script-src 'self' 'unsafe-inline'; "
    "style-src 'self' 'unsafe-inline'; worker-src 'self' blob:; frame-ancestors 'none'"
)


def _assets_directory() -> str:
    """The folder `fastapi-offline` ships its static files in (a real folder once installed)."""
    with as_file(files("fastapi_offline") / "static") as folder:
        return str(folder)


def install_docs(app: FastAPI) -> None:
    """`/docs` (Swagger UI) and `/redoc` on `app`, with their assets; `app` was created with
    `docs_url=None, redoc_url=None`. Both read `app.openapi_url` (the merged document on
    the gateway)."""
    app.mount(ASSETS_PATH, StaticFiles(directory=_assets_directory()), name="docs-assets")

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=f"{root}{_REDIRECT_PATH}",
            swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(_REDIRECT_PATH, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get(REDOC_PATH, include_in_schema=False)
    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
            redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
            with_google_fonts=False,
        )
