"""kill -9 a sector service in the middle of its work: a new one resumes, nothing is doubled."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from refbus.contracts import subjects
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child, record, request
from tests.faults.checks import assert_nothing_lost_or_doubled, scan
from tests.faults.load import FaultResult, first_service_event_after, now, service_event_times
from tests.services import read_service, wait_for

pytestmark = pytest.mark.faults


def start_service(server: EmbeddedNats, log_path: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "REFBUS_NATS_URL": server.url,
        "REFBUS_SIM_SPEED": "1",
        "REFBUS_ACK_WAIT": "2",
        "REFBUS_LOG_JSON": "1",
    }
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "refbus.cli", "service", "health"], env=env,
                                stdout=log, stderr=subprocess.STDOUT)


async def test_a_service_killed_while_handling_resumes_without_duplicates(
    own_server: EmbeddedNats, own_log: JetStreamEventStore, tmp_path: Path, fault_results: list
) -> None:
    async with read_service(own_server.url):  # the pager's in production: the service reads children through it
        await _killed_and_resumed(own_server, own_log, tmp_path, fault_results)


async def _killed_and_resumed(
    own_server: EmbeddedNats, own_log: JetStreamEventStore, tmp_path: Path, fault_results: list
) -> None:
    first = start_service(own_server, tmp_path / "health-1.log")
    try:
        requests = [request(new_child()) for _ in range(20)]
        acknowledged = {r.event_id for r in requests}
        for req in requests:
            assert await record(own_log, req)

        async def some_received() -> bool:
            received = 0
            for req in requests:
                state = await own_log.load(req.child)
                received += state.referrals[req.referral_id].received_at is not None
            return received >= 5

        await wait_for(some_received, within=30)
    finally:
        first.kill()  # SIGKILL: no drain, no ack, no goodbye
        first.wait()
    at_kill = await scan(own_log)
    assert at_kill.open_referrals > 0, "the service finished before it was killed: nothing was tested"

    restarted = now()
    second = start_service(own_server, tmp_path / "health-2.log")
    try:
        async def all_closed() -> bool:
            return (await scan(own_log)).open_referrals == 0

        await wait_for(all_closed, within=60)
    finally:
        second.terminate()
        second.wait(10)

    report = await scan(own_log)
    assert_nothing_lost_or_doubled(report, acknowledged)
    info = await own_log.js.consumer_info(subjects.STREAM, "inbox-health")
    assert info.num_pending == 0 and info.num_ack_pending == 0
    resumed = first_service_event_after(await service_event_times(own_log), restarted)
    fault_results.append(FaultResult.of("sector service kill -9 mid-work, restarted", acknowledged, report, resumed,
                                        f"{at_kill.open_referrals} referrals open at the kill"))
