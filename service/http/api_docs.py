"""GET /api/docs: the API to read and try, Swagger UI on /api/openapi.json.

Its assets ship inside the package (service/http/swagger_ui/: swagger-ui-dist 5.35.0 from
npm, with its LICENSE and NOTICE, and init.js of ours), so the page needs nothing but this
server; its Content-Security-Policy lets it load and call this origin only.
"""

from functools import cache
from importlib import resources

from aiohttp import web

from service.domain import refusals
from service.domain.refusals import Refused

ASSETS_PATH = "/api/docs/assets/"
# Every file the page may load, with its content type; nothing else in the folder is served.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "init.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
# Swagger UI's stylesheet draws its icons as data: SVG images; nothing else is let in.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none';"
    " form-action 'self'; frame-ancestors 'none'"
)
# The assets change only with the package.
ASSET_CACHE_CONTROL = "public, max-age=3600"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Wallet service API</title>
<link rel="stylesheet" href="{ASSETS_PATH}swagger-ui.css">
<link rel="icon" type="image/png" href="{ASSETS_PATH}favicon-32x32.png">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{ASSETS_PATH}swagger-ui-bundle.js"></script>
<script src="{ASSETS_PATH}init.js"></script>
</body>
</html>
"""


@cache
def _asset(name: str) -> bytes:
    return resources.files("service.http").joinpath("swagger_ui", name).read_bytes()


def _secured(response: web.Response) -> web.Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


async def docs_page(request: web.Request) -> web.Response:
    return _secured(web.Response(text=PAGE, content_type="text/html"))


async def docs_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    content_type = ASSETS.get(name)
    if content_type is None:
        raise Refused(refusals.NOT_FOUND)
    response = web.Response(body=_asset(name), content_type=content_type)
    if content_type.startswith("text/"):
        response.charset = "utf-8"
    response.headers["Cache-Control"] = ASSET_CACHE_CONTROL
    return _secured(response)
