"""The sector gateways under load: commands through each transport (HTTP, NATS request/reply) to the
four sector services at once, each its own process as deployed, fsync always (deploy/nats-server.conf).

Workload (fixed seed): open loop; a session per child starts at its scheduled time and sends, back to
back, the commands of one referral's life across two sectors: open-case, record-vulnerability and
refer by the referrer, then accept, start and complete by the receiver (six commands, each decided
against the child's current state, stored with a PubAck, answered with the stored event). The four
sectors refer round-robin. Offered command rates step up until p99 passes 50 ms or the rate offered
is no longer achieved; "sustained" is the highest step with p99 < 50 ms and >= 95% of it achieved.
The sectors run as external systems (no simulated steps): the receiving service still writes a
delivery receipt for every referral, as it always does.

Alone: `.venv/bin/python bench/gateway.py --seconds 5` (prints JSON). From bench/run.py: `gateway_bench`.
"""

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import msgspec
from processes import start_pager  # bench/processes.py (this script's directory is on the path)

from refbus.contracts import subjects
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Sector
from refbus.services.eventstore import streams
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import UNAUTHENTICATED_CONFIG, EmbeddedNats, free_port, port_open

RATES = (250, 500, 1000, 1500, 2000, 3000)
TARGET_P99_MS = 50.0
SECTORS = list(Sector)


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 2)  # noqa: E731
    return {"p50": pick(0.50), "p99": pick(0.99), "max": round(ordered[-1] * 1000, 2)}


def start_sectors(url: str, data_dir: Path, ports: dict[Sector, int], tokens: dict[Sector, str]) -> list[Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")}
    env.update({"REFBUS_NATS_URL": url, "REFBUS_DATA_DIR": str(data_dir), "REFBUS_LOG_LEVEL": "WARNING"})
    for sector in SECTORS:
        name = sector.value.upper()
        env[f"REFBUS_GATEWAY_PORT_{name}"] = str(ports[sector])
        env[f"REFBUS_GATEWAY_TOKEN_{name}"] = tokens[sector]
        env[f"REFBUS_EXTERNAL_{name}"] = "1"
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [sys.executable, "-m", "refbus.cli", "service", s.value], env=env,
            stdout=subprocess.DEVNULL, stderr=(data_dir / f"{s.value}.log").open("wb"),
        )
        for s in SECTORS
    ]


class Transport:
    name = ""

    async def send(self, sector: Sector, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError


class _Connection:
    """One keep-alive HTTP/1.1 connection: a minimal client, so that the bench's own CPU (httpx costs
    ~3 ms a request here) does not take the two cores from the services it measures."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def post(self, head: bytes, body: bytes) -> bytes:
        self.writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        headers = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in headers.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        return await self.reader.readexactly(length)


class Http(Transport):
    name = "http"

    def __init__(self, ports: dict[Sector, int], tokens: dict[Sector, str]) -> None:
        self.ports = ports
        self.tokens = tokens
        self.idle: dict[Sector, list[_Connection]] = {s: [] for s in SECTORS}

    async def send(self, sector: Sector, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        pool = self.idle[sector]
        if pool:
            connection = pool.pop()
        else:
            connection = _Connection(*await asyncio.open_connection("127.0.0.1", self.ports[sector]))
        head = (
            f"POST /v1/{sector.value}/commands/{kind} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {self.tokens[sector]}\r\nContent-Type: application/json\r\n"
        ).encode()
        answer = await connection.post(head, msgspec.json.encode(body))
        pool.append(connection)
        return msgspec.json.decode(answer)  # type: ignore[no-any-return]

    async def close(self) -> None:
        for pool in self.idle.values():
            for connection in pool:
                connection.writer.close()


class Nats(Transport):
    name = "nats"

    def __init__(self, nc: Any) -> None:
        self.nc = nc

    async def send(self, sector: Sector, kind: str, body: dict[str, Any]) -> dict[str, Any]:
        reply = await self.nc.request(subjects.command_subject(sector, kind), msgspec.json.encode(body), timeout=30)
        return msgspec.json.decode(reply.data)  # type: ignore[no-any-return]


async def session(transport: Transport, i: int, rng: random.Random, latencies: list[float], errors: list[str]) -> None:
    referrer = SECTORS[i % 4]
    receiver = SECTORS[(i + 1 + i // 4 % 3) % 4]
    child = "c" + rng.randbytes(8).hex()
    actor = "w" + rng.randbytes(4).hex()
    run = uuid.UUID(int=rng.getrandbits(128)).hex

    async def command(sector: Sector, kind: str, **fields: Any) -> dict[str, Any]:
        body = {"idempotency_key": f"{run}-{kind}", "child": child, "actor": actor, **fields}
        started = time.perf_counter()
        answer = await transport.send(sector, kind, body)
        latencies.append(time.perf_counter() - started)
        if answer.get("status") not in (200, 201):
            errors.append(f"{kind}: {answer.get('code')} {answer.get('rule') or answer.get('detail')}")
        return answer

    await command(referrer, "open-case", household="h" + rng.randbytes(8).hex())
    await command(referrer, "record-vulnerability", dimension="health")
    refer = await command(
        referrer, "refer", to_sector=receiver.value, dimension="health", service=SERVICE_CATALOGUE[receiver][0],
        urgency="routine", legal_basis="child_protection_duty",
    )
    referral = refer.get("referral_id")
    if referral is None:
        return
    await command(receiver, "accept", referral_id=referral)
    await command(receiver, "start", referral_id=referral)
    await command(receiver, "complete", referral_id=referral, outcome="service_delivered")


COMMANDS_PER_SESSION = 6


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def at_rate(
    transport: Transport, rate: int, seconds: float, seed: int, pids: dict[str, list[int]] | None = None
) -> dict[str, Any]:
    pids = pids or {}
    cpu_before = {name: sum(cpu_s(p) for p in group) for name, group in pids.items()}
    client_before = time.process_time()
    rng = random.Random(seed)
    latencies: list[float] = []
    errors: list[str] = []
    sessions = int(rate * seconds / COMMANDS_PER_SESSION)
    tasks: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    for i in range(sessions):
        await asyncio.sleep(max(0.0, start + i * COMMANDS_PER_SESSION / rate - time.perf_counter()))
        task = asyncio.create_task(session(transport, i, rng, latencies, errors))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - start
    done = max(1, len(latencies))
    cpu = {
        name: round((sum(cpu_s(p) for p in group) - cpu_before[name]) * 1000 / done, 2) for name, group in pids.items()
    }
    cpu["client"] = round((time.process_time() - client_before) * 1000 / done, 2)
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(len(latencies) / elapsed, 1),
        "commands": len(latencies),
        "latency_ms": percentiles(latencies),
        "refused": len(errors),
        "refusals_seen": sorted(set(errors))[:3],
        "cpu_ms_per_command": cpu,
        "load_average": round(os.getloadavg()[0], 1),
    }


async def gateway_bench(workdir: Path, seconds: float = 5.0, rates: tuple[int, ...] = RATES) -> dict[str, Any]:
    server = EmbeddedNats(workdir / "nats").start()
    ports = {s: free_port() for s in SECTORS}
    tokens = {s: os.urandom(16).hex() for s in SECTORS}
    processes: list[Any] = []
    results: dict[str, Any] = {
        "fsync": "always" if "sync_interval: always" in UNAUTHENTICATED_CONFIG.read_text() else "server default",
        "workload": "open loop; sessions of 6 commands (open-case, record-vulnerability, refer; accept, start, "
        "complete by the receiver), four sectors at once, each its own service process",
        "cores": os.cpu_count(),
        "load_average_at_start": os.getloadavg()[0],
        "seconds_per_step": seconds,
    }
    try:
        nc = await connect(server.url, "bench-gateway")
        await streams.provision(nc.jetstream())
        processes = start_sectors(server.url, workdir, ports, tokens)
        processes.append(start_pager(server.url))  # the sectors read children through its read service
        deadline = time.monotonic() + 60
        while not all(port_open(p) for p in ports.values()):
            if time.monotonic() > deadline:
                closed = [s.value for s in SECTORS if not port_open(ports[s])]
                why = {name: (workdir / f"{name}.log").read_text()[-300:] for name in closed}
                raise RuntimeError(f"the sector services did not open their gateways: {why}")
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)
        http = Http(ports, tokens)
        for transport in (http, Nats(nc)):
            await at_rate(transport, 50, 2.0, seed=99)  # warm-up (connections, first reads), not counted
            await asyncio.sleep(1.0)
            steps = []
            for n, rate in enumerate(rates):
                pids = {"services": [p.pid for p in processes], "nats-server": [server.process.pid]}
                step = await at_rate(transport, rate, seconds, seed=1000 * n + len(transport.name), pids=pids)
                steps.append(step)
                print(f"gateway {transport.name}: {json.dumps(step)}", file=sys.stderr, flush=True)
                if step["latency_ms"]["p99"] > TARGET_P99_MS or step["achieved_per_s"] < 0.95 * rate:
                    break
                await asyncio.sleep(1.0)
            kept = [
                s for s in steps
                if s["latency_ms"]["p99"] < TARGET_P99_MS and s["achieved_per_s"] >= 0.95 * s["offered_per_s"]
            ]
            results[transport.name] = {
                "steps": steps,
                "sustained_per_s_p99_under_50ms": kept[-1]["offered_per_s"] if kept else 0,
            }
        await http.close()
        await nc.close()
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        server.stop()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per offered rate")
    parser.add_argument("--rates", type=lambda t: tuple(int(x) for x in t.split(",")), default=RATES)
    parser.add_argument("--out", type=Path, help="also write the results here (JSON)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="refbus-bench-gateway-") as tmp:
        results = asyncio.run(gateway_bench(Path(tmp), args.seconds, args.rates))
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
