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


def test_training_closes_its_actors_at_the_end_and_on_ctrl_c(local_ray, tmp_path) -> None:
    """The loop calls the PGPE rule's close() in a finally: after a finished run and after a
    Ctrl-C stop, the actors that evaluated the populations are gone."""
    from absdsl.training.config import resolve
    from absdsl.training.loop import Interrupted, run_training

    cfg = dict(
        dataset="mnist5k", model="cnn3", domain="box", eps=0.05, epochs=1, batch_size=16,
        lr=1e-3, warmup_epochs=0, ramp_epochs=0, train_subset=32, test_subset=16,
        eval_every=0, optimizer="pgpe", options={"popsize": 4, "num_actors": 2},
    )
    seen: list = []

    def capture(trainer, step) -> None:
        seen.append(list(trainer.rule.remote.problem.actors))

    def stop(trainer, step) -> None:
        capture(trainer, step)
        trainer.request_stop()

    run_training(resolve(cfg), tmp_path / "done", progress=False, final_eval=False,
                 on_step=capture)
    with pytest.raises(Interrupted):
        run_training(resolve(cfg), tmp_path / "stopped", progress=False, final_eval=False,
                     on_step=stop)
    assert len(seen) == 3 and all(len(actors) == 2 for actors in seen)
    for actors in (seen[0], seen[-1]):
        for actor in actors:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(actor.call.remote("__repr__", [], {}), timeout=60)
    assert ray.is_initialized()  # the cluster belongs to whoever started it (the fixture)
