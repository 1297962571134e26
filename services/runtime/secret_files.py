"""Writing secrets to disk (keys, seeds, certificates): whole, owner-only from the first byte, never
seen half-written. Two ways, by what the file is:
- `write_once`: a secret made on first use by whichever process gets there first (a data dir's nkey
  seeds, event-id and child-ref keys). Staged under a name of its own, then linked into place: of
  processes starting at once, the first link wins and every other reads that one.
- `write_replacing`: a file that a command (re)writes on purpose (provisioned keys, certificates):
  staged, synced, then renamed over any older one.
"""

import os
from pathlib import Path


def _staged(path: Path, data: bytes, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    return staged


def write_once(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`data` at `path` unless a file is already there (then that one stays)."""
    staged = _staged(path, data, mode)
    try:
        os.link(staged, path)
    except FileExistsError:
        pass
    finally:
        staged.unlink()


def write_replacing(path: Path, data: bytes, mode: int = 0o600) -> None:
    """`data` at `path`, replacing what was there. OSError as the file system raises it."""
    staged = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        staged = _staged(path, data, mode)
        os.replace(staged, path)
    except OSError:
        staged.unlink(missing_ok=True)
        raise
