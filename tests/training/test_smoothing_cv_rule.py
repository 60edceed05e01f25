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


def test_smooth_is_the_default_smoother_chosen_by_the_measurement() -> None:
    from absdsl.training.smoothing import DEFAULT_SMOOTHER
    from absdsl.training.steprule import TrainBatch
    from tests.training.test_smoothing import mnist_batch

    assert DEFAULT_SMOOTHER == "rgs"  # docs/smoothing.md: best cosine per unit of compute
    x, y = mnist_batch(16, classes=2)
    after = []
    for name in ("smooth", DEFAULT_SMOOTHER):
        model = tiny_cnn()
        step = make_step_rule(name, model, config(rgs_samples=4, sigma=1e-2),
                              programs_for(model, "box"))
        step.step(TrainBatch(x=x, y=y, eps=0.05, epoch=0, step=0))
        after.append([p.detach().clone() for p in model.parameters()])
    assert all(a.equal(b) for a, b in zip(*after, strict=True))  # the very same step
    start = [p.detach() for p in tiny_cnn().parameters()]
    assert not all(a.equal(b) for a, b in zip(after[0], start, strict=True))  # and it moved
