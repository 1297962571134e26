"""Issue 17: the published JSON Schema (contracts/schema/events.schema.json) and the decoder agree, over
events generated from the schema itself, and whatever the schema refuses the decoder refuses with its
typed errors, never another exception.

The events come from Schemathesis's JSON Schema engine, through a one-operation OpenAPI document that
wraps the schema (`Operation.as_strategy` is its public way in). hypothesis-jsonschema 0.23.1, the
last release, fails on any object schema with this Hypothesis (`'many' object has no attribute 'more'`).

What the generation found, fixed in the contracts (decision 0019): the schema admitted any integer as
schema_version, which the decoder refuses but for 1 (now bounded there); and it admitted a referral
event addressed to no sector, which every fold of the log (the store's, the audit's, the monitor's
projections) met with an AssertionError, so one such message made its child unreadable to the services.
"""

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refbus.contracts import codec, documents
from refbus.contracts.events import Event
from refbus.services.audit.projections import Projections
from refbus.services.eventstore.records import StoredEvent
from refbus.services.eventstore.store import _fold
from refbus.services.rules.audit import Auditor
from refbus.services.rules.state import ChildState, fold
from tests import fuzzcount

schemathesis = pytest.importorskip("schemathesis")

# Bounded so that this file runs in about 20 s on 2 cores (generation from the schema is the cost).
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck), database=None)
SCHEMA: dict[str, Any] = json.loads((documents.SCHEMA_DIR / "events.schema.json").read_text())


def _as_operation(schema: dict[str, Any]) -> Any:
    """The event schema as the request body of one OpenAPI operation, its $defs as components."""
    moved = json.loads(json.dumps(schema).replace("#/$defs/", "#/components/schemas/"))
    body = {key: value for key, value in moved.items() if key not in ("$defs", "$schema")}
    document = {
        "openapi": "3.1.0",
        "info": {"title": "refbus events", "version": "1"},
        "paths": {"/events": {"post": {
            "requestBody": {"required": True, "content": {"application/json": {"schema": body}}},
            "responses": {"200": {"description": "decoded"}},
        }}},
        "components": {"schemas": moved["$defs"]},
    }
    return schemathesis.openapi.from_dict(document)["/events"]["POST"]


def _integers_as_written(value: Any) -> Any:
    """JSON Schema's `integer` admits 1.0; the wire writes integers without a fraction (as every
    encoder of these events does), which a schema cannot say: integral floats become ints."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integers_as_written(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integers_as_written(v) for v in value]
    return value


OPERATION = _as_operation(SCHEMA)
admitted = OPERATION.as_strategy(generation_mode=schemathesis.GenerationMode.POSITIVE).map(
    lambda case: _integers_as_written(case.body)
)
refused_by_schema = OPERATION.as_strategy(generation_mode=schemathesis.GenerationMode.NEGATIVE).map(
    lambda case: case.body
)


def refusal_of(data: bytes) -> codec.UndecodableEvent | None:
    """The decoder's refusal of `data`, or None if it decoded; any other exception fails the test."""
    try:
        codec.decode(data)
    except codec.UndecodableEvent as exc:
        assert exc.reason and len(exc.reason) <= 300
        return exc
    return None


@FUZZ
@given(admitted)
def test_every_event_the_schema_admits_decodes_and_round_trips(body: dict[str, Any]) -> None:
    event = codec.decode(json.dumps(body).encode())
    assert codec.decode(codec.encode(event)) == event
    fuzzcount.ran("schema: admitted events", "decoded")


@settings(FUZZ, max_examples=50)
@given(st.lists(admitted, min_size=1, max_size=5))
def test_every_fold_of_the_log_takes_any_admitted_events(bodies: list[dict[str, Any]]) -> None:
    """One child's events, anything the schema admits in any order: the store's fold (what the
    services decide on), the pure fold, the audit and the monitor's projections take them all."""
    first = codec.decode(json.dumps(bodies[0]).encode())
    events: list[Event] = [first] + [
        msgspec.structs.replace(codec.decode(json.dumps(b).encode()), child=first.child) for b in bodies[1:]
    ]
    state = ChildState(child=first.child, events_folded=0)
    auditor, projections = Auditor(now=datetime.now(UTC)), Projections()
    for seq, event in enumerate(events, 1):
        _fold(state, seq, event, None)
        auditor.see(seq, event)
        projections.apply(StoredEvent(seq, datetime.now(UTC), event))
    fold(first.child, enumerate(events, 1))
    auditor.finish()
    assert state.last_seq == len(events) and state.events_folded == len(events)
    assert set(state.illegal) <= set(range(1, len(events) + 1))
    fuzzcount.ran("schema: folds of admitted events", "folded")


@FUZZ
@given(refused_by_schema)
def test_every_body_the_schema_refuses_is_undecodable(body: Any) -> None:
    """Schemathesis's negative generation: wrong types, fields outside the contract, versions out of
    range, missing fields, broken patterns, and bodies that are not JSON at all."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    caught = refusal_of(data)
    assert caught is not None, f"the decoder took what the schema refuses: {data[:300]!r}"
    fuzzcount.ran("schema: refused bodies", type(caught).__name__)


# -- mutations of admitted events ------------------------------------------------------------------

STRING_FIELDS = ("event_id", "child", "actor", "correlation_id", "occurred_at")
wrong_types = st.one_of(
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


NESTED = "nested-value-placeholder"


@FUZZ
@given(admitted, st.data())
def test_any_mutation_of_an_admitted_event_is_refused_with_a_typed_error(body: dict[str, Any], data: Any) -> None:
    mutation = data.draw(st.sampled_from(
        ["unknown type", "future version", "version below 1", "oversized string", "nested too deep", "wrong type",
         "unknown field"]
    ))
    raw = dict(body)
    expected: type[codec.UndecodableEvent] = codec.UndecodableEvent
    if mutation == "unknown type":
        raw["type"] = data.draw(st.text(max_size=60).filter(lambda tag: tag not in codec.CURRENT_VERSION))
    elif mutation == "future version":
        raw["schema_version"] = codec.CURRENT_VERSION[raw["type"]] + data.draw(st.integers(1, 2**62))
        expected = codec.NewerSchemaVersion
    elif mutation == "version below 1":
        raw["schema_version"] = data.draw(st.integers(-(2**62), 0))
    elif mutation == "oversized string":
        # One past the field's maxLength up to past the event bound, padded as a writer would.
        raw[data.draw(st.sampled_from(STRING_FIELDS))] = "7" * data.draw(st.integers(41, 2 * codec.MAX_EVENT_BYTES))
    elif mutation == "nested too deep":
        raw[data.draw(st.sampled_from(sorted(raw)))] = NESTED  # spliced as text: json.dumps would recurse
    elif mutation == "wrong type":
        raw[data.draw(st.sampled_from(sorted(set(raw) - {"type"})))] = data.draw(wrong_types)
    else:
        raw[data.draw(st.text(min_size=1, max_size=30).filter(lambda name: name not in body))] = data.draw(
            st.text(max_size=50) | st.integers()
        )
    depth = data.draw(st.integers(codec.MAX_DEPTH + 1, 5_000)) if mutation == "nested too deep" else 0
    text = json.dumps(raw).replace(f'"{NESTED}"', "[" * depth + "1" + "]" * depth)
    caught = refusal_of(text.encode())
    assert caught is not None, f"{mutation} was accepted"
    assert isinstance(caught, expected), caught.reason
    fuzzcount.ran("schema: mutated events", mutation)


# -- regressions of what the generation found -------------------------------------------------------


def test_the_schema_bounds_schema_version_to_what_a_reader_decodes() -> None:
    for name, definition in SCHEMA["$defs"].items():
        if "schema_version" in definition.get("properties", {}):
            version = definition["properties"]["schema_version"]
            tag = definition["properties"]["type"]["enum"][0]
            assert (version["minimum"], version["maximum"]) == (1, codec.CURRENT_VERSION[tag]), name


def test_a_referral_event_addressed_to_no_sector_is_undecodable_and_outside_the_schema() -> None:
    from tests.factories import new_child, request

    raw = {**msgspec.to_builtins(request(new_child())), "to_sector": None}
    caught = refusal_of(json.dumps(raw).encode())
    assert caught is not None and "to_sector" in caught.reason
    assert "to_sector" in SCHEMA["$defs"]["ReferralRequested"]["required"]
    assert "to_sector" not in SCHEMA["$defs"]["CaseOpened"]["required"]
