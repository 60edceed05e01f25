"""Relaxation parameters (``param NAME in [lo, hi] = init`` in a relax block) and alpha-CROWN:
every value in the range gives sound bounds, the optimised bounds contain the network's
outputs at points and vertices of the box and are never looser than DeepPoly's, the initial
values reproduce DeepPoly exactly, the prover quantifies over the range, and bad parameter
declarations are one-line errors naming file:line:col (float64 throughout)."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import absdsl
from absdsl.errors import DSLError, InputError
from absdsl.prove import prove_file
from tests.core.core_helpers import DTYPE, assert_sound, box, mlp


def cnn(seed: int) -> nn.Sequential:
    """Two 2-d convs (patch rows for the second one's neurons), then dense layers."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5)).to(DTYPE).eval()


def deep_cnn(seed: int) -> nn.Sequential:
    """Three convs: the third one's patch rows pass two relaxations (one fused with the
    conv, one on its own), so both patch steps take per-row lines."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 4, 3, stride=1, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, stride=1, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(5 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 5)).to(DTYPE).eval()


def _margins(model: nn.Module, lo: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        labels = model(lo + 0.0).argmax(1)
    n = model(lo[:1]).shape[1]
    return absdsl.margin_spec(labels, n).to(DTYPE)


def _random_values(prog: absdsl.BoundProgram, lo: torch.Tensor, fill: str, seed: int
                   ) -> dict[str, dict[str, torch.Tensor]]:
    """Values for every parameter: random in [0, 1], or a corner (0 or 1) per neuron."""
    g = torch.Generator().manual_seed(seed)
    values: dict[str, dict[str, torch.Tensor]] = {}
    prog(lo, lo.clone(), relax_params=values)  # fills every entry with its initial value
    for per_node in values.values():
        for name, t in per_node.items():
            r = torch.rand(t.shape, generator=g, dtype=DTYPE)
            per_node[name] = {"random": r, "corners": (r > 0.5).to(DTYPE),
                              "zero": torch.zeros_like(r), "one": torch.ones_like(r)}[fill]
    return values


@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 10_000), depth=st.integers(1, 2), eps=st.sampled_from([0.05, 0.3, 1.0]))
def test_optimised_bounds_contain_the_outputs_and_beat_deeppoly(seed, depth, eps):
    model = mlp([3] + [12] * depth + [4], seed=seed)
    lo, hi = box((3,), batch=3, eps=eps, seed=seed)
    spec = _margins(model, lo + eps)
    alpha = absdsl.compile(model, "alpha-crown")
    deeppoly = absdsl.compile(model, "deeppoly")
    for per_row in (False, True):
        lb, ub = alpha.optimize(lo, hi, spec, steps=3, lr=0.2, per_spec_row=per_row)
        assert ub is not None
        assert_sound(model, lb, ub, lo, hi, spec)  # corners and uniform points of the box
        _assert_not_looser(lb, ub, *deeppoly(lo, hi, spec))


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 10_000), conv=st.sampled_from([None, cnn, deep_cnn]),
       eps=st.sampled_from([0.05, 0.3]))
def test_per_row_values_are_sound(seed, conv, eps):
    """Slopes per bounded row (the default of ``optimize``, alpha-CROWN's layout): the
    bounds hold at corners and uniform points of the box, on MLPs and on CNNs whose dense
    rows (the linear layers') and patch rows (the convs') meet the same activations."""
    model = conv(seed) if conv is not None else mlp([3, 12, 12, 4], seed=seed)
    lo, hi = box((1, 12, 12) if conv else (3,), batch=2, eps=eps, seed=seed)
    spec = _margins(model, lo + eps)
    lb, ub = absdsl.compile(model, "alpha-crown").optimize(lo, hi, spec, steps=4, lr=0.3)
    assert ub is not None
    assert_sound(model, lb, ub, lo, hi, spec)
    _assert_not_looser(lb, ub, *absdsl.compile(model, "deeppoly")(lo, hi, spec))


@pytest.mark.parametrize("make", [cnn, deep_cnn])
def test_per_row_lines_at_the_initial_values_give_the_shared_bounds(make):
    """Every form (dense rows, fused and plain patch steps) with a value per row, all at
    their initial values, computes the bounds of the shared values (to rounding), and the
    per-row store holds [batch, 2, rows + 1, columns or window entries]."""
    model = make(3)
    lo, hi = box((1, 12, 12), batch=2, eps=0.1, seed=1)
    spec = _margins(model, lo + 0.1)
    prog = absdsl.compile(model, "alpha-crown")
    compiled = prog._compile((1, 12, 12))
    params = prog.params() | compiled.constants
    got, stores = [], []
    for room in (0.0, 1e12):
        ctx = prog._context(compiled, lo, compact=True)
        ctx.relax_params, ctx.row_slope_bytes = {}, room
        got.append(compiled.fn(params, lo, hi, spec, ctx))
        stores.append({k: v for k, v in ctx.relax_params.items() if k.endswith("#rows")})
    for a, b in zip(*got, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert not stores[0] and len(stores[1]) >= 4
    for store in stores[1].values():
        value = store["alpha"]
        assert value.shape[:2] == (2, 2) and value.shape[2] == int(store["#slots"].max()) + 1
        if "#cols" in store:  # dense rows: one column per selected activation neuron
            assert value.shape[3] == store["#cols"].numel()


def test_patch_lines_interpolated_between_the_ends_equal_the_relaxation_per_row():
    """ReLU's lines are affine in alpha: interpolating each row's lines between the lines at
    alpha = 0 and 1 gives what evaluating the relaxation per window entry gives (the form
    that runs when the check at the middle of the range fails), for rows shared by the batch
    and for each sample's own rows."""
    from absdsl.compiler.backsub.row_slopes import patch_row_lines
    from absdsl.compiler.backsub.rows import Ragged
    from absdsl.compiler.context import Context

    g = torch.Generator().manual_seed(4)
    lower = torch.randn(2, 3, 5, 5, generator=g, dtype=DTYPE) - 0.3
    upper = lower + torch.rand(2, 3, 5, 5, generator=g, dtype=DTYPE)
    needed = torch.rand(2, 3, 4, 4, generator=g) < 0.5
    geom = (3, 3, 1, 1, -1, -1, 4, 4)
    given: dict[str, torch.Tensor] = {}
    ctx = Context(compact=True, rows_per_chunk=8, row_slope_bytes=1e9)
    ends = patch_row_lines(_relu_lines, lower, upper, given, needed, (4, 4), geom, ctx,
                           span=("alpha", 0.0, 1.0))
    with torch.no_grad():  # random values per side, row and entry
        given["alpha"].copy_(torch.rand(given["alpha"].shape, generator=g, dtype=DTYPE))
    full = patch_row_lines(_relu_lines, lower, upper, given, needed, (4, 4), geom, ctx)
    assert ends is not None and ends.ends is not None and full is not None and full.ends is None
    shared = torch.tensor([0, 5, 17, 40])
    ragged = Ragged(torch.tensor([0, 1, 1]), torch.tensor([3, 3, 30]))
    for index, pos in ((shared, shared % 16), (ragged, Ragged(ragged.sample,
                                                              ragged.neuron % 16))):
        for a, b in zip(ends.lines(index, pos), full.lines(index, pos), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_per_row_values_are_tighter_than_shared_ones():
    """On this network, slopes per row beat one set per bounded node on every margin's
    lower bound summed (both from DeepPoly's start, the same steps)."""
    model = mlp([5, 24, 24, 24, 6], seed=8)
    lo, hi = box((5,), batch=2, eps=0.4, seed=9)
    spec = _margins(model, lo + 0.4)
    prog = absdsl.compile(model, "alpha-crown")
    shared, _ = prog.optimize(lo, hi, spec, steps=10, per_row=False, upper=False)
    rows, _ = prog.optimize(lo, hi, spec, steps=10, upper=False)
    d_lb, _ = absdsl.compile(model, "deeppoly")(lo, hi, spec, upper=False)
    assert float((rows - d_lb).sum()) > 1.2 * float((shared - d_lb).sum()) > 0


def test_per_row_values_outside_the_memory_budget_stay_shared():
    """A budget too small for any per-row set: every pair keeps the shared values, and the
    bounds are those of ``per_row=False`` bit for bit."""
    model = mlp([3, 12, 12, 4], seed=2)
    lo, hi = box((3,), batch=3, eps=0.5, seed=2)
    spec = _margins(model, lo + 0.5)
    small = absdsl.compile(model, "alpha-crown", memory_budget_mb=0.005)
    got = small.optimize(lo, hi, spec, steps=3)
    assert torch.equal(got[0], small.optimize(lo, hi, spec, steps=3, per_row=False)[0])
    roomy = absdsl.compile(model, "alpha-crown").optimize(lo, hi, spec, steps=3)
    assert not torch.equal(got[0], roomy[0])


def test_row_lines_layout_and_per_row_broadcast():
    """The per-row store: [batch, 2 sides, selected rows + 1, selected columns], the layout
    beside it; a value per row broadcasts against the neuron bounds in the relaxation."""
    from absdsl.compiler import runtime as rt
    from absdsl.compiler.backsub.row_slopes import RowLines, row_lines
    from absdsl.compiler.backsub.rows import back_lines, relax_back
    from absdsl.compiler.context import Context

    lower = torch.tensor([[-1.0, 0.5, -2.0, -1.0], [-1.0, 1.0, -1.0, -1.0]], dtype=DTYPE)
    upper = torch.tensor([[2.0, 1.0, -1.0, -0.5], [1.0, 2.0, 3.0, 2.0]], dtype=DTYPE)
    relax = _relu_lines
    raw = relax(lower, upper)[0]
    ctx = Context(compact=True, rows_per_chunk=8, row_slope_bytes=1e9)
    needed = torch.tensor([[True, False, False], [False, False, True]])
    given: dict[str, torch.Tensor] = {}
    lines = row_lines(relax=relax, lower=lower, upper=upper, raw=raw,
                      shared=back_lines(raw, ctx), given=given, rows_needed=needed, n_rows=3,
                      ctx=ctx)
    assert isinstance(lines, RowLines)
    assert given["#cols"].tolist() == [0, 2, 3]  # unstable in some sample
    assert given["#slots"].tolist() == [1, 0, 2]  # rows 0 and 2, the rest share slot 0
    assert given["alpha"].shape == (2, 2, 3, 3) and ctx.row_slope_bytes < 1e9
    assert given["alpha"][0, :, :, 0].eq(1).all()  # DeepPoly's start: u > -l
    # at the initial values the rows get the shared lines; a changed slot moves its row only
    lam = torch.randn(2, 6, 4, dtype=DTYPE, generator=torch.Generator().manual_seed(0))
    acc = torch.zeros(1, 6, dtype=DTYPE)
    want = relax_back(lam, 3, back_lines(raw, ctx), acc)
    index = torch.tensor([0, 1, 2])
    for got, ref in zip(lines.back(lam, 3, acc, index), want, strict=True):
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        given["alpha"][:, 0, 1] = 0.5  # lower side of row 0 (slot 1)
    moved = lines.back(lam, 3, acc, index)[0]
    changed = (moved != want[0]).any(-1).any(0)
    assert changed.tolist() == [True] + [False] * 5
    per_row = torch.rand(2, 2, 5, 4, dtype=DTYPE)
    got = rt.relax_param({"a": per_row}, "a", torch.zeros(2, 1, 1, 4, dtype=DTYPE),
                         torch.zeros(2, 1, 1, 4, dtype=DTYPE), 0.0, 1.0)
    assert torch.equal(got, per_row)


def _relu_lines(l, u, needs_only=False, given=None):
    """ReLU's lines with the lower slope a parameter, as a compiled relaxation has them."""
    from absdsl.compiler import runtime as rt

    unstable = (l < 0) & (u > 0)
    if needs_only:
        return unstable
    alpha = rt.relax_param(given, "alpha", (u > -l).to(l.dtype), l, 0.0, 1.0)
    slope = torch.where(unstable, u / torch.where(unstable, u - l, 1.0), (l >= 0).to(l.dtype))
    a_lo = torch.where(unstable, alpha, slope)
    return (a_lo, torch.zeros_like(a_lo), slope,
            torch.where(unstable, -slope * l, 0.0)), unstable


def _assert_not_looser(lb: torch.Tensor, ub: torch.Tensor, d_lb: torch.Tensor,
                       d_ub: torch.Tensor) -> None:
    """At least as tight as DeepPoly's, up to rounding (a batch replicated per spec row runs
    other matrix shapes, so the initial values' bounds may differ from DeepPoly's by ulps)."""
    assert (lb >= d_lb - 1e-12 * (1 + d_lb.abs())).all(), (lb - d_lb).min()
    assert (ub <= d_ub + 1e-12 * (1 + d_ub.abs())).all(), (d_ub - ub).min()


def test_optimisation_tightens_and_the_call_optimises():
    model = mlp([4, 32, 32, 3], seed=3)
    lo, hi = box((4,), batch=2, eps=0.3, seed=4)
    spec = _margins(model, lo + 0.3)
    d_lb, _ = absdsl.compile(model, "deeppoly")(lo, hi, spec)
    prog = absdsl.compile(model, "alpha-deeppoly")  # the alias
    assert prog.optimize_steps == 20  # a call of the built-in domain optimises
    prog.optimize_steps = 6
    lb, _ = prog(lo, hi, spec)
    assert (lb >= d_lb).all() and float((lb - d_lb.detach()).sum()) > 1e-3
    assert_sound(model, lb, prog.optimize(lo, hi, spec, steps=0)[1], lo, hi, spec)


@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_with_patch_rows(seed):
    model = cnn(seed)
    lo, hi = box((1, 12, 12), batch=2, eps=0.1, seed=seed)
    spec = _margins(model, lo + 0.1)
    prog = absdsl.compile(model, "alpha-crown")
    lb, ub = prog.optimize(lo, hi, spec, steps=3, lr=0.2)
    assert "backsub_patches_" in prog.code  # the conv neurons go through patch rows
    assert ub is not None
    assert_sound(model, lb, ub, lo, hi, spec)
    _assert_not_looser(lb, ub, *absdsl.compile(model, "deeppoly")(lo, hi, spec))


def test_a_first_call_without_a_spec_optimises_the_logits_bounds():
    model = cnn(1)
    lo, hi = box((1, 12, 12), batch=1, eps=0.1, seed=5)
    prog = absdsl.compile(model, "alpha-crown")
    prog.optimize_steps = 2
    lb, ub = prog(lo, hi)  # compiles for this shape first, then optimises lb - ub
    assert_sound(model, lb, ub, lo, hi)
    _assert_not_looser(lb, ub, *absdsl.compile(model, "deeppoly")(lo, hi))


@pytest.mark.parametrize("fill", ["random", "corners", "zero", "one"])
@pytest.mark.parametrize("make", [lambda: mlp([3, 16, 16, 4], seed=5), lambda: cnn(2)])
def test_every_parameter_value_in_the_range_is_sound(fill, make):
    model = make()
    shape = (3,) if isinstance(model[0], nn.Linear) else (1, 12, 12)
    lo, hi = box(shape, batch=3, eps=0.2, seed=7)
    prog = absdsl.compile(model, "alpha-crown")
    values = _random_values(prog, lo, fill, seed=11)
    lb, ub = prog(lo, hi, relax_params=values)
    assert_sound(model, lb, ub, lo, hi)
    # a value outside the range is clamped into it: the same bounds as the clamped value
    pushed = {n: {k: v * 3 - 1 for k, v in d.items()} for n, d in values.items()}
    clamped = {n: {k: v.clamp(0, 1) for k, v in d.items()} for n, d in pushed.items()}
    torch.testing.assert_close(prog(lo, hi, relax_params=pushed),
                               prog(lo, hi, relax_params=clamped), rtol=0, atol=0)


def test_initial_values_reproduce_deeppoly_exactly():
    model = cnn(4)
    lo, hi = box((1, 12, 12), batch=2, eps=0.1, seed=3)
    prog = absdsl.compile(model, "alpha-crown")
    prog.optimize_steps = 0  # a call then runs the initial values
    lb, ub = prog(lo, hi)
    d_lb, d_ub = absdsl.compile(model, "deeppoly")(lo, hi)
    assert torch.equal(lb, d_lb) and torch.equal(ub, d_ub)
    assert torch.equal(prog.optimize(lo, hi, steps=0)[0], d_lb)
    assert set(prog.relax_param_ranges()) == {"alpha"}


def test_optimize_refuses_a_domain_without_parameters_and_bad_settings():
    model = mlp([3, 8, 2])
    lo, hi = box((3,))
    with pytest.raises(InputError, match="declares no relaxation parameter"):
        absdsl.compile(model, "deeppoly").optimize(lo, hi)
    with pytest.raises(InputError, match="steps >= 0, lr > 0"):
        absdsl.compile(model, "alpha-crown").optimize(lo, hi, lr=0.0)


RELAX = """relax relu(x; l, u) {{
  {param}
  when u <= 0: lower 0, upper 0
  when l >= 0: lower x, upper x
  else: lower {line}, upper u / (u - l) * (x - l)
}}
domain D {{ bounds backsub output backsub }}
"""


def _write(tmp_path, param: str, line: str = "alpha * x") -> str:
    path = tmp_path / "d.absd"
    path.write_text(RELAX.format(param=param, line=line))
    return str(path)


@pytest.mark.parametrize("param, line, message, where", [
    ("param alpha in [0, 1] = 2", "alpha * x", "initial value 2 is outside its range [0, 1]",
     "2:27"),
    ("param alpha in [1, 0] = 0.5", "alpha * x", "empty range [1, 0]", "2:3"),
    ("param alpha in [0, 1] = 0.5", "beta * x", "undefined name 'beta'", "5:15"),
    ("param l in [0, 1] = 0.5", "l * x", "the name is already taken", "2:3"),
    ("param alpha in [0, 1] = x", "alpha * x", "cannot read x", "2:27"),
    ("param alpha in [0, 1] = 0.5", "alpha * x * x", "linear", "5:15"),
])
def test_bad_parameters_are_one_line_errors_with_the_position(tmp_path, param, line, message,
                                                               where):
    path = _write(tmp_path, param, line)
    with pytest.raises(DSLError) as err:
        absdsl.compile(mlp([3, 4, 2]), path)
    first = str(err.value).splitlines()[0]
    assert message in first and first.startswith(f"{path}:{where}"), first


def test_a_parameter_in_a_guard_is_refused(tmp_path):
    path = tmp_path / "g.absd"
    path.write_text("relax relu(x; l, u) {\n  param a in [0, 1] = 0\n"
                    "  when a > 0: lower 0, upper 0\n  else: lower a * x, upper u\n}\n"
                    "domain D { bounds backsub output backsub }\n")
    with pytest.raises(DSLError, match=r"g.absd:3:3: a relaxation's guard cannot read a param"):
        absdsl.compile(mlp([3, 4, 2]), str(path))


def test_the_prover_quantifies_over_the_range(tmp_path):
    """alpha in [0, 1] is proved for every value; [0, 1.5] is refuted by a value above 1."""
    report = prove_file(_write(tmp_path, "param alpha in [0, 1] = (u > -l ? 1 : 0)"))
    assert all(r.status == "proved" for r in report.results if "relax relu" in r.name), \
        report.format()
    report = prove_file(_write(tmp_path, "param alpha in [0, 1.5] = (u > -l ? 1 : 0)"))
    refuted = [r for r in report.results if r.status == "refuted"]
    assert [r.name for r in refuted] == ["relax relu else"], report.format()
    cex = refuted[0].counterexample
    assert cex["alpha"] > 1 and cex["x"] > 0 and cex["lhs"] > cex["rhs"], cex  # alpha x > x


def test_certify_with_alpha_crown_certifies_what_deeppoly_does_and_more_margin():
    from absdsl.training.certify import CertifyOptions, certify_model
    from absdsl.training.data import Split, dataset_info

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    with torch.no_grad():
        labels = model(images.float() / 255).argmax(1)
    reports = {d: certify_model(model, dataset_info("mnist5k"), Split(images, labels),
                                CertifyOptions(eps=0.002, domain=d, pgd_steps=2,
                                               pgd_restarts=1))
               for d in ("deeppoly", "alpha-crown")}
    for ours, theirs in zip(reports["alpha-crown"].records, reports["deeppoly"].records,
                            strict=True):
        assert ours.margin_lower["alpha-crown"] >= theirs.margin_lower["deeppoly"] - 1e-12
        assert ours.status == "certified" or theirs.status != "certified"
    assert reports["alpha-crown"].summary()["certified_acc"] > 0


def test_training_refuses_alpha_crown():
    from absdsl.training.config import ConfigError, resolve

    with pytest.raises(ConfigError, match="does not train; train with deeppoly"):
        resolve({"domain": "alpha-crown"})


def test_check_samples_the_parameter_range(tmp_path):
    """``absdsl check``'s relaxation functions sample the range (both ends and a varying
    value): [0, 1] passes on the guard grid, [0, 1.5] (the upper end lifts the lower line above
    the ReLU) and [-0.5, 1] (the lower end) are caught."""
    from absdsl.soundness import Violation, check_relaxation, relax_grid, relaxation_functions

    L, U, X = relax_grid()

    def relu_fns(domain: str) -> list:
        return [(op, p, fn) for op, p, fn in relaxation_functions(domain) if op == "relu"]

    fns = relu_fns("alpha-crown")
    assert len(fns) == 4  # the initial values, then the ends and a varying value
    values = [fn(L, U)[0] for _, _, fn in fns]  # the lower slope a_lo
    assert not torch.equal(values[1], values[2]) and not torch.equal(values[2], values[3])
    for op, params, fn in fns:
        check_relaxation(op, params, fn, L, U, X)
    for bad in ("param alpha in [0, 1.5] = (u > -l ? 1 : 0)",
                "param alpha in [-0.5, 1] = (u > -l ? 1 : 0)"):
        caught = 0
        for op, params, fn in relu_fns(_write(tmp_path, bad)):
            try:
                check_relaxation(op, params, fn, L, U, X)
            except Violation as v:
                caught += 1
                assert v.cex.which == "lower line > f(x)", v.cex.format()
        assert caught >= 1


def test_the_first_pass_holds_only_the_neurons_it_finds_stable():
    """After the pass at the initial values, a neuron whose bounds exclude 0 is held to them;
    an unstable one is left to the given split constraint (or free) and refined anew."""
    from absdsl.compiler.program import _stable_clamps

    found = {"n": (torch.tensor([[-1.0, 0.5, -2.0]]), torch.tensor([[1.0, 2.0, -0.5]]))}
    free = _stable_clamps(found, {})
    assert free["n"][0].tolist() == [[float("-inf"), 0.5, -2.0]]
    assert free["n"][1].tolist() == [[float("inf"), 2.0, -0.5]]
    split = (torch.tensor([[0.0, -9.0, -9.0]]), torch.tensor([[9.0, 9.0, 9.0]]))
    kept = _stable_clamps(found, {"n": split, "m": split})
    assert kept["n"][0].tolist() == [[0.0, 0.5, -2.0]] and kept["m"] is split
