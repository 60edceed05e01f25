"""Certification: float64, a positive tolerance, the cascade order, per-input JSON."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import absdsl
from absdsl.training.certify import CertifyOptions, certify_model
from absdsl.training.data import Split, dataset_info
from absdsl.training.loop import run_training


class _StubProgram:
    """Margin lower bounds chosen per input (by its first pixel), recording the dtype used."""

    seen: list[torch.dtype] = []

    def __init__(self, margins: dict[int, float]) -> None:
        self.margins = margins

    def __call__(self, lo, hi, spec=None):
        _StubProgram.seen.append(lo.dtype)
        key = ((lo + hi) / 2)[:, 0, 0, 0].mul(255).round().long()
        m = torch.tensor([self.margins[int(k)] for k in key], dtype=lo.dtype)
        lb = m.view(-1, 1).expand(-1, spec.shape[1]).clone()
        return lb, lb


def _first_pixel_model() -> nn.Module:
    """Predicts class 0 always: logits (1, 0, ..., 0), whatever the input."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.zero_()
        model[1].bias[0] = 1.0
    return model


def test_certificate_needs_margin_above_tolerance_in_float64(monkeypatch):
    margins = {10: 5e-7, 20: 2e-6, 30: -1.0, 40: 0.0, 50: 3.0}
    monkeypatch.setattr(absdsl, "compile", lambda model, domain: _StubProgram(margins))
    images = torch.zeros(5, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([10, 20, 30, 40, 50], dtype=torch.uint8)
    labels = torch.tensor([0, 0, 0, 0, 1])  # the last one is misclassified
    report = certify_model(_first_pixel_model(), dataset_info("mnist5k"), Split(images, labels),
                           CertifyOptions(eps=0.0, tolerance=1e-6))
    assert [r.status for r in report.records] == [
        "unknown", "certified", "unknown", "unknown", "misclassified"]
    assert report.records[0].margin_lower["box"] == pytest.approx(5e-7)
    assert set(_StubProgram.seen) == {torch.float64}
    summary = report.summary()
    assert summary["precision"] == "float64" and "> 1e-06" in summary["certificate_rule"]
    assert summary["certified_acc"] == pytest.approx(0.2)


def test_pgd_falsifies_only_points_in_the_ball_that_the_float64_model_misclassifies(
        monkeypatch):
    """The PGD stage's point is clipped into the ball and re-checked by a forward pass."""
    import absdsl.training.certify as certify_mod

    monkeypatch.setattr(absdsl, "compile",
                        lambda model, domain: _StubProgram({89: -1.0, 115: -1.0}))

    def attack(model, x, y, eps, cfg, generator=None):
        adv = x.clone()
        adv[1, 0, 0, 0] = 1.0  # would flip the label, but lies far outside the ball
        adv[2, 0, 0, 0] = 0.55  # inside the ball around 115/255 and across the boundary
        return adv

    monkeypatch.setattr(certify_mod, "pgd_attack", attack)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))  # f_0 = 0.5, f_1 = first pixel
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(-10.0)
        model[1].bias[0] = 0.5
        model[1].bias[1] = 0.0
        model[1].weight[1, 0] = 1.0
    images = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor([89, 89, 115], dtype=torch.uint8)
    report = certify_model(model, dataset_info("mnist5k"),
                           Split(images, torch.zeros(3, dtype=torch.long)),
                           CertifyOptions(eps=0.1, tolerance=1e-6))
    # row 0: PGD found nothing; row 1: its point, clipped into the ball (0.449), is still
    # class 0; row 2: a real counterexample
    assert [r.status for r in report.records] == ["unknown", "unknown", "falsified"]
    assert report.records[2].stage == "pgd"
    assert report.summary()["adversarial_acc"] == pytest.approx(2 / 3)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from absdsl.training.config import resolve

    run = tmp_path_factory.mktemp("cert") / "run"
    cfg = resolve(dict(epochs=2, batch_size=64, lr=2e-3, eps=0.02, warmup_epochs=0,
                       ramp_epochs=1, train_subset=512, test_subset=60, eval_every=0,
                       eval_pgd_steps=5, eval_pgd_restarts=1))
    run_training(cfg, run, progress=False)
    return run


def test_cli_certify_writes_per_input_json(trained_run, capsys):
    from absdsl.cli import main

    out = trained_run / "tight.json"
    assert main(["certify", str(trained_run), "--domain", "tightest", "-n", "60",
                 "--out", str(out), "--quiet", "--pgd-steps", "5"]) == 0
    printed = capsys.readouterr().out
    assert "float64" in printed and "certified" in printed
    data = json.loads(out.read_text())
    assert len(data["inputs"]) == 60
    assert data["summary"]["certify_domains"] == ["box", "hbox", "zonotope", "crown-ibp",
                                                  "deeppoly"]
    statuses = {r["status"] for r in data["inputs"]}
    assert statuses <= {"certified", "falsified", "unknown", "misclassified"}
    assert main(["certify", str(trained_run), "--domain", "box", "-n", "60",
                 "--out", str(trained_run / "box.json"), "--quiet", "--pgd-steps", "5"]) == 0
    box = json.loads((trained_run / "box.json").read_text())
    # the cascade over every domain certifies at least what Box alone certifies
    assert data["summary"]["certified_acc"] >= box["summary"]["certified_acc"] > 0
    for rec in data["inputs"]:
        if rec["status"] == "certified":  # a certified input's margin bound beat the tolerance
            assert max(rec["margin_lower"].values()) > 1e-6
