"""/docs works offline (issue 15): Swagger UI's files come from this server, never from a CDN."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import httpx
import pytest
from fastapi import FastAPI
from serve_browser_fixtures import needs_chromium
from starlette.testclient import TestClient

from embergpt.serve import api_docs

pytest_plugins = ["serve_fixtures", "serve_browser_fixtures"]

needs_bundle = pytest.mark.skipif(api_docs.swagger_ui_dir() is None, reason="swagger-ui-bundle-v2 is not installed")


def page_urls(page: str) -> list[str]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", page) + re.findall(r"url:\s*'([^']+)'", page)


@needs_bundle
def test_docs_page_and_its_assets_are_local(server_url):
    r = httpx.get(server_url + "/docs", timeout=30)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    assert "http://" not in r.text and "https://" not in r.text  # nothing from another host
    urls = page_urls(r.text)
    assert "/openapi.json" in urls and f"{api_docs.ASSETS_URL}/swagger-ui-bundle.js" in urls
    for url in urls:
        asset = httpx.get(server_url + url, timeout=30)
        assert asset.status_code == 200, url
    bundle = httpx.get(server_url + api_docs.ASSETS_URL + "/swagger-ui-bundle.js", timeout=30)
    on_disk = (api_docs.swagger_ui_dir() / "swagger-ui-bundle.js").read_bytes()
    assert bundle.content == on_disk and b"SwaggerUIBundle" in on_disk
    # only the page's own files: not the package's other files, not a path out of its folder
    for name in ("index.html", "swagger-initializer.js", "..%2F__init__.py", "swagger-ui.js.map"):
        r = httpx.get(server_url + f"{api_docs.ASSETS_URL}/{name}", timeout=30)
        assert r.status_code == 404 and r.json()["error"] == "not_found", name
    assert httpx.get(server_url + "/redoc", timeout=30).status_code == 404  # ReDoc has no local copy: off


def test_without_the_bundle_docs_points_at_openapi_json(monkeypatch):
    monkeypatch.setattr(api_docs, "swagger_ui_dir", lambda: None)  # as when swagger-ui-bundle-v2 is not installed
    app = FastAPI(title="t", docs_url=None, redoc_url=None)
    api_docs.install_docs(app)
    with TestClient(app) as client:
        page = client.get("/docs")
        assert page.status_code == 200 and "http" not in page.text.replace("http-equiv", "")
        assert page_urls(page.text) == ["/openapi.json"]
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
        assert client.get(api_docs.ASSETS_URL + "/swagger-ui-bundle.js").status_code == 404


@pytest.mark.browser
@needs_chromium
@needs_bundle
def test_docs_render_in_a_browser_with_no_network(browser, server_url):
    """Every request to a host other than the server is aborted: Swagger must still list every operation."""
    server_host = urlsplit(server_url).netloc
    foreign: list[str] = []
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r) -> None:
        if urlsplit(r.request.url).netloc == server_host:
            r.continue_()
        else:
            foreign.append(r.request.url)
            r.abort()

    try:
        page.route("**/*", route)
        page.goto(server_url + "/docs")
        page.wait_for_selector(".opblock", timeout=30_000)
        shown = page.locator(".opblock").evaluate_all(
            "bs => bs.map(b => [b.querySelector('.opblock-summary-method').textContent.toLowerCase(),"
            " b.querySelector('.opblock-summary-path').dataset.path])"
        )
    finally:
        page.close()
    spec = httpx.get(server_url + "/openapi.json", timeout=30).json()
    expected = {(method, path) for path, ops in spec["paths"].items() for method in ops}
    assert {tuple(op) for op in shown} == expected
    assert foreign == [] and errors == []
