"""How many generated cases the fuzz suites ran, per suite and what each ended as, for the closing
summary of `make test` (a section printed at the end, and .pytest_cache/refbus-fuzz-cases.json).

Each fuzz test calls `ran(suite, outcome)` once per case it ran, so the count is of cases executed
(shrinking included), not of examples configured."""

import json
from collections import Counter
from pathlib import Path

CASES: Counter[tuple[str, str]] = Counter()


def ran(suite: str, outcome: str, cases: int = 1) -> None:
    CASES[(suite, outcome)] += cases


def summary() -> list[str]:
    suites = sorted({suite for suite, _ in CASES})
    lines = []
    for suite in suites:
        outcomes = {o: n for (s, o), n in sorted(CASES.items()) if s == suite}
        detail = ", ".join(f"{o}: {n}" for o, n in outcomes.items())
        lines.append(f"{suite:<34}{sum(outcomes.values()):>7}  ({detail})")
    lines.append(f"{'all fuzz suites':<34}{sum(CASES.values()):>7}")
    return lines


def write(cache_dir: Path) -> Path:
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / "refbus-fuzz-cases.json"
    by_suite: dict[str, dict[str, int]] = {}
    for (suite, outcome), n in CASES.items():
        by_suite.setdefault(suite, {})[outcome] = n
    path.write_text(json.dumps({"total": sum(CASES.values()), "suites": by_suite}, indent=2, sort_keys=True) + "\n")
    return path
