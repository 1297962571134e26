"""A steady load of referrals for fault tests, with a client's honest retry loop, and the numbers
every fault reports: acknowledged, found, lost, doubled, time to resume."""

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from uuid import UUID

from refbus.contracts.events import ReferralRequested
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.records import LogFull
from refbus.services.rules.audit import AuditReport
from tests.factories import new_child, record, request

TARGETS = ((Sector.HEALTH, "vaccination"), (Sector.EDUCATION, "school_enrolment"),
           (Sector.JUSTICE, "birth_registration"), (Sector.SOCIAL, "social_benefits"))


@dataclass
class SteadyLoad:
    """Sends one referral every `interval` s; retries each (same event id) until the log acknowledges
    it or `give_up` s pass. Only acknowledged events count."""

    eventlog: JetStreamEventStore
    interval: float = 0.02
    give_up: float = 30.0
    acknowledged: set[UUID] = field(default_factory=set)
    not_acknowledged: int = 0
    refused_full: int = 0
    sent: int = 0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _task: "asyncio.Task[None] | None" = None

    def next_request(self) -> ReferralRequested:
        to, service = TARGETS[self.sent % len(TARGETS)]
        frm = Sector.EDUCATION if to is Sector.SOCIAL else Sector.SOCIAL
        self.sent += 1
        return request(new_child(), frm, to, service)

    async def send(self, event: ReferralRequested) -> None:
        deadline = time.monotonic() + self.give_up
        while True:
            try:
                await record(self.eventlog, event)
                self.acknowledged.add(event.event_id)
                return
            except LogFull:
                self.refused_full += 1
                return
            except Exception:  # timeouts, reconnects: the same event again, idempotently
                if time.monotonic() > deadline or self._stop.is_set():
                    self.not_acknowledged += 1
                    return
                await asyncio.sleep(0.1)

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.send(self.next_request())
            await asyncio.sleep(self.interval)

    def start(self) -> "SteadyLoad":
        self._task = asyncio.create_task(self.run())
        return self

    async def finish(self) -> None:
        self._stop.set()
        await self._task


def first_service_event_after(report_events: list[tuple[datetime, bool]], moment: datetime) -> float | None:
    """Seconds from `moment` to the first event a sector service wrote after it."""
    later = [stored_at for stored_at, by_service in report_events if by_service and stored_at > moment]
    return (min(later) - moment).total_seconds() if later else None


async def service_event_times(eventlog: JetStreamEventStore) -> list[tuple[datetime, bool]]:
    return [(s.stored_at, not isinstance(s.event, ReferralRequested)) async for s in eventlog.replay()]


@dataclass
class FaultResult:
    fault: str
    acknowledged: int
    found: int
    doubled: int
    resumed_after_s: float | None
    note: str = ""

    @classmethod
    def of(cls, fault: str, acknowledged: set[UUID], report: AuditReport, resumed: float | None,
           note: str = "") -> "FaultResult":
        return cls(fault, len(acknowledged), len(acknowledged & set(report.stored_ids)),
                   sum(n > 1 for n in report.stored_ids.values()), resumed, note)


def now() -> datetime:
    return datetime.now(UTC)
