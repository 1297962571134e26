"""`refbus dead list | show | redrive`: the dead letters operators inspect and redrive.

ID: a dead letter's sequence in REFBUS_DEAD_LETTERS (services/eventstore/deadletters.py). `list`
prints no subject: the subject names the child, and a list is what gets pasted into tickets and
chats; `show` prints it, for the one letter an operator is working on. Neither prints a payload
(dead letters hold none: the log keeps the bytes, the letter their sha256 and size).
"""

import argparse
import asyncio
import json
import sys
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from refbus.contracts.vocabulary import Sector

if TYPE_CHECKING:  # the rest is imported where a command runs: `--help` answers at once
    from refbus.services.eventstore.deadletters import DeadEntry, DeadLetters
    from refbus.services.runtime.settings import Settings


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """The `dead` command and its subcommands, on the CLI's subparsers."""
    dead = sub.add_parser(
        "dead", parents=[common], help="dead letters: list, show, redrive",
        description="Dead letters: messages the services set aside (with the reason) or gave up on after their "
        "last delivery. ID is a dead letter's sequence in REFBUS_DEAD_LETTERS. No payload is ever shown: the log "
        "keeps the bytes, the letter their sha256 and size.",
    )
    verbs = dead.add_subparsers(required=True, metavar="VERB", help="list, show or redrive")

    listing = verbs.add_parser("list", parents=[common], help="dead letters, oldest first (no child data)",
                               description="Dead letters, oldest first, without their subjects (which name the child).")
    _filters(listing)
    listing.add_argument("--json", action="store_true", help="print JSON instead of text")
    listing.set_defaults(command=cmd_list)

    show = verbs.add_parser("show", parents=[common], help="one dead letter, with its log subject",
                            description="One dead letter, with the subject of its log message (which names the child).")
    show.add_argument("id", type=int, help="the dead letter's sequence in REFBUS_DEAD_LETTERS")
    show.add_argument("--json", action="store_true", help="print JSON instead of text")
    show.set_defaults(command=cmd_show)

    redrive = verbs.add_parser(
        "redrive", parents=[common], help="ask the sector to handle the message again",
        description="Ask the sector's service to handle the log message again (idempotent: a redrive that lands "
        "is never handled twice). A bulk redrive shows the count and asks first; --yes for scripts.",
    )
    which = redrive.add_mutually_exclusive_group(required=True)
    which.add_argument("id", type=int, nargs="?", help="one dead letter")
    which.add_argument("--matching", action="store_true", help="every dead letter the filters select")
    _filters(redrive)
    redrive.add_argument("--yes", action="store_true", help="do not ask (for scripts)")
    redrive.set_defaults(command=cmd_redrive)


def _filters(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sector", choices=[s.value for s in Sector], help="only this sector's dead letters")
    parser.add_argument("--reason", help="substring of the reason, e.g. 'newer schema'")
    parser.add_argument("--since", help="ISO 8601 time, or a duration like 30m, 6h, 2d")


def since(text: str | None, now: datetime) -> datetime | None:
    if not text:
        return None
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    if text[-1] in units and text[:-1].replace(".", "", 1).isdigit():
        return now - timedelta(**{units[text[-1]]: float(text[:-1])})
    when = datetime.fromisoformat(text)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def select(dead: "DeadLetters", args: argparse.Namespace) -> "list[DeadEntry]":
    after = since(args.since, datetime.now(UTC))
    return [
        e for e in dead.letters
        if (args.sector is None or e.sector == args.sector)
        and (args.reason is None or args.reason.lower() in e.reason.lower())
        and (after is None or e.at >= after)
    ]  # fmt: skip


async def _dead(settings: "Settings") -> "DeadLetters":
    from refbus.services.eventstore import deadletters
    from refbus.services.eventstore.deadletters import DeadLetters
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, identity="operator") as bus:
        return DeadLetters.of(await deadletters.read(bus.nc))


def _row(entry: "DeadEntry", dead: "DeadLetters") -> dict[str, object]:
    redrive = dead.redriven.get(entry.key)
    return {
        "id": entry.id, "kind": entry.kind, "sector": entry.sector, "consumer": entry.consumer,
        "stream_seq": entry.stream_seq, "at": entry.at.isoformat(), "reason": entry.reason,
        "redriven": redrive.id if redrive else None,
    }  # fmt: skip


async def cmd_list(args: argparse.Namespace, settings: "Settings") -> int:
    dead = await _dead(settings)
    rows = [_row(e, dead) for e in select(dead, args)]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for r in rows:
        redriven = f"redriven (#{r['redriven']})" if r["redriven"] else ""
        print(f"{r['id']:>6}  {r['at'][:19]}  {r['sector']:<9} {r['kind']:<14} log seq {r['stream_seq']:<8} "
              f"{str(r['reason'])[:70]}  {redriven}")
    print(f"{len(rows)} dead letter(s)", file=sys.stderr)
    return 0


async def cmd_show(args: argparse.Namespace, settings: "Settings") -> int:
    dead = await _dead(settings)
    entry = next((e for e in dead.letters if e.id == args.id), None)
    if entry is None:
        print(f"no dead letter {args.id}", file=sys.stderr)
        return 1
    record = {**asdict(entry), "at": entry.at.isoformat(), "subject": dead.subject_for(entry)}
    redrive = dead.redriven.get(entry.key)
    record["redriven"] = {"id": redrive.id, "at": redrive.at.isoformat()} if redrive else None
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        for name, value in record.items():
            if value is not None:
                print(f"{name:<12}{value}")
    return 0


async def cmd_redrive(args: argparse.Namespace, settings: "Settings") -> int:
    from refbus.services.eventstore import deadletters
    from refbus.services.eventstore.deadletters import DeadLetters
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, identity="operator") as bus:
        dead = DeadLetters.of(await deadletters.read(bus.nc))
        if args.matching:
            chosen = select(dead, args)
            # One request per message: a message both set aside and exhausted is one redrive.
            chosen = list({e.key: e for e in chosen}.values())
            if not chosen:
                print("no dead letters match", file=sys.stderr)
                return 1
            print(f"{len(chosen)} message(s) to redrive", file=sys.stderr)
            if not args.yes:
                if not sys.stdin.isatty():
                    print("refused: not a terminal; pass --yes to redrive without asking", file=sys.stderr)
                    return 2
                answer = await asyncio.to_thread(input, "redrive them? [y/N] ")
                if answer.strip().lower() not in ("y", "yes"):
                    print("nothing redriven", file=sys.stderr)
                    return 1
        else:
            one = next((e for e in dead.letters if e.id == args.id), None)
            if one is None:
                print(f"no dead letter {args.id}", file=sys.stderr)
                return 1
            chosen = [one]
        sent = again = unknown = 0
        for entry in chosen:
            subject = dead.subject_for(entry) or await _subject_from_log(bus.nc, entry)
            if subject is None:
                unknown += 1
                print(f"dead letter {entry.id}: its log subject is unknown to this user", file=sys.stderr)
                continue
            if await deadletters.request_redrive(bus.nc, entry, subject):
                sent += 1
            else:
                again += 1
    print(json.dumps({"redrive_requested": sent, "already_requested": again, "subject_unknown": unknown}))
    return 0 if not unknown else 1


async def _subject_from_log(nc: Any, entry: "DeadEntry") -> str | None:
    """An exhausted message without a set-aside record: the subject from the log (a user allowed to
    read it: the admin; the operator is not)."""
    from refbus.contracts import subjects

    try:
        msg = await nc.jetstream().get_msg(subjects.STREAM, entry.stream_seq)
    except Exception:
        return None
    return str(msg.subject)
