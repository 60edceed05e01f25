"""The cheaper forms of the GRAD step's back-substitution against independent computations.

* Normalisation in front of the first conv folds into the input box's centre and radius
  (rows never pass through it): the bounds must equal those of the same network with the
  normalisation folded into the conv's weights instead.
* A conv over a relaxed activation builds rows only for the spread (``patch_start_relaxed``)
  and gets every other term from two convolutions: the chain's bounds must equal those of
  dense rows, for a target right above the first conv and for a deeper one.
* Per-sample patch rows run laid end to end (``patch_rows.Ragged``): no padding rows.
* A relaxation asked for ``needs`` only returns the mask of the full call.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from core_helpers import DTYPE, box
from test_patches import _compile, _uses_patches, conv_chain

import absdsl
from absdsl.compiler import codegen
from absdsl.compiler.backsub import patches as patch_rows
from absdsl.compiler.backsub import rows as rt
from absdsl.compiler.context import EngineOptions


class Normalised(nn.Module):
    def __init__(self, conv: nn.Conv2d, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.conv = conv
        self.register_buffer("mean", mean.view(1, -1, 1, 1))
        self.register_buffer("std", std.view(1, -1, 1, 1))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(4, 3, 3, stride=2, padding=1), nn.ReLU(),
                                  nn.Flatten(), nn.Linear(3 * 3 * 3, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv((x - self.mean) / self.std))


def _pair() -> tuple[nn.Module, nn.Module]:
    """A network with input normalisation (one std negative: the radius scales by |1/std|)
    and the same network with it folded into the first conv (W / std per input channel,
    b - sum of W * mean / std; the conv has no padding, which would read 0 after
    normalisation but mean before it)."""
    torch.manual_seed(0)
    mean, std = torch.tensor([0.3, -0.1], dtype=DTYPE), torch.tensor([0.5, -2.0], dtype=DTYPE)
    conv = nn.Conv2d(2, 4, 5, stride=2).to(DTYPE)  # 2 channels: the sub-pixel transposed conv
    normalised = Normalised(conv, mean, std).to(DTYPE).eval()
    folded_conv = nn.Conv2d(2, 4, 5, stride=2).to(DTYPE)
    with torch.no_grad():
        folded_conv.weight.copy_(conv.weight / std.view(1, -1, 1, 1))
        shift = (conv.weight * (mean / std).view(1, -1, 1, 1)).sum((1, 2, 3))
        folded_conv.bias.copy_(conv.bias - shift)
    folded = nn.Sequential(folded_conv, *normalised.head).to(DTYPE).eval()
    return normalised, folded


@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
@pytest.mark.parametrize("patches", [True, False])
def test_normalisation_folds_into_the_input_box(domain, patches, monkeypatch) -> None:
    options = EngineOptions(patch_saving=0.5 if patches else -1.0)
    normalised, folded = _pair()
    lo, hi = box((2, 15, 15), batch=3, eps=0.3, seed=1)
    C = absdsl.margin_spec(torch.tensor([0, 2, 1]), 3).to(DTYPE)
    prog = absdsl.compile(normalised, domain, options=options)
    got = prog(lo, hi, spec=C)
    want = absdsl.compile(folded, domain, options=options)(lo, hi, spec=C)
    assert "radius_truediv" in prog.code  # the radius scaled by 1 / std, once per call
    assert (got[1] - got[0]).min() > 1e-3  # not a degenerate box
    torch.testing.assert_close(got[0], want[0], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(got[1], want[1], rtol=1e-10, atol=1e-10)


def three_convs() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(3, 2, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(2 * 8 * 8, 3)).to(DTYPE).eval()


def test_relaxed_start_equals_dense_rows(monkeypatch) -> None:
    model = three_convs()
    lo, hi = box((1, 16, 16), batch=3, eps=0.4, seed=5)
    C = absdsl.margin_spec(torch.tensor([0, 1, 2]), 3).to(DTYPE)
    out = {}
    for patches in (True, False):
        prog = _compile(model, patches, monkeypatch)
        assert (_uses_patches(prog, lo) > 0) == patches
        out[patches] = (prog(lo, hi, spec=C), prog.intermediate_bounds(lo, hi), prog.code)
    code = out[True][2]
    # the second conv's target is concretised right after (spread only), the third's rows
    # go on through the generic patch steps
    assert code.count("patch_rows.patch_start_relaxed(") == 2
    assert "patch_rows.patch_spread(" in code and "patch_rows.patch_relax(" in code
    assert "patch_rows.patch_concretize_after(" in code
    assert "patch_rows.patch_start(" not in code
    for side in (0, 1):
        torch.testing.assert_close(out[True][0][side], out[False][0][side], rtol=1e-10,
                                   atol=1e-10)
    for name, (l, u) in out[False][1].items():
        torch.testing.assert_close(out[True][1][name][0], l, rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out[True][1][name][1], u, rtol=1e-10, atol=1e-10)


def test_per_sample_rows_have_no_padding(monkeypatch) -> None:
    """Each sample's needed neurons run, and no others: the rows handed to the patch
    function number exactly the needed (sample, neuron) pairs."""
    model = conv_chain(4)
    lo, hi = box((1, 8, 8), batch=4, eps=0.25, seed=11)
    hi = lo + (hi - lo) * torch.linspace(0.1, 1.0, 4, dtype=DTYPE).view(4, 1, 1, 1)
    prog = _compile(model, True, monkeypatch)
    assert _uses_patches(prog, lo) > 0
    seen = []
    refine = rt.refine

    def spy(backsub, lower, upper, needs, rows_per_chunk, per_sample, ctx):
        def counted(index):
            if isinstance(index, patch_rows.Ragged):
                seen.append((int(needs.flatten(1).expand(lower.shape[0], -1).sum()),
                             index.neuron.numel()))
            return backsub(index)
        return refine(counted, lower, upper, needs, rows_per_chunk, per_sample, ctx)

    monkeypatch.setattr(rt, "refine", spy)
    prog(lo, hi)
    assert seen and all(need == ran > 0 for need, ran in seen)


def test_needs_only_is_the_mask_of_the_full_call() -> None:
    from absdsl.dsl.loader import load_domain

    loaded = load_domain("deeppoly")
    em = codegen.Emitter(indent=0)
    for op, params in (("relu", {}), ("leaky_relu", {"negative_slope": 0.1}),
                       ("sigmoid", {})):
        relax = codegen.relax_for(op, loaded.relaxes)
        assert relax is not None
        name = codegen.relax_function(relax, op, params, em, loaded.domain, relax.filename,
                                      relax.source)
        fn = codegen.load_generated("\n".join(em.lines), op)[name]
        g = torch.Generator().manual_seed(0)
        l = torch.randn(200, generator=g, dtype=DTYPE)
        u = l + torch.rand(200, generator=g, dtype=DTYPE) * 2
        lines, needs = fn(l, u)
        assert torch.equal(fn(l, u, True), needs)
        assert all(t.dtype == DTYPE and t.shape == l.shape for t in lines)
        if op == "sigmoid":
            assert bool(needs.all())
        else:
            assert 0 < int(needs.sum()) < 200


def test_crown_ibp_mixing_shares_the_box_pass() -> None:
    """CROWN-IBP's mixed margins from one call equal a Box program's and a CROWN-IBP
    program's apart (values and gradients), also through ``prog.functional``'s parameters
    under vmap; the Box part is what the Box program computes, not CROWN-IBP's bound."""
    from absdsl.training.objective import mixed_margin

    model = three_convs()
    lo, hi = box((1, 16, 16), batch=3, eps=0.1, seed=7)
    y = torch.tensor([0, 2, 1])
    shared = {"crown-ibp": absdsl.compile(model, "crown-ibp"), "box": absdsl.compile(model, "box")}
    assert shared["crown-ibp"].shares_intermediate and not absdsl.compile(
        model, "deeppoly").shares_intermediate

    class Apart:  # the same program without the shared path
        def __init__(self, prog):
            self.prog = prog

        def __call__(self, *a, **k):
            return self.prog(*a, **k)

        def functional(self, *a, **k):
            return self.prog.functional(*a, **k)

    apart = {"crown-ibp": Apart(shared["crown-ibp"]), "box": shared["box"]}
    grads = []
    for programs in (shared, apart):
        model.zero_grad()
        m = mixed_margin(programs, "crown-ibp", None, lo, hi, y, 3, 0.3)
        m.sum().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        if programs is shared:
            got = m.detach()
    want = mixed_margin(apart, "crown-ibp", None, lo, hi, y, 3, 0.3).detach()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    box_only = mixed_margin(shared, "crown-ibp", None, lo, hi, y, 3, 0.0)
    crown_only = mixed_margin(shared, "crown-ibp", None, lo, hi, y, 3, 1.0)
    assert (box_only - crown_only).abs().max() > 1e-6  # the two terms differ
    torch.testing.assert_close(got, 0.7 * box_only + 0.3 * crown_only, rtol=1e-12, atol=1e-12)
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    base = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(5)
    stacked = {k: v.unsqueeze(0) + 0.05 * torch.randn((2, *v.shape), generator=g, dtype=DTYPE)
               for k, v in base.items()}
    vm = torch.func.vmap(lambda p: mixed_margin(shared, "crown-ibp", p, lo, hi, y, 3, 0.3))(
        stacked)
    for i in range(2):
        one = mixed_margin(apart, "crown-ibp", {k: v[i] for k, v in stacked.items()}, lo, hi,
                           y, 3, 0.3)
        torch.testing.assert_close(vm[i], one, rtol=1e-10, atol=1e-10)
