"""The history pager's service (one instance per bus).

Run it alone with `refbus service pager` or `faststream run --factory refbus.services.pager.main:create_app`.
"""

from faststream import FastStream
from nats.aio.client import Client as NATS

from refbus.services.pager.pager import HistoryPager
from refbus.services.runtime.app import service_app
from refbus.services.runtime.settings import Settings


def create_app(settings: Settings | None = None) -> FastStream:
    settings = settings or Settings.from_env()
    pagers: list[HistoryPager] = []

    async def start_pager(nc: NATS) -> None:
        pagers.append(HistoryPager(nc, flush_after=settings.page_after_s))
        await pagers[0].start()

    async def stop_pager() -> None:
        for pager in pagers:
            await pager.stop()

    return service_app("pager", settings, start_pager, stop_pager)
