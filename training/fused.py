"""Fused bound programs: ``prog.functional`` through ``torch.compile``, with an eager fallback.

``prog.functional`` has static shapes (no unstable-neuron selection, no box check), so
dynamo captures it whole; inductor then fuses its elementwise arithmetic. A
:class:`CompiledProgram` answers the same calls as the program it wraps. If compiling or
running the compiled form fails on a model, it warns ONCE with the reason and from then on
runs the eager program, so a run never stops on it and its bounds are the eager ones.

The inductor cache (compiled kernels and FX graphs) lives under ``TORCHINDUCTOR_CACHE_DIR``;
unless the user set it, :func:`use_compile_cache` points it at a folder that survives
reboots (``$XDG_CACHE_HOME/absdsl/inductor``), so the first call is paid once per model and
shape, not once per run.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

DEFAULT_BACKEND = "inductor"
_WARNED: set[str] = set()  # reasons already warned about: one warning per reason and process


class CompileFallbackWarning(UserWarning):
    """torch.compile failed on a bound program; the eager program runs instead."""


def use_compile_cache(folder: str | Path | None = None) -> Path:
    """Point inductor's on-disk cache at ``folder`` (default: the user's cache folder),
    unless ``TORCHINDUCTOR_CACHE_DIR`` is already set; returns the folder in use."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ or folder is not None:
        if folder is None:
            base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
            folder = Path(base) / "absdsl" / "inductor"
        Path(folder).mkdir(parents=True, exist_ok=True)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])


def _reason(err: BaseException) -> str:
    """The first line of an exception, named by its type (dynamo's messages are long), with
    the error it wraps (a failing backend's own exception) when there is one."""
    text = str(err).strip().splitlines()
    reason = f"{type(err).__name__}: {text[0] if text else ''}".strip()
    inner = getattr(err, "inner_exception", None) or err.__cause__
    if isinstance(inner, BaseException) and inner is not err:
        reason += f" <- {_reason(inner)}"
    return reason


class CompiledProgram:
    """A bound program whose calls run compiled; everything else is the program's own.

    ``prog(lo, hi, spec, upper=...)`` runs ``prog.functional`` with the model's parameters
    (the same tensors, so gradients reach the model). The bounds equal the eager
    ``prog.functional``'s to float rounding (tested).
    """

    def __init__(self, prog: Any, backend: str | Callable[..., Any] = DEFAULT_BACKEND) -> None:
        self.program = prog
        self.backend = backend
        self.failed: str | None = None  # the reason compiling failed, once it has
        self._compiled: dict[bool, Callable[..., Any]] = {}

    def __getattr__(self, name: str) -> Any:  # domain, params, intermediate_bounds, ...
        return getattr(self.__dict__["program"], name)

    def _fn(self, upper: bool) -> Callable[..., Any]:
        fn = self._compiled.get(upper)
        if fn is None:
            prog = self.program

            def bounds(params: Mapping[str, torch.Tensor], lo: torch.Tensor,
                       hi: torch.Tensor, spec: torch.Tensor | None
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
                return prog.functional(params, lo, hi, spec, upper=upper)

            fn = torch.compile(bounds, backend=self.backend, dynamic=False)
            self._compiled[upper] = fn
        return fn

    def functional(self, params: Mapping[str, torch.Tensor], lo: torch.Tensor,
                   hi: torch.Tensor, spec: torch.Tensor | None = None, *, upper: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """As ``prog.functional``, compiled (or eager after a failure, or under vmap)."""
        eager = self.program.functional
        if self.failed is not None or torch._C._functorch.maybe_current_level() is not None:
            return eager(params, lo, hi, spec, upper=upper)
        try:
            return self._fn(upper)(dict(params), lo, hi, spec)
        except Exception as err:  # noqa: BLE001 - any compiler failure falls back
            self.failed = _reason(err)
            if self.failed not in _WARNED:
                _WARNED.add(self.failed)
                warnings.warn(
                    f"torch.compile failed on the {self.program.domain} bound program "
                    f"({self.failed}); running the eager program instead",
                    CompileFallbackWarning, stacklevel=2,
                )
            return eager(params, lo, hi, spec, upper=upper)

    def __call__(self, lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor | None = None,
                 *, upper: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.functional(self.program.params(), lo, hi, spec, upper=upper)

    def lower_with_intermediate(self, params: Mapping[str, torch.Tensor] | None,
                                lo: torch.Tensor, hi: torch.Tensor, spec: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Not compiled: its extra output is written into a dict (a side effect)."""
        return self.program.lower_with_intermediate(params, lo, hi, spec)

    @property
    def shares_intermediate(self) -> bool:
        """False: CROWN-IBP's mixing then calls the (compiled) Box and CROWN-IBP programs."""
        return False


def compile_programs_fused(programs: Mapping[str, Any],
                           backend: str | Callable[..., Any] = DEFAULT_BACKEND
                           ) -> dict[str, Any]:
    """Every program wrapped in a :class:`CompiledProgram` (the inductor cache set up)."""
    use_compile_cache()
    import torch._dynamo.config as dynamo_config  # lazy: heavy dependency torch._dynamo

    # the generated programs share the compiler's calling code, so each program, input shape
    # and ``upper`` flag is one more compiled variant of it: allow many, and make running out
    # an error (which falls back with the warning) instead of dynamo's silent eager mode
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.fail_on_recompile_limit_hit = True
    return {name: CompiledProgram(prog, backend) for name, prog in programs.items()}
