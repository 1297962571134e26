"""What the operators' guarantees cost: the end-to-end run with the services' metrics and the
deadline service on, and with both off, same rate, alternating (off, on, off, on, ...) so that drift
on a shared machine hits both alike.

Budget (issue 18): metrics and deadline tracking may cost at most 5% of end-to-end throughput and
2 ms of the request -> received p99. On 2 cores the run is CPU-bound, so the throughput they cost is
the CPU they add per referral (all processes, the server's included: capacity = cores / CPU per
referral); measured at a rate the machine keeps up with, where a p99 is latency, not queueing.

    .venv/bin/python bench/run.py --metrics-cost --rate 500 --seconds 30
"""

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace

EndToEnd = Callable[[Path, int, int, bool], Awaitable[dict[str, object]]]
THROUGHPUT_BUDGET = 0.05
P99_BUDGET_MS = 2.0


def figures(run: dict[str, object]) -> dict[str, float]:
    received = run["request_to_received_ms"]  # type: ignore[index]
    return {
        "offered_referrals_per_s": float(run["offered_referrals_per_s"]),  # type: ignore[arg-type]
        "throughput_referrals_per_s": round(float(run["referrals"]) / float(run["drained_after_s"]), 1),  # type: ignore[arg-type]
        "received_p50_ms": float(received["p50"]),  # type: ignore[index]
        "received_p99_ms": float(received["p99"]),  # type: ignore[index]
        "drained_after_s": float(run["drained_after_s"]),  # type: ignore[arg-type]
        "cpu_services": round(
            sum(v for k, v in run["cpu_share_of_one_core"].items() if k not in ("nats-server", "generator")), 2  # type: ignore[union-attr]
        ),
        # Every process of the bus (not the load generator), in CPU ms per referral.
        "cpu_ms_per_referral": round(
            1000 * float(run["drained_after_s"]) / float(run["referrals"])  # type: ignore[arg-type]
            * sum(v for k, v in run["cpu_share_of_one_core"].items() if k != "generator"), 3  # type: ignore[union-attr]
        ),
    }


async def per_message_us(messages: int = 200_000) -> dict[str, float]:
    """The instrumentation's own cost per delivered message, in this process: a handler that does
    nothing, bare and wrapped as the services wrap theirs (instrument.handler, metrics on). Less
    noisy than the end-to-end runs on a shared machine; the same every run on a quiet one."""
    from refbus.contracts.vocabulary import Sector
    from refbus.services.runtime import instrument

    msg = SimpleNamespace(
        subject="refbus.ev.c0123456789abcdef.social.health",
        reply="$JS.ACK.REFBUS.inbox-health.1.100.100.1764312345000000000.0",
        headers={"Refbus-Event-Type": "referral.requested", "Nats-Msg-Id": "x"},
    )

    async def nothing(_msg: object) -> None:
        return None

    before = os.environ.get("REFBUS_METRICS")
    os.environ["REFBUS_METRICS"] = "1"
    metered = instrument.handler(Sector.HEALTH, nothing)
    os.environ.pop("REFBUS_METRICS") if before is None else os.environ.update(REFBUS_METRICS=before)
    found = {}
    for name, handle in (("bare", nothing), ("metered", metered)):
        start = time.perf_counter()
        for _ in range(messages):
            await handle(msg)  # type: ignore[arg-type]
        found[name] = (time.perf_counter() - start) / messages * 1e6
    return {"bare_us": round(found["bare"], 3), "overhead_us": round(found["metered"] - found["bare"], 3)}


async def compare(end_to_end: EndToEnd, workdir: Path, rate: int, seconds: int, rounds: int = 1) -> dict[str, object]:
    """`rounds` pairs of runs (off then on); the median of each mode's figures, and the verdict."""
    runs: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
    before = os.environ.get("REFBUS_METRICS")
    try:
        for round_ in range(rounds):
            for mode in ("off", "on"):
                # The services are subprocesses that inherit this environment (bench/run.py start_services).
                os.environ["REFBUS_METRICS"] = "1" if mode == "on" else "0"
                print(f"metrics and deadlines {mode}: {rate}/s for {seconds} s (round {round_ + 1}/{rounds}) ...",
                      flush=True)
                run = await end_to_end(workdir / f"metrics-{mode}-{round_}", rate, seconds, mode == "on")
                runs[mode].append(figures(run))
                print(f"metrics {mode}: {runs[mode][-1]}", flush=True)  # each run as it ends
    finally:
        if before is None:
            os.environ.pop("REFBUS_METRICS", None)
        else:
            os.environ["REFBUS_METRICS"] = before
    median = {mode: {k: round(statistics.median(r[k] for r in rs), 2) for k in rs[0]} for mode, rs in runs.items()}
    on, off = median["on"], median["off"]
    throughput_cost = 1 - off["cpu_ms_per_referral"] / on["cpu_ms_per_referral"]
    p99_cost = on["received_p99_ms"] - off["received_p99_ms"]
    return {
        "per_message": await per_message_us(),
        "rate": rate,
        "seconds": seconds,
        "rounds": rounds,
        "metrics_off": off,
        "metrics_on": on,
        "runs": runs,
        "throughput_cost": round(throughput_cost, 4),
        "received_p99_cost_ms": round(p99_cost, 2),
        "within_budget": throughput_cost <= THROUGHPUT_BUDGET and p99_cost <= P99_BUDGET_MS,
        "budget": {"throughput": THROUGHPUT_BUDGET, "received_p99_ms": P99_BUDGET_MS},
    }


def summary(cost: dict) -> str:  # type: ignore[type-arg]
    off, on = cost["metrics_off"], cost["metrics_on"]
    return (
        f"metrics and deadlines off/on at {cost['rate']}/s: CPU {off['cpu_ms_per_referral']} / "
        f"{on['cpu_ms_per_referral']} ms a referral (throughput cost {cost['throughput_cost']:.1%}), received p99 "
        f"{off['received_p99_ms']} / {on['received_p99_ms']} ms (cost {cost['received_p99_cost_ms']} ms), "
        f"{cost['per_message']['overhead_us']} us a message; within budget: {cost['within_budget']}"
    )
