"""Emission of back-substitution: the code of a back-substitution domain's program.

A back-substitution domain (DeepPoly, CROWN-IBP) runs a forward pass of its intermediate
domain; at every node an activation or product reads, its bounds are tightened by
back-substituting the node's neurons (:func:`linear_program`), and the output is
back-substituted from the spec. Each bounded node gets a generated function in dense rows
(:func:`backsub_function`) or, for chains of convolutions, in patch rows
(:mod:`.emit_patches`). The code calls the runtime of :mod:`.rows` (``dense_rows``) and
:mod:`.patches` (``patch_rows``) by keyword and reads the call's context ``ctx``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ...dsl.loader import LoadedDomain
from ...errors import TraceError
from .. import codegen, ops
from .. import linear_maps as lm
from ..codegen import Emitter
from ..ir import Graph, Node
from .emit_patches import Geometry, patch_backsub_function, patch_geometry
from .transpose import transpose

# names that generated back-substitution code binds itself (Emitter.fresh never hands them out)
LOCALS = ("centre", "radius", "lb", "ub", "rows", "k", "acc", "sides", "n_out", "index")


# the inputs whose bounds relax a node, by kind: an activation's or a max's input; a
# product's two
RELAXED_INPUTS: dict[str, Callable[[Node], list[str]]] = {
    "elementwise": lambda node: node.inputs[:1],
    "pool": lambda node: node.inputs[:1],
    "product": lambda node: list(node.inputs),
}


def linear_program(graph: Graph, loaded: LoadedDomain, out: Emitter, patch_saving: float
                   ) -> None:
    """Emit the body of a back-substitution domain's program (see the module docstring);
    ``patch_saving`` is the engine option that picks patch rows over dense rows."""
    assert loaded.intermediate is not None
    out.used.update(LOCALS)
    out.emit("centre = (hi + lo) / 2")
    out.emit("radius = (hi - lo) / 2")
    program = _LinearProgram(graph, loaded, out, patch_saving)
    states = codegen.forward_pass(graph, loaded.intermediate, out, "ctx", program.hook)
    if not loaded.refine:
        _forward_spec(graph, loaded, out, states)
    program.output()


class _LinearProgram:
    """The forward pass hook of :func:`linear_program` and the output's back-substitution."""

    def __init__(self, graph: Graph, loaded: LoadedDomain, out: Emitter, patch_saving: float
                 ) -> None:
        self.graph, self.loaded, self.out, self.patch_saving = graph, loaded, out, patch_saving
        # bounded node -> the nodes relaxed with its bounds
        self.relaxed_at: dict[str, list[str]] = {}
        for node in graph.nodes:
            inputs = RELAXED_INPUTS.get(node.kind)
            for i in inputs(node) if inputs is not None else ():
                self.relaxed_at.setdefault(i, []).append(node.name)
        self.bounds: dict[str, tuple[str, str]] = {}
        self.lines: dict[str, str] = {}
        self.raw_lines: dict[str, str] = {}  # activation -> its relaxation lines (a_lo, ...)
        self.patch_lines: dict[str, str] = {}  # the same as maps for patches, made when used
        self.relax_fns: dict[tuple, str] = {}
        # refined node -> the variable of the neurons its refinement ran for
        self.refined: dict[str, str] = {}
        # activation with relaxation parameters -> (its relaxation function, l, u)
        self.param_acts: dict[str, tuple[str, str, str]] = {}

    def relax_fn(self, op: str, params: dict) -> str:
        """The name of the emitted relaxation function of ``op`` with ``params``."""
        key = (op, tuple(sorted(params.items())))
        if key not in self.relax_fns:
            relax = codegen.relax_for(op, self.loaded.relaxes)
            if relax is None:
                node = next(n for n in self.graph.nodes if n.op == op)
                raise TraceError(f"domain {self.loaded.name} has no relaxation for {op}, "
                                 f"needed by {node.origin or '%' + node.name}"
                                 f"{codegen.builtin_rules_hint(op)}")
            self.relax_fns[key] = codegen.relax_function(
                relax, op, params, self.out, self.loaded.domain, relax.filename, relax.source)
        return self.relax_fns[key]

    def hook(self, node: Node, state: dict[str, str]) -> dict[str, str] | None:
        """After a node's forward state: a product's planes; bounds of a node something is
        relaxed with, refined by back-substitution, and the relaxations they give."""
        out, loaded = self.out, self.loaded
        assert loaded.intermediate is not None
        if node.kind == "product":
            fn = self.relax_fn(node.op, {})
            (lx, ux), (ly, uy) = (self.bounds[i] for i in node.inputs)
            self.lines[node.name] = out.fresh(f"planes_{node.name}")
            out.emit(f"{self.lines[node.name]} = {fn}({lx}, {ux}, {ly}, {uy})[0]")
        if node.name not in self.relaxed_at:
            return None
        users = [self.graph.by_name[a] for a in self.relaxed_at[node.name]]
        lo_b, hi_b = codegen.concretize(loaded.intermediate, out, state)
        l_var, u_var = out.fresh(f"{node.name}_l"), out.fresh(f"{node.name}_u")
        out.emit(f"{l_var}, {u_var} = {lo_b}, {hi_b}")
        out.emit(f"if ctx.splits is not None: {l_var}, {u_var} = ctx.clamp({node.name!r}, "
                 f"{l_var}, {u_var})")  # branch and bound's constraints, before relaxing
        if loaded.refine and _needs_backsub(self.graph, node.name):
            self.refine(node, users, l_var, u_var)
        out.emit(f"if ctx.record is not None: ctx.record[{node.name!r}] = ({l_var}, {u_var})")
        self.bounds[node.name] = (l_var, u_var)
        for a in users:
            if a.kind == "product":
                continue  # relaxed at the product itself, once both bounds are known
            if a.kind == "pool":  # a max of windows: one relaxation per window (pool.py)
                self.lines[a.name] = out.fresh(f"lines_{a.name}")
                out.emit(f"{self.lines[a.name]} = pool_rows.max_lines(lower={l_var}, "
                         f"upper={u_var}, members={self.windows(a)})")
                continue
            fn = self.relax_fn(a.op, a.attrs.get("params", {}))
            raw = out.fresh(f"relaxed_{a.name}")
            out.emit(f"{raw} = {fn}({l_var}, {u_var})[0]")
            self.raw_lines[a.name] = raw
            self.lines[a.name] = out.fresh(f"lines_{a.name}")
            relax = codegen.relax_for(a.op, loaded.relaxes)
            if relax is not None and relax.params:  # per target: see target_lines
                self.param_acts[a.name] = (fn, l_var, u_var)
            out.emit(f"{self.lines[a.name]} = dense_rows.back_lines(lines={raw}, ctx=ctx)")
        if set(state) == {"l", "u"}:  # (CROWN-IBP: the same tensors unless clamped)
            return {"l": l_var, "u": u_var}
        return None

    def windows(self, node: Node) -> str:
        """The variable holding the window table of max ``node`` (``pool_rows``)."""
        src = self.graph.by_name[node.inputs[0]].shape
        p = node.attrs["params"]
        if node.op == "amax":
            code = (f"pool_rows.amax_windows(in_shape={tuple(src)}, dim={int(p['dim']) - 1}, "
                    f"device=str(lo.device))")
        else:
            def pair(a: str) -> tuple[int, int]:
                return int(p[f"{a}_h"]), int(p[f"{a}_w"])
            code = (f"pool_rows.max_pool_windows(in_shape={tuple(src)}, "
                    f"out_shape={tuple(node.shape)}, kernel={pair('kernel')}, "
                    f"stride={pair('stride')}, padding={pair('padding')}, "
                    f"device=str(lo.device))")
        return self.out.value(f"windows_{node.name}", code)

    def target_lines(self, target: str, when: str, rows: tuple[str, str] | None = None,
                     windows: tuple[list[Node], list[Geometry]] | None = None
                     ) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
        """The lines (dense, raw, patch) with which ``target`` is back-substituted: each
        activation with relaxation parameters gets its own values per target (alpha-CROWN's
        per-start-node slopes), ``ctx.relax_params[f"{activation}@{target}"]`` (the output's
        under the activation's own name), read when the condition ``when`` holds, else the
        initial values. ``rows`` (code of the mask of the target's refined neurons, or
        ``None``, and of its number of rows), given for a target in dense rows, lets the
        dense lines take values per row when ``ctx.row_slope_bytes`` allows
        (:mod:`.row_slopes`, under the key ``f"{key}#rows"``); with ``windows`` (a patch
        target's chain and geometries) the patch lines do, over each row's window (the
        per-row lines under ``patch[f"{activation}#rows"]``, None where shared)."""
        acts = [n.name for n in self.graph.ancestors(target) if n.name in self.param_acts]
        if not acts:
            return self.lines, self.raw_lines, self.patch_lines
        out = self.out
        lines, raw = dict(self.lines), dict(self.raw_lines)
        patch = {k: v for k, v in self.patch_lines.items() if k not in acts}
        for a in acts:
            fn, l_var, u_var = self.param_acts[a]
            key = a if target == self.graph.output else f"{a}@{target}"
            raw[a] = out.fresh(f"relaxed_{a}_{target}")
            out.emit(f"{raw[a]} = {fn}({l_var}, {u_var}, given=rt.relax_given(ctx=ctx, "
                     f"node={key!r}))[0] if {when} else {self.raw_lines[a]}")
            lines[a] = out.fresh(f"lines_{a}_{target}")
            out.emit(f"{lines[a]} = dense_rows.back_lines(lines={raw[a]}, ctx=ctx)")
            declared = codegen.relax_for(self.graph.by_name[a].op, self.loaded.relaxes)
            one = declared.params if declared is not None else []
            span = (one[0].name, one[0].lo, one[0].hi) if len(one) == 1 else None
            if rows is not None and windows is None:
                out.emit(f"if ctx.row_slope_bytes > 0 and {when}: {lines[a]} = "
                         f"row_slopes.row_lines(relax={fn}, lower={l_var}, upper={u_var}, "
                         f"raw={raw[a]}, shared={lines[a]}, given=rt.relax_given(ctx=ctx, "
                         f"node={key + '#rows'!r}), rows_needed={rows[0]}, "
                         f"n_rows={rows[1]}, ctx=ctx, span={span!r})")
            chain = [n.name for n in windows[0]] if windows is not None else []
            if rows is not None and a in chain:
                geom = windows[1][chain.index(a)]  # type: ignore[index]
                node = self.graph.by_name[a]
                shape = self.graph.by_name[node.inputs[0]].shape
                patch[a] = out.fresh(f"patch_lines_{a}_{target}")
                out.emit(f"{patch[a]} = patch_rows.patch_lines(lines={raw[a]}, shape={shape})")
                patch[f"{a}#rows"] = out.fresh(f"patch_rows_{a}_{target}")
                out.emit(f"{patch[f'{a}#rows']} = row_slopes.patch_row_lines(relax={fn}, "
                         f"lower={l_var}, upper={u_var}, given=rt.relax_given(ctx=ctx, "
                         f"node={key + '#rows'!r}), rows_needed={rows[0]}, "
                         f"grid={tuple(self.graph.by_name[target].shape[1:])}, geom={geom}, "
                         f"ctx=ctx, span={span!r}) if ctx.row_slope_bytes > 0 and {when} "
                         f"else None")
        return lines, raw, patch

    def refine(self, node: Node, users: list[Node], l_var: str, u_var: str) -> None:
        """Emit the refinement of ``node``'s bounds where its users' relaxations need it."""
        out, graph = self.out, self.graph
        needs, needs_var = [], out.fresh(f"needs_{node.name}")
        for a in users:
            if a.kind == "product":  # the planes read every bound
                needs.append(f"torch.ones_like({l_var}, dtype=torch.bool)")
                continue
            if a.kind == "pool":
                pool_needs = (f"pool_rows.needs(lower={l_var}, upper={u_var}, "
                              f"members={self.windows(a)})")
                if not _monotone_output(node):
                    needs.append(pool_needs)
                elif node.inputs[0] in self.refined:  # those not refined there
                    needs.append(f"({pool_needs} & ~{self.refined[node.inputs[0]]})")
                continue
            fn = self.relax_fn(a.op, a.attrs.get("params", {}))
            needs.append(f"{fn}({l_var}, {u_var}, True)")
        if not needs:
            return
        self.refined[node.name] = needs_var
        out.emit(f"{needs_var} = {' | '.join(needs)}")
        found = patch_geometry(graph, node.name, self.patch_saving)
        lines, raw, patch = self.target_lines(
            node.name, "ctx.relax_params is not None and ctx.optimize_intermediate",
            (needs_var, str(math.prod(node.shape))), found)
        if found is not None:
            factor = _patch_chunk_factor(graph, *found)
            backsub = patch_backsub_function(graph, node.name, *found, raw, patch, out)
        else:
            factor = 1
            bs = backsub_function(graph, node.name, lines, out, frozenset(self.param_acts))
            backsub = (f"lambda index: {bs}(dense_rows.unit_rows(index=index, "
                       f"shape={node.shape}, like=lo), index=index)")
        out.emit(f"{l_var}, {u_var} = dense_rows.refine(backsub={backsub}, lower={l_var}, "
                 f"upper={u_var}, needs={needs_var}, "
                 f"rows_per_chunk=ctx.rows_per_chunk * {factor}, "
                 f"per_sample={found is not None}, ctx=ctx)")

    def output(self) -> None:
        """Emit the output's bounds: the spec (or the identity) back to the input box."""
        out, graph = self.out, self.graph
        out.emit("")
        out.emit("# output: back-substitute the spec (or the identity) to the input box; "
                 "without")
        out.emit("# upper bounds only the lower rows (sides = 1)")
        shape = graph.by_name[graph.output].shape
        lines, _, _ = self.target_lines(graph.output, "ctx.relax_params is not None", (
            "None", f"spec.shape[1] if spec is not None else {math.prod(shape)}"))
        bs = backsub_function(graph, graph.output, lines, out, frozenset(self.param_acts))
        out.emit("sides = 2 if ctx.upper else 1")
        out.emit("if spec is None:")
        out.emit(f"    n_out = {math.prod(shape)}")
        out.emit(f"    rows = dense_rows.unit_rows(index=torch.arange(n_out, device=lo.device), "
                 f"shape={shape}, like=lo)")
        out.emit(f"    lb, ub = dense_rows.output_chunks(backsub={bs}, "
                 f"rows=rows[:, :sides * n_out], sides=sides, rows_per_chunk=ctx.rows_per_chunk)")
        out.emit(f"    return lb.reshape(lo.shape[0], *{shape}), "
                 f"ub.reshape(lo.shape[0], *{shape}) if ctx.upper else None")
        out.emit(f"rows = (torch.cat([spec, spec], 1) if ctx.upper else spec).reshape("
                 f"spec.shape[0], sides * spec.shape[1], *{shape})")
        out.emit(f"lb, ub = dense_rows.output_chunks(backsub={bs}, rows=rows, sides=sides, "
                 f"rows_per_chunk=ctx.rows_per_chunk)")
        out.emit("return lb, ub if ctx.upper else None")


def _forward_spec(graph: Graph, loaded: LoadedDomain, out: Emitter,
                  states: dict[str, dict[str, str]]) -> None:
    """Emit the intermediate domain's spec bounds into ``forward_spec`` when asked: what a
    program of that domain alone computes (the spec folded into a last linear layer)."""
    assert loaded.intermediate is not None
    last = graph.by_name[graph.output]
    folds = spec_folds(graph)
    out.emit("")
    out.emit("# the intermediate domain's own spec bounds (CROWN-IBP mixing), when asked")
    out.emit("if ctx.forward_spec is not None and spec is not None:")
    out.indent += 1
    spec_state = (codegen.spec_rule(loaded.intermediate, out, states[last.inputs[0]], "ctx",
                                    last.attrs["map"]) if folds
                  else codegen.spec_rule(loaded.intermediate, out, states[graph.output], "ctx"))
    lb, _ = codegen.concretize(loaded.intermediate, out, spec_state)
    out.emit(f"ctx.forward_spec['lower'] = {lb}")
    out.indent -= 1


def spec_folds(graph: Graph) -> bool:
    """Whether the spec folds into the output's linear layer (a Linear on [n] that nothing
    else reads: a Linear on [..., n] maps more than one vector)."""
    last = graph.by_name[graph.output]
    return (last.kind == "affine" and isinstance(last.attrs["map"], lm.Dense)
            and len(last.shape) == 1 and not any(graph.output in n.inputs for n in graph.nodes))


def _patch_chunk_factor(graph: Graph, chain: list[Node], geoms: list[Geometry]
                        ) -> int:
    """How many more rows fit a chunk in patch form than dense (the budget is per dense row)."""
    widest = max(math.prod(n.shape) for n in graph.nodes)
    largest = max(n.shape[0] * g[0] * g[1] for n, g in zip(chain, geoms, strict=True))
    return max(1, widest // largest)


def _monotone_output(node: Node) -> bool:
    """Whether ``node`` is a monotone activation (ReLU, ...): where its input's bounds [l, u]
    were refined (or are exact), its interval bounds f(l), f(u) are at least as tight as
    back-substituting its own neurons (each such row passes a relaxation line of f, valid on
    [l, u], whose least value there is at most f(l) and greatest at least f(u), and the
    input's rows reach no further than [l, u]). A max pool after a ReLU then refines only the
    neurons whose input was not refined (a ReLU needs no bounds of its stable neurons)."""
    return node.kind == "elementwise" and "monotone" in ops.OPS[node.op].groups


def _needs_backsub(graph: Graph, name: str) -> bool:
    """False when Box is already exact: reshapes and affine maps from the input of which at
    most one is not elementwise (a diagonal map sends a box to exactly a box, so the box
    reaching the one general map is exact, and so are its interval bounds). Input
    normalisation in front of the first conv is such a chain: back-substituting its neurons
    would only reproduce Box's bounds."""
    general = 0
    for node in graph.ancestors(name):
        if node.kind == "affine":
            general += not isinstance(node.attrs["map"], lm.Elementwise)
        elif node.kind not in ("input", "reshape"):
            return True
    return general > 1


def backsub_function(graph: Graph, target: str, lines: dict[str, str], out: Emitter,
                     row_acts: frozenset[str] = frozenset()) -> str:
    """Emit ``def backsub_<target>(rows, sides=2, index=None)``: rows [B, 2k, *shape] ->
    (lower [B, k], upper [B, k]); with ``sides`` 1, rows [B, k] of lower bounds only (upper
    is [B, 0]); ``index``: the rows' neurons in ``target`` (None: 0..k-1), passed on to the
    relaxations of ``row_acts``, whose lines may differ per row.

    Walks the target's ancestors in reverse topological order; each node's rows are the sum
    of what its users push back (transposed linear maps, relaxation lines, slices of a cat),
    one step per op kind (:data:`_STEPS`).
    """
    name = out.fresh(f"backsub_{target}")
    walk = _DenseWalk(graph, target, lines, out, row_acts)
    walk.body.emit("k = rows.shape[1] // sides")
    walk.body.emit("acc = rows.new_zeros(1, rows.shape[1])")
    lam = {target: "rows"}
    for node in reversed(walk.nodes):
        if node.name != target:
            parts = walk.contributions[node.name]
            if not parts:
                continue
            lam[node.name] = parts[0] if len(parts) == 1 else walk.body.fresh(f"lam_{node.name}")
            if len(parts) > 1:
                walk.body.emit(f"{lam[node.name]} = {' + '.join(parts)}")
        walk.body.emit(f"# {node.op} %{node.name}")
        step = _STEPS.get(node.kind)
        if step is None:
            raise TraceError(f"back-substitution has no rule for op {node.op}")
        if step(walk, node, lam[node.name]):
            break
    else:
        walk.body.emit("raise RuntimeError('back-substitution did not reach the input')")
    out.emit(f"def {name}(rows, sides=2, index=None):")
    out.lines.extend(walk.body.lines)
    return name


class _DenseWalk:
    """The state of one :func:`backsub_function`: its body and the rows pushed to each node.

    Each step takes a node and the name of its rows and returns whether the function ended
    (the rows reached the input).
    """

    def __init__(self, graph: Graph, target: str, lines: dict[str, str], out: Emitter,
                 row_acts: frozenset[str]) -> None:
        self.graph, self.lines, self.out, self.row_acts = graph, lines, out, row_acts
        self.body = Emitter(indent=out.indent + 1, used=out.used)
        self.nodes = graph.ancestors(target)
        self.users: dict[str, list[Node]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                self.users[i].append(n)
        self.contributions: dict[str, list[str]] = {n.name: [] for n in self.nodes}

    def push(self, dst: str, code: str) -> None:
        var = self.body.fresh(f"lam_{dst}")
        self.body.emit(f"{var} = {code}")
        self.contributions[dst].append(var)

    def input(self, node: Node, cur: str) -> bool:
        self.body.emit(f"return dense_rows.concretize(lam={cur}, k=k, centre=centre, "
                       f"radius=radius, acc=acc, compact=ctx.compact)")
        return True

    def affine(self, node: Node, cur: str) -> bool:
        chain = _input_chain(self.graph, node, self.users)
        if chain is not None:
            self.body.emit(_first_layer_return(node, cur, self.out, chain))
            return True
        m = node.attrs["map"]
        if m.bias is not None:
            self.body.emit(f"acc = acc + dense_rows.bias_dot(lam={cur}, bias={m.bias}, "
                           f"out_shape={node.shape}, compact=ctx.compact)")
        self.push(node.inputs[0], transpose(m, cur))
        return False

    def reshape(self, node: Node, cur: str) -> bool:
        src = self.graph.by_name[node.inputs[0]]
        self.push(src.name, f"{cur}.reshape({cur}.shape[0], {cur}.shape[1], *{src.shape})")
        return False

    def add(self, node: Node, cur: str) -> bool:
        for i in node.inputs:
            self.push(i, cur)
        return False

    def cat(self, node: Node, cur: str) -> bool:
        offset = 0
        for i in node.inputs:
            size = self.graph.by_name[i].shape[node.attrs["dim"]]
            self.push(i, f"{cur}.narrow({node.attrs['dim'] + 2}, {offset}, {size})")
            offset += size
        return False

    def elementwise(self, node: Node, cur: str) -> bool:
        var = self.body.fresh(f"lam_{node.inputs[0]}")
        rows = ", index=index" if node.name in self.row_acts else ""
        self.body.emit(f"{var}, acc = dense_rows.relax_back(lam={cur}, k=k, "
                       f"lines={self.lines[node.name]}, acc=acc{rows})")
        self.contributions[node.inputs[0]].append(var)
        return False

    def pool(self, node: Node, cur: str) -> bool:
        var = self.body.fresh(f"lam_{node.inputs[0]}")
        src = self.graph.by_name[node.inputs[0]].shape
        self.body.emit(f"{var}, acc = pool_rows.max_back(lam={cur}, k=k, "
                       f"lines={self.lines[node.name]}, in_shape={tuple(src)}, acc=acc, "
                       f"compact=ctx.compact)")
        self.contributions[node.inputs[0]].append(var)
        return False

    def product(self, node: Node, cur: str) -> bool:
        vx = self.body.fresh(f"lam_{node.inputs[0]}")
        vy = self.body.fresh(f"lam_{node.inputs[1]}")
        self.body.emit(f"{vx}, {vy}, acc = dense_rows.relax_back_product(lam={cur}, k=k, "
                       f"planes={self.lines[node.name]}, acc=acc)")
        self.contributions[node.inputs[0]].append(vx)
        self.contributions[node.inputs[1]].append(vy)
        return False


# one back-substitution step per op kind
_STEPS: dict[str, Callable[[_DenseWalk, Node, str], bool]] = {
    "input": _DenseWalk.input, "affine": _DenseWalk.affine, "reshape": _DenseWalk.reshape,
    "add": _DenseWalk.add, "cat": _DenseWalk.cat, "elementwise": _DenseWalk.elementwise,
    "pool": _DenseWalk.pool, "product": _DenseWalk.product,
}


def _input_chain(graph: Graph, node: Node, users: dict[str, list[Node]]) -> list[Node] | None:
    """The elementwise affine nodes between the input and ``node`` (input side first) when
    each of them and the input has one user on the way to ``node``, else None: rows at
    ``node`` then reach the input through maps that fold into its centre and radius."""
    chain: list[Node] = []
    cur = node
    while True:
        src = graph.by_name[cur.inputs[0]]
        if [u.name for u in users[src.name]] != [cur.name]:
            return None
        if src.op == "input":
            return list(reversed(chain))
        if src.op != "affine" or not isinstance(src.attrs["map"], lm.Elementwise):
            return None
        chain.append(src)
        cur = src


def _first_layer_return(node: Node, cur: str, out: Emitter, chain: list[Node]) -> str:
    """Concretise rows at the first affine map over the input box in one step.

    The centre term is taken one layer up, lam . (W c + b) with W c + b computed once per
    call: that replaces the bias dot and the centre dot over the input-sized rows.
    Elementwise maps between the input and the first map (normalisation) fold into that
    centre and into the radius (x s + t has centre c s + t and radius r |s|), so rows never
    pass through them. Rows that reach the input by the sub-pixel transposed conv are read
    before the pixel shuffle, with the radius laid out the same way, since only the dot
    with the radius is needed.
    """
    m = node.attrs["map"]
    centre, radius = "centre", "radius"
    for e in chain:
        em = e.attrs["map"]
        centre = out.value(f"centre_{e.name}", em.apply(centre, with_bias=True))
        if em.scale is not None:
            radius = out.value(f"radius_{e.name}", em.apply(radius, absolute=True))
    centre = out.value(f"centre_{node.name}", m.apply(centre, with_bias=True))
    if isinstance(m, lm.Conv) and m.uses_subpixel():
        radius = out.value(f"radius_{node.name}", (
            f"dense_rows.subpixel_phases(t={radius}, kernel={m.weight}.shape[-2:], "
            f"stride={m.stride}, padding={m.padding}, rows_hw={tuple(node.shape[1:])})"))
        lam_in = (f"dense_rows.conv_transpose_subpixel(lam={cur}, weight={m.weight}, "
                  f"stride={m.stride}, padding={m.padding}, out_hw={tuple(m.in_shape[1:])}, "
                  f"compact=ctx.compact, phases=True)")
    else:
        lam_in = transpose(m, cur)
    return (f"return dense_rows.concretize_after(lam={cur}, k=k, centre_after={centre}, "
            f"lam_in={lam_in}, radius_in={radius}, acc=acc, compact=ctx.compact)")


