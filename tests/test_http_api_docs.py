"""GET /api/docs: Swagger UI served from the package, loading nothing but same-origin files,
under a Content-Security-Policy of the server's own origin."""

from html.parser import HTMLParser

import pytest

from tests.support.http_helpers import Client

CONTENT_TYPES = {".js": "text/javascript", ".css": "text/css", ".png": "image/png"}


class _References(HTMLParser):
    """Every URL the page loads (script src, link href, img src) and every inline script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") or (found.get("href") if tag == "link" else None)
        if url is not None:
            self.urls.append(url)
        self._in_script = tag == "script"
        for name, value in attrs:
            assert not name.startswith("on"), (tag, name, value)  # no inline handlers

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def _same_origin_only(policy: str) -> None:
    directives = dict((part.split(" ", 1)[0], part.split(" ", 1)[1]) for part in policy.split("; "))
    assert directives["default-src"] == "'self'"
    # Swagger UI's stylesheet draws its icons as data: images; nothing else besides self.
    assert directives["img-src"] == "'self' data:"
    assert "unsafe" not in policy
    assert not {"script-src", "style-src", "connect-src"} & set(directives)


async def test_the_docs_page_loads_only_its_own_assets(client: Client) -> None:
    response = await client.get("/api/docs")
    assert response.status == 200
    assert response.content_type == "text/html"
    _same_origin_only(response.headers["Content-Security-Policy"])
    page = _References()
    page.feed(await response.text())
    assert page.inline_scripts == []
    assert len(page.urls) == 4, page.urls
    for url in page.urls:
        assert url.startswith("/"), url
        assert not url.startswith("//"), url
        asset = await client.get(url)
        assert asset.status == 200, url
        suffix = url[url.rindex(".") :]
        assert asset.content_type == CONTENT_TYPES[suffix], url
        assert asset.headers["X-Content-Type-Options"] == "nosniff"
        _same_origin_only(asset.headers["Content-Security-Policy"])
        body = await asset.read()
        assert len(body) > 100, url
        if suffix == ".css":
            # No stylesheet, font or image of another origin.
            css = body.decode("utf-8").replace('"', "").replace("'", "")
            for other_origin in ("@import", "url(http", "url(//"):
                assert other_origin not in css, url


async def test_swagger_ui_starts_on_the_served_document(client: Client) -> None:
    init = await (await client.get("/api/docs/assets/init.js")).text()
    assert 'url: "/api/openapi.json"' in init
    assert "validatorUrl: null" in init
    assert (await client.get("/api/openapi.json")).status == 200


@pytest.mark.parametrize(
    "name", ["LICENSE", "swagger-ui-bundle.js.map", "..%2Fapi_docs.py", "%2E%2E/openapi.py"]
)
async def test_nothing_else_of_the_package_is_served(client: Client, name: str) -> None:
    response = await client.get(f"/api/docs/assets/{name}")
    assert response.status == 404
    assert (await response.json())["error"]["code"] == "not_found"
