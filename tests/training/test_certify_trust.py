"""No certificate from an unchecked domain: the trust gate and its cache, domain hashes in
the report, PGD on certified inputs (a refuted certificate is a soundness error), the
magnitude-scaled threshold on a network whose bounds reach 1e4, and ``absdsl bounds``'s
float64 verdict."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from absdsl import checkcache
from absdsl.cli import main
from absdsl.dsl.loader import builtin_path
from absdsl.training.certify import (
    CertifyOptions,
    UncheckedDomainError,
    certify_model,
    domain_trust,
)
from absdsl.training.cli_certify import report_soundness_errors
from absdsl.training.data import Split, dataset_info

BOX = Path(str(builtin_path("box.absd")))


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    path = tmp_path / "cache" / "checked.json"
    monkeypatch.setenv(checkcache.ENV_VAR, str(path))
    return path


def _pixel_model(f0: float = 0.5) -> nn.Module:
    """f_0 = f0 (a constant), f_1 = the first pixel, every other logit -10."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with torch.no_grad():
        model[1].weight.zero_()
        model[1].bias.fill_(-10.0)
        model[1].bias[0] = f0
        model[1].bias[1] = 0.0
        model[1].weight[1, 0] = 1.0
    return model


def _split(first_pixels: list[int]) -> Split:
    images = torch.zeros(len(first_pixels), 1, 28, 28, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.tensor(first_pixels, dtype=torch.uint8)
    return Split(images, torch.zeros(len(first_pixels), dtype=torch.long))


def _copy(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_an_unchecked_file_does_not_certify_until_it_passes_check(tmp_path):
    mine = _copy(tmp_path, "mybox.absd", "# my own copy\n" + BOX.read_text())
    opts = CertifyOptions(eps=0.01, domain=str(mine), pgd_steps=2, pgd_restarts=1)
    with pytest.raises(UncheckedDomainError, match="has not passed absdsl check"):
        certify_model(_pixel_model(), dataset_info("mnist5k"), _split([10]), opts)
    checkcache.record_pass(mine, {"examples": 1})
    report = certify_model(_pixel_model(), dataset_info("mnist5k"), _split([10]), opts)
    summary = report.to_json()["summary"]
    assert summary["domain_file"] == str(mine.resolve())
    assert summary["domain_sha256"] == checkcache.domain_digest(mine)
    assert summary["domain_files"][0]["trust"] == "checked"
    assert report.count("certified") == 1 and not summary["uncertified_domain"]
    mine.write_text(mine.read_text() + "\n# edited after the check\n")  # the entry is stale now
    with pytest.raises(UncheckedDomainError):
        certify_model(_pixel_model(), dataset_info("mnist5k"), _split([10]), opts)


def test_an_edit_to_an_imported_file_invalidates_the_check(tmp_path):
    _copy(tmp_path, "relax.absd", (BOX.parent / "relax.absd").read_text())
    main_file = _copy(tmp_path, "poly.absd", 'import "relax.absd"\n'
                      "domain P { bounds backsub  output backsub }\n")
    checkcache.record_pass(main_file, {})
    assert domain_trust(str(main_file)).trust == "checked"
    relax = tmp_path / "relax.absd"
    relax.write_text(relax.read_text().replace("upper u / (u - l) * (x - l)",
                                               "upper 0.99 * u / (u - l) * (x - l)"))
    with pytest.raises(UncheckedDomainError):
        domain_trust(str(main_file))


def test_builtin_names_and_byte_identical_copies_are_trusted(tmp_path):
    assert domain_trust("box").trust == "built-in"
    copy = _copy(tmp_path, "box.absd", BOX.read_text())
    trust = domain_trust(str(copy))
    assert trust.trust == "built-in" and trust.sha256 == domain_trust("ibp").sha256


def test_the_explicit_flag_marks_every_result_uncertified_domain(tmp_path):
    mine = _copy(tmp_path, "mybox.absd", "# unchecked\n" + BOX.read_text())
    opts = CertifyOptions(eps=0.01, domain=str(mine), pgd_steps=2, pgd_restarts=1,
                          uncertified_domain=True)
    report = certify_model(_pixel_model(), dataset_info("mnist5k"), _split([10, 200]), opts)
    data = report.to_json()
    assert data["summary"]["uncertified_domain"] is True
    assert data["summary"]["certificate_rule"].startswith("UNCERTIFIED DOMAIN")
    assert all(r["uncertified_domain"] for r in data["inputs"])
    assert data["summary"]["domain_files"][0]["trust"] == "uncertified-domain"


def test_pgd_refutes_the_certificates_of_a_broken_domain(tmp_path):
    """The review's case: Box with ``l = m`` (the radius dropped) 'certifies' inputs that
    PGD falsifies. PGD now attacks certified inputs: each is a soundness error, falsified."""
    broken = _copy(tmp_path, "broken.absd", BOX.read_text().replace("l = m - s", "l = m"))
    opts = CertifyOptions(eps=0.1, domain=str(broken), pgd_steps=10, pgd_restarts=1,
                          uncertified_domain=True)
    # first pixel 115/255 = 0.45: f_0 - f_1 = 0.05 at x, but 0.55 is in the ball
    report = certify_model(_pixel_model(), dataset_info("mnist5k"), _split([115, 115]), opts)
    assert report.count("certified") == 0
    assert [r.status for r in report.records] == ["falsified", "falsified"]
    assert all("bound:" in (r.soundness_error or "") for r in report.records)
    summary = report.summary()
    assert summary["certified_acc"] == 0.0 and len(summary["soundness_errors"]) == 2
    assert report_soundness_errors(summary["soundness_errors"])
    sound = certify_model(_pixel_model(), dataset_info("mnist5k"), _split([115, 115]),
                          CertifyOptions(eps=0.1, pgd_steps=10, pgd_restarts=1))
    assert sound.summary()["soundness_errors"] == [] and sound.count("falsified") == 2


class _Scaled(nn.Module):
    """h = s * (x_0 + 1) twice, ReLU, f_0 = h_1 - h_2 + 5e-6, other logits 0: every margin
    is 5e-6 exactly (h_1 and h_2 round alike), while the bounds reach 2 s."""

    def __init__(self, scale: float) -> None:
        super().__init__()
        self.flat = nn.Flatten()
        self.l1 = nn.Linear(784, 2)
        self.l2 = nn.Linear(2, 10)
        with torch.no_grad():
            self.l1.weight.zero_()
            self.l1.weight[:, 0] = scale
            self.l1.bias.fill_(scale)
            self.l2.weight.zero_()
            self.l2.weight[0, 0], self.l2.weight[0, 1] = 1.0, -1.0
            self.l2.bias.zero_()
            self.l2.bias[0] = 5e-6

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(self.flat(x))))


def scaled_1e4() -> nn.Module:
    return _Scaled(1e4).eval()


def scaled_1() -> nn.Module:
    return _Scaled(1.0).eval()


def test_the_threshold_scales_with_the_magnitude_of_the_computation():
    """A margin of 5e-6 beats the absolute 1e-6 in both nets; where the bounds reach 1.4e4
    the threshold is 1e-6 + 1e-9 * 1.4e4 = 1.5e-5, so it is not a certificate there."""
    info = dataset_info("mnist5k")
    opts = CertifyOptions(eps=0.0, tolerance=1e-6)
    small = certify_model(_Scaled(1.0), info, _split([100]), opts).records[0]
    big = certify_model(_Scaled(1e4), info, _split([100]), opts).records[0]
    assert small.margin_lower["box"] == pytest.approx(5e-6, rel=1e-6)
    assert big.margin_lower["box"] == pytest.approx(5e-6, rel=1e-3)
    assert small.status == "certified" and small.threshold == pytest.approx(1e-6, rel=1e-2)
    assert big.status == "unknown" and big.threshold is None
    import absdsl
    from absdsl.training.certify import certificate_threshold

    prog = absdsl.compile(_Scaled(1e4).double().eval(), "box")
    x = _split([100]).images.double() / 255
    spec = absdsl.margin_spec(torch.tensor([0]), 10).double()
    lb, ub = prog(x, x, spec=spec)
    expected = 1e-6 + 1e-9 * 1e4 * (1 + 100 / 255)  # the hidden layer's bounds
    assert float(certificate_threshold(prog, x, x, lb, ub, 1e-6)[0]) == pytest.approx(expected)


def test_bounds_margins_follow_the_float64_policy(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "scaled_models", sys.modules[__name__])
    torch.save(torch.zeros(1, 28, 28), tmp_path / "x.pt")
    argv = ["bounds", "--domain", "box", "--eps", "0", "--input", str(tmp_path / "x.pt"),
            "--spec", "margins", "--label", "0"]
    assert main(argv + ["--model", "scaled_models:scaled_1"]) == 0
    out = capsys.readouterr().out
    assert "float64" in out and "label 0, predicted 0, certified" in out
    assert main(argv + ["--model", "scaled_models:scaled_1e4"]) == 0
    # x = 0: the hidden bounds are 1e4, so the threshold is 1e-6 + 1e-9 * 1e4
    assert "not certified (threshold 1.1e-05)" in capsys.readouterr().out


def test_check_records_a_pass_that_certification_then_accepts(tmp_path, cache, capsys):
    mine = _copy(tmp_path, "mybox.absd", textwrap.dedent("""\
        # Box with the ReLU written as max
        """) + BOX.read_text())
    with pytest.raises(UncheckedDomainError):
        domain_trust(str(mine))
    assert main(["check", str(mine), "--examples", "2"]) == 0
    assert "recorded as checked" in capsys.readouterr().out and cache.is_file()
    trust = domain_trust(str(mine))
    assert trust.trust == "checked" and trust.check is not None
    assert trust.check["settings"]["examples"] == 2


def test_train_refuses_an_unchecked_certify_domain_before_training(tmp_path, capsys):
    mine = _copy(tmp_path, "mybox.absd", "# unchecked\n" + BOX.read_text())
    run = tmp_path / "run"
    assert main(["train", "--domain", str(mine), "--out", str(run), "--epochs", "1",
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "has not passed absdsl check" in err and "--uncertified-domain" in err
    assert not run.exists()  # refused before the run folder was made


def _run_folder(tmp_path: Path) -> Path:
    """A run folder with one checkpoint of an untrained CNN3 on mnist5k (no training)."""
    from absdsl.training.checkpoint import FORMAT
    from absdsl.training.models import build_model

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    model = build_model("cnn3", dataset_info("mnist5k"))
    torch.save({"format": FORMAT, "version": 1,
                "config": {"model": "cnn3", "dataset": "mnist5k", "eps": 0.01},
                "model": model.state_dict(), "epoch": 1, "batch": 0},
               run / "checkpoints" / "epoch_0001.pt")
    return run


def test_cli_certify_gate_and_flag(tmp_path, capsys):
    import json

    run = _run_folder(tmp_path)
    mine = _copy(tmp_path, "mybox.absd", "# unchecked\n" + BOX.read_text())
    argv = ["certify", str(run), "--domain", str(mine), "-n", "4", "--quiet",
            "--pgd-steps", "2", "--pgd-restarts", "1", "--out", str(tmp_path / "c.json")]
    assert main(argv) == 2
    assert "has not passed absdsl check" in capsys.readouterr().err
    assert not (tmp_path / "c.json").exists()
    assert main(argv + ["--uncertified-domain"]) == 0
    out = capsys.readouterr().out
    assert "UNCERTIFIED DOMAIN" in out and "uncertified-domain" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["summary"]["domain_sha256"] == checkcache.domain_digest(mine)
    assert all(r["uncertified_domain"] for r in data["inputs"])
