"""A minimal HTTP health endpoint for probes (Kubernetes, compose): GET /healthz answers 200 while
the service's NATS connection is up, 503 otherwise; GET /metrics answers the process's Prometheus
metrics (services/runtime/metrics.py: counts and codes, no payloads, no child). Standard library only."""

import asyncio
from collections.abc import Callable

import structlog

from refbus.services.runtime import metrics

log = structlog.get_logger(__name__)


async def serve_health(port: int, healthy: Callable[[], bool], host: str = "127.0.0.1") -> asyncio.Server:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 2.0)
            path = request_line.split(b" ")[1].split(b"?")[0] if request_line.count(b" ") >= 2 else b""
            content_type = "text/plain; charset=utf-8"
            if path == b"/metrics":
                status, body, content_type = "200 OK", metrics.exposition(), metrics.CONTENT_TYPE
            elif path not in (b"/healthz", b"/readyz"):
                status, body = "404 Not Found", b"not found\n"
            elif healthy():
                status, body = "200 OK", b"ok\n"
            else:
                status, body = "503 Service Unavailable", b"nats disconnected\n"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode() + body
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, host, port)
    log.info("health_endpoint", port=port)
    return server
