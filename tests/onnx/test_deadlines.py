"""``--timeout`` counts parsing and loading, and every stage stops at the deadline."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from onnx_helpers import vnnlib

from absdsl.cli import main
from absdsl.verification.verify import _run_until, decide_files
from absdsl.verification.vnnlib import VnnlibTimeout, parse_vnnlib, read_vnnlib


def _big_property(n_cases: int) -> str:
    rng = np.random.default_rng(0)
    head = "".join(f"(declare-const X_{i} Real)\n" for i in range(2))
    head += "".join(f"(declare-const Y_{j} Real)\n" for j in range(2))
    cases = []
    for _ in range(n_cases):
        a, b = rng.uniform(-1, 0, 2).tolist(), rng.uniform(0, 1, 2).tolist()
        cases.append(f"(and (>= X_0 {a[0]!r}) (<= X_0 {b[0]!r}) (>= X_1 {a[1]!r}) "
                     f"(<= X_1 {b[1]!r}) (>= Y_0 (+ Y_1 1e9)))")
    return head + "(assert (or\n" + "\n".join(cases) + "\n))\n"


def test_a_property_read_past_the_deadline_is_a_timeout(tmp_path: Path, mlp_file: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    text = _big_property(3000)
    prop = parse_vnnlib(text)  # read without a deadline: every case is there
    assert len(prop.cases) == 3000
    path = tmp_path / "big.vnnlib"
    path.write_text(text)
    with pytest.raises(VnnlibTimeout):
        read_vnnlib(path, deadline=time.perf_counter() - 1.0)
    result, got = decide_files(str(mlp_file), str(path), timeout=1.0,
                               start=time.perf_counter() - 5.0)
    assert result.result == "timeout" and got is None and result.witness is None
    assert "reading the property" in result.notes[0]


def test_loading_past_the_deadline_is_a_timeout_not_an_answer(mlp_file: Path,
                                                              tmp_path: Path) -> None:
    path = tmp_path / "p.vnnlib"
    path.write_text(vnnlib([(-3.0, 3.0)] * 2, 2, "(>= Y_0 (+ Y_1 1e9))"))  # unsat by bounds
    result, prop = decide_files(str(mlp_file), str(path), timeout=10.0)
    assert result.result == "unsat" and prop is not None
    # a clock that ran out while the network was loaded: timeout, never the unsat above
    import absdsl.verification.onnx_io as onnx_io

    real = onnx_io.load_onnx
    t0 = time.perf_counter()
    try:
        onnx_io.load_onnx = lambda p: (time.sleep(0.3), real(p))[1]  # type: ignore[assignment]
        result, _ = decide_files(str(mlp_file), str(path), timeout=0.2, start=t0)
    finally:
        onnx_io.load_onnx = real  # type: ignore[assignment]
    assert result.result == "timeout" and "loading the network" in result.notes[0]


def test_the_milp_solver_is_killed_at_the_deadline(tmp_path: Path) -> None:
    pid_file, finished = tmp_path / "pid", tmp_path / "finished"

    def slow_solve() -> None:  # runs in the forked child
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        finished.write_text("the child was not killed")

    assert _run_until(slow_solve, 2.0) is None  # time to start, far below 60 s
    # the child is gone (killed and reaped), and it never got past its sleep
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    assert not finished.exists()

    class Done:
        status, x, mip_dual_bound = 0, np.array([1.0, 2.0]), 3.5

    status, dual, x = _run_until(lambda: Done(), 30.0)  # type: ignore[misc]
    assert status == 0 and dual == 3.5 and x is not None and x.tolist() == [1.0, 2.0]


def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, mlp_file: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    truncated = tmp_path / "cut.onnx"
    truncated.write_bytes(mlp_file.read_bytes()[: len(mlp_file.read_bytes()) // 2])
    prop = tmp_path / "p.vnnlib"
    text = vnnlib([(-1.0, 1.0)] * 2, 2, "(>= Y_0 Y_1)")
    prop.write_text(text)
    cut = tmp_path / "cut.vnnlib"
    cut.write_text(text[: len(text) - 12])
    for argv in (["verify", str(truncated), str(prop)], ["verify", str(mlp_file), str(cut)],
                 ["verify", str(mlp_file), str(prop), "--timeout", "0"],
                 ["verify", str(mlp_file), str(prop), "--timeout", "nan"]):
        assert main(argv) == 2
        out = capsys.readouterr()
        assert out.out == "" and len(out.err.strip().splitlines()) == 1, (argv, out.err)
    assert main(["verify", str(mlp_file), str(prop), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["result"] in ("sat", "unsat")
