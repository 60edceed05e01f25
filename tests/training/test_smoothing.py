"""PGPE / RGS on compiled bound programs: vectorised fitness, estimates, training, state."""

from __future__ import annotations

import math
import sys
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import absdsl
from absdsl.errors import MemoryBudgetError
from absdsl.training.smoothing import (
    ParamLayout,
    PGPEOptions,
    PGPESearch,
    PGPEStep,
    PopulationObjective,
    RayUnavailableError,
    RGSOptions,
    RGSStep,
    SmoothingConfigError,
    smoothed_gradient,
)
from absdsl.training.smoothing.distributed import ensure_ray
from absdsl.training.smoothing.fitness import Plan, PlanTuner
from absdsl.training.steprule import TrainBatch, make_step_rule


def tiny_cnn(seed: int = 0) -> nn.Module:
    """A very small CNN for 1x28x28 inputs (MNIST shapes, so the mnist5k config fits)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 7, stride=7), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 10)
    ).eval()


def mnist_batch(
    n: int = 32, offset: int = 0, classes: int = 10
) -> tuple[torch.Tensor, torch.Tensor]:
    """n training digits from the first ``classes`` classes (the split is class-interleaved)."""
    from absdsl.training.data import load_dataset

    _, train, _ = load_dataset("mnist5k", None, False)
    keep = torch.nonzero(train.labels < classes).squeeze(1)[offset:offset + n]
    x, y = train.images[keep], train.labels[keep]
    return x.float() / 255.0 if x.dtype == torch.uint8 else x, y


def programs_for(model: nn.Module, *domains: str) -> dict:
    return {d: absdsl.compile(model, domain=d) for d in domains}


def config(**options) -> SimpleNamespace:
    return SimpleNamespace(
        options=options, lr=1e-2, seed=0, domain=options.pop("domain", "box"),
        dataset="mnist5k", lr_milestones=None, lr_decay=None, grad_clip=None,
        batch_size=32, train_eps=0.05, eps=0.05,
    )


# -- vectorised population fitness ------------------------------------------------------------
@pytest.mark.parametrize("domain", ["box", "deeppoly"])
def test_vmapped_population_equals_member_by_member(domain: str) -> None:
    model = tiny_cnn()
    objective = PopulationObjective(model, programs_for(model, domain), domain, 10, chunk_size=3)
    x, y = mnist_batch(16)
    objective.set_batch(x, y, eps=0.05)
    search = PGPESearch(objective.layout.flatten(model), PGPEOptions(popsize=8, sigma_init=0.05))
    values = search.ask()
    batched = objective.losses(values)  # 3 vmapped chunks: 3 + 3 + 2 members
    one_by_one = objective.losses_one_by_one(values)
    assert batched.shape == (8,)
    assert torch.allclose(batched, one_by_one, rtol=1e-5, atol=1e-5)
    assert batched.std() > 0  # the members really differ
    # the loss of the unperturbed centre is the GRAD objective at the model's weights
    centre = objective.losses(objective.layout.flatten(model).unsqueeze(0))
    from absdsl.training.objective import certified_loss

    expected = certified_loss(objective.programs[domain], None, x, y, 0.05, num_classes=10)
    assert torch.allclose(centre[0], expected, rtol=1e-5, atol=1e-6)


def test_every_population_plan_gives_the_member_by_member_losses() -> None:
    model = tiny_cnn()
    progs = programs_for(model, "box")
    x, y = mnist_batch(16)
    values = PGPESearch(ParamLayout.of(model).flatten(model),
                        PGPEOptions(popsize=12, sigma_init=0.05)).ask()
    reference = None
    for mode in ("loop", "vmap", "auto"):
        objective = PopulationObjective(model, progs, "box", 10, mode=mode)
        objective.set_batch(x, y, 0.05)
        if reference is None:
            reference = objective.losses_one_by_one(values)
        for _ in range(4):  # auto: populations evaluated while its plans are being timed
            got = objective.losses(values)
            if mode == "loop":
                assert torch.equal(got, reference)  # the same calls: bit for bit
            else:
                torch.testing.assert_close(got, reference, rtol=1e-5, atol=1e-6)
    with pytest.raises(SmoothingConfigError, match="population evaluation mode"):
        PopulationObjective(model, progs, "box", 10, mode="parallel")
    with pytest.raises(SmoothingConfigError, match="population_eval"):
        PGPEStep(model, config(population_eval="fast"), progs)


def test_plan_tuner_keeps_the_fastest_minimum_and_survives_a_checkpoint(tmp_path) -> None:
    loop, v2, v4, v8 = Plan("loop"), Plan("vmap", 2), Plan("vmap", 4), Plan("vmap", 8)
    tuner = PlanTuner([loop, v2, v4, v8], trials=2)
    for plan, seconds in [(loop, 1.0), (v2, 0.9), (v4, 0.35), (v8, 0.3), (loop, 0.2),
                          (v2, 0.3)]:
        tuner.record(plan, seconds, 1)
        assert tuner.chosen is None  # v4 and v8 have one timing each
    tuner.record(v8, 8.0, 8)  # 1 s per member this time; its fastest (0.3) still counts
    assert tuner.pending() == [v4]
    tuner.record(v4, 8.0, 4)  # a slow outlier (a busy machine) does not hide its best timing
    assert tuner.chosen == loop  # min 0.2 beats 0.3 and 0.35
    slow = PlanTuner([loop, v2], trials=3)
    slow.record(loop, 0.1, 1)
    slow.record(v2, 0.5, 1)  # 5x the loop: dropped after one timing
    assert slow.pending() == [loop]
    again = PlanTuner.from_state(tuner.state_dict())
    assert again.chosen == loop and again.times == tuner.times

    # an auto objective settles after some populations; its plan comes back from a
    # weights-only checkpoint, and with it the very same losses
    model = tiny_cnn()
    progs = programs_for(model, "box")
    x, y = mnist_batch(16)
    values = PGPESearch(ParamLayout.of(model).flatten(model),
                        PGPEOptions(popsize=8, sigma_init=0.05)).ask()
    objective = PopulationObjective(model, progs, "box", 10)
    objective.set_batch(x, y, 0.05)
    assert objective.plan("loss", 8) is None
    for _ in range(20):
        objective.losses(values)
    chosen = objective.plan("loss", 8)
    assert chosen is not None and chosen.label in {"loop", "vmap:2", "vmap:4", "vmap:8"}
    torch.save(objective.plan_state(), tmp_path / "plan.pt")
    restored = PopulationObjective(model, progs, "box", 10)
    restored.load_plan_state(torch.load(tmp_path / "plan.pt", weights_only=True))
    restored.set_batch(x, y, 0.05)
    assert restored.plan("loss", 8) == chosen
    assert torch.equal(restored.losses(values), objective.losses(values))


@pytest.mark.parametrize("domain", ["box", "deeppoly"])
def test_memory_probe_on_a_few_samples_covers_the_full_batch(domain: str) -> None:
    model = tiny_cnn()
    objective = PopulationObjective(model, programs_for(model, domain), domain, 10)
    x, y = mnist_batch(48)
    objective.set_batch(x, y, 0.05)
    estimates = objective.probe_peaks()  # from 4 and 8 samples, extrapolated to 48
    exact = objective._probe_peaks("loss", objective.batch)  # 1 and 2 members, 48 samples
    for peak, estimate in zip(exact, estimates, strict=True):
        assert peak <= estimate <= 1.25 * peak, (exact, estimates)


def _probed_box_problem():
    """A tiny Box problem and its probed (fixed, per-member) peak bytes."""
    model = tiny_cnn()
    progs = programs_for(model, "box")
    x, y = mnist_batch(16)
    probe = PopulationObjective(model, progs, "box", 10)
    probe.set_batch(x, y, 0.05)
    fixed, per_member = probe.probe()
    return model, progs, x, y, fixed, per_member


def test_memory_budget_sets_chunks_and_rejects_less_than_one_member() -> None:
    model, progs, x, y, fixed, per_member = _probed_box_problem()
    assert per_member > 0
    roomy = PopulationObjective(model, progs, "box", 10, memory_budget=fixed + 5 * per_member)
    roomy.set_batch(x, y, 0.05)
    assert roomy.chunk_size() == 5
    tight = PopulationObjective(model, progs, "box", 10, memory_budget=max(fixed // 2, 1))
    tight.set_batch(x, y, 0.05)
    with pytest.raises(MemoryBudgetError, match="below one population member"):
        tight.losses(torch.zeros(2, tight.layout.size))


def test_automatic_cpu_budget_takes_at_least_one_member(monkeypatch) -> None:
    """Without a budget, a member larger than the CPU default runs one member per call
    (what the CPU prefers anyway) instead of failing; an explicit budget still fails."""
    from absdsl.training.smoothing import fitness

    model, progs, x, y, fixed, _ = _probed_box_problem()
    monkeypatch.setattr(fitness, "CPU_DEFAULT_BUDGET", max(fixed // 2, 1))
    auto = PopulationObjective(model, progs, "box", 10)
    auto.set_batch(x, y, 0.05)
    assert auto.chunk_size() == 1
    losses = auto.losses(torch.zeros(2, auto.layout.size))
    assert losses.shape == (2,) and bool(torch.isfinite(losses).all())


# -- the PGPE estimate on a smooth loss --------------------------------------------------------
def _smooth_problem(dim: int = 24, seed: int = 1):
    """L(t) = sum_j c_j sin(a_j . t) + |t|^2 / 2, whose Gaussian smoothing is closed-form:
    L_s(t) = sum_j c_j sin(a_j . t) exp(-s^2 |a_j|^2 / 2) + (|t|^2 + d s^2) / 2."""
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(6, dim, generator=g, dtype=torch.float64)
    c = torch.randn(6, generator=g, dtype=torch.float64)
    theta = torch.randn(dim, generator=g, dtype=torch.float64)

    def loss(t: torch.Tensor) -> torch.Tensor:
        return (c * torch.sin(t @ a.T)).sum(-1) + 0.5 * (t * t).sum(-1)

    def smoothed_grad(t: torch.Tensor, s: float) -> torch.Tensor:
        damp = torch.exp(-0.5 * s * s * (a * a).sum(-1))
        return (c * damp * torch.cos(a @ t)) @ a + t

    return loss, smoothed_grad, theta


def _pgpe_direction(loss, theta: torch.Tensor, sigma: float, popsize: int, seed: int):
    """The centre step of one plain-gradient PGPE update (raw fitness, lr 1, sigma fixed)."""
    options = PGPEOptions(
        popsize=popsize, sigma_init=sigma, center_lr=1.0, sigma_lr=0.0,
        optimizer="sgd", ranking="raw", seed=seed,
    )
    search = PGPESearch(theta, options)
    values = search.ask()
    search.tell(values, loss(values))
    return search.center - theta


def test_pgpe_estimate_aligns_with_smoothed_gradient_as_popsize_grows() -> None:
    loss, smoothed_grad, theta = _smooth_problem()
    sigma = 0.8  # large: the smoothed gradient differs clearly from the plain one
    true = smoothed_grad(theta, sigma)
    plain = smoothed_grad(theta, 0.0)
    assert torch.cosine_similarity(true, plain, dim=0) < 0.95

    def mean_cos(popsize: int) -> float:
        cos = [
            torch.cosine_similarity(-_pgpe_direction(loss, theta, sigma, popsize, s), true, dim=0)
            for s in range(8)
        ]
        return float(torch.stack(cos).mean())

    sizes = [8, 64, 512, 8192]
    cos = [mean_cos(p) for p in sizes]
    assert all(b > a for a, b in zip(cos[:-1], cos[1:], strict=True)), cos
    assert cos[-1] > 0.97, cos
    # it is the smoothed gradient that is estimated, not the plain one
    step = -_pgpe_direction(loss, theta, sigma, 8192, 0)
    assert torch.cosine_similarity(step, true, dim=0) > torch.cosine_similarity(step, plain, dim=0)


def test_rgs_estimate_matches_smoothed_gradient() -> None:
    loss, smoothed_grad, theta = _smooth_problem()
    sigma = 0.8

    class Smooth:
        def gradients(self, values: torch.Tensor):
            g, v = torch.func.vmap(torch.func.grad_and_value(loss))(values)
            return v, g

    g = torch.Generator().manual_seed(0)
    _, few = smoothed_gradient(Smooth(), theta, RGSOptions(samples=8, sigma=sigma), g)
    _, many = smoothed_gradient(Smooth(), theta, RGSOptions(samples=8192, sigma=sigma), g)
    true = smoothed_grad(theta, sigma)
    cos_few = torch.cosine_similarity(few, true, dim=0)
    cos_many = torch.cosine_similarity(many, true, dim=0)
    assert cos_many > 0.99 and cos_many > cos_few
    assert torch.allclose(many, true, rtol=0.1, atol=0.05 * float(true.norm()))


# -- training ----------------------------------------------------------------------------------
def _robust_loss_at_centre(step, x, y, eps) -> float:
    objective = step.objective
    objective.set_batch(x, y, eps)
    return float(objective.losses(objective.layout.flatten(step.model).unsqueeze(0))[0])


@pytest.mark.parametrize("rule", ["pgpe", "rgs"])
def test_smoothing_lowers_the_robust_loss_on_a_tiny_problem(rule: str) -> None:
    model = tiny_cnn()
    cfg = config(domain="deeppoly", popsize=16, sigma=0.05, sigma_lr=0.0, rgs_samples=4)
    cfg.lr, cfg.batch_size = 0.05, 16
    step = make_step_rule(rule, model, cfg, programs_for(model, "deeppoly"))
    x, y = mnist_batch(32, classes=2)  # tiny: zeros against ones
    before = _robust_loss_at_centre(step, x, y, 0.05)
    for i in range(20):
        xb, yb = x[(i % 2) * 16:(i % 2 + 1) * 16], y[(i % 2) * 16:(i % 2 + 1) * 16]
        metrics = step.step(TrainBatch(x=xb, y=yb, eps=0.05, epoch=0, step=i))
        assert math.isfinite(metrics["loss"])
    after = _robust_loss_at_centre(step, x, y, 0.05)
    assert after < 0.7 * before, (before, after)


def test_pgpe_state_resumes_exactly_through_weights_only_checkpoint(tmp_path) -> None:
    x, y = mnist_batch(32)
    batches = [TrainBatch(x=x, y=y, eps=0.05, epoch=0, step=i) for i in range(5)]

    def fresh() -> PGPEStep:
        model = tiny_cnn()
        cfg = config(popsize=8, sigma=0.01, center_optimizer="clipup")
        return PGPEStep(model, cfg, programs_for(model, "box"))

    straight = fresh()
    for b in batches:
        straight.step(b)

    first = fresh()
    for b in batches[:3]:
        first.step(b)
    first.on_epoch_end(0)
    first.search.set_lr_scale(1.0)
    path = tmp_path / "rule.pt"
    torch.save({"model": first.model.state_dict(), "rule": first.state_dict()}, path)
    saved = torch.load(path, weights_only=True)
    assert saved["rule"]["pgpe"]["sigma"].shape == (first.layout.size,)

    second = fresh()
    second.model.load_state_dict(saved["model"])
    second.load_state_dict(saved["rule"])
    for b in batches[3:]:
        second.step(b)
    assert torch.equal(second.search.center, straight.search.center)
    assert torch.equal(second.search.sigma, straight.search.sigma)
    assert torch.equal(second.layout.flatten(second.model), straight.search.center)


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"popsize": 7}, "even"),
        ({"sigma": 0.0}, "sigma must be > 0"),
        ({"sigma": -1e-3}, "sigma must be > 0"),
        ({"center_optimizer": "lbfgs"}, "unknown PGPE optimizer"),
        ({"popsize_typo": 4}, "unknown PGPE/RGS option"),
        ({"memory_budget_mib": 1e-4}, "below one population member"),
    ],
)
def test_bad_options_fail_before_any_work(options: dict, message: str) -> None:
    model = tiny_cnn()
    with pytest.raises((SmoothingConfigError, MemoryBudgetError), match=message):
        PGPEStep(model, config(**options), programs_for(model, "box"))


def test_rgs_rejects_odd_symmetric_samples() -> None:
    model = tiny_cnn()
    with pytest.raises(SmoothingConfigError, match="even"):
        RGSStep(model, config(rgs_samples=3), programs_for(model, "box"))


def test_init_checkpoint_of_another_architecture_is_rejected(tmp_path) -> None:
    other = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    path = tmp_path / "other.pt"
    torch.save({"model": other.state_dict()}, path)
    model = tiny_cnn()
    with pytest.raises(SmoothingConfigError, match="different architecture"):
        PGPEStep(model, config(init_checkpoint=str(path)), programs_for(model, "box"))
    good = tmp_path / "good.pt"
    source = tiny_cnn(seed=5)
    torch.save({"model": source.state_dict()}, good)
    step = PGPEStep(model, config(init_checkpoint=str(good)), programs_for(model, "box"))
    assert torch.equal(step.search.center, step.layout.flatten(source))


def test_missing_ray_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(RayUnavailableError, match="not installed"):
        ensure_ray()
    model = tiny_cnn()
    with pytest.raises(RayUnavailableError):
        PGPEStep(model, config(num_actors=2), programs_for(model, "box"))


def test_a_diverged_member_is_ranked_worst_not_propagated() -> None:
    centre = torch.zeros(6)
    search = PGPESearch(centre, PGPEOptions(popsize=8, sigma_init=0.1, center_lr=0.1, seed=2))
    values = search.ask()
    losses = (values**2).sum(1)
    losses[3] = float("nan")
    losses[4] = float("inf")
    search.tell(values, losses)
    assert torch.isfinite(search.center).all() and torch.isfinite(search.sigma).all()
    assert not torch.equal(search.center, centre)
