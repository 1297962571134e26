"""The committed JSON Schema and AsyncAPI files are what the contracts generate, and usable alone."""

import json

import jsonschema
import msgspec

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
    assert len(doc["components"]["messages"]) == 15
    required = doc["components"]["schemas"]["AppendHeaders"]["required"]
    assert "Nats-Expected-Last-Subject-Sequence-Subject" in required
    assert msgspec.json.decode(json.dumps(doc).encode())  # plain JSON, no Python-only values
