"""nats-server killed (kill -9) and restarted mid-flow: services resume by themselves and every
acknowledged event is in the log exactly once."""

import asyncio
import time
from uuid import UUID

import pytest

from refbus.contracts.vocabulary import Sector
from refbus.services.core.eventlog import EventLog
from refbus.services.core.natsserver import EmbeddedNats
from refbus.services.referral.policy import SimulatedSector
from tests.factories import new_child, request
from tests.faults.checks import assert_nothing_lost_or_doubled, scan
from tests.services import running, wait_for

pytestmark = pytest.mark.faults

REFERRALS = 40


async def send_until_acknowledged(eventlog: EventLog, event, within: float = 30.0) -> None:
    """A client's retry loop: the same event (same id) until the log acknowledges it."""
    deadline = time.monotonic() + within
    while True:
        try:
            await eventlog.record(event)
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_server_killed_and_restarted_mid_flow(own_server: EmbeddedNats, own_log: EventLog) -> None:
    policies = {s: SimulatedSector(s, speed=4) for s in Sector}
    acknowledged: set[UUID] = set()
    async with running(own_server.url, policies, ack_wait=2.0):
        targets = [s for s in Sector if s is not Sector.SOCIAL]
        services = {Sector.HEALTH: "vaccination", Sector.EDUCATION: "school_enrolment",
                    Sector.JUSTICE: "birth_registration"}
        requests = [request(new_child(), Sector.SOCIAL, targets[i % 3], services[targets[i % 3]])
                    for i in range(REFERRALS)]
        for i, req in enumerate(requests):
            if i == REFERRALS // 2:
                own_server.kill()
                await asyncio.sleep(0.5)
                await asyncio.to_thread(own_server.start)
            await send_until_acknowledged(own_log, req)
            acknowledged.add(req.event_id)

        async def all_closed() -> bool:
            return (await scan(own_log)).open_referrals == 0

        await wait_for(all_closed, within=90)

    report = await scan(own_log)
    assert_nothing_lost_or_doubled(report, acknowledged)
    assert len(report.referrals) == REFERRALS
