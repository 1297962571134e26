"""`refbus refer`, `children`, `history`, `import`, `check`, `schema`: writing to and reading the log."""

import argparse
import json
import os
import re
import sys
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from refbus.cli_support import (
    EXIT_NO,
    AsOf,
    UserError,
    as_of,
    audit_reads,
    child_ref,
    command,
    positive_float,
    positive_int,
)
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Dimension, LegalBasis, Sector, Urgency
from refbus.services.audit.purposes import Purpose, Role
from refbus.services.runtime.settings import Settings

if TYPE_CHECKING:
    from refbus.services.eventstore.records import StoredEvent


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """refer, children, history, import, check, schema: reading and writing the log."""
    refer = command(sub, common, "refer", cmd_refer, "send one referral by hand",
                     "Prints {referral_id, seq} as JSON. Exit 2 if the rules refuse it (e.g. a service the receiver "
                     "does not offer).")
    refer.add_argument("--child", required=True, type=child_ref,
                       help="pseudonymous child reference, c + 16 hex digits")
    refer.add_argument("--from", dest="from_sector", required=True, choices=[s.value for s in Sector],
                       help="the referring sector")
    refer.add_argument("--to", dest="to_sector", required=True, choices=[s.value for s in Sector],
                       help="the receiving sector")
    refer.add_argument("--service", required=True, help="a service of the receiver's catalogue: " + "; ".join(
        f"{s.value}: {', '.join(v)}" for s, v in SERVICE_CATALOGUE.items()))
    refer.add_argument("--dimension", required=True, choices=[d.value for d in Dimension],
                       help="the vulnerability the referral answers")
    refer.add_argument("--urgency", default=Urgency.ROUTINE.value, choices=[u.value for u in Urgency],
                       help="how soon the receiver must respond")
    refer.add_argument("--legal-basis", default=LegalBasis.CHILD_PROTECTION_DUTY.value,
                       choices=[b.value for b in LegalBasis], help="why the child's data may be shared")
    refer.add_argument("--respond-by", type=as_of, metavar="TIME",
                       help="when a decision is due (ISO 8601; without a timezone, taken as UTC): the receiver is "
                            "reminded and the referrer told when it passes")
    refer.add_argument("--actor", default=None, help="pseudonymous worker id (w + 8-16 hex digits); default: a new one")

    children = command(sub, common, "children", cmd_children, "list the child references in the log, with their "
                        "event counts")
    children.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")

    history = command(sub, common, "history", cmd_history, "print one child's cross-sector timeline",
                       "Each line shows when the fact occurred (occurred_at, as the sector recorded it), and when "
                       "the log stored it where the two differ (an import of past cases). Unknown child: exit 1, a "
                       "line on stderr, and [] with --json. A filter that leaves nothing of a known child: exit 0.")
    history.add_argument("child", type=child_ref, help="the child reference, c + 16 hex digits")
    history.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")
    history.add_argument("--upto-seq", type=positive_int, metavar="N", help="only events up to log sequence N")
    history.add_argument("--as-of", type=as_of, metavar="TIME",
                         help="only events at or before TIME (ISO 8601, e.g. 2025-06-01 or 2025-06-01T10:00+02:00; "
                              "without a timezone, taken as UTC)")
    history.add_argument("--time", choices=("occurred", "stored"), default="occurred",
                         help="which time --as-of filters on: when the fact occurred, or when the log stored it")
    history.add_argument("--purpose", choices=[p.value for p in Purpose], default=os.environ.get("REFBUS_PURPOSE"),
                         help="why you read this child's data (required: the read is recorded in the access trail, "
                              "`refbus access CHILD`); default: REFBUS_PURPOSE")
    history.add_argument("--as", dest="who", help="who reads (recorded); default: REFBUS_USER, else the login name")
    history.add_argument("--role", choices=[r.value for r in Role], help="the reader's role (recorded); default: "
                         "REFBUS_ROLE, else auditor")
    history.add_argument("--html", type=Path, metavar="FILE",
                         help="write the verified timeline as one self-contained page (a lane per sector) to FILE")

    load = command(sub, common, "import", cmd_import, "load a registry of past events (JSON Lines); resumable",
                    "One event per line, exactly as on the wire (contracts/schema/events.schema.json), each child's "
                    "events in order. FILE.checkpoint records how far the log has acknowledged: a second run skips "
                    "those lines (and says how many); --restart reads from the start (events already in the log are "
                    "recognised, not doubled). Problems are reported by line number. Exit 1 if lines were refused "
                    "or unreadable.")
    load.add_argument("file", type=Path, help="the JSON Lines file")
    load.add_argument("--restart", action="store_true", default=False,
                      help="ignore the checkpoint and read from the start")

    check = command(sub, common, "check", cmd_check, "audit the log: duplicates, illegal transitions, gaps, "
                     "unreadable or misrouted messages, index gaps, stuck referrals",
                     "Exit 0 if clean, 1 if anything was found.")
    check.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")
    check.add_argument("--stuck-after", type=positive_float, metavar="SECONDS",
                       help="count a referral as stuck when not closed this long after its request (default: the "
                            "follow-up deadlines of services/rules/deadlines.py, as the deadline service applies them)")

    schema = command(sub, common, "schema", cmd_schema, "write JSON Schema and AsyncAPI documents from the "
                      "contracts into contracts/schema/")
    schema.add_argument("--check", action="store_true", default=False,
                        help="write nothing; exit 1 if the committed files are stale")


async def cmd_refer(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts.events import ReferralRequested
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.reads.client import ReadUnavailable, ViewReader
    from refbus.services.reads.service import serving
    from refbus.services.rules.lifecycle import IllegalEvent
    from refbus.services.runtime.bus import open_bus

    referral_id = uuid.uuid4()
    try:
        event = ReferralRequested(
            event_id=uuid.uuid4(),
            child=args.child,
            from_sector=Sector(args.from_sector),
            to_sector=Sector(args.to_sector),
            occurred_at=datetime.now(UTC),
            actor=args.actor or "w" + uuid.uuid4().hex[:8],
            correlation_id=referral_id,
            referral_id=referral_id,
            dimension=Dimension(args.dimension),
            service=args.service,
            urgency=Urgency(args.urgency),
            legal_basis=LegalBasis(args.legal_basis),
            respond_by=datetime.fromtimestamp(args.respond_by.timestamp(), UTC) if args.respond_by else None,
        )
        event = msgspec.convert(msgspec.to_builtins(event), type(event))  # validates the field patterns
    except msgspec.ValidationError as exc:
        raise UserError(f"refused: {exc}") from None
    # As the referring sector itself: the server lets it write only events it sends.
    async with open_bus(settings, identity=args.from_sector) as bus, AsyncExitStack() as stack:
        if not settings.nats_url:  # the data dir's own bus, perhaps not `up`: its pager's seed is at hand
            await stack.enter_async_context(
                serving(bus.url, settings.nats_credentials("pager"), settings.tls_context()))
        try:
            store = JetStreamEventStore(bus.nc, reader=ViewReader(bus.nc, event.from_sector))
            stored = (await store.transact(event.child, lambda _state: [event])).stored
            seq = stored[0] if stored else None
        except IllegalEvent as exc:
            raise UserError(f"refused by the rules: {exc.reason}") from None
        except ReadUnavailable as exc:
            raise UserError(f"{exc}: the read service runs with the bus (`refbus up`)") from None
    print(json.dumps({"referral_id": str(referral_id), "seq": seq}))
    return 0


async def cmd_children(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **audit_reads(settings)) as bus:
        found = await JetStreamEventStore(bus.nc).children()
    if args.json:
        print(json.dumps([{"child": c, "events": n} for c, n in sorted(found.items())]))
    else:
        for child, count in sorted(found.items()):
            print(f"{child}  {count:>4} events")
        if not found:
            print("no children in the log", file=sys.stderr)
    return 0


def _occurred(stored: "StoredEvent") -> datetime | None:
    return stored.event.occurred_at if stored.event is not None else None


async def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    """A person's read: recorded in the access trail first (refused without a purpose), verified
    (signatures, chains; a forged page refused), then shown."""
    from refbus.audit_commands import read_for_person, reader_identity, verification_line, write_timeline
    from refbus.child_ref_commands import follow_links
    from refbus.privacy_commands import auditor_views, content_line
    from refbus.services.audit.access import NoPurpose
    from refbus.services.audit.asof import state_as_of
    from refbus.services.runtime.bus import open_bus

    if args.purpose is None:
        purposes = ", ".join(p.value for p in Purpose)
        raise UserError(f"a read of a child's history needs --purpose ({purposes}): it is recorded in the access "
                        "trail")
    as_of: AsOf | None = args.as_of
    if as_of is not None and as_of.assumed_utc:
        print(f"--as-of has no timezone: taken as UTC ({as_of.isoformat()})", file=sys.stderr)
    who, role = reader_identity(args)
    try:
        async with open_bus(settings, **audit_reads(settings)) as bus:
            if args.html is not None:
                checked = await write_timeline(bus.nc, settings, args.child, args.html, args.purpose, who, role)
                print(f"wrote {args.html}: {verification_line(checked)}")
                return 0 if checked.ok else EXIT_NO
            checked = await read_for_person(bus.nc, settings, args.child, args.purpose, who, role, "history")
            followed = await follow_links(bus.nc, settings, args.child, checked, args.purpose, who, role)
            views = await auditor_views(bus.nc, settings, followed.events)  # a read recorded with its purpose
    except NoPurpose as exc:
        raise UserError(f"refused: {exc}") from None
    history = [h for h in followed.events if args.upto_seq is None or h.seq <= args.upto_seq]
    known = len(history)
    if as_of is not None:
        if args.time == "stored":
            history = [h for h in history if h.stored_at <= as_of]
        else:
            history = [h for h in history if (_occurred(h) or h.stored_at) <= as_of]
    if args.json:
        print(msgspec.json.encode([_as_record(h, followed.via, views) for h in history]).decode())
    else:
        for stored in history:
            under = followed.via.get(stored.seq)
            print(_timeline_line(stored) + (f"  [recorded under {under}]" if under else ""))
            if stored.seq in views:
                print(content_line(views[stored.seq]))
        if as_of is not None and history:
            # Each referral as the log held it then: the services' own fold over the events up to then.
            state = state_as_of(followed.events, as_of, by=args.time, child=args.child)
            print(f"as of {as_of.isoformat()} ({args.time} time):")
            for referral in state.referrals.values():
                print(f"  referral {str(referral.referral_id)[:8]}  {referral.referrer.value} -> "
                      f"{referral.receiver.value}  {referral.status.value}")
    if not known:
        print(f"no events for {args.child} in the log" + (f" up to seq {args.upto_seq}" if args.upto_seq else ""),
              file=sys.stderr)
        return EXIT_NO
    for ref, part in followed.parts:
        print(f"verified{'' if ref == args.child else f' (linked {ref})'}: {verification_line(part)}", file=sys.stderr)
    if followed.linked_to is not None:
        print(f"{args.child} was linked to {followed.linked_to[0]} at seq {followed.linked_to[1]}: its history "
              f"continues there (`refbus history {followed.linked_to[0]}` shows both)", file=sys.stderr)
    if not history:
        print(f"{args.child} has {known} events, none {args.time} at or before {as_of.isoformat()}",  # type: ignore[union-attr]
              file=sys.stderr)
    elif as_of is not None:
        print(f"{len(history)} of {known} events {args.time} at or before {as_of.isoformat()}", file=sys.stderr)
    return 0 if followed.ok else EXIT_NO


def _as_record(stored: "StoredEvent", via: dict[int, str], views: dict[int, Any]) -> dict[str, object]:
    record = {"seq": stored.seq, "occurred_at": _occurred(stored), "stored_at": stored.stored_at,
              "event": stored.event, "error": stored.error}
    if stored.seq in views:
        record["content"] = views[stored.seq]  # the sealed content as the auditors read it
    if stored.seq in via:
        record["recorded_under"] = via[stored.seq]  # a reference linked into the one read
    return record


def _minute(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _timeline_line(stored: "StoredEvent") -> str:
    from refbus.contracts.events import ReferralEvent, event_type

    event = stored.event
    if event is None:
        return f"{stored.seq:>8}  stored {_minute(stored.stored_at)}  UNREADABLE: {stored.error}"
    when = f"occurred {_minute(event.occurred_at)}"
    if abs(stored.stored_at - event.occurred_at) >= timedelta(minutes=1):
        when += f" (stored {_minute(stored.stored_at)})"
    route = event.from_sector.value + (f" -> {event.to_sector.value}" if event.to_sector else "")
    detail = ""
    if isinstance(event, ReferralEvent):
        detail = f"referral {str(event.referral_id)[:8]}"
        for name in ("service", "reason", "outcome", "deadline"):
            if hasattr(event, name):
                detail += f" {name}={getattr(event, name)}"
    elif hasattr(event, "linked_to"):
        detail = f"{event.linked_from} continues as {event.linked_to}"  # type: ignore[attr-defined]
    elif hasattr(event, "dimension"):
        detail = f"dimension={event.dimension}"  # type: ignore[attr-defined]
    return f"{stored.seq:>8}  {when:<45} {route:<22} {event_type(event):<30} {detail}".rstrip()


def _import_file(path: Path, restart: bool) -> Path:
    from refbus.registry import checkpoint_path

    if not path.exists():
        raise UserError(f"no such file: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder: give a JSON Lines file (one event per line)")
    if not os.access(path, os.R_OK):
        raise UserError(f"cannot read {path}: permission denied")
    if restart:
        checkpoint_path(path).unlink(missing_ok=True)
    return path


async def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts.subjects import STREAM
    from refbus.registry import ImportFileError, checkpoint_path, import_jsonl, print_progress
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus

    path = _import_file(args.file, args.restart)
    async with open_bus(settings) as bus:
        try:
            info = await bus.nc.jetstream().stream_info(STREAM)
            created = getattr(info, "created", None)
            log_id = f"{STREAM}@{getattr(created, 'isoformat', lambda: created)()}" if created else None
            result = await import_jsonl(JetStreamEventStore(bus.nc), path, progress=print_progress, log_id=log_id)
        except ImportFileError as exc:
            raise UserError(str(exc)) from None
    if result.other_log:
        print(f"{checkpoint_path(path)} was written for another log: read from the start")
    if result.skipped:
        print(f"{result.skipped} lines skipped: already imported ({checkpoint_path(path)}; --restart reads "
              "them again)")
    print(f"{result.lines} lines read: {result.stored} events stored, {result.duplicates} already in the log, "
          f"{len(result.refused)} refused, {len(result.unreadable)} unreadable, in {result.seconds:.1f} s")
    problems = result.unreadable + result.refused
    for problem in problems[:20]:
        print(f"  {problem}", file=sys.stderr)
    if len(problems) > 20:
        print(f"  ... and {len(problems) - 20} more", file=sys.stderr)
    return 0 if not problems else EXIT_NO


async def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts import subjects
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.rules.audit import audit_replay
    from refbus.services.rules.deadlines import DeadlineTable
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **audit_reads(settings)) as bus:
        eventlog = JetStreamEventStore(bus.nc, replay_consumer=subjects.AUDITOR_CONSUMER)
        deadlines = DeadlineTable.from_env()  # the deadline service's table: stuck = overdue
        if args.stuck_after is not None:
            deadlines = DeadlineTable.uniform(timedelta(seconds=args.stuck_after))
        report = await audit_replay(eventlog.replay(), datetime.now(UTC), deadlines)
        index_missing = await eventlog.index_missing(report.last_seq)
    problems = len(report.findings) + index_missing
    if args.json:
        print(json.dumps({
            "events": report.events,
            "last_seq": report.last_seq,
            "children": len(report.states),
            "referrals": len(report.referrals),
            "open_referrals": report.open_referrals,
            "index_missing": index_missing,
            "findings": [{**vars(f), "detail": readable_durations(f.detail)} for f in report.findings],
            "clean": problems == 0,
        }, indent=2))
    else:
        print(f"{report.events} events (seq {report.first_seq}..{report.last_seq}), {len(report.states)} children, "
              f"{len(report.referrals)} referrals ({report.open_referrals} open)")
        for kind in ("duplicate", "illegal", "gap", "unreadable", "misrouted", "stuck"):
            print(f"  {kind:<12}{report.count(kind):>6}")
        print(f"  {'index gap':<12}{index_missing:>6}")
        for finding in report.findings[:50]:
            print(f"  {finding.kind}: seq {finding.seq} {finding.child or ''} {readable_durations(finding.detail)}")
        if len(report.findings) > 50:
            print(f"  ... and {len(report.findings) - 50} more (--json lists them all)")
        print("clean" if problems == 0 else f"{problems} problem(s)")
    return 0 if problems == 0 else EXIT_NO


_TIMEDELTA = re.compile(r"(?:(-?\d+) days?, )?(\d+):(\d\d):(\d\d)(?:\.\d+)?")


def readable_durations(text: str) -> str:
    """Python's '621 days, 18:50:39.824932' in a finding as '621 days', '3 h 20 min' or '45 s'."""

    def readable(match: re.Match[str]) -> str:
        days, hours, minutes, seconds = (int(g or 0) for g in match.groups())
        if days >= 2:
            return f"{days} days"
        hours += 24 * days
        if hours:
            return f"{hours} h {minutes} min"
        return f"{minutes} min" if minutes else f"{seconds} s"

    return _TIMEDELTA.sub(readable, text)


async def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts import documents

    if args.check:
        stale = documents.stale()
        for name in stale:
            print(f"stale: contracts/schema/{name} (run `refbus schema`)", file=sys.stderr)
        return EXIT_NO if stale else 0
    for path in documents.write():
        print(f"wrote {path}")
    return 0
