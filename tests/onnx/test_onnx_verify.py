"""``absdsl verify``: VNN-LIB properties on ONNX networks, decided and re-checked."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from onnx_helpers import export, mlp, vnnlib

import absdsl
from absdsl.cli import main
from absdsl.verification.onnx_io import onnxruntime_outputs, onnxruntime_session
from absdsl.verification.verify import verify_property
from absdsl.verification.vnnlib import parse_vnnlib

WIDE = [(-3.0, 3.0), (-3.0, 3.0)]


def _gap_range(model: torch.nn.Module, box: list[tuple[float, float]]) -> tuple[float, float]:
    """min and max of Y_1 - Y_0 on a dense grid of the box (for choosing thresholds)."""
    g = torch.stack(torch.meshgrid(*[torch.linspace(a, b, 301, dtype=torch.float64)
                                     for a, b in box], indexing="ij"), -1).reshape(-1, 2)
    with torch.no_grad():
        y = model.double()(g)
    gap = y[:, 1] - y[:, 0]
    return float(gap.min()), float(gap.max())


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_holds_by_bounds_and_by_milp(mlp_file: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    lo, _ = _gap_range(mlp(), WIDE)
    small = _write(tmp_path, "small.vnnlib", vnnlib([(0.3, 0.31), (-0.2, -0.19)], 2,
                                                   "(>= Y_0 (+ Y_1 10))"))
    rc, out, _ = _run(["verify", str(mlp_file), str(small), "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["result"] == "unsat" and data["stage"].startswith("bound:")
    # Y_1 - Y_0 <= lo - 0.02 is unreachable (the grid minimum is a little below the true
    # minimum only by the grid's resolution), and too close for the domains in this box
    prop = _write(tmp_path, "milp.vnnlib", vnnlib(WIDE, 2, f"(<= (- Y_1 Y_0) {lo - 0.02!r})"))
    rc, out, _ = _run(["verify", str(mlp_file), str(prop), "--json", "--complete", "milp"],
                      capsys)
    data = json.loads(out)
    assert rc == 0 and data["result"] == "unsat", data
    assert data["refuted"] == {"milp": 1} and data["stage"] == "milp"
    # the default complete stage on 2 inputs: branch and bound on the input box
    rc, out, _ = _run(["verify", str(mlp_file), str(prop), "--json"], capsys)
    data = json.loads(out)
    assert rc == 0 and data["result"] == "unsat", data
    assert data["refuted"] == {"bab": 1} and data["stage"] == "bab"
    assert data["complete"] == "bab" and data["branches"] > 1


def test_fails_with_a_witness_checked_by_onnxruntime(mlp_file: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    lo, hi = _gap_range(mlp(), WIDE)
    c = lo + 0.1 * (hi - lo)  # reachable, but not at the box centre
    with torch.no_grad():
        centre = mlp().double()(torch.zeros(1, 2, dtype=torch.float64))[0]
    assert float(centre[1] - centre[0]) > c
    prop = _write(tmp_path, "fails.vnnlib", vnnlib(WIDE, 2, f"(<= (- Y_1 Y_0) {c!r})"))
    result_file = tmp_path / "result.txt"
    rc, out, _ = _run(["verify", str(mlp_file), str(prop), "--out", str(result_file)], capsys)
    assert rc == 0 and out.splitlines()[0] == "sat"
    lines = result_file.read_text().splitlines()
    assert lines[0] == "sat" and lines[1].startswith("((X_0 ") and lines[-1].endswith("))")
    values = dict(line.strip(" ()").split() for line in lines[1:])
    x = np.array([float(values["X_0"]), float(values["X_1"])], dtype=np.float32)
    assert np.all(x >= -3.0) and np.all(x <= 3.0)
    y = onnxruntime_outputs(onnxruntime_session(mlp_file), x[None])[0]
    assert y[1] - y[0] <= c  # the witness, re-run by onnxruntime here, violates the property
    assert float(values["Y_1"]) == pytest.approx(float(y[1]), abs=0)


def test_disjunctive_output_constraint(mlp_file: Path, tmp_path: Path) -> None:
    lo, hi = _gap_range(mlp(), WIDE)
    c = lo + 0.1 * (hi - lo)
    net = absdsl.load_onnx(mlp_file)
    sat = parse_vnnlib(vnnlib(WIDE, 2, f"(or (>= Y_0 1e6) (<= (- Y_1 Y_0) {c!r}))"))
    res = verify_property(net, net.input_shape, sat, str(mlp_file), timeout=120)
    assert res.result == "sat" and res.witness is not None and res.witness.polytope == 1
    never = parse_vnnlib(vnnlib(WIDE, 2, f"(or (>= Y_0 1e6) (and (<= (- Y_1 Y_0) {c!r}) "
                                         f"(>= (- Y_1 Y_0) {hi + 1.0!r})))"))
    res = verify_property(net, net.input_shape, never, str(mlp_file), timeout=120)
    assert res.result == "unsat" and res.open_polytopes == 0
    assert sum(res.refuted.values()) == 2


def test_timeout_and_unknown(mlp_file: Path, tmp_path: Path) -> None:
    net = absdsl.load_onnx(mlp_file)
    lo, _ = _gap_range(mlp(), WIDE)
    prop = parse_vnnlib(vnnlib(WIDE, 2, f"(<= (- Y_1 Y_0) {lo - 0.02!r})"))
    res = verify_property(net, net.input_shape, prop, str(mlp_file), timeout=1.0,
                          start=time.perf_counter() - 10.0)
    assert res.result == "timeout" and res.open_polytopes == 1
    # sigmoid networks have no exact MILP encoding: the open property stays unknown
    torch.manual_seed(0)
    sig = torch.nn.Sequential(torch.nn.Linear(2, 16), torch.nn.Sigmoid(),
                              torch.nn.Linear(16, 2)).eval()
    path = export(sig, (2,), tmp_path / "sig.onnx")
    slo, _ = _gap_range(sig, WIDE)
    prop = parse_vnnlib(vnnlib(WIDE, 2, f"(<= (- Y_1 Y_0) {slo - 1e-3!r})"))
    snet = absdsl.load_onnx(path)
    res = verify_property(snet, snet.input_shape, prop, str(path), timeout=60,
                          complete="milp")
    assert res.result == "unknown" and any("milp skipped" in n for n in res.notes)


def test_bad_input_exits_2_without_a_result(mlp_file: Path, tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    good = vnnlib([(0.0, 1.0), (0.0, 1.0)], 2, "(>= Y_0 Y_1)")
    cases = {
        "syntax.vnnlib": (good.replace("(assert (>= Y_0 Y_1))", "(assert (>= Y_0 Y_1)"),
                          r"syntax\.vnnlib:\d+:\d+: unclosed"),
        "inputs.vnnlib": (vnnlib([(0.0, 1.0)] * 3, 2, "(>= Y_0 Y_1)"),
                          "declares 3 inputs X_0..X_2, but .* takes 2 = 2 inputs"),
        "outputs.vnnlib": (vnnlib([(0.0, 1.0)] * 2, 3, "(>= Y_0 Y_1)"),
                           "declares 3 outputs Y_0..Y_2, but .* has 2 outputs"),
    }
    import re

    for name, (text, message) in cases.items():
        rc, out, err = _run(["verify", str(mlp_file), str(_write(tmp_path, name, text))],
                            capsys)
        assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1, (name, err)
        assert re.search(message, err), (name, err)
    junk = _write(tmp_path, "junk.onnx", "not onnx")
    prop = _write(tmp_path, "good.vnnlib", good)
    rc, out, err = _run(["verify", str(junk), str(prop)], capsys)
    assert rc == 2 and out == "" and "not an ONNX file" in err
    rc, out, err = _run(["verify", str(mlp_file), str(prop), "--timeout", "0"], capsys)
    assert rc == 2 and "--timeout" in err
    # a witness that onnxruntime does not reproduce is an error, never 'sat'
    import absdsl.verification.onnx_io as onnx_io

    real = onnx_io.onnxruntime_outputs
    monkeypatch.setattr(onnx_io, "onnxruntime_outputs",
                        lambda s, x: real(s, x) + np.array([-100.0, 100.0]))
    anywhere = _write(tmp_path, "any.vnnlib", vnnlib([(0.0, 1.0)] * 2, 2, "(>= Y_0 -50)"))
    rc, out, err = _run(["verify", str(mlp_file), str(anywhere)], capsys)
    assert rc == 2 and out == "" and "onnxruntime does not reproduce" in err
