"""Generators of zonotope-like states (the ``gens`` kind of the DSL).

A set of error-term generators, ``x = c + sum_k G[:, k] * e_k``, kept in blocks keyed by the
node that created them, so adding the two branches of a residual block lines up shared error
terms without padding. A block is either dense, ``[B, K, *shape]``, or diagonal,
``[B, *shape]`` (one fresh generator per neuron, as an unstable ReLU creates); a diagonal block
is made dense only when a linear map needs it, and then only for the neurons whose generator is
non-zero somewhere in the batch (``compact``), unless the program runs under
``torch.func.vmap`` (``compact=False``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


@dataclass
class Block:
    data: Tensor
    diagonal: bool
    index: Tensor | None = None  # for a dense block: which fresh generators its rows are


class Gens:
    """Generators of a zonotope-like state: ``x = c + sum_k G[:, k] * e_k``."""

    def __init__(self, blocks: dict[str, Block], batch: int, shape: tuple[int, ...]) -> None:
        self.blocks = blocks
        self.batch = batch
        self.shape = shape

    # -- construction -----------------------------------------------------------------
    @staticmethod
    def fresh(key: str, diag: Tensor) -> Gens:
        return Gens({key: Block(diag, True)}, diag.shape[0], tuple(diag.shape[1:]))

    @staticmethod
    def zero(like: Tensor) -> Gens:
        return Gens({}, like.shape[0], tuple(like.shape[1:]))

    # -- elementwise -------------------------------------------------------------------
    def scale(self, s: Tensor | float) -> Gens:
        out = {}
        for k, b in self.blocks.items():
            if b.diagonal:
                out[k] = Block(b.data * s, True)
            else:
                out[k] = Block(b.data * (s.unsqueeze(1) if isinstance(s, Tensor) else s), False,
                               b.index)
        return Gens(out, self.batch, self.shape)

    def __add__(self, other: Gens) -> Gens:
        out = dict(self.blocks)
        for k, b in other.blocks.items():
            if k not in out:
                out[k] = b
                continue
            a = out[k]
            if a.diagonal and b.diagonal:
                out[k] = Block(a.data + b.data, True)
            else:
                da, db, index = _align(a, b)
                out[k] = Block(da + db, False, index)
        return Gens(out, self.batch, self.shape)

    def __neg__(self) -> Gens:
        return self.scale(-1.0)

    def __sub__(self, other: Gens) -> Gens:
        return self + (-other)

    def where(self, mask: Tensor, other: Gens) -> Gens:
        """Per neuron: self where mask, else other (a missing block is zero)."""
        out = {}
        for k in dict.fromkeys(list(self.blocks) + list(other.blocks)):
            a, b = self.blocks.get(k), other.blocks.get(k)
            if a is not None and b is not None and a.diagonal and b.diagonal:
                out[k] = Block(torch.where(mask, a.data, b.data), True)
            elif a is not None and a.diagonal and b is None:
                out[k] = Block(torch.where(mask, a.data, 0.0), True)
            elif b is not None and b.diagonal and a is None:
                out[k] = Block(torch.where(mask, 0.0, b.data), True)
            else:
                m = mask.unsqueeze(1)
                if a is None:
                    assert b is not None  # k comes from one of the two block sets
                    out[k] = Block(torch.where(m, 0.0, b.data), False, b.index)
                elif b is None:
                    out[k] = Block(torch.where(m, a.data, 0.0), False, a.index)
                else:
                    da, db, index = _align(a, b)
                    out[k] = Block(torch.where(m, da, db), False, index)
        return Gens(out, self.batch, self.shape)

    def abs_sum(self) -> Tensor | float:
        """sum_k |G[:, k]|: the radius of the interval hull."""
        total: Tensor | float = 0.0
        for b in self.blocks.values():
            total = total + (b.data.abs() if b.diagonal else b.data.abs().sum(1))
        return total

    # -- structure ---------------------------------------------------------------------
    def map(self, fn: Callable[[Tensor], Tensor], compact: bool) -> Gens:
        """Apply a per-sample linear map to every generator."""
        out = {}
        shape = self.shape
        for k, b in self.blocks.items():
            dense, index = _densify(b, compact) if b.diagonal else (b.data, b.index)
            n_gen = dense.shape[1]
            flat = fn(dense.flatten(0, 1))
            shape = tuple(flat.shape[1:])
            out[k] = Block(flat.unflatten(0, (self.batch, n_gen)), False, index)
        if not self.blocks:
            return Gens({}, self.batch, shape)
        return Gens(out, self.batch, shape)

    def reshape(self, shape: tuple[int, ...]) -> Gens:
        out = {}
        for k, b in self.blocks.items():
            lead = b.data.shape[:1] if b.diagonal else b.data.shape[:2]
            out[k] = Block(b.data.reshape(*lead, *shape), b.diagonal, b.index)
        return Gens(out, self.batch, shape)

    def spec(self, c: Tensor, compact: bool = True) -> Gens:
        """Generators of C x for a per-sample matrix C [B, k, n]."""
        out = {}
        for k, b in self.blocks.items():
            dense, index = _densify(b, compact) if b.diagonal else (b.data, b.index)
            out[k] = Block(torch.einsum("bkn,bgn->bgk", c, dense.flatten(2)), False, index)
        return Gens(out, self.batch, (c.shape[1],))


def _densify(b: Block, compact: bool) -> tuple[Tensor, Tensor | None]:
    """A diagonal block as dense generators, and which fresh generators they are (None: all)."""
    batch = b.data.shape[0]
    shape = tuple(b.data.shape[1:])
    flat = b.data.reshape(batch, -1)
    if compact:
        idx = (flat != 0).any(0).nonzero().squeeze(1)
        gens = torch.zeros(batch, idx.numel(), flat.shape[1], dtype=flat.dtype, device=flat.device)
        gens[:, torch.arange(idx.numel(), device=flat.device), idx] = flat[:, idx]
        return gens.reshape(batch, idx.numel(), *shape), idx
    return torch.diag_embed(flat).reshape(batch, flat.shape[1], *shape), None


def _align(a: Block, b: Block) -> tuple[Tensor, Tensor, Tensor | None]:
    """Two blocks of the same fresh generators, as dense tensors over the same generator ids."""
    da, ia = _densify(a, b.index is not None) if a.diagonal else (a.data, a.index)
    db, ib = _densify(b, a.index is not None) if b.diagonal else (b.data, b.index)
    if ia is None and ib is None:
        return da, db, None
    if ia is not None and ib is not None and ia.shape == ib.shape and bool((ia == ib).all()):
        return da, db, ia
    total = max(int(i.max()) + 1 if i is not None and i.numel() else 0 for i in (ia, ib))
    total = max(total, da.shape[1] if ia is None else 0, db.shape[1] if ib is None else 0)
    ia = torch.arange(da.shape[1], device=da.device) if ia is None else ia
    ib = torch.arange(db.shape[1], device=db.device) if ib is None else ib
    union = torch.unique(torch.cat([ia, ib]))
    pos = torch.full((total,), -1, dtype=torch.long, device=da.device)
    pos[union] = torch.arange(union.numel(), device=da.device)

    def spread(d: Tensor, ids: Tensor) -> Tensor:
        out = d.new_zeros(d.shape[0], union.numel(), *d.shape[2:])
        return out.index_copy(1, pos[ids], d)

    return spread(da, ia), spread(db, ib), union
