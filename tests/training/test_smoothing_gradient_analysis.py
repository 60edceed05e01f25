"""``absdsl analyze smoothing-gradient``: equal-cost budgets and bad input before any work."""

from __future__ import annotations

import pytest

from absdsl.training.analysis.smoothing_gradient import check_options, samples_for
from absdsl.training.smoothing.errors import SmoothingConfigError


def test_equal_budget_splits_loss_and_gradient_evaluations() -> None:
    got = samples_for(("pgpe", "rgs", "antithetic-cv"), 64, 4.0)
    assert got == {"pgpe": 64, "rgs": 16, "antithetic-cv": 60}
    assert samples_for(("rgs",), 64, 3.4) == {"rgs": 18}  # 64 / 3.4 = 18.8, even floor


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"sigmas": [0.0]}, "sigma must be a finite number > 0"),
    ({"estimators": ["nes"]}, "allowed: pgpe, rgs, antithetic-cv"),
    ({"reference_samples": 4097}, "multiple of 4"),
    ({"repeats": 1}, "repeats must be"),
    ({"grad_cost": -1.0}, "grad cost must be"),
    ({"budget": 6.0, "grad_cost": 5.0}, "too small for rgs"),
])
def test_bad_options_fail_with_the_allowed_values(kwargs: dict, match: str) -> None:
    options = {"sigmas": [1e-3], "estimators": ["pgpe", "rgs", "antithetic-cv"],
               "budget": 64.0, "repeats": 4, "reference_samples": 4096, "grad_cost": 2.0}
    options.update(kwargs)
    with pytest.raises(SmoothingConfigError, match=match):
        check_options(**options)


def test_cli_bad_sigma_exits_2_before_loading_the_run(tmp_path, capsys) -> None:
    from absdsl.cli import main

    code = main(["analyze", "smoothing-gradient", str(tmp_path / "missing-run"),
                 "--sigmas", "1e-3,-1"])
    assert code == 2
    assert "sigma must be a finite number > 0" in capsys.readouterr().err


def test_cosine_ceiling_of_a_noisy_reference() -> None:
    from absdsl.training.analysis.smoothing_gradient import cosine_ceiling

    # truth t, halves t + n1, t + n2 with |n_i|^2 = 3 |t|^2: h = 1/4; the mean has noise
    # |n|^2 = 1.5 |t|^2, so cos(t, mean) = 1 / sqrt(2.5)
    assert abs(cosine_ceiling(0.25) - 1 / 2.5**0.5) < 1e-12
    assert cosine_ceiling(1.0) == 1.0
    assert cosine_ceiling(-0.1) == 0.0
