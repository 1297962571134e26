"""The only place subjects and stream names are spelled.

Log subject: ``refbus.ev.<child>.<from_sector>.<to_sector>`` in the stream REFBUS.
- a sector's inbox is one consumer filter:          ``refbus.ev.*.*.<sector>``
- a server permission pins a sender to itself:      publish allow ``refbus.ev.*.<sector>.*``
- one child's events are one filter:                ``refbus.ev.<child>.>`` (used for the per-child
  optimistic-concurrency check, which the server answers from its subject index)
Reading a child's history by that wildcard costs a scan that grows with the log, so a stream
REFBUS_CHILDREN, sourced from REFBUS, re-keys every event to the literal subject
``refbus.child.<child>`` and history is read there (each copy names its REFBUS sequence in the
Nats-Stream-Source header). docs/subjects.md has the measurements behind this.
A third stream, REFBUS_PAGES, holds history pages (contracts/pages.py): a child's events many to
a message, under ``refbus.page.<child>`` (the newest is the manifest) and ``refbus.pagedata.<child>``.
"""

import re

from refbus.contracts.events import ChildRef
from refbus.contracts.vocabulary import Sector

PREFIX = "refbus"
STREAM = "REFBUS"
CHILD_INDEX_STREAM = "REFBUS_CHILDREN"
DEAD_LETTER_STREAM = "REFBUS_DEAD_LETTERS"
PAGES_STREAM = "REFBUS_PAGES"
SEALS_STREAM = "REFBUS_SEALS"
KEYS_STREAM = "REFBUS_KEYS"
ACCESS_STREAM = "REFBUS_ACCESS"

NO_SECTOR = "none"

LOG_SUBJECTS = f"{PREFIX}.ev.>"
CHILD_INDEX_SUBJECTS = f"{PREFIX}.child.>"
DEAD_LETTER_SUBJECTS = f"{PREFIX}.dead.>"
PAGER_CHECKPOINT = f"{PREFIX}.pager.checkpoint"
PAGES_SUBJECTS = (f"{PREFIX}.page.*", f"{PREFIX}.pagedata.*", PAGER_CHECKPOINT)
# Tamper evidence (services/audit): the bus's signed seals of the log, the public keys, who looked.
SEAL_SUBJECT = f"{PREFIX}.seal"
KEYS_SUBJECTS = f"{PREFIX}.keys.*"
ACCESS_SUBJECTS = f"{PREFIX}.access.*"


def key_subject(key_id: str) -> str:
    """One key's public record (the newest: a revocation, if any)."""
    return f"{PREFIX}.keys.{key_id}"


def access_subject(child: str) -> str:
    """Who read one child's history or export."""
    return f"{PREFIX}.access.{child}"

# Index transform: refbus.ev.<child>.<from>.<to> -> refbus.child.<child>
CHILD_INDEX_TRANSFORM = (f"{PREFIX}.ev.*.*.*", f"{PREFIX}.child.{{{{wildcard(1)}}}}")


_NAMES: dict[Sector | None, str] = {**{s: s.value for s in Sector}, None: NO_SECTOR}
"Each sector's name in a subject: a dict lookup, where an Enum's `.value` costs ~0.3 µs (once per event written)."


def event_subject(child: str, from_sector: Sector, to_sector: Sector | None) -> str:
    return f"{PREFIX}.ev.{child}.{_NAMES[from_sector]}.{_NAMES[to_sector]}"


_CHILD = re.compile(ChildRef.__metadata__[0].pattern)  # type: ignore[attr-defined]
_SECTORS = frozenset(s.value for s in Sector)


def parse_event_subject(subject: str) -> tuple[str, Sector, Sector | None]:
    """(child, from_sector, to_sector) of a log subject as `event_subject` spells it; `to_sector` is
    None for the `none` placeholder. ValueError, saying which part, for anything else (naming the part,
    never repeating it: a malformed subject may hold anything, a name too)."""
    tokens = subject.split(".")
    if len(tokens) != 5 or tokens[0] != PREFIX or tokens[1] != "ev":
        raise ValueError(f"malformed subject: not an event subject: expected {PREFIX}.ev.<child>.<from>.<to>")
    _, _, child, frm, to = tokens
    if _CHILD.fullmatch(child) is None:
        raise ValueError("malformed subject: the child is not a child reference")
    if frm not in _SECTORS:
        raise ValueError("malformed subject: the sender is not a sector")
    if to != NO_SECTOR and to not in _SECTORS:
        raise ValueError(f"malformed subject: the receiver is neither a sector nor {NO_SECTOR}")
    return child, Sector(frm), None if to == NO_SECTOR else Sector(to)



def child_filter(child: str) -> str:
    """All of one child's subjects in REFBUS."""
    return f"{PREFIX}.ev.{child}.>"


def child_index_subject(child: str) -> str:
    """One child's literal subject in the REFBUS_CHILDREN index."""
    return f"{PREFIX}.child.{child}"


def page_subject(child: str) -> str:
    """One child's manifest pages in REFBUS_PAGES: the newest names all the child's live pages."""
    return f"{PREFIX}.page.{child}"


def page_data_subject(child: str) -> str:
    """The child's pages that a manifest names but that are not manifests themselves."""
    return f"{PREFIX}.pagedata.{child}"


def inbox_filter(sector: Sector) -> str:
    """Everything addressed to one sector."""
    return f"{PREFIX}.ev.*.*.{sector.value}"


def sender_permission(sector: Sector) -> str:
    """The publish permission that lets a sector write only as itself."""
    return f"{PREFIX}.ev.*.{sector.value}.*"


def dead_letter_subject(sector: Sector | str) -> str:
    name = sector.value if isinstance(sector, Sector) else sector
    return f"{PREFIX}.dead.{name}"


# -- the gateways' NATS request/reply (contracts/commands.py) ----------------------------------
# Core NATS, not JetStream: a sector system sends a command as a request and gets the gateway's
# answer (Applied or Refusal) as the reply. Nothing on these subjects is stored as such.


def command_subject(sector: Sector, kind: str) -> str:
    """Where a sector system sends one kind of command to its gateway."""
    return f"{PREFIX}.cmd.{sector.value}.{kind}"


def command_filter(sector: Sector) -> str:
    """Every command to one sector's gateway (what the gateway subscribes to, and what the sector
    system's NATS user may publish to)."""
    return f"{PREFIX}.cmd.{sector.value}.*"


SEALER_CONSUMER = "sealer"
"The sealer's reader of the log (services/audit/seal.py): one name, so a permission can name it."
AUDITOR_CONSUMER = "auditor"
"The auditors' reader of the log and of the access trail (refbus verify, check, replay), on each stream."


def webhook_consumer(sector: Sector) -> str:
    """The durable consumer that feeds one sector's webhook deliveries (filter: `inbox_filter`)."""
    return f"webhook-{sector.value}"


# Where each sector's system asked its webhook deliveries to go (services/gateway/registration.py): a
# KV bucket, one key per sector (the sector's name), so the registration outlives the service's
# process and every replica of a sector follows it. On the wire: `$KV.REFBUS_WEBHOOKS.<sector>`.
WEBHOOKS_BUCKET = "REFBUS_WEBHOOKS"


def webhook_registration_key(sector: Sector) -> str:
    """One sector's key in WEBHOOKS_BUCKET."""
    return sector.value


def redrive_subject(sector: Sector | str) -> str:
    """Redrive requests for one sector, in REFBUS_DEAD_LETTERS: the sector's redrive consumer reads
    them and handles the named log message again."""
    return f"{dead_letter_subject(sector)}.redrive"


# The children's wrapped data keys (services/privacy/), outside the log: a KV bucket (stream
# KV_REFBUS_CHILD_KEYS), one key per (child, reader, data key): `<child>.<reader>.<key id>`, the reader
# a sector or `auditors`. On the wire: `$KV.REFBUS_CHILD_KEYS.<child>.<reader>.<key id>`.
CHILD_KEYS_BUCKET = "REFBUS_CHILD_KEYS"
CHILD_KEYS_STREAM = f"KV_{CHILD_KEYS_BUCKET}"
CHILD_KEYS_SUBJECTS = f"$KV.{CHILD_KEYS_BUCKET}.>"
AUDITORS = "auditors"
"The reader the auditors' wrapped keys are kept under."


def child_key_subject(child: str, reader: Sector | str, key_id: str) -> str:
    """Where one reader's wrap of one of a child's data keys is kept."""
    name = reader.value if isinstance(reader, Sector) else reader
    return f"$KV.{CHILD_KEYS_BUCKET}.{child}.{name}.{key_id}"


def child_keys_filter(child: str) -> str:
    """Every wrapped key of one child (what `refbus erase` destroys)."""
    return f"$KV.{CHILD_KEYS_BUCKET}.{child}.>"


# -- need-to-know reads (services/reads/) ---------------------------------------------------------
# A sector reads children's histories only through the read service, which answers each sector with
# what it may see (docs/decisions/0023-need-to-know-reads.md): request/reply on core NATS, the sector
# in the subject so that a server permission pins each sector user to asking as itself.
READ_REQUESTS = f"{PREFIX}.read.*.*"
"What the read service answers (a queue group: any number of instances)."
READ_HISTORY = "history"
READ_FEED = "feed"


def read_subject(sector: Sector, kind: str) -> str:
    """Where `sector` asks the read service for a `kind` of read (READ_HISTORY, READ_FEED)."""
    return f"{PREFIX}.read.{sector.value}.{kind}"


def read_permission(sector: Sector) -> str:
    """The publish permission that lets a sector ask for reads only as itself."""
    return f"{PREFIX}.read.{sector.value}.*"


def parse_read_subject(subject: str) -> tuple[Sector, str]:
    """(sector, kind) of a read request's subject; ValueError for anything else."""
    tokens = subject.split(".")
    if len(tokens) != 4 or tokens[0] != PREFIX or tokens[1] != "read" or tokens[2] not in _SECTORS:
        raise ValueError("not a read request subject: expected refbus.read.<sector>.<kind>")
    if tokens[3] not in (READ_HISTORY, READ_FEED):
        raise ValueError(f"unknown read: {tokens[3][:40]!r}; expected {READ_HISTORY} or {READ_FEED}")
    return Sector(tokens[2]), tokens[3]
