"""The events feed as server-sent events, over real HTTP against a real nats-server: events arrive
in log order with `id:` = the log sequence, the same as the long-poll feed; a reconnect with
Last-Event-ID resumes with neither loss nor repeat; an idle stream sends heartbeat comments; another
sector's token is refused. And the stream reads the log a page at a time, as the client reads."""

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from refbus.contracts.commands import Delivered, Feed
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import stream
from refbus.services.gateway.external import ExternalSector
from refbus.services.rules.policy import SimulatedSector
from tests.factories import new_child, new_worker, request
from tests.gateway.systems import TOKENS, gateway_config, gateways, ports, post

pytestmark = pytest.mark.integration


def refer(child: str) -> dict[str, Any]:
    return {
        "idempotency_key": f"refer-{uuid.uuid4()}", "child": child, "actor": new_worker(), "to_sector": "health",
        "dimension": "health", "service": "vaccination", "urgency": "routine", "legal_basis": "child_protection_duty",
    }


@dataclasses.dataclass
class Message:
    id: str | None = None
    data: str | None = None
    comments: list[str] = dataclasses.field(default_factory=list)


async def sse(response: httpx.Response) -> AsyncIterator[Message]:
    """SSE messages as the spec parses them (id, data, comments; a blank line ends one)."""
    current = Message()
    async for line in response.aiter_lines():
        if line == "":
            yield current
            current = Message()
        elif line.startswith(":"):
            current.comments.append(line[1:].strip())
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "id":
                current.id = value
            elif name == "data":
                current.data = value if current.data is None else current.data + "\n" + value


async def read_events(messages: AsyncIterator[Message], n: int, heartbeats: list[str] | None = None) -> list[Message]:
    got: list[Message] = []
    async with asyncio.timeout(30):
        async for message in messages:
            if heartbeats is not None:
                heartbeats.extend(message.comments)
            if message.data is not None:
                got.append(message)
                if len(got) == n:
                    return got
    raise AssertionError(f"the stream ended after {len(got)} events")


async def test_server_sent_events_in_order_resumable_and_only_for_the_sector(bus: str, tmp_path: Path) -> None:
    social_port, health_port = ports(2)
    configs = {
        Sector.SOCIAL: gateway_config(social_port, None, Sector.SOCIAL),
        Sector.HEALTH: dataclasses.replace(gateway_config(health_port, None, Sector.HEALTH), stream_heartbeat_s=0.3),
    }
    policies = {Sector.SOCIAL: SimulatedSector(Sector.SOCIAL), Sector.HEALTH: ExternalSector(Sector.HEALTH)}
    social, health = f"http://127.0.0.1:{social_port}", f"http://127.0.0.1:{health_port}"
    url = f"{health}/v1/health/events/stream"
    auth = {"Authorization": f"Bearer {TOKENS[Sector.HEALTH]}"}
    async with gateways(bus, policies, configs, tmp_path), httpx.AsyncClient(timeout=30) as client:
        sent: list[str] = []
        heartbeats: list[str] = []  # comments read among the first events (the opening one at least)
        async with client.stream("GET", url, params={"after": 0}, headers=auth) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            for _ in range(5):
                sent.append((await post(social, Sector.SOCIAL, "refer", refer(new_child()))).json()["event_id"])
            messages = sse(response)
            first = await read_events(messages, 5, heartbeats)
            assert any(c.startswith("refbus events for health") for c in heartbeats)
            # Idle now: the stream keeps itself alive with comments (every 0.3 s here).
            async with asyncio.timeout(5):
                async for message in messages:
                    assert message.data is None
                    if "keep-alive" in message.comments:
                        break
        assert [msgspec.json.decode(m.data or "", type=Delivered).event.event_id for m in first] == [
            uuid.UUID(e) for e in sent
        ]
        assert all(m.id == str(msgspec.json.decode(m.data or "", type=Delivered).seq) for m in first)
        assert [int(m.id or 0) for m in first] == sorted(int(m.id or 0) for m in first)

        # Disconnected, three more come; a reconnect with Last-Event-ID (the URL still says after=0,
        # as a reconnecting EventSource's does) gets exactly those, in order.
        for _ in range(3):
            sent.append((await post(social, Sector.SOCIAL, "refer", refer(new_child()))).json()["event_id"])
        resume = {**auth, "Last-Event-ID": first[-1].id or ""}
        async with client.stream("GET", url, params={"after": 0}, headers=resume) as response:
            rest = await read_events(sse(response), 3)
        events = [msgspec.json.decode(m.data or "", type=Delivered) for m in first + rest]
        assert [str(d.event.event_id) for d in events] == sent, "none lost, none repeated, in order"

        # The same content as the long-poll feed, with the same cursor.
        feed = (await client.get(f"{health}/v1/health/events", params={"after": 0, "limit": 100}, headers=auth))
        assert [d["seq"] for d in feed.json()["events"]] == [d.seq for d in events]
        after = events[2].seq
        async with client.stream("GET", url, params={"after": after}, headers=auth) as response:
            assert [int(m.id or 0) for m in await read_events(sse(response), 5)] == [d.seq for d in events[3:]]

        # Credentials as everywhere else: another sector's token 403, none 401, a bad cursor 422.
        other = await client.get(url, headers={"Authorization": f"Bearer {TOKENS[Sector.SOCIAL]}"})
        assert (other.status_code, other.json()["code"]) == (403, "wrong_sector")
        assert (await client.get(url)).status_code == 401
        bad = await client.get(url, headers={**auth, "Last-Event-ID": "abc"})
        assert (bad.status_code, bad.json()["field"]) == (422, "Last-Event-ID")


async def test_the_stream_reads_the_log_a_page_at_a_time_as_the_client_reads() -> None:
    """Backpressure: the next page is read only once the client has taken the last one."""
    asked: list[int] = []
    child = new_child()

    async def feed(sector: Sector, after: int, limit: int, wait: float) -> Feed:
        asked.append(after)
        events = [Delivered(seq=after + i + 1, event=request(child)) for i in range(limit)]
        return Feed(events=events, next_after=after + limit)

    taken = []
    async for message in stream.messages(feed, Sector.HEALTH, 0, heartbeat_s=1.0, page=10):
        taken.append(message)
        if len(taken) == 26:  # the opening comment and 25 events
            break
    assert taken[0].retry == stream.RETRY_MS and taken[0].data is None
    assert [m.id for m in taken[1:]] == list(range(1, 26)), "ids are the log sequences, in order"
    assert asked == [0, 10, 20], "three pages for 25 events, none read ahead"
