"""Running `refbus` as a person does, for the CLI tests: a subprocess against a real server in a
temporary data dir, its exit status, its lines, no traceback, no hang past its bound."""

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from refbus.services.runtime.embedded import free_port

REFBUS = str(Path(sys.executable).parent / "refbus")
BOUND = 30.0
"No command may take longer than this (the connect bound is 5 s; a few are given 1 s)."


def _env(data_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")}
    env.update(REFBUS_DATA_DIR=str(data_dir), REFBUS_PORT=str(free_port()), REFBUS_MONITOR_PORT=str(free_port()),
               REFBUS_PURPOSE="audit")  # every history read is recorded, with its purpose
    env.update(extra)
    return env


def _clean(text: str) -> None:
    assert "Traceback" not in text, text


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def last_err_line(self) -> str:
        lines = [line for line in self.err.splitlines() if line.strip()]
        return lines[-1] if lines else ""


def refbus(*args: str, env: dict[str, str], timeout: float = BOUND, cwd: Path | None = None) -> Run:
    done = subprocess.run([REFBUS, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    _clean(done.stdout + done.stderr)
    return Run(done.returncode, done.stdout, done.stderr)


ANNOUNCEMENTS = ("using ", "started the embedded server")
"The line every command prints on stderr to say which server answered."


def failure(run: Run, code: int, *words: str) -> None:
    """A failure is the expected exit status and one line on stderr that says what is wrong."""
    errors = [line for line in run.err.splitlines() if line.strip() and not line.startswith(ANNOUNCEMENTS)]
    assert run.code == code, (run.code, run.out, run.err)
    assert len(errors) == 1, run.err
    for word in words:
        assert word.lower() in errors[0].lower(), (word, errors[0])


class Background:
    """A long-running refbus (up, demo, service): its output read as it comes."""

    def __init__(self, *args: str, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [REFBUS, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, into in ((self.process.stdout, self.out), (self.process.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

    @staticmethod
    def _read(stream: object, into: list[str]) -> None:
        for line in stream:  # type: ignore[attr-defined]
            into.append(line)

    def wait_for(self, text: str, timeout: float = BOUND) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in line for line in self.out + self.err):
                return
            if self.process.poll() is not None:
                time.sleep(0.2)
                break
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not seen; out={''.join(self.out)} err={''.join(self.err)}")

    def interrupt(self, timeout: float = BOUND) -> int:
        """Ctrl-C: SIGINT to refbus alone (the terminal would signal the whole group; refbus's
        server runs in its own session, so this is the same for it)."""
        self.process.send_signal(signal.SIGINT)
        code = self.process.wait(timeout)
        time.sleep(0.1)
        _clean("".join(self.out + self.err))
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Up:
    data_dir: Path
    env: dict[str, str]
    process: Background
