"""``benchmarks/bench_lirpa_train.py``: without auto_LiRPA it runs absdsl's side alone, every
method with and without loss fusion, eager and compiled; bounds of the same method must agree."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_lirpa_train.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_lirpa_train", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench = _load()


def test_without_auto_lirpa_every_absdsl_variant_runs(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)  # import fails as if not installed
    lirpa, why = bench.lirpa_import()
    assert lirpa is None and "auto_LiRPA" in why
    out = tmp_path / "rows.json"
    assert bench.main(["--nets", "cnn3", "--batch", "2", "--rounds", "1", "--threads", "1",
                       "--compile", "--backend", "aot_eager", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "absent" in text and "absdsl only" in text and "| cnn3 | CROWN-IBP | yes |" in text
    data = json.loads(out.read_text())
    assert data["auto_LiRPA"] is None
    rows = {(r["method"], r["fusion"]): r for r in data["rows"]}
    assert set(rows) == {(m, f) for m in ("ibp", "crown-ibp", "crown") for f in (False, True)}
    for r in rows.values():
        assert set(r["ms"]) == {"natural", "absdsl", "absdsl compiled"} and r["rounds"] == 1
        assert all(v > 0 for v in r["ms"].values())
        assert r["bound_diff"] is None and "auto_LiRPA" not in r["loss"]
        # compiled and eager programs are the same bounds: the same loss to rounding
        assert math.isclose(r["loss"]["absdsl"], r["loss"]["absdsl compiled"], rel_tol=1e-4)
    # IBP is never fused (the same loss); fusion changes the tight methods' loss
    assert rows["ibp", True]["loss"]["absdsl"] == rows["ibp", False]["loss"]["absdsl"]
    assert "not fused" in rows["ibp", True]["note"]
    for method in ("crown-ibp", "crown"):
        assert rows[method, True]["loss"]["absdsl"] != rows[method, False]["loss"]["absdsl"]
    # DeepPoly's margin form is at least as tight as CROWN-IBP's, which is tighter than IBP's
    loss = {m: rows[m, False]["loss"]["absdsl"] for m in ("ibp", "crown-ibp", "crown")}
    assert loss["crown"] <= loss["crown-ibp"] + 1e-5 and loss["crown-ibp"] <= loss["ibp"] + 1e-5


def test_cnn_7layer_deeppoly_only_with_big(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)
    rows = bench.bench_net("cnn_7layer", ["crown"], bench.parse_args(["--batch", "1",
                                                                      "--rounds", "1"]),
                           None, print)
    assert rows == [] and "--big runs it" in capsys.readouterr().out


def test_bounds_of_the_same_method_must_agree():
    theirs = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    row = bench.Row("cnn3", "crown-ibp", False)
    bench.compare_bounds(row, theirs + 1e-7, theirs)
    assert row.bound_diff is not None and row.bound_diff < 1e-6
    with pytest.raises(AssertionError, match="differ from auto_LiRPA's"):
        bench.compare_bounds(bench.Row("cnn3", "ibp", False), theirs + 1e-3, theirs)
    # DeepPoly and auto_LiRPA's CROWN are reported, not required equal
    row = bench.Row("cnn3", "crown", False)
    bench.compare_bounds(row, theirs + 1e-3, theirs)
    assert row.bound_diff == pytest.approx(1e-3 / 1.5, rel=1e-3) and row.tighter > 0


def test_bad_names_are_refused_before_work():
    with pytest.raises(SystemExit):
        bench.parse_args(["--nets", "cnn3,vgg"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--methods", "zonotope"])


def test_steps_are_timed_by_the_clock_given():
    """``time_variants`` reads the clock it is given around each step (a counting clock
    here, so no real time is measured), and ``--clock cpu`` is the process's CPU time."""
    import time

    ticks = iter(range(0, 10_000, 3))  # each reading 3 s after the last

    def step() -> torch.Tensor:
        return torch.zeros(())

    ms, _, _ = bench.time_variants({"step": step}, 2, clock=lambda: float(next(ticks)))
    assert ms["step"] == 3000.0  # one reading before and one after each call
    assert bench.CLOCKS["cpu"] is time.process_time
    assert bench.CLOCKS["wall"] is time.perf_counter
    assert bench.parse_args(["--clock", "cpu"]).clock == "cpu"
    with pytest.raises(SystemExit):
        bench.parse_args(["--clock", "gpu"])
