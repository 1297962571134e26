"""Who connects to the bus: one NATS identity per service, sector system, operator, auditor and admin, each an
nkey pair (docs/decisions/0020-identities-and-tls.md).

The seeds live in `<secrets>/nats/<identity>.nk`, readable by their owner only, and are never logged
nor printed; the server knows only the public keys. deploy/nats-permissions.conf names each user by
`nkey: $REFBUS_<IDENTITY>_NKEY`, so the permissions file stays the one place that says which subjects
an identity may use, and the keys reach the server from its environment (`server_env`) or from a
file a deployment's server sources into its environment (`identities_env`).
"""

import os
from dataclasses import dataclass
from pathlib import Path

import nkeys

from refbus.services.runtime.secret_files import write_once

SERVICES = ("social", "health", "education", "justice", "pager", "deadlines")
SYSTEMS = ("social-system", "health-system", "education-system", "justice-system")
IDENTITIES = ("admin", "operator", "auditor", *SERVICES, *SYSTEMS)
"The users of deploy/nats-permissions.conf, in its order."


class IdentityError(ValueError):
    """A seed that is missing or not an nkey user seed; the message names the file, never its content."""


def variable(identity: str) -> str:
    """The config variable (and environment variable) that carries `identity`'s public key."""
    return f"REFBUS_{identity.upper().replace('-', '_')}_NKEY"


def seed_path(folder: Path, identity: str) -> Path:
    return folder / f"{identity}.nk"


def public_key(seed_file: Path) -> str:
    """The public key (U...) of the user seed in `seed_file`."""
    try:
        seed = bytearray(seed_file.read_bytes().strip())
    except FileNotFoundError:
        raise IdentityError(f"no NATS seed at {seed_file}") from None
    try:
        pair = nkeys.from_seed(seed)
        key = pair.public_key.decode()
    except Exception:  # the library's errors say nothing useful, and the seed must not be shown
        raise IdentityError(f"{seed_file} does not hold an nkey user seed") from None
    if not key.startswith("U"):
        raise IdentityError(f"{seed_file} holds an nkey seed, but not a user's")
    return key


def ensure(folder: Path, identities: tuple[str, ...] = IDENTITIES) -> dict[str, str]:
    """Every identity's seed in `folder` (made on first use, owner-only); their public keys."""
    for identity in identities:
        path = seed_path(folder, identity)
        if not path.exists():
            write_once(path, nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    return load(folder, identities)


def load(folder: Path, identities: tuple[str, ...] = IDENTITIES) -> dict[str, str]:
    """The public keys of the seeds in `folder`; IdentityError naming the first missing one."""
    return {identity: public_key(seed_path(folder, identity)) for identity in identities}


def server_env(public_keys: dict[str, str]) -> dict[str, str]:
    """The environment that gives a server started with deploy/nats-server.conf its users."""
    return {variable(identity): key for identity, key in public_keys.items()}


def identities_env(public_keys: dict[str, str]) -> str:
    """The same environment as a file a shell sources before starting a deployment's server (a
    config cannot carry them: nats-server does not share variables between included files)."""
    lines = ["# The users' public nkeys (refbus keys --out), for nats-server's environment."]
    lines += [f"{variable(identity)}={key}" for identity, key in public_keys.items()]
    return "\n".join(lines) + "\n"


def export(master: Path, out: Path) -> dict[str, list[str]]:
    """A deployment's NATS identities from the seeds kept in `master` (made on first use): each
    identity's seed alone in `out/<identity>/nats/<identity>.nk` (a service's folder is the one its
    keys go to, so REFBUS_SECRETS_DIR finds it), and for the servers, public keys only:
    `out/nats-server/nats-identities.env` (sourced into the server's environment) and
    `out/nats-server/users/<identity>` (one file per user, for a Kubernetes Secret)."""
    public_keys = ensure(master)
    written: dict[str, list[str]] = {}
    for identity in IDENTITIES:
        target = seed_path(out / identity / "nats", identity)
        target.unlink(missing_ok=True)  # written again whole: a rotated seed replaces the old one
        write_once(target, seed_path(master, identity).read_bytes())
        written.setdefault(identity, []).append(str(target.relative_to(out / identity)))
    server = out / "nats-server"
    (server / "users").mkdir(parents=True, exist_ok=True)
    (server / "nats-identities.env").write_text(identities_env(public_keys))
    for identity, key in public_keys.items():
        (server / "users" / identity).write_text(key)
    written["nats-server"] = ["nats-identities.env", *(f"users/{identity}" for identity in IDENTITIES)]
    return written


@dataclass(frozen=True)
class Credentials:
    """How one identity connects: its name (its reply-inbox prefix `_INBOX.<identity>`, the only
    one the server lets it subscribe to) and its seed file, if it has one."""

    identity: str
    seed_file: Path | None = None

    def connect_options(self) -> dict[str, str]:
        options = {"inbox_prefix": f"_INBOX.{self.identity}"}
        if self.seed_file is not None:
            options["nkeys_seed"] = str(self.seed_file)
        return options
