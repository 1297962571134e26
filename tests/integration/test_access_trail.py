"""Who looked: a person's read of a child's timeline or export is recorded (signed, chained) before
anything is shown, a read without a purpose is refused, `refbus access` lists the reads, and
`refbus verify` covers the trail."""

import asyncio
import json
import subprocess
import sys
from pathlib import Path

import pytest
from fhirclient.models.bundle import Bundle

from refbus.contracts import subjects
from refbus.services.eventstore import streams
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats
from tests.factories import new_child

pytestmark = pytest.mark.integration


async def _provisioned(url: str) -> None:
    nc = await connect(url, "provision")
    await streams.provision(nc.jetstream())
    await nc.drain()


def test_reads_are_recorded_refused_without_purpose_and_verified(tmp_path: Path, own_server: EmbeddedNats) -> None:
    base = [sys.executable, "-m", "refbus.cli", "--nats-url", own_server.url, "--data-dir", str(tmp_path / "d")]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *args], capture_output=True, text=True, timeout=120,
                              env={"PATH": "/usr/bin:/bin", "REFBUS_USER": "w1234abcd"})

    asyncio.run(_provisioned(own_server.url))  # on a bus given by URL only an admin's command provisions
    child = new_child()
    assert run("refer", "--child", child, "--from", "social", "--to", "health", "--service", "vaccination",
               "--dimension", "health").returncode == 0
    page = tmp_path / "t.html"
    refused = run("timeline", child, "--html", str(page))
    assert refused.returncode == 2 and "purpose is required" in refused.stderr and not page.exists()
    shown = run("timeline", child, "--html", str(page), "--purpose", "audit")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "VERIFIED" in page.read_text()
    export = run("export", child, "--fhir", "--purpose", "case_work", "--role", "caseworker")
    assert export.returncode == 0, export.stderr
    Bundle(json.loads(export.stdout), strict=True)
    trail = json.loads(run("access", child, "--json").stdout)
    assert [(r["who"], r["role"], r["purpose"], r["what"]) for r in trail] == [
        ("w1234abcd", "auditor", "audit", "timeline"), ("w1234abcd", "caseworker", "case_work", "export")]
    assert run("seal").returncode == 0
    assert run("verify").returncode == 0

    async def forge() -> None:
        nc = await connect(own_server.url)
        await nc.jetstream().publish(subjects.access_subject(child), b'{"who":"nobody"}')
        await nc.close()

    asyncio.run(forge())
    checked = run("verify")
    assert checked.returncode == 1 and "access trail" in checked.stdout and "unsigned" in checked.stdout, checked.stdout
