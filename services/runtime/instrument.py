"""The services' instrumentation, installed around a sector's inbox and event store by its
composition root (services/sector/app.py) when metrics are enabled (REFBUS_METRICS, default on).

Nothing here decodes a payload: a delivered message is counted by its subject's sector tokens and
its `Refbus-Event-Type` header, checked against the contract's closed lists (metrics.py).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from refbus.contracts import subjects
from refbus.contracts.events import Event, event_type
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime import metrics

log = structlog.get_logger(__name__)

TYPE_HEADER = "Refbus-Event-Type"
LAG_SAMPLE_S = 5.0


class MeteredEventStore(JetStreamEventStore):
    """The JetStream store, counting what it appends (refbus_events_out_total)."""

    async def append_linked(  # type: ignore[override]
        self, child: str, expected_last_seq: int, events: Sequence[Event], *args: Any, **kwargs: Any
    ) -> tuple[list[int], Any]:
        stored = await super().append_linked(child, expected_last_seq, events, *args, **kwargs)
        counts = metrics.HOT.events_out
        for event in events:
            # Sector and type values of a decoded event are the contract's own: the closed lists.
            to = event.to_sector.value if event.to_sector is not None else subjects.NO_SECTOR
            counts[(event.from_sector.value, to, event_type(event))] += 1
        return stored


def event_store(nc: NATS, **options: Any) -> JetStreamEventStore:
    """The service's store (options as JetStreamEventStore's), metered unless metrics are off."""
    return MeteredEventStore(nc, **options) if metrics.enabled() else JetStreamEventStore(nc, **options)


def _delivery_count(reply: str) -> int:
    # $JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending> (or with
    # <domain>.<account hash> after $JS.ACK and a token at the end): jetstream.delivered_position's layout.
    tokens = reply.split(".")
    return int(tokens[4 if len(tokens) == 9 else 6])


def handler(sector: Sector, handle: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
    """`handle` timed and counted (events in, redeliveries, latency); `handle` itself when metrics
    are off."""
    if not metrics.enabled():
        return handle
    name = sector.value
    hot = metrics.HOT
    # Raw (header, subject) values -> their label tuples, mapped once through the closed lists.
    latency_keys: dict[str, tuple[str, str]] = {}
    route_keys: dict[tuple[str, str, str], tuple[str, str, str]] = {}

    async def timed(msg: Msg) -> None:
        start = time.perf_counter()
        try:
            await handle(msg)
        finally:
            elapsed = time.perf_counter() - start
            kind = (msg.headers or {}).get(TYPE_HEADER, "")
            key = latency_keys.get(kind)
            if key is None:
                key = latency_keys[kind] = (name, metrics.type_label(kind)) if len(latency_keys) < 64 else (
                    name, metrics.OTHER)
            hot.observe_latency(key, elapsed)
            try:
                first = _delivery_count(msg.reply) == 1
            except (ValueError, IndexError, AttributeError):  # not a JetStream delivery (no ack subject)
                first = True
            if first:
                tokens = msg.subject.split(".")
                raw = (tokens[-2], tokens[-1], kind) if len(tokens) == 5 else ("", "", kind)
                route = route_keys.get(raw)
                if route is None:
                    route = (metrics.sector_label(raw[0]), metrics.sector_label(raw[1]), metrics.type_label(kind))
                    if len(route_keys) < 256:  # raw values are anyone's: the cache stays bounded
                        route_keys[raw] = route
                hot.events_in[route] += 1
            else:
                hot.redeliveries[name] += 1

    return timed


class LagSampler:
    """Samples a sector's inbox consumer (num_pending, num_ack_pending) every few seconds."""

    def __init__(self, nc: NATS, sector: Sector, consumer: str, every: float = LAG_SAMPLE_S) -> None:
        self.nc = nc
        self.every = every
        self.subject = jetstream.consumer_info_subject(subjects.STREAM, consumer)
        self.pending = metrics.INBOX_PENDING.labels(sector.value)
        self.ack_pending = metrics.INBOX_ACK_PENDING.labels(sector.value)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> "LagSampler":
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def sample(self) -> None:
        info = await jetstream.api_request(self.nc, self.subject, {}, 2.0)
        self.pending.set(int(info.get("num_pending", 0)))  # type: ignore[call-overload]
        self.ack_pending.set(int(info.get("num_ack_pending", 0)))  # type: ignore[call-overload]

    async def _run(self) -> None:
        while True:
            try:
                if self.nc.is_connected:
                    await self.sample()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a slow or restarting server: the next sample tries again
                log.debug("lag_sample_failed", error=repr(exc))
            await asyncio.sleep(self.every)


def lag_sampler(nc: NATS, sector: Sector, consumer: str) -> LagSampler | None:
    return LagSampler(nc, sector, consumer).start() if metrics.enabled() else None
