"""Fixtures of the CLI tests (test_cli.py, test_cli_commands.py): one `refbus up` per module, and a
small registry to import."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

from refbus.registry import pilot_events, write_jsonl
from refbus.services.runtime.embedded import read_record
from tests.factories import new_child, request
from tests.integration.cli_runner import Background, Up, _env


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    data_dir = tmp_path_factory.mktemp("up") / "data"
    env = _env(data_dir, REFBUS_SIM_SPEED="200")
    process = Background("up", env=env)
    try:
        process.wait_for("Ctrl-C stops")
        yield Up(data_dir, env, process)
        assert process.interrupt() == 130
        assert "stopped cleanly" in "".join(process.err)
        assert read_record(data_dir) is None, "server.json outlived the server"
    finally:
        process.kill()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Past cases from 2024-2025, and one referral from last year that nobody answered."""
    path = tmp_path_factory.mktemp("registry") / "registry.jsonl"
    events = pilot_events(children=4, total=30, seed=11)
    old = msgspec.structs.replace(request(new_child()), occurred_at=datetime(2025, 3, 2, 10, 0, tzinfo=UTC))
    write_jsonl([*events, old], path)
    return path
