"""The history pager's service (one instance per bus), which also serves the sectors' reads (services/reads/).

Run it alone with `refbus service pager` or `faststream run --factory refbus.services.pager.main:create_app`.
"""

import asyncio

from faststream import FastStream
from nats.aio.client import Client as NATS

from refbus.services.audit.seal import sealer
from refbus.services.pager.pager import HistoryPager
from refbus.services.reads.service import ReadService
from refbus.services.runtime.app import service_app
from refbus.services.runtime.settings import Settings


def create_app(settings: Settings | None = None) -> FastStream:
    settings = settings or Settings.from_env()
    pagers: list[HistoryPager] = []
    sealers: list[asyncio.Task[None]] = []
    readers: list[ReadService] = []

    async def start_pager(nc: NATS) -> None:
        # The sectors' only path to children's histories (docs/decisions/0023-need-to-know-reads.md).
        readers.append(ReadService(nc))
        await readers[0].start()
        pagers.append(HistoryPager(nc, flush_after=settings.page_after_s))
        await pagers[0].start()
        # The bus's other background duty: sealing the log at intervals (services/audit/seal.py).
        sealers.append(asyncio.create_task(sealer(nc, settings.service_keyring("pager"), settings.seal_interval_s)))

    async def stop_pager() -> None:
        for reader in readers:
            await reader.stop()
        for task in sealers:
            task.cancel()
        for pager in pagers:
            await pager.stop()

    return service_app("pager", settings, start_pager, stop_pager)
