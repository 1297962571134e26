"""What every fault test asserts afterwards: nothing acknowledged lost, nothing doubled, all legal."""

from collections import Counter
from dataclasses import dataclass, field
from uuid import UUID

from refbus.services.core.eventlog import EventLog
from refbus.services.referral import lifecycle
from refbus.services.referral.state import ChildState, apply


@dataclass
class LogReport:
    stored: Counter[UUID] = field(default_factory=Counter)
    illegal: list[str] = field(default_factory=list)
    unreadable: int = 0
    states: dict[str, ChildState] = field(default_factory=dict)

    def lost(self, acknowledged: set[UUID]) -> set[UUID]:
        return acknowledged - set(self.stored)

    @property
    def doubled(self) -> dict[UUID, int]:
        return {eid: n for eid, n in self.stored.items() if n > 1}

    @property
    def open_referrals(self) -> int:
        return sum(r.is_open for s in self.states.values() for r in s.referrals.values())


async def scan(eventlog: EventLog) -> LogReport:
    report = LogReport()
    async for stored in eventlog.replay():
        if stored.event is None:
            report.unreadable += 1
            continue
        event = stored.event
        report.stored[event.event_id] += 1
        state = report.states.setdefault(event.child, ChildState(child=event.child))
        try:
            lifecycle.check(state, event)
        except lifecycle.IllegalEvent as exc:
            report.illegal.append(str(exc))
        apply(state, event, stored.seq)
    return report
