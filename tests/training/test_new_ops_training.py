"""GRAD training on networks with max pooling and with LayerNorm in a residual block: one
step per domain changes the weights and gives a finite robust loss; ``--complete`` refuses
a network whose ops are not piecewise linear, naming the op."""

from __future__ import annotations

import json

import pytest
import torch

from absdsl.training.loop import run_training


@pytest.mark.parametrize("model", ["op_models:maxpool_cnn", "op_models:layernorm_resnet"])
@pytest.mark.parametrize("domain", ["box", "crown-ibp"])
def test_one_grad_step_trains(tiny, tmp_path, model, domain):
    cfg = tiny(model=model, domain=domain, epochs=1, train_subset=16, batch_size=16,
               ramp_epochs=0, init="default")
    run_training(cfg, tmp_path / "r", progress=False, final_eval=False)
    line = json.loads((tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(line["loss"])) and line["loss"] > 0
    assert sorted((tmp_path / "r" / "checkpoints").glob("*.pt")), "no checkpoint written"


@pytest.mark.parametrize("factory", ["maxpool_cnn", "layernorm_resnet"])
@pytest.mark.parametrize("domain", ["box", "crown-ibp"])
def test_robust_loss_reaches_every_weight(factory, domain):
    """The GRAD step's backward: every parameter gets a finite, non-zero gradient."""
    import op_models

    import absdsl
    from absdsl.training.data import INFO

    torch.manual_seed(0)
    model = getattr(op_models, factory)(INFO["mnist5k"]).eval()
    x = torch.rand(4, 1, 28, 28)
    y = torch.tensor([0, 1, 2, 3])
    lo, hi = absdsl.linf_ball(x, 0.02)
    lb, _ = absdsl.compile(model, domain)(lo, hi, spec=absdsl.margin_spec(y, 10))
    loss = torch.nn.functional.softplus(-lb).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert float(p.grad.abs().sum()) > 0, name


def test_complete_certification_refuses_a_smooth_network_by_name():
    from op_models import LayerNormResNet

    from absdsl.training.milp import MilpError, NetworkMilp

    with pytest.raises(MilpError, match=r"is (sqrt|pow|gelu|mul|reciprocal), which is not "
                                        r"piecewise linear"):
        NetworkMilp(LayerNormResNet().eval(), (1, 28, 28))


def test_complete_certification_encodes_max_pooling():
    """Max pooling reaches the MILP as its ReLU decomposition (no pooling node is left)."""
    from op_models import MaxPoolCNN

    from absdsl.training.milp import NetworkMilp

    torch.manual_seed(0)
    model = MaxPoolCNN().eval()
    milp = NetworkMilp(model, (1, 28, 28))
    assert any(n.op == "relu" for n in milp.nodes)
    assert not any(n.op == "max_pool2d" for n in milp.nodes)
