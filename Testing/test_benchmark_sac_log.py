"""``benchmarks/sac_log.py``: windows of a SAC stage's training log (warm-up rows left out), the critic's
loss median and spikes, mean Q and reward, the window's last validation Dice."""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from sac_log import main, windows  # noqa: E402


def _write_log(folder: Path) -> None:
    folder.mkdir()
    keys = ["step", "stage", "critic_loss", "q", "reward", "val_dice"]
    with (folder / "training_log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, keys)
        writer.writeheader()
        writer.writerow({"step": 0, "stage": "warmup", "critic_loss": 999})
        for step in range(1, 7):  # two windows of 3: the second with a spike
            loss = 500 if step == 5 else step
            val = 0.6 + step / 100 if step % 3 == 0 else ""
            writer.writerow(
                {"step": step, "stage": "sac", "critic_loss": loss, "q": step, "reward": 1, "val_dice": val}
            )


def test_windows_summarize_the_sac_stage(tmp_path, capsys):
    _write_log(tmp_path / "run")
    first, second = windows(tmp_path / "run" / "training_log.csv", 3)
    assert (first["updates"], first["critic_median"], first["critic_above_100"]) == ("1-3", 2.0, 0)
    assert (second["critic_median"], second["critic_above_100"], second["q"]) == (6.0, 1, 5.0)
    assert math.isclose(first["val_dice"], 0.63) and math.isclose(second["val_dice"], 0.66)
    assert main([str(tmp_path / "run"), "--window", "3"]) == 0
    assert "| run | 4-6 | 6.0 | 1 | 5.00 | 1.00 | 0.6600 |" in capsys.readouterr().out
    assert main([str(tmp_path / "absent")]) == 2
