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
    for actors in (1, 2):
        evaluator = RayEvaluator(objective, actors)
        try:
            for got, want in zip(one_update(evaluator.losses), local, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            if actors == 2:
                # a new minibatch reaches the actors too (sent before every evaluation)
                objective.set_batch(torch.rand(24, 1, 4, 4), y, 0.03)
                values = PGPESearch(centre, options).ask()
                fresh = evaluator.losses(values)
                torch.testing.assert_close(fresh, objective.losses(values))
                assert not torch.allclose(fresh, local[0])
        finally:
            evaluator.close()
