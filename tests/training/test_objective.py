"""The robust objective: functional and in-place evaluation agree; CROWN-IBP mixing."""

from __future__ import annotations

import pytest
import torch

import absdsl
from absdsl.training.data import dataset_info
from absdsl.training.models import build_model
from absdsl.training.objective import certified_loss, input_box, margin_lower, mixed_margin


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_model("cnn3", dataset_info("mnist5k")).eval()
    programs = {d: absdsl.compile(model, domain=d) for d in ("box", "crown-ibp")}
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    return model, programs, x, y


def test_functional_parameters_give_the_same_loss(setup):
    model, programs, x, y = setup
    own = certified_loss(programs["box"], None, x, y, 0.05, kappa=0.3, model=model)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    given = certified_loss(programs["box"], params, x, y, 0.05, kappa=0.3, model=model)
    assert torch.allclose(own, given, atol=1e-6)
    params["3.weight"] = params["3.weight"] * 2  # a perturbed member gives another loss
    other = certified_loss(programs["box"], params, x, y, 0.05, kappa=0.3, model=model)
    assert not torch.allclose(own, other)


def test_loss_is_differentiable_and_upper_bounds_natural_loss(setup):
    model, programs, x, y = setup
    loss = certified_loss(programs["box"], None, x, y, 0.05)
    loss.backward()
    assert model[1].weight.grad is not None and model[1].weight.grad.abs().sum() > 0
    natural = torch.nn.functional.cross_entropy(model(x), y)
    assert float(loss.detach()) >= float(natural.detach()) - 1e-6
    model.zero_grad()


def test_crown_ibp_mixing_endpoints(setup):
    model, programs, x, y = setup
    lo, hi = input_box(x, 0.05)
    m_box = margin_lower(programs["box"], None, lo, hi, y, 10)
    m_cibp = margin_lower(programs["crown-ibp"], None, lo, hi, y, 10)
    assert torch.allclose(mixed_margin(programs, "crown-ibp", None, lo, hi, y, 10, 0.0), m_box)
    assert torch.allclose(mixed_margin(programs, "crown-ibp", None, lo, hi, y, 10, 1.0), m_cibp)
    half = mixed_margin(programs, "crown-ibp", None, lo, hi, y, 10, 0.5)
    assert torch.allclose(half, (m_box + m_cibp) / 2, atol=1e-5)
