"""`make bench`: refbus against the raw nats-py ceiling, on the same machine, in the same run.

Workload: a synthetic registry at the Bacău pilot's proportions (22,000 vulnerable children, ~42,000
vulnerabilities, 550,000 service and referral events, Zipf activity), fixed seeds. Every figure on
our side has every guarantee on: PubAck awaited, Nats-Msg-Id, per-child expected sequence, lifecycle
rules, and the server's fsync before every acknowledgement (deploy/nats-server.conf), which the raw
side shares (same server, same stream settings).

Writes bench/results/latest.json and latest.png, and prints a table.
"""

import argparse
import asyncio
import gc
import json
import os
import platform
import random
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import metrics_cost  # bench/metrics_cost.py: the script's folder is on sys.path
import nats
from audit import measure as audit_measure  # bench/audit.py
from e2e import LATENCY_RATE, LATENCY_SECONDS, end_to_end  # bench/e2e.py
from gateway import gateway_bench  # bench/gateway.py (this script's directory is on the path)
from nats.js.api import DeliverPolicy
from processes import PagerProcess, Secured, ServerGC, ms, server_settled  # bench/processes.py
from report import plot, table  # bench/report.py

from refbus.contracts import codec, subjects
from refbus.contracts.events import Event
from refbus.registry import PILOT_EVENTS, import_jsonl, pilot_events, write_jsonl
from refbus.services.audit import keys
from refbus.services.eventstore import streams
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream import new_batch_id
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.pager.pager import pager_checkpoint
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import UNAUTHENTICATED_CONFIG, EmbeddedNats

RESULTS = Path(__file__).resolve().parent / "results"
RAW_STREAM = "BENCHRAW"
APPEND_EVENTS = 100_000
APPEND_SEEDS = (3, 6, 7)  # one round of appends each: raw atomic batches, then refbus
HISTORY_SIZES = (10_000, 100_000, 1_000_000)
HISTORY_SAMPLES = 400
REPLAY_TRIALS = 3
# Where the cost of metrics and deadlines is measured: a rate 2 cores keep up with, so that a p99
# difference is latency, not queueing (bench/metrics_cost.py).
COST_RATE = 150
SWEEP_RATES = (100, 250)
SWEEP_SECONDS = 10


# -- the raw ceiling ------------------------------------------------------------------------------


async def raw_publish_async(nc: nats.NATS, payloads: list[tuple[str, bytes]]) -> float:
    js = nc.jetstream(publish_async_max_pending=4000)
    start = time.perf_counter()
    for subject, payload in payloads:
        await js.publish_async(subject, payload)
    await js.publish_async_completed()
    return len(payloads) / (time.perf_counter() - start)


async def raw_atomic_batches(nc: nats.NATS, payloads: list[tuple[str, bytes]], size: int = 500) -> float:
    start = time.perf_counter()
    for first in range(0, len(payloads), size):
        chunk = payloads[first : first + size]
        batch_id = new_batch_id()  # as refbus's
        for number, (subject, payload) in enumerate(chunk, 1):
            headers = {"Nats-Batch-Id": batch_id, "Nats-Batch-Sequence": str(number)}
            if number < len(chunk):
                await nc.publish(subject, payload, headers=headers)
            else:
                headers["Nats-Batch-Commit"] = "1"
                reply = await nc.request(subject, payload, headers=headers, timeout=10)
                assert b'"error"' not in reply.data, reply.data
    return len(payloads) / (time.perf_counter() - start)


async def raw_replay(nc: nats.NATS, count: int) -> float:
    """The fastest plain read of the whole log: an ordered consumer with a callback, no decoding."""
    done = asyncio.Event()
    seen = 0

    async def on_message(msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen >= count:
            done.set()

    start = time.perf_counter()
    sub = await nc.jetstream().subscribe(
        subjects.LOG_SUBJECTS,
        cb=on_message,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        pending_msgs_limit=200_000,
    )
    await done.wait()
    elapsed = time.perf_counter() - start
    await sub.unsubscribe()
    return count / elapsed


# -- our side -------------------------------------------------------------------------------------


async def our_append(eventlog: JetStreamEventStore, events: list[Event]) -> float:
    start = time.perf_counter()
    report = await BulkWriter(eventlog).write(events)
    elapsed = time.perf_counter() - start
    assert report.stored == len(events) and not report.refused, report
    return len(events) / elapsed


async def our_replay(eventlog: JetStreamEventStore) -> tuple[float, int]:
    start = time.perf_counter()
    count = 0
    async for stored in eventlog.replay():
        count += stored.event is not None
    return count / (time.perf_counter() - start), count


async def child_history(eventlog: JetStreamEventStore, children: list[str]) -> dict[str, float]:
    timings = []
    for child in children:
        start = time.perf_counter()
        history = await eventlog.history(child)
        timings.append(time.perf_counter() - start)
        assert history, child
    return ms(timings)


async def index_catch_up(eventlog: JetStreamEventStore, size: int) -> float:
    """Seconds until the child index has copied everything ingested so far (it trails a bulk load)."""
    start = time.perf_counter()
    missing = await eventlog.index_missing(size, wait=300)
    assert missing == 0, f"the index still lacks {missing} events"
    return round(time.perf_counter() - start, 2)


async def pages_catch_up(eventlog: JetStreamEventStore) -> float:
    """Seconds until the history pager has paged the whole index (it trails a bulk load too; until
    then reads take what is paged and the rest from the index)."""
    start = time.perf_counter()
    index_last = (await eventlog.js.stream_info(subjects.CHILD_INDEX_STREAM)).state.last_seq
    while await pager_checkpoint(eventlog.nc) < index_last:
        assert time.perf_counter() - start < 300, "the pager did not catch up in 5 minutes"
        await asyncio.sleep(0.2)
    return round(time.perf_counter() - start, 2)


async def pages_complete(eventlog: JetStreamEventStore, children: list[str]) -> str:
    """Once the pager has caught up, each child's pages hold exactly its events in the index."""
    counts = await eventlog.children()
    for child in set(children):
        paged, _ = await eventlog.reader.history_pages(child)
        assert len(paged) == counts[child], f"{child}: {len(paged)} paged of {counts[child]}"
    return f"{len(set(children))} children: pages hold every event"


def sample_children(events: list[Event], count: int, seed: int, by_activity: bool) -> list[str]:
    """Children drawn uniformly (a typical child), or weighted by their number of events (the
    Zipf-heavy children, some with thousands of events, dominate)."""
    rng = random.Random(seed)
    by_event = [e.child for e in events]
    return rng.choices(by_event if by_activity else sorted(set(by_event)), k=count)


Samples = dict[str, list[str]]


def history_samples(events: list[Event]) -> Samples:
    """The children whose history is read: typical ones, and ones weighted by activity."""
    return {
        "uniform": sample_children(events, HISTORY_SAMPLES, 4, by_activity=False),
        "activity_weighted": sample_children(events, HISTORY_SAMPLES, 4, by_activity=True),
    }


async def child_histories(
    eventlog: JetStreamEventStore, samples: Samples, server_gc: "ServerGC"
) -> tuple[dict[str, dict[str, float]], dict[str, list[float]]]:
    """Each sample's read times, and the server's collections during each sample's first reads."""
    results: dict[str, dict[str, float]] = {}
    collections: dict[str, list[float]] = {}
    for name, children in samples.items():
        start = time.perf_counter()
        results[name] = await child_history(eventlog, children)
        collections[name] = server_gc.marks_ms(start, time.perf_counter())
    # The same children once more: the server has their message blocks in memory now, so the
    # difference from the first pass is what loading blocks from disk costs.
    results["uniform_again"] = await child_history(eventlog, samples["uniform"])
    return results, collections


async def server_quiet(eventlog: JetStreamEventStore, server: EmbeddedNats, server_gc: ServerGC) -> float:
    """Seconds until the child index has copied the whole log and the server has settled."""
    start = time.perf_counter()
    await index_catch_up(eventlog, (await eventlog.js.stream_info(subjects.STREAM)).state.messages)
    await server_settled(server, server_gc)
    return round(time.perf_counter() - start, 2)



# -- the run ----------------------------------------------------------------------------------------


def environment(server_version: str) -> dict[str, object]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    fsync = "always" if "sync_interval: always" in UNAUTHENTICATED_CONFIG.read_text() else "server default (2 min)"
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform()},
        "python": platform.python_version(),
        "versions": {
            "nats-server": server_version,
            **{name: metadata.version(name) for name in ("nats-py", "faststream", "msgspec", "refbus")},
        },
        "fsync": f"sync_interval: {fsync} (both sides: same server, same stream settings)",
        "seeds": {"pilot": 1, "fill": 2, "append": list(APPEND_SEEDS), "samples": 4},
    }


async def measure_log(
    server: EmbeddedNats,
    server_gc: ServerGC,
    pager: PagerProcess,
    samples: dict[int, Samples],
    pilot_file: Path,
    fill_file: Path,
    appended: list[list[Event]],
    secured: Secured,
) -> dict[str, object]:
    """Ingest, append, history and replay figures, on one server with the log growing to 1M events,
    authentication and TLS on: both sides connect as the admin over TLS (decisions 0020, 0025)."""
    nc = await connect(server.url, "bench", **secured.connect_options())  # type: ignore[arg-type]
    js = nc.jetstream()
    await streams.provision(js)
    raw_config = streams.log_config()
    raw_config.name, raw_config.subjects = RAW_STREAM, ["bench.raw.>"]
    await js.add_stream(raw_config)
    # Every guarantee on: events signed by their sector and chained (docs/decisions/0013-tamper-evidence.md).
    eventlog = JetStreamEventStore(nc, timeout=10, ring=keys.ensure(pilot_file.parent / "keys"))
    results: dict[str, object] = {"environment": environment(nc.connected_server_version.__str__())}
    paging: dict[str, float] = {}
    pager.start()

    print("ingesting the pilot with `refbus import`, measuring one child's history on the way ...", flush=True)
    history: dict[str, dict[str, dict[str, float]]] = {}
    catch_up: dict[str, float] = {}
    settled: dict[str, float] = {}
    collections: dict[str, dict[str, list[float]]] = {}
    ingest_seconds = 0.0
    imported = 0
    for size in (HISTORY_SIZES[0], HISTORY_SIZES[1], PILOT_EVENTS):
        result = await import_jsonl(eventlog, pilot_file, limit=size - imported)
        assert result.stored == size - imported and not result.refused, result
        imported, ingest_seconds = size, ingest_seconds + result.seconds
        catch_up[str(size)] = await index_catch_up(eventlog, size)
        if size in HISTORY_SIZES:
            paging[str(size)] = await pages_catch_up(eventlog)
            settled[str(size)] = await server_settled(server, server_gc)
            history[str(size)], collections[str(size)] = await child_histories(eventlog, samples[size], server_gc)
    results["pilot_ingest_s"] = round(ingest_seconds, 2)
    results["pilot_ingest_events_per_s"] = round(PILOT_EVENTS / ingest_seconds)

    pager.stop()
    print(f"appending {len(appended)} x {APPEND_EVENTS:,} events: raw publish_async, raw atomic batches, refbus ...",
          flush=True)
    # Atomic batches and refbus take turns, each round with fresh events; the best of each counts
    # (this machine's throughput wanders by a quarter from one second to the next). Every trial
    # starts on a quiet server, so that none pays for the one before it: the child index goes on
    # copying refbus's appends for a moment after they are acknowledged.
    payloads = [[(f"bench.raw.{e.child}.{e.from_sector.value}.none", codec.encode(e)) for e in es] for es in appended]
    trials: dict[str, list[float]] = {"raw_atomic_batch_500": [], "refbus_group_commit": []}
    quiet_before_appends: list[float] = []
    for events, raw in zip(appended, payloads, strict=True):
        quiet_before_appends.append(await server_quiet(eventlog, server, server_gc))
        trials["raw_atomic_batch_500"].append(await raw_atomic_batches(nc, raw))
        quiet_before_appends.append(await server_quiet(eventlog, server, server_gc))
        trials["refbus_group_commit"].append(await our_append(eventlog, events))
    quiet_before_appends.append(await server_quiet(eventlog, server, server_gc))
    rates = {"raw_publish_async": await raw_publish_async(nc, payloads[0]), **{k: max(v) for k, v in trials.items()}}
    ceiling = max(rates["raw_publish_async"], rates["raw_atomic_batch_500"])
    results["append_events_per_s"] = {k: round(v) for k, v in rates.items()}
    results["append_trials_events_per_s"] = {k: [round(x) for x in v] for k, v in trials.items()}
    results["server_quiet_before_append_trials_s"] = quiet_before_appends
    results["append_ratio"] = round(rates["refbus_group_commit"] / ceiling, 3)

    pager.start()
    print("filling the log to 1,000,000 events ...", flush=True)
    result = await import_jsonl(eventlog, fill_file)
    assert not result.refused, result.refused[:3]
    info = await js.stream_info(subjects.STREAM)
    assert info.state.messages == HISTORY_SIZES[-1], info.state.messages
    catch_up[str(HISTORY_SIZES[-1])] = await index_catch_up(eventlog, HISTORY_SIZES[-1])
    results["index_catch_up_after_ingest_s"] = catch_up
    paging[str(HISTORY_SIZES[-1])] = await pages_catch_up(eventlog)
    results["pages_catch_up_after_ingest_s"] = paging
    pages_info = await js.stream_info(subjects.PAGES_STREAM)
    results["pages_stream"] = {"messages": pages_info.state.messages, "bytes": pages_info.state.bytes}
    pager.stop()
    results["pager_cpu_s_until_1m"] = round(pager.cpu_s, 1)
    results["pager_peak_rss_mb_until_1m"] = pager.peak_rss_mb
    settled[str(HISTORY_SIZES[-1])] = await server_settled(server, server_gc)
    size = str(HISTORY_SIZES[-1])
    history[size], collections[size] = await child_histories(eventlog, samples[HISTORY_SIZES[-1]], server_gc)
    results["server_settled_before_reads_s"] = settled
    results["server_gc_marks_during_first_reads_ms"] = collections
    # Checked after the timed reads, which must find the server's blocks as the fill left them.
    checked = [child for children in samples[HISTORY_SIZES[-1]].values() for child in children]
    results["pages_checked"] = await pages_complete(eventlog, checked)
    results["child_history_ms"] = history
    # The headline: a typical child. The activity-weighted figures are beside it in child_history_ms.
    results["child_history_p99_ms"] = {size: h["uniform"]["p99"] for size, h in history.items()}
    # The same children read again at once: the server holds their message blocks in memory.
    results["child_history_again_p99_ms"] = {size: h["uniform_again"]["p99"] for size, h in history.items()}

    print(f"replaying the whole log {REPLAY_TRIALS} times: raw ordered consumer, then refbus (decoded events) ...",
          flush=True)
    replays: dict[str, list[float]] = {"raw_ordered_consumer": [], "refbus": []}
    for _ in range(REPLAY_TRIALS):  # in turns, best of each, as for appends
        replays["raw_ordered_consumer"].append(await raw_replay(nc, info.state.messages))
        our_rate, count = await our_replay(eventlog)
        assert count == info.state.messages
        replays["refbus"].append(our_rate)
    results["replay_events_per_s"] = {k: round(max(v)) for k, v in replays.items()}
    results["replay_trials_events_per_s"] = {k: [round(x) for x in v] for k, v in replays.items()}
    results["replay_ratio"] = round(max(replays["refbus"]) / max(replays["raw_ordered_consumer"]), 3)
    await nc.close()
    return results


async def plain_wire_appends(workdir: Path, appended: list[list[Event]], keys_dir: Path) -> dict[str, object]:
    """The same appends, in turns as in measure_log, on a fresh server without authentication or TLS:
    what the secured figures cost (the events are new to this server)."""
    server, server_gc = ServerGC.server(workdir)
    try:
        nc = await connect(server.url, "bench-plain")
        js = nc.jetstream()
        await streams.provision(js)
        raw_config = streams.log_config()
        raw_config.name, raw_config.subjects = RAW_STREAM, ["bench.raw.>"]
        await js.add_stream(raw_config)
        eventlog = JetStreamEventStore(nc, timeout=10, ring=keys.ensure(keys_dir / "keys"))
        trials: dict[str, list[float]] = {"raw_atomic_batch_500": [], "refbus_group_commit": []}
        for events in appended:
            raw = [(f"bench.raw.{e.child}.{e.from_sector.value}.none", codec.encode(e)) for e in events]
            await server_quiet(eventlog, server, server_gc)
            trials["raw_atomic_batch_500"].append(await raw_atomic_batches(nc, raw))
            await server_quiet(eventlog, server, server_gc)
            trials["refbus_group_commit"].append(await our_append(eventlog, events))
        await nc.close()
    finally:
        server.stop()
    best = {k: round(max(v)) for k, v in trials.items()}
    return {"events_per_s": best, "trials_events_per_s": {k: [round(x) for x in v] for k, v in trials.items()},
            "append_ratio": round(best["refbus_group_commit"] / best["raw_atomic_batch_500"], 3)}


async def run(workdir: Path) -> dict[str, object]:
    print("generating the pilot registry (550,000 events) and the rest of a 1,000,000-event log ...", flush=True)
    pilot = pilot_events(seed=1)
    # The 1,000,000-event log holds the whole pilot: its children are sampled from all of it.
    samples = {size: history_samples(pilot[:size]) for size in HISTORY_SIZES}
    pilot_file, fill_file = workdir / "pilot.jsonl", workdir / "fill.jsonl"
    write_jsonl(pilot, pilot_file)
    del pilot
    appended = [pilot_events(seed=seed, total=APPEND_EVENTS) for seed in APPEND_SEEDS]
    write_jsonl(pilot_events(seed=2, total=HISTORY_SIZES[-1] - PILOT_EVENTS - len(appended) * APPEND_EVENTS), fill_file)
    # The files are the workload: what stays in memory is frozen out of the garbage collector, so
    # that the bench's own heap does not slow the side it measures (a million events held in
    # memory made every full collection cost tens of milliseconds: the ingest took 64 s, 50 s without).
    gc.collect()
    gc.freeze()

    secured = Secured(workdir / "secrets")
    server, server_gc = ServerGC.server(workdir / "nats", secured)
    pager = PagerProcess(server.url, secured)
    try:
        results = await measure_log(server, server_gc, pager, samples, pilot_file, fill_file, appended, secured)
    finally:
        pager.stop()
        server.stop()  # also when a measurement fails: no orphaned processes
    print("appending again on a server without authentication or TLS (their cost) ...", flush=True)
    results["append_plain_wire"] = await plain_wire_appends(workdir / "plain", appended[:2], pilot_file.parent)

    print(f"end to end: {LATENCY_RATE} referrals/s for {LATENCY_SECONDS} s through the four services ...", flush=True)
    e2e = await end_to_end(workdir / "e2e")
    results["end_to_end"] = e2e
    # Where the latency target holds: the same run at lower offered loads.
    results["end_to_end_by_rate"] = {}
    for rate in SWEEP_RATES:
        print(f"end to end: {rate} referrals/s for {SWEEP_SECONDS} s ...", flush=True)
        run_at = await end_to_end(workdir / f"e2e-{rate}", rate, SWEEP_SECONDS)
        kept = (
            "offered_referrals_per_s",
            "request_to_received_ms",
            "request_to_accepted_ms",
            "cpu_share_of_one_core",
            "server_gc_marks_ms",
        )
        results["end_to_end_by_rate"][str(rate)] = {k: run_at[k] for k in kept}
    print("gateways: commands over HTTP and NATS request/reply, stepped rates ...", flush=True)
    results["gateway"] = await gateway_bench(workdir / "gateway")  # bench/gateway.py
    print("audit: appends unsigned and signed, replay and verify (100,000 events) ...", flush=True)
    results["audit"] = await audit_measure(100_000)  # bench/audit.py
    results["received_p99_ms"] = e2e["request_to_received_ms"]["p99"]  # type: ignore[index]
    results["service_peak_rss_mb"] = e2e["service_peak_rss_mb"]
    # The services' metrics off and on at the latency rate (bench/metrics_cost.py).
    results["metrics_cost"] = await metrics_cost.compare(end_to_end, workdir / "metrics", COST_RATE, LATENCY_SECONDS)
    # Authentication and TLS on every connection, at the same rate: against the metrics-on run above.
    print(f"end to end with authentication and TLS: {COST_RATE}/s for {LATENCY_SECONDS} s ...", flush=True)
    secured_run = metrics_cost.figures(await end_to_end(workdir / "secured", COST_RATE, LATENCY_SECONDS, secured=True))
    plain_run = results["metrics_cost"]["metrics_on"]  # type: ignore[index]
    results["secured_cost"] = {
        "rate": COST_RATE, "plain": plain_run, "secured": secured_run,
        "throughput_cost": round(1 - plain_run["cpu_ms_per_referral"] / secured_run["cpu_ms_per_referral"], 4),
    }
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, help="where the servers keep their data (default: a temp dir)")
    parser.add_argument(
        "--e2e-only", action="store_true", help="only the end-to-end run, printed as JSON; latest.json is left as it is"
    )
    parser.add_argument("--rate", type=int, default=LATENCY_RATE, help="end to end: referrals offered per second")
    parser.add_argument("--seconds", type=int, default=LATENCY_SECONDS, help="end to end: how long they are offered")
    parser.add_argument("--metrics-cost", action="store_true", help="only the end-to-end run with the services' "
                        "metrics off and on (bench/metrics_cost.py), printed as JSON")
    parser.add_argument("--rounds", type=int, default=1, help="--metrics-cost: pairs of runs (off, on)")
    parser.add_argument("--no-deadlines", action="store_true", help="end to end: without the deadline service")
    args = parser.parse_args()
    if args.metrics_cost:
        with tempfile.TemporaryDirectory(prefix="refbus-bench-") as tmp:
            cost = metrics_cost.compare(end_to_end, args.workdir or Path(tmp), args.rate, args.seconds, args.rounds)
            print(json.dumps(asyncio.run(cost), indent=2))
        return 0
    if args.e2e_only:
        with tempfile.TemporaryDirectory(prefix="refbus-bench-") as tmp:
            run_e2e = end_to_end(args.workdir or Path(tmp), args.rate, args.seconds, not args.no_deadlines)
            print(json.dumps(asyncio.run(run_e2e), indent=2))
        return 0
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="refbus-bench-") as tmp:
        workdir = args.workdir or Path(tmp)
        started = time.perf_counter()
        results = asyncio.run(run(workdir))
    results["bench_seconds"] = round(time.perf_counter() - started, 1)
    (RESULTS / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, RESULTS / "latest.png")
    print()
    print(table(results))
    print(metrics_cost.summary(results["metrics_cost"]))  # type: ignore[arg-type]
    print(f"\nwritten: {RESULTS / 'latest.json'}, {RESULTS / 'latest.png'} ({results['bench_seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
