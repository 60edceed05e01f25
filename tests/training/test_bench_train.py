"""``absdsl bench train`` prints a ratio per domain relative to the standard epoch."""

from __future__ import annotations

import json

from absdsl.cli import main


def test_bench_train_reports_ratios(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "train", "--domains", "box", "--steps", "2",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["domain"] for r in rows] == ["-", "box"]
    assert rows[0]["ratio"] == 1.0 and rows[1]["ratio"] > 0
    assert rows[1]["ratio"] == rows[1]["seconds"] / rows[0]["seconds"]
    assert "x standard" in capsys.readouterr().out
