"""What every fault test asserts afterwards, through the same audit `refbus check` runs."""

from datetime import UTC, datetime
from uuid import UUID

from refbus.services.eventstore.store import EventStore
from refbus.services.rules.audit import AuditReport, audit_replay
from tests.faults.load import FaultResult, SteadyLoad, first_service_event_after, service_event_times
from tests.services import wait_for


async def scan(eventlog: EventStore) -> AuditReport:
    return await audit_replay(eventlog.replay(), now=datetime.now(UTC))


def assert_nothing_lost_or_doubled(report: AuditReport, acknowledged: set[UUID]) -> None:
    lost = acknowledged - set(report.stored_ids)
    assert lost == set(), f"{len(lost)} acknowledged events are missing"
    problems = [f for f in report.findings if f.kind != "stuck"]
    assert problems == [], problems


async def settle(eventlog: EventStore, within: float = 90.0) -> None:
    """Wait until every referral in the log is closed: the services have done all their work."""

    async def all_closed() -> bool:
        return (await scan(eventlog)).open_referrals == 0

    await wait_for(all_closed, within=within)


async def conclude(
    eventlog: EventStore, load: SteadyLoad, fault: str, recovered_at: datetime, note: str = ""
) -> FaultResult:
    """Stop the load, let the services finish, check the log, and measure how long the flow took
    to resume after `recovered_at`."""
    await load.finish()
    await settle(eventlog)
    report = await scan(eventlog)
    assert_nothing_lost_or_doubled(report, load.acknowledged)
    resumed = first_service_event_after(await service_event_times(eventlog), recovered_at)
    assert resumed is not None, "no sector service wrote anything after the fault"
    return FaultResult.of(fault, load.acknowledged, report, resumed, note)
