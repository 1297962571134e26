"""Signing keys: one Ed25519 key per sector and one for the bus (seals, key records, the access
trail), and one for the deadline service (its notices only), kept in <data_dir>/secrets/keys/
(owner-only, never in the log or the repository). A deployment provisions them once (`refbus keys
--out`, `export` below) and hands each service only the private keys it signs with, with the public
records in public-keys.json (docs/decisions/0015-key-provisioning.md).

Beside them, content keys: an X25519 key per sector and one for the auditors (owners
`content-<sector>`, `content-auditors`), to which the children's data keys are wrapped
(services/privacy/, docs/decisions/0021-sealed-content.md). They sign nothing; their public records
are certified and published as the signing keys' are, and a service gets only its own private one.

A key file holds the private key and its record. Rotation makes a new current key for an owner; the
old one stays valid for what it signed. Revocation records a time: a signature by a revoked key on
anything stored at or after that time is refused (the server's store time, which a thief of the key
cannot set). Public records are published to REFBUS_KEYS, each certified by a bus key; a verifier
trusts the bus keys of its own data dir (the anchor) and through them the rest.
"""

from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from refbus.contracts import subjects
from refbus.contracts.events import Event, ReferralEscalated, ReferralOverdue
from refbus.contracts.vocabulary import Sector
from refbus.services.audit import proof
from refbus.services.runtime.secret_files import write_replacing

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS


BUS = "bus"
DEADLINES = "deadlines"
AUDITORS = subjects.AUDITORS
CONTENT_PREFIX = "content-"


def content_owner(reader: Sector | str) -> str:
    """The owner of a reader's content key: a sector's, or the auditors' (AUDITORS)."""
    return CONTENT_PREFIX + (reader.value if isinstance(reader, Sector) else reader)


CONTENT_OWNERS = (*(content_owner(s) for s in Sector), content_owner(AUDITORS))
OWNERS = (*(s.value for s in Sector), BUS, DEADLINES, *CONTENT_OWNERS)
PUBLIC_FILE = "public-keys.json"
"Beside the key files: public records read from local disk, trusted as the key files are."
SERVICE_OWNERS: dict[str, tuple[str, ...]] = {
    **{s.value: (s.value, content_owner(s)) for s in Sector}, "pager": (BUS,), "deadlines": (DEADLINES,),
}
"The owners whose private keys each service holds (the pager's sealer: the bus; a sector its content key too)."
SERVICES_WITH_EVENT_IDS = (*(s.value for s in Sector), "deadlines")
"The services that derive event ids, so need the deployment's event-id key."


_NOTICES = frozenset((ReferralOverdue, ReferralEscalated))
_OWNERS = {sector: sector.value for sector in Sector}
"Once per event written: a set and a dict lookup, not a union isinstance and an Enum's `.value`."


def signer(event: Event) -> str:
    """The owner whose key signs `event`: its sender, except a deadline notice, which the deadline
    service writes as the sector's note to itself and signs with a key of its own (the only events it
    can sign, so it holds no sector's key)."""
    return DEADLINES if type(event) in _NOTICES else _OWNERS[event.from_sector]


def may_sign(owner: str, event: Event) -> bool:
    """Is a signature by `owner`'s key valid on `event` (a notice signed by the sector: written
    before the deadline service had its own key)?"""
    return owner in (event.from_sector.value, signer(event))


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    owner: str
    public_key: bytes
    created_at: datetime
    revoked_at: datetime | None = None
    certified_by: str = ""
    certificate: bytes = b""
    "A bus key's signature over the record without these two fields."

    def signed_part(self) -> bytes:
        return proof.KEY_DOMAIN + msgspec.json.encode(
            (self.key_id, self.owner, self.public_key, self.created_at, self.revoked_at)
        )

    def valid_at(self, stored_at: datetime) -> bool:
        return self.revoked_at is None or stored_at < self.revoked_at


class KeyFile(msgspec.Struct, kw_only=True):
    record: KeyRecord
    private_key: bytes
    retired: bool = False
    "Rotated out: no longer used to sign, still valid for what it signed."


class Keyring:
    """The keys of one deployment: private keys to sign with (current per owner) and public records
    to verify against."""

    def __init__(self, files: Iterable[KeyFile] = (), records: Iterable[KeyRecord] = ()) -> None:
        """`records`: public records from local disk (PUBLIC_FILE), trusted like the files: a
        service or verifier that holds no bus private key anchors on the bus records there."""
        self.files: dict[str, KeyFile] = {f.record.key_id: f for f in files}
        self._private = {kid: Ed25519PrivateKey.from_private_bytes(f.private_key) for kid, f in self.files.items()
                         if not f.record.owner.startswith(CONTENT_PREFIX)}
        self._content = {kid: X25519PrivateKey.from_private_bytes(f.private_key) for kid, f in self.files.items()
                         if f.record.owner.startswith(CONTENT_PREFIX)}
        self.records: dict[str, KeyRecord] = {f.record.key_id: f.record for f in self.files.values()}
        for record in records:
            self.records.setdefault(record.key_id, record)
        self._local_bus = {r.key_id: self.records[r.key_id] for r in records if r.owner == BUS}
        self._current: dict[str, str] = {}
        for f in sorted(self.files.values(), key=lambda f: f.record.created_at):
            if not f.retired and f.record.revoked_at is None:
                self._current[f.record.owner] = f.record.key_id

    # -- signing --------------------------------------------------------------------------------
    def current(self, owner: str) -> str | None:
        """The key id `owner` signs with now: its newest key neither retired nor revoked."""
        return self._current.get(owner)

    def private(self, kid: str) -> Ed25519PrivateKey | None:
        return self._private.get(kid)

    def content_private(self, kid: str) -> X25519PrivateKey | None:
        """A content key's private half, if this ring holds it (a sector's own, the auditors')."""
        return self._content.get(kid)

    def content_public(self, owner: str) -> KeyRecord | None:
        """The record of `owner`'s content key to wrap for now: its newest unrevoked public record."""
        found = [r for r in self.records.values() if r.owner == owner and r.revoked_at is None]
        return max(found, key=lambda r: r.created_at) if found else None

    def sign(self, owner: str, message: bytes) -> tuple[str, bytes]:
        kid = self.current(owner)
        if kid is None:
            raise LookupError(f"no current key for {owner}")
        return kid, self._private[kid].sign(message)

    # -- verifying ------------------------------------------------------------------------------
    def record(self, kid: str) -> KeyRecord | None:
        return self.records.get(kid)

    def anchors(self) -> dict[str, KeyRecord]:
        """The bus keys this deployment holds itself (private, or public from local disk): the trust anchor."""
        return {**self._local_bus, **{kid: f.record for kid, f in self.files.items() if f.record.owner == BUS}}

    def can_certify(self) -> bool:
        return self.current(BUS) is not None

    def certify(self, record: KeyRecord) -> KeyRecord:
        kid, sig = self.sign(BUS, record.signed_part())
        return msgspec.structs.replace(record, certified_by=kid, certificate=sig)

    def public_records(self) -> list[KeyRecord]:
        return [self.certify(r) for r in sorted(self.records.values(), key=lambda r: (r.owner, r.created_at))]


def trusted(records: Iterable[KeyRecord], anchors: dict[str, KeyRecord]) -> dict[str, KeyRecord]:
    """The records a bus key of the anchor certifies: per key id the newest, except that a revocation
    stands once certified (the earliest revocation time wins)."""
    found: dict[str, KeyRecord] = {}
    for record in records:
        anchor = anchors.get(record.certified_by)
        if anchor is None or not proof.verify_signature(anchor.public_key, record.certificate, record.signed_part()):
            continue
        if record.owner == BUS and record.key_id not in anchors:
            continue  # only the anchor names the bus keys
        known = found.get(record.key_id)
        if known is not None and known.revoked_at is not None and (
            record.revoked_at is None or record.revoked_at > known.revoked_at
        ):
            continue  # a revocation stands: an older certified record replayed later does not undo it
        found[record.key_id] = record
    for kid, anchor in anchors.items():
        found.setdefault(kid, anchor)
    return found


# -- on disk -------------------------------------------------------------------------------------
_file_encoder = msgspec.json.Encoder()
_file_decoder = msgspec.json.Decoder(KeyFile)


def keys_dir(data_dir: Path) -> Path:
    return data_dir / "secrets" / "keys"


_records_decoder = msgspec.json.Decoder(list[KeyRecord])


def load(data_dir: Path) -> Keyring:
    return load_dir(keys_dir(data_dir))


def load_dir(folder: Path) -> Keyring:
    """The key files in `folder` and the public records of its PUBLIC_FILE, if any."""
    if not folder.is_dir():
        return Keyring()
    files = [_file_decoder.decode(p.read_bytes()) for p in sorted(folder.glob("*.key"))]
    public = folder / PUBLIC_FILE
    return Keyring(files, _records_decoder.decode(public.read_bytes()) if public.exists() else ())


def _write(folder: Path, key_file: KeyFile, name: str | None = None) -> None:
    write_replacing(folder / f"{name or key_file.record.key_id}.key", _file_encoder.encode(key_file))


def export(ring: Keyring, out: Path, event_id_key_hex: str, child_ref_key_hex: str) -> dict[str, list[str]]:
    """A deployment's provisioned secrets, one folder per service laid out as a data dir's
    secrets/ (what REFBUS_SECRETS_DIR names): keys/<owner>.key for each owner the service signs
    as (current key only), keys/public-keys.json (every record, certified by the bus), and
    event-id.key for the services that derive event ids; verifier/ holds the public records alone,
    auditor/ those and the auditors' content key (`refbus history` shows content with it), and
    child-refs/ the child-reference key, for the sector systems alone (they derive references
    with `refbus child-ref`; no service needs it).
    Returns each folder's files. Raises LookupError if an owner has no current key."""
    public = msgspec.json.encode(ring.public_records())
    written: dict[str, list[str]] = {}
    readers = [("verifier", ()), ("auditor", (content_owner(AUDITORS),))]
    for service, owners in [*SERVICE_OWNERS.items(), *readers]:
        folder = out / service
        for owner in owners:
            kid = ring.current(owner)
            if kid is None:
                raise LookupError(f"no current key for {owner}")
            _write(folder / "keys", ring.files[kid], name=owner)
        write_replacing(folder / "keys" / PUBLIC_FILE, public, 0o644)
        if service in SERVICES_WITH_EVENT_IDS:
            write_replacing(folder / "event-id.key", event_id_key_hex.encode())
        written[service] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    write_replacing(out / "child-refs" / "child-ref.key", child_ref_key_hex.encode())
    written["child-refs"] = ["child-ref.key"]
    return written


def new_key(data_dir: Path, owner: str, now: datetime | None = None) -> KeyFile:
    """A new current key for `owner`; its earlier keys are retired (still valid for what they signed)."""
    return new_key_in(keys_dir(data_dir), owner, now)


def new_key_in(folder: Path, owner: str, now: datetime | None = None) -> KeyFile:
    if owner not in OWNERS:
        raise ValueError(f"no such key owner: {owner}")
    for old in load_dir(folder).files.values():
        if old.record.owner == owner and not old.retired:
            old.retired = True
            _write(folder, old)
    private: Ed25519PrivateKey | X25519PrivateKey = (
        X25519PrivateKey.generate() if owner.startswith(CONTENT_PREFIX) else Ed25519PrivateKey.generate()
    )
    raw = private.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    record = KeyRecord(key_id=proof.key_id(owner, public), owner=owner, public_key=public,
                       created_at=now or datetime.now(UTC))
    key_file = KeyFile(record=record, private_key=raw)
    _write(folder, key_file)
    return key_file


def ensure(data_dir: Path) -> Keyring:
    """The deployment's keyring, making a key for every owner that has none (first start)."""
    return ensure_dir(keys_dir(data_dir))


def ensure_dir(folder: Path) -> Keyring:
    ring = load_dir(folder)
    missing = [owner for owner in OWNERS if ring.current(owner) is None]
    for owner in missing:
        new_key_in(folder, owner)
    return load_dir(folder) if missing else ring


def revoke(data_dir: Path, kid: str, at: datetime | None = None) -> KeyRecord:
    return revoke_in(keys_dir(data_dir), kid, at)


def revoke_in(folder: Path, kid: str, at: datetime | None = None) -> KeyRecord:
    ring = load_dir(folder)
    key_file = ring.files.get(kid)
    if key_file is None:
        raise LookupError(f"no key {kid} in {folder}")
    key_file.record = msgspec.structs.replace(key_file.record, revoked_at=at or datetime.now(UTC))
    key_file.retired = True
    _write(folder, key_file)
    return key_file.record


# -- in the bus ---------------------------------------------------------------------------------
_record_decoder = msgspec.json.Decoder(KeyRecord)


async def publish(nc: "NATS", ring: Keyring, wait: float = 5.0) -> int:
    """Publish every public record of the ring to REFBUS_KEYS, certified by the bus (again only
    what changed: the message id names the record's state)."""
    from refbus.services.eventstore import jetstream

    js = nc.jetstream(timeout=wait)
    for record in ring.public_records():
        state = "revoked" if record.revoked_at else "valid"
        await js.publish(subjects.key_subject(record.key_id), msgspec.json.encode(record),
                         headers={jetstream.MSG_ID: f"key:{record.key_id}:{state}"})
    return len(ring.records)


async def published(nc: "NATS", wait: float = 5.0) -> list[KeyRecord]:
    """Every key record in the bus, oldest first."""
    from refbus.services.eventstore.jetstream import BatchedDirectGet

    try:
        messages = await BatchedDirectGet(nc).all_on(subjects.KEYS_STREAM, subjects.KEYS_SUBJECTS, 1, wait)
    except (RuntimeError, TimeoutError):
        return []
    found = []
    for msg in messages:
        try:
            found.append(_record_decoder.decode(msg.data))
        except msgspec.DecodeError:
            continue
    return found


async def trusted_records(nc: "NATS", ring: Keyring, wait: float = 5.0) -> dict[str, KeyRecord]:
    """The key records a verifier goes by: those in the bus that a bus key of `ring` (the anchor)
    certifies, and the ring's own (a revocation recorded in either counts)."""
    found = trusted(await published(nc, wait), ring.anchors())
    for kid, record in ring.records.items():
        known = found.get(kid)
        if known is None or (record.revoked_at and not known.revoked_at):
            found[kid] = record
    return found


# -- the process's signing keys ------------------------------------------------------------------
_installed: Keyring | None = None


def install(ring: Keyring | None) -> None:
    """Make `ring` the keys that stores built without one sign with (open_bus installs the
    deployment's)."""
    global _installed
    _installed = ring


def installed() -> Keyring | None:
    return _installed
