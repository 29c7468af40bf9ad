"""The README's fault table from a fault-suite run: `make fault-report` (FAULT_REPORT=bench/out/faults.jsonl pytest
tests/faults, then this). One row per scenario; the columns a trader asks about first: was anything lost, doubled,
or placed without its alert."""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = (("scenario", "Fault"), ("sent", "Alerts sent"), ("accepted", "Answered 200"),
           ("at_exchange", "At the exchange"), ("recorded_terminal", "Recorded with a reason"), ("lost", "Lost"),
           ("doubled", "Doubled"), ("orphans", "Orders without an alert"))


def table(lines: list[dict], *, total: bool = False) -> str:
    """One row per scenario: its last run, or with `total` (a soak's rounds) the sums over its runs."""
    rows_by_scenario: dict[str, dict] = {}
    for line in lines:
        if total and line["scenario"] in rows_by_scenario:
            row = rows_by_scenario[line["scenario"]]
            for key, _ in COLUMNS[1:]:
                row[key] += line[key]
        else:
            rows_by_scenario[line["scenario"]] = dict(line)
    rows = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for scenario in sorted(rows_by_scenario):
        rows.append("| " + " | ".join(str(rows_by_scenario[scenario][key]) for key, _ in COLUMNS) + " |")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    total = "--total" in argv
    paths = [a for a in argv[1:] if a != "--total"]
    path = Path(paths[0] if paths else "bench/out/faults.jsonl")
    print(table([json.loads(line) for line in path.read_text().splitlines() if line.strip()], total=total))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
