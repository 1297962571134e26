"""One encoder and one decoder for the wire (JSON), with upcasting of old schema versions on read.

`decode` survives any bytes: whatever is wrong with them (too large, nested too deep, not UTF-8,
not JSON, not an event, a field outside the contract, a newer schema version, anything an upcaster
trips on) is raised as `UndecodableEvent` with a reason for the dead letter, never as anything else.
"""

import re
from collections.abc import Callable
from typing import Any

import msgspec

from refbus.contracts import subjects
from refbus.contracts.events import ALL_EVENT_TYPES, AnyEvent, Event

MAX_EVENT_BYTES = 20 * 1024
"""The largest event a reader accepts. The largest valid event without sealed content (a
referral.requested with every optional field set and the longest codes) is about 600 bytes compact,
under 1 KiB indented, and a few KiB even with every character \\u-escaped; the largest sealed content
(contracts/content.py SEALED_MAX) adds under 15 KiB of base64. This leaves room for that while
capping what one hostile message costs to scan and decode."""

MAX_DEPTH = 8
"""The deepest nesting of arrays and objects a reader accepts. Events are 2 deep (an object holding a
`sectors` array); msgspec and the upcasting path parse recursively, and a 10,000-deep array would
otherwise raise RecursionError."""

_MAX_REASON = 300
"Reasons can echo a field name or type tag from the input: kept short, whatever the input held."

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(AnyEvent)

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

# (type tag, stored schema_version) -> a step that returns the payload at schema_version + 1.
# Each event class declares its current version as the default of `schema_version`.
# Events refuse fields outside their contract, so a step must drop the fields the next version lacks.
UPCASTERS: dict[tuple[str, int], Upcaster] = {}

_VERSION_OF_CLASS: dict[type, int] = {
    cls: next(f.default for f in msgspec.structs.fields(cls) if f.name == "schema_version") for cls in ALL_EVENT_TYPES
}
CURRENT_VERSION: dict[str, int] = {cls.__struct_config__.tag: v for cls, v in _VERSION_OF_CLASS.items()}


class UndecodableEvent(ValueError):
    """The bytes are not a known event of a known version; `reason` says why, for the dead letter."""

    def __init__(self, reason: str) -> None:
        if len(reason) > _MAX_REASON:
            reason = reason[: _MAX_REASON - 3] + "..."
        super().__init__(reason)
        self.reason = reason


class NewerSchemaVersion(UndecodableEvent):
    """A known event type at a schema version newer than this reader's: well formed, perhaps, but not
    readable until the reader is upgraded; set it aside for then rather than treat it as garbage."""


class MisroutedEvent(UndecodableEvent):
    """A decodable event on a subject that names another child, sender or receiver than it does."""

    def __init__(self, reason: str, event: AnyEvent) -> None:
        super().__init__(reason)
        self.event = event


def encode(event: Event) -> bytes:
    return _encoder.encode(event)


def decode(data: bytes) -> AnyEvent:
    """The event in `data`; UndecodableEvent (or its subclass NewerSchemaVersion) if there is none."""
    try:
        # The replay's hot path: a current event in one typed pass. This pass nests no deeper than
        # the contract, except where msgspec skips a value it does not need (one before the `type`
        # tag, or a second `type`); that skip is bounded by the interpreter's recursion limit, and
        # RecursionError is caught below. The explicit depth scan guards the untyped parse of
        # `_decode_other`, which recursed without bound, and costs 10-15% here, so it waits for that.
        if len(data) <= MAX_EVENT_BYTES:
            event = _decoder.decode(data)
            if event.schema_version == _VERSION_OF_CLASS[type(event)]:
                return event
    except Exception:  # msgspec's errors, RecursionError, anything: the careful path says why
        pass
    try:
        return _decode_other(data)
    except UndecodableEvent:
        raise
    except RecursionError:  # not expected past the depth bound; kept so no input can crash a reader
        raise UndecodableEvent("nested too deep to parse") from None
    except MemoryError:
        raise UndecodableEvent("too large to parse") from None
    except UnicodeDecodeError as exc:
        raise UndecodableEvent(f"not UTF-8: {exc}") from None
    except Exception as exc:
        raise UndecodableEvent(f"unreadable: {type(exc).__name__}: {exc}") from None


def decode_on(subject: str, data: bytes) -> AnyEvent:
    """The event in `data`, read from `subject`: as `decode`, and MisroutedEvent if the subject's
    child, sender or receiver is not the event's."""
    event = decode(data)
    if subject == subjects.event_subject(event.child, event.from_sector, event.to_sector):
        return event  # the common case, cheaply: replay binds every event of the log
    raise MisroutedEvent(subject_mismatch(subject, event) or "subject and payload disagree", event)


def subject_mismatch(subject: str, event: Event) -> str | None:
    """None if `subject` is the event subject of this event's child, sender and receiver; else why not,
    e.g. ``subject says from health, payload says social``."""
    try:
        child, from_sector, to_sector = subjects.parse_event_subject(subject)
    except ValueError as exc:
        return str(exc)
    differences = []
    if child != event.child:
        differences.append(f"subject says child {child}, payload says {event.child}")
    if from_sector != event.from_sector:
        differences.append(f"subject says from {from_sector.value}, payload says {event.from_sector.value}")
    if to_sector != event.to_sector:
        differences.append(f"subject says to {_sector_name(to_sector)}, payload says {_sector_name(event.to_sector)}")
    return "; ".join(differences) or None


def _sector_name(sector: Any) -> str:
    return subjects.NO_SECTOR if sector is None else sector.value


def _decode_other(data: bytes) -> AnyEvent:
    """Anything but a current event that is well formed: why not, or an older version upcast."""
    if isinstance(data, bytearray | memoryview):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise UndecodableEvent(f"not bytes but {type(data).__name__}")
    if len(data) > MAX_EVENT_BYTES:
        raise UndecodableEvent(f"too large: {len(data)} bytes, the bound is {MAX_EVENT_BYTES}")
    if _nested_deeper_than(data, MAX_DEPTH):
        raise UndecodableEvent(f"nested deeper than {MAX_DEPTH}")
    # Not the current shape: an older schema version may still be upcast into it.
    try:
        raw = msgspec.json.decode(data)
    except msgspec.DecodeError as exc:
        raise UndecodableEvent(f"not JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise UndecodableEvent("not an event: no 'type' field")
    tag = raw["type"]
    if tag not in CURRENT_VERSION:
        raise UndecodableEvent(f"unknown event type {tag[:40]!r}")
    raw = _upcast(tag, raw)
    try:
        return msgspec.convert(raw, AnyEvent)
    except msgspec.ValidationError as exc:
        raise UndecodableEvent(f"invalid {tag}: {exc}") from None


def _upcast(tag: str, raw: dict[str, Any]) -> dict[str, Any]:
    version = raw.get("schema_version", 1)
    if type(version) is int and version > CURRENT_VERSION[tag]:
        raise NewerSchemaVersion(f"{tag} v{version} is newer than this reader (v{CURRENT_VERSION[tag]})")
    while type(version) is int and version < CURRENT_VERSION[tag]:
        step = UPCASTERS.get((tag, version))
        if step is None:
            raise UndecodableEvent(f"no upcaster for {tag} v{version}")
        try:
            raw = step(raw)
        except Exception as exc:
            raise UndecodableEvent(f"upcasting {tag} v{version} failed: {type(exc).__name__}: {exc}") from None
        version += 1
        raw["schema_version"] = version
    return raw


# The bytes that matter to nesting: quotes and backslashes (strings) and brackets.
_STRUCTURAL = re.compile(rb'["\\\[\]{}]')


def _nested_deeper_than(data: bytes, bound: int) -> bool:
    """Whether arrays and objects in `data` nest deeper than `bound`, outside JSON strings.
    Cheap for events: with no more opening brackets in all than `bound`, nothing can nest deeper,
    and an event has one or two. Only other input is scanned, by a loop over its structural bytes."""
    if data.count(b"{") + data.count(b"[") <= bound:
        return False
    depth = 0
    in_string = False
    escaped_at = -1
    for match in _STRUCTURAL.finditer(data):
        at = match.start()
        char = data[at]
        if in_string:
            if at == escaped_at:
                continue
            if char == 0x5C:  # backslash: the next byte is escaped
                escaped_at = at + 1
            elif char == 0x22:  # quote
                in_string = False
        elif char == 0x22:
            in_string = True
        elif char in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > bound:
                return True
        elif char in (0x5D, 0x7D):  # ] }
            depth = max(depth - 1, 0)
    return False
