"""Interactive API docs at /docs that work offline: Swagger UI's script and style are served by this server from the
`swagger-ui-bundle-v2` package (Swagger UI 5, which reads OpenAPI 3.1), never fetched from a CDN. Without that
package /docs is a short page pointing at /openapi.json, the machine-readable description. ReDoc (/redoc) is off:
it has no local copy.

    app = FastAPI(..., docs_url=None, redoc_url=None)   # FastAPI's own /docs would load Swagger from a CDN
    install_docs(app)
"""

from __future__ import annotations

import html
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from embergpt.serve.api_errors import ApiError

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
ASSETS = {  # the only files served: what the page needs, not the package's whole folder
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}


def swagger_ui_dir() -> Path | None:
    """The folder of Swagger UI's files, or None when swagger-ui-bundle-v2 is not installed (or is incomplete)."""
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    folder = Path(str(swagger_ui_path))
    return folder if all((folder / name).is_file() for name in ASSETS) else None


def install_docs(app: FastAPI, folder: Path | None = None) -> None:
    """Add GET /docs (and its assets under /docs/assets/) to `app`, from `folder` (default: `swagger_ui_dir()`)."""
    folder = folder if folder is not None else swagger_ui_dir()
    openapi_url = app.openapi_url or "/openapi.json"
    title = f"{app.title} API"

    if folder is None:

        @app.get(DOCS_URL, include_in_schema=False)
        async def docs_pointer() -> HTMLResponse:
            return HTMLResponse(_pointer_page(title, openapi_url))

        return

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=title,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
            oauth2_redirect_url=None,
        )

    @app.get(ASSETS_URL + "/{name}", include_in_schema=False)
    async def docs_asset(name: str) -> FileResponse:
        media_type = ASSETS.get(name)
        if media_type is None:
            raise ApiError(404, "not_found", f"no docs asset {name!r}")
        return FileResponse(folder / name, media_type=media_type)


def _pointer_page(title: str, openapi_url: str) -> str:
    url = html.escape(openapi_url)
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>The API is described at <a href='{url}'>{url}</a> (OpenAPI 3.1, JSON).</p>"
        "<p>Interactive docs are served here, with no CDN, when the <code>swagger-ui-bundle-v2</code> package is "
        "installed: <code>pip install swagger-ui-bundle-v2</code> (part of <code>embergpt[serve]</code>).</p>"
        "</body></html>"
    )
