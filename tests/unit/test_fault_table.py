"""The README's fault table is the fault suite's output (`make fault-report`): a row for every scenario the suite
runs, and every row's books balanced with nothing lost, doubled or orphaned."""

from __future__ import annotations

import re

from tests.faults.report import COLUMNS, table
from tests.support import ROOT


def scenarios_in_the_suite() -> set[str]:
    names = set()
    for path in (ROOT / "tests" / "faults").glob("test_*.py"):
        names.update(re.findall(r'close_books\(\s*[^"]*?"([^"]+)"', path.read_text(), re.S))
    return names


def readme_rows() -> list[dict[str, str]]:
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- fault-table -->")[1]
    lines = [line for line in block.strip().splitlines() if line.startswith("| ")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    assert header == [title for _, title in COLUMNS]
    return [dict(zip([key for key, _ in COLUMNS], (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_the_readme_has_a_row_for_every_fault_scenario_and_no_other():
    assert len(scenarios_in_the_suite()) >= 12
    assert {row["scenario"] for row in readme_rows()} == scenarios_in_the_suite()


def test_every_row_balances_and_loses_doubles_and_orphans_nothing():
    for row in readme_rows():
        sent, accepted, placed, recorded = (int(row[k]) for k in ("sent", "accepted", "at_exchange", "recorded_terminal"))
        assert (row["lost"], row["doubled"], row["orphans"]) == ("0", "0", "0"), row["scenario"]
        assert accepted == sent and placed + recorded == accepted, row["scenario"]


def test_the_table_is_rendered_from_the_suites_lines():
    line = {"scenario": "x", "sent": 3, "accepted": 3, "at_exchange": 2, "recorded_terminal": 1, "lost": 0,
            "doubled": 0, "orphans": 0}
    assert table([line, {**line, "sent": 4}]).splitlines()[-1].startswith("| x | 4 |")  # a scenario's last run
    assert table([line, line], total=True).splitlines()[-1] == "| x | 6 | 6 | 4 | 2 | 0 | 0 | 0 |"  # a soak's sum
