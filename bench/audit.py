"""Issue 16's figures: what signing and chaining cost the append path, and how fast `refbus verify`
walks the log against a plain replay. Each side on a fresh embedded server (deploy/nats-server.conf:
fsync before every acknowledgement), the pilot's events (refbus.registry.pilot_events), fixed seed.

Run alone: `python -m bench.audit [--events N]`; from run.py: `await audit.measure(events)` returns
the dict this prints.
"""

import argparse
import asyncio
import hashlib
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from refbus.registry import pilot_events
from refbus.services.audit import keys, proof
from refbus.services.audit.verify import verify_bus
from refbus.services.eventstore import streams
from refbus.services.eventstore.bulk import BulkWriter
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats


def crypto_micro(n: int = 5000) -> dict[str, float]:
    """µs per Ed25519 sign, verify and per sha256 of a 350-byte event, on this machine now."""
    ring = keys.Keyring([])
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pub = key.public_key()
    message, data = os.urandom(36), os.urandom(350)
    t = time.perf_counter()
    for _ in range(n):
        sig = key.sign(message)
    sign = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        pub.verify(sig, message)
    verify = (time.perf_counter() - t) / n * 1e6
    t = time.perf_counter()
    for _ in range(n):
        hashlib.sha256(message + data).digest()
    sha = (time.perf_counter() - t) / n * 1e6
    chains = [os.urandom(32) for _ in range(proof.GROUP)]
    t = time.perf_counter()
    for _ in range(max(1, n // proof.GROUP)):
        proof.merkle(chains)
    merkle = (time.perf_counter() - t) / max(1, n // proof.GROUP) / proof.GROUP * 1e6
    del ring
    return {"sign_us": round(sign, 1), "verify_us": round(verify, 1), "sha256_us": round(sha, 2),
            "merkle_per_event_us": round(merkle, 2)}


async def _append(events: list, ring: keys.Keyring | None, folder: Path) -> tuple[float, EmbeddedNats]:  # type: ignore[type-arg]
    server = await EmbeddedNats(folder).astart()
    nc = await connect(server.url, "bench-audit")
    await streams.provision(nc.jetstream())
    store = JetStreamEventStore(nc, ring=ring)
    keys.install(None)
    t = time.perf_counter()
    await BulkWriter(store).write(events)
    seconds = time.perf_counter() - t
    await nc.close()
    return len(events) / seconds, server


async def measure(events: int = 100_000, seed: int = 3, rounds: int = 2) -> dict[str, object]:
    """Appends alternate unsigned and signed, `rounds` times each on fresh servers (best of each: the
    machine is shared), then replay and verify of the last signed log."""
    made = pilot_events(children=max(100, events // 25), total=events, seed=seed)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ring = keys.ensure(folder / "keys")
        plain_rate = signed_rate = 0.0
        for n in range(rounds):
            rate, plain = await _append(made, None, folder / f"plain{n}")
            plain_rate = max(plain_rate, rate)
            await plain.astop()
            rate, server = await _append(made, ring, folder / f"signed{n}")
            signed_rate = max(signed_rate, rate)
            if n + 1 < rounds:
                await server.astop()
        nc = await connect(server.url, "bench-audit-read")
        store = JetStreamEventStore(nc)
        t = time.perf_counter()
        count = 0
        async for _ in store.replay():
            count += 1
        replay_rate = count / (time.perf_counter() - t)
        t = time.perf_counter()
        report = await verify_bus(nc, ring)
        verify_rate = report.events / (time.perf_counter() - t)
        await nc.close()
        await server.astop()
    return {
        "events": len(made),
        "append_unsigned_per_s": round(plain_rate),
        "append_signed_chained_per_s": round(signed_rate),
        "append_ratio": round(signed_rate / plain_rate, 2),
        "replay_per_s": round(replay_rate),
        "verify_per_s": round(verify_rate),
        "verify_ratio": round(verify_rate / replay_rate, 2),
        "verified_ok": report.ok,
        "crypto": crypto_micro(),
        "machine": f"{platform.machine()} {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
        "signing": f"one Ed25519 signature per sector per batch, groups of at most {proof.GROUP} (Merkle paths)",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(measure(args.events)), indent=2))


if __name__ == "__main__":
    main()
