"""One picture of the bus for operators: flows, funnel, where referrals pile up, what failed, who is up.

`Monitor` combines the log follower (flows.py: counts from headers and subjects, never a payload),
the server's state (server_state.py: /jsz or the JetStream API), the dead letters kept and, when
given, services' /healthz. `snapshot()` is a plain dict of counts, sector names, stream and consumer
names: no child reference, no referral id (tests check the JSON of a demo for both).
"""

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError

from refbus.contracts import subjects
from refbus.services.monitor import server_state
from refbus.services.monitor.flows import PAIRS, SECTORS, LogFollower
from refbus.services.monitor.server_state import SERVICES, ServerState

log = structlog.get_logger(__name__)

DEFAULT_OVERDUE_AFTER_S = 86_400.0
"Open referrals unchanged this long count as overdue: a day (the deadline service knows each referral's own)."


@dataclass
class MonitorConfig:
    monitor_url: str | None = None
    "The server's monitoring endpoint (http://127.0.0.1:8222); None: the JetStream API only."
    health_urls: dict[str, str] = field(default_factory=dict)
    "service -> its /healthz URL, probed when given."
    overdue_after_s: float = DEFAULT_OVERDUE_AFTER_S
    refresh_s: float = 2.0


class Monitor:
    def __init__(self, nc: NATS, config: MonitorConfig) -> None:
        self.nc = nc
        self.config = config
        self.follower = LogFollower(nc)
        self.server = ServerState()
        self.dead_letters: dict[str, int] = dict.fromkeys(SECTORS, 0)
        self.health: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> "Monitor":
        await self.follower.start()
        await self.refresh()
        self._task = asyncio.create_task(self._refreshing())
        return self

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.follower.stop()

    async def refresh(self) -> None:
        await self.follower.start()  # again, if the log could not be followed yet
        self.server = await server_state.read(self.nc, self.config.monitor_url)
        try:
            self.dead_letters = await server_state.dead_letters(self.nc)
        except Exception as exc:
            log.debug("dead_letters_unread", error=repr(exc))
        if self.config.health_urls:
            probes = await asyncio.gather(*(asyncio.to_thread(_probe, u) for u in self.config.health_urls.values()))
            self.health = dict(zip(self.config.health_urls, probes, strict=True))

    async def _refreshing(self) -> None:
        while True:
            await asyncio.sleep(self.config.refresh_s)
            try:
                await self.refresh()
            except Exception as exc:
                log.warning("monitor_refresh_failed", error=repr(exc))

    async def settle(self, within: float = 60.0) -> bool:
        """Wait until the follower has counted the log up to where it ends now (for --once)."""
        last = self.server.streams.get(subjects.STREAM)
        last_seq = last.last_seq if last is not None else 0
        if last is None:
            try:
                last_seq = (await self.nc.jetstream().stream_info(subjects.STREAM)).state.last_seq
            except NotFoundError:  # no log yet: nothing to count
                return True
        return await self.follower.caught_up(last_seq, within)

    def services(self) -> dict[str, str]:
        """up / down / unknown per service: its /healthz if given, else its NATS connection (from
        /connz), else for a sector whether its inbox has a live puller (num_waiting)."""
        found: dict[str, str] = {}
        connections = self.server.connections
        for service in SERVICES:
            if service in self.health:
                found[service] = self.health[service]
            elif connections is not None:
                found[service] = "up" if connections.get(service) else "down"
            elif service in SECTORS and self.server.source != "unavailable":
                consumer = self.server.consumers.get(f"inbox-{service}")
                found[service] = "up" if consumer is not None and consumer.num_waiting > 0 else "unknown"
            else:
                found[service] = "unknown"
        return found

    def snapshot(self) -> dict[str, object]:
        counts = self.follower.counts
        now_ns = time.time_ns()
        rates = counts.rates_per_min(now_ns)
        log_state = self.server.streams.get(subjects.STREAM)
        inboxes = {}
        for sector in SECTORS:
            consumer = self.server.consumers.get(f"inbox-{sector}")
            inboxes[sector] = {
                "pending": consumer.num_pending if consumer else None,
                "ack_pending": consumer.num_ack_pending if consumer else None,
                "redelivered": consumer.num_redelivered if consumer else None,
                "waiting": consumer.num_waiting if consumer else None,
            }
        return {
            "at": datetime.now(UTC).isoformat(timespec="seconds"),
            "sectors": list(SECTORS),
            "log": {
                "counted_to_seq": counts.seen_seq,
                "last_seq": log_state.last_seq if log_state else None,
                "events": sum(counts.by_type.values()),
                "follow_error": self.follower.error,
            },
            "flows": [
                {
                    "from": frm,
                    "to": to,
                    "referrals": counts.referrals[(frm, to)],
                    "events": counts.events[(frm, to)],
                    "per_min": rates[(frm, to)],
                }
                for frm, to in PAIRS
            ],
            "funnel": counts.funnel(),
            "open": counts.open_by_receiver(),
            "overdue": counts.overdue_by_receiver(now_ns, self.config.overdue_after_s),
            "overdue_after_s": self.config.overdue_after_s,
            "deadline_events": {s: counts.deadline_events[s] for s in SECTORS},
            "inboxes": inboxes,
            "dead_letters": {**self.dead_letters, "total": sum(self.dead_letters.values())},
            "services": self.services(),
            "streams": {
                name: {"messages": s.messages, "bytes": s.bytes, "max_bytes": s.max_bytes}
                for name, s in sorted(self.server.streams.items())
            },
            "jetstream": {
                "source": self.server.source,
                "storage": self.server.storage,
                "storage_limit": self.server.storage_limit,
                "error": self.server.error,
                "foreign_deliveries": self.server.foreign_deliveries,
            },
        }


def _probe(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return "up" if response.status == 200 else "down"
    except OSError:
        return "down"
