"""``absdsl bounds``, ``absdsl ir`` and ``absdsl bench bounds --quick``, run in-process."""

from __future__ import annotations

import json
import re
import sys
import types

import pytest
import torch

import absdsl
from absdsl.cli import main

TINY = "tests.cli.models:tiny"


def _bounds_lines(text: str) -> list[tuple[float, float]]:
    return [(float(a), float(b)) for a, b in re.findall(r"\[([-+0-9.e]+), ([-+0-9.e]+)\]", text)]


@pytest.mark.parametrize("domain", ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"])
def test_bounds_random_sound(domain, capsys):
    assert main(["bounds", "--model", TINY, "--domain", domain, "--eps", "0.05",
                 "--random", "1,8,8", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    pairs = _bounds_lines(out)
    assert len(pairs) == 20
    assert all(lo <= hi + 1e-6 for lo, hi in pairs)
    # the centre's logits lie inside the bounds
    from tests.cli.models import tiny

    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        f = tiny()(x).flatten().tolist()
    assert all(lo - 1e-5 <= v <= hi + 1e-5 for v, (lo, hi) in zip(f, pairs, strict=True))


def test_bounds_input_file_margins(tmp_path, capsys):
    x = torch.rand(1, 8, 8)
    torch.save(x, tmp_path / "x.pt")
    assert main(["bounds", "--model", TINY, "--domain", "deeppoly", "--eps", "0.0",
                 "--input", str(tmp_path / "x.pt"), "--spec", "margins", "--label", "3"]) == 0
    out = capsys.readouterr().out
    assert "label 3" in out and "f_3 - f_0" in out
    pairs = _bounds_lines(out)
    assert len(pairs) == 9
    assert all(abs(lo - hi) < 1e-4 for lo, hi in pairs)  # eps 0: the bounds are tight


def test_bounds_weights(tmp_path, capsys):
    from tests.cli.models import tiny

    model = tiny()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    assert main(["bounds", "--model", TINY, "--weights", str(tmp_path / "w.pt"), "--eps", "0.1",
                 "--random", "1,8,8"]) == 0
    assert all(lo == hi == 0.0 for lo, hi in _bounds_lines(capsys.readouterr().out))


@pytest.mark.parametrize("argv, message", [
    (["--model", "tests.cli.models"], "module:factory"),
    (["--model", "tests.cli.nowhere:tiny"], "cannot import module"),
    (["--model", "tests.cli.models:missing"], "has no attribute"),
    (["--model", "tests.cli.models:not_a_module"], "not an nn.Module"),
    (["--model", "/nonexistent/model.pt"], "no such file"),
    (["--model", TINY, "--input", "/nonexistent/x.pt"], "no such file"),
    (["--model", TINY, "--random", "3,9,9"], "does not accept"),
    (["--model", TINY, "--random", "1,8,8", "--spec", "margins"], "needs --label"),
    (["--model", TINY, "--random", "1,8,8", "--spec", "margins", "--label", "12"], "0..9"),
    (["--model", TINY, "--random", "a,b"], "positive integers"),
    (["--model", TINY, "--random", "1,8,8", "--domain", "nope"], "unknown domain"),
])
def test_bounds_errors(argv, message, capsys):
    assert main(["bounds", "--eps", "0.1", *argv]) == 2
    err = capsys.readouterr().err
    assert "absdsl bounds: error:" in err and message in err


def test_bounds_weights_mismatch(tmp_path, capsys):
    from tests.cli.models import mlp

    torch.save(mlp().state_dict(), tmp_path / "w.pt")
    assert main(["bounds", "--model", TINY, "--weights", str(tmp_path / "w.pt"), "--eps", "0.1",
                 "--random", "1,8,8"]) == 2
    assert "do not fit the model" in capsys.readouterr().err


def test_bounds_training_checkpoint(tmp_path, capsys):
    from absdsl.training.checkpoint import FORMAT
    from absdsl.training.data import dataset_info
    from absdsl.training.models import build_model

    model = build_model("cnn3", dataset_info("mnist"))
    ckpt = {"format": FORMAT, "version": 1, "config": {"model": "cnn3", "dataset": "mnist"},
            "model": model.state_dict(), "epoch": 1, "batch": 0}
    torch.save(ckpt, tmp_path / "epoch_0001.pt")
    assert main(["bounds", "--model", str(tmp_path / "epoch_0001.pt"), "--eps", "0.01",
                 "--spec", "margins", "--label", "0"]) == 0
    assert len(_bounds_lines(capsys.readouterr().out)) == 9


def test_ir(capsys):
    assert main(["ir", "--model", TINY, "--input-shape", "1,8,8"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "relu" in out and "def bound_program" not in out
    assert main(["ir", "--model", TINY, "--input-shape", "1,8,8", "--domain", "deeppoly"]) == 0
    out = capsys.readouterr().out
    assert "def bound_program" in out and "DeepPoly" in out


def test_ir_needs_shape(capsys):
    assert main(["ir", "--model", TINY]) == 2
    assert "--input-shape" in capsys.readouterr().err


def _bench(argv: list[str]) -> int:
    """``absdsl bench bounds ARGV`` in-process, restoring torch's thread count after it."""
    threads = torch.get_num_threads()
    try:
        return main(["bench", "bounds", *argv])
    finally:
        torch.set_num_threads(threads)


def test_bench_bounds_quick(tmp_path, capsys):
    path = tmp_path / "bench.json"
    code = _bench(["--quick", "--nets", "tiny", "--data", "mnist",
                   "--batch-a", "4", "--batch-b", "4", "--threads", "1", "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "time x fwd" in out and "auto_LiRPA" in out
    rows = json.loads(path.read_text())["rows"]
    assert {r["domain"] for r in rows} == {"box", "hbox", "zonotope", "deeppoly", "crown-ibp"}
    for r in rows:
        assert r["time_ratio"] is not None and r["time_ratio"] > 0, r
        assert r["mem_ratio"] is not None, r


def test_bench_skips_big_zonotope(capsys):
    code = _bench(["--quick", "--table", "a", "--nets", "tiny", "--data", "mnist",
                   "--batch-a", "2", "--domains", "zonotope", "--max-gib", "1e-9",
                   "--threads", "1"])
    assert code == 0
    assert "skipped: needs ~" in capsys.readouterr().out


def test_public_api_still_importable():
    assert callable(absdsl.compile)


def test_bench_lirpa_without_auto_lirpa_is_a_clear_error(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)  # importing it raises ImportError
    code = _bench(["--quick", "--table", "b", "--nets", "tiny", "--lirpa"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--lirpa needs auto_LiRPA" in err and "benchmarks/setup_lirpa.sh" in err


def _fake_lirpa(shift: float, fails: bool = False) -> types.ModuleType:
    """auto_LiRPA's public API over absdsl's own domains, with lower bounds ``shift`` below
    ours (the bench must report that difference and time the calls), or raising a
    ValueError from ``compute_bounds`` when ``fails``."""
    fake = types.ModuleType("auto_LiRPA")
    fake.__version__ = "fake"
    methods = {"CROWN": "deeppoly", "CROWN-IBP": "crown-ibp"}

    class PerturbationLpNorm:
        def __init__(self, norm, x_L, x_U):
            assert norm == float("inf")
            self.x_L, self.x_U = x_L, x_U

    class BoundedTensor:
        def __init__(self, centre, ptb):
            self.ptb = ptb

    class BoundedModule:
        def __init__(self, model, example, bound_opts):
            assert bound_opts == {"relu": "adaptive"}
            self.model = model

        def compute_bounds(self, x, method, C):
            if fails:
                raise ValueError("unsupported op in the reference")
            ptb = x[0].ptb
            lb, ub = absdsl.compile(self.model, methods[method])(ptb.x_L, ptb.x_U, spec=C)
            return lb - shift, ub

    fake.PerturbationLpNorm, fake.BoundedTensor = PerturbationLpNorm, BoundedTensor
    fake.BoundedModule = BoundedModule
    return fake


def test_bench_lirpa_reports_live_times_and_bound_differences(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", _fake_lirpa(0.25))
    path = tmp_path / "b.json"
    code = _bench(["--quick", "--table", "b", "--nets", "tiny",
                   "--batch-b", "3", "--threads", "1", "--lirpa", "--json", str(path)])
    assert code == 0
    out = capsys.readouterr().out
    assert "live speedup" in out and "auto_LiRPA fake" in out
    result = json.loads(path.read_text())
    assert result["auto_lirpa"] == "fake"
    for r in result["rows"]:
        assert r["lirpa_max_diff"] == pytest.approx(0.25, abs=1e-5), r
        assert r["lirpa_live_ms"] > 0 and r["ours_paired_ms"] > 0, r


def test_bench_lirpa_failure_is_a_note_and_keeps_our_times(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", _fake_lirpa(0.0, fails=True))
    path = tmp_path / "b.json"
    code = _bench(["--quick", "--table", "b", "--nets", "tiny",
                   "--batch-b", "2", "--threads", "1", "--no-grad-timing", "--lirpa",
                   "--domains", "deeppoly", "--json", str(path)])
    assert code == 0
    row, = json.loads(path.read_text())["rows"]
    assert row["ms"] > 0 and row["peak_mib"] is not None
    assert row["lirpa_live_ms"] is None and row["lirpa_max_diff"] is None
    assert row["note"] == "auto_LiRPA error: ValueError: unsupported op in the reference"
    assert "auto_LiRPA error: ValueError" in capsys.readouterr().out


def test_bench_lirpa_with_table_a_only_needs_no_auto_lirpa(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)
    code = _bench(["--quick", "--table", "a", "--nets", "tiny", "--data",
                   "mnist", "--batch-a", "2", "--domains", "box", "--threads", "1",
                   "--lirpa"])
    assert code == 0
    assert "time x fwd" in capsys.readouterr().out
