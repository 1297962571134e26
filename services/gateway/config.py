"""A sector gateway's configuration, from the environment (beside the service's Settings):

- REFBUS_GATEWAY_PORT: serve HTTP; sector i of (social, health, education, justice) on this port + i.
  REFBUS_GATEWAY_PORT_<SECTOR> sets one sector's port. Unset: no HTTP. REFBUS_GATEWAY_HOST: 127.0.0.1.
- REFBUS_WEBHOOK_<SECTOR>=URL: deliver what is addressed to the sector to its system at URL.
- REFBUS_EXTERNAL_<SECTOR>=1: the sector's decisions come from its system (ExternalSector policy), not
  the simulation. A webhook URL alone does not make a sector external.
- REFBUS_GATEWAY_NATS=0: do not answer commands over NATS request/reply (default: answer).
- tokens and webhook secrets: credentials.py.
"""

import os
from dataclasses import dataclass, field
from pathlib import Path

from refbus.contracts.vocabulary import Sector
from refbus.services.gateway import credentials

SECTOR_ORDER = tuple(Sector)


@dataclass(frozen=True)
class GatewayConfig:
    http_port: int | None = None
    http_host: str = "127.0.0.1"
    webhook_url: str | None = None
    webhook_secret: str = ""
    external: bool = False
    nats_commands: bool = True
    tokens: dict[Sector, str] = field(default_factory=dict)
    "Every sector's token known here (its own at least): another sector's is told apart (403 not 401)."
    retry_max_s: float = 30.0
    "The longest pause between two attempts of one webhook delivery."
    webhook_timeout_s: float = 10.0

    @classmethod
    def from_env(cls, sector: Sector, data_dir: Path, **overrides: object) -> "GatewayConfig":
        env = os.environ
        name = sector.value.upper()
        port: int | None = None
        if env.get(f"REFBUS_GATEWAY_PORT_{name}"):
            port = int(env[f"REFBUS_GATEWAY_PORT_{name}"])
        elif env.get("REFBUS_GATEWAY_PORT"):
            port = int(env["REFBUS_GATEWAY_PORT"]) + SECTOR_ORDER.index(sector)
        url = env.get(f"REFBUS_WEBHOOK_{name}") or None
        values: dict[str, object] = {
            "http_port": port,
            "http_host": env.get("REFBUS_GATEWAY_HOST", "127.0.0.1"),
            "webhook_url": url,
            "external": env.get(f"REFBUS_EXTERNAL_{name}", "") not in ("", "0"),
            "nats_commands": env.get("REFBUS_GATEWAY_NATS", "1") != "0",
            "retry_max_s": float(env.get("REFBUS_WEBHOOK_RETRY_MAX_S", "30")),
        }
        values.update(overrides)
        if port is not None and "tokens" not in overrides:
            values["tokens"] = {s: credentials.gateway_token(data_dir, s) for s in Sector}
        if values.get("webhook_url") and not values.get("webhook_secret"):
            values["webhook_secret"] = credentials.webhook_secret(data_dir, sector)
        return cls(**values)  # type: ignore[arg-type]
