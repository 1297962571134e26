"""Issue 12, items 5 and 6: no bytes crash the decoder, and nothing outside the contract is stored.

Each input here is one a publisher with the right to its subject could send; before the fix the deep
ones raised RecursionError (crashing the inbox handler on every delivery, and `refbus history` of the
child), and the unknown fields were decoded and stored."""

import json
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest

from refbus.contracts import codec
from refbus.contracts.events import CaseOpened, ConsentRecorded
from refbus.contracts.vocabulary import Dimension, Guardian, LegalBasis, Sector, Urgency
from tests.factories import envelope, new_child, request


def good() -> dict[str, Any]:
    return msgspec.to_builtins(request(new_child()))


def refused(data: bytes) -> codec.UndecodableEvent:
    with pytest.raises(codec.UndecodableEvent) as caught:
        codec.decode(data)
    assert caught.value.reason == str(caught.value)
    return caught.value


def with_raw(raw: dict[str, Any], after: str) -> bytes:
    """`raw` as JSON with the JSON text `after` spliced in as its last member."""
    return json.dumps(raw)[:-1].encode() + b", " + after.encode() + b"}"


def deep(depth: int, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + closing * depth


# -- 5: nesting and size -------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [10_000, 1_000_000])
@pytest.mark.parametrize(
    "where",
    ["alone", "before the tag", "as a second tag", "as the tag", "in an unknown field", "in a known field"],
)
def test_deep_nesting_anywhere_is_undecodable(depth: int, where: str) -> None:
    array = deep(depth)
    data = {
        "alone": array,
        "before the tag": '{"x": ' + array + ', "type": "case.opened"}',
        "as a second tag": '{"type": "case.opened", "type": ' + array + "}",
        "as the tag": '{"type": ' + array + "}",
        "in an unknown field": with_raw(good(), '"x": ' + array).decode(),
        "in a known field": '{"type": "case.consent-recorded", "sectors": ' + array + "}",
    }[where].encode()
    if len(data) > codec.MAX_EVENT_BYTES:
        assert "too large" in refused(data).reason
    else:
        assert refused(data).reason


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_nesting_just_past_the_bound_is_refused_before_parsing(opening: str) -> None:
    closing = "]" if opening == "[" else "}"
    data = ('{"x": ' + deep(codec.MAX_DEPTH, opening, closing).replace(opening + closing, opening + "1" + closing)
            + ', "type": "case.opened"}').encode()
    assert refused(data).reason == f"nested deeper than {codec.MAX_DEPTH}"


def test_deep_nesting_at_the_top_level_is_refused_by_the_depth_bound() -> None:
    assert refused(deep(5_000).encode()).reason == f"nested deeper than {codec.MAX_DEPTH}"


def test_brackets_inside_strings_are_not_nesting() -> None:
    raw = good()
    data = with_raw(raw, '"x": "' + "[{" * 100 + '\\"' + "[" * 10 + '"')
    assert "unknown field `x`" in refused(data).reason


def test_an_event_over_the_size_bound_is_refused() -> None:
    data = with_raw(good(), '"padding": "' + "x" * 1_000_000 + '"')
    assert refused(data).reason == f"too large: {len(data)} bytes, the bound is {codec.MAX_EVENT_BYTES}"


def test_the_size_bound_leaves_room_for_the_largest_valid_event() -> None:
    """Every field at its longest: 10 times over, indented, is still under the bound."""
    event = request(
        new_child(),
        service="s" * 40,
        causation_id=uuid.uuid4(),
        respond_by=datetime(2026, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-9, minutes=-30))),
        legal_basis=LegalBasis.CHILD_PROTECTION_DUTY,
        dimension=Dimension.FAMILY_AND_SOCIAL,
        urgency=Urgency.EMERGENCY,
    )
    event = msgspec.structs.replace(event, actor="w" + "f" * 16, occurred_at=event.respond_by)
    pretty = json.dumps(msgspec.to_builtins(event), indent=4).encode()
    assert len(codec.encode(event)) < 700 and len(pretty) * 10 < codec.MAX_EVENT_BYTES
    assert codec.decode(pretty) == event


def test_bytes_that_are_not_utf8_are_undecodable() -> None:
    raw = json.dumps(good()).encode()
    assert refused(raw.replace(b'"health"', b'"\xff\xfe"', 1)).reason.startswith("not UTF-8")


@pytest.mark.parametrize("wrap", [bytearray, memoryview])
def test_other_buffers_decode_like_bytes(wrap: type) -> None:
    event = request(new_child())
    assert codec.decode(wrap(codec.encode(event))) == event


def test_a_non_buffer_is_undecodable_not_a_type_error() -> None:
    assert "not bytes" in refused(12345).reason  # type: ignore[arg-type]


def test_a_reason_is_bounded_whatever_the_input_held() -> None:
    data = with_raw(good(), '"' + "Maria Popescu " * 200 + '": 1')
    assert len(refused(data).reason) <= 300


# -- 6: fields outside the contract ---------------------------------------------------------------


def test_an_unknown_field_is_refused() -> None:
    raw = {**good(), "notes": "Maria Popescu, born 2014-03-02, Strada Mare 12"}
    assert refused(json.dumps(raw).encode()).reason == (
        "invalid referral.requested: Object contains unknown field `notes`"
    )


def test_padding_under_the_size_bound_is_refused_as_an_unknown_field() -> None:
    data = with_raw(good(), '"padding": "' + "x" * 10_000 + '"')
    assert "unknown field `padding`" in refused(data).reason


def test_an_unknown_field_on_every_event_type_is_refused() -> None:
    opened = CaseOpened(**envelope(new_child(), Sector.SOCIAL, None), household="h" + "0" * 16)
    assert "unknown field" in refused(with_raw(msgspec.to_builtins(opened), '"name": "Ion"')).reason


def test_a_newer_schema_version_is_set_apart_from_other_refusals() -> None:
    raw = {**good(), "schema_version": 2, "a_field_of_v2": "x"}
    caught = refused(json.dumps(raw).encode())
    assert isinstance(caught, codec.NewerSchemaVersion)
    assert caught.reason == "referral.requested v2 is newer than this reader (v1)"


def test_a_current_version_with_an_unknown_field_is_not_a_newer_version() -> None:
    caught = refused(json.dumps({**good(), "notes": "x"}).encode())
    assert not isinstance(caught, codec.NewerSchemaVersion)


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("schema_version", "1", "Expected `int`, got `str` - at `$.schema_version`"),
        ("event_id", 7, "got `int` - at `$.event_id`"),
        ("from_sector", "police", "Invalid enum value 'police' - at `$.from_sector`"),
        ("occurred_at", "2026-01-01T00:00:00", "Expected `datetime` with a timezone component"),
        ("child", "c0123456789abcdef\n", "at `$.child`"),
        ("actor", ["w12345678"], "Expected `str`, got `array` - at `$.actor`"),
    ],
)
def test_wrong_types_are_refused_with_the_field(field: str, value: Any, reason: str) -> None:
    assert reason in refused(json.dumps({**good(), field: value}).encode()).reason


def test_a_consent_names_no_more_sectors_than_there_are() -> None:
    event = ConsentRecorded(**envelope(new_child(), Sector.SOCIAL, None), given_by=Guardian.PARENT,
                            sectors=(Sector.HEALTH,))
    raw = {**msgspec.to_builtins(event), "sectors": ["health"] * (len(Sector) + 1)}
    assert "Expected `array` of length <= 4 - at `$.sectors`" in refused(json.dumps(raw).encode()).reason


# -- upcasting composes with refusing unknown fields ----------------------------------------------


@pytest.fixture
def case_opened_at_v2(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """case.opened is pretended at v2, where v1 had a `legacy_note` that v2 dropped."""

    def v1_to_v2(raw: dict[str, Any]) -> dict[str, Any]:
        return {key: value for key, value in raw.items() if key != "legacy_note"}

    monkeypatch.setitem(codec.CURRENT_VERSION, "case.opened", 2)
    monkeypatch.setitem(codec._VERSION_OF_CLASS, CaseOpened, 2)
    monkeypatch.setitem(codec.UPCASTERS, ("case.opened", 1), v1_to_v2)
    opened = CaseOpened(**envelope(new_child(), Sector.SOCIAL, None), household="h" + "1" * 16)
    return {**msgspec.to_builtins(opened), "schema_version": 1, "legacy_note": "x"}


def test_an_older_version_may_carry_a_field_its_upcaster_drops(case_opened_at_v2: dict[str, Any]) -> None:
    event = codec.decode(json.dumps(case_opened_at_v2).encode())
    assert event.schema_version == 2 and not hasattr(event, "legacy_note")


def test_an_older_version_with_a_field_no_upcaster_drops_is_refused(case_opened_at_v2: dict[str, Any]) -> None:
    raw = {**case_opened_at_v2, "notes": "Maria"}
    assert "unknown field `notes`" in refused(json.dumps(raw).encode()).reason


def test_an_upcaster_that_fails_makes_the_event_undecodable(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(raw: dict[str, Any]) -> dict[str, Any]:
        raise KeyError("household")

    monkeypatch.setitem(codec.CURRENT_VERSION, "case.opened", 2)
    monkeypatch.setitem(codec._VERSION_OF_CLASS, CaseOpened, 2)
    monkeypatch.setitem(codec.UPCASTERS, ("case.opened", 1), broken)
    opened = CaseOpened(**envelope(new_child(), Sector.SOCIAL, None), household="h" + "1" * 16)
    assert "upcasting case.opened v1 failed" in refused(codec.encode(opened)).reason
