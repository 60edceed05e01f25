"""Analysis instruments (issue 6 items 1-2): AUC, propagation tightness, loss landscape, CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import absdsl
from absdsl.cli import main
from absdsl.errors import AbsdslError
from absdsl.training.analysis import AnalysisError, certified_auc, propagation_tightness
from absdsl.training.analysis.landscape import (
    find_jumps,
    load_direction,
    loss_landscape,
    plot_landscape,
)
from absdsl.training.analysis.tightness import propagation_tightness_per_margin, trapezoid_auc


def _mlp(seed: int, sizes=(4, 8, 3)) -> nn.Module:
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Flatten()]
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]).double().eval()


def _data(seed: int, n: int = 24, shape=(1, 2, 2), classes: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=gen, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=gen)
    return x, y


# -- propagation tightness -------------------------------------------------------------------
def test_tightness_is_one_for_a_single_affine_layer():
    model = _mlp(0, (4, 3))
    x, y = _data(1)
    per = propagation_tightness_per_margin(model, x, y, 0.1)
    assert per.shape == (24, 2)
    assert torch.allclose(per, torch.ones_like(per), atol=1e-12)
    assert propagation_tightness(model, x, y, 0.1) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tightness_equals_a_dense_hand_computation(seed):
    model = _mlp(seed, (4, 6, 3))
    x, y = _data(seed + 10)
    eps = 0.15
    w1, b1 = model[1].weight, model[1].bias
    w2 = model[3].weight
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    e = ((hi - lo) / 2).reshape(x.shape[0], -1)
    expected = []
    with torch.no_grad():
        for i in range(x.shape[0]):
            d = torch.diag((w1 @ x[i].reshape(-1) + b1 > 0).double())
            c = absdsl.margin_spec(y[i:i + 1], 3)[0].double()
            num = (c @ w2 @ d @ w1).abs() @ e[i]
            den = (c @ w2).abs() @ d @ w1.abs() @ e[i]
            expected.append(torch.where(den > 0, num / den, torch.ones_like(den)))
    expected_t = torch.stack(expected)
    per = propagation_tightness_per_margin(model, x, y, eps)
    assert torch.allclose(per, expected_t, atol=1e-12)
    tau = propagation_tightness(model, x, y, eps)
    assert tau == pytest.approx(float(expected_t.mean()), abs=1e-12)
    assert 0.0 < tau <= 1.0


class _Residual(nn.Module):
    """Conv, ReLU, a residual add and a cat: tau <= 1 must hold through every op."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.conv2 = nn.Conv2d(2, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 4 * 4 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        r = torch.relu(self.conv2(h)) + h
        return self.fc(torch.flatten(torch.cat([r, h], 1), 1))


@pytest.mark.parametrize("seed", [0, 1])
def test_tightness_never_exceeds_one_and_numerator_is_the_jacobian(seed):
    torch.manual_seed(seed)
    model = _Residual().double()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.2, 0.2)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x, y = _data(seed, n=6, shape=(1, 4, 4))
    per = propagation_tightness_per_margin(model, x, y, 0.05)
    assert bool((per > 0).all()) and bool((per <= 1 + 1e-12).all())
    # a plain conv net: the denominator by hand from dense matrices
    conv = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 3))
    conv = conv.double().eval()
    eps = 0.1
    w1 = torch.autograd.functional.jacobian(
        lambda v: conv[0](v.reshape(1, 1, 4, 4)).reshape(-1) - conv[0].bias.repeat_interleave(4),
        torch.zeros(16, dtype=torch.float64))
    w2 = conv[3].weight
    per_conv = propagation_tightness_per_margin(conv, x, y, eps)
    for i in range(x.shape[0]):
        xi = x[i].reshape(-1)
        jac = torch.autograd.functional.jacobian(lambda v: conv(v.reshape(1, 1, 4, 4))[0], xi)
        d = torch.diag((w1 @ xi + conv[0].bias.repeat_interleave(4) > 0).double())
        c = absdsl.margin_spec(y[i:i + 1], 3)[0].double()
        e = (((xi + eps).clamp(0, 1) - (xi - eps).clamp(0, 1)) / 2)
        assert torch.allclose(c @ jac, c @ w2 @ d @ w1, atol=1e-12)
        tau = (c @ jac).abs() @ e / ((c @ w2).abs() @ d @ w1.abs() @ e)
        assert torch.allclose(per_conv[i], tau, atol=1e-12)


def _conv_bn_net(seed: int) -> nn.Sequential:
    """Conv + BN (folded by the compiler), ReLU, BN after a ReLU (its own node), strided conv,
    ReLU, flatten, Linear + BatchNorm1d (folded), ReLU, Linear; negative BN scales included."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.BatchNorm2d(3), nn.Conv2d(3, 2, 3, stride=2), nn.ReLU(),
                          nn.Flatten(), nn.Linear(8, 6), nn.BatchNorm1d(6), nn.ReLU(),
                          nn.Linear(6, 3)).double()
    with torch.no_grad():
        for bn in (model[1], model[3], model[8]):
            bn.weight.uniform_(-1.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 2.0)
    return model.eval()


def _dense(fn, n_in: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, b) of an affine map of flat vectors, by autograd at 0 (independent of the IR)."""
    zero = torch.zeros(n_in, dtype=torch.float64)
    return torch.autograd.functional.jacobian(fn, zero), fn(zero).detach()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tightness_with_conv_batch_norm_and_flatten_matches_dense_matrices(seed):
    m = _conv_bn_net(seed)
    assert any(float(m[i].weight.detach().min()) < 0 for i in (1, 3, 8))  # |BN scale| matters
    # the four affine layers between the ReLUs, as dense matrices of flat vectors
    layers = [
        _dense(lambda v: m[1](m[0](v.reshape(1, 1, 5, 5))).reshape(-1), 25),
        _dense(lambda v: m[4](m[3](v.reshape(1, 3, 5, 5))).reshape(-1), 75),
        _dense(lambda v: m[8](m[7](v.reshape(1, 8))).reshape(-1), 8),
        _dense(lambda v: m[10](v.reshape(1, 6)).reshape(-1), 6),
    ]
    x, y = _data(seed + 20, n=8, shape=(1, 5, 5))
    eps = 0.1
    per = propagation_tightness_per_margin(m, x, y, eps)
    assert per.shape == (8, 2)
    for i in range(x.shape[0]):
        xi = x[i].reshape(-1)
        e = ((xi + eps).clamp(0, 1) - (xi - eps).clamp(0, 1)) / 2
        gates, h = [], xi
        for w, b in layers[:-1]:  # D_j from the pre-activations at the clean x
            pre = w @ h + b
            gates.append(torch.diag((pre > 0).double()))
            h = gates[-1] @ pre
        with torch.no_grad():
            assert torch.allclose(layers[-1][0] @ h + layers[-1][1], m(x[i:i + 1])[0],
                                  atol=1e-12)
        c = absdsl.margin_spec(y[i:i + 1], 3)[0].double()
        (w1, _), (w2, _), (w3, _), (w4, _) = layers
        d1, d2, d3 = gates
        linear = c @ w4 @ d3 @ w3 @ d2 @ w2 @ d1 @ w1
        jac = torch.autograd.functional.jacobian(lambda v: m(v.reshape(1, 1, 5, 5))[0], xi)
        assert torch.allclose(linear, c @ jac, atol=1e-12)  # the numerator is C J(x)
        num = linear.abs() @ e
        den = (c @ w4).abs() @ d3 @ w3.abs() @ d2 @ w2.abs() @ d1 @ w1.abs() @ e
        assert torch.allclose(per[i], num / den, atol=1e-12, rtol=1e-10), (i, per[i], num / den)
    assert bool((per < 1 - 1e-3).any())  # a non-trivial case: IBP loses something


def test_tightness_rejects_a_sigmoid_network():
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    x, y = _data(0, shape=(4,))
    with pytest.raises(AnalysisError, match="sigmoid"):
        propagation_tightness(model, x, y, 0.1)


# -- certified AUC ---------------------------------------------------------------------------
def test_trapezoid_normalisation():
    assert trapezoid_auc([0.0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert trapezoid_auc([0.0, 0.1], [0.8, 0.8]) == pytest.approx(0.8)


def test_auc_facts_hbox_contains_box():
    model = _mlp(8, (4, 10, 10, 3))  # seed 3 predicts one class on the whole unit cube
    x, _ = _data(5, n=40)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # some misclassified inputs: never certified
    box = certified_auc(model, x, y, "box", 0.5, 6)
    hbox = certified_auc(model, x, y, "hbox", 0.5, 6)
    assert box.eps == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    # eps = 0: every domain is exact, so certified = correct with a margin above 1e-6
    assert box.certified[0] == pytest.approx(35 / 40)
    # HBox's bounds lie inside Box's (an unstable ReLU becomes a box, exact elsewhere), at every eps
    assert all(h >= b for h, b in zip(hbox.certified, box.certified, strict=True))
    assert hbox.auc >= box.auc
    # Box is inclusion-monotone: a larger ball never certifies more
    assert all(a >= b for a, b in zip(box.certified[:-1], box.certified[1:], strict=True))
    assert box.certified[-1] < box.certified[0]  # the grid reaches where Box fails
    assert 0.0 <= box.auc <= 1.0 and "trapezoid" in box.normalisation


def test_auc_on_an_affine_network_is_exact_for_relational_domains():
    model = _mlp(4, (4, 3))
    x, _ = _data(6, n=30)
    with torch.no_grad():
        y = model(x).argmax(1)
    exact = {d: certified_auc(model, x, y, d, 0.3, 4).auc
             for d in ("hbox", "zonotope", "deeppoly", "crown-ibp")}
    # one affine map: these domains keep every correlation, so they all reach the exact
    # margin minimum; so does Box, which folds the margin spec into the last linear layer
    assert len({round(v, 12) for v in exact.values()}) == 1, exact
    assert certified_auc(model, x, y, "box", 0.3, 4).auc == pytest.approx(exact["deeppoly"])


@pytest.mark.parametrize("kwargs, message", [
    ({"eps_max": 0.0}, "eps_max must be > 0"),
    ({"eps_max": -0.1}, "eps_max must be > 0"),
    ({"n_eps": 1}, "n_eps must be an integer >= 2"),
    ({"domain": "octagon"}, "unknown domain 'octagon'"),
])
def test_auc_rejects_bad_input(kwargs, message):
    model = _mlp(0)
    x, y = _data(0)
    args = {"domain": "box", "eps_max": 0.1, "n_eps": 3} | kwargs
    with pytest.raises(AbsdslError, match=message):
        certified_auc(model, x, y, **args)


# a domain file with rules for ReLU networks only (every built-in domain bounds sigmoid)
_RELU_ONLY = """
domain ReluOnly {
  state { l: bound; u: bound }
  gamma { l <= x <= u }
  rule input continuous { l = lo; u = hi }
  rule affine continuous { c = (u + l) / 2; r = (u - l) / 2; m = W @ c + b; s = |W| @ r
                           l = m - s; u = m + s }
  rule relu continuous { l = f(l); u = f(u) }
}
"""


@pytest.fixture
def relu_only(tmp_path):
    path = tmp_path / "relu_only.absd"
    path.write_text(_RELU_ONLY)
    return path


def test_auc_reports_an_op_the_domain_cannot_handle(relu_only):
    model = nn.Sequential(nn.Linear(4, 5), nn.Sigmoid(), nn.Linear(5, 3)).double()
    x, y = _data(0, shape=(4,))
    with pytest.raises(AbsdslError, match="ReluOnly has no rule for sigmoid"):
        certified_auc(model, x, y, str(relu_only), 0.1)


# -- landscape -------------------------------------------------------------------------------
def _toy() -> nn.Module:
    """Margin f_0 - f_1 = ReLU(2x - 1 + w) + 1 on x in [0, 1], w = 1 + bias of layer 0.

    With x' = 2x - 1 in [-1, 1] this is the worked discontinuity y = ReLU(x' + w) + 1:
    DeepPoly's lower bound is 1 for w <= 0 and w for w > 0, Box's is 1 for w < 1.
    """
    model = nn.Sequential(nn.Linear(1, 1), nn.ReLU(), nn.Linear(1, 2)).double()
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[0].bias.fill_(-1.0)
        model[2].weight.copy_(torch.tensor([[1.0], [0.0]]))
        model[2].bias.copy_(torch.tensor([1.0, 0.0]))
    return model.eval()


def _bias_direction(path):
    torch.save({"0.weight": torch.zeros(1, 1), "0.bias": torch.full((1,), 3.0),
                "2.weight": torch.zeros(2, 1), "2.bias": torch.zeros(2)}, path)
    return path


def test_landscape_finds_the_deeppoly_jump_of_the_worked_example(tmp_path):
    model = _toy()
    x, y = torch.full((1, 1), 0.5, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    direction = _bias_direction(tmp_path / "d.pt")  # normalised to +1 on the bias: t = w
    res = loss_landscape(model, x, y, 0.5, domains=["box", "deeppoly"], direction=direction,
                         span=0.5, points=51, sigmas=[1e-3], samples=4, radii=[1e-4, 1e-2],
                         sensitivity_samples=3)
    t = torch.tensor(res.t)
    assert float(t[25]) == pytest.approx(0.0, abs=1e-12)
    # the loss is CE([0, -m], 0) = log(1 + exp(-m)) with m the margin's lower bound
    m_deeppoly = torch.where(t > 1e-12, t, torch.ones_like(t))
    assert torch.allclose(torch.tensor(res.loss["deeppoly"]),
                          torch.log1p(torch.exp(-m_deeppoly)), atol=1e-12)
    assert torch.allclose(torch.tensor(res.loss["box"]),
                          torch.full_like(t, math.log1p(math.exp(-1))), atol=1e-12)
    assert res.loss_at_0["deeppoly"] == pytest.approx(math.log1p(math.exp(-1)))
    assert [(j.index, j.t_left, j.t_right) for j in res.jumps["deeppoly"]] == \
        [(25, pytest.approx(0.0, abs=1e-12), pytest.approx(0.02))]
    assert res.jumps["box"] == []
    # smoothing: away from the jump the mean is near the loss; the band is 1.96 std/sqrt(n)
    curve = res.smoothed["deeppoly"]["0.001"]
    assert curve["n"] == 4
    for i in (5, 45):
        half = 1.96 * curve["std"][i] / 2
        assert 0 < half < 0.01
        assert curve["upper"][i] - curve["mean"][i] == pytest.approx(half, abs=1e-15)
        assert abs(curve["mean"][i] - res.loss["deeppoly"][i]) < 3 * half
    # sensitivity: the discontinuity at theta makes |dL| / r grow like 1 / r for DeepPoly
    s_poly, s_box = res.sensitivity["deeppoly"]["mean"], res.sensitivity["box"]["mean"]
    assert s_poly[0] > 10 * s_poly[1] and s_poly[0] > 100 * s_box[0]
    data = json.loads(json.dumps(res.to_json()))  # the JSON holds every number measured
    (jump,) = data["jumps"]["deeppoly"]
    assert jump["index"] == 25 and jump["t_right"] == pytest.approx(0.02)
    assert jump["t_left"] == pytest.approx(0.0, abs=1e-12)
    assert jump["delta"] == pytest.approx(res.loss["deeppoly"][26] - res.loss["deeppoly"][25])
    assert jump["delta"] > 0.3  # L jumps from log(1 + e^-1) to about log 2
    assert 0 < jump["local_scale"] < jump["delta"] / data["jump_options"]["ratio"]
    assert data["jumps"]["box"] == [] and "ratio" in data["jump_rule"]
    for name in ("box", "deeppoly"):
        band = data["smoothed"][name]["0.001"]
        assert band["sigma"] == 1e-3 and band["n"] == 4
        assert all(len(band[k]) == 51 for k in ("mean", "std", "lower", "upper"))
        assert all(lo <= mu <= hi for lo, mu, hi in
                   zip(band["lower"], band["mean"], band["upper"], strict=True))
        sens = data["sensitivity"]["per_domain"][name]
        assert sens["mean"] == pytest.approx(res.sensitivity[name]["mean"])
        assert len(sens["std"]) == len(sens["max"]) == 2
        assert all(mx >= mu for mx, mu in zip(sens["max"], sens["mean"], strict=True))
    assert data["sensitivity"]["radii"] == [1e-4, 1e-2]
    assert data["sensitivity"]["samples"] == 3 and "/ r" in data["sensitivity"]["rule"]
    assert "1.96" in data["smoothing_rule"] and data["direction"]["kind"] == "file"
    png = plot_landscape(data, tmp_path / "fig.png")
    head = png.read_bytes()
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    # figure 6's layout: one row, (a) the loss, one panel per sigma, then the sensitivity
    width, height = int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    assert (width, height) == (round(3.4 * 3 * 120), round(3.2 * 120))


def test_landscape_loss_matches_the_training_objective():
    from absdsl.training.objective import certified_loss

    model = _mlp(2, (4, 6, 3))
    x, y = _data(3, n=8)
    res = loss_landscape(model, x, y, 0.05, domains=["crown-ibp"], direction="gradient",
                         span=1e-3, points=5, sigmas=[1e-4], samples=2, radii=[1e-3],
                         sensitivity_samples=1)
    prog = absdsl.compile(model, domain="crown-ibp")
    with torch.no_grad():
        expected = float(certified_loss(prog, None, x, y, 0.05, num_classes=3))
    assert res.loss_at_0["crown-ibp"] == pytest.approx(expected, rel=1e-10)
    assert res.loss["crown-ibp"][2] == pytest.approx(expected, rel=1e-10)
    # the gradient direction ascends: the loss grows with t near 0 (smooth enough here)
    assert res.loss["crown-ibp"][3] > res.loss["crown-ibp"][1]
    assert res.direction["kind"] == "gradient"


def test_random_direction_is_filter_normalised_unit_and_seeded():
    from absdsl.training.analysis.landscape import random_direction

    model = _mlp(6, (4, 6, 3))
    d = random_direction(model, seed=3)
    assert float(d.norm()) == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(d, random_direction(model, seed=3))
    assert not torch.allclose(d, random_direction(model, seed=4))
    # every filter (row of a weight, or a whole bias) has the norm of theta's filter, up to
    # the one global scale
    ratios, offset = [], 0
    for p in model.parameters():
        rows = p.detach().reshape(p.shape[0], -1) if p.dim() >= 2 else p.detach().reshape(1, -1)
        part = d[offset:offset + p.numel()].reshape(rows.shape)
        ratios += (part.norm(dim=1) / rows.norm(dim=1)).tolist()
        offset += p.numel()
    assert offset == d.numel()
    assert max(ratios) == pytest.approx(min(ratios), rel=1e-10)
    x, y = _data(7, n=6)
    res = loss_landscape(model, x, y, 0.05, domains=["box"], direction="random", seed=3,
                         span=1e-2, points=3, sigmas=[1e-4], samples=2, radii=[1e-3],
                         sensitivity_samples=1)
    assert res.direction == {"kind": "random", "detail": "seed 3", "n_parameters": d.numel()}
    assert res.loss["box"][1] == pytest.approx(res.loss_at_0["box"], rel=1e-12)


def test_find_jumps_reports_steps_and_not_kinks():
    t = [i / 100 for i in range(-50, 51)]
    kink = [max(v, 0.0) for v in t]
    assert find_jumps(t, kink) == []
    step = [v + (1.0 if v > 0.105 else 0.0) for v in t]
    jumps = find_jumps(t, step)
    assert [j.index for j in jumps] == [60]
    assert jumps[0].delta == pytest.approx(1.01)


def test_direction_file_is_shape_checked(tmp_path):
    model = _toy()
    bad = tmp_path / "bad.pt"
    torch.save({"0.weight": torch.zeros(1, 1), "0.bias": torch.zeros(1),
                "2.weight": torch.zeros(3, 1), "2.bias": torch.zeros(2)}, bad)
    with pytest.raises(AnalysisError, match=r"'2.weight' has shape \(3, 1\) in the file but "
                                            r"\(2, 1\) in the model"):
        load_direction(bad, model)
    missing = tmp_path / "missing.pt"
    torch.save({"0.weight": torch.zeros(1, 1)}, missing)
    with pytest.raises(AnalysisError, match=r"missing parameters \['0.bias'"):
        load_direction(missing, model)
    zero = tmp_path / "zero.pt"
    torch.save({n: torch.zeros_like(p) for n, p in model.named_parameters()}, zero)
    with pytest.raises(AnalysisError, match="direction is zero"):
        load_direction(zero, model)


@pytest.mark.parametrize("kwargs, message", [
    ({"sigmas": [1e-3, 0.0]}, "every sigma must be > 0"),
    ({"sigmas": [-1.0]}, "every sigma must be > 0"),
    ({"points": 2}, "points must be an integer >= 3"),
    ({"span": 0.0}, "span must be a positive number"),
    ({"samples": 1}, "samples must be an integer >= 2"),
    ({"domains": ["octagon"]}, "unknown domain"),
    ({"direction": "nowhere.pt"}, "does not exist"),
    ({"memory_budget_mb": 0.0}, "memory budget must be > 0"),
    ({"device": "nowhere"}, "unknown device 'nowhere'"),
    ({"direction": torch.ones(5, dtype=torch.float64)},
     r"a direction tensor must be flat with 6 entries .* got shape \(5,\)"),
    ({"direction": torch.ones(1, 6, dtype=torch.float64)}, r"got shape \(1, 6\)"),
    ({"direction": torch.zeros(6, dtype=torch.float64)}, "direction is zero"),
])
def test_landscape_rejects_bad_options(kwargs, message):
    model = _toy()
    x, y = torch.full((1, 1), 0.5, dtype=torch.float64), torch.zeros(1, dtype=torch.long)
    with pytest.raises(AbsdslError, match=message):
        loss_landscape(model, x, y, 0.5, **({"domains": ["box"]} | kwargs))


# -- the command line ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real (tiny) run of ``absdsl train``: CNN3 + Box, 32 digits, one epoch."""
    run = tmp_path_factory.mktemp("analysis") / "run"
    code = main(["train", "--dataset", "mnist5k", "--model", "cnn3", "--domain", "box",
                 "--eps", "0.05", "--epochs", "1", "--warmup-epochs", "0", "--ramp-epochs",
                 "1", "--train-subset", "32", "--test-subset", "8", "--batch-size", "32",
                 "--eval-every", "0", "--quiet", "--no-final-eval", "--out", str(run)])
    assert code == 0
    return run


def test_cli_tightness_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "t"
    code = main(["analyze", "tightness", str(run_dir), "--domains", "box,hbox,crown-ibp,deeppoly",
                 "--eps-max", "0.02", "--n-eps", "3", "--samples", "10", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "propagation tightness" in text and "hbox" in text and "deeppoly" in text
    data = json.loads((out / "tightness.json").read_text())
    assert data["n_inputs"] == 10 and data["eps"] == pytest.approx([0.0, 0.01, 0.02])
    assert set(data["domains"]) == {"box", "hbox", "crown-ibp", "deeppoly"}
    box, hbox = data["domains"]["box"], data["domains"]["hbox"]
    assert all(h >= b for h, b in zip(hbox["certified"], box["certified"], strict=True))
    for d in data["domains"].values():  # each AUC is the stated trapezoid over its curve
        assert d["auc"] == pytest.approx(trapezoid_auc(data["eps"], d["certified"]))
        assert d["certified"][0] == box["certified"][0]  # eps 0: every domain is exact
    tau = data["propagation_tightness"]
    assert 0.0 < tau["min"] <= tau["value"] <= tau["max"] <= 1.0 and tau["eps"] == 0.02
    assert "D_i = diag(1[pre-activation at the clean x > 0])" in tau["definition"]
    assert "trapezoid" in data["auc_normalisation"]


def test_cli_landscape_end_to_end(run_dir, tmp_path, capsys):
    out = tmp_path / "l"
    code = main(["analyze", "landscape", str(run_dir), "--domain", "box", "--direction",
                 "gradient", "--gradient-domain", "box", "--span", "0.01", "--points", "5",
                 "--sigmas", "1e-4", "--samples", "2", "--radii", "1e-3",
                 "--sensitivity-samples", "2", "--inputs", "4", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "landscape.json").read_text())
    assert data["domains"] == ["box"] and len(data["loss"]["box"]) == 5
    assert data["loss"]["box"][2] == pytest.approx(data["loss_at_0"]["box"], rel=1e-12)
    assert data["smoothed"]["box"]["0.0001"]["n"] == 2
    band = data["smoothed"]["box"]["0.0001"]
    assert len(band["lower"]) == len(band["upper"]) == 5
    assert all(lo <= hi for lo, hi in zip(band["lower"], band["upper"], strict=True))
    assert isinstance(data["jumps"]["box"], list) and data["jump_options"]["ratio"] == 10.0
    assert len(data["sensitivity"]["per_domain"]["box"]["mean"]) == 1
    assert data["direction"]["kind"] == "gradient" and data["checkpoint"].endswith(".pt")
    assert (out / "landscape.png").read_bytes()[:4] == b"\x89PNG"
    assert "jumps" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["tightness", "--eps-max", "0"], "eps_max must be > 0"),
    (["tightness", "--n-eps", "1"], "n_eps must be an integer >= 2"),
    (["tightness", "--domains", "box,octagon"], "unknown domain 'octagon'"),
    (["landscape", "--sigmas", "1e-3,0"], "every sigma must be > 0"),
    (["landscape", "--direction", "up"], "--direction must be 'random', 'gradient'"),
])
def test_cli_rejects_bad_input(run_dir, capsys, args, message):
    assert main(["analyze", args[0], str(run_dir), *args[1:]]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and message in err, err


def test_cli_rejects_a_direction_of_the_wrong_shape(run_dir, tmp_path, capsys):
    ckpt = torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    direction = {k: torch.ones_like(v) for k, v in ckpt["model"].items()
                 if k not in ("0.mean", "0.std")}
    direction["6.weight"] = torch.ones(10, 7)
    path = tmp_path / "dir.pt"
    torch.save(direction, path)
    assert main(["analyze", "landscape", str(run_dir), "--domain", "box", "--direction",
                 str(path), "--inputs", "2"]) == 2
    err = capsys.readouterr().err
    assert "'6.weight' has shape (10, 7) in the file but (10, 392) in the model" in err, err


def test_cli_rejects_a_checkpoint_that_does_not_fit_its_model(run_dir, tmp_path, capsys):
    ckpt = torch.load(sorted((run_dir / "checkpoints").glob("*.pt"))[-1], weights_only=True)
    ckpt["config"]["model"] = "fc"
    path = tmp_path / "wrong.pt"
    torch.save(ckpt, path)
    assert main(["analyze", "tightness", str(path), "--samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "do not fit model 'fc'" in err and "Traceback" not in err, err


_SIGMOID_FACTORY = """
import torch.nn as nn

def make(info):
    c, h, w = info.shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 8), nn.Sigmoid(),
                         nn.Linear(8, info.num_classes))
"""


@pytest.fixture(scope="module")
def sigmoid_run(tmp_path_factory):
    """A run of a sigmoid network (factory on sys.path)."""
    import sys

    root = tmp_path_factory.mktemp("sigmoid")
    (root / "analysis_sigmoid_net.py").write_text(_SIGMOID_FACTORY)
    sys.path.insert(0, str(root))
    try:
        run = root / "run"
        assert main(["train", "--model", "analysis_sigmoid_net:make", "--method", "natural",
                     "--train-subset", "32", "--test-subset", "8", "--batch-size", "32",
                     "--epochs", "1", "--eval-every", "0", "--no-final-eval", "--quiet",
                     "--out", str(run)]) == 0
        yield run
    finally:
        sys.path.remove(str(root))


@pytest.mark.parametrize("args", [
    ["tightness", "--domains", "box,RELU_ONLY", "--samples", "4"],
    ["landscape", "--domain", "box,RELU_ONLY", "--inputs", "2", "--points", "3"],
])
def test_cli_rejects_a_domain_without_a_rule_for_an_op_before_any_work(sigmoid_run, tmp_path,
                                                                       capsys, args,
                                                                       relu_only):
    out = tmp_path / "never"
    args = [a.replace("RELU_ONLY", str(relu_only)) for a in args]
    assert main(["analyze", args[0], str(sigmoid_run), *args[1:], "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "ReluOnly has no rule for sigmoid" in err and "Sigmoid" in err, err
    assert "Traceback" not in err and err.count("\n") == 1
    assert not out.exists()  # refused before any bound was computed or file written


def test_cli_tightness_reports_tau_as_unavailable_for_a_sigmoid_net(sigmoid_run, tmp_path,
                                                                    capsys):
    out = tmp_path / "t"
    assert main(["analyze", "tightness", str(sigmoid_run), "--domains", "box", "--eps-max",
                 "0.02", "--n-eps", "2", "--samples", "4", "--out", str(out)]) == 0
    assert "propagation tightness: n/a" in capsys.readouterr().out
    tau = json.loads((out / "tightness.json").read_text())["propagation_tightness"]
    assert tau["value"] is None and "sigmoid" in tau["reason"]
