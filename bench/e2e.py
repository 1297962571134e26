"""End to end: referrals sent as the referring system sends them (commands to social's gateway),
through the four sector services, the pager and the deadline service as processes, every event
addressed to a sector also delivered to its system by webhook. Split from bench/run.py."""

import asyncio
import random
import subprocess
import time
from datetime import datetime
from pathlib import Path

import msgspec
import nats
from nats.aio.msg import Msg
from processes import (  # bench/processes.py
    SIM_SPEED,
    Secured,
    ServerGC,
    cpu_seconds,
    ms,
    peak_rss_mb,
    start_deadlines,
    start_pager,
    start_services,
    stop_all,
)
from webhook_sink import WebhookSink  # bench/webhook_sink.py

from refbus.contracts import subjects
from refbus.contracts.events import ReferralAccepted, ReferralReceived, ReferralRequested
from refbus.contracts.vocabulary import Dimension, LegalBasis, Sector, Urgency
from refbus.services.eventstore import streams
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.bus import connect

LATENCY_RATE = 500  # referrals offered per second
LATENCY_SECONDS = 20


async def gateway_answering(nc: nats.NATS, sector: Sector, within: float = 30.0) -> None:
    """Wait until the sector's gateway answers commands (an empty one: refused, but answered)."""
    deadline = time.monotonic() + within
    while True:
        try:
            await nc.request(subjects.command_subject(sector, "refer"), b"{}", timeout=2)
            return
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


def refer_command(to: Sector, service: str, rng: random.Random) -> bytes:
    """A referral for a new child as a sector system sends it to its gateway (NATS request/reply)."""
    return msgspec.json.encode({
        "idempotency_key": f"{rng.getrandbits(64):016x}",
        "child": f"c{rng.getrandbits(64):016x}",
        "actor": "w0000be4c",
        "to_sector": to.value,
        "dimension": Dimension.HEALTH.value,
        "service": service,
        "urgency": Urgency.ROUTINE.value,
        "legal_basis": LegalBasis.CHILD_PROTECTION_DUTY.value,
    })


async def end_to_end(
    workdir: Path, rate: int = LATENCY_RATE, seconds: int = LATENCY_SECONDS, deadlines: bool = True,
    webhooks: bool = True, secured: bool = False,
) -> dict[str, object]:
    """Referrals through the four services as deployed, each event addressed to a sector also
    delivered to its system by webhook (`webhooks`), the deadline service following (`deadlines`);
    `secured`: authentication and TLS on, every process its own identity over TLS."""
    guard = Secured(workdir / "secrets") if secured else None
    server, server_gc = ServerGC.server(workdir, guard)
    services: dict[Sector, subprocess.Popen[bytes]] = {}
    pager: subprocess.Popen[bytes] | None = None
    tracker: subprocess.Popen[bytes] | None = None
    sink = await WebhookSink().start() if webhooks else None
    try:
        nc = await connect(server.url, "bench-e2e", **(guard.connect_options() if guard else {}))  # type: ignore[arg-type]
        await streams.provision(nc.jetstream())
        services = start_services(server.url, sink, guard)
        pager = start_pager(server.url, guard)
        tracker = start_deadlines(server.url, guard) if deadlines else None
        await asyncio.sleep(3)  # let each service connect and bind its inbox
        # Commands go as the referring system would send them: under authentication, as social-system.
        as_system = guard.connect_options("social-system") if guard else {}
        system = await connect(server.url, "bench-e2e-system", **as_system)  # type: ignore[arg-type]
        await gateway_answering(system, Sector.SOCIAL)
        eventlog = JetStreamEventStore(nc)
        sectors = [s for s in Sector if s is not Sector.SOCIAL]
        services_by_sector = {
            Sector.HEALTH: "vaccination",
            Sector.EDUCATION: "school_enrolment",
            Sector.JUSTICE: "birth_registration",
        }
        total = rate * seconds
        rng = random.Random(5)
        sent: list[asyncio.Task[Msg]] = []
        processes = {
            "nats-server": server.process.pid,
            **{s.value: p.pid for s, p in services.items()},
            "pager": pager.pid,
            **({"deadlines": tracker.pid} if tracker else {}),
        }
        cpu_before = {name: cpu_seconds(pid) for name, pid in processes.items()}
        cpu_before["generator"] = time.process_time()
        start = time.perf_counter()
        for i in range(total):
            # Open loop: each referral leaves at its own time, whatever happened to the previous one.
            await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
            to = sectors[i % 3]
            # As the referring system sends it: a command to its sector's gateway (services/gateway).
            command = refer_command(to, services_by_sector[to], rng)
            refer = subjects.command_subject(Sector.SOCIAL, "refer")
            sent.append(asyncio.create_task(system.request(refer, command, 30)))
        answers = [msgspec.json.decode(reply.data) for reply in await asyncio.gather(*sent)]
        refused = [a for a in answers if a.get("status") != 201]
        if refused:
            raise RuntimeError(f"{len(refused)} referrals refused by the gateway, e.g. {refused[0]}")
        offered = total / (time.perf_counter() - start)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            consumers = [f"inbox-{s.value}" for s in sectors]
            consumers += [subjects.webhook_consumer(s) for s in Sector] if sink is not None else []
            info = [await nc.jetstream().consumer_info(subjects.STREAM, name) for name in consumers]
            if all(i.num_pending == 0 and i.num_ack_pending == 0 for i in info):
                break
            await asyncio.sleep(0.5)
        busy = time.perf_counter() - start
        collections = server_gc.marks_ms(start, start + busy)
        cpu = {name: cpu_seconds(pid) - cpu_before[name] for name, pid in processes.items()}
        cpu["generator"] = time.process_time() - cpu_before["generator"]
        requested: dict[object, datetime] = {}
        received: list[float] = []
        accepted: list[float] = []
        async for stored in eventlog.replay():
            event = stored.event
            if isinstance(event, ReferralRequested):
                requested[event.referral_id] = stored.stored_at
            elif isinstance(event, ReferralReceived | ReferralAccepted):
                delay = (stored.stored_at - requested[event.referral_id]).total_seconds()
                (received if isinstance(event, ReferralReceived) else accepted).append(delay)
        memory = {s.value: peak_rss_mb(p.pid) for s, p in services.items()}
        memory["pager"] = peak_rss_mb(pager.pid)
        if tracker:
            memory["deadlines"] = peak_rss_mb(tracker.pid)
        await system.close()
        await nc.close()
    finally:
        try:
            stop_all([*services.values(), *([pager] if pager else []), *([tracker] if tracker else [])], wait=60)
        finally:
            server.stop()  # also when a measurement fails: no orphaned processes
            if sink is not None:
                await sink.stop()
    return {
        "webhook_deliveries": sum(sink.deliveries.values()) if sink else None,
        "offered_referrals_per_s": round(offered, 1),
        "referrals": total,
        "request_to_received_ms": ms(received),
        "request_to_accepted_ms": ms(accepted),
        "sim_speed": SIM_SPEED,
        # CPU used from the first referral until every inbox was drained, as a share of one core.
        "cpu_share_of_one_core": {name: round(used / busy, 2) for name, used in cpu.items()},
        "drained_after_s": round(busy, 1),
        "server_gc_marks_ms": collections,
        "service_peak_rss_mb": memory,
    }


