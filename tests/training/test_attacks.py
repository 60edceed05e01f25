"""PGD: stays in the ball and the pixel range, and finds the worst point of a linear model."""

from __future__ import annotations

import torch
from torch import nn

from absdsl.training.attacks import PGDConfig, adversarial_correct, margin_loss, pgd_attack


def _linear(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 3))


def test_pgd_respects_ball_and_clip():
    model = _linear()
    x = torch.rand(8, 1, 4, 4)
    adv = pgd_attack(model, x, torch.zeros(8, dtype=torch.long), 0.3, PGDConfig(steps=5))
    assert (adv - x).abs().max() <= 0.3 + 1e-6
    assert adv.min() >= 0 and adv.max() <= 1


def test_pgd_reaches_the_optimal_corner_of_a_two_class_linear_model():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    x = torch.full((4, 1, 4, 4), 0.5)
    y = torch.zeros(4, dtype=torch.long)
    eps = 0.1
    adv = pgd_attack(model, x, y, eps, PGDConfig(steps=10, restarts=2))
    w = model[1].weight
    direction = torch.sign(w[1] - w[0]).view(1, 1, 4, 4)  # increases f_1 - f_0
    best = margin_loss(model(x + eps * direction), y)
    assert torch.allclose(margin_loss(model(adv), y), best, atol=1e-5)


def test_adversarial_correct_is_never_more_than_natural():
    model = _linear(2)
    x = torch.rand(32, 1, 4, 4)
    y = model(x).argmax(1)
    y[:5] = (y[:5] + 1) % 3  # five wrong labels
    robust, _ = adversarial_correct(model, x, y, 0.05)
    assert not robust[:5].any()
    robust0, _ = adversarial_correct(model, x, y, 0.0)
    assert robust0[5:].all()
