"""Issue 12, item 3 (the pure half): an event's subject names its child, sender and receiver, and a
reader can check that the payload says the same before it believes either."""

import pytest

from refbus.contracts import codec, subjects
from refbus.contracts.events import ConsentRecorded
from refbus.contracts.vocabulary import Sector
from tests.factories import consent, new_child, request


def test_the_subject_an_event_is_published_on_matches_it() -> None:
    for event in (request(new_child()), consent(new_child(), (Sector.HEALTH,))):
        subject = subjects.event_subject(event.child, event.from_sector, event.to_sector)
        assert codec.subject_mismatch(subject, event) is None
        assert codec.decode_on(subject, codec.encode(event)) == event


@pytest.mark.parametrize(
    ("part", "expected"),
    [
        ("child", "subject says child {other}, payload says {child}"),
        ("from", "subject says from health, payload says social"),
        ("to", "subject says to justice, payload says health"),
        ("to none", "subject says to none, payload says health"),
    ],
)
def test_each_mismatch_is_named(part: str, expected: str) -> None:
    event = request(new_child(), frm=Sector.SOCIAL, to=Sector.HEALTH)
    other = new_child()
    subject = {
        "child": subjects.event_subject(other, Sector.SOCIAL, Sector.HEALTH),
        "from": subjects.event_subject(event.child, Sector.HEALTH, Sector.HEALTH),
        "to": subjects.event_subject(event.child, Sector.SOCIAL, Sector.JUSTICE),
        "to none": subjects.event_subject(event.child, Sector.SOCIAL, None),
    }[part]
    reason = expected.format(other=other, child=event.child)
    assert codec.subject_mismatch(subject, event) == reason
    with pytest.raises(codec.MisroutedEvent) as caught:
        codec.decode_on(subject, codec.encode(event))
    assert caught.value.reason == reason and caught.value.event == event
    assert isinstance(caught.value, codec.UndecodableEvent)


def test_an_event_without_a_receiver_on_a_sector_inbox_is_misrouted() -> None:
    event = consent(new_child(), (Sector.HEALTH,))
    assert isinstance(event, ConsentRecorded)
    subject = subjects.event_subject(event.child, event.from_sector, Sector.HEALTH)
    assert codec.subject_mismatch(subject, event) == "subject says to health, payload says none"


def test_every_difference_is_named_at_once() -> None:
    event = request(new_child(), frm=Sector.SOCIAL, to=Sector.HEALTH)
    subject = subjects.event_subject(new_child(), Sector.JUSTICE, Sector.EDUCATION)
    assert codec.subject_mismatch(subject, event).count("subject says") == 3  # type: ignore[union-attr]


def test_parse_gives_back_what_event_subject_spelled() -> None:
    child = new_child()
    for frm in Sector:
        for to in (*Sector, None):
            assert subjects.parse_event_subject(subjects.event_subject(child, frm, to)) == (child, frm, to)


@pytest.mark.parametrize(
    ("subject", "reason"),
    [
        ("refbus.ev.c0123456789abcdef.social", "not an event subject"),
        ("refbus.ev.c0123456789abcdef.social.health.x", "not an event subject"),
        ("refbus.child.c0123456789abcdef", "not an event subject"),
        ("other.ev.c0123456789abcdef.social.health", "not an event subject"),
        ("refbus.ev.Maria_Popescu.social.health", "the child is not a child reference"),
        ("refbus.ev.c0123456789ABCDEF.social.health", "the child is not a child reference"),
        ("refbus.ev.c0123456789abcdef\n.social.health", "the child is not a child reference"),
        ("refbus.ev.*.social.health", "the child is not a child reference"),
        ("refbus.ev.c0123456789abcdef.police.health", "the sender is not a sector"),
        ("refbus.ev.c0123456789abcdef.none.health", "the sender is not a sector"),
        ("refbus.ev.c0123456789abcdef.social.>", "the receiver is neither a sector nor none"),
        ("refbus.ev.c0123456789abcdef.social.Health", "the receiver is neither a sector nor none"),
        ("", "not an event subject"),
    ],
)
def test_a_malformed_subject_is_refused_without_repeating_it(subject: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        subjects.parse_event_subject(subject)
    assert "Maria" not in str(caught.value)
    event = request("c0123456789abcdef")
    assert reason in codec.subject_mismatch(subject, event)  # type: ignore[operator]
    with pytest.raises(codec.MisroutedEvent, match=reason):
        codec.decode_on(subject, codec.encode(event))


def test_decode_on_refuses_undecodable_bytes_before_looking_at_the_subject() -> None:
    with pytest.raises(codec.UndecodableEvent) as caught:
        codec.decode_on("refbus.ev.c0123456789abcdef.social.health", b"[" * 100_000)
    assert not isinstance(caught.value, codec.MisroutedEvent)
