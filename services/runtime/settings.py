"""Settings from the environment, with command-line flags taking precedence (see refbus.cli).

Every REFBUS_* value is checked here: a value of the wrong kind raises `SettingsError` with one line
naming the variable, what it must be and what it got (never a traceback at a user).
"""

import logging
import os
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from refbus.services.runtime.secret_files import write_once

if TYPE_CHECKING:
    from refbus.services.audit.keys import Keyring
    from refbus.services.runtime.identities import Credentials
    from refbus.services.runtime.tls import ServerTls

DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_PORT = 4222
"The embedded server's client port when it is free (deploy/nats-server.conf); else a free one."
DEFAULT_MONITOR_PORT = 8222
"Its monitoring port when free (deploy/nats-server.conf); else a free one. Both are recorded in server.json."
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")

T = TypeVar("T")


class SettingsError(ValueError):
    """A setting (flag or environment variable) the user gave is not usable; the message says why."""


@dataclass(frozen=True)
class Settings:
    nats_url: str | None = None
    "An existing server (comma-separated for a cluster); None: the embedded server of the data dir."
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
    child_ref_key_hex: str | None = None
    "Keys the child references derived from national identifiers (REFBUS_CHILD_REF_KEY); unset: kept in the data dir."
    connect_timeout: float = 5.0
    "Seconds a command waits for its first connection to the server before it gives up (REFBUS_CONNECT_TIMEOUT)."
    port: int | None = None
    "The embedded server's client port (REFBUS_PORT); None: 4222 when free, else any free port."
    monitor_port: int | None = None
    "The embedded server's monitoring port (REFBUS_MONITOR_PORT); None: 8222 when free, else any free port."
    sim_max_age_days: float | None = None
    "The simulated sectors leave referrals requested longer ago than this before their start to an operator"
    " (REFBUS_SIM_MAX_AGE_DAYS, default 7 from the environment); None: they work every referral."
    log_level: str | None = None
    "REFBUS_LOG_LEVEL; None: INFO (to a file under the data dir for `up` and `demo`)."
    seal_interval_s: float = 60.0
    "How often the bus seals the log (services/audit/seal.py)."
    secrets_dir: Path | None = None
    "Where the signing keys (keys/) and the event-id key are (REFBUS_SECRETS_DIR); None: <data_dir>/secrets."
    keys_provisioned: bool = False
    "REFBUS_KEYS_PROVISIONED=1: a deployment provisioned the keys (`refbus keys --out`); none is ever"
    " made here, and a service whose own key is missing refuses to start (docs/decisions/0015-key-provisioning.md)."
    nats_seed_file: Path | None = None
    "REFBUS_NATS_NKEY_SEED_FILE: the seed this process connects with, whatever its identity (a deployment's"
    " container runs one); None: <secrets>/nats/<identity>.nk when it exists (services/runtime/identities.py)."
    tls_ca: Path | None = None
    "REFBUS_TLS_CA: the CA certificate clients trust, and then connect over TLS only; None: <secrets>/tls/ca.pem"
    " when it exists, else plain (docs/decisions/0025-tls.md)."

    @property
    def secrets(self) -> Path:
        return self.secrets_dir or self.data_dir / "secrets"

    def nats_credentials(self, identity: str) -> "Credentials":
        """How `identity` connects: REFBUS_NATS_NKEY_SEED_FILE, else its seed in <secrets>/nats/, else
        no credentials (a server without authentication, or a user:password URL)."""
        from refbus.services.runtime.identities import Credentials, seed_path

        if self.nats_seed_file is not None:
            if not self.nats_seed_file.is_file():
                raise SettingsError(f"REFBUS_NATS_NKEY_SEED_FILE names {self.nats_seed_file}, which is not a file")
            return Credentials(identity, self.nats_seed_file)
        kept = seed_path(self.secrets / "nats", identity)
        return Credentials(identity, kept if kept.is_file() else None)

    def tls_context(self) -> ssl.SSLContext | None:
        """The TLS context clients connect with (trusting REFBUS_TLS_CA, else <secrets>/tls/ca.pem), or
        None: no CA configured, plain connections. SettingsError names a CA file that is not one."""
        from refbus.services.runtime.tls import CA_CERT, CertError, client_context

        ca_file = self.tls_ca
        if ca_file is None:
            kept = self.secrets / "tls" / CA_CERT
            if not kept.is_file():
                return None
            ca_file = kept
        elif not ca_file.is_file():
            raise SettingsError(f"REFBUS_TLS_CA names {ca_file}, which is not a file")
        try:
            return client_context(ca_file)
        except CertError as exc:
            raise SettingsError(str(exc)) from None

    def embedded_tls(self) -> "ServerTls | None":
        """The embedded server's TLS files, <secrets>/tls/ as `refbus certs` writes them; None: none there,
        the embedded server is plain (loopback; nkeys authenticate every client either way)."""
        from refbus.services.runtime.tls import ServerTls

        return ServerTls.in_folder(self.secrets / "tls")

    def keyring(self) -> "Keyring":
        """The signing keys in <secrets>/keys/ (<data_dir>/secrets unless REFBUS_SECRETS_DIR): made on
        first use, readable by their owner only, unless the deployment provisioned them."""
        from refbus.services.audit import keys

        folder = self.secrets / "keys"
        return keys.load_dir(folder) if self.keys_provisioned else keys.ensure_dir(folder)

    def service_keyring(self, service: str) -> "Keyring":
        """The keys `service` signs with (keys.SERVICE_OWNERS); SettingsError, in one line, if the
        deployment provisioned keys and this service's own are not there."""
        from refbus.services.audit import keys

        ring = self.keyring()
        missing = [owner for owner in keys.SERVICE_OWNERS[service] if ring.current(owner) is None]
        if missing:
            raise SettingsError(
                f"REFBUS_KEYS_PROVISIONED is set but {self.secrets / 'keys'} holds no key of {', '.join(missing)}: "
                f"mount {service}'s provisioned keys there (refbus keys --out), never a new one"
            )
        return ring

    def event_id_key(self) -> bytes:
        """The deployment's event-id key: from the environment, else <secrets>/event-id.key (made on
        first use, readable by its owner only, unless provisioned). Every instance of the services
        must share it."""
        if self.event_id_key_hex:
            return bytes.fromhex(self.event_id_key_hex)
        return _kept_key(self._provisioned_or_made(self.secrets / "event-id.key", "REFBUS_EVENT_ID_KEY"))

    def child_ref_key(self) -> bytes:
        """The deployment's child-reference key (services/rules/child_refs.py): from the environment,
        else <secrets>/child-ref.key (made on first use, owner-only, unless provisioned). Every sector
        must hold the same one, or the same child gets different references; never logged nor printed."""
        if self.child_ref_key_hex:
            return bytes.fromhex(self.child_ref_key_hex)
        return _kept_key(self._provisioned_or_made(self.secrets / "child-ref.key", "REFBUS_CHILD_REF_KEY"))

    def _provisioned_or_made(self, path: Path, variable: str) -> Path:
        """`path`, refusing in one line to make it when the deployment says keys are provisioned."""
        if self.keys_provisioned and not path.exists():
            raise SettingsError(
                f"REFBUS_KEYS_PROVISIONED is set but there is no {path} nor {variable}: mount the "
                "deployment's key (refbus keys --out), never a new one"
            )
        return path

    def sim_works_since(self) -> datetime | None:
        """When the simulated sectors' interest starts: referrals requested before it (a registry's
        past open ones) are left to an operator. None: they work every referral."""
        if self.sim_max_age_days is None:
            return None
        return datetime.now(UTC) - timedelta(days=self.sim_max_age_days)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> "Settings":
        """Settings from `env` (default: os.environ), then `overrides` that are not None.
        Raises SettingsError naming the first variable whose value is not usable."""
        env = os.environ if env is None else env
        values: dict[str, object] = {
            "nats_url": env.get("REFBUS_NATS_URL") or None,
            "data_dir": Path(env.get("REFBUS_DATA_DIR") or ".refbus"),
            "replicas": _parse(env, "REFBUS_REPLICAS", int, "a whole number (1 or 3)", 1, minimum=1),
            "sim_speed": _parse(env, "REFBUS_SIM_SPEED", float, "a number (e.g. 4)", 1.0, positive=True),
            "ack_wait": _parse(env, "REFBUS_ACK_WAIT", float, "a number of seconds", 30.0, positive=True),
            "health_port": _parse(env, "REFBUS_HEALTH_PORT", int, "a port number", None, minimum=1, maximum=65535),
            "health_host": env.get("REFBUS_HEALTH_HOST") or "127.0.0.1",
            "page_after_s": _parse(env, "REFBUS_PAGE_AFTER_S", float, "a number of seconds", 5.0, minimum=0),
            "event_id_key_hex": env.get("REFBUS_EVENT_ID_KEY") or None,
            "child_ref_key_hex": env.get("REFBUS_CHILD_REF_KEY") or None,
            "connect_timeout": _parse(env, "REFBUS_CONNECT_TIMEOUT", float, "a number of seconds", 5.0, positive=True),
            "port": _parse(env, "REFBUS_PORT", int, "a port number", None, minimum=1, maximum=65535),
            "monitor_port": _parse(env, "REFBUS_MONITOR_PORT", int, "a port number", None, minimum=1, maximum=65535),
            "sim_max_age_days": _parse(
                env, "REFBUS_SIM_MAX_AGE_DAYS", float, "a number of days", 7.0, minimum=0
            ),
            "log_level": check_log_level(env.get("REFBUS_LOG_LEVEL") or None, "REFBUS_LOG_LEVEL"),
            "seal_interval_s": float(env.get("REFBUS_SEAL_INTERVAL_S", "60")),
            "secrets_dir": Path(env["REFBUS_SECRETS_DIR"]) if env.get("REFBUS_SECRETS_DIR") else None,
            "keys_provisioned": _flag(env, "REFBUS_KEYS_PROVISIONED"),
            "nats_seed_file": Path(seed) if (seed := env.get("REFBUS_NATS_NKEY_SEED_FILE")) else None,
            "tls_ca": Path(ca) if (ca := env.get("REFBUS_TLS_CA")) else None,
        }
        key = values["event_id_key_hex"]
        if key is not None:
            try:
                bytes.fromhex(str(key))
            except ValueError:
                raise SettingsError(f"REFBUS_EVENT_ID_KEY must be hexadecimal, got {_shown(str(key))}") from None
        _check_child_ref_key(values["child_ref_key_hex"])  # type: ignore[arg-type]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]


def _kept_key(path: Path) -> bytes:
    """A 256-bit key kept in the data dir: made on first use, readable by its owner only (of processes
    starting at once, every one reads the first written)."""
    if not path.exists():
        write_once(path, secrets.token_hex(32).encode())
    return bytes.fromhex(path.read_text().strip())


def _check_child_ref_key(key: str | None) -> None:
    # The value itself is a secret: the error says what is wrong with it, never shows it.
    if key is None:
        return
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raise SettingsError("REFBUS_CHILD_REF_KEY must be hexadecimal (its value is not shown)") from None
    if len(raw) < 16:
        raise SettingsError(f"REFBUS_CHILD_REF_KEY must be at least 32 hex digits (128 bits), got {len(key)}")


def check_log_level(level: str | None, name: str = "--log-level") -> str | None:
    if level is None:
        return None
    if level.upper() not in LOG_LEVELS or not isinstance(logging.getLevelName(level.upper()), int):
        raise SettingsError(f"{name} must be one of {', '.join(LOG_LEVELS)}, got {_shown(level)}")
    return level.upper()


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no"):
        return False
    if raw in ("1", "true", "yes"):
        return True
    raise SettingsError(f"{name} must be 1 or 0, got {_shown(raw)}")


def _shown(value: str) -> str:
    return repr(value if len(value) <= 40 else value[:40] + "...")


def _parse(
    env: Mapping[str, str],
    name: str,
    kind: Callable[[str], T],
    what: str,
    default: T | None,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> T | None:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = kind(raw.strip())
    except ValueError:
        raise SettingsError(f"{name} must be {what}, got {_shown(raw)}") from None
    number = float(value)  # type: ignore[arg-type]
    if number != number or number in (float("inf"), float("-inf")):
        raise SettingsError(f"{name} must be {what}, got {_shown(raw)}")
    if positive and number <= 0:
        raise SettingsError(f"{name} must be more than 0, got {_shown(raw)}")
    if minimum is not None and number < minimum:
        raise SettingsError(f"{name} must be at least {minimum:g}, got {_shown(raw)}")
    if maximum is not None and number > maximum:
        raise SettingsError(f"{name} must be at most {maximum:g}, got {_shown(raw)}")
    return value
