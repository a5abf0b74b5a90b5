"""``/docs`` renders without internet: the page references only this server's own assets, and each is served."""

from __future__ import annotations

import re

import httpx


def test_docs_page_uses_only_local_assets(server) -> None:  # noqa: ANN001 - the conftest fixture
    page = httpx.get(server.url + "/docs")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert not re.search(r"https?://", page.text), "the /docs page must not load anything from another host"
    refs = re.findall(r'(?:src|href)="([^"]+)"', page.text) + re.findall(r"url: '([^']+)'", page.text)
    assert "/docs/assets/swagger-ui-bundle.js" in refs and "/docs/assets/swagger-ui.css" in refs
    for ref in refs:
        assert ref.startswith("/"), ref
        asset = httpx.get(server.url + ref)
        assert asset.status_code == 200, ref
        assert len(asset.content) > 500, ref
    spec = httpx.get(server.url + "/openapi.json").json()
    assert "/v2/models/{model_name}/infer" in spec["paths"] and "/v1/conv/{op}" in spec["paths"]


def test_no_cdn_pages_registered(server) -> None:  # noqa: ANN001
    assert httpx.get(server.url + "/redoc").status_code == 404  # ReDoc only exists as a CDN page
