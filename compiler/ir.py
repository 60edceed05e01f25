"""A small typed IR of the ops that bound programs handle.

Every node's op is an entry of the op table (:mod:`ops`): ``input``, ``affine`` (a linear map
plus bias, see :mod:`linear_maps`), ``add`` (sum of two input-dependent tensors), ``cat``,
``reshape`` (any relabelling of neurons), an elementwise activation or max pooling.
Shapes are per sample (no batch dimension).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .ops import ACTIVATIONS, OPS  # noqa: F401 - ACTIVATIONS re-exported


def _params_text(attrs: dict[str, Any]) -> str:
    params = attrs.get("params")
    return " " + ", ".join(f"{k}={v}" for k, v in params.items()) if params else ""


# how a node shows its attributes in the printed IR, by op (default: its number parameters)
_ATTRS_TEXT: dict[str, Callable[[dict[str, Any]], str]] = {
    "affine": lambda attrs: f" {attrs['map'].describe()}",
    "cat": lambda attrs: f" dim={attrs['dim']}",
}


@dataclass
class Node:
    name: str
    op: str
    inputs: list[str]
    shape: tuple[int, ...]
    attrs: dict[str, Any] = field(default_factory=dict)
    origin: str = ""  # module path and source line, for error messages

    @property
    def kind(self) -> str:
        """The op table's kind of the node's op: input, affine, elementwise, pool, ..."""
        return OPS[self.op].kind

    def describe(self) -> str:
        args = ", ".join(self.inputs)
        extra = _ATTRS_TEXT.get(self.op, _params_text)(self.attrs)
        shape = "x".join(str(s) for s in self.shape)
        where = f"    # {self.origin}" if self.origin else ""
        return f"%{self.name} = {self.op}({args}){extra} : [{shape}]{where}"


@dataclass
class Prelude:
    """A value computed from parameters once per call (folded batch norm, |W|, ...)."""

    name: str
    code: str
    params: tuple[str, ...]  # parameter/buffer/constant names read


@dataclass
class Graph:
    nodes: list[Node]
    output: str
    prelude: list[Prelude] = field(default_factory=list)
    param_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.by_name = {n.name: n for n in self.nodes}

    def users(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {n.name: [] for n in self.nodes}
        for n in self.nodes:
            for i in n.inputs:
                out[i].append(n.name)
        return out

    def ancestors(self, name: str) -> list[Node]:
        """The nodes ``name`` depends on (itself included), in topological order."""
        keep: set[str] = set()
        stack = [name]
        while stack:
            cur = stack.pop()
            if cur in keep:
                continue
            keep.add(cur)
            stack.extend(self.by_name[cur].inputs)
        return [n for n in self.nodes if n.name in keep]

    def __str__(self) -> str:
        lines = [f"{p.name} = {p.code}" for p in self.prelude]
        lines += [n.describe() for n in self.nodes]
        lines.append(f"return %{self.output}")
        return "\n".join(lines)
