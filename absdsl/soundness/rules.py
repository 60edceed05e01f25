"""The rules sweep: every rule of a domain at its op's own special points, with reach counts."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

import absdsl
from absdsl.compiler import codegen
from absdsl.compiler import ops as _ops
from absdsl.errors import InputError, TraceError

from .checks import compare
from .common import ACTIVATION_OPS, DTYPE, RELAX_RANGE, _loaded
from .nets import _Activation
from .relaxations import RELAX_PARAMS
from .report import PropertyResult, RuleReach, Violation

# Random networks reach a product, a valley op or an antitone op rarely (or never), and a box
# whose ends straddle GELU's dip or hardtanh's kink only by chance. This property sweeps every
# op of the domain on one- and two-op networks over boxes placed on and beside the op's own
# special points (read from the op table: kinks and inflections as the ends of its convex and
# concave pieces, the dips of f', argmin, the end of its domain, 0), checks the bounds of
# [x, f(x)] and, through spec rows, of f(x) - a x for slopes a at and near f' at the box's
# corners (a rule whose slope or correlation is wrong shows there), and counts per rule how
# many examples reached it. It is a fixed sweep (no random draws): the same in every process.

RULE_OFFSETS = (0.0, 1e-9, -1e-9, 1e-6, -1e-6, 1e-4, -1e-4, 1e-3, -1e-3, 0.05, -0.05)
RULE_WIDTHS = (0.0, 1e-6, 1e-3, 0.1, 1.0, 4.0)
SLOPE_FACTORS = (1.0, 1.01, 0.99, 1.03, 0.97, 1.06, 0.94)
# boxes per program call: bounds the [boxes, points, spec rows] temporaries of a case (sin's
# 19,071 boxes took 6.5 GB at once); each box's check is the same in any chunk
RULE_CHUNK = 1024
PRODUCT_VALUES = (-2.0, -1.0, -0.3, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0)
# the ops the front end makes only inside composites, each with the composite that reaches it
# (the other ops of the table have a direct spelling on the input)
_COMPOSITES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "neg_log1p": lambda x: torch.log_softmax(x, -1),
    "inv1p": lambda x: torch.softmax(x, -1),
    "rsqrt_eps": lambda x: F.layer_norm(x, (2,)),
    "inv_norm": lambda x: F.normalize(x, dim=-1),
}
_COMPOSITE_OPS = tuple(_COMPOSITES)


def special_points(op: str, params: dict[str, float]) -> list[float]:
    """Where an op's rules switch or its shape changes: 0, the finite ends of its convex and
    concave pieces (kinks such as hardtanh's min_val and max_val, inflection points), the
    dips of f', argmin and the lower end of its domain."""
    info = _ops.get(op)
    full = {p.name: p.default for p in info.params} | params
    pts = {0.0}
    for a, b in tuple(info.convex(full)) + tuple(info.concave(full)):
        pts.update(v for v in (a, b) if math.isfinite(v))
    pts.update(x for x, _ in info.dips(full))
    if info.argmin is not None:
        pts.add(info.argmin(full)[0])
    if info.valid is not None and math.isfinite(info.valid[0]):
        pts.add(info.valid[0])
    return sorted(pts)


def _op_range(op: str) -> tuple[float, float]:
    """Where boxes of ``op`` may lie: its domain (open ends kept off), finite in float64."""
    if op in RELAX_RANGE:
        return RELAX_RANGE[op]
    return (-1e3, 1e3)


def special_boxes(op: str, params: dict[str, float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Intervals [l, u] on and beside every special point (one end there, or centred there,
    at widths 0 to 4) and from one special point to another (exactly, a little wider and a
    little narrower), inside the op's range."""
    lo_ok, hi_ok = _op_range(op)
    pts = special_points(op, params)
    boxes: set[tuple[float, float]] = set()
    for s in pts:
        for d in RULE_OFFSETS:
            e = s + d * max(1.0, abs(s))
            for w in RULE_WIDTHS:
                boxes.update({(e, e + w), (e - w, e), (e - w / 2, e + w / 2)})
    for i, s in enumerate(pts):
        for e in pts[i + 1:]:
            boxes.update({(s, e), (s - 0.01, e + 0.01), (s + 1e-3, e - 1e-3)})
    kept = sorted((lo, hi) for lo, hi in boxes if lo <= hi and lo >= lo_ok and hi <= hi_ok)
    ends = torch.tensor(kept, dtype=DTYPE)
    return ends[:, 0], ends[:, 1]


# the ops model code spells with an operator (``x ** n``, ``1 / x``), as f(x, exponent)
_OPERATOR_SPELLINGS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "pow": lambda x, n: x ** n,
    "pow_odd": lambda x, n: x ** n,
    "reciprocal": lambda x, n: 1 / x,
}


class _OpNet(nn.Module):
    """One op on the input, output ``cat([x, f(x)])`` (so spec rows can form f(x) - a x)."""

    def __init__(self, op: str, params: dict[str, float]) -> None:
        super().__init__()
        info = _ops.get("hardtanh" if op == "relu6" else op)
        self.exponent = int(params.get("exponent", 2.0))
        self.spelled = _OPERATOR_SPELLINGS.get(op)
        self.act: nn.Module | None = None
        if op == "relu6":
            self.act = nn.ReLU6()
        elif self.spelled is None:
            positional = [p for p in info.params if p.position >= 0]
            full = {p.name: p.default for p in info.params} | params
            self.act = _Activation(op, tuple(full[p.name] for p in positional))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.spelled is not None:
            y = self.spelled(x, self.exponent)
        else:
            assert self.act is not None
            y = self.act(x)
        return torch.cat([x, y], 1)


class _ProductNet(nn.Module):
    """Products of two inputs: ``x0 * x1``, ``(x0 + x1) * (x0 - x1)`` (operands sharing
    generators), ``relu(x0) * x1`` (an operand carrying a relaxation's error), ``relu(x0 x1 -
    1/4)`` (the product's bounds feed a relaxation) and ``x0 / x1``; output ``cat([x, y])``."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = x[:, :1], x[:, 1:]
        if self.kind == "mul":
            y = a * b
        elif self.kind == "shared":
            y = (a + b) * (a - b)
        elif self.kind == "relu":
            y = torch.relu(a) * b
        elif self.kind == "then-relu":
            y = torch.relu(a * b - 0.25)
        else:
            y = a / b
        return torch.cat([x, y], 1)


class _CompositeNet(nn.Module):
    """The ops the front end makes only inside composites, on a 2-vector: softmax (inv1p),
    log_softmax (neg_log1p), layer norm (rsqrt_eps), F.normalize (inv_norm)."""

    def __init__(self, op: str) -> None:
        super().__init__()
        self.composite = _COMPOSITES[op]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.composite(x)


class _MaxNet(nn.Module):
    """A maximum of a 3-vector x, as ``[x, y]`` (the rule cases' layout): max pooling over
    a 1 x 3 window; overlapping 1 x 2 windows, one minus the other (a spec row then weighs
    one max up and the other down, so a back-substitution domain takes both lines of its
    relaxation); ``torch.amax``; the max and min of two tensors."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid = x.reshape(x.shape[0], 1, 1, 3)
        if self.kind == "max_pool2d":
            y = F.max_pool2d(grid, (1, 3)).flatten(1)
        elif self.kind == "max_pool2d overlapping":
            pairs = F.max_pool2d(grid, (1, 2), stride=1).flatten(1)
            y = pairs[:, :1] - pairs[:, 1:]
        elif self.kind == "amax":
            y = torch.amax(x, 1, keepdim=True)
        else:
            y = torch.max(x[:, :1], x[:, 1:2]) - torch.min(x[:, 1:2], x[:, 2:])
        return torch.cat([x, y], 1)


def _grid_points(lo: torch.Tensor, hi: torch.Tensor, extra: list[float]) -> torch.Tensor:
    """Points of each box [B, d] -> [B, P, d]: a grid (dense in 1-d, with points at 1e-6 to
    3 % from either end), the corners, and the ``extra`` values where they lie inside."""
    d = lo.shape[1]
    if d == 1:
        ts = torch.linspace(0, 1, 33, dtype=DTYPE).tolist()
        near = [1e-6, 1e-4, 1e-3, 1e-2, 0.03]
        ts = sorted(set(ts + near + [1 - v for v in near]))
        t = torch.tensor(ts, dtype=DTYPE).reshape(1, -1, 1)
        pts = lo.unsqueeze(1) + t * (hi - lo).unsqueeze(1)
        if extra:
            e = torch.tensor(extra, dtype=DTYPE).reshape(1, -1, 1)
            e = torch.minimum(torch.maximum(e, lo.unsqueeze(1)), hi.unsqueeze(1))
            pts = torch.cat([pts, e], 1)
        return pts
    axis = torch.tensor([0.0, 1e-3, 0.5, 1 - 1e-3, 1.0], dtype=DTYPE)
    t = torch.cartesian_prod(*([axis] * d)).unsqueeze(0)  # [1, P, d]
    return lo.unsqueeze(1) + t * (hi - lo).unsqueeze(1)


def _slope_rows(net: nn.Module, lo: torch.Tensor, hi: torch.Tensor, n_in: int,
                chord: bool) -> torch.Tensor:
    """Spec rows [B, k, n_in + 1] of y - a . x: a the gradient of y at every corner and the
    centre (and the chord slope in 1-d), and +-1, +-3 along each input, each scaled by
    :data:`SLOPE_FACTORS`; plus x and y."""
    corners = _grid_points(lo, hi, [])[:, :, :] if n_in > 1 else torch.stack([lo, hi], 1)
    if n_in > 1:
        keep = ((corners == lo.unsqueeze(1)) | (corners == hi.unsqueeze(1))).all(-1)
        keep[:, :] = keep[0:1, :]  # the same grid positions in every sample
        corners = corners[:, keep[0]]
    centre = ((lo + hi) / 2).unsqueeze(1)
    at = torch.cat([corners, centre], 1).detach().requires_grad_(True)  # [B, P, d]
    y = net(at.reshape(-1, n_in))[:, -1].sum()
    (grad,) = torch.autograd.grad(y, at)
    slopes = [grad[:, i] for i in range(grad.shape[1])]  # each [B, d]
    if chord:
        width = (hi - lo).clamp(min=1e-300)
        with torch.no_grad():
            fl, fu = net(lo)[:, -1:], net(hi)[:, -1:]
        slopes.append(torch.where(hi > lo, (fu - fl) / width, slopes[0]))
    for i in range(n_in):  # fixed steep slopes: a corner where the output is flat can
        for k in (-3.0, -1.0, 1.0, 3.0):  # still be where y - a x is extreme
            unit = torch.zeros_like(slopes[0])
            unit[:, i] = k
            slopes.append(unit)
    rows = []
    for s in slopes:
        for k in SLOPE_FACTORS:
            rows.append(torch.cat([-k * s.detach(), torch.ones_like(s[:, :1])], 1))
    eye = torch.eye(n_in + 1, dtype=DTYPE).expand(lo.shape[0], -1, -1)
    out = torch.cat([torch.stack(rows, 1), eye], 1)
    return torch.nan_to_num(out, nan=0.0, posinf=0.0, neginf=0.0)


def _rule_label(rule: Any, kind: str) -> str:
    return f"{kind} {', '.join(rule.ops)} (line {rule.pos.line})"


def domain_rules(domain: Any) -> dict[str, RuleReach]:
    """Every rule and relaxation of the domain (and of its intermediate-bounds domain),
    keyed by label: what the per-rule property must reach."""
    loaded = _loaded(domain)
    out: dict[str, RuleReach] = {}
    for dom in (loaded.domain, loaded.intermediate):
        if dom is None:
            continue
        for rule in dom.rules:
            label = f"{dom.name} " + _rule_label(rule, "rule")
            out[label] = RuleReach(label, set())
    for relax in loaded.relaxes:
        label = _rule_label(relax, "relax")
        out[label] = RuleReach(label, set())
    return out


def rules_of_op(domain: Any, op: str) -> list[str]:
    """Labels (as :func:`domain_rules`) of the rules that bound ``op`` in this domain."""
    loaded = _loaded(domain)
    labels = []
    for dom in (loaded.domain, loaded.intermediate):
        if dom is None:
            continue
        rule = codegen.find_rule(dom, op)
        if rule is not None:
            labels.append(f"{dom.name} " + _rule_label(rule, "rule"))
    if loaded.intermediate is not None or not loaded.domain.rules:
        relax = codegen.relax_for(op, loaded.relaxes)
        if relax is not None:
            labels.append(_rule_label(relax, "relax"))
    return labels


def _rule_cases(ops: frozenset[str]) -> Iterator[tuple[str, nn.Module, int, torch.Tensor,
                                                      torch.Tensor, list[float], bool]]:
    """(what, net, input size, lo, hi, extra points, slope rows) for every case: products
    first (the rules random networks reach least), then activations, then composites."""
    vals = PRODUCT_VALUES
    ivs = [(a, b) for a in vals for b in vals if a <= b]
    pos = [(a, b) for a, b in ivs if a > 0]
    for kind, second in (("mul", ivs), ("shared", ivs), ("relu", ivs), ("then-relu", ivs),
                         ("div", pos)):
        pairs = [(a, b, c, d) for a, b in ivs for c, d in second]
        t = torch.tensor(pairs, dtype=DTYPE)
        yield (f"product {kind}", _ProductNet(kind), 2, t[:, [0, 2]], t[:, [1, 3]], [], True)
    for op in _ops.ACTIVATIONS:
        if op in _COMPOSITE_OPS or (op in ACTIVATION_OPS and op not in ops):
            continue
        for params in RELAX_PARAMS[op]:
            lo, hi = special_boxes(op, params)
            yield (f"{op}{params or ''}", _OpNet(op, params), 1, lo.unsqueeze(1),
                   hi.unsqueeze(1), special_points(op, params), True)
    if "relu6" in ops:
        lo, hi = special_boxes("hardtanh", {"min_val": 0.0, "max_val": 6.0})
        yield ("relu6", _OpNet("relu6", {}), 1, lo.unsqueeze(1), hi.unsqueeze(1),
               [0.0, 6.0], True)
    for op in _COMPOSITE_OPS:
        t = torch.tensor([(a, b, c, d) for a, b in ivs for c, d in ivs], dtype=DTYPE)
        yield (f"{op} (composite)", _CompositeNet(op), 2, t[:, [0, 2]], t[:, [1, 3]], [],
               False)
    if "maxpool" in ops:  # windows dominated, tied, overlapping, one inside another
        t = torch.tensor([(a, b, c, d, e, f) for a, b in ivs[::2] for c, d in ivs[::5]
                          for e, f in ivs[::7]], dtype=DTYPE)
        for kind in ("max_pool2d", "max_pool2d overlapping", "amax", "max and min of two"):
            yield (f"max ({kind})", _MaxNet(kind), 3, t[:, [0, 2, 4]], t[:, [1, 3, 5]], [],
                   True)


def _check_rule_boxes(prog: Any, model: nn.Module, desc: str, n_in: int, lo: torch.Tensor,
                      hi: torch.Tensor, extra: list[float], C: torch.Tensor | None) -> int:
    """Check one chunk of a case's boxes (bounds of ``[x, f(x)]`` and, with ``C``, its spec
    rows) at their grid points; the number of boxes checked (those where f is finite)."""
    pts = _grid_points(lo, hi, extra)  # [B, P, n_in]
    batch, npts = pts.shape[:2]
    with torch.no_grad():
        values = model(pts.reshape(-1, n_in)).reshape(batch, npts, -1)
    finite = torch.isfinite(values).all(-1).all(-1)
    if not bool(finite.all()):  # e.g. 1 / x at x = 0: outside the op's domain
        lo, hi, pts, values = lo[finite], hi[finite], pts[finite], values[finite]
        C = None if C is None else C[finite]
        batch = lo.shape[0]
    if batch == 0:
        return 0
    mag_in = torch.maximum(lo.abs(), hi.abs())
    vmax = values.abs().amax(1)
    mag = torch.cat([mag_in, vmax[:, n_in:] + mag_in.amax(1, keepdim=True)], 1)
    with torch.no_grad():
        lb, ub = prog(lo, hi)
    compare("rules", desc, lo, hi, pts, values, lb.reshape(batch, -1), ub.reshape(batch, -1),
            mag)
    if C is not None:
        with torch.no_grad():
            lb, ub = prog(lo, hi, spec=C)
        cv = torch.einsum("bkn,bpn->bpk", C, values)
        cmag = torch.einsum("bkn,bn->bk", C.abs(), mag)
        compare("rules", desc, lo, hi, pts, cv, lb, ub, cmag, spec=C)
    return batch


def rules_property(domain: Any, ops: frozenset[str]) -> tuple[PropertyResult,
                                                              dict[str, RuleReach]]:
    """The per-rule sweep (see the section comment): a result, and the reach of every rule.

    A rule no example reached fails the property (it was never checked)."""
    name = ("rules: every rule reached, one- and two-op networks on boxes at each op's "
            "special points (kinks, inflections, dips, argmin)")
    domain = _loaded(domain)  # parsed once for every case
    reach = domain_rules(domain)
    result = PropertyResult(name, True, 0)
    op_rules: dict[str, list[str]] = {}
    for what, net, n_in, lo, hi, extra, slopes in _rule_cases(ops):
        model = net.to(DTYPE).eval()
        try:
            prog = absdsl.compile(model, domain, input_shape=(n_in,))
            prog.ir  # noqa: B018 (traces now: a missing rule shows here)
        except TraceError as err:
            if "no rule" in str(err) or "no relaxation" in str(err):
                continue  # listed as unsupported by the probe
            raise
        desc = f"{what}: {type(model).__name__} on input [{n_in}]"
        # spec rows once per case: in 2-d the first box picks the grid points whose gradients
        # every box's rows use, so they must not change with the chunk
        C = _slope_rows(model, lo, hi, n_in, n_in == 1) if slopes else None
        checked = 0
        try:
            for start in range(0, lo.shape[0], RULE_CHUNK):
                part = slice(start, start + RULE_CHUNK)
                checked += _check_rule_boxes(prog, model, desc, n_in, lo[part], hi[part],
                                             extra, None if C is None else C[part])
        except Violation as v:
            result.passed = False
            result.counterexample = v.cex
            return result, reach
        except InputError as err:
            if "outside the op's domain" in str(err):
                continue  # a sound but looser rule widened an operand of 1 / x past 0
            raise
        except Exception as err:  # a crash of the generated program is a failure too
            result.passed = False
            result.error = f"the program crashed on {desc}: {type(err).__name__}: {err}"
            return result, reach
        if checked == 0:
            continue
        result.examples += checked
        for op in {n.op for n in prog.ir.nodes}:
            if op not in op_rules:
                op_rules[op] = rules_of_op(domain, op)
            for label in op_rules[op]:
                if label in reach:
                    reach[label].ops.add(op)
                    reach[label].examples += checked
    missed = [r.rule for r in reach.values() if r.examples == 0]
    if missed:
        result.passed = False
        result.error = "no example reached " + "; ".join(missed)
    return result, reach
