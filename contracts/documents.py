"""The contract as files a system in any language can integrate from: JSON Schema and AsyncAPI 3.0.

Generated from the Structs (`refbus schema`), committed under contracts/schema/, and checked fresh by
a test, so the files and the code cannot drift apart.
"""

import json
from pathlib import Path
from typing import Any

import msgspec

from refbus.contracts import codec, subjects
from refbus.contracts.events import ALL_EVENT_TYPES, AnyEvent
from refbus.contracts.vocabulary import Sector

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"

APPEND_HEADERS: dict[str, Any] = {
    "type": "object",
    "description": (
        "Headers every append carries. JetStream acknowledges the publish (a PubAck) before the event counts; "
        "a wrong expected sequence is refused with JetStream error 10071: re-read the child and decide again."
    ),
    "required": [
        "Nats-Msg-Id",
        "Nats-Expected-Last-Subject-Sequence",
        "Nats-Expected-Last-Subject-Sequence-Subject",
    ],
    "properties": {
        "Nats-Msg-Id": {"type": "string", "description": "The event_id: JetStream drops a duplicate publish."},
        "Nats-Expected-Last-Subject-Sequence": {
            "type": "string",
            "description": "Stream sequence of the child's newest event (0 for a new child).",
        },
        "Nats-Expected-Last-Subject-Sequence-Subject": {
            "type": "string",
            "description": f"Always {subjects.child_filter('{child}')}: the check spans all of the child's subjects.",
        },
        "Refbus-Event-Type": {"type": "string", "description": "The event's type tag, for operators."},
        "Refbus-Correlation-Id": {"type": "string", "description": "The referral chain, for tracing across sectors."},
    },
}


BOUNDS = (
    f"An event is at most {codec.MAX_EVENT_BYTES} bytes of UTF-8 JSON, nested at most {codec.MAX_DEPTH} deep, "
    "with no field outside its type's contract (additionalProperties: false). A reader refuses an event of a "
    "schema_version newer than its own, to set it aside until it is upgraded."
)

# msgspec writes UUIDs and times as formats, which validators need not check: bounded here too.
_FORMAT_MAX_LENGTH = {"uuid": 36, "date-time": 40}
_BASE64 = "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _bounded(node: Any) -> Any:
    """`node` with a maxLength on every string of a bounded format that lacks one, and each event's
    schema_version bounded by the versions a reader decodes (1 to its current one: a newer one is set
    aside, and an older one is upcast from 1 on); unbounded, the schema admitted events the decoder refuses."""
    if isinstance(node, dict):
        node = {key: _bounded(value) for key, value in node.items()}
        if node.get("format") in _FORMAT_MAX_LENGTH:
            node.setdefault("maxLength", _FORMAT_MAX_LENGTH[node["format"]])
        if node.get("contentEncoding") == "base64":  # the decoder takes canonical base64 only
            fixed = node.get("minLength") is not None and node.get("minLength") == node.get("maxLength")
            # A fixed length of whole 3-byte groups (the nonce) has no padding; others may.
            node.setdefault("pattern", f"^[A-Za-z0-9+/]{{{node['minLength']}}}$" if fixed else _BASE64)
        tag = node.get("properties", {}).get("type", {}).get("enum", [None])[0]
        if tag in codec.CURRENT_VERSION and "schema_version" in node["properties"]:
            node["properties"]["schema_version"] = {**node["properties"]["schema_version"], "minimum": 1,
                                                    "maximum": codec.CURRENT_VERSION[tag]}
        return node
    if isinstance(node, list):
        return [_bounded(value) for value in node]
    return node


def json_schema() -> dict[str, Any]:
    schema = _bounded(msgspec.json.schema(AnyEvent))
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "refbus event"
    schema["description"] = BOUNDS
    return schema


def asyncapi() -> dict[str, Any]:
    from refbus.contracts import commands

    command_types = list(commands.COMMANDS.values())
    (_, components) = msgspec.json.schema_components(
        [AnyEvent, *command_types, commands.Applied, commands.Refusal], ref_template="#/components/schemas/{name}"
    )
    components = _bounded(components)
    components["AppendHeaders"] = APPEND_HEADERS
    names = [cls.__name__ for cls in ALL_EVENT_TYPES]
    messages = {
        name: {
            "name": cls.__struct_config__.tag,
            "title": name,
            "summary": (cls.__doc__ or name).strip().splitlines()[0],
            "contentType": "application/json",
            "headers": {"$ref": "#/components/schemas/AppendHeaders"},
            "payload": {"$ref": f"#/components/schemas/{name}"},
        }
        for name, cls in zip(names, ALL_EVENT_TYPES, strict=True)
    }
    for kind, cls in commands.COMMANDS.items():
        messages[cls.__name__] = {
            "name": kind,
            "title": cls.__name__,
            "summary": f"The {kind} command (request); the reply is Applied or Refusal.",
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
        }
    for cls in (commands.Applied, commands.Refusal):
        messages[cls.__name__] = {
            "name": cls.__name__,
            "title": cls.__name__,
            "summary": (cls.__doc__ or "").strip().splitlines()[0],
            "contentType": "application/json",
            "payload": {"$ref": f"#/components/schemas/{cls.__name__}"},
        }
    sectors = [s.value for s in Sector]
    channel_messages = {name: {"$ref": f"#/components/messages/{name}"} for name in names}
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "refbus",
            "version": "1",
            "description": (
                "Referrals between the social, health, education and justice sectors about vulnerable children, "
                f"on the append-only JetStream stream {subjects.STREAM}. Sector X receives with a durable consumer "
                f"filtered on {subjects.inbox_filter(Sector.SOCIAL).replace('social', 'X')} and may publish only "
                f"on {subjects.sender_permission(Sector.SOCIAL).replace('social', 'X')}. Referral statuses follow "
                "HL7 FHIR Task.status. " + BOUNDS
            ),
        },
        "defaultContentType": "application/json",
        "servers": {"embedded": {"host": "127.0.0.1:4222", "protocol": "nats"}},
        "channels": {
            "events": {
                "address": f"{subjects.PREFIX}.ev.{{child}}.{{fromSector}}.{{toSector}}",
                "description": f"Every event, stored in the stream {subjects.STREAM}.",
                "parameters": {
                    "child": {"description": "The pseudonymous child reference (the event's `child`)."},
                    "fromSector": {"enum": sectors, "description": "The sector stating the fact."},
                    "toSector": {
                        "enum": [*sectors, subjects.NO_SECTOR],
                        "description": "The sector addressed; `none` for case events.",
                    },
                },
                "messages": channel_messages,
            },
            "commands": {
                "address": f"{subjects.PREFIX}.cmd.{{sector}}.{{command}}",
                "description": (
                    "A sector system's commands to its sector's gateway, as NATS requests (core NATS, not stored). "
                    "Only the user <sector>-system may publish on its sector's subjects; the gateway answers on the "
                    "request's reply subject with Applied or Refusal (the HTTP status in `status`). Same payloads "
                    "and refusals as the HTTP gateway (openapi.json); the rules as data in lifecycle.json."
                ),
                "parameters": {
                    "sector": {"enum": sectors, "description": "The caller's own sector."},
                    "command": {"enum": list(commands.COMMANDS), "description": "The command kind."},
                },
                "messages": {cls.__name__: {"$ref": f"#/components/messages/{cls.__name__}"} for cls in command_types},
            },
            "commandReplies": {
                "address": None,
                "description": "The reply subject of each command request (_INBOX.<sector>-system.…).",
                "messages": {
                    name: {"$ref": f"#/components/messages/{name}"} for name in ("Applied", "Refusal")
                },
            },
        },
        "operations": {
            "appendEvent": {
                "action": "send",
                "channel": {"$ref": "#/channels/events"},
                "summary": "Append an event: a JetStream publish with the AppendHeaders, awaited until acknowledged.",
                "messages": [{"$ref": f"#/channels/events/messages/{n}"} for n in names],
            },
            "sendCommand": {
                "action": "send",
                "channel": {"$ref": "#/channels/commands"},
                "summary": "A command to the caller's sector gateway, answered with Applied or Refusal.",
                "messages": [{"$ref": f"#/channels/commands/messages/{c.__name__}"} for c in command_types],
                "reply": {
                    "channel": {"$ref": "#/channels/commandReplies"},
                    "messages": [{"$ref": f"#/channels/commandReplies/messages/{n}"} for n in ("Applied", "Refusal")],
                },
            },
            "receiveInbox": {
                "action": "receive",
                "channel": {"$ref": "#/channels/events"},
                "summary": "A sector's inbox: events whose toSector is that sector, with explicit acks.",
                "messages": [{"$ref": f"#/channels/events/messages/{n}"} for n in names],
            },
        },
        "components": {"schemas": components, "messages": messages},
    }


def rendered() -> dict[str, str]:
    """File name -> content, exactly as committed."""
    return {
        "events.schema.json": json.dumps(json_schema(), indent=2, sort_keys=True) + "\n",
        "asyncapi.json": json.dumps(asyncapi(), indent=2, sort_keys=True) + "\n",
        **_gateway_documents(),
    }


def _gateway_documents() -> dict[str, str]:
    """The sector gateways' files (HTTP commands, the rules as data): generated from services/gateway,
    imported here lazily so that the wire's modules import nothing of the services."""
    from refbus.services.gateway import documents as gateway

    return {
        "openapi.json": json.dumps(_bounded(gateway.openapi()), indent=2, sort_keys=True) + "\n",
        "lifecycle.json": json.dumps(gateway.lifecycle(), indent=2, sort_keys=True) + "\n",
    }


def write(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in rendered().items():
        path = directory / name
        path.write_text(content)
        paths.append(path)
    return paths


def stale(directory: Path = SCHEMA_DIR) -> list[str]:
    """Names of the committed files that differ from what the contracts generate now."""
    return [
        name
        for name, content in rendered().items()
        if not (directory / name).exists() or (directory / name).read_text() != content
    ]
