"""Analysis instruments of the paradox (issue 6): tightness, loss landscape, sensitivity."""

from __future__ import annotations

from .tightness import AnalysisError, AUCResult, certified_auc, propagation_tightness

__all__ = ["AUCResult", "AnalysisError", "certified_auc", "propagation_tightness"]
