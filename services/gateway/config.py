"""A sector gateway's configuration, from the environment (beside the service's Settings):

- REFBUS_GATEWAY_PORT: serve HTTP; sector i of (social, health, education, justice) on this port + i.
  REFBUS_GATEWAY_PORT_<SECTOR> sets one sector's port. Unset: no HTTP. REFBUS_GATEWAY_HOST: 127.0.0.1.
- REFBUS_WEBHOOK_<SECTOR>=URL: deliver what is addressed to the sector to its system at URL, until its
  system registers a URL of its own over the gateway (PUT /v1/<sector>/webhook; registration.py).
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
    webhook_secret_file: Path | None = None
    "Where the secret is kept, when the data dir keeps it: only such a secret can be rotated over HTTP."
    registration_poll_s: float = 2.0
    "How often the gateway reads its sector's registration in the bus (another replica may change it)."
    stream_heartbeat_s: float = 15.0
    "How often an idle event stream (server-sent events) sends a comment, so that proxies keep it open."

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
            values["tokens"] = _known_tokens(sector, data_dir)
        # Made on first start whenever the system can reach the gateway, to be answered to its registration.
        if (values.get("webhook_url") or values.get("http_port") is not None) and not values.get("webhook_secret"):
            values["webhook_secret"] = credentials.webhook_secret(data_dir, sector)
            values["webhook_secret_file"] = credentials.webhook_secret_file(data_dir, sector)
        return cls(**values)  # type: ignore[arg-type]


def _known_tokens(sector: Sector, data_dir: Path) -> dict[Sector, str]:
    """The sector's own token, and the others' where this process can have them: a deployed service
    gets its own from the environment and may have no writable data dir to make the others in (then
    another sector's token is 401 there, not 403; it is refused either way)."""
    tokens = {sector: credentials.gateway_token(data_dir, sector)}
    for other in Sector:
        if other != sector:
            try:
                tokens[other] = credentials.gateway_token(data_dir, other)
            except OSError:
                continue
    return tokens
