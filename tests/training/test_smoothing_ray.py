"""Scale-out: population fitness on 2 local Ray actors gives the same PGPE update as 1."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import absdsl
from absdsl.training.smoothing import PGPEOptions, PGPESearch, PopulationObjective
from absdsl.training.smoothing.distributed import RayEvaluator

ray = pytest.importorskip("ray", reason="the scale-out test needs Ray (an optional dependency)")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_two_actors_give_the_same_update_as_one(local_ray) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 10)).eval()
    programs = {"deeppoly": absdsl.compile(model, domain="deeppoly")}
    objective = PopulationObjective(model, programs, "deeppoly", 10)
    x = torch.rand(24, 1, 4, 4)
    y = torch.arange(24) % 10
    objective.set_batch(x, y, 0.03)
    options = PGPEOptions(popsize=16, sigma_init=0.02, center_lr=0.01, seed=3)
    centre = objective.layout.flatten(model)

    def one_update(evaluate) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        search = PGPESearch(centre, options)
        values = search.ask()
        losses = evaluate(values)
        search.tell(values, losses)
        return losses, search.center, search.sigma

    local = one_update(objective.losses)
    results = {}
    for actors in (1, 2):
        evaluator = RayEvaluator(objective, actors)
        try:
            results[actors] = one_update(evaluator.losses)
        finally:
            evaluator.close()
    for actors in (1, 2):
        for got, want in zip(results[actors], local, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # and the minibatch did reach the actors: a new one changes the losses there too
    objective.set_batch(torch.rand(24, 1, 4, 4), y, 0.03)
    evaluator = RayEvaluator(objective, 2)
    try:
        values = PGPESearch(centre, options).ask()
        torch.testing.assert_close(evaluator.losses(values), objective.losses(values))
    finally:
        evaluator.close()
