"""Population evaluation across Ray actors, through evotorch's parallelised Problem.

evotorch splits a SolutionBatch into one piece per actor and gathers the fitnesses; each
actor evaluates its piece with the same vmapped, chunked call as the main process. The
minibatch travels to the actors through evotorch's sync hook before every evaluation, so
all actors score their members on the same data. Sampling and the PGPE update stay in the
main process: for the same seed and population the update equals the one-process update.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from .errors import RayUnavailableError, SmoothingConfigError
from .fitness import PopulationObjective


def ensure_ray(address: str | None = None) -> bool:
    """Import Ray and connect (or start a local cluster); fail with a clear error otherwise.

    Returns True when this call connected (so the caller should disconnect when done),
    False when Ray was already initialised by someone else.
    """
    try:
        import ray  # lazy: optional dependency ray
    except ImportError as err:
        raise RayUnavailableError(
            "num_actors is set but Ray is not installed; `pip install ray` or drop num_actors"
        ) from err
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    try:
        if address is None:
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
    except Exception as err:  # noqa: BLE001 - any failure to connect means no cluster
        where = address or "a new local cluster"
        raise RayUnavailableError(f"cannot reach Ray at {where}: {err}") from err
    return True


def _make_problem_class() -> type:
    from evotorch import Problem, SolutionBatch  # lazy: heavy dependency evotorch

    class PopulationProblem(Problem):
        """An evotorch Problem whose fitness is the objective's vmapped population loss."""

        def __init__(
            self, objective: PopulationObjective, num_actors: int, gpus_per_actor: float | None
        ) -> None:
            self.objective = objective
            dtype = objective.layout_dtype
            super().__init__(
                "min",
                solution_length=objective.layout.size,
                dtype=dtype,
                device="cpu",
                num_actors=num_actors,
                num_gpus_per_actor=gpus_per_actor,
            )

        def _evaluate_batch(self, batch: SolutionBatch) -> None:
            device = self.objective.device
            values = batch.values.to(device)
            batch.set_evals(self.objective.losses(values).to(batch.values.device))

        def _make_sync_data_for_actors(self) -> Any:
            b = self.objective.batch
            if b is None:
                return None
            return {"x": b.x.cpu(), "y": b.y.cpu(), "eps": b.eps, "kappa": b.kappa, "beta": b.beta}

        def _use_sync_data_from_main(self, received: Any) -> None:
            if received is None:
                return
            if torch.cuda.is_available() and self.objective.device.type != "cuda":
                self.objective.to(torch.device("cuda"))
            device = self.objective.device
            self.objective.set_batch(
                received["x"].to(device), received["y"].to(device),
                received["eps"], received["kappa"], received["beta"],
            )

        def _make_sync_data_for_main(self) -> Any:
            return None

    return PopulationProblem


class RayEvaluator:
    """``losses(values)`` split across ``num_actors`` Ray actors (evotorch's actor pool)."""

    def __init__(
        self,
        objective: PopulationObjective,
        num_actors: int,
        *,
        address: str | None = None,
        gpus_per_actor: float | None = None,
    ) -> None:
        if num_actors < 1:
            raise SmoothingConfigError(f"num_actors must be >= 1, got {num_actors}")
        self._owns_ray = ensure_ray(address)
        self.objective = objective
        try:
            self.problem = _make_problem_class()(objective, num_actors, gpus_per_actor)
        except BaseException:
            self._disconnect()
            raise

    def losses(self, values: torch.Tensor) -> torch.Tensor:
        from evotorch import SolutionBatch  # lazy: heavy dependency evotorch

        batch = SolutionBatch(self.problem, popsize=values.shape[0], empty=True)
        batch.set_values(values.detach().cpu())
        self.problem.evaluate(batch)
        evals = batch.evals[:, 0].as_subclass(torch.Tensor)
        return evals.clone().to(values.device)

    def close(self) -> None:
        """Stop the actors, and disconnect from Ray if :func:`ensure_ray` connected for us
        (a local cluster started here stops with it; one started by the caller stays)."""
        try:
            if self.problem.actors is not None:
                self.problem.kill_actors()
        finally:
            self._disconnect()

    def _disconnect(self) -> None:
        if self._owns_ray:
            import ray  # lazy: optional dependency ray

            self._owns_ray = False
            ray.shutdown()
