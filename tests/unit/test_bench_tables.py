"""The tuners' table helpers: they start from a copy of the checked-in table and write only to DIR."""

from __future__ import annotations

import json

import torch

from benchmarks.kernels._tables import checked_in_table, write_table
from experts.moe.kernels.configs import _load

CPU = torch.device("cpu")


def test_checked_in_table_is_a_copy() -> None:
    table = checked_in_table(CPU)
    assert table == _load("cpu")
    table["E=1,H=1,I=1,K=1"] = {"1": {"BLOCK_M": 16}}
    assert "E=1,H=1,I=1,K=1" not in checked_in_table(CPU)


def test_write_table_writes_device_file_under_out(tmp_path) -> None:
    table = {"E=8,H=64,I=32,K=2": {"1": {"BLOCK_M": 16}}}
    path = write_table(table, tmp_path / "tuned", CPU)
    assert path == tmp_path / "tuned" / "cpu.json"
    assert json.loads(path.read_text()) == table
