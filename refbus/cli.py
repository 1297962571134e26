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
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from refbus import (
    audit_commands,
    bus_commands,
    child_ref_commands,
    dead,
    log_commands,
    monitor,
    privacy_commands,
    tls_commands,
)
from refbus.cli_support import (
    EXIT_BUS,
    EXIT_INTERRUPTED,
    EXIT_USAGE,
    Command,
    UserError,
    positive_float,
)
from refbus.services.runtime.settings import Settings, SettingsError, check_log_level


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from refbus.services.eventstore.replay import ReplayInterrupted
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
    except ReplayInterrupted as exc:  # two audits of one identity at once: one reader name, one pass at a time
        return _fail(f"{exc} (another audit took its reader over?): run it again", EXIT_BUS)
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
    logs = getattr(args, "logs", None)  # set by the command: "file" for up and demo, "service"
    if logs == "file" and not to_stderr:
        args.log_file = settings.data_dir / "logs" / "refbus.log"
        configure_logging(level=settings.log_level, file=args.log_file)
    elif logs == "service" or to_stderr:
        configure_logging(level=settings.log_level or "INFO")
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


class _Parser(argparse.ArgumentParser):
    """A mistake in the arguments is one line (and where to read more), not the whole usage."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


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
    group.add_argument("--connect-timeout", type=positive_float, metavar="SECONDS",
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


COMMAND_GROUPS: list[Callable[[Any, argparse.ArgumentParser], None]] = [
    bus_commands.add_commands,
    log_commands.add_commands,
    dead.add_commands,
    audit_commands.register,  # keys, verify, seal, timeline, export, access, replay (issue 16)
    monitor.add_commands,  # monitor, exporter (issue 18: refbus/monitor.py)
    child_ref_commands.add_commands,  # child-ref, link-child (issue 17)
    privacy_commands.add_commands,  # erase (issue 17: sealed content)
    tls_commands.add_commands,  # certs (issue 17: TLS)
    # Further command groups: one line each, e.g. `ops_cli.add_commands,` (see _parser's docstring).
]


if __name__ == "__main__":
    sys.exit(main())
