"""The built-in step rules: importing this module registers them.

``grad`` (Adam on the configured loss, :mod:`.grad`), ``pgpe`` and ``rgs`` (Gaussian loss
smoothing, :mod:`.smoothing`). The registry (:mod:`.steprule`) imports no rule; whoever builds
a rule by name (the training loop, ``absdsl train``'s flags, ``absdsl bench train``) imports
this module first. A new rule: a module that calls ``register_step_rule(name, factory,
options)`` when imported, and one import line here.
"""

from __future__ import annotations

from . import grad, smoothing
from .steprule import available_step_rules

__all__ = ["available_step_rules", "grad", "smoothing"]
