"""Front end: every supported spelling compiles and is sound; unsupported ops are named."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from core_helpers import DTYPE, assert_sound, box

import absdsl
from absdsl.errors import AbsdslError, TraceError


class Spellings(nn.Module):
    """One model using every supported spelling of each op."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1, -0.2]).reshape(1, 2, 1, 1))
        self.register_buffer("std", torch.tensor([0.5, 2.0]).reshape(1, 2, 1, 1))
        self.conv = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.drop = nn.Dropout(0.5)
        self.ident = nn.Identity()
        self.fc1 = nn.Linear(16, 8)
        self.fc2 = nn.Linear(8, 8)
        self.fc3 = nn.Linear(16, 8)
        self.fc4 = nn.Linear(8, 3)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = (x - self.mean) / self.std                       # normalisation layer
        x = self.relu(self.bn(self.conv(x)))                  # nn.ReLU
        x = self.drop(self.ident(self.pool(x)))
        x = torch.flatten(x, 1)                               # torch.flatten
        h = F.relu(self.fc1(x))                               # F.relu
        h = h + torch.relu(self.fc2(h))                       # residual add, torch.relu
        h = torch.cat([h, self.fc2(h).relu()], dim=1)         # torch.cat, Tensor.relu
        h = h.view(h.shape[0], -1).reshape(-1, 16)            # view / reshape
        return self.fc4(F.relu(self.fc3(h)))


class Conv1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(2, 3, 3, stride=2, padding=1)
        self.f = nn.Flatten()
        self.l = nn.Linear(9, 2)

    def forward(self, x):
        return self.l(self.f(torch.relu(self.c(x))))


def _prepare(model: nn.Module) -> nn.Module:
    model = model.to(DTYPE).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g, dtype=DTYPE))
                m.running_var.copy_(torch.rand(m.num_features, generator=g, dtype=DTYPE) + 0.5)
    return model


@pytest.mark.parametrize("domain", ["box", "hbox", "zonotope", "deeppoly", "crown-ibp"])
@pytest.mark.parametrize("which", ["spellings", "conv1d"])
def test_supported_spellings_compile_and_are_sound(domain, which) -> None:
    torch.manual_seed(0)
    model = _prepare(Spellings() if which == "spellings" else Conv1dNet())
    shape = (2, 4, 4) if which == "spellings" else (2, 6)
    lo, hi = box(shape, batch=2, eps=0.1, seed=1)
    prog = absdsl.compile(model, domain)
    lb, ub = prog(lo, hi)
    assert_sound(model, lb, ub, lo, hi)
    C = absdsl.margin_spec(torch.tensor([0, 1]), lb.shape[1]).to(DTYPE)
    lb, ub = prog(lo, hi, spec=C)
    assert_sound(model, lb, ub, lo, hi, spec=C)


def test_spellings_lower_to_the_expected_ir() -> None:
    model = _prepare(Spellings())
    prog = absdsl.compile(model, "box", input_shape=(2, 4, 4))
    ops = [n.op for n in prog.ir.nodes]
    assert ops.count("add") == 1 and ops.count("cat") == 1 and ops.count("relu") == 5
    assert "def bound_program" in prog.code


class Sorted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def forward(self, x):
        y = self.inner(x)
        return torch.sort(y, dim=1).values


class Pooled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2))

    def forward(self, x):
        return self.features(x).flatten(1)


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l = nn.Linear(2, 2)

    def forward(self, x):
        if x.sum() > 0:
            return self.l(x)
        return x


def test_unsupported_function_is_named() -> None:
    with pytest.raises(TraceError) as err:
        absdsl.compile(Sorted().to(DTYPE), "box", input_shape=(2,))
    msg = str(err.value)
    assert "torch.sort" in msg and "no rule" in msg
    assert "test_frontend.py" in msg  # the user's source line


class Normed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.PixelShuffle(2))

    def forward(self, x):
        return self.features(x)


def test_unsupported_module_is_named_with_module_path() -> None:
    with pytest.raises(TraceError) as err:
        absdsl.compile(Normed().to(DTYPE), "deeppoly", input_shape=(1, 6, 6))
    msg = str(err.value)
    assert "PixelShuffle" in msg and "features.1" in msg


def test_untraceable_model() -> None:
    with pytest.raises(TraceError) as err:
        absdsl.compile(DataDependent().to(DTYPE), "box", input_shape=(2,))
    assert "DataDependent" in str(err.value) and "control flow" in str(err.value)


def test_batch_norm_in_train_mode_errors() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)).to(DTYPE)  # train mode
    with pytest.raises(AbsdslError, match="training mode"):
        absdsl.compile(model, "box", input_shape=(2,))
    prog = absdsl.compile(model.eval(), "box", input_shape=(2,))
    model.train()
    lo, hi = box((2,), batch=1)
    with pytest.raises(AbsdslError, match="training mode"):
        prog(lo, hi)


def test_leaky_relu_negative_slope_rejected() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.LeakyReLU(-0.5)).to(DTYPE).eval()
    with pytest.raises(TraceError, match="slope"):
        absdsl.compile(model, "box", input_shape=(2,))


def test_avg_pool_with_a_positional_kernel_size() -> None:
    """``F.avg_pool2d(x, 4)`` (kuangliu-style ResNets): fx passes the 4 through as a number,
    which the front end used to turn into a float and crash on ('float' is not iterable)."""

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 2, 3, padding=1)
            self.fc = torch.nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(F.avg_pool2d(torch.relu(self.conv(x)), 4).flatten(1))

    torch.manual_seed(0)
    model = Pooled().double().eval()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    for domain in ("box", "zonotope", "deeppoly"):
        lb, ub = absdsl.compile(model, domain)(x - 0.01, x + 0.01)
        y = model(x)
        assert bool((lb <= y + 1e-9).all()) and bool((y <= ub + 1e-9).all())
