"""The engine property: larger networks on which the optimised paths run, compared with the
plain engine and the vmap form."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn as nn
from hypothesis import strategies as st

import absdsl
from absdsl.compiler import program as _program
from absdsl.compiler.context import PLAIN as PLAIN_ENGINE
from absdsl.dsl.loader import load_domain

from .checks import _prepare, _Test, _tolist, compare, spec_rows
from .common import DTYPE, local_tolerance
from .nets import build_net
from .report import Counterexample, Violation
from .strategies import engine_networks, input_boxes, networks, plan_tokens
from .surfaces import Surface

#: how often the ``engine`` property reached each optimised path (reset by each run)
ENGINE_COVERAGE: dict[str, int] = {}


@contextlib.contextmanager
def _count_engine_paths(prog: Any) -> Iterator[None]:
    """Add the optimised paths the program ran in the block (live-column products, sparse
    relaxation lines, chunked refinements: ``prog.engine_paths``) to the coverage."""
    before = dict(prog.engine_paths)
    yield
    for key, count in prog.engine_paths.items():
        if count > before.get(key, 0):
            ENGINE_COVERAGE[key] = ENGINE_COVERAGE.get(key, 0) + count - before.get(key, 0)


def _chunk_budget(net: nn.Sequential, shape: tuple[int, ...], batch: int, rows: int) -> float:
    """A memory budget (MiB) that gives about ``rows`` back-substitution rows per chunk."""
    # the engine's bytes per row; another engine without the figure: a small budget still chunks
    factor = getattr(_program, "_BYTES_PER_ROW_FACTOR", 6)
    widest = math.prod(shape)
    with torch.no_grad():
        cur = torch.zeros(1, *shape, dtype=DTYPE)
        for mod in net:
            cur = mod(cur)
            widest = max(widest, cur[0].numel())
    per_row = 2 * batch * widest * 8 * factor
    return rows * per_row / 2**20


def engine_property(domain: Any, ops: frozenset[str], surfaces: tuple[Surface, ...]) -> _Test:
    """Larger, mostly stable networks; sound at concrete points and equal to the plain
    engine and to the vmap form."""
    backsub = load_domain(domain).intermediate is not None
    ops = ops - {"residual", "cat", "sigmoid", "tanh"} if "conv" in ops else ops

    @st.composite
    def case(draw: Any) -> tuple:
        net = draw(engine_networks(ops) if draw(st.integers(0, 3)) else
                   networks(ops, max_layers=5, engine=True))
        lo, hi = draw(input_boxes(net.input_shape, batch=draw(st.integers(2, 3)),
                                  surfaces=surfaces))
        if draw(st.booleans()):  # the other samples near the first (aimed) one: every
            # sample then has few unstable neurons (the sparse paths need all of them to)
            g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
            shift = (torch.rand(lo.shape, generator=g, dtype=DTYPE) - 0.5) * 0.02 \
                * (hi[0] - lo[0] + 1e-3 * lo[0].abs())
            lo, hi = lo[:1] + shift, hi[:1] + shift
        boxes = (lo, hi)
        # per layer in turn: mostly inactive (live columns, sparse lines), then mostly
        # unstable (many rows refined at once), then mixed
        plan = [draw(plan_tokens((0, 1, 12, 1, 1))), draw(plan_tokens((0, 1, 0, 1, 10))),
                draw(plan_tokens((1, 1, 5, 3, 1)))]
        return net, boxes, plan, draw(st.integers(0, 2**16)), draw(st.sampled_from([4, 16, 0]))

    def inner(case: tuple) -> None:
        net_spec, boxes, plan, s, rows = case
        lo, hi = boxes
        kwargs = {}
        if backsub and rows:
            kwargs["memory_budget_mb"] = _chunk_budget(build_net(net_spec), net_spec.input_shape,
                                                       lo.shape[0], rows)
        made, prog = _prepare(domain, net_spec, boxes, plan, surfaces, s, kwargs)
        desc = made.spec.describe()
        batch, npts = made.pts.shape[:2]
        values = made.acts[-1].reshape(batch, npts, -1)
        mag = made.mags[-1].reshape(batch, -1)
        g = torch.Generator().manual_seed(s)
        specs: list[torch.Tensor | None] = [None] + spec_rows(values.shape[-1], batch, g)[:1]
        if "backsub_patches_" in prog.code:
            ENGINE_COVERAGE["patch programs"] = ENGINE_COVERAGE.get("patch programs", 0) + 1
        ENGINE_COVERAGE["programs"] = ENGINE_COVERAGE.get("programs", 0) + 1
        plain = absdsl.compile(made.net, domain, input_shape=net_spec.input_shape,
                               options=PLAIN_ENGINE)
        plain_out = [plain(lo, hi, spec=C) for C in specs]
        params = dict(made.net.named_parameters())
        for C, (pl, pu) in zip(specs, plain_out, strict=True):
            with torch.no_grad(), _count_engine_paths(prog):
                lb, ub = prog(lo, hi, spec=C)
            others = [((pl, pu), "the plain engine")]
            if C is None:  # the vmap form refines every neuron: once per case is enough
                with torch.no_grad():
                    others.append((prog.functional(params, lo, hi, C), "the vmap form"))
            cv = values if C is None else torch.einsum("bkn,bpn->bpk", C, values)
            cmag = mag if C is None else torch.einsum("bkn,bn->bk", C.abs(), mag)
            lb, ub = lb.detach().reshape(batch, -1), ub.detach().reshape(batch, -1)
            compare("engine", desc, lo, hi, made.pts, cv, lb, ub, cmag, spec=C)
            for other, label in others:
                ol, ou = (t.detach().reshape(batch, -1) for t in other)
                for which, a, b in (("lower bound", lb, ol), ("upper bound", ub, ou)):
                    tol = local_tolerance(cmag, a, b) * 10
                    diff = (a - b).abs()
                    bad = torch.isnan(diff) | (diff > tol)
                    if bool(bad.any()):
                        bi, i = (int(v) for v in bad.nonzero()[0])
                        raise Violation(Counterexample(
                            "engine", desc, _tolist(lo[bi]), _tolist(hi[bi]), None,
                            f"{which} differs from {label}", (bi, i), float(b[bi, i]),
                            float(a[bi, i]), float(diff[bi, i]), float(tol[bi, i]),
                            _tolist(C[bi]) if C is not None else None,
                            note="value = the other form's bound; bound = prog(lo, hi)"))

    return _Test({"case": case()}, inner)
