"""Exact values: DeepPoly against a plain float64 reference, CROWN-IBP, spec tightness,
the worked discontinuity y = ReLU(x + w) + 1, the continuity property (it passes for Box and
Zonotope and refutes HBox and DeepPoly declared continuous), HBox's jump."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box, mlp

import absdsl
from absdsl.dsl.loader import builtin_path
from absdsl.soundness import check_domain, continuous_ops, find_jump

# ---- an independent DeepPoly reference (dense matrices, layer by layer) ------------------


def _relu_lines(l: torch.Tensor, u: torch.Tensor):
    """(a_lo, b_lo, a_hi, b_hi) of the DeepPoly ReLU relaxation."""
    unstable = (l < 0) & (u > 0)
    active = l >= 0
    slope = torch.where(unstable, u / torch.where(unstable, u - l, torch.ones_like(u)),
                        active.to(l.dtype))
    a_hi = slope
    b_hi = torch.where(unstable, -slope * l, torch.zeros_like(l))
    a_lo = torch.where(unstable, (u > -l).to(l.dtype), active.to(l.dtype))
    return a_lo, torch.zeros_like(l), a_hi, b_hi


def _backsub(Ws, bs, lines, k, rows, lo, hi):
    """Bounds of rows @ z_k (z_k the k-th pre-activation) over [lo, hi] (one sample)."""
    low, up = rows.clone(), rows.clone()
    c_low = torch.zeros(rows.shape[0], dtype=DTYPE)
    c_up = torch.zeros(rows.shape[0], dtype=DTYPE)
    for j in range(k, -1, -1):
        c_low = c_low + low @ bs[j]
        c_up = c_up + up @ bs[j]
        low, up = low @ Ws[j], up @ Ws[j]        # now on a_{j-1} (or on x when j = 0)
        if j == 0:
            break
        a_lo, b_lo, a_hi, b_hi = lines[j - 1]
        lp, ln = low.clamp(min=0), low.clamp(max=0)
        up_p, up_n = up.clamp(min=0), up.clamp(max=0)
        c_low = c_low + lp @ b_lo + ln @ b_hi
        c_up = c_up + up_p @ b_hi + up_n @ b_lo
        low = lp * a_lo + ln * a_hi
        up = up_p * a_hi + up_n * a_lo
    lower = c_low + low.clamp(min=0) @ lo + low.clamp(max=0) @ hi
    upper = c_up + up.clamp(min=0) @ hi + up.clamp(max=0) @ lo
    return lower, upper


def deeppoly_reference(model: nn.Sequential, lo: torch.Tensor, hi: torch.Tensor,
                       spec: torch.Tensor | None = None):
    """One sample, the documented algorithm: Box runs forward as a pre-filter; the neurons it
    leaves unstable (the only ones whose ReLU lines read l and u) get Box intersected with
    back-substitution, the others keep Box; the output = back-substitution of the spec."""
    linears = [m for m in model if isinstance(m, nn.Linear)]
    Ws = [m.weight.detach() for m in linears]
    bs = [m.bias.detach() for m in linears]
    lines = []
    a_l, a_u = lo, hi
    for k in range(len(Ws) - 1):
        W, b = Ws[k], bs[k]
        c, r = (a_u + a_l) / 2, (a_u - a_l) / 2
        box_l, box_u = W @ c + b - W.abs() @ r, W @ c + b + W.abs() @ r
        bl, bu = _backsub(Ws, bs, lines, k, torch.eye(W.shape[0], dtype=DTYPE), lo, hi)
        unstable = (box_l < 0) & (box_u > 0)
        l = torch.where(unstable, torch.maximum(box_l, bl), box_l)
        u = torch.where(unstable, torch.minimum(box_u, bu), box_u)
        lines.append(_relu_lines(l, u))
        a_l, a_u = l.clamp(min=0), u.clamp(min=0)
    rows = torch.eye(Ws[-1].shape[0], dtype=DTYPE) if spec is None else spec
    return _backsub(Ws, bs, lines, len(Ws) - 1, rows, lo, hi)


@pytest.mark.parametrize("widths,seed_", [([3, 5, 2], 0), ([4, 6, 5, 3], 1),
                                          ([2, 4, 4, 4, 3], 2),
                                          ([5, 3, 6, 2], 3)])
def test_deeppoly_equals_reference(widths, seed_) -> None:
    model = mlp(widths, seed=seed_)
    lo, hi = box((widths[0],), batch=4, eps=0.5, seed=seed_)
    lb, ub = absdsl.compile(model, "deeppoly")(lo, hi)
    C = absdsl.margin_spec(torch.tensor([0, 1, 0, 1]), widths[-1]).to(DTYPE)
    slb, sub_ = absdsl.compile(model, "deeppoly")(lo, hi, spec=C)
    for i in range(lo.shape[0]):
        rl, ru = deeppoly_reference(model, lo[i], hi[i])
        torch.testing.assert_close(lb[i], rl, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(ub[i], ru, rtol=1e-9, atol=1e-9)
        rl, ru = deeppoly_reference(model, lo[i], hi[i], C[i])
        torch.testing.assert_close(slb[i], rl, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(sub_[i], ru, rtol=1e-9, atol=1e-9)


def test_reference_is_not_vacuous() -> None:
    """The nets above have unstable ReLUs with both lower slopes, so the test means something."""
    model = mlp([4, 6, 5, 3], seed=1)
    lo, hi = box((4,), batch=4, eps=0.5, seed=1)
    W, b = model[0].weight.detach(), model[0].bias.detach()
    c, r = (hi + lo) / 2, (hi - lo) / 2
    l, u = c @ W.T + b - r @ W.abs().T, c @ W.T + b + r @ W.abs().T
    unstable = (l < 0) & (u > 0)
    assert (unstable & (u > -l)).any() and (unstable & (u < -l)).any()


@pytest.mark.parametrize("seed_", range(4))
def test_crown_ibp_equals_deeppoly_one_hidden_layer(seed_) -> None:
    model = mlp([4, 8, 3], seed=seed_)
    lo, hi = box((4,), batch=5, eps=0.4, seed=seed_)
    C = absdsl.margin_spec(torch.tensor([0, 1, 2, 0, 1]), 3).to(DTYPE)
    for spec in (None, C):
        a = absdsl.compile(model, "deeppoly")(lo, hi, spec=spec)
        b = absdsl.compile(model, "crown-ibp")(lo, hi, spec=spec)
        torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a[1], b[1], rtol=1e-12, atol=1e-12)


def test_crown_ibp_looser_than_deeppoly_when_deep() -> None:
    model = mlp([4, 8, 8, 8, 3], seed=5)
    lo, hi = box((4,), batch=4, eps=0.4, seed=5)
    dl, du = absdsl.compile(model, "deeppoly")(lo, hi)
    cl, cu = absdsl.compile(model, "crown-ibp")(lo, hi)
    assert ((cu - cl) - (du - dl)).max() > 1e-6


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
def test_spec_backsub_tighter_than_logit_difference(domain) -> None:
    model = mlp([4, 8, 8, 4], seed=3)
    lo, hi = box((4,), batch=6, eps=0.3, seed=3)
    labels = torch.tensor([0, 1, 2, 3, 0, 1])
    C = absdsl.margin_spec(labels, 4).to(DTYPE)
    prog = absdsl.compile(model, domain)
    lb, ub = prog(lo, hi)
    slb, _ = prog(lo, hi, spec=C)
    naive = torch.stack([torch.stack([lb[b, labels[b]] - ub[b, i] for i in range(4)
                                      if i != labels[b]]) for b in range(6)])
    assert (slb >= naive - 1e-9).all()
    assert (slb - naive).max() > 1e-3


# ---- the worked discontinuity: y = ReLU(x + w) + 1, x in [-1, 1] ----------------------------

class ShiftRelu(nn.Module):
    def __init__(self, w: float) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1).to(DTYPE)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)
            self.lin.bias.fill_(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)) + 1.0


def _bounds(domain: str, w: float):
    m = ShiftRelu(w).eval()
    lb, ub = absdsl.compile(m, domain)(-torch.ones(1, 1, dtype=DTYPE),
                                       torch.ones(1, 1, dtype=DTYPE))
    return float(lb.detach()), float(ub.detach())


@pytest.mark.parametrize("w", [-0.9, -0.5, -0.1, -1e-3, -1e-9, 1e-9, 1e-3, 0.1, 0.5, 0.9])
def test_worked_discontinuity_exact(w) -> None:
    lb, ub = _bounds("deeppoly", w)
    assert lb == pytest.approx(1.0 if w < 0 else w, abs=1e-12)
    assert ub == pytest.approx(w + 2.0, abs=1e-12)          # the triangle's upper edge at u
    lb_box, ub_box = _bounds("box", w)
    assert (lb_box, ub_box) == (pytest.approx(1.0), pytest.approx(w + 2.0))
    lb_z, ub_z = _bounds("zonotope", w)
    lam = (w + 1) / 2
    assert lb_z == pytest.approx(lam * (w - 1) + 1.0, abs=1e-12)  # (w^2 - 1)/2 + 1
    assert ub_z == pytest.approx(w + 2.0, abs=1e-12)  # 2 * lam + 1


def test_worked_discontinuity_jump_and_continuity() -> None:
    h = 1e-7
    dp = _bounds("deeppoly", h)[0] - _bounds("deeppoly", -h)[0]
    assert abs(dp) > 0.99                                   # the jump: 1 -> ~0
    for domain in ("box", "zonotope"):
        lo_m, hi_m = _bounds(domain, -h)
        lo_p, hi_p = _bounds(domain, h)
        assert abs(lo_p - lo_m) < 10 * h and abs(hi_p - hi_m) < 10 * h


# ---- continuity in the weights (Box, Zonotope) and HBox's discontinuity ------------------

# A Hypothesis property that can fail (absdsl.soundness.continuity_property): the robust loss
# along a random direction in weight space, on networks with a neuron aimed at a guard
# surface, refined around its largest difference. It replaces a Lipschitz bound whose
# constant was too generous to fail for HBox or DeepPoly.

def _declared_continuous(tmp_path: Path, which: str) -> Path:
    """A copy of the built-in files where HBox's ReLU, or DeepPoly's (adaptive) ReLU
    relaxation, is declared ``continuous`` although it is not."""
    for name in ("hbox.absd", "relax.absd", "deeppoly.absd"):
        shutil.copy(builtin_path(name), tmp_path / name)
    if which == "hbox":
        text = (tmp_path / "hbox.absd").read_text()
        assert text.count("  rule relu {") == 1
        (tmp_path / "hbox.absd").write_text(text.replace("  rule relu {",
                                                         "  rule relu continuous {"))
        return tmp_path / "hbox.absd"
    text = (tmp_path / "deeppoly.absd").read_text()
    assert text.count("  bounds backsub") == 1
    (tmp_path / "deeppoly.absd").write_text(
        text.replace("  bounds backsub", "  rule relu continuous { }\n  bounds backsub"))
    return tmp_path / "deeppoly.absd"


@pytest.mark.parametrize("domain", ["box", "zonotope"])
def test_continuity_property_passes_for_continuous_domains(domain: str) -> None:
    report = check_domain(domain, max_examples=24, seed=0, properties=("continuity",))
    result = report.results[0]
    assert result.passed and result.examples >= 8, report.format()
    assert "relu" in result.name


@pytest.mark.parametrize("which", ["hbox", "deeppoly"])
def test_continuity_property_finds_the_jumps_of_false_claims(which: str,
                                                              tmp_path: Path) -> None:
    """HBox's ReLU jumps at l = 0, DeepPoly's adaptive lower slope at u = -l: declared
    continuous, both are refuted with a jump that does not shrink under refinement."""
    path = _declared_continuous(tmp_path, which)
    assert continuous_ops(str(path)) >= {"relu"}
    report = check_domain(str(path), max_examples=60, seed=0, properties=("continuity",),
                          shrink_seconds=3)
    assert not report.ok, report.format()
    cex = report.counterexample
    assert cex is not None and cex.prop == "continuity"
    assert cex.excess > 1e-6 and "jump of" in cex.note


def test_nothing_declared_nothing_checked() -> None:
    """The built-in HBox, DeepPoly and CROWN-IBP declare no continuous ReLU: no check runs."""
    for domain in ("hbox", "deeppoly", "crown-ibp"):
        assert "relu" not in continuous_ops(domain)
        report = check_domain(domain, max_examples=3, properties=("continuity",))
        assert report.ok and report.results[0].examples == 0
    assert continuous_ops("box") >= {"relu", "sigmoid", "tanh", "leaky_relu", "hardtanh"}


def test_find_jump_tells_a_step_from_kinks_and_steep_slopes() -> None:
    step = find_jump(lambda t: 1.0 if t > 0.0123 else 0.0, -1.0, 1.0)
    assert step is not None and abs(step.t - 0.0123) < 1e-9 and step.size == 1.0
    for smooth in (abs, lambda t: math.tanh(1e5 * (t - 0.3)), lambda t: 3.0 * t):
        assert find_jump(smooth, -1.0, 1.0) is None


class ReluMinusX(nn.Module):
    """y = ReLU(x + w) - x on x in [0, 1]: exact (= w) while stable, a box once unstable."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(1, 1).to(DTYPE)
        with torch.no_grad():
            self.lin.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x)) - x


def _scan(domain: str, ws: torch.Tensor) -> torch.Tensor:
    model = ReluMinusX().eval()
    prog = absdsl.compile(model, domain)
    lo, hi = torch.zeros(1, 1, dtype=DTYPE), torch.ones(1, 1, dtype=DTYPE)
    out = []
    for w in ws:
        lb, _ = prog.functional({"lin.bias": w.reshape(1)}, lo, hi)
        out.append(float(lb))
    return torch.tensor(out, dtype=DTYPE)


def test_finds_hbox_discontinuity_at_l_zero() -> None:
    ws = torch.linspace(-0.5, 0.5, 1001, dtype=DTYPE)[:-1] + 0.5e-3  # avoids w = 0 exactly
    step = float(ws[1] - ws[0])
    jumps = _scan("hbox", ws).diff().abs()
    i = int(jumps.argmax())
    assert float(jumps[i]) > 0.9                   # an O(1) jump over a step of 1e-3 ...
    assert float(ws[i]) < 0 < float(ws[i + 1])     # ... exactly where l = w crosses 0
    for domain in ("box", "zonotope"):              # continuous: steps of order the grid
        assert float(_scan(domain, ws).diff().abs().max()) < 3 * step


# ---- the spec folded into the last linear layer (forward domains) -------------------------

class ScaledOutput(nn.Module):
    """``model(x) * 1.0``: the output node is no longer a linear layer, so nothing folds."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) * 1.0


def test_box_folds_the_spec_into_the_last_linear_layer() -> None:
    model = mlp([4, 8, 8, 4], seed=7)
    lo, hi = box((4,), batch=6, eps=0.3, seed=7)
    C = absdsl.margin_spec(torch.tensor([0, 1, 2, 3, 0, 1]), 4).to(DTYPE)
    lb, ub = absdsl.compile(model, "box")(lo, hi, spec=C)
    # reference: IBP up to the last layer, then the per-sample matrix C W as one layer
    hl, hu = absdsl.compile(model[:-1], "box")(lo, hi)
    w, b = C @ model[-1].weight, C @ model[-1].bias
    mid = torch.einsum("bkn,bn->bk", w, (hu + hl) / 2) + b
    rad = torch.einsum("bkn,bn->bk", w.abs(), (hu - hl) / 2)
    torch.testing.assert_close(lb, mid - rad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ub, mid + rad, rtol=1e-12, atol=1e-12)
    unfolded_lb, _ = absdsl.compile(ScaledOutput(model), "box")(lo, hi, spec=C)
    assert (lb >= unfolded_lb - 1e-12).all()
    assert (lb - unfolded_lb).max() > 1e-3


def test_zonotope_margins_do_not_change_with_folding() -> None:
    """Affine maps are exact on zonotopes: folding the spec is the same bound."""
    model = mlp([4, 8, 8, 4], seed=8)
    lo, hi = box((4,), batch=5, eps=0.3, seed=8)
    C = absdsl.margin_spec(torch.tensor([3, 1, 2, 0, 1]), 4).to(DTYPE)
    prog = absdsl.compile(model, "zonotope")
    folded = prog(lo, hi, spec=C)
    assert "spec_w = torch.matmul(spec" in prog.code
    after = absdsl.compile(ScaledOutput(model), "zonotope")(lo, hi, spec=C)
    torch.testing.assert_close(folded[0], after[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(folded[1], after[1], rtol=1e-10, atol=1e-10)


def test_a_last_linear_on_a_matrix_input_gets_the_spec_after_it() -> None:
    """nn.Linear on [2, 4] per sample maps two vectors; the spec over its 6 outputs cannot
    fold into the [3, 4] weight, so it is applied to the output box."""
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).to(DTYPE).eval()
    lo, hi = box((2, 4), batch=3, eps=0.3, seed=9)
    C = absdsl.margin_spec(torch.tensor([0, 4, 5]), 6).to(DTYPE)
    prog = absdsl.compile(model, "box")
    lb, ub = prog(lo, hi, spec=C)
    assert "spec_w" not in prog.code
    l, u = (t.flatten(1) for t in prog(lo, hi))
    want_lb = torch.einsum("bkn,bn->bk", C.clamp(min=0), l) + torch.einsum(
        "bkn,bn->bk", C.clamp(max=0), u)
    torch.testing.assert_close(lb, want_lb, rtol=1e-12, atol=1e-12)
