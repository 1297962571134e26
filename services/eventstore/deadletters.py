"""Dead letters as operators see them, and the redrive request (docs/decisions/0012-dead-letters.md).

REFBUS_DEAD_LETTERS holds three kinds of message, all without event payloads:
- `refbus.dead.<sector>`: a service's set-aside record (records.DeadLetter: where in the log, why,
  the payload's sha256 and size);
- `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFBUS.<consumer>`: the server's advisory for a
  message a consumer gave up on (stream sequence, consumer, deliveries);
- `refbus.dead.<sector>.redrive`: an operator's request that the sector handle log message N again,
  published with Nats-Msg-Id `redrive:<consumer>:<stream_seq>` (records.RedriveRequest).
A dead letter's ID is its sequence in REFBUS_DEAD_LETTERS: unique over both kinds (a log message can
be both set aside and exhausted, or dead in two consumers), stable, and what `show` gets in one read.
Reads go through an ephemeral push consumer without acks (what the operator user may create).
"""

import asyncio
import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import subjects
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.records import DeadLetter, RedriveRequest

SET_ASIDE = "set-aside"
MAX_DELIVERIES = "max-deliveries"
REDRIVE = "redrive"


@dataclass(frozen=True)
class DeadEntry:
    id: int
    "Sequence in REFBUS_DEAD_LETTERS."
    kind: str
    "set-aside | max-deliveries | redrive"
    sector: str
    consumer: str
    stream_seq: int
    "The message's sequence in REFBUS (the log keeps its bytes)."
    at: datetime
    reason: str
    subject: str | None = None
    "The log subject: it names the child, so only `show` prints it."
    sha256: str | None = None
    size: int | None = None
    deliveries: int | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.consumer, self.stream_seq)


def sector_of(consumer: str) -> str:
    return consumer.removeprefix("inbox-")


def parse(seq: int, subject: str, data: bytes, stored_at: datetime) -> DeadEntry | None:
    """One message of REFBUS_DEAD_LETTERS as an entry; None if it is none of the three kinds."""
    try:
        if subject.startswith(jetstream.MAX_DELIVERIES_ADVISORY_PREFIX):
            adv = json.loads(data)
            consumer = str(adv["consumer"])
            return DeadEntry(
                seq, MAX_DELIVERIES, sector_of(consumer), consumer, int(adv["stream_seq"]),
                jetstream.parse_nats_time(adv["timestamp"]) if "timestamp" in adv else stored_at,
                f"max deliveries ({adv.get('deliveries')})", deliveries=int(adv.get("deliveries", 0)),
            )  # fmt: skip
        if subject.endswith(".redrive"):
            req = msgspec.json.decode(data, type=RedriveRequest)
            return DeadEntry(
                seq, REDRIVE, sector_of(req.consumer), req.consumer, req.stream_seq, req.requested_at,
                f"redrive of dead letter {req.dead_letter}", subject=req.subject,
            )  # fmt: skip
        record = msgspec.json.decode(data, type=DeadLetter)
        return DeadEntry(
            seq, SET_ASIDE, sector_of(record.consumer), record.consumer, record.stream_seq, record.set_aside_at,
            record.reason, subject=record.subject, sha256=record.sha256, size=record.size,
        )  # fmt: skip
    except (ValueError, KeyError, TypeError, msgspec.ValidationError):
        return None


async def read(nc: NATS, start: int = 1, limit: int | None = None, wait: float = 5.0) -> list[DeadEntry]:
    """The entries of REFBUS_DEAD_LETTERS from sequence `start` to its end as it is now."""
    js = nc.jetstream(timeout=wait)
    info = await js.stream_info(subjects.DEAD_LETTER_STREAM)
    end = info.state.last_seq
    if end < start or info.state.messages == 0:
        return []
    want = end - max(start, info.state.first_seq) + 1 if limit is None else limit
    found: list[DeadEntry] = []
    done = asyncio.get_running_loop().create_future()

    async def on_message(msg: Msg) -> None:
        seq, stored_ns = jetstream.delivered_position(msg.reply)
        entry = parse(seq, msg.subject, msg.data, jetstream.datetime_from_ns(stored_ns))
        if entry is not None:
            found.append(entry)
        if (seq >= end or len(found) >= want) and not done.done():
            done.set_result(None)

    sub = await js.subscribe(
        ">",
        stream=subjects.DEAD_LETTER_STREAM,
        cb=on_message,
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        # Named: the operator may create consumers on this stream in the named, filtered form only.
        config=ConsumerConfig(name=f"dead-{secrets.token_hex(4)}", opt_start_seq=start, ack_policy=AckPolicy.NONE,
                              mem_storage=True, inactive_threshold=5.0),
    )
    try:
        async with asyncio.timeout(wait):
            await done
    finally:
        await sub.unsubscribe()
    return found[:want]


async def get(nc: NATS, dead_id: int, wait: float = 5.0) -> DeadEntry | None:
    found = await read(nc, start=dead_id, limit=1, wait=wait)
    return found[0] if found and found[0].id == dead_id else None


@dataclass
class DeadLetters:
    """The dead letters (set aside or exhausted) with the redrive requests folded in."""

    letters: list[DeadEntry]
    redriven: dict[tuple[str, int], DeadEntry]
    "(consumer, stream_seq) -> the redrive request for it."

    @classmethod
    def of(cls, entries: list[DeadEntry]) -> "DeadLetters":
        return cls(
            [e for e in entries if e.kind != REDRIVE],
            {e.key: e for e in entries if e.kind == REDRIVE},
        )

    def subject_for(self, entry: DeadEntry) -> str | None:
        """The log subject of the message: its own record's, or a set-aside record of the same message."""
        if entry.subject:
            return entry.subject
        return next((e.subject for e in self.letters if e.key == entry.key and e.subject), None)


async def request_redrive(nc: NATS, letter: DeadEntry, subject: str, wait: float = 5.0) -> bool:
    """Ask the letter's sector to handle log message `stream_seq` again; False if the same redrive
    was already asked within the duplicate window (the marker's Nats-Msg-Id)."""
    request = RedriveRequest(
        dead_letter=letter.id,
        stream_seq=letter.stream_seq,
        subject=subject,
        consumer=letter.consumer,
        requested_at=datetime.now(UTC),
    )
    ack = await nc.jetstream(timeout=wait).publish(
        subjects.redrive_subject(letter.sector),
        msgspec.json.encode(request),
        headers={jetstream.MSG_ID: f"redrive:{letter.consumer}:{letter.stream_seq}"},
    )
    return not ack.duplicate
