"""Fault tests get their own nats-server (own data dir, fixed port), since they kill and restart it."""

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from refbus.services.core import streams
from refbus.services.core.eventlog import EventLog
from refbus.services.core.natsserver import EmbeddedNats
from refbus.services.core.runtime import connect


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def own_log(own_server: EmbeddedNats) -> AsyncIterator[EventLog]:
    nc = await connect(own_server.url, "fault-test")
    await streams.provision(nc.jetstream())
    yield EventLog(nc, timeout=2.0)
    await nc.close()
