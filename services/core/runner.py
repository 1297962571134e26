"""Runs the four sector services and the history pager in one process (the embedded default); in
production each runs as its own process or container (`refbus service <sector>|pager`)."""

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import replace

from faststream import FastStream

from refbus.contracts.vocabulary import Sector
from refbus.services.core.sector_service import sector_app_factory
from refbus.services.core.settings import Settings
from refbus.services.pager.main import create_app as pager_app


@asynccontextmanager
async def sector_services(
    url: str, settings: Settings, sectors: Iterable[Sector] = tuple(Sector)
) -> AsyncIterator[dict[Sector, FastStream]]:
    settings = replace(settings, nats_url=url)
    apps = {sector: sector_app_factory(sector)(settings) for sector in sectors}
    started: list[FastStream] = []
    try:
        for app in apps.values():
            await app.start()
            started.append(app)
        yield apps
    finally:
        for app in reversed(started):
            await app.stop()


@asynccontextmanager
async def history_pager(url: str, settings: Settings) -> AsyncIterator[FastStream]:
    app = pager_app(replace(settings, nats_url=url))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()
