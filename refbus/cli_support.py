"""What the CLI's command modules share: exit codes, the one-line user error, argument types, and
the way a command is declared (so that every command and option has its help)."""

import argparse
import re
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from refbus.services.runtime.settings import Settings

if TYPE_CHECKING:
    pass

PAGER = "pager"


DEADLINES = "deadlines"


AUDITOR = "auditor"
"The NATS identity of the commands that read the log or a child's data (README \"Identities and TLS\")."


CHILD_PATTERN = re.compile(r"c[0-9a-f]{16}")
"The contract's child reference (contracts/events.py ChildRef): c + 16 lowercase hex digits."


EXIT_NO = 1


EXIT_USAGE = 2


EXIT_BUS = 3


EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in the command: one line saying what is wrong and what to do (exit 2)."""


Command = Callable[[argparse.Namespace, Settings], Coroutine[Any, Any, int | None]]


class Formatter(argparse.HelpFormatter):
    """Shows each option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def command(sub: Any, common: argparse.ArgumentParser, name: str, command: Command, summary: str,
             description: str = "") -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = sub.add_parser(
        name, parents=[common], help=summary, description=f"{summary}.\n\n{description}".strip(),
        formatter_class=Formatter,
    )
    parser.set_defaults(command=command)
    return parser


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {text!r}")
    return value


def child_ref(text: str) -> str:
    if not CHILD_PATTERN.fullmatch(text):
        hint = " (a subject wildcard is not a child)" if any(c in text for c in "*>.") else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a child reference: c followed by 16 lowercase hex digits, e.g. c0123456789abcdef{hint}"
        )
    return text


class AsOf(datetime):
    """A datetime that remembers whether its timezone was given."""

    assumed_utc: bool = False


def as_of(text: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an ISO 8601 time (e.g. 2025-06-01, 2025-06-01T10:00, 2025-06-01T10:00+02:00)"
        ) from None
    value = AsOf.fromtimestamp(parsed.replace(tzinfo=parsed.tzinfo or UTC).timestamp(), UTC)
    value.assumed_utc = parsed.tzinfo is None
    return value


def say(text: str) -> None:
    print(text, flush=True)


def reads(settings: Settings) -> dict[str, bool]:
    """A read provisions the streams of an embedded server (a fresh data dir); on a server given by
    URL it requires them (a read does not create anyone's streams)."""
    return {"provision": settings.nats_url is None}


def audit_reads(settings: Settings) -> dict[str, Any]:
    """open_bus's options for an auditor's command: a read (`reads`) as the identity `auditor`, which
    reads everything an audit needs and writes only the access trail (deploy/nats-permissions.conf)."""
    return {"identity": AUDITOR, **reads(settings)}
