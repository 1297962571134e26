"""The FastStream app every refbus service runs in: the broker connection, the lifecycle hooks and
the health endpoint. What a service does starts and stops in the two hooks it passes in."""

import asyncio
import logging
from collections.abc import Awaitable, Callable

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker
from faststream.nats.security import NatsNKey, NatsSecurity
from nats.aio.client import Client as NATS

from refbus.services.runtime.bus import connect_options, safe_url
from refbus.services.runtime.health import serve_health
from refbus.services.runtime.logs import configure_logging
from refbus.services.runtime.settings import Settings
from refbus.services.runtime.tls import PLAIN_REFUSED, upgraded


def _faststream_logger() -> logging.Logger:
    # Our logs are structlog's; FastStream's own only when it warns.
    logger = logging.getLogger("refbus.faststream")
    logger.setLevel(logging.WARNING)
    return logger


def service_app(
    name: str,
    settings: Settings,
    start: Callable[[NATS], Awaitable[None]],
    stop: Callable[[], Awaitable[None]],
) -> FastStream:
    """An app named `refbus-<name>` that calls `start(connection)` once connected and `stop()` on
    the way out, and serves /healthz when settings ask for it."""
    if not structlog.is_configured():
        configure_logging()
    log = structlog.get_logger(f"refbus.{name}")
    shown = safe_url(settings.nats_url or "")

    # Our own callbacks: nats-py's default error callback logs a traceback on every failed reconnect.
    async def on_error(exc: Exception) -> None:
        log.warning("nats_error", url=shown, error=str(exc) or type(exc).__name__)

    async def on_disconnected() -> None:
        log.info("nats_disconnected", url=shown)

    async def on_reconnected() -> None:
        log.info("nats_reconnected", url=shown)

    # Its own identity: the seed of `name` (services/runtime/identities.py), its own reply prefix.
    options = connect_options(settings.nats_url or "", settings.nats_credentials(name))
    # Over TLS when a CA is configured (Settings.tls_context), trusting it alone.
    tls = settings.tls_context()
    security: NatsSecurity | None = NatsSecurity(ssl_context=tls) if tls else None
    if "nkeys_seed" in options:
        security = NatsNKey.from_file(options["nkeys_seed"], ssl_context=tls)
    broker = NatsBroker(
        servers=(settings.nats_url or "").split(","),
        name=f"refbus-{name}",
        logger=_faststream_logger(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        inbox_prefix=options["inbox_prefix"],
        security=security,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
    app = FastStream(broker, logger=None)
    health: list[asyncio.Server] = []

    @app.after_startup
    async def started() -> None:
        if tls is not None and not upgraded(broker.connection):
            raise ConnectionError(f"{shown}: {PLAIN_REFUSED}")
        await start(broker.connection)
        if settings.health_port is not None:
            is_up = lambda: broker.connection.is_connected  # noqa: E731
            health.append(await serve_health(settings.health_port, is_up, settings.health_host))

    @app.on_shutdown
    async def stopping() -> None:
        await stop()
        for server in health:
            server.close()

    return app
