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


FAULT_RESULTS: list = []


@pytest.fixture
def fault_results() -> list:
    return FAULT_RESULTS


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if not FAULT_RESULTS:
        return
    terminalreporter.section("fault results")
    terminalreporter.write_line(f"{'fault':<52}{'acked':>7}{'found':>7}{'lost':>6}{'doubled':>8}{'resumed':>10}")
    for r in FAULT_RESULTS:
        resumed = f"{r.resumed_after_s:.3f}s" if r.resumed_after_s is not None else "-"
        terminalreporter.write_line(
            f"{r.fault:<52}{r.acknowledged:>7}{r.found:>7}{r.acknowledged - r.found:>6}{r.doubled:>8}{resumed:>10}"
            + (f"  {r.note}" if r.note else "")
        )
