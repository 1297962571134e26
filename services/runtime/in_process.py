"""Runs the four sector services, the history pager and the deadline service in one process (the embedded default); in
production each runs as its own process or container (`refbus service <sector>|pager|deadlines`)."""

from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace

from faststream import FastStream

from refbus.contracts.vocabulary import Sector
from refbus.services.deadlines.main import create_app as deadlines_app
from refbus.services.education import main as education
from refbus.services.health import main as health
from refbus.services.justice import main as justice
from refbus.services.pager.main import create_app as pager_app
from refbus.services.runtime.settings import Settings
from refbus.services.social import main as social

SECTOR_APPS = {
    Sector.SOCIAL: social.create_app,
    Sector.HEALTH: health.create_app,
    Sector.EDUCATION: education.create_app,
    Sector.JUSTICE: justice.create_app,
}
"Each sector's service as its own deployment runs it (services/<sector>/main.py)."


HEALTH_ORDER: tuple[Sector | str, ...] = (*Sector, "pager", "deadlines")
"In one process every app serves /healthz on its own port: REFBUS_HEALTH_PORT + its place here."


def health_port(settings: Settings, app: Sector | str) -> int | None:
    if settings.health_port is None:
        return None
    return settings.health_port + HEALTH_ORDER.index(app)


@asynccontextmanager
async def sector_services(
    url: str, settings: Settings, sectors: Iterable[Sector] = tuple(Sector)
) -> AsyncIterator[dict[Sector, FastStream]]:
    apps = {
        sector: SECTOR_APPS[sector](replace(settings, nats_url=url, health_port=health_port(settings, sector)))
        for sector in sectors
    }
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
async def running(app: FastStream) -> AsyncIterator[FastStream]:
    """An app started for the block's length."""
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


def history_pager(url: str, settings: Settings) -> AbstractAsyncContextManager[FastStream]:
    return running(pager_app(replace(settings, nats_url=url, health_port=health_port(settings, "pager"))))


def deadline_service(url: str, settings: Settings) -> AbstractAsyncContextManager[FastStream]:
    return running(deadlines_app(replace(settings, nats_url=url, health_port=health_port(settings, "deadlines"))))
