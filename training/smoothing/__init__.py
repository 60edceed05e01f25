"""Gaussian loss smoothing for certified training: PGPE and randomised gradient smoothing.

Both optimise L_sigma(theta) = E_{eps ~ N(0, sigma^2)} L(theta + eps), which is smooth even
where a tight domain's loss (DeepPoly, CROWN-IBP) is discontinuous in the weights. A whole
population of weight vectors is one vmapped call of the compiled bound program.
Importing the package registers the ``pgpe``, ``rgs`` and ``antithetic-cv`` step rules, and
``smooth``: the default smoothing optimiser, the one whose smoothed-gradient estimate was best
per unit of compute in ``absdsl analyze smoothing-gradient`` (docs/smoothing.md).
"""

from __future__ import annotations

from ..steprule import Factory, register_step_rule
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
# chosen by the measurement of docs/smoothing.md: RGS had the highest cosine to the
# 4,096-sample reference at equal cost for Box, CROWN-IBP and DeepPoly at every sigma
DEFAULT_SMOOTHER = "rgs"
_SMOOTHERS: dict[str, Factory] = {"pgpe": PGPEStep, "rgs": RGSStep,
                                  "antithetic-cv": AntitheticCVStep}
register_step_rule("smooth", _SMOOTHERS[DEFAULT_SMOOTHER], rule_options())

__all__ = [
    "DEFAULT_SMOOTHER",
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
