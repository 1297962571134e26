"""A synthetic registry at the Bacău pilot's proportions, and the import of a registry into the log.

The import format is JSON Lines: one event per line, exactly as on the wire
(contracts/schema/events.schema.json), each child's events in order. `refbus import FILE` loads it
through group commit and keeps a checkpoint (FILE.checkpoint: the byte offset of the last line
acknowledged by the log), so an interrupted import resumes where it stopped, and says how many lines
it skipped; lines it re-sends are recognised as already stored, never doubled. Problems are placed
by line number (1 = the file's first line, counted from the start of the file, not the checkpoint).
"""

import random
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec

from refbus.community import community
from refbus.contracts import codec
from refbus.contracts.events import BasicServiceDelivered, Event, ReferralRequested
from refbus.contracts.vocabulary import BasicService, Sector
from refbus.services.eventstore.bulk import BulkWriter, WriteReport
from refbus.services.eventstore.store import EventStore
from refbus.services.rules.decisions import receipt, step_event
from refbus.services.rules.policy import SimulatedSector
from refbus.services.rules.state import fold

# The pilot: 22,000 vulnerable children, ~42,000 vulnerabilities, 550,000 service and referral events.
PILOT_CHILDREN = 22_000
PILOT_EVENTS = 550_000
ZIPF_EXPONENT = 0.7  # a few very active children, most with a handful of events
PILOT_START = datetime(2024, 1, 1, tzinfo=UTC)
PILOT_SPAN = timedelta(days=730)
SYNTHETIC_ID_KEY = b"refbus synthetic registry"
"Keys the derived ids of the synthetic registry: fixed, so that a seed always gives the same file."


def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never waits (the simulated policy) without an event loop."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine waited")


def pilot_events(children: int = PILOT_CHILDREN, total: int = PILOT_EVENTS, seed: int = 1) -> list[Event]:
    """`total` events for `children` children, in time order: cases, vulnerabilities, consent,
    referrals with their whole lifecycle, and basic services spread by a Zipf law of activity."""
    # Streams apart from the community's own Random(seed): equal streams would mint equal uuids.
    rng = random.Random(f"pilot:{seed}")
    clock_rng = random.Random(f"pilot-clock:{seed}")
    sectors = {s: SimulatedSector(s, seed=seed) for s in Sector}
    per_child: list[list[Event]] = []
    for case in community(children, seed, clock=lambda: PILOT_START + PILOT_SPAN * clock_rng.random() * 0.5):
        events = list(case.events)
        moment = case.events[0].occurred_at
        for request in case.referrals:
            events += _lifecycle(request, events, sectors[request.to_sector], rng, moment)
        per_child.append(events)
    base = sum(len(e) for e in per_child)
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(children)]
    rng.shuffle(weights)
    scale = max(0, total - base) / sum(weights)
    shares = [int(w * scale) for w in weights]
    for i in rng.sample(range(children), k=max(0, total - base - sum(shares))):
        shares[i] += 1
    for events, extra in zip(per_child, shares, strict=True):
        events += _basic_services(events[0], extra, rng)
    merged = sorted((e for events in per_child for e in events), key=lambda e: e.occurred_at)
    return merged[:total]


def _lifecycle(request: ReferralRequested, before: list[Event], policy: SimulatedSector, rng: random.Random,
               moment: datetime) -> list[Event]:
    child = request.child
    state = fold(child, enumerate(before, 1))
    referral = state.referrals[request.referral_id]
    clock = moment + timedelta(hours=rng.uniform(1, 48))
    events: list[Event] = [receipt(SYNTHETIC_ID_KEY, referral, child, clock, request.event_id)]
    for _ in range(8):
        state = fold(child, enumerate(before + events, 1))
        referral = state.referrals[request.referral_id]
        step = _run(policy.next_step(referral, state))
        if step is None:
            break
        clock += timedelta(days=rng.uniform(0.5, 20))
        events.append(step_event(SYNTHETIC_ID_KEY, step, referral, child, referral.receiver, clock, request.event_id))
    return events


def _basic_services(opened: Event, count: int, rng: random.Random) -> list[Event]:
    start = opened.occurred_at
    times = sorted(start + PILOT_SPAN * 0.5 * rng.random() for _ in range(count))
    kinds = list(BasicService)
    return [
        BasicServiceDelivered(
            event_id=uuid.UUID(int=rng.getrandbits(128), version=4),
            child=opened.child,
            from_sector=opened.from_sector,
            occurred_at=max(start, when),
            actor=opened.actor,
            correlation_id=opened.correlation_id,
            service=rng.choice(kinds),
        )
        for when in times
    ]


def write_jsonl(events: list[Event], path: Path) -> None:
    encoder = msgspec.json.Encoder()
    with open(path, "wb") as out:
        for event in events:
            out.write(encoder.encode(event))
            out.write(b"\n")


class ImportFileError(Exception):
    """The file or its checkpoint cannot be used as they are: one line saying why and what to do."""


@dataclass
class ImportResult:
    lines: int
    "Lines read by this run."
    stored: int
    duplicates: int
    refused: list[str]
    unreadable: list[str]
    seconds: float
    skipped: int = 0
    "Lines before the checkpoint: imported by an earlier run, not read again."
    other_log: bool = False
    "The checkpoint was written for another log, and so not followed."


def _lines_before(path: Path, offset: int) -> int:
    """How many lines end before byte `offset` (the checkpoint is always at a line's start)."""
    count = 0
    with open(path, "rb") as source:
        remaining = offset
        while remaining > 0:
            block = source.read(min(remaining, 1 << 20))
            if not block:
                break
            count += block.count(b"\n")
            remaining -= len(block)
    return count


def read_checkpoint(path: Path, log_id: str | None = None) -> tuple[int, bool]:
    """The checkpoint's offset, and whether it was written for another log than `log_id` (then 0:
    a checkpoint says how far *a* log acknowledged the file; a fresh log has none of it)."""
    checkpoint = checkpoint_path(path)
    if not checkpoint.exists():
        return 0, False
    text, _, written_for = checkpoint.read_text().strip().partition(" ")
    if log_id is not None and written_for and written_for != log_id:
        return 0, True
    if not text.isdigit():
        raise ImportFileError(f"{checkpoint} does not hold a byte offset ({text[:20]!r}): delete it or use --restart")
    offset = int(text)
    if offset > path.stat().st_size:
        raise ImportFileError(
            f"{checkpoint} points past the end of {path} (was the file replaced?): use --restart to read it again"
        )
    return offset, False


def checkpoint_path(path: Path) -> Path:
    return path.with_name(path.name + ".checkpoint")


async def import_jsonl(
    eventlog: EventStore,
    path: Path,
    chunk: int = 20_000,
    limit: int | None = None,
    progress: Callable[[int, int, float], None] | None = None,
    log_id: str | None = None,
) -> ImportResult:
    """Import `path` from its checkpoint on. `limit` stops after that many lines (for tests of resume).
    `log_id` names the log (e.g. its stream's creation time): a checkpoint written for another log
    is not followed, and the checkpoint written names this one."""
    # Local, buffered file reads between network round trips: not worth a thread each.
    checkpoint = checkpoint_path(path)
    offset, other_log = read_checkpoint(path, log_id)
    skipped = _lines_before(path, offset) if offset else 0
    size = path.stat().st_size  # noqa: ASYNC240
    writer = BulkWriter(eventlog)
    totals = WriteReport()
    unreadable: list[str] = []
    lines = 0
    started = time.perf_counter()
    refused: list[str] = []
    with open(path, "rb") as source:  # noqa: ASYNC230
        source.seek(offset)
        at_end = False
        while not at_end and (limit is None or lines < limit):
            batch: list[Event] = []
            line_of: dict[object, int] = {}
            while len(batch) < chunk and (limit is None or lines < limit):
                line = source.readline()
                if not line:
                    at_end = True
                    break
                lines += 1
                if not line.strip():
                    continue
                try:
                    event = codec.decode(line)
                except codec.UndecodableEvent as exc:
                    unreadable.append(f"line {skipped + lines}: {exc.reason}")
                    continue
                batch.append(event)
                line_of[event.event_id] = skipped + lines
            if batch:
                report = await writer.write(batch)
                totals.stored += report.stored
                totals.duplicates += report.duplicates
                for problem in report.refused:
                    place = line_of.get(problem.event.event_id)
                    refused.append(f"line {place}: refused: {problem}" if place else f"refused: {problem}")
            if source.tell() != offset:
                offset = source.tell()
                # Everything before it is acknowledged by the log.
                checkpoint.write_text(f"{offset} {log_id}" if log_id else str(offset))
                if progress is not None:
                    progress(offset, size, time.perf_counter() - started)
    return ImportResult(
        lines=lines,
        stored=totals.stored,
        duplicates=totals.duplicates,
        refused=refused,
        unreadable=unreadable,
        seconds=time.perf_counter() - started,
        skipped=skipped,
        other_log=other_log,
    )


def print_progress(done: int, size: int, seconds: float) -> None:
    bar = "#" * int(30 * done / max(size, 1))
    sys.stderr.write(f"\r[{bar:<30}] {100 * done / max(size, 1):5.1f}%  {done / 1e6:8.1f} MB  {seconds:6.1f} s")
    if done >= size:
        sys.stderr.write("\n")
    sys.stderr.flush()
