"""`refbus up --external health=URL`: health runs as an external system (its Node system here), the
others simulated; the tokens and the webhook secret are generated into the data dir on first start."""

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest

from refbus.contracts.vocabulary import Sector
from refbus.services.eventstore import streams
from refbus.services.runtime.bus import connect
from refbus.services.runtime.embedded import EmbeddedNats, port_open
from tests.factories import new_child, new_worker
from tests.gateway.systems import NodeSystem, needs_node, ports
from tests.services import wait_for

pytestmark = [pytest.mark.integration, needs_node]


async def test_refbus_up_runs_health_as_external(own_server: EmbeddedNats, tmp_path: Path) -> None:
    nc = await connect(own_server.url, "provision")
    await streams.provision(nc.jetstream())
    await nc.drain()
    base, hook = ports(2)
    data = tmp_path / "data"
    system = NodeSystem(Sector.HEALTH, hook, tmp_path / "health.jsonl", f"http://127.0.0.1:{base + 1}", act=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REFBUS_")}
    env["REFBUS_SIM_SPEED"] = "50"
    up = subprocess.Popen(  # noqa: ASYNC220  (the CLI as a user runs it; waited on below, briefly)
        [str(Path(sys.executable).parent / "refbus"), "up", "--nats-url", own_server.url, "--data-dir", str(data),
         "--external", f"health={system.url}", "--gateway-port", str(base)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        await wait_for(lambda: port_open(base) and port_open(base + 1), within=60)
        secrets_dir = data / "secrets"
        tokens = {s: (secrets_dir / f"gateway-{s.value}.token").read_text().strip() for s in Sector}
        assert (secrets_dir / "gateway-health.token").stat().st_mode & 0o077 == 0, "owner only"
        system.token = tokens[Sector.HEALTH]
        system.secret = (secrets_dir / "webhook-health.secret").read_text().strip()
        system.start()
        body = {
            "idempotency_key": str(uuid.uuid4()), "child": new_child(), "actor": new_worker(), "to_sector": "health",
            "dimension": "health", "service": "vaccination", "urgency": "routine",
            "legal_basis": "child_protection_duty",
        }
        async with httpx.AsyncClient(timeout=10) as client:
            answer = await client.post(f"http://127.0.0.1:{base}/v1/social/commands/refer", json=body,
                                       headers={"Authorization": f"Bearer {tokens[Sector.SOCIAL]}"})
        assert answer.status_code == 201, answer.text
        # Health's steps are its system's, not a simulation's: accepted, started, completed by Node.
        await wait_for(lambda: [a["command"] for a in system.answers() if a["status"] == 201]
                       == ["accept", "start", "complete"], within=30)
        await asyncio.sleep(0.5)
        assert all(w["valid"] for w in system.webhooks())
    finally:
        system.stop()
        up.send_signal(signal.SIGINT)
        output = up.communicate(timeout=30)[0].decode()
    for secret in tokens.values():
        assert secret not in output, "no secret is logged"
