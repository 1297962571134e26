"""The deadline service as an app (one instance per bus, or one per sector with REFBUS_DEADLINE_SECTORS).

Run it alone with `refbus service deadlines` or
`faststream run --factory refbus.services.deadlines.main:create_app`.
"""

import os
from collections.abc import Callable
from datetime import UTC, datetime

from faststream import FastStream
from nats.aio.client import Client as NATS

from refbus.contracts.vocabulary import Sector
from refbus.services.deadlines.follow import LogFollower
from refbus.services.deadlines.service import DeadlineService
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.deadlines import DeadlineTable
from refbus.services.runtime.app import service_app
from refbus.services.runtime.settings import Settings


def sectors_from_env() -> tuple[Sector, ...]:
    """REFBUS_DEADLINE_SECTORS=social,health: serve only referrals these sectors sent (default all)."""
    names = os.environ.get("REFBUS_DEADLINE_SECTORS", "")
    return tuple(Sector(n.strip()) for n in names.split(",") if n.strip()) or tuple(Sector)


def consumer_name(sectors: tuple[Sector, ...]) -> str:
    """One follower consumer per deployment: `deadlines`, or `deadlines-<sector>...` for a part."""
    return "deadlines" if set(sectors) == set(Sector) else "-".join(["deadlines", *(s.value for s in sectors)])


def create_app(
    settings: Settings | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    table: DeadlineTable | None = None,
    tick: float = 1.0,
) -> FastStream:
    settings = settings or Settings.from_env()
    services: list[DeadlineService] = []

    async def start(nc: NATS) -> None:
        sectors = sectors_from_env()
        service = DeadlineService(
            JetStreamEventStore(nc, ring=settings.service_keyring("deadlines")),  # its notices' own key
            settings.event_id_key(),
            table or DeadlineTable.from_env(),
            clock,
            sectors,
            tick,
            lambda tracker: LogFollower(nc, tracker, consumer_name(sectors)),
        )
        services.append(service)
        await service.start()

    async def stop() -> None:
        for service in services:
            await service.stop()

    app = service_app("deadlines", settings, start, stop)
    app.services = services  # type: ignore[attr-defined]  # for tests: the service once started
    return app
