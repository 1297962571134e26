"""Reading REFBUS_DEAD_LETTERS' three kinds of message, and the `refbus dead` filters, without a server."""

import argparse
import json
from datetime import UTC, datetime, timedelta

import msgspec

from refbus.dead import select, since
from refbus.services.eventstore.deadletters import MAX_DELIVERIES, REDRIVE, SET_ASIDE, DeadLetters, parse
from refbus.services.eventstore.records import DeadLetter, RedriveRequest

NOW = datetime(2026, 11, 28, 7, 0, tzinfo=UTC)
SUBJECT = "refbus.ev.c0123456789abcdef.social.health"


def entries() -> DeadLetters:
    record = DeadLetter(7, SUBJECT, "inbox-health", "newer schema: v2", "ab" * 32, 321, NOW)
    advisory = {"type": "io.nats.jetstream.advisory.v1.max_deliver", "stream": "REFBUS", "consumer": "inbox-justice",
                "stream_seq": 9, "deliveries": 20, "timestamp": "2026-11-28T06:00:00Z"}
    redrive = RedriveRequest(1, 7, SUBJECT, "inbox-health", NOW + timedelta(minutes=1))
    return DeadLetters.of([
        parse(1, "refbus.dead.health", msgspec.json.encode(record), NOW),
        parse(2, "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.REFBUS.inbox-justice", json.dumps(advisory).encode(), NOW),
        parse(3, "refbus.dead.health.redrive", msgspec.json.encode(redrive), NOW),
    ])


def test_the_three_kinds_are_read_and_redrives_folded_in() -> None:
    dead = entries()
    assert [(e.id, e.kind, e.sector, e.stream_seq) for e in dead.letters] == [
        (1, SET_ASIDE, "health", 7), (2, MAX_DELIVERIES, "justice", 9)]
    assert dead.redriven[("inbox-health", 7)].kind == REDRIVE
    assert dead.letters[1].at == datetime(2026, 11, 28, 6, 0, tzinfo=UTC)
    assert dead.subject_for(dead.letters[0]) == SUBJECT and dead.subject_for(dead.letters[1]) is None
    assert parse(4, "refbus.dead.health", b"not json", NOW) is None


def test_filters_by_sector_reason_and_since() -> None:
    dead = entries()

    def chosen(**filters: object) -> list[int]:
        args = argparse.Namespace(**{"sector": None, "reason": None, "since": None, **filters})
        return [e.id for e in select(dead, args)]

    assert chosen() == [1, 2]
    assert chosen(sector="justice") == [2]
    assert chosen(reason="NEWER schema") == [1]
    assert since("30m", NOW) == NOW - timedelta(minutes=30)
    assert since("2026-11-28T06:30:00", NOW) == datetime(2026, 11, 28, 6, 30, tzinfo=UTC)
