"""The events feed, for a sector system that cannot take inbound calls: the events addressed to the
sector after a log sequence, read by batched direct get on REFBUS (`next_by_subj` = the sector's
inbox filter), waiting up to `wait` seconds for the first one (long-poll). The cursor is the log
sequence, so a client resumes exactly where it stopped, across restarts of either side."""

import asyncio
import json
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS

from refbus.contracts import codec, subjects
from refbus.contracts.commands import Delivered, Feed
from refbus.contracts.content import ContentView
from refbus.contracts.events import Event
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream

Opener = Callable[[Event], Awaitable[ContentView | None]]
"A referral's content as the reading sector may see it (Gateway.view); None: no content."


async def no_content(event: Event) -> ContentView | None:
    return None


class FeedReader:
    def __init__(self, nc: NATS, timeout: float = 5.0, poll_s: float = 0.2, opener: Opener = no_content) -> None:
        self.gets = jetstream.BatchedDirectGet(nc)
        self.timeout = timeout
        self.poll_s = poll_s
        self.opener = opener

    async def __call__(self, sector: Sector, after: int, limit: int, wait: float) -> Feed:
        deadline = asyncio.get_running_loop().time() + wait
        request = {"seq": after + 1, "next_by_subj": subjects.inbox_filter(sector), "batch": limit}
        while True:
            page = await self.gets.ask(
                jetstream.direct_get_subject(subjects.STREAM), json.dumps(request).encode(), self.timeout
            )
            events = []
            newest = after
            for msg in page.messages:
                seq = jetstream.stored_sequence(msg)
                newest = max(newest, seq)
                try:
                    event = codec.decode_on(jetstream.stored_subject(msg), msg.data)
                except codec.UndecodableEvent:
                    continue  # set aside by the sector's inbox; the cursor moves past it
                events.append(Delivered(seq=seq, event=event, content=await self.opener(event)))
            if page.messages or asyncio.get_running_loop().time() >= deadline:
                return Feed(events=events, next_after=newest)
            await asyncio.sleep(self.poll_s)
