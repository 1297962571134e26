"""`refbus import`: a registry of past events into the log, resumable without duplicates."""

from pathlib import Path

import pytest

from refbus.registry import checkpoint_path, import_jsonl, pilot_events, write_jsonl
from refbus.services.eventstore.jetstream_store import JetStreamEventStore

pytestmark = pytest.mark.integration


async def test_an_interrupted_import_resumes_without_duplicates(own_log: JetStreamEventStore, tmp_path: Path) -> None:
    events = pilot_events(children=150, total=3000, seed=5)
    assert len(events) == 3000
    registry = tmp_path / "registry.jsonl"
    write_jsonl(events, registry)

    first = await import_jsonl(own_log, registry, chunk=700, limit=1400)  # "interrupted" after 2 chunks
    assert first.stored == 1400 and checkpoint_path(registry).exists()
    rest = await import_jsonl(own_log, registry, chunk=700)
    assert first.stored + rest.stored == 3000 and rest.refused == [] and rest.unreadable == []

    # Crash before the checkpoint was written: the same lines again are recognised, not doubled.
    checkpoint_path(registry).write_text("0")
    again = await import_jsonl(own_log, registry, chunk=700)
    assert again.stored == 0 and again.duplicates == 3000

    child = events[0].child
    expected = [e for e in events if e.child == child]
    assert [h.event for h in await own_log.history(child)] == expected


async def test_unreadable_lines_are_reported_with_their_place(own_log: JetStreamEventStore, tmp_path: Path) -> None:
    events = pilot_events(children=5, total=40, seed=6)
    registry = tmp_path / "broken.jsonl"
    write_jsonl(events, registry)
    registry.write_bytes(registry.read_bytes() + b'{"type": "referral.requested", "child": "Maria"}\n')
    result = await import_jsonl(own_log, registry)
    assert result.stored == 40 and result.unreadable[0].startswith("line 41:")
