"""``--optimizer antithetic-cv``: the control-variate estimator as a training step rule."""

from __future__ import annotations

import pytest

from absdsl.training.smoothing import AntitheticCVStep, SmoothingConfigError
from absdsl.training.steprule import make_step_rule
from tests.training.test_smoothing import (
    config,
    programs_for,
    tiny_cnn,
)
from tests.training.test_smoothing import (
    test_smoothing_lowers_the_robust_loss_on_a_tiny_problem as lowers_the_robust_loss,
)


def test_antithetic_cv_lowers_the_robust_loss_on_a_tiny_problem() -> None:
    # the PGPE/RGS test's problem and bar (30% lower DeepPoly loss in 20 steps), 4 samples
    lowers_the_robust_loss("antithetic-cv")


@pytest.mark.parametrize(("options", "message"), [
    ({"rgs_samples": 5}, "even"),
    ({"symmetric": False}, "always samples antithetic pairs"),
    ({"sigma": 0.0}, "sigma must be > 0"),
])
def test_antithetic_cv_bad_options_fail_before_any_work(options: dict, message: str) -> None:
    model = tiny_cnn()
    with pytest.raises(SmoothingConfigError, match=message):
        AntitheticCVStep(model, config(**options), programs_for(model, "box"))


def test_unknown_optimizer_lists_antithetic_cv() -> None:
    model = tiny_cnn()
    with pytest.raises(Exception, match="antithetic-cv"):
        make_step_rule("antithetic-vc", model, config(), programs_for(model, "box"))
