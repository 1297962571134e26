"""Delivery to a sector system by webhook: what the log addresses to the sector, POSTed to its URL.

A durable consumer per sector (`webhook-<sector>`, filter `refbus.ev.*.*.<sector>`, explicit acks)
feeds up to IN_FLIGHT deliveries at once, one child's at a time, in log order (messages reach the
handler in log order, and each queues behind its child's previous one before its first await). A delivery
is retried with exponential backoff until the system answers 2xx, and only then acked; a stop hands
back what it holds (nak: redelivered first, in order), and a start after a crash waits until what
the crashed instance held comes back before taking anything new, so a child's events never
overtake each other. At least once: the `webhook-id` (the event id) lets the receiver drop a
repeat. Why not one at a time, in log order: docs/decisions/0018-webhooks-in-order-per-child.md.

Each request is signed as Standard Webhooks sign: headers `webhook-id` (the event id),
`webhook-timestamp` (Unix seconds) and `webhook-signature` (`v1,` + base64 HMAC-SHA256 of
`<id>.<timestamp>.<body>` keyed with the base64-decoded part of the sector's `whsec_` secret). The
body is the event's JSON exactly as stored; `refbus-seq` carries its log sequence. A referral with
sealed content gets one member more, `content` (a ContentView: in clear for this sector, or `erased`),
the only way its content leaves the bus in clear (docs/decisions/0021-sealed-content.md).
"""

import asyncio
import contextlib
import time

import aiohttp
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import codec, subjects
from refbus.contracts.events import AnyEvent, event_type
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import credentials, metrics
from refbus.services.gateway.feed import Opener, no_content
from refbus.services.sector.inbox import Inbox, ensure_consumer

log = structlog.get_logger(__name__)

PULL_EXPIRES_S = 2.0
"A pull request's life: how long a pause (an unregistration) waits for the last one to end."
IN_FLIGHT = 32
"Deliveries under way at once, per sector (each child's one at a time)."


def webhook_consumer(sector: Sector, ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.webhook_consumer(sector),
        filter_subject=subjects.inbox_filter(sector),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=IN_FLIGHT,
    )


def _failure(exc: Exception | None, status: int | None) -> str:
    if status is not None:
        return "http_4xx" if status < 500 else "http_5xx"
    if isinstance(exc, TimeoutError):  # aiohttp's timeouts are TimeoutErrors
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused" if isinstance(exc.os_error, ConnectionRefusedError) else "connection"
    return "connection" if isinstance(exc, aiohttp.ClientError) else "other"


class WebhookDelivery:
    def __init__(
        self,
        nc: NATS,
        sector: Sector,
        url: str,
        secret: str,
        *,
        retry_max_s: float = 30.0,
        timeout_s: float = 10.0,
        ack_wait: float = 30.0,
        opener: Opener = no_content,
    ) -> None:
        self.nc = nc
        self.opener = opener
        self.sector = sector
        self.url = url
        self.secret = secret
        self.retry_max_s = retry_max_s
        self.ack_wait = ack_wait
        # aiohttp, not httpx: ~0.3 ms of CPU a delivery against several ms with 32 under way
        # (docs/decisions/0018-webhooks-in-order-per-child.md). Made in start: it needs the loop.
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.client: aiohttp.ClientSession | None = None
        self.inbox: Inbox | None = None
        self.delivered = 0
        self._stopping = False
        self._pausing = False
        self._stopped = asyncio.Event()
        self._last_of_child: dict[str, asyncio.Future[None]] = {}
        "Each child's newest delivery taken: the next of that child waits for it."
        self._late_start: asyncio.Task[None] | None = None

    async def start(self, after_restart: bool = True) -> None:
        """`after_restart`: this process has not delivered for the sector yet (what a crashed
        instance held may still be out)."""
        config = webhook_consumer(self.sector, self.ack_wait)
        info = await ensure_consumer(self.nc, subjects.STREAM, config)
        self.client = aiohttp.ClientSession(timeout=self.timeout)
        self.inbox = Inbox(
            self.nc, subjects.STREAM, subjects.webhook_consumer(self.sector), self.handle, workers=IN_FLIGHT,
            expires=PULL_EXPIRES_S,
        )
        if after_restart and info.num_ack_pending:
            self._late_start = asyncio.create_task(self._start_after_held(self.inbox))
        else:
            await self.inbox.start()
        log.info("webhook_delivery_started", sector=self.sector.value, consumer=config.durable_name)

    async def _start_after_held(self, inbox: Inbox) -> None:
        """Deliveries an instance held when it died come back only after ack_wait; anything taken
        before them could overtake a child's earlier event: wait for them to come back first."""
        log.info("webhook_waiting_for_held_deliveries", sector=self.sector.value, wait_s=self.ack_wait)
        with contextlib.suppress(TimeoutError):  # a stop ends the wait at once
            async with asyncio.timeout(self.ack_wait + 1.0):
                await self._stopped.wait()
        if not self._stopping:
            await inbox.start()

    async def stop(self, pause: bool = False) -> None:
        """Stop delivering (the service stops, or `pause`: its system unregistered). What it holds,
        a delivery being retried included, is handed back at once (nak), in order; paused, so is
        whatever the last pull request still brings: a registration made again resumes at it
        without waiting ack_wait (a process's first start after a restart waits, see start)."""
        self._stopping = True
        self._pausing = pause
        self._stopped.set()
        if self._late_start is not None:
            await self._late_start  # ends at once: it waits on _stopped
        if self.inbox is not None:
            await self.inbox.stop(wait=1.0, requests_end=pause)
        if self.client is not None:
            await self.client.close()

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        try:
            event = codec.decode_on(msg.subject, msg.data)
        except codec.UndecodableEvent as exc:  # the inbox consumer sets it aside; nothing to deliver
            log.warning("webhook_skipped", seq=seq, reason=exc.reason)
            await msg.ack()
            return
        # Queued behind the child's previous delivery before any await: the order the log gave.
        before = self._last_of_child.get(event.child)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._last_of_child[event.child] = mine
        try:
            while before is not None and not before.done():
                await asyncio.wait({before}, timeout=self.ack_wait / 3)
                if not before.done():  # still ours while it waits: or the server would redeliver it
                    await msg.in_progress()
            await self._deliver(msg, seq, event)
        finally:
            mine.set_result(None)
            if self._last_of_child.get(event.child) is mine:
                del self._last_of_child[event.child]

    async def _deliver(self, msg: Msg, seq: int, event: AnyEvent) -> None:
        if self._stopping:
            await self._give_back(msg)
            return
        body = msg.data
        while True:
            try:
                view = await self.opener(event)
                break
            except OSError as exc:  # the keys could not be read: tried again in a moment, in turn
                log.warning("webhook_content_unavailable", seq=seq, error=str(exc))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._stopped.wait()
                if self._stopping:
                    await self._give_back(msg)
                    return
        if view is not None:
            with_content = msgspec.json.decode(msg.data)
            with_content["content"] = view
            body = msgspec.json.encode(with_content)
        headers = {
            "content-type": "application/json",
            "webhook-id": str(event.event_id),
            "refbus-seq": str(seq),
            "refbus-event-type": event_type(event),
        }
        attempt = 0
        last_progress = time.monotonic()
        while True:
            timestamp = int(time.time())
            headers["webhook-timestamp"] = str(timestamp)
            headers["webhook-signature"] = credentials.sign(self.secret, str(event.event_id), timestamp, body)
            status: int | None = None
            error: Exception | None = None
            try:
                assert self.client is not None
                async with self.client.post(self.url, data=body, headers=headers) as response:
                    status = response.status
                    await response.read()
                if 200 <= status < 300:
                    await msg.ack_sync()
                    self.delivered += 1
                    metrics.webhook_delivered(self.sector.value)
                    return
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = exc
            reason = _failure(error, status)
            metrics.webhook_failed(self.sector.value, reason)
            if self._stopping:
                await self._give_back(msg)
                return
            attempt += 1
            pause = min(self.retry_max_s, 0.25 * 2 ** min(attempt, 10))
            log.info("webhook_retry", seq=seq, attempt=attempt, reason=reason, pause_s=pause)
            # Still ours: tell the server before ack_wait runs out, or it would redeliver meanwhile.
            if time.monotonic() - last_progress + pause > self.ack_wait / 3:
                await msg.in_progress()
                last_progress = time.monotonic()
            with contextlib.suppress(TimeoutError):  # a stop ends the pause at once
                async with asyncio.timeout(pause):
                    await self._stopped.wait()
            if self._stopping:
                await self._give_back(msg)
                return
            if time.monotonic() - last_progress > self.ack_wait / 3:
                await msg.in_progress()
                last_progress = time.monotonic()

    async def _give_back(self, msg: Msg) -> None:
        # Redelivered at once and before anything new (a child's later events wait behind it).
        with contextlib.suppress(Exception):
            await msg.nak()
