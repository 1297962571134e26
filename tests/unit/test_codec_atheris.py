"""A short, bounded libFuzzer run (atheris, coverage-guided) of the bounded decoder
(contracts/codec.py), seeded with valid events: no input raises anything but UndecodableEvent.
In a process of its own (tests/unit/atheris_codec.py): libFuzzer ends the process when it is done."""

import re
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from refbus.contracts import codec
from refbus.contracts.events import ConsentRecorded
from refbus.contracts.vocabulary import Guardian, Sector
from tests import fuzzcount
from tests.factories import envelope, new_child, request

pytest.importorskip("atheris")

RUNS = 15_000  # about 7 s on 2 cores


def test_the_decoder_survives_a_coverage_guided_run(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    consent = ConsentRecorded(**envelope(new_child(), Sector.SOCIAL, None), given_by=Guardian.PARENT,
                              sectors=(Sector.HEALTH, Sector.EDUCATION))
    for name, event in {"request": request(new_child()), "consent": consent}.items():
        (corpus / f"{name}.json").write_bytes(codec.encode(event))
    (corpus / "pretty.json").write_bytes(msgspec.json.format(codec.encode(request(new_child())), indent=2))
    done = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("atheris_codec.py")), f"-runs={RUNS}", "-max_len=4096",
         "-max_total_time=60", "-rss_limit_mb=1024", f"-artifact_prefix={tmp_path}/", str(corpus)],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    runs = re.search(r"Done (\d+) runs in", done.stderr)
    assert runs is not None, done.stderr[-2000:]
    assert int(runs.group(1)) >= 1_000, "the run ended too early to count"
    fuzzcount.ran("codec: atheris (libFuzzer)", "decoded or refused", int(runs.group(1)))
