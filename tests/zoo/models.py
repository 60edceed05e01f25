"""Model definitions in the style of the field's public model zoos, at small input sizes.

Written for this suite (not copied): the certified-training families of the CROWN-IBP,
auto_LiRPA and CTBench zoos (CNN-4/7 layer, ResNet/CResNet, DenseNet, WideResNet, MLPs,
kuangliu-style CIFAR nets that call ``F.avg_pool2d(out, 4)`` with a positional kernel),
op tests (max pooling, padding, smooth activations, a squeeze-excitation product, a small
ViT block) and torchvision classics built without weights. Each :class:`ZooModel` names a
constructor and the per-sample input shape; :func:`build` makes the model deterministic
(seeded weights, random batch-norm statistics) and puts it in eval mode.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import absdsl

TAGS = ("certified-training", "vision-classic", "op-test")
DOMAINS = ("box", "hbox", "zonotope", "deeppoly", "crown-ibp")


@dataclass(frozen=True)
class ZooModel:
    """One entry of the zoo: a name, a constructor, the per-sample input shape and a tag."""

    name: str
    make: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    tag: str
    note: str = ""


# ---- certified-training families -----------------------------------------------------------

def cnn_4layer(in_ch: int = 3, in_dim: int = 16, width: int = 2, linear_size: int = 64,
               bn: bool = False) -> nn.Sequential:
    """CROWN-IBP / auto_LiRPA style cnn_4layer: two stride-2 4x4 convs and two linear layers."""
    def conv(cin: int, cout: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 4, stride=2, padding=1)]
        return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU()]

    flat = 8 * width * (in_dim // 4) ** 2
    return nn.Sequential(*conv(in_ch, 4 * width), *conv(4 * width, 8 * width), nn.Flatten(),
                         nn.Linear(flat, linear_size), nn.ReLU(), nn.Linear(linear_size, 10))


def cnn_7layer(in_ch: int = 3, in_dim: int = 16, width: int = 8, linear_size: int = 64,
               bn: bool = True) -> nn.Sequential:
    """CTBench / CROWN-IBP style cnn_7layer: five 3x3 convs (one of stride 2) and two linear."""
    def conv(cin: int, cout: int, stride: int) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, stride=stride, padding=1)]
        return layers + ([nn.BatchNorm2d(cout)] if bn else []) + [nn.ReLU()]

    w = width
    head: list[nn.Module] = [nn.Flatten(), nn.Linear(2 * w * (in_dim // 2) ** 2, linear_size)]
    head += [nn.BatchNorm1d(linear_size)] if bn else []
    return nn.Sequential(*conv(in_ch, w, 1), *conv(w, w, 1), *conv(w, 2 * w, 2),
                         *conv(2 * w, 2 * w, 1), *conv(2 * w, 2 * w, 1), *head, nn.ReLU(),
                         nn.Linear(linear_size, 10))


def mlp(act: Callable[[], nn.Module], in_shape: tuple[int, ...] = (1, 8, 8),
        widths: tuple[int, ...] = (32, 32)) -> nn.Sequential:
    """Flatten, then Linear-act blocks and a 10-way Linear head (the MNIST MLPs of the zoos)."""
    layers: list[nn.Module] = [nn.Flatten()]
    n = math.prod(in_shape)
    for w in widths:
        layers += [nn.Linear(n, w), act()]
        n = w
    return nn.Sequential(*layers, nn.Linear(n, 10))


class BasicBlock(nn.Module):
    """kuangliu-style ResNet BasicBlock: two 3x3 conv-BN, a 1x1 conv-BN shortcut on a change."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return F.relu(out)


class ResNetCifar(nn.Module):
    """kuangliu-style CIFAR ResNet (one BasicBlock per stage here, reduced width)."""

    def __init__(self, blocks: tuple[int, ...] = (1, 1, 1), width: int = 8,
                 num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = width
        self.conv1 = nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages = []
        for i, n in enumerate(blocks):
            stages.append(self._stage(width * 2 ** i, n, 1 if i == 0 else 2))
        self.layers = nn.Sequential(*stages)
        self.linear = nn.Linear(width * 2 ** (len(blocks) - 1), num_classes)

    def _stage(self, planes: int, n: int, stride: int) -> nn.Sequential:
        layers = []
        for s in [stride] + [1] * (n - 1):
            layers.append(BasicBlock(self.in_planes, planes, s))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.avg_pool2d(out, 4)  # the positional kernel of the kuangliu nets
        out = out.view(out.size(0), -1)
        return self.linear(out)


class CResNet(nn.Module):
    """CResNet-5 style (Xu et al.'s complete-verification zoo): a stride-2 conv-BN, residual
    blocks with BN, average pooling and a two-layer head."""

    def __init__(self, width: int = 8, n_blocks: int = 2, in_dim: int = 16) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.blocks = nn.Sequential(*[BasicBlock(width, width) for _ in range(n_blocks)])
        self.pool = nn.AvgPool2d(2)
        self.fc1 = nn.Linear(width * (in_dim // 4) ** 2, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.pool(self.blocks(out))
        out = torch.flatten(out, 1)
        return self.fc2(F.relu(self.fc1(out)))


class DenseBottleneck(nn.Module):
    """kuangliu-style DenseNet bottleneck: pre-activation BN-ReLU-conv twice, then a concat."""

    def __init__(self, in_planes: int, growth: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, 4 * growth, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth)
        self.conv2 = nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class DenseTransition(nn.Module):
    """BN-ReLU-1x1 conv, then ``F.avg_pool2d(out, 2)``."""

    def __init__(self, in_planes: int, out_planes: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_planes)
        self.conv = nn.Conv2d(in_planes, out_planes, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetSmall(nn.Module):
    """A DenseNet-CIFAR style net: two dense blocks of two bottlenecks and one transition."""

    def __init__(self, growth: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        c = 2 * growth
        self.conv1 = nn.Conv2d(3, c, 3, padding=1, bias=False)
        self.dense1 = nn.Sequential(DenseBottleneck(c, growth), DenseBottleneck(c + growth, growth))
        c += 2 * growth
        self.trans1 = DenseTransition(c, c // 2)
        c //= 2
        self.dense2 = nn.Sequential(DenseBottleneck(c, growth), DenseBottleneck(c + growth, growth))
        c += 2 * growth
        self.bn = nn.BatchNorm2d(c)
        self.linear = nn.Linear(c * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.trans1(self.dense1(self.conv1(x)))
        out = self.dense2(out)
        out = F.avg_pool2d(F.relu(self.bn(out)), 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class WideBasic(nn.Module):
    """WideResNet block: BN-ReLU-conv, dropout, BN-ReLU-conv, plus a 1x1 conv shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1, dropout: float = 0.3
                 ) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=True)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride=stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dropout(self.conv1(F.relu(self.bn1(x))))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + self.shortcut(x)


class WideResNetSmall(nn.Module):
    """WideResNet-10-1 style (one wide block per stage), reduced width, 16x16 inputs."""

    def __init__(self, widths: tuple[int, ...] = (8, 8, 16, 32), num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], 3, padding=1)
        self.layer1 = WideBasic(widths[0], widths[1], 1)
        self.layer2 = WideBasic(widths[1], widths[2], 2)
        self.layer3 = WideBasic(widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.linear = nn.Linear(widths[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


class MobileBlock(nn.Module):
    """kuangliu-style MobileNetV2 block: expand 1x1, depthwise 3x3, project 1x1 (all BN)."""

    def __init__(self, in_planes: int, out_planes: int, expansion: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        planes = expansion * in_planes
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential()
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, out_planes, 1, bias=False),
                                          nn.BatchNorm2d(out_planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return out + self.shortcut(x) if self.stride == 1 else out


class MobileNetV2Small(nn.Module):
    """kuangliu-style CIFAR MobileNetV2 with two blocks and ``F.avg_pool2d(out, 4)``."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.layers = nn.Sequential(MobileBlock(8, 8, 2, 1), MobileBlock(8, 16, 2, 2))
        self.conv2 = nn.Conv2d(16, 32, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.linear = nn.Linear(32 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = F.relu(self.bn2(self.conv2(out)))
        out = F.avg_pool2d(out, 4)
        out = out.view(out.size(0), -1)
        return self.linear(out)


# ---- op tests ------------------------------------------------------------------------------

def small_cnn(act: Callable[[], nn.Module], pool: nn.Module | None = None,
              pad: nn.Module | None = None) -> nn.Sequential:
    """conv-act(-pool) conv-act, flatten, linear on 3x16x16; optional pool or padding layer."""
    layers: list[nn.Module] = [pad] if pad is not None else []
    layers += [nn.Conv2d(3, 4, 3, padding=0 if pad is not None else 1), act()]
    layers += [pool] if pool is not None else []
    side = 8 if pool is not None else 16
    layers += [nn.Conv2d(4, 8, 3, stride=2, padding=1), act(), nn.Flatten(),
               nn.Linear(8 * (side // 2) ** 2, 10)]
    return nn.Sequential(*layers)


class FunctionalMaxPool(nn.Module):
    """Conv, ReLU, ``F.max_pool2d(x, 2)``, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(out, 1))


class SqueezeExcite(nn.Module):
    """Squeeze-excitation: ``x * sigmoid(fc(relu(fc(avgpool(x)))))``, a product of two
    input-dependent tensors."""

    def __init__(self, channels: int = 8, reduction: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)
        self.head = nn.Linear(channels * 8 * 8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.conv(x))
        b, c, _, _ = out.shape
        w = self.pool(out).view(b, c)
        w = torch.sigmoid(self.fc2(F.relu(self.fc1(w)))).view(b, c, 1, 1)
        return self.head(torch.flatten(out * w, 1))


class TinyViT(nn.Module):
    """A ViT-like block: strided-conv patch embedding, flatten+transpose, class token,
    LayerNorm, single-head softmax attention, GELU MLP, class-token readout."""

    def __init__(self, img: int = 16, patch: int = 4, dim: int = 16, in_ch: int = 3,
                 num_classes: int = 10) -> None:
        super().__init__()
        n = (img // patch) ** 2
        self.embed = nn.Conv2d(in_ch, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.scale = dim ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # [B, N, D]
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        att = (q @ k.transpose(-2, -1)) * self.scale
        x = x + self.proj(att.softmax(dim=-1) @ v)
        x = x + self.mlp(self.norm2(x))
        return self.head(self.norm(x)[:, 0])


# ---- torchvision classics ------------------------------------------------------------------

def _tv(name: str, **kwargs: object) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import torchvision

        return getattr(torchvision.models, name)(weights=None, **kwargs)

    make.__name__ = name
    return make


# ---- the zoo -------------------------------------------------------------------------------

CT, VC, OP = TAGS
IMG16 = (3, 16, 16)
IMG32 = (3, 32, 32)
MNIST8 = (1, 8, 8)

ZOO: tuple[ZooModel, ...] = (
    ZooModel("cnn_4layer", lambda: cnn_4layer(), IMG16, CT),
    ZooModel("cnn_4layer_bn", lambda: cnn_4layer(bn=True), IMG16, CT),
    ZooModel("cnn_7layer", lambda: cnn_7layer(bn=False), IMG16, CT),
    ZooModel("cnn_7layer_bn", lambda: cnn_7layer(bn=True), IMG16, CT),
    ZooModel("resnet_cifar", ResNetCifar, IMG16, CT, "kuangliu ResNet, 3 stages of 1 block"),
    ZooModel("cresnet5", CResNet, IMG16, CT),
    ZooModel("densenet_cifar", DenseNetSmall, IMG16, CT),
    ZooModel("wide_resnet", WideResNetSmall, IMG16, CT),
    ZooModel("mobilenet_v2_cifar", MobileNetV2Small, IMG16, CT),
    ZooModel("mlp_relu", lambda: mlp(nn.ReLU), MNIST8, CT),
    ZooModel("mlp_sigmoid", lambda: mlp(nn.Sigmoid), MNIST8, CT),
    ZooModel("mlp_tanh", lambda: mlp(nn.Tanh), MNIST8, CT),
    ZooModel("mlp_leaky_relu", lambda: mlp(lambda: nn.LeakyReLU(0.1)), MNIST8, CT),
    ZooModel("mlp_relu6", lambda: mlp(nn.ReLU6), MNIST8, CT),
    ZooModel("mlp_hardtanh", lambda: mlp(nn.Hardtanh), MNIST8, CT),
    ZooModel("cnn_maxpool", lambda: small_cnn(nn.ReLU, pool=nn.MaxPool2d(2)), IMG16, OP),
    ZooModel("cnn_f_max_pool2d", FunctionalMaxPool, IMG16, OP),
    ZooModel("cnn_zeropad", lambda: small_cnn(nn.ReLU, pad=nn.ZeroPad2d(1)), IMG16, OP),
    ZooModel("cnn_silu", lambda: small_cnn(nn.SiLU), IMG16, OP),
    ZooModel("cnn_gelu", lambda: small_cnn(nn.GELU), IMG16, OP),
    ZooModel("cnn_elu", lambda: small_cnn(nn.ELU), IMG16, OP),
    ZooModel("cnn_softplus", lambda: small_cnn(nn.Softplus), IMG16, OP),
    ZooModel("cnn_hardswish", lambda: small_cnn(nn.Hardswish), IMG16, OP),
    ZooModel("squeeze_excite", SqueezeExcite, (3, 8, 8), OP),
    ZooModel("vit_tiny", TinyViT, IMG16, OP),
    ZooModel("tv_resnet18", _tv("resnet18", num_classes=10), IMG32, VC),
    ZooModel("tv_vgg11", _tv("vgg11", num_classes=10), IMG32, VC),
    ZooModel("tv_alexnet", _tv("alexnet", num_classes=10), (3, 64, 64), VC,
             "needs 64x64: three 3/2 max pools after a stride-4 conv"),
    ZooModel("tv_squeezenet1_0", _tv("squeezenet1_0", num_classes=10), IMG32, VC),
    ZooModel("tv_mobilenet_v2", _tv("mobilenet_v2", num_classes=10, width_mult=0.25), IMG16,
             VC, "width_mult 0.25 at 16x16: DeepPoly took 188 s per call at 0.5 and 32x32"),
    ZooModel("tv_efficientnet_b0", _tv("efficientnet_b0", num_classes=10), IMG32, VC),
)

BY_NAME: dict[str, ZooModel] = {m.name: m for m in ZOO}

#: cases compiled but not called by the suite: every domain but Box on the torchvision classics
#: (but DeepPoly on the small mobilenet_v2) can take minutes per call at batch 2 on 2 cores
#: (Zonotope on resnet18: over 4 min) or more memory than a small machine has (HBox on vgg11);
#: ``coverage.py --heavy`` calls them
HEAVY: frozenset[tuple[str, str]] = frozenset(
    (m.name, d) for m in ZOO if m.tag == VC for d in DOMAINS[1:]
    if (m.name, d) != ("tv_mobilenet_v2", "deeppoly"))


def _randomize_norms(model: nn.Module, g: torch.Generator) -> None:
    """Non-trivial eval statistics and affine parameters for every batch/layer norm."""
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=g) * 0.2)
                assert mod.running_var is not None
                mod.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.5)
            if isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm)):
                if mod.weight is not None:
                    mod.weight.copy_(torch.rand(mod.weight.shape, generator=g) * 0.5 + 0.75)
                if mod.bias is not None:
                    mod.bias.copy_(torch.randn(mod.bias.shape, generator=g) * 0.1)


def build(entry: ZooModel, seed: int = 0) -> nn.Module:
    """The entry's model with seeded weights and random norm statistics, in eval mode."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = entry.make()
    _randomize_norms(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


# ---- running one case of the matrix (shared by tests/zoo/test_zoo.py and
# benchmarks/coverage.py) ---------------------------------------------------------------------

EPS = 0.01
BATCH = 2  # sample 0: an eps box around a random input; sample 1: a degenerate box (lo == hi)
N_POINTS = 48  # sampled points in the eps box (lo, hi, the centre, corners, uniform)
TOL = 1e-4  # relative float32 tolerance: |error| <= TOL * (1 + max |model output|)

_OP_PATTERNS = (
    re.compile(r"has no (?:rule|relaxation) for (?:op )?'?([\w.]+)"),
    re.compile(r"^([\w.]+) (?:in module|at) "),
    re.compile(r"^module '[^']*' \((\w+)\)"),
)


def refused_op(message: str) -> str:
    """The op a refusal names (``max_pool2d``, ``operator.mul``, ...), or its first words."""
    for pattern in _OP_PATTERNS:
        found = pattern.search(message)
        if found:
            return found.group(1)
    return " ".join(message.split()[:6])


def boxes(entry: ZooModel, seed: int = 0
          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random inputs ``x`` in [0, 1] and the batch-2 box: an eps ball around ``x[0]`` (clipped
    to [0, 1]) and the degenerate box ``lo == hi == x[1]``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(BATCH, *entry.input_shape, generator=g)
    lo, hi = absdsl.linf_ball(x, EPS)
    lo[1], hi[1] = x[1], x[1]
    return x, lo, hi


def points(lo: torch.Tensor, hi: torch.Tensor, n: int = N_POINTS, seed: int = 0
           ) -> torch.Tensor:
    """``n`` points of the box ``[lo, hi]`` (one sample, no batch dim): lo, hi, the centre,
    random corners and uniform points, as a batch ``[n, *shape]``."""
    g = torch.Generator().manual_seed(seed)
    n_corners = n // 3
    t = torch.rand(n - 3, *lo.shape, generator=g)
    t[:n_corners] = t[:n_corners].round()
    t = torch.cat([torch.zeros_like(lo)[None], torch.ones_like(lo)[None],
                   torch.full_like(lo, 0.5)[None], t])
    return lo + t * (hi - lo)


@dataclass
class Check:
    """What one bound-program call measured, both against ``tol``: the worst bound violation
    (at sampled points of the eps box and at the degenerate box's one point) and the worst
    distance of ``lb``/``ub`` from ``model(x)`` on the degenerate box; ``call_s`` is the time
    of the call."""

    violation: float
    exact_error: float
    tol: float
    call_s: float
    finite: bool

    @property
    def ok(self) -> bool:
        return self.finite and self.violation <= self.tol and self.exact_error <= self.tol


def check_program(model: nn.Module, prog: Callable[..., tuple[torch.Tensor, torch.Tensor]],
                  entry: ZooModel, seed: int = 0) -> Check:
    """Call ``prog`` once on the batch-2 boxes of :func:`boxes` and compare with the model."""
    x, lo, hi = boxes(entry, seed)
    with torch.no_grad():
        start = time.perf_counter()
        lb, ub = prog(lo, hi)
        call_s = time.perf_counter() - start
        pts = points(lo[0], hi[0], seed=seed)
        out = model(pts).reshape(len(pts), -1)
        exact = model(x[1:]).reshape(-1)
    lb, ub = lb.reshape(BATCH, -1), ub.reshape(BATCH, -1)
    scale = max(float(out.abs().max()), float(exact.abs().max()))
    violation = max(float((lb[0] - out).max()), float((out - ub[0]).max()),
                    float((lb[1] - exact).max()), float((exact - ub[1]).max()))
    exact_error = max(float((lb[1] - exact).abs().max()), float((ub[1] - exact).abs().max()))
    finite = bool(torch.isfinite(lb).all() and torch.isfinite(ub).all())
    return Check(violation, exact_error, TOL * (1.0 + scale), call_s, finite)
