"""Models: shapes for 1- and 3-channel data, user factories, shape checks, IBP init."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from torch import nn

from absdsl.errors import AbsdslError
from absdsl.training.data import dataset_info
from absdsl.training.models import build_model, has_batch_norm, ibp_init


@pytest.mark.parametrize("name", ["cnn3", "cnn5", "cnn7", "fc"])
@pytest.mark.parametrize("dataset", ["mnist5k", "cifar10"])
def test_builtin_models_fit_their_data(name, dataset):
    info = dataset_info(dataset)
    model = build_model(name, info).eval()
    out = model(torch.rand(3, *info.shape))
    assert out.shape == (3, 10)
    assert has_batch_norm(model) == (name == "cnn7")


def test_cnn3_matches_the_paper_architecture():
    model = build_model("cnn3", dataset_info("mnist5k"))
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride, c.padding) for c in convs] == [
        (8, (5, 5), (2, 2), (2, 2)), (8, (4, 4), (2, 2), (1, 1))]
    assert [m for m in model if isinstance(m, nn.Linear)][0].in_features == 8 * 7 * 7


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_nets.py").write_text(textwrap.dedent("""
        import torch.nn as nn

        def good(info):
            c, h, w = info.shape
            return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, info.num_classes))

        def no_args():
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))

        def wrong_out(info):
            return nn.Sequential(nn.Flatten(), nn.Linear(784, 7))

        def wrong_in(info):
            return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))

        NOT_CALLABLE = 3
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_nets"


def test_user_factories(user_module):
    info = dataset_info("mnist5k")
    assert build_model(f"{user_module}:good", info)(torch.rand(2, 1, 28, 28)).shape == (2, 10)
    assert isinstance(build_model(f"{user_module}:no_args", info), nn.Module)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("resnet50", "unknown model 'resnet50'"),
        ("no_such_module_xyz:f", "cannot import module"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("{m}:NOT_CALLABLE", "not callable"),
        ("{m}:wrong_out", r"outputs \(2, 7\)"),
        ("{m}:wrong_in", "does not accept mnist5k inputs"),
    ],
)
def test_bad_models_are_named(user_module, spec, message):
    with pytest.raises(AbsdslError, match=message):
        build_model(spec.format(m=user_module), dataset_info("mnist5k"))


def test_cifar_model_rejects_mnist_shape():
    model = build_model("cnn3", dataset_info("cifar10"))
    from absdsl.training.models import check_model_shapes

    with pytest.raises(AbsdslError, match="does not accept"):
        check_model_shapes(model, dataset_info("mnist5k"))


def test_ibp_init_scales_all_but_the_last_layer():
    torch.manual_seed(0)
    model = build_model("cnn5", dataset_info("mnist5k"))
    last_before = model[-1].weight.clone()
    ibp_init(model)
    weights = [m.weight for m in model if isinstance(m, nn.Conv2d | nn.Linear)]
    for w in weights[:-1]:
        expected = math.sqrt(2 * math.pi) / w[0].numel()
        assert abs(float(w.detach().std()) / expected - 1) < 0.1
    assert torch.equal(model[-1].weight, last_before)
