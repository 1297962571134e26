"""The history pager: keeps REFBUS_PAGES, one child's events many to a message, up to date, so
that a history is a manifest, a handful of pages and a short recent tail instead of one message per
event (why, with measurements: docs/decisions/0004-history-pages.md).

How: a consumer of its own reads the index from the last checkpoint, a batch at a time. A child's
new events wait in memory for up to `flush_after` seconds (or until PAGE_EVENTS of them), then are
written as a run of pages; a new run absorbs the runs before it that are no bigger than it (and any
beyond MAX_RUNS, and all of a history of up to WHOLE_HISTORY_EVENTS): O(log n) runs, each event
rewritten O(log n) times. A run's last page is the child's manifest; the pages it supersedes are
deleted once it is acknowledged.

Correctness never depends on the pager: a reader takes what the newest manifest names, checked, and
the rest from the index; a pager behind or stopped makes reads slower, never wrong. One per bus.
"""

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field

import structlog
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from refbus.contracts import subjects
from refbus.contracts.pages import (
    HistoryPage,
    PagedEvent,
    PagerCheckpoint,
    UnreadablePage,
    checked_events,
    decode_checkpoint,
    decode_page,
    encode_checkpoint,
    encode_page,
)
from refbus.services.eventstore import jetstream
from refbus.services.eventstore.reader import LogReader

log = structlog.get_logger(__name__)

# How long a child's new events may wait for their page: longer gives fewer, fuller pages.
FLUSH_AFTER_S = 5.0
PAGE_EVENTS = 512
PAGE_BYTES = 256 * 1024  # well under max_payload (1 MB)
MAX_RUNS = 8
# A history this short is kept whole in its manifest: one block to load on a first read
# (docs/decisions/0004-history-pages.md); bounded, so that rewriting it at each flush stays cheap.
WHOLE_HISTORY_EVENTS = 64
FLUSHING_AT_ONCE = 32
TICK_S = 0.25
FETCH_BATCH = 1000
FETCH_WAIT_S = 0.1
LOOK_UPS_AT_ONCE = 64
_CHILD_PREFIX = subjects.child_index_subject("")


@dataclass(slots=True)
class _Run:
    seqs: list[int]
    "Its pages in REFBUS_PAGES, the last one a manifest."
    events: int


@dataclass(slots=True)
class _Child:
    runs: list[_Run] = field(default_factory=list)
    covered_index_seq: int = 0
    pending: list[PagedEvent] = field(default_factory=list)
    pending_from: int = 0
    "Index sequence of the first pending event (0: none pending); holds the checkpoint back."
    pending_to: int = 0
    pending_since: float = 0.0
    in_flight_from: int = 0
    "Index sequence of the first event of a flush under way (0: none)."
    trusted: bool = True
    "False after a server disruption: the runs in memory may name pages the server lost."
    rebuild: bool = False
    "Its pages are unreadable: the next flush writes them again from the index."


class HistoryPager:
    def __init__(self, nc: NATS, flush_after: float = FLUSH_AFTER_S, timeout: float = 10.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.flush_after = flush_after
        self.timeout = timeout
        self.reader = LogReader(nc, timeout=timeout)
        self.children: dict[str, _Child] = {}
        self._dirty: dict[str, _Child] = {}
        self._resumed = False
        self._last_seen = 0
        self._checkpoint = 0
        self._checkpoint_seq = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._flushing = asyncio.Semaphore(FLUSHING_AT_ONCE)
        self._looking_up = asyncio.Semaphore(LOOK_UPS_AT_ONCE)
        self.pages_written = 0

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        """Resume after the last checkpoint. Children paged before it are looked up on first sight."""
        found = await self.reader.read_page({"last_by_subj": subjects.PAGER_CHECKPOINT})
        if found is not None:
            try:
                self._checkpoint = decode_checkpoint(found.data).index_seq
            except UnreadablePage as exc:  # page everything again: slower, never wrong
                log.warning("pager_checkpoint_unreadable", error=str(exc))
            self._checkpoint_seq = jetstream.stored_sequence(found)
        # Without a checkpoint no page needs extending: a pager that died before its first
        # checkpoint left manifests that stay right until the new ones supersede them.
        self._resumed = found is not None
        self._last_seen = self._checkpoint
        self._tasks = [asyncio.create_task(self._read_loop()), asyncio.create_task(self._flush_loop())]
        log.info("pager_started", resumed_after=self._checkpoint, flush_after_s=self.flush_after)

    async def stop(self) -> None:
        """Stop reading, page what is pending, checkpoint."""
        # A flag as well as the cancel: nats-py awaits its replies with asyncio.wait_for, which on
        # Python 3.11 loses a cancel that comes with the reply, and the loop that asked went on
        # (a bench run waited for the pager's exit for good, its flush loop still ticking).
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for child in self._dirty.values():
            child.in_flight_from = 0  # none is: a flush cancelled before it began left its mark
        try:
            await self._flush_due(force=True)
            await self._write_checkpoint()
        except Exception:  # the server gone: what was held is read again from the last checkpoint
            log.warning("pager_stopped_without_flushing", exc_info=True)
        log.info("pager_stopped", checkpoint=self._checkpoint, pages_written=self.pages_written)

    @property
    def checkpoint(self) -> int:
        return self._checkpoint

    # -- taking events in ------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        """Read the index in order through a consumer of our own (no acks), one pull request of up
        to FETCH_BATCH messages at a time, the next one asked for when this batch is sorted: the
        pager never holds more than a batch it has not sorted. (An ordered push consumer outruns a
        slow pager, and nats-py drops what overflows its buffer after counting it as delivered, so
        events went missing without a sign; nats-py's fetch costs a task and a timer per message.)
        The index is never deleted from, so its sequences are contiguous: a gap is a lost delivery,
        and the consumer is made again from the last event sorted, as after any error."""
        while not self._stopping:
            consumer = ""
            try:
                consumer = self.nc.new_inbox().rpartition(".")[2]
                await self.js.add_consumer(
                    subjects.CHILD_INDEX_STREAM,
                    ConsumerConfig(
                        name=consumer,
                        filter_subject=subjects.CHILD_INDEX_SUBJECTS,
                        ack_policy=AckPolicy.NONE,
                        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                        opt_start_seq=self._last_seen + 1,
                        inactive_threshold=60.0,
                        mem_storage=True,
                    ),
                )
                reply = self.nc.new_inbox()
                pull = jetstream.PullRequest()
                subscription = await self.nc.subscribe(reply, cb=pull.on_message)
                # Each request gathers what comes within FETCH_WAIT_S: ten requests a second when
                # quiet, one per FETCH_BATCH events under load.
                request = json.dumps({"batch": FETCH_BATCH, "expires": int(FETCH_WAIT_S * 1e9)}).encode()
                try:
                    while not self._stopping:
                        pull.begin(FETCH_BATCH)
                        await self.nc.publish(
                            jetstream.next_message_subject(subjects.CHILD_INDEX_STREAM, consumer), request, reply=reply
                        )
                        try:
                            # Not asyncio.wait_for: docs/decisions/0005-timeout-not-wait-for.md.
                            async with asyncio.timeout(FETCH_WAIT_S + self.timeout):
                                await pull.done.wait()
                        except asyncio.CancelledError:
                            await self._sort(pull.messages)  # stopping: what came is paged on the way out
                            raise
                        if not await self._sort(pull.messages):
                            log.warning("pager_delivery_gap", after=self._last_seen)
                            break
                        if pull.failure:
                            raise RuntimeError(f"pull request ended: {pull.failure}")
                finally:
                    await subscription.unsubscribe()
            except asyncio.CancelledError:
                raise
            except Exception:  # the server away for a moment: start again from the last event sorted
                log.warning("pager_read_failed", after=self._last_seen, exc_info=True)
                # If it restarted, it may have lost its last unsynced writes (REFBUS_PAGES persists
                # asynchronously), pages included, and may give their sequences to new pages.
                for child in self.children.values():
                    child.trusted = False
                await asyncio.sleep(1.0)
            finally:
                if consumer:
                    with contextlib.suppress(Exception):
                        await self.js.delete_consumer(subjects.CHILD_INDEX_STREAM, consumer)

    async def _sort(self, batch: list[Msg]) -> bool:
        """Hand each event of the batch to its child; False at a gap (the rest is read again)."""
        if self._resumed:
            await self._look_up_all({msg.subject.removeprefix(_CHILD_PREFIX) for msg in batch})
        now = time.monotonic()
        for msg in batch:
            index_seq, stored_ns = jetstream.delivered_position(msg.reply)
            if index_seq != self._last_seen + 1:
                return False
            self._last_seen = index_seq
            name = msg.subject.removeprefix(_CHILD_PREFIX)
            child = self.children.get(name)
            if child is None:
                child = self.children[name] = _Child()
            if index_seq <= child.covered_index_seq:
                continue  # paged before a restart
            if not child.pending:
                child.pending_from, child.pending_since = index_seq, now
                self._dirty[name] = child
            log_seq = jetstream.source_sequence(msg.headers or {}) or 0
            child.pending.append((log_seq, stored_ns, msg.data))
            child.pending_to = index_seq
        return True

    async def _look_up_all(self, names: set[str]) -> None:
        unknown = names - self.children.keys()
        while unknown:
            try:
                await asyncio.gather(*(self._look_up(name) for name in unknown))
            except Exception:  # the server away for a moment: ask again, in order, before going on
                log.warning("pager_look_up_failed", exc_info=True)
                await asyncio.sleep(1.0)
            unknown -= self.children.keys()

    async def _look_up(self, name: str) -> None:
        """A child's runs as its newest manifest names them (after a restart)."""
        async with self._looking_up:
            found = await self.reader.read_page({"last_by_subj": subjects.page_subject(name)})
        child = _Child()
        if found is not None:
            try:
                manifest = decode_page(found.data)
                if not manifest.runs:  # a manifest ends a run: none named is no manifest of ours
                    raise UnreadablePage("manifest names no run")
            except UnreadablePage as exc:
                log.warning("pager_manifest_unreadable", child=name, error=str(exc), rebuilt_from="index")
                child.rebuild = True
            else:
                child.runs = [_Run(list(seqs), n) for seqs, n in zip(manifest.runs, manifest.run_events, strict=True)]
                child.runs[-1].seqs.append(jetstream.stored_sequence(found))
                child.covered_index_seq = manifest.covered_index_seq
        self.children.setdefault(name, child)

    # -- writing pages ---------------------------------------------------------------------------

    async def _flush_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(TICK_S)
            try:
                await self._flush_due()
                await self._write_checkpoint()
            except Exception:  # the server away for a moment: the next tick tries again
                log.warning("pager_flush_failed", exc_info=True)

    async def _flush_due(self, force: bool = False) -> None:
        now = time.monotonic()
        due = [
            (name, child)
            for name, child in self._dirty.items()
            if child.pending
            and not child.in_flight_from
            and (force or now - child.pending_since >= self.flush_after or len(child.pending) >= PAGE_EVENTS)
        ]
        for _, child in due:
            child.in_flight_from = child.pending_from  # one flush per child at a time, from now
        await asyncio.gather(*(self._flush(name, child) for name, child in due))

    async def _flush(self, name: str, child: _Child) -> None:
        async with self._flushing:
            events, first, last, since = child.pending, child.pending_from, child.pending_to, child.pending_since
            child.pending, child.pending_from = [], 0
            try:
                kept, absorbed = list(child.runs), []
                total = len(events)
                # A child not trusted since a server disruption has all its pages read back
                # (and checked) once, merged into one run.
                while kept and (
                    kept[-1].events <= total
                    or total + kept[-1].events <= WHOLE_HISTORY_EVENTS
                    or len(kept) >= MAX_RUNS
                    or not child.trusted
                ):
                    run = kept.pop()
                    absorbed.insert(0, run)
                    total += run.events
                older = None if child.rebuild else await self._events_of(name, absorbed, events[0][0])
                if older is None:
                    # A page is gone or not as written (a server that lost its last unsynced writes
                    # may reuse their sequences): the child starts over from the index.
                    log.warning("pager_pages_not_as_written", child=name, rebuilt_from="index")
                    absorbed, kept = [*kept, *absorbed], []
                    older = await self.reader.indexed_events(name, before_index_seq=first)
                merged = older + events
                seqs = await self._write_run(name, merged, kept, last)
            except BaseException:  # also when cancelled: the events stay pending, the checkpoint held
                child.pending = events + child.pending  # tried again on a later tick
                child.pending_from, child.pending_since = first, since
                raise
            finally:
                child.in_flight_from = 0
                if not child.pending:
                    self._dirty.pop(name, None)
            # The manifest is acknowledged: from here the events are paged, whatever happens to
            # the deletes (a stop during them once put the events back to pending, and the
            # pager paged them twice).
            child.runs = [*kept, _Run(seqs, len(merged))]
            child.covered_index_seq = last
            child.trusted = True
            child.rebuild = False
        await self._delete([seq for run in absorbed for seq in run.seqs])

    async def _events_of(self, name: str, runs: list[_Run], before_log_seq: int) -> list[PagedEvent] | None:
        """The events of runs about to be merged, read back and checked (None: not as written)."""
        try:
            found = await self.reader.pages_at([seq for run in runs for seq in run.seqs])
        except UnreadablePage:
            return None
        if found is None:
            return None
        events = checked_events(name, found, sum(run.events for run in runs))
        if events is None or (events and events[-1][0] >= before_log_seq):
            return None
        return events

    async def _write_run(self, name: str, events: list[PagedEvent], kept: list[_Run], covered: int) -> list[int]:
        chunks: list[list[PagedEvent]] = [[]]
        size = 0
        for event in events:
            if chunks[-1] and (len(chunks[-1]) >= PAGE_EVENTS or size + len(event[2]) > PAGE_BYTES):
                chunks.append([])
                size = 0
            chunks[-1].append(event)
            size += len(event[2]) + 24
        seqs = []
        for chunk in chunks[:-1]:
            seqs.append(await self._publish(subjects.page_data_subject(name), HistoryPage(chunk)))
        manifest = HistoryPage(
            chunks[-1],
            covered_index_seq=covered,
            runs=[run.seqs for run in kept] + [list(seqs)],
            run_events=[run.events for run in kept] + [len(events)],
        )
        seqs.append(await self._publish(subjects.page_subject(name), manifest))
        return seqs

    async def _publish(self, subject: str, page: HistoryPage) -> int:
        ack = await self.js.publish(subject, encode_page(page), timeout=self.timeout)
        self.pages_written += 1
        return ack.seq

    async def _delete(self, seqs: list[int]) -> None:
        # Best effort: a page left behind is only unused space; readers never see it again.
        replies = await asyncio.gather(
            *(self.nc.request(jetstream.message_delete_subject(subjects.PAGES_STREAM),
                              json.dumps({"seq": s, "no_erase": True}).encode(), self.timeout)
              for s in seqs),
            return_exceptions=True,
        )
        failed = [r for r in replies if isinstance(r, BaseException) or b'"error"' in r.data]
        if failed:
            log.warning("pager_delete_failed", pages=len(failed), first=str(failed[0])[:200])

    # -- the checkpoint --------------------------------------------------------------------------

    async def _write_checkpoint(self) -> None:
        held = [c.pending_from for c in self._dirty.values() if c.pending_from]
        held += [c.in_flight_from for c in self._dirty.values() if c.in_flight_from]
        checkpoint = (min(held) - 1) if held else self._last_seen
        if checkpoint <= self._checkpoint:
            return
        ack = await self.js.publish(
            subjects.PAGER_CHECKPOINT, encode_checkpoint(PagerCheckpoint(checkpoint)), timeout=self.timeout
        )
        previous, self._checkpoint, self._checkpoint_seq = self._checkpoint_seq, checkpoint, ack.seq
        if previous:
            await self._delete([previous])


async def pager_checkpoint(nc: NATS) -> int:
    """How far in REFBUS_CHILDREN the pages reach (0: not started)."""
    found = await LogReader(nc).read_page({"last_by_subj": subjects.PAGER_CHECKPOINT})
    return 0 if found is None else decode_checkpoint(found.data).index_seq
