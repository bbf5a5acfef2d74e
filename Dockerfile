# The wallet service's image, in two stages: the first builds the wheel from the source,
# the second installs only that wheel and its dependencies (pinned by constraints.txt), so
# the image holds neither the source tree nor anything the build needed.
#
# The base image is pinned by digest: every build starts from the same bytes, whatever the
# tag points at later. This is the digest of the python:3.11-slim image index (all its
# platforms; Python 3.11.15 on Debian trixie, built 2026-08-05) as Docker's official
# images record it: github.com/docker-library/repo-info, repos/python/remote/3.11-slim.md
# at commit 2477d553d2fdfa57b4ec11f63c8376eca8b7a253. To refresh it (the base image's
# security fixes come only so): `docker buildx imagetools inspect python:3.11-slim` (its
# "Digest:" line) or the newest version of that file; put it in both FROM lines and run
# tests/unit/test_compose.py, which checks the pin.
FROM python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY service service
COPY persistence persistence
COPY lua lua
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim@sha256:90744cff8f32887f075c47d747a173ff333e9e98801667af93c357fa9f5e28ff AS runtime
COPY constraints.txt /tmp/constraints.txt
COPY --from=build /wheels /tmp/wheels
RUN pip install --no-cache-dir --constraint /tmp/constraints.txt /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels /tmp/constraints.txt \
    && useradd --system --create-home wallet
USER wallet
WORKDIR /home/wallet
EXPOSE 8080
# Alive: the process answers GET /healthz. Not /readyz: restarting the API cures no Redis or
# database outage, and an orchestrator that restarts unhealthy containers would only add
# to one (compose waits for the api's /readyz with a healthcheck of its own). The slim
# image has no curl; urllib raises on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=3)"]
CMD ["wallet", "serve", "--host", "0.0.0.0", "--port", "8080"]
