"""The README's main command: CNN3 + Box on mnist5k at eps 0.1, trained and certified."""

from __future__ import annotations

import json

import pytest

from absdsl.cli import main


@pytest.mark.slow
def test_readme_main_command_reaches_target(tmp_path):
    run = tmp_path / "RUN"
    assert main(["train", "--dataset", "mnist5k", "--model", "cnn3", "--domain", "box",
                 "--eps", "0.1", "--out", str(run), "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["certified_acc"] >= 0.75, metrics
    assert metrics["precision"] == "float64"
    assert metrics["seconds"] > 0  # wall time is reported by the run, not judged by a test
