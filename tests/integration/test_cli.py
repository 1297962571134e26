"""The first hour of a new user (issue 14): every README command and every mistake a user met, run as
the user runs them (`refbus` in a subprocess) against real servers in temporary data dirs.

Each run is checked for its exit status, one clear line where it fails, no traceback, and no hang
past its bound (the subprocess timeout). No test depends on port 4222 or 8222 being free: the
embedded servers get their ports from REFBUS_PORT / REFBUS_MONITOR_PORT. One `refbus up` serves the
module.
"""

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from refbus.cli import _parser
from refbus.services.runtime import identities
from refbus.services.runtime.embedded import EmbeddedNats, free_port, read_record
from tests.factories import new_child
from tests.integration import secured as secured_users
from tests.integration.cli_runner import Up, _env, failure, refbus

pytestmark = pytest.mark.integration


# --- Help -------------------------------------------------------------------------------------


def test_every_command_and_option_is_described() -> None:
    parser = _parser()
    commands = parser._subparsers._group_actions[0]  # type: ignore[union-attr]
    assert set(commands.choices) >= {"up", "demo", "service", "refer", "children", "history", "import", "check",
                                     "schema"}
    described = {c.dest for c in commands._choices_actions}
    assert described == set(commands.choices), "a command without a one-line description"
    for name, sub in commands.choices.items():
        assert sub.description, name
        for action in sub._actions:
            assert action.help, f"refbus {name} {action.option_strings or action.dest}: no help"


def test_help_runs_for_every_command(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    assert refbus("--help", env=env).code == 0
    for name in ("up", "demo", "service", "refer", "children", "history", "import", "check", "schema"):
        run = refbus(name, "--help", env=env)
        assert run.code == 0 and "usage: refbus " + name in run.out
    assert "(default: 40)" in refbus("demo", "--help", env=env).out


# --- Which server -----------------------------------------------------------------------------


def test_up_records_its_server_and_says_which(up: Up) -> None:
    record = read_record(up.data_dir)
    assert record is not None and record.port == int(up.env["REFBUS_PORT"])
    assert record.monitor_port == int(up.env["REFBUS_MONITOR_PORT"])
    said = "".join(up.process.out)
    assert record.url in said and f"monitoring http://127.0.0.1:{record.monitor_port}" in said
    assert f"logs in {up.data_dir}/logs/refbus.log" in said
    assert (up.data_dir / "logs" / "refbus.log").exists()


def test_commands_use_the_server_of_their_data_dir_and_say_so(up: Up, tmp_path: Path) -> None:
    run = refbus("children", env=up.env)
    assert run.code == 0 and f"using the embedded server of {up.data_dir}" in run.err
    other = refbus("children", "--json", env=_env(tmp_path / "other"))
    assert other.code == 0 and json.loads(other.out) == []
    assert f"started the embedded server of {tmp_path / 'other'}" in other.err
    assert read_record(tmp_path / "other") is None  # stopped with its command


def test_one_up_or_demo_per_data_dir(up: Up) -> None:
    failure(refbus("up", env=up.env), 3, "already up")
    failure(refbus("demo", "--children", "2", env=up.env), 3, "already up")


def test_a_stale_record_is_replaced_and_a_foreign_server_refused(up: Up, tmp_path: Path) -> None:
    record = read_record(up.data_dir)
    assert record is not None
    stale = tmp_path / "stale"
    stale.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    (stale / "server.json").write_text(json.dumps({**record.__dict__, "pid": dead.pid, "owner_pid": dead.pid}))
    run = refbus("children", env=_env(stale))
    assert run.code == 0 and f"started the embedded server of {stale}" in run.err
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "server.json").write_text(json.dumps({**record.__dict__, "server_id": "NOTTHESAMESERVER"}))
    failure(refbus("children", env=_env(foreign)), 3, "refusing", "server.json")


# --- Bounded connections ----------------------------------------------------------------------


def test_no_server_at_the_url_is_one_line_not_a_retry_loop(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    url = f"nats://127.0.0.1:{free_port()}"
    started = time.monotonic()
    failure(refbus("children", "--nats-url", url, env=env), 3, url, "refused")
    failure(refbus("refer", "--nats-url", url, "--child", new_child(), "--from", "social", "--to", "health",
                   "--service", "vaccination", "--dimension", "health", env=env), 3, "refused")
    assert time.monotonic() - started < 15


def test_service_without_a_server_is_bounded(tmp_path: Path) -> None:
    failure(refbus("service", "health", env=_env(tmp_path / "data")), 3, "no bus running", "refbus up")
    url = f"nats://127.0.0.1:{free_port()}"
    failure(refbus("service", "health", "--nats-url", url, env=_env(tmp_path / "data")), 3, "refused")


def test_a_server_that_never_answers_times_out(tmp_path: Path) -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        url = f"nats://127.0.0.1:{silent.getsockname()[1]}"
        started = time.monotonic()
        run = refbus("children", "--nats-url", url, "--connect-timeout", "1", env=_env(tmp_path / "data"))
    failure(run, 3, url)
    assert time.monotonic() - started < 10


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    """A server that wants credentials, and has no refbus streams."""
    where = tmp_path_factory.mktemp("secured")
    server = secured_users.start(where / "nats", where / "secrets")
    yield server
    server.stop()


def test_credentials_wanted_or_wrong_is_one_line(secured: EmbeddedNats, tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    failure(refbus("children", "--nats-url", secured.url, env=env), 3, "authorization")
    # A seed the server does not know (another deployment's admin): refused, and never printed.
    stranger = identities.ensure(tmp_path / "other", ("admin",))
    seed = identities.seed_path(tmp_path / "other", "admin")
    run = refbus("children", "--nats-url", secured.url, env={**env, "REFBUS_NATS_NKEY_SEED_FILE": str(seed)})
    failure(run, 3, "authorization")
    assert seed.read_text().strip() not in run.err + run.out and stranger["admin"] not in run.err
    # A file that holds no seed is named, its content not shown.
    junk = tmp_path / "junk.nk"
    junk.write_text("SUnot-a-seed-at-all")
    run = refbus("children", "--nats-url", secured.url, env={**env, "REFBUS_NATS_NKEY_SEED_FILE": str(junk)})
    failure(run, 3, str(junk), "does not hold an nkey user seed")
    assert "not-a-seed" not in run.err


def test_a_bus_without_the_streams_is_named(secured: EmbeddedNats, tmp_path: Path) -> None:
    env = _env(tmp_path / "data") | secured_users.env_for(secured, "admin")
    failure(refbus("service", "health", env=env), 3, "no REFBUS stream", "refbus up")
    failure(refbus("children", env=env), 3, "no REFBUS stream")


# --- Mistakes of the user ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("REFBUS_SIM_SPEED", "fast", ("REFBUS_SIM_SPEED must be a number", "'fast'")),
        ("REFBUS_LOG_LEVEL", "loud", ("REFBUS_LOG_LEVEL must be one of",)),
        ("REFBUS_CONNECT_TIMEOUT", "-1", ("REFBUS_CONNECT_TIMEOUT",)),
        ("REFBUS_HEALTH_PORT", "http", ("REFBUS_HEALTH_PORT must be a port",)),
    ],
)
def test_a_bad_environment_value_is_one_line(tmp_path: Path, variable: str, value: str, words: tuple[str]) -> None:
    failure(refbus("children", env=_env(tmp_path / "data", **{variable: value})), 2, *words)


def test_bad_arguments_are_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    failure(refbus("history", "*", env=env), 2, "not a child reference", "wildcard")
    failure(refbus("history", "c0123", env=env), 2, "not a child reference")
    failure(refbus("history", "c0123456789abcdef", "--as-of", "yesterday", env=env), 2, "ISO 8601")
    failure(refbus("demo", "--children", "many", env=env), 2, "whole number")
    failure(refbus("refer", "--child", "Maria", "--from", "social", "--to", "health", "--service", "vaccination",
                   "--dimension", "health", env=env), 2, "not a child reference")
    assert not (tmp_path / "data").exists()  # refused before any server was started


def test_import_of_a_missing_file_or_a_folder(tmp_path: Path) -> None:
    env = _env(tmp_path / "data")
    failure(refbus("import", str(tmp_path / "nothing.jsonl"), env=env), 2, "no such file")
    failure(refbus("import", str(tmp_path), env=env), 2, "is a folder")
