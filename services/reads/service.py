"""The read service: the only path by which a sector reads the log (children's histories, its feed).

Sector users have no direct get on the log, the child index or the history pages (deploy/
nats-permissions.conf); they ask here, on `refbus.read.<sector>.<kind>`, a subject the server lets
each sector publish only as itself, and get what services/reads/view.py says they may see. Runs in
the history pager's process under its identity (it reads the index and pages anyway), as a queue
group, so more instances share the requests. docs/decisions/0023-need-to-know-reads.md.
"""

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from refbus.contracts import codec, reads, subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader
from refbus.services.eventstore.records import IndexBehind, StoredEvent
from refbus.services.reads import view
from refbus.services.runtime.bus import connect
from refbus.services.runtime.identities import Credentials

log = structlog.get_logger(__name__)

QUEUE = "readers"
BEHIND = "behind: "
"How a reply says the child index has not caught up (the reader raises IndexBehind, as a direct read would)."
IN_FLIGHT = 64
"Requests served at once by one instance (each is a few direct gets on the server)."


class ReadService:
    def __init__(self, nc: NATS, timeout: float = 5.0) -> None:
        self.nc = nc
        self.reader = LogReader(nc, timeout)
        self.timeout = timeout
        self._gets = jetstream.BatchedDirectGet(nc)
        self._slots = asyncio.Semaphore(IN_FLIGHT)
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(subjects.READ_REQUESTS, queue=QUEUE, cb=self._received)
        log.info("read_service_started", subject=subjects.READ_REQUESTS)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
        for task in list(self._tasks):
            task.cancel()

    async def _received(self, msg: Msg) -> None:
        await self._slots.acquire()  # back-pressure: the subscription's queue holds the rest
        task = asyncio.create_task(self._serve(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _serve(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            sector, kind = subjects.parse_read_subject(msg.subject)
            if kind == subjects.READ_HISTORY:
                reply = await self.history(sector, reads.HISTORY_DECODER.decode(msg.data))
            else:
                reply = await self.feed(sector, reads.FEED_DECODER.decode(msg.data))
        except (ValueError, msgspec.DecodeError) as exc:
            reply = reads.ViewReply(error=f"refused: {exc}"[:300])
        except IndexBehind as exc:
            reply = reads.ViewReply(error=f"{BEHIND}{exc}"[:300])
        except (NatsError, TimeoutError) as exc:
            log.warning("read_failed", subject=msg.subject, error=repr(exc))
            reply = reads.ViewReply(error=f"unavailable: {exc!r}"[:300])
        try:
            await msg.respond(reads.ENCODER.encode(reply))
        except NatsError as exc:
            log.warning("read_reply_failed", subject=msg.subject, error=repr(exc))

    async def history(self, sector: Sector, request: reads.HistoryRead) -> reads.ViewReply:
        """The child's history as `sector` may see it, from `request.after` on, within one reply's budget."""
        found = await self.reader.history(
            request.child, min_seq=request.min_seq, upto_seq=request.upto_seq, fresh=request.fresh
        )
        consent = view.consent_of([stored.event for stored in found if stored.event is not None])
        events: list[reads.ViewedEvent] = []
        size = 0
        for stored in found:
            if stored.seq <= request.after:
                continue
            if size > reads.REPLY_BUDGET:
                return reads.ViewReply(events=events, more=True)
            viewed = _viewed(stored, sector, consent)
            size += len(viewed.data) + 200
            events.append(viewed)
        return reads.ViewReply(events=events)

    async def feed(self, sector: Sector, request: reads.FeedRead) -> reads.ViewReply:
        """The events addressed to `sector` after `request.after`: every one is the sector's to read."""
        ask = {"seq": request.after + 1, "next_by_subj": subjects.inbox_filter(sector), "batch": request.limit}
        page = await self._gets.ask(
            jetstream.direct_get_subject(subjects.STREAM), json.dumps(ask).encode(), self.timeout
        )
        events: list[reads.ViewedEvent] = []
        newest = request.after
        for msg in page.messages:
            seq = jetstream.stored_sequence(msg)
            newest = max(newest, seq)
            try:
                codec.decode_on(jetstream.stored_subject(msg), msg.data)  # its route is its subject's
            except codec.UndecodableEvent:
                continue  # set aside by the sector's inbox; the cursor moves past it
            events.append(reads.ViewedEvent(seq, jetstream.nats_time_ns(msg.headers["Nats-Time-Stamp"]), msg.data))  # type: ignore[index]
        return reads.ViewReply(events=events, next_after=newest)


def _viewed(stored: StoredEvent, sector: Sector, consent: set[Sector]) -> reads.ViewedEvent:
    stored_ns = int(stored.stored_at.timestamp() * 1_000_000) * 1000
    proof = (stored.chain, stored.key, stored.sig)
    if stored.event is None:
        return reads.ViewedEvent(stored.seq, stored_ns, b"", False, stored.error, *proof)
    if view.may_read(sector, stored.event, consent):
        return reads.ViewedEvent(stored.seq, stored_ns, codec.encode(stored.event), False, None, *proof)
    return reads.ViewedEvent(stored.seq, stored_ns, codec.encode(view.withheld(stored.event)), True, None, *proof)


@asynccontextmanager
async def serving(
    url: str, credentials: Credentials | None, tls: ssl.SSLContext | None = None, wait: float = 5.0
) -> AsyncIterator[ReadService]:
    """A read service of this process's own for the block's length (as the pager's identity): for a
    command on a data dir whose bus is not `up`, where no pager answers. Beside a running one it only
    shares the queue group."""
    nc = await connect(url, "refbus-read-service", wait, credentials=credentials, tls=tls)
    service = ReadService(nc, wait)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()
        await nc.close()
