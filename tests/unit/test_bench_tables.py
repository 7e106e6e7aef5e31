"""The tuners' table: they start from a copy of the checked-in table and write only to DIR."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.kernels._tables import pick, write_table
from experts.moe.kernels.configs import tuned_table

CPU = torch.device("cpu")
CHECKED_IN = Path(__file__).parents[2] / "experts/moe/kernels/configs/cpu.json"


def test_tuned_table_is_a_copy() -> None:
    table = tuned_table(CPU)
    assert table == (json.loads(CHECKED_IN.read_text()) if CHECKED_IN.exists() else {})
    table["E=1,H=1,I=1,K=1"] = {"1": {"BLOCK_M": 16}}
    assert "E=1,H=1,I=1,K=1" not in tuned_table(CPU)


def test_write_table_writes_device_file_under_out(tmp_path) -> None:
    table = {"E=8,H=64,I=32,K=2": {"1": {"BLOCK_M": 16}}}
    path = write_table(table, tmp_path / "tuned", CPU)
    assert path == tmp_path / "tuned" / "cpu.json"
    assert json.loads(path.read_text()) == table


def test_a_tuner_replaces_the_checked_in_choice_only_by_a_margin() -> None:
    times = {"four_kernel": 150.0, "staged": 142.9, "current": 143.0}
    # 0.1 us faster is noise: the checked-in entry stays.
    assert pick(times, "current", 0.97) == "current"
    # Against the four-kernel path the same sweep saves 4.7%: the fastest is taken.
    assert pick(times, "four_kernel", 0.97) == "staged"
    # The incumbent stays when it is itself the fastest.
    assert pick({"entry": 1.0, "PDL": 1.2}, "entry", 0.99) == "entry"
    # A slower incumbent gives way once the fastest saves the margin.
    assert pick({"entry": 1.0, "PDL": 0.98}, "entry", 0.99) == "PDL"
