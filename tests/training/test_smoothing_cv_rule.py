"""``--optimizer antithetic-cv``: the control-variate estimator as a training step rule."""

from __future__ import annotations

import math

import pytest

from absdsl.training.smoothing import AntitheticCVStep, SmoothingConfigError
from absdsl.training.steprule import TrainBatch, make_step_rule
from tests.training.test_smoothing import (
    _robust_loss_at_centre,
    config,
    mnist_batch,
    programs_for,
    tiny_cnn,
)


def test_antithetic_cv_lowers_the_robust_loss_on_a_tiny_problem() -> None:
    model = tiny_cnn()
    cfg = config(domain="deeppoly", sigma=0.05, rgs_samples=16)
    cfg.lr, cfg.batch_size = 0.05, 16
    step = make_step_rule("antithetic-cv", model, cfg, programs_for(model, "deeppoly"))
    assert isinstance(step, AntitheticCVStep)
    x, y = mnist_batch(32, classes=2)
    before = _robust_loss_at_centre(step, x, y, 0.05)
    for i in range(20):
        xb, yb = x[(i % 2) * 16:(i % 2 + 1) * 16], y[(i % 2) * 16:(i % 2 + 1) * 16]
        metrics = step.step(TrainBatch(x=xb, y=yb, eps=0.05, epoch=0, step=i))
        assert math.isfinite(metrics["loss"])
    after = _robust_loss_at_centre(step, x, y, 0.05)
    assert after < 0.7 * before, (before, after)


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
