"""What every fault test asserts afterwards, through the same audit `refbus check` runs."""

from datetime import UTC, datetime
from uuid import UUID

from refbus.services.core.eventlog import EventLog
from refbus.services.referral.audit import Auditor, AuditReport


async def scan(eventlog: EventLog) -> AuditReport:
    auditor = Auditor(now=datetime.now(UTC))
    async for stored in eventlog.replay():
        auditor.see(stored.seq, stored.event, stored.error)
    return auditor.finish()


def assert_nothing_lost_or_doubled(report: AuditReport, acknowledged: set[UUID]) -> None:
    lost = acknowledged - set(report.stored_ids)
    assert lost == set(), f"{len(lost)} acknowledged events are missing"
    problems = [f for f in report.findings if f.kind != "stuck"]
    assert problems == [], problems
