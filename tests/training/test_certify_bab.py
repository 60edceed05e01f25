"""``absdsl certify --complete`` with ReLU branch and bound (the ``bab`` stage, the default):
it decides what box + PGD leave open, agrees with the exact MILP stage, and keeps the MILP
selectable."""

from __future__ import annotations

import json

import pytest
from test_milp import mlp_run  # noqa: F401 - the module's trained tiny MLP fixture

from absdsl.cli import main

ARGS = ["--domain", "box", "--eps", "0.1", "-n", "12", "--pgd-steps", "5", "--pgd-restarts",
        "1", "--quiet", "--time-limit", "20"]


def _certify(run, out, *extra: str) -> dict:
    assert main(["certify", str(run), *extra, *ARGS, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_complete_bab_decides_and_agrees_with_the_milp(mlp_run, capsys):  # noqa: F811
    bab = _certify(mlp_run, mlp_run / "bab.json", "--complete")
    milp = _certify(mlp_run, mlp_run / "milp.json", "--complete", "milp")
    capsys.readouterr()
    stages = [r["stage"] for r in bab["inputs"]]
    assert stages.count("bab") >= 2, stages
    assert "milp" not in stages and "bab" not in [r["stage"] for r in milp["inputs"]]
    assert bab["summary"]["counts"]["unknown"] == 0
    for a, b in zip(bab["inputs"], milp["inputs"], strict=True):
        if "unknown" not in (a["status"], b["status"]):
            assert a["status"] == b["status"], (a, b)


def test_complete_rejects_an_unknown_stage(mlp_run, capsys):  # noqa: F811
    with pytest.raises(SystemExit) as err:
        main(["certify", str(mlp_run), "--complete", "beta", "-n", "2"])
    assert err.value.code == 2
    assert "invalid choice: 'beta'" in capsys.readouterr().err
