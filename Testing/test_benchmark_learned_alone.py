"""The choice rule of ``benchmarks/learned_alone.py``: per model, the highest mean Dice within the time budget
(the fastest when none is within it), over the rows of every pair."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from learned_alone import summarize  # noqa: E402


def _row(model: str, setting: str, dice: float, seconds: float, folding: float = 0.0) -> dict:
    return {"model": model, "setting": setting, "dice": dice, "seconds": seconds, "folding_percent": folding}


def test_each_model_gets_its_own_choice_within_the_budget():
    rows = [
        _row("a", "3,3", 0.70, 8.0), _row("a", "3,3", 0.72, 8.4),  # mean 0.71 in 8.2 s
        _row("a", "2,2", 0.80, 12.0), _row("a", "2,2", 0.80, 12.0),  # better but over 9.5 s
        _row("b", "3,3", 0.60, 10.0, 0.02), _row("b", "3,3", 0.64, 10.2),  # none within: the fastest
        _row("b", "2,2", 0.90, 13.0), _row("b", "2,2", 0.90, 13.0),
    ]  # fmt: skip
    summary, chosen = summarize(rows, max_seconds=9.5)
    assert [(s["model"], s["setting"]) for s in summary] == [
        ("a", "3,3"),
        ("a", "2,2"),
        ("b", "3,3"),
        ("b", "2,2"),
    ]
    first = summary[0]
    assert abs(first["dice"] - 0.71) < 1e-12 and abs(first["seconds"] - 8.2) < 1e-12
    assert summary[2]["folding_percent"] == 0.02  # the largest of the pairs
    assert chosen["a"]["setting"] == "3,3" and chosen["b"]["setting"] == "3,3"
    rows_one_model = [{k: v for k, v in r.items() if k != "model"} for r in rows[:4]]
    summary, chosen = summarize(rows_one_model, max_seconds=13.0)
    assert "model" not in summary[0] and chosen[""]["setting"] == "2,2"
