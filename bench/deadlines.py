"""Measurements behind docs/decisions/0011-deadlines.md: rebuilding deadlines from the log, against
NATS 2.12 message schedules on a stream of their own.

    .venv/bin/python bench/deadlines.py [--referrals 25000] [--schedules 2000]

Loopback only: it starts its own nats-server in a temporary directory.
"""

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import nats
from nats.aio.msg import Msg
from nats.js.api import StorageType, StreamConfig

from refbus.contracts.events import ReferralAccepted, ReferralReceived, ReferralRequested
from refbus.contracts.vocabulary import Dimension, LegalBasis, Sector, Urgency
from refbus.services.deadlines.follow import LogFollower
from refbus.services.deadlines.service import DeadlineService
from refbus.services.eventstore import streams
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.embedded import EmbeddedNats


def referral_events(i: int, now: datetime) -> list:
    child = f"c{i:016x}"
    rid = uuid.uuid4()
    common = {"child": child, "correlation_id": rid, "referral_id": rid, "actor": "w0000aaaa", "occurred_at": now}
    req = ReferralRequested(event_id=uuid.uuid4(), from_sector=Sector.SOCIAL, to_sector=Sector.HEALTH,
                            dimension=Dimension.HEALTH, service="vaccination", urgency=Urgency.ROUTINE,
                            legal_basis=LegalBasis.CHILD_PROTECTION_DUTY, **common)
    back = {"from_sector": Sector.HEALTH, "to_sector": Sector.SOCIAL}
    events = [req, ReferralReceived(event_id=uuid.uuid4(), **back, **common)]
    if i % 2:
        events.append(ReferralAccepted(event_id=uuid.uuid4(), **back, **common))
    return events


async def rebuild(url: str, referrals: int) -> dict[str, object]:
    nc = await nats.connect(url)
    await streams.provision(nc.jetstream())
    store = JetStreamEventStore(nc)
    now = datetime.now(UTC)
    writer = BulkWriter(store)
    events = [e for i in range(referrals) for e in referral_events(i, now)]
    for start in range(0, len(events), 20_000):
        await writer.write(events[start : start + 20_000])
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    service = DeadlineService(store, b"k" * 32, follower=lambda t: LogFollower(nc, t, "deadlines-bench"))
    cpu, wall = time.process_time(), time.perf_counter()
    await service.start()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    await service.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The same rebuild through an ordered consumer (replay.py): what a user allowed the filterless
    # consumer create would get.
    replayed = DeadlineService(store, b"k" * 32)
    cpu2, wall2 = time.process_time(), time.perf_counter()
    await replayed.start()
    wall2, cpu2 = time.perf_counter() - wall2, time.process_time() - cpu2
    await replayed.stop()
    await nc.close()
    return {
        "ordered_consumer_rebuild_s": round(wall2, 2),
        "ordered_consumer_events_per_client_cpu_s": round(len(events) / cpu2),
        "events": len(events),
        "open_referrals": service.tracker.open_referrals,
        "heap_entries": service.tracker.pending,
        "rebuild_s": round(wall, 2),
        "events_per_s": round(len(events) / wall),
        "client_cpu_s": round(cpu, 2),
        "events_per_client_cpu_s": round(len(events) / cpu),
        "peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
    }


async def schedules(server: EmbeddedNats, count: int, due_in: float = 20.0) -> dict[str, object]:
    """`count` one-shot schedules (`Nats-Schedule: @at <time>`, second resolution) on a stream of
    their own, all due at once `due_in` s from now; the server restarted before they are due;
    lateness of each firing (the stored time of the target message minus the due time)."""
    nc = await nats.connect(server.url)
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="SCHED", subjects=["sched.>"], storage=StorageType.FILE,
                                     allow_msg_schedules=True))
    due = datetime.now(UTC) + timedelta(seconds=due_in)
    at = due.strftime("%Y-%m-%dT%H:%M:%SZ")
    due = datetime.strptime(at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    started = time.perf_counter()
    for i in range(count):
        await js.publish(f"sched.at.{i}", b"", timeout=10.0,
                         headers={"Nats-Schedule": f"@at {at}", "Nats-Schedule-Target": f"sched.fired.{i}"})
    publish_s = time.perf_counter() - started
    await nc.close()
    server.stop()
    await asyncio.sleep(1.0)
    server.start()
    nc = await nats.connect(server.url)
    fired: list[float] = []
    done = asyncio.Event()

    async def on_fired(msg: Msg) -> None:
        # The scheduler stores the target message in the stream (no core publish): its stored time.
        fired.append((msg.metadata.timestamp - due).total_seconds())
        if len(fired) >= count:
            done.set()

    await nc.jetstream().subscribe("sched.fired.>", cb=on_fired, ordered_consumer=True)
    try:
        async with asyncio.timeout(due_in + 30):
            await done.wait()
    except TimeoutError:
        pass
    info = await nc.jetstream().stream_info("SCHED")
    await nc.close()
    fired.sort()
    return {
        "schedules": count,
        "publish_per_s": round(count / publish_s),
        "fired_after_restart": len(fired),
        "lateness_s": {q: round(fired[min(len(fired) - 1, int(q * len(fired)))], 3) for q in (0.0, 0.5, 0.99, 1.0)}
        if fired else None,
        "stream_messages_after": info.state.messages,
    }


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--referrals", type=int, default=25_000)
    parser.add_argument("--schedules", type=int, default=2_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refbus-deadlines-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats").start()
        try:
            results: dict[str, object] = {"load_before": os.getloadavg()}
            if args.referrals:
                results["rebuild"] = await rebuild(server.url, args.referrals)
                print(json.dumps(results), flush=True)
            if args.schedules:
                results["schedules"] = await schedules(server, args.schedules)
        finally:
            server.stop()
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
