"""The papers' networks (CNN3, CNN5, CNN7, FC), user models as ``module:factory``, and init.

Every built-in model starts with a :class:`Normalize` layer, so inputs (and eps) are in pixel
units [0, 1] and the bound programs see normalisation as one more affine layer.
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable

import torch
from torch import nn

from absdsl.errors import AbsdslError

from .data import DatasetInfo


class ModelError(AbsdslError):
    """An unknown model name, a factory that cannot be loaded, or a shape that does not fit."""


class Normalize(nn.Module):
    """(x - mean) / std per channel, as a layer, so that eps stays in pixel units."""

    mean: torch.Tensor  # buffers, declared so that they are typed as tensors
    std: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def _conv_stack(
    in_ch: int, hw: int, convs: list[tuple[int, int, int, int]], batch_norm: bool
) -> tuple[list[nn.Module], int]:
    """Conv (+BN) + ReLU layers; returns the layers and the flattened output size."""
    layers: list[nn.Module] = []
    ch = in_ch
    for out_ch, k, s, p in convs:
        layers.append(nn.Conv2d(ch, out_ch, k, stride=s, padding=p))
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU())
        ch, hw = out_ch, _conv_out(hw, k, s, p)
    return layers, ch * hw * hw


def cnn3(info: DatasetInfo) -> nn.Sequential:
    """Conv 8 5x5/2/2, Conv 8 4x4/2/1, Linear -> classes (paper table 4)."""
    c, h, _ = info.shape
    convs, flat = _conv_stack(c, h, [(8, 5, 2, 2), (8, 4, 2, 1)], False)
    return nn.Sequential(
        Normalize(info.mean, info.std), *convs, nn.Flatten(), nn.Linear(flat, info.num_classes)
    )


def cnn5(info: DatasetInfo) -> nn.Sequential:
    """Conv 16 5x5/2/2, Conv 16 4x4/2/1, Conv 32 4x4/2/1, FC 512, Linear (paper table 4)."""
    c, h, _ = info.shape
    convs, flat = _conv_stack(c, h, [(16, 5, 2, 2), (16, 4, 2, 1), (32, 4, 2, 1)], False)
    return nn.Sequential(
        Normalize(info.mean, info.std),
        *convs,
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
        nn.Linear(512, info.num_classes),
    )


def cnn7(info: DatasetInfo) -> nn.Sequential:
    """Shi et al.'s CNN7: five 3x3 convs (64, 64, 128, 128, 128), FC 512, BN + ReLU each."""
    c, h, _ = info.shape
    spec = [(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)]
    convs, flat = _conv_stack(c, h, spec, True)
    return nn.Sequential(
        Normalize(info.mean, info.std),
        *convs,
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.BatchNorm1d(512),
        nn.ReLU(),
        nn.Linear(512, info.num_classes),
    )


def fc(info: DatasetInfo) -> nn.Sequential:
    """The paradox paper's fully connected net: 400-200-100-100-classes."""
    c, h, w = info.shape
    widths = [c * h * w, 400, 200, 100, 100]
    layers: list[nn.Module] = [Normalize(info.mean, info.std), nn.Flatten()]
    for a, b in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], info.num_classes))
    return nn.Sequential(*layers)


BUILTIN: dict[str, Callable[[DatasetInfo], nn.Module]] = {
    "cnn3": cnn3,
    "cnn5": cnn5,
    "cnn7": cnn7,
    "fc": fc,
}


# Factories that moved: saved configs and checkpoints keep naming them by the old path (the
# paradox presets still write it, so that earlier experiment folders resume).
MOVED_FACTORIES: dict[str, str] = {
    "absdsl.training.paradox:quick_fc": "absdsl.experiments.paradox:quick_fc",
    "absdsl.training.paradox:micro_fc": "absdsl.experiments.paradox:micro_fc",
}


def load_factory(spec: str) -> Callable[..., nn.Module]:
    """Resolve ``package.module:factory`` with importlib (never eval)."""
    module_name, _, attr = MOVED_FACTORIES.get(spec, spec).partition(":")
    if not module_name or not attr:
        raise ModelError(f"model {spec!r}: expected a built-in name or 'module:factory' (or, "
                         f"where a command takes one, a checkpoint file)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ModelError(f"model {spec!r}: cannot import module {module_name!r}: {err}") from err
    obj = module
    for part in attr.split("."):
        if not part.isidentifier() or not hasattr(obj, part):
            raise ModelError(f"model {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ModelError(f"model {spec!r}: {attr!r} is not callable")
    return obj


def build_model(name: str, info: DatasetInfo) -> nn.Module:
    """A built-in model by name, or ``module:factory`` called with the DatasetInfo.

    A user factory may take no arguments; it is then called as ``factory()``. The result is
    checked against the data set's input and output shapes.
    """
    key = name.lower()
    if key in BUILTIN:
        model = BUILTIN[key](info)
    elif key.endswith(".onnx"):  # an ONNX file with its weights (verification/onnx_io.py)
        # lazy: upper layer absdsl.verification.onnx_io (training sits below the applications)
        from absdsl.verification.onnx_io import load_onnx

        model = load_onnx(name)
    elif ":" in name:
        factory = load_factory(name)
        try:
            model = factory(info)
        except TypeError:
            model = factory()
        if not isinstance(model, nn.Module):
            raise ModelError(
                f"model {name!r}: factory returned {type(model).__name__}, not an nn.Module"
            )
    else:
        raise ModelError(
            f"unknown model {name!r}; choose one of {', '.join(BUILTIN)} or give 'module:factory' "
            f"or a file.onnx"
        )
    check_model_shapes(model, info, name)
    return model


def check_model_shapes(model: nn.Module, info: DatasetInfo, name: str = "model") -> None:
    """Run one dummy input through the model: it must accept the data and emit the classes."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            param = next(iter(model.parameters()), None)
            dtype = param.dtype if param is not None else torch.float32
            out = model(torch.zeros(2, *info.shape, dtype=dtype))
    except Exception as err:  # noqa: BLE001 - any failure here means the shapes do not fit
        raise ModelError(
            f"model {name!r} does not accept {info.name} inputs of shape "
            f"[batch, {', '.join(map(str, info.shape))}]: {err}"
        ) from err
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(
            f"model {name!r} outputs {shape} for a batch of 2; {info.name} needs [batch, "
            f"{info.num_classes}]"
        )


def ibp_init(model: nn.Module) -> None:
    """Shi et al. (2021) initialisation for interval bound propagation.

    Every weight matrix or kernel except the last layer's is drawn from N(0, sigma^2) with
    sigma = sqrt(2 pi) / fan_in, which keeps the expected box width constant across layers at
    initialisation (no explosion of the bounds in deep nets). Biases and 1-D (batch norm)
    parameters are left as they are.
    """
    weights = [
        p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1
    ]
    with torch.no_grad():
        for w in weights[:-1]:
            fan_in = w[0].numel()
            w.normal_(0.0, math.sqrt(2.0 * math.pi) / fan_in)


def has_batch_norm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
