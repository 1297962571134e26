"""How a bench run is shown: the table printed at the end and the figure beside the results
(bench/results/latest.png). Split from bench/run.py."""

from pathlib import Path


def table(results: dict) -> str:
    a, r, h, e = (
        results["append_events_per_s"],
        results["replay_events_per_s"],
        results["child_history_ms"],
        results["end_to_end"],
    )
    lines = [
        f"{'measure':<46}{'refbus':>14}{'raw ceiling':>14}{'ratio':>8}   target",
        f"{'append, events/s (all guarantees, fsync)':<46}{a['refbus_group_commit']:>14,}"
        f"{max(a['raw_publish_async'], a['raw_atomic_batch_500']):>14,}{results['append_ratio']:>8}   >= 0.5",
        f"{'   raw publish_async / atomic batch 500':<46}{'':>14}"
        f"{a['raw_publish_async']:>7,}/{a['raw_atomic_batch_500']:,}",
        f"{'   (authentication and TLS on, both sides)':<46}",
        f"{'replay of the whole log, events/s':<46}{r['refbus']:>14,}{r['raw_ordered_consumer']:>14,}"
        f"{results['replay_ratio']:>8}   >= 0.7",
        f"{'pilot ingest (550,000 events), s':<46}{results['pilot_ingest_s']:>14}{'':>22}   < 60",
    ]
    if "append_plain_wire" in results:
        plain = results["append_plain_wire"]
        lines.append(f"{'append without auth/TLS, events/s (their cost)':<46}"
                     f"{plain['events_per_s']['refbus_group_commit']:>14,}"
                     f"{plain['events_per_s']['raw_atomic_batch_500']:>14,}{plain['append_ratio']:>8}")
    for size, samples in h.items():
        uniform, weighted, again = samples["uniform"], samples["activity_weighted"], samples["uniform_again"]
        lines.append(
            f"{'child history at ' + format(int(size), ',') + ' events, p50/p99 ms':<46}"
            f"{uniform['p50']:>7}/{uniform['p99']:<8}(again {again['p50']}/{again['p99']};"
            f" by activity {weighted['p50']}/{weighted['p99']})   p99 <= 5, flat"
        )
    if "server_gc_marks_during_first_reads_ms" in results:
        # For each log size: the marks during the typical children's reads, then the weighted ones'.
        marks = "; ".join(
            f"{format(int(size), ',')}: "
            + ", ".join("/".join(format(m, "g") for m in by_sample[name]) or "-" for name in by_sample)
            for size, by_sample in results["server_gc_marks_during_first_reads_ms"].items()
        )
        lines.append(f"{'   server GC marks in first reads (typ., act.), ms':<46}  {marks}")
    if "pages_stream" in results:
        waits = "/".join(str(v) for v in results["pages_catch_up_after_ingest_s"].values())
        lines.append(
            f"{'   history pages: pager caught up after, s':<46}{waits:>14}   "
            f"({results['pages_stream']['messages']:,} pages, {results['pages_stream']['bytes'] / 1e6:.0f} MB;"
            f" pager CPU {results['pager_cpu_s_until_1m']} s, peak RSS {results['pager_peak_rss_mb_until_1m']} MB)"
        )
    for name in ("request_to_received_ms", "request_to_accepted_ms"):
        stats = e[name]
        lines.append(
            f"{name.replace('_ms', '') + ' p50/p99/p99.9 ms':<46}"
            f"{stats['p50']:>6}/{stats['p99']}/{stats['p99.9']}" + ("   p99 < 50" if "received" in name else "")
        )
    lines.append(
        f"{'   at offered load, referrals/s':<46}{e['offered_referrals_per_s']:>14}"
        f"   (server GC marks meanwhile: {len(e.get('server_gc_marks_ms', []))}, "
        f"{sum(e.get('server_gc_marks_ms', [])):g} ms in all)"
    )
    for rate, at in results.get("end_to_end_by_rate", {}).items():
        got, ok = at["request_to_received_ms"], at["request_to_accepted_ms"]
        lines.append(
            f"{'   at ' + rate + '/s: received p50/p99, accepted p99':<46}{got['p50']:>7}/{got['p99']}, {ok['p99']}"
        )
    for transport in ("http", "nats"):
        if transport in results.get("gateway", {}):
            g = results["gateway"][transport]
            top, sustained = g["steps"][-1], g["sustained_per_s_p99_under_50ms"]
            latency = top["latency_ms"]
            lines.append(
                f"{'gateway ' + transport + ': sustained cmds/s (p99<50ms)':<46}{sustained:>14}"
                f"   (last step {top['offered_per_s']}/s: p50/p99 {latency['p50']}/{latency['p99']})   >= 1,000"
            )
    if "audit" in results:
        au = results["audit"]
        lines.append(f"{'append signed+chained / unsigned, events/s':<46}{au['append_signed_chained_per_s']:>14,}"
                     f"{au['append_unsigned_per_s']:>14,}{au['append_ratio']:>8}   (100k; signing's own cost)")
        lines.append(f"{'verify / replay, events/s':<46}{au['verify_per_s']:>14,}{au['replay_per_s']:>14,}"
                     f"{au['verify_ratio']:>8}   >= 0.5")
    if "secured_cost" in results:
        sc = results["secured_cost"]
        plain, secured = sc["plain"], sc["secured"]
        lines.append(f"{'e2e at ' + str(sc['rate']) + '/s: auth+TLS off/on, CPU ms/referral':<46}"
                     f"{plain['cpu_ms_per_referral']:>7}/{secured['cpu_ms_per_referral']}"
                     f"   (cost {sc['throughput_cost']:.1%}; received p99 {plain['received_p99_ms']}/"
                     f"{secured['received_p99_ms']} ms)")
    memory = e["service_peak_rss_mb"]
    lines.append(f"{'peak RSS per service, MB':<46}" + ", ".join(f"{k} {v}" for k, v in memory.items()))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, middle, right) = plt.subplots(1, 3, figsize=(16, 4.8))
    a = results["append_events_per_s"]
    left.bar(
        ["raw\npublish_async", "raw atomic\nbatch 500", "refbus\ngroup commit"],
        [a["raw_publish_async"], a["raw_atomic_batch_500"], a["refbus_group_commit"]],
        color=["#999", "#999", "#2a7"],
    )
    left.set_title(f"append, events/s (fsync always): ratio {results['append_ratio']}")
    sizes = [int(s) for s in results["child_history_ms"]]
    for sample, quantile, style in (
        ("uniform", "p50", "o-"),
        ("uniform", "p99", "s-"),
        ("activity_weighted", "p99", "s--"),
    ):
        middle.plot(
            sizes,
            [results["child_history_ms"][str(s)][sample][quantile] for s in sizes],
            style,
            label=f"{quantile} {sample.replace('_', ' ')}",
        )
    middle.axhline(5, color="red", linewidth=0.8, label="p99 target")
    middle.set_xscale("log")
    middle.set_yscale("log")
    middle.set_xlabel("events in the log")
    middle.set_ylabel("ms")
    middle.set_title("one child's history")
    middle.legend()
    e = results["end_to_end"]
    names = ["p50", "p99", "p99.9"]
    for offset, key in ((-0.2, "request_to_received_ms"), (0.2, "request_to_accepted_ms")):
        right.bar([i + offset for i in range(3)], [e[key][n] for n in names], width=0.4, label=key[:-3])
    right.set_xticks(range(3), names)
    right.set_ylabel("ms")
    right.set_title(f"end to end at {e['offered_referrals_per_s']} referrals/s")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
