import json
import uuid

import msgspec
import pytest

from refbus.contracts import codec
from refbus.contracts.events import ALL_EVENT_TYPES, CaseOpened, ReferralRejected, event_type
from refbus.contracts.vocabulary import RejectReason, Sector
from tests.factories import answer, consent, envelope, new_child, request


def one_of_each() -> list:
    child = new_child()
    req = request(child)
    samples = [req, consent(child, (Sector.HEALTH,)), CaseOpened(**envelope(child, Sector.SOCIAL, None),
                                                                  household="h" + "0" * 16)]
    samples.append(answer(ReferralRejected, req, reason=RejectReason.NO_CAPACITY))
    return samples


@pytest.mark.parametrize("event", one_of_each(), ids=lambda e: event_type(e))
def test_round_trip(event) -> None:
    assert codec.decode(codec.encode(event)) == event


def test_every_event_type_has_a_distinct_tag_and_version() -> None:
    tags = [cls.__struct_config__.tag for cls in ALL_EVENT_TYPES]
    assert len(set(tags)) == len(tags) == 19
    assert set(codec.CURRENT_VERSION) == set(tags)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xff\xfe not json", "not JSON"),
        (b'["a list"]', "no 'type'"),
        (b'{"type": "referral.teleported"}', "unknown event type"),
        (b'{"type": "referral.requested", "child": "Maria Popescu"}', "invalid referral.requested"),
    ],
)
def test_bad_input_is_refused_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(codec.UndecodableEvent) as caught:
        codec.decode(payload)
    assert reason in caught.value.reason


def test_a_name_is_not_a_child_reference() -> None:
    raw = msgspec.to_builtins(request(new_child()))
    raw["child"] = "Ion Popescu"
    with pytest.raises(codec.UndecodableEvent, match="child"):
        codec.decode(json.dumps(raw).encode())


def test_old_versions_are_upcast_on_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pretend case.opened is at v2, where v1 lacked `household`; a stored v1 is upcast, not refused."""
    stored_v1 = msgspec.to_builtins(CaseOpened(**envelope(new_child(), Sector.SOCIAL, None), household="h" + "1" * 16))
    del stored_v1["household"]
    calls = []

    def v1_to_v2(raw: dict) -> dict:
        calls.append(raw["event_id"])
        return {**raw, "household": "h" + "f" * 16}

    monkeypatch.setitem(codec.CURRENT_VERSION, "case.opened", 2)
    monkeypatch.setitem(codec.UPCASTERS, ("case.opened", 1), v1_to_v2)
    event = codec.decode(json.dumps(stored_v1).encode())
    assert calls == [stored_v1["event_id"]]
    assert event.household == "h" + "f" * 16 and event.schema_version == 2


def test_a_newer_version_than_the_reader_is_refused() -> None:
    raw = msgspec.to_builtins(request(new_child()))
    raw["schema_version"] = 9
    with pytest.raises(codec.UndecodableEvent, match="newer"):
        codec.decode(json.dumps(raw).encode())


def test_ids_are_uuids_on_the_wire() -> None:
    """In their canonical text (36 characters, lower case, hyphenated), which any language parses."""
    event = request(new_child())
    raw = json.loads(codec.encode(event))
    assert raw["event_id"] == str(event.event_id) and raw["referral_id"] == str(event.referral_id)
    assert uuid.UUID(raw["event_id"]) == event.event_id and len(raw["event_id"]) == 36
