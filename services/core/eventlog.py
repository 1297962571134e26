"""The JetStream event log: append with per-child optimistic concurrency, read one child's history.

Every append is awaited until JetStream acknowledges it, carries `Nats-Msg-Id` = event id, and
expects the child's last sequence (over all of the child's subjects). Lifecycle rules are checked
against the state folded from exactly that sequence, so an illegal event is never stored and a
concurrent writer is detected instead of overwritten.
"""

import asyncio
import json
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import msgspec
import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError

from refbus.contracts import codec, pages, subjects
from refbus.contracts.events import AnyEvent, Event, event_type
from refbus.contracts.pages import PagedEvent
from refbus.services.core.batches import Message, first_sequence, publish_batch
from refbus.services.referral import lifecycle
from refbus.services.referral.state import ChildState, apply

log = structlog.get_logger(__name__)
_T = TypeVar("_T")

WRONG_LAST_SEQUENCE = (10071, 10164)  # the server's "wrong last sequence" error codes
STREAM_FULL = (10077, 10078)  # "maximum bytes exceeded", "maximum messages exceeded"
HISTORY_PAGE = 512
INDEX_PATIENCE = 0.5
REPLAY_STALL_S = 1.0  # a replay that hears nothing this long reads again from where it is
_STREAM_INFO = f"$JS.API.STREAM.INFO.{subjects.STREAM}"


class ConcurrencyConflict(Exception):
    """Another write reached the child first; re-read its history and decide again."""

    def __init__(self, child: str, expected: int, detail: str, actual: int = 0) -> None:
        super().__init__(f"child {child}: expected last sequence {expected}, server says {detail}")
        self.child = child
        self.expected = expected
        self.actual = actual
        "The child's last sequence when the server names it (0 when unknown): the re-read waits for it."


def _named_sequence(description: str) -> int:
    """The N of the server's "wrong last sequence: N"."""
    tail = description.rsplit(":", 1)[-1].strip()
    return int(tail) if tail.isdigit() else 0


class LogFull(Exception):
    """The stream is at its configured limit and refuses new events (discard=new): nothing was
    stored, nothing old was dropped. An operator must raise the limit."""


class IndexBehind(Exception):
    """Neither the child index nor the log (as a replica answered) shows yet an event the caller
    knows is stored."""


class StoredEvent(msgspec.Struct, frozen=True, gc=False):
    """An event as the log holds it. (A Struct, not a dataclass: a replay makes a million of them,
    and a frozen dataclass costs eight times as much to make and is tracked by the collector.)"""

    seq: int
    "Sequence in REFBUS: the log's total order."
    stored_at: datetime
    event: AnyEvent | None
    error: str | None = None
    "Why the stored bytes could not be decoded (written by a foreign or broken publisher)."


_ids_encoder = msgspec.json.Encoder()


def headers_for(event: Event, expected_last_seq: int | None) -> dict[str, str]:
    """The headers of an append. `expected_last_seq=None` omits the per-child check: only for an
    event riding in an atomic batch behind an earlier event of the same child that carries it."""
    # Both ids in their canonical form from one call into msgspec: str(UUID) is Python code,
    # 0.9 µs each, and the batch writer spends its time per event.
    ids = _ids_encoder.encode((event.event_id, event.correlation_id))  # b'["<36 chars>","<36 chars>"]'
    headers = {
        "Nats-Msg-Id": ids[2:38].decode(),
        # What operators may see without reading the payload (no personal data in headers). The
        # schema version stays in the payload alone: every header costs nats-py ~2 µs per message,
        # on every write and every read.
        "Refbus-Event-Type": event_type(event),
        "Refbus-Correlation-Id": ids[41:77].decode(),
    }
    if expected_last_seq is not None:
        headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_seq)
        headers["Nats-Expected-Last-Subject-Sequence-Subject"] = subjects.child_filter(event.child)
    return headers


Decide = Callable[[ChildState], Sequence[Event]]
MAX_BATCH = 500
# An atomic batch is staged on disk by the server before its commit (a directory and a store per
# batch): worth it for many events, not for a few, which go as separate publishes, all in flight at
# once (each a different child, each with its own check; atomicity is only needed within a child).
ATOMIC_FROM = 8
DUPLICATE_IN_BATCH = 10201


@dataclass(slots=True)
class _Pending:
    child: str
    expected: int
    message: Message
    done: "asyncio.Future[int]"


def _refusal(pending: _Pending, code: object, detail: str, alone: bool) -> BaseException:
    if code in STREAM_FULL:
        return LogFull(detail)
    if code in WRONG_LAST_SEQUENCE or code == DUPLICATE_IN_BATCH:
        # Refused with its batch, the sequence the server names is the culprit's, not this child's.
        actual = _named_sequence(detail) if alone else 0
        return ConcurrencyConflict(pending.child, pending.expected, detail, actual)
    return RuntimeError(f"append refused ({code}): {detail}")


@dataclass(frozen=True, slots=True)
class Transacted:
    stored: list[int]
    "Sequences of the events this call stored."
    state: ChildState
    "The child after them: current as far as this writer knows."


class EventLog:
    def __init__(self, nc: NATS, js: JetStreamContext | None = None, timeout: float = 5.0) -> None:
        self.nc = nc
        self.js = js or nc.jetstream(timeout=timeout)
        self.timeout = timeout
        self._replies = _MultiReplies(nc)
        self._queue: deque[_Pending] = deque()
        self._flusher: asyncio.Task[None] | None = None

    # -- writing ------------------------------------------------------------------------------

    async def append(self, event: Event, expected_last_seq: int) -> int:
        """Store one event if the child's last sequence is still `expected_last_seq`.

        No lifecycle check here: use `record` or `transact`, which check against the state at
        exactly that sequence. Returns the event's stream sequence.

        Group commit: appends made while a publish is in flight wait and go together as one atomic
        batch (one fsync, one PubAck), at most one per child. If the server refuses the batch (one
        stale child, a duplicate id), every append in it gets ConcurrencyConflict and its caller
        re-reads and decides again, as after a refusal of its own.
        """
        subject = subjects.event_subject(event.child, event.from_sector, event.to_sector)
        pending = _Pending(
            event.child,
            expected_last_seq,
            (subject, codec.encode(event), headers_for(event, expected_last_seq)),
            asyncio.get_running_loop().create_future(),
        )
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        return await pending.done

    async def _flush(self) -> None:
        while self._queue:
            batch: list[_Pending] = []
            later: list[_Pending] = []
            children: set[str] = set()
            while self._queue and len(batch) < MAX_BATCH:
                pending = self._queue.popleft()
                (later if pending.child in children else batch).append(pending)
                children.add(pending.child)
            self._queue.extendleft(reversed(later))
            try:
                if len(batch) < ATOMIC_FROM:
                    # Each its own outcome: one timing out says nothing of the others.
                    outcome: list[int | BaseException] = list(
                        await asyncio.gather(*(self._publish_one(p) for p in batch), return_exceptions=True)
                    )
                else:
                    outcome = await self._publish_many(batch)
            except Exception as exc:  # no answer (timeout, connection): the outcome is unknown
                outcome = [exc] * len(batch)
            for pending, result in zip(batch, outcome, strict=True):
                if pending.done.done():
                    continue
                if isinstance(result, BaseException):
                    pending.done.set_exception(result)
                else:
                    pending.done.set_result(result)

    async def _publish_one(self, pending: _Pending) -> int | BaseException:
        subject, payload, headers = pending.message
        try:
            ack = await self.js.publish(subject, payload, timeout=self.timeout, headers=headers)
        except APIError as exc:
            return _refusal(pending, exc.err_code, exc.description or "", alone=True)
        return ack.seq

    async def _publish_many(self, batch: list[_Pending]) -> list[int | BaseException]:
        ack = await publish_batch(self.nc, [p.message for p in batch], self.timeout)
        error = ack.get("error")
        if isinstance(error, dict):
            detail = f"batch of {len(batch)} refused: {error.get('description', '')}"
            return [_refusal(p, error.get("err_code"), detail, alone=False) for p in batch]
        first = first_sequence(ack, len(batch))
        return [first + offset for offset in range(len(batch))]

    async def transact(
        self, child: str, decide: Decide, *, min_seq: int = 0, state: ChildState | None = None, attempts: int = 10
    ) -> "Transacted":
        """Let `decide` turn the child's current state into new events, check and append them; on a
        conflict, re-read the child and decide again. Events already in the log are skipped
        (idempotent retries). `state`: the caller's current view of the child, used for the first
        attempt instead of a read (a stale one only costs a conflict and a re-read). `min_seq`: a
        sequence of this child known to be stored (the message being handled)."""
        for attempt in range(attempts):
            if state is None:
                # Read-your-writes even with a known sequence to wait for: without asking the leader,
                # recovery from a stream-leader failover broke (the cluster test).
                state = await self.load(child, min_seq=min_seq)
            stored: list[int] = []
            try:
                for event in decide(state):
                    if lifecycle.is_duplicate(state, event):
                        continue
                    lifecycle.check(state, event)
                    seq = await self.append(event, state.last_seq)
                    apply(state, event, seq)
                    stored.append(seq)
                return Transacted(stored, state)
            except ConcurrencyConflict as conflict:
                # Appends made before the conflict are stored, legal, and will be in the re-read.
                log.info("append_conflict", child=child, attempt=attempt, expected=conflict.expected)
                min_seq = max(min_seq, conflict.actual)
                state = None
                await asyncio.sleep(min(0.5, 0.002 * 2**attempt))
        raise ConcurrencyConflict(child, -1, f"still conflicting after {attempts} attempts")

    async def record(self, event: Event) -> int | None:
        """Check and store one event. Returns its sequence, or None if it was already stored."""
        stored = (await self.transact(event.child, lambda _state: [event])).stored
        return stored[0] if stored else None

    # -- reading ------------------------------------------------------------------------------

    async def event_count(self, child: str) -> int:
        """How many events the child has in REFBUS, counting every acknowledged write. Asked of the
        stream leader (a direct get might lag on a replica), from the stream's subject index: no
        message is read, so no message block is loaded. Reading the child's newest event instead
        loads its block when the server no longer holds it, ~11 ms for an 8 MB block of the log."""
        request = json.dumps({"subjects_filter": subjects.child_filter(child)}).encode()
        reply = json.loads((await self.nc.request(_STREAM_INFO, request, self.timeout)).data)
        error = reply.get("error")
        if error is not None:
            raise RuntimeError(f"event count of {child}: {error}")
        return sum((reply["state"].get("subjects") or {}).values())

    async def children(self) -> dict[str, int]:
        """Every child reference in the log, with its number of events (from the index's subject
        state, so no event is read). Paged: the server lists at most 100,000 subjects per answer."""
        found: dict[str, int] = {}
        prefix = subjects.child_index_subject("")
        while True:
            request = {"subjects_filter": subjects.child_index_subject("*"), "offset": len(found)}
            reply = await self.nc.request(
                f"$JS.API.STREAM.INFO.{subjects.CHILD_INDEX_STREAM}", json.dumps(request).encode(), self.timeout
            )
            info = json.loads(reply.data)
            page = (info.get("state") or {}).get("subjects") or {}
            found.update({subject.removeprefix(prefix): count for subject, count in page.items()})
            if not page or len(found) >= info.get("total", 0):
                return found

    async def index_missing(self, upto_seq: int, wait: float = 5.0) -> int:
        """How many events up to `upto_seq` the child index lacks (0 when it is complete), after
        giving it `wait` seconds to catch up."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            log_info = await self.js.stream_info(subjects.STREAM)
            index_info = await self.js.stream_info(subjects.CHILD_INDEX_STREAM)
            missing = max(0, min(upto_seq, log_info.state.messages) - index_info.state.messages)
            if missing == 0 or asyncio.get_running_loop().time() > deadline:
                return missing
            await asyncio.sleep(0.1)

    async def replay(
        self, from_seq: int = 1, chunk: int = 512, client_buffer: int = 200_000
    ) -> AsyncIterator[StoredEvent]:
        """Every event of the log in order, from `from_seq` to the end as it is now. An ordered
        consumer with a callback (several times faster than iterating a subscription) hands raw
        messages over in chunks, decoded on this side; a bounded queue keeps a slow reader from
        piling them up. When the reader is slower than the log, nats-py drops what overflows its
        buffer after counting it as delivered, so the ordered consumer does not notice: a jump
        in sequence numbers is checked against the log, and the consumer made again from the
        first missing event if the log has it."""
        end = (await self.js.stream_info(subjects.STREAM)).state.last_seq
        if end < from_seq:
            return
        chunks: asyncio.Queue[tuple[int, list[tuple[int, int, bytes]]]] = asyncio.Queue(maxsize=64)

        async def read_from(start: int, generation: int) -> Subscription:
            pending: list[tuple[int, int, bytes]] = []

            async def on_message(msg: Msg) -> None:
                seq, stored_ns = delivered_position(msg.reply)
                pending.append((seq, stored_ns, msg.data))
                if len(pending) >= chunk or seq >= end:
                    await chunks.put((generation, pending.copy()))
                    pending.clear()

            return await self.js.subscribe(
                subjects.LOG_SUBJECTS,
                cb=on_message,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                config=ConsumerConfig(opt_start_seq=start),
                pending_msgs_limit=client_buffer,
            )

        generation = 0
        sub = await read_from(from_seq, generation)
        expected = from_seq
        loop = asyncio.get_running_loop()
        heard = loop.time()
        try:
            while True:
                try:
                    async with asyncio.timeout(REPLAY_STALL_S):  # not wait_for: see _MultiReplies.ask
                        made_by, batch = await chunks.get()
                except TimeoutError:
                    if loop.time() - heard > self.timeout:
                        raise
                    batch = []  # the chunk with the end may have been dropped: read again from here
                else:
                    if made_by != generation:
                        continue  # from a consumer given up
                    heard = loop.time()
                for seq, stored_ns, data in batch:
                    if seq > expected and await self._exists(expected):
                        break  # dropped in the client: read again from there
                    yield _decoded(seq, datetime_from_ns(stored_ns), data)
                    expected = seq + 1
                else:
                    if expected > end:
                        return
                    if batch:
                        continue
                log.warning("replay_dropped_in_client", resumed_at=expected)
                await sub.unsubscribe()
                generation += 1
                sub = await read_from(expected, generation)
        finally:
            await sub.unsubscribe()

    async def _exists(self, seq: int) -> bool:
        return await self._direct_get(subjects.STREAM, {"seq": seq}) is not None

    async def load(self, child: str, *, min_seq: int = 0, fresh: bool = True) -> ChildState:
        """The child's state as of every acknowledged write (and at least `min_seq`). `fresh=False`
        skips the round trip that guarantees read-your-writes: for writers whose appends the
        server's sequence check protects anyway.

        Writers load children in the midst of live work: mostly short histories whose events sit in
        the index's newest blocks, so one round trip to the index beats asking for pages first
        (at 250 referrals/s, the manifest lookups cost the server 0.07-0.13 of a core)."""
        state = ChildState(child=child)
        for stored in await self.history(child, min_seq=min_seq, fresh=fresh, paged=False):
            if stored.event is not None:
                apply(state, stored.event, stored.seq)
            else:
                state.last_seq = stored.seq  # unreadable, but the next append must still expect it
        return state

    async def history(
        self,
        child: str,
        *,
        min_seq: int = 0,
        upto_seq: int | None = None,
        wait: float = 5.0,
        fresh: bool = True,
        paged: bool = True,
    ) -> list[StoredEvent]:
        """One child's events in log order, including every write acknowledged before the call
        (read-your-writes: the call asks the log how many events the child has and waits for them).

        From the child's history pages (contracts/pages.py) as far as they reach, the rest from the
        REFBUS_CHILDREN index (it lags the log by a fraction of a millisecond); `paged=False`: all
        from the index. `min_seq`: also wait for this sequence. `upto_seq`: stop there (a replay as
        of that point). If the index stays behind for INDEX_PATIENCE (it stops copying for seconds
        after a stream leader fails over), the rest is read from the log itself: a scan, slower,
        but current."""
        # Independent round trips, asked together.
        count, (from_pages, index_start) = await asyncio.gather(
            self.event_count(child) if fresh else _nothing(0),
            self.history_pages(child) if paged else _nothing(([], 1)),
        )

        def complete(found: list[StoredEvent]) -> bool:
            # The log only grows (deny_delete), so the child's first `count` events are all there is.
            return len(found) >= count and (not min_seq or (bool(found) and found[-1].seq >= min_seq))

        if fresh and from_pages and complete(from_pages):
            return _upto(from_pages, upto_seq)  # nothing newer in the log: no need to ask the index
        log_start = from_pages[-1].seq + 1 if from_pages else 1
        started = asyncio.get_running_loop().time()
        while True:
            waited = asyncio.get_running_loop().time() - started
            if waited < INDEX_PATIENCE:
                rest = await self._read(subjects.CHILD_INDEX_STREAM, subjects.child_index_subject(child), index_start)
            else:
                rest = await self._read(subjects.STREAM, subjects.child_filter(child), log_start)
            found = from_pages + rest
            if complete(found):
                return _upto(found, upto_seq)
            if waited > wait:
                wanted = f"{count} events" + (f" and sequence {min_seq}" if min_seq else "")
                raise IndexBehind(f"neither the child index nor the log has reached {wanted} for {child}")
            await asyncio.sleep(0.002)

    async def history_pages(self, child: str) -> tuple[list[StoredEvent], int]:
        """The child's events in its history pages, and where in the index the rest begins.
        The newest manifest names the pages; if a merge deletes one of them meanwhile, the newer
        manifest is read. Anything unexpected means no pages: the index alone is always right."""
        try:
            return await self._history_pages(child)
        except (NatsError, RuntimeError, TimeoutError) as exc:
            log.warning("history_pages_unavailable", child=child, error=repr(exc))
            return [], 1

    async def _history_pages(self, child: str) -> tuple[list[StoredEvent], int]:
        for _ in range(3):
            manifest = await self.read_page({"last_by_subj": subjects.page_subject(child)})
            if manifest is None:
                return [], 1
            page = pages.decode_page(manifest.data)
            earlier = await self.pages_at([seq for run in page.runs for seq in run])
            if earlier is None:
                continue
            events = pages.checked_events(child, [*earlier, (_subject_of(manifest), page)], sum(page.run_events))
            if events is None:
                log.warning("history_pages_inconsistent", child=child)
                return [], 1
            return [_decoded(seq, datetime_from_ns(ns), data) for seq, ns, data in events], page.covered_index_seq + 1
        return [], 1

    async def read_page(self, request: dict[str, object]) -> Msg | None:
        """One message of REFBUS_PAGES by a direct get (`{"seq": n}` or `{"last_by_subj": s}`);
        None if there is none."""
        try:
            return await self._direct_get(subjects.PAGES_STREAM, request)
        except NoRespondersError:  # no REFBUS_PAGES (a deployment provisioned before it existed)
            return None

    async def _direct_get(self, stream: str, request: dict[str, object]) -> Msg | None:
        """One message of `stream` by a direct get; None if there is none."""
        reply = await self.nc.request(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), self.timeout)
        status = (reply.headers or {}).get("Status")
        if status is None:
            return reply
        if status == "404":
            return None
        raise RuntimeError(f"direct get from {stream}: {status} {(reply.headers or {}).get('Description')}")

    async def pages_at(self, seqs: list[int]) -> list[tuple[str, pages.HistoryPage]] | None:
        """The pages at these sequences, each with its subject (whose child it is), all asked at
        once; None if one of them is gone."""
        found = await asyncio.gather(*(self.read_page({"seq": seq}) for seq in seqs))
        if any(msg is None for msg in found):
            return None
        return [(_subject_of(msg), pages.decode_page(msg.data)) for msg in found]  # type: ignore[arg-type]

    async def indexed_events(self, child: str, before_index_seq: int) -> list[PagedEvent]:
        """The child's events in the index before `before_index_seq`, as stored (for the pager)."""
        messages = await self._all_on(subjects.CHILD_INDEX_STREAM, subjects.child_index_subject(child))
        return [
            (int(headers["Nats-Stream-Source"].split()[1]), nats_time_ns(headers["Nats-Time-Stamp"]), msg.data)
            for msg in messages
            if int((headers := msg.headers or {})["Nats-Sequence"]) < before_index_seq
        ]

    async def _read(self, stream: str, subject: str, start: int = 1) -> list[StoredEvent]:
        return [_stored(msg.data, msg.headers or {}) for msg in await self._all_on(stream, subject, start)]

    async def _all_on(self, stream: str, subject: str, start: int = 1) -> list[Msg]:
        """Every message on `subject` from `start`, a batched direct get at a time."""
        found: list[Msg] = []
        while True:
            messages, pending = await self._direct_get_batch(stream, subject, start)
            found.extend(messages)
            if not messages or pending == 0:
                return found
            start = int(messages[-1].headers["Nats-Sequence"]) + 1  # type: ignore[index]

    async def _direct_get_batch(self, stream: str, subject: str, start: int) -> tuple[list[Msg], int]:
        """One batched direct get (server 2.11+): messages on `subject` from `start`, in one round
        trip. nats-py has no helper for it, so this speaks the JetStream API by hand.
        Returns the messages and how many more match."""
        request = {"seq": start, "next_by_subj": subject, "batch": HISTORY_PAGE}
        page = await self._replies.ask(f"$JS.API.DIRECT.GET.{stream}", json.dumps(request).encode(), self.timeout)
        return page.messages, page.pending


async def _nothing(value: _T) -> _T:
    return value


def _subject_of(reply: Msg) -> str:
    return (reply.headers or {}).get("Nats-Subject", "")


def _upto(found: list[StoredEvent], upto_seq: int | None) -> list[StoredEvent]:
    return found if upto_seq is None else [e for e in found if e.seq <= upto_seq]


@dataclass(slots=True)
class _Page:
    messages: list[Msg]
    done: "asyncio.Future[None]"
    pending: int = 0


class _MultiReplies:
    """Requests answered by several messages and an end marker (a batched direct get), over one
    wildcard subscription for the whole connection: no subscribe/unsubscribe per request and no
    wait per message."""

    def __init__(self, nc: NATS) -> None:
        self.nc = nc
        self._prefix = ""
        self._open: dict[str, _Page] = {}
        self._subscribing = asyncio.Lock()
        self._count = 0

    async def ask(self, subject: str, payload: bytes, wait: float) -> _Page:
        if not self._prefix:
            async with self._subscribing:
                if not self._prefix:
                    prefix = self.nc.new_inbox()
                    await self.nc.subscribe(f"{prefix}.*", cb=self._on_reply)
                    self._prefix = prefix
        self._count += 1
        token = str(self._count)
        page = _Page([], asyncio.get_running_loop().create_future())
        self._open[token] = page
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}")
            # Not asyncio.wait_for: on Python 3.11 it swallows a cancel that comes as the wait ends,
            # and the cancelled caller goes on (a stopping pager read on and never stopped).
            async with asyncio.timeout(wait):
                await page.done
        finally:
            del self._open[token]
        return page

    async def _on_reply(self, msg: Msg) -> None:
        page = self._open.get(msg.subject.rpartition(".")[2])
        if page is None or page.done.done():
            return  # the asker gave up (timeout)
        headers = msg.headers or {}
        status = headers.get("Status")
        if status is None:
            page.messages.append(msg)
        elif status == "204":  # end of batch
            page.pending = int(headers.get("Nats-Num-Pending", 0))
            page.done.set_result(None)
        elif status == "404":  # nothing (more) on the subject
            page.done.set_result(None)
        else:
            page.done.set_exception(RuntimeError(f"direct get: {status} {headers.get('Description')}"))


def delivered_position(reply: str) -> tuple[int, int]:
    """The stream sequence and storage time (ns) of a consumer's message, from its ack subject:
    `$JS.ACK.<stream>.<consumer>.<delivered>.<stream seq>.<consumer seq>.<ns>.<pending>`, or with
    `<domain>.<account hash>` after `$JS.ACK` and a random token at the end (ADR-15). nats-py's
    `metadata` builds several objects per message for the same two numbers."""
    tokens = reply.split(".")
    at = 5 if len(tokens) == 9 else 7
    return int(tokens[at]), int(tokens[at + 2])


def _stored(data: bytes, headers: dict[str, str]) -> StoredEvent:
    # From the index, a sourced stream, "Nats-Stream-Source: REFBUS <origin seq> ..." gives the
    # event's sequence in the log itself, which is what concurrency checks and replays speak.
    source = headers.get("Nats-Stream-Source")
    seq = int(source.split()[1] if source else headers["Nats-Sequence"])
    return _decoded(seq, parse_nats_time(headers["Nats-Time-Stamp"]), data)


def _decoded(seq: int, stored_at: datetime, data: bytes) -> StoredEvent:
    try:
        return StoredEvent(seq, stored_at, codec.decode(data))
    except codec.UndecodableEvent as exc:
        return StoredEvent(seq, stored_at, None, exc.reason)


def datetime_from_ns(ns: int) -> datetime:
    """Nanoseconds since the epoch, cut (not rounded) to Python's microseconds, like parse_nats_time.
    (Whole microseconds as a float are within 0.12 µs of exact until 2262, so nothing rounds.)"""
    return datetime.fromtimestamp(ns // 1000 / 1e6, UTC)


def nats_time_ns(text: str) -> int:
    """JetStream's RFC 3339 time as nanoseconds since the epoch, cut to microseconds like every
    time refbus reads (so datetime_from_ns gives back parse_nats_time's)."""
    return (parse_nats_time(text) - _EPOCH) // _MICROSECOND * 1000


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def parse_nats_time(text: str) -> datetime:
    """JetStream's RFC 3339 time with nanoseconds, cut to Python's microseconds."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{whole}.{(fraction or '0')[:6]:0<6}+00:00")
