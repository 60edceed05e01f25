"""Gaussian loss smoothing for certified training: PGPE and randomised gradient smoothing.

Both optimise L_sigma(theta) = E_{eps ~ N(0, sigma^2)} L(theta + eps), which is smooth even
where a tight domain's loss (DeepPoly, CROWN-IBP) is discontinuous in the weights. A whole
population of weight vectors is one vmapped call of the compiled bound program.
Importing the package registers the ``pgpe`` and ``rgs`` step rules.
"""

from __future__ import annotations

from ..steprule import register_step_rule
from .errors import MemoryBudgetError, RayUnavailableError, SmoothingConfigError
from .fitness import PopulationObjective
from .options import parse_options, rule_options
from .params import ParamLayout
from .pgpe import PGPEOptions, PGPESearch
from .rgs import RGSOptions, smoothed_gradient
from .rules import AntitheticCVStep, PGPEStep, RGSStep

register_step_rule("pgpe", PGPEStep, rule_options())
register_step_rule("rgs", RGSStep, rule_options())
register_step_rule("antithetic-cv", AntitheticCVStep, rule_options())

__all__ = [
    "AntitheticCVStep",
    "MemoryBudgetError",
    "PGPEOptions",
    "PGPESearch",
    "PGPEStep",
    "ParamLayout",
    "PopulationObjective",
    "RGSOptions",
    "RGSStep",
    "RayUnavailableError",
    "SmoothingConfigError",
    "parse_options",
    "smoothed_gradient",
]
