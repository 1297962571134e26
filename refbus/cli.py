"""`refbus`: run the bus, run the demo, send a referral by hand, read the log.

Every command honours --nats-url / REFBUS_NATS_URL (an existing server, comma-separated for a
cluster) and --data-dir / REFBUS_DATA_DIR (where the embedded server keeps its JetStream store).
Read commands use a running server if there is one, else start the embedded one for their length.
"""

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import structlog

from refbus.community import community
from refbus.contracts import documents
from refbus.contracts.events import ReferralEvent, ReferralRequested, event_type
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Dimension, LegalBasis, Sector, Urgency
from refbus.monitor import add_commands as add_monitor_commands
from refbus.registry import checkpoint_path, import_jsonl, print_progress
from refbus.services.eventstore.bulk import write_all
from refbus.services.eventstore.jetstream_store import JetStreamEventStore
from refbus.services.eventstore.records import StoredEvent
from refbus.services.pager.main import create_app as pager_app
from refbus.services.rules.audit import DEFAULT_DEADLINES, audit_replay
from refbus.services.rules.lifecycle import IllegalEvent
from refbus.services.runtime.bus import open_bus
from refbus.services.runtime.in_process import SECTOR_APPS, history_pager, sector_services
from refbus.services.runtime.logs import configure_logging
from refbus.services.runtime.settings import Settings
from refbus.summary import summarise

log = structlog.get_logger("refbus")


PAGER = "pager"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    configure_logging(level=getattr(args, "log_level", None))
    settings = Settings.from_env(
        nats_url=getattr(args, "nats_url", None),
        data_dir=getattr(args, "data_dir", None),
        sim_speed=getattr(args, "sim_speed", None),
    )
    try:
        return asyncio.run(args.command(args, settings)) or 0
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the command's own parser.
    common = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS)
    common.add_argument("--nats-url", help="existing server(s); default: REFBUS_NATS_URL or the embedded one")
    common.add_argument("--data-dir", type=Path, help="embedded server's data dir; default: REFBUS_DATA_DIR or .refbus")
    common.add_argument("--log-level")
    parser = argparse.ArgumentParser(prog="refbus", description=__doc__.splitlines()[0], parents=[common])
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    up = sub.add_parser("up", parents=[common], help="embedded server + the four sector services and the history "
                        "pager (Ctrl-C stops)")
    up.add_argument("--sim-speed", type=float, help="divide the simulated sectors' delays by this")
    up.set_defaults(command=cmd_up)

    demo = sub.add_parser("demo", parents=[common], help="up + a synthetic community until its referrals settle")
    demo.add_argument("--children", type=int, default=40)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--sim-speed", type=float, default=4.0)
    demo.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for the referrals to settle")
    demo.set_defaults(command=cmd_demo)

    service = sub.add_parser("service", parents=[common], help="run one sector's service, or the history pager, "
                             "against a server")
    service.add_argument("sector", choices=[*(s.value for s in Sector), PAGER])
    service.add_argument("--sim-speed", type=float)
    service.set_defaults(command=cmd_service)

    refer = sub.add_parser("refer", parents=[common], help="send one referral by hand")
    refer.add_argument("--child", required=True, help="pseudonymous child reference, c + 16 hex digits")
    refer.add_argument("--from", dest="from_sector", required=True, choices=[s.value for s in Sector])
    refer.add_argument("--to", dest="to_sector", required=True, choices=[s.value for s in Sector])
    refer.add_argument("--service", required=True, help="; ".join(
        f"{s.value}: {', '.join(v)}" for s, v in SERVICE_CATALOGUE.items()))
    refer.add_argument("--dimension", required=True, choices=[d.value for d in Dimension])
    refer.add_argument("--urgency", default=Urgency.ROUTINE.value, choices=[u.value for u in Urgency])
    refer.add_argument("--legal-basis", default=LegalBasis.CHILD_PROTECTION_DUTY.value,
                       choices=[b.value for b in LegalBasis])
    refer.add_argument("--actor", default="w" + uuid.uuid4().hex[:8], help="pseudonymous worker id")
    refer.set_defaults(command=cmd_refer)

    children = sub.add_parser("children", parents=[common], help="child references in the log")
    children.add_argument("--json", action="store_true")
    children.set_defaults(command=cmd_children)

    history = sub.add_parser("history", parents=[common], help="one child's cross-sector timeline")
    history.add_argument("child")
    history.add_argument("--json", action="store_true")
    history.add_argument("--upto-seq", type=int, help="replay as of this log sequence")
    history.add_argument("--as-of", type=datetime.fromisoformat, help="replay as of this time (ISO 8601)")
    history.set_defaults(command=cmd_history)

    load = sub.add_parser("import", parents=[common], help="load a registry of past events (JSON Lines, one event "
                          "per line as in contracts/schema/events.schema.json); resumable")
    load.add_argument("file", type=Path)
    load.add_argument("--restart", action="store_true", help="ignore the checkpoint and read from the start")
    load.set_defaults(command=cmd_import)

    check = sub.add_parser("check", parents=[common], help="scan the log: duplicates, illegal transitions, "
                           "gaps, stuck referrals; exit 1 if any")
    check.add_argument("--json", action="store_true")
    check.add_argument("--stuck-after", type=float, metavar="SECONDS",
                       help="count a referral as stuck after this long without change (default: by urgency, 1-14 days)")
    check.set_defaults(command=cmd_check)

    schema = sub.add_parser("schema", parents=[common], help="write JSON Schema + AsyncAPI from the contracts")
    schema.add_argument("--check", action="store_true", help="exit 1 if the committed files are stale")
    schema.set_defaults(command=cmd_schema)
    add_monitor_commands(sub, common)  # refbus/monitor.py: `refbus monitor`, `refbus exporter`
    return parser


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings) as bus, sector_services(bus.url, settings), history_pager(bus.url, settings):
        print(f"refbus is up on {bus.url} (data in {settings.data_dir}); Ctrl-C stops", flush=True)
        await _until_signalled()
    print("refbus stopped cleanly", flush=True)
    return 0


async def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    if settings.nats_url is None:
        settings = Settings.from_env(nats_url="nats://127.0.0.1:4222", data_dir=settings.data_dir)
    if args.sector == PAGER:
        os.nice(19)  # background work: the sector services on the same machine come first
        app = pager_app(settings)
    else:
        app = SECTOR_APPS[Sector(args.sector)](settings)
    await app.run()
    return 0


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings) as bus, sector_services(bus.url, settings), history_pager(bus.url, settings):
        eventlog = JetStreamEventStore(bus.nc)
        sent = 0
        for case in community(args.children, args.seed):
            await write_all(eventlog, case.events)
            sent += len(case.referrals)
        print(f"community of {args.children} children (seed {args.seed}) sent {sent} referrals; waiting to settle",
              flush=True)
        deadline = asyncio.get_running_loop().time() + args.timeout
        summary = await summarise(eventlog)
        while summary.open and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(1.0)
            summary = await summarise(eventlog)
        print(summary.render(), flush=True)
    return 0 if summary.open == 0 else 1


async def cmd_refer(args: argparse.Namespace, settings: Settings) -> int:
    referral_id = uuid.uuid4()
    try:
        event = ReferralRequested(
            event_id=uuid.uuid4(),
            child=args.child,
            from_sector=Sector(args.from_sector),
            to_sector=Sector(args.to_sector),
            occurred_at=datetime.now(UTC),
            actor=args.actor,
            correlation_id=referral_id,
            referral_id=referral_id,
            dimension=Dimension(args.dimension),
            service=args.service,
            urgency=Urgency(args.urgency),
            legal_basis=LegalBasis(args.legal_basis),
        )
        event = msgspec.convert(msgspec.to_builtins(event), type(event))  # validates the field patterns
    except msgspec.ValidationError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 2
    async with open_bus(settings) as bus:
        try:
            stored = (await JetStreamEventStore(bus.nc).transact(event.child, lambda _state: [event])).stored
            seq = stored[0] if stored else None
        except IllegalEvent as exc:
            print(f"refused: {exc.reason}", file=sys.stderr)
            return 2
    print(json.dumps({"referral_id": str(referral_id), "seq": seq}))
    return 0


async def cmd_children(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings) as bus:
        found = await JetStreamEventStore(bus.nc).children()
    if args.json:
        print(json.dumps([{"child": c, "events": n} for c, n in sorted(found.items())]))
    else:
        for child, count in sorted(found.items()):
            print(f"{child}  {count:>4} events")
    return 0


async def cmd_history(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings) as bus:
        history = await JetStreamEventStore(bus.nc).history(args.child, upto_seq=args.upto_seq)
    if args.as_of is not None:
        as_of = args.as_of if args.as_of.tzinfo else args.as_of.replace(tzinfo=UTC)
        history = [h for h in history if h.stored_at <= as_of]
    if args.json:
        print(msgspec.json.encode([_as_record(h) for h in history]).decode())
        return 0
    if not history:
        print(f"no events for {args.child}", file=sys.stderr)
        return 1
    for stored in history:
        print(_timeline_line(stored))
    return 0


def _as_record(stored: StoredEvent) -> dict[str, object]:
    return {"seq": stored.seq, "stored_at": stored.stored_at, "event": stored.event, "error": stored.error}


def _timeline_line(stored: StoredEvent) -> str:
    event = stored.event
    when = stored.stored_at.strftime("%Y-%m-%d %H:%M:%S")
    if event is None:
        return f"{stored.seq:>8}  {when}  UNREADABLE: {stored.error}"
    route = event.from_sector.value + (f" -> {event.to_sector.value}" if event.to_sector else "")
    detail = ""
    if isinstance(event, ReferralEvent):
        detail = f"referral {str(event.referral_id)[:8]}"
        for name in ("service", "reason", "outcome"):
            if hasattr(event, name):
                detail += f" {name}={getattr(event, name)}"
    elif hasattr(event, "dimension"):
        detail = f"dimension={event.dimension}"  # type: ignore[attr-defined]
    return f"{stored.seq:>8}  {when}  {route:<22} {event_type(event):<30} {detail}"


async def cmd_import(args: argparse.Namespace, settings: Settings) -> int:
    if args.restart:
        checkpoint_path(args.file).unlink(missing_ok=True)
    async with open_bus(settings) as bus:
        result = await import_jsonl(JetStreamEventStore(bus.nc), args.file, progress=print_progress)
    print(f"{result.lines} lines: {result.stored} events stored, {result.duplicates} already in the log, "
          f"{len(result.refused)} refused, {len(result.unreadable)} unreadable, in {result.seconds:.1f} s")
    for problem in (result.refused + result.unreadable)[:20]:
        print(f"  {problem}", file=sys.stderr)
    return 0 if not (result.refused or result.unreadable) else 1


async def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    async with open_bus(settings) as bus:
        eventlog = JetStreamEventStore(bus.nc)
        deadlines = dict(DEFAULT_DEADLINES)
        if args.stuck_after is not None:
            deadlines = dict.fromkeys(Urgency, timedelta(seconds=args.stuck_after))
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
            "findings": [vars(f) for f in report.findings],
            "clean": problems == 0,
        }, indent=2))
    else:
        print(f"{report.events} events (seq {report.first_seq}..{report.last_seq}), {len(report.states)} children, "
              f"{len(report.referrals)} referrals ({report.open_referrals} open)")
        for kind in ("duplicate", "illegal", "gap", "unreadable", "misrouted", "stuck"):
            print(f"  {kind:<12}{report.count(kind):>6}")
        print(f"  {'index gap':<12}{index_missing:>6}")
        for finding in report.findings[:50]:
            print(f"  {finding.kind}: seq {finding.seq} {finding.child or ''} {finding.detail}")
        print("clean" if problems == 0 else f"{problems} problem(s)")
    return 0 if problems == 0 else 1


async def cmd_schema(args: argparse.Namespace, settings: Settings) -> int:
    if args.check:
        stale = documents.stale()
        for name in stale:
            print(f"stale: contracts/schema/{name} (run `refbus schema`)", file=sys.stderr)
        return 1 if stale else 0
    for path in documents.write():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
