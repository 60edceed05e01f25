"""Peak tensor memory of a call, on any device, by tracking live storages.

CUDA has ``max_memory_allocated``; the CPU has nothing comparable, and PGPE's chunking must
work on both. A dispatch mode sees every tensor an op creates (below ``vmap``, so the
batched physical tensors), counts each storage once while a tensor on it lives, and records
the peak. It measures what the call allocates, not what its inputs already hold.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakMemory(TorchDispatchMode):
    """Context manager: ``with PeakMemory() as m: f()`` then ``m.peak_bytes``."""

    def __init__(self) -> None:
        super().__init__()
        self._live: dict[tuple[int, str], list[int]] = {}
        self.current_bytes = 0
        self.peak_bytes = 0

    def _release(self, key: tuple[int, str]) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self._live[key]
            self.current_bytes -= entry[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            key = (storage.data_ptr(), str(t.device))
            entry = self._live.get(key)
            if entry is None:
                entry = [0, storage.nbytes()]
                self._live[key] = entry
                self.current_bytes += entry[1]
                self.peak_bytes = max(self.peak_bytes, self.current_bytes)
            entry[0] += 1
            weakref.finalize(t, self._release, key)
        return out


def peak_bytes(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run ``fn()`` and return its result and the peak bytes of tensors it allocated."""
    with PeakMemory() as tracker:
        result = fn()
    return result, tracker.peak_bytes
