"""The exact MILP stage (``absdsl certify --complete``) on tiny networks.

The MILP's minimum margin must be attained (its primal point really has that margin), lie at
or below the minimum over a dense grid of the box (grid points are feasible), and at or above
DeepPoly's lower bound (the MILP is exact, DeepPoly a relaxation on the same bounds).
"""

from __future__ import annotations

import json
import math
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from absdsl.cli import main
from absdsl.errors import AbsdslError
from absdsl.training.certify import CertifyOptions, certify_model
from absdsl.training.data import Split, dataset_info
from absdsl.training.milp import (
    CUTOFF_SLACK,
    MarginResult,
    MilpError,
    MilpStage,
    NetworkMilp,
    check_time_limit,
    decide,
)

TOL = 1e-6


def _mlp(seed: int, widths=(2, 8, 8, 3), act=nn.ReLU) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers[:-1]).double().eval()


class _Residual(nn.Module):
    """x -> h = relu(A x); relu(B h) + h -> C: an add node between two ReLU layers."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.a, self.b, self.c = nn.Linear(2, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.a(x))
        return self.c(torch.relu(self.b(h)) + h)


class _TwoBranch(nn.Module):
    """Two ReLU branches concatenated (a cat node), then a linear read-out."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(11)
        self.p, self.q, self.out = nn.Linear(2, 4), nn.Linear(2, 5), nn.Linear(9, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([torch.relu(self.p(x)), torch.relu(self.q(x))], 1))


def _conv() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 2, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(2, 2, 2, stride=2), nn.ReLU(), nn.Flatten(),
                         nn.Linear(8, 3)).double().eval()


def _grid(lo: torch.Tensor, hi: torch.Tensor, n: int = 301) -> torch.Tensor:
    g = torch.linspace(0, 1, n, dtype=torch.float64)
    unit = torch.stack(torch.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    return lo + unit * (hi - lo)


def _samples(lo: torch.Tensor, hi: torch.Tensor, n: int = 20000) -> torch.Tensor:
    """Random points and every corner-ish point (0/1 per coordinate at random) of the box."""
    gen = torch.Generator().manual_seed(0)
    shape = lo.shape[1:]
    u = torch.rand(n, *shape, generator=gen, dtype=torch.float64)
    corners = torch.randint(0, 2, (n, *shape), generator=gen).double()
    unit = torch.cat([u, corners])
    return lo + unit * (hi - lo)


def _check_exact(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor,
                 points: torch.Tensor) -> int:
    """MILP minima against DeepPoly below and the sampled points above; returns #margins."""
    nm = NetworkMilp(model, tuple(lo.shape[1:]))
    label = int(model((lo + hi) / 2).argmax(1))
    results = nm.min_margins(lo, hi, label, time_limit=20.0)
    deeppoly = nm.deeppoly_margins(lo, hi, torch.tensor([label]))[0]
    with torch.no_grad():
        logits = model(points)
    assert len(results) == logits.shape[1] - 1
    for r in results:
        assert r.status == "optimal"
        sampled = float((logits[:, label] - logits[:, r.target]).min())
        assert r.lower >= deeppoly[r.target] - 1e-6, (r, deeppoly[r.target])
        assert r.lower <= r.upper + 1e-9
        assert r.upper <= sampled + 1e-6, (r.upper, sampled)
        # the primal point is in the box and really has the optimal margin
        point = torch.from_numpy(r.point).unsqueeze(0)
        assert bool((point >= lo).all() and (point <= hi).all())
        with torch.no_grad():
            at = model(point)[0]
        assert float(at[label] - at[r.target]) == pytest.approx(r.upper, abs=1e-5)
    return len(results)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_milp_minimum_lies_between_deeppoly_and_a_dense_grid(seed):
    model = _mlp(seed)
    x = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    lo, hi = x - 0.3, x + 0.3
    assert _check_exact(model, lo, hi, _grid(lo, hi)) == 2


@pytest.mark.parametrize("model", [_Residual(), _TwoBranch()], ids=["residual-add", "cat"])
def test_milp_is_exact_with_add_and_cat_nodes(model):
    model = model.double().eval()
    x = torch.tensor([[0.1, -0.2]], dtype=torch.float64)
    lo, hi = x - 0.5, x + 0.5
    assert _check_exact(model, lo, hi, _grid(lo, hi)) == 2


def test_milp_is_exact_on_a_tiny_conv_net():
    model = _conv()
    x = torch.full((1, 1, 4, 4), 0.5, dtype=torch.float64)
    lo, hi = x - 0.25, x + 0.25
    assert _check_exact(model, lo, hi, _samples(lo, hi)) == 2


@pytest.mark.parametrize("act", [lambda: nn.LeakyReLU(0.2), lambda: nn.Hardtanh(-0.5, 0.7)],
                         ids=["leaky_relu", "hardtanh"])
def test_milp_is_exact_for_other_piecewise_linear_activations(act):
    model = _mlp(5, act=act)
    x = torch.tensor([[0.3, 0.5]], dtype=torch.float64)
    lo, hi = x - 0.4, x + 0.4
    assert _check_exact(model, lo, hi, _grid(lo, hi)) == 2


def _boundary_case() -> tuple[nn.Module, torch.Tensor, torch.Tensor, int]:
    """A 2-class net whose decision boundary runs through the box (half of it is class 1)."""
    model = _mlp(0, widths=(2, 8, 8, 2))
    lo = torch.tensor([[-0.5, -0.5]], dtype=torch.float64)
    hi = lo + 2.0
    grid = _grid(lo, hi)
    with torch.no_grad():
        logits = model(grid)
        model[-1].bias[0] -= float((logits[:, 0] - logits[:, 1]).median())
        assert bool((model(grid).argmax(1) != 0).any())  # the box holds another class
    return model, lo, hi, 0


def test_falsification_is_a_real_counterexample():
    model, lo, hi, label = _boundary_case()
    nm = NetworkMilp(model, (2,))
    outcome = nm.verify(lo, hi, label, TOL, time_limit=20.0)
    assert outcome.status == "falsified"
    cex = outcome.counterexample.unsqueeze(0)
    assert bool((cex >= lo).all() and (cex <= hi).all())
    with torch.no_grad():
        assert int(model(cex).argmax(1)) != label


def test_a_solver_point_is_no_falsification_without_the_forward_check(monkeypatch):
    model, lo, hi, label = _boundary_case()
    nm = NetworkMilp(model, (2,))
    checked: list[int] = []

    def never_flips(point: np.ndarray, lab: int) -> bool:
        checked.append(lab)
        return False

    monkeypatch.setattr(nm, "flips", never_flips)
    outcome = nm.verify(lo, hi, label, TOL, time_limit=20.0)
    assert checked == [label]  # HiGHS's point went through the forward pass
    # a negative minimum (not a proof) and no checked counterexample: undecided
    assert outcome.status == "unknown" and outcome.counterexample is None
    assert outcome.margins[0].upper is not None and outcome.margins[0].upper < 0


def test_certified_box_has_every_margin_proved_by_a_bound():
    model = _mlp(2)
    x = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    lo, hi = x - 0.02, x + 0.02
    label = int(model(x).argmax(1))
    nm = NetworkMilp(model, (2,))
    outcome = nm.verify(lo, hi, label, TOL, time_limit=20.0)
    assert outcome.status == "certified"
    assert outcome.lower > TOL and all(m.lower > TOL for m in outcome.margins)
    with torch.no_grad():
        logits = model(_grid(lo, hi, 51))
    assert float(outcome.lower) <= float((logits[:, label:label + 1] - logits).sort(1)
                                         .values[:, 1].min()) + 1e-6


def test_a_solve_cut_short_leaves_the_input_unknown():
    # DeepPoly cannot prove this box and HiGHS may explore no node: no bound, no point
    model = _mlp(0, widths=(2, 48, 48, 48, 2))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    lo, hi = x - 0.5, x + 0.5
    label = int(model(x).argmax(1))
    nm = NetworkMilp(model, (2,))
    outcome = nm.verify(lo, hi, label, TOL, time_limit=20.0, node_limit=0)
    assert outcome.binaries > 0
    assert outcome.status == "unknown" and outcome.counterexample is None
    assert not math.isfinite(outcome.lower)


def test_outcome_mapping_uses_the_dual_bound_and_the_forward_check():
    proved = [MarginResult(1, "optimal", 0.5, 0.6), MarginResult(2, "limit", 2e-6, 0.3)]
    assert decide(proved, TOL, flipped=False) == "certified"
    # a bound at the tolerance proves nothing; a good primal value never certifies
    assert decide([MarginResult(1, "optimal", TOL, 5.0)], TOL, False) == "unknown"
    assert decide([MarginResult(1, "limit", -math.inf, 5.0)], TOL, False) == "unknown"
    # a negative primal whose point does not flip the label under the forward pass
    assert decide([MarginResult(1, "optimal", -0.1, -0.1)], TOL, False) == "unknown"
    assert decide([MarginResult(1, "optimal", -0.1, -0.1)], TOL, True) == "falsified"
    assert decide([], TOL, False) == "unknown"


@pytest.mark.parametrize("seconds", [0, -1.0, float("nan")])
def test_time_limit_must_be_positive(seconds):
    with pytest.raises(MilpError, match="--milp-time-limit must be a positive"):
        check_time_limit(seconds)


def test_sigmoid_network_is_refused_before_any_work():
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 8), nn.Sigmoid(), nn.Linear(8, 10))
    split = Split(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.tensor([0, 1]))
    options = CertifyOptions(eps=0.01, extra_stages=["milp"])
    with pytest.raises(MilpError, match=r"piecewise-linear networks only.*is sigmoid"):
        certify_model(model, dataset_info("mnist5k"), split, options)
    with pytest.raises(AbsdslError, match="--milp-time-limit"):
        MilpStage(_mlp(0), dataset_info("mnist5k"),
                  CertifyOptions(eps=0.01, milp_time_limit=0.0))


_FACTORY = """
import torch.nn as nn

def make(info):
    c, h, w = info.shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 16), nn.ReLU(),
                         nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, info.num_classes))
"""


@pytest.fixture(scope="module")
def mlp_run(tmp_path_factory):
    """A tiny MLP trained for three epochs on 1,000 digits (its factory on sys.path)."""
    root = tmp_path_factory.mktemp("milp")
    (root / "milp_tiny_mlp.py").write_text(textwrap.dedent(_FACTORY))
    sys.path.insert(0, str(root))
    try:
        run = root / "run"
        assert main(["train", "--model", "milp_tiny_mlp:make", "--out", str(run),
                     "--method", "natural", "--train-subset", "1000", "--test-subset", "20",
                     "--batch-size", "32", "--epochs", "3", "--eval-every", "0",
                     "--no-final-eval", "--quiet"]) == 0
        yield run
    finally:
        sys.path.remove(str(root))


def test_certify_complete_end_to_end_leaves_nothing_unknown(mlp_run, capsys):
    out = mlp_run / "complete.json"
    assert main(["certify", str(mlp_run), "--complete", "milp", "--domain", "box", "--eps",
                 "0.1", "-n", "20", "--pgd-steps", "5", "--pgd-restarts", "1", "--quiet",
                 "--milp-time-limit", "300", "--out", str(out)]) == 0
    assert "counts" in capsys.readouterr().out
    data = json.loads(out.read_text())
    stages = [r["stage"] for r in data["inputs"]]
    assert stages.count("milp") >= 2, stages
    assert data["summary"]["counts"]["unknown"] == 0
    proved_by_highs = 0
    for r in data["inputs"]:
        if r["stage"] == "milp" and r["status"] == "certified":
            assert r["margin_lower"]["milp"] > 1e-6
            # a margin HiGHS proved under the cutoff row reports the cutoff as its bound
            proved_by_highs += r["margin_lower"]["milp"] == pytest.approx(1e-6 + CUTOFF_SLACK)
    assert proved_by_highs >= 1


def test_certify_complete_rejects_a_zero_time_limit(mlp_run, capsys):
    assert main(["certify", str(mlp_run), "--complete", "--milp-time-limit", "0", "-n", "2",
                 "--quiet", "--out", str(mlp_run / "never.json")]) == 2
    err = capsys.readouterr().err
    assert "--milp-time-limit must be a positive number of seconds, got 0" in err
    assert "Traceback" not in err
    assert not (mlp_run / "never.json").exists()


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_certify_rejects_a_bad_time_limit_even_without_complete(mlp_run, capsys, value):
    assert main(["certify", str(mlp_run), "--milp-time-limit", value, "--quiet", "--out",
                 str(mlp_run / "never.json")]) == 2
    err = capsys.readouterr().err
    assert "--milp-time-limit must be a positive number of seconds" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not (mlp_run / "never.json").exists()


def test_certify_rejects_a_checkpoint_that_does_not_fit_its_model(mlp_run, tmp_path, capsys):
    ckpt = torch.load(sorted((mlp_run / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    ckpt["config"]["model"] = "fc"
    path = tmp_path / "wrong.pt"
    torch.save(ckpt, path)
    assert main(["certify", str(path), "--complete", "-n", "2", "--quiet", "--out",
                 str(tmp_path / "never.json")]) == 2
    err = capsys.readouterr().err
    assert "do not fit model 'fc'" in err and "Traceback" not in err, err
    assert not (tmp_path / "never.json").exists()


def test_encoding_uses_binaries_only_for_unstable_neurons_that_matter():
    model = _mlp(1)
    nm = NetworkMilp(model, (2,))
    x = torch.tensor([[0.4, 0.6]], dtype=torch.float64)
    lo, hi = x - 0.3, x + 0.3
    bounds = nm.node_bounds(lo, hi)[0]
    need = nm.needed(bounds)
    problem = nm.encode(lo.reshape(-1).numpy(), hi.reshape(-1).numpy(), bounds)
    unstable = {n.name: (bounds[n.inputs[0]][0] < 0) & (bounds[n.inputs[0]][1] > 0)
                for n in nm.nodes if n.op == "relu"}
    total = sum(int(u.sum()) for u in unstable.values())
    assert 0 < total < 16  # some neurons are stable, some are not
    # a neuron that only feeds dead ReLUs cannot change the output: no binary for it
    assert problem.binaries == sum(int((u & need[name]).sum()) for name, u in unstable.items())
    assert int(np.asarray(problem.integrality).sum()) == problem.binaries
    last = [n for n in nm.nodes if n.op == "relu"][-1]
    dead = bounds[last.inputs[0]][1] <= 0
    assert not bool((need[last.inputs[0]] & dead).any())


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4, 5])
def test_cutoff_search_agrees_with_the_exact_minimum(seed):
    model = _mlp(seed, widths=(2, 10, 10, 2))
    x = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    lo, hi = x - 0.6, x + 0.6
    label = int(model(x).argmax(1))
    nm = NetworkMilp(model, (2,))
    exact = nm.min_margins(lo, hi, label)[0]
    assert exact.status == "optimal"
    assert exact.upper > 1e-6 or exact.lower < -1e-6  # clear of the cutoff either way
    problem = nm.encode(lo.reshape(-1).numpy(), hi.reshape(-1).numpy(),
                        nm.node_bounds(lo, hi)[0])
    cut = nm.solve_margin(problem, label, 1 - label, 20.0, cutoff=0.0)
    if exact.upper > 1e-6:
        assert cut.status == "above_cutoff" and cut.lower == 0.0
    if exact.lower < -1e-6:
        assert cut.status == "optimal" and cut.upper == pytest.approx(exact.upper, abs=1e-6)
