"""The bus on a three-node NATS cluster (deploy/cluster/), streams at three replicas: kill -9 the
stream leader under load; nothing acknowledged is lost and the flow continues."""

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.policy import SimulatedSector
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import DEPLOY_DIR, EmbeddedNats
from tests.faults.checks import conclude
from tests.faults.load import SteadyLoad, now
from tests.faults.test_server_faults import LOAD_SECONDS
from tests.services import running, wait_for

INDEX_CATCH_UP_S = 60.0

pytestmark = pytest.mark.faults
NODES = {f"n{i}": (4230 + i, 8230 + i) for i in (1, 2, 3)}


def meta_leader(monitor_port: int) -> str | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/jsz", timeout=1) as resp:
            return (json.load(resp).get("meta_cluster") or {}).get("leader")
    except OSError:
        return None


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, EmbeddedNats]]:
    nodes = {
        name: EmbeddedNats(tmp_path / name, port=port, monitor_port=monitor,
                           config=DEPLOY_DIR / "cluster" / f"node-{name[1]}.conf")
        for name, (port, monitor) in NODES.items()
    }
    for node in nodes.values():  # each waits only for its own JetStream, not for quorum
        node.start(timeout=30)
    yield nodes
    for node in nodes.values():
        node.stop()


async def test_stream_leader_killed_under_load(cluster: dict[str, EmbeddedNats], fault_results: list) -> None:
    url = ",".join(node.url for node in cluster.values())

    async def elected() -> bool:
        return meta_leader(NODES["n1"][1]) is not None

    await wait_for(elected, within=30)
    nc = await connect(url, "cluster-test")
    await streams.provision(nc.jetstream(), replicas=3)
    eventlog = JetStreamEventStore(nc, timeout=2.0)
    info = await eventlog.js.stream_info(subjects.STREAM)
    assert info.config.num_replicas == 3

    policies = {s: SimulatedSector(s, speed=8) for s in Sector}
    async with running(url, policies, ack_wait=2.0):
        load = SteadyLoad(eventlog).start()
        await asyncio.sleep(LOAD_SECONDS)
        leader = (await eventlog.js.stream_info(subjects.STREAM)).cluster.leader
        assert leader in cluster
        cluster[leader].kill()
        killed = now()

        async def new_leader() -> bool:
            try:
                current = (await eventlog.js.stream_info(subjects.STREAM)).cluster.leader
            except Exception:
                return False
            return current is not None and current != leader

        await wait_for(new_leader, within=30)
        await asyncio.sleep(LOAD_SECONDS)
        result = await conclude(eventlog, load, "cluster R3: stream leader kill -9", killed, f"leader was {leader}")
    # The child index stops copying for a while after the log's leader fails over (reads fall back
    # to the log meanwhile); it must catch up with everything by itself.
    last_seq = (await eventlog.js.stream_info(subjects.STREAM)).state.last_seq
    assert await eventlog.index_missing(last_seq, wait=INDEX_CATCH_UP_S) == 0
    caught_up = (now() - killed).total_seconds()
    fault_results.append(replace(result, note=f"{result.note}, index complete {caught_up:.0f} s after the kill"))
    await nc.close()
