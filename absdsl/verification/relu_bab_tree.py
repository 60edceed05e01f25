"""The ReLU branch and bound's stack of sub-problems: splitting a neuron into its two
phases, taking a batch from the top, and the children's warm starts (the parent's
optimised relaxation values). A sub-problem set is a dict of tensors with one row per
sub-problem: ``bounds`` (pre-activation bounds per node), ``phases`` (-1, 0, 1 per neuron),
``open`` (the properties not yet refuted), ``depth`` and ``warm``."""

from __future__ import annotations

from typing import Any

import torch

Bounds = dict[str, tuple[torch.Tensor, torch.Tensor]]
Warm = dict[str, dict[str, torch.Tensor]]


def split_children(item: dict[str, Any], bounds: Bounds, open_: torch.Tensor, keep: torch.Tensor,
           which: torch.Tensor, nodes: list[str]) -> dict[str, Any]:
    """Both children of every kept sub-problem, split on its flat neuron ``which`` (an index
    into the splittable nodes' neurons laid end to end): inactive (u <= 0) first, then
    active (l >= 0), each with its parent's bounds intersected with the new phase."""
    idx = torch.nonzero(keep).flatten()
    m = idx.numel()
    sub_b = {k: (a[idx], b[idx]) for k, (a, b) in bounds.items()}
    sub_p = {k: p[idx] for k, p in item["phases"].items()}
    child_b = {k: (torch.cat([a, a]), torch.cat([b, b])) for k, (a, b) in sub_b.items()}
    child_p = {k: torch.cat([p, p]) for k, p in sub_p.items()}
    rows = torch.arange(m)
    offset = 0
    for k in nodes:
        width = sub_b[k][0].shape[1]
        here = (which >= offset) & (which < offset + width)
        r, col = rows[here], which[here] - offset
        la, ua = child_b[k]
        ua[r, col] = torch.clamp(ua[r, col], max=0.0)  # inactive half
        la[m + r, col] = torch.clamp(la[m + r, col], min=0.0)  # active half
        if k in child_p:
            child_p[k][r, col] = -1
            child_p[k][m + r, col] = 1
        offset += width
    return {"bounds": child_b, "phases": child_p,
            "open": torch.cat([open_[idx], open_[idx]]),
            "depth": torch.cat([item["depth"][idx] + 1, item["depth"][idx] + 1])}


def pop_subproblems(stack: list[dict[str, Any]], n: int) -> dict[str, Any]:
    """Up to n sub-problems from the top of the stack (the deepest first)."""
    taken: list[dict[str, Any]] = []
    count = 0
    while stack and count < n:
        top = stack[-1]
        have = top["open"].shape[0]
        need = n - count
        if have <= need:
            taken.append(stack.pop())
            count += have
            continue
        taken.append(slice_subproblems(top, slice(have - need, have)))
        stack[-1] = slice_subproblems(top, slice(0, have - need))
        count += need
    if len(taken) == 1:
        return taken[0]
    warm: Warm | None = None
    if all(t.get("warm") is not None for t in taken):  # else every one starts afresh
        names = [(a, p) for a, d in taken[0]["warm"].items() for p in d
                 if all(p in t["warm"].get(a, {}) for t in taken)]
        warm = {}
        for a, p in names:
            warm.setdefault(a, {})[p] = torch.cat([t["warm"][a][p] for t in taken])
    return {"warm": warm, "bounds": {k: (torch.cat([t["bounds"][k][0] for t in taken]),
                           torch.cat([t["bounds"][k][1] for t in taken]))
                       for k in taken[0]["bounds"]},
            "phases": {k: torch.cat([t["phases"][k] for t in taken])
                       for k in taken[0]["phases"]},
            "open": torch.cat([t["open"] for t in taken]),
            "depth": torch.cat([t["depth"] for t in taken])}


def slice_subproblems(item: dict[str, Any], s: slice) -> dict[str, Any]:
    return {"bounds": {k: (a[s], b[s]) for k, (a, b) in item["bounds"].items()},
            "phases": {k: p[s] for k, p in item["phases"].items()},
            "open": item["open"][s], "depth": item["depth"][s],
            "warm": None if item.get("warm") is None else {
                a: {p: t[s] for p, t in d.items()} for a, d in item["warm"].items()}}


def warm_bytes(warm: Warm | None, rows: torch.Tensor | None = None) -> int:
    """Bytes of the warm starts (``rows``: a mask of the sub-problems that split, twice)."""
    if warm is None:
        return 0
    total = sum(t.numel() * t.element_size() for d in warm.values() for t in d.values())
    if rows is None:
        return total
    first = next((t for d in warm.values() for t in d.values()), None)
    return 0 if first is None else 2 * total * int(rows.sum()) // max(first.shape[0], 1)


def children_warm(warm: Warm, keep: torch.Tensor) -> Warm:
    """Both children's start (the order of ``split_children``: inactive halves, then active)."""
    idx = torch.nonzero(keep).flatten()
    return {a: {p: torch.cat([t[idx], t[idx]]) for p, t in d.items()} for a, d in warm.items()}


def scatter_warm(into: Warm | None, values: Warm, rows: torch.Tensor, n: int) -> Warm:
    """``values`` (one row per entry of ``rows``) placed into a set of ``n`` rows."""
    out: Warm = into if into is not None else {}
    for a, d in values.items():
        for p, t in d.items():
            if p not in out.setdefault(a, {}):
                out[a][p] = torch.zeros((n, *t.shape[1:]), dtype=t.dtype)
            out[a][p][rows] = t
    return out
