"""One encoder and one decoder for the wire (JSON), with upcasting of old schema versions on read."""

from collections.abc import Callable
from typing import Any

import msgspec

from refbus.contracts.events import ALL_EVENT_TYPES, AnyEvent, Event

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type tag, stored schema_version) -> a step that returns the payload at schema_version + 1.
# Each event class declares its current version as the default of `schema_version`.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_VERSION_OF_CLASS: dict[type, int] = {
    cls: next(f.default for f in msgspec.structs.fields(cls) if f.name == "schema_version") for cls in ALL_EVENT_TYPES
}
CURRENT_VERSION: dict[str, int] = {cls.__struct_config__.tag: v for cls, v in _VERSION_OF_CLASS.items()}


class UndecodableEvent(ValueError):
    """The bytes are not a known event of a known version; `reason` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    try:
        event = _decoder.decode(data)
        if event.schema_version == _VERSION_OF_CLASS[type(event)]:
            return event
        first_error = f"schema_version {event.schema_version}"
    except msgspec.DecodeError as exc:
        first_error = str(exc)
    # Not the current shape: an older schema version may still be upcast into it.
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UndecodableEvent(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UndecodableEvent("not an event: no 'type' field")
    tag = raw["type"]
    if tag not in CURRENT_VERSION:
        raise UndecodableEvent(f"unknown event type {tag!r}")
    raw = _upcast(tag, raw)
    try:
        return msgspec.convert(raw, AnyEvent)
    except msgspec.ValidationError:
        raise UndecodableEvent(f"invalid {tag}: {first_error}") from None


def _upcast(tag: str, raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.get("schema_version", 1)
    if isinstance(version, int) and version > CURRENT_VERSION[tag]:
        raise UndecodableEvent(f"{tag} v{version} is newer than this reader (v{CURRENT_VERSION[tag]})")
    while isinstance(version, int) and version < CURRENT_VERSION[tag]:
        step = UPCASTERS.get((tag, version))
        if step is None:
            raise UndecodableEvent(f"no upcaster for {tag} v{version}")
        raw = step(raw)
        version += 1
        raw["schema_version"] = version
    return raw
