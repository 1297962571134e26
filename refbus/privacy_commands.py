"""`refbus erase`: destroy a child's data keys, so the sealed content of its referrals can no longer
be read anywhere, copies of the log included; the history itself stays, and still verifies, and the
erasure is recorded in it (docs/decisions/0021-sealed-content.md). Also what `history` uses to show
content to an auditor."""

import argparse
import getpass
import os
import sys
import uuid
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from refbus.cli_support import EXIT_NO, UserError, child_ref, command
from refbus.contracts.vocabulary import Sector
from refbus.services.runtime.settings import Settings

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS

    from refbus.contracts.content import ContentView
    from refbus.services.eventstore.records import StoredEvent


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """erase."""
    erase = command(sub, common, "erase", cmd_erase, "destroy a child's data keys: its referrals' content becomes "
                    "unreadable everywhere",
                    "Every wrapped data key of the child is erased from the REFBUS_CHILD_KEYS bucket (the server "
                    "overwrites the stored bytes; a marker says `erased` to readers), after the erasure is recorded in "
                    "the child's history (child.content-erased, with the reason and who ran it). The events stay and "
                    "still verify: their signatures cover the ciphertext, which stays. A child with no readable "
                    "content left is refused (exit 1): nothing is recorded twice.")
    erase.add_argument("child", type=child_ref, help="the child reference, c + 16 hex digits")
    erase.add_argument("--reason", required=True, help="why (recorded in the child's history; at most 500 characters)")
    erase.add_argument("--sector", default=Sector.SOCIAL.value, choices=[s.value for s in Sector],
                       help="the sector on whose decision the content is erased (states the event)")
    erase.add_argument("--actor", default=None, help="pseudonymous worker id (w + 8-16 hex digits); default: a new one")
    erase.add_argument("--as", dest="who", help="who erases (recorded); default: REFBUS_USER, else the login name")


async def cmd_erase(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts.events import ChildContentErased
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.privacy.keystore import ChildKeys, KeysUnavailable
    from refbus.services.rules.lifecycle import IllegalEvent
    from refbus.services.runtime.bus import open_bus

    who = args.who or os.environ.get("REFBUS_USER") or getpass.getuser()
    async with open_bus(settings) as bus:
        child_keys = ChildKeys(bus.nc)
        try:
            live = await child_keys.live(args.child)
        except KeysUnavailable as exc:
            raise UserError(f"refused: {exc}") from None
        if not live:
            print(f"refbus: {args.child} has no readable content to erase (nothing recorded)", file=sys.stderr)
            return EXIT_NO
        now = datetime.now(UTC)
        try:
            event = ChildContentErased(
                event_id=uuid.uuid4(), child=args.child, from_sector=Sector(args.sector), occurred_at=now,
                actor=args.actor or "w" + uuid.uuid4().hex[:8], correlation_id=uuid.uuid4(),
                reason=args.reason, erased_by=who, keys_destroyed=live,
            )
            event = msgspec.convert(msgspec.to_builtins(event), type(event))  # the field bounds, as on the wire
        except msgspec.ValidationError as exc:
            raise UserError(f"refused: {exc}") from None
        try:
            # Recorded first: a failure after it leaves keys to erase, and `erase` again finishes the job.
            done = await JetStreamEventStore(bus.nc).transact(args.child, lambda _state: [event])
        except IllegalEvent as exc:
            print(f"refbus: erasure refused: {exc.reason}", file=sys.stderr)
            return EXIT_NO
        try:
            report = await child_keys.erase(args.child)
        except KeysUnavailable as exc:
            print(f"refbus: the erasure is recorded (seq {done.stored[0]}) but keys remain ({exc}): run refbus erase "
                  "again", file=sys.stderr)
            return EXIT_NO
    print(f"erased {report.destroyed} data key wraps of {args.child}; recorded at seq {done.stored[0]}")
    return 0


async def auditor_views(nc: "NATS", settings: Settings, history: "list[StoredEvent]") -> "dict[int, ContentView]":
    """Each sealed referral's content as the auditors read it (their content key from the local
    ring; without it, `withheld`). Only for a read already recorded with its purpose."""
    from refbus.contracts import subjects
    from refbus.services.privacy.content import ContentKeys

    opener = ContentKeys(nc, settings.keyring(), subjects.AUDITORS)
    views: dict[int, ContentView] = {}
    for stored in history:
        if stored.event is not None:
            view = await opener.open(stored.event)
            if view is not None:
                views[stored.seq] = view
    return views


def content_line(view: "ContentView") -> str:
    if view.content is None:
        return f"{'':>10}content {view.state}"
    fields = msgspec.structs.asdict(view.content)
    shown = "; ".join(f"{name}: {value}" for name, value in fields.items() if value is not None)
    return f"{'':>10}content: {shown}"
