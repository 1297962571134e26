"""A sector's side of need-to-know reads: the store's reader and the gateway's feed, both asking the
read service (services/reads/service.py) instead of reading the log. docs/decisions/0023."""

import asyncio

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

from refbus.contracts import codec, reads, subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader
from refbus.services.eventstore.records import IndexBehind, StoredEvent
from refbus.services.reads.service import BEHIND

RETRY_S = 0.05


class ReadUnavailable(RuntimeError):
    """The read service did not answer (none running, or it failed): the caller's read fails, as a
    read of the log would when the server is away; a message being handled is delivered again."""


class ViewReader(LogReader):
    """`LogReader` for a sector user: histories come from the read service, as the sector may see
    them; counts (the log's subject index, no payload read) still come from the server itself."""

    def __init__(self, nc: NATS, sector: Sector, timeout: float = 5.0) -> None:
        super().__init__(nc, timeout)
        self.sector = sector

    async def history(
        self,
        child: str,
        *,
        min_seq: int = 0,
        upto_seq: int | None = None,
        wait: float = 5.0,
        fresh: bool = True,
        paged: bool = True,
    ) -> list[StoredEvent]:
        if fresh and not min_seq and not await self.event_count(child):
            return []  # a child the log does not have yet: nothing to ask for
        found: list[StoredEvent] = []
        after = 0
        while True:
            request = reads.HistoryRead(child=child, min_seq=min_seq, upto_seq=upto_seq, fresh=fresh, after=after)
            reply = await self.ask(subjects.READ_HISTORY, reads.ENCODER.encode(request), wait)
            if reply.error is not None:
                if reply.error.startswith(BEHIND):
                    raise IndexBehind(reply.error)
                raise ReadUnavailable(f"the read service refused {child}: {reply.error}")
            found.extend(_stored(viewed) for viewed in reply.events)
            if not reply.more or not reply.events:
                return found
            after, fresh = reply.events[-1].seq, False

    async def feed(self, after: int, limit: int) -> reads.ViewReply:
        """The events addressed to this sector after `after` (at most `limit`), each its own to read."""
        reply = await self.ask(subjects.READ_FEED, reads.ENCODER.encode(reads.FeedRead(after=after, limit=limit)))
        if reply.error is not None:
            raise ReadUnavailable(f"the read service refused the feed: {reply.error}")
        return reply

    async def ask(self, kind: str, body: bytes, wait: float | None = None) -> reads.ViewReply:
        """One request to the read service; while none answers (it is starting, or moving), asked
        again until `wait` (default: the reader's timeout) has passed."""
        wait = self.timeout if wait is None else wait
        deadline = asyncio.get_running_loop().time() + wait
        subject = subjects.read_subject(self.sector, kind)
        while True:
            left = deadline - asyncio.get_running_loop().time()
            try:
                msg = await self.nc.request(subject, body, timeout=max(left, 0.05))
                return reads.REPLY_DECODER.decode(msg.data)
            except (NoRespondersError, NatsTimeout) as exc:
                if asyncio.get_running_loop().time() + RETRY_S >= deadline:
                    raise ReadUnavailable(f"no read service answered in {wait:g} s ({type(exc).__name__})") from None
                await asyncio.sleep(RETRY_S)


def _stored(viewed: reads.ViewedEvent) -> StoredEvent:
    stored_at = jetstream.datetime_from_ns(viewed.stored_ns)
    if viewed.error is not None or not viewed.data:
        return StoredEvent(viewed.seq, stored_at, None, viewed.error or "empty", viewed.chain, viewed.key, viewed.sig)
    try:
        event = codec.decode(viewed.data)
    except codec.UndecodableEvent as exc:
        return StoredEvent(viewed.seq, stored_at, None, exc.reason, viewed.chain, viewed.key, viewed.sig)
    return StoredEvent(viewed.seq, stored_at, event, None, viewed.chain, viewed.key, viewed.sig, viewed.withheld)
