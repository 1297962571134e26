"""`refbus child-ref` and `refbus link-child`: a child's reference from its national identifier (or a
random one while it has none), and the link from the random reference to the derived one. Also what
`history` uses to follow a link (docs/decisions/0017-child-references.md)."""

import argparse
import sys
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from refbus.cli_support import EXIT_NO, UserError, child_ref, command
from refbus.contracts.vocabulary import Sector
from refbus.services.runtime.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from refbus.services.audit.reads import VerifiedHistory
    from refbus.services.eventstore.records import StoredEvent

_SCHEMES = {"cnp": "ro.cnp", "idnp": "md.idnp", "cpf": "br.cpf"}


def _identifier_options(parser: argparse.ArgumentParser, required: bool) -> Any:
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--cnp", metavar="N", help="a Romanian CNP (13 digits); - reads it from stdin")
    group.add_argument("--idnp", metavar="N", help="a Moldovan IDNP (13 digits); - reads it from stdin")
    group.add_argument("--cpf", metavar="N", help="a Brazilian CPF (11 digits, dots and dash allowed); - reads it "
                       "from stdin")
    return group


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """child-ref, link-child."""
    ref = command(sub, common, "child-ref", cmd_child_ref, "print a child's reference from its national identifier",
                  "The reference is keyed with the deployment's child-reference key (REFBUS_CHILD_REF_KEY, else "
                  "<data_dir>/secrets/child-ref.key, made on first use): every sector holding the key computes the "
                  "same one, and the identifier never travels. An identifier of the wrong format or check digit is "
                  "exit 2 with one line saying which. Needs no bus.")
    group = _identifier_options(ref, required=True)
    group.add_argument("--undocumented", action="store_true", default=False,
                       help="a fresh random reference for a child without documents (link it with `refbus "
                            "link-child` once the papers exist)")

    link = command(sub, common, "link-child", cmd_link_child, "link a child's random reference to the one derived "
                   "from its papers",
                   "Stored on both references' histories in one atomic write, as --sector; `history` of the derived "
                   "reference then shows the random one's events too. A reference is linked onward at most once, "
                   "never from a derived one, never into one already linked onward: a refused link is exit 1 with "
                   "the rule.")
    link.add_argument("linked_from", type=child_ref, metavar="RANDOM_REF", help="the reference given without documents")
    target = _identifier_options(link, required=True)
    target.add_argument("--to", type=child_ref, metavar="REF", help="the derived reference itself")
    link.add_argument("--sector", required=True, choices=[s.value for s in Sector],
                      help="the sector stating the link (the one that learned the identifier)")
    link.add_argument("--actor", default=None, help="pseudonymous worker id (w + 8-16 hex digits); default: a new one")


def _identifier(args: argparse.Namespace) -> tuple[str, str] | None:
    for option, scheme in _SCHEMES.items():
        value = getattr(args, option, None)
        if value is not None:
            # An identifier on the command line is in the shell's history: `-` keeps it out.
            return scheme, sys.stdin.readline().strip() if value == "-" else value
    return None


def derived_reference(args: argparse.Namespace, settings: Settings) -> str | None:
    """The reference of --cnp/--idnp/--cpf, or None when none was given; UserError for a bad one."""
    from refbus.services.rules import child_refs

    given = _identifier(args)
    if given is None:
        return None
    try:
        return child_refs.derive(settings.child_ref_key(), child_refs.Scheme(given[0]), given[1])
    except child_refs.InvalidIdentifier as exc:
        raise UserError(str(exc)) from None


async def cmd_child_ref(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.rules import child_refs

    reference = child_refs.undocumented() if args.undocumented else derived_reference(args, settings)
    print(reference)
    return 0


async def cmd_link_child(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.rules.child_links import link_events
    from refbus.services.rules.lifecycle import IllegalEvent
    from refbus.services.runtime.bus import open_bus

    linked_to = args.to or derived_reference(args, settings)
    assert linked_to is not None  # argparse requires one of them
    actor = args.actor or "w" + uuid.uuid4().hex[:8]
    events = link_events(settings.event_id_key(), args.linked_from, linked_to, Sector(args.sector), actor,
                         datetime.now(UTC))
    try:
        for event in events:  # a Struct is not validated when built: through the codec's checks, as on the wire
            msgspec.convert(msgspec.to_builtins(event), type(event))
    except msgspec.ValidationError as exc:
        raise UserError(f"refused: {exc}") from None
    async with open_bus(settings) as bus:
        try:
            done = await JetStreamEventStore(bus.nc).transact_together(
                (args.linked_from, linked_to), lambda _states: events)
        except IllegalEvent as exc:
            print(f"refbus: link refused: {exc.reason}", file=sys.stderr)
            return EXIT_NO
    stored = [seq for result in done for seq in result.stored]
    if not stored:
        print(f"{args.linked_from} was already linked to {linked_to}")
    else:
        print(f"linked {args.linked_from} -> {linked_to} (seq {', '.join(map(str, stored))})")
    return 0


# -- history across a link ------------------------------------------------------------------------


@dataclass
class Followed:
    """A child's history with the histories linked into it, in log order."""

    events: list["StoredEvent"]
    via: dict[int, str] = field(default_factory=dict)
    "Sequence -> the linked reference it was recorded under (events of the read reference: absent)."
    parts: list[tuple[str, "VerifiedHistory"]] = field(default_factory=list)
    linked_to: tuple[str, int] | None = None
    "Where the read reference continues (a derived reference, and the link's sequence), if it was linked."

    @property
    def ok(self) -> bool:
        return all(checked.ok for _, checked in self.parts)


async def follow_links(nc: "NATS", settings: Settings, child: str, checked: "VerifiedHistory", purpose: str | None,
                       who: str, role: str) -> Followed:
    """`checked` (the child's verified history) with the verified histories of the references linked
    into it, each read recorded in the access trail as its own reference's."""
    from refbus.audit_commands import read_for_person
    from refbus.contracts.events import ChildReferenceLinked

    followed = Followed(list(checked.events), parts=[(child, checked)])
    sources: list[str] = []
    for stored in checked.events:
        event = stored.event
        if isinstance(event, ChildReferenceLinked) and event.child == child:
            if event.linked_to == child and event.linked_from not in sources:
                sources.append(event.linked_from)
            elif event.linked_from == child:
                followed.linked_to = (event.linked_to, stored.seq)
    seen = {stored.seq for stored in followed.events}
    for source in sources:  # one step only: the rules keep links one step long
        linked = await read_for_person(nc, settings, source, purpose, who, role, f"history via {child}")
        followed.parts.append((source, linked))
        for stored in linked.events:
            twin = isinstance(stored.event, ChildReferenceLinked) and stored.event.linked_to == child
            if stored.seq not in seen and not twin:  # the link's own half on `source`: shown once, as ours
                seen.add(stored.seq)
                followed.events.append(stored)
                followed.via[stored.seq] = source
    followed.events.sort(key=lambda stored: stored.seq)
    return followed
