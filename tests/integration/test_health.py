"""The probe endpoint of a sector service answers from the real connection state."""

import asyncio

import pytest

from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.embedded import EmbeddedNats, free_port
from tests.services import ScriptedPolicy, running, wait_for

pytestmark = pytest.mark.integration


async def get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_healthz_answers_ok_while_connected(provisioned: str) -> None:
    port = free_port()
    async with running(provisioned, {Sector.JUSTICE: ScriptedPolicy([])}, health_port=port):
        assert (await get(port, "/healthz")).startswith(b"HTTP/1.1 200")
        assert (await get(port, "/other")).startswith(b"HTTP/1.1 404")


async def test_healthz_answers_unavailable_while_the_server_is_gone_and_ok_once_back(
    own_server: EmbeddedNats, own_log: JetStreamEventStore
) -> None:
    port = free_port()
    async with running(own_server.url, {Sector.JUSTICE: ScriptedPolicy([])}, health_port=port):
        assert (await get(port, "/healthz")).startswith(b"HTTP/1.1 200")
        own_server.kill()

        async def unavailable() -> bool:
            return (await get(port, "/healthz")).startswith(b"HTTP/1.1 503")

        await wait_for(unavailable, within=10)
        await asyncio.to_thread(own_server.start)

        async def ok_again() -> bool:
            return (await get(port, "/healthz")).startswith(b"HTTP/1.1 200")

        await wait_for(ok_again, within=15)
