"""Delivery to a sector system by webhook: what the log addresses to the sector, POSTed to its URL.

A durable consumer per sector (`webhook-<sector>`, filter `refbus.ev.*.*.<sector>`, explicit acks,
max_ack_pending 1) feeds one delivery at a time, in log order, so every child's events arrive in
order. A delivery is retried with exponential backoff until the system answers 2xx, and only then
acked: a restart of either side resumes where it was (the unacked message comes back), so delivery
is at least once and the `webhook-id` (the event id) lets the receiver drop a repeat.

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

import httpx
import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import codec, subjects
from refbus.contracts.events import event_type
from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import credentials, metrics
from refbus.services.gateway.feed import Opener, no_content
from refbus.services.sector.inbox import Inbox, ensure_consumer

log = structlog.get_logger(__name__)

PULL_EXPIRES_S = 2.0
"A pull request's life: how long a pause (an unregistration) waits for the last one to end."


def webhook_consumer(sector: Sector, ack_wait: float = 30.0) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=subjects.webhook_consumer(sector),
        filter_subject=subjects.inbox_filter(sector),
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait,
        max_deliver=-1,
        max_ack_pending=1,
    )


def _failure(exc: Exception | None, status: int | None) -> str:
    if status is not None:
        return "http_4xx" if status < 500 else "http_5xx"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "refused" if "refused" in str(exc).lower() else "connection"
    return "connection" if isinstance(exc, httpx.TransportError) else "other"


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
        self.client = httpx.AsyncClient(timeout=timeout_s)
        self.inbox: Inbox | None = None
        self.delivered = 0
        self._stopping = False
        self._pausing = False
        self._stopped = asyncio.Event()

    async def start(self) -> None:
        config = webhook_consumer(self.sector, self.ack_wait)
        await ensure_consumer(self.nc, subjects.STREAM, config)
        self.inbox = Inbox(
            self.nc, subjects.STREAM, subjects.webhook_consumer(self.sector), self.handle, workers=1,
            expires=PULL_EXPIRES_S,
        )
        await self.inbox.start()
        log.info("webhook_delivery_started", sector=self.sector.value, consumer=config.durable_name)

    async def stop(self, pause: bool = False) -> None:
        """Stop delivering (the service stops, or `pause`: its system unregistered). A delivery being
        retried gives up, unacked. Paused, it is handed back at once (nak), and so is whatever the
        last pull request still brings: a registration made again resumes at it without waiting ack_wait."""
        self._stopping = True
        self._pausing = pause
        self._stopped.set()
        if self.inbox is not None:
            await self.inbox.stop(wait=1.0, requests_end=pause)
        await self.client.aclose()

    async def handle(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if self._pausing:
            await msg.nak()
            return
        try:
            event = codec.decode_on(msg.subject, msg.data)
        except codec.UndecodableEvent as exc:  # the inbox consumer sets it aside; nothing to deliver
            log.warning("webhook_skipped", seq=seq, reason=exc.reason)
            await msg.ack()
            return
        body = msg.data
        try:
            view = await self.opener(event)
        except OSError as exc:  # the keys could not be read: handed back, tried again in a moment
            log.warning("webhook_content_unavailable", seq=seq, error=str(exc))
            await msg.nak(delay=1.0)
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
                response = await self.client.post(self.url, content=body, headers=headers)
                status = response.status_code
                if 200 <= status < 300:
                    await msg.ack_sync()
                    self.delivered += 1
                    metrics.webhook_delivered(self.sector.value)
                    return
            except httpx.HTTPError as exc:
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
        if self._pausing:
            with contextlib.suppress(Exception):
                await msg.nak()
