"""Properties of the codec over generated input: any bytes or JSON value decode to an event or
raise UndecodableEvent, nothing else; every valid event of every type round-trips."""

import json
from datetime import UTC, timedelta, timezone
from enum import Enum
from typing import Any

import msgspec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbus.contracts import codec, subjects
from refbus.contracts.content import SEALED_MAX, SealedContent
from refbus.contracts.events import ALL_EVENT_TYPES, Event
from refbus.contracts.vocabulary import Sector

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- anything at all ------------------------------------------------------------------------------


def decodes_or_refuses(data: Any) -> None:
    try:
        event = codec.decode(data)
    except codec.UndecodableEvent as exc:
        assert exc.reason and len(exc.reason) <= 300
    else:
        assert isinstance(event, Event)


@SETTINGS
@given(st.binary(max_size=4096))
def test_any_bytes(data: bytes) -> None:
    decodes_or_refuses(data)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=60,
)


@SETTINGS
@given(json_values)
def test_any_json_value(value: Any) -> None:
    decodes_or_refuses(json.dumps(value).encode())


@SETTINGS
@given(st.sampled_from(sorted(codec.CURRENT_VERSION)), st.dictionaries(st.text(max_size=20), json_values, max_size=8))
def test_any_object_with_a_known_type(tag: str, fields: dict[str, Any]) -> None:
    decodes_or_refuses(json.dumps({"type": tag, **fields}).encode())


# -- valid events ---------------------------------------------------------------------------------

hexes = "0123456789abcdef"
times = st.datetimes(
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=3)), timezone(timedelta(hours=-9, minutes=-30))])
)
BY_NAME: dict[str, st.SearchStrategy[Any]] = {
    "child": st.text(hexes, min_size=16, max_size=16).map("c".__add__),
    "actor": st.text(hexes, min_size=8, max_size=16).map("w".__add__),
    "household": st.text(hexes, min_size=16, max_size=16).map("h".__add__),
    "service": st.text("abcdefghijklmnopqrstuvwxyz_", min_size=3, max_size=40),
    "sectors": st.lists(st.sampled_from(Sector), max_size=len(Sector)).map(tuple),
    "occurred_at": times,
    "respond_by": st.none() | times,
    "due_at": times,
    "to_sector": st.none() | st.sampled_from(Sector),
    "causation_id": st.none() | st.uuids(),
    "sealed": st.none() | st.builds(
        SealedContent, key_id=st.text(hexes, min_size=16, max_size=16), nonce=st.binary(min_size=12, max_size=12),
        ciphertext=st.binary(min_size=16, max_size=SEALED_MAX),
    ),
    "reason": st.text(min_size=1, max_size=500),
    "erased_by": st.text(min_size=1, max_size=100),
    "keys_destroyed": st.integers(min_value=0, max_value=2**31),
}
BY_NAME["linked_from"] = BY_NAME["linked_to"] = BY_NAME["child"]


def field_strategy(field: msgspec.structs.FieldInfo) -> st.SearchStrategy[Any]:
    if isinstance(field.type, type) and issubclass(field.type, Enum):
        return st.sampled_from(field.type)
    if field.name in BY_NAME:
        return BY_NAME[field.name]
    if field.name.endswith("_id"):
        return st.uuids()
    raise AssertionError(f"no strategy for {field.name}: add one")


events = st.one_of(
    [
        st.builds(cls, **{f.name: field_strategy(f) for f in msgspec.structs.fields(cls) if f.name != "schema_version"})
        for cls in ALL_EVENT_TYPES
    ]
)


@SETTINGS
@given(events)
def test_every_valid_event_round_trips(event: Event) -> None:
    data = codec.encode(event)
    assert codec.decode(data) == event
    assert codec.decode_on(subjects.event_subject(event.child, event.from_sector, event.to_sector), data) == event


@SETTINGS
@given(events, st.text(min_size=1, max_size=30).filter(lambda name: name != "type"), json_values)
def test_any_field_outside_the_contract_is_refused(event: Event, name: str, value: Any) -> None:
    raw = msgspec.to_builtins(event)
    if name in raw:
        return
    try:
        codec.decode(json.dumps({**raw, name: value}).encode())
    except codec.UndecodableEvent as exc:
        assert "unknown field" in exc.reason or "too large" in exc.reason or "nested deeper" in exc.reason
    else:
        raise AssertionError(f"{name!r} was accepted")


@SETTINGS
@given(events, st.integers(min_value=2, max_value=2**62))
def test_any_newer_version_is_set_aside(event: Event, version: int) -> None:
    raw = {**msgspec.to_builtins(event), "schema_version": version}
    try:
        codec.decode(json.dumps(raw).encode())
    except codec.NewerSchemaVersion as exc:
        assert f"v{version} is newer" in exc.reason
    else:
        raise AssertionError("a newer version was accepted")


@SETTINGS
@given(events, st.sampled_from(Sector), st.sampled_from([*Sector, None]))
def test_the_subject_binding_holds_exactly_when_the_parts_match(event: Event, frm: Sector, to: Sector | None) -> None:
    subject = subjects.event_subject(event.child, frm, to)
    mismatch = codec.subject_mismatch(subject, event)
    assert (mismatch is None) == (frm == event.from_sector and to == event.to_sector)


@SETTINGS
@given(events, st.data())
def test_any_corruption_of_a_valid_event(event: Event, data: st.DataObject) -> None:
    """A valid encoding with a stretch of it overwritten: near misses reach deeper into the decoder
    than random bytes do (before the fix, a non-UTF-8 byte inside a string escaped as UnicodeDecodeError)."""
    encoded = codec.encode(event)
    start = data.draw(st.integers(0, len(encoded)))
    end = data.draw(st.integers(start, min(len(encoded), start + 8)))
    decodes_or_refuses(encoded[:start] + data.draw(st.binary(max_size=8)) + encoded[end:])
