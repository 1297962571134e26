#!/usr/bin/env python3
"""Benchmark NATS JetStream subject layouts for the referral event log.

Standalone asyncio script (nats-py only). Synthetic data only.

Compares, for several fill sizes:
  * EV     stream, subjects rb.ev.<child>.<from>.<to>, history read with a WILDCARD
           filter rb.ev.<child>.> via batched direct get;
  * EVIDX  mirror of EV with a subject transform rb.ev.*.*.* -> rb.child.<child>,
           history read with a LITERAL subject via batched direct get;
  * append latency with optimistic concurrency (wildcard
    Nats-Expected-Last-Subject-Sequence-Subject vs literal subject);
  * mirror lag EV -> EVIDX;
  * history via an ordered push consumer on EVIDX.

Needs a running nats-server with JetStream on loopback, e.g.
  nats-server -js -sd /tmp/x -a 127.0.0.1 -p 4333
  python bench/subject_layouts.py --server nats://127.0.0.1:4333 --sizes 20000,200000,1000000
"""

import argparse
import asyncio
import json
import random
import sys
import time
import uuid

import nats
from nats.js.api import (
    StorageType,
    StreamConfig,
    StreamSource,
    SubjectTransform,
)
from nats.js.errors import BadRequestError, NotFoundError

AGENCIES = ["social", "health", "education", "justice", "none"]
SAMPLES = 200
FILL_WINDOW = 2000


def pct(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100.0 * (len(xs) - 1))))
    return xs[k]


def fmt(xs):
    return f"p50={pct(xs, 50) * 1000:.3f}ms p99={pct(xs, 99) * 1000:.3f}ms n={len(xs)}"


def gen_children(total, rng):
    """Zipf-ish: most children 4-10 events, ~1% heavy tail with 100+ events."""
    n_children = max(10, total // 10)
    counts = [rng.randint(4, 10) for _ in range(n_children)]
    n_heavy = max(2, n_children // 100)
    for i in range(n_heavy):
        # Pareto-ish tail: 100 .. ~1000
        counts[i] = int(100 * (1.0 / (1.0 - rng.random() * 0.9)))
    # force a few exact reference children
    counts[n_heavy] = 10
    counts[n_heavy + 1] = 100
    s = sum(counts)
    # rescale the "normal" children so the total is close to `total`
    fixed = sum(counts[: n_heavy + 2])
    scale = (total - fixed) / max(1, s - fixed)
    for i in range(n_heavy + 2, n_children):
        counts[i] = max(1, round(counts[i] * scale))
    ids = ["c" + f"{rng.getrandbits(48):012x}" for _ in range(n_children)]
    return ids, counts


def payload_for(rng, child, i):
    body = {
        "type": "referral.updated",
        "child": child,
        "n": i,
        "note": "synthetic",
    }
    raw = json.dumps(body).encode()
    return raw + b" " * max(0, 250 - len(raw))


class DirectBatch:
    """Batched direct get over a single long-lived wildcard inbox subscription."""

    def __init__(self, nc):
        self.nc = nc
        self.prefix = nc.new_inbox()
        self.sub = None
        self.n = 0

    async def start(self):
        self.sub = await self.nc.subscribe(self.prefix + ".*", pending_msgs_limit=1_000_000)

    async def get(self, stream, body, timeout=5.0):
        self.n += 1
        reply = f"{self.prefix}.{self.n}"
        await self.nc.publish(f"$JS.API.DIRECT.GET.{stream}", json.dumps(body).encode(), reply=reply)
        msgs = []
        deadline = time.perf_counter() + timeout
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                raise TimeoutError(f"batch get timed out after {len(msgs)} msgs")
            m = await self.sub.next_msg(timeout=left)
            if m.subject != reply:
                continue  # stale
            h = m.headers or {}
            status = h.get("Status")
            if status:
                return msgs, status, h.get("Description", "")
            msgs.append(m)
            if "batch" not in body:
                return msgs, "200", ""  # single (non-batch) direct get: no EOB


async def fill(js, size, rng):
    ids, counts = gen_children(size, rng)
    seq_children = []
    for idx, c in enumerate(counts):
        seq_children.extend([idx] * c)
    rng.shuffle(seq_children)
    seq_children = seq_children[:size]
    actual = [0] * len(ids)
    for idx in seq_children:
        actual[idx] += 1
    t0 = time.perf_counter()
    for i, idx in enumerate(seq_children):
        child = ids[idx]
        subj = f"rb.ev.{child}.{rng.choice(AGENCIES)}.{rng.choice(AGENCIES)}"
        await js.publish_async(subj, payload_for(rng, child, i))
        if (i + 1) % FILL_WINDOW == 0:
            await js.publish_async_completed()
    await js.publish_async_completed()
    dt = time.perf_counter() - t0
    return ids, actual, dt


async def wait_mirror(js, timeout=300):
    t0 = time.perf_counter()
    ev = await js.stream_info("EV")
    while time.perf_counter() - t0 < timeout:
        mi = await js.stream_info("EVIDX")
        if mi.state.last_seq >= ev.state.last_seq:
            return time.perf_counter() - t0, ev, mi
        await asyncio.sleep(0.05)
    raise TimeoutError("mirror did not catch up")


async def setup_streams(js, nc, want="sources"):
    for s in ("EVIDX", "EV"):
        try:
            await js.delete_stream(s)
        except NotFoundError:
            pass
    await js.add_stream(
        StreamConfig(
            name="EV",
            subjects=["rb.ev.>"],
            storage=StorageType.FILE,
            allow_direct=True,
        )
    )
    mode = "mirror"
    try:
        if want != "mirror":
            raise RuntimeError("sources requested")
        si = await js.add_stream(
            StreamConfig(
                name="EVIDX",
                storage=StorageType.FILE,
                allow_direct=True,
                mirror=StreamSource(
                    name="EV",
                    subject_transforms=[SubjectTransform(src="rb.ev.*.*.*", dest="rb.child.{{wildcard(1)}}")],
                ),
            )
        )
        print(f"  mirror created: mirror_direct={si.config.mirror_direct} (requested allow_direct only)")
    except Exception as e:  # fall back to a sourced stream
        if want == "mirror":
            print(f"  mirror with subject_transforms refused: {e!r}; using sources=[...]")
        mode = "sources"
        await js.add_stream(
            StreamConfig(
                name="EVIDX",
                storage=StorageType.FILE,
                allow_direct=True,
                sources=[
                    StreamSource(
                        name="EV",
                        subject_transforms=[SubjectTransform(src="rb.ev.*.*.*", dest="rb.child.{{wildcard(1)}}")],
                    )
                ],
            )
        )
    return mode


async def verify_mirror(db, ids, actual, rng):
    """Check seqs equal and subjects transformed, for a sample of sequences."""
    ok = 0
    bad = []
    for _ in range(50):
        c = rng.randrange(len(ids))
        if actual[c] == 0:
            continue
        a, _, _ = await db.get("EV", {"next_by_subj": f"rb.ev.{ids[c]}.>", "seq": 1, "batch": 1000})
        b, _, _ = await db.get("EVIDX", {"next_by_subj": f"rb.child.{ids[c]}", "seq": 1, "batch": 1000})
        sa = [int(m.headers["Nats-Sequence"]) for m in a]
        sb = [int(m.headers["Nats-Sequence"]) for m in b]
        subj_ok = all(m.headers["Nats-Subject"] == f"rb.child.{ids[c]}" for m in b)
        data_ok = [m.data for m in a] == [m.data for m in b]
        if sa == sb and subj_ok and data_ok and len(sa) == actual[c]:
            ok += 1
        else:
            bad.append((ids[c], sa[:5], sb[:5], subj_ok, data_ok, actual[c]))
    return ok, bad


async def bench_history(db, stream, subj_fn, children, expected):
    lat = []
    counts = set()
    for i in range(SAMPLES):
        c = children[i % len(children)]
        t0 = time.perf_counter()
        msgs, status, desc = await db.get(stream, {"next_by_subj": subj_fn(c), "seq": 1, "batch": 1000})
        lat.append(time.perf_counter() - t0)
        counts.add((len(msgs), status, desc))
    return lat, counts


async def bench_ordered(js, children):
    lat = []
    counts = set()
    for i in range(SAMPLES):
        c = children[i % len(children)]
        t0 = time.perf_counter()
        sub = await js.subscribe(f"rb.child.{c}", stream="EVIDX", ordered_consumer=True)
        n = 0
        while True:
            m = await sub.next_msg(timeout=5)
            n += 1
            if m.metadata.num_pending == 0:
                break
        await sub.unsubscribe()
        lat.append(time.perf_counter() - t0)
        counts.add(n)
    return lat, counts


async def last_seq_wild(db, child):
    msgs, _, _ = await db.get("EV", {"next_by_subj": f"rb.ev.{child}.>", "seq": 1, "batch": 1000})
    return int(msgs[-1].headers["Nats-Sequence"]) if msgs else 0


async def bench_append(js, db, ids, actual, rng):
    # wildcard OCC: 20 children x 10 appends, `last` taken from history read then acks
    pool = [i for i in range(len(ids)) if actual[i] > 0]
    picks = rng.sample(pool, 20)
    last = {}
    for p in picks:
        last[p] = await last_seq_wild(db, ids[p])
    wild = []
    for k in range(SAMPLES):
        p = picks[k % len(picks)]
        child = ids[p]
        subj = f"rb.ev.{child}.{rng.choice(AGENCIES)}.{rng.choice(AGENCIES)}"
        hdr = {
            "Nats-Expected-Last-Subject-Sequence": str(last[p]),
            "Nats-Expected-Last-Subject-Sequence-Subject": f"rb.ev.{child}.>",
            "Nats-Msg-Id": str(uuid.uuid4()),
        }
        t0 = time.perf_counter()
        ack = await js.publish(subj, payload_for(rng, child, k), headers=hdr)
        wild.append(time.perf_counter() - t0)
        last[p] = ack.seq
        actual[p] += 1

    # literal OCC on one exact subject per child
    lit = []
    lsubj = {}
    llast = {}
    for p in picks:
        lsubj[p] = f"rb.ev.{ids[p]}.health.social"
        msgs, _, _ = await db.get("EV", {"last_by_subj": lsubj[p]})
        llast[p] = int(msgs[0].headers["Nats-Sequence"]) if msgs else 0
    for k in range(SAMPLES):
        p = picks[k % len(picks)]
        hdr = {
            "Nats-Expected-Last-Subject-Sequence": str(llast[p]),
            "Nats-Msg-Id": str(uuid.uuid4()),
        }
        t0 = time.perf_counter()
        ack = await js.publish(lsubj[p], payload_for(rng, ids[p], k), headers=hdr)
        lit.append(time.perf_counter() - t0)
        llast[p] = ack.seq
        actual[p] += 1

    # plain publish, no OCC headers (baseline)
    plain = []
    for k in range(SAMPLES):
        p = picks[k % len(picks)]
        t0 = time.perf_counter()
        await js.publish(lsubj[p], payload_for(rng, ids[p], k))
        plain.append(time.perf_counter() - t0)
        actual[p] += 1
        llast[p] = None

    # wrong expected sequence must be rejected
    p = picks[0]
    child = ids[p]
    rej = {}
    for name, hdr, subj in [
        (
            "wildcard",
            {
                "Nats-Expected-Last-Subject-Sequence": str(last[p] - 1),
                "Nats-Expected-Last-Subject-Sequence-Subject": f"rb.ev.{child}.>",
                "Nats-Msg-Id": str(uuid.uuid4()),
            },
            f"rb.ev.{child}.none.none",
        ),
        (
            "literal",
            {"Nats-Expected-Last-Subject-Sequence": "1", "Nats-Msg-Id": str(uuid.uuid4())},
            lsubj[p],
        ),
    ]:
        try:
            await js.publish(subj, b"x", headers=hdr)
            rej[name] = "ACCEPTED (unexpected)"
        except BadRequestError as e:
            rej[name] = f"BadRequestError err_code={e.err_code} desc={e.description!r}"
        except Exception as e:
            rej[name] = f"{type(e).__name__}: {e}"
    # wildcard expected=0 on a child that already has events must fail too
    try:
        await js.publish(
            f"rb.ev.{child}.none.none",
            b"x",
            headers={
                "Nats-Expected-Last-Subject-Sequence": "0",
                "Nats-Expected-Last-Subject-Sequence-Subject": f"rb.ev.{child}.>",
            },
        )
        rej["wildcard_expect0"] = "ACCEPTED (unexpected)"
    except BadRequestError as e:
        rej["wildcard_expect0"] = f"BadRequestError err_code={e.err_code}"
    return wild, lit, plain, rej


async def bench_mirror_lag(js, db, ids, rng):
    lag = []
    polls = []
    for k in range(SAMPLES):
        child = ids[rng.randrange(len(ids))]
        ack = await js.publish(f"rb.ev.{child}.none.social", payload_for(rng, child, k))
        t0 = time.perf_counter()
        n = 0
        while True:
            n += 1
            msgs, _status, _ = await db.get("EVIDX", {"seq": ack.seq}, timeout=2)
            if msgs:
                break
            if time.perf_counter() - t0 > 5:
                raise TimeoutError("mirror lag > 5s")
        lag.append(time.perf_counter() - t0)
        polls.append(n)
    return lag, polls


async def mirror_check(nc, js, size, seed):
    """Mirror + subject transform: does it work, and what does it do to EV direct gets?"""
    rng = random.Random(seed)
    print(f"\n=== mirror check ({size} msgs) ===", flush=True)
    mode = await setup_streams(js, nc, want="mirror")
    db = DirectBatch(nc)
    await db.start()
    ids, actual, _dt = await fill(js, size, rng)
    _cdt, ev, mi = await wait_mirror(js)
    print(f"  mode={mode} EV last_seq={ev.state.last_seq} EVIDX last_seq={mi.state.last_seq} msgs={mi.state.messages}")
    same = 0
    for _ in range(200):
        seq = rng.randint(1, ev.state.last_seq)
        truth = await js.get_msg("EV", seq)  # non-direct API, answered by EV itself
        m, _, _ = await db.get("EVIDX", {"seq": seq})
        child = truth.subject.split(".")[2]
        if (
            m
            and int(m[0].headers["Nats-Sequence"]) == seq
            and m[0].headers["Nats-Subject"] == f"rb.child.{child}"
            and m[0].data == truth.data
        ):
            same += 1
    print(f"  EVIDX seq==EV seq, subject rb.child.<id>, same data: {same}/200")
    c404 = 0
    wrong_subj = 0
    for k in range(200):
        c = ids[k % len(ids)]
        m, _st, _ = await db.get("EV", {"next_by_subj": f"rb.ev.{c}.>", "seq": 1, "batch": 1000})
        if len(m) != actual[k % len(ids)]:
            c404 += 1
        m, _, _ = await db.get("EV", {"seq": rng.randint(1, ev.state.last_seq)})
        if m and m[0].headers["Nats-Subject"].startswith("rb.child."):
            wrong_subj += 1
    print(
        f"  SURPRISE: DIRECT.GET.EV wildcard history wrong/404: {c404}/200; DIRECT.GET.EV by seq answered with mirror subject rb.child.*: {wrong_subj}/200"
    )
    await db.sub.unsubscribe()
    return {"same": same, "c404": c404, "wrong_subj": wrong_subj, "mirror_direct": mi.config.mirror_direct}


async def run_size(nc, js, size, seed):
    rng = random.Random(seed)
    print(f"\n=== size {size} ===", flush=True)
    mode = await setup_streams(js, nc)
    print(f"  EVIDX mode: {mode}")
    db = DirectBatch(nc)
    await db.start()
    ids, actual, dt = await fill(js, size, rng)
    print(f"  fill: {size} msgs, {len(ids)} children, {dt:.1f}s ({size / dt:.0f} msg/s)", flush=True)
    cdt, ev, mi = await wait_mirror(js)
    print(
        f"  mirror caught up {cdt:.2f}s after fill; EV msgs={ev.state.messages} last_seq={ev.state.last_seq} "
        f"; EVIDX msgs={mi.state.messages} last_seq={mi.state.last_seq} "
        "",
        flush=True,
    )
    dist = sorted(actual)
    print(
        f"  events/child: p50={dist[len(dist) // 2]} p90={dist[int(len(dist) * 0.9)]} "
        f"p99={dist[int(len(dist) * 0.99)]} max={dist[-1]} children>=100: {sum(1 for x in dist if x >= 100)}"
    )
    ok, bad = await verify_mirror(db, ids, actual, rng)
    print(f"  mirror verify: {ok} children identical (seq, data, subject rb.child.<id>); mismatches={bad[:3]}")

    ten = [ids[i] for i in range(len(ids)) if actual[i] == 10][:50]
    hund = [ids[i] for i in range(len(ids)) if 95 <= actual[i] <= 110][:20]
    res = {"size": size, "children": len(ids), "fill_s": dt, "mirror_catchup_s": cdt}
    for label, group in (("10", ten), ("100", hund)):
        lat, cnt = await bench_history(db, "EV", lambda c: f"rb.ev.{c}.>", group, None)
        print(f"  hist EV wildcard ~{label} ev: {fmt(lat)} (count,status)={sorted(cnt)[:4]}", flush=True)
        res[f"ev_wild_{label}"] = lat
        lat, cnt = await bench_history(db, "EVIDX", lambda c: f"rb.child.{c}", group, None)
        print(f"  hist EVIDX literal ~{label} ev: {fmt(lat)} (count,status)={sorted(cnt)[:4]}", flush=True)
        res[f"idx_lit_{label}"] = lat
    # no-match case
    lat, cnt = await bench_history(db, "EV", lambda c: f"rb.ev.{c}.>", ["c000000000000"], None)
    print(f"  hist EV wildcard, unknown child: {fmt(lat)} {sorted(cnt)}")
    res["ev_wild_none"] = lat
    lat, cnt = await bench_history(db, "EVIDX", lambda c: f"rb.child.{c}", ["c000000000000"], None)
    print(f"  hist EVIDX literal, unknown child: {fmt(lat)} {sorted(cnt)}")
    res["idx_lit_none"] = lat

    wild, lit, plain, rej = await bench_append(js, db, ids, actual, rng)
    print(f"  append OCC wildcard (-Subject hdr): {fmt(wild)}")
    print(f"  append OCC literal subject:        {fmt(lit)}")
    print(f"  append plain (no OCC):             {fmt(plain)}")
    for k, v in rej.items():
        print(f"  wrong expected seq [{k}]: {v}")
    res.update(app_wild=wild, app_lit=lit, app_plain=plain, rej=rej)

    lag, polls = await bench_mirror_lag(js, db, ids, rng)
    print(f"  mirror lag (publish ack -> direct get on EVIDX): {fmt(lag)} polls p50={pct(polls, 50)} max={max(polls)}")
    res["lag"] = lag

    for label, group in (("10", ten), ("100", hund)):
        lat, cnt = await bench_ordered(js, group)
        print(f"  hist EVIDX ordered consumer ~{label} ev: {fmt(lat)} counts={sorted(cnt)[:4]}", flush=True)
        res[f"ord_{label}"] = lat
    await db.sub.unsubscribe()
    return res


def table(results):
    cols = [
        ("EV wildcard batch-get ~10", "ev_wild_10"),
        ("EVIDX literal batch-get ~10", "idx_lit_10"),
        ("EV wildcard batch-get ~100", "ev_wild_100"),
        ("EVIDX literal batch-get ~100", "idx_lit_100"),
        ("EV wildcard, unknown child", "ev_wild_none"),
        ("EVIDX literal, unknown child", "idx_lit_none"),
        ("append OCC wildcard -Subject", "app_wild"),
        ("append OCC literal", "app_lit"),
        ("append plain", "app_plain"),
        ("EVIDX (sourced) lag after ack", "lag"),
        ("ordered consumer EVIDX ~10", "ord_10"),
        ("ordered consumer EVIDX ~100", "ord_100"),
    ]
    head = "| measurement (ms, p50 / p99) | " + " | ".join(f"{r['size']:,}" for r in results) + " |"
    lines = [head, "|---|" + "---|" * len(results)]
    for name, key in cols:
        cells = []
        for r in results:
            xs = r.get(key)
            cells.append(f"{pct(xs, 50) * 1000:.2f} / {pct(xs, 99) * 1000:.2f}" if xs else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(
        "| fill time s (msg/s) | "
        + " | ".join(f"{r['fill_s']:.1f} ({r['size'] / r['fill_s']:.0f})" for r in results)
        + " |"
    )
    lines.append("| children | " + " | ".join(f"{r['children']:,}" for r in results) + " |")
    return "\n".join(lines)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server", default="nats://127.0.0.1:4222")
    ap.add_argument("--sizes", default="20000,200000,1000000")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", action="store_true", help="keep streams after the run")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    nc = await nats.connect(args.server)
    js = nc.jetstream(timeout=10, publish_async_max_pending=4000)
    print(
        f"nats-py {getattr(nats, '__version__', '?')} server {nc.connected_server_version} python {sys.version.split()[0]}"
    )
    results = []
    t0 = time.perf_counter()
    mc = await mirror_check(nc, js, sizes[0], args.seed + 100)
    for i, size in enumerate(sizes):
        results.append(await run_size(nc, js, size, args.seed + i))
    if not args.keep:
        for s in ("EVIDX", "EV"):
            try:
                await js.delete_stream(s)
            except Exception:
                pass
    print(f"\ntotal runtime {time.perf_counter() - t0:.0f}s\n")
    print(table(results))
    print(f"\nmirror check: {mc}")
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
