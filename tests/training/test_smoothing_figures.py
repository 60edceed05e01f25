"""The paper's figures 6 and 7 at tiny scale: the data behind the PNGs, not the pictures.

Figure 6 is ``absdsl analyze landscape --direction gradient`` (the DeepPoly gradient, the
paper's sigmas); figure 7 is ``absdsl analyze popsize`` (the loss and gradient PGPE sees at
each population size).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from absdsl.cli import main
from absdsl.training.analysis import AnalysisError
from absdsl.training.analysis.landscape import loss_landscape
from absdsl.training.analysis.popsize import population_effect, roughness


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).double()


def _data(seed: int, n: int = 24):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 2, 2, generator=gen, dtype=torch.float64),
            torch.randint(0, 3, (n,), generator=gen))


def test_figure6_data_the_deeppoly_gradient_ascends_and_tiny_sigma_is_the_loss():
    model, (x, y) = _mlp(0), _data(0)
    res = loss_landscape(model, x, y, 0.05, domains=["box", "deeppoly"], direction="gradient",
                         span=1e-4, points=5, sigmas=[1e-9, 5e-5, 5e-4], samples=4,
                         radii=[1e-3], sensitivity_samples=2)
    assert res.direction["kind"] == "gradient" and "deeppoly" in res.direction["detail"]
    dp = res.loss["deeppoly"]
    assert dp[0] < dp[2] < dp[4]  # t > 0 ascends the DeepPoly loss along its own gradient
    assert res.sigmas == [1e-9, 5e-5, 5e-4]
    for name in ("box", "deeppoly"):  # sigma 1e-9: the smoothed loss is the loss itself
        smooth = res.smoothed[name]["1e-09"]["mean"]
        assert smooth == pytest.approx(res.loss[name], rel=1e-6)
        wide = res.smoothed[name]["0.0005"]  # a real band at the largest sigma
        assert all(lo <= m <= hi for lo, m, hi in
                   zip(wide["lower"], wide["mean"], wide["upper"], strict=True))


def test_roughness_is_the_mean_second_difference_over_the_centre_value():
    assert roughness([0.0, 1.0, 4.0, 9.0], 2.0) == pytest.approx(1.0)  # t^2: second diff 2
    assert roughness([1.0, 2.0, 3.0], 5.0) == 0.0  # a line has none


def test_figure7_data_larger_populations_see_a_smoother_loss_and_a_better_gradient():
    model, (x, y) = _mlp(1), _data(1)
    data = population_effect(model, x, y, 0.05, domain="box", gradient_domain="box",
                             sigma=1e-2, popsizes=[256, 4], span=0.02, points=9, repeats=6,
                             reference_samples=4096)
    assert data["popsizes"] == [4, 256]
    small, large = data["per_popsize"]["4"], data["per_popsize"]["256"]
    # the Monte-Carlo error falls like 1 / sqrt(n_ps): 8x from 4 to 256 members
    assert large["standard_error"] < small["standard_error"] / 3
    assert large["roughness"] < small["roughness"]
    # 67 weights: for a locally linear loss the cosine is about sqrt(m / (m + 67)) with m
    # pairs, 0.81 for 128 pairs and 0.17 for 2
    assert large["gradient_cosine_mean"] > 0.7 and small["gradient_cosine_mean"] < 0.45
    assert small["subspace_dimension"] == 2 and large["subspace_dimension"] == 128
    assert len(large["mean"]) == 9 and data["t"][4] == 0.0
    assert all(lo <= m <= hi for lo, m, hi in
               zip(large["lower"], large["mean"], large["upper"], strict=True))


def test_figure7_at_a_tiny_sigma_every_population_sees_the_original_loss():
    model, (x, y) = _mlp(2), _data(2)
    data = population_effect(model, x, y, 0.05, domain="deeppoly", sigma=1e-10,
                             popsizes=[2, 8], span=0.01, points=5, repeats=2,
                             reference_samples=8)
    for cell in data["per_popsize"].values():
        assert cell["mean"] == pytest.approx(data["loss"], rel=1e-7)
    assert data["loss"][2] == pytest.approx(data["loss_at_0"], rel=1e-12)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"popsizes": [3]}, "even integer >= 2"),
    ({"popsizes": [4, 4]}, "repeat"),
    ({"sigma": 0.0}, "sigma must be a number > 0"),
    ({"points": 2}, "points must be an integer >= 3"),
    ({"repeats": 1}, "repeats must be"),
    ({"reference_samples": 5}, "reference samples"),
])
def test_figure7_rejects_bad_options_before_any_work(kwargs, message):
    model, (x, y) = _mlp(0), _data(0, 4)
    with pytest.raises(AnalysisError, match=message):
        population_effect(model, x, y, 0.05, **({"domain": "box"} | kwargs))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) ``absdsl train`` run: CNN3 + Box, 32 digits, one epoch."""
    run = tmp_path_factory.mktemp("figures") / "run"
    assert main(["train", "--dataset", "mnist5k", "--model", "cnn3", "--domain", "box",
                 "--eps", "0.05", "--epochs", "1", "--warmup-epochs", "0", "--ramp-epochs",
                 "1", "--train-subset", "32", "--test-subset", "8", "--batch-size", "32",
                 "--eval-every", "0", "--quiet", "--no-final-eval", "--out", str(run)]) == 0
    return run


def test_cli_figure7_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "p"
    code = main(["analyze", "popsize", str(run_dir), "--domain", "box", "--gradient-domain",
                 "box", "--popsizes", "2,6", "--points", "3", "--span", "0.01", "--repeats",
                 "2", "--reference-samples", "8", "--inputs", "2", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "popsize.json").read_text())
    assert data["popsizes"] == [2, 6] and data["domain"] == "box"
    assert data["direction"]["kind"] == "gradient" and data["n_parameters"] > 1000
    for cell in data["per_popsize"].values():
        assert len(cell["mean"]) == 3 and math.isfinite(cell["gradient_cosine_mean"])
    assert (out / "popsize.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 6 |" in capsys.readouterr().out


@pytest.mark.parametrize(("args", "message"), [
    (["--popsizes", "4,5"], "even integer >= 2"),
    (["--sigma", "-1"], "sigma must be a number > 0"),
    (["--direction", "up"], "--direction must be 'random', 'gradient'"),
])
def test_cli_figure7_rejects_bad_input_with_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "run").mkdir()
    assert main(["analyze", "popsize", str(tmp_path / "run"), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err, err
