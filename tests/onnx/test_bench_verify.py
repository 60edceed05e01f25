"""``absdsl bench verify``: a VNN-COMP layout folder, counted against an answers file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from onnx_helpers import vnnlib

from absdsl.cli import main

BOX = [(-1.0, 1.0), (-1.0, 1.0)]


def test_counts_answers_errors_and_wrong_ones(mlp_file: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "bench"
    folder.mkdir()
    (folder / "net.onnx").write_bytes(mlp_file.read_bytes())
    (folder / "holds.vnnlib").write_text(vnnlib(BOX, 2, "(>= Y_0 (+ Y_1 1e9))"))
    with gzip.open(folder / "fails.vnnlib.gz", "wt") as f:  # the competition gzips some
        f.write(vnnlib(BOX, 2, "(>= Y_0 -1e9)"))
    (folder / "broken.vnnlib").write_text("(declare-const X_0 Real")
    (folder / "instances.csv").write_text("net.onnx,holds.vnnlib,30\n"
                                          "net.onnx,fails.vnnlib.gz,30\n"
                                          "net.onnx,broken.vnnlib,30\n")
    answers = tmp_path / "answers.csv"
    answers.write_text("benchmark,onnx,vnnlib,expected,tool\n"
                       "bench,net.onnx,holds.vnnlib,unsat,a\n"
                       "bench,net.onnx,fails.vnnlib,sat,a\n")
    out_json = tmp_path / "rows.json"
    rc = main(["bench", "verify", str(folder), "--cap", "20", "--answers", str(answers),
               "--json-out", str(out_json)])
    text = capsys.readouterr().out
    assert rc == 0, text
    totals = json.loads(out_json.read_text())["totals"]
    assert totals["unsat"] == 1 and totals["sat"] == 1 and totals["error"] == 1
    assert totals["correct"] == 2 and totals["wrong"] == 0 and totals["with_answer"] == 2
    assert "total: unsat 1, sat 1, unknown 0, timeout 0, error 1" in text
    # an answers file that disagrees: the run is counted wrong and exits 1
    answers.write_text("benchmark,onnx,vnnlib,expected\nbench,net.onnx,holds.vnnlib,sat\n")
    rc = main(["bench", "verify", str(folder), "--answers", str(answers), "--limit", "1"])
    text = capsys.readouterr().out
    assert rc == 1 and "WRONG" in text and "wrong 1" in text


def test_bad_folder_and_options(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "verify", str(tmp_path)]) == 2
    assert "instances.csv" in capsys.readouterr().err
    (tmp_path / "instances.csv").write_text("a.onnx,b.vnnlib,soon\n")
    assert main(["bench", "verify", str(tmp_path)]) == 2
    assert "instances.csv:1: timeout 'soon'" in capsys.readouterr().err
    assert main(["bench", "verify", str(tmp_path), "--cap", "0"]) == 2


def test_run_instance_script_writes_the_result_file(mlp_file: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "vnncomp" / "run_instance.sh"
    prop = tmp_path / "p.vnnlib.gz"
    with gzip.open(prop, "wt") as f:
        f.write(vnnlib(BOX, 2, "(>= Y_0 (+ Y_1 1e9))"))
    results = tmp_path / "out.txt"
    env = dict(os.environ, ABSDSL=f"{sys.executable} -m absdsl.cli")
    done = subprocess.run(["bash", str(script), "v1", "test", str(mlp_file), str(prop),
                           str(results), "60"], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert results.read_text().splitlines()[0] == "unsat"
    broken = tmp_path / "broken.vnnlib"
    broken.write_text("(declare-const X_0 Real")
    subprocess.run(["bash", str(script), "v1", "test", str(mlp_file), str(broken),
                    str(results), "60"], env=env, capture_output=True, text=True, timeout=300)
    assert results.read_text().strip() == "error"
