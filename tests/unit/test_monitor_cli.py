"""`refbus monitor` / `refbus exporter`: the commands parse, and the server watched is the one the
data dir records (the monitor never starts one)."""

import json
from pathlib import Path

from refbus import monitor
from refbus.cli import _parser
from refbus.services.runtime.settings import DEFAULT_NATS_URL, Settings


def test_the_commands_parse() -> None:
    args = _parser().parse_args(["monitor", "--once", "--json", "--monitor-url", "http://127.0.0.1:8222"])
    assert args.once and args.json and args.command is monitor.cmd_monitor
    args = _parser().parse_args(["monitor", "--web", "--port", "8471", "--health", "social=http://127.0.0.1:1/healthz"])
    assert args.web and args.port == 8471 and args.health == ["social=http://127.0.0.1:1/healthz"]
    assert _parser().parse_args(["exporter", "--port", "9471"]).command is monitor.cmd_exporter


def test_the_data_dirs_server_is_the_one_watched(tmp_path: Path) -> None:
    assert monitor._nats_url(Settings(data_dir=tmp_path)) == DEFAULT_NATS_URL
    assert monitor._recorded_monitor_url(tmp_path) is None
    (tmp_path / "server.json").write_text(json.dumps({"url": "nats://127.0.0.1:4999", "monitor_port": 8999}))
    assert monitor._nats_url(Settings(data_dir=tmp_path)) == "nats://127.0.0.1:4999"
    assert monitor._recorded_monitor_url(tmp_path) == "http://127.0.0.1:8999"
    assert monitor._nats_url(Settings(data_dir=tmp_path, nats_url="nats://127.0.0.1:5000")) == "nats://127.0.0.1:5000"
    (tmp_path / "server.json").write_text("not json")
    assert monitor._nats_url(Settings(data_dir=tmp_path)) == DEFAULT_NATS_URL
