"""`refbus monitor --web`: the dashboard page, its snapshots as server-sent events, and /metrics.

GET /            the page (dashboard.html: inline CSS, JS and SVG, nothing fetched from elsewhere)
GET /snapshot    one snapshot (JSON)
GET /events      a snapshot every second (text/event-stream); the page updates from it
GET /metrics     JetStream's state for Prometheus (exporter.py)
Bound to 127.0.0.1 only.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from importlib import resources

from refbus.services.monitor import exporter
from refbus.services.monitor.http import Response, serve
from refbus.services.monitor.snapshot import Monitor
from refbus.services.runtime import metrics

HOST = "127.0.0.1"
PUSH_EVERY_S = 1.0


def page() -> bytes:
    return resources.files("refbus.services.monitor").joinpath("dashboard.html").read_bytes()


async def serve_dashboard(monitor: Monitor, port: int, push_every: float = PUSH_EVERY_S) -> asyncio.Server:
    html = page()

    async def index() -> Response:
        return Response(html, "text/html; charset=utf-8")

    async def snapshot() -> Response:
        return Response(json.dumps(monitor.snapshot()).encode(), "application/json")

    async def scrape() -> Response:
        return Response(await exporter.scrape(monitor.nc, monitor.config.monitor_url), metrics.CONTENT_TYPE)

    async def events() -> AsyncIterator[bytes]:
        while True:
            yield json.dumps(monitor.snapshot()).encode()
            await asyncio.sleep(push_every)

    return await serve(
        HOST, port, {"/": index, "/snapshot": snapshot, "/metrics": scrape}, {"/events": events}
    )
