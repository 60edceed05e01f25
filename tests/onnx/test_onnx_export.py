"""``absdsl export``: a run's network as ONNX, then imported and verified again."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest
import torch
from onnx_helpers import vnnlib

import absdsl
from absdsl.cli import main


def _run_folder(tmp_path: Path) -> tuple[Path, torch.nn.Module]:
    """A run folder with one checkpoint of CNN3 on mnist5k (random weights, no training)."""
    from absdsl.training.checkpoint import FORMAT, atomic_save
    from absdsl.training.config import resolve
    from absdsl.training.data import dataset_info
    from absdsl.training.models import build_model

    cfg = resolve(dict(dataset="mnist5k", model="cnn3", domain="box", eps=0.05))
    torch.manual_seed(0)
    model = build_model("cnn3", dataset_info("mnist5k")).eval()
    run = tmp_path / "run"
    atomic_save({"format": FORMAT, "version": 1, "config": cfg.to_dict(),
                 "model": model.state_dict(), "epoch": 1, "batch": 0},
                run / "checkpoints" / "epoch_0001.pt")
    return run, model


def test_export_checks_with_onnxruntime_and_round_trips(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]
                                                        ) -> None:
    run, model = _run_folder(tmp_path)
    out = tmp_path / "cnn3.onnx"
    assert main(["export", str(run), "--onnx", str(out), "-n", "64"]) == 0
    text = capsys.readouterr().out
    m = re.search(r"on 64 mnist5k test inputs: max \|difference\| (\S+) .*same prediction on "
                  r"(\d+)/64", text)
    assert m is not None, text
    assert float(m.group(1)) < 1e-4 and int(m.group(2)) >= 63
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops[:2] == ["Sub", "Div"]  # the normalisation layer is in the file
    # the exported file imports back to the same bounds in float64
    net = absdsl.load_onnx(out).double()
    x = torch.rand(2, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    lo, hi = absdsl.linf_ball(x, 0.01)
    for domain in ("box", "deeppoly"):
        with torch.no_grad():
            a = absdsl.compile(model.double(), domain)(lo, hi)
            b = absdsl.compile(net, domain)(lo, hi)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), domain
    # a 784-input robustness property on the exported file: tiny radius, own prediction
    with torch.no_grad():
        y = int(model.double()(x[:1]).argmax())
    box = [(max(0.0, v - 1e-4), min(1.0, v + 1e-4)) for v in x[0].reshape(-1).tolist()]
    others = " ".join(f"(>= Y_{j} Y_{y})" for j in range(10) if j != y)
    prop = tmp_path / "robust.vnnlib"
    prop.write_text(vnnlib(box, 10, f"(or {others})"))
    assert main(["verify", str(out), str(prop)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == "unsat"


def test_export_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", str(tmp_path / "nothing"), "--onnx", str(tmp_path / "a.onnx")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    run, _ = _run_folder(tmp_path)
    assert main(["export", str(run), "--onnx", str(tmp_path / "a.txt")]) == 2
    assert "must end in .onnx" in capsys.readouterr().err
