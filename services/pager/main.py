"""The history pager's service (one instance per bus).

Run it alone with `refbus service pager` or `faststream run --factory refbus.services.pager.main:create_app`.
"""

import asyncio

import structlog
from faststream import FastStream
from faststream.nats import NatsBroker

from refbus.services.core.health import serve_health
from refbus.services.core.logs import configure_logging
from refbus.services.core.sector_service import faststream_logger
from refbus.services.core.settings import Settings
from refbus.services.pager.pager import HistoryPager


def create_app(settings: Settings | None = None) -> FastStream:
    settings = settings or Settings.from_env()
    if not structlog.is_configured():
        configure_logging()
    broker = NatsBroker(
        servers=(settings.nats_url or "").split(","),
        name="refbus-pager",
        logger=faststream_logger(),
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
    )
    app = FastStream(broker, logger=None)
    pagers: list[HistoryPager] = []
    health: list[asyncio.Server] = []

    @app.after_startup
    async def start_pager() -> None:
        pagers.append(HistoryPager(broker.connection, flush_after=settings.page_after_s))
        await pagers[0].start()
        if settings.health_port is not None:
            is_up = lambda: broker.connection.is_connected  # noqa: E731
            health.append(await serve_health(settings.health_port, is_up, settings.health_host))

    @app.on_shutdown
    async def stop_pager() -> None:
        for pager in pagers:
            await pager.stop()
        for server in health:
            server.close()

    return app
