"""Helpers for the gateway's end-to-end tests: a sector system in Node, sector services with their
gateways on a real server."""

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import litestar
import pytest
import uvicorn
from faststream import FastStream

from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import credentials
from refbus.services.gateway.config import GatewayConfig
from refbus.services.rules.policy import SectorPolicy
from refbus.services.runtime.embedded import free_port, port_open
from refbus.services.runtime.settings import Settings
from refbus.services.sector.app import sector_app
from tests.services import TEST_EVENT_ID_KEY, started, wait_for

NODE_SYSTEM = Path(__file__).with_name("sector_system.js")
TOKENS = {s: f"test-token-{s.value}-{os.urandom(8).hex()}" for s in Sector}
SECRETS = {s: "whsec_" + __import__("base64").b64encode(os.urandom(32)).decode() for s in Sector}

needs_node = pytest.mark.skipif(shutil.which("node") is None, reason="needs node")


@dataclass
class NodeSystem:
    sector: Sector
    port: int
    log: Path
    gateway: str
    act: bool = False
    delay_ms: int = 0
    process: subprocess.Popen[bytes] | None = None
    token: str | None = None
    secret: str | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhook"

    def start(self) -> "NodeSystem":
        env = {
            **os.environ,
            "WEBHOOK_SECRET": self.secret or SECRETS[self.sector],
            "GATEWAY": self.gateway,
            "TOKEN": self.token or TOKENS[self.sector],
            "SECTOR": self.sector.value,
            "ACT": "1" if self.act else "0",
            "DELAY_MS": str(self.delay_ms),
        }
        self.process = subprocess.Popen(["node", str(NODE_SYSTEM), str(self.port), str(self.log)], env=env)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError("the node sector system did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(5)
            self.process = None

    def lines(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def webhooks(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["kind"] == "webhook"]

    def answers(self) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line["kind"] == "answer"]


def gateway_config(port: int, webhook: str | None, sector: Sector, external: bool = False) -> GatewayConfig:
    return GatewayConfig(
        http_port=port,
        webhook_url=webhook,
        webhook_secret=SECRETS[sector],
        external=external,
        tokens=dict(TOKENS),
        retry_max_s=0.5,
        webhook_timeout_s=2.0,
    )


@asynccontextmanager
async def gateways(
    url: str, policies: Mapping[Sector, SectorPolicy], configs: Mapping[Sector, GatewayConfig], tmp: Path
) -> AsyncIterator[dict[Sector, FastStream]]:
    settings = Settings(nats_url=url, event_id_key_hex=TEST_EVENT_ID_KEY.hex(), data_dir=tmp, ack_wait=5.0)
    async with started({s: sector_app(s, p, settings, gateway=configs[s]) for s, p in policies.items()}, settings) \
            as apps:
        yield apps


def ports(n: int) -> list[int]:
    found: set[int] = set()
    while len(found) < n:
        found.add(free_port())
    return sorted(found)


async def post(base: str, sector: Sector, kind: str, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        headers = {"Authorization": f"Bearer {TOKENS[sector]}"}
        return await client.post(f"{base}/v1/{sector.value}/commands/{kind}", json=body, headers=headers)


@dataclasses.dataclass
class WebhookReceiver:
    """A sector system's webhook endpoint (a real HTTP server): each delivery's id, sequence and
    body, and whether its signature held under `secret` (the one current when it came)."""

    port: int
    secret: str = ""
    received: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def ids(self) -> list[str]:
        return list(dict.fromkeys(r["id"] for r in self.received))

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator["WebhookReceiver"]:
        @litestar.post("/hook", status_code=204)
        async def hook(request: litestar.Request[Any, Any, Any]) -> None:
            body, headers = await request.body(), request.headers
            valid = credentials.verify(
                self.secret, headers["webhook-id"], int(headers["webhook-timestamp"]), body,
                headers["webhook-signature"],
            )
            self.received.append({"id": headers["webhook-id"], "seq": int(headers["refbus-seq"]),
                                  "body": json.loads(body), "valid": valid})

        server = uvicorn.Server(uvicorn.Config(litestar.Litestar([hook]), host="127.0.0.1", port=self.port,
                                               log_level="error", lifespan="off"))
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        task = asyncio.create_task(server.serve())
        await wait_for(lambda: server.started, within=10)
        try:
            yield self
        finally:
            server.should_exit = True
            await task
