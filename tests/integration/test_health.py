"""The probe endpoint of a sector service answers from the real connection state."""

import asyncio

import pytest

from refbus.contracts.vocabulary import Sector
from refbus.services.runtime.embedded import free_port
from tests.services import ScriptedPolicy, running

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
