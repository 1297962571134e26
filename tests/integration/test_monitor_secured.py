"""`refbus monitor` on the secured server: as `operator` (who may read stream and consumer state but
no event) it cannot follow the log and says so, yet shows backlogs and dead letters; as `admin` it
counts the flows. Neither prints a child."""

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime import metrics
from refbus.services.runtime.embedded import EmbeddedNats
from refbus.services.sector.inbox import ensure_consumer
from refbus.services.sector.service import inbox_consumer
from tests.factories import new_child, record, request
from tests.integration.secured import connect_as, env_for, secured_server

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[EmbeddedNats]:
    yield from secured_server(tmp_path, monkeypatch)


def _monitor(server: EmbeddedNats, user: str) -> dict:  # type: ignore[type-arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")} | env_for(server, user)
    done = subprocess.run(
        [sys.executable, "-m", "refbus.cli", "monitor", "--once", "--json",
         "--monitor-url", f"http://127.0.0.1:{server.monitor_port}"],
        env=env, capture_output=True, text=True, timeout=90,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not metrics.CHILD_LIKE.search(done.stdout)
    return json.loads(done.stdout)


async def test_operator_sees_backlogs_not_the_log_and_admin_sees_flows(server: EmbeddedNats) -> None:
    admin = await connect_as(server, "admin")
    await streams.provision(admin.jetstream())
    await ensure_consumer(admin, subjects.STREAM, inbox_consumer(Sector.HEALTH))
    eventlog = JetStreamEventStore(admin)
    for _ in range(3):
        await record(eventlog, request(new_child(), Sector.SOCIAL, Sector.HEALTH))
    await admin.close()

    as_operator = _monitor(server, "operator")
    assert as_operator["log"]["follow_error"], "the operator may not create a consumer on the log"
    assert as_operator["log"]["events"] == 0
    assert as_operator["inboxes"]["health"]["pending"] == 3
    assert as_operator["streams"]["REFBUS"]["messages"] == 3
    assert as_operator["dead_letters"]["total"] == 0

    as_admin = _monitor(server, "admin")
    assert as_admin["log"]["follow_error"] is None
    assert {(f["from"], f["to"]): f["referrals"] for f in as_admin["flows"]}[("social", "health")] == 3
