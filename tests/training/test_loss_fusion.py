"""Loss fusion: the fused bound upper-bounds the worst-case cross-entropy; its plumbing."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import absdsl
from absdsl.cli import main
from absdsl.training.config import ConfigError, resolve
from absdsl.training.loss_fusion import exp_chords, fused_ce_upper, fused_robust_loss
from absdsl.training.objective import batch_loss, certified_loss, input_box, margin_lower
from absdsl.training.steprule import TrainBatch

N = 5


def _net(seed: int, conv: bool) -> nn.Module:
    torch.manual_seed(seed)
    if conv:
        layers: list[nn.Module] = [nn.Conv2d(1, 3, 3, stride=2), nn.ReLU(), nn.Flatten(),
                                   nn.Linear(3 * 3 * 3, 12), nn.ReLU(), nn.Linear(12, N)]
    else:
        layers = [nn.Flatten(), nn.Linear(49, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                  nn.Linear(12, N)]
    return nn.Sequential(*layers).double().eval()


def _programs(model: nn.Module) -> dict:
    return {d: absdsl.compile(model, domain=d) for d in ("box", "deeppoly", "crown-ibp")}


def _sampled_ce(model: nn.Module, lo: torch.Tensor, hi: torch.Tensor, y: torch.Tensor,
                draws: int = 600) -> torch.Tensor:
    """Per sample, the largest CE over random points and random vertices of the box."""
    best = torch.full((lo.shape[0],), -float("inf"), dtype=lo.dtype)
    with torch.no_grad():
        for vertex in (False, True):
            u = torch.rand(draws, *lo.shape, dtype=lo.dtype)
            if vertex:
                u = u.round()
            pts = lo + u * (hi - lo)  # [draws, B, ...]
            logits = model(pts.reshape(-1, *lo.shape[1:])).reshape(draws, lo.shape[0], -1)
            ce = F.cross_entropy(logits.permute(1, 2, 0), y.unsqueeze(1).expand(-1, draws),
                                 reduction="none")
            best = torch.maximum(best, ce.max(1).values)
    return best


@pytest.mark.parametrize("conv", [False, True])
@pytest.mark.parametrize("domain", ["deeppoly", "crown-ibp"])
@pytest.mark.parametrize("eps", [0.0, 1e-3, 0.02, 0.1])
def test_fused_bound_is_above_every_sampled_cross_entropy(conv, domain, eps):
    model = _net(int(eps * 1000) + conv, conv)
    progs = _programs(model)
    torch.manual_seed(1)
    x = torch.rand(6, 1, 7, 7, dtype=torch.float64)
    y = torch.arange(6) % N
    lo, hi = input_box(x, eps)
    fused, _ = fused_ce_upper(progs[domain], progs["box"], None, lo, hi, y, N)
    sampled = _sampled_ce(model, lo, hi, y)
    assert (fused >= sampled - 1e-9).all(), (fused - sampled).min()
    # the margin form is an upper bound too; the fused one never exceeds Box's own worst case
    margins = margin_lower(progs[domain], None, lo, hi, y, N)
    margin_ce = F.cross_entropy(-margins.scatter(1, y.unsqueeze(1), 0.0), y, reduction="none")
    assert (margin_ce >= sampled - 1e-9).all()
    box = margin_lower(progs["box"], None, lo, hi, y, N)
    box_ce = F.cross_entropy(-box.scatter(1, y.unsqueeze(1), 0.0), y, reduction="none")
    assert (fused <= box_ce + 1e-9).all()
    if eps == 0.0:  # a degenerate box: the bound is the natural loss
        natural = F.cross_entropy(model(x), y, reduction="none")
        assert torch.allclose(fused, natural, atol=1e-5)


def test_fused_bound_holds_on_large_logits():
    """Logit gaps in the hundreds: the shift keeps exp finite and the bound sound."""
    model = _net(3, conv=False)
    with torch.no_grad():
        model[-1].weight.mul_(300.0)
    progs = _programs(model)
    x = torch.rand(4, 1, 7, 7, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3])
    lo, hi = input_box(x, 0.05)
    fused, _ = fused_ce_upper(progs["crown-ibp"], progs["box"], None, lo, hi, y, N)
    assert torch.isfinite(fused).all()
    assert (fused >= _sampled_ce(model, lo, hi, y) - 1e-9).all()


def test_exp_chords_lie_above_exp_on_their_interval():
    """In float64 (the tested float policy), including narrow and empty intervals."""
    torch.manual_seed(0)
    lo = torch.cat([torch.randn(500, dtype=torch.float64) * 20 - 10,
                    torch.zeros(3, dtype=torch.float64)])
    widths = [torch.rand(300, dtype=torch.float64) * 30,
              torch.rand(200, dtype=torch.float64) * 1e-5, torch.zeros(3, dtype=torch.float64)]
    hi = lo + torch.cat(widths)
    a, b = exp_chords(lo, hi)
    frac = torch.linspace(0, 1, 101, dtype=torch.float64).unsqueeze(0)
    t = lo.unsqueeze(1) + frac * (hi - lo).unsqueeze(1)
    assert (a >= 0).all()
    assert (a.unsqueeze(1) * t + b.unsqueeze(1) >= torch.exp(t)).all()


def test_fused_loss_is_differentiable_and_cheaper_in_rows():
    model = _net(5, conv=True).float()
    progs = {d: absdsl.compile(model, domain=d) for d in ("box", "crown-ibp")}
    x, y = torch.rand(4, 1, 7, 7), torch.tensor([0, 1, 2, 3])
    seen: list[int] = []
    call = progs["crown-ibp"].__class__.__call__

    def spy(self, lo, hi, spec=None, **kw):
        if self is progs["crown-ibp"]:
            seen.append(spec.shape[1])
        return call(self, lo, hi, spec, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(progs["crown-ibp"].__class__, "__call__", spy)
        lo, hi = input_box(x, 0.05)
        loss, certified = fused_robust_loss(progs, "crown-ibp", None, lo, hi, y, N)
    assert seen == [1]  # one back-substituted row per sample
    assert certified.shape == (4,)
    loss.backward()
    assert model[0].weight.grad is not None and model[0].weight.grad.abs().sum() > 0


def test_beta_mixes_box_and_fused_losses():
    model = _net(6, conv=False)
    progs = _programs(model)
    x, y = torch.rand(4, 1, 7, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    lo, hi = input_box(x, 0.03)
    full, _ = fused_robust_loss(progs, "crown-ibp", None, lo, hi, y, N, beta=1.0)
    box, _ = fused_robust_loss(progs, "crown-ibp", None, lo, hi, y, N, beta=0.0)
    half, _ = fused_robust_loss(progs, "crown-ibp", None, lo, hi, y, N, beta=0.5)
    m_box = margin_lower(progs["box"], None, lo, hi, y, N)
    assert torch.allclose(box, F.cross_entropy(-m_box.scatter(1, y.unsqueeze(1), 0.0), y))
    assert torch.allclose(half, 0.5 * full + 0.5 * box)


def test_certified_loss_and_functional_params_agree_with_fusion():
    model = _net(7, conv=True)
    progs = _programs(model)
    x, y = torch.rand(4, 1, 7, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    kw = dict(num_classes=N, programs=progs, domain="deeppoly", loss_fusion=True, model=model)
    own = certified_loss(progs["deeppoly"], None, x, y, 0.02, kappa=0.2, **kw)
    params = {k: v.detach().clone() for k, v in model.named_parameters()}
    given = certified_loss(progs["deeppoly"], params, x, y, 0.02, kappa=0.2, **kw)
    assert torch.allclose(own, given)
    plain = certified_loss(progs["deeppoly"], None, x, y, 0.02, kappa=0.2,
                           **{**kw, "loss_fusion": False})
    assert not torch.allclose(own, plain)  # the option changes the computed loss


@pytest.mark.parametrize("method", ["certified", "sabr", "mtl-ibp"])
def test_batch_loss_uses_fusion_for_every_robust_method(method):
    model = _net(8, conv=True)
    progs = _programs(model)
    cfg = SimpleNamespace(method=method, domain="crown-ibp", sabr_lambda=0.4, mtl_alpha=0.5,
                          pgd_steps=2, pgd_restarts=1, loss_fusion=True)
    batch = TrainBatch(x=torch.rand(4, 1, 7, 7, dtype=torch.float64),
                       y=torch.tensor([0, 1, 2, 3]), eps=0.05, epoch=0, step=0)
    fused, metrics = batch_loss(model, progs, cfg, batch, num_classes=N)
    cfg.loss_fusion = False
    plain, _ = batch_loss(model, progs, cfg, batch, num_classes=N)
    assert torch.isfinite(fused) and not torch.allclose(fused, plain)
    if method == "certified":
        assert 0.0 <= metrics["train_cert_acc"] <= 1.0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(domain="box"), "domain 'box' cannot be fused"),
        (dict(domain="zonotope"), "domain 'zonotope' cannot be fused"),
        (dict(domain="crown", method="pgd"), "method 'pgd' has no robust cross-entropy"),
        (dict(domain="deeppoly", method="natural"), "method 'natural'"),
    ],
)
def test_config_refuses_what_cannot_be_fused(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        resolve({"loss_fusion": True, **overrides})
    resolve({"loss_fusion": False, **overrides})  # without the option the config is fine


def test_config_accepts_fusable_domains_and_aliases():
    assert resolve({"loss_fusion": True, "domain": "crown"}).loss_fusion is True
    assert resolve({"loss_fusion": True, "domain": "crown-ibp", "method": "sabr"}).loss_fusion


def test_cli_loss_fusion_with_box_exits_2_before_training(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["train", "--out", str(out), "--domain", "box", "--loss-fusion",
                 "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "cannot be fused" in err
    assert not out.exists()  # refused before the run folder was made


def test_smoothing_fitness_fuses_and_vmaps():
    from absdsl.training.smoothing.fitness import PopulationObjective

    model = _net(9, conv=True)
    progs = _programs(model)
    x, y = torch.rand(4, 1, 7, 7, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
    fused = PopulationObjective(model, progs, "crown-ibp", N, loss_fusion=True, mode="vmap")
    plain = PopulationObjective(model, progs, "crown-ibp", N, mode="vmap")
    for objective in (fused, plain):
        objective.set_batch(x, y, 0.05)
    flat = fused.layout.flatten(model)
    population = flat.unsqueeze(0) + 0.01 * torch.randn(3, flat.numel(), dtype=flat.dtype)
    batched = fused.losses(population)
    one_by_one = torch.stack([fused.flat_loss(p) for p in population])
    assert torch.allclose(batched, one_by_one, atol=1e-8)
    expected = certified_loss(progs["crown-ibp"], None, x, y, 0.05, num_classes=N,
                              programs=progs, domain="crown-ibp", loss_fusion=True)
    assert torch.allclose(fused.flat_loss(flat), expected)
    assert not torch.allclose(plain.flat_loss(flat), expected)
