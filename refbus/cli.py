"""`refbus`: run the bus, run the demo, send a referral by hand, read the log.

Which server a command uses is explicit: --nats-url / REFBUS_NATS_URL (an existing server,
comma-separated for a cluster), else the embedded server of --data-dir / REFBUS_DATA_DIR (default
.refbus): the one `refbus up` runs on that dir (recorded in <data_dir>/server.json), else one started
for the command's length. Every command says on stderr which server answered.

Exit status: 0 done; 1 the answer is "no" or "not found" (unknown child, findings, refused events,
demo referrals still open); 2 a mistake in the command (arguments, files, REFBUS_* values);
3 no usable bus (no server, refused, credentials, timeout, no streams, data dir busy); 130 Ctrl-C.
"""

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from refbus import audit_commands, dead, monitor
from refbus.contracts.vocabulary import SERVICE_CATALOGUE, Dimension, LegalBasis, Sector, Urgency
from refbus.gateway_cli import extend_up
from refbus.services.runtime.settings import Settings, SettingsError, check_log_level

if TYPE_CHECKING:
    from refbus.services.eventstore.records import StoredEvent

# The rest (nats-py, FastStream, the services) is imported where a command runs, so that `--help`
# and a mistake in the arguments answer at once.

PAGER = "pager"
DEADLINES = "deadlines"
CHILD_PATTERN = re.compile(r"c[0-9a-f]{16}")
"The contract's child reference (contracts/events.py ChildRef): c + 16 lowercase hex digits."

EXIT_NO = 1
EXIT_USAGE = 2
EXIT_BUS = 3
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in the command: one line saying what is wrong and what to do (exit 2)."""


Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int | None]]


# --- Entry point ------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from refbus.services.runtime.bus import BusUnavailable

    try:
        settings = Settings.from_env(
            nats_url=getattr(args, "nats_url", None),
            data_dir=getattr(args, "data_dir", None),
            sim_speed=getattr(args, "sim_speed", None),
            connect_timeout=getattr(args, "connect_timeout", None),
            log_level=check_log_level(getattr(args, "log_level", None)),
        )
        _configure_logs(args, settings)
        return _run(args.command, args, settings)
    except (UserError, SettingsError) as exc:
        return _fail(str(exc), EXIT_USAGE)
    except BusUnavailable as exc:
        return _fail(str(exc), EXIT_BUS)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)


def _fail(message: str, code: int) -> int:
    print(f"refbus: {message}", file=sys.stderr, flush=True)
    return code


def _configure_logs(args: argparse.Namespace, settings: Settings) -> None:
    """`up` and `demo` log to <data_dir>/logs/refbus.log unless --verbose or --log-level asks for
    stderr; `service` logs to stderr (it is a deployment's process); the other commands log warnings
    to stderr."""
    from refbus.services.runtime.logs import configure_logging

    to_stderr = getattr(args, "verbose", False) or getattr(args, "log_level", None) is not None
    if args.command in (cmd_up, cmd_demo) and not to_stderr:
        args.log_file = settings.data_dir / "logs" / "refbus.log"
        configure_logging(level=settings.log_level, file=args.log_file)
    elif args.command is cmd_service or to_stderr:
        configure_logging(level=settings.log_level or ("INFO" if to_stderr or args.command is cmd_service else None))
    else:
        configure_logging(level=settings.log_level or "WARNING")


def _run(command: Command, args: argparse.Namespace, settings: Settings) -> int:
    """Run a command; SIGINT or SIGTERM cancels it, its cleanup runs (services stop, then the
    embedded server), and the exit status is 130 with one line, no traceback."""
    interrupted = False

    async def runner() -> int:
        nonlocal interrupted
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_signal() -> None:
            nonlocal interrupted
            if not interrupted:
                interrupted = True
                print("\nrefbus: stopping...", file=sys.stderr, flush=True)
                task.cancel()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            return await command(args, settings) or 0
        except asyncio.CancelledError:
            if interrupted:
                return EXIT_INTERRUPTED
            raise
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)

    code = asyncio.run(runner())
    if interrupted:
        print("refbus: interrupted; stopped cleanly", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return code


# --- The parser -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """A mistake in the arguments is one line (and where to read more), not the whole usage."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


class _Formatter(argparse.HelpFormatter):
    """Shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _common_options() -> argparse.ArgumentParser:
    # SUPPRESS: an option given before the command is not reset by the command's own parser.
    common = _Parser(add_help=False, argument_default=argparse.SUPPRESS)
    group = common.add_argument_group("where the bus is")
    group.add_argument("--nats-url", metavar="URL",
                       help="an existing server (nats://[user:password@]host:port, comma-separated for a cluster); "
                            "default: REFBUS_NATS_URL, else the embedded server of the data dir")
    group.add_argument("--data-dir", type=Path, metavar="DIR",
                       help="the embedded server's data dir (its log, server.json, logs/); "
                            "default: REFBUS_DATA_DIR, else .refbus")
    group.add_argument("--connect-timeout", type=_positive_float, metavar="SECONDS",
                       help="give up connecting after this long; default: REFBUS_CONNECT_TIMEOUT, else 5")
    group.add_argument("--log-level", metavar="LEVEL",
                       help="DEBUG, INFO, WARNING or ERROR, to stderr; default: REFBUS_LOG_LEVEL, else WARNING "
                            "(INFO to <data_dir>/logs/refbus.log for up and demo)")
    return common


def _parser() -> argparse.ArgumentParser:
    """Every command of `refbus`. A command group kept in its own module adds itself with one line
    in COMMAND_GROUPS below: a function `(subparsers, common) -> None` that calls
    `subparsers.add_parser(name, parents=[common], formatter_class=..., help=..., description=...)`
    and `set_defaults(command=<async (args, settings) -> int>)`."""
    common = _common_options()
    parser = _Parser(
        prog="refbus", description=__doc__, parents=[common], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(required=True, metavar="COMMAND", title="commands")
    for add_group in COMMAND_GROUPS:
        add_group(sub, common)
    return parser


def _command(sub: Any, common: argparse.ArgumentParser, name: str, command: Command, summary: str,
             description: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=summary, description=f"{summary}.\n\n{description}".strip(),
        formatter_class=_Formatter,
    )
    parser.set_defaults(command=command)
    return parser


def _core_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    up = _command(sub, common, "up", cmd_up, "run the bus: the embedded server, the four sector services and the "
                  "history pager, until Ctrl-C",
                  "One `up` or `demo` per data dir (a lock, <data_dir>/up.lock). The server's URL and monitoring port "
                  "are recorded in <data_dir>/server.json, where the other commands find it. Logs go to "
                  "<data_dir>/logs/refbus.log unless --verbose. The simulated sectors work referrals requested "
                  "within REFBUS_SIM_MAX_AGE_DAYS (7) of their start; older open ones are left to an operator "
                  "(`refbus check` reports them stuck). REFBUS_HEALTH_PORT=P serves /healthz for social, health, "
                  "education, justice and the pager on P..P+4.")
    up.add_argument("--sim-speed", type=_positive_float, metavar="N",
                    help="divide the simulated sectors' delays by N; default: REFBUS_SIM_SPEED, else 1")
    extend_up(up)
    up.add_argument("--verbose", action="store_true", default=False, help="logs to stderr instead of the log file")

    demo = _command(sub, common, "demo", cmd_demo, "up, plus a synthetic community, until its referrals settle; "
                    "prints a summary",
                    "The community is drawn from the seed: the same seed gives the same children, so a second run "
                    "with the same seed adds nothing (and says so). Exit 1 if referrals are still open at --timeout.")
    demo.add_argument("--children", type=_positive_int, default=40, help="children in the community")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the community")
    demo.add_argument("--sim-speed", type=_positive_float, default=4.0, metavar="N",
                      help="divide the simulated sectors' delays by N")
    demo.add_argument("--timeout", type=_positive_float, default=120.0, metavar="SECONDS",
                      help="how long to wait for the referrals to settle")
    demo.add_argument("--verbose", action="store_true", default=False, help="logs to stderr instead of the log file")

    service = _command(sub, common, "service", cmd_service, "run one sector's service, the history pager or the "
                       "deadline service, against a running bus",
                       "The bus: --nats-url, else the server `refbus up` runs on the data dir. Runs until Ctrl-C; "
                       "reconnects for ever once connected. Logs to stderr (JSON lines when not on a terminal).")
    service.add_argument("sector", choices=[*(s.value for s in Sector), PAGER, DEADLINES],
                         help="which service: a sector, the history pager (one per bus, at low CPU priority) or "
                              "the deadline service (one per bus)")
    service.add_argument("--sim-speed", type=_positive_float, metavar="N",
                         help="divide the simulated sector's delays by N; default: REFBUS_SIM_SPEED, else 1")

    refer = _command(sub, common, "refer", cmd_refer, "send one referral by hand",
                     "Prints {referral_id, seq} as JSON. Exit 2 if the rules refuse it (e.g. a service the receiver "
                     "does not offer).")
    refer.add_argument("--child", required=True, type=_child_ref,
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
    refer.add_argument("--respond-by", type=_as_of, metavar="TIME",
                       help="when a decision is due (ISO 8601; without a timezone, taken as UTC): the receiver is "
                            "reminded and the referrer told when it passes")
    refer.add_argument("--actor", default=None, help="pseudonymous worker id (w + 8-16 hex digits); default: a new one")

    children = _command(sub, common, "children", cmd_children, "list the child references in the log, with their "
                        "event counts")
    children.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")

    history = _command(sub, common, "history", cmd_history, "print one child's cross-sector timeline",
                       "Each line shows when the fact occurred (occurred_at, as the sector recorded it), and when "
                       "the log stored it where the two differ (an import of past cases). Unknown child: exit 1, a "
                       "line on stderr, and [] with --json. A filter that leaves nothing of a known child: exit 0.")
    history.add_argument("child", type=_child_ref, help="the child reference, c + 16 hex digits")
    history.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")
    history.add_argument("--upto-seq", type=_positive_int, metavar="N", help="only events up to log sequence N")
    history.add_argument("--as-of", type=_as_of, metavar="TIME",
                         help="only events at or before TIME (ISO 8601, e.g. 2025-06-01 or 2025-06-01T10:00+02:00; "
                              "without a timezone, taken as UTC)")
    history.add_argument("--time", choices=("occurred", "stored"), default="occurred",
                         help="which time --as-of filters on: when the fact occurred, or when the log stored it")

    load = _command(sub, common, "import", cmd_import, "load a registry of past events (JSON Lines); resumable",
                    "One event per line, exactly as on the wire (contracts/schema/events.schema.json), each child's "
                    "events in order. FILE.checkpoint records how far the log has acknowledged: a second run skips "
                    "those lines (and says how many); --restart reads from the start (events already in the log are "
                    "recognised, not doubled). Problems are reported by line number. Exit 1 if lines were refused "
                    "or unreadable.")
    load.add_argument("file", type=Path, help="the JSON Lines file")
    load.add_argument("--restart", action="store_true", default=False,
                      help="ignore the checkpoint and read from the start")

    check = _command(sub, common, "check", cmd_check, "audit the log: duplicates, illegal transitions, gaps, "
                     "unreadable or misrouted messages, index gaps, stuck referrals",
                     "Exit 0 if clean, 1 if anything was found.")
    check.add_argument("--json", action="store_true", default=False, help="print JSON instead of text")
    check.add_argument("--stuck-after", type=_positive_float, metavar="SECONDS",
                       help="count a referral as stuck when not closed this long after its request (default: the "
                            "follow-up deadlines of services/rules/deadlines.py, as the deadline service applies them)")

    schema = _command(sub, common, "schema", cmd_schema, "write JSON Schema and AsyncAPI documents from the "
                      "contracts into contracts/schema/")
    schema.add_argument("--check", action="store_true", default=False,
                        help="write nothing; exit 1 if the committed files are stale")


COMMAND_GROUPS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    _core_commands,
    dead.add_commands,
    audit_commands.register,  # keys, verify, seal, timeline, export, access, replay (issue 16)
    monitor.add_commands,  # monitor, exporter (issue 18: refbus/monitor.py)
    # Further command groups: one line each, e.g. `ops_cli.add_commands,` (see _parser's docstring).
]


# --- Argument types: one clear line for each mistake -------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def _child_ref(text: str) -> str:
    if not CHILD_PATTERN.fullmatch(text):
        hint = " (a subject wildcard is not a child)" if any(c in text for c in "*>.") else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a child reference: c followed by 16 lowercase hex digits, e.g. c0123456789abcdef{hint}"
        )
    return text


class AsOf(datetime):
    """A datetime that remembers whether its timezone was given."""

    assumed_utc: bool = False


def _as_of(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2025-06-01, 2025-06-01T10:00, 2025-06-01T10:00+02:00)"
        ) from None
    value = AsOf.fromtimestamp(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp(), UTC)
    value.assumed_utc = parsed.tzinfo is None
    return value


# --- Commands ---------------------------------------------------------------------------------


@contextlib.contextmanager
def _one_per_data_dir(settings: Settings, what: str) -> Any:
    """One `up` or `demo` per data dir."""
    from refbus.services.runtime.bus import BusUnavailable
    from refbus.services.runtime.embedded import Locked, file_lock

    path = settings.data_dir / "up.lock"
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise UserError(f"the data dir {settings.data_dir} is not a directory")
    try:
        with file_lock(path, f"refbus {what}"):
            yield
    except Locked as exc:
        raise BusUnavailable(
            f"refbus is already up on {settings.data_dir}, {exc.holder}: one up or demo per data dir; "
            "stop it (Ctrl-C), or use its bus from other commands, or choose another --data-dir"
        ) from None


def _say(text: str) -> None:
    print(text, flush=True)


def _where_data(settings: Settings) -> str:
    if settings.nats_url:  # the log is the server's; the data dir holds the lock, the event-id key, the logs
        return f"local files in {settings.data_dir}"
    return f"data in {settings.data_dir}"


def _where_logs(args: argparse.Namespace) -> str:
    path = getattr(args, "log_file", None)
    return f"; logs in {path}" if path else ""


def _health_lines(settings: Settings) -> list[str]:
    from refbus.services.runtime.in_process import HEALTH_ORDER, health_port

    if settings.health_port is None:
        return []
    ports = ", ".join(f"{getattr(a, 'value', a)} {health_port(settings, a)}" for a in HEALTH_ORDER)
    return [f"health endpoints (GET /healthz on 127.0.0.1): {ports}"]


async def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.runtime.bus import open_bus
    from refbus.services.runtime.in_process import deadline_service, history_pager, sector_services

    with _one_per_data_dir(settings, "up"):
        async with open_bus(settings, exclusive=True, announce=False) as bus:
            async with sector_services(bus.url, settings), history_pager(bus.url, settings), \
                    deadline_service(bus.url, settings):
                _say(f"refbus is up: {bus.description}; {_where_data(settings)}{_where_logs(args)}")
                for line in _health_lines(settings):
                    _say(line)
                _say("Ctrl-C stops")
                await asyncio.Event().wait()  # until a signal cancels us
    return 0


async def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.community import community
    from refbus.services.eventstore.bulk import write_all
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus
    from refbus.services.runtime.in_process import deadline_service, history_pager, sector_services
    from refbus.summary import summarise

    with _one_per_data_dir(settings, "demo"):
        async with open_bus(settings, exclusive=True, announce=False) as bus:
            async with sector_services(bus.url, settings), history_pager(bus.url, settings), \
                    deadline_service(bus.url, settings):
                _say(f"{bus.description}; {_where_data(settings)}{_where_logs(args)}")
                for line in _health_lines(settings):
                    _say(line)
                eventlog = JetStreamEventStore(bus.nc)
                cases = list(community(args.children, args.seed))
                present = await eventlog.children()
                new = [case for case in cases if case.child not in present]
                sent = 0
                for case in new:
                    report = await write_all(eventlog, case.events)
                    if report.stored:
                        sent += len(case.referrals)
                ours = {case.child for case in cases}
                if not new:
                    _say(f"the community of {args.children} children (seed {args.seed}) is already in the log: "
                         "0 new referrals sent")
                else:
                    again = f" ({len(cases) - len(new)} of its children were already in the log)" if len(new) < len(
                        cases) else ""
                    _say(f"the community of {args.children} children (seed {args.seed}): {sent} referrals sent{again}")
                loop = asyncio.get_running_loop()
                deadline = loop.time() + args.timeout
                summary = await summarise(eventlog)
                if summary.open_of(ours):
                    _say(f"waiting up to {args.timeout:g} s for its {summary.open_of(ours)} open referrals to settle")
                while summary.open_of(ours) and loop.time() < deadline:
                    await asyncio.sleep(1.0)
                    summary = await summarise(eventlog)
                _say(summary.render())
                still = summary.open_of(ours)
                if still:
                    _say(f"{still} of the community's referrals still open after {args.timeout:g} s")
    return 0 if not still else EXIT_NO


async def cmd_service(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.deadlines.main import create_app as deadlines_app
    from refbus.services.pager.main import create_app as pager_app
    from refbus.services.runtime.bus import BusUnavailable, connect, require_streams, safe_url
    from refbus.services.runtime.embedded import read_record
    from refbus.services.runtime.in_process import SECTOR_APPS

    url = settings.nats_url
    if url is None:
        record = read_record(settings.data_dir)
        if record is None or not record.server_alive():
            raise BusUnavailable(
                f"no bus running on {settings.data_dir} (no live {settings.data_dir / 'server.json'}): start "
                "`refbus up` there, or pass --nats-url"
            )
        url = record.url
    settings = replace(settings, nats_url=url)
    # Bounded, with one clear line, before the app's own connection (which then reconnects for ever).
    probe = await connect(url, f"refbus-{args.sector}-probe", settings.connect_timeout, reconnect=False)
    try:
        await require_streams(probe, url)
        server_name = (probe._server_info or {}).get("server_name", "?")
    finally:
        await probe.close()
    print(f"using {safe_url(url)} (server {server_name})", file=sys.stderr, flush=True)
    if args.sector == PAGER:
        os.nice(19)  # background work: the sector services on the same machine come first
        app = pager_app(settings)
    elif args.sector == DEADLINES:
        app = deadlines_app(settings)
    else:
        app = SECTOR_APPS[Sector(args.sector)](settings)
    await app.start()
    try:
        print(f"refbus service {args.sector} is running; Ctrl-C stops", file=sys.stderr, flush=True)
        await asyncio.Event().wait()
    finally:
        await app.stop()
    return 0


def _reads(settings: Settings) -> dict[str, bool]:
    """A read provisions the streams of an embedded server (a fresh data dir); on a server given by
    URL it requires them (a read does not create anyone's streams)."""
    return {"provision": settings.nats_url is None}


async def cmd_refer(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.contracts.events import ReferralRequested
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
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
    async with open_bus(settings) as bus:
        try:
            stored = (await JetStreamEventStore(bus.nc).transact(event.child, lambda _state: [event])).stored
            seq = stored[0] if stored else None
        except IllegalEvent as exc:
            raise UserError(f"refused by the rules: {exc.reason}") from None
    print(json.dumps({"referral_id": str(referral_id), "seq": seq}))
    return 0


def _utc(when: datetime | None) -> datetime | None:
    return when if when is None or when.tzinfo else when.replace(tzinfo=UTC)


async def cmd_children(args: argparse.Namespace, settings: Settings) -> int:
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **_reads(settings)) as bus:
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
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.runtime.bus import open_bus

    as_of: AsOf | None = args.as_of
    if as_of is not None and as_of.assumed_utc:
        print(f"--as-of has no timezone: taken as UTC ({as_of.isoformat()})", file=sys.stderr)
    async with open_bus(settings, **_reads(settings)) as bus:
        history = await JetStreamEventStore(bus.nc).history(args.child, upto_seq=args.upto_seq)
    known = len(history)
    if as_of is not None:
        if args.time == "stored":
            history = [h for h in history if h.stored_at <= as_of]
        else:
            history = [h for h in history if (_occurred(h) or h.stored_at) <= as_of]
    if args.json:
        print(msgspec.json.encode([_as_record(h) for h in history]).decode())
    else:
        for stored in history:
            print(_timeline_line(stored))
    if not known:
        print(f"no events for {args.child} in the log" + (f" up to seq {args.upto_seq}" if args.upto_seq else ""),
              file=sys.stderr)
        return EXIT_NO
    if not history:
        print(f"{args.child} has {known} events, none {args.time} at or before {as_of.isoformat()}",  # type: ignore[union-attr]
              file=sys.stderr)
    elif as_of is not None:
        print(f"{len(history)} of {known} events {args.time} at or before {as_of.isoformat()}", file=sys.stderr)
    return 0


def _as_record(stored: "StoredEvent") -> dict[str, object]:
    return {"seq": stored.seq, "occurred_at": _occurred(stored), "stored_at": stored.stored_at,
            "event": stored.event, "error": stored.error}


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
    from refbus.services.eventstore.jetstream_store import JetStreamEventStore
    from refbus.services.rules.audit import audit_replay
    from refbus.services.rules.deadlines import DeadlineTable
    from refbus.services.runtime.bus import open_bus

    async with open_bus(settings, **_reads(settings)) as bus:
        eventlog = JetStreamEventStore(bus.nc)
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


if __name__ == "__main__":
    sys.exit(main())
