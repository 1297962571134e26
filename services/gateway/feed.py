"""The events feed, for a sector system that cannot take inbound calls: the events addressed to the
sector after a log sequence, asked of the read service (services/reads/: the sector has no direct
read of the log), waiting up to `wait` seconds for the first one (long-poll). The cursor is the log
sequence, so a client resumes exactly where it stopped, across restarts of either side."""

import asyncio
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from refbus.contracts import codec
from refbus.contracts.commands import Delivered, Feed
from refbus.contracts.content import ContentView
from refbus.contracts.events import Event
from refbus.contracts.vocabulary import Sector
from refbus.services.reads.client import ViewReader

Opener = Callable[[Event], Awaitable[ContentView | None]]
"A referral's content as the reading sector may see it (Gateway.view); None: no content."


async def no_content(event: Event) -> ContentView | None:
    return None


class FeedReader:
    def __init__(self, nc: NATS, timeout: float = 5.0, poll_s: float = 0.2, opener: Opener = no_content) -> None:
        self.nc = nc
        self.timeout = timeout
        self.poll_s = poll_s
        self.opener = opener
        self._readers: dict[Sector, ViewReader] = {}

    async def __call__(self, sector: Sector, after: int, limit: int, wait: float) -> Feed:
        reader = self._readers.get(sector)
        if reader is None:
            reader = self._readers[sector] = ViewReader(self.nc, sector, self.timeout)
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            page = await reader.feed(after, limit)
            events = []
            for viewed in page.events:
                event = codec.decode(viewed.data)  # the read service bound each to its subject
                events.append(Delivered(seq=viewed.seq, event=event, content=await self.opener(event)))
            if page.next_after > after or asyncio.get_running_loop().time() >= deadline:
                return Feed(events=events, next_after=max(after, page.next_after))
            await asyncio.sleep(self.poll_s)
