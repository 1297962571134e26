"""The one module that speaks the JetStream protocol: every `$JS` subject, the status and stream
headers, error codes, atomic batch frames, time stamps and ack subjects. nats-py has helpers for
some of this and none for the rest (atomic batches, batched direct gets, consumer creation with the
filter in the subject); everything refbus needs below nats-py's helpers lives here, so the rest of
the code speaks of events and children. See docs/decisions/0002-jetstream-by-hand.md.
"""

import asyncio
import json
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.js.api import ConsumerConfig, ConsumerInfo

# -- header parsing --------------------------------------------------------------------------------
# nats-py 2.16 checks each character of each header name of each message with a Python generator: a
# large part of a reader's time per message, more since events carry their signature headers. The same
# rules (a name without whitespace, a value stripped and decoded leniently), checked by one regex:
# half the time (docs/decisions/0002-jetstream-by-hand.md).
_WHITESPACE = re.compile(rb"\s")


def parse_header_lines(raw: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in raw.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        name = name.strip()
        if colon and name and not _WHITESPACE.search(name) and name.isascii():
            out[name.decode("ascii")] = value.strip().decode("utf-8", "replace")
    return out


nats_py_parse_header_lines = NATS._parse_header_lines
"nats-py's own, kept for the test that ours gives the same dict."
NATS._parse_header_lines = staticmethod(parse_header_lines)  # type: ignore[method-assign]


# -- subjects of the JetStream API -----------------------------------------------------------------
API = "$JS.API"


def stream_info_subject(stream: str) -> str:
    return f"{API}.STREAM.INFO.{stream}"


def direct_get_subject(stream: str) -> str:
    return f"{API}.DIRECT.GET.{stream}"


def message_delete_subject(stream: str) -> str:
    return f"{API}.STREAM.MSG.DELETE.{stream}"


def next_message_subject(stream: str, consumer: str) -> str:
    return f"{API}.CONSUMER.MSG.NEXT.{stream}.{consumer}"


def consumer_info_subject(stream: str, consumer: str) -> str:
    return f"{API}.CONSUMER.INFO.{stream}.{consumer}"


def consumer_delete_subject(stream: str, consumer: str) -> str:
    return f"{API}.CONSUMER.DELETE.{stream}.{consumer}"


def consumer_create_subject(stream: str, consumer: str, filter_subject: str) -> str:
    """The create form that carries the filter (server 2.10+): permissions can then pin what a user's
    consumer delivers, not only its name."""
    return f"{API}.CONSUMER.CREATE.{stream}.{consumer}.{filter_subject}"


MAX_DELIVERIES_ADVISORY_PREFIX = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES."


def max_deliveries_advisory(stream: str) -> str:
    return f"{MAX_DELIVERIES_ADVISORY_PREFIX}{stream}.>"


# -- headers and codes -----------------------------------------------------------------------------
MSG_ID = "Nats-Msg-Id"
EXPECTED_LAST_SUBJECT_SEQUENCE = "Nats-Expected-Last-Subject-Sequence"
EXPECTED_LAST_SUBJECT_SEQUENCE_SUBJECT = "Nats-Expected-Last-Subject-Sequence-Subject"  # no nats-py constant
STATUS = "Status"
HEARTBEAT = "100"
END_OF_BATCH = "204"
NO_MESSAGES = "404"
REQUEST_EXPIRED = "408"

WRONG_LAST_SEQUENCE = (10071, 10164)
STREAM_FULL = (10077, 10078)  # "maximum bytes exceeded", "maximum messages exceeded"
DUPLICATE_IN_BATCH = 10201  # "atomic publish batch contains duplicate message id"
NO_PEERS_YET = 10005  # "no suitable peers for placement": a cluster still forming
CONSUMER_NOT_FOUND = 10014


def status_of(msg: Msg) -> str | None:
    """The status of a control message (heartbeat, end of batch, ...); None for a stored message."""
    return (msg.headers or {}).get(STATUS)


def stored_sequence(msg: Msg) -> int:
    """A direct get's message: its sequence in the stream it was read from."""
    return int((msg.headers or {})["Nats-Sequence"])


def stored_subject(msg: Msg) -> str:
    return (msg.headers or {}).get("Nats-Subject", "")


def stored_time(msg: Msg) -> datetime:
    return parse_nats_time((msg.headers or {})["Nats-Time-Stamp"])


def source_sequence(headers: dict[str, str]) -> int | None:
    """In a sourced stream, `Nats-Stream-Source: <origin> <origin seq> ...` names the message's
    sequence in its origin; None for a message of the stream itself."""
    source = headers.get("Nats-Stream-Source")
    return int(source.split()[1]) if source else None


def delivered_position(reply: str) -> tuple[int, int]:
    """The stream sequence and storage time (ns) of a consumer's message, from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`, or with
    `<domain>.<account hash>` after `$JS.ACK` and a random token at the end (ADR-15). nats-py's
    `metadata` builds several objects per message for the same two numbers."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at]), int(tokens[at + 2])


def delivery(reply: str) -> tuple[int, int]:
    """The stream sequence of a consumer's message and how many times it has been delivered, from
    its ack subject (layouts as `delivered_position`): one split instead of nats-py's `metadata`."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at]), int(tokens[at - 1])


def delivered_consumer_sequence(reply: str) -> int:
    """The consumer's own count of what it delivered, from the ack subject: one more per message, so a
    jump is a delivery lost on the way (in the client)."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at + 1])


def delivered_pending(reply: str) -> int:
    """How many messages of the consumer's filter remain after this one, from its ack subject."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at + 3])


# -- time stamps -----------------------------------------------------------------------------------
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_nats_time(text: str) -> datetime:
    """JetStream's RFC 3339 time with nanoseconds, cut to Python's microseconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00")


def datetime_from_ns(ns: int) -> datetime:
    """Nanoseconds since the epoch, cut (not rounded) to microseconds, like parse_nats_time."""
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC)


def nats_time_ns(text: str) -> int:
    """JetStream's time as nanoseconds since the epoch, cut to microseconds like every time refbus
    reads (so datetime_from_ns gives back parse_nats_time's)."""
    return (parse_nats_time(text) - _EPOCH) // _MICROSECOND * 1000


# -- requests ---------------------------------------------------------------------------------------
class ApiError(RuntimeError):
    def __init__(self, what: str, error: dict[str, object]) -> None:
        super().__init__(f"{what}: {error.get('description', error)}")
        self.code = error.get("err_code")


async def api_request(nc: NATS, subject: str, request: dict[str, object], wait: float) -> dict[str, object]:
    """A JetStream API request with a JSON answer; raises ApiError when the server refuses."""
    reply = json.loads((await nc.request(subject, json.dumps(request).encode(), wait)).data)
    error = reply.get("error")
    if isinstance(error, dict):
        raise ApiError(subject.removeprefix(API + "."), error)
    return reply


async def subject_counts(nc: NATS, stream: str, subjects_filter: str, wait: float) -> dict[str, int]:
    """How many messages each subject matching the filter holds, from the stream's subject index
    (no message read), asked of the stream's leader; paged (100,000 subjects an answer)."""
    found: dict[str, int] = {}
    while True:
        info = await api_request(
            nc, stream_info_subject(stream), {"subjects_filter": subjects_filter, "offset": len(found)}, wait
        )
        page = (info.get("state") or {}).get("subjects") or {}  # type: ignore[union-attr]
        found.update(page)
        if not page or len(found) >= int(info.get("total", 0)):  # type: ignore[call-overload]
            return found


async def create_consumer(nc: NATS, stream: str, config: ConsumerConfig, wait: float = 5.0) -> ConsumerInfo:
    """Create a durable consumer on the subject that carries its filter, the only form the secured
    permissions allow (the server refuses a config whose filter is not the subject's, 10131). nats-py's
    add_consumer takes the legacy DURABLE.CREATE subject for a durable name alone. Action `create`:
    the same config again is a no-op, another config is refused (no silent repointing)."""
    name = config.name or config.durable_name
    if not name or not config.filter_subject or config.filter_subjects:
        raise ValueError("a consumer created this way needs a name and exactly one filter_subject")
    subject = consumer_create_subject(stream, name, config.filter_subject)
    body = {"stream_name": stream, "config": config.evolve(name=name).as_dict(), "action": "create"}
    return ConsumerInfo.from_response(await api_request(nc, subject, body, wait))


async def direct_get(nc: NATS, stream: str, request: dict[str, object], wait: float) -> Msg | None:
    """One message of `stream` by a direct get (`{"seq": n}` or `{"last_by_subj": s}`); None if
    there is none, or no such stream."""
    try:
        reply = await nc.request(direct_get_subject(stream), json.dumps(request).encode(), wait)
    except NoRespondersError:  # no such stream (a deployment provisioned before it existed)
        return None
    status = status_of(reply)
    if status is None:
        return reply
    if status == NO_MESSAGES:
        return None
    raise RuntimeError(f"direct get from {stream}: {status} {(reply.headers or {}).get('Description')}")


@dataclass(slots=True)
class Batch:
    messages: list[Msg]
    done: "asyncio.Future[None]"
    pending: int = 0
    "How many more messages match after these."


class BatchedDirectGet:
    """Batched direct gets (server 2.11+): the messages on a subject from a sequence, in one round
    trip, answered by several messages and an end marker. Over one wildcard subscription for the
    whole connection: no subscribe/unsubscribe per request and no wait per message."""

    def __init__(self, nc: NATS, batch: int = 512) -> None:
        self.nc = nc
        self.batch = batch
        self._prefix = ""
        self._open: dict[str, Batch] = {}
        self._subscribing = asyncio.Lock()
        self._count = 0

    async def all_on(self, stream: str, subject: str, start: int, wait: float) -> list[Msg]:
        """Every message on `subject` from sequence `start`."""
        found: list[Msg] = []
        while True:
            request = {"seq": start, "next_by_subj": subject, "batch": self.batch}
            page = await self.ask(direct_get_subject(stream), json.dumps(request).encode(), wait)
            found.extend(page.messages)
            if not page.messages or page.pending == 0:
                return found
            start = stored_sequence(page.messages[-1]) + 1

    async def ask(self, subject: str, payload: bytes, wait: float) -> Batch:
        if not self._prefix:
            async with self._subscribing:
                if not self._prefix:
                    prefix = self.nc.new_inbox()
                    await self.nc.subscribe(f"{prefix}.*", cb=self._on_reply)
                    self._prefix = prefix
        self._count += 1
        token = str(self._count)
        page = Batch([], asyncio.get_running_loop().create_future())
        self._open[token] = page
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}")
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the wait ends
            # (docs/decisions/0005-timeout-not-wait-for.md).
            async with asyncio.timeout(wait):
                await page.done
        finally:
            del self._open[token]
        return page

    async def _on_reply(self, msg: Msg) -> None:
        page = self._open.get(msg.subject.rpartition(".")[2])
        if page is None or page.done.done():
            return  # the asker gave up (timeout)
        status = status_of(msg)
        if status is None:
            page.messages.append(msg)
        elif status == END_OF_BATCH:
            page.pending = int((msg.headers or {}).get("Nats-Num-Pending", 0))
            page.done.set_result(None)
        elif status == NO_MESSAGES:
            page.done.set_result(None)
        else:
            page.done.set_exception(RuntimeError(f"direct get: {status} {(msg.headers or {}).get('Description')}"))


# -- pull requests ---------------------------------------------------------------------------------
class PullRequest:
    """The messages one pull request brings, delivered into a callback (no task or timer each)."""

    def __init__(self) -> None:
        self.messages: list[Msg] = []
        self.owed = 0
        self.failure = ""
        self.done = asyncio.Event()

    def begin(self, batch: int) -> None:
        self.messages, self.owed, self.failure = [], batch, ""
        self.done.clear()

    async def on_message(self, msg: Msg) -> None:
        status = status_of(msg)
        if status is None:
            self.messages.append(msg)
            self.owed -= 1
            if self.owed <= 0:
                self.done.set()
        elif status in (NO_MESSAGES, REQUEST_EXPIRED):  # nothing (more) before it expired
            self.done.set()
        elif status != HEARTBEAT:  # 409: a leadership change, the consumer gone, ...
            self.failure = f"{status} {(msg.headers or {}).get('Description')}"
            self.done.set()


# -- atomic batch publish (server 2.12+) ----------------------------------------------------------
Message = tuple[str, bytes, dict[str, str]]


async def publish_batch(nc: NATS, messages: list[Message], wait: float) -> dict[str, object]:
    """Store the messages all together or not at all, with one fsync and one PubAck: headers
    `Nats-Batch-Id`, `Nats-Batch-Sequence` from 1, `Nats-Batch-Commit: 1` on the last message, which
    alone is sent as a request. The server's answer: {"seq": last sequence, "count": n, ...} or
    {"error": {...}}. Raises nats.errors.TimeoutError when no answer came (outcome unknown)."""
    batch_id = new_batch_id()
    for number, (_subject, _payload, headers) in enumerate(messages, 1):
        headers["Nats-Batch-Id"] = batch_id
        headers["Nats-Batch-Sequence"] = str(number)
    await publish_unchecked(nc, messages[:-1])
    subject, payload, headers = messages[-1]
    headers["Nats-Batch-Commit"] = "1"
    reply = await nc.request(subject, payload, timeout=wait, headers=headers)
    return json.loads(reply.data)


def new_batch_id() -> str:
    """Stored with every message of the batch and parsed by every reader: 64 random bits are unique
    enough among the few batches in flight at once."""
    return os.urandom(8).hex()


def first_sequence(ack: dict[str, object], size: int) -> int:
    """The stream sequence of a stored batch's first message (the PubAck names the last)."""
    return int(ack["seq"]) - int(ack.get("count", size)) + 1  # type: ignore[call-overload]


def named_sequence(description: str) -> int:
    """The N of the server's "wrong last sequence: N" (0 when it names none)."""
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else 0


def hpub_frame(subject: str, payload: bytes, headers: dict[str, str]) -> bytes:
    """The protocol frame nats-py's publish sends for these headers, without a reply subject."""
    block = "".join(["NATS/1.0\r\n", *[f"{key}: {value}\r\n" for key, value in headers.items()], "\r\n"]).encode()
    return b"".join([f"HPUB {subject}  {len(block)} {len(block) + len(payload)}\r\n".encode(), block, payload, b"\r\n"])


async def publish_unchecked(nc: NATS, messages: list[Message]) -> None:
    """nc.publish of each message in one write, without nats-py's check of each header (most of a
    batch message's cost in the writer: docs/decisions/0003-group-commit.md). Our headers are
    constant names with values that cannot hold a line break. Anything out of the ordinary (not
    connected, draining, too large) goes through nc.publish, which buffers or raises as it should."""
    if not messages:
        return  # a batch of one: its only message is the commit, sent as a request
    if not nc.is_connected or nc.is_draining_pubs or any(len(m[1]) > nc.max_payload for m in messages):
        for subject, payload, headers in messages:
            await nc.publish(subject, payload, headers=headers)
        return
    nc.stats["out_msgs"] += len(messages)
    nc.stats["out_bytes"] += sum(len(m[1]) for m in messages)
    await nc._send_command(b"".join([hpub_frame(*message) for message in messages]))
    if nc._flush_queue is not None and nc._flush_queue.empty():
        await nc._flush_pending()
