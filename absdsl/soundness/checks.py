"""The bounds and spec properties: prepare a drawn case, compare bounds with concrete points,
and run a property under Hypothesis."""

from __future__ import annotations

import contextlib
import itertools
import math
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hyp_seed
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as hypothesis_engine
from hypothesis.reporting import with_reporter

import absdsl
from absdsl.compiler import ops as _ops
from absdsl.errors import TraceError

from .common import ACTIVATION_OPS, DTYPE, local_tolerance
from .nets import Layer, NetSpec, TapNet, build_net, harvest, magnitude
from .report import Counterexample, PropertyResult, Violation
from .strategies import aim, input_boxes, networks, plan_tokens, sample_points
from .surfaces import BASE_SURFACES, Surface

try:
    from hypothesis.internal.conjecture import providers
except ImportError:  # another Hypothesis layout: no local constants to switch off
    providers = None  # type: ignore[assignment]


def _tolist(t: torch.Tensor) -> list:
    return t.detach().cpu().tolist()


def compare(prop: str, net: str, lo: torch.Tensor, hi: torch.Tensor, pts: torch.Tensor,
            values: torch.Tensor, lb: torch.Tensor, ub: torch.Tensor,
            mag: torch.Tensor | None = None, spec: torch.Tensor | None = None) -> None:
    """Raise :class:`Violation` unless every value lies in [lb, ub] up to the local tolerance.

    ``values``: [B, P, n]; ``lb``/``ub``: [B, n]; ``mag``: [B, n], the magnitude of the
    terms summed into each output (:func:`magnitude`; 0 when omitted).
    """
    def spec_of(b: int) -> list | None:  # only a counterexample's row (specs can be large)
        return _tolist(spec[b]) if spec is not None else None

    for which, bad in (("lower bound", torch.isnan(lb)), ("upper bound", torch.isnan(ub))):
        if bool(bad.any()):
            b, i = (int(v) for v in bad.nonzero()[0])
            raise Violation(Counterexample(prop, net, _tolist(lo[b]), _tolist(hi[b]), None,
                                           f"NaN {which}", (b, i), float("nan"), float("nan"),
                                           float("inf"), 0.0, spec_of(b)))
    m = mag if mag is not None else torch.zeros_like(lb)
    if not values.numel():
        return
    # tol does not depend on the point, and rounding is monotone, so the worst ratio of each
    # (sample, output) is the one of its smallest (largest) value; NaN propagates through
    # amin/amax as through the per-point ratio. Only a violating sample is looked at per point.
    vlow, vhigh = values.amin(1), values.amax(1)  # [B, n]
    tol = local_tolerance(m, torch.maximum(vlow.abs(), vhigh.abs()), lb, ub)  # [B, n]
    for which, worst_excess, bnd, sign in (("lower bound", lb - vlow, lb, -1.0),
                                           ("upper bound", vhigh - ub, ub, 1.0)):
        ratio = torch.nan_to_num(worst_excess / tol, nan=math.inf)
        if float(ratio.max()) <= 1.0:
            continue
        b = int((ratio == ratio.max()).nonzero()[0, 0])
        excess = sign * (values[b] - bnd[b])  # [P, n], > tol: outside the bound
        ratio_b = torch.nan_to_num(excess / tol[b], nan=math.inf)
        p, i = (int(v) for v in (ratio_b == ratio_b.max()).nonzero()[0])
        raise Violation(Counterexample(
            prop, net, _tolist(lo[b]), _tolist(hi[b]), _tolist(pts[b, p]), which,
            (b, i), float(values[b, p, i]), float(bnd[b, i]), float(excess[p, i]),
            float(tol[b, i]), spec_of(b)))


def _settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None,
                    derandomize=False, print_blob=False, report_multiple_bugs=False,
                    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target,
                            Phase.shrink],
                    suppress_health_check=list(HealthCheck))


def _probe_nets() -> dict[str, NetSpec]:
    lin = Layer("linear", (2,), (1.0, -1.0, 0.5, 2.0, 0.0, 1.0))
    return {
        "linear": NetSpec((2,), (lin,)),
        "conv": NetSpec((1, 3, 3), (Layer("conv", (1, 2, 1, 0, 1), (1.0, -1.0, 0.5, 2.0, 0.0)),
                                    Layer("conv", (1, 2, 1, "same", 1, 2, False, 2),
                                          (1.0, -1.0, 0.5, 2.0)))),
        "bn": NetSpec((2,), (Layer("bn", (), (1.0, 2.0, 0.0, 1.0, 0.5, -0.5, 1.0, 2.0)),)),
        "avgpool": NetSpec((1, 2, 2), (Layer("avgpool", (2, 2, 0)),)),
        "maxpool": NetSpec((1, 2, 2), (Layer("maxpool", (2, 2, 0)),)),
        "adaptive": NetSpec((1, 2, 2), (Layer("adaptive", (1, 1)),)),
        "flatten": NetSpec((1, 2, 2), (Layer("flatten"),)),
        "residual": NetSpec((2,), (Layer("residual", (1.0,), inner=((lin,),)),)),
        "cat": NetSpec((2,), (Layer("cat", inner=((Layer("linear", (1,), (1.0, 1.0, 0.0)),),
                                                   (Layer("linear", (1,), (1.0, -1.0, 0.0)),))),)),
        **{op: NetSpec((2,), (Layer(op, tuple(
            p.default for p in _ops.get(op).params if p.position >= 0)),))
           for op in ACTIVATION_OPS if op != "relu6"},
        "relu6": NetSpec((2,), (Layer("relu6"),)),
    }


def supported_ops(domain: Any) -> tuple[frozenset[str], list[str]]:
    """Probe the domain with one-op networks: (ops it has rules for, ops it lacks)."""
    ok, missing = set(), []
    for op, spec in _probe_nets().items():
        try:
            absdsl.compile(build_net(spec), domain, input_shape=spec.input_shape)
        except TraceError as err:
            text = str(err)
            if "domain" in text and ("no rule" in text or "no relaxation" in text):
                missing.append(op)
            else:  # the front end itself cannot lower the op: not the domain's fault
                missing.append(f"{op} (front end: {text})")
            continue
        ok.add(op)
    return frozenset(ok), missing


def spec_rows(n_out: int, batch: int, g: torch.Generator,
              pairs: list[tuple[int, int]] | None = None) -> list[torch.Tensor]:
    """Spec matrices [batch, k, n_out]: margins, sums and differences of output pairs (a
    wrong correlation between two outputs shows in one of them: ``pairs`` first, then
    random ones), random rows with exact zeros."""
    specs = []
    if n_out >= 2:
        labels = torch.randint(0, n_out, (batch,), generator=g)
        specs.append(absdsl.margin_spec(labels, n_out).to(DTYPE))
        chosen = list(pairs or [])
        if len(chosen) > 16:
            keep = torch.randperm(len(chosen), generator=g)[:16]
            chosen = [chosen[int(i)] for i in keep]
        if n_out <= 6:
            chosen += list(itertools.combinations(range(n_out), 2))
        else:
            for _ in range(8):
                i, j = torch.randperm(n_out, generator=g)[:2].tolist()
                chosen.append((i, j))
        rows = torch.zeros(2 * len(chosen), n_out, dtype=DTYPE)
        for r, (i, j) in enumerate(chosen):
            rows[2 * r, i], rows[2 * r, j] = 1.0, -1.0
            rows[2 * r + 1, i], rows[2 * r + 1, j] = 1.0, 1.0
        specs.append(rows.expand(batch, -1, -1).clone())
    rnd = torch.randn(batch, 2, n_out, generator=g, dtype=DTYPE)
    rnd[:, 1] = rnd[:, 1] * (torch.rand(batch, n_out, generator=g) < 0.5)  # exact zeros
    specs.append(rnd)
    return specs


def tap_pairs(net: nn.Sequential, shape: tuple[int, ...]) -> list[tuple[int, int]]:
    """Index pairs (after, before) in :class:`TapNet`'s output: the same neuron before and
    after every shape-preserving layer (an activation's f(z) and z, a residual's x + f(x)
    and x)."""
    pairs = []
    start = 0
    prev: tuple[int, int] | None = None  # (offset, size) of the previous layer's output
    cur_shape = shape
    with torch.no_grad():
        x = torch.zeros(1, *shape, dtype=DTYPE)
        for mod in net:
            x = mod(x)
            size = x[0].numel()
            if prev is not None and tuple(x.shape[1:]) == cur_shape:
                pairs += [(start + i, prev[0] + i) for i in range(size)]
            prev = (start, size)
            start += size
            cur_shape = tuple(x.shape[1:])
    return pairs


@dataclass
class _Case:
    """A drawn case, made concrete: the aimed network, its modules, box and points."""

    spec: NetSpec
    net: nn.Sequential
    lo: torch.Tensor
    hi: torch.Tensor
    pts: torch.Tensor
    acts: list[torch.Tensor]   # concrete values after each layer [B * P, ...]
    mags: list[torch.Tensor]   # magnitudes after each layer [B, ...]


def _prepare(domain: Any, spec_net: NetSpec, boxes: tuple[torch.Tensor, torch.Tensor],
             plan: list, surfaces: tuple[Surface, ...], seed_: int,
             prog_kwargs: dict | None = None) -> tuple[_Case, Any]:
    lo, hi = boxes
    net = build_net(spec_net)
    prog = absdsl.compile(net, domain, input_shape=spec_net.input_shape, **(prog_kwargs or {}))
    if plan:
        aim(net, prog, lo, hi, plan, surfaces)
    final = NetSpec(spec_net.input_shape, harvest(spec_net.layers, net))
    pts = sample_points(lo, hi, generator=torch.Generator().manual_seed(seed_))
    batch, npts = pts.shape[:2]
    cur = pts.reshape(batch * npts, *spec_net.input_shape)
    m = torch.maximum(lo.abs(), hi.abs())
    acts, mags = [cur], [m]
    with torch.no_grad():
        for mod in net:
            cur = mod(cur)
            m = magnitude(mod, m)
            acts.append(cur)
            mags.append(m)
    return _Case(final, net, lo, hi, pts, acts, mags), prog


def _check_case(domain: Any, case: _Case, prop: str, use_spec: bool, seed_: int,
                full_prog: Any) -> None:
    """The network's output (``full_prog``) and every layer's output at once (a
    :class:`TapNet` program): concrete values in the bounds, or in the spec bounds."""
    lo, hi, pts = case.lo, case.hi, case.pts
    batch, npts = pts.shape[:2]
    tap = TapNet(case.net).eval()
    tap_prog = absdsl.compile(tap, domain, input_shape=case.spec.input_shape)
    tap_values = torch.cat([a.reshape(batch, npts, -1) for a in case.acts[1:]], 2)
    tap_mag = torch.cat([m.reshape(batch, -1) for m in case.mags[1:]], 1)
    runs = [(full_prog, case.acts[-1].reshape(batch, npts, -1), case.mags[-1].reshape(batch, -1),
             case.spec.describe(), None),
            (tap_prog, tap_values, tap_mag, case.spec.describe()
             + "\noutput: every layer's output, flattened and concatenated",
             tap_pairs(case.net, case.spec.input_shape))]
    for prog, values, mag, desc, pairs in runs:
        if not use_spec:
            with torch.no_grad():
                lb, ub = prog(lo, hi)
            compare(prop, desc, lo, hi, pts, values, lb.reshape(batch, -1),
                    ub.reshape(batch, -1), mag)
            continue
        g = torch.Generator().manual_seed(seed_)
        for C in spec_rows(values.shape[-1], batch, g, pairs):
            with torch.no_grad():
                lb, ub = prog(lo, hi, spec=C)
            cv = torch.einsum("bkn,bpn->bpk", C, values)
            cmag = torch.einsum("bkn,bn->bk", C.abs(), mag)
            compare(prop, desc, lo, hi, pts, cv, lb, ub, cmag, spec=C)


@contextlib.contextmanager
def shrink_time_limit(seconds: float) -> Iterator[None]:
    """Cap Hypothesis's shrinking time (each shrink step compiles programs: slow)."""
    old = getattr(hypothesis_engine, "MAX_SHRINKING_SECONDS", None)
    if old is None:  # another Hypothesis version: keep its default
        yield
        return
    # declared int; whole seconds suffice
    hypothesis_engine.MAX_SHRINKING_SECONDS = math.ceil(seconds)
    try:
        yield
    finally:
        hypothesis_engine.MAX_SHRINKING_SECONDS = old


@contextlib.contextmanager
def without_local_constants() -> Iterator[None]:
    """Draw as if no module of the caller's were loaded: the same run in every process.

    Hypothesis mixes literal constants of the loaded "local" modules (any module outside
    site-packages: an editable absdsl, the tests, the user's scripts) into its draws, so a
    seeded run depended on which modules were imported before it: a CLI process, a test run
    alone and the same test after another file drew different networks, and a mutant caught in
    one was missed in the other. Its built-in constant pool (NaN, 0.5, 1e-5, ...) stays: it is
    fixed for a Hypothesis version. Hypothesis versions without local constants need nothing.
    """
    if providers is None:  # another Hypothesis layout: nothing to switch off
        yield
        return
    get_local = getattr(providers, "_get_local_constants", None)
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    empty_type = getattr(providers, "Constants", None)
    if get_local is None or cache is None or empty_type is None:
        yield
        return
    empty = empty_type()
    cache.cache.clear()  # cached pools were filtered from the local constants too
    providers._get_local_constants = lambda: empty
    try:
        yield
    finally:
        providers._get_local_constants = get_local
        cache.cache.clear()


def _run_property(name: str, test: Any, max_examples: int, seed: int,
                  shrink_seconds: float = 30.0) -> PropertyResult:
    """Run a Hypothesis test; the last Violation recorded is the shrunk counterexample."""
    last: dict[str, Any] = {}

    def record(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> None:
            try:
                fn(*args, **kwargs)
            except Violation as v:
                last["cex"] = v.cex
                raise
        return wrapped

    counter = {"n": 0}

    def counted(*args: Any, **kwargs: Any) -> None:
        counter["n"] += 1
        last["case"] = describe_case(kwargs)
        record(test.inner)(*args, **kwargs)

    runner = hyp_seed(seed)(_settings(max_examples)(given(**test.strategies)(counted)))
    try:
        with shrink_time_limit(shrink_seconds), without_local_constants(), \
                with_reporter(lambda _msg: None):
            runner()  # Hypothesis's own prints are replaced by the report
    except Violation:
        return PropertyResult(name, False, counter["n"], last.get("cex"))
    except Exception as err:  # a crash of the program is a failure too
        frames = traceback.extract_tb(err.__traceback__)
        where = next((f"{f.filename}:{f.lineno} ({f.name})" for f in reversed(frames)
                      if "hypothesis" not in f.filename), "")
        msg = str(err).split("\nFalsifying example")[0].strip()
        text = (f"the program crashed: {type(err).__name__}: {msg}\n"
                f"raised at {where}\n{last.get('case', '')}")
        return PropertyResult(name, False, counter["n"], None, text)
    return PropertyResult(name, True, counter["n"])


def describe_case(kwargs: dict[str, Any]) -> str:
    """A readable description of a drawn case (network, box) for crash reports."""
    case = kwargs.get("case")
    if isinstance(case, tuple) and len(case) >= 3 and isinstance(case[0], NetSpec):
        net, (lo, hi) = case[0], case[1]
        return (f"network (before aiming):\n{net.describe()}\nbox lo = {_tolist(lo)}\n"
                f"box hi = {_tolist(hi)}")
    return ", ".join(f"{k} = {v!r}" for k, v in kwargs.items())


@dataclass
class _Test:
    strategies: dict[str, Any]
    inner: Any


def soundness_property(domain: Any, ops: frozenset[str], use_spec: bool,
                       surfaces: tuple[Surface, ...] = BASE_SURFACES) -> _Test:
    prop = "spec" if use_spec else "bounds"

    @st.composite
    def case(draw: Any) -> tuple:
        net = draw(networks(ops))
        boxes = draw(input_boxes(net.input_shape, surfaces=surfaces))
        return net, boxes, draw(plan_tokens()), draw(st.integers(0, 2**16))

    def inner(case: tuple) -> None:
        net, boxes, plan, s = case
        made, prog = _prepare(domain, net, boxes, plan, surfaces, s)
        _check_case(domain, made, prop, use_spec, s, prog)

    return _Test({"case": case()}, inner)
