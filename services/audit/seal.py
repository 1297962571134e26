"""Seals: signed checkpoints of the whole log. At intervals the bus signs (last sequence, running
hash of every message up to it) and publishes it to REFBUS_SEALS, so that a log whose tail was
dropped, or a store rebuilt with another history, no longer matches (X-Road's message log: hash
chained archives, a batch time-stamp once a minute). The running hash covers each message's
sequence, subject, chain header and bytes: log_hash(n) = sha256(log_hash(n-1) || ...)."""

import asyncio
import contextlib
import hashlib
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.js.errors import APIError

from refbus.contracts import subjects
from refbus.services.audit import proof
from refbus.services.audit.keys import BUS, Keyring
from refbus.services.eventstore import jetstream

log = structlog.get_logger(__name__)

SEAL_INTERVAL_S = 60.0
# A seal covers at most this many new messages: a sealer far behind (a bulk load) catches up seal by
# seal, and an interrupted pass loses only its last stretch.
MAX_EVENTS_PER_SEAL = 100_000


class Seal(msgspec.Struct, frozen=True, kw_only=True):
    last_seq: int
    log_hash: bytes
    sealed_at: datetime
    key_id: str = ""
    signature: bytes = b""

    def signed_part(self) -> bytes:
        return proof.SEAL_DOMAIN + msgspec.json.encode((self.last_seq, self.log_hash, self.sealed_at))


_starts: dict[int, int] = {}
"Where each seal this process made began (for the sealer's catching up)."


def seal_start(seal: Seal) -> int:
    return _starts.pop(seal.last_seq, 0)


def log_step(prev: bytes, seq: int, subject: str, chain_header: str, data: bytes) -> bytes:
    return hashlib.sha256(
        b"".join((prev, seq.to_bytes(8, "big"), subject.encode(), b"\0", chain_header.encode(), b"\0", data))
    ).digest()


def make_seal(ring: Keyring, last_seq: int, log_hash: bytes, at: datetime | None = None) -> Seal:
    seal = Seal(last_seq=last_seq, log_hash=log_hash, sealed_at=at or datetime.now(UTC))
    kid, signature = ring.sign(BUS, seal.signed_part())
    return msgspec.structs.replace(seal, key_id=kid, signature=signature)


def seal_messages(ring: Keyring, messages: Iterable[tuple[int, datetime, str, dict[str, str], bytes]]) -> Seal:
    """The seal of a log given as stored messages (for tests and tools): up to its last message."""
    log_hash, last = proof.GENESIS, 0
    for seq, _at, subject, headers, data in messages:
        log_hash = log_step(log_hash, seq, subject, headers.get(proof.CHAIN, ""), data)
        last = seq
    return make_seal(ring, last, log_hash)


_seal_decoder = msgspec.json.Decoder(Seal)


def decode_seal(data: bytes) -> Seal | None:
    try:
        return _seal_decoder.decode(data)
    except msgspec.DecodeError:
        return None


async def read_seals(nc: NATS, wait: float = 5.0) -> list[Seal]:
    """Every seal in the bus, oldest first (one a minute: small)."""
    from refbus.services.eventstore.jetstream import BatchedDirectGet

    try:
        messages = await BatchedDirectGet(nc).all_on(subjects.SEALS_STREAM, subjects.SEAL_SUBJECT, 1, wait)
    except (RuntimeError, TimeoutError):
        return []
    return [s for s in (decode_seal(m.data) for m in messages) if s is not None]


async def last_seal(nc: NATS, wait: float = 5.0) -> tuple[Seal | None, int]:
    """The newest seal and its sequence in REFBUS_SEALS (0 when none)."""
    msg = await jetstream.direct_get(nc, subjects.SEALS_STREAM, {"last_by_subj": subjects.SEAL_SUBJECT}, wait)
    if msg is None:
        return None, 0
    return decode_seal(msg.data), jetstream.stored_sequence(msg)


async def seal_now(nc: NATS, ring: Keyring, wait: float = 5.0) -> Seal | None:
    """Seal everything stored since the newest seal; None when nothing new. The running hash
    continues from the newest seal that the bus key signed (a seal not ours stops the sealer)."""
    from refbus.services.eventstore.replay import named_raw_replay

    previous, previous_seq = await last_seal(nc, wait)
    if previous is not None:
        record = ring.record(previous.key_id)
        if record is None or not proof.verify_signature(record.public_key, previous.signature, previous.signed_part()):
            raise RuntimeError(f"the newest seal (seq {previous_seq} of {subjects.SEALS_STREAM}) is not signed by "
                               "this bus: refusing to continue its hash")
    log_hash, last = (previous.log_hash, previous.last_seq) if previous else (proof.GENESIS, 0)
    start = last
    # Through the sealer's own consumer (named and filtered): what the pager's NATS user may create.
    async with contextlib.aclosing(named_raw_replay(nc, subjects.SEALER_CONSUMER, last + 1, wait)) as messages:
        async for seq, _ns, subject, headers, data in messages:
            log_hash = log_step(log_hash, seq, subject, headers.get(proof.CHAIN, ""), data)
            last = seq
            if last - start >= MAX_EVENTS_PER_SEAL:
                break
    if previous is not None and last == previous.last_seq:
        return None
    if last == 0:
        return None
    seal = make_seal(ring, last, log_hash)
    _starts[seal.last_seq] = start
    js = nc.jetstream(timeout=wait)
    try:
        await js.publish(
            subjects.SEAL_SUBJECT, msgspec.json.encode(seal),
            headers={jetstream.MSG_ID: f"seal:{last}",
                     jetstream.EXPECTED_LAST_SUBJECT_SEQUENCE: str(previous_seq)},
        )
    except APIError as exc:
        if exc.err_code in jetstream.WRONG_LAST_SEQUENCE:
            return None  # another sealer sealed meanwhile
        raise
    return seal


async def sealer(nc: NATS, ring: Keyring, interval: float = SEAL_INTERVAL_S) -> None:
    """Seal every `interval` seconds until cancelled; far behind, seal after seal until caught up."""
    while True:
        try:
            while True:
                seal = await seal_now(nc, ring)
                if seal is None:
                    break
                log.info("log_sealed", last_seq=seal.last_seq)
                if seal.last_seq - seal_start(seal) < MAX_EVENTS_PER_SEAL:
                    break
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # keep sealing: the next interval retries
            log.warning("seal_failed", error=repr(exc))
        await asyncio.sleep(interval)


# -- the witness: the newest seal a verifier has seen, kept outside the bus ------------------------
def witness_path(data_dir: Path) -> Path:
    return data_dir / "audit" / "witness.json"


def read_witness(data_dir: Path) -> Seal | None:
    path = witness_path(data_dir)
    return decode_seal(path.read_bytes()) if path.exists() else None


def write_witness(data_dir: Path, seal: Seal) -> None:
    path = witness_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(msgspec.json.encode(seal))

