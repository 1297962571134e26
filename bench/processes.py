"""The bench's processes: the server with its collections traced, the services, the pager and the
deadline service as subprocesses (as deployed), their CPU and memory; and the percentiles every
measurement reports. Split from bench/run.py."""

import asyncio
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from webhook_sink import WebhookSink  # bench/webhook_sink.py

from refbus.contracts.vocabulary import Sector
from refbus.services.runtime import identities
from refbus.services.runtime.embedded import DEFAULT_CONFIG, UNAUTHENTICATED_CONFIG, EmbeddedNats, free_port
from refbus.services.runtime.tls import CA_CERT, ServerTls, client_context, make_certs

SIM_SPEED = 1000  # the simulated sectors decide in about a millisecond: we time the bus, not the humans


def ms(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)

    return {"p50": at(0.50), "p99": at(0.99), "p99.9": at(0.999), "n": len(ordered)}



class Secured:
    """Authentication and TLS as a deployment runs them: the server with the permissions and every
    identity's nkey (deploy/nats-server.conf), TLS from a local CA (`refbus certs`); each client and
    service connects over TLS as its own identity (decisions 0020, 0025)."""

    def __init__(self, secrets: Path) -> None:
        self.secrets = secrets
        make_certs(secrets / "tls")
        self.public_keys = identities.ensure(secrets / "nats")

    def server(
        self, data_dir: Path, extra_args: tuple[str, ...] = (), env: dict[str, str] | None = None
    ) -> EmbeddedNats:
        return EmbeddedNats(
            data_dir, config=DEFAULT_CONFIG, env={**identities.server_env(self.public_keys), **(env or {})},
            tls=ServerTls.in_folder(self.secrets / "tls"), extra_args=extra_args,
        )

    def connect_options(self, identity: str = "admin") -> dict[str, object]:
        """`refbus.services.runtime.bus.connect`'s keywords for `identity`."""
        seed = identities.seed_path(self.secrets / "nats", identity)
        tls = client_context(self.secrets / "tls" / CA_CERT)
        return {"credentials": identities.Credentials(identity, seed), "tls": tls}

    def env(self) -> dict[str, str]:
        """A service process's environment: it finds its own seed and the CA there."""
        return {"REFBUS_SECRETS_DIR": str(self.secrets), "REFBUS_TLS_CA": str(self.secrets / "tls" / CA_CERT)}


def service_env(url: str, secured: Secured | None, **values: str) -> dict[str, str]:
    return {**os.environ, "REFBUS_NATS_URL": url, "REFBUS_LOG_LEVEL": "WARNING", **(secured.env() if secured else {}),
            **values}


def start_pager(url: str, secured: Secured | None = None) -> subprocess.Popen[bytes]:
    """The history pager as in production: its own process, at lower CPU priority (`refbus service pager`)."""
    env = service_env(url, secured)
    return subprocess.Popen(
        [sys.executable, "-m", "refbus.cli", "service", "pager"], env=env, stdout=subprocess.DEVNULL
    )


def start_deadlines(url: str, secured: Secured | None = None) -> subprocess.Popen[bytes]:
    """The deadline service as in production: its own process (`refbus service deadlines`)."""
    env = service_env(url, secured)
    return subprocess.Popen(
        [sys.executable, "-m", "refbus.cli", "service", "deadlines"], env=env, stdout=subprocess.DEVNULL
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


GC_CYCLE = re.compile(r"^gc \d+ @(?P<at>[\d.]+)s [^:]*: [\d.]+\+(?P<mark>[\d.]+)\+[\d.]+ ms clock")


class ServerGC:
    """The server's garbage collector, traced and forced. Traced: GODEBUG=gctrace=1 makes the
    server write a line per collection to its log, so a result can say whether one overlapped a
    timed pass. Forced: through the server's profiling port (on 127.0.0.1), so that a pass does
    not start with the garbage of the bulk load before it. On 2 cores, the mark phase of the
    server's ~600 MB heap at 1M events (250-450 ms) takes CPU from everything else: first reads
    at 1M that it overlapped had p99 11-25 ms, against 3-5 ms in most runs it did not."""

    def __init__(self, data_dir: Path, profile_port: int) -> None:
        self.log = data_dir / "nats-server.log"
        self.offset = self.log.stat().st_size if self.log.exists() else 0
        self.profile_port = profile_port
        self.started = time.perf_counter()

    @classmethod
    def server(cls, data_dir: Path, secured: Secured | None = None) -> tuple[EmbeddedNats, "ServerGC"]:
        """A server started with its collections traced (its start time taken just before); with
        authentication and TLS when `secured`."""
        port = free_port()
        profile, trace = ("--profile", str(port)), {"GODEBUG": "gctrace=1"}
        server = (secured.server(data_dir, profile, trace) if secured
                  else EmbeddedNats(data_dir, config=UNAUTHENTICATED_CONFIG, extra_args=profile, env=trace))
        traced = cls(data_dir, port)
        return server.start(), traced

    def collect(self) -> None:
        """A full collection, now (the heap profile with gc=1 runs one before it answers)."""
        url = f"http://127.0.0.1:{self.profile_port}/debug/pprof/heap?gc=1"
        with urllib.request.urlopen(url, timeout=60) as reply:
            reply.read()

    def marks_ms(self, start: float, end: float) -> list[float]:
        """The mark phase, in ms, of each collection that overlapped [start, end] (perf_counter)."""
        with self.log.open("rb") as log_file:
            log_file.seek(self.offset)
            lines = log_file.read().decode(errors="replace").splitlines()
        marks = []
        for line in lines:
            if (cycle := GC_CYCLE.match(line)) is not None:
                began, mark_ms = self.started + float(cycle["at"]), float(cycle["mark"])
                if began < end and began + mark_ms / 1000 > start:
                    marks.append(mark_ms)
        return marks


async def server_settled(server: EmbeddedNats, server_gc: ServerGC, most_s: float = 5.0) -> float:
    """Seconds until the server has collected its garbage and then used under a tenth of a core
    for a quarter second (at most `most_s` for the second). Timed passes start on a settled
    server: the server's own work after a bulk load or the pager's stop (up to two cores for a
    quarter second, measured), and the collection that load has made due, would otherwise be timed
    as the pass's. Waiting only makes first reads colder: the server drops a block it has not
    touched for 10 s."""
    assert server.process is not None
    start = time.perf_counter()
    await asyncio.to_thread(server_gc.collect)
    waited_from = time.perf_counter()
    while time.perf_counter() - waited_from < most_s:
        before = cpu_seconds(server.process.pid)
        await asyncio.sleep(0.25)
        if cpu_seconds(server.process.pid) - before < 0.025:
            break
    return round(time.perf_counter() - start, 2)


def stop_all(processes: list[subprocess.Popen[bytes]], wait: float = 10.0) -> None:
    """SIGTERM to each, and `wait` seconds for all to exit. One still running then is killed and
    named in the error raised once all are gone: a hang at shutdown is a defect to see, and it
    must not leave the server and the other services running."""
    for process in processes:
        process.terminate()
    deadline = time.monotonic() + wait
    hung = []
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            hung.append(" ".join(map(str, process.args)))  # type: ignore[arg-type]
    if hung:
        raise RuntimeError(f"still running {wait} s after SIGTERM, killed: {hung}")


class PagerProcess:
    """The pager across the log measurements: stopped while appends are measured (like the sector
    services it is a consumer, and the raw side has none), restarted after (it resumes from its
    checkpoint), and stopped for good once it has paged the million events; its CPU time and peak
    memory over its lives."""

    def __init__(self, url: str, secured: Secured | None = None) -> None:
        self.url = url
        self.secured = secured
        self.process: subprocess.Popen[bytes] | None = None
        self.cpu_s = 0.0
        self.peak_rss_mb = 0.0

    def start(self) -> None:
        self.process = start_pager(self.url, self.secured)

    def stop(self) -> None:
        if self.process is None:
            return
        self.cpu_s += cpu_seconds(self.process.pid)
        self.peak_rss_mb = max(self.peak_rss_mb, peak_rss_mb(self.process.pid))
        process, self.process = self.process, None
        stop_all([process], wait=60)  # it pages what it holds and checkpoints on the way out


def start_services(
    url: str, webhooks: WebhookSink | None = None, secured: Secured | None = None
) -> dict[Sector, subprocess.Popen[bytes]]:
    env = service_env(url, secured, REFBUS_SIM_SPEED=str(SIM_SPEED))
    if webhooks is not None:  # each sector's system takes its deliveries by webhook
        env.update({f"REFBUS_WEBHOOK_{s.value.upper()}": webhooks.url(s.value) for s in Sector})
    return {
        s: subprocess.Popen(
            [sys.executable, "-m", "refbus.cli", "service", s.value],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for s in Sector
    }


