"""Faults of the server under a steady load of referrals, with the four sector services running:
kill -9 and restart, SIGSTOP longer than every client timeout, and a stream filled to its limit.
After each: every acknowledged event is in the log exactly once, every transition is legal, and the
services resume by themselves."""

import asyncio
import os

import pytest

from refbus.contracts import subjects
from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.rules.policy import SimulatedSector
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.faults.checks import conclude
from tests.faults.load import SteadyLoad, now
from tests.services import running, wait_for

pytestmark = pytest.mark.faults

# Seconds of steady load around each fault; `make soak` raises it.
LOAD_SECONDS = float(os.environ.get("REFBUS_FAULT_LOAD_SECONDS", "2"))
POLICIES = {s: SimulatedSector(s, speed=8) for s in Sector}


async def test_server_killed_and_restarted_under_load(own_server: EmbeddedNats, own_log: JetStreamEventStore,
                                                       fault_results: list) -> None:
    async with running(own_server.url, POLICIES, ack_wait=2.0):
        load = SteadyLoad(own_log).start()
        await asyncio.sleep(LOAD_SECONDS)
        own_server.kill()
        await asyncio.sleep(1.0)
        await asyncio.to_thread(own_server.start)
        recovered = now()
        await asyncio.sleep(LOAD_SECONDS)
        fault_results.append(await conclude(own_log, load, "nats-server kill -9, restarted after 1 s", recovered))


async def test_server_frozen_longer_than_client_timeouts(own_server: EmbeddedNats, own_log: JetStreamEventStore,
                                                          fault_results: list) -> None:
    freeze_s = 7.0  # > the event log's 5 s request timeout and the test writer's 2 s
    async with running(own_server.url, POLICIES, ack_wait=2.0):
        load = SteadyLoad(own_log).start()
        await asyncio.sleep(LOAD_SECONDS)
        own_server.freeze()
        await asyncio.sleep(freeze_s)
        own_server.thaw()
        thawed = now()
        await asyncio.sleep(LOAD_SECONDS)
        fault_results.append(await conclude(own_log, load, f"nats-server SIGSTOP {freeze_s:.0f} s, then SIGCONT",
                                            thawed))


async def test_stream_filled_to_its_limit(own_server: EmbeddedNats, fault_results: list) -> None:
    nc = await connect(own_server.url, "fault-test")
    await streams.provision(nc.jetstream(), max_bytes=256 * 1024)
    eventlog = JetStreamEventStore(nc, timeout=2.0)
    async with running(own_server.url, POLICIES, ack_wait=2.0):
        load = SteadyLoad(eventlog, interval=0.005).start()

        async def full() -> bool:
            return load.refused_full > 0

        await wait_for(full, within=60)
        info = await eventlog.js.stream_info(subjects.STREAM)
        assert info.state.bytes <= 256 * 1024  # discard=new: refused, nothing old dropped
        assert info.state.first_seq == 1
        # The operator raises the limit; writers and services carry on by themselves.
        config = info.config
        config.max_bytes = -1
        await eventlog.js.update_stream(config)
        raised = now()
        await asyncio.sleep(LOAD_SECONDS)
        result = await conclude(eventlog, load, "stream full (256 KiB, discard new), limit raised", raised,
                                f"{load.refused_full} appends refused while full")
    fault_results.append(result)
    assert (await eventlog.js.stream_info(subjects.STREAM)).state.first_seq == 1  # nothing old was dropped
    await nc.close()
