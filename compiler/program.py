"""Bound programs: compiled (model, domain) pairs, callable on input boxes.

The generated source is plain torch code (``prog.code``). It reads the model's parameters
through a dict, so the same code serves ``prog(lo, hi)`` (the model's current parameters,
gradients flowing to them) and ``prog.functional(params, lo, hi)`` (any parameters, e.g. a
population stacked for ``torch.func.vmap``).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, overload

import torch
import torch.nn as nn

from absdsl.compiler import codegen
from absdsl.compiler import linear_maps as lm
from absdsl.compiler.backsub.emit import linear_program
from absdsl.compiler.concrete import ConcreteGraph
from absdsl.compiler.context import DEFAULT as DEFAULT_OPTIONS
from absdsl.compiler.context import Context, EngineOptions
from absdsl.compiler.frontend import trace
from absdsl.compiler.ir import ACTIVATIONS, Graph
from absdsl.compiler.lowering import lower_unsupported
from absdsl.dsl.loader import LoadedDomain, load_domain
from absdsl.errors import InputError, MemoryBudgetError

DEFAULT_MEMORY_BUDGET_MB = 2048.0
_BYTES_PER_ROW_FACTOR = 6  # live copies of a row block during one back-substitution step


@dataclass
class _Compiled:
    graph: Graph
    constants: dict[str, torch.Tensor]
    source: str
    fn: Any


def _require_no_nan(lb: torch.Tensor, ub: torch.Tensor | None) -> None:
    """A NaN bound is no bound: fail naming the likely cause instead of returning it."""
    if bool(torch.isnan(lb).any()) or (ub is not None and bool(torch.isnan(ub).any())):
        raise InputError("the bounds are NaN: an intermediate bound overflowed to infinity "
                         "(exp of a wide interval, or a product of infinite bounds) and a "
                         "relaxation of it is undefined; use smaller input boxes or a forward "
                         "domain (box, hbox, zonotope), which keep infinite bounds")


def has_rule(loaded: LoadedDomain, op: str) -> bool:
    """Whether the domain bounds ``op`` directly (else :mod:`lowering` rewrites it)."""
    if loaded.intermediate is None:
        return codegen.find_rule(loaded.domain, op) is not None
    return (codegen.find_rule(loaded.intermediate, op) is not None
            and codegen.relax_for(op, loaded.relaxes) is not None)


def generate(graph: Graph, loaded: LoadedDomain, options: EngineOptions = DEFAULT_OPTIONS
             ) -> str:
    """The Python source of ``bound_program(p, lo, hi, spec, ctx)``: parameters, input box,
    spec, and the call's :class:`~absdsl.compiler.context.Context`.

    ``ctx.record``, when a dict, receives the bounds of every pre-activation node (what the MILP
    stage and the analysis tools need); ``None`` on the hot path. ``ctx.upper`` false lets a
    back-substitution domain skip the upper rows of the output (training reads only lower
    bounds); its upper bound is then None. ``ctx.forward_spec``, when a dict and a spec is given
    to a back-substitution domain whose intermediate bounds are not refined (CROWN-IBP),
    receives under "lower" the spec's lower bounds by the intermediate domain itself (Box,
    the same code a Box program runs), from the forward pass both share.
    """
    out = codegen.Emitter()
    for pre in graph.prelude:
        out.used.add(pre.name)
    out.emit("spec_abs = spec.abs() if spec is not None else None")
    if loaded.intermediate is None:
        last = graph.by_name[graph.output]
        folds = (last.op == "affine" and isinstance(last.attrs["map"], lm.Dense)
                 and len(last.shape) == 1  # a Linear on [..., n] maps more than one vector
                 and not any(graph.output in n.inputs for n in graph.nodes))
        hook = _recording_hook(graph, loaded, out)
        # a last layer the spec folds into runs only without a spec
        states = codegen.forward_pass(graph, loaded.domain, out, "ctx", hook,
                                      [n for n in graph.nodes if not (folds and n is last)])
        out.emit("")
        out.emit("# output: concretise (with the spec as one more affine map when given,")
        out.emit("# folded into the last linear layer when there is one)")
        out.emit("if spec is None:")
        out.indent += 1
        if folds:
            states = codegen.forward_pass(graph, loaded.domain, out, "ctx", hook, [last],
                                          states)
        final = states[graph.output]
        lb, ub = codegen.concretize(loaded.domain, out, final)
        out.emit(f"return {lb}, {ub}")
        out.indent -= 1
        spec_state = (codegen.spec_rule(loaded.domain, out, states[last.inputs[0]], "ctx",
                                        last.attrs["map"]) if folds
                      else codegen.spec_rule(loaded.domain, out, final, "ctx"))
        lb, ub = codegen.concretize(loaded.domain, out, spec_state)
        out.emit(f"return {lb}, {ub}")
    else:
        linear_program(graph, loaded, out, options.patch_saving)
    body = "\n".join(out.lines)
    prelude = _used_prelude(graph, body)
    header = ["def bound_program(p, lo, hi, spec, ctx):",
              f'    """{loaded.name} bounds of the traced model (generated by absdsl)."""']
    return "\n".join(header + prelude + [body]) + "\n"


def _pre_activation_nodes(graph: Graph) -> set[str]:
    return {n.inputs[0] for n in graph.nodes if n.op in ACTIVATIONS}


def _recording_hook(graph: Graph, loaded: LoadedDomain, out: codegen.Emitter):
    """A forward-pass hook that stores pre-activation bounds when ``record`` is given."""
    wanted = _pre_activation_nodes(graph)

    def hook(node, state):
        if node.name in wanted:
            out.emit("if ctx.record is not None:")
            out.indent += 1
            lo_b, hi_b = codegen.concretize(loaded.domain, out, state)
            out.emit(f"ctx.record[{node.name!r}] = ({lo_b}, {hi_b})")
            out.indent -= 1
        return None

    return hook


def _prod(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _used_prelude(graph: Graph, body: str) -> list[str]:
    """Prelude lines that the body (or another kept prelude line) reads."""
    tokens = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", body))
    keep: list[str] = []
    for pre in reversed(graph.prelude):
        if pre.name in tokens:
            keep.append(f"    {pre.name} = {pre.code}")
            tokens |= set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", pre.code))
    return list(reversed(keep))


class BoundProgram:
    """A compiled (model, domain) pair: ``lb, ub = prog(lo, hi, spec=None)``."""

    def __init__(self, model: nn.Module, domain: str | LoadedDomain, *,
                 input_shape: tuple[int, ...] | None = None,
                 memory_budget_mb: float = DEFAULT_MEMORY_BUDGET_MB,
                 options: EngineOptions = DEFAULT_OPTIONS) -> None:
        if not isinstance(model, nn.Module):
            raise InputError(f"absdsl.compile: expected an nn.Module, got {type(model).__name__}")
        if memory_budget_mb <= 0:
            raise InputError(f"memory_budget_mb must be positive, got {memory_budget_mb}")
        if not isinstance(options, EngineOptions):
            raise InputError(f"options must be an absdsl.EngineOptions, got "
                             f"{type(options).__name__}")
        self.model = model
        self.options = options
        #: how often each optimised engine path ran in this program's calls (all shapes)
        self.engine_paths: Counter[str] = Counter()
        self.loaded = load_domain(domain)
        self.memory_budget_mb = float(memory_budget_mb)
        self._compiled: dict[tuple[int, ...], _Compiled] = {}
        # found once: walking every module on every call would sit on the training hot path
        self._batch_norms = [(path, m) for path, m in model.named_modules()
                             if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._last: _Compiled | None = None
        if input_shape is not None:
            self._compile(tuple(input_shape))

    # -- compilation -------------------------------------------------------------------
    def _compile(self, shape: tuple[int, ...]) -> _Compiled:
        if shape in self._compiled:
            self._last = self._compiled[shape]
            return self._last
        ref = next(iter(self.model.parameters()), None)
        dtype = ref.dtype if ref is not None else torch.float32
        device = ref.device if ref is not None else torch.device("cpu")
        graph, constants = trace(self.model, shape, dtype, device)
        graph = lower_unsupported(graph, lambda op: has_rule(self.loaded, op))
        source = generate(graph, self.loaded, self.options)
        fn = codegen.load_generated(source, self.loaded.name)["bound_program"]
        compiled = _Compiled(graph, constants, source, fn)
        self._compiled[shape] = compiled
        self._last = compiled
        return compiled

    @property
    def domain(self) -> str:
        return self.loaded.name

    @property
    def code(self) -> str:
        """The generated program (compiled for the last input shape seen)."""
        return self._require().source

    @property
    def ir(self) -> Graph:
        return self._require().graph

    def _require(self) -> _Compiled:
        if self._last is None:
            first = next((m for m in self.model.modules() if isinstance(m, nn.Linear)), None)
            if first is not None and next(iter(self.model.children()), None) is first:
                return self._compile((first.in_features,))
            raise InputError("the program is compiled per input shape: call it once, or pass "
                             "input_shape= to absdsl.compile, before reading .code or .ir")
        return self._last

    # -- calling -----------------------------------------------------------------------
    def params(self) -> dict[str, torch.Tensor]:
        """The model's parameters and buffers by qualified name (what programs read)."""
        return dict(self.model.named_parameters()) | dict(self.model.named_buffers())

    @overload
    def __call__(self, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None = None,
                 *, upper: Literal[True] = True) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def __call__(self, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None = None,
                 *, upper: bool) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def __call__(self, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None = None,
                 *, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Lower and upper bounds; ``upper=False`` returns ``(lower, None)`` and lets
        back-substitution domains skip the output's upper rows (half of their last pass)."""
        self._validate(lo, hi, spec, check_values=True)
        self._check_modes()
        compiled = self._compile(tuple(lo.shape[1:]))
        params = self.params() | compiled.constants
        lb, ub = compiled.fn(params, lo, hi, spec,
                             self._context(compiled, lo, compact=True, upper=upper))
        _require_no_nan(lb, ub)
        return lb, ub if upper else None

    @overload
    def functional(self, params: Mapping[str, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                   spec: torch.Tensor | None = None, *, upper: Literal[True] = True
                   ) -> tuple[torch.Tensor, torch.Tensor]: ...

    @overload
    def functional(self, params: Mapping[str, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                   spec: torch.Tensor | None = None, *, upper: bool
                   ) -> tuple[torch.Tensor, torch.Tensor | None]: ...

    def functional(self, params: Mapping[str, torch.Tensor], lo: torch.Tensor, hi: torch.Tensor,
                   spec: torch.Tensor | None = None, *, upper: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Bounds with the given parameters (missing names fall back to the model's).

        Pure and free of data-dependent shapes, so ``torch.func.vmap`` can batch it over
        stacked parameter sets.
        """
        self._validate(lo, hi, spec, check_values=False)
        compiled = self._compile(tuple(lo.shape[1:]))
        merged = self.params() | compiled.constants | dict(params)
        lb, ub = compiled.fn(merged, lo, hi, spec,
                             self._context(compiled, lo, compact=False, upper=upper))
        return lb, ub if upper else None

    @property
    def shares_intermediate(self) -> bool:
        """Whether :meth:`lower_with_intermediate` applies: a back-substitution domain whose
        intermediate bounds are its intermediate domain's own (CROWN-IBP over Box)."""
        return self.loaded.intermediate is not None and not self.loaded.refine

    def lower_with_intermediate(self, params: Mapping[str, torch.Tensor] | None,
                                lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower bounds of ``spec`` by this domain and by its intermediate domain, from one
        forward pass (``params`` None: the model's own, as ``prog(...)``; else as
        :meth:`functional`). The second equals a program of the intermediate domain alone
        (for CROWN-IBP: Box's margins, what CROWN-IBP's mixing adds)."""
        if not self.shares_intermediate:
            raise InputError(f"domain {self.domain} refines its intermediate bounds: it has "
                             f"no separate intermediate spec bounds")
        self._validate(lo, hi, spec, check_values=params is None)
        compiled = self._compile(tuple(lo.shape[1:]))
        if params is None:
            self._check_modes()
            merged = self.params() | compiled.constants
        else:
            merged = self.params() | compiled.constants | dict(params)
        found: dict[str, torch.Tensor] = {}
        lb, _ = compiled.fn(merged, lo, hi, spec, self._context(
            compiled, lo, compact=params is None, upper=False, forward_spec=found))
        return lb, found["lower"]

    def intermediate_bounds(self, lo: torch.Tensor, hi: torch.Tensor
                            ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Bounds ``(l, u)``, each ``[B, *shape]``, of every node that feeds an activation.

        They are the bounds the domain itself relaxes with (DeepPoly's are refined by
        back-substitution), keyed by IR node name (``prog.ir``).
        """
        self._validate(lo, hi, None, check_values=True)
        self._check_modes()
        compiled = self._compile(tuple(lo.shape[1:]))
        params = self.params() | compiled.constants
        record: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        compiled.fn(params, lo, hi, None,
                    self._context(compiled, lo, compact=True, record=record))
        batch = lo.shape[0]
        return {name: (lb.reshape(batch, *compiled.graph.by_name[name].shape),
                       ub.reshape(batch, *compiled.graph.by_name[name].shape))
                for name, (lb, ub) in record.items()}

    def concrete(self, input_shape: tuple[int, ...] | None = None) -> ConcreteGraph:
        """The IR as plain torch functions, one per node (for MILP encodings and analysis)."""
        compiled = self._compile(tuple(input_shape)) if input_shape is not None \
            else self._require()
        return ConcreteGraph(compiled.graph, self.params() | compiled.constants)

    def _context(self, compiled: _Compiled, lo: torch.Tensor, *, compact: bool,
                 upper: bool = True, record: dict | None = None,
                 forward_spec: dict | None = None) -> Context:
        """The context of one call (``compact`` false under vmap: shapes fixed by the input)."""
        return Context(compact=compact, rows_per_chunk=self._rows_per_chunk(compiled, lo),
                       options=self.options, record=record, upper=upper,
                       forward_spec=forward_spec, paths=self.engine_paths)

    def _rows_per_chunk(self, compiled: _Compiled, lo: torch.Tensor) -> int:
        if self.loaded.intermediate is None:
            return 1 << 30  # forward domains back-substitute nothing
        widest = max(_prod(n.shape) for n in compiled.graph.nodes)
        per_row = 2 * lo.shape[0] * widest * lo.element_size() * _BYTES_PER_ROW_FACTOR
        budget = self.memory_budget_mb * 2**20
        rows = int(budget // per_row)
        if rows < 1:
            need = per_row / 2**20
            raise MemoryBudgetError(
                f"memory budget {self.memory_budget_mb:g} MiB is too small for one "
                f"back-substitution row at batch {lo.shape[0]} (widest layer {widest} neurons): "
                f"at least {need:.1f} MiB is needed, or use a batch of at most "
                f"{max(int(budget // (per_row / lo.shape[0])), 0)}")
        return rows

    def _check_modes(self) -> None:
        for path, mod in self._batch_norms:
            if mod.training:
                raise InputError(f"module '{path}' ({type(mod).__name__}) is in training mode; "
                                 f"call model.eval() before computing bounds")

    def _validate(self, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None,
                  check_values: bool) -> None:
        for name, t in (("lo", lo), ("hi", hi)):
            if not isinstance(t, torch.Tensor):
                raise InputError(f"{name} must be a tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise InputError(f"{name} must be a floating-point tensor, got {t.dtype}")
            if t.dim() < 2:
                raise InputError(f"{name} must be batched: [batch, *input_shape], got shape "
                                 f"{tuple(t.shape)}")
        if lo.shape != hi.shape:
            raise InputError(f"lo and hi differ in shape: {tuple(lo.shape)} vs {tuple(hi.shape)}")
        if lo.dtype != hi.dtype or lo.device != hi.device:
            raise InputError(f"lo and hi differ: {lo.dtype} on {lo.device} vs {hi.dtype} on "
                             f"{hi.device}")
        ref = next(iter(self.model.parameters()), None)
        if ref is not None and (ref.dtype != lo.dtype or ref.device != lo.device):
            raise InputError(f"the model's parameters are {ref.dtype} on {ref.device} but the "
                             f"input box is {lo.dtype} on {lo.device}; convert one of them")
        if check_values and not _box_is_valid(lo, hi):
            for name, t in (("lo", lo), ("hi", hi)):
                bad = ~torch.isfinite(t)
                if bool(bad.any()):
                    idx = tuple(int(i) for i in bad.nonzero()[0])
                    raise InputError(f"{name} has a NaN or infinite entry at index {idx}")
            wrong = lo > hi
            if bool(wrong.any()):
                idx = tuple(int(i) for i in wrong.nonzero()[0])
                raise InputError(f"lo > hi at index {idx}: {float(lo[idx])} > {float(hi[idx])}")
        if spec is not None:
            if not isinstance(spec, torch.Tensor) or spec.dim() != 3:
                raise InputError(f"spec must be a [batch, k, n_out] tensor, got "
                                 f"{tuple(spec.shape) if isinstance(spec, torch.Tensor) else spec}")
            if spec.dtype != lo.dtype or spec.device != lo.device:
                raise InputError(f"spec is {spec.dtype} on {spec.device} but the input box is "
                                 f"{lo.dtype} on {lo.device}")
            if spec.shape[0] != lo.shape[0]:
                raise InputError(f"spec batch {spec.shape[0]} differs from the input batch "
                                 f"{lo.shape[0]}")
            compiled = self._compile(tuple(lo.shape[1:]))
            n_out = _prod(compiled.graph.by_name[compiled.graph.output].shape)
            if spec.shape[2] != n_out:
                raise InputError(f"spec has {spec.shape[2]} columns but the model has {n_out} "
                                 f"outputs")

    # -- pickling: recompile on the other side (Ray actors, multiprocessing) ------------
    def __getstate__(self) -> dict[str, Any]:
        return {"model": self.model, "domain": self.loaded.origin or self.loaded,
                "memory_budget_mb": self.memory_budget_mb, "options": self.options,
                "shapes": list(self._compiled)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["model"], state["domain"],  # type: ignore[misc]
                      memory_budget_mb=state["memory_budget_mb"],
                      options=state.get("options", EngineOptions()))
        for shape in state["shapes"]:
            self._compile(shape)

    def __repr__(self) -> str:
        return f"BoundProgram(domain={self.loaded.name}, model={type(self.model).__name__})"


def _box_is_valid(lo: torch.Tensor, hi: torch.Tensor) -> bool:
    """One pass and one reduction: hi - lo is finite and >= 0 everywhere.

    A NaN or infinity in lo or hi makes some difference NaN or infinite, and lo > hi makes one
    negative; only then are the slower per-check scans run to name the entry (they also
    accept a box whose difference merely overflows).
    """
    if lo.numel() == 0:
        return True
    smallest, largest = torch.aminmax(hi - lo)
    return bool((smallest >= 0) & (largest < math.inf))
