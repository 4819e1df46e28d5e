"""benchmarks/benchlib.table: the markdown the benchmarks print, checked without running one."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import benchlib  # noqa: E402


def test_table_is_markdown_with_numbers_and_ratios_right_and_text_left():
    rows = [["lenet5", 1234.5, "3.2x", "281,640", ""], ["mlp", 0.0123, "10.6x", "43,992", 12.25]]
    assert benchlib.table(["model", "images/s", "vs seed", "MACs", "s"], rows, "Throughput") == "\n".join(
        [
            "",
            "Throughput",
            "",
            "| model   |   images/s |   vs seed | MACs    |    s |",
            "|:--------|-----------:|----------:|:--------|-----:|",
            "| lenet5  |      1,234 |      3.2x | 281,640 |      |",
            "| mlp     |     0.0123 |     10.6x | 43,992  | 12.2 |",
            "",
        ]
    )


def test_table_without_title_is_the_table_alone():
    assert benchlib.table(["a"], [[1]]) == "|   a |\n|----:|\n|   1 |"
