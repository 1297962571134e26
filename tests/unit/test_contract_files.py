"""The committed JSON Schema and AsyncAPI files are what the contracts generate, and usable alone."""

import json
import uuid
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from refbus.contracts import codec, documents
from tests.factories import new_child, request


def test_committed_contract_files_are_fresh() -> None:
    assert documents.stale() == [], "run `refbus schema` (make schema) and commit contracts/schema/"


def test_a_foreign_system_can_validate_events_from_the_schema_file_alone() -> None:
    schema = json.loads((documents.SCHEMA_DIR / "events.schema.json").read_text())
    good = json.loads(codec.encode(request(new_child())))
    jsonschema.validate(good, schema)
    bad = {**good, "child": "Ana Ionescu"}
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(bad))
    assert errors, "a name must not validate as a child reference"


def test_asyncapi_names_every_event_and_the_append_headers() -> None:
    doc = json.loads((documents.SCHEMA_DIR / "asyncapi.json").read_text())
    assert doc["asyncapi"] == "3.0.0"
    assert len(doc["channels"]["events"]["messages"]) == 19
    assert len(doc["channels"]["commands"]["messages"]) == 15  # the gateway's commands (NATS request/reply)
    required = doc["components"]["schemas"]["AppendHeaders"]["required"]
    assert "Nats-Expected-Last-Subject-Sequence-Subject" in required
    schemas = doc["components"]["schemas"]
    for message in doc["components"]["messages"].values():
        payload = schemas[message["payload"]["$ref"].rsplit("/", 1)[1]]
        assert payload["additionalProperties"] is False, message["name"]


def test_the_files_are_what_the_generator_writes(tmp_path: Path) -> None:
    """Byte for byte, and in a fresh directory: the staleness check compares like with like."""
    written = documents.write(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in documents.SCHEMA_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (documents.SCHEMA_DIR / path.name).read_bytes()


def hostile(good: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        "a note with personal data": {**good, "notes": "Maria Popescu, born 2014-03-02, Strada Mare 12"},
        "a megabyte of padding": {**good, "padding": "x" * 1_000_000},
        "a padded id": {**good, "event_id": str(uuid.uuid4()) + " " * 1_000_000},
        "a padded time": {**good, "occurred_at": "2026-01-01T00:00:00." + "0" * 100_000 + "Z"},
        "a child with a newline": {**good, "child": good["child"] + "\n"},
        "a service code too long": {**good, "service": "a" * 41},
        "no type": {key: value for key, value in good.items() if key != "type"},
    }


@pytest.mark.parametrize("case", list(hostile({"child": ""})))
def test_the_schema_file_refuses_what_the_decoder_refuses(case: str) -> None:
    schema = json.loads((documents.SCHEMA_DIR / "events.schema.json").read_text())
    good = json.loads(codec.encode(request(new_child())))
    bad = hostile(good)[case]
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(bad)), f"{case} validates"
    with pytest.raises(codec.UndecodableEvent):
        codec.decode(json.dumps(bad).encode())
