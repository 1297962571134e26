"""Settings from the environment, with command-line flags taking precedence (see refbus.cli)."""

import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from refbus.services.audit.keys import Keyring

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None
    "An existing server (comma-separated for a cluster); None starts the embedded one."
    data_dir: Path = Path(".refbus")
    replicas: int = 1
    "Stream replicas: 1 on the embedded single node, 3 on a cluster."
    sim_speed: float = 1.0
    "Divides the simulated sectors' delays: 10 runs the simulation ten times faster."
    ack_wait: float = 30.0
    "Seconds before JetStream redelivers a message whose handler neither acked nor nacked (a crash)."
    health_port: int | None = None
    "Serve GET /healthz on this port (for probes); None serves nothing."
    health_host: str = "127.0.0.1"
    "0.0.0.0 in a container, so the orchestrator's probe can reach it."
    page_after_s: float = 5.0
    "The history pager: how long a child's new events may wait before they are paged."
    event_id_key_hex: str | None = None
    "Keys the services' derived event ids (REFBUS_EVENT_ID_KEY); unset: kept in the data dir."
    seal_interval_s: float = 60.0
    "How often the bus seals the log (services/audit/seal.py)."

    def keyring(self) -> "Keyring":
        """The sectors' and the bus's signing keys, in <data_dir>/secrets/keys/ (made on first use,
        readable by their owner only; `refbus keys` makes, rotates and revokes them)."""
        from refbus.services.audit import keys

        return keys.ensure(self.data_dir)

    def event_id_key(self) -> bytes:
        """The deployment's event-id key: from the environment, else the data dir's (made on first
        use, readable by its owner only). Every instance of the services must share it."""
        if self.event_id_key_hex:
            return bytes.fromhex(self.event_id_key_hex)
        path = self.data_dir / "secrets" / "event-id.key"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(32))
        return bytes.fromhex(path.read_text().strip())

    @classmethod
    def from_env(cls, **overrides: object) -> "Settings":
        env = os.environ
        values: dict[str, object] = {
            "nats_url": env.get("REFBUS_NATS_URL") or None,
            "data_dir": Path(env.get("REFBUS_DATA_DIR", ".refbus")),
            "replicas": int(env.get("REFBUS_REPLICAS", "1")),
            "sim_speed": float(env.get("REFBUS_SIM_SPEED", "1")),
            "ack_wait": float(env.get("REFBUS_ACK_WAIT", "30")),
            "health_port": int(env["REFBUS_HEALTH_PORT"]) if env.get("REFBUS_HEALTH_PORT") else None,
            "health_host": env.get("REFBUS_HEALTH_HOST", "127.0.0.1"),
            "page_after_s": float(env.get("REFBUS_PAGE_AFTER_S", "5")),
            "event_id_key_hex": env.get("REFBUS_EVENT_ID_KEY") or None,
            "seal_interval_s": float(env.get("REFBUS_SEAL_INTERVAL_S", "60")),
        }
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
